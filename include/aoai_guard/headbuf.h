/* Building HTTP heads without printf: bytes go into a buffer on the caller's stack, which moves to
 * the heap only for an unusually large head. Numbers are formatted by hand (vfprintf was 4% of the
 * proxy's CPU when every head was printed). */
#ifndef AOAI_GUARD_HEADBUF_H
#define AOAI_GUARD_HEADBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define AG_HEADBUF_LOCAL 4096

typedef struct ag_headbuf {
    char *p;                          /* local, or a heap copy once it outgrew local */
    size_t len;
    size_t cap;
    bool failed;                      /* out of memory: the content is incomplete */
    char local[AG_HEADBUF_LOCAL];
} ag_headbuf;

void ag_hb_init(ag_headbuf *b);
/* Frees the heap copy, if any. */
void ag_hb_release(ag_headbuf *b);
/* Appends n bytes. Inline while they fit (a head is dozens of short pieces: literals copy as a
 * move or two); the growing, out-of-line part is ag_hb_add_slow. */
void ag_hb_add_slow(ag_headbuf *b, const void *data, size_t n);
static inline void ag_hb_add(ag_headbuf *b, const void *data, size_t n)
{
    if (b->cap - b->len >= n) { /* after a failure too: the head stays marked incomplete */
        memcpy(b->p + b->len, data, n);
        b->len += n;
    } else {
        ag_hb_add_slow(b, data, n);
    }
}
static inline void ag_hb_str(ag_headbuf *b, const char *s)
{
    ag_hb_add(b, s, strlen(s));
}
/* Appends a string literal (its length known at compile time). */
#define AG_HB_LIT(b, lit) ag_hb_add((b), "" lit, sizeof(lit) - 1)
/* Decimal, and lower-case hexadecimal (chunk sizes). */
void ag_hb_u64(ag_headbuf *b, uint64_t v);
void ag_hb_hex(ag_headbuf *b, uint64_t v);
/* A duration in nanoseconds as milliseconds with three decimals ("12.345"). */
void ag_hb_ms3(ag_headbuf *b, uint64_t ns);

/* Writes v in decimal to out (at least 20 bytes); returns the length. */
size_t ag_fmt_u64(char *out, uint64_t v);
/* Writes v in lower-case hexadecimal to out (at least 16 bytes); returns the length. */
size_t ag_fmt_hex(char *out, uint64_t v);

#endif
