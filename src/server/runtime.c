/* The control thread: listening sockets, workers, signals, reload, drain, the admin listener. */
#include "aoai_guard/runtime.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "aoai_guard/clock.h"
#include "aoai_guard/log.h"

static struct event *worker_exit_ev;

/* ---- sockets --------------------------------------------------------------------------------- */

static int bind_listener(const char *address, int port, int *bound_port, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, address, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        sl = sizeof *sin;
    } else if (inet_pton(AF_INET6, address, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        sl = sizeof *sin6;
    } else {
        snprintf(err, errlen, "listener address %s is not an IP address", address);
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, sl) != 0 || listen(fd, 1024) != 0) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", address, port, strerror(errno));
        close(fd);
        return -1;
    }
    if (bound_port) {
        struct sockaddr_storage got;
        socklen_t gl = sizeof got;
        getsockname(fd, (struct sockaddr *)&got, &gl);
        *bound_port = got.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&got)->sin_port)
                                               : ntohs(((struct sockaddr_in6 *)&got)->sin6_port);
    }
    return fd;
}

/* ---- admin listener -------------------------------------------------------------------------- */

static void admin_reply(struct evhttp_request *req, int code, const char *body)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "%s\n", body);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evhttp_send_reply(req, code, code == 200 ? "OK" : "Service Unavailable", b);
    evbuffer_free(b);
}

static void admin_healthz(struct evhttp_request *req, void *arg)
{
    admin_reply(req, 200, "{\"status\":\"alive\"}");
}

static void admin_readyz(struct evhttp_request *req, void *arg)
{
    ag_runtime *rt = arg;
    const char *why = NULL;
    char body[160];
    if (atomic_load(&rt->draining)) {
        admin_reply(req, 503, "{\"status\":\"draining\"}");
    } else if (!atomic_load(&rt->ready)) {
        admin_reply(req, 503, "{\"status\":\"starting\"}");
    } else if (!ag_services_ready(&rt->svc, &why)) {
        snprintf(body, sizeof body, "{\"status\":\"not_ready\",\"reason\":\"%s\"}", why);
        admin_reply(req, 503, body);
    } else {
        admin_reply(req, 200, "{\"status\":\"ready\"}");
    }
}

static void admin_metrics(struct evhttp_request *req, void *arg)
{
    ag_runtime *rt = arg;
    struct evbuffer *out = evhttp_request_get_output_buffer(req);
    ag_services_scrape(&rt->svc);
    if (ag_metrics_render(rt->svc.metrics, out) != 0) {
        evhttp_send_error(req, 500, "metrics rendering failed");
        return;
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", AG_METRICS_CONTENT_TYPE);
    evhttp_send_reply(req, 200, "OK", NULL);
}

static void admin_other(struct evhttp_request *req, void *arg)
{
    evhttp_send_error(req, 404, "Not Found");
}

static int admin_start(ag_runtime *rt, const ag_config *cfg, char *err, size_t errlen)
{
    if (!cfg->admin_address)
        return 0;
    int fd = bind_listener(cfg->admin_address, cfg->admin_port, &rt->admin_port, err, errlen);
    if (fd < 0)
        return -1;
    rt->admin = evhttp_new(rt->base);
    if (!rt->admin || !evhttp_accept_socket_with_handle(rt->admin, fd)) {
        snprintf(err, errlen, "cannot start the admin listener");
        close(fd);
        return -1;
    }
    evhttp_set_max_headers_size(rt->admin, 8192);
    evhttp_set_max_body_size(rt->admin, 1024);
    evhttp_set_timeout(rt->admin, 10);
    evhttp_set_allowed_methods(rt->admin, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
    evhttp_set_cb(rt->admin, "/healthz", admin_healthz, rt);
    evhttp_set_cb(rt->admin, "/readyz", admin_readyz, rt);
    evhttp_set_cb(rt->admin, "/metrics", admin_metrics, rt);
    evhttp_set_gencb(rt->admin, admin_other, rt);
    return 0;
}

/* ---- reload and drain ------------------------------------------------------------------------ */

static bool listeners_equal(const ag_config *a, const ag_config *b)
{
    if (a->nlisteners != b->nlisteners)
        return false;
    for (size_t i = 0; i < a->nlisteners; i++) {
        const ag_listener_conf *x = &a->listeners[i], *y = &b->listeners[i];
        if (strcmp(x->address, y->address) != 0 || x->port != y->port || !x->tls != !y->tls)
            return false;
    }
    return a->workers == b->workers;
}

static void runtime_reload(ag_runtime *rt)
{
    if (!rt->config_path) {
        ag_log(AG_LOG_WARN, NULL, "SIGHUP: running on embedded defaults; nothing to reload");
        return;
    }
    ag_conf_err err;
    ag_config *next = ag_config_load_file(rt->config_path, &err);
    if (!next) {
        ag_log(AG_LOG_ERROR, NULL, "configuration reload rejected, keeping the running one: %s", err.msg);
        return;
    }
    char why[256];
    if (ag_services_reload_check(rt->cfg, next, why, sizeof why) != 0) {
        ag_log(AG_LOG_ERROR, NULL, "configuration reload rejected, keeping the running one: %s", why);
        ag_config_unref(next);
        return;
    }
    if (!listeners_equal(rt->cfg, next)) {
        ag_log(AG_LOG_ERROR, NULL,
               "configuration reload rejected: listeners and workers can only change with a restart");
        ag_config_unref(next);
        return;
    }
    char changed[256];
    ag_config_diff(rt->cfg, next, changed, sizeof changed);
    ag_log_set_level((ag_log_level)next->log_level);
    for (size_t i = 0; i < rt->nworkers; i++)
        ag_worker_post(&rt->workers[i], ag_worker_apply_config, ag_config_ref(next));
    pthread_mutex_lock(&rt->cfg_lock);
    ag_config *old = rt->cfg;
    rt->cfg = next;
    pthread_mutex_unlock(&rt->cfg_lock);
    char oldh[17], newh[17];
    for (int i = 0; i < 8; i++) {
        snprintf(oldh + 2 * i, 3, "%02x", old->sha256[i]);
        snprintf(newh + 2 * i, 3, "%02x", next->sha256[i]);
    }
    ag_log(AG_LOG_INFO, NULL, "configuration reloaded from %s (sha256 %s.. -> %s..; changed: %s)",
           rt->config_path, oldh, newh, changed[0] ? changed : "nothing");
    if (rt->svc.audit)
        ag_audit_event(rt->svc.audit, AG_EVENT_CONFIG_RELOAD, "old_hash", oldh, "new_hash", newh, "changed",
                       changed[0] ? changed : "", NULL);
    ag_config_unref(old);
}

static void drain_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    ag_runtime *rt = arg;
    ag_log(AG_LOG_WARN, NULL, "drain deadline reached; closing the remaining connections");
    for (size_t i = 0; i < rt->nworkers; i++)
        ag_worker_post(&rt->workers[i], ag_worker_stop, NULL);
}

static void runtime_drain(ag_runtime *rt, const char *why)
{
    if (atomic_exchange(&rt->draining, true))
        return;
    atomic_store(&rt->ready, false);
    ag_log(AG_LOG_INFO, NULL, "%s: draining (deadline %lld ms)", why, rt->cfg->drain_timeout_ms);
    for (size_t i = 0; i < rt->nworkers; i++)
        ag_worker_post(&rt->workers[i], ag_worker_begin_drain, NULL);
    rt->drain_deadline = evtimer_new(rt->base, drain_deadline_cb, rt);
    struct timeval tv = {rt->cfg->drain_timeout_ms / 1000, (rt->cfg->drain_timeout_ms % 1000) * 1000};
    evtimer_add(rt->drain_deadline, &tv);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    ag_runtime *rt = arg;
    if (sig == SIGHUP)
        runtime_reload(rt);
    else
        runtime_drain(rt, sig == SIGTERM ? "SIGTERM" : "SIGINT");
}

void ag_runtime_worker_exited(ag_runtime *rt)
{
    atomic_fetch_sub(&rt->workers_running, 1);
    event_active(worker_exit_ev, EV_READ, 0);
}

static void worker_exit_cb(evutil_socket_t fd, short what, void *arg)
{
    ag_runtime *rt = arg;
    if (atomic_load(&rt->workers_running) == 0)
        event_base_loopexit(rt->base, NULL);
}

static int write_port_file(ag_runtime *rt)
{
    if (!rt->port_file)
        return 0;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", rt->port_file);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    for (size_t i = 0; i < rt->cfg->nlisteners; i++)
        fprintf(f, "listener %zu %d\n", i, rt->listen_ports[i]);
    if (rt->admin)
        fprintf(f, "admin %d\n", rt->admin_port);
    fclose(f);
    return rename(tmp, rt->port_file);
}

int ag_runtime_run(ag_runtime *rt, ag_config *cfg)
{
    char err[256];
    int status = 1;
    rt->cfg = cfg;
    pthread_mutex_init(&rt->cfg_lock, NULL);
    signal(SIGPIPE, SIG_IGN);
    rt->base = event_base_new();
    if (!rt->base)
        return 1;
    ag_log_set_level((ag_log_level)cfg->log_level);

    size_t nw = (size_t)cfg->workers, nl = cfg->nlisteners;
    rt->nworkers = nw;
    rt->listen_fds = calloc(nw * nl, sizeof *rt->listen_fds);
    rt->listen_ports = calloc(nl, sizeof *rt->listen_ports);
    rt->workers = calloc(nw, sizeof *rt->workers);
    if (!rt->listen_fds || !rt->listen_ports || !rt->workers)
        goto out;
    for (size_t i = 0; i < nw * nl; i++)
        rt->listen_fds[i] = -1;
    for (size_t l = 0; l < nl; l++) {
        int port = cfg->listeners[l].port;
        for (size_t w = 0; w < nw; w++) {
            int bound = 0;
            int fd = bind_listener(cfg->listeners[l].address, port, &bound, err, sizeof err);
            if (fd < 0) {
                ag_log(AG_LOG_ERROR, NULL, "listeners[%zu]: %s", l, err);
                goto out;
            }
            rt->listen_fds[w * nl + l] = fd;
            port = bound; /* an ephemeral port: every worker shares the first one's */
            rt->listen_ports[l] = bound;
        }
    }
    if (ag_services_start(&rt->svc, rt, rt->base, cfg, nw, err, sizeof err) != 0) {
        ag_log(AG_LOG_ERROR, NULL, "%s", err);
        goto out;
    }
    if (admin_start(rt, cfg, err, sizeof err) != 0) {
        ag_log(AG_LOG_ERROR, NULL, "admin: %s", err);
        goto out;
    }
    worker_exit_ev = event_new(rt->base, -1, 0, worker_exit_cb, rt);
    for (size_t w = 0; w < nw; w++) {
        if (ag_worker_init(&rt->workers[w], rt, (int)w, cfg, &rt->listen_fds[w * nl], nl) != 0) {
            ag_log(AG_LOG_ERROR, NULL, "worker %zu: cannot initialise", w);
            goto out;
        }
        for (size_t l = 0; l < nl; l++)
            rt->listen_fds[w * nl + l] = -1; /* the worker's listener owns it now */
    }
    struct event *sigs[4];
    int signums[4] = {SIGTERM, SIGINT, SIGHUP, 0};
    for (int i = 0; signums[i]; i++) {
        sigs[i] = evsignal_new(rt->base, signums[i], signal_cb, rt);
        evsignal_add(sigs[i], NULL);
    }
    atomic_store(&rt->workers_running, (int)nw);
    for (size_t w = 0; w < nw; w++)
        if (ag_worker_start(&rt->workers[w]) != 0) {
            ag_log(AG_LOG_ERROR, NULL, "cannot start worker thread %zu", w);
            atomic_fetch_sub(&rt->workers_running, 1);
        }
    for (size_t l = 0; l < nl; l++)
        ag_log(AG_LOG_INFO, NULL, "listening on %s:%d (%s)", cfg->listeners[l].address, rt->listen_ports[l],
               cfg->listeners[l].tls ? "tls" : "plain");
    if (rt->admin)
        ag_log(AG_LOG_INFO, NULL, "admin on %s:%d", cfg->admin_address, rt->admin_port);
    ag_log(AG_LOG_INFO, NULL, "aoai-guard %s started: %lld workers, %zu upstreams, config %s", AG_VERSION,
           cfg->workers, cfg->nupstreams, cfg->source);
    atomic_store(&rt->ready, true);
    if (rt->svc.audit)
        ag_audit_event(rt->svc.audit, AG_EVENT_START, "version", AG_VERSION, "config", cfg->source, NULL);
    if (write_port_file(rt) != 0)
        ag_log(AG_LOG_ERROR, NULL, "cannot write the port file %s", rt->port_file);

    event_base_dispatch(rt->base);

    for (size_t w = 0; w < nw; w++)
        pthread_join(rt->workers[w].thread, NULL);
    for (int i = 0; signums[i]; i++)
        event_free(sigs[i]);
    if (rt->svc.audit)
        ag_audit_event(rt->svc.audit, AG_EVENT_STOP, "reason", "signal", NULL);
    ag_log(AG_LOG_INFO, NULL, "stopped");
    status = 0;
out:
    for (size_t w = 0; rt->workers && w < nw; w++)
        if (rt->workers[w].base)
            ag_worker_destroy(&rt->workers[w]);
    ag_services_stop(&rt->svc, ag_wall_ms() + (rt->cfg ? rt->cfg->drain_timeout_ms : 5000));
    for (size_t i = 0; rt->listen_fds && i < nw * nl; i++)
        if (rt->listen_fds[i] >= 0)
            close(rt->listen_fds[i]);
    if (rt->admin)
        evhttp_free(rt->admin);
    if (rt->drain_deadline)
        event_free(rt->drain_deadline);
    if (worker_exit_ev)
        event_free(worker_exit_ev);
    free(rt->workers);
    free(rt->listen_fds);
    free(rt->listen_ports);
    ag_config_unref(rt->cfg);
    event_base_free(rt->base);
    pthread_mutex_destroy(&rt->cfg_lock);
    return status;
}
