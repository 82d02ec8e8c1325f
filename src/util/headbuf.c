/* HTTP head building without printf (see headbuf.h). */
#include "aoai_guard/headbuf.h"

#include <stdlib.h>
#include <string.h>

void ag_hb_init(ag_headbuf *b)
{
    b->p = b->local;
    b->len = 0;
    b->cap = sizeof b->local;
    b->failed = false;
}

void ag_hb_release(ag_headbuf *b)
{
    if (b->p != b->local)
        free(b->p);
    ag_hb_init(b);
}

static bool reserve(ag_headbuf *b, size_t n)
{
    if (b->failed)
        return false;
    if (b->len + n <= b->cap)
        return true;
    size_t cap = b->cap * 2;
    while (cap < b->len + n)
        cap *= 2;
    char *np = malloc(cap);
    if (!np) {
        b->failed = true;
        return false;
    }
    memcpy(np, b->p, b->len);
    if (b->p != b->local)
        free(b->p);
    b->p = np;
    b->cap = cap;
    return true;
}

void ag_hb_add_slow(ag_headbuf *b, const void *data, size_t n)
{
    if (n == 0 || !reserve(b, n))
        return;
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

size_t ag_fmt_u64(char *out, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

size_t ag_fmt_hex(char *out, uint64_t v)
{
    static const char digits[] = "0123456789abcdef";
    char tmp[16];
    size_t n = 0;
    do {
        tmp[n++] = digits[v & 15];
        v >>= 4;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

void ag_hb_u64(ag_headbuf *b, uint64_t v)
{
    char tmp[20];
    ag_hb_add(b, tmp, ag_fmt_u64(tmp, v));
}

void ag_hb_hex(ag_headbuf *b, uint64_t v)
{
    char tmp[16];
    ag_hb_add(b, tmp, ag_fmt_hex(tmp, v));
}

void ag_hb_ms3(ag_headbuf *b, uint64_t ns)
{
    uint64_t us = (ns + 500) / 1000; /* rounded to the microsecond, as %.3f of milliseconds */
    char tmp[24];
    size_t n = ag_fmt_u64(tmp, us / 1000);
    unsigned frac = (unsigned)(us % 1000);
    tmp[n++] = '.';
    tmp[n++] = (char)('0' + frac / 100);
    tmp[n++] = (char)('0' + frac / 10 % 10);
    tmp[n++] = (char)('0' + frac % 10);
    ag_hb_add(b, tmp, n);
}
