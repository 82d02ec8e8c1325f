/* Per-request metrics (see request_metrics.h). */
#include "aoai_guard/request_metrics.h"

#include <stdio.h>

#include "aoai_guard/clock.h"
#include "aoai_guard/runtime.h"
#include "aoai_guard/worker.h"

/* Which of the worker's memos remembers which series. */
enum { MEMO_REQUESTS, MEMO_DURATION, MEMO_TTFB, MEMO_TOKENS_PROMPT, MEMO_TOKENS_COMPLETION, MEMO_APP_PROMPT,
       MEMO_APP_COMPLETION, MEMO_COUNT };
_Static_assert(MEMO_COUNT <= sizeof ((ag_worker *)0)->metric_memo / sizeof(ag_metric_memo),
               "a memo for each series a request updates");

void ag_request_metrics_done(const ag_request *r)
{
    ag_services *svc = &r->worker->rt->svc;
    const ag_metrics_std *m = &svc->std;
    unsigned shard = r->worker->metrics_shard;
    ag_metric_memo *memo = r->worker->metric_memo; /* consecutive requests mostly share their labels */
    const char *dep = r->route.deployment[0] ? r->route.deployment : "none";
    const char *op = r->route.operation[0] ? r->route.operation : "none";
    ag_metric_inc(ag_metric_series_memo(&memo[MEMO_REQUESTS], m->requests_total, shard,
                                        (const char *const[]){dep, op, ag_metrics_code_class(r->status)}));
    double secs = (double)(ag_mono_ns() - r->t_start) / 1e9;
    ag_metric_observe(ag_metric_series_memo(&memo[MEMO_DURATION], m->request_duration_seconds, shard,
                                            (const char *const[]){op}),
                      secs);
    if (r->upstream[0] && r->t_upstream_head > r->t_upstream_sent)
        ag_metric_observe(ag_metric_series_memo(&memo[MEMO_TTFB], m->upstream_ttfb_seconds, shard,
                                                (const char *const[]){r->upstream}),
                          (double)(r->t_upstream_head - r->t_upstream_sent) / 1e9);
    if (r->usage.present) {
        ag_metric_add(ag_metric_series_memo(&memo[MEMO_TOKENS_PROMPT], m->tokens_total, shard,
                                            (const char *const[]){dep, "prompt"}),
                      (uint64_t)r->usage.prompt_tokens);
        ag_metric_add(ag_metric_series_memo(&memo[MEMO_TOKENS_COMPLETION], m->tokens_total, shard,
                                            (const char *const[]){dep, "completion"}),
                      (uint64_t)r->usage.completion_tokens);
        if (m->app_tokens_total) {
            const char *app = r->identity.app[0] ? r->identity.app : r->identity.name[0] ? r->identity.name : "none";
            ag_metric_add(ag_metric_series_memo(&memo[MEMO_APP_PROMPT], m->app_tokens_total, shard,
                                                (const char *const[]){app, "prompt"}),
                          (uint64_t)r->usage.prompt_tokens);
            ag_metric_add(ag_metric_series_memo(&memo[MEMO_APP_COMPLETION], m->app_tokens_total, shard,
                                                (const char *const[]){app, "completion"}),
                          (uint64_t)r->usage.completion_tokens);
        }
    }
}

void ag_request_metrics_connection(struct ag_worker *w, int delta)
{
    ag_services *svc = &w->rt->svc;
    ag_metric_gauge_add(ag_metric_series(svc->std.open_connections, w->metrics_shard, NULL), (double)delta);
}
