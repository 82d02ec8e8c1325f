/* Usage and completion text from responses (see usage.h). */
#include "aoai_guard/usage.h"
#include "aoai_guard/chat_chunk.h"
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

/* The usage object at u (its '{'), read in place or, for a shape the scan leaves, by cJSON.
 * 1 when it holds usage (r->usage is then set). */
static int usage_object_read(ag_request *r, const char *u, const char *end)
{
    bool scanned_found = false;
    if (usage_scan(u, end, &r->usage, &scanned_found))
        return scanned_found;
    cJSON *obj = cJSON_ParseWithLengthOpts(u, (size_t)(end - u), NULL, false);
    int found = obj && ag_usage_parse(obj, &r->usage) == 0;
    cJSON_Delete(obj);
    return found;
}

/* Usage alone, without parsing the whole document. 1 when one was found. */
static int usage_only_parse(ag_request *r, const char *text, size_t len)
{
    const char *u = find_usage_object(text, len);
    return u ? usage_object_read(r, u, text + len) : 0;
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

/* Usage and (when wanted) text of one parsed event; 1 when it is the usage-only chunk (no choices). */
static int event_usage(ag_request *r, const cJSON *root)
{
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "type");
    if (cJSON_IsString(type) && strncmp(type->valuestring, "response.", 9) == 0) {
        const char *t = type->valuestring;
        if (strcmp(t, "response.output_text.delta") == 0) {
            if (r->want_text)
                add_string(r, cJSON_GetObjectItemCaseSensitive(root, "delta"));
        } else if (strcmp(t, "response.completed") == 0 || strcmp(t, "response.incomplete") == 0 ||
                   strcmp(t, "response.failed") == 0) {
            const cJSON *resp = cJSON_GetObjectItemCaseSensitive(root, "response");
            ag_usage_parse(cJSON_GetObjectItemCaseSensitive(resp, "usage"), &r->usage);
        }
        return 0;
    }
    if (r->want_text)
        take_choice_text(r, root, "delta");
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(root, "choices");
    return ag_usage_parse(cJSON_GetObjectItemCaseSensitive(root, "usage"), &r->usage) == 0 &&
           cJSON_IsArray(choices) && cJSON_GetArraySize(choices) == 0;
}

/* ---- streamed chat chunks, read in place (chat_chunk.h) ----
 * With the audit's text capture on, every event of a stream is read for its text: a tree of each
 * would cost four times the reading below. */

/* Appends a string token's text: its bytes as they are, or, with an escape, cJSON's reading of
 * the token alone (nodes from arena when given). */
static void add_token(ag_request *r, ag_chunk_value s, ag_json_arena *arena)
{
    if (!ag_chunk_has_escape(s)) {
        ag_request_add_completion(r, s.tok + 1, s.len - 2);
        return;
    }
    if (arena)
        ag_json_arena_enter(arena);
    cJSON *str = cJSON_ParseWithLengthOpts(s.tok, s.len, NULL, false);
    ag_json_arena_leave();
    add_string(r, str);
    cJSON_Delete(str);
    if (arena)
        ag_json_arena_reset(arena);
}

/* The event (a '{' first) read in place: what event_usage() takes from its tree. 1 for the
 * usage-only chunk, 0 for another, -1 when it is left to cJSON (nothing was taken from it then). */
static int chunk_in_place(ag_request *r, const ag_chat_chunk *chunk, const char *data, size_t len,
                          ag_json_arena *arena)
{
    const ag_chat_chunk *ck = chunk;
    bool keep[AG_CHAT_CHUNK_CHOICES];
    for (size_t i = 0; i < ck->nchoices; i++) {
        ag_chunk_value idx = ck->choice[i].index;
        if (ag_chunk_is_number(idx) && !ag_chunk_is_integer(idx))
            return -1; /* whether cJSON's double is 0 is its to say */
        keep[i] = true; /* the audit keeps choice 0, and a choice with an index that is not a number */
        for (size_t k = 0; ag_chunk_is_number(idx) && k < idx.len; k++)
            if (idx.tok[k] >= '1' && idx.tok[k] <= '9')
                keep[i] = false;
    }
    if (r->want_text) {
        for (size_t i = 0; i < ck->nchoices; i++) {
            const ag_chunk_choice *c = &ck->choice[i];
            if (!keep[i])
                continue;
            if (ag_chunk_is_string(c->content))
                add_token(r, c->content, arena);
            if (ag_chunk_is_string(c->text))
                add_token(r, c->text, arena);
        }
    }
    int found = ag_chunk_is_object(ck->usage) ? usage_object_read(r, ck->usage.tok, data + len) : 0;
    return found && ag_chunk_is_array(ck->choices) && ck->nchoices == 0;
}

int ag_usage_from_sse_event_tree(ag_request *r, const ag_sse_event *ev)
{
    if (ev->data_len == 0 || ev->data[0] != '{')
        return 0;
    /* The event's tree lives only here: its nodes come from the worker's event arena, released
     * once it is deleted. No worker (a test harness): malloc. */
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

int ag_usage_from_sse_event_read(ag_request *r, const ag_sse_event *ev, const ag_chat_chunk *ck)
{
    if (ev->data_len == 0 || ev->data[0] != '{')
        return 0; /* "[DONE]" among them */
    int usage_only = ck ? chunk_in_place(r, ck, ev->data, ev->data_len, r->worker ? &r->worker->event_arena : NULL)
                        : -1;
    if (usage_only >= 0)
        return usage_only;
    if (!r->want_text && !has_usage_object(ev->data, ev->data_len))
        return 0; /* without the text only usage matters, and there is none */
    return ag_usage_from_sse_event_tree(r, ev);
}

int ag_usage_from_sse_event(ag_request *r, const ag_sse_event *ev)
{
    if (ev->data_len == 0 || ev->data[0] != '{')
        return 0;
    if (!r->want_text) {
        /* Without an audit trail only usage matters: most chunks carry none ("usage":null or no
         * key), so they are not read at all. */
        if (!has_usage_object(ev->data, ev->data_len))
            return 0;
    }
    ag_chat_chunk ck;
    return ag_usage_from_sse_event_read(r, ev, ag_chat_chunk_read(ev->data, ev->data_len, &ck) ? &ck : NULL);
}
