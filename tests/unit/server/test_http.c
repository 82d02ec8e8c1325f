/* The HTTP syntax checks of http.c against plain byte-by-byte statements of the same rules: every
 * single byte value at every position of short inputs, then random inputs of every length up to
 * 100 (the word-at-a-time scans must agree at word edges and tails), then named cases. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "aoai_guard/http.h"
#include "check.h"

/* ---- the rules, byte by byte (RFC 9110 / 9112) ---- */

static int ref_tchar(unsigned char c, int underscore)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    if (c == '_')
        return underscore;
    return c && strchr("!#$%&'*+-.^`|~", c) != NULL;
}

static int ref_token(const char *s, size_t n, int underscore)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!ref_tchar((unsigned char)s[i], underscore))
            return 0;
    return 1;
}

static int ref_value_ok(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && c != '\t') || c == 0x7F)
            return 0;
    }
    return 1;
}

static int ref_request_line(const char *line, size_t len)
{
    size_t i = 0;
    while (i < len && ref_tchar((unsigned char)line[i], 0))
        i++;
    if (i == 0 || i >= len || line[i] != ' ')
        return 400;
    size_t method_len = i, t0 = ++i;
    while (i < len && line[i] != ' ') {
        unsigned char c = (unsigned char)line[i];
        if (c <= 0x20 || c >= 0x7F || c == '#')
            return 400;
        i++;
    }
    size_t tlen = i - t0;
    if (tlen == 0 || i >= len)
        return 400;
    int star = tlen == 1 && line[t0] == '*';
    if (star && !(method_len == 7 && memcmp(line, "OPTIONS", 7) == 0))
        return 400;
    if (!star && line[t0] != '/')
        return 400;
    i++;
    const char *v = line + i;
    size_t vlen = len - i;
    if (vlen != 8 || memcmp(v, "HTTP/", 5) != 0 || v[6] != '.' || v[5] < '0' || v[5] > '9' || v[7] < '0' ||
        v[7] > '9')
        return 400;
    if (v[5] != '1' || (v[7] != '0' && v[7] != '1'))
        return 505;
    return 0;
}

static int ref_hop(const char *n, size_t len)
{
    static const char *const hop[] = {"connection", "keep-alive", "proxy-connection", "te", "trailer",
                                      "transfer-encoding", "upgrade", "http2-settings", "proxy-authenticate",
                                      "proxy-authorization"};
    for (size_t i = 0; i < sizeof hop / sizeof *hop; i++)
        if (strlen(hop[i]) == len && strncasecmp(n, hop[i], len) == 0)
            return 1;
    return 0;
}

/* ---- comparisons ---- */

static int mismatches;

static void compare(const char *s, size_t n)
{
    int ok = 1;
    ok &= ag_http_value_ok(s, n) == (bool)ref_value_ok(s, n);
    ok &= ag_http_is_token(s, n, false) == (bool)ref_token(s, n, 0);
    ok &= ag_http_is_token(s, n, true) == (bool)ref_token(s, n, 1);
    ok &= ag_http_check_request_line(s, n) == ref_request_line(s, n);
    ok &= ag_http_is_hop_by_hop(s, n) == (bool)ref_hop(s, n);
    if (!ok && mismatches++ < 5) {
        fprintf(stderr, "mismatch on %zu bytes:", n);
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " %02x", (unsigned char)s[i]);
        fprintf(stderr, "\n");
    }
}

/* A request line with the target's byte at position pos replaced by c. */
static void line_with(unsigned char c, size_t pos, size_t target_len)
{
    char line[160];
    size_t n = 0;
    memcpy(line, "POST /", 6);
    n = 6;
    for (size_t i = 1; i < target_len; i++)
        line[n++] = (char)('a' + i % 26);
    memcpy(line + n, " HTTP/1.1", 9);
    n += 9;
    line[5 + pos] = (char)c;
    compare(line, n);
    /* the same bytes as a header value and a header name */
    compare(line + 5, target_len);
}

static void test_every_byte_everywhere(void)
{
    for (size_t tl = 1; tl <= 40; tl++)
        for (size_t pos = 0; pos < tl; pos++)
            for (unsigned c = 0; c < 256; c++)
                line_with((unsigned char)c, pos, tl);
}

static void test_random(void)
{
    static const char alphabet[] = "aZ9/_-.#: \t\r\n\x7f\x80\xff\x01%?=HTTP/1.1 ";
    char buf[128];
    for (int iter = 0; iter < 200000; iter++) {
        size_t n = check_rnd(101);
        int mode = check_rnd(3);
        for (size_t i = 0; i < n; i++)
            buf[i] = mode == 0 ? (char)check_rnd(256) : alphabet[check_rnd(sizeof alphabet - 1)];
        if (mode == 2 && n > 15) { /* mostly a valid line with a few bytes changed */
            memcpy(buf, "GET /", 5);
            for (size_t i = 5; i < n - 9; i++)
                buf[i] = (char)('a' + check_rnd(26));
            memcpy(buf + n - 9, " HTTP/1.1", 9);
            for (unsigned k = check_rnd(3); k > 0; k--)
                buf[check_rnd(n)] = alphabet[check_rnd(sizeof alphabet - 1)];
        }
        compare(buf, n);
    }
}

static void test_named(void)
{
    static const char *const lines[] = {
        "GET / HTTP/1.1", "OPTIONS * HTTP/1.1", "GET * HTTP/1.1", "GET /a#b HTTP/1.1",
        "GET /openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21 HTTP/1.1",
        "GET /openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21 HTTP/2.0",
        "GET /openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21\x80 HTTP/1.1",
        "GET http://x/ HTTP/1.1", "GET  / HTTP/1.1", "GET / HTTP/1.1 ", "GET /\x7f HTTP/1.1",
    };
    static const int want[] = {0, 0, 400, 400, 0, 505, 400, 400, 400, 400, 400};
    for (size_t i = 0; i < sizeof lines / sizeof *lines; i++)
        CHECK_INT(ag_http_check_request_line(lines[i], strlen(lines[i])), want[i]);
    CHECK(ag_http_value_ok("Bearer abc\tdef", 14));
    CHECK(!ag_http_value_ok("0123456789abcdef\r\n", 18));
    CHECK(!ag_http_value_ok("0123456789abcdef\x7f", 17));
    CHECK(ag_http_value_ok("caf\xc3\xa9 \xe2\x82\xac 0123456789", 20)); /* obs-text is allowed */
    CHECK(ag_http_is_hop_by_hop("Transfer-Encoding", 17));
    CHECK(ag_http_is_hop_by_hop("KEEP-ALIVE", 10));
    CHECK(!ag_http_is_hop_by_hop("Content-Length", 14));
    CHECK(!ag_http_is_token("x_y", 3, false));
    CHECK(ag_http_is_token("x_y", 3, true));
}

int main(void)
{
    test_every_byte_everywhere();
    test_random();
    test_named();
    CHECK_INT(mismatches, 0);
    return CHECK_DONE();
}
