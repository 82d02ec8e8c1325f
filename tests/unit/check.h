/* Minimal assertion macros for unit tests: each failed check prints file:line and is counted;
 * CHECK_DONE() returns the process exit status (0 only when every check passed and at least one ran). */
#ifndef AG_TEST_CHECK_H
#define AG_TEST_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_failures;
static int check_count;

#define CHECK(cond) do { check_count++; if (!(cond)) { check_failures++; \
    fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); } } while (0)

#define CHECK_INT(a, b) do { long long va_ = (long long)(a), vb_ = (long long)(b); check_count++; \
    if (va_ != vb_) { check_failures++; fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", \
    __FILE__, __LINE__, #a, va_, #b, vb_); } } while (0)

#define CHECK_STR(a, b) do { const char *sa_ = (a), *sb_ = (b); check_count++; \
    if (!sa_ || !sb_ || strcmp(sa_, sb_) != 0) { check_failures++; \
    fprintf(stderr, "%s:%d: %s == \"%s\", expected \"%s\"\n", __FILE__, __LINE__, #a, \
    sa_ ? sa_ : "(null)", sb_ ? sb_ : "(null)"); } } while (0)

/* Deterministic pseudo-random numbers in [0, n) for randomised tests (xorshift64): every run draws
 * the same inputs, so a failure reproduces. */
static inline unsigned check_rnd(unsigned n)
{
    static unsigned long long state = 0x9E3779B97F4A7C15ull;
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return (unsigned)(state % n);
}

/* A text built by appending (generated inputs): what does not fit is dropped; always terminated. */
typedef struct check_text {
    char buf[4096];
    size_t len;
} check_text;

static inline void check_put(check_text *t, const char *s)
{
    size_t n = strlen(s);
    if (t->len + n < sizeof t->buf) {
        memcpy(t->buf + t->len, s, n);
        t->len += n;
        t->buf[t->len] = '\0';
    }
}

#define CHECK_DONE() (fprintf(stderr, "%d checks, %d failed\n", check_count, check_failures), \
    (check_failures == 0 && check_count > 0) ? 0 : 1)

#endif
