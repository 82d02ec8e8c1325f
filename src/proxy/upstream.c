/* Per-worker upstream pools, DNS cache, TLS and health (see upstream.h). */
#include "aoai_guard/upstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "aoai_guard/clock.h"
#include "aoai_guard/log.h"
#include "aoai_guard/runtime.h"
#include "aoai_guard/worker.h"

#define DNS_MIN_TTL_S 1
#define DNS_MAX_TTL_S 300
#define DNS_HOSTS_TTL_S 30

struct ag_connect_req {
    TAILQ_ENTRY(ag_connect_req) link;  /* on the DNS waiters list while resolving */
    ag_upstream_state *up;
    ag_connect_fn fn;
    void *arg;
    ag_upconn *uc;                     /* once connecting */
    struct event *timer;               /* connect deadline (DNS + TCP + TLS) */
    bool waiting_dns;
};

static uint64_t ms_to_ns(long long ms)
{
    return (uint64_t)ms * 1000000ull;
}

/* This worker's view of up in its own metrics shard: summed over workers on scrape. */
static void publish_health(ag_upstream_state *up, bool open)
{
    ag_worker *w = up->set->worker;
    const ag_metrics_std *m = &w->rt->svc.std;
    const char *name[] = {up->conf->name};
    ag_metric_set(ag_metric_series(m->upstream_circuit_open, w->metrics_shard, name), open ? 1.0 : 0.0);
    ag_metric_set(ag_metric_series(m->upstream_up, w->metrics_shard, name), open ? 0.0 : 1.0);
}

/* ---- set lifecycle --------------------------------------------------------------------------- */

ag_upstream_set *ag_upstream_set_new(struct ag_worker *w, ag_config *cfg)
{
    ag_upstream_set *set = calloc(1, sizeof *set);
    if (!set)
        return NULL;
    set->ups = calloc(cfg->nupstreams, sizeof *set->ups);
    if (!set->ups) {
        free(set);
        return NULL;
    }
    set->worker = w;
    set->cfg = ag_config_ref(cfg);
    set->n = cfg->nupstreams;
    set->refs = 1;
    for (size_t i = 0; i < set->n; i++) {
        ag_upstream_state *up = &set->ups[i];
        up->conf = &cfg->upstreams[i];
        up->set = set;
        up->index = (int)i;
        TAILQ_INIT(&up->idle);
        TAILQ_INIT(&up->dns_waiters);
        publish_health(up, false);
    }
    return set;
}

static void upconn_close(ag_upconn *uc)
{
    ag_upstream_state *up = uc->up;
    if (uc->idle) {
        TAILQ_REMOVE(&up->idle, uc, link);
        up->nidle--;
    }
    if (uc->idle_deadline.ev)
        event_free(uc->idle_deadline.ev);
    if (uc->bev) {
        ag_sender_detach(&uc->snd);
        ag_reader_detach(&uc->rd);
        bufferevent_free(uc->bev);
    }
    up->nopen--;
    ag_upstream_set *set = up->set;
    free(uc);
    ag_upstream_set_unref(set);
}

void ag_upstream_set_ref(ag_upstream_set *set)
{
    set->refs++;
}

void ag_upstream_set_unref(ag_upstream_set *set)
{
    if (--set->refs > 0)
        return;
    for (size_t i = 0; i < set->n; i++)
        if (set->ups[i].session)
            SSL_SESSION_free(set->ups[i].session);
    ag_config_unref(set->cfg);
    free(set->ups);
    free(set);
}

void ag_upstream_set_retire(ag_upstream_set *set)
{
    set->retired = true;
    /* Idle connections belong to the old snapshot: close them now. */
    set->refs++;
    for (size_t i = 0; i < set->n; i++) {
        ag_upconn *uc;
        while ((uc = TAILQ_FIRST(&set->ups[i].idle)))
            upconn_close(uc);
    }
    set->refs--;
    ag_upstream_set_unref(set);
}

/* ---- health and selection -------------------------------------------------------------------- */

bool ag_upstream_circuit_open(const ag_upstream_state *up, uint64_t now_ns)
{
    return up->circuit_open_until_ns && now_ns < up->circuit_open_until_ns;
}

void ag_upstream_report_success(ag_upstream_state *up)
{
    if (up->circuit_open_until_ns)
        ag_log(AG_LOG_INFO, NULL, "upstream %s recovered; circuit closed", up->conf->name);
    bool was_open = up->circuit_open_until_ns != 0;
    up->consecutive_failures = 0;
    up->circuit_open_until_ns = 0;
    up->half_open_probe = false;
    if (was_open)
        publish_health(up, false);
}

void ag_upstream_count_failure(ag_upstream_state *up, const char *reason)
{
    ag_worker *w = up->set->worker;
    ag_metric_inc(ag_metric_series(w->rt->svc.std.upstream_failures_total, w->metrics_shard,
                                   (const char *const[]){up->conf->name, reason}));
}

void ag_upstream_report_failure(ag_upstream_state *up, uint64_t now_ns, const char *reason)
{
    ag_upstream_count_failure(up, reason);
    up->failures++;
    up->consecutive_failures++;
    bool was_probe = up->half_open_probe;
    up->half_open_probe = false;
    if (was_probe || up->consecutive_failures >= up->conf->failure_threshold) {
        up->circuit_open_until_ns = now_ns + ms_to_ns(up->conf->cooldown_ms);
        ag_log(AG_LOG_WARN, NULL, "upstream %s: circuit open for %lld ms after %d consecutive failures",
               up->conf->name, up->conf->cooldown_ms, up->consecutive_failures);
        publish_health(up, true);
    }
}

void ag_upstream_report_retry_after(ag_upstream_state *up, long long ms, uint64_t now_ns)
{
    if (ms <= 0)
        return;
    if (ms > 3600000)
        ms = 3600000;
    uint64_t until = now_ns + ms_to_ns(ms);
    if (until > up->blocked_until_ns)
        up->blocked_until_ns = until;
}

/* Available for a new attempt now? (an expired open circuit allows one half-open probe) */
static bool available(const ag_upstream_state *up, uint64_t now_ns)
{
    if (up->blocked_until_ns > now_ns)
        return false;
    if (up->circuit_open_until_ns) {
        if (now_ns < up->circuit_open_until_ns)
            return false;
        return !up->half_open_probe;
    }
    return true;
}

bool ag_upstream_any_available(const ag_upstream_set *set, uint64_t tried_mask, uint64_t now_ns)
{
    for (size_t i = 0; i < set->n; i++)
        if (!(tried_mask & (1ull << i)) && available(&set->ups[i], now_ns))
            return true;
    return false;
}

int ag_upstream_pick(ag_upstream_set *set, uint64_t tried_mask, uint64_t now_ns, long long *wait_ms)
{
    int best_prio = -1;
    uint64_t soonest = UINT64_MAX;
    for (size_t i = 0; i < set->n; i++) {
        ag_upstream_state *up = &set->ups[i];
        if (tried_mask & (1ull << i))
            continue;
        if (!available(up, now_ns)) {
            uint64_t t = up->blocked_until_ns > now_ns ? up->blocked_until_ns : 0;
            if (up->circuit_open_until_ns > t)
                t = up->circuit_open_until_ns;
            if (t > now_ns && t < soonest)
                soonest = t;
            continue;
        }
        if (best_prio < 0 || up->conf->priority < best_prio)
            best_prio = up->conf->priority;
    }
    if (wait_ms)
        *wait_ms = soonest == UINT64_MAX ? 0 : (long long)((soonest - now_ns + 999999) / 1000000);
    if (best_prio < 0)
        return -1;
    int total = 0, pick = -1;
    for (size_t i = 0; i < set->n; i++) {
        ag_upstream_state *up = &set->ups[i];
        if ((tried_mask & (1ull << i)) || !available(up, now_ns) || up->conf->priority != best_prio)
            continue;
        up->current_weight += up->conf->weight;
        total += up->conf->weight;
        if (pick < 0 || up->current_weight > set->ups[pick].current_weight)
            pick = (int)i;
    }
    set->ups[pick].current_weight -= total;
    ag_upstream_state *chosen = &set->ups[pick];
    if (chosen->circuit_open_until_ns && now_ns >= chosen->circuit_open_until_ns)
        chosen->half_open_probe = true;
    chosen->requests++;
    return pick;
}

/* ---- pooling --------------------------------------------------------------------------------- */

static void idle_event_cb(struct bufferevent *bev, short what, void *arg)
{
    /* An idle pooled connection: EOF, error or idle timeout all retire it. */
    upconn_close(arg);
}

/* The pool's idle timeout: taking a connection only clears its deadline (deadline.h). */
static void idle_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    ag_upconn *uc = arg;
    if (!ag_deadline_fired(&uc->idle_deadline) || !uc->idle)
        return; /* early, or in use: the exchange times it */
    upconn_close(uc);
}

static void idle_read_cb(struct bufferevent *bev, void *arg)
{
    /* Bytes on an idle connection are a protocol error (no request outstanding). */
    upconn_close(arg);
}

ag_upconn *ag_upstream_take_idle(ag_upstream_set *set, int idx)
{
    ag_upstream_state *up = &set->ups[idx];
    ag_upconn *uc = TAILQ_FIRST(&up->idle);
    if (!uc)
        return NULL;
    TAILQ_REMOVE(&up->idle, uc, link);
    up->nidle--;
    uc->idle = false;
    uc->reused = true;
    up->reused++;
    bufferevent_setcb(uc->bev, NULL, NULL, NULL, NULL);
    ag_deadline_clear(&uc->idle_deadline);
    return uc;
}

void ag_upconn_release(ag_upconn *uc, bool reusable)
{
    ag_upstream_state *up = uc->up;
    if (!reusable || up->set->retired || up->set->worker->draining ||
        up->nidle >= (size_t)up->conf->max_idle_connections ||
        evbuffer_get_length(bufferevent_get_input(uc->bev)) != 0) {
        upconn_close(uc);
        return;
    }
    if (!uc->idle_deadline.ev && !(uc->idle_deadline.ev = evtimer_new(up->set->worker->base, idle_timer_cb, uc))) {
        upconn_close(uc); /* out of memory: a pooled connection must have its deadline */
        return;
    }
    uc->idle = true;
    uc->requests++;
    TAILQ_INSERT_HEAD(&up->idle, uc, link); /* LIFO: the warmest connection goes out first */
    up->nidle++;
    ag_deadline_set(&uc->idle_deadline, up->conf->pool_idle_timeout_ms);
    bufferevent_setcb(uc->bev, idle_read_cb, NULL, idle_event_cb, uc);
    ag_reader_enable(&uc->rd);
}

/* ---- connecting ------------------------------------------------------------------------------ */

static void connect_req_free(ag_connect_req *cr)
{
    if (cr->timer)
        event_free(cr->timer);
    ag_upstream_set *set = cr->up->set;
    free(cr);
    ag_upstream_set_unref(set);
}

static void connect_finish(ag_connect_req *cr, ag_upconn *uc, const char *err, bool timed_out)
{
    ag_connect_fn fn = cr->fn;
    void *arg = cr->arg;
    cr->uc = NULL;
    connect_req_free(cr);
    fn(uc, err, timed_out, arg);
}

static void connect_event_cb(struct bufferevent *bev, short what, void *arg)
{
    ag_connect_req *cr = arg;
    ag_upconn *uc = cr->uc;
    ag_upstream_state *up = cr->up;
    if (what & BEV_EVENT_CONNECTED) {
        SSL *ssl = bufferevent_openssl_get_ssl(bev);
        if (ssl) {
            SSL_SESSION *s = SSL_get1_session(ssl);
            if (s) {
                if (up->session)
                    SSL_SESSION_free(up->session);
                up->session = s;
            }
        }
        bufferevent_setcb(bev, NULL, NULL, NULL, NULL);
        ag_sender_attach(&uc->snd, &up->set->worker->sendq, bev, NULL, NULL); /* plain HTTP only */
        ag_reader_init(&uc->rd, bev);
        ag_reader_attach(&uc->rd, &up->set->worker->rscratch, up->set->worker->base);
        connect_finish(cr, uc, NULL, false);
        return;
    }
    char why[256];
    unsigned long ossl = bufferevent_get_openssl_error(bev);
    if (ossl) {
        ERR_error_string_n(ossl, why, sizeof why);
    } else {
        int e = EVUTIL_SOCKET_ERROR();
        snprintf(why, sizeof why, "%s", e ? evutil_socket_error_to_string(e) : "connection closed");
    }
    cr->uc = NULL;
    upconn_close(uc);
    ag_log(AG_LOG_WARN, NULL, "upstream %s: connect failed: %s", up->conf->name, why);
    connect_finish(cr, NULL, "connect failed", false);
}

static void connect_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    ag_connect_req *cr = arg;
    if (cr->waiting_dns) {
        TAILQ_REMOVE(&cr->up->dns_waiters, cr, link);
        cr->waiting_dns = false;
    }
    if (cr->uc) {
        upconn_close(cr->uc);
        cr->uc = NULL;
    }
    ag_log(AG_LOG_WARN, NULL, "upstream %s: connect timed out after %lld ms", cr->up->conf->name,
           cr->up->conf->connect_timeout_ms);
    connect_finish(cr, NULL, "connect timed out", true);
}

/* Starts TCP (+TLS) to the next cached address. */
static int connect_start_socket(ag_connect_req *cr, const char **err)
{
    ag_upstream_state *up = cr->up;
    ag_upstream_set *set = up->set;
    struct event_base *base = set->worker->base;
    const ag_upstream_conf *conf = up->conf;
    int ai = up->next_addr++ % (up->naddrs ? up->naddrs : 1);
    ag_upconn *uc = calloc(1, sizeof *uc);
    if (!uc) {
        *err = "out of memory";
        return -1;
    }
    uc->up = up;
    ag_upstream_set_ref(set);
    up->nopen++;
    up->connects++;
    if (conf->tls) {
        SSL *ssl = SSL_new(conf->ssl_ctx);
        if (!ssl) {
            *err = "TLS setup failed";
            upconn_close(uc);
            return -1;
        }
        struct in6_addr a6;
        struct in_addr a4;
        bool is_ip = inet_pton(AF_INET, conf->host, &a4) == 1 || inet_pton(AF_INET6, conf->host, &a6) == 1;
        if (!is_ip)
            SSL_set_tlsext_host_name(ssl, conf->host);
        X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
        X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (is_ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, conf->host) != 1 : SSL_set1_host(ssl, conf->host) != 1) {
            SSL_free(ssl);
            *err = "TLS host verification setup failed";
            upconn_close(uc);
            return -1;
        }
        if (up->session)
            SSL_set_session(ssl, up->session);
        uc->bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                                 BEV_OPT_CLOSE_ON_FREE);
        if (!uc->bev)
            SSL_free(ssl);
    } else {
        uc->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    }
    if (!uc->bev) {
        *err = "cannot create a socket";
        upconn_close(uc);
        return -1;
    }
    cr->uc = uc;
    bufferevent_setcb(uc->bev, NULL, NULL, connect_event_cb, cr);
    if (bufferevent_socket_connect(uc->bev, (struct sockaddr *)&up->addrs[ai], (int)up->addrlens[ai]) != 0) {
        cr->uc = NULL;
        upconn_close(uc);
        *err = "connect failed";
        return -1;
    }
    evutil_socket_t fd = bufferevent_getfd(uc->bev);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return 0;
}

static void dns_done(ag_upstream_state *up, const char *err)
{
    up->resolving = false;
    ag_connect_req *cr;
    while ((cr = TAILQ_FIRST(&up->dns_waiters))) {
        TAILQ_REMOVE(&up->dns_waiters, cr, link);
        cr->waiting_dns = false;
        const char *e2 = err;
        if (!e2 && connect_start_socket(cr, &e2) == 0)
            continue;
        connect_finish(cr, NULL, e2 ? e2 : "DNS failed", false);
    }
    ag_upstream_set_unref(up->set);
}

static void dns_gai_cb(int result, struct evutil_addrinfo *res, void *arg)
{
    ag_upstream_state *up = arg;
    if (result != 0 || !res) {
        ag_log(AG_LOG_WARN, NULL, "upstream %s: cannot resolve %s: %s", up->conf->name, up->conf->host,
               evutil_gai_strerror(result));
        if (res)
            evutil_freeaddrinfo(res);
        dns_done(up, "DNS resolution failed");
        return;
    }
    up->naddrs = 0;
    for (struct evutil_addrinfo *a = res; a && up->naddrs < AG_DNS_MAX_ADDRS; a = a->ai_next) {
        memcpy(&up->addrs[up->naddrs], a->ai_addr, a->ai_addrlen);
        up->addrlens[up->naddrs] = (socklen_t)a->ai_addrlen;
        up->naddrs++;
    }
    evutil_freeaddrinfo(res);
    up->dns_expires_ns = ag_mono_ns() + (uint64_t)DNS_HOSTS_TTL_S * 1000000000ull;
    dns_done(up, NULL);
}

static void dns_a_cb(int result, char type, int count, int ttl, void *addresses, void *arg)
{
    ag_upstream_state *up = arg;
    if (result != DNS_ERR_NONE || type != DNS_IPv4_A || count <= 0) {
        /* Fall back to getaddrinfo semantics (hosts file, AAAA). */
        struct evutil_addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                                        .ai_protocol = IPPROTO_TCP};
        char port[8];
        snprintf(port, sizeof port, "%d", up->conf->port);
        if (!evdns_getaddrinfo(up->set->worker->dns, up->conf->host, port, &hints, dns_gai_cb, up))
            return; /* answered synchronously (hosts file); dns_gai_cb ran */
        return;
    }
    const uint32_t *ips = addresses;
    up->naddrs = 0;
    for (int i = 0; i < count && up->naddrs < AG_DNS_MAX_ADDRS; i++) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&up->addrs[up->naddrs];
        memset(sin, 0, sizeof *sin);
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)up->conf->port);
        sin->sin_addr.s_addr = ips[i];
        up->addrlens[up->naddrs] = sizeof *sin;
        up->naddrs++;
    }
    if (ttl < DNS_MIN_TTL_S)
        ttl = DNS_MIN_TTL_S;
    if (ttl > DNS_MAX_TTL_S)
        ttl = DNS_MAX_TTL_S;
    up->dns_expires_ns = ag_mono_ns() + (uint64_t)ttl * 1000000000ull;
    dns_done(up, NULL);
}

/* Fills the address cache for an IP-literal host; returns true when host is one. */
static bool literal_address(ag_upstream_state *up)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)&up->addrs[0];
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&up->addrs[0];
    memset(&up->addrs[0], 0, sizeof up->addrs[0]);
    if (inet_pton(AF_INET, up->conf->host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)up->conf->port);
        up->addrlens[0] = sizeof *sin;
    } else if (inet_pton(AF_INET6, up->conf->host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)up->conf->port);
        up->addrlens[0] = sizeof *sin6;
    } else {
        return false;
    }
    up->naddrs = 1;
    up->dns_expires_ns = UINT64_MAX;
    return true;
}

ag_connect_req *ag_upstream_connect(ag_upstream_set *set, int idx, ag_connect_fn fn, void *arg,
                                    const char **err)
{
    ag_upstream_state *up = &set->ups[idx];
    ag_connect_req *cr = calloc(1, sizeof *cr);
    if (!cr) {
        *err = "out of memory";
        return NULL;
    }
    cr->up = up;
    cr->fn = fn;
    cr->arg = arg;
    ag_upstream_set_ref(set);
    cr->timer = evtimer_new(set->worker->base, connect_timeout_cb, cr);
    if (!cr->timer) {
        *err = "out of memory";
        connect_req_free(cr);
        return NULL;
    }
    struct timeval tv = {up->conf->connect_timeout_ms / 1000, (up->conf->connect_timeout_ms % 1000) * 1000};
    evtimer_add(cr->timer, &tv);

    uint64_t now = ag_mono_ns();
    if (up->naddrs > 0 && now < up->dns_expires_ns) {
        if (connect_start_socket(cr, err) != 0) {
            connect_req_free(cr);
            return NULL;
        }
        return cr;
    }
    if (literal_address(up)) {
        if (connect_start_socket(cr, err) != 0) {
            connect_req_free(cr);
            return NULL;
        }
        return cr;
    }
    TAILQ_INSERT_TAIL(&up->dns_waiters, cr, link);
    cr->waiting_dns = true;
    if (!up->resolving) {
        up->resolving = true;
        ag_upstream_set_ref(set); /* held until dns_done */
        if (!evdns_base_resolve_ipv4(set->worker->dns, up->conf->host, 0, dns_a_cb, up)) {
            /* Could not even start the query: use the getaddrinfo path (hosts file). */
            struct evutil_addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                                            .ai_protocol = IPPROTO_TCP};
            char port[8];
            snprintf(port, sizeof port, "%d", up->conf->port);
            evdns_getaddrinfo(set->worker->dns, up->conf->host, port, &hints, dns_gai_cb, up);
        }
    }
    return cr;
}

void ag_upstream_connect_cancel(ag_connect_req *cr)
{
    if (!cr)
        return;
    if (cr->waiting_dns)
        TAILQ_REMOVE(&cr->up->dns_waiters, cr, link);
    if (cr->uc)
        upconn_close(cr->uc);
    cr->uc = NULL;
    connect_req_free(cr);
}
