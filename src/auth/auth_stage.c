/* The authenticate and authorize stages (see auth_stage.h). */
#include "aoai_guard/auth_stage.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "aoai_guard/audit.h"
#include "aoai_guard/auth.h"
#include "aoai_guard/authz.h"
#include "aoai_guard/conn.h"
#include "aoai_guard/jwks.h"
#include "aoai_guard/log.h"
#include "aoai_guard/runtime.h"
#include "aoai_guard/token_cache.h"

#define PARK_DEADLINE_MS 10000

int ag_auth_stage_worker_init(ag_worker *w)
{
    TAILQ_INIT(&w->parked);
    const ag_auth_config *ac = &w->cfg->auth;
    if (ac->mode != AG_AUTH_MODE_NONE && ac->token_cache_size > 0) {
        w->token_cache = ag_token_cache_new((size_t)ac->token_cache_size);
        if (!w->token_cache)
            return -1;
    }
    return 0;
}

void ag_auth_stage_worker_free(ag_worker *w)
{
    if (w->token_cache)
        ag_token_cache_free(w->token_cache);
    w->token_cache = NULL;
    if (w->keys)
        ag_jwks_unref(w->keys);
    w->keys = NULL;
}

static void unpark(ag_request *r)
{
    if (!r->parked)
        return;
    TAILQ_REMOVE(&r->worker->parked, r, park_link);
    r->parked = false;
    if (r->park_timer)
        event_free(r->park_timer);
    r->park_timer = NULL;
    r->on_free = NULL;
}

static void park_on_free(ag_request *r, void *arg)
{
    unpark(r);
}

/* Sustained authentication failures from one client address become a gateway event in the audit
 * trail: AUTH_BURST_FAILURES within AUTH_BURST_WINDOW_S, reported once per window. A small table
 * per worker (no lock); an address that does not fit replaces the oldest window. */
#define AUTH_BURST_FAILURES 20
#define AUTH_BURST_WINDOW_S 60

static void note_auth_failure(ag_request *r)
{
    ag_worker *w = r->worker;
    ag_audit *a = w->rt->svc.audit;
    if (!a)
        return;
    time_t now = time(NULL);
    ag_auth_burst *slot = NULL, *oldest = &w->auth_bursts[0];
    for (size_t i = 0; i < AG_AUTH_BURST_SLOTS; i++) {
        ag_auth_burst *b = &w->auth_bursts[i];
        if (strcmp(b->addr, r->client_addr) == 0) {
            slot = b;
            break;
        }
        if (b->window_start < oldest->window_start)
            oldest = b;
    }
    if (!slot) {
        slot = oldest;
        snprintf(slot->addr, sizeof slot->addr, "%s", r->client_addr);
        slot->window_start = now;
        slot->failures = 0;
        slot->reported = false;
    }
    if (now - slot->window_start >= AUTH_BURST_WINDOW_S) {
        slot->window_start = now;
        slot->failures = 0;
        slot->reported = false;
    }
    if (++slot->failures >= AUTH_BURST_FAILURES && !slot->reported) {
        slot->reported = true;
        char n[16], win[16];
        snprintf(n, sizeof n, "%d", slot->failures);
        snprintf(win, sizeof win, "%d", AUTH_BURST_WINDOW_S);
        ag_log(AG_LOG_WARN, r->id, "auth: %d failures from %s within %d s", slot->failures, r->client_addr,
               AUTH_BURST_WINDOW_S);
        ag_audit_event(a, AG_EVENT_AUTH_FAILURE_BURST, "client_address", r->client_addr, "failures", n,
                       "window_s", win, NULL);
    }
}

/* Answers an authentication or authorization failure: the module's status, WWW-Authenticate and
 * body; the specific reason only in the log and metrics. */
static void auth_fail(ag_request *r, ag_auth_code code, const ag_auth_result *res, bool close)
{
    const ag_auth_config *ac = &r->cfg->auth;
    ag_services *svc = &r->worker->rt->svc;
    const char *reason = ag_auth_code_str(code);
    ag_log(AG_LOG_INFO, r->id, "auth: %s from %s: %s", reason, r->client_addr,
           res && res->log[0] ? res->log : reason);
    ag_metric_inc(ag_metric_series(svc->std.auth_failures_total, r->worker->metrics_shard,
                                   (const char *const[]){reason}));
    if (code != AG_AUTH_FORBIDDEN && code != AG_AUTH_NO_KEYS && code != AG_AUTH_INTERNAL)
        note_auth_failure(r);
    char www[512], hdr[600] = "";
    size_t wl = ag_auth_www_authenticate(ac, code, NULL, www, sizeof www);
    if (wl)
        snprintf(hdr, sizeof hdr, "WWW-Authenticate: %s\r\n", www);
    char body[512];
    size_t bl = ag_auth_error_body(code, body, sizeof body);
    int status = ag_auth_code_status(code);
    ag_request_error_body(r, status, reason, body, bl, hdr, close);
}

static void park_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    ag_request *r = arg;
    unpark(r);
    auth_fail(r, AG_AUTH_UNKNOWN_KID, NULL, true); /* completes (and frees) the request */
}

ag_stage_result ag_auth_stage_authenticate(ag_request *r)
{
    const ag_auth_config *ac = &r->cfg->auth;
    if (ac->mode == AG_AUTH_MODE_NONE) {
        r->identity.kind = AG_IDENTITY_ANONYMOUS;
        return AG_STAGE_NEXT;
    }
    ag_worker *w = r->worker;
    ag_services *svc = &w->rt->svc;
    if (ac->mode == AG_AUTH_MODE_ENTRA && svc->jwks)
        w->keys = ag_jwks_manager_sync(svc->jwks, w->keys);
    ag_auth_input in = {0};
    if (r->h_authorization >= 0)
        in.authorization = ag_request_header_value(r, r->h_authorization, &in.authorization_len);
    in.memo = &r->conn->token_memo;
    if (r->h_api_key >= 0)
        in.api_key = ag_request_header_value(r, r->h_api_key, &in.api_key_len);
    ag_auth_result res;
    r->identity_written = true;
    ag_auth_code code = ag_auth_authenticate(ac, w->token_cache, w->keys, &in, (long long)time(NULL),
                                             &r->identity, &res);
    if (code == AG_AUTH_OK)
        return AG_STAGE_NEXT;
    if (code == AG_AUTH_UNKNOWN_KID && !r->auth_retried && svc->jwks &&
        ag_jwks_manager_request_refresh(svc->jwks, w->keys ? ag_jwks_generation(w->keys) : 0)) {
        /* A newer key set may have been published between our sync and the request: its round's
         * wake-up could already be past, so validate against it now instead of parking. */
        uint64_t held = w->keys ? ag_jwks_generation(w->keys) : 0;
        if (ag_jwks_manager_generation(svc->jwks) != held) {
            r->auth_retried = true;
            return ag_auth_stage_authenticate(r);
        }
        r->park_timer = evtimer_new(w->base, park_timeout_cb, r);
        if (r->park_timer) {
            struct timeval tv = {PARK_DEADLINE_MS / 1000, (PARK_DEADLINE_MS % 1000) * 1000};
            evtimer_add(r->park_timer, &tv);
            TAILQ_INSERT_TAIL(&w->parked, r, park_link);
            r->parked = true;
            r->on_free = park_on_free;
            return AG_STAGE_WAIT;
        }
    }
    /* The body has not been read: answer and close. */
    auth_fail(r, code, &res, true);
    return AG_STAGE_DONE;
}

void ag_auth_stage_keys_round(ag_worker *w, void *unused)
{
    /* Take the whole list first: retrying may park nothing again (auth_retried), but answering
     * can free requests. */
    struct ag_request_list list;
    TAILQ_INIT(&list);
    ag_request *r;
    while ((r = TAILQ_FIRST(&w->parked))) {
        unpark(r);
        TAILQ_INSERT_TAIL(&list, r, park_link);
    }
    while ((r = TAILQ_FIRST(&list))) {
        TAILQ_REMOVE(&list, r, park_link);
        r->auth_retried = true;
        ag_pipeline_retry_stage(r);
    }
}

ag_stage_result ag_auth_stage_authorize(ag_request *r)
{
    const ag_auth_config *ac = &r->cfg->auth;
    if (ac->mode == AG_AUTH_MODE_NONE)
        return AG_STAGE_NEXT;
    ag_auth_result res;
    memset(&res, 0, sizeof res);
    ag_auth_code code = ag_authz_check(ac, &r->identity, r->route.deployment, &res);
    if (code == AG_AUTH_OK)
        return AG_STAGE_NEXT;
    auth_fail(r, code, &res, false);
    return AG_STAGE_DONE;
}
