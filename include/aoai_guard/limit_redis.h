/* Per-worker asynchronous Redis client for the rate-limit counters (hiredis + its libevent adapter,
 * on the worker's event_base: one connection per worker, never shared between threads).
 *
 * Two Lua scripts do all the work atomically on the server: "reserve" checks every op of a request
 * and charges them all only if all admit; "adjust" applies reconciliation deltas. They are loaded
 * with SCRIPT LOAD on connect and called with EVALSHA, falling back to EVAL on NOSCRIPT. The clock
 * is Redis's own (TIME inside the script) so replicas with skewed clocks still share one timeline;
 * client_clock (tests only) passes the caller's clock instead.
 *
 * Failure handling: a request is only sent on a connected socket (or queued while the first connect,
 * or a reconnect after a healthy connection, is in progress). A watchdog drops the connection when
 * the oldest unanswered command is older than timeout_ms; every pending request then completes with
 * an error, so none waits longer than timeout_ms. Reconnects back off exponentially between
 * reconnect_min_ms and reconnect_max_ms (with jitter). Host names are resolved with evdns. TLS is
 * not available: Debian 12's hiredis 0.14 ships no hiredis_ssl. */
#ifndef AOAI_GUARD_LIMIT_REDIS_H
#define AOAI_GUARD_LIMIT_REDIS_H

#include <stdbool.h>
#include <stddef.h>

#include "aoai_guard/limit_counter.h"

struct event_base;

typedef struct ag_limit_redis ag_limit_redis;

typedef struct ag_limit_redis_config {
    const char *host; /* IP address or name */
    int port;
    int db;
    const char *username; /* NULL: AUTH with the password only */
    const char *password; /* NULL: no AUTH */
    const char *key_prefix;
    long long timeout_ms;
    long long reconnect_min_ms;
    long long reconnect_max_ms;
    bool client_clock; /* tests: use the request's client_now_ms instead of Redis TIME */
    void (*log)(void *arg, const char *msg); /* NULL: silent */
    void *log_arg;
} ag_limit_redis_config;

typedef enum ag_limit_redis_status {
    AG_LIMIT_REDIS_OK = 0,
    AG_LIMIT_REDIS_ERROR, /* connection lost, timed out, or an unexpected reply */
} ag_limit_redis_status;

/* One command in flight. The caller owns it and keeps it alive until done() runs. */
typedef struct ag_limit_redis_req {
    ag_limit_op *ops;       /* reserve: outputs are filled; adjust: ops[i].delta applied */
    size_t nops;
    bool adjust;            /* false: reserve */
    long long client_now_ms;
    /* results, valid in done() */
    ag_limit_redis_status status;
    bool admitted;          /* reserve: every op admitted and charged */
    long long server_now_ms;
    void (*done)(struct ag_limit_redis_req *req);
    /* private to limit_redis.c */
    struct ag_limit_redis_req *prev_, *next_;
    long long sent_ms_;
    bool eval_retry_;
    ag_limit_redis *owner_;
} ag_limit_redis_req;

typedef struct ag_limit_redis_stats {
    unsigned long long sent;
    unsigned long long errors;      /* requests completed with AG_LIMIT_REDIS_ERROR */
    unsigned long long timeouts;    /* connections dropped by the watchdog */
    unsigned long long disconnects; /* connections lost or refused */
    unsigned long long connects;    /* successful connects */
    unsigned long long noscript;    /* EVALSHA answered NOSCRIPT and was resent as EVAL */
    bool connected;
} ag_limit_redis_stats;

/* Creates the client and starts connecting on base; copies cfg. NULL on allocation failure. */
ag_limit_redis *ag_limit_redis_new(struct event_base *base, const ag_limit_redis_config *cfg);

/* Closes the connection; every request in flight completes with an error first. NULL is ignored.
 * Must not be called from a done() callback. */
void ag_limit_redis_free(ag_limit_redis *r);

/* Sends req. Returns 0 when sent: req->done runs exactly once, later (never inside this call), within
 * timeout_ms. Returns -1 when Redis is not usable right now (done never runs): decide locally. */
int ag_limit_redis_submit(ag_limit_redis *r, ag_limit_redis_req *req);

/* True while a connection is established and ready. */
bool ag_limit_redis_connected(const ag_limit_redis *r);

/* Copies the counters. */
void ag_limit_redis_get_stats(const ag_limit_redis *r, ag_limit_redis_stats *out);

/* The Lua source of the reserve and adjust scripts (for tests and operators). */
const char *ag_limit_redis_script(bool adjust);

#endif
