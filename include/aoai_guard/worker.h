/* Worker threads: each owns an event_base, its listening sockets (SO_REUSEPORT: the kernel spreads
 * connections), its client connections, its upstream connection pools and its DNS resolver. Other
 * threads talk to a worker only through ag_worker_post(); nothing else of a worker is shared. */
#ifndef AOAI_GUARD_WORKER_H
#define AOAI_GUARD_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/queue.h>

#include "aoai_guard/config.h"
#include "aoai_guard/json_arena.h"
#include "aoai_guard/metrics.h"
#include "aoai_guard/reader.h"
#include "aoai_guard/sendq.h"

struct event_base;
struct event;
struct evdns_base;
struct evconnlistener;
struct ag_conn;
struct ag_upstream_set;
struct ag_runtime;
struct ag_worker;
struct ag_request;
struct ag_exchange;

typedef void (*ag_worker_fn)(struct ag_worker *w, void *arg);

typedef struct ag_worker_msg {
    ag_worker_fn fn;
    void *arg;
    struct ag_worker_msg *next;
} ag_worker_msg;

TAILQ_HEAD(ag_conn_list, ag_conn);
TAILQ_HEAD(ag_request_list, ag_request);

#define AG_AUTH_BURST_SLOTS 64
#define AG_REQUEST_CACHE 64

/* Authentication failures of one client address in the current window (auth stage). */
typedef struct ag_auth_burst {
    char addr[64];
    long long window_start;
    int failures;
    bool reported;
} ag_auth_burst;
struct ag_token_cache;
struct ag_jwks;
struct ag_limiter;
struct ag_policy_scratch;
struct ag_curl_loop;

typedef struct ag_worker {
    int index;
    struct ag_runtime *rt;
    pthread_t thread;
    struct event_base *base;
    struct evdns_base *dns;
    ag_config *cfg;                       /* current snapshot (a reference) */
    struct ag_upstream_set *upstreams;    /* pools and health for cfg's upstreams */
    struct evconnlistener **listeners;    /* one per configured listener */
    size_t nlisteners;
    struct ag_conn_list conns;            /* every open client connection */
    size_t nconns;
    size_t active_requests;
    bool draining;                        /* stop accepting; close idle connections */

    /* stage state owned by this worker */
    struct ag_token_cache *token_cache;   /* verified tokens (auth) */
    struct ag_jwks *keys;                 /* the key set this worker validates with (a reference) */
    struct ag_request_list parked;        /* requests waiting for a JWKS refetch */
    ag_auth_burst auth_bursts[AG_AUTH_BURST_SLOTS];
    struct ag_limiter *limiter;           /* rate limits: this worker's client of the store */
    struct ag_policy_scratch *policy_scratch; /* prompt policy matching space */
    struct ag_curl_loop *curl;            /* request-path side calls (Content Safety), this loop */
    unsigned metrics_shard;

    pthread_mutex_t qlock;                /* guards qhead/qtail only */
    ag_worker_msg *qhead, *qtail;
    int wake_fd;                          /* eventfd written by ag_worker_post */
    struct event *wake;                   /* reads wake_fd and runs the queued messages */
    struct event *reap;                   /* frees connections marked for closing */
    struct ag_conn_list reap_list;
    ag_send_queue sendq;                  /* direct writes of client and upstream output */
    ag_read_scratch rscratch;             /* where direct reads land (reader.h) */
    ag_json_arena event_arena;            /* one streamed event's tree at a time (usage.c) */
    ag_metric_memo metric_memo[8];        /* the series of the last request (request_metrics.c) */
    struct ag_request *req_cache[AG_REQUEST_CACHE]; /* finished requests' memory, for reuse */
    unsigned nreq_cache;
    struct ag_exchange *ex_cache[AG_REQUEST_CACHE];  /* finished upstream exchanges, likewise */
    unsigned nex_cache;
} ag_worker;

/* Queues fn(w, arg) to run on the worker's thread (thread-safe, never blocks on I/O). */
int ag_worker_post(ag_worker *w, ag_worker_fn fn, void *arg);

/* Creates the worker's loop and listeners over already-bound sockets fds[nlisteners]. */
int ag_worker_init(ag_worker *w, struct ag_runtime *rt, int index, ag_config *cfg, const int *fds,
                   size_t nfds);
int ag_worker_start(ag_worker *w);
/* Frees what ag_worker_init created; call after the thread has been joined. */
void ag_worker_destroy(ag_worker *w);

/* Worker-thread side of reload and drain (run through ag_worker_post). */
void ag_worker_apply_config(ag_worker *w, void *cfg_ref);
void ag_worker_begin_drain(ag_worker *w, void *unused);
void ag_worker_stop(ag_worker *w, void *unused);

/* Called when a connection or request ends, so a draining worker can exit once idle. */
void ag_worker_check_drained(ag_worker *w);

#endif
