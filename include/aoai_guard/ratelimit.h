/* Per-identity rate limits and token quotas: the "admit" stage of the request pipeline.
 *
 * Objects and owners:
 *  - ag_limit_store: process-wide and long-lived (kept across SIGHUP reloads): the in-memory counter
 *    table (the store itself, or Redis's fail-open fallback) and the store settings. Created once by
 *    the control thread, freed after every limiter.
 *  - ag_limiter: one per worker thread, on the worker's event_base (it owns that worker's Redis
 *    connection). Used only from that thread.
 *  - ag_limit_policies (ratelimit_config.h): an immutable snapshot per config version. A request
 *    passes the snapshot it started with; admission copies what it needs, so a reload can free the
 *    old snapshot while tickets are outstanding. Counters are keyed by policy name and key fields, so
 *    unchanged policies keep their state across reloads (a changed limit keeps the units counted).
 *  - ag_limit_ticket: one per admitted request, owned by the caller from admission until it passes
 *    it to ag_limit_finish() or ag_limit_cancel() (exactly once; NULL is accepted by both).
 *
 * Admission contract (ag_limiter_admit):
 *  - AG_LIMIT_DONE: the decision is in *result now (memory store, no policy applies, a static refusal,
 *    or Redis unusable and on_error decided locally). cb is never called.
 *  - AG_LIMIT_PENDING (Redis): cb(ticket, result, arg) runs exactly once later on the worker's loop,
 *    within timeout_ms, unless the caller calls ag_limit_cancel(ticket) first (client went away), in
 *    which case cb never runs and any reservation the store makes is refunded.
 *  In both cases the caller then calls ag_limit_finish(ticket, used_tokens) once the response has
 *  ended (used_tokens = usage.total_tokens, or AG_LIMIT_USAGE_UNKNOWN to keep the estimate), or
 *  ag_limit_cancel(ticket) if the request is not forwarded after all (tokens refunded, the request
 *  still counts). A refused request's ticket may be NULL.
 *
 * Verdicts map to responses: 429 rate limited, 403 token quota exhausted (as APIM's token-limit
 * policy does), 503 store unavailable (fail_closed). ag_limit_build_response() produces the status,
 * the headers and the Azure-shaped JSON error body. */
#ifndef AOAI_GUARD_RATELIMIT_H
#define AOAI_GUARD_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <cjson/cJSON.h>

#include "aoai_guard/identity.h"
#include "aoai_guard/limit_counter.h"
#include "aoai_guard/limit_redis.h"
#include "aoai_guard/limit_store.h"
#include "aoai_guard/ratelimit_config.h"

struct event_base;

#define AG_LIMIT_USAGE_UNKNOWN (-1LL)

typedef struct ag_limit_store ag_limit_store;
typedef struct ag_limiter ag_limiter;
typedef struct ag_limit_ticket ag_limit_ticket;

typedef enum ag_limit_verdict {
    AG_LIMIT_ADMITTED = 0,
    AG_LIMIT_RATE_LIMITED,  /* 429 */
    AG_LIMIT_QUOTA_EXCEEDED, /* 403 */
    AG_LIMIT_UNAVAILABLE,   /* 503: Redis down with fail_closed, or the memory table is full */
} ag_limit_verdict;

typedef struct ag_limit_result {
    ag_limit_verdict verdict;
    long long retry_after_ms;       /* refusals: when every refusing limit would admit */
    char policy[AG_LIMIT_NAME_MAX + 1]; /* refusals: the policy that refused (longest wait) */
    ag_limit_kind kind;             /* ... its limit kind, value and quota period */
    long long limit;
    ag_limit_period period;
    bool too_large;                 /* the request alone exceeds that limit: retrying cannot help */
    long long estimate;             /* tokens reserved (largest over the applied policies) */
    bool degraded;                  /* decided by the local table because Redis failed (fail_open) */
    /* the tightest applicable limits, for the x-ratelimit-* headers */
    bool has_requests;
    long long limit_requests, remaining_requests;
    bool has_tokens;
    long long limit_tokens, remaining_tokens;
    bool has_quota;
    long long quota_tokens, quota_remaining, quota_reset_ms;
} ag_limit_result;

typedef struct ag_limit_request {
    const ag_identity *id;
    const char *deployment; /* NULL or "" when the route has none (v1 paths: the body's model) */
    const char *operation;  /* "chat/completions", "embeddings", "responses", ... */
    const cJSON *body;      /* the strictly parsed request body (read only, not kept) */
} ag_limit_request;

typedef enum ag_limit_status {
    AG_LIMIT_DONE = 0,
    AG_LIMIT_PENDING = 1,
} ag_limit_status;

/* Runs once per PENDING admission; result is valid only during the call. */
typedef void (*ag_limit_done_fn)(ag_limit_ticket *t, const ag_limit_result *result, void *arg);

/* Milliseconds since the Unix epoch (UTC). */
typedef long long (*ag_limit_clock_fn)(void *arg);

typedef void (*ag_limit_log_fn)(void *arg, const char *msg);

typedef struct ag_limiter_opts {
    struct event_base *base;   /* the worker's loop; required with the Redis store */
    ag_limit_clock_fn clock;   /* NULL: CLOCK_REALTIME */
    void *clock_arg;
    ag_limit_log_fn log;       /* NULL: silent */
    void *log_arg;
    bool redis_client_clock;   /* tests only: give Redis our clock instead of its TIME */
} ag_limiter_opts;

typedef struct ag_limiter_stats {
    unsigned long long admitted, rate_limited, quota_exceeded, unavailable;
    unsigned long long fallback_decisions;  /* decided locally because Redis failed (fail_open) */
    unsigned long long lost_adjustments;    /* reconciliations Redis could not take (estimate kept) */
    bool redis_connected;
    ag_limit_redis_stats redis;             /* this worker's connection (zero with the memory store) */
} ag_limiter_stats;

/* Creates the process-wide store from a parsed config (copied). NULL on allocation failure. */
ag_limit_store *ag_limit_store_new(const ag_limit_store_config *cfg);

/* Frees the store; every limiter must be freed first. NULL is ignored. */
void ag_limit_store_free(ag_limit_store *s);

/* The settings the store was created with (to decide whether a reload may keep it). */
const ag_limit_store_config *ag_limit_store_config_of(const ag_limit_store *s);

/* Frees idle in-memory counters; returns how many. Thread-safe; call from a periodic timer. */
size_t ag_limit_store_sweep(ag_limit_store *s, long long now_ms);

/* Counters of the in-memory table (keys, capacity, bytes, reclaimed, full refusals). Thread-safe. */
void ag_limit_store_get_stats(ag_limit_store *s, ag_memstore_stats *out);

/* Creates a worker's limiter (connecting to Redis when the store is Redis). NULL on failure. */
ag_limiter *ag_limiter_new(ag_limit_store *s, const ag_limiter_opts *opts);

/* Frees the limiter on its own thread: PENDING admissions get their callback with
 * AG_LIMIT_UNAVAILABLE; tickets still held stay valid for finish/cancel, which then only free them.
 * Must not be called from a ag_limit_done_fn. NULL is ignored. */
void ag_limiter_free(ag_limiter *l);

/* Checks and reserves every matching policy's limits atomically (see the contract above). *result
 * is filled when DONE; *ticket is set in both cases (NULL when nothing needs reconciling). */
ag_limit_status ag_limiter_admit(ag_limiter *l, const ag_limit_policies *policies, const ag_limit_request *req,
                                 ag_limit_result *result, ag_limit_ticket **ticket, ag_limit_done_fn cb,
                                 void *arg);

/* Reconciles the reservation with the tokens actually used (refunding or charging the difference on
 * token limits and quotas; AG_LIMIT_USAGE_UNKNOWN keeps the estimate) and frees the ticket. */
void ag_limit_finish(ag_limit_ticket *t, long long used_tokens);

/* Abandons the request: a pending decision is dropped (cb will not run), reserved tokens are
 * refunded, and the ticket is freed. */
void ag_limit_cancel(ag_limit_ticket *t);

/* Copies this limiter's counters. */
void ag_limiter_get_stats(const ag_limiter *l, ag_limiter_stats *out);

/* ---- responses ---- */

#define AG_LIMIT_MAX_HEADERS 6

typedef struct ag_limit_header {
    const char *name;  /* static string */
    char value[24];
} ag_limit_header;

typedef struct ag_limit_response {
    int status;                 /* 0 when admitted (add the headers to the upstream response) */
    size_t nheaders;
    ag_limit_header headers[AG_LIMIT_MAX_HEADERS];
    char body[640];             /* refusals: {"error":{"code":"429","message":"..."}} */
    size_t body_len;
} ag_limit_response;

/* Builds the status, headers (x-ratelimit-limit/remaining-requests/-tokens for the tightest limits;
 * retry-after in whole seconds rounded up, and retry-after-ms, on refusals) and the error body. */
void ag_limit_build_response(const ag_limit_result *r, ag_limit_response *out);

/* Short name of a verdict: "admitted", "rate_limited", "quota_exceeded", "unavailable". */
const char *ag_limit_verdict_str(ag_limit_verdict v);

#endif
