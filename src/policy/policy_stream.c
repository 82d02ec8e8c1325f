/* Response-side rules on SSE streams with a bounded hold-back window (see policy_stream.h). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aoai_guard/policy_stream.h"
#include "aoai_guard/chat_chunk.h"
#include "aoai_guard/json_strict.h"
#include "policy/policy_int.h"

#define PEM_END "-----END "
#define PEM_END_LEN 9

int ag_policy_stream_init(ag_policy_stream *st, const ag_policy *pol, const ag_policy_call *call)
{
    memset(st, 0, sizeof *st);
    st->policy = pol;
    st->holdback = pol->holdback;
    size_t n = pol->nrules ? pol->nrules : 1;
    st->active = calloc((n + 63) / 64, sizeof *st->active);
    st->spans = calloc(n, sizeof *st->spans);
    st->errors = calloc(n, sizeof *st->errors);
    st->cap = 3 * st->holdback + 16;
    st->buf = malloc(st->cap);
    if (!st->active || !st->spans || !st->errors || !st->buf) {
        ag_policy_stream_free(st);
        return -1;
    }
    ag_pol_view view;
    ag_pol_view_build(pol, call, call ? call->deployment : NULL, AG_DIR_RESPONSE, st->active, &view);
    st->det_mask = view.det_mask;
    st->keywords = view.keywords;
    st->regex = view.regex;
    st->any_rules = view.det_mask || view.keywords || view.regex;
    return 0;
}

void ag_policy_stream_free(ag_policy_stream *st)
{
    free(st->active);
    free(st->spans);
    free(st->errors);
    free(st->buf);
    free(st->out);
    memset(st, 0, sizeof *st);
}

size_t ag_policy_stream_held(const ag_policy_stream *st)
{
    return st->len;
}

static int out_append(ag_policy_stream *st, const char *p, size_t n)
{
    if (st->out_len + n + 1 > st->out_cap) {
        size_t cap = st->out_cap ? st->out_cap : 512;
        while (cap < st->out_len + n + 1)
            cap *= 2;
        char *o = realloc(st->out, cap);
        if (!o)
            return -1;
        st->out = o;
        st->out_cap = cap;
    }
    memcpy(st->out + st->out_len, p, n);
    st->out_len += n;
    st->out[st->out_len] = '\0';
    return 0;
}

static void drop_front(ag_policy_stream *st, size_t n)
{
    if (n >= st->len) {
        st->len = 0;
        return;
    }
    memmove(st->buf, st->buf + n, st->len - n);
    st->len -= n;
}

/* Inside a redacted PEM block: swallow text up to and including its END line. Returns true when
 * the block ended (normal processing resumes on what is left). */
static bool swallow_pem(ag_policy_stream *st, bool final)
{
    const char *e = memmem(st->buf, st->len, PEM_END, PEM_END_LEN);
    if (!e) {
        /* keep a tail that may be the start of a split END marker */
        if (final)
            st->len = 0;
        else if (st->len > PEM_END_LEN)
            drop_front(st, st->len - PEM_END_LEN);
        return final;
    }
    size_t x = (size_t)(e - st->buf), q = x + PEM_END_LEN;
    while (q < st->len && q - x < 80 && ((st->buf[q] >= 'A' && st->buf[q] <= 'Z') || st->buf[q] == ' '))
        q++;
    if (q + 5 <= st->len && memcmp(st->buf + q, "-----", 5) == 0) {
        drop_front(st, q + 5);
        return true;
    }
    size_t dashes = 0;
    while (q + dashes < st->len && st->buf[q + dashes] == '-')
        dashes++;
    if (q + dashes >= st->len && q - x < 80 && !final) { /* END line not complete yet */
        drop_front(st, x);
        return false;
    }
    drop_front(st, q); /* malformed END line: stop swallowing there */
    return true;
}

/* Scans the held text, emits what may be emitted (redacted) and keeps the rest. */
static int process(ag_policy_stream *st, ag_policy_scratch *s, bool final)
{
    const ag_policy *pol = st->policy;
    size_t H = st->holdback;
    if (st->suppress) {
        if (!swallow_pem(st, final))
            return 0;
        st->suppress = false;
    }
    if (st->len == 0 || (!final && st->len < H + H / 4))
        return 0;
    if (ag_pol_scratch_fit(s, pol) != 0)
        return -1;
    ag_pol_view view = {st->active, st->det_mask, st->keywords, st->regex, false, AG_DIR_RESPONSE};
    s->nm = 0;
    memset(s->errs, 0, (pol->nrules ? pol->nrules : 1) * sizeof *s->errs);
    if (ag_pol_scan(pol, s, &view, st->buf, st->len, 0) != 0)
        return -1;
    for (size_t r = 0; r < pol->nrules; r++)
        st->errors[r] += s->errs[r];
    ag_pol_sort_matches(s->m, s->nm);

    size_t len = st->len, E = len;
    if (!final) {
        E = len - H;
        /* not inside a character: back over at most the three continuation bytes one can have (a
         * longer run is not UTF-8, and walking it all back would stop the emission for good) */
        for (int k = 0; k < 3 && E > 0 && ((unsigned char)st->buf[E] & 0xC0) == 0x80; k++)
            E--;
        /* hold a match that reaches into the held part, as long as the hold stays within 2H */
        bool extend = false;
        for (;;) {
            bool moved = false;
            for (size_t k = 0; k < s->nm; k++) {
                const ag_pol_match *m = &s->m[k];
                if (m->start < E && m->end > E) {
                    if (len - m->start <= 2 * H) {
                        E = m->start;
                        moved = true;
                    } else {
                        extend = true;
                    }
                    break;
                }
            }
            if (!moved || extend)
                break;
        }
        if (extend) { /* too long to hold: emit it whole, redacted */
            for (bool again = true; again;) {
                again = false;
                for (size_t k = 0; k < s->nm; k++)
                    if (s->m[k].start < E && s->m[k].end > E) {
                        E = s->m[k].end;
                        again = true;
                    }
            }
        }
    }
    /* matches that start before E are final: count and redact them */
    size_t nfinal = 0;
    bool open_redacted = false;
    while (nfinal < s->nm && s->m[nfinal].start < E) {
        const ag_pol_match *m = &s->m[nfinal];
        st->spans[m->rule]++;
        if (m->open && ag_pol_rewrites(&pol->rules[m->rule], AG_DIR_RESPONSE))
            open_redacted = true;
        nfinal++;
    }
    if (E > 0) {
        size_t n = ag_pol_redact(pol, s, st->buf, E, s->m, nfinal, AG_DIR_RESPONSE);
        if (n == (size_t)-1 || out_append(st, s->buf, n) != 0)
            return -1;
    }
    drop_front(st, E);
    if (open_redacted && !final)
        st->suppress = true;
    return 0;
}

static int feed_slices(ag_policy_stream *st, ag_policy_scratch *s, const char *delta, size_t len)
{
    size_t H = st->holdback;
    while (len > 0) {
        size_t take = len < H ? len : H;
        if (st->len + take > st->cap)
            return -1; /* cannot happen: process() keeps len <= 2H */
        memcpy(st->buf + st->len, delta, take);
        st->len += take;
        delta += take;
        len -= take;
        if (process(st, s, false) != 0)
            return -1;
        if (st->len > st->max_held)
            st->max_held = st->len;
    }
    return 0;
}

int ag_policy_stream_feed(ag_policy_stream *st, ag_policy_scratch *s, const char *delta,
                          size_t len, const char **out, size_t *out_len)
{
    if (!st->any_rules) {
        *out = delta;
        *out_len = len;
        return 0;
    }
    st->out_len = 0;
    if (out_append(st, "", 0) != 0 || feed_slices(st, s, delta, len) != 0)
        return -1;
    *out = st->out;
    *out_len = st->out_len;
    return 0;
}

int ag_policy_stream_finish(ag_policy_stream *st, ag_policy_scratch *s, const char **out,
                            size_t *out_len)
{
    st->out_len = 0;
    if (out_append(st, "", 0) != 0)
        return -1;
    if (st->any_rules && process(st, s, true) != 0)
        return -1;
    st->len = 0;
    st->suppress = false;
    *out = st->out;
    *out_len = st->out_len;
    return 0;
}

void ag_policy_stream_decisions(const ag_policy_stream *st, ag_policy_decisions *dec)
{
    const ag_policy *pol = st->policy;
    if (!pol || !st->spans)
        return;
    for (size_t r = 0; r < pol->nrules; r++) {
        if (!st->spans[r] && !st->errors[r])
            continue;
        const ag_pol_rule *ru = &pol->rules[r];
        ag_policy_decision d = {ru->name, ag_pol_rule_source(ru),
                                ru->action == AG_ACT_BLOCK ? AG_ACT_REDACT : ru->action,
                                AG_DIR_RESPONSE, st->spans[r], st->errors[r]};
        ag_policy_decisions_add(dec, &d);
    }
}

/* ---- SSE events ---- */

void ag_policy_sse_init(ag_policy_sse *sse, const ag_policy *pol, const ag_policy_call *call)
{
    memset(sse, 0, sizeof *sse);
    sse->policy = pol;
    if (call)
        sse->call = *call;
}

void ag_policy_sse_free(ag_policy_sse *sse)
{
    for (size_t k = 0; k < AG_POLICY_SSE_SLOTS; k++)
        if (sse->slots[k].used)
            ag_policy_stream_free(&sse->slots[k].st);
    memset(sse, 0, sizeof *sse);
}

void ag_policy_sse_decisions(const ag_policy_sse *sse, ag_policy_decisions *dec)
{
    for (size_t k = 0; k < AG_POLICY_SSE_SLOTS; k++)
        if (sse->slots[k].used)
            ag_policy_stream_decisions(&sse->slots[k].st, dec);
}

/* The stream for key, created on first use; NULL when the slots are full (or out of memory,
 * *err set). */
static ag_policy_stream *slot_for(ag_policy_sse *sse, long key, bool create, int *err)
{
    for (size_t k = 0; k < AG_POLICY_SSE_SLOTS; k++)
        if (sse->slots[k].used && sse->slots[k].key == key)
            return &sse->slots[k].st;
    if (!create)
        return NULL;
    for (size_t k = 0; k < AG_POLICY_SSE_SLOTS; k++)
        if (!sse->slots[k].used) {
            if (ag_policy_stream_init(&sse->slots[k].st, sse->policy, &sse->call) != 0) {
                *err = 1;
                return NULL;
            }
            sse->slots[k].used = true;
            sse->slots[k].key = key;
            return &sse->slots[k].st;
        }
    sse->overflow++;
    return NULL;
}

/* Redacts one string node with no hold-back (overflow choices, .done texts). */
static int rewrite_whole(ag_policy_sse *sse, ag_policy_scratch *s, cJSON *node, bool count)
{
    ag_policy_stream tmp;
    if (ag_policy_stream_init(&tmp, sse->policy, &sse->call) != 0)
        return -1;
    const char *out;
    size_t out_len;
    int rc = 0;
    if (!tmp.any_rules) {
        ag_policy_stream_free(&tmp);
        return 0;
    }
    const char *v = node->valuestring;
    size_t vl = strlen(v);
    /* one final pass over the whole text: feed without processing, then finish */
    if (vl + 1 > tmp.cap) {
        char *b = realloc(tmp.buf, vl + 1);
        if (!b) {
            ag_policy_stream_free(&tmp);
            return -1;
        }
        tmp.buf = b;
        tmp.cap = vl + 1;
    }
    memcpy(tmp.buf, v, vl);
    tmp.len = vl;
    if (ag_policy_stream_finish(&tmp, s, &out, &out_len) != 0) {
        rc = -1;
    } else if (out_len != vl || memcmp(out, v, vl) != 0) {
        rc = cJSON_SetValuestring(node, out) ? 1 : -1;
    }
    if (count && rc >= 0) {
        /* decisions of overflow choices are kept on the first slot's stream when there is one */
        for (size_t k = 0; k < AG_POLICY_SSE_SLOTS; k++)
            if (sse->slots[k].used) {
                for (size_t r = 0; r < sse->policy->nrules; r++) {
                    sse->slots[k].st.spans[r] += tmp.spans[r];
                    sse->slots[k].st.errors[r] += tmp.errors[r];
                }
                break;
            }
    }
    ag_policy_stream_free(&tmp);
    return rc;
}

static cJSON *get(const cJSON *obj, const char *key)
{
    return cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
}

static long num(const cJSON *v, long dflt)
{
    return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < 1e6 ? (long)v->valuedouble
                                                                              : dflt;
}

/* Sets node (or creates field name in holder) to text; returns 0 or -1. */
static int set_text(cJSON *holder, const char *name, cJSON *node, const char *text)
{
    if (node)
        return cJSON_SetValuestring(node, text) ? 0 : -1;
    return cJSON_AddStringToObject(holder, name, text) ? 0 : -1;
}

static int rewrite_chat(ag_policy_sse *sse, ag_policy_scratch *s, cJSON *data)
{
    cJSON *id = get(data, "id"), *model = get(data, "model"), *created = get(data, "created");
    if (cJSON_IsString(id) && id->valuestring[0])
        snprintf(sse->id, sizeof sse->id, "%s", id->valuestring);
    if (cJSON_IsString(model) && model->valuestring[0])
        snprintf(sse->model, sizeof sse->model, "%s", model->valuestring);
    if (cJSON_IsNumber(created) && created->valuedouble > 0)
        sse->created = created->valuedouble;
    cJSON *choices = get(data, "choices");
    if (!cJSON_IsArray(choices))
        return 0;
    int changed = 0;
    long pos = 0;
    for (cJSON *c = choices->child; c; c = c->next, pos++) {
        long idx = num(get(c, "index"), pos);
        cJSON *delta = get(c, "delta");
        cJSON *node = get(delta, "content");
        const char *field = "content";
        cJSON *holder = cJSON_IsObject(delta) ? delta : NULL;
        if (!cJSON_IsString(node)) {
            node = NULL;
            cJSON *text = get(c, "text"); /* legacy completions */
            if (cJSON_IsString(text)) {
                node = text;
                field = "text";
                holder = c;
            }
        }
        int err = 0;
        ag_policy_stream *st = slot_for(sse, idx, node != NULL, &err);
        if (err)
            return -1;
        if (node && !st) { /* more choices than slots: no hold-back for this one */
            int rc = rewrite_whole(sse, s, node, true);
            if (rc < 0)
                return -1;
            changed |= rc;
        } else if (node) {
            const char *out;
            size_t out_len;
            if (ag_policy_stream_feed(st, s, node->valuestring, strlen(node->valuestring), &out,
                                      &out_len) != 0)
                return -1;
            if (out != node->valuestring) {
                if (!cJSON_SetValuestring(node, out))
                    return -1;
                changed = 1;
            }
        }
        cJSON *fin = get(c, "finish_reason");
        if (st && cJSON_IsString(fin)) {
            const char *out;
            size_t out_len;
            if (ag_policy_stream_finish(st, s, &out, &out_len) != 0)
                return -1;
            if (out_len > 0) {
                if (!holder) { /* no delta object: create one */
                    holder = cJSON_AddObjectToObject(c, "delta");
                    if (!holder)
                        return -1;
                    field = "content";
                }
                size_t have = node ? strlen(node->valuestring) : 0;
                char *joined = malloc(have + out_len + 1);
                if (!joined)
                    return -1;
                if (have)
                    memcpy(joined, node->valuestring, have);
                memcpy(joined + have, out, out_len + 1);
                int rc = set_text(holder, field, node, joined);
                free(joined);
                if (rc != 0)
                    return -1;
                changed = 1;
            }
        }
    }
    return changed;
}

/* ---- chat chunks without a tree (ag_policy_sse_rewrite_chunk): rewrite_chat's reading and
 * decisions on a payload read in place; the changed strings are spliced into the payload's own
 * bytes instead of printing a tree of it. ---- */

/* A number token's value as cJSON reads it (strtod of the token); false for a token longer than
 * cJSON's 63-byte number buffer. */
static bool token_double(ag_chunk_value v, double *out)
{
    bool neg = v.tok[0] == '-';
    if (v.len - neg <= 15 && ag_chunk_is_integer(v)) { /* exact in a double, as strtod gives it */
        uint64_t n = 0;
        for (size_t i = neg; i < v.len; i++)
            n = n * 10 + (uint64_t)(v.tok[i] - '0');
        *out = neg ? -(double)n : (double)n;
        return true;
    }
    char buf[64];
    if (v.len >= sizeof buf)
        return false;
    memcpy(buf, v.tok, v.len);
    buf[v.len] = '\0';
    *out = strtod(buf, NULL);
    return true;
}

/* Copies a string token's text without escapes into dst[cap] as snprintf("%s") would (cut). */
static void copy_plain(char *dst, size_t cap, ag_chunk_value v)
{
    size_t n = v.len - 2 < cap - 1 ? v.len - 2 : cap - 1;
    memcpy(dst, v.tok + 1, n);
    dst[n] = '\0';
}

/* A malloc'd copy of text[0..len) up to its first NUL, as cJSON_SetValuestring keeps it. */
static char *copy_text(const char *text, size_t len)
{
    size_t n = strnlen(text, len);
    char *c = malloc(n + 1);
    if (c) {
        memcpy(c, text, n);
        c[n] = '\0';
    }
    return c;
}

/* One change to the payload: the bytes [from, to) become text (from == to: inserted). */
typedef struct chunk_edit {
    const char *from, *to;
    char *text; /* malloc'd */
} chunk_edit;

/* The edit that sets a choice's text to val: its string token replaced, or a "content" member
 * appended to its delta object (as cJSON_AddStringToObject appends). NULL text on out of memory. */
static chunk_edit text_edit(const ag_chunk_value *node, ag_chunk_value delta, const char *val)
{
    chunk_edit e = {0};
    size_t vn = strlen(val), tn;
    char *tok;
    if (ag_json_plain_prefix(val, vn) == vn) { /* nothing to escape: cJSON would print it as it is */
        if (!(tok = cJSON_malloc(vn + 3)))
            return e;
        tok[0] = '"';
        memcpy(tok + 1, val, vn);
        memcpy(tok + 1 + vn, "\"", 2);
    } else {
        cJSON *str = cJSON_CreateString(val);
        tok = str ? cJSON_PrintUnformatted(str) : NULL;
        cJSON_Delete(str);
        if (!tok)
            return e;
    }
    tn = strlen(tok);
    if (node) {
        e.from = node->tok;
        e.to = node->tok + node->len;
    } else {
        e.from = e.to = delta.tok + delta.len - 1; /* before the delta's '}' */
    }
    bool comma = !node && *ag_json_skip_ws(delta.tok + 1, e.from) != '}';
    static const char member[] = "\"content\":";
    size_t pre = node ? 0 : (comma ? 1 : 0) + sizeof member - 1;
    e.text = malloc(pre + tn + 1);
    if (e.text) {
        if (!node) {
            if (comma)
                e.text[0] = ',';
            memcpy(e.text + (comma ? 1 : 0), member, sizeof member - 1);
        }
        memcpy(e.text + pre, tok, tn + 1);
    }
    cJSON_free(tok);
    return e;
}

/* What the tree path would do differently, decided before anything changes: 0 with each choice's
 * stream key and text (NULL: none) and the chunk's "created", or -2 to leave the chunk to it. */
static int chunk_plan(const ag_policy_sse *sse, const ag_chat_chunk *ck, long keys[], const ag_chunk_value *nodes[],
                      double *created)
{
    *created = 0;
    if (ag_chunk_has_escape(ck->id) || ag_chunk_has_escape(ck->model) ||
        (ag_chunk_is_number(ck->created) && !token_double(ck->created, created)))
        return -2;
    long added[AG_CHAT_CHUNK_CHOICES];
    size_t nadded = 0, free_slots = 0;
    for (size_t k = 0; k < AG_POLICY_SSE_SLOTS; k++)
        free_slots += !sse->slots[k].used;
    for (size_t i = 0; i < ck->nchoices; i++) {
        const ag_chunk_choice *c = &ck->choice[i];
        double v;
        keys[i] = (long)i;
        if (ag_chunk_is_number(c->index)) { /* num(): the double, cut to a long, when in range */
            if (!token_double(c->index, &v))
                return -2;
            if (v >= 0 && v < 1e6)
                keys[i] = (long)v;
        }
        /* content is only read from an object delta (chat_chunk.h) */
        nodes[i] = ag_chunk_is_string(c->content) ? &c->content : ag_chunk_is_string(c->text) ? &c->text : NULL;
        if (ag_chunk_is_string(c->finish_reason) && !nodes[i] && !ag_chunk_is_object(c->delta))
            return -2; /* the tree path may have to add a delta object */
        if (!nodes[i])
            continue;
        bool known = false;
        for (size_t k = 0; k < AG_POLICY_SSE_SLOTS && !known; k++)
            known = sse->slots[k].used && sse->slots[k].key == keys[i];
        for (size_t k = 0; k < nadded && !known; k++)
            known = added[k] == keys[i];
        if (!known) {
            if (nadded == free_slots)
                return -2; /* beyond the slots: redacted whole, on the tree */
            added[nadded++] = keys[i];
        }
    }
    return 0;
}

/* rewrite_chat's steps for one choice: its text fed to its stream, and at its finish what the stream
 * still holds appended. *val: the choice's new text (malloc'd), or NULL when it is unchanged.
 * 0, or -1 when out of memory. */
static int choice_text(ag_policy_sse *sse, ag_policy_scratch *s, const ag_chunk_choice *c, const ag_chunk_value *node,
                       long key, char **val)
{
    *val = NULL;
    int err = 0;
    ag_policy_stream *st = slot_for(sse, key, node != NULL, &err);
    if (err || (node && !st))
        return -1;
    const char *t = NULL, *o;
    size_t tl = 0, ol;
    cJSON *unescaped = NULL;
    int rc = 0;
    if (node && ag_chunk_has_escape(*node)) {
        unescaped = cJSON_ParseWithLengthOpts(node->tok, node->len, NULL, false);
        if (!cJSON_IsString(unescaped))
            rc = -1;
        else
            tl = strlen(t = unescaped->valuestring);
    } else if (node) {
        t = node->tok + 1;
        tl = node->len - 2;
    }
    if (rc == 0 && node) {
        if (ag_policy_stream_feed(st, s, t, tl, &o, &ol) != 0 || (o != t && !(*val = copy_text(o, ol))))
            rc = -1;
    }
    if (rc == 0 && st && ag_chunk_is_string(c->finish_reason)) {
        if (ag_policy_stream_finish(st, s, &o, &ol) != 0) {
            rc = -1;
        } else if (ol > 0) { /* joined as set_text() joins them: up to each part's first NUL */
            const char *have = *val ? *val : t;
            size_t hl = *val ? strlen(*val) : tl, on = strnlen(o, ol);
            char *joined = malloc(hl + on + 1);
            if (joined) {
                if (hl)
                    memcpy(joined, have, hl);
                memcpy(joined + hl, o, on);
                joined[hl + on] = '\0';
            }
            free(*val);
            *val = joined;
            rc = joined ? 0 : -1;
        }
    }
    cJSON_Delete(unescaped);
    if (rc != 0) {
        free(*val);
        *val = NULL;
    }
    return rc;
}

/* data[0..object_len) with each edit applied (edits in document order); NULL when out of memory. */
static char *splice(const char *data, size_t object_len, const chunk_edit *edits, size_t n, size_t *out_len)
{
    size_t total = object_len;
    for (size_t i = 0; i < n; i++)
        total += strlen(edits[i].text) - (size_t)(edits[i].to - edits[i].from);
    char *buf = malloc(total + 1), *w = buf;
    if (!buf)
        return NULL;
    const char *r = data;
    for (size_t i = 0; i < n; i++) {
        memcpy(w, r, (size_t)(edits[i].from - r));
        w += edits[i].from - r;
        size_t tn = strlen(edits[i].text);
        memcpy(w, edits[i].text, tn);
        w += tn;
        r = edits[i].to;
    }
    memcpy(w, r, (size_t)(data + object_len - r));
    buf[total] = '\0';
    *out_len = total;
    return buf;
}

int ag_policy_sse_rewrite_chunk(ag_policy_sse *sse, ag_policy_scratch *s, const char *data,
                                const ag_chat_chunk *ck, char **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    if (!sse->policy)
        return 0;
    long keys[AG_CHAT_CHUNK_CHOICES];
    const ag_chunk_value *nodes[AG_CHAT_CHUNK_CHOICES];
    double created;
    if (chunk_plan(sse, ck, keys, nodes, &created) != 0)
        return -2;
    if (ag_chunk_is_string(ck->id) && ck->id.len > 2)
        copy_plain(sse->id, sizeof sse->id, ck->id);
    if (ag_chunk_is_string(ck->model) && ck->model.len > 2)
        copy_plain(sse->model, sizeof sse->model, ck->model);
    if (ag_chunk_is_number(ck->created) && created > 0)
        sse->created = created;
    if (!ag_chunk_is_array(ck->choices))
        return 0;
    chunk_edit edits[AG_CHAT_CHUNK_CHOICES];
    size_t nedits = 0;
    int rc = 0;
    for (size_t i = 0; i < ck->nchoices && rc == 0; i++) {
        char *val;
        rc = choice_text(sse, s, &ck->choice[i], nodes[i], keys[i], &val);
        if (rc == 0 && val) {
            edits[nedits] = text_edit(nodes[i], ck->choice[i].delta, val);
            rc = edits[nedits].text ? 0 : -1;
            nedits += rc == 0;
        }
        free(val);
    }
    if (rc == 0 && nedits > 0)
        rc = (*out = splice(data, ck->object_len, edits, nedits, out_len)) ? 1 : -1;
    for (size_t i = 0; i < nedits; i++)
        free(edits[i].text);
    return rc;
}

static int rewrite_responses(ag_policy_sse *sse, ag_policy_scratch *s, cJSON *data,
                             const char *type, cJSON **before)
{
    sse->responses_api = true;
    long key = num(get(data, "output_index"), 0) * 1024 + num(get(data, "content_index"), 0);
    int err = 0;
    if (strcmp(type, "response.output_text.delta") == 0) {
        cJSON *node = get(data, "delta");
        if (!cJSON_IsString(node))
            return 0;
        ag_policy_stream *st = slot_for(sse, key, true, &err);
        if (err)
            return -1;
        if (!st)
            return rewrite_whole(sse, s, node, true);
        const char *out;
        size_t out_len;
        if (ag_policy_stream_feed(st, s, node->valuestring, strlen(node->valuestring), &out,
                                  &out_len) != 0)
            return -1;
        if (out == node->valuestring)
            return 0;
        return cJSON_SetValuestring(node, out) ? 1 : -1;
    }
    if (strcmp(type, "response.output_text.done") == 0) {
        ag_policy_stream *st = slot_for(sse, key, false, &err);
        if (st) {
            const char *out;
            size_t out_len;
            if (ag_policy_stream_finish(st, s, &out, &out_len) != 0)
                return -1;
            if (out_len > 0) {
                cJSON *ev = cJSON_CreateObject();
                cJSON *item = get(data, "item_id");
                if (!ev || !cJSON_AddStringToObject(ev, "type", "response.output_text.delta") ||
                    (cJSON_IsString(item) &&
                     !cJSON_AddStringToObject(ev, "item_id", item->valuestring)) ||
                    !cJSON_AddNumberToObject(ev, "output_index", (double)(key / 1024)) ||
                    !cJSON_AddNumberToObject(ev, "content_index", (double)(key % 1024)) ||
                    !cJSON_AddStringToObject(ev, "delta", out)) {
                    cJSON_Delete(ev);
                    return -1;
                }
                *before = ev;
            }
        }
        cJSON *text = get(data, "text");
        if (cJSON_IsString(text))
            return rewrite_whole(sse, s, text, false);
        return 0;
    }
    cJSON *resp = get(data, "response");
    if (cJSON_IsObject(resp)) { /* response.completed / incomplete / in_progress: full copy */
        bool modified = false;
        if (ag_pol_response_tree(sse->policy, s, &sse->call, resp, NULL, &modified) != 0)
            return -1;
        return modified ? 1 : 0;
    }
    return 0;
}

int ag_policy_sse_rewrite(ag_policy_sse *sse, ag_policy_scratch *s, cJSON *data, cJSON **before)
{
    *before = NULL;
    if (!cJSON_IsObject(data) || !sse->policy)
        return 0;
    cJSON *type = get(data, "type");
    if (cJSON_IsString(type) && strncmp(type->valuestring, "response.", 9) == 0)
        return rewrite_responses(sse, s, data, type->valuestring, before);
    return rewrite_chat(sse, s, data);
}

cJSON *ag_policy_sse_end(ag_policy_sse *sse, ag_policy_scratch *s, bool *err)
{
    *err = false;
    cJSON *events = NULL, *chunk = NULL, *choices = NULL;
    for (size_t k = 0; k < AG_POLICY_SSE_SLOTS; k++) {
        struct ag_policy_sse_slot *sl = &sse->slots[k];
        if (!sl->used || (sl->st.len == 0 && !sl->st.suppress))
            continue;
        const char *out;
        size_t out_len;
        if (ag_policy_stream_finish(&sl->st, s, &out, &out_len) != 0)
            goto oom;
        if (out_len == 0)
            continue;
        if (!events && !(events = cJSON_CreateArray()))
            goto oom;
        if (sse->responses_api) {
            cJSON *ev = cJSON_CreateObject();
            if (!ev)
                goto oom;
            cJSON_AddItemToArray(events, ev);
            if (!cJSON_AddStringToObject(ev, "type", "response.output_text.delta") ||
                !cJSON_AddNumberToObject(ev, "output_index", (double)(sl->key / 1024)) ||
                !cJSON_AddNumberToObject(ev, "content_index", (double)(sl->key % 1024)) ||
                !cJSON_AddStringToObject(ev, "delta", out))
                goto oom;
            continue;
        }
        if (!chunk) {
            chunk = cJSON_CreateObject();
            if (!chunk)
                goto oom;
            cJSON_AddItemToArray(events, chunk);
            if (!cJSON_AddStringToObject(chunk, "id", sse->id) ||
                !cJSON_AddStringToObject(chunk, "object", "chat.completion.chunk") ||
                !cJSON_AddNumberToObject(chunk, "created", sse->created) ||
                !cJSON_AddStringToObject(chunk, "model", sse->model) ||
                !(choices = cJSON_AddArrayToObject(chunk, "choices")))
                goto oom;
        }
        cJSON *c = cJSON_CreateObject();
        if (!c)
            goto oom;
        cJSON_AddItemToArray(choices, c);
        cJSON *d;
        if (!cJSON_AddNumberToObject(c, "index", (double)sl->key) ||
            !(d = cJSON_AddObjectToObject(c, "delta")) ||
            !cJSON_AddStringToObject(d, "content", out) || !cJSON_AddNullToObject(c, "finish_reason"))
            goto oom;
    }
    return events;
oom:
    cJSON_Delete(events);
    *err = true;
    return NULL;
}
