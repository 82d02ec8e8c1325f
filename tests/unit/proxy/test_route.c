/* ag_route_classify: its path check (one pass over the bytes) against the rule stated byte by
 * byte, on every byte value at every position and on random paths of '/', '.', letters and
 * others; then the routes themselves. */
#include <stdint.h>
#include <string.h>

#include "aoai_guard/route.h"
#include "check.h"

/* Only unreserved bytes and '/', a leading '/', no "//" (a trailing '/' is fine), no "." or ".."
 * segment. */
static int ref_clean(const char *p, size_t n)
{
    if (n == 0 || p[0] != '/')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
              c == '.' || c == '_' || c == '~' || c == '/'))
            return 0;
        if (c == '/') {
            size_t j = i + 1, seg = 0;
            while (j < n && p[j] != '/')
                j++, seg++;
            if (seg == 0 && j < n)
                return 0;
            if ((seg == 1 && p[i + 1] == '.') || (seg == 2 && p[i + 1] == '.' && p[i + 2] == '.'))
                return 0;
        }
    }
    return 1;
}

static int mismatches;

static void compare(const char *p, size_t n)
{
    ag_route r;
    int st = ag_route_classify(p, n, "POST", NULL, &r);
    if ((st == 400) != !ref_clean(p, n) && mismatches++ < 5)
        fprintf(stderr, "mismatch: \"%.*s\" -> %d\n", (int)n, p, st);
}

static uint64_t rng = 0x2545f4914f6cdd1du;
static unsigned rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (unsigned)(rng >> 11);
}

int main(void)
{
    static const char base[] = "/openai/deployments/gpt-4o/chat/completions";
    char buf[96];
    size_t bl = sizeof base - 1;
    for (size_t pos = 0; pos < bl; pos++)
        for (unsigned c = 0; c < 256; c++) {
            memcpy(buf, base, bl);
            buf[pos] = (char)c;
            compare(buf, bl);
        }
    static const char alphabet[] = "//..ab~_-%Z9 \x80";
    for (int iter = 0; iter < 300000; iter++) {
        size_t n = rnd() % 24;
        for (size_t i = 0; i < n; i++)
            buf[i] = alphabet[rnd() % (sizeof alphabet - 1)];
        compare(buf, n);
    }
    CHECK_INT(mismatches, 0);

    static const struct {
        const char *path;
        const char *method;
        int status;
        ag_api_kind kind;
    } cases[] = {
        {"/openai/deployments/gpt-4o/chat/completions", "POST", 0, AG_API_DEPLOYMENT},
        {"/openai/deployments/gpt-4o/chat/completions", "GET", 405, AG_API_DEPLOYMENT},
        {"/openai/deployments/../chat/completions", "POST", 400, 0},
        {"/openai/deployments/gpt-4o/./chat/completions", "POST", 400, 0},
        {"/openai/deployments//chat/completions", "POST", 400, 0},
        {"/openai/deployments/gpt%2D4o/chat/completions", "POST", 400, 0},
        {"/openai/deployments/gpt~4o/chat/completions", "POST", 404, 0},
        {"/openai/v1/chat/completions", "POST", 0, AG_API_V1},
        {"/openai/responses", "POST", 0, AG_API_RESPONSES},
        {"/openai/unknown/", "POST", 404, 0},
        {"/..", "POST", 400, 0},
        {"/.", "POST", 400, 0},
        {"/...", "POST", 404, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        ag_route r;
        int st = ag_route_classify(cases[i].path, strlen(cases[i].path), cases[i].method, NULL, &r);
        CHECK_INT(st, cases[i].status);
        if (st == 0)
            CHECK_INT(r.kind, cases[i].kind);
    }
    return CHECK_DONE();
}
