/* JWKS manager: discovery, periodic and on-demand refresh, publication to workers (see jwks_manager.h). */
#include "aoai_guard/jwks_manager.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <event2/event.h>
#include <openssl/rand.h>

#include "aoai_guard/clock.h"
#include "aoai_guard/log.h"

#define V1_ISSUER_FMT "https://sts.windows.net/%s/"

enum target_state { T_IDLE = 0, T_META, T_KEYS };

typedef struct target {
    ag_jwks_manager *mgr;
    unsigned versions;       /* AG_TOKEN_V1 / AG_TOKEN_V2 bits its keys serve */
    char tenant[40];         /* "" for an explicit jwks_uri */
    char *metadata_url;      /* NULL: explicit jwks_uri, no discovery */
    char *expected_issuer;   /* what the metadata must say */
    char *jwks_uri;          /* explicit, or the last discovered */
    enum target_state state;
    bool failed;             /* in the current round */
    ag_jwks *keys;           /* last good keys of this source (owned) */
} target;

struct ag_jwks_manager {
    struct event_base *base;
    ag_curl_loop *curl;
    char *ca_file;
    long timeout_ms, backoff_min_ms, backoff_max_ms;
    long long refresh_ms, refetch_ms;
    ag_metric_handle failures_counter;
    void (*on_round)(void *arg, bool changed, uint64_t generation);
    void *on_round_arg;

    target *targets;
    size_t ntargets;
    size_t busy;             /* targets with a transfer in flight */
    bool round_active, rerun, rerun_discover, changed_this_round, started;
    unsigned failed_rounds;

    struct event *timer;     /* next periodic or backoff round */
    struct event *wake;      /* reads wake_fd: on-demand requests from workers */
    int wake_fd;

    pthread_mutex_t pub_lock; /* guards `current` for the pointer copy + ref only */
    ag_jwks *current;
    atomic_uint_fast64_t generation;
    atomic_bool ready;
    atomic_bool ondemand_pending;       /* granted, its round not finished yet */
    atomic_uint_fast64_t ondemand_last_ms; /* monotonic ms of the last grant; 0 = never */

    atomic_uint_fast64_t rounds, fetches, failures, consecutive, granted, throttled, nkeys;
    atomic_int_fast64_t last_success_ms, last_change_ms;
};

static uint64_t mono_ms(void)
{
    return ag_mono_ns() / 1000000u;
}

/* d scaled by a uniform factor in [1 - frac, 1 + frac]. */
static long long jitter(long long d, double frac)
{
    unsigned int r = 0;
    if (RAND_bytes((unsigned char *)&r, sizeof r) != 1)
        r = (unsigned int)ag_mono_ns();
    double f = 1.0 + frac * (2.0 * ((double)r / (double)UINT32_MAX) - 1.0);
    long long v = (long long)((double)d * f);
    return v < 1 ? 1 : v;
}

static void start_target(target *t, bool discover);
static void round_start(ag_jwks_manager *m, bool discover);

static void schedule(ag_jwks_manager *m, long long delay_ms)
{
    struct timeval tv = {.tv_sec = (time_t)(delay_ms / 1000), .tv_usec = (suseconds_t)((delay_ms % 1000) * 1000)};
    evtimer_add(m->timer, &tv);
}

/* Rebuilds the merged set from every source's keys and publishes it when its content changed. */
static bool publish_if_changed(ag_jwks_manager *m)
{
    ag_jwks **sets = calloc(m->ntargets, sizeof *sets);
    if (!sets)
        return false;
    for (size_t i = 0; i < m->ntargets; i++)
        sets[i] = m->targets[i].keys;
    ag_jwks *merged = ag_jwks_merge(sets, m->ntargets);
    free(sets);
    if (!merged)
        return false;
    if (m->current && memcmp(ag_jwks_fingerprint(merged), ag_jwks_fingerprint(m->current), 32) == 0) {
        ag_jwks_unref(merged);
        return false;
    }
    uint64_t gen = atomic_load(&m->generation) + 1;
    ag_jwks_set_generation(merged, gen);
    pthread_mutex_lock(&m->pub_lock);
    ag_jwks *old = m->current;
    m->current = merged;
    atomic_store(&m->generation, gen);
    pthread_mutex_unlock(&m->pub_lock);
    ag_jwks_unref(old);
    atomic_store(&m->nkeys, ag_jwks_count(merged));
    atomic_store(&m->last_change_ms, ag_wall_ms());
    atomic_store(&m->ready, true);
    ag_log(AG_LOG_INFO, NULL, "jwks: published key set generation %llu with %zu keys%s%s",
           (unsigned long long)gen, ag_jwks_count(merged), ag_jwks_notes(merged)[0] ? "; skipped: " : "",
           ag_jwks_notes(merged));
    return true;
}

static void round_done(ag_jwks_manager *m)
{
    bool any_failed = false;
    for (size_t i = 0; i < m->ntargets; i++)
        any_failed |= m->targets[i].failed;
    bool changed = m->changed_this_round && publish_if_changed(m);
    m->round_active = false;
    atomic_fetch_add(&m->rounds, 1);
    if (any_failed) {
        m->failed_rounds++;
        atomic_store(&m->consecutive, m->failed_rounds);
    } else {
        m->failed_rounds = 0;
        atomic_store(&m->consecutive, 0);
        atomic_store(&m->last_success_ms, ag_wall_ms());
    }
    /* A grant that arrived while this round ran waits for the rerun, so it sees fresh keys. */
    if (!m->rerun)
        atomic_store(&m->ondemand_pending, false);
    if (m->on_round)
        m->on_round(m->on_round_arg, changed, atomic_load(&m->generation));
    if (m->rerun) {
        bool discover = m->rerun_discover;
        m->rerun = m->rerun_discover = false;
        round_start(m, discover);
        return;
    }
    long long delay = m->refresh_ms;
    if (any_failed) {
        unsigned shift = m->failed_rounds - 1 < 20 ? m->failed_rounds - 1 : 20;
        long long b = (long long)m->backoff_min_ms << shift;
        if (b > m->backoff_max_ms)
            b = m->backoff_max_ms;
        delay = b < delay ? b : delay;
    }
    schedule(m, jitter(delay, any_failed ? 0.2 : 0.1));
}

static void target_done(target *t, bool ok, const char *what, const char *detail)
{
    ag_jwks_manager *m = t->mgr;
    t->state = T_IDLE;
    if (!ok) {
        t->failed = true;
        atomic_fetch_add(&m->failures, 1);
        ag_metric_inc(m->failures_counter);
        ag_log(AG_LOG_WARN, NULL, "jwks: %s for tenant %s failed: %s (keeping the last good keys)", what,
               t->tenant[0] ? t->tenant : "(any)", detail);
    }
    if (--m->busy == 0)
        round_done(m);
}

/* Formats a failed transfer or status into buf. */
static const char *http_problem(const ag_http_response *r, char *buf, size_t len)
{
    if (!r->ok)
        snprintf(buf, len, "transport error: %s", r->error ? r->error : "unknown");
    else
        snprintf(buf, len, "HTTP status %ld", r->status);
    return buf;
}

static void keys_done(const ag_http_response *r, void *arg)
{
    target *t = arg;
    char buf[256];
    if (!r->ok || r->status != 200) {
        target_done(t, false, "JWKS fetch", http_problem(r, buf, sizeof buf));
        return;
    }
    ag_jwks_scope scope = {.versions = t->versions, .tenant = t->tenant};
    ag_jwks *set = ag_jwks_parse(r->body, r->body_len, &scope, buf, sizeof buf);
    if (!set) {
        target_done(t, false, "JWKS parse", buf);
        return;
    }
    if (t->keys && memcmp(ag_jwks_fingerprint(t->keys), ag_jwks_fingerprint(set), 32) == 0) {
        ag_jwks_unref(set);
    } else {
        ag_jwks_unref(t->keys);
        t->keys = set;
        t->mgr->changed_this_round = true;
    }
    target_done(t, true, "JWKS fetch", NULL);
}

static void meta_done(const ag_http_response *r, void *arg)
{
    target *t = arg;
    char buf[400];
    if (!r->ok || r->status != 200) {
        target_done(t, false, "metadata fetch", http_problem(r, buf, sizeof buf));
        return;
    }
    ag_oidc_metadata md;
    if (ag_oidc_metadata_parse(r->body, r->body_len, &md, buf, sizeof buf) != 0) {
        target_done(t, false, "metadata parse", buf);
        return;
    }
    if (strcmp(md.issuer, t->expected_issuer) != 0) {
        snprintf(buf, sizeof buf, "issuer \"%.120s\" is not the expected \"%.120s\"", md.issuer, t->expected_issuer);
        ag_oidc_metadata_free(&md);
        target_done(t, false, "metadata check", buf);
        return;
    }
    free(t->jwks_uri);
    t->jwks_uri = md.jwks_uri;
    md.jwks_uri = NULL;
    ag_oidc_metadata_free(&md);
    start_target(t, false);
}

static int fetch(target *t, const char *url, ag_http_done_fn done)
{
    static const char *const headers[] = {"Accept: application/json", NULL};
    ag_http_request req = {.method = "GET", .url = url, .headers = headers, .timeout_ms = t->mgr->timeout_ms,
                           .ca_file = t->mgr->ca_file};
    atomic_fetch_add(&t->mgr->fetches, 1);
    return ag_curl_loop_start(t->mgr->curl, &req, done, t);
}

/* Starts the target's next transfer; counts it busy (the caller already did for a new round). */
static void start_target(target *t, bool discover)
{
    if (t->metadata_url && (discover || !t->jwks_uri)) {
        t->state = T_META;
        if (fetch(t, t->metadata_url, meta_done) != 0)
            target_done(t, false, "metadata fetch", "could not start the transfer");
    } else {
        t->state = T_KEYS;
        if (fetch(t, t->jwks_uri, keys_done) != 0)
            target_done(t, false, "JWKS fetch", "could not start the transfer");
    }
}

static void round_start(ag_jwks_manager *m, bool discover)
{
    if (m->round_active) {
        m->rerun = true;
        m->rerun_discover |= discover;
        return;
    }
    evtimer_del(m->timer);
    m->round_active = true;
    m->changed_this_round = false;
    m->busy = m->ntargets;
    for (size_t i = 0; i < m->ntargets; i++)
        m->targets[i].failed = false;
    /* busy is set for all first: a synchronous failure in one target must not end the round early. */
    m->busy++;
    for (size_t i = 0; i < m->ntargets; i++)
        start_target(&m->targets[i], discover);
    if (--m->busy == 0)
        round_done(m);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    ag_jwks_manager *m = arg;
    bool discover = true;
    for (size_t i = 0; i < m->ntargets; i++)
        discover &= !m->targets[i].failed || !m->targets[i].jwks_uri; /* retries skip known-good metadata */
    round_start(m, discover || m->failed_rounds == 0);
}

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
    ag_jwks_manager *m = arg;
    uint64_t v;
    while (read(m->wake_fd, &v, sizeof v) == (ssize_t)sizeof v)
        ;
    if (atomic_load(&m->ondemand_pending))
        round_start(m, false); /* keys only: the metadata rarely changes, the kid might have */
}

bool ag_jwks_manager_request_refresh(ag_jwks_manager *m, uint64_t generation_seen)
{
    if (atomic_load(&m->generation) > generation_seen)
        return true;
    if (atomic_load(&m->ondemand_pending))
        return true;
    uint64_t now = mono_ms(), last = atomic_load(&m->ondemand_last_ms);
    if (last != 0 && now - last < (uint64_t)m->refetch_ms) {
        atomic_fetch_add(&m->throttled, 1);
        return false;
    }
    bool expected = false;
    if (!atomic_compare_exchange_strong(&m->ondemand_pending, &expected, true))
        return true; /* another worker was granted this very refresh */
    last = atomic_load(&m->ondemand_last_ms);
    if (last != 0 && now - last < (uint64_t)m->refetch_ms) { /* a grant finished between our checks */
        atomic_store(&m->ondemand_pending, false);
        atomic_fetch_add(&m->throttled, 1);
        return false;
    }
    atomic_store(&m->ondemand_last_ms, now ? now : 1);
    atomic_fetch_add(&m->granted, 1);
    uint64_t one = 1;
    if (write(m->wake_fd, &one, sizeof one) != (ssize_t)sizeof one && errno != EAGAIN) {
        atomic_store(&m->ondemand_pending, false);
        return false;
    }
    return true;
}

/* asprintf that yields NULL on failure. */
static char *fmt_alloc(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *fmt_alloc(const char *fmt, ...)
{
    char *s = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    return n < 0 ? NULL : s;
}

ag_jwks_manager *ag_jwks_manager_new(const ag_jwks_manager_opts *o, char *err, size_t errlen)
{
    const ag_auth_config *cfg = o ? o->cfg : NULL;
    if (!cfg || !o->base || !o->curl || cfg->mode != AG_AUTH_MODE_ENTRA || !cfg->authority_host ||
        (!cfg->jwks_uri && cfg->ntenants == 0) || !(cfg->versions & (AG_TOKEN_V1 | AG_TOKEN_V2))) {
        snprintf(err, errlen, "jwks manager: needs an entra auth config with tenants or jwks_uri, a base and a curl loop");
        return NULL;
    }
    ag_jwks_manager *m = calloc(1, sizeof *m);
    if (!m)
        goto oom;
    m->wake_fd = -1;
    pthread_mutex_init(&m->pub_lock, NULL);
    m->base = o->base;
    m->curl = o->curl;
    m->timeout_ms = o->fetch_timeout_ms > 0 ? o->fetch_timeout_ms : 10000;
    m->refresh_ms = cfg->jwks_refresh_s * 1000;
    m->refetch_ms = cfg->unknown_kid_refetch_s * 1000;
    m->backoff_min_ms = o->backoff_min_ms > 0 ? o->backoff_min_ms : 1000;
    m->backoff_max_ms = o->backoff_max_ms > 0 ? o->backoff_max_ms : 300000;
    m->failures_counter = o->failures;
    m->on_round = o->on_round;
    m->on_round_arg = o->on_round_arg;
    if (cfg->ca_file && !(m->ca_file = strdup(cfg->ca_file)))
        goto oom;

    size_t nver = ((cfg->versions & AG_TOKEN_V1) ? 1 : 0) + ((cfg->versions & AG_TOKEN_V2) ? 1 : 0);
    m->ntargets = cfg->jwks_uri ? 1 : cfg->ntenants * nver;
    m->targets = calloc(m->ntargets, sizeof *m->targets);
    if (!m->targets)
        goto oom;
    if (cfg->jwks_uri) {
        target *t = &m->targets[0];
        t->mgr = m;
        t->versions = cfg->versions;
        if (!(t->jwks_uri = strdup(cfg->jwks_uri)))
            goto oom;
    } else {
        size_t k = 0;
        for (size_t i = 0; i < cfg->ntenants; i++)
            for (unsigned v = AG_TOKEN_V1; v <= AG_TOKEN_V2; v <<= 1) {
                if (!(cfg->versions & v))
                    continue;
                target *t = &m->targets[k++];
                t->mgr = m;
                t->versions = v;
                snprintf(t->tenant, sizeof t->tenant, "%s", cfg->tenants[i]);
                if (v == AG_TOKEN_V2) {
                    t->metadata_url = fmt_alloc("%s/%s/v2.0/.well-known/openid-configuration",
                                                cfg->authority_host, cfg->tenants[i]);
                    t->expected_issuer = fmt_alloc("%s/%s/v2.0", cfg->authority_host, cfg->tenants[i]);
                } else {
                    t->metadata_url = fmt_alloc("%s/%s/.well-known/openid-configuration", cfg->authority_host,
                                                cfg->tenants[i]);
                    t->expected_issuer = fmt_alloc(V1_ISSUER_FMT, cfg->tenants[i]);
                }
                if (!t->metadata_url || !t->expected_issuer)
                    goto oom;
            }
    }
    m->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (m->wake_fd < 0) {
        snprintf(err, errlen, "jwks manager: eventfd: %s", strerror(errno));
        ag_jwks_manager_free(m);
        return NULL;
    }
    m->timer = evtimer_new(m->base, timer_cb, m);
    m->wake = event_new(m->base, m->wake_fd, EV_READ | EV_PERSIST, wake_cb, m);
    if (!m->timer || !m->wake || event_add(m->wake, NULL) != 0)
        goto oom;
    return m;
oom:
    snprintf(err, errlen, "jwks manager: out of memory");
    ag_jwks_manager_free(m);
    return NULL;
}

int ag_jwks_manager_start(ag_jwks_manager *m)
{
    if (m->started)
        return 0;
    m->started = true;
    round_start(m, true);
    return 0;
}

void ag_jwks_manager_refresh_now(ag_jwks_manager *m)
{
    round_start(m, true);
}

void ag_jwks_manager_free(ag_jwks_manager *m)
{
    if (!m)
        return;
    for (size_t i = 0; m->targets && i < m->ntargets; i++) {
        target *t = &m->targets[i];
        if (m->curl)
            ag_curl_loop_cancel(m->curl, t);
        ag_jwks_unref(t->keys);
        free(t->metadata_url);
        free(t->expected_issuer);
        free(t->jwks_uri);
    }
    free(m->targets);
    if (m->timer)
        event_free(m->timer);
    if (m->wake)
        event_free(m->wake);
    if (m->wake_fd >= 0)
        close(m->wake_fd);
    ag_jwks_unref(m->current);
    free(m->ca_file);
    pthread_mutex_destroy(&m->pub_lock);
    free(m);
}

ag_jwks *ag_jwks_manager_acquire(ag_jwks_manager *m)
{
    pthread_mutex_lock(&m->pub_lock);
    ag_jwks *s = m->current ? ag_jwks_ref(m->current) : NULL;
    pthread_mutex_unlock(&m->pub_lock);
    return s;
}

ag_jwks *ag_jwks_manager_sync(ag_jwks_manager *m, ag_jwks *held)
{
    if (held && ag_jwks_generation(held) == atomic_load(&m->generation))
        return held;
    ag_jwks_unref(held);
    return ag_jwks_manager_acquire(m);
}

uint64_t ag_jwks_manager_generation(const ag_jwks_manager *m)
{
    return atomic_load(&m->generation);
}

uint64_t ag_jwks_manager_rounds(const ag_jwks_manager *m)
{
    return atomic_load(&m->rounds);
}

bool ag_jwks_manager_ready(const ag_jwks_manager *m)
{
    return atomic_load(&m->ready);
}

void ag_jwks_manager_get_stats(const ag_jwks_manager *m, ag_jwks_manager_stats *out)
{
    out->ready = atomic_load(&m->ready);
    out->generation = atomic_load(&m->generation);
    out->keys = (size_t)atomic_load(&m->nkeys);
    out->last_success_ms = atomic_load(&m->last_success_ms);
    out->last_change_ms = atomic_load(&m->last_change_ms);
    out->rounds = atomic_load(&m->rounds);
    out->fetches = atomic_load(&m->fetches);
    out->failures = atomic_load(&m->failures);
    out->consecutive_failures = atomic_load(&m->consecutive);
    out->ondemand_granted = atomic_load(&m->granted);
    out->ondemand_throttled = atomic_load(&m->throttled);
}

double ag_jwks_manager_age_seconds(void *ctx)
{
    const ag_jwks_manager *m = ctx;
    int64_t last = atomic_load(&m->last_success_ms);
    if (last == 0)
        return NAN;
    return (double)(ag_wall_ms() - last) / 1000.0;
}
