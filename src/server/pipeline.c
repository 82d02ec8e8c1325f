/* The stage engine: runs a request through the pipeline stages in order (see request.h). */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "aoai_guard/audit_stage.h"
#include "aoai_guard/auth_stage.h"
#include "aoai_guard/limit_stage.h"
#include "aoai_guard/policy_stage.h"
#include "aoai_guard/clock.h"
#include "aoai_guard/content_safety.h"
#include "aoai_guard/conn.h"
#include "aoai_guard/forward.h"
#include "aoai_guard/json_strict.h"
#include "aoai_guard/log.h"
#include "aoai_guard/request.h"
#include "aoai_guard/route.h"

/* The body is read only after the header-phase stages admitted the request, so an unauthenticated
 * caller never makes us buffer max_body_bytes. */
static ag_stage_result stage_read_body(ag_request *r)
{
    if (r->body_done)
        return AG_STAGE_NEXT;
    ag_conn_read_body(r->conn);
    return r->body_done ? AG_STAGE_NEXT : AG_STAGE_WAIT;
}

static bool content_type_is_json(const ag_request *r)
{
    if (r->h_content_type < 0)
        return false;
    size_t n;
    const char *v = ag_request_header_value(r, r->h_content_type, &n);
    size_t base = 0;
    while (base < n && v[base] != ';')
        base++;
    while (base > 0 && (v[base - 1] == ' ' || v[base - 1] == '\t'))
        base--;
    if (!(base == 16 && strncasecmp(v, "application/json", 16) == 0))
        return false;
    /* A charset other than UTF-8 would make us read different text than Azure does. */
    for (size_t i = base; i + 8 <= n; i++)
        if (strncasecmp(v + i, "charset=", 8) == 0)
            return (n - i - 8 == 5 && strncasecmp(v + i + 8, "utf-8", 5) == 0) ||
                   (n - i - 8 == 7 && strncasecmp(v + i + 8, "\"utf-8\"", 7) == 0);
    return true;
}

/* Keeps the body's "model" (bytes of the decoded string) for routing and the audit record. */
static void take_model(ag_request *r, const char *m, size_t n)
{
    r->model_len = n;
    if (n >= sizeof r->model)
        n = sizeof r->model - 1;
    memcpy(r->model, m, n);
    r->model[n] = '\0';
    r->has_model = true;
}

static bool is_true(const ag_json_field *f)
{
    return f->value && f->value_len == 4 && memcmp(f->value, "true", 4) == 0;
}

/* Accepts only a strict JSON object as the body (json_strict.h), once; later stages share it. */
static ag_stage_result stage_parse_body(ag_request *r)
{
    if (!r->route.json_body)
        return AG_STAGE_NEXT;
    if (r->body_len == 0) {
        ag_request_error(r, 400, "BadRequest", "The request body must be a JSON object.", NULL, false);
        return AG_STAGE_DONE;
    }
    if (r->h_content_encoding >= 0) {
        ag_request_error(r, 415, "UnsupportedMediaType",
                         "Compressed request bodies are not accepted.", NULL, false);
        return AG_STAGE_DONE;
    }
    if (!content_type_is_json(r)) {
        ag_request_error(r, 415, "UnsupportedMediaType",
                         "Content-Type must be application/json (UTF-8).", NULL, false);
        return AG_STAGE_DONE;
    }
    /* Stages that read the tree (policy, rate limits' token estimate, content safety) get it now;
     * otherwise a check without a tree proves the body strict and finds "model" and "stream", and a
     * later stage that wants the tree builds it (ag_request_json). A body the check cannot prove
     * goes to the full parse, which accepts or refuses it with its exact reason. */
    const ag_config *cfg = r->cfg;
    ag_json_field fields[3] = {{.key = "model"}, {.key = "stream"}, {.key = "stream_options"}};
    bool tree_now = cfg->policy || cfg->has_rate_limits || cfg->content_safety.enabled;
    if (!tree_now && ag_json_object_check(r->body, r->body_len, &ag_request_json_limits, fields, 3)) {
        r->json_ok = true;
        const char *m = fields[0].value;
        if (m && m[0] == '"') /* a string holding no escape: its bytes are its value */
            take_model(r, m + 1, fields[0].value_len - 2);
        r->stream = is_true(&fields[1]);
        /* stream_options is a proven object when it is one: the same check finds include_usage */
        r->no_stream_options = !fields[2].value;
        ag_json_field usage = {.key = "include_usage"};
        r->usage_asked = fields[2].value && fields[2].value[0] == '{' &&
                         ag_json_object_check(fields[2].value, fields[2].value_len, &ag_request_json_limits, &usage, 1) &&
                         is_true(&usage);
    } else {
        ag_json_status st;
        size_t off;
        if (!ag_request_parse_json(r, &st, &off)) {
            char msg[160];
            snprintf(msg, sizeof msg, "The request body is not acceptable JSON: %s at byte %zu.",
                     ag_json_status_str(st), off);
            ag_log(AG_LOG_INFO, r->id, "client %s: %s", r->client_addr, msg);
            ag_request_error(r, 400, "BadRequest", msg, NULL, false);
            return AG_STAGE_DONE;
        }
        if (!cJSON_IsObject(r->json)) {
            ag_request_error(r, 400, "BadRequest", "The request body must be a JSON object.", NULL, false);
            return AG_STAGE_DONE;
        }
        r->json_ok = true;
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(r->json, "model");
        if (cJSON_IsString(m))
            take_model(r, m->valuestring, strlen(m->valuestring));
        r->stream = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r->json, "stream"));
    }
    if (ag_route_take_model(r) != 0)
        return AG_STAGE_DONE;
    return AG_STAGE_NEXT;
}

typedef struct stage {
    const char *name;
    ag_stage_result (*run)(ag_request *r);
} stage;

static const stage stages[] = {
    {"route", ag_route_stage},
    {"authenticate", ag_auth_stage_authenticate},
    {"read_body", stage_read_body},
    {"parse_body", stage_parse_body},
    {"authorize", ag_auth_stage_authorize},
    {"admit_audit", ag_audit_stage_admit},
    {"admit", ag_limit_stage_admit},
    {"inspect", ag_policy_stage_inspect},
    {"content_safety", ag_content_safety_stage},
    {"prepare", ag_forward_prepare_stage},
    {"forward", ag_forward_stage},
};

void ag_pipeline_run(ag_request *r)
{
    if (r->in_pipeline)
        return;
    r->in_pipeline = true;
    uint64_t t0 = ag_mono_ns(); /* the stages' time counts as the gateway's, read once per run */
    while (r->stage < (int)(sizeof stages / sizeof stages[0])) {
        int idx = r->stage++;
        ag_stage_result res = stages[idx].run(r);
        if (r->done_pending || res != AG_STAGE_NEXT)
            break;
    }
    r->gateway_ns += ag_mono_ns() - t0;
    r->in_pipeline = false;
    if (r->done_pending)
        ag_conn_request_done(r->conn); /* frees r */
}

void ag_pipeline_retry_stage(ag_request *r)
{
    if (r->stage > 0)
        r->stage--;
    ag_pipeline_resume(r);
}

void ag_pipeline_resume(ag_request *r)
{
    if (r->in_pipeline)
        return; /* the running loop continues by itself */
    ag_pipeline_run(r);
}
