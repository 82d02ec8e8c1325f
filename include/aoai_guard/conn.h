/* An inbound client connection: reads requests with llhttp one at a time (pipelined requests wait
 * their turn in the input buffer), enforces the size limits and the per-phase deadlines, and writes
 * responses with our own framing. Owned by its worker; freed only at a safe point (the reap event),
 * never inside one of its own callbacks. */
#ifndef AOAI_GUARD_CONN_H
#define AOAI_GUARD_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <llhttp.h>

#include "aoai_guard/config.h"
#include "aoai_guard/deadline.h"
#include "aoai_guard/request.h"
#include "aoai_guard/token_cache.h"
#include "aoai_guard/worker.h"

struct bufferevent;
struct event;

typedef enum ag_conn_state {
    AG_CONN_IDLE = 0,  /* between requests (keep-alive) */
    AG_CONN_HEAD,      /* reading request line and headers */
    AG_CONN_HEAD_WAIT, /* headers in; header-phase stages running */
    AG_CONN_BODY,      /* reading the body */
    AG_CONN_BUSY,      /* request complete; pipeline or response running */
    AG_CONN_CLOSING,   /* flushing the last bytes, then close */
} ag_conn_state;

typedef void (*ag_conn_drain_fn)(void *arg);

typedef struct ag_conn {
    TAILQ_ENTRY(ag_conn) link;
    ag_worker *worker;
    ag_config *cfg;                    /* snapshot the connection was accepted under */
    const ag_listener_conf *listener;
    struct bufferevent *bev;
    ag_sender snd;                     /* direct writes (plain listeners) */
    ag_reader rd;                      /* direct reads (plain listeners); reading goes through it */
    ag_deadline deadline;              /* of the current phase (its event: the phase timer) */
    llhttp_t parser;
    ag_conn_state state;
    ag_request *req;                   /* the request being read or served */
    char client_addr[64];
    int requests;                      /* served on this connection */
    bool line_checked;                 /* request line of the current request validated */
    int empty_lines;                   /* empty lines skipped before this request line */
    bool value_pending;                /* a header value is being collected */
    bool headers_too_big;
    int pause_reason;                  /* why llhttp paused: headers or message complete */
    int err_status;                    /* set by parser callbacks to answer with */
    const char *err_code;
    const char *err_msg;
    bool reaped;                       /* on the worker's reap list */
    bool peer_gone;                    /* EOF or error seen on the socket */
    bool in_input;                     /* conn_process_input is on the stack */
    bool counted;                      /* in the open-connections gauge */
    /* Our own light reading of chunked framing, alongside llhttp (which accepts any number of
     * leading zeros in a chunk size): see chunk_scan() in conn.c. */
    unsigned char ck_state;
    unsigned ck_digits;
    uint64_t ck_left;
    ag_token_memo token_memo;          /* the last bearer token's cache key (auth_stage.c) */
    ag_conn_drain_fn drain_fn;         /* called when the output drains below the low mark */
    void *drain_arg;
} ag_conn;

/* Takes ownership of an accepted socket on worker w (listener index li). */
void ag_conn_accept(ag_worker *w, int fd, const struct sockaddr *sa, int socklen, size_t li);
/* Frees a connection (only from the worker's reap event or teardown). */
void ag_conn_free(ag_conn *c);
/* Frees every connection on the worker's reap list (the worker's reap event). */
void ag_conn_reap_all(ag_worker *w);
/* Closes the connection once the output is flushed; safe from any callback. */
void ag_conn_close_soon(ag_conn *c);
/* Drain: closes the connection now if it is idle between requests. */
void ag_conn_close_if_idle(ag_conn *c);

/* The current request's response has ended: finish it and serve the next one (or close).
 * Deferred while the request's pipeline is on the stack. */
void ag_conn_request_done(ag_conn *c);

/* Continues reading the body of the current request (the read_body stage). */
void ag_conn_read_body(ag_conn *c);

/* Response writing for the current request. begin() sends the status line and headers (headers is
 * a block of "Name: value\r\n" lines without framing headers); content_length < 0 means unknown
 * (chunked for HTTP/1.1 clients, close-delimited for HTTP/1.0). */
void ag_response_begin(ag_request *req, int status, const char *headers, size_t headers_len,
                       long long content_length);
void ag_response_body(ag_request *req, const void *data, size_t len);
/* Ends the response cleanly and completes the request (next pipelined request may start). */
void ag_response_end(ag_request *req);
/* Ends a response that cannot be completed: closes the client connection without a clean end
 * (a truncated stream must look truncated) and completes the request with reason. */
void ag_response_abort(ag_request *req, const char *reason);
/* True when the client's output buffer is above the high-water mark. */
/* Sends what the response has queued now (a stream's head) rather than after this callback. */
void ag_response_flush(ag_request *req);
bool ag_response_congested(const ag_request *req);
/* Calls fn(arg) once when the client's output drops below the low-water mark. */
void ag_response_on_drain(ag_request *req, ag_conn_drain_fn fn, void *arg);
/* True when the client went away (EOF/reset) while the request was served. */
bool ag_response_client_gone(const ag_request *req);

#endif
