/* Direct sends on plain-socket bufferevents (see sendq.h). */
#include "aoai_guard/sendq.h"

#include <errno.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>

/* Writes what s has queued (s is off the queue). May call s's drained callback. */
static void sender_write(ag_sender *s)
{
    struct bufferevent *bev = s->bev;
    struct evbuffer *out = bufferevent_get_output(bev);
    if ((bufferevent_get_enabled(bev) & EV_WRITE) || evbuffer_get_length(out) == 0)
        return; /* libevent took over, or somebody drained it */
    /* A socket bufferevent keeps the front of its output frozen against other readers and thaws
     * it only around its own writes; do the same. */
    evbuffer_unfreeze(out, 1);
    int n = evbuffer_write(out, bufferevent_getfd(bev));
    evbuffer_freeze(out, 1);
    if (evbuffer_get_length(out) > 0 || n < 0) {
        /* The socket is full, or failed: libevent waits for it, and reports an error through the
         * bufferevent's event callback as it always did. */
        bufferevent_enable(bev, EV_WRITE);
        return;
    }
    if (s->drained)
        s->drained(s->arg);
}

static void send_queue_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ag_send_queue *q = arg;
    ag_sender *s;
    /* Take one at a time from the head: a drained callback may detach (and free) other senders. */
    while ((s = TAILQ_FIRST(&q->pending))) {
        TAILQ_REMOVE(&q->pending, s, link);
        s->queued = false;
        sender_write(s);
    }
}

void ag_sender_flush(ag_sender *s)
{
    if (!s->bev || !s->queued)
        return;
    TAILQ_REMOVE(&s->q->pending, s, link);
    s->queued = false;
    sender_write(s);
}

int ag_send_queue_init(ag_send_queue *q, struct event_base *base)
{
    TAILQ_INIT(&q->pending);
    q->ev = event_new(base, -1, 0, send_queue_cb, q);
    return q->ev ? 0 : -1;
}

void ag_send_queue_destroy(ag_send_queue *q)
{
    if (q->ev)
        event_free(q->ev);
    q->ev = NULL;
}

static void queue_sender(ag_sender *s)
{
    if (s->queued)
        return;
    s->queued = true;
    TAILQ_INSERT_TAIL(&s->q->pending, s, link);
    event_active(s->q->ev, EV_WRITE, 0);
}

/* Output buffer callback: bytes were added while EV_WRITE is off, so nobody would write them. */
static void output_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    (void)buf;
    ag_sender *s = arg;
    if (info->n_added == 0 || s->queued || (bufferevent_get_enabled(s->bev) & EV_WRITE))
        return;
    queue_sender(s);
}

bool ag_sender_attach(ag_sender *s, ag_send_queue *q, struct bufferevent *bev, ag_sender_drained_fn drained,
                      void *arg)
{
    s->bev = NULL;
    s->queued = false;
    if (!q || !q->ev || bufferevent_openssl_get_ssl(bev))
        return false;
    s->q = q;
    s->drained = drained;
    s->arg = arg;
    s->cbe = evbuffer_add_cb(bufferevent_get_output(bev), output_cb, s);
    if (!s->cbe)
        return false;
    s->bev = bev;
    bufferevent_disable(bev, EV_WRITE);
    if (evbuffer_get_length(bufferevent_get_output(bev)) > 0)
        queue_sender(s);
    return true;
}

void ag_sender_detach(ag_sender *s)
{
    if (!s->bev)
        return;
    if (s->queued)
        TAILQ_REMOVE(&s->q->pending, s, link);
    s->queued = false;
    evbuffer_remove_cb_entry(bufferevent_get_output(s->bev), s->cbe);
    s->cbe = NULL;
    s->bev = NULL;
}

void ag_sender_written(ag_sender *s)
{
    if (s->bev && evbuffer_get_length(bufferevent_get_output(s->bev)) == 0)
        bufferevent_disable(s->bev, EV_WRITE);
}
