/* Control-thread services the stages use (see services.h). */
#include "aoai_guard/services.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "aoai_guard/auth_stage.h"
#include "aoai_guard/log.h"
#include "aoai_guard/ratelimit.h"
#include "aoai_guard/runtime.h"
#include "aoai_guard/worker.h"

static void credential_watch_cb(evutil_socket_t fd, short what, void *arg);

/* The audit thread asks for the Azure Monitor token here; the copy lives in a buffer only that
 * thread uses. */
static _Thread_local char monitor_token[16384];

static const char *audit_get_token(void *arg)
{
    ag_services *s = arg;
    if (!s->credential)
        return NULL;
    long n = ag_credential_token_copy(s->credential, AG_SCOPE_MONITOR, monitor_token, sizeof monitor_token);
    return n > 0 ? monitor_token : NULL;
}

static void audit_token_rejected(void *arg)
{
    ag_log(AG_LOG_WARN, NULL, "Azure Monitor rejected the proxy's token; it will be refreshed on schedule");
}

static double audit_queue_depth(void *ctx)
{
    const ag_audit_counters *c = ag_audit_counters_get(ctx);
    return (double)atomic_load(&c->queue_depth);
}

static double audit_spool_bytes(void *ctx)
{
    const ag_audit_counters *c = ag_audit_counters_get(ctx);
    return (double)atomic_load(&c->spool_bytes);
}

static double audit_rows_sent(void *ctx)
{
    return (double)atomic_load(&ag_audit_counters_get(ctx)->rows_sent);
}

static double audit_retries(void *ctx)
{
    return (double)atomic_load(&ag_audit_counters_get(ctx)->retries);
}

static double audit_dropped(void *ctx)
{
    return (double)atomic_load(&ag_audit_counters_get(ctx)->dropped);
}

static double jwks_age(void *ctx)
{
    return ag_jwks_manager_age_seconds(ctx);
}

/* A JWKS round finished: every worker re-tries the requests parked on an unknown kid. */
static void jwks_round(void *arg, bool changed, uint64_t generation)
{
    ag_services *s = arg;
    ag_runtime *rt = s->rt;
    for (size_t i = 0; i < rt->nworkers; i++)
        ag_worker_post(&rt->workers[i], ag_auth_stage_keys_round, NULL);
    if (changed) {
        ag_log(AG_LOG_INFO, NULL, "JWKS: new key set published (generation %llu)", (unsigned long long)generation);
        if (s->audit) {
            char gen[24], keys[24];
            ag_jwks_manager_stats st;
            ag_jwks_manager_get_stats(s->jwks, &st);
            snprintf(gen, sizeof gen, "%llu", (unsigned long long)generation);
            snprintf(keys, sizeof keys, "%zu", st.keys);
            ag_audit_event(s->audit, AG_EVENT_JWKS_ROTATION, "generation", gen, "keys", keys, NULL);
        }
    }
}

static void sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    ag_services *s = arg;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ag_limit_store_sweep(s->limit_store, (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

int ag_services_start(ag_services *s, struct ag_runtime *rt, struct event_base *base, const ag_config *cfg,
                      size_t nworkers, char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    s->rt = rt;
    s->base = base;
    s->metrics = ag_metrics_new((unsigned)nworkers + 1, cfg->metrics.max_series);
    if (!s->metrics || ag_metrics_std_init(s->metrics, &cfg->metrics, NULL, &s->std, err, errlen) != 0) {
        if (!s->metrics)
            snprintf(err, errlen, "cannot create the metrics registry");
        return -1;
    }
    s->curl = ag_curl_loop_new(base);
    if (!s->curl) {
        snprintf(err, errlen, "cannot create the control-plane HTTP client");
        return -1;
    }
    if (cfg->has_credential) {
        ag_conf_err ce;
        s->credential = ag_credential_new(base, s->curl, &cfg->credential, &ce);
        if (!s->credential) {
            snprintf(err, errlen, "credential: %s", ce.msg);
            return -1;
        }
        bool cognitive = cfg->content_safety.use_entra;
        for (size_t i = 0; i < cfg->nupstreams; i++)
            cognitive |= cfg->upstreams[i].auth == AG_UPSTREAM_AUTH_ENTRA;
        if (cognitive)
            ag_credential_add_scope(s->credential, AG_SCOPE_COGNITIVE);
        for (size_t i = 0; cfg->has_audit && i < cfg->audit.nsinks; i++)
            if (cfg->audit.sinks[i].type == AG_AUDIT_SINK_AZURE_MONITOR) {
                ag_credential_add_scope(s->credential, AG_SCOPE_MONITOR);
                break;
            }
    }
    if (s->credential) {
        s->credential_watch = event_new(base, -1, EV_PERSIST, credential_watch_cb, s);
        struct timeval tv = {10, 0};
        if (s->credential_watch)
            event_add(s->credential_watch, &tv);
    }
    if (cfg->auth.mode == AG_AUTH_MODE_ENTRA) {
        ag_jwks_manager_opts o = {
            .cfg = &cfg->auth,
            .base = base,
            .curl = s->curl,
            .failures = ag_metric_series(s->std.jwks_refresh_failures_total,
                                         ag_metrics_control_shard(s->metrics), NULL),
            .on_round = jwks_round,
            .on_round_arg = s,
        };
        s->jwks = ag_jwks_manager_new(&o, err, errlen);
        if (!s->jwks || ag_jwks_manager_start(s->jwks) != 0)
            return -1;
        ag_metric_family_set_fn(s->std.jwks_age_seconds, jwks_age, s->jwks);
    }
    if (cfg->has_rate_limits) {
        s->limit_store = ag_limit_store_new(&cfg->rate_limits.store);
        if (!s->limit_store) {
            snprintf(err, errlen, "rate_limits.store: cannot create the store");
            return -1;
        }
        s->sweep = event_new(base, -1, EV_PERSIST, sweep_cb, s);
        struct timeval tv = {10, 0};
        event_add(s->sweep, &tv);
    }
    if (cfg->has_audit) {
        ag_audit_init ai = {
            .config = &cfg->audit,
            .token = {.get_token = audit_get_token, .token_rejected = audit_token_rejected, .arg = s},
            .stdout_fd = 1,
        };
        s->audit = ag_audit_new(&ai, err, errlen);
        if (!s->audit)
            return -1;
        ag_metric_family_set_fn(s->std.audit_queue_depth, audit_queue_depth, s->audit);
        ag_metric_family_set_fn(s->std.audit_spool_bytes, audit_spool_bytes, s->audit);
        ag_metric_family_set_fn(s->std.audit_records_sent_total, audit_rows_sent, s->audit);
        ag_metric_family_set_fn(s->std.audit_retries_total, audit_retries, s->audit);
        ag_metric_family_set_fn(s->std.audit_dropped_total, audit_dropped, s->audit);
    } else {
        ag_log(AG_LOG_WARN, NULL, "no audit section: requests are not recorded in an audit trail");
    }
    return 0;
}

/* Every 10 s on the control thread: new credential refresh failures become gateway events in the
 * audit trail (and the counter metric). */
static void credential_watch_cb(evutil_socket_t fd, short what, void *arg)
{
    ag_services *s = arg;
    static const char *const scopes[] = {AG_SCOPE_COGNITIVE, AG_SCOPE_MONITOR};
    for (int i = 0; i < 2; i++) {
        ag_credential_stats st;
        if (ag_credential_stats_get(s->credential, scopes[i], &st) != 0)
            continue;
        if (st.failures > s->credential_failures_evented[i]) {
            char n[24], left[24];
            snprintf(n, sizeof n, "%llu", st.failures - s->credential_failures_evented[i]);
            snprintf(left, sizeof left, "%lld", st.seconds_to_expiry);
            if (s->audit)
                ag_audit_event(s->audit, AG_EVENT_CREDENTIAL_REFRESH_FAILED, "credential",
                               ag_credential_source_str(ag_credential_get_source(s->credential)), "scope", scopes[i],
                               "failures", n, "token_seconds_left", left, NULL);
            s->credential_failures_evented[i] = st.failures;
        }
    }
    ag_services_scrape(s);
}

void ag_services_scrape(ag_services *s)
{
    if (!s->credential)
        return;
    static const char *const scopes[] = {AG_SCOPE_COGNITIVE, AG_SCOPE_MONITOR};
    for (int i = 0; i < 2; i++) {
        ag_credential_stats st;
        if (ag_credential_stats_get(s->credential, scopes[i], &st) != 0)
            continue;
        if (st.failures > s->credential_failures_seen[i]) {
            ag_metric_add(ag_metric_series(s->std.credential_refresh_failures_total,
                                           ag_metrics_control_shard(s->metrics), (const char *const[]){scopes[i]}),
                          st.failures - s->credential_failures_seen[i]);
            s->credential_failures_seen[i] = st.failures;
        }
    }
}

bool ag_services_ready(const ag_services *s, const char **why)
{
    if (s->jwks && !ag_jwks_manager_ready(s->jwks)) {
        *why = "signing keys not loaded";
        return false;
    }
    if (s->credential && !ag_credential_ready(s->credential)) {
        *why = "credential has no token yet";
        return false;
    }
    if (s->audit && !ag_audit_accepting(s->audit)) {
        *why = "audit trail not accepting records";
        return false;
    }
    return true;
}

void ag_services_stop(ag_services *s, int64_t audit_deadline_ms)
{
    if (s->audit) {
        ag_audit_shutdown(s->audit, audit_deadline_ms);
        ag_audit_free(s->audit);
    }
    if (s->sweep)
        event_free(s->sweep);
    if (s->credential_watch)
        event_free(s->credential_watch);
    if (s->jwks)
        ag_jwks_manager_free(s->jwks);
    if (s->credential)
        ag_credential_free(s->credential);
    if (s->limit_store)
        ag_limit_store_free(s->limit_store);
    if (s->curl)
        ag_curl_loop_free(s->curl);
    if (s->metrics)
        ag_metrics_free(s->metrics);
    memset(s, 0, sizeof *s);
}

static bool same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static bool same_strv(char **a, size_t na, char **b, size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++)
        if (strcmp(a[i], b[i]) != 0)
            return false;
    return true;
}

int ag_services_reload_check(const ag_config *cur, const ag_config *next, char *why, size_t whylen)
{
    const ag_auth_config *a = &cur->auth, *b = &next->auth;
    if (a->mode != b->mode || !same_str(a->authority_host, b->authority_host) ||
        !same_str(a->jwks_uri, b->jwks_uri) || a->versions != b->versions ||
        !same_strv(a->tenants, a->ntenants, b->tenants, b->ntenants) || !same_str(a->ca_file, b->ca_file)) {
        snprintf(why, whylen, "auth mode and key sources (authority_host, tenants, jwks_uri, "
                              "accepted_token_versions, ca_file) change only with a restart");
        return -1;
    }
    if (cur->has_credential != next->has_credential ||
        (cur->has_credential && (cur->credential.type != next->credential.type ||
                                 !same_str(cur->credential.client_id, next->credential.client_id) ||
                                 !same_str(cur->credential.tenant_id, next->credential.tenant_id)))) {
        snprintf(why, whylen, "the credential section changes only with a restart");
        return -1;
    }
    if (cur->has_rate_limits != next->has_rate_limits ||
        (cur->has_rate_limits && !ag_limit_store_config_same(&cur->rate_limits.store, &next->rate_limits.store))) {
        snprintf(why, whylen, "rate_limits.store changes only with a restart (policies reload)");
        return -1;
    }
    if (cur->has_audit != next->has_audit || memcmp(cur->section_sha256[10], next->section_sha256[10], 32) != 0) {
        snprintf(why, whylen, "the audit section changes only with a restart (sinks and spools stay open)");
        return -1;
    }
    return 0;
}
