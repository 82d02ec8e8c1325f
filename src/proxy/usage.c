/* Usage and completion text from responses (see usage.h). */
#include "aoai_guard/usage.h"
#include "aoai_guard/json_strict.h"
#include "aoai_guard/worker.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>

static long long num(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < 0 || v->valuedouble > 9e15)
        return -1;
    return (long long)v->valuedouble;
}

int ag_usage_parse(const cJSON *u, ag_usage *out)
{
    if (!cJSON_IsObject(u))
        return -1;
    long long p = num(u, "prompt_tokens"), c = num(u, "completion_tokens"), t = num(u, "total_tokens");
    if (p < 0)
        p = num(u, "input_tokens");
    if (c < 0)
        c = num(u, "output_tokens");
    if (p < 0 && t < 0)
        return -1;
    out->present = true;
    out->prompt_tokens = p < 0 ? 0 : p;
    out->completion_tokens = c < 0 ? 0 : c;
    out->total_tokens = t < 0 ? out->prompt_tokens + out->completion_tokens : t;
    return 0;
}

static void add_string(ag_request *r, const cJSON *s)
{
    if (cJSON_IsString(s))
        ag_request_add_completion(r, s->valuestring, strlen(s->valuestring));
}

/* Text of the first choice (chat message content or legacy text). */
static void take_choice_text(ag_request *r, const cJSON *root, const char *container)
{
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(root, "choices");
    if (!cJSON_IsArray(choices))
        return;
    for (const cJSON *ch = choices->child; ch; ch = ch->next) {
        const cJSON *idx = cJSON_GetObjectItemCaseSensitive(ch, "index");
        if (cJSON_IsNumber(idx) && idx->valuedouble != 0)
            continue; /* the audit keeps choice 0; n>1 choices are counted in usage */
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(ch, container);
        if (m)
            add_string(r, cJSON_GetObjectItemCaseSensitive(m, "content"));
        add_string(r, cJSON_GetObjectItemCaseSensitive(ch, "text"));
    }
}

/* Responses API output: output[].content[].text of type output_text. */
static void take_responses_text(ag_request *r, const cJSON *resp)
{
    const cJSON *output = cJSON_GetObjectItemCaseSensitive(resp, "output");
    if (!cJSON_IsArray(output))
        return;
    for (const cJSON *item = output->child; item; item = item->next) {
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(item, "content");
        if (!cJSON_IsArray(content))
            continue;
        for (const cJSON *part = content->child; part; part = part->next) {
            const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
            if (cJSON_IsString(type) && strcmp(type->valuestring, "output_text") == 0)
                add_string(r, cJSON_GetObjectItemCaseSensitive(part, "text"));
        }
    }
}

/* Given the position of a 'g' in text (at least four bytes in, at least two before the end):
 * when it is the 'g' of a "usage" key followed by an object, where that object starts (its '{');
 * else NULL. Both searches below look for the key's 'g', the rarest of its letters in Azure's
 * JSON (of the usage object's own keys only "reasoning_tokens" has one). */
static const char *usage_object_at(const char *g, const char *end)
{
    const char *p = g - 4;
    if (memcmp(p, "\"usage\"", 7) != 0)
        return NULL;
    const char *q = ag_json_skip_ws(p + 7, end);
    if (q >= end || *q != ':')
        return NULL;
    q = ag_json_skip_ws(q + 1, end);
    return q < end && *q == '{' ? q : NULL;
}

/* Where a non-null "usage" object starts in text (its '{'), or NULL. The last occurrence wins:
 * Azure puts usage at the end, after any text that could mention the word; so the search runs
 * from the end, from one 'g' to the one before. */
static const char *find_usage_object(const char *text, size_t len)
{
    if (len < 7)
        return NULL;
    const char *end = text + len, *g, *obj;
    size_t n = len - 2; /* a 'g' of "usage" has the closing quote two bytes after it */
    while (n > 4 && (g = memrchr(text + 4, 'g', n - 4)) != NULL) {
        if ((obj = usage_object_at(g, end)) != NULL)
            return obj;
        n = (size_t)(g - text); /* the next search ends before this 'g' */
    }
    return NULL;
}

/* Whether text has a "usage" key (or the same bytes anywhere) followed by an object: the prefilter
 * of a streamed event, whose tree then decides. Forward from 'g' to 'g' with memchr, so an event
 * without usage (nearly all of a stream) costs a few vector scans. */
static bool has_usage_object(const char *text, size_t len)
{
    if (len < 7)
        return false;
    const char *end = text + len;
    for (const char *g = text + 4; g + 3 <= end && (g = memchr(g, 'g', (size_t)(end - g - 2))) != NULL; g++)
        if (usage_object_at(g, end))
            return true;
    return false;
}

/* The usage object read in place, without building a tree: the five counters Azure sends, as
 * plain non-negative integers; everything else is skipped. Returns 1 when it read the object
 * (*found tells whether it holds usage), 0 when the object has a shape this fast path leaves to
 * cJSON (escaped keys, fractions or exponents in a counter, anything malformed). */
static int usage_scan(const char *p, const char *end, ag_usage *out, bool *found)
{
    static const char *const keys[5] = {"prompt_tokens", "completion_tokens", "total_tokens", "input_tokens",
                                        "output_tokens"};
    long long v[5] = {-1, -1, -1, -1, -1};
    bool seen[5] = {false};
    if (p >= end || *p != '{')
        return 0;
    p = ag_json_skip_ws(p + 1, end);
    if (p < end && *p == '}')
        goto done;
    for (;;) {
        if (p >= end || *p != '"')
            return 0;
        const char *k = ++p;
        p += ag_json_plain_prefix(p, (size_t)(end - p));
        if (p >= end || *p != '"')
            return 0;
        size_t kl = (size_t)(p - k);
        p = ag_json_skip_ws(p + 1, end);
        if (p >= end || *p != ':')
            return 0;
        p = ag_json_skip_ws(p + 1, end);
        int which = -1;
        for (int i = 0; i < 5; i++)
            if (strlen(keys[i]) == kl && memcmp(keys[i], k, kl) == 0)
                which = i;
        if (which >= 0 && !seen[which]) {
            seen[which] = true; /* the first occurrence counts, as in cJSON */
            if (p < end && *p >= '0' && *p <= '9') {
                long long n = 0;
                int digits = 0;
                if (*p == '0' && p + 1 < end && p[1] >= '0' && p[1] <= '9')
                    return 0; /* a leading zero: not strict JSON */
                while (p < end && *p >= '0' && *p <= '9') {
                    if (++digits > 16)
                        return 0;
                    n = n * 10 + (*p++ - '0');
                }
                if (p >= end || *p == '.' || *p == 'e' || *p == 'E')
                    return 0;
                v[which] = n > 9000000000000000LL ? -1 : n;
            } else if (p < end && *p == '-') {
                return 0;
            } else {
                p = ag_json_skip_value(p, end); /* not a number: the counter is absent */
            }
        } else {
            p = ag_json_skip_value(p, end);
        }
        if (!p)
            return 0;
        p = ag_json_skip_ws(p, end);
        if (p < end && *p == ',') {
            p = ag_json_skip_ws(p + 1, end);
            continue;
        }
        if (p < end && *p == '}')
            break;
        return 0;
    }
done:;
    long long pt = v[0] >= 0 ? v[0] : v[3], ct = v[1] >= 0 ? v[1] : v[4], tt = v[2];
    *found = pt >= 0 || tt >= 0;
    if (*found) {
        out->present = true;
        out->prompt_tokens = pt < 0 ? 0 : pt;
        out->completion_tokens = ct < 0 ? 0 : ct;
        out->total_tokens = tt < 0 ? out->prompt_tokens + out->completion_tokens : tt;
    }
    return 1;
}

/* Usage alone, without parsing the whole document. 1 when one was found. */
static int usage_only_parse(ag_request *r, const char *text, size_t len)
{
    const char *u = find_usage_object(text, len);
    if (!u)
        return 0;
    bool scanned_found = false;
    if (usage_scan(u, text + len, &r->usage, &scanned_found))
        return scanned_found;
    cJSON *obj = cJSON_ParseWithLengthOpts(u, len - (size_t)(u - text), NULL, false);
    int found = obj && ag_usage_parse(obj, &r->usage) == 0;
    cJSON_Delete(obj);
    return found;
}

/* The completion text of a parsed response (chat/completions, completions or responses). */
static void take_text(ag_request *r, const cJSON *root)
{
    const cJSON *object = cJSON_GetObjectItemCaseSensitive(root, "object");
    if (cJSON_IsString(object) && strcmp(object->valuestring, "response") == 0)
        take_responses_text(r, root);
    else
        take_choice_text(r, root, "message");
}

void ag_usage_from_json_tree(ag_request *r, const cJSON *root)
{
    if (!root)
        return;
    ag_usage_parse(cJSON_GetObjectItemCaseSensitive(root, "usage"), &r->usage);
    if (r->want_text)
        take_text(r, root);
}

void ag_usage_from_held_response(ag_request *r, const cJSON *root, const char *body, size_t len)
{
    usage_only_parse(r, body, len);
    if (r->want_text && root)
        take_text(r, root);
}

void ag_usage_from_json_response(ag_request *r, const char *body, size_t len)
{
    if (!r->want_text) {
        usage_only_parse(r, body, len);
        return;
    }
    cJSON *root = cJSON_ParseWithLength(body, len);
    ag_usage_from_json_tree(r, root);
    cJSON_Delete(root);
}

/* Usage and text of one parsed event; 1 when it is the usage-only chunk (no choices). */
static int event_usage(ag_request *r, const cJSON *root)
{
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "type");
    if (cJSON_IsString(type) && strncmp(type->valuestring, "response.", 9) == 0) {
        const char *t = type->valuestring;
        if (strcmp(t, "response.output_text.delta") == 0) {
            add_string(r, cJSON_GetObjectItemCaseSensitive(root, "delta"));
        } else if (strcmp(t, "response.completed") == 0 || strcmp(t, "response.incomplete") == 0 ||
                   strcmp(t, "response.failed") == 0) {
            const cJSON *resp = cJSON_GetObjectItemCaseSensitive(root, "response");
            ag_usage_parse(cJSON_GetObjectItemCaseSensitive(resp, "usage"), &r->usage);
        }
        return 0;
    }
    take_choice_text(r, root, "delta");
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(root, "choices");
    return ag_usage_parse(cJSON_GetObjectItemCaseSensitive(root, "usage"), &r->usage) == 0 &&
           cJSON_IsArray(choices) && cJSON_GetArraySize(choices) == 0;
}

int ag_usage_from_sse_event(ag_request *r, const ag_sse_event *ev)
{
    if (ev->data_len == 6 && memcmp(ev->data, "[DONE]", 6) == 0)
        return 0;
    if (ev->data_len == 0 || ev->data[0] != '{')
        return 0;
    if (!r->want_text) {
        /* Without an audit trail only usage matters: most chunks carry none ("usage":null or no
         * key), so they are not parsed at all. */
        if (!has_usage_object(ev->data, ev->data_len))
            return 0;
    }
    /* The event's tree lives only here: its nodes come from the worker's event arena (a 200-chunk
     * stream parses 200 of them), released once it is deleted. No worker (a test harness): malloc. */
    ag_json_arena *arena = r->worker ? &r->worker->event_arena : NULL;
    if (arena)
        ag_json_arena_enter(arena);
    cJSON *root = cJSON_ParseWithLength(ev->data, ev->data_len);
    ag_json_arena_leave();
    int usage_only = root ? event_usage(r, root) : 0;
    cJSON_Delete(root);
    if (arena)
        ag_json_arena_reset(arena);
    return usage_only;
}
