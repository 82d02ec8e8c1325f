/* Direct reads on plain-socket bufferevents.
 *
 * libevent reads a socket bufferevent with an ioctl(FIONREAD) before every read, to size the
 * buffer, and at most 4 KiB at a time: two system calls where one does, on both the client and
 * the upstream side of every request. An attached ag_reader keeps the bufferevent's EV_READ off
 * and watches the socket with its own persistent event; when it fires, one recv() lands in the
 * worker's scratch buffer (up to 16 KiB) and is appended to the bufferevent's input, and the
 * bufferevent's own read callback runs, as it would have. EOF and errors reach the bufferevent's
 * event callback with libevent's flags (BEV_EVENT_READING | EOF/ERROR), and reading stops at the
 * bufferevent's read high-water mark until the input drains below it, as libevent does. Readers
 * have no timeouts: their owners keep deadlines with timers of their own (lazy ones, which cost
 * no event_add per request). The bufferevent still owns the socket, writes, and everything else.
 *
 * Every reader function also works on a reader that is not attached (a TLS bufferevent, whose
 * bytes must go through OpenSSL): it then does what the bufferevent call it replaces does. So
 * owners call ag_reader_enable() and friends instead of bufferevent_enable(bev, EV_READ). */
#ifndef AOAI_GUARD_READER_H
#define AOAI_GUARD_READER_H

#include <stdbool.h>
#include <stddef.h>

struct bufferevent;
struct event;
struct event_base;
struct evbuffer_cb_entry;

/* One per worker: where a read lands before it is appended to an input buffer. */
typedef struct ag_read_scratch {
    char *buf;
    size_t size;
} ag_read_scratch;

int ag_read_scratch_init(ag_read_scratch *s);
void ag_read_scratch_free(ag_read_scratch *s);

typedef struct ag_reader {
    struct bufferevent *bev;       /* set by ag_reader_init */
    struct event *ev;              /* NULL: not attached, libevent reads */
    ag_read_scratch *scratch;
    struct evbuffer_cb_entry *cbe; /* on the input: resumes below the high-water mark */
    size_t high;                   /* the bufferevent's read high-water mark (0: none) */
    bool enabled;                  /* the owner wants bytes */
    bool suspended;                /* the input is at the high-water mark */
    bool armed;                    /* ev is added */
} ag_reader;

/* Binds rd to bev, not attached. Call once bev exists. */
void ag_reader_init(ag_reader *rd, struct bufferevent *bev);

/* Takes over reading of a connected plain-socket bufferevent: its EV_READ state, read high-water
 * mark and nothing else carry over (read timeouts do not). Returns false, leaving
 * reading to libevent, for a TLS bufferevent or when out of memory. */
bool ag_reader_attach(ag_reader *rd, ag_read_scratch *scratch, struct event_base *base);

/* Stops direct reads (the event and the input callback go; reading is not handed back to
 * libevent). Call before bev is freed. Safe on a reader that is not attached. */
void ag_reader_detach(ag_reader *rd);

/* bufferevent_enable / bufferevent_disable of EV_READ. */
void ag_reader_enable(ag_reader *rd);
void ag_reader_disable(ag_reader *rd);

#endif
