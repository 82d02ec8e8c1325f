/* The audit stage (see audit_stage.h). */
#include "aoai_guard/audit_stage.h"

#include <stdlib.h>
#include <string.h>

#include "aoai_guard/audit.h"
#include "aoai_guard/audit_record.h"
#include "aoai_guard/clock.h"
#include "aoai_guard/log.h"
#include "aoai_guard/policy.h"
#include "aoai_guard/runtime.h"

ag_stage_result ag_audit_stage_admit(ag_request *r)
{
    ag_audit *a = r->worker->rt->svc.audit;
    if (!a || ag_audit_accepting(a))
        return AG_STAGE_NEXT;
    ag_log(AG_LOG_WARN, r->id, "audit trail full (on_full=reject): refusing the request");
    ag_request_error(r, 503, "AuditUnavailable",
                     "The gateway cannot record this request in its audit trail right now.",
                     "retry-after: 5\r\nretry-after-ms: 5000\r\n", false);
    return AG_STAGE_DONE;
}

static ag_completion_reason completion_of(const ag_request *r)
{
    const char *c = r->completion ? r->completion : "";
    if (strcmp(c, "client_disconnected") == 0)
        return AG_COMPLETION_CLIENT_DISCONNECTED;
    if (strcmp(c, "upstream_reset") == 0)
        return AG_COMPLETION_UPSTREAM_RESET;
    if (strcmp(c, "upstream_timeout") == 0 || strcmp(c, "upstream_connect_timeout") == 0)
        return AG_COMPLETION_UPSTREAM_TIMEOUT;
    if (strncmp(c, "upstream_", 9) == 0 || strcmp(c, "no_upstream_available") == 0 ||
        strcmp(c, "no_credential") == 0)
        return AG_COMPLETION_UPSTREAM_ERROR;
    if (strcmp(c, "shutdown") == 0)
        return AG_COMPLETION_SHUTDOWN;
    if (r->attempts == 0 && r->status != 0)
        return AG_COMPLETION_REJECTED;
    return AG_COMPLETION_COMPLETE;
}

static int64_t ms_between(uint64_t a, uint64_t b)
{
    return (a && b && b >= a) ? (int64_t)((b - a) / 1000000) : -1;
}

/* The completion as the response policy would redact it (for capture: redacted): the assembled
 * text run through the response-side rules. NULL when nothing applies; the caller frees. */
static char *redact_completion(ag_request *r)
{
    cJSON *doc = cJSON_CreateObject();
    cJSON *choices = doc ? cJSON_AddArrayToObject(doc, "choices") : NULL;
    cJSON *choice = cJSON_CreateObject();
    cJSON *msg = choice ? cJSON_AddObjectToObject(choice, "message") : NULL;
    char *out = NULL;
    if (choices && msg && cJSON_AddStringToObject(msg, "content", r->completion_text)) {
        cJSON_AddItemToArray(choices, choice);
        choice = NULL;
        ag_policy_call call = {&r->identity, r->route.deployment[0] ? r->route.deployment : NULL,
                               r->route.operation};
        ag_policy_decisions scratch_dec;
        memset(&scratch_dec, 0, sizeof scratch_dec);
        bool modified = false;
        ag_policy_inspect_response(r->cfg->policy, r->worker->policy_scratch, &call, doc, &scratch_dec,
                                   &modified);
        const cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(doc, "choices"), 0);
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(c0, "message"),
                                                                "content");
        if (modified && cJSON_IsString(content))
            out = strdup(content->valuestring);
    }
    cJSON_Delete(choice);
    cJSON_Delete(doc);
    return out;
}

void ag_audit_stage_record(ag_request *r)
{
    ag_audit *a = r->worker->rt->svc.audit;
    if (!a || !r->head_done)
        return;
    ag_audit_record *rec = ag_audit_record_new();
    if (!rec) {
        ag_log(AG_LOG_ERROR, r->id, "audit: out of memory building the record");
        return;
    }
    ag_audit_copy_field(rec->request_id, sizeof rec->request_id, r->id);
    rec->time_ms = r->wall_start_ms;
    rec->identity = r->identity;
    ag_audit_copy_field(rec->client_address, sizeof rec->client_address, r->client_addr);
    ag_audit_copy_field(rec->deployment, sizeof rec->deployment, r->route.deployment);
    ag_audit_copy_field(rec->operation, sizeof rec->operation, r->route.operation);
    if (r->has_model)
        ag_audit_copy_field(rec->model, sizeof rec->model, r->model);
    ag_audit_copy_field(rec->api_version, sizeof rec->api_version, r->api_version);
    rec->stream = r->stream;
    rec->status = r->status;
    ag_audit_copy_field(rec->upstream, sizeof rec->upstream, r->upstream);
    rec->latency_ms = ms_between(r->t_start, ag_mono_ns());
    rec->ttfb_ms = ms_between(r->t_upstream_sent, r->t_upstream_head);
    rec->prompt_tokens = r->usage.present ? r->usage.prompt_tokens : -1;
    rec->completion_tokens = r->usage.present ? r->usage.completion_tokens : -1;
    rec->total_tokens = r->usage.present ? r->usage.total_tokens : -1;
    rec->estimated_tokens = r->limit_estimate > 0 ? r->limit_estimate : -1;
    if (r->cfg->has_rate_limits) {
        ag_audit_copy_field(rec->rate_limit_decision, sizeof rec->rate_limit_decision,
                            r->limit_refused ? "reject" : "allow");
        ag_audit_copy_field(rec->rate_limit_policy, sizeof rec->rate_limit_policy, r->limit_policy);
    }
    rec->completion_reason = completion_of(r);
    for (unsigned i = 0; i < r->policy_decisions.count; i++)
        ag_audit_record_add_decision(rec, r->policy_decisions.items[i].rule,
                                     ag_policy_action_name(r->policy_decisions.items[i].action));
    const ag_identity *id = &r->identity;
    rec->capture = ag_audit_capture_for(&r->cfg->audit, id->tid, id->app[0] ? id->app : id->name, id->roles,
                                        r->route.deployment);
    /* full: the prompt as the caller sent it; redacted: as it was forwarded, after the policy's
     * redactions; hashed and off are applied by the record builder (the text never leaves it). */
    bool redacted = rec->capture == AG_CAPTURE_REDACTED;
    const char *prompt = redacted && r->forward_body ? r->forward_body : r->body;
    size_t plen = redacted && r->forward_body ? r->forward_body_len : r->body_len;
    if (prompt && plen)
        ag_audit_record_set_prompt(rec, prompt, plen);
    if (r->completion_text && r->completion_len) {
        char *redacted_text = NULL;
        if (redacted && r->cfg->policy && ag_policy_has_response_rules(r->cfg->policy))
            redacted_text = redact_completion(r);
        if (redacted_text) {
            ag_audit_record_set_response(rec, redacted_text, strlen(redacted_text));
            free(redacted_text);
        } else {
            ag_audit_record_set_response(rec, r->completion_text, r->completion_len);
        }
    }
    ag_audit_submit(a, rec); /* takes ownership, never blocks */
}
