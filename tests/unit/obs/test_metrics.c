/* Unit tests of the metrics registry: exact text of each type, escaping, sums over shards written by
 * real threads, the cardinality cap, declaration errors, the standard families, the config section,
 * and a round trip of the rendered text through tests/integration/promparse.py. */
#include "aoai_guard/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

#include <event2/buffer.h>

#include "check.h"

/* Renders m into a malloc'd NUL-terminated string (NULL when rendering fails). */
static char *render(ag_metrics *m)
{
    struct evbuffer *b = evbuffer_new();
    if (!b)
        return NULL;
    char *s = NULL;
    if (ag_metrics_render(m, b) == 0) {
        size_t n = evbuffer_get_length(b);
        s = malloc(n + 1);
        if (s) {
            evbuffer_remove(b, s, n);
            s[n] = '\0';
        }
    }
    evbuffer_free(b);
    return s;
}

static void check_render(ag_metrics *m, const char *want, int line)
{
    char *got = render(m);
    check_count++;
    if (!got || strcmp(got, want) != 0) {
        check_failures++;
        fprintf(stderr, "%s:%d: rendering differs\n--- got ---\n%s--- want ---\n%s---\n", __FILE__, line,
                got ? got : "(null)\n", want);
    }
    free(got);
}
#define CHECK_RENDER(m, want) check_render((m), (want), __LINE__)

static void test_counter(void)
{
    ag_metrics *m = ag_metrics_new(3, 0);
    CHECK(m != NULL);
    CHECK_INT(ag_metrics_nshards(m), 3);
    CHECK_INT(ag_metrics_control_shard(m), 2);
    static const char *const labels[] = { "deployment", "code_class", NULL };
    ag_metric_desc d = { "t_requests_total", "Requests.", AG_METRIC_COUNTER, labels, NULL, 0 };
    char err[256] = "";
    ag_metric_family *f = ag_metrics_declare(m, &d, err, sizeof err);
    CHECK(f != NULL);
    CHECK_STR(err, "");
    CHECK(ag_metrics_find(m, "t_requests_total") == f);
    CHECK(ag_metrics_find(m, "t_requests") == NULL);
    /* Declared, no series yet: HELP and TYPE only. */
    CHECK_RENDER(m, "# HELP t_requests_total Requests.\n# TYPE t_requests_total counter\n");

    const char *v1[] = { "gpt-4o", "2xx" };
    const char *v2[] = { "embed", "4xx" };
    ag_metric_handle a0 = ag_metric_series(f, 0, v1);
    ag_metric_handle a1 = ag_metric_series(f, 1, v1);
    ag_metric_handle b2 = ag_metric_series(f, 2, v2);
    CHECK(a0.cell != NULL && a1.cell != NULL && b2.cell != NULL);
    CHECK(a0.cell != a1.cell);
    ag_metric_inc(a0);
    ag_metric_add(a1, 41);
    ag_metric_add(b2, 3);
    ag_metric_inc(ag_metric_series(f, 0, v2));
    CHECK_INT(ag_metric_family_nseries(f), 2);
    /* Sorted by label values, summed over shards. */
    CHECK_RENDER(m, "# HELP t_requests_total Requests.\n# TYPE t_requests_total counter\n"
                    "t_requests_total{deployment=\"embed\",code_class=\"4xx\"} 4\n"
                    "t_requests_total{deployment=\"gpt-4o\",code_class=\"2xx\"} 42\n");
    double v = 0;
    uint64_t c = 0;
    CHECK(ag_metric_read(f, v1, &v, &c));
    CHECK_INT(c, 42);
    CHECK(v == 42.0);
    const char *v3[] = { "never", "seen" };
    CHECK(!ag_metric_read(f, v3, &v, &c));
    CHECK_INT(ag_metric_family_nseries(f), 2); /* reading does not intern */

    /* Wrong-type updates and bad shards are no-ops. */
    ag_metric_set(a0, 100);
    ag_metric_observe(a0, 1);
    ag_metric_gauge_add(a0, 5);
    ag_metric_handle bad = ag_metric_series(f, 3, v1);
    CHECK(bad.cell == NULL);
    ag_metric_inc(bad);
    ag_metric_handle none = ag_metric_series(NULL, 0, v1);
    CHECK(none.cell == NULL);
    ag_metric_inc(none);
    CHECK(ag_metric_read(f, v1, NULL, &c));
    CHECK_INT(c, 42);
    ag_metrics_free(m);
}

/* ag_metric_series_memo: the same handles as ag_metric_series, whatever the sequence of label
 * sets, shards, families and value buffers it is asked with. */
static void test_memo(void)
{
    ag_metrics *m = ag_metrics_new(2, 4);
    static const char *const labels[] = { "deployment", "operation", "code_class", NULL };
    ag_metric_desc d = { "t_memo_total", "Memo.", AG_METRIC_COUNTER, labels, NULL, 0 };
    ag_metric_desc d2 = { "t_memo2_total", "Memo 2.", AG_METRIC_COUNTER, labels, NULL, 0 };
    ag_metric_family *f = ag_metrics_declare(m, &d, NULL, 0), *g = ag_metrics_declare(m, &d2, NULL, 0);
    CHECK(f != NULL && g != NULL);
    char longv[AG_METRIC_MEMO_VALUE + 2];
    memset(longv, 'y', sizeof longv - 1);
    longv[sizeof longv - 1] = '\0';
    char buf[16];
    const char *sets[][3] = { {"gpt-4o", "chat", "2xx"}, {"gpt-4o", "chat", "4xx"}, {"embed", "chat", "2xx"},
                              {longv, "chat", "2xx"}, {"gpt-4o", "chat", "2xx"}, {"a", "b", "c"},
                              {"d", "e", "f"}, {"other", "other", "other"}, {buf, "chat", "2xx"} };
    ag_metric_memo memo = {0};
    unsigned seed = 7;
    int differ = 0;
    for (int i = 0; i < 5000; i++) {
        seed = seed * 1103515245u + 12345u;
        size_t k = (seed >> 8) % (sizeof sets / sizeof sets[0]);
        unsigned shard = (seed >> 20) & 1;
        ag_metric_family *fam = (seed >> 24) % 5 == 0 ? g : f;
        /* the same buffer with new contents must not be taken for the old label set */
        snprintf(buf, sizeof buf, "dep-%u", (seed >> 12) % 3);
        ag_metric_handle want = ag_metric_series(fam, shard, sets[k]);
        ag_metric_handle got = ag_metric_series_memo(&memo, fam, shard, sets[k]);
        if (want.cell != got.cell || want.family != got.family)
            differ++;
    }
    CHECK_INT(differ, 0);
    /* A hit skips the lookup: the handle is the remembered one. */
    const char *v[] = { "gpt-4o", "chat", "2xx" };
    ag_metric_handle h1 = ag_metric_series_memo(&memo, f, 0, v);
    CHECK(memo.family == f);
    ag_metric_inc(h1);
    ag_metric_inc(ag_metric_series_memo(&memo, f, 0, v));
    uint64_t n = 0;
    CHECK(ag_metric_read(f, v, NULL, &n));
    CHECK_INT(n, 2);
    /* An over-long value is looked up every time, never remembered. */
    const char *lv[] = { longv, "chat", "2xx" };
    ag_metric_series_memo(&memo, f, 0, lv);
    CHECK(memo.family == NULL);
    ag_metrics_free(m);
}

static double fixed_value(void *ctx)
{
    return *(double *)ctx;
}

static void test_gauge(void)
{
    ag_metrics *m = ag_metrics_new(2, 0);
    static const char *const labels[] = { "upstream", NULL };
    ag_metric_desc dl = { "t_up", "Up.", AG_METRIC_GAUGE, labels, NULL, 0 };
    ag_metric_desc du = { "t_conns", "Open.", AG_METRIC_GAUGE, NULL, NULL, 0 };
    ag_metric_desc dc = { "t_depth", "Depth.", AG_METRIC_GAUGE, NULL, NULL, 0 };
    ag_metric_desc dk = { "t_cb_total", "Callback counter.", AG_METRIC_COUNTER, NULL, NULL, 0 };
    ag_metric_family *fl = ag_metrics_declare(m, &dl, NULL, 0);
    ag_metric_family *fu = ag_metrics_declare(m, &du, NULL, 0);
    ag_metric_family *fc = ag_metrics_declare(m, &dc, NULL, 0);
    ag_metric_family *fk = ag_metrics_declare(m, &dk, NULL, 0);
    CHECK(fl && fu && fc && fk);
    /* Unlabelled families render 0 from the start. */
    CHECK_RENDER(m, "# HELP t_up Up.\n# TYPE t_up gauge\n"
                    "# HELP t_conns Open.\n# TYPE t_conns gauge\nt_conns 0\n"
                    "# HELP t_depth Depth.\n# TYPE t_depth gauge\nt_depth 0\n"
                    "# HELP t_cb_total Callback counter.\n# TYPE t_cb_total counter\nt_cb_total 0\n");
    const char *east[] = { "eastus" }, *west[] = { "westus" }, *north[] = { "northeu" };
    ag_metric_set(ag_metric_series(fl, 1, east), 1);
    ag_metric_set(ag_metric_series(fl, 1, west), 0);
    ag_metric_set(ag_metric_series(fl, 1, north), 0.1);
    ag_metric_handle w0 = ag_metric_series(fu, 0, NULL), w1 = ag_metric_series(fu, 1, NULL);
    ag_metric_gauge_add(w0, 1);
    ag_metric_gauge_add(w0, 1);
    ag_metric_gauge_add(w1, 1);
    ag_metric_gauge_add(w0, -1);
    ag_metric_gauge_add(w1, 3.5);
    ag_metric_inc(w0); /* not a counter: no-op */
    double depth = 1e21, cb = 12;
    CHECK_INT(ag_metric_family_set_fn(fc, fixed_value, &depth), 0);
    CHECK_INT(ag_metric_family_set_fn(fk, fixed_value, &cb), 0);
    CHECK_INT(ag_metric_family_set_fn(fl, fixed_value, &depth), -1); /* labelled */
    CHECK_RENDER(m, "# HELP t_up Up.\n# TYPE t_up gauge\n"
                    "t_up{upstream=\"eastus\"} 1\nt_up{upstream=\"northeu\"} 0.1\n"
                    "t_up{upstream=\"westus\"} 0\n"
                    "# HELP t_conns Open.\n# TYPE t_conns gauge\nt_conns 5.5\n"
                    "# HELP t_depth Depth.\n# TYPE t_depth gauge\nt_depth 1e+21\n"
                    "# HELP t_cb_total Callback counter.\n# TYPE t_cb_total counter\nt_cb_total 12\n");
    /* Special values, and the shortest round-tripping decimal. */
    depth = NAN;
    ag_metric_set(ag_metric_series(fl, 0, east), INFINITY);
    ag_metric_set(ag_metric_series(fl, 1, east), 0); /* +Inf + 0 */
    ag_metric_set(ag_metric_series(fl, 1, west), -INFINITY);
    ag_metric_set(ag_metric_series(fl, 1, north), 1.0 / 3.0);
    ag_metric_family_set_fn(fk, NULL, NULL); /* back to the stored value */
    CHECK_RENDER(m, "# HELP t_up Up.\n# TYPE t_up gauge\n"
                    "t_up{upstream=\"eastus\"} +Inf\nt_up{upstream=\"northeu\"} 0.33333333333333331\n"
                    "t_up{upstream=\"westus\"} -Inf\n"
                    "# HELP t_conns Open.\n# TYPE t_conns gauge\nt_conns 5.5\n"
                    "# HELP t_depth Depth.\n# TYPE t_depth gauge\nt_depth NaN\n"
                    "# HELP t_cb_total Callback counter.\n# TYPE t_cb_total counter\nt_cb_total 0\n");
    double v = 0;
    uint64_t c = 99;
    CHECK(ag_metric_read(fu, NULL, &v, &c));
    CHECK(v == 5.5);
    CHECK_INT(c, 0);
    ag_metrics_free(m);
}

static void test_histogram(void)
{
    ag_metrics *m = ag_metrics_new(2, 0);
    static const double b[] = { 0.5, 1, 2.5 };
    static const char *const labels[] = { "operation", NULL };
    ag_metric_desc dl = { "t_dur_seconds", "Duration.", AG_METRIC_HISTOGRAM, labels, b, 3 };
    ag_metric_desc du = { "t_ttfb_seconds", "TTFB.", AG_METRIC_HISTOGRAM, NULL, b, 1 };
    ag_metric_family *fl = ag_metrics_declare(m, &dl, NULL, 0);
    ag_metric_family *fu = ag_metrics_declare(m, &du, NULL, 0);
    CHECK(fl && fu);
    const char *chat[] = { "chat" };
    ag_metric_handle h0 = ag_metric_series(fl, 0, chat), h1 = ag_metric_series(fl, 1, chat);
    ag_metric_observe(h0, 0.5);   /* on the bound: le="0.5" */
    ag_metric_observe(h1, 0.75);  /* le="1" */
    ag_metric_observe(h0, 3);     /* +Inf */
    ag_metric_observe(h1, 100);   /* +Inf */
    ag_metric_observe(h0, NAN);   /* ignored */
    ag_metric_inc(h0);            /* not a counter: no-op */
    ag_metric_observe(ag_metric_series(fu, 1, NULL), 0.25);
    CHECK_RENDER(m, "# HELP t_dur_seconds Duration.\n# TYPE t_dur_seconds histogram\n"
                    "t_dur_seconds_bucket{operation=\"chat\",le=\"0.5\"} 1\n"
                    "t_dur_seconds_bucket{operation=\"chat\",le=\"1\"} 2\n"
                    "t_dur_seconds_bucket{operation=\"chat\",le=\"2.5\"} 2\n"
                    "t_dur_seconds_bucket{operation=\"chat\",le=\"+Inf\"} 4\n"
                    "t_dur_seconds_sum{operation=\"chat\"} 104.25\n"
                    "t_dur_seconds_count{operation=\"chat\"} 4\n"
                    "# HELP t_ttfb_seconds TTFB.\n# TYPE t_ttfb_seconds histogram\n"
                    "t_ttfb_seconds_bucket{le=\"0.5\"} 1\n"
                    "t_ttfb_seconds_bucket{le=\"+Inf\"} 1\n"
                    "t_ttfb_seconds_sum 0.25\n"
                    "t_ttfb_seconds_count 1\n");
    double sum = 0;
    uint64_t count = 0;
    CHECK(ag_metric_read(fl, chat, &sum, &count));
    CHECK(sum == 104.25);
    CHECK_INT(count, 4);
    ag_metrics_free(m);
}

static void test_escaping(void)
{
    ag_metrics *m = ag_metrics_new(1, 0);
    static const char *const labels[] = { "rule", "action", NULL };
    ag_metric_desc d = { "t_esc_total", "Back\\slash, \"quote\"\nand newline.", AG_METRIC_COUNTER,
                         labels, NULL, 0 };
    ag_metric_family *f = ag_metrics_declare(m, &d, NULL, 0);
    const char *v[] = { "a\\b\"c\nd", "é ✓" };
    ag_metric_inc(ag_metric_series(f, 0, v));
    const char *empty[] = { NULL, "" }; /* NULL reads as "" */
    ag_metric_add(ag_metric_series(f, 0, empty), 2);
    CHECK_RENDER(m, "# HELP t_esc_total Back\\\\slash, \"quote\"\\nand newline.\n"
                    "# TYPE t_esc_total counter\n"
                    "t_esc_total{rule=\"\",action=\"\"} 2\n"
                    "t_esc_total{rule=\"a\\\\b\\\"c\\nd\",action=\"é ✓\"} 1\n");
    ag_metrics_free(m);
}

static void test_cardinality(void)
{
    ag_metrics *m = ag_metrics_new(2, 3);
    static const char *const labels[] = { "app", "kind", NULL };
    ag_metric_desc d = { "t_app_total", "Apps.", AG_METRIC_COUNTER, labels, NULL, 0 };
    ag_metric_family *f = ag_metrics_declare(m, &d, NULL, 0);
    const char *a[] = { "a", "prompt" }, *b[] = { "b", "prompt" }, *c[] = { "c", "prompt" };
    const char *d4[] = { "d", "prompt" }, *e[] = { "e", "completion" };
    ag_metric_inc(ag_metric_series(f, 0, a));
    ag_metric_inc(ag_metric_series(f, 0, b));
    /* A value that is literally "other" everywhere goes to the overflow series, not a new one. */
    const char *lit[] = { "other", "other" };
    ag_metric_inc(ag_metric_series(f, 1, lit));
    CHECK_INT(ag_metric_family_nseries(f), 2);
    ag_metric_inc(ag_metric_series(f, 1, c));
    CHECK_INT(ag_metric_family_nseries(f), 3);
    ag_metric_add(ag_metric_series(f, 0, d4), 10);  /* over the cap */
    ag_metric_add(ag_metric_series(f, 1, e), 100);  /* over the cap */
    ag_metric_add(ag_metric_series(f, 1, a), 1000); /* known: still its own series */
    /* Over-long and invalid UTF-8 values collapse too (hostile input from paths). */
    char longv[AG_METRICS_MAX_VALUE_LEN + 2];
    memset(longv, 'x', sizeof longv - 1);
    longv[sizeof longv - 1] = '\0';
    const char *lv[] = { longv, "prompt" }, *bad[] = { "\xc3\x28", "prompt" };
    ag_metric_add(ag_metric_series(f, 0, lv), 10000);
    ag_metric_add(ag_metric_series(f, 0, bad), 100000);
    CHECK_INT(ag_metric_family_nseries(f), 3);
    CHECK_RENDER(m, "# HELP t_app_total Apps.\n# TYPE t_app_total counter\n"
                    "t_app_total{app=\"a\",kind=\"prompt\"} 1001\n"
                    "t_app_total{app=\"b\",kind=\"prompt\"} 1\n"
                    "t_app_total{app=\"c\",kind=\"prompt\"} 1\n"
                    "t_app_total{app=\"other\",kind=\"other\"} 110111\n");
    uint64_t n = 0;
    CHECK(ag_metric_read(f, lit, NULL, &n));
    CHECK_INT(n, 110111);
    /* A value exactly at the length limit is kept (when there is room). */
    ag_metrics *m2 = ag_metrics_new(1, 0);
    ag_metric_family *f2 = ag_metrics_declare(m2, &d, NULL, 0);
    longv[AG_METRICS_MAX_VALUE_LEN] = '\0';
    ag_metric_inc(ag_metric_series(f2, 0, lv));
    CHECK_INT(ag_metric_family_nseries(f2), 1);
    CHECK(!ag_metric_read(f2, lit, NULL, NULL));
    ag_metrics_free(m2);
    ag_metrics_free(m);
}

/* ---- threads ---- */

#define T_WORKERS 4
#define T_ITERS 200000
#define T_SETS 10

typedef struct t_ctx {
    ag_metric_family *counter, *hist, *gauge;
    unsigned shard;
    atomic_int *running;
} t_ctx;

static void *worker_main(void *arg)
{
    t_ctx *c = arg;
    const char *shared[] = { "shared" };
    ag_metric_handle cached = ag_metric_series(c->counter, c->shard, shared);
    ag_metric_handle h = ag_metric_series(c->hist, c->shard, NULL);
    ag_metric_handle g = ag_metric_series(c->gauge, c->shard, NULL);
    char name[T_SETS][16];
    for (int i = 0; i < T_SETS; i++)
        snprintf(name[i], sizeof name[i], "set%d", i);
    for (int i = 0; i < T_ITERS; i++) {
        ag_metric_inc(cached);
        const char *v[] = { name[(i + (int)c->shard) % T_SETS] };
        ag_metric_inc(ag_metric_series(c->counter, c->shard, v)); /* lookup path, interning races */
        ag_metric_observe(h, (i % 4) * 0.5);                      /* 0, 0.5, 1, 1.5 */
        ag_metric_gauge_add(g, 1);
        ag_metric_gauge_add(g, -1);
    }
    ag_metric_gauge_add(g, 1);
    atomic_fetch_sub(c->running, 1);
    return NULL;
}

typedef struct t_scrape {
    ag_metrics *m;
    ag_metric_family *counter;
    atomic_int *running;
    int renders;
    int monotonic_violations;
    int render_failures;
} t_scrape;

static void *scraper_main(void *arg)
{
    t_scrape *s = arg;
    const char *shared[] = { "shared" };
    uint64_t last = 0;
    while (atomic_load(s->running) > 0) {
        char *text = render(s->m);
        if (!text)
            s->render_failures++;
        free(text);
        uint64_t now = 0;
        if (ag_metric_read(s->counter, shared, NULL, &now) && now < last)
            s->monotonic_violations++;
        if (now > last)
            last = now;
        s->renders++;
    }
    return NULL;
}

static void test_threads(void)
{
    ag_metrics *m = ag_metrics_new(T_WORKERS + 1, 0);
    static const char *const labels[] = { "key", NULL };
    static const double b[] = { 0.5, 1 };
    ag_metric_desc dc = { "t_thr_total", "Threads.", AG_METRIC_COUNTER, labels, NULL, 0 };
    ag_metric_desc dh = { "t_thr_seconds", "Threads.", AG_METRIC_HISTOGRAM, NULL, b, 2 };
    ag_metric_desc dg = { "t_thr_open", "Threads.", AG_METRIC_GAUGE, NULL, NULL, 0 };
    ag_metric_family *fc = ag_metrics_declare(m, &dc, NULL, 0);
    ag_metric_family *fh = ag_metrics_declare(m, &dh, NULL, 0);
    ag_metric_family *fg = ag_metrics_declare(m, &dg, NULL, 0);
    atomic_int running = T_WORKERS;
    t_ctx ctx[T_WORKERS];
    pthread_t th[T_WORKERS], scr;
    t_scrape sc = { m, fc, &running, 0, 0, 0 };
    CHECK_INT(pthread_create(&scr, NULL, scraper_main, &sc), 0);
    for (unsigned i = 0; i < T_WORKERS; i++) {
        ctx[i] = (t_ctx){ fc, fh, fg, i, &running };
        CHECK_INT(pthread_create(&th[i], NULL, worker_main, &ctx[i]), 0);
    }
    for (int i = 0; i < T_WORKERS; i++)
        pthread_join(th[i], NULL);
    pthread_join(scr, NULL);
    CHECK(sc.renders > 0);
    CHECK_INT(sc.render_failures, 0);
    CHECK_INT(sc.monotonic_violations, 0);

    uint64_t n = 0;
    const char *shared[] = { "shared" };
    CHECK(ag_metric_read(fc, shared, NULL, &n));
    CHECK_INT(n, (uint64_t)T_WORKERS * T_ITERS);
    CHECK_INT(ag_metric_family_nseries(fc), T_SETS + 1);
    uint64_t total = 0;
    for (int k = 0; k < T_SETS; k++) {
        char name[16];
        snprintf(name, sizeof name, "set%d", k);
        const char *v[] = { name };
        n = 0;
        CHECK(ag_metric_read(fc, v, NULL, &n));
        CHECK_INT(n, (uint64_t)T_WORKERS * T_ITERS / T_SETS); /* ITERS is a multiple of SETS */
        total += n;
    }
    CHECK_INT(total, (uint64_t)T_WORKERS * T_ITERS);
    double sum = 0;
    CHECK(ag_metric_read(fh, NULL, &sum, &n));
    CHECK_INT(n, (uint64_t)T_WORKERS * T_ITERS);
    CHECK(sum == (double)T_WORKERS * (T_ITERS / 4) * (0 + 0.5 + 1 + 1.5));
    double open = 0;
    CHECK(ag_metric_read(fg, NULL, &open, NULL));
    CHECK(open == T_WORKERS);
    char *text = render(m);
    char want[256];
    snprintf(want, sizeof want,
             "t_thr_seconds_bucket{le=\"0.5\"} %d\nt_thr_seconds_bucket{le=\"1\"} %d\n"
             "t_thr_seconds_bucket{le=\"+Inf\"} %d\n",
             T_WORKERS * T_ITERS / 2, T_WORKERS * T_ITERS * 3 / 4, T_WORKERS * T_ITERS);
    CHECK(text && strstr(text, want) != NULL);
    free(text);
    ag_metrics_free(m);
}

static void test_declare_errors(void)
{
    ag_metrics *m = ag_metrics_new(1, 0);
    char err[256];
    static const double b[] = { 1, 2 }, unsorted[] = { 2, 1 };
    static const char *const le[] = { "le", NULL }, *const dup[] = { "a", "a", NULL };
    static const char *const reserved[] = { "__x", NULL }, *const badname[] = { "a-b", NULL };
    static const char *const five[] = { "a", "b", "c", "d", "e", NULL };
    static const char *const ok[] = { "le", "a", NULL };
    struct {
        ag_metric_desc d;
        const char *msg;
    } cases[] = {
        { { "1abc", "x", AG_METRIC_COUNTER, NULL, NULL, 0 }, "metric name \"1abc\" is not" },
        { { "a-b", "x", AG_METRIC_COUNTER, NULL, NULL, 0 }, "metric name \"a-b\" is not" },
        { { NULL, "x", AG_METRIC_COUNTER, NULL, NULL, 0 }, "metric name \"(null)\" is not" },
        { { "h", "x", AG_METRIC_HISTOGRAM, le, b, 2 }, "h: invalid or reserved label name \"le\"" },
        { { "c", "x", AG_METRIC_COUNTER, dup, NULL, 0 }, "c: duplicate label name \"a\"" },
        { { "c", "x", AG_METRIC_COUNTER, reserved, NULL, 0 }, "c: invalid or reserved label name \"__x\"" },
        { { "c", "x", AG_METRIC_COUNTER, badname, NULL, 0 }, "c: invalid or reserved label name \"a-b\"" },
        { { "c", "x", AG_METRIC_COUNTER, five, NULL, 0 }, "c: more than 4 labels" },
        { { "h", "x", AG_METRIC_HISTOGRAM, NULL, unsorted, 2 }, "h: bucket bounds must be finite" },
        { { "h", "x", AG_METRIC_HISTOGRAM, NULL, NULL, 0 }, "h: a histogram needs 1..32 buckets" },
        { { "c", "x", AG_METRIC_COUNTER, NULL, b, 2 }, "c: only histograms have buckets" },
        { { "c", NULL, AG_METRIC_COUNTER, NULL, NULL, 0 }, "c: help text missing" },
        { { "c", "\xff", AG_METRIC_COUNTER, NULL, NULL, 0 }, "c: help text missing or not valid UTF-8" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err[0] = '\0';
        CHECK(ag_metrics_declare(m, &cases[i].d, err, sizeof err) == NULL);
        if (strncmp(err, cases[i].msg, strlen(cases[i].msg)) != 0) {
            check_failures++;
            fprintf(stderr, "%s:%d: case %zu: error \"%s\", expected \"%s...\"\n", __FILE__, __LINE__, i,
                    err, cases[i].msg);
        }
    }
    /* "le" is fine outside histograms; names clash with a histogram's series names. */
    ag_metric_desc g = { "g", "x", AG_METRIC_GAUGE, ok, NULL, 0 };
    CHECK(ag_metrics_declare(m, &g, err, sizeof err) != NULL);
    CHECK(ag_metrics_declare(m, &g, err, sizeof err) == NULL);
    CHECK_STR(err, "g: clashes with the metric family g");
    ag_metric_desc h = { "lat", "x", AG_METRIC_HISTOGRAM, NULL, b, 2 };
    CHECK(ag_metrics_declare(m, &h, err, sizeof err) != NULL);
    ag_metric_desc hc = { "lat_count", "x", AG_METRIC_COUNTER, NULL, NULL, 0 };
    CHECK(ag_metrics_declare(m, &hc, err, sizeof err) == NULL);
    CHECK_STR(err, "lat_count: clashes with the metric family lat");
    ag_metric_desc s1 = { "x_sum", "x", AG_METRIC_GAUGE, NULL, NULL, 0 };
    ag_metric_desc s2 = { "x", "x", AG_METRIC_HISTOGRAM, NULL, b, 2 };
    CHECK(ag_metrics_declare(m, &s1, err, sizeof err) != NULL);
    CHECK(ag_metrics_declare(m, &s2, err, sizeof err) == NULL);
    CHECK_STR(err, "x: clashes with the metric family x_sum");
    ag_metric_desc hist_ok = { "lat_counted", "x", AG_METRIC_COUNTER, NULL, NULL, 0 };
    CHECK(ag_metrics_declare(m, &hist_ok, err, sizeof err) != NULL);
    ag_metrics_free(m);

    CHECK(ag_metrics_new(0, 0) == NULL);
    CHECK(ag_metrics_new(AG_METRICS_MAX_SHARDS + 1, 0) == NULL);
    CHECK(ag_metrics_new(1, AG_METRICS_MAX_SERIES_LIMIT + 1) == NULL);
    ag_metrics_free(NULL);
}

static const char *find_line(const char *text, const char *prefix)
{
    size_t n = strlen(prefix);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, prefix, n) == 0)
            return p + n;
    return NULL;
}

static void test_std(void)
{
    CHECK_STR(ag_metrics_code_class(200), "2xx");
    CHECK_STR(ag_metrics_code_class(100), "1xx");
    CHECK_STR(ag_metrics_code_class(429), "4xx");
    CHECK_STR(ag_metrics_code_class(599), "5xx");
    CHECK_STR(ag_metrics_code_class(600), "other");
    CHECK_STR(ag_metrics_code_class(99), "other");
    CHECK_STR(ag_metrics_code_class(-1), "other");
    size_t nb = 0;
    const double *b = ag_metrics_latency_buckets(&nb);
    CHECK_INT(nb, 17);
    CHECK(b[0] == 0.0005 && b[nb - 1] == 120);

    ag_metrics *m = ag_metrics_new(3, 0);
    ag_metrics_std std;
    char err[256] = "";
    CHECK_INT(ag_metrics_std_init(m, NULL, "9.9.9", &std, err, sizeof err), 0);
    CHECK_STR(err, "");
    CHECK(std.app_tokens_total != NULL);
    static const char *const names[] = {
        "aoai_guard_requests_total counter", "aoai_guard_request_duration_seconds histogram",
        "aoai_guard_upstream_ttfb_seconds histogram", "aoai_guard_tokens_total counter",
        "aoai_guard_app_tokens_total counter", "aoai_guard_ratelimit_rejections_total counter",
        "aoai_guard_policy_decisions_total counter", "aoai_guard_upstream_up gauge",
        "aoai_guard_upstream_circuit_open gauge", "aoai_guard_upstream_failures_total counter",
        "aoai_guard_auth_failures_total counter", "aoai_guard_jwks_age_seconds gauge",
        "aoai_guard_jwks_refresh_failures_total counter",
        "aoai_guard_credential_refresh_failures_total counter", "aoai_guard_audit_queue_depth gauge",
        "aoai_guard_audit_spool_bytes gauge", "aoai_guard_audit_records_sent_total counter",
        "aoai_guard_audit_retries_total counter", "aoai_guard_audit_dropped_total counter",
        "aoai_guard_open_connections gauge", "aoai_guard_process_resident_memory_bytes gauge",
        "aoai_guard_build_info gauge",
    };
    const char *req[] = { "gpt-4o-mini", "chat", ag_metrics_code_class(200) };
    ag_metric_inc(ag_metric_series(std.requests_total, 0, req));
    const char *op[] = { "chat" };
    ag_metric_observe(ag_metric_series(std.request_duration_seconds, 1, op), 0.003);
    char *text = render(m);
    CHECK(text != NULL);
    for (size_t i = 0; text && i < sizeof names / sizeof names[0]; i++) {
        char line[128];
        snprintf(line, sizeof line, "# TYPE %s\n", names[i]);
        if (!strstr(text, line)) {
            check_failures++;
            fprintf(stderr, "%s:%d: missing \"%s\"\n", __FILE__, __LINE__, names[i]);
        }
        check_count++;
    }
    if (text) {
        CHECK(strstr(text, "\naoai_guard_build_info{version=\"9.9.9\"} 1\n") != NULL);
        CHECK(strstr(text, "\naoai_guard_requests_total{deployment=\"gpt-4o-mini\",operation=\"chat\","
                           "code_class=\"2xx\"} 1\n") != NULL);
        CHECK(strstr(text, "\naoai_guard_request_duration_seconds_bucket{operation=\"chat\",le=\"0.0025\"} 0\n"
                           "aoai_guard_request_duration_seconds_bucket{operation=\"chat\",le=\"0.005\"} 1\n")
              != NULL);
        CHECK(strstr(text, "le=\"0.0005\"} 0\n") != NULL);
        CHECK(strstr(text, "le=\"120\"} 1\n") != NULL);
        const char *rss = find_line(text, "aoai_guard_process_resident_memory_bytes ");
        CHECK(rss != NULL && strtod(rss, NULL) > 1e5);
        CHECK(find_line(text, "aoai_guard_open_connections 0\n") != NULL);
    }
    free(text);
    CHECK(ag_metrics_process_rss_bytes(NULL) > 1e5);
    /* Declaring the standard set twice fails on the first name. */
    ag_metrics_std again;
    CHECK_INT(ag_metrics_std_init(m, NULL, NULL, &again, err, sizeof err), -1);
    CHECK_STR(err, "aoai_guard_requests_total: clashes with the metric family aoai_guard_requests_total");
    ag_metrics_free(m);

    ag_metrics_conf conf;
    ag_metrics_conf_default(&conf);
    conf.app_label = AG_METRICS_APP_LABEL_OFF;
    m = ag_metrics_new(1, 0);
    CHECK_INT(ag_metrics_std_init(m, &conf, NULL, &std, err, sizeof err), 0);
    CHECK(std.app_tokens_total == NULL);
    const char *app[] = { "some-app", "prompt" };
    ag_metric_add(ag_metric_series(std.app_tokens_total, 0, app), 5); /* no-op, no crash */
    text = render(m);
    CHECK(text && strstr(text, "app_tokens") == NULL);
    CHECK(text && strstr(text, "aoai_guard_build_info{version=\"" AG_VERSION "\"} 1\n") != NULL);
    free(text);
    ag_metrics_free(m);
}

static void test_conf(void)
{
    ag_metrics_conf c;
    ag_conf_err err;
    ag_metrics_conf_default(&c);
    CHECK_INT(c.max_series, 200);
    CHECK_INT(c.app_label, AG_METRICS_APP_LABEL_APP_ID);
    CHECK_INT(ag_metrics_conf_parse(NULL, "admin.metrics", &c, &err), 0);
    cJSON *j = cJSON_Parse("{\"max_series_per_family\": 50, \"app_label\": \"off\"}");
    CHECK_INT(ag_metrics_conf_parse(j, "admin.metrics", &c, &err), 0);
    CHECK_INT(c.max_series, 50);
    CHECK_INT(c.app_label, AG_METRICS_APP_LABEL_OFF);
    cJSON_Delete(j);
    ag_metrics_conf_default(&c);
    j = cJSON_Parse("{\"app_label\": \"app_id\"}");
    CHECK_INT(ag_metrics_conf_parse(j, "admin.metrics", &c, &err), 0);
    CHECK_INT(c.max_series, 200);
    cJSON_Delete(j);
    struct {
        const char *json;
        const char *msg;
    } bad[] = {
        { "{\"max_series\": 5}", "admin.metrics.max_series: unknown key" },
        { "{\"max_series_per_family\": 0}", "admin.metrics.max_series_per_family: must be an integer from 1 to 100000" },
        { "{\"max_series_per_family\": 1.5}", "admin.metrics.max_series_per_family: must be an integer" },
        { "{\"app_label\": \"oid\"}", "admin.metrics.app_label: must be one of app_id, off" },
        { "[]", "admin.metrics: must be a JSON object" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        j = cJSON_Parse(bad[i].json);
        ag_metrics_conf_default(&c);
        err.msg[0] = '\0';
        CHECK_INT(ag_metrics_conf_parse(j, "admin.metrics", &c, &err), -1);
        if (strncmp(err.msg, bad[i].msg, strlen(bad[i].msg)) != 0) {
            check_failures++;
            fprintf(stderr, "%s:%d: \"%s\" gave \"%s\"\n", __FILE__, __LINE__, bad[i].json, err.msg);
        }
        CHECK_INT(c.max_series, 200);
        cJSON_Delete(j);
    }
}

/* Runs promparse.py on text; returns its exit status, and its stdout in *out (caller frees). */
static int run_promparse(const char *text, char **out)
{
    const char *src = getenv("AG_SOURCE_DIR"); /* set by CTest */
    char script[1024], path[] = "/tmp/ag-metrics-XXXXXX";
    if (src) {
        snprintf(script, sizeof script, "%s/tests/integration/promparse.py", src);
    } else { /* run by hand: CMake passes __FILE__ as an absolute path */
        snprintf(script, sizeof script, "%s", __FILE__);
        char *cut = strstr(script, "/tests/unit/obs/");
        if (!cut)
            return -1;
        snprintf(cut, sizeof script - (size_t)(cut - script), "%s", "/tests/integration/promparse.py");
    }
    int fd = mkstemp(path);
    if (fd < 0)
        return -1;
    size_t len = strlen(text);
    ssize_t w = write(fd, text, len);
    close(fd);
    if (w != (ssize_t)len) {
        unlink(path);
        return -1;
    }
    char cmd[2300];
    snprintf(cmd, sizeof cmd, "python3 '%s' '%s'", script, path);
    FILE *p = popen(cmd, "r");
    if (!p) {
        unlink(path);
        return -1;
    }
    size_t cap = 1 << 16, used = 0;
    char *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + used, 1, cap - used - 1, p)) > 0) {
        used += n;
        if (used + 1 == cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    if (buf)
        buf[used] = '\0';
    int st = pclose(p);
    unlink(path);
    *out = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_promparse_roundtrip(void)
{
    ag_metrics *m = ag_metrics_new(3, 2);
    ag_metrics_std std;
    CHECK_INT(ag_metrics_std_init(m, NULL, "1.2.3", &std, NULL, 0), 0);
    const char *r1[] = { "gpt-4o", "chat", "2xx" }, *r2[] = { "evil\"\\\ndep", "chat", "4xx" };
    const char *r3[] = { "third", "embeddings", "5xx" };
    ag_metric_add(ag_metric_series(std.requests_total, 0, r1), 5);
    ag_metric_add(ag_metric_series(std.requests_total, 1, r1), 2);
    ag_metric_inc(ag_metric_series(std.requests_total, 1, r2));
    ag_metric_inc(ag_metric_series(std.requests_total, 2, r3)); /* over the cap of 2 */
    const char *up[] = { "eastus" };
    for (int i = 0; i < 10; i++)
        ag_metric_observe(ag_metric_series(std.upstream_ttfb_seconds, (unsigned)i % 3, up), i * 0.01);
    ag_metric_set(ag_metric_series(std.upstream_up, 2, up), 1);
    char *text = render(m);
    CHECK(text != NULL);
    char *json = NULL;
    CHECK_INT(run_promparse(text ? text : "", &json), 0);
    cJSON *root = json ? cJSON_Parse(json) : NULL;
    CHECK(root != NULL);
    const cJSON *fam = cJSON_GetObjectItemCaseSensitive(root, "aoai_guard_requests_total");
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(fam, "type")), "counter");
    const cJSON *samples = cJSON_GetObjectItemCaseSensitive(fam, "samples");
    CHECK_INT(cJSON_GetArraySize(samples), 3);
    int seen = 0;
    const cJSON *s;
    cJSON_ArrayForEach(s, samples) {
        const cJSON *labels = cJSON_GetObjectItemCaseSensitive(s, "labels");
        const char *dep = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(labels, "deployment"));
        double v = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(s, "value"));
        if (dep && strcmp(dep, "gpt-4o") == 0 && v == 7)
            seen |= 1;
        if (dep && strcmp(dep, "evil\"\\\ndep") == 0 && v == 1)
            seen |= 2;
        if (dep && strcmp(dep, "other") == 0 && v == 1)
            seen |= 4;
    }
    CHECK_INT(seen, 7);
    const cJSON *ttfb = cJSON_GetObjectItemCaseSensitive(root, "aoai_guard_upstream_ttfb_seconds");
    CHECK_INT(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(ttfb, "samples")), 17 + 1 + 2);
    cJSON_Delete(root);
    free(json);
    json = NULL;

    /* The same text with the +Inf bucket of the histogram removed must be refused. */
    if (text) {
        char *cut = strdup(text);
        char *line = strstr(cut, "aoai_guard_upstream_ttfb_seconds_bucket{upstream=\"eastus\",le=\"+Inf\"}");
        CHECK(line != NULL);
        if (line) {
            char *eol = strchr(line, '\n');
            memmove(line, eol + 1, strlen(eol + 1) + 1);
            CHECK_INT(run_promparse(cut, &json), 1);
            free(json);
            json = NULL;
        }
        free(cut);
    }
    free(text);
    ag_metrics_free(m);
}

int main(void)
{
    test_counter();
    test_memo();
    test_gauge();
    test_histogram();
    test_escaping();
    test_cardinality();
    test_threads();
    test_declare_errors();
    test_std();
    test_conf();
    test_promparse_roundtrip();
    return CHECK_DONE();
}
