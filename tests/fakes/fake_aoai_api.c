/* Fake Azure OpenAI: the data plane. Validates a request the way Azure OpenAI does and builds a
 * deterministic answer (JSON or SSE events) into an ag_fake_resp (see fake_aoai_internal.h). */
#include "fake_aoai_internal.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "aoai_guard/json_strict.h"

#define FA_MAX_EMBED_ITEMS 2048
#define FA_FINGERPRINT "fp_fake0c0ffee"
/* output_filter_results() as compact JSON, for hand-written stream chunks */
#define FA_OUTPUT_FILTER_JSON                                                                      \
    "{\"hate\":{\"filtered\":false,\"severity\":\"safe\"},\"self_harm\":{\"filtered\":false,"              \
    "\"severity\":\"safe\"},\"sexual\":{\"filtered\":false,\"severity\":\"safe\"},\"violence\":"            \
    "{\"filtered\":false,\"severity\":\"safe\"}}"

typedef enum fa_op {
    FA_OP_NONE = 0,
    FA_OP_CHAT,
    FA_OP_COMPLETIONS,
    FA_OP_EMBEDDINGS,
    FA_OP_RESPONSES,
} fa_op;

typedef struct fa_route {
    fa_op op;
    bool v1;                 /* /openai/v1/...: deployment from body "model", no api-version */
    char deployment[256];    /* dated deployment paths only */
    char api_version[64];    /* "" when absent */
    bool has_api_version;
} fa_route;

/* ---- JSON building helpers (abort on OOM) ---- */

static cJSON *must(cJSON *j)
{
    if (!j)
        ag_fake_oom();
    return j;
}

static cJSON *obj_new(void) { return must(cJSON_CreateObject()); }
static cJSON *arr_new(void) { return must(cJSON_CreateArray()); }
static void put(cJSON *o, const char *k, cJSON *v) { cJSON_AddItemToObject(o, k, must(v)); }
static void put_str(cJSON *o, const char *k, const char *v) { put(o, k, cJSON_CreateString(v)); }
static void put_num(cJSON *o, const char *k, double v) { put(o, k, cJSON_CreateNumber(v)); }
static void put_bool(cJSON *o, const char *k, bool v) { put(o, k, cJSON_CreateBool(v)); }
static void put_null(cJSON *o, const char *k) { put(o, k, cJSON_CreateNull()); }
static void push(cJSON *a, cJSON *v) { cJSON_AddItemToArray(a, must(v)); }

/* Appends the compact JSON text of j to b and deletes j. */
static void emit_json(ag_fake_buf *b, cJSON *j)
{
    char *s = cJSON_PrintUnformatted(j);
    if (!s)
        ag_fake_oom();
    ag_fake_buf_str(b, s);
    cJSON_free(s);
    cJSON_Delete(j);
}

/* Appends s[0..len) as a JSON string literal, escaped exactly as cJSON prints strings. */
static void json_string(ag_fake_buf *b, const char *s, size_t len)
{
    ag_fake_buf_add(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        char esc[8];
        if (ch == '"' || ch == '\\') {
            esc[0] = '\\';
            esc[1] = (char)ch;
            esc[2] = '\0';
        } else if (ch < 0x20) {
            switch (ch) {
            case '\b': memcpy(esc, "\\b", 3); break;
            case '\f': memcpy(esc, "\\f", 3); break;
            case '\n': memcpy(esc, "\\n", 3); break;
            case '\r': memcpy(esc, "\\r", 3); break;
            case '\t': memcpy(esc, "\\t", 3); break;
            default: snprintf(esc, sizeof esc, "\\u%04x", ch); break;
            }
        } else {
            continue;
        }
        ag_fake_buf_add(b, s + run, i - run);
        ag_fake_buf_str(b, esc);
        run = i + 1;
    }
    ag_fake_buf_add(b, s + run, len - run);
    ag_fake_buf_add(b, "\"", 1);
}

/* ---- response helpers ---- */

void ag_fake_resp_reset(ag_fake_resp *r)
{
    r->status = 0;
    r->stream = false;
    r->content_type = "application/json";
    r->headers.len = 0;
    r->body.len = 0;
    if (r->headers.p)
        r->headers.p[0] = '\0';
    if (r->body.p)
        r->body.p[0] = '\0';
    r->nseg = 0;
    r->first_delta = 0;
    r->ndeltas = 0;
    r->tokens = 0;
}

void ag_fake_resp_free(ag_fake_resp *r)
{
    ag_fake_buf_free(&r->headers);
    ag_fake_buf_free(&r->body);
    free(r->seg_end);
    memset(r, 0, sizeof *r);
}

void ag_fake_api_error(ag_fake_resp *r, int status, const char *code, const char *message,
                       const char *param, const char *type)
{
    ag_fake_resp_reset(r);
    r->status = status;
    cJSON *root = obj_new();
    cJSON *e = obj_new();
    put(root, "error", e);
    put_str(e, "code", code);
    put_str(e, "message", message);
    if (param)
        put_str(e, "param", param);
    if (type)
        put_str(e, "type", type);
    emit_json(&r->body, root);
}

/* 400 invalid_request_error naming the offending parameter. */
static void bad_request(ag_fake_resp *r, const char *code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void bad_request(ag_fake_resp *r, const char *code, const char *param, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ag_fake_api_error(r, 400, code, msg, param, "invalid_request_error");
}

static void missing(ag_fake_resp *r, const char *param)
{
    bad_request(r, "missing_required_parameter", param, "Missing required parameter: '%s'.", param);
}

static void seg_mark(ag_fake_resp *r)
{
    if (r->nseg == r->seg_cap) {
        size_t cap = r->seg_cap ? r->seg_cap * 2 : 16;
        size_t *p = realloc(r->seg_end, cap * sizeof *p);
        if (!p)
            ag_fake_oom();
        r->seg_end = p;
        r->seg_cap = cap;
    }
    r->seg_end[r->nseg++] = r->body.len;
}

/* Appends one SSE event "[event: name\n]data: <json>\n\n" as its own segment; deletes j. */
static void sse_event(ag_fake_resp *r, const char *event, cJSON *j)
{
    if (event) {
        ag_fake_buf_str(&r->body, "event: ");
        ag_fake_buf_str(&r->body, event);
        ag_fake_buf_str(&r->body, "\n");
    }
    ag_fake_buf_str(&r->body, "data: ");
    emit_json(&r->body, j);
    ag_fake_buf_str(&r->body, "\n\n");
    seg_mark(r);
}

/* ---- routing ---- */

static bool valid_dated_version(const char *v)
{
    /* YYYY-MM-DD or YYYY-MM-DD-preview */
    size_t n = strlen(v);
    if (n != 10 && !(n == 18 && strcmp(v + 10, "-preview") == 0))
        return false;
    for (size_t i = 0; i < 10; i++) {
        if (i == 4 || i == 7) {
            if (v[i] != '-')
                return false;
        } else if (!isdigit((unsigned char)v[i])) {
            return false;
        }
    }
    return true;
}

/* Splits the request-target into route fields. Returns false for paths that do not exist. */
static bool route_parse(const char *url, fa_route *rt)
{
    memset(rt, 0, sizeof *rt);
    const char *q = strchr(url, '?');
    size_t plen = q ? (size_t)(q - url) : strlen(url);
    if (q) {
        const char *p = q + 1;
        while (*p) {
            const char *amp = strchr(p, '&');
            size_t len = amp ? (size_t)(amp - p) : strlen(p);
            if (len >= 12 && strncmp(p, "api-version=", 12) == 0 && !rt->has_api_version) {
                size_t vlen = len - 12;
                if (vlen >= sizeof rt->api_version)
                    vlen = sizeof rt->api_version - 1;
                memcpy(rt->api_version, p + 12, vlen);
                rt->api_version[vlen] = '\0';
                rt->has_api_version = true;
            }
            if (!amp)
                break;
            p = amp + 1;
        }
    }
    static const struct {
        const char *path;
        fa_op op;
    } v1_paths[] = {{"/openai/v1/chat/completions", FA_OP_CHAT},
                    {"/openai/v1/embeddings", FA_OP_EMBEDDINGS},
                    {"/openai/v1/responses", FA_OP_RESPONSES}};
    for (size_t i = 0; i < sizeof v1_paths / sizeof v1_paths[0]; i++) {
        if (plen == strlen(v1_paths[i].path) && strncmp(url, v1_paths[i].path, plen) == 0) {
            rt->op = v1_paths[i].op;
            rt->v1 = true;
            return true;
        }
    }
    if (plen == strlen("/openai/responses") && strncmp(url, "/openai/responses", plen) == 0) {
        rt->op = FA_OP_RESPONSES;
        return true;
    }
    static const char prefix[] = "/openai/deployments/";
    if (plen <= sizeof prefix - 1 || strncmp(url, prefix, sizeof prefix - 1) != 0)
        return false;
    const char *dep = url + sizeof prefix - 1;
    const char *end = url + plen;
    const char *slash = memchr(dep, '/', (size_t)(end - dep));
    if (!slash || slash == dep || (size_t)(slash - dep) >= sizeof rt->deployment)
        return false;
    memcpy(rt->deployment, dep, (size_t)(slash - dep));
    rt->deployment[slash - dep] = '\0';
    size_t rest = (size_t)(end - slash);
    if (rest == strlen("/chat/completions") && strncmp(slash, "/chat/completions", rest) == 0)
        rt->op = FA_OP_CHAT;
    else if (rest == strlen("/completions") && strncmp(slash, "/completions", rest) == 0)
        rt->op = FA_OP_COMPLETIONS;
    else if (rest == strlen("/embeddings") && strncmp(slash, "/embeddings", rest) == 0)
        rt->op = FA_OP_EMBEDDINGS;
    else
        return false;
    return true;
}

/* ---- token accounting and text helpers ---- */

static long long tokens_of(size_t bytes)
{
    return (long long)((bytes + 3) / 4);
}

static long long prompt_tokens_of(size_t bytes)
{
    long long t = tokens_of(bytes);
    return t < 1 ? 1 : t;
}

static cJSON *filter_category(bool severity)
{
    cJSON *c = obj_new();
    put_bool(c, "filtered", false);
    if (severity)
        put_str(c, "severity", "safe");
    else
        put_bool(c, "detected", false);
    return c;
}

/* Output-side content_filter_results (four harm categories, nothing filtered). */
static cJSON *output_filter_results(void)
{
    cJSON *c = obj_new();
    put(c, "hate", filter_category(true));
    put(c, "self_harm", filter_category(true));
    put(c, "sexual", filter_category(true));
    put(c, "violence", filter_category(true));
    return c;
}

static cJSON *prompt_filter_results(void)
{
    cJSON *arr = arr_new();
    cJSON *p = obj_new();
    push(arr, p);
    put_num(p, "prompt_index", 0);
    cJSON *c = obj_new();
    put(p, "content_filter_results", c);
    put(c, "hate", filter_category(true));
    put(c, "jailbreak", filter_category(false));
    put(c, "self_harm", filter_category(true));
    put(c, "sexual", filter_category(true));
    put(c, "violence", filter_category(true));
    return arr;
}

static cJSON *chat_usage(long long pt, long long ct)
{
    cJSON *u = obj_new();
    put_num(u, "completion_tokens", (double)ct);
    cJSON *cd = obj_new();
    put_num(cd, "accepted_prediction_tokens", 0);
    put_num(cd, "audio_tokens", 0);
    put_num(cd, "reasoning_tokens", 0);
    put_num(cd, "rejected_prediction_tokens", 0);
    put(u, "completion_tokens_details", cd);
    put_num(u, "prompt_tokens", (double)pt);
    cJSON *pd = obj_new();
    put_num(pd, "audio_tokens", 0);
    put_num(pd, "cached_tokens", 0);
    put(u, "prompt_tokens_details", pd);
    put_num(u, "total_tokens", (double)(pt + ct));
    return u;
}

/* Splits text into stream chunks: one per word (a word keeps its trailing whitespace; leading
 * whitespace joins the first word) or exactly n chunks of near-equal size, never cutting a UTF-8
 * sequence. Writes the end offset of each chunk into *ends (malloc'd, caller frees); returns the
 * count (at least 1). */
static size_t split_chunks(const char *text, size_t len, long long n, size_t **ends)
{
    size_t count = 0, cap = n > 0 ? (size_t)n : 8;
    size_t *e = malloc(cap * sizeof *e);
    if (!e)
        ag_fake_oom();
    if (n > 0) {
        size_t prev = 0;
        for (size_t j = 1; j <= (size_t)n; j++) {
            size_t b = (size_t)(((unsigned long long)len * j) / (unsigned long long)n);
            while (b < len && ((unsigned char)text[b] & 0xC0) == 0x80)
                b++;
            if (b < prev)
                b = prev;
            e[count++] = b;
            prev = b;
        }
        e[count - 1] = len;
    } else {
        size_t i = 0;
        while (i < len && isspace((unsigned char)text[i]))
            i++;
        do {
            while (i < len && !isspace((unsigned char)text[i]))
                i++;
            while (i < len && isspace((unsigned char)text[i]))
                i++;
            if (count == cap) {
                cap *= 2;
                size_t *p = realloc(e, cap * sizeof *e);
                if (!p)
                    ag_fake_oom();
                e = p;
            }
            e[count++] = i;
        } while (i < len);
    }
    *ends = e;
    return count;
}

static void make_id(char *out, size_t outlen, const char *prefix, uint64_t seq)
{
    snprintf(out, outlen, "%sFAKE%025llu", prefix, (unsigned long long)seq);
}

static long long created_at(const ag_fake_conf *conf)
{
    return conf->created ? conf->created : (long long)time(NULL);
}

/* The completion: the fixed reply when configured, else "Echo: " + last user text (malloc'd). */
static char *completion_text(const ag_fake_conf *conf, const char *last_user)
{
    if (conf->reply_text)
        return ag_fake_strdup(conf->reply_text);
    ag_fake_buf b = {0};
    ag_fake_buf_str(&b, "Echo: ");
    ag_fake_buf_str(&b, last_user ? last_user : "");
    return b.p;
}

/* Reads "stream" and "stream_options.include_usage" like Azure. Returns false (r filled) on error. */
static bool read_stream_flags(const cJSON *body, bool *stream, bool *include_usage, ag_fake_resp *r)
{
    *stream = false;
    *include_usage = false;
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(body, "stream");
    if (s && !cJSON_IsNull(s)) {
        if (!cJSON_IsBool(s)) {
            bad_request(r, "invalid_type", "stream", "Invalid type for 'stream': expected a boolean.");
            return false;
        }
        *stream = cJSON_IsTrue(s);
    }
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(body, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        if (!*stream) {
            bad_request(r, "invalid_value", "stream_options",
                        "The 'stream_options' parameter is only allowed when 'stream' is enabled.");
            return false;
        }
        if (!cJSON_IsObject(so)) {
            bad_request(r, "invalid_type", "stream_options",
                        "Invalid type for 'stream_options': expected an object.");
            return false;
        }
        const cJSON *iu = cJSON_GetObjectItemCaseSensitive(so, "include_usage");
        if (iu && !cJSON_IsNull(iu)) {
            if (!cJSON_IsBool(iu)) {
                bad_request(r, "invalid_type", "stream_options.include_usage",
                            "Invalid type for 'stream_options.include_usage': expected a boolean.");
                return false;
            }
            *include_usage = cJSON_IsTrue(iu);
        }
    }
    return true;
}

/* ---- chat completions ---- */

static bool role_valid(const char *role)
{
    static const char *const roles[] = {"system", "developer", "user", "assistant", "tool", "function", NULL};
    for (size_t i = 0; roles[i]; i++)
        if (strcmp(role, roles[i]) == 0)
            return true;
    return false;
}

/* Collects the text of one chat message content into out (string, or text parts concatenated).
 * Returns false with r filled when the content is malformed. */
static bool chat_content_text(const cJSON *content, size_t mi, ag_fake_buf *out, ag_fake_resp *r)
{
    char param[64];
    if (!content || cJSON_IsNull(content))
        return true;
    if (cJSON_IsString(content)) {
        ag_fake_buf_str(out, content->valuestring);
        return true;
    }
    snprintf(param, sizeof param, "messages[%zu].content", mi);
    if (!cJSON_IsArray(content)) {
        bad_request(r, "invalid_type", param, "Invalid type for '%s': expected one of a string or an array of objects.", param);
        return false;
    }
    size_t pi = 0;
    for (const cJSON *part = content->child; part; part = part->next, pi++) {
        snprintf(param, sizeof param, "messages[%zu].content[%zu]", mi, pi);
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        if (!cJSON_IsObject(part) || !cJSON_IsString(type)) {
            bad_request(r, "invalid_type", param, "Invalid content part '%s': expected an object with a 'type'.", param);
            return false;
        }
        const char *t = type->valuestring;
        if (strcmp(t, "text") == 0) {
            const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
            if (!cJSON_IsString(text)) {
                bad_request(r, "missing_required_parameter", param, "Missing required parameter: '%s.text'.", param);
                return false;
            }
            ag_fake_buf_str(out, text->valuestring);
        } else if (strcmp(t, "image_url") == 0) {
            const cJSON *iu = cJSON_GetObjectItemCaseSensitive(part, "image_url");
            const cJSON *url = cJSON_IsObject(iu) ? cJSON_GetObjectItemCaseSensitive(iu, "url") : NULL;
            if (!cJSON_IsString(url)) {
                bad_request(r, "missing_required_parameter", param, "Missing required parameter: '%s.image_url.url'.", param);
                return false;
            }
        } else if (strcmp(t, "refusal") != 0 && strcmp(t, "input_audio") != 0 && strcmp(t, "file") != 0) {
            bad_request(r, "invalid_value", param, "Invalid value: '%s'. Supported values are: 'text', 'image_url', 'input_audio', 'refusal' and 'file'.", t);
            return false;
        }
    }
    return true;
}

static cJSON *chat_chunk(const char *id, long long created, const char *model, bool include_usage)
{
    cJSON *c = obj_new();
    put(c, "choices", arr_new());
    put_num(c, "created", (double)created);
    put_str(c, "id", id);
    put_str(c, "model", model);
    put_str(c, "object", "chat.completion.chunk");
    put_str(c, "system_fingerprint", FA_FINGERPRINT);
    if (include_usage)
        put_null(c, "usage");
    return c;
}

static void handle_chat(const ag_fake_req *req, const fa_route *rt, const cJSON *body,
                        const ag_fake_conf *conf, ag_fake_resp *r)
{
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(body, "messages");
    if (!msgs || cJSON_IsNull(msgs))
        return missing(r, "messages");
    if (!cJSON_IsArray(msgs))
        return bad_request(r, "invalid_type", "messages", "Invalid type for 'messages': expected an array of objects.");
    if (!msgs->child)
        return bad_request(r, "empty_array", "messages", "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.");
    bool stream, include_usage;
    if (!read_stream_flags(body, &stream, &include_usage, r))
        return;

    ag_fake_buf text = {0}, last_user = {0};
    size_t total = 0, mi = 0;
    bool have_user = false;
    for (const cJSON *m = msgs->child; m; m = m->next, mi++) {
        char param[64];
        snprintf(param, sizeof param, "messages[%zu]", mi);
        if (!cJSON_IsObject(m)) {
            bad_request(r, "invalid_type", param, "Invalid type for '%s': expected an object.", param);
            goto out;
        }
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        snprintf(param, sizeof param, "messages[%zu].role", mi);
        if (!cJSON_IsString(role)) {
            missing(r, param);
            goto out;
        }
        if (!role_valid(role->valuestring)) {
            bad_request(r, "invalid_value", param, "Invalid value: '%s'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'.", role->valuestring);
            goto out;
        }
        text.len = 0;
        if (!chat_content_text(cJSON_GetObjectItemCaseSensitive(m, "content"), mi, &text, r))
            goto out;
        total += text.len;
        if (strcmp(role->valuestring, "user") == 0) {
            last_user.len = 0;
            ag_fake_buf_add(&last_user, text.p ? text.p : "", text.len);
            have_user = true;
        }
    }

    char id[64];
    make_id(id, sizeof id, "chatcmpl-", req->seq);
    long long created = created_at(conf);
    char *completion = completion_text(conf, have_user ? last_user.p : "");
    size_t clen = strlen(completion);
    long long pt = prompt_tokens_of(total), ct = tokens_of(clen);
    r->status = 200;
    r->tokens = pt + ct;

    if (!stream) {
        cJSON *root = obj_new();
        cJSON *choices = arr_new();
        put(root, "choices", choices);
        cJSON *ch = obj_new();
        push(choices, ch);
        put(ch, "content_filter_results", output_filter_results());
        put_str(ch, "finish_reason", conf->finish_reason);
        put_num(ch, "index", 0);
        put_null(ch, "logprobs");
        cJSON *msg = obj_new();
        put(ch, "message", msg);
        put_str(msg, "content", completion);
        put_null(msg, "refusal");
        put_str(msg, "role", "assistant");
        put_num(root, "created", (double)created);
        put_str(root, "id", id);
        put_str(root, "model", conf->model);
        put_str(root, "object", "chat.completion");
        put(root, "prompt_filter_results", prompt_filter_results());
        put_str(root, "system_fingerprint", FA_FINGERPRINT);
        put(root, "usage", chat_usage(pt, ct));
        emit_json(&r->body, root);
        free(completion);
        goto out;
    }

    r->stream = true;
    r->content_type = "text/event-stream";
    /* Azure's prompt-annotation event comes first. */
    cJSON *first = obj_new();
    put(first, "choices", arr_new());
    put_num(first, "created", 0);
    put_str(first, "id", "");
    put_str(first, "model", "");
    put_str(first, "object", "");
    put(first, "prompt_filter_results", prompt_filter_results());
    if (include_usage)
        put_null(first, "usage");
    sse_event(r, NULL, first);

    size_t *ends = NULL;
    size_t n = split_chunks(completion, clen, conf->chunks, &ends);
    r->first_delta = r->nseg;
    r->ndeltas = n;
    /* The deltas are the hot part of a stream: write them from a prebuilt tail instead of building
     * a cJSON tree per chunk (same bytes as cJSON would print). */
    ag_fake_buf tail = {0};
    ag_fake_buf_printf(&tail, ",\"finish_reason\":null,\"index\":0,\"logprobs\":null}],\"created\":%lld,\"id\":",
                       created);
    json_string(&tail, id, strlen(id));
    ag_fake_buf_str(&tail, ",\"model\":");
    json_string(&tail, conf->model, strlen(conf->model));
    ag_fake_buf_str(&tail, ",\"object\":\"chat.completion.chunk\",\"system_fingerprint\":\"" FA_FINGERPRINT "\"");
    if (include_usage)
        ag_fake_buf_str(&tail, ",\"usage\":null");
    ag_fake_buf_str(&tail, "}\n\n");
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        ag_fake_buf_str(&r->body, "data: {\"choices\":[{\"content_filter_results\":" FA_OUTPUT_FILTER_JSON
                                  ",\"delta\":{\"content\":");
        json_string(&r->body, completion + start, ends[i] - start);
        ag_fake_buf_str(&r->body, i == 0 ? ",\"role\":\"assistant\"}" : "}");
        ag_fake_buf_add(&r->body, tail.p, tail.len);
        seg_mark(r);
        start = ends[i];
    }
    free(ends);
    ag_fake_buf_free(&tail);

    cJSON *fin = chat_chunk(id, created, conf->model, include_usage);
    cJSON *ch = obj_new();
    push(cJSON_GetObjectItemCaseSensitive(fin, "choices"), ch);
    put(ch, "content_filter_results", obj_new());
    put(ch, "delta", obj_new());
    put_str(ch, "finish_reason", conf->finish_reason);
    put_num(ch, "index", 0);
    put_null(ch, "logprobs");
    sse_event(r, NULL, fin);
    if (include_usage) {
        cJSON *u = chat_chunk(id, created, conf->model, false);
        put(u, "usage", chat_usage(pt, ct));
        sse_event(r, NULL, u);
    }
    ag_fake_buf_str(&r->body, "data: [DONE]\n\n");
    seg_mark(r);
    free(completion);
out:
    (void)rt;
    ag_fake_buf_free(&text);
    ag_fake_buf_free(&last_user);
}

/* ---- legacy completions ---- */

static cJSON *completion_chunk(const char *id, long long created, const char *model, bool include_usage)
{
    cJSON *c = obj_new();
    put(c, "choices", arr_new());
    put_num(c, "created", (double)created);
    put_str(c, "id", id);
    put_str(c, "model", model);
    put_str(c, "object", "text_completion");
    put_null(c, "system_fingerprint");
    if (include_usage)
        put_null(c, "usage");
    return c;
}

static cJSON *completion_choice(const char *text, const char *finish_reason, bool filter)
{
    cJSON *ch = obj_new();
    put(ch, "content_filter_results", filter ? output_filter_results() : obj_new());
    if (finish_reason)
        put_str(ch, "finish_reason", finish_reason);
    else
        put_null(ch, "finish_reason");
    put_num(ch, "index", 0);
    put_null(ch, "logprobs");
    put_str(ch, "text", text);
    return ch;
}

static bool is_token_array(const cJSON *a)
{
    if (!cJSON_IsArray(a) || !a->child)
        return false;
    for (const cJSON *t = a->child; t; t = t->next)
        if (!cJSON_IsNumber(t) || t->valuedouble < 0 || t->valuedouble != floor(t->valuedouble) ||
            t->valuedouble > 4294967295.0)
            return false;
    return true;
}

static void handle_completions(const ag_fake_req *req, const cJSON *body, const ag_fake_conf *conf,
                               ag_fake_resp *r)
{
    const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(body, "prompt");
    if (!prompt || cJSON_IsNull(prompt))
        return missing(r, "prompt");
    bool stream, include_usage;
    if (!read_stream_flags(body, &stream, &include_usage, r))
        return;
    size_t bytes = 0;
    long long token_count = -1;
    const char *last = "";
    if (cJSON_IsString(prompt)) {
        bytes = strlen(prompt->valuestring);
        last = prompt->valuestring;
    } else if (is_token_array(prompt)) {
        token_count = cJSON_GetArraySize(prompt);
    } else if (cJSON_IsArray(prompt) && prompt->child) {
        bool strings = cJSON_IsString(prompt->child);
        token_count = strings ? -1 : 0;
        for (const cJSON *p = prompt->child; p; p = p->next) {
            if (strings && cJSON_IsString(p)) {
                bytes += strlen(p->valuestring);
                last = p->valuestring;
            } else if (!strings && is_token_array(p)) {
                token_count += cJSON_GetArraySize(p);
            } else {
                return bad_request(r, "invalid_type", "prompt", "Invalid type for 'prompt': expected a string, an array of strings, an array of tokens or an array of token arrays.");
            }
        }
    } else {
        return bad_request(r, "invalid_type", "prompt", "Invalid type for 'prompt': expected a string, an array of strings, an array of tokens or an array of token arrays.");
    }

    char id[64];
    make_id(id, sizeof id, "cmpl-", req->seq);
    long long created = created_at(conf);
    char *completion = completion_text(conf, last);
    size_t clen = strlen(completion);
    long long pt = token_count >= 0 ? (token_count < 1 ? 1 : token_count) : prompt_tokens_of(bytes);
    long long ct = tokens_of(clen);
    r->status = 200;
    r->tokens = pt + ct;
    if (!stream) {
        cJSON *root = completion_chunk(id, created, conf->model, false);
        push(cJSON_GetObjectItemCaseSensitive(root, "choices"),
             completion_choice(completion, conf->finish_reason, true));
        cJSON_DeleteItemFromObjectCaseSensitive(root, "system_fingerprint");
        put(root, "prompt_filter_results", prompt_filter_results());
        put(root, "usage", chat_usage(pt, ct));
        emit_json(&r->body, root);
        free(completion);
        return;
    }
    r->stream = true;
    r->content_type = "text/event-stream";
    cJSON *first = obj_new();
    put(first, "choices", arr_new());
    put_num(first, "created", 0);
    put_str(first, "id", "");
    put_str(first, "model", "");
    put_str(first, "object", "");
    put(first, "prompt_filter_results", prompt_filter_results());
    if (include_usage)
        put_null(first, "usage");
    sse_event(r, NULL, first);
    size_t *ends = NULL;
    size_t n = split_chunks(completion, clen, conf->chunks, &ends);
    r->first_delta = r->nseg;
    r->ndeltas = n;
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        cJSON *c = completion_chunk(id, created, conf->model, include_usage);
        char save = completion[ends[i]];
        completion[ends[i]] = '\0';
        push(cJSON_GetObjectItemCaseSensitive(c, "choices"), completion_choice(completion + start, NULL, true));
        completion[ends[i]] = save;
        sse_event(r, NULL, c);
        start = ends[i];
    }
    free(ends);
    cJSON *fin = completion_chunk(id, created, conf->model, include_usage);
    push(cJSON_GetObjectItemCaseSensitive(fin, "choices"), completion_choice("", conf->finish_reason, false));
    sse_event(r, NULL, fin);
    if (include_usage) {
        cJSON *u = completion_chunk(id, created, conf->model, false);
        put(u, "usage", chat_usage(pt, ct));
        sse_event(r, NULL, u);
    }
    ag_fake_buf_str(&r->body, "data: [DONE]\n\n");
    seg_mark(r);
    free(completion);
}

/* ---- embeddings ---- */

/* Eight deterministic floats in [-1, 1] (6 decimals) from the SHA-256 of the item's bytes. */
static void embedding_of(const void *data, size_t len, double out[8])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) || mdlen < 32)
        ag_fake_oom();
    for (int i = 0; i < 8; i++) {
        uint32_t u = ((uint32_t)md[4 * i] << 24) | ((uint32_t)md[4 * i + 1] << 16) |
                     ((uint32_t)md[4 * i + 2] << 8) | (uint32_t)md[4 * i + 3];
        double v = ((double)u / 4294967295.0) * 2.0 - 1.0;
        v = round(v * 1e6) / 1e6;
        out[i] = v == 0.0 ? 0.0 : v; /* no negative zero */
    }
}

static cJSON *embedding_item(size_t index, const double vec[8], bool b64)
{
    cJSON *e = obj_new();
    if (b64) {
        unsigned char raw[32];
        for (int i = 0; i < 8; i++) {
            float f = (float)vec[i];
            uint32_t u;
            memcpy(&u, &f, 4);
            raw[4 * i] = (unsigned char)(u & 0xff); /* little-endian float32 like the API */
            raw[4 * i + 1] = (unsigned char)((u >> 8) & 0xff);
            raw[4 * i + 2] = (unsigned char)((u >> 16) & 0xff);
            raw[4 * i + 3] = (unsigned char)(u >> 24);
        }
        unsigned char out[64];
        EVP_EncodeBlock(out, raw, 32);
        put_str(e, "embedding", (const char *)out);
    } else {
        cJSON *a = arr_new();
        for (int i = 0; i < 8; i++)
            push(a, cJSON_CreateNumber(vec[i]));
        put(e, "embedding", a);
    }
    put_num(e, "index", (double)index);
    put_str(e, "object", "embedding");
    return e;
}

/* Hash input for a token array: its decimal values joined by ','. */
static void tokens_key(const cJSON *a, ag_fake_buf *b)
{
    b->len = 0;
    for (const cJSON *t = a->child; t; t = t->next)
        ag_fake_buf_printf(b, "%s%.0f", t == a->child ? "" : ",", t->valuedouble);
}

static void handle_embeddings(const cJSON *body, const ag_fake_conf *conf, ag_fake_resp *r)
{
    static const char bad_input[] = "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.";
    const cJSON *input = cJSON_GetObjectItemCaseSensitive(body, "input");
    if (!input || cJSON_IsNull(input))
        return missing(r, "input");
    bool b64 = false;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(body, "encoding_format");
    if (fmt && !cJSON_IsNull(fmt)) {
        if (!cJSON_IsString(fmt) || (strcmp(fmt->valuestring, "float") != 0 && strcmp(fmt->valuestring, "base64") != 0))
            return bad_request(r, "invalid_value", "encoding_format", "Invalid value for 'encoding_format': expected 'float' or 'base64'.");
        b64 = strcmp(fmt->valuestring, "base64") == 0;
    }

    cJSON *data = arr_new();
    ag_fake_buf key = {0};
    double vec[8];
    size_t tokens = 0, bytes = 0, index = 0;
    bool ok = true;
    if (cJSON_IsString(input)) {
        size_t len = strlen(input->valuestring);
        ok = len > 0;
        if (ok) {
            embedding_of(input->valuestring, len, vec);
            push(data, embedding_item(0, vec, b64));
            bytes = len;
        }
    } else if (is_token_array(input)) {
        ok = cJSON_GetArraySize(input) <= 8192;
        tokens_key(input, &key);
        embedding_of(key.p, key.len, vec);
        push(data, embedding_item(0, vec, b64));
        tokens = (size_t)cJSON_GetArraySize(input);
    } else if (cJSON_IsArray(input) && input->child) {
        bool strings = cJSON_IsString(input->child);
        ok = cJSON_GetArraySize(input) <= FA_MAX_EMBED_ITEMS;
        for (const cJSON *it = input->child; it && ok; it = it->next, index++) {
            if (strings && cJSON_IsString(it) && it->valuestring[0]) {
                size_t len = strlen(it->valuestring);
                embedding_of(it->valuestring, len, vec);
                bytes += len;
            } else if (!strings && is_token_array(it)) {
                tokens_key(it, &key);
                embedding_of(key.p, key.len, vec);
                tokens += (size_t)cJSON_GetArraySize(it);
            } else {
                ok = false;
                break;
            }
            push(data, embedding_item(index, vec, b64));
        }
    } else {
        ok = false;
    }
    ag_fake_buf_free(&key);
    if (!ok) {
        cJSON_Delete(data);
        return bad_request(r, "invalid_value", "input", "%s", bad_input);
    }
    long long pt = (long long)tokens + (bytes ? tokens_of(bytes) : 0);
    if (pt < 1)
        pt = 1;
    cJSON *root = obj_new();
    put(root, "data", data);
    put_str(root, "model", conf->embedding_model);
    put_str(root, "object", "list");
    cJSON *u = obj_new();
    put_num(u, "prompt_tokens", (double)pt);
    put_num(u, "total_tokens", (double)pt);
    put(root, "usage", u);
    r->status = 200;
    r->tokens = pt;
    emit_json(&r->body, root);
}

/* ---- responses ---- */

/* Text of a Responses input message content (string or input_text/output_text parts). */
static bool responses_content_text(const cJSON *content, size_t ii, ag_fake_buf *out, ag_fake_resp *r)
{
    char param[64];
    snprintf(param, sizeof param, "input[%zu].content", ii);
    if (cJSON_IsString(content)) {
        ag_fake_buf_str(out, content->valuestring);
        return true;
    }
    if (!cJSON_IsArray(content)) {
        bad_request(r, "invalid_type", param, "Invalid type for '%s': expected a string or an array of content parts.", param);
        return false;
    }
    for (const cJSON *p = content->child; p; p = p->next) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(p, "type");
        if (!cJSON_IsObject(p) || !cJSON_IsString(type)) {
            bad_request(r, "invalid_type", param, "Invalid content part in '%s': expected an object with a 'type'.", param);
            return false;
        }
        const char *t = type->valuestring;
        if (strcmp(t, "input_text") == 0 || strcmp(t, "output_text") == 0) {
            const cJSON *text = cJSON_GetObjectItemCaseSensitive(p, "text");
            if (!cJSON_IsString(text)) {
                bad_request(r, "missing_required_parameter", param, "Missing required parameter: '%s[].text'.", param);
                return false;
            }
            ag_fake_buf_str(out, text->valuestring);
        } else if (strcmp(t, "input_image") != 0 && strcmp(t, "input_file") != 0 && strcmp(t, "refusal") != 0) {
            bad_request(r, "invalid_value", param, "Invalid value: '%s'. Supported values are: 'input_text', 'input_image', 'input_file' and 'output_text'.", t);
            return false;
        }
    }
    return true;
}

static cJSON *output_text_part(const char *text)
{
    cJSON *p = obj_new();
    put_str(p, "type", "output_text");
    put(p, "annotations", arr_new());
    put_str(p, "text", text);
    return p;
}

static cJSON *message_item(const char *msg_id, const char *text, bool done)
{
    cJSON *it = obj_new();
    put_str(it, "id", msg_id);
    put_str(it, "type", "message");
    put_str(it, "status", done ? "completed" : "in_progress");
    cJSON *content = arr_new();
    if (done)
        push(content, output_text_part(text));
    put(it, "content", content);
    put_str(it, "role", "assistant");
    return it;
}

static cJSON *response_object(const char *id, const char *msg_id, long long created, const char *model,
                              const cJSON *instructions, const char *text, bool done, long long it,
                              long long ot)
{
    cJSON *o = obj_new();
    put_str(o, "id", id);
    put_str(o, "object", "response");
    put_num(o, "created_at", (double)created);
    put_str(o, "status", done ? "completed" : "in_progress");
    put_null(o, "error");
    put_null(o, "incomplete_details");
    put(o, "instructions", cJSON_IsString(instructions) ? cJSON_CreateString(instructions->valuestring) : cJSON_CreateNull());
    put_null(o, "max_output_tokens");
    put_str(o, "model", model);
    cJSON *output = arr_new();
    if (done)
        push(output, message_item(msg_id, text, true));
    put(o, "output", output);
    put_bool(o, "parallel_tool_calls", true);
    put_null(o, "previous_response_id");
    cJSON *reasoning = obj_new();
    put_null(reasoning, "effort");
    put_null(reasoning, "summary");
    put(o, "reasoning", reasoning);
    put_bool(o, "store", true);
    put_num(o, "temperature", 1);
    cJSON *tf = obj_new();
    cJSON *fmt = obj_new();
    put_str(fmt, "type", "text");
    put(tf, "format", fmt);
    put(o, "text", tf);
    put_str(o, "tool_choice", "auto");
    put(o, "tools", arr_new());
    put_num(o, "top_p", 1);
    put_str(o, "truncation", "disabled");
    if (done) {
        cJSON *u = obj_new();
        put_num(u, "input_tokens", (double)it);
        cJSON *itd = obj_new();
        put_num(itd, "cached_tokens", 0);
        put(u, "input_tokens_details", itd);
        put_num(u, "output_tokens", (double)ot);
        cJSON *otd = obj_new();
        put_num(otd, "reasoning_tokens", 0);
        put(u, "output_tokens_details", otd);
        put_num(u, "total_tokens", (double)(it + ot));
        put(o, "usage", u);
    } else {
        put_null(o, "usage");
    }
    put_null(o, "user");
    put(o, "metadata", obj_new());
    return o;
}

static cJSON *typed_event(const char *type, long long *seq)
{
    cJSON *e = obj_new();
    put_str(e, "type", type);
    put_num(e, "sequence_number", (double)(*seq)++);
    return e;
}

static void put_item_ref(cJSON *e, const char *msg_id)
{
    put_str(e, "item_id", msg_id);
    put_num(e, "output_index", 0);
    put_num(e, "content_index", 0);
}

static void handle_responses(const ag_fake_req *req, const cJSON *body, const ag_fake_conf *conf,
                             ag_fake_resp *r)
{
    const cJSON *input = cJSON_GetObjectItemCaseSensitive(body, "input");
    if (!input || cJSON_IsNull(input))
        return missing(r, "input");
    const cJSON *instructions = cJSON_GetObjectItemCaseSensitive(body, "instructions");
    if (instructions && !cJSON_IsNull(instructions) && !cJSON_IsString(instructions))
        return bad_request(r, "invalid_type", "instructions", "Invalid type for 'instructions': expected a string.");
    bool stream, include_usage;
    if (!read_stream_flags(body, &stream, &include_usage, r))
        return;

    size_t total = cJSON_IsString(instructions) ? strlen(instructions->valuestring) : 0;
    ag_fake_buf text = {0}, last_user = {0};
    if (cJSON_IsString(input)) {
        ag_fake_buf_str(&last_user, input->valuestring);
        total += last_user.len;
    } else if (cJSON_IsArray(input)) {
        size_t ii = 0;
        for (const cJSON *it = input->child; it; it = it->next, ii++) {
            char param[64];
            snprintf(param, sizeof param, "input[%zu]", ii);
            if (!cJSON_IsObject(it)) {
                bad_request(r, "invalid_type", param, "Invalid type for '%s': expected an object.", param);
                goto out;
            }
            const cJSON *type = cJSON_GetObjectItemCaseSensitive(it, "type");
            const cJSON *role = cJSON_GetObjectItemCaseSensitive(it, "role");
            if (type && !cJSON_IsString(type)) {
                bad_request(r, "invalid_type", param, "Invalid type for '%s.type': expected a string.", param);
                goto out;
            }
            if (!type || strcmp(type->valuestring, "message") == 0) {
                if (!cJSON_IsString(role) || (strcmp(role->valuestring, "user") != 0 && strcmp(role->valuestring, "assistant") != 0 &&
                                              strcmp(role->valuestring, "system") != 0 && strcmp(role->valuestring, "developer") != 0)) {
                    bad_request(r, "invalid_value", param, "Invalid '%s.role': expected one of 'user', 'assistant', 'system', 'developer'.", param);
                    goto out;
                }
                text.len = 0;
                if (!responses_content_text(cJSON_GetObjectItemCaseSensitive(it, "content"), ii, &text, r))
                    goto out;
                total += text.len;
                if (strcmp(role->valuestring, "user") == 0) {
                    last_user.len = 0;
                    ag_fake_buf_add(&last_user, text.p ? text.p : "", text.len);
                }
            } else if (strcmp(type->valuestring, "function_call_output") == 0) {
                const cJSON *output = cJSON_GetObjectItemCaseSensitive(it, "output");
                if (!cJSON_IsString(output)) {
                    bad_request(r, "missing_required_parameter", param, "Missing required parameter: '%s.output'.", param);
                    goto out;
                }
                total += strlen(output->valuestring);
            } else if (strcmp(type->valuestring, "function_call") == 0) {
                const cJSON *args = cJSON_GetObjectItemCaseSensitive(it, "arguments");
                if (cJSON_IsString(args))
                    total += strlen(args->valuestring);
            }
        }
    } else {
        bad_request(r, "invalid_type", "input", "Invalid type for 'input': expected a string or an array of input items.");
        goto out;
    }

    char id[64], msg_id[64];
    make_id(id, sizeof id, "resp_", req->seq);
    make_id(msg_id, sizeof msg_id, "msg_", req->seq);
    long long created = created_at(conf);
    char *completion = completion_text(conf, last_user.p ? last_user.p : "");
    size_t clen = strlen(completion);
    long long it_tokens = prompt_tokens_of(total), ot_tokens = tokens_of(clen);
    r->status = 200;
    r->tokens = it_tokens + ot_tokens;
    if (!stream) {
        emit_json(&r->body, response_object(id, msg_id, created, conf->model, instructions, completion,
                                            true, it_tokens, ot_tokens));
        free(completion);
        goto out;
    }
    r->stream = true;
    r->content_type = "text/event-stream";
    long long seq = 0;
    cJSON *e = typed_event("response.created", &seq);
    put(e, "response", response_object(id, msg_id, created, conf->model, instructions, "", false, 0, 0));
    sse_event(r, "response.created", e);
    e = typed_event("response.in_progress", &seq);
    put(e, "response", response_object(id, msg_id, created, conf->model, instructions, "", false, 0, 0));
    sse_event(r, "response.in_progress", e);
    e = typed_event("response.output_item.added", &seq);
    put_num(e, "output_index", 0);
    put(e, "item", message_item(msg_id, "", false));
    sse_event(r, "response.output_item.added", e);
    e = typed_event("response.content_part.added", &seq);
    put_item_ref(e, msg_id);
    put(e, "part", output_text_part(""));
    sse_event(r, "response.content_part.added", e);

    size_t *ends = NULL;
    size_t n = split_chunks(completion, clen, conf->chunks, &ends);
    r->first_delta = r->nseg;
    r->ndeltas = n;
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        e = typed_event("response.output_text.delta", &seq);
        put_item_ref(e, msg_id);
        char save = completion[ends[i]];
        completion[ends[i]] = '\0';
        put_str(e, "delta", completion + start);
        completion[ends[i]] = save;
        sse_event(r, "response.output_text.delta", e);
        start = ends[i];
    }
    free(ends);
    e = typed_event("response.output_text.done", &seq);
    put_item_ref(e, msg_id);
    put_str(e, "text", completion);
    sse_event(r, "response.output_text.done", e);
    e = typed_event("response.content_part.done", &seq);
    put_item_ref(e, msg_id);
    put(e, "part", output_text_part(completion));
    sse_event(r, "response.content_part.done", e);
    e = typed_event("response.output_item.done", &seq);
    put_num(e, "output_index", 0);
    put(e, "item", message_item(msg_id, completion, true));
    sse_event(r, "response.output_item.done", e);
    e = typed_event("response.completed", &seq);
    put(e, "response", response_object(id, msg_id, created, conf->model, instructions, completion, true,
                                       it_tokens, ot_tokens));
    sse_event(r, "response.completed", e);
    free(completion);
out:
    ag_fake_buf_free(&text);
    ag_fake_buf_free(&last_user);
}

/* ---- entry points ---- */

static bool contains_ci(const char *hay, const char *needle)
{
    return hay && strcasestr(hay, needle) != NULL;
}

/* Azure AI Content Safety stand-in, deterministic: Prompt Shields detects an attack when a text
 * contains "ignore all previous instructions"; text:analyze reports Hate at severity 6 for texts
 * containing "hatetrigger" and 0 for every category otherwise. */
static void content_safety(const ag_fake_req *req, ag_fake_resp *r)
{
    bool shield = strncmp(req->url, "/contentsafety/text:shieldPrompt", 32) == 0;
    bool analyze = strncmp(req->url, "/contentsafety/text:analyze", 27) == 0;
    if ((!shield && !analyze) || !strstr(req->url, "api-version="))
        return ag_fake_api_error(r, 404, "404", "Resource not found", NULL, NULL);
    cJSON *body = cJSON_ParseWithLength(req->body, req->body_len);
    if (!body)
        return ag_fake_api_error(r, 400, "InvalidRequestBody", "The request body is not valid JSON.", NULL, NULL);
    r->status = 200;
    cJSON *root = obj_new();
    if (shield) {
        const cJSON *up = cJSON_GetObjectItemCaseSensitive(body, "userPrompt");
        if (!cJSON_IsString(up)) {
            cJSON_Delete(root);
            cJSON_Delete(body);
            return ag_fake_api_error(r, 400, "InvalidRequestBody", "userPrompt is required.", NULL, NULL);
        }
        cJSON *upa = obj_new();
        cJSON_AddBoolToObject(upa, "attackDetected", contains_ci(up->valuestring, "ignore all previous instructions"));
        put(root, "userPromptAnalysis", upa);
        cJSON *docs = cJSON_AddArrayToObject(root, "documentsAnalysis");
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(body, "documents");
        for (const cJSON *e = cJSON_IsArray(d) ? d->child : NULL; e; e = e->next) {
            cJSON *da = obj_new();
            cJSON_AddBoolToObject(da, "attackDetected",
                                  cJSON_IsString(e) && contains_ci(e->valuestring, "ignore all previous instructions"));
            cJSON_AddItemToArray(docs, da);
        }
    } else {
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(body, "text");
        if (!cJSON_IsString(text)) {
            cJSON_Delete(root);
            cJSON_Delete(body);
            return ag_fake_api_error(r, 400, "InvalidRequestBody", "text is required.", NULL, NULL);
        }
        cJSON_AddArrayToObject(root, "blocklistsMatch");
        cJSON *cats = cJSON_AddArrayToObject(root, "categoriesAnalysis");
        static const char *const names[] = {"Hate", "SelfHarm", "Sexual", "Violence"};
        for (int i = 0; i < 4; i++) {
            cJSON *c = obj_new();
            put_str(c, "category", names[i]);
            cJSON_AddNumberToObject(c, "severity", i == 0 && contains_ci(text->valuestring, "hatetrigger") ? 6 : 0);
            cJSON_AddItemToArray(cats, c);
        }
    }
    cJSON_Delete(body);
    emit_json(&r->body, root);
}

void ag_fake_api_handle(const ag_fake_req *req, const ag_fake_conf *conf, ag_fake_resp *r)
{
    ag_fake_resp_reset(r);
    if (strncmp(req->url, "/contentsafety/", 15) == 0 && strcmp(req->method, "POST") == 0)
        return content_safety(req, r);
    fa_route rt;
    if (!route_parse(req->url, &rt))
        return ag_fake_api_error(r, 404, "404", "Resource not found", NULL, NULL);
    if (strcmp(req->method, "POST") != 0) {
        ag_fake_api_error(r, 405, "405", "Method Not Allowed", NULL, NULL);
        ag_fake_buf_str(&r->headers, "Allow: POST\r\n");
        return;
    }
    if (!rt.v1) {
        if (!rt.has_api_version)
            return ag_fake_api_error(r, 400, "MissingApiVersionParameter",
                                     "The api-version query parameter (?api-version=) is required for all requests.",
                                     NULL, NULL);
        if (!valid_dated_version(rt.api_version))
            return ag_fake_api_error(r, 400, "BadRequest", "API version not supported", NULL, NULL);
    } else if (rt.has_api_version && strcmp(rt.api_version, "preview") != 0 &&
               strcmp(rt.api_version, "latest") != 0) {
        return ag_fake_api_error(r, 400, "BadRequest", "API version not supported", NULL, NULL);
    }

    static const ag_json_limits limits = {.max_depth = 64, .max_nodes = 50000000};
    ag_json_status st = AG_JSON_OK;
    size_t off = 0;
    cJSON *body = ag_json_parse_strict(req->body, req->body_len, &limits, &st, &off);
    if (!body) {
        char msg[256];
        snprintf(msg, sizeof msg, "We could not parse the JSON body of your request (%s at byte %zu). "
                 "The API expects a JSON payload.", ag_json_status_str(st), off);
        return ag_fake_api_error(r, 400, "invalid_json", msg, NULL, "invalid_request_error");
    }
    if (!cJSON_IsObject(body)) {
        cJSON_Delete(body);
        return ag_fake_api_error(r, 400, "invalid_json", "The request body must be a JSON object.", NULL,
                                 "invalid_request_error");
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(body, "model");
    bool need_model = rt.v1 || rt.op == FA_OP_RESPONSES;
    if (need_model && (!cJSON_IsString(model) || !model->valuestring[0])) {
        if (!model || cJSON_IsNull(model))
            missing(r, "model");
        else
            bad_request(r, "invalid_type", "model", "Invalid type for 'model': expected a non-empty string.");
        cJSON_Delete(body);
        return;
    }
    switch (rt.op) {
    case FA_OP_CHAT:
        handle_chat(req, &rt, body, conf, r);
        break;
    case FA_OP_COMPLETIONS:
        handle_completions(req, body, conf, r);
        break;
    case FA_OP_EMBEDDINGS:
        handle_embeddings(body, conf, r);
        break;
    case FA_OP_RESPONSES:
        handle_responses(req, body, conf, r);
        break;
    case FA_OP_NONE:
        ag_fake_api_error(r, 404, "404", "Resource not found", NULL, NULL);
        break;
    }
    cJSON_Delete(body);
}

static const char *reason_of(int status)
{
    switch (status) {
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Resource not found";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Request Entity Too Large";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Error";
    }
}

void ag_fake_api_fault(const ag_fake_req *req, const ag_fake_fault *f, ag_fake_resp *r)
{
    fa_route rt;
    bool routed = route_parse(req->url, &rt);
    char code[32], msg[512];
    snprintf(code, sizeof code, "%d", f->status);
    switch (f->status) {
    case 429: {
        const char *op = "ChatCompletions_Create";
        if (routed && rt.op == FA_OP_COMPLETIONS)
            op = "Completions_Create";
        else if (routed && rt.op == FA_OP_EMBEDDINGS)
            op = "Embeddings_Create";
        else if (routed && rt.op == FA_OP_RESPONSES)
            op = "Responses_Create";
        const char *ver = routed && rt.has_api_version ? rt.api_version : "v1";
        char secs[32] = "60";
        bool digits = f->retry_after && f->retry_after[0];
        for (const char *s = f->retry_after; digits && *s; s++)
            digits = isdigit((unsigned char)*s) != 0;
        if (digits && strlen(f->retry_after) < sizeof secs) {
            snprintf(secs, sizeof secs, "%s", f->retry_after);
        } else if (f->retry_after_ms) {
            char *end = NULL;
            long long ms = strtoll(f->retry_after_ms, &end, 10);
            if (end && *end == '\0' && ms > 0)
                snprintf(secs, sizeof secs, "%lld", (ms + 999) / 1000);
        }
        snprintf(msg, sizeof msg,
                 "Requests to the %s Operation under Azure OpenAI API version %s have exceeded token rate "
                 "limit of your current AIServices S0 pricing tier. Please retry after %s %s.",
                 op, ver, secs, strcmp(secs, "1") == 0 ? "second" : "seconds");
        break;
    }
    case 401:
        snprintf(msg, sizeof msg, "Access denied due to invalid subscription key or wrong API endpoint. "
                 "Make sure to provide a valid key for an active subscription and use a correct regional "
                 "API endpoint for your resource.");
        break;
    case 403:
        snprintf(code, sizeof code, "PermissionDenied");
        snprintf(msg, sizeof msg, "Principal does not have access to API/Operation.");
        break;
    case 408:
        snprintf(code, sizeof code, "Timeout");
        snprintf(msg, sizeof msg, "The operation was timeout.");
        break;
    case 500:
        snprintf(code, sizeof code, "InternalServerError");
        snprintf(msg, sizeof msg, "The server had an error while processing your request. Sorry about that!");
        break;
    case 503:
        snprintf(code, sizeof code, "ServiceUnavailable");
        snprintf(msg, sizeof msg, "The service is temporarily unable to process your request. Please try again later.");
        break;
    default:
        snprintf(msg, sizeof msg, "%s", reason_of(f->status));
        break;
    }
    ag_fake_api_error(r, f->status, f->code ? f->code : code, f->message ? f->message : msg, NULL, NULL);
    if (f->retry_after)
        ag_fake_buf_printf(&r->headers, "retry-after: %s\r\n", f->retry_after);
    if (f->retry_after_ms)
        ag_fake_buf_printf(&r->headers, "retry-after-ms: %s\r\n", f->retry_after_ms);
}
