/* Token estimator: exact pieces of the rules (budget, n, defaults, token-id inputs), hostile shapes,
 * and the measured error against true counts on tests/unit/limit/corpus/corpus.json (see its README). */
#include "check.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "aoai_guard/json_strict.h"
#include "aoai_guard/token_estimate.h"

static cJSON *parse(const char *s)
{
    ag_json_limits lim = { 64, 1000000 };
    ag_json_status st;
    size_t off;
    cJSON *j = ag_json_parse_strict(s, strlen(s), &lim, &st, &off);
    if (!j)
        fprintf(stderr, "parse failed: %s at %zu\n", ag_json_status_str(st), off);
    return j;
}

static ag_token_estimate est(const char *op, const char *json)
{
    ag_token_estimate e;
    cJSON *j = parse(json);
    ag_tokens_estimate_request(j, op, &e);
    cJSON_Delete(j);
    return e;
}

static void test_text_basics(void)
{
    CHECK_INT(ag_tokens_text("", 0), 0);
    CHECK_INT(ag_tokens_text("hello", 5), 1);
    CHECK_INT(ag_tokens_text("hello world", 11), 2);       /* " world" attaches its space */
    CHECK_INT(ag_tokens_text("123456789", 9), 3);          /* digit groups of 3 */
    CHECK_INT(ag_tokens_text("1234567890", 10), 4);
    CHECK_INT(ag_tokens_text("\xe4\xbd\xa0\xe5\xa5\xbd", 6), 2); /* two Han characters */
    CHECK_INT(ag_tokens_text("\xff\xfe", 2), 2);           /* invalid bytes: one each */
    CHECK(ag_tokens_text("getUserById", 11) >= 3);         /* camelCase pieces */
    /* monotone-ish: doubling a text roughly doubles the estimate */
    const char *p = "The quick brown fox jumps over the lazy dog. ";
    long long one = ag_tokens_text(p, strlen(p));
    char buf[512];
    snprintf(buf, sizeof buf, "%s%s%s%s", p, p, p, p);
    long long four = ag_tokens_text(buf, strlen(buf));
    CHECK(four >= 4 * one - 4 && four <= 4 * one);
}

static void test_budget_rules(void)
{
    ag_token_estimate e = est("chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
    /* 3 priming + 3 per message + role (1) + "hi" (1) */
    CHECK_INT(e.prompt, 8);
    CHECK_INT(e.completion_max, -1);
    CHECK_INT(e.choices, 1);
    CHECK_INT(ag_tokens_estimate_cost(&e, 1024), 8 + 1024);
    CHECK_INT(ag_tokens_estimate_cost(&e, 0), 8);

    e = est("chat/completions",
            "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":100,\"n\":3}");
    CHECK_INT(e.completion_max, 100);
    CHECK_INT(ag_tokens_estimate_cost(&e, 1024), 8 + 300);

    /* max_completion_tokens wins over max_tokens */
    e = est("chat/completions", "{\"messages\":[],\"max_tokens\":100,\"max_completion_tokens\":50}");
    CHECK_INT(e.completion_max, 50);
    CHECK_INT(e.prompt, 3);

    /* hostile numbers are clamped, never overflow */
    e = est("chat/completions", "{\"messages\":[],\"max_tokens\":1e300,\"n\":1e9}");
    CHECK_INT(e.completion_max, 1000000000LL);
    CHECK_INT(e.choices, 128);
    CHECK_INT(ag_tokens_estimate_cost(&e, 0), 3 + 128 * 1000000000LL);
    e = est("chat/completions", "{\"messages\":[],\"max_tokens\":-5,\"n\":-2}");
    CHECK_INT(e.completion_max, 0);
    CHECK_INT(e.choices, 1);

    /* wrong shapes count nothing rather than crash */
    e = est("chat/completions", "{\"messages\":\"oops\",\"tools\":{\"a\":1},\"n\":\"3\"}");
    CHECK_INT(e.prompt, 3);
    CHECK_INT(e.choices, 1);
    e = est("chat/completions", "[1,2,3]");
    CHECK_INT(e.prompt, 3);

    /* legacy completions: default max_tokens 16, best_of multiplies */
    e = est("completions", "{\"prompt\":\"hello\",\"best_of\":3}");
    CHECK_INT(e.prompt, 1);
    CHECK_INT(ag_tokens_estimate_cost(&e, 1024), 1 + 3 * 16);

    /* embeddings: token-id inputs count exactly, no completion */
    e = est("embeddings", "{\"input\":[[1,2,3],[4,5]]}");
    CHECK_INT(e.prompt, 5);
    CHECK(!e.completes);
    CHECK_INT(ag_tokens_estimate_cost(&e, 1024), 5);
    e = est("embeddings", "{\"input\":[10,20,30,40]}");
    CHECK_INT(e.prompt, 4);

    /* responses: max_output_tokens */
    e = est("responses", "{\"input\":\"hi\",\"max_output_tokens\":77}");
    CHECK_INT(e.completion_max, 77);
    CHECK_INT(e.prompt, 3 + 3 + 1 + 1);

    /* images: low detail 85, otherwise the 1024x1024 high-detail price */
    e = est("chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
                                "\"image_url\":{\"url\":\"x\",\"detail\":\"low\"}}]}]}");
    CHECK_INT(e.prompt, 3 + 3 + 1 + 85);
    e = est("chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
                                "\"image_url\":{\"url\":\"x\"}}]}]}");
    CHECK_INT(e.prompt, 3 + 3 + 1 + 765);

    /* unknown operation: a top-level prompt string only */
    e = est("images/generations", "{\"prompt\":\"a red fox\"}");
    CHECK_INT(e.prompt, 3);
    CHECK_INT(ag_tokens_estimate_cost(&e, 1024), 3);
}

typedef struct stats {
    int n;
    double sum_abs, sum_signed, max_abs;
    char worst[64];
} stats;

static void add(stats *s, const char *id, double rel)
{
    s->n++;
    s->sum_abs += fabs(rel);
    s->sum_signed += rel;
    if (fabs(rel) > s->max_abs) {
        s->max_abs = fabs(rel);
        snprintf(s->worst, sizeof s->worst, "%s", id);
    }
}

static void print_stats(const char *label, const stats *s)
{
    if (s->n == 0)
        return;
    fprintf(stderr, "  %-22s n=%2d  mean|err|=%5.1f%%  bias=%+6.1f%%  max|err|=%5.1f%% (%s)\n", label, s->n,
            100.0 * s->sum_abs / s->n, 100.0 * s->sum_signed / s->n, 100.0 * s->max_abs, s->worst);
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)sz + 1);
    if (buf && fread(buf, 1, (size_t)sz, f) != (size_t)sz) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[sz] = '\0';
        *len = (size_t)sz;
    }
    return buf;
}

static void test_corpus(void)
{
    const char *src = getenv("AG_SOURCE_DIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/unit/limit/corpus/corpus.json", src ? src : ".");
    size_t len = 0;
    char *text = read_file(path, &len);
    CHECK(text != NULL);
    if (!text)
        return;
    ag_json_limits lim = { 64, 1000000 };
    ag_json_status st;
    size_t off;
    cJSON *doc = ag_json_parse_strict(text, len, &lim, &st, &off);
    free(text);
    CHECK(doc != NULL);
    if (!doc)
        return;
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(doc, "items");
    CHECK(cJSON_GetArraySize(items) >= 25);

    static const char *cats[] = { "prose", "code", "cjk", "european", "tools", "parts", "embeddings",
                                  "responses", NULL };
    stats by_cat[8], all_o = { 0 }, all_cl = { 0 }, exact = { 0 }, approx = { 0 };
    memset(by_cat, 0, sizeof by_cat);
    int under_10 = 0; /* items underestimated by more than 10% against o200k */
    fprintf(stderr, "estimator vs tiktoken (prompt tokens):\n  %-20s %6s %6s %6s  %s\n", "item", "est",
            "o200k", "cl100k", "method");
    for (const cJSON *it = items ? items->child : NULL; it; it = it->next) {
        const char *id = cJSON_GetObjectItemCaseSensitive(it, "id")->valuestring;
        const char *cat = cJSON_GetObjectItemCaseSensitive(it, "category")->valuestring;
        const char *op = cJSON_GetObjectItemCaseSensitive(it, "operation")->valuestring;
        const cJSON *truth = cJSON_GetObjectItemCaseSensitive(it, "truth");
        double to = cJSON_GetObjectItemCaseSensitive(truth, "o200k")->valuedouble;
        double tc = cJSON_GetObjectItemCaseSensitive(truth, "cl100k")->valuedouble;
        const char *method = cJSON_GetObjectItemCaseSensitive(truth, "method")->valuestring;
        ag_token_estimate e;
        ag_tokens_estimate_request(cJSON_GetObjectItemCaseSensitive(it, "body"), op, &e);
        fprintf(stderr, "  %-20s %6lld %6.0f %6.0f  %s\n", id, e.prompt, to, tc, method);
        double ro = (e.prompt - to) / to, rc = (e.prompt - tc) / tc;
        add(&all_o, id, ro);
        add(&all_cl, id, rc);
        add(strcmp(method, "approx") == 0 ? &approx : &exact, id, ro);
        for (int c = 0; cats[c]; c++)
            if (strcmp(cats[c], cat) == 0)
                add(&by_cat[c], id, ro);
        if (ro < -0.10)
            under_10++;
    }
    fprintf(stderr, "error against o200k_base by category:\n");
    for (int c = 0; cats[c]; c++)
        print_stats(cats[c], &by_cat[c]);
    fprintf(stderr, "overall:\n");
    print_stats("o200k, all", &all_o);
    print_stats("o200k, exact+cookbook", &exact);
    print_stats("o200k, approx truth", &approx);
    print_stats("cl100k, all", &all_cl);
    fprintf(stderr, "  underestimated by >10%% (o200k): %d items\n", under_10);

    /* Bounds the estimator must keep (fitted values are printed above; see docs/rate-limits.md). */
    CHECK(all_o.n >= 25);
    CHECK(all_o.sum_abs / all_o.n <= 0.12);  /* mean |error| against o200k */
    CHECK(all_o.max_abs <= 0.45);            /* no item off by more than 45% */
    CHECK(all_cl.sum_abs / all_cl.n <= 0.10);
    CHECK(under_10 <= 2);                    /* it errs high, not low */
    cJSON_Delete(doc);
}

/* The fast path for plain ASCII words against the general rules: every string over a small alphabet
 * that covers each branch (letters of both cases, the word's end at every class, UTF-8 letters and
 * marks, invalid bytes), then random texts from it, then each corpus string's bytes. */
static void test_fast_path(void)
{
    static const char *const atoms[] = { "a", "z", "A", "Z", "q", "Q", " ", "  ", "\n", "\t", "7", ".", ",",
                                         "_", "'", "\xc3\xa9", "\xd0\x96", "\xe4\xbd\xa0", "\xf0\x9f\x98\x80",
                                         "\xff", "\xc3", "\x7f", "\xc2\xa0", "abc", "Abc", "ABC", "HTTPServer",
                                         "getUserById", "xyzzyplughabcdefghij", "{", "`", "[", "@",
                                         "abcdefghijklmnopqrstuvwxyz" };
    const size_t natoms = sizeof atoms / sizeof atoms[0];
    char buf[512];
    int diffs = 0;
    for (size_t x = 0; x < natoms; x++) /* every pair and triple of atoms */
        for (size_t y = 0; y < natoms; y++)
            for (size_t z = 0; z < natoms; z++) {
                int n = snprintf(buf, sizeof buf, "%s%s%s", atoms[x], atoms[y], atoms[z]);
                for (int cut = 0; cut <= n; cut++) /* and every prefix of it */
                    if (ag_tokens_text(buf, (size_t)cut) != ag_tokens_text_general(buf, (size_t)cut))
                        diffs++;
            }
    CHECK_INT(diffs, 0);
    for (int iter = 0; iter < 20000; iter++) {
        size_t n = 0;
        while (n < 400) {
            const char *a = atoms[check_rnd((unsigned)natoms)];
            size_t al = strlen(a);
            memcpy(buf + n, a, al);
            n += al;
            if (check_rnd(40) == 0)
                break;
        }
        if (ag_tokens_text(buf, n) != ag_tokens_text_general(buf, n))
            diffs++;
    }
    CHECK_INT(diffs, 0);
}

/* The sixteen-byte path for runs of plain words against the general rules: texts that are mostly
 * words joined by single spaces, so that the path runs, with what must end a run (two spaces, a
 * capital inside a word, a word of 16 letters or more, punctuation, a digit, UTF-8, a tab) dropped
 * in at every offset of a block, and word lengths on both sides of each price step (4/5, 7/8,
 * 10/11). */
static void test_plain_word_runs(void)
{
    static const char *const words[] = { "a", "I", "an", "The", "team", "plans", "Finance", "reviewed",
                                         "quarterly", "priorities", "onboarding", "departmental",
                                         "abcdefghijklmno", "abcdefghijklmnop", "Abcdefghijklmnop", "x" };
    static const char *const odd[] = { "HTTPServer", "getUserById", "aB", "AB", "7", "42", "\xc3\xa9t\xc3\xa9",
                                       "caf\xc3\xa9", "\xff", "_", "q'u", "can't" };
    static const char *const seps[] = { " ", " ", " ", " ", " ", " ", "  ", ", ", ". ", ".", "\n", "\t", "-", "" };
    const size_t nwords = sizeof words / sizeof words[0], nodd = sizeof odd / sizeof odd[0];
    const size_t nseps = sizeof seps / sizeof seps[0];
    static check_text text;
    int diffs = 0;
    for (int iter = 0; iter < 20000; iter++) {
        text.len = 0;
        while (text.len < 600) {
            check_put(&text, check_rnd(10) ? words[check_rnd((unsigned)nwords)] : odd[check_rnd((unsigned)nodd)]);
            check_put(&text, seps[check_rnd(6) ? 0 : check_rnd((unsigned)nseps)]);
            if (check_rnd(80) == 0)
                break;
        }
        if (ag_tokens_text(text.buf, text.len) != ag_tokens_text_general(text.buf, text.len))
            diffs++;
    }
    CHECK_INT(diffs, 0);
}

int main(void)
{
    test_text_basics();
    test_fast_path();
    test_plain_word_runs();
    test_budget_rules();
    test_corpus();
    return CHECK_DONE();
}
