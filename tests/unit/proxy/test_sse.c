/* ag_sse_parser against the reference parser (sse_reference.c, the byte-at-a-time version it
 * replaced): random streams of SSE lines, with and without raw spans, fed whole and cut into random
 * reads, must give the same transcript (each event's name, data and raw bytes, the failure, the
 * rest). Streams mix LF, CR and CRLF endings (a CR and its LF split across reads too), comments,
 * a BOM, unknown fields and lines long enough to hit the bound. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "aoai_guard/sse.h"
#include "check.h"
#include "sse_reference.h"

/* A transcript: every callback's fields, one after another. */
typedef struct transcript {
    char *buf;
    size_t len, cap;
} transcript;

static void put(transcript *t, const char *s, size_t n)
{
    if (t->len + n + 16 > t->cap) {
        t->cap = (t->len + n + 16) * 2;
        t->buf = realloc(t->buf, t->cap);
    }
    memcpy(t->buf + t->len, &n, sizeof n);
    t->len += sizeof n;
    memcpy(t->buf + t->len, s, n);
    t->len += n;
}

static int on_event(void *arg, const ag_sse_event *ev)
{
    transcript *t = arg;
    put(t, ev->event, ev->event_len);
    put(t, ev->data, ev->data_len);
    put(t, ev->raw, ev->raw_len);
    return 0;
}

#define MAX_EVENT 300

/* A random stream of n lines. */
static size_t make_stream(char *out, size_t cap)
{
    static const char *const fields[] = {"data: ", "data:", "event: ", "id: ", ": ", "retry: 5", "data",
                                         "datax: ", "event:", ""};
    static const char *const ends[] = {"\n", "\r\n", "\r", "\n\n", "\r\n\r\n", "\r\r"};
    size_t o = 0;
    if (check_rnd(8) == 0) {
        memcpy(out, "\xEF\xBB\xBF", 3);
        o = check_rnd(4) == 0 ? 2 : 3; /* sometimes a broken BOM */
    }
    unsigned lines = check_rnd(30);
    for (unsigned l = 0; l < lines && o + 700 < cap; l++) {
        const char *f = fields[check_rnd(sizeof fields / sizeof *fields)];
        memcpy(out + o, f, strlen(f));
        o += strlen(f);
        size_t vl = check_rnd(8) == 0 ? 250 + check_rnd(200) : check_rnd(40); /* some beyond the bound */
        for (size_t i = 0; i < vl; i++) {
            unsigned k = check_rnd(40);
            out[o++] = k == 0 ? ':' : k == 1 ? ' ' : (char)('a' + k % 26);
        }
        const char *e = ends[check_rnd(sizeof ends / sizeof *ends)];
        memcpy(out + o, e, strlen(e));
        o += strlen(e);
    }
    return o;
}

static void run_new(const char *s, size_t n, bool raw, bool pieces, transcript *t)
{
    ag_sse_parser *p = raw ? ag_sse_parser_new_raw(MAX_EVENT, on_event, t) : ag_sse_parser_new(MAX_EVENT, on_event, t);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0;) {
        size_t k = pieces ? 1 + check_rnd(9) : n - i;
        if (k > n - i)
            k = n - i;
        rc = ag_sse_parser_feed(p, s + i, k);
        i += k;
    }
    size_t rl;
    const char *rest = ag_sse_parser_rest(p, &rl);
    put(t, rc ? "failed" : "ok", rc ? 6 : 2);
    if (raw && rc == 0)
        put(t, rest, rl);
    ag_sse_parser_free(p);
}

static void run_ref(const char *s, size_t n, bool raw, transcript *t)
{
    ref_sse_parser *p = raw ? ref_sse_parser_new_raw(MAX_EVENT, on_event, t) : ref_sse_parser_new(MAX_EVENT, on_event, t);
    int rc = ref_sse_parser_feed(p, s, n);
    size_t rl;
    const char *rest = ref_sse_parser_rest(p, &rl);
    put(t, rc ? "failed" : "ok", rc ? 6 : 2);
    if (raw && rc == 0)
        put(t, rest, rl);
    ref_sse_parser_free(p);
}

int main(void)
{
    static char s[32768];
    int mismatches = 0, events = 0, failures = 0;
    for (int iter = 0; iter < 20000; iter++) {
        size_t n = make_stream(s, sizeof s);
        bool raw = check_rnd(2);
        transcript want = {0}, whole = {0}, cut = {0};
        run_ref(s, n, raw, &want);
        run_new(s, n, raw, false, &whole);
        run_new(s, n, raw, true, &cut);
        bool same = whole.len == want.len && memcmp(whole.buf, want.buf, want.len) == 0 && cut.len == want.len &&
                    memcmp(cut.buf, want.buf, want.len) == 0;
        if (!same && mismatches++ < 3)
            fprintf(stderr, "transcripts differ (raw %d) on: %.*s\n", raw, (int)(n < 300 ? n : 300), s);
        events += want.len > 40;
        failures += want.len >= 6 && memcmp(want.buf + want.len - 6, "failed", 6) == 0;
        free(want.buf);
        free(whole.buf);
        free(cut.buf);
    }
    CHECK_INT(mismatches, 0);
    CHECK(events > 1000);  /* the streams do make events */
    CHECK(failures > 100); /* and reach the bound */

    /* Named: a chat chunk stream with CRLF, and a line over the bound. */
    const char chat[] = "data: {\"a\":1}\r\n\r\n: keep-alive\n\nevent: x\ndata: b\ndata: c\n\ndata: [DONE]\n\n";
    transcript t = {0};
    run_new(chat, sizeof chat - 1, true, true, &t);
    CHECK(t.len > 0);
    free(t.buf);
    char longline[1024];
    memcpy(longline, "data: ", 6);
    memset(longline + 6, 'x', sizeof longline - 8);
    longline[sizeof longline - 2] = '\n';
    longline[sizeof longline - 1] = '\n';
    ag_sse_parser *p = ag_sse_parser_new(MAX_EVENT, on_event, &t);
    CHECK_INT(ag_sse_parser_feed(p, longline, sizeof longline), -1);
    ag_sse_parser_free(p);
    return CHECK_DONE();
}
