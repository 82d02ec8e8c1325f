/* Request-side policy: where the texts are, constraints, the verdict, redaction of the body,
 * JSON response inspection, the error bodies and the decision list (see policy.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy/policy_int.h"

#define MAX_SCHEMA_DEPTH 16

/* ---- results and decisions ---- */

const char *ag_policy_action_name(ag_policy_action a)
{
    switch (a) {
    case AG_ACT_FLAG: return "flag";
    case AG_ACT_REDACT: return "redact";
    case AG_ACT_BLOCK: return "block";
    case AG_ACT_CLAMP: return "clamp";
    case AG_ACT_REJECT: return "reject";
    }
    return "unknown";
}

const char *ag_policy_verdict_name(ag_policy_verdict v)
{
    switch (v) {
    case AG_VERDICT_ALLOW: return "allow";
    case AG_VERDICT_MODIFIED: return "modified";
    case AG_VERDICT_BLOCK: return "block";
    case AG_VERDICT_REJECT: return "reject";
    case AG_VERDICT_ERROR: return "error";
    }
    return "unknown";
}

void ag_policy_result_init(ag_policy_result *res)
{
    memset(res, 0, sizeof *res);
}

void ag_policy_result_clear(ag_policy_result *res)
{
    cJSON_free(res->body);
    memset(res, 0, sizeof *res);
}

void ag_policy_decisions_add(ag_policy_decisions *d, const ag_policy_decision *item)
{
    for (unsigned k = 0; k < d->count; k++) {
        ag_policy_decision *e = &d->items[k];
        if (e->dir == item->dir && e->action == item->action && strcmp(e->rule, item->rule) == 0) {
            e->spans += item->spans;
            e->errors += item->errors;
            return;
        }
    }
    if (d->count == AG_POLICY_MAX_DECISIONS) {
        d->dropped++;
        return;
    }
    d->items[d->count++] = *item;
}

cJSON *ag_policy_decisions_json(const ag_policy_decisions *d)
{
    cJSON *arr = cJSON_CreateArray();
    if (!arr)
        return NULL;
    for (unsigned k = 0; k < d->count; k++) {
        const ag_policy_decision *e = &d->items[k];
        cJSON *o = cJSON_CreateObject();
        if (!o || !cJSON_AddStringToObject(o, "rule", e->rule) ||
            !cJSON_AddStringToObject(o, "source", e->source) ||
            !cJSON_AddStringToObject(o, "action", ag_policy_action_name(e->action)) ||
            !cJSON_AddStringToObject(o, "dir", e->dir == AG_DIR_RESPONSE ? "response" : "request") ||
            !cJSON_AddNumberToObject(o, "spans", e->spans) ||
            !cJSON_AddNumberToObject(o, "errors", e->errors)) {
            cJSON_Delete(o);
            cJSON_Delete(arr);
            return NULL;
        }
        cJSON_AddItemToArray(arr, o);
    }
    return arr;
}

size_t ag_policy_decisions_format(const ag_policy_decisions *d, char *buf, size_t len)
{
    if (len == 0)
        return 0;
    buf[0] = '\0';
    size_t used = 0;
    if (d->count == 0) {
        snprintf(buf, len, "-");
        return strlen(buf);
    }
    for (unsigned k = 0; k < d->count; k++) {
        const ag_policy_decision *e = &d->items[k];
        char item[160];
        int n = snprintf(item, sizeof item, "%s%s:%s:%u%s", k ? "," : "", e->rule,
                         ag_policy_action_name(e->action), e->spans,
                         e->dir == AG_DIR_RESPONSE ? ":resp" : "");
        if (n > 0 && e->errors && (size_t)n < sizeof item)
            n += snprintf(item + n, sizeof item - (size_t)n, ":err=%u", e->errors);
        if (n < 0 || used + (size_t)n >= len)
            break;
        memcpy(buf + used, item, (size_t)n);
        used += (size_t)n;
        buf[used] = '\0';
    }
    return used;
}

/* ---- where the texts are ---- */

/* Code points in valid UTF-8: bytes that are not continuation bytes, eight at a time. */
static size_t utf8_chars(const unsigned char *p, size_t len)
{
    size_t cont = 0, k = 0;
    for (; k + 8 <= len; k += 8) {
        uint64_t x;
        memcpy(&x, p + k, 8);
        /* one bit per continuation byte (10xxxxxx), moved to bit 0 and summed bytewise */
        uint64_t c = ((x & ~(x << 1) & 0x8080808080808080ull) >> 7);
        cont += (size_t)((c * 0x0101010101010101ull) >> 56);
    }
    for (; k < len; k++)
        cont += (p[k] & 0xC0) == 0x80;
    return len - cont;
}

static int push_text(ag_policy_scratch *s, ag_policy_result *res, cJSON *node)
{
    if (!cJSON_IsString(node) || !node->valuestring)
        return 0;
    if (s->ntexts == s->cap_texts) {
        size_t cap = s->cap_texts ? s->cap_texts * 2 : 32;
        cJSON **t = realloc(s->texts, cap * sizeof *t);
        if (t)
            s->texts = t;
        size_t *l = realloc(s->text_len, cap * sizeof *l);
        if (l)
            s->text_len = l;
        if (!t || !l)
            return -1;
        s->cap_texts = cap;
    }
    size_t len = strlen(node->valuestring);
    s->texts[s->ntexts] = node;
    s->text_len[s->ntexts++] = len;
    if (res) {
        res->texts++;
        res->chars += (unsigned)utf8_chars((const unsigned char *)node->valuestring, len);
    }
    return 0;
}

static cJSON *get(const cJSON *obj, const char *key)
{
    return cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
}

/* description strings anywhere in a JSON schema (tool parameters) */
static int walk_schema(ag_policy_scratch *s, ag_policy_result *res, cJSON *node, int depth)
{
    if (depth > MAX_SCHEMA_DEPTH || !(cJSON_IsObject(node) || cJSON_IsArray(node)))
        return 0;
    for (cJSON *c = node->child; c; c = c->next) {
        if (cJSON_IsString(c) && c->string && strcmp(c->string, "description") == 0) {
            if (push_text(s, res, c) != 0)
                return -1;
        } else if (walk_schema(s, res, c, depth + 1) != 0) {
            return -1;
        }
    }
    return 0;
}

/* every string value (operations we do not know the shape of) */
static int walk_all(ag_policy_scratch *s, ag_policy_result *res, cJSON *node, int depth)
{
    if (depth > 64)
        return 0;
    for (cJSON *c = node->child; c; c = c->next) {
        if (cJSON_IsString(c)) {
            if (push_text(s, res, c) != 0)
                return -1;
        } else if (cJSON_IsObject(c) || cJSON_IsArray(c)) {
            if (walk_all(s, res, c, depth + 1) != 0)
                return -1;
        }
    }
    return 0;
}

/* content: a string, or an array of parts (chat and Responses shapes) */
static int walk_content(ag_policy_scratch *s, ag_policy_result *res, cJSON *content)
{
    if (cJSON_IsString(content))
        return push_text(s, res, content);
    if (!cJSON_IsArray(content))
        return 0;
    for (cJSON *part = content->child; part; part = part->next) {
        if (cJSON_IsString(part)) {
            if (push_text(s, res, part) != 0)
                return -1;
            continue;
        }
        cJSON *type = get(part, "type");
        const char *t = cJSON_IsString(type) ? type->valuestring : "";
        if (strcmp(t, "text") == 0 || strcmp(t, "input_text") == 0 ||
            strcmp(t, "output_text") == 0) {
            if (push_text(s, res, get(part, "text")) != 0)
                return -1;
        } else if (strcmp(t, "refusal") == 0) {
            if (push_text(s, res, get(part, "refusal")) != 0)
                return -1;
        } else if (strcmp(t, "image_url") == 0 || strcmp(t, "input_image") == 0 ||
                   strcmp(t, "image") == 0) {
            if (res)
                res->images++;
        }
    }
    return 0;
}

static int walk_tools(ag_policy_scratch *s, ag_policy_result *res, cJSON *tools)
{
    if (!cJSON_IsArray(tools))
        return 0;
    for (cJSON *t = tools->child; t; t = t->next) {
        cJSON *fn = get(t, "function");
        cJSON *holder = fn ? fn : t; /* chat: {type,function:{...}}; Responses / legacy: flat */
        if (push_text(s, res, get(holder, "description")) != 0 ||
            walk_schema(s, res, get(holder, "parameters"), 0) != 0)
            return -1;
    }
    return 0;
}

static int walk_tool_calls(ag_policy_scratch *s, ag_policy_result *res, cJSON *msg)
{
    cJSON *calls = get(msg, "tool_calls");
    if (cJSON_IsArray(calls))
        for (cJSON *c = calls->child; c; c = c->next)
            if (push_text(s, res, get(get(c, "function"), "arguments")) != 0)
                return -1;
    return push_text(s, res, get(get(msg, "function_call"), "arguments"));
}

static bool known_operation(const char *op)
{
    static const char *const ops[] = {"chat/completions", "completions", "embeddings", "responses",
                                      "images/generations", "images/edits", "audio/transcriptions",
                                      "audio/translations", "audio/speech", NULL};
    if (!op)
        return false;
    for (size_t k = 0; ops[k]; k++)
        if (strcmp(op, ops[k]) == 0)
            return true;
    return false;
}

/* Collects into s->texts every string the model would read. */
static int collect_request(ag_policy_scratch *s, const ag_policy_call *call, cJSON *body,
                           ag_policy_result *res)
{
    s->ntexts = 0;
    if (!cJSON_IsObject(body))
        return 0;
    if (!known_operation(call ? call->operation : NULL))
        return walk_all(s, res, body, 0);
    cJSON *messages = get(body, "messages");
    if (cJSON_IsArray(messages)) {
        for (cJSON *m = messages->child; m; m = m->next) {
            res->messages++;
            if (walk_content(s, res, get(m, "content")) != 0 || walk_tool_calls(s, res, m) != 0)
                return -1;
        }
    }
    if (walk_tools(s, res, get(body, "tools")) != 0 ||
        walk_tools(s, res, get(body, "functions")) != 0)
        return -1;
    cJSON *prompt = get(body, "prompt");
    if (walk_content(s, res, prompt) != 0) /* string or array of strings */
        return -1;
    if (push_text(s, res, get(body, "instructions")) != 0)
        return -1;
    cJSON *input = get(body, "input");
    if (cJSON_IsString(input)) {
        if (push_text(s, res, input) != 0)
            return -1;
    } else if (cJSON_IsArray(input)) {
        for (cJSON *it = input->child; it; it = it->next) {
            if (cJSON_IsString(it)) { /* embeddings: array of strings */
                if (push_text(s, res, it) != 0)
                    return -1;
                continue;
            }
            if (!cJSON_IsObject(it))
                continue; /* token arrays */
            res->messages++;
            cJSON *type = get(it, "type");
            const char *t = cJSON_IsString(type) ? type->valuestring : "message";
            if (strcmp(t, "function_call_output") == 0) {
                if (push_text(s, res, get(it, "output")) != 0)
                    return -1;
            } else if (strcmp(t, "function_call") == 0) {
                if (push_text(s, res, get(it, "arguments")) != 0)
                    return -1;
            } else if (walk_content(s, res, get(it, "content")) != 0) {
                return -1;
            }
        }
    }
    return 0;
}

static const char *resolve_deployment(const ag_policy_call *call, const cJSON *body)
{
    if (call && call->deployment && call->deployment[0])
        return call->deployment;
    cJSON *model = get(body, "model");
    return cJSON_IsString(model) ? model->valuestring : NULL;
}

/* ---- constraints ---- */

static bool in_list(char **list, const char *v)
{
    if (!v || !v[0])
        return false;
    size_t vl = strlen(v);
    for (char **p = list; *p; p++) {
        size_t el = strlen(*p);
        if (el > 0 && (*p)[el - 1] == '*' ? (vl >= el - 1 && memcmp(*p, v, el - 1) == 0)
                                          : strcmp(*p, v) == 0)
            return true;
    }
    return false;
}

/* Sets the REJECT verdict; the caller has written res->message. */
static void reject(ag_policy_result *res, const ag_pol_constraint *c, int status, const char *code,
                   const char *param)
{
    res->verdict = AG_VERDICT_REJECT;
    res->status = status;
    res->rule = c->name;
    snprintf(res->code, sizeof res->code, "%s", code);
    snprintf(res->param, sizeof res->param, "%s", param);
    ag_policy_decision d = {c->name, "constraint", AG_ACT_REJECT, AG_DIR_REQUEST, 1, 0};
    ag_policy_decisions_add(&res->decisions, &d);
}

static const char *insert_field(const char *op)
{
    if (!op)
        return NULL;
    if (strcmp(op, "chat/completions") == 0)
        return "max_completion_tokens";
    if (strcmp(op, "completions") == 0)
        return "max_tokens";
    if (strcmp(op, "responses") == 0)
        return "max_output_tokens";
    return NULL;
}

/* Applies every constraint set in scope. Returns 1 when the body was changed (clamp), 0 when not,
 * -1 on out of memory; a violation sets the REJECT verdict. */
static int apply_constraints(const ag_policy *pol, const ag_policy_call *call, const char *dep,
                             cJSON *body, ag_policy_result *res)
{
    int changed = 0;
    static const char *const token_fields[] = {"max_tokens", "max_completion_tokens",
                                               "max_output_tokens", NULL};
    for (size_t k = 0; k < pol->ncons; k++) {
        const ag_pol_constraint *c = &pol->cons[k];
        if (!ag_pol_scope_match(&c->scope, call, dep))
            continue;
        if (c->has_exempt && ag_pol_scope_match(&c->exempt, call, dep))
            continue;
        if (c->allowed_deployments && !in_list(c->allowed_deployments, dep)) {
            snprintf(res->message, sizeof res->message,
                     "This caller may not use the deployment '%.64s'.", dep ? dep : "");
            reject(res, c, 403, "deployment_not_allowed", "model");
            return 0;
        }
        if (c->denied_params && cJSON_IsObject(body)) {
            for (char **p = c->denied_params; *p; p++) {
                cJSON *v = get(body, *p);
                if (v && !cJSON_IsNull(v)) {
                    snprintf(res->message, sizeof res->message,
                             "The parameter '%.64s' is not allowed by the gateway policy.", *p);
                    reject(res, c, 400, "parameter_not_allowed", *p);
                    return 0;
                }
            }
        }
        if (c->max_messages && res->messages > (unsigned long long)c->max_messages) {
            snprintf(res->message, sizeof res->message,
                     "The request has %u messages; the gateway allows at most %lld.", res->messages,
                     c->max_messages);
            reject(res, c, 400, "too_many_messages", get(body, "messages") ? "messages" : "input");
            return 0;
        }
        if (c->max_prompt_chars && res->chars > (unsigned long long)c->max_prompt_chars) {
            snprintf(res->message, sizeof res->message,
                     "The prompt has %u characters; the gateway allows at most %lld.", res->chars,
                     c->max_prompt_chars);
            reject(res, c, 400, "prompt_too_long", "prompt");
            return 0;
        }
        if (!c->max_tokens || !cJSON_IsObject(body))
            continue;
        bool seen = false;
        for (size_t f = 0; token_fields[f]; f++) {
            cJSON *v = get(body, token_fields[f]);
            if (!cJSON_IsNumber(v))
                continue;
            seen = true;
            if (v->valuedouble <= (double)c->max_tokens)
                continue;
            if (c->tokens_action == AG_TOKENS_REJECT) {
                snprintf(res->message, sizeof res->message,
                         "The requested %s exceeds the gateway's cap of %lld.", token_fields[f],
                         c->max_tokens);
                reject(res, c, 400, "max_tokens_exceeded", token_fields[f]);
                return 0;
            }
            cJSON_SetNumberValue(v, (double)c->max_tokens);
            changed = 1;
            ag_policy_decision d = {c->name, "constraint", AG_ACT_CLAMP, AG_DIR_REQUEST, 1, 0};
            ag_policy_decisions_add(&res->decisions, &d);
        }
        const char *field = insert_field(call ? call->operation : NULL);
        if (!seen && c->insert_max_tokens && field) {
            if (!cJSON_AddNumberToObject(body, field, (double)c->max_tokens))
                return -1;
            changed = 1;
            ag_policy_decision d = {c->name, "constraint", AG_ACT_CLAMP, AG_DIR_REQUEST, 1, 0};
            ag_policy_decisions_add(&res->decisions, &d);
        }
    }
    return changed;
}

static int serialise(cJSON *body, ag_policy_result *res)
{
    char *out = cJSON_PrintUnformatted(body);
    if (!out)
        return -1;
    cJSON_free(res->body);
    res->body = out;
    res->body_len = strlen(out);
    res->verdict = AG_VERDICT_MODIFIED;
    return 0;
}

static int fail(ag_policy_result *res)
{
    res->verdict = AG_VERDICT_ERROR;
    res->status = 500;
    return -1;
}

int ag_policy_check_constraints(const ag_policy *pol, ag_policy_scratch *s,
                                const ag_policy_call *call, cJSON *body, ag_policy_result *res)
{
    res->verdict = AG_VERDICT_ALLOW;
    res->texts = res->chars = res->images = res->messages = 0;
    if (collect_request(s, call, body, res) != 0)
        return fail(res);
    int changed = apply_constraints(pol, call, resolve_deployment(call, body), body, res);
    if (changed < 0)
        return fail(res);
    if (res->verdict == AG_VERDICT_REJECT)
        return 0;
    if (changed && serialise(body, res) != 0)
        return fail(res);
    return 0;
}

/* ---- content rules ---- */

/* Adds one decision per rule with matches or errors (counts from s->m / s->errs). */
static void record(const ag_policy *pol, ag_policy_scratch *s, const ag_pol_view *view,
                   ag_policy_decisions *dec)
{
    for (size_t r = 0; r < pol->nrules; r++) {
        if (!s->count[r] && !s->errs[r])
            continue;
        const ag_pol_rule *ru = &pol->rules[r];
        ag_policy_decision d = {ru->name, ag_pol_rule_source(ru), ru->action, view->dir,
                                s->count[r], s->errs[r]};
        if (view->dir == AG_DIR_RESPONSE && ru->action == AG_ACT_BLOCK)
            d.action = AG_ACT_REDACT;
        ag_policy_decisions_add(dec, &d);
    }
}

/* Redacts s->texts in place from s->m; returns 1 when any string changed, 0, or -1. */
static int apply_redactions(const ag_policy *pol, ag_policy_scratch *s, ag_policy_dir dir)
{
    ag_pol_sort_matches(s->m, s->nm);
    int changed = 0;
    size_t k = 0;
    while (k < s->nm) {
        size_t j = k;
        bool rewrite = false;
        while (j < s->nm && s->m[j].text == s->m[k].text) {
            if (ag_pol_rewrites(&pol->rules[s->m[j].rule], dir))
                rewrite = true;
            j++;
        }
        if (rewrite) {
            cJSON *node = s->texts[s->m[k].text];
            const char *src = node->valuestring;
            size_t n = ag_pol_redact(pol, s, src, s->text_len[s->m[k].text], &s->m[k], j - k, dir);
            if (n == (size_t)-1 || !cJSON_SetValuestring(node, s->buf))
                return -1;
            changed = 1;
        }
        k = j;
    }
    return changed;
}

/* Scans s->texts for the view; fills s->count / s->errs. Returns 0 or -1. */
static int scan_texts(const ag_policy *pol, ag_policy_scratch *s, const ag_pol_view *view)
{
    s->nm = 0;
    s->sig_seen = s->sig_hits = 0;
    memset(s->errs, 0, pol->nrules * sizeof *s->errs);
    memset(s->count, 0, pol->nrules * sizeof *s->count);
    for (size_t t = 0; t < s->ntexts; t++)
        if (ag_pol_scan(pol, s, view, s->texts[t]->valuestring, s->text_len[t], (uint32_t)t) != 0)
            return -1;
    for (size_t k = 0; k < s->nm; k++)
        s->count[s->m[k].rule]++;
    return 0;
}

int ag_policy_inspect_request(const ag_policy *pol, ag_policy_scratch *s,
                              const ag_policy_call *call, cJSON *body, ag_policy_result *res)
{
    res->verdict = AG_VERDICT_ALLOW;
    if (ag_pol_scratch_fit(s, pol) != 0)
        return fail(res);
    res->texts = res->chars = res->images = res->messages = 0;
    res->injection_score = 0;
    /* 1. where the texts are (and the counts the constraints need) */
    if (collect_request(s, call, body, res) != 0)
        return fail(res);
    /* 2. constraints: allowed deployments, denied parameters, sizes, max_tokens */
    const char *dep = resolve_deployment(call, body);
    snprintf(res->deployment, sizeof res->deployment, "%s", dep ? dep : "");
    int changed = apply_constraints(pol, call, dep, body, res);
    if (changed < 0)
        return fail(res);
    if (res->verdict == AG_VERDICT_REJECT)
        return 0;
    /* 3. content rules in scope for this caller and deployment */
    ag_pol_view view;
    ag_pol_view_build(pol, call, dep, AG_DIR_REQUEST, s->active, &view);
    if (scan_texts(pol, s, &view) != 0)
        return fail(res);
    if (view.injection) {
        int score = ag_pol_signals_score(pol, s->sig_seen);
        res->injection_score = score;
        for (size_t r = 0; r < pol->nrules; r++) {
            const ag_pol_rule *ru = &pol->rules[r];
            if (ru->kind == AG_POL_DETECTOR && ru->det == AG_DET_PROMPT_INJECTION &&
                ((view.active[r / 64] >> (r % 64)) & 1u) && score >= ru->threshold)
                s->count[r] = s->sig_hits ? s->sig_hits : 1;
        }
    }
    record(pol, s, &view, &res->decisions);
    for (size_t r = 0; r < pol->nrules; r++)
        if (s->count[r] && pol->rules[r].action == AG_ACT_BLOCK) {
            res->verdict = AG_VERDICT_BLOCK;
            res->status = 400;
            res->rule = pol->rules[r].name;
            return 0;
        }
    /* 4. redaction of the forwarded body */
    int red = apply_redactions(pol, s, AG_DIR_REQUEST);
    if (red < 0)
        return fail(res);
    /* 5. Optional Azure AI Content Safety call-out (Prompt Shields / text:analyze) belongs here:
     *    only for ALLOW / MODIFIED, asynchronously on the worker's curl multi handle. Not
     *    implemented in this module yet (docs/policy.md, "Content Safety"). */
    if ((changed || red) && serialise(body, res) != 0)
        return fail(res);
    if (!changed && !red)
        res->verdict = AG_VERDICT_ALLOW;
    return 0;
}

/* ---- JSON responses ---- */

static int collect_response(ag_policy_scratch *s, cJSON *resp)
{
    s->ntexts = 0;
    cJSON *choices = get(resp, "choices");
    if (cJSON_IsArray(choices)) {
        for (cJSON *c = choices->child; c; c = c->next) {
            cJSON *msg = get(c, "message");
            if (walk_content(s, NULL, get(msg, "content")) != 0 ||
                push_text(s, NULL, get(msg, "refusal")) != 0 ||
                walk_tool_calls(s, NULL, msg) != 0 || push_text(s, NULL, get(c, "text")) != 0)
                return -1;
        }
    }
    cJSON *output = get(resp, "output");
    if (cJSON_IsArray(output)) {
        for (cJSON *it = output->child; it; it = it->next) {
            if (walk_content(s, NULL, get(it, "content")) != 0 ||
                push_text(s, NULL, get(it, "arguments")) != 0)
                return -1;
        }
    }
    return 0;
}

int ag_pol_response_tree(const ag_policy *pol, ag_policy_scratch *s, const ag_policy_call *call,
                         cJSON *resp, ag_policy_decisions *dec, bool *modified)
{
    *modified = false;
    if (ag_pol_scratch_fit(s, pol) != 0)
        return -1;
    if (collect_response(s, resp) != 0)
        return -1;
    if (s->ntexts == 0)
        return 0;
    ag_pol_view view;
    ag_pol_view_build(pol, call, resolve_deployment(call, NULL), AG_DIR_RESPONSE, s->active, &view);
    if (scan_texts(pol, s, &view) != 0)
        return -1;
    if (dec)
        record(pol, s, &view, dec);
    int red = apply_redactions(pol, s, AG_DIR_RESPONSE);
    if (red < 0)
        return -1;
    *modified = red > 0;
    return 0;
}

int ag_policy_inspect_response(const ag_policy *pol, ag_policy_scratch *s,
                               const ag_policy_call *call, cJSON *resp, ag_policy_decisions *dec,
                               bool *modified)
{
    return ag_pol_response_tree(pol, s, call, resp, dec, modified);
}

/* ---- error bodies ---- */

char *ag_policy_error_body(const ag_policy_result *res, size_t *len)
{
    if (res->verdict != AG_VERDICT_BLOCK && res->verdict != AG_VERDICT_REJECT)
        return NULL;
    cJSON *root = cJSON_CreateObject();
    cJSON *err = cJSON_AddObjectToObject(root, "error");
    if (!err)
        goto oom;
    if (res->verdict == AG_VERDICT_BLOCK) {
        char msg[256];
        snprintf(msg, sizeof msg, "The request was blocked by the gateway's content policy "
                 "(rule: %s). Please modify your prompt and retry.", res->rule ? res->rule : "");
        if (!cJSON_AddStringToObject(err, "code", "content_filter") ||
            !cJSON_AddStringToObject(err, "message", msg) ||
            !cJSON_AddStringToObject(err, "param", "prompt") ||
            !cJSON_AddNumberToObject(err, "status", 400))
            goto oom;
        cJSON *inner = cJSON_AddObjectToObject(err, "innererror");
        if (!inner || !cJSON_AddStringToObject(inner, "code", "ResponsibleAIPolicyViolation"))
            goto oom;
        cJSON *cfr = cJSON_AddObjectToObject(inner, "content_filter_result");
        cJSON *cb = cfr ? cJSON_AddObjectToObject(cfr, "custom_blocklists") : NULL;
        if (!cb || !cJSON_AddTrueToObject(cb, "filtered"))
            goto oom;
        cJSON *details = cJSON_AddArrayToObject(cb, "details");
        if (!details)
            goto oom;
        for (unsigned k = 0; k < res->decisions.count; k++) {
            const ag_policy_decision *d = &res->decisions.items[k];
            if (d->action != AG_ACT_BLOCK || d->dir != AG_DIR_REQUEST || d->spans == 0)
                continue;
            cJSON *it = cJSON_CreateObject();
            if (!it || !cJSON_AddTrueToObject(it, "filtered") ||
                !cJSON_AddStringToObject(it, "id", d->rule)) {
                cJSON_Delete(it);
                goto oom;
            }
            cJSON_AddItemToArray(details, it);
        }
    } else {
        if (!cJSON_AddStringToObject(err, "code", res->code) ||
            !cJSON_AddStringToObject(err, "message", res->message) ||
            !cJSON_AddStringToObject(err, "param", res->param) ||
            !cJSON_AddStringToObject(err, "type", "invalid_request_error") ||
            !cJSON_AddNumberToObject(err, "status", res->status))
            goto oom;
    }
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!out)
        return NULL;
    /* hand back plain malloc memory (cJSON's default allocator is malloc, but do not rely on it) */
    size_t n = strlen(out);
    char *copy = malloc(n + 1);
    if (copy)
        memcpy(copy, out, n + 1);
    cJSON_free(out);
    if (copy && len)
        *len = n;
    return copy;
oom:
    cJSON_Delete(root);
    return NULL;
}
