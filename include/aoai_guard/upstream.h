/* Upstreams as one worker sees them: a keep-alive connection pool, a DNS cache, TLS session reuse
 * and health (circuit breaker, retry-after) per configured upstream. Everything here belongs to one
 * worker thread: no locks. An ag_upstream_set is built for one config snapshot; after a reload the
 * old set is retired and freed when its last exchange ends. */
#ifndef AOAI_GUARD_UPSTREAM_H
#define AOAI_GUARD_UPSTREAM_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <openssl/ssl.h>

#include "aoai_guard/config.h"
#include "aoai_guard/deadline.h"
#include "aoai_guard/reader.h"
#include "aoai_guard/sendq.h"

struct ag_worker;
struct bufferevent;
struct event;
struct evdns_request;
struct evdns_getaddrinfo_request;

typedef struct ag_upconn ag_upconn;
typedef struct ag_connect_req ag_connect_req;

/* Called once when a connection is ready (uc != NULL) or could not be made (err says why;
 * timed_out tells a connect timeout apart). */
typedef void (*ag_connect_fn)(ag_upconn *uc, const char *err, bool timed_out, void *arg);

#define AG_DNS_MAX_ADDRS 8

typedef struct ag_upstream_state {
    const ag_upstream_conf *conf;
    struct ag_upstream_set *set;
    int index;
    TAILQ_HEAD(, ag_upconn) idle;
    size_t nidle;
    size_t nopen;                      /* open connections (idle + busy + connecting) */
    /* DNS */
    struct sockaddr_storage addrs[AG_DNS_MAX_ADDRS];
    socklen_t addrlens[AG_DNS_MAX_ADDRS];
    int naddrs;
    int next_addr;
    uint64_t dns_expires_ns;
    bool resolving;
    TAILQ_HEAD(, ag_connect_req) dns_waiters;
    /* TLS */
    SSL_SESSION *session;              /* last session, offered for resumption */
    /* health */
    int consecutive_failures;
    uint64_t circuit_open_until_ns;    /* 0: closed */
    bool half_open_probe;              /* one trial request in flight after the cool-down */
    uint64_t blocked_until_ns;         /* retry-after from a 429/503 */
    int current_weight;                /* smooth weighted round robin */
    /* counters (read by metrics) */
    uint64_t requests, failures, reused, connects;
} ag_upstream_state;

typedef struct ag_upstream_set {
    struct ag_worker *worker;
    ag_config *cfg;                    /* a reference */
    size_t n;
    ag_upstream_state *ups;
    int refs;                          /* the worker's + one per live exchange/connection */
    bool retired;
} ag_upstream_set;

struct ag_upconn {
    TAILQ_ENTRY(ag_upconn) link;
    ag_upstream_state *up;
    struct bufferevent *bev;
    ag_sender snd;                     /* direct writes (plain-HTTP upstreams) */
    ag_reader rd;                      /* direct reads (plain-HTTP upstreams); set once connected */
    ag_deadline idle_deadline;         /* the pool's, while idle (lazy: deadline.h) */
    bool idle;
    bool reused;                       /* served a request before */
    int requests;
};

/* Builds the per-worker state for cfg's upstreams (takes a config reference). */
ag_upstream_set *ag_upstream_set_new(struct ag_worker *w, ag_config *cfg);
/* Marks the set retired (a newer config took over) and drops the worker's reference. */
void ag_upstream_set_retire(ag_upstream_set *set);
void ag_upstream_set_ref(ag_upstream_set *set);
void ag_upstream_set_unref(ag_upstream_set *set);

/* Picks the next upstream to try: the best priority that has an available member (circuit not
 * open, not blocked by retry-after, not in tried_mask), smooth weighted round robin within it.
 * Returns its index or -1; *wait_ms gets how long until something becomes available. */
int ag_upstream_pick(ag_upstream_set *set, uint64_t tried_mask, uint64_t now_ns, long long *wait_ms);

/* True when some upstream outside tried_mask could take an attempt now; changes nothing (unlike
 * ag_upstream_pick, which advances the round robin and claims a half-open probe). */
bool ag_upstream_any_available(const ag_upstream_set *set, uint64_t tried_mask, uint64_t now_ns);

/* Takes an idle pooled connection to upstream idx, or NULL. */
ag_upconn *ag_upstream_take_idle(ag_upstream_set *set, int idx);
/* Opens a new connection (DNS, TCP, TLS) and calls fn; returns a handle to cancel, or NULL when it
 * failed at once (fn has NOT been called then; err filled). */
ag_connect_req *ag_upstream_connect(ag_upstream_set *set, int idx, ag_connect_fn fn, void *arg,
                                    const char **err);
/* Cancels a pending connect; fn will not be called. */
void ag_upstream_connect_cancel(ag_connect_req *cr);

/* Returns a connection after a complete exchange: pooled when reusable, else closed. */
void ag_upconn_release(ag_upconn *uc, bool reusable);

/* Health outcomes of one attempt. */
void ag_upstream_report_success(ag_upstream_state *up);
/* reason labels aoai_guard_upstream_failures_total: "connect", "5xx", "timeout", "reset", "protocol". */
void ag_upstream_report_failure(ag_upstream_state *up, uint64_t now_ns, const char *reason);
void ag_upstream_report_retry_after(ag_upstream_state *up, long long ms, uint64_t now_ns);
/* Counts a failed attempt in aoai_guard_upstream_failures_total without touching the circuit. */
void ag_upstream_count_failure(ag_upstream_state *up, const char *reason);
/* True when the circuit of up is open now. */
bool ag_upstream_circuit_open(const ag_upstream_state *up, uint64_t now_ns);

#endif
