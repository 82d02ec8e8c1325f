/* Worker threads (see worker.h). */
#include "aoai_guard/worker.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>

#include "aoai_guard/auth_stage.h"
#include "aoai_guard/conn.h"
#include "aoai_guard/forward.h"
#include "aoai_guard/content_safety.h"
#include "aoai_guard/limit_stage.h"
#include "aoai_guard/policy_stage.h"
#include "aoai_guard/log.h"
#include "aoai_guard/runtime.h"
#include "aoai_guard/token_cache.h"
#include "aoai_guard/upstream.h"

int ag_worker_post(ag_worker *w, ag_worker_fn fn, void *arg)
{
    ag_worker_msg *m = malloc(sizeof *m);
    if (!m)
        return -1;
    m->fn = fn;
    m->arg = arg;
    m->next = NULL;
    pthread_mutex_lock(&w->qlock);
    if (w->qtail)
        w->qtail->next = m;
    else
        w->qhead = m;
    w->qtail = m;
    pthread_mutex_unlock(&w->qlock);
    /* The worker's event base has no lock (nothing else of it is touched from other threads):
     * the wake-up is a write to its eventfd. */
    uint64_t one = 1;
    ssize_t n;
    do {
        n = write(w->wake_fd, &one, sizeof one);
    } while (n < 0 && errno == EINTR);
    return 0; /* EAGAIN: the counter is full, so a wake-up is pending anyway */
}

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
    ag_worker *w = arg;
    uint64_t count;
    (void)what;
    while (read(fd, &count, sizeof count) < 0 && errno == EINTR)
        ;
    pthread_mutex_lock(&w->qlock);
    ag_worker_msg *m = w->qhead;
    w->qhead = w->qtail = NULL;
    pthread_mutex_unlock(&w->qlock);
    while (m) {
        ag_worker_msg *next = m->next;
        m->fn(w, m->arg);
        free(m);
        m = next;
    }
}

static void reap_cb(evutil_socket_t fd, short what, void *arg)
{
    ag_conn_reap_all(arg);
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int socklen, void *arg)
{
    ag_worker *w = arg;
    size_t li = 0;
    for (; li < w->nlisteners; li++)
        if (w->listeners[li] == l)
            break;
    ag_conn_accept(w, fd, sa, socklen, li);
}

static void accept_error_cb(struct evconnlistener *l, void *arg)
{
    int e = EVUTIL_SOCKET_ERROR();
    /* EMFILE/ENFILE: keep serving the connections we have; the listener retries on its own. */
    ag_log(AG_LOG_ERROR, NULL, "accept failed: %s", evutil_socket_error_to_string(e));
}

int ag_worker_init(ag_worker *w, struct ag_runtime *rt, int index, ag_config *cfg, const int *fds, size_t nfds)
{
    memset(w, 0, sizeof *w);
    w->index = index;
    w->rt = rt;
    TAILQ_INIT(&w->conns);
    TAILQ_INIT(&w->reap_list);
    pthread_mutex_init(&w->qlock, NULL);
    w->wake_fd = -1;
    /* Only this worker's thread ever touches its event base (other threads post through the
     * eventfd below), so the base runs without libevent's lock: no mutex per event operation. */
    struct event_config *ec = event_config_new();
    if (!ec)
        return -1;
    event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
    w->base = event_base_new_with_config(ec);
    event_config_free(ec);
    if (!w->base)
        return -1;
    w->dns = evdns_base_new(w->base, EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    if (!w->dns) {
        /* No resolv.conf nameserver: IP-literal and hosts-file upstreams still work. */
        w->dns = evdns_base_new(w->base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
        if (!w->dns)
            return -1;
    }
    evdns_base_load_hosts(w->dns, NULL);
    w->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->wake_fd < 0)
        return -1;
    w->wake = event_new(w->base, w->wake_fd, EV_READ | EV_PERSIST, wake_cb, w);
    w->reap = event_new(w->base, -1, 0, reap_cb, w);
    if (!w->wake || !w->reap || ag_send_queue_init(&w->sendq, w->base) != 0 ||
        ag_read_scratch_init(&w->rscratch) != 0)
        return -1;
    event_add(w->wake, NULL);
    w->cfg = ag_config_ref(cfg);
    w->metrics_shard = (unsigned)index;
    if (ag_auth_stage_worker_init(w) != 0 || ag_limit_stage_worker_init(w) != 0 ||
        ag_policy_stage_worker_init(w) != 0 || ag_content_safety_worker_init(w) != 0)
        return -1;
    w->upstreams = ag_upstream_set_new(w, cfg);
    if (!w->upstreams)
        return -1;
    w->listeners = calloc(nfds, sizeof *w->listeners);
    if (!w->listeners)
        return -1;
    w->nlisteners = nfds;
    for (size_t i = 0; i < nfds; i++) {
        w->listeners[i] = evconnlistener_new(w->base, accept_cb, w, LEV_OPT_CLOSE_ON_FREE, -1, fds[i]);
        if (!w->listeners[i])
            return -1;
        evconnlistener_set_error_cb(w->listeners[i], accept_error_cb);
    }
    return 0;
}

static void *worker_main(void *arg)
{
    ag_worker *w = arg;
    event_base_dispatch(w->base);
    ag_runtime_worker_exited(w->rt);
    return NULL;
}

int ag_worker_start(ag_worker *w)
{
    return pthread_create(&w->thread, NULL, worker_main, w) == 0 ? 0 : -1;
}

void ag_worker_destroy(ag_worker *w)
{
    ag_conn *c;
    while ((c = TAILQ_FIRST(&w->conns))) {
        TAILQ_REMOVE(&w->conns, c, link);
        ag_conn_free(c);
    }
    while ((c = TAILQ_FIRST(&w->reap_list))) {
        TAILQ_REMOVE(&w->reap_list, c, link);
        ag_conn_free(c);
    }
    for (size_t i = 0; i < w->nlisteners; i++)
        if (w->listeners[i])
            evconnlistener_free(w->listeners[i]);
    free(w->listeners);
    if (w->upstreams)
        ag_upstream_set_retire(w->upstreams);
    w->upstreams = NULL;
    ag_auth_stage_worker_free(w);
    ag_limit_stage_worker_free(w);
    ag_policy_stage_worker_free(w);
    ag_content_safety_worker_free(w);
    if (w->cfg)
        ag_config_unref(w->cfg);
    ag_worker_msg *m = w->qhead;
    while (m) {
        ag_worker_msg *next = m->next;
        free(m);
        m = next;
    }
    if (w->wake)
        event_free(w->wake);
    if (w->wake_fd >= 0)
        close(w->wake_fd);
    if (w->reap)
        event_free(w->reap);
    ag_send_queue_destroy(&w->sendq);
    ag_read_scratch_free(&w->rscratch);
    ag_json_arena_free(&w->event_arena);
    ag_request_cache_drain(w);
    ag_exchange_cache_drain(w);
    if (w->dns)
        evdns_base_free(w->dns, 0);
    if (w->base)
        event_base_free(w->base);
    pthread_mutex_destroy(&w->qlock);
}

void ag_worker_apply_config(ag_worker *w, void *cfg_ref)
{
    ag_config *cfg = cfg_ref; /* the message carries one reference for us */
    ag_upstream_set *set = ag_upstream_set_new(w, cfg);
    if (!set) {
        ag_log(AG_LOG_ERROR, NULL, "worker %d: out of memory applying the new configuration", w->index);
        ag_config_unref(cfg);
        return;
    }
    ag_upstream_set_retire(w->upstreams);
    w->upstreams = set;
    /* Cached verdicts were reached under the old auth rules (audiences, skew, algorithms...). */
    if (w->token_cache && memcmp(w->cfg->section_sha256[6], cfg->section_sha256[6], 32) != 0)
        ag_token_cache_clear(w->token_cache);
    ag_config_unref(w->cfg);
    w->cfg = cfg;
}

void ag_worker_check_drained(ag_worker *w)
{
    if (!w->draining)
        return;
    if (w->active_requests == 0 && w->nconns == 0)
        event_base_loopexit(w->base, NULL);
}

void ag_worker_begin_drain(ag_worker *w, void *unused)
{
    w->draining = true;
    for (size_t i = 0; i < w->nlisteners; i++)
        if (w->listeners[i]) {
            evconnlistener_free(w->listeners[i]);
            w->listeners[i] = NULL;
        }
    ag_conn *c, *next;
    for (c = TAILQ_FIRST(&w->conns); c; c = next) {
        next = TAILQ_NEXT(c, link);
        ag_conn_close_if_idle(c);
    }
    /* Idle pooled upstream connections are not needed any more. */
    ag_upstream_set *old = w->upstreams;
    w->upstreams = ag_upstream_set_new(w, w->cfg);
    if (w->upstreams)
        ag_upstream_set_retire(old);
    else
        w->upstreams = old;
    ag_worker_check_drained(w);
}

void ag_worker_stop(ag_worker *w, void *unused)
{
    event_base_loopbreak(w->base);
}
