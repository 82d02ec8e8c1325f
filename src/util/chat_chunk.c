/* A streamed chat.completion.chunk payload read in place (see chat_chunk.h). */
#include "aoai_guard/chat_chunk.h"
#include "aoai_guard/json_strict.h"

#include <string.h>

/* Reads the value at v of one member named k[0..kn) (raw bytes); returns where the value ends, or
 * NULL to refuse the payload. */
typedef const char *(*member_fn)(const char *k, size_t kn, const char *v, const char *end, void *arg);

#define NAME_IS(k, kn, s) ((kn) == sizeof(s) - 1 && memcmp((k), (s), sizeof(s) - 1) == 0)

/* Steps through the object at p (its '{'), calling fn for each member in order. Returns the byte
 * after the '}', or NULL. */
static const char *step_members(const char *p, const char *end, member_fn fn, void *arg)
{
    p = ag_json_skip_ws(p + 1, end);
    if (p < end && *p == '}')
        return p + 1;
    for (;;) {
        if (p >= end || *p != '"')
            return NULL;
        const char *q = ag_json_skip_value(p, end);
        if (!q)
            return NULL;
        const char *k = p + 1;
        size_t kn = (size_t)(q - p) - 2;
        q = ag_json_skip_ws(q, end);
        if (q >= end || *q != ':')
            return NULL;
        p = fn(k, kn, ag_json_skip_ws(q + 1, end), end, arg);
        if (!p)
            return NULL;
        p = ag_json_skip_ws(p, end);
        if (p < end && *p == ',') {
            p = ag_json_skip_ws(p + 1, end);
            continue;
        }
        return p < end && *p == '}' ? p + 1 : NULL;
    }
}

/* Skips the value at v into *slot when the slot is still empty (the first of its name). */
static const char *first(ag_chunk_value *slot, const char *v, const char *end)
{
    const char *q = ag_json_skip_value(v, end);
    if (q && !slot->tok) {
        slot->tok = v;
        slot->len = (size_t)(q - v);
    }
    return q;
}

static const char *delta_member(const char *k, size_t kn, const char *v, const char *end, void *arg)
{
    ag_chunk_choice *c = arg;
    return first(NAME_IS(k, kn, "content") ? &c->content : &(ag_chunk_value){0}, v, end);
}

static const char *choice_member(const char *k, size_t kn, const char *v, const char *end, void *arg)
{
    ag_chunk_choice *c = arg;
    if (NAME_IS(k, kn, "delta")) {
        if (c->delta.tok || v >= end || *v != '{')
            return first(&c->delta, v, end);
        const char *q = step_members(v, end, delta_member, c);
        if (q) {
            c->delta.tok = v;
            c->delta.len = (size_t)(q - v);
        }
        return q;
    }
    ag_chunk_value none = {0}, *slot = &none;
    if (NAME_IS(k, kn, "index"))
        slot = &c->index;
    else if (NAME_IS(k, kn, "text"))
        slot = &c->text;
    else if (NAME_IS(k, kn, "finish_reason"))
        slot = &c->finish_reason;
    return first(slot, v, end);
}

/* The first "choices", an array at v (its '['). */
static const char *choices_value(const char *v, const char *end, ag_chat_chunk *ck)
{
    const char *p = ag_json_skip_ws(v + 1, end);
    if (p < end && *p == ']')
        return p + 1;
    for (;;) {
        if (p >= end || ck->nchoices == AG_CHAT_CHUNK_CHOICES)
            return NULL;
        ag_chunk_choice *c = &ck->choice[ck->nchoices++];
        c->start = p;
        p = *p == '{' ? step_members(p, end, choice_member, c) : ag_json_skip_value(p, end);
        if (!p)
            return NULL;
        c->end = p;
        p = ag_json_skip_ws(p, end);
        if (p < end && *p == ',') {
            p = ag_json_skip_ws(p + 1, end);
            continue;
        }
        return p < end && *p == ']' ? p + 1 : NULL;
    }
}

static const char *top_member(const char *k, size_t kn, const char *v, const char *end, void *arg)
{
    ag_chat_chunk *ck = arg;
    if (NAME_IS(k, kn, "type"))
        return NULL; /* a Responses API event, or one that could be read as one */
    if (NAME_IS(k, kn, "choices")) {
        if (ck->choices.tok || v >= end || *v != '[')
            return first(&ck->choices, v, end);
        const char *q = choices_value(v, end, ck);
        if (q) {
            ck->choices.tok = v;
            ck->choices.len = (size_t)(q - v);
        }
        return q;
    }
    ag_chunk_value none = {0}, *slot = &none;
    if (NAME_IS(k, kn, "usage"))
        slot = &ck->usage;
    else if (NAME_IS(k, kn, "id"))
        slot = &ck->id;
    else if (NAME_IS(k, kn, "model"))
        slot = &ck->model;
    else if (NAME_IS(k, kn, "created"))
        slot = &ck->created;
    return first(slot, v, end);
}

bool ag_chat_chunk_read(const char *data, size_t len, ag_chat_chunk *out)
{
    memset(out, 0, sizeof *out);
    const char *end = len > 0 && data[0] == '{' ? step_members(data, data + len, top_member, out) : NULL;
    out->object_len = end ? (size_t)(end - data) : 0;
    return end != NULL;
}

bool ag_chunk_is_string(ag_chunk_value v)
{
    return v.tok && v.tok[0] == '"';
}

bool ag_chunk_is_object(ag_chunk_value v)
{
    return v.tok && v.tok[0] == '{';
}

bool ag_chunk_is_array(ag_chunk_value v)
{
    return v.tok && v.tok[0] == '[';
}

bool ag_chunk_is_number(ag_chunk_value v)
{
    return v.tok && (v.tok[0] == '-' || (v.tok[0] >= '0' && v.tok[0] <= '9'));
}

bool ag_chunk_is_integer(ag_chunk_value v)
{
    return ag_chunk_is_number(v) && !memchr(v.tok, '.', v.len) && !memchr(v.tok, 'e', v.len) &&
           !memchr(v.tok, 'E', v.len);
}

bool ag_chunk_has_escape(ag_chunk_value v)
{
    return ag_chunk_is_string(v) && memchr(v.tok + 1, '\\', v.len - 2) != NULL;
}
