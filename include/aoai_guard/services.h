/* The long-lived services of the control thread that the stages use: the control-plane HTTP client,
 * the proxy's own credential, the JWKS manager, the rate-limit store, the audit trail and the
 * metrics registry. Each exists only when the configuration needs it (NULL otherwise). They are
 * created once at start, before the workers, and stopped after the workers have been joined. */
#ifndef AOAI_GUARD_SERVICES_H
#define AOAI_GUARD_SERVICES_H

#include <stdbool.h>
#include <stdint.h>

#include "aoai_guard/audit.h"
#include "aoai_guard/config.h"
#include "aoai_guard/credential.h"
#include "aoai_guard/curl_loop.h"
#include "aoai_guard/jwks_manager.h"
#include "aoai_guard/limit_store.h"
#include "aoai_guard/ratelimit.h"
#include "aoai_guard/metrics.h"

struct ag_runtime;
struct event_base;

typedef struct ag_services {
    struct ag_runtime *rt;
    struct event_base *base;       /* the control thread's loop */
    ag_curl_loop *curl;
    ag_credential *credential;     /* when an upstream or the audit trail uses Entra */
    ag_jwks_manager *jwks;         /* auth.mode entra */
    ag_limit_store *limit_store;   /* rate_limits configured */
    ag_audit *audit;               /* audit configured */
    ag_metrics *metrics;           /* always: one shard per worker + the control shard */
    ag_metrics_std std;
    struct event *sweep;           /* periodic rate-limit store sweep */
    unsigned long long credential_failures_seen[2]; /* last published, per scope */
    unsigned long long credential_failures_evented[2]; /* last reported to the audit trail */
    struct event *credential_watch;
} ag_services;

/* Creates what cfg needs. 0, or -1 with err. */
int ag_services_start(ag_services *s, struct ag_runtime *rt, struct event_base *base, const ag_config *cfg,
                      size_t nworkers, char *err, size_t errlen);
/* Brings counters kept by the services themselves into the registry (on the control thread,
 * before a scrape renders). */
void ag_services_scrape(ag_services *s);
/* Ready to serve: keys loaded, credential tokens present, audit accepting. *why names what is not. */
bool ag_services_ready(const ag_services *s, const char **why);
/* Flushes the audit trail (until deadline_ms of wall clock) and frees everything. */
void ag_services_stop(ag_services *s, int64_t audit_deadline_ms);
/* Checks that a reloaded configuration can run on the services made for the current one
 * (auth key sources, credential, stores and sinks need a restart to change). 0 or -1 with why. */
int ag_services_reload_check(const ag_config *cur, const ag_config *next, char *why, size_t whylen);

#endif
