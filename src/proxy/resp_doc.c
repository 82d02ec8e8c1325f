/* A held JSON response, parsed where the gateway reads it (see resp_doc.h). */
#include "aoai_guard/resp_doc.h"
#include "aoai_guard/json_strict.h"

#include <string.h>

/* The members read: at the top level, and in each element of "choices". */
static bool wanted(int level, const char *key, size_t len)
{
#define IS(s) (len == sizeof(s) - 1 && memcmp(key, s, sizeof(s) - 1) == 0)
    if (level == 0)
        return IS("choices") || IS("output") || IS("object");
    return IS("message") || IS("text") || IS("index");
#undef IS
}

static int step_object(ag_resp_doc *d, const char *text, const char **pp, const char *end, cJSON *obj,
                       int level);

/* Parses the value at p whole into obj[name] and records its span. The value's end or NULL. */
static const char *parse_value(ag_resp_doc *d, const char *text, const char *p, const char *end, cJSON *obj,
                               const char *name)
{
    const char *vend = NULL;
    if (d->nspans == AG_RESP_DOC_SPANS)
        return NULL;
    cJSON *v = cJSON_ParseWithLengthOpts(p, (size_t)(end - p), &vend, false);
    if (!v || !vend || vend <= p || !cJSON_AddItemToObject(obj, name, v)) {
        cJSON_Delete(v);
        return NULL;
    }
    d->spans[d->nspans].start = (size_t)(p - text);
    d->spans[d->nspans].end = (size_t)(vend - text);
    d->nspans++;
    return vend;
}

/* Steps through the "choices" array at *pp (its '['): each element must be an object, stepped
 * through for the members a choice is read for. Sets *pp past the ']'. 0 or -1. */
static int step_choices(ag_resp_doc *d, const char *text, const char **pp, const char *end, cJSON *arr)
{
    const char *p = ag_json_skip_ws(*pp + 1, end);
    if (p < end && *p == ']') {
        *pp = p + 1;
        return 0;
    }
    for (;;) {
        cJSON *el = cJSON_CreateObject();
        if (!el || !cJSON_AddItemToArray(arr, el)) {
            cJSON_Delete(el);
            return -1;
        }
        if (p >= end || *p != '{' || step_object(d, text, &p, end, el, 1) != 0)
            return -1;
        p = ag_json_skip_ws(p, end);
        if (p < end && *p == ',') {
            p = ag_json_skip_ws(p + 1, end);
            continue;
        }
        if (p >= end || *p != ']')
            return -1;
        *pp = p + 1;
        return 0;
    }
}

/* Steps through the object at *pp (its '{'), parsing the members read at this level into obj in
 * their order (choices stepped in turn) and stepping over the others. Sets *pp past the '}'. 0, or
 * -1 when the text is anything the stepper does not follow (obj is then partly built). */
static int step_object(ag_resp_doc *d, const char *text, const char **pp, const char *end, cJSON *obj,
                       int level)
{
    const char *p = ag_json_skip_ws(*pp + 1, end);
    if (p < end && *p == '}') {
        *pp = p + 1;
        return 0;
    }
    for (;;) {
        if (p >= end || *p != '"')
            return -1;
        const char *key = p + 1, *after = ag_json_skip_value(p, end);
        if (!after)
            return -1;
        size_t klen = (size_t)(after - 1 - key);
        if (memchr(key, '\\', klen))
            return -1; /* an escaped key could spell a wanted one */
        p = ag_json_skip_ws(after, end);
        if (p >= end || *p != ':')
            return -1;
        p = ag_json_skip_ws(p + 1, end);
        if (wanted(level, key, klen)) {
            char name[8];
            memcpy(name, key, klen);
            name[klen] = '\0';
            if (level == 0 && klen == 7 && p < end && *p == '[') { /* "choices": stepped, element by element */
                size_t member = (size_t)cJSON_GetArraySize(obj);
                cJSON *arr = cJSON_CreateArray();
                if (member >= 64 || !arr || !cJSON_AddItemToObject(obj, name, arr)) {
                    cJSON_Delete(arr);
                    return -1;
                }
                d->stepped |= 1ull << member;
                if (step_choices(d, text, &p, end, arr) != 0)
                    return -1;
            } else if (!(p = parse_value(d, text, p, end, obj, name))) {
                return -1;
            }
        } else if (!(p = ag_json_skip_value(p, end))) {
            return -1;
        }
        p = ag_json_skip_ws(p, end);
        if (p < end && *p == ',') {
            p = ag_json_skip_ws(p + 1, end);
            continue;
        }
        if (p >= end || *p != '}')
            return -1;
        *pp = p + 1;
        return 0; /* at the top level, what follows is cJSON's business as before: ignored */
    }
}

void ag_resp_doc_init(ag_resp_doc *d)
{
    d->root = NULL; /* the spans are read only below nspans: no need to clear 1 KiB of them */
    d->partial = false;
    d->stepped = 0;
    d->nspans = 0;
}

void ag_resp_doc_parse(ag_resp_doc *d, const char *text, size_t len)
{
    ag_resp_doc_init(d);
    const char *p = ag_json_skip_ws(text, text + len);
    if (p < text + len && *p == '{' && (d->root = cJSON_CreateObject()) &&
        step_object(d, text, &p, text + len, d->root, 0) == 0) {
        d->partial = true;
        return;
    }
    ag_resp_doc_free(d);
    d->root = cJSON_ParseWithLength(text, len);
}

/* Prints member m into part[*k] (the value whose span is spans[*k]). 0 or -1. */
static int print_part(const ag_resp_doc *d, const cJSON *m, char **part, size_t *plen, size_t *k, size_t *total)
{
    if (*k == d->nspans || !(part[*k] = cJSON_PrintUnformatted(m)))
        return -1;
    plen[*k] = strlen(part[*k]);
    *total = *total - (d->spans[*k].end - d->spans[*k].start) + plen[*k];
    (*k)++;
    return 0;
}

char *ag_resp_doc_print(const ag_resp_doc *d, const char *text, size_t len, size_t *out_len)
{
    *out_len = 0;
    if (!d->root)
        return NULL;
    if (!d->partial) {
        char *s = cJSON_PrintUnformatted(d->root);
        if (s)
            *out_len = strlen(s);
        return s;
    }
    /* the parsed values in document order: the spans' order */
    char *part[AG_RESP_DOC_SPANS] = {0};
    size_t plen[AG_RESP_DOC_SPANS], total = len, k = 0, member = 0;
    char *out = NULL;
    for (const cJSON *m = d->root->child; m; m = m->next, member++) {
        if (member < 64 && (d->stepped >> member) & 1u) {
            for (const cJSON *el = m->child; el; el = el->next)
                for (const cJSON *c = el->child; c; c = c->next)
                    if (print_part(d, c, part, plen, &k, &total) != 0)
                        goto done;
        } else if (print_part(d, m, part, plen, &k, &total) != 0) {
            goto done;
        }
    }
    if (k != d->nspans || !(out = cJSON_malloc(total + 1)))
        goto done;
    size_t w = 0, from = 0;
    for (size_t i = 0; i < d->nspans; i++) {
        memcpy(out + w, text + from, d->spans[i].start - from);
        w += d->spans[i].start - from;
        memcpy(out + w, part[i], plen[i]);
        w += plen[i];
        from = d->spans[i].end;
    }
    memcpy(out + w, text + from, len - from);
    w += len - from;
    out[w] = '\0';
    *out_len = w;
done:
    for (size_t i = 0; i < AG_RESP_DOC_SPANS; i++)
        cJSON_free(part[i]);
    return out;
}

void ag_resp_doc_free(ag_resp_doc *d)
{
    cJSON_Delete(d->root);
    ag_resp_doc_init(d);
}
