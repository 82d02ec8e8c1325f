/* The inspect stage (see policy_stage.h). */
#include "aoai_guard/policy_stage.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aoai_guard/log.h"
#include "aoai_guard/policy.h"
#include "aoai_guard/runtime.h"

int ag_policy_stage_worker_init(ag_worker *w)
{
    w->policy_scratch = ag_policy_scratch_new();
    return w->policy_scratch ? 0 : -1;
}

void ag_policy_stage_worker_free(ag_worker *w)
{
    ag_policy_scratch_free(w->policy_scratch);
    w->policy_scratch = NULL;
}

static void count_decisions(ag_request *r)
{
    ag_services *svc = &r->worker->rt->svc;
    const ag_policy_decisions *d = &r->policy_decisions;
    for (unsigned i = 0; i < d->count; i++)
        ag_metric_inc(ag_metric_series(svc->std.policy_decisions_total, r->worker->metrics_shard,
                                       (const char *const[]){d->items[i].rule,
                                                             ag_policy_action_name(d->items[i].action)}));
}

ag_stage_result ag_policy_stage_inspect(ag_request *r)
{
    const ag_policy *pol = r->cfg->policy;
    bool failed;
    cJSON *tree = pol ? ag_request_json(r, &failed) : NULL;
    if (!tree)
        return pol && failed ? AG_STAGE_DONE : AG_STAGE_NEXT;
    ag_policy_call call = {
        .identity = &r->identity,
        .deployment = r->route.deployment[0] ? r->route.deployment : NULL,
        .operation = r->route.operation,
    };
    ag_policy_result res;
    ag_policy_result_init(&res);
    ag_policy_inspect_request(pol, r->worker->policy_scratch, &call, tree, &res);
    r->policy_decisions = res.decisions;
    r->policy_verdict = ag_policy_verdict_name(res.verdict);
    count_decisions(r);
    ag_stage_result out = AG_STAGE_NEXT;
    switch (res.verdict) {
    case AG_VERDICT_ALLOW:
        break;
    case AG_VERDICT_MODIFIED:
        cJSON_free(r->forward_body);
        r->forward_body = res.body; /* take ownership */
        r->forward_body_len = res.body_len;
        res.body = NULL;
        break;
    case AG_VERDICT_BLOCK:
    case AG_VERDICT_REJECT: {
        size_t len = 0;
        char *body = ag_policy_error_body(&res, &len);
        ag_log(AG_LOG_INFO, r->id, "policy: %s by %s", ag_policy_verdict_name(res.verdict),
               res.rule ? res.rule : "?");
        /* The result lives on this stack frame; the access log reads the code after we return. */
        snprintf(r->error_code_buf, sizeof r->error_code_buf, "%s",
                 res.verdict == AG_VERDICT_BLOCK ? "content_filter" : res.code);
        if (body) {
            ag_request_error_body(r, res.status ? res.status : 400, r->error_code_buf, body, len, NULL, false);
            free(body);
        } else {
            ag_request_error(r, 400, "content_filter", "The request was blocked by the gateway's policy.",
                             NULL, false);
        }
        out = AG_STAGE_DONE;
        break;
    }
    case AG_VERDICT_ERROR:
    default:
        ag_log(AG_LOG_ERROR, r->id, "policy: inspection failed; refusing the request (fail closed)");
        ag_request_error(r, 503, "PolicyUnavailable", "The gateway could not inspect the request.", NULL,
                         false);
        out = AG_STAGE_DONE;
        break;
    }
    ag_policy_result_clear(&res);
    return out;
}
