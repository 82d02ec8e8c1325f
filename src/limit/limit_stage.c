/* The admit stage for rate limits and token quotas (see limit_stage.h). */
#include "aoai_guard/limit_stage.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aoai_guard/log.h"
#include "aoai_guard/ratelimit.h"
#include "aoai_guard/runtime.h"

static void limiter_log(void *arg, const char *msg)
{
    ag_log(AG_LOG_WARN, NULL, "rate limits: %s", msg);
}

/* Tests only: AOAI_GUARD_TEST_CLOCK_FILE names a file holding "now" in Unix milliseconds, read at
 * every decision, so an integration test can cross a quota period's end without waiting for it.
 * Unset in production: the limiter uses CLOCK_REALTIME. */
static long long file_clock(void *arg)
{
    FILE *f = fopen(arg, "r");
    long long ms = 0;
    if (f) {
        if (fscanf(f, "%lld", &ms) != 1)
            ms = 0;
        fclose(f);
    }
    if (ms > 0)
        return ms;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int ag_limit_stage_worker_init(ag_worker *w)
{
    ag_limit_store *store = w->rt->svc.limit_store;
    if (!store)
        return 0;
    ag_limiter_opts o = {.base = w->base, .log = limiter_log, .log_arg = w};
    const char *test_clock = getenv("AOAI_GUARD_TEST_CLOCK_FILE");
    if (test_clock && test_clock[0]) {
        o.clock = file_clock;
        o.clock_arg = (void *)test_clock; /* the environment outlives the workers */
        o.redis_client_clock = true;
        ag_log(AG_LOG_WARN, NULL, "rate limits: using the TEST clock from %s", test_clock);
    }
    w->limiter = ag_limiter_new(store, &o);
    return w->limiter ? 0 : -1;
}

void ag_limit_stage_worker_free(ag_worker *w)
{
    if (w->limiter)
        ag_limiter_free(w->limiter);
    w->limiter = NULL;
}

/* Turns a decision into the response headers (admitted) or the refusal (answered). Returns true
 * when the request may go on. */
static bool apply(ag_request *r, const ag_limit_result *res)
{
    ag_limit_response resp;
    ag_limit_build_response(res, &resp);
    char hdrs[512];
    size_t used = 0;
    for (size_t i = 0; i < resp.nheaders; i++) { /* "name: value\r\n" lines, as many as fit */
        size_t nl = strlen(resp.headers[i].name), vl = strlen(resp.headers[i].value);
        if (used + nl + vl + 4 >= sizeof hdrs)
            break;
        memcpy(hdrs + used, resp.headers[i].name, nl);
        memcpy(hdrs + used + nl, ": ", 2);
        memcpy(hdrs + used + nl + 2, resp.headers[i].value, vl);
        memcpy(hdrs + used + nl + 2 + vl, "\r\n", 2);
        used += nl + vl + 4;
    }
    hdrs[used] = '\0';
    if (resp.status == 0) {
        _Static_assert(sizeof r->ratelimit_headers == sizeof hdrs, "the lines are copied whole");
        memcpy(r->ratelimit_headers, hdrs, used + 1);
        return true;
    }
    ag_services *svc = &r->worker->rt->svc;
    ag_metric_inc(ag_metric_series(svc->std.ratelimit_rejections_total, r->worker->metrics_shard,
                                   (const char *const[]){res->policy[0] ? res->policy : "none"}));
    ag_log(AG_LOG_INFO, r->id, "rate limits: %s refused by policy %s (retry after %lld ms)",
           ag_limit_verdict_str(res->verdict), res->policy, res->retry_after_ms);
    r->limit_refused = true;
    snprintf(r->limit_policy, sizeof r->limit_policy, "%s", res->policy);
    ag_request_error_body(r, resp.status, ag_limit_verdict_str(res->verdict), resp.body, resp.body_len, hdrs,
                          false);
    return false;
}

static void on_free_cancel(ag_request *r, void *arg)
{
    ag_limit_stage_abandon(r);
}

static void decided(ag_limit_ticket *t, const ag_limit_result *res, void *arg)
{
    ag_request *r = arg;
    r->on_free = NULL;
    r->limit_estimate = res->estimate;
    if (apply(r, res))
        ag_pipeline_resume(r);
    /* else: answered, and the request completed */
}

ag_stage_result ag_limit_stage_admit(ag_request *r)
{
    ag_worker *w = r->worker;
    if (!w->limiter || !r->cfg->has_rate_limits)
        return AG_STAGE_NEXT;
    bool failed;
    cJSON *body = ag_request_json(r, &failed); /* NULL for routes without a JSON body */
    if (failed)
        return AG_STAGE_DONE;
    ag_limit_request lr = {
        .id = &r->identity,
        .deployment = r->route.deployment,
        .operation = r->route.operation,
        .body = body,
    };
    ag_limit_result res;
    ag_limit_status st = ag_limiter_admit(w->limiter, r->cfg->rate_limits.policies, &lr, &res,
                                          &r->limit_ticket, decided, r);
    if (st == AG_LIMIT_PENDING) {
        r->on_free = on_free_cancel;
        return AG_STAGE_WAIT;
    }
    r->limit_estimate = res.estimate;
    return apply(r, &res) ? AG_STAGE_NEXT : AG_STAGE_DONE;
}

void ag_limit_stage_finish(ag_request *r)
{
    if (!r->limit_ticket)
        return;
    if (r->attempts == 0)
        ag_limit_cancel(r->limit_ticket); /* never forwarded: the tokens go back */
    else
        ag_limit_finish(r->limit_ticket, r->usage.present ? r->usage.total_tokens : AG_LIMIT_USAGE_UNKNOWN);
    r->limit_ticket = NULL;
}

void ag_limit_stage_abandon(ag_request *r)
{
    if (r->limit_ticket)
        ag_limit_cancel(r->limit_ticket);
    r->limit_ticket = NULL;
}
