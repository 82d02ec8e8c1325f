/* Direct sends on plain-socket bufferevents.
 *
 * libevent writes a bufferevent's output when EV_WRITE fires: for a request/response that is an
 * epoll_ctl to arm the write event, a loop iteration to learn the socket is writable (it nearly
 * always is), and an epoll_ctl to disarm it, on both the client and the upstream side. An
 * ag_sender instead keeps EV_WRITE off while the output is empty; bytes added to the output put the
 * sender on its worker's queue, and once the current callback returns the queue writes each
 * sender's output with one writev. Only what the socket does not take arms EV_WRITE, and libevent
 * then finishes the job (errors and the write timeout included) as before.
 *
 * TLS bufferevents are never attached: their bytes must go through OpenSSL. */
#ifndef AOAI_GUARD_SENDQ_H
#define AOAI_GUARD_SENDQ_H

#include <stdbool.h>
#include <sys/queue.h>

struct bufferevent;
struct event;
struct event_base;
struct evbuffer_cb_entry;

/* Called after a direct write emptied the output (what the bufferevent's write callback would
 * have been told). */
typedef void (*ag_sender_drained_fn)(void *arg);

typedef struct ag_sender {
    struct bufferevent *bev;           /* NULL while detached */
    struct ag_send_queue *q;
    struct evbuffer_cb_entry *cbe;     /* our callback on the output buffer */
    TAILQ_ENTRY(ag_sender) link;
    bool queued;
    ag_sender_drained_fn drained;
    void *arg;
} ag_sender;

/* One per worker: the senders with bytes to write once the current callback returns. */
typedef struct ag_send_queue {
    struct event *ev;
    TAILQ_HEAD(, ag_sender) pending;
} ag_send_queue;

int ag_send_queue_init(ag_send_queue *q, struct event_base *base);
/* Frees the queue's event; every sender must have been detached. */
void ag_send_queue_destroy(ag_send_queue *q);

/* Attaches s to a connected bufferevent and turns its EV_WRITE off (if the output is empty; else
 * the output is queued). Returns false, leaving the bufferevent to libevent, for a TLS one or when
 * out of memory. drained may be NULL. */
bool ag_sender_attach(ag_sender *s, ag_send_queue *q, struct bufferevent *bev, ag_sender_drained_fn drained,
                      void *arg);
/* Leaves the queue and removes the output callback; safe on a detached sender. Call before the
 * bufferevent is freed. */
void ag_sender_detach(ag_sender *s);
/* Writes what is queued now instead of when the current callback returns (a streamed response's
 * head, so that the client sees it before the body is processed). No-op when nothing is queued. */
void ag_sender_flush(ag_sender *s);
/* For the bufferevent's write callback: once libevent has written everything, EV_WRITE goes off
 * again so that the next bytes take the direct path. No-op on a detached sender. */
void ag_sender_written(ag_sender *s);

#endif
