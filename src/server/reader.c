/* Direct reads on plain-socket bufferevents (see reader.h). */
#include "aoai_guard/reader.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>

#define SCRATCH_SIZE (16 * 1024)

int ag_read_scratch_init(ag_read_scratch *s)
{
    s->buf = malloc(SCRATCH_SIZE);
    s->size = s->buf ? SCRATCH_SIZE : 0;
    return s->buf ? 0 : -1;
}

void ag_read_scratch_free(ag_read_scratch *s)
{
    free(s->buf);
    s->buf = NULL;
    s->size = 0;
}

void ag_reader_init(ag_reader *rd, struct bufferevent *bev)
{
    *rd = (ag_reader){.bev = bev};
}

/* Adds or removes the socket event to match enabled/suspended. */
static void rearm(ag_reader *rd)
{
    /* the input callback is needed only to resume a suspended reader */
    if (rd->cbe) {
        struct evbuffer *in = bufferevent_get_input(rd->bev);
        if (rd->suspended)
            evbuffer_cb_set_flags(in, rd->cbe, EVBUFFER_CB_ENABLED);
        else
            evbuffer_cb_clear_flags(in, rd->cbe, EVBUFFER_CB_ENABLED);
    }
    bool want = rd->enabled && !rd->suspended;
    if (want == rd->armed)
        return; /* as it is: no event_add per request for a reader that stays on */
    if (want)
        event_add(rd->ev, NULL);
    else
        event_del(rd->ev);
    rd->armed = want;
}

/* Tells the bufferevent's owner what happened, as libevent's read path does. */
static void report(ag_reader *rd, short what)
{
    bufferevent_event_cb eventcb = NULL;
    void *arg = NULL;
    bufferevent_getcb(rd->bev, NULL, NULL, &eventcb, &arg);
    if (eventcb)
        eventcb(rd->bev, what, arg); /* may free the bufferevent and rd */
}

/* Stops reading and reports what ended it, as libevent does on EOF or an error. */
static void stop_and_report(ag_reader *rd, short what)
{
    int e = errno; /* the event callback reads it; event_del must not change it */
    rd->enabled = false;
    rearm(rd);
    errno = e;
    report(rd, BEV_EVENT_READING | what);
}

static void reader_cb(evutil_socket_t fd, short what, void *arg)
{
    ag_reader *rd = arg;
    struct bufferevent *bev = rd->bev;
    (void)what; /* EV_READ: the event has no timeout */
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t want = rd->scratch->size;
    if (rd->high) {
        size_t have = evbuffer_get_length(in);
        if (have >= rd->high) {
            rd->suspended = true;
            rearm(rd);
            return;
        }
        if (rd->high - have < want)
            want = rd->high - have;
    }
    ssize_t n = recv(fd, rd->scratch->buf, want, 0);
    if (n < 0) {
        int e = errno;
        if (e == EAGAIN || e == EWOULDBLOCK || e == EINTR)
            return;
        errno = e; /* for the event callback, as after libevent's own failed read */
        stop_and_report(rd, BEV_EVENT_ERROR);
        return;
    }
    if (n == 0) {
        stop_and_report(rd, BEV_EVENT_EOF);
        return;
    }
    /* A socket bufferevent keeps the end of its input frozen against other writers and thaws it
     * only around its own reads; do the same. */
    evbuffer_unfreeze(in, 0);
    int added = evbuffer_add(in, rd->scratch->buf, (size_t)n);
    evbuffer_freeze(in, 0);
    if (added != 0) {
        errno = ENOMEM;
        stop_and_report(rd, BEV_EVENT_ERROR);
        return;
    }
    if (rd->high && evbuffer_get_length(in) >= rd->high) {
        rd->suspended = true;
        rearm(rd);
    }
    bufferevent_data_cb readcb = NULL;
    void *cbarg = NULL;
    bufferevent_getcb(bev, &readcb, NULL, NULL, &cbarg);
    if (readcb)
        readcb(bev, cbarg); /* may free the bufferevent and rd */
}

/* Input buffer callback: reading resumes once the owner drained the input below the mark. */
static void input_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    ag_reader *rd = arg;
    if (!rd->suspended || info->n_deleted == 0 || evbuffer_get_length(buf) >= rd->high)
        return;
    rd->suspended = false;
    rearm(rd);
}

bool ag_reader_attach(ag_reader *rd, ag_read_scratch *scratch, struct event_base *base)
{
    struct bufferevent *bev = rd->bev;
    if (rd->ev || !scratch || !scratch->buf || bufferevent_openssl_get_ssl(bev))
        return false;
    evutil_socket_t fd = bufferevent_getfd(bev);
    if (fd < 0)
        return false;
    size_t low = 0, high = 0;
    if (bufferevent_getwatermark(bev, EV_READ, &low, &high) != 0)
        high = 0;
    struct event *ev = event_new(base, fd, EV_READ | EV_PERSIST, reader_cb, rd);
    if (!ev)
        return false;
    struct evbuffer_cb_entry *cbe = NULL;
    if (high && !(cbe = evbuffer_add_cb(bufferevent_get_input(bev), input_cb, rd))) {
        event_free(ev);
        return false;
    }
    rd->ev = ev;
    rd->cbe = cbe;
    rd->scratch = scratch;
    rd->high = high;
    rd->enabled = (bufferevent_get_enabled(bev) & EV_READ) != 0;
    rd->suspended = high && evbuffer_get_length(bufferevent_get_input(bev)) >= high;
    bufferevent_disable(bev, EV_READ);
    rearm(rd);
    return true;
}

void ag_reader_detach(ag_reader *rd)
{
    if (!rd->ev)
        return;
    event_free(rd->ev); /* deletes it first */
    rd->ev = NULL;
    if (rd->cbe)
        evbuffer_remove_cb_entry(bufferevent_get_input(rd->bev), rd->cbe);
    rd->cbe = NULL;
}

void ag_reader_enable(ag_reader *rd)
{
    if (!rd->ev) {
        bufferevent_enable(rd->bev, EV_READ);
        return;
    }
    rd->enabled = true;
    rearm(rd);
}

void ag_reader_disable(ag_reader *rd)
{
    if (!rd->ev) {
        bufferevent_disable(rd->bev, EV_READ);
        return;
    }
    rd->enabled = false;
    rearm(rd);
}
