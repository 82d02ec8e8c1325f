/* JWKS manager: keeps the current Entra ID key set on the control thread and hands it to workers.
 *
 * Sources. With auth.jwks_uri set, that one document serves every tenant and token version. Otherwise,
 * for each configured tenant and each accepted token version, the OpenID metadata at
 *   v2: {authority_host}/{tenant}/v2.0/.well-known/openid-configuration
 *   v1: {authority_host}/{tenant}/.well-known/openid-configuration
 * is fetched, its issuer checked (v2: {authority_host}/{tenant}/v2.0, v1: https://sts.windows.net/{tenant}/),
 * then its jwks_uri; keys are scoped to that tenant and version (AZURE.md 1.1, 1.3).
 *
 * Schedule. Everything is fetched at start, then every jwks_refresh_s (±10% jitter). A round with a
 * failed source is retried with exponential backoff; each source keeps its last good keys, so an
 * outage never empties the key set. Workers may ask for an early refresh when a token names an unknown
 * kid: at most one such refresh per unknown_kid_refetch_s, however many ask (a forged-kid flood causes
 * one refetch per interval). A new set is published only when its content changed (fingerprint); each
 * publication increments the generation, which token-cache entries remember.
 *
 * Threads. new/start/refresh_now/free run on the control thread that owns base and curl. acquire, sync,
 * generation, rounds, ready, request_refresh and get_stats may be called from any thread: the current
 * set is read under a mutex held only for a pointer copy and a reference increment (sync avoids even
 * that while the generation is unchanged), counters are atomics, and a refresh request is an atomic
 * flag plus a write to an eventfd watched by base. */
#ifndef AOAI_GUARD_JWKS_MANAGER_H
#define AOAI_GUARD_JWKS_MANAGER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aoai_guard/auth_config.h"
#include "aoai_guard/curl_loop.h"
#include "aoai_guard/jwks.h"
#include "aoai_guard/metrics.h"

struct event_base;

typedef struct ag_jwks_manager ag_jwks_manager;

typedef struct ag_jwks_manager_opts {
    const ag_auth_config *cfg;     /* authority_host, tenants, versions, jwks_uri, ca_file, periods (copied) */
    struct event_base *base;       /* the control thread's loop (not owned) */
    ag_curl_loop *curl;            /* on the same loop (not owned; must outlive the manager) */
    long fetch_timeout_ms;         /* per HTTP transfer; 0 = 10000 */
    long backoff_min_ms;           /* first retry delay after a failed round; 0 = 1000 */
    long backoff_max_ms;           /* retry delay cap; 0 = 300000 (never beyond jwks_refresh_s) */
    ag_metric_handle failures;     /* optional counter (control shard): +1 per failed source fetch */
    /* Optional: called on the control thread after each completed round; changed = a new set was
     * published. The pipeline can use it to wake requests parked on an unknown kid. */
    void (*on_round)(void *arg, bool changed, uint64_t generation);
    void *on_round_arg;
} ag_jwks_manager_opts;

typedef struct ag_jwks_manager_stats {
    bool ready;                    /* a key set has been published at least once */
    uint64_t generation;           /* of the current set; 0 before the first */
    size_t keys;                   /* in the current set */
    int64_t last_success_ms;       /* wall clock of the last round in which every source succeeded */
    int64_t last_change_ms;        /* wall clock of the last publication */
    uint64_t rounds;               /* completed refresh rounds */
    uint64_t fetches;              /* HTTP transfers started (metadata + JWKS) */
    uint64_t failures;             /* source fetches that failed (transport, status, parse, issuer) */
    uint64_t consecutive_failures; /* failed rounds since the last fully successful one */
    uint64_t ondemand_granted;     /* unknown-kid refresh requests that caused a refresh */
    uint64_t ondemand_throttled;   /* requests refused by the once-per-interval limit */
} ag_jwks_manager_stats;

/* Builds the manager (no I/O yet); NULL with err on bad options or allocation failure. Owned by the
 * caller; free with ag_jwks_manager_free on the control thread. */
ag_jwks_manager *ag_jwks_manager_new(const ag_jwks_manager_opts *opts, char *err, size_t errlen);
/* Starts the first round now (control thread). 0, or -1 when nothing could be started. */
int ag_jwks_manager_start(ag_jwks_manager *m);
/* Starts a full round now (metadata + keys) unless one is running, which then runs again after it
 * (control thread; for reloads, operators and tests). */
void ag_jwks_manager_refresh_now(ag_jwks_manager *m);
/* Cancels transfers and timers and frees everything (control thread). Sets acquired by workers stay
 * valid until they drop their references. NULL is a no-op. */
void ag_jwks_manager_free(ag_jwks_manager *m);

/* The current set with a new reference (caller unrefs), or NULL before the first load. Any thread. */
ag_jwks *ag_jwks_manager_acquire(ag_jwks_manager *m);
/* Returns held when it is still current, else drops held and returns a reference to the current set
 * (or NULL). The worker's per-request call: lock-free while the generation is unchanged. Any thread. */
ag_jwks *ag_jwks_manager_sync(ag_jwks_manager *m, ag_jwks *held);
/* Generation of the current set (0 before the first load). Lock-free, any thread. */
uint64_t ag_jwks_manager_generation(const ag_jwks_manager *m);
/* Completed rounds so far (a parked request can wait for this to move). Lock-free, any thread. */
uint64_t ag_jwks_manager_rounds(const ag_jwks_manager *m);
/* True once keys have been loaded at least once (for /readyz). Any thread. */
bool ag_jwks_manager_ready(const ag_jwks_manager *m);

/* A worker saw an unknown kid under generation_seen. Returns true when newer keys are already there
 * or a refresh will happen (granted now, or already pending): park the request until the generation or
 * the round count moves (with a deadline), then validate again. Returns false when refused by the
 * once-per-unknown_kid_refetch_s limit: answer 401. Any thread, never blocks. */
bool ag_jwks_manager_request_refresh(ag_jwks_manager *m, uint64_t generation_seen);

/* Counters for metrics and health. Any thread. */
void ag_jwks_manager_get_stats(const ag_jwks_manager *m, ag_jwks_manager_stats *out);
/* Seconds since the last fully successful round (NaN before the first); an ag_metric_value_fn for the
 * jwks_age_seconds gauge (ctx = the manager). */
double ag_jwks_manager_age_seconds(void *ctx);

#endif
