/* Fuzz target: request and response bodies — the strict JSON parse the parse_body stage does
 * (ag_json_parse_strict with the pipeline's limits), prompt-policy inspection and redaction of
 * chat/completions, completions, embeddings and Responses bodies (src/policy/), and usage/text
 * extraction from a JSON response (src/proxy/usage.c, src/proxy/resp_doc.c).
 *
 * Input: byte 0 chooses the call: bits 0-1 the operation (chat/completions, embeddings, responses,
 * completions), bit 2 the policy (A: everything redacts, both directions; B: block/flag rules and
 * constraints with clamp and insert_max_tokens), bit 3 the caller (anonymous, or an app identity
 * holding the AI.Intern role), bit 4 request side or response side. The rest is the body.
 * Oracles besides the sanitizers:
 *   - what ag_json_object_check proves of a body (a strict object, its "stream" and "model": the
 *     parse_body stage's tree-less path) the strict parse confirms;
 *   - a re-serialised (redacted or clamped) body is strict JSON again: valid UTF-8, no duplicate
 *     key, no \u0000, an object — what Azure receives must be what we inspected;
 *   - a held response parsed as the gateway does (resp_doc.c) holds exactly the whole parse's
 *     choices/output/object members (each choice reduced to message, text and index), and,
 *     redacted and printed, is strict JSON again;
 *   - BLOCK / REJECT come with an error body that is strict JSON with an "error" object;
 *   - the verdict and decisions never exceed their bounds;
 *   - the detectors' scan with its shortcuts (plain words, prose runs) finds in the body bytes,
 *     taken as text, exactly what the general scan finds. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aoai_guard/detect.h"
#include "aoai_guard/json_strict.h"
#include "aoai_guard/policy.h"
#include "aoai_guard/request.h"
#include "aoai_guard/resp_doc.h"
#include "aoai_guard/usage.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* The parse_body stage's limits (src/server/pipeline.c). */
static const ag_json_limits BODY_LIMITS = {.max_depth = 64, .max_nodes = 500000};

static const char POLICY_A[] =
    "{\"stream_holdback_bytes\":64,\"regex_match_limit\":20000,\"on_regex_error\":\"match\",\"rules\":["
    "{\"name\":\"email\",\"detector\":\"email\",\"action\":\"redact\",\"apply_to\":\"both\"},"
    "{\"name\":\"phone\",\"detector\":\"phone\",\"action\":\"redact\",\"apply_to\":\"both\"},"
    "{\"name\":\"card\",\"detector\":\"credit_card\",\"action\":\"redact\",\"mask\":\"[CARD]\",\"apply_to\":\"both\"},"
    "{\"name\":\"ssn\",\"detector\":\"us_ssn\",\"action\":\"redact\",\"apply_to\":\"both\"},"
    "{\"name\":\"iban\",\"detector\":\"iban\",\"action\":\"redact\",\"apply_to\":\"both\"},"
    "{\"name\":\"ip4\",\"detector\":\"ipv4\",\"action\":\"redact\",\"mask\":\"\\u00e9\\u00e9\",\"apply_to\":\"both\"},"
    "{\"name\":\"ip6\",\"detector\":\"ipv6\",\"action\":\"redact\",\"apply_to\":\"both\"},"
    "{\"name\":\"stor\",\"detector\":\"azure_storage_key\",\"action\":\"redact\",\"apply_to\":\"both\"},"
    "{\"name\":\"conn\",\"detector\":\"azure_connection_string\",\"action\":\"redact\",\"apply_to\":\"both\"},"
    "{\"name\":\"aoai\",\"detector\":\"azure_openai_key\",\"action\":\"redact\",\"apply_to\":\"both\"},"
    "{\"name\":\"sas\",\"detector\":\"azure_sas_token\",\"action\":\"redact\",\"apply_to\":\"both\"},"
    "{\"name\":\"aws\",\"detector\":\"aws_access_key\",\"action\":\"redact\",\"apply_to\":\"both\"},"
    "{\"name\":\"gh\",\"detector\":\"github_token\",\"action\":\"redact\",\"apply_to\":\"both\"},"
    "{\"name\":\"pem\",\"detector\":\"private_key\",\"action\":\"redact\",\"apply_to\":\"both\"},"
    "{\"name\":\"jwt\",\"detector\":\"jwt\",\"action\":\"redact\",\"apply_to\":\"both\"},"
    "{\"name\":\"pw\",\"regex\":\"\\\\b(?:password|pwd|secret)\\\\s*[:=]\\\\s*\\\\S{6,}\",\"case_insensitive\":true,"
    "\"action\":\"redact\",\"apply_to\":\"both\"},"
    "{\"name\":\"ticket\",\"regex\":\"T-[0-9]{3,}(?:-[a-z]+)*\",\"action\":\"redact\",\"mask\":\"\",\"apply_to\":\"both\"},"
    "{\"name\":\"kw\",\"keywords\":[\"strictly confidential\",\"projekt \\u00fcber\",\"x\"],\"action\":\"redact\","
    "\"apply_to\":\"both\"},"
    "{\"name\":\"inj\",\"detector\":\"prompt_injection\",\"threshold\":2,\"action\":\"flag\"}]}";

static const char POLICY_B[] =
    "{\"rules\":["
    "{\"name\":\"email\",\"detector\":\"email\",\"action\":\"redact\",\"apply_to\":\"both\","
    "\"exempt\":{\"apps\":[\"a1a1a1a1-0000-4000-8000-000000000001\"]}},"
    "{\"name\":\"aws\",\"detector\":\"aws_access_key\",\"action\":\"block\",\"apply_to\":\"both\"},"
    "{\"name\":\"pem\",\"detector\":\"private_key\",\"action\":\"block\",\"apply_to\":\"both\"},"
    "{\"name\":\"ip\",\"detector\":\"ipv4\",\"action\":\"flag\",\"scope\":{\"deployments\":[\"gpt-4*\"]}},"
    "{\"name\":\"kw\",\"keywords\":[\"do not distribute\"],\"action\":\"block\",\"scope\":{\"roles\":[\"AI.Intern\"]}},"
    "{\"name\":\"inj\",\"detector\":\"prompt_injection\",\"threshold\":3,\"action\":\"block\"}],"
    "\"constraints\":["
    "{\"name\":\"everyone\",\"max_tokens\":4096,\"max_tokens_action\":\"clamp\",\"insert_max_tokens\":true,"
    "\"max_prompt_chars\":100000,\"max_messages\":64,\"denied_params\":[\"logit_bias\"]},"
    "{\"name\":\"interns\",\"scope\":{\"roles\":[\"AI.Intern\"]},\"allowed_deployments\":[\"gpt-4o-mini*\"],"
    "\"denied_params\":[\"tools\",\"functions\"],\"max_tokens\":1024,\"max_tokens_action\":\"reject\"}]}";

static struct {
    ag_policy *a, *b;
    ag_policy_scratch *scratch;
    ag_identity intern;
} F;

static ag_policy *load(const char *json)
{
    cJSON *j = cJSON_Parse(json);
    ag_policy *p = NULL;
    ag_conf_err err;
    if (!j || ag_policy_load(j, "policy", &p, &err) != 0) {
        fprintf(stderr, "fuzz_body: policy: %s\n", j ? err.msg : "JSON");
        abort();
    }
    cJSON_Delete(j);
    return p;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    F.a = load(POLICY_A);
    F.b = load(POLICY_B);
    F.scratch = ag_policy_scratch_new();
    if (!F.scratch)
        abort();
    F.intern.kind = AG_IDENTITY_APP;
    snprintf(F.intern.tid, sizeof F.intern.tid, "11111111-1111-4111-8111-111111111111");
    snprintf(F.intern.app, sizeof F.intern.app, "a1a1a1a1-0000-4000-8000-000000000001");
    snprintf(F.intern.roles, sizeof F.intern.roles, "AI.User AI.Intern");
    return 0;
}

/* Traps unless buf[0..len) is a strict JSON object. */
static void must_be_strict_object(const char *buf, size_t len)
{
    ag_json_status st;
    size_t off;
    cJSON *j = ag_json_parse_strict(buf, len, &BODY_LIMITS, &st, &off);
    if (!j || !cJSON_IsObject(j))
        __builtin_trap();
    cJSON_Delete(j);
}

/* What ag_json_object_check proved must hold of the strict parse: an object, whose top-level
 * fields are the values the check found (a string byte for byte, a literal or number by its text). */
static void must_match_check(const cJSON *tree, const ag_json_field *fields, size_t n)
{
    if (!tree || !cJSON_IsObject(tree))
        __builtin_trap();
    for (size_t f = 0; f < n; f++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(tree, fields[f].key);
        if (!v != !fields[f].value)
            __builtin_trap();
        if (!v)
            continue;
        const char *t = fields[f].value;
        size_t tl = fields[f].value_len;
        if (cJSON_IsString(v)) {
            if (t[0] != '"' || tl < 2 || strlen(v->valuestring) != tl - 2 || memcmp(v->valuestring, t + 1, tl - 2) != 0)
                __builtin_trap();
        } else if (cJSON_IsTrue(v) || cJSON_IsFalse(v) || cJSON_IsNull(v)) {
            const char *lit = cJSON_IsTrue(v) ? "true" : cJSON_IsFalse(v) ? "false" : "null";
            if (tl != strlen(lit) || memcmp(t, lit, tl) != 0)
                __builtin_trap();
        } else if (cJSON_IsNumber(v)) {
            if (!(t[0] == '-' || (t[0] >= '0' && t[0] <= '9')))
                __builtin_trap();
        } else if (!((cJSON_IsObject(v) && t[0] == '{') || (cJSON_IsArray(v) && t[0] == '['))) {
            __builtin_trap();
        }
    }
}

/* "choices" as resp_doc.c steps into it: an array whose elements are all objects. */
static bool stepped_choices(const cJSON *f)
{
    if (strcmp(f->string, "choices") != 0 || !cJSON_IsArray(f))
        return false;
    for (const cJSON *el = f->child; el; el = el->next)
        if (!cJSON_IsObject(el))
            return false;
    return true;
}

static void check_decisions(const ag_policy_decisions *d)
{
    if (d->count > AG_POLICY_MAX_DECISIONS)
        __builtin_trap();
    cJSON *j = ag_policy_decisions_json(d);
    cJSON_Delete(j);
    char tok[256];
    size_t n = ag_policy_decisions_format(d, tok, sizeof tok);
    if (n >= sizeof tok || strlen(tok) != n)
        __builtin_trap();
}

/* The hits of one detector scan, the first 256 of them. */
typedef struct det_hits {
    ag_detect_hit h[256];
    size_t n;
} det_hits;

static int collect_hit(void *arg, const ag_detect_hit *hit)
{
    det_hits *hs = arg;
    if (hs->n < sizeof hs->h / sizeof hs->h[0])
        hs->h[hs->n] = *hit;
    hs->n++;
    return 0;
}

/* Traps unless the scan with its shortcuts and the general scan find the same hits in text. */
static void check_detect_shortcuts(const char *text, size_t len)
{
    static det_hits a, b;
    const uint32_t mask = 0xFFFFFFFFu & ~AG_DET_BIT(AG_DET_PROMPT_INJECTION);
    a.n = b.n = 0;
    ag_detect_scan(text, len, mask, collect_hit, &a);
    ag_detect_scan_general(text, len, mask, collect_hit, &b);
    if (a.n != b.n)
        __builtin_trap();
    for (size_t k = 0; k < a.n && k < sizeof a.h / sizeof a.h[0]; k++)
        if (a.h[k].det != b.h[k].det || a.h[k].start != b.h[k].start || a.h[k].end != b.h[k].end ||
            a.h[k].open != b.h[k].open)
            __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!F.a)
        LLVMFuzzerInitialize(NULL, NULL);
    if (size < 1 || size > (1 << 20))
        return 0;
    static const char *const ops[4] = {"chat/completions", "embeddings", "responses", "completions"};
    static const char *const deps[4] = {"gpt-4o-mini", "text-embedding-3-small", NULL, "gpt-35-turbo-instruct"};
    uint8_t mode = data[0];
    const ag_policy *pol = (mode & 4) ? F.b : F.a;
    ag_policy_call call = {.identity = (mode & 8) ? &F.intern : NULL, .deployment = deps[mode & 3],
                           .operation = ops[mode & 3]};
    bool response_side = mode & 16;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    check_detect_shortcuts(body, len);

    if (response_side) {
        /* Any bytes an upstream may send reach the held-response parser, JSON or not: it must
         * either step through them or fall back, and a print must give a string of its length. */
        ag_resp_doc any;
        ag_resp_doc_parse(&any, body, len);
        if (any.partial) {
            size_t olen;
            char *out = ag_resp_doc_print(&any, body, len, &olen);
            if (out && strlen(out) != olen && !memchr(body, '\0', len))
                __builtin_trap();
            cJSON_free(out);
        }
        ag_resp_doc_free(&any);
    }

    ag_json_field fields[2] = {{.key = "stream"}, {.key = "model"}};
    bool checked = ag_json_object_check(body, len, &BODY_LIMITS, fields, 2);
    ag_json_status st;
    size_t off;
    cJSON *tree = ag_json_parse_strict(body, len, &BODY_LIMITS, &st, &off);
    if (checked)
        must_match_check(tree, fields, 2);
    if (!tree) {
        if (off > len)
            __builtin_trap(); /* the error offset points into the body */
        (void)ag_json_status_str(st);
        return 0;
    }
    if (!response_side) {
        ag_policy_result res;
        ag_policy_result_init(&res);
        if (cJSON_IsObject(tree)) {
            int rc = ag_policy_inspect_request(pol, F.scratch, &call, tree, &res);
            if (rc != 0 && res.verdict != AG_VERDICT_ERROR)
                __builtin_trap();
            if (res.verdict == AG_VERDICT_MODIFIED) {
                if (!res.body)
                    __builtin_trap();
                must_be_strict_object(res.body, res.body_len);
            } else if (res.verdict == AG_VERDICT_BLOCK || res.verdict == AG_VERDICT_REJECT) {
                if (res.status != 400 && res.status != 403)
                    __builtin_trap();
                size_t el = 0;
                char *eb = ag_policy_error_body(&res, &el);
                if (!eb)
                    __builtin_trap();
                cJSON *ej = ag_json_parse_strict(eb, el, &BODY_LIMITS, &st, &off);
                if (!ej || !cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(ej, "error")))
                    __builtin_trap();
                cJSON_Delete(ej);
                free(eb);
            }
            check_decisions(&res.decisions);
        }
        ag_policy_result_clear(&res);
    } else {
        /* The held response as the gateway parses it (resp_doc.c): the members it reads must be
         * the whole parse's, in order. */
        ag_resp_doc doc;
        ag_resp_doc_parse(&doc, body, len);
        if (!doc.root)
            __builtin_trap(); /* strict JSON is JSON to cJSON too */
        if (doc.partial) {
            const cJSON *m = doc.root->child;
            for (const cJSON *f = tree->child; f; f = f->next) {
                if (strcmp(f->string, "choices") && strcmp(f->string, "output") && strcmp(f->string, "object"))
                    continue;
                if (!m || strcmp(m->string, f->string) != 0)
                    __builtin_trap();
                if (!stepped_choices(f)) {
                    if (!cJSON_Compare(m, f, true))
                        __builtin_trap();
                } else { /* each choice holds its message, text and index, in order, nothing else */
                    const cJSON *me = m->child;
                    for (const cJSON *fe = f->child; fe; fe = fe->next, me = me->next) {
                        if (!me)
                            __builtin_trap();
                        const cJSON *mc = me->child;
                        for (const cJSON *fc = fe->child; fc; fc = fc->next) {
                            if (strcmp(fc->string, "message") && strcmp(fc->string, "text") &&
                                strcmp(fc->string, "index"))
                                continue;
                            if (!mc || strcmp(mc->string, fc->string) != 0 || !cJSON_Compare(mc, fc, true))
                                __builtin_trap();
                            mc = mc->next;
                        }
                        if (mc)
                            __builtin_trap();
                    }
                    if (me)
                        __builtin_trap();
                }
                m = m->next;
            }
            if (m)
                __builtin_trap();
        }
        ag_policy_decisions dec;
        memset(&dec, 0, sizeof dec);
        bool modified = false;
        if (ag_policy_inspect_response(pol, F.scratch, &call, doc.root, &dec, &modified) == 0 && modified) {
            size_t olen;
            char *out = ag_resp_doc_print(&doc, body, len, &olen);
            if (!out || strlen(out) != olen)
                __builtin_trap();
            must_be_strict_object(out, olen);
            cJSON_free(out);
        }
        check_decisions(&dec);
        /* What the respond stage takes from a JSON response for the access log and audit. */
        ag_request *r = calloc(1, sizeof *r);
        if (!r)
            abort();
        ag_usage_from_held_response(r, doc.root, body, len);
        ag_resp_doc_free(&doc);
        free(r->completion_text);
        memset(r, 0, sizeof *r);
        ag_usage_from_json_response(r, body, len);
        if (r->usage.present && (r->usage.prompt_tokens < 0 || r->usage.completion_tokens < 0))
            __builtin_trap();
        if (r->completion_len > 0 && (!r->completion_text || strlen(r->completion_text) > r->completion_len))
            __builtin_trap();
        free(r->completion_text);
        free(r);
    }
    cJSON_Delete(tree);
    return 0;
}
