/* A held JSON response, parsed where the gateway reads it (see resp_doc.h). */
#include "aoai_guard/resp_doc.h"
#include "aoai_guard/json_strict.h"

#include <string.h>

/* The top-level members the response policy and the audit text read. */
static bool wanted(const char *key, size_t len)
{
    return (len == 7 && memcmp(key, "choices", 7) == 0) || (len == 6 && memcmp(key, "output", 6) == 0) ||
           (len == 6 && memcmp(key, "object", 6) == 0);
}

/* Steps through the top-level object, parsing the wanted members into d->root. 0, or -1 when the
 * text is anything the stepper does not follow (d->root is then partly built). */
static int parse_members(ag_resp_doc *d, const char *text, size_t len)
{
    const char *p = text, *end = text + len;
    p = ag_json_skip_ws(p, end);
    if (p >= end || *p != '{' || !(d->root = cJSON_CreateObject()))
        return -1;
    p = ag_json_skip_ws(p + 1, end);
    if (p < end && *p == '}')
        return 0;
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
        if (wanted(key, klen)) {
            const char *vend = NULL;
            if (d->nspans == AG_RESP_DOC_SPANS)
                return -1;
            cJSON *v = cJSON_ParseWithLengthOpts(p, (size_t)(end - p), &vend, false);
            if (!v || !vend || vend <= p) {
                cJSON_Delete(v);
                return -1;
            }
            char name[8];
            memcpy(name, key, klen);
            name[klen] = '\0';
            if (!cJSON_AddItemToObject(d->root, name, v)) {
                cJSON_Delete(v);
                return -1;
            }
            d->spans[d->nspans].start = (size_t)(p - text);
            d->spans[d->nspans].end = (size_t)(vend - text);
            d->nspans++;
            p = vend;
        } else if (!(p = ag_json_skip_value(p, end))) {
            return -1;
        }
        p = ag_json_skip_ws(p, end);
        if (p < end && *p == ',') {
            p = ag_json_skip_ws(p + 1, end);
            continue;
        }
        return p < end && *p == '}' ? 0 : -1; /* what follows is cJSON's business as before: ignored */
    }
}

void ag_resp_doc_parse(ag_resp_doc *d, const char *text, size_t len)
{
    memset(d, 0, sizeof *d);
    if (parse_members(d, text, len) == 0) {
        d->partial = true;
        return;
    }
    ag_resp_doc_free(d);
    d->root = cJSON_ParseWithLength(text, len);
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
    char *part[AG_RESP_DOC_SPANS] = {0};
    size_t plen[AG_RESP_DOC_SPANS], total = len, k = 0;
    char *out = NULL;
    for (const cJSON *m = d->root->child; m; m = m->next, k++) {
        if (k == d->nspans || !(part[k] = cJSON_PrintUnformatted(m)))
            goto done;
        plen[k] = strlen(part[k]);
        total = total - (d->spans[k].end - d->spans[k].start) + plen[k];
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
    memset(d, 0, sizeof *d);
}
