/* Azure AI Content Safety call-out (see content_safety.h). */
#include "aoai_guard/content_safety.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aoai_guard/credential.h"
#include "aoai_guard/curl_loop.h"
#include "aoai_guard/jsonw.h"
#include "aoai_guard/log.h"
#include "aoai_guard/runtime.h"

#define CS_MAX_CHARS 10000   /* both APIs take at most 10K characters per text */
#define CS_MAX_DOCS 5

int ag_content_safety_config_parse(const cJSON *obj, const char *path, ag_content_safety_config *out,
                                   ag_conf_err *err)
{
    memset(out, 0, sizeof *out);
    if (!obj)
        return 0;
    static const char *const keys[] = {"endpoint", "api_version", "auth", "timeout_ms", "on_error",
                                       "shield_prompt", "analyze", "ca_file", NULL};
    static const char *const on_error[] = {"fail_open", "fail_closed", NULL};
    out->enabled = true;
    out->timeout_ms = 2000;
    out->shield_prompt = true;
    out->block_severity = 4;
    int oe = 0;
    if (ag_conf_object(obj, path, keys, err) || ag_conf_string(obj, path, "endpoint", true, &out->endpoint, err) ||
        ag_conf_string(obj, path, "api_version", false, &out->api_version, err) ||
        ag_conf_int(obj, path, "timeout_ms", 50, 60000, &out->timeout_ms, err) ||
        ag_conf_enum(obj, path, "on_error", on_error, &oe, err) ||
        ag_conf_bool(obj, path, "shield_prompt", &out->shield_prompt, err) ||
        ag_conf_string(obj, path, "ca_file", false, &out->ca_file, err))
        goto fail;
    out->fail_closed = oe == 1;
    if (strncmp(out->endpoint, "https://", 8) != 0 && strncmp(out->endpoint, "http://127.0.0.1", 16) != 0) {
        ag_conf_fail(err, path, "endpoint", "must be https:// (http://127.0.0.1 only for tests)");
        goto fail;
    }
    size_t el = strlen(out->endpoint);
    while (el && out->endpoint[el - 1] == '/')
        out->endpoint[--el] = '\0';
    if (!out->api_version && !(out->api_version = strdup("2024-09-01"))) {
        ag_conf_fail(err, path, "api_version", "out of memory");
        goto fail;
    }
    char p[AG_CONF_PATH_LEN];
    const cJSON *auth = ag_conf_get(obj, "auth");
    ag_conf_path(p, sizeof p, path, "auth", -1);
    if (!auth) {
        ag_conf_fail(err, path, "auth", "is required (type api_key or entra)");
        goto fail;
    }
    static const char *const akeys[] = {"type", "api_key", NULL};
    static const char *const types[] = {"api_key", "entra", NULL};
    int type = -1;
    if (ag_conf_object(auth, p, akeys, err) || ag_conf_enum(auth, p, "type", types, &type, err) ||
        ag_conf_string(auth, p, "api_key", type == 0, &out->api_key, err))
        goto fail;
    if (type < 0) {
        ag_conf_fail(err, p, "type", "is required (api_key or entra)");
        goto fail;
    }
    out->use_entra = type == 1;
    const cJSON *an = ag_conf_get(obj, "analyze");
    if (an) {
        static const char *const ankeys[] = {"block_severity", NULL};
        ag_conf_path(p, sizeof p, path, "analyze", -1);
        if (ag_conf_object(an, p, ankeys, err) || ag_conf_int(an, p, "block_severity", 1, 7, &out->block_severity, err))
            goto fail;
        out->analyze = true;
    }
    if (!out->shield_prompt && !out->analyze) {
        ag_conf_fail(err, path, NULL, "enable shield_prompt or analyze (or remove the section)");
        goto fail;
    }
    return 0;
fail:
    ag_content_safety_config_free(out);
    return -1;
}

void ag_content_safety_config_free(ag_content_safety_config *c)
{
    free(c->endpoint);
    free(c->api_version);
    free(c->api_key);
    free(c->ca_file);
    memset(c, 0, sizeof *c);
}

int ag_content_safety_worker_init(ag_worker *w)
{
    if (!w->cfg->content_safety.enabled)
        return 0;
    w->curl = ag_curl_loop_new(w->base);
    return w->curl ? 0 : -1;
}

void ag_content_safety_worker_free(ag_worker *w)
{
    if (w->curl)
        ag_curl_loop_free(w->curl);
    w->curl = NULL;
}

/* ---- what is sent ---------------------------------------------------------------------------- */

typedef struct cs_text {
    char *buf;
    size_t len, cap;
} cs_text;

/* Appends s, stopping at CS_MAX_CHARS code points in total (the APIs' limit). */
static void text_add(cs_text *t, const char *s)
{
    size_t cps = 0;
    for (size_t i = 0; i < t->len; i++)
        cps += ((unsigned char)t->buf[i] & 0xC0) != 0x80;
    size_t n = 0;
    for (; s[n] && cps < CS_MAX_CHARS; n++)
        cps += ((unsigned char)s[n] & 0xC0) != 0x80;
    while (s[n] && ((unsigned char)s[n] & 0xC0) == 0x80)
        n++; /* finish the code point */
    if (n == 0)
        return;
    if (t->len + n + 2 > t->cap) {
        size_t cap = (t->len + n + 2) * 2;
        char *nb = realloc(t->buf, cap);
        if (!nb)
            return;
        t->buf = nb;
        t->cap = cap;
    }
    if (t->len)
        t->buf[t->len++] = '\n';
    memcpy(t->buf + t->len, s, n);
    t->len += n;
    t->buf[t->len] = '\0';
}

/* Texts of a chat content value (string, or array of {type:text,text}). */
static void content_texts(cs_text *t, const cJSON *content)
{
    if (cJSON_IsString(content)) {
        text_add(t, content->valuestring);
        return;
    }
    for (const cJSON *p = cJSON_IsArray(content) ? content->child : NULL; p; p = p->next) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(p, "type");
        const cJSON *tx = cJSON_GetObjectItemCaseSensitive(p, "text");
        if (cJSON_IsString(type) && (strcmp(type->valuestring, "text") == 0 ||
                                     strcmp(type->valuestring, "input_text") == 0) && cJSON_IsString(tx))
            text_add(t, tx->valuestring);
    }
}

/* The user's prompt (user messages, prompt, input) and documents (tool results) of a body. */
static void collect(const cJSON *body, cs_text *prompt, cs_text docs[CS_MAX_DOCS], int *ndocs)
{
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(body, "messages");
    for (const cJSON *m = cJSON_IsArray(msgs) ? msgs->child : NULL; m; m = m->next) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!cJSON_IsString(role))
            continue;
        if (strcmp(role->valuestring, "user") == 0)
            content_texts(prompt, content);
        else if (strcmp(role->valuestring, "tool") == 0 && *ndocs < CS_MAX_DOCS)
            content_texts(&docs[(*ndocs)++], content);
    }
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(body, "prompt");
    if (cJSON_IsString(p))
        text_add(prompt, p->valuestring);
    const cJSON *input = cJSON_GetObjectItemCaseSensitive(body, "input");
    if (cJSON_IsString(input))
        text_add(prompt, input->valuestring);
    for (const cJSON *i = cJSON_IsArray(input) ? input->child : NULL; i; i = i->next) {
        if (cJSON_IsString(i))
            text_add(prompt, i->valuestring);
        else
            content_texts(prompt, cJSON_GetObjectItemCaseSensitive(i, "content"));
    }
}

/* ---- the exchange ---------------------------------------------------------------------------- */

typedef struct cs_call {
    ag_request *req;
    int pending;
    bool attack;          /* Prompt Shields found an attack */
    char category[16];    /* analyze: the first category at or above block_severity */
    int severity;
    bool failed;
    char why[160];
} cs_call;

static void cs_on_free(ag_request *r, void *arg)
{
    cs_call *c = arg;
    ag_curl_loop_cancel(r->worker->curl, c);
    free(c);
}

static void cs_decide(cs_call *c)
{
    ag_request *r = c->req;
    const ag_content_safety_config *cfg = &r->cfg->content_safety;
    r->on_free = NULL;
    bool attack = c->attack, failed = c->failed;
    char category[16], why[160];
    int severity = c->severity;
    snprintf(category, sizeof category, "%s", c->category);
    snprintf(why, sizeof why, "%s", c->why);
    free(c);
    if (attack || category[0]) {
        char body[768];
        if (attack) {
            ag_log(AG_LOG_INFO, r->id, "content safety: Prompt Shields detected an attack; blocked");
            snprintf(body, sizeof body,
                     "{\"error\":{\"code\":\"content_filter\",\"message\":\"The prompt was blocked by Azure AI "
                     "Content Safety (Prompt Shields).\",\"param\":\"prompt\",\"status\":400,\"innererror\":{"
                     "\"code\":\"ResponsibleAIPolicyViolation\",\"content_filter_result\":{\"jailbreak\":{"
                     "\"filtered\":true,\"detected\":true}}}}}");
        } else {
            ag_log(AG_LOG_INFO, r->id, "content safety: %s severity %d; blocked", category, severity);
            const char *sev = severity >= 6 ? "high" : severity >= 4 ? "medium" : "low";
            const char *key = strcmp(category, "SelfHarm") == 0 ? "self_harm"
                              : strcmp(category, "Hate") == 0   ? "hate"
                              : strcmp(category, "Sexual") == 0 ? "sexual"
                                                                : "violence";
            snprintf(body, sizeof body,
                     "{\"error\":{\"code\":\"content_filter\",\"message\":\"The prompt was blocked by Azure AI "
                     "Content Safety (%s).\",\"param\":\"prompt\",\"status\":400,\"innererror\":{\"code\":"
                     "\"ResponsibleAIPolicyViolation\",\"content_filter_result\":{\"%s\":{\"filtered\":true,"
                     "\"severity\":\"%s\"}}}}}",
                     category, key, sev);
        }
        ag_request_error_body(r, 400, "content_filter", body, strlen(body), NULL, false);
        return;
    }
    if (failed) {
        ag_log(AG_LOG_WARN, r->id, "content safety unavailable (%s): %s", why,
               cfg->fail_closed ? "refusing (fail_closed)" : "forwarding (fail_open)");
        if (cfg->fail_closed) {
            ag_request_error(r, 503, "ContentSafetyUnavailable",
                             "The gateway could not check the prompt with Azure AI Content Safety.",
                             "retry-after: 1\r\nretry-after-ms: 1000\r\n", false);
            return;
        }
    }
    ag_pipeline_resume(r);
}

static void on_shield(const ag_http_response *resp, void *arg)
{
    cs_call *c = arg;
    cJSON *j = resp->ok && resp->status == 200 ? cJSON_ParseWithLength(resp->body, resp->body_len) : NULL;
    const cJSON *up = cJSON_GetObjectItemCaseSensitive(j, "userPromptAnalysis");
    const cJSON *ad = cJSON_GetObjectItemCaseSensitive(up, "attackDetected");
    if (!cJSON_IsBool(ad)) {
        c->failed = true;
        snprintf(c->why, sizeof c->why, "shieldPrompt: %s", resp->ok ? "unexpected answer" : resp->error);
    } else {
        c->attack |= cJSON_IsTrue(ad);
        const cJSON *docs = cJSON_GetObjectItemCaseSensitive(j, "documentsAnalysis");
        for (const cJSON *d = cJSON_IsArray(docs) ? docs->child : NULL; d; d = d->next)
            c->attack |= cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(d, "attackDetected"));
    }
    cJSON_Delete(j);
    if (--c->pending == 0)
        cs_decide(c);
}

static void on_analyze(const ag_http_response *resp, void *arg)
{
    cs_call *c = arg;
    const ag_content_safety_config *cfg = &c->req->cfg->content_safety;
    cJSON *j = resp->ok && resp->status == 200 ? cJSON_ParseWithLength(resp->body, resp->body_len) : NULL;
    const cJSON *cats = cJSON_GetObjectItemCaseSensitive(j, "categoriesAnalysis");
    if (!cJSON_IsArray(cats)) {
        c->failed = true;
        snprintf(c->why, sizeof c->why, "analyze: %s", resp->ok ? "unexpected answer" : resp->error);
    }
    for (const cJSON *e = cJSON_IsArray(cats) ? cats->child : NULL; e; e = e->next) {
        const cJSON *cat = cJSON_GetObjectItemCaseSensitive(e, "category");
        const cJSON *sev = cJSON_GetObjectItemCaseSensitive(e, "severity");
        if (cJSON_IsString(cat) && cJSON_IsNumber(sev) && sev->valuedouble >= (double)cfg->block_severity &&
            !c->category[0]) {
            snprintf(c->category, sizeof c->category, "%s", cat->valuestring);
            c->severity = (int)sev->valuedouble;
        }
    }
    cJSON_Delete(j);
    if (--c->pending == 0)
        cs_decide(c);
}

static int start_call(ag_request *r, cs_call *c, const char *op, const char *body, ag_http_done_fn done,
                      const char *auth_header)
{
    const ag_content_safety_config *cfg = &r->cfg->content_safety;
    char url[1024];
    snprintf(url, sizeof url, "%s/contentsafety/text:%s?api-version=%s", cfg->endpoint, op, cfg->api_version);
    char reqid[120];
    snprintf(reqid, sizeof reqid, "x-ms-client-request-id: %s", r->id);
    const char *headers[] = {"Content-Type: application/json", auth_header, reqid, NULL};
    ag_http_request hr = {
        .method = "POST", .url = url, .headers = headers, .body = body, .body_len = strlen(body),
        .timeout_ms = cfg->timeout_ms, .ca_file = cfg->ca_file,
    };
    if (ag_curl_loop_start(r->worker->curl, &hr, done, c) != 0)
        return -1;
    c->pending++;
    return 0;
}

ag_stage_result ag_content_safety_stage(ag_request *r)
{
    const ag_content_safety_config *cfg = &r->cfg->content_safety;
    if (!cfg->enabled || !r->worker->curl)
        return AG_STAGE_NEXT;
    bool no_tree;
    cJSON *body = ag_request_json(r, &no_tree);
    if (!body)
        return no_tree ? AG_STAGE_DONE : AG_STAGE_NEXT;
    cs_text prompt = {0}, docs[CS_MAX_DOCS];
    memset(docs, 0, sizeof docs);
    int ndocs = 0;
    collect(body, &prompt, docs, &ndocs);
    ag_stage_result res = AG_STAGE_NEXT;
    if (!prompt.len && !ndocs)
        goto out;
    char auth[16512];
    if (cfg->use_entra) {
        ag_credential *cred = r->worker->rt->svc.credential;
        ag_token *tok = cred ? ag_credential_token(cred, AG_SCOPE_COGNITIVE) : NULL;
        if (tok) {
            snprintf(auth, sizeof auth, "Authorization: Bearer %s", ag_token_value(tok));
            ag_token_release(tok);
        } else {
            auth[0] = '\0';
        }
    } else {
        snprintf(auth, sizeof auth, "Ocp-Apim-Subscription-Key: %s", cfg->api_key);
    }
    cs_call *c = calloc(1, sizeof *c);
    if (!c || !auth[0]) {
        free(c);
        if (cfg->fail_closed) {
            ag_request_error(r, 503, "ContentSafetyUnavailable",
                             "The gateway could not check the prompt with Azure AI Content Safety.", NULL, false);
            res = AG_STAGE_DONE;
        }
        goto out;
    }
    c->req = r;
    c->pending = 1; /* held until both calls are started, so a synchronous failure cannot decide early */
    if (cfg->shield_prompt) {
        cJSON *b = cJSON_CreateObject();
        cJSON_AddStringToObject(b, "userPrompt", prompt.buf ? prompt.buf : "");
        cJSON *da = cJSON_AddArrayToObject(b, "documents");
        for (int i = 0; i < ndocs; i++)
            cJSON_AddItemToArray(da, cJSON_CreateString(docs[i].buf ? docs[i].buf : ""));
        char *s = cJSON_PrintUnformatted(b);
        cJSON_Delete(b);
        if (!s || start_call(r, c, "shieldPrompt", s, on_shield, auth) != 0) {
            c->failed = true;
            snprintf(c->why, sizeof c->why, "shieldPrompt: cannot start the call");
        }
        cJSON_free(s);
    }
    if (cfg->analyze && prompt.len) {
        cJSON *b = cJSON_CreateObject();
        cJSON_AddStringToObject(b, "text", prompt.buf);
        cJSON *cats = cJSON_AddArrayToObject(b, "categories");
        static const char *const names[] = {"Hate", "SelfHarm", "Sexual", "Violence"};
        for (int i = 0; i < 4; i++)
            cJSON_AddItemToArray(cats, cJSON_CreateString(names[i]));
        cJSON_AddStringToObject(b, "outputType", "FourSeverityLevels");
        char *s = cJSON_PrintUnformatted(b);
        cJSON_Delete(b);
        if (!s || start_call(r, c, "analyze", s, on_analyze, auth) != 0) {
            c->failed = true;
            snprintf(c->why, sizeof c->why, "analyze: cannot start the call");
        }
        cJSON_free(s);
    }
    if (--c->pending == 0) {
        /* Nothing in flight: decide now (the request is still on the stage's stack). */
        r->on_free = NULL;
        bool failed = c->failed;
        free(c);
        if (failed && cfg->fail_closed) {
            ag_request_error(r, 503, "ContentSafetyUnavailable",
                             "The gateway could not check the prompt with Azure AI Content Safety.", NULL, false);
            res = AG_STAGE_DONE;
        }
        goto out;
    }
    r->on_free = cs_on_free;
    r->on_free_arg = c;
    res = AG_STAGE_WAIT;
out:
    free(prompt.buf);
    for (int i = 0; i < CS_MAX_DOCS; i++)
        free(docs[i].buf);
    return res;
}
