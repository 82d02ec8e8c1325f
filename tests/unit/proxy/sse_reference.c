/* The oracle of test_sse.c: the SSE parser as it was before it searched for line ends with memchr
 * and read whole lines in place (byte for byte the same interpretation, one byte at a time). */
#include "sse_reference.h"

#include <stdlib.h>
#include <string.h>

struct ref_sse_parser {
    ag_sse_event_fn fn;
    void *arg;
    size_t max;
    char *line;          /* the current line (without its terminator) */
    size_t line_len, line_cap;
    char *data;          /* data of the current event */
    size_t data_len, data_cap;
    bool has_data;
    char event[64];
    size_t event_len;
    bool after_cr;       /* last byte was CR: a following LF belongs to the same terminator */
    bool started;        /* past a possible BOM */
    unsigned bom_seen;   /* BOM bytes matched so far */
    bool failed;
    size_t events;
    bool keep_raw;
    char *raw;           /* keep_raw: bytes since the last dispatched event */
    size_t raw_len, raw_cap;
};

ref_sse_parser *ref_sse_parser_new(size_t max_event_bytes, ag_sse_event_fn fn, void *arg)
{
    ref_sse_parser *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->fn = fn;
    p->arg = arg;
    p->max = max_event_bytes;
    return p;
}

ref_sse_parser *ref_sse_parser_new_raw(size_t max_event_bytes, ag_sse_event_fn fn, void *arg)
{
    ref_sse_parser *p = ref_sse_parser_new(max_event_bytes, fn, arg);
    if (p)
        p->keep_raw = true;
    return p;
}

const char *ref_sse_parser_rest(const ref_sse_parser *p, size_t *len)
{
    *len = p->raw_len;
    return p->raw ? p->raw : "";
}

void ref_sse_parser_free(ref_sse_parser *p)
{
    if (!p)
        return;
    free(p->raw);
    free(p->line);
    free(p->data);
    free(p);
}

size_t ref_sse_parser_events(const ref_sse_parser *p)
{
    return p->events;
}

static int grow(char **buf, size_t *cap, size_t need, size_t max)
{
    if (need > max + 64)
        return -1; /* the bound holds whatever the buffer's capacity already is */
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 256;
    while (c < need)
        c *= 2;
    char *n = realloc(*buf, c);
    if (!n)
        return -1;
    *buf = n;
    *cap = c;
    return 0;
}

static int dispatch(ref_sse_parser *p)
{
    if (!p->has_data) {
        p->event_len = 0;
        p->event[0] = '\0';
        return 0;
    }
    ag_sse_event ev = {p->event, p->event_len, p->data ? p->data : "", p->data_len,
                       p->raw ? p->raw : "", p->raw_len};
    p->events++;
    int rc = p->fn(p->arg, &ev);
    p->raw_len = 0;
    p->data_len = 0;
    p->has_data = false;
    p->event_len = 0;
    p->event[0] = '\0';
    return rc;
}

static int process_line(ref_sse_parser *p)
{
    const char *l = p->line ? p->line : "";
    size_t n = p->line_len;
    if (n == 0)
        return dispatch(p);
    if (l[0] == ':')
        return 0;
    const char *colon = memchr(l, ':', n);
    size_t fl = colon ? (size_t)(colon - l) : n;
    const char *v = colon ? colon + 1 : l + n;
    size_t vl = colon ? n - fl - 1 : 0;
    if (vl && v[0] == ' ') {
        v++;
        vl--;
    }
    if (fl == 4 && memcmp(l, "data", 4) == 0) {
        size_t need = p->data_len + (p->has_data ? 1 : 0) + vl + 1;
        if (grow(&p->data, &p->data_cap, need, p->max))
            return -1;
        if (p->has_data)
            p->data[p->data_len++] = '\n';
        memcpy(p->data + p->data_len, v, vl);
        p->data_len += vl;
        p->data[p->data_len] = '\0';
        p->has_data = true;
    } else if (fl == 5 && memcmp(l, "event", 5) == 0) {
        p->event_len = vl < sizeof p->event - 1 ? vl : sizeof p->event - 1;
        memcpy(p->event, v, p->event_len);
        p->event[p->event_len] = '\0';
    }
    /* "id", "retry" and unknown fields do not matter to us. */
    return 0;
}

int ref_sse_parser_feed(ref_sse_parser *p, const char *data, size_t len)
{
    if (p->failed)
        return -1;
    size_t i = 0;
    /* A leading BOM, possibly split across reads: skipped (kept in the raw bytes). */
    static const unsigned char bom[] = {0xEF, 0xBB, 0xBF};
    while (!p->started && i < len) {
        if ((unsigned char)data[i] != bom[p->bom_seen]) {
            p->started = true;
            if (p->bom_seen) {
                /* Not a BOM after all: those bytes were ordinary line bytes. */
                size_t n = p->bom_seen;
                p->bom_seen = 0;
                if (ref_sse_parser_feed(p, (const char *)bom, n) != 0)
                    return -1;
            }
            break;
        }
        i++;
        if (++p->bom_seen == 3) {
            p->started = true;
            if (p->keep_raw) { /* a filter forwards the BOM like every other byte */
                if (grow(&p->raw, &p->raw_cap, p->raw_len + 4, p->max * 2 + 1024)) {
                    p->failed = true;
                    return -1;
                }
                memcpy(p->raw + p->raw_len, bom, 3);
                p->raw_len += 3;
            }
        }
    }
    while (i < len) {
        char c = data[i];
        if (p->keep_raw) {
            /* The next ordinary run or the single terminator about to be consumed. */
            size_t j = i;
            if (c != '\r' && c != '\n')
                while (j < len && data[j] != '\r' && data[j] != '\n')
                    j++;
            else
                j = i + 1;
            if (grow(&p->raw, &p->raw_cap, p->raw_len + (j - i) + 1, p->max * 2 + 1024)) {
                p->failed = true;
                return -1;
            }
            memcpy(p->raw + p->raw_len, data + i, j - i);
            p->raw_len += j - i;
        }
        if (c == '\n' && p->after_cr) {
            p->after_cr = false;
            i++;
            continue;
        }
        p->after_cr = false;
        if (c == '\r' || c == '\n') {
            p->after_cr = c == '\r';
            if (process_line(p)) {
                p->failed = true;
                return -1;
            }
            p->line_len = 0;
            i++;
            continue;
        }
        /* Copy the run of ordinary bytes up to the next terminator at once. */
        size_t j = i;
        while (j < len && data[j] != '\r' && data[j] != '\n')
            j++;
        if (grow(&p->line, &p->line_cap, p->line_len + (j - i) + 1, p->max)) {
            p->failed = true;
            return -1;
        }
        memcpy(p->line + p->line_len, data + i, j - i);
        p->line_len += j - i;
        i = j;
    }
    return 0;
}
