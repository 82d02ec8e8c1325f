/* Usage from a whole JSON response: the in-place scan of the usage object (usage.c) must give
 * exactly what cJSON + ag_usage_parse gives, on Azure's shapes, on odd ones and on random
 * mutations of both. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "aoai_guard/request.h"
#include "aoai_guard/json_arena.h"
#include "aoai_guard/usage.h"
#include "aoai_guard/worker.h"
#include "check.h"

#define rnd check_rnd

/* The reference: the whole body through cJSON, usage read from the tree (the last "usage" object
 * in the text, as find_usage_object picks it, parsed from there). */
static ag_usage reference(const char *body, size_t len)
{
    ag_usage u = {0};
    const char *found = NULL;
    for (const char *p = body; (p = memmem(p, len - (size_t)(p - body), "\"usage\"", 7)) != NULL; p += 7) {
        const char *q = p + 7;
        while (q < body + len && strchr(" \t\r\n", *q) && *q)
            q++;
        if (q < body + len && *q == ':') {
            q++;
            while (q < body + len && strchr(" \t\r\n", *q) && *q)
                q++;
            if (q < body + len && *q == '{')
                found = q;
        }
    }
    if (!found)
        return u;
    cJSON *obj = cJSON_ParseWithLengthOpts(found, len - (size_t)(found - body), NULL, false);
    ag_usage_parse(obj, &u);
    cJSON_Delete(obj);
    return u;
}

static ag_request *req;

static ag_usage fast(const char *body, size_t len)
{
    memset(&req->usage, 0, sizeof req->usage);
    req->want_text = false;
    ag_usage_from_json_response(req, body, len);
    return req->usage;
}

static int same(ag_usage a, ag_usage b)
{
    return a.present == b.present && (!a.present || (a.prompt_tokens == b.prompt_tokens &&
                                                     a.completion_tokens == b.completion_tokens &&
                                                     a.total_tokens == b.total_tokens));
}

static void check_usage(const char *usage_json, int present, long long p, long long c, long long t)
{
    char body[2048];
    snprintf(body, sizeof body, "{\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":%s}", usage_json);
    ag_usage f = fast(body, strlen(body)), r = reference(body, strlen(body));
    CHECK(same(f, r));
    CHECK_INT(f.present, present);
    if (present) {
        CHECK_INT(f.prompt_tokens, p);
        CHECK_INT(f.completion_tokens, c);
        CHECK_INT(f.total_tokens, t);
    }
    if (!same(f, r))
        fprintf(stderr, "  differs on: %s\n", usage_json);
}


/* Streamed chat chunks: ag_usage_from_sse_event reads them in place (usage.c) and must take exactly
 * the text, usage and verdict that the tree of the whole event gives (ag_usage_from_sse_event_tree),
 * on Azure's chunks, on generated ones with every shape the reader distinguishes, and on mutations. */


/* JSON whitespace, now and then; rarely a control byte cJSON takes for space and strict JSON does not. */
static void ws(check_text *g)
{
    static const char *const w[] = {"", "", "", "", "", " ", "\n", "\t ", "\r\n  ", "\x01"};
    check_put(g, w[rnd(sizeof w / sizeof *w)]);
}

static void str(check_text *g)
{
    static const char *const s[] = {
        "\"Hello\"", "\" world\"", "\"\"", "\"line\\nbreak\"", "\"a \\\"quote\\\" \\\\ and \\/\"",
        "\"caf\xc3\xa9 \xe4\xb8\xad\xf0\x9f\x98\x80\"", "\"caf\\u00e9\"", "\"\\ud83d\\ude00\"", "\"nul\\u0000cut\"",
        "\"tab\\tand\\b\\f\\r\"", "\"bad \\x escape\"", "\"raw\x02ctl\"", "null", "7", "[\"x\"]", "{\"content\":\"in\"}",
        "\"usage\\\":{\\\"prompt_tokens\\\":1}\"", "\"\xff\xfe bytes\"",
    };
    check_put(g, s[rnd(sizeof s / sizeof *s)]);
}

static void key(check_text *g, const char *name)
{
    ws(g);
    check_put(g, "\"");
    check_put(g, name);
    check_put(g, "\"");
    ws(g);
    check_put(g, ":");
    ws(g);
}

static void index_value(check_text *g)
{
    static const char *const v[] = {"0", "0", "0", "1", "2", "-0", "0.0", "1e0", "0e5", "0.5", "1e-400", "10", "\"0\"", "null", "-1", "00"};
    check_put(g, v[rnd(sizeof v / sizeof *v)]);
}

static void delta(check_text *g)
{
    switch (rnd(8)) {
    case 0: check_put(g, "null"); return;
    case 1: str(g); return;
    case 2: check_put(g, "[{\"content\":\"not a delta\"}]"); return;
    default: break;
    }
    check_put(g, "{");
    int n = (int)rnd(4), first = 1;
    for (int i = 0; i < n; i++) {
        if (!first)
            check_put(g, ",");
        first = 0;
        switch (rnd(5)) {
        case 0: key(g, "role"); check_put(g, "\"assistant\""); break;
        case 1: key(g, "refusal"); check_put(g, "null"); break;
        case 2: key(g, "tool_calls"); check_put(g, "[{\"index\":0,\"function\":{\"arguments\":\"{\\\"a\\\":1}\"}}]"); break;
        default: key(g, rnd(8) ? "content" : "cont\\u0065nt"); str(g); break;
        }
        ws(g);
    }
    check_put(g, "}");
}

static void choice(check_text *g)
{
    if (!rnd(16)) {
        check_put(g, rnd(2) ? "null" : "\"choice\"");
        return;
    }
    check_put(g, "{");
    int n = 1 + (int)rnd(6), first = 1;
    for (int i = 0; i < n; i++) {
        if (!first)
            check_put(g, ",");
        first = 0;
        switch (rnd(7)) {
        case 0: key(g, "index"); index_value(g); break;
        case 1: case 2: key(g, "delta"); delta(g); break;
        case 3: key(g, "text"); str(g); break;
        case 4: key(g, "finish_reason"); check_put(g, rnd(2) ? "null" : "\"stop\""); break;
        case 5: key(g, "logprobs"); check_put(g, "null"); break;
        default:
            key(g, "content_filter_results");
            check_put(g, "{\"hate\":{\"filtered\":false,\"severity\":\"safe\"},\"self_harm\":{\"filtered\":false}}");
            break;
        }
        ws(g);
    }
    check_put(g, "}");
}

static void chunk(check_text *g)
{
    g->len = 0;
    check_put(g, "{");
    int n = 1 + (int)rnd(7), first = 1;
    for (int i = 0; i < n; i++) {
        if (!first)
            check_put(g, ",");
        first = 0;
        switch (rnd(12)) {
        case 0: case 1: case 2: {
            key(g, "choices");
            if (!rnd(10)) {
                check_put(g, rnd(2) ? "null" : "{}");
                break;
            }
            check_put(g, "[");
            int k = rnd(4) ? 1 : rnd(2) ? 0 : (int)rnd(15);
            for (int j = 0; j < k; j++) {
                if (j)
                    check_put(g, ",");
                ws(g);
                choice(g);
                ws(g);
            }
            check_put(g, "]");
            break;
        }
        case 3: case 4: {
            key(g, "usage");
            static const char *const u[] = {
                "null", "null", "{\"completion_tokens\":200,\"prompt_tokens\":23,\"total_tokens\":223}",
                "{\"prompt_tokens\":5,\"completion_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":9}",
                "{\"prompt_tokens\":1.5,\"total_tokens\":2}", "{\"completion_tokens\":4}", "\"usage\"", "[]",
            };
            check_put(g, u[rnd(sizeof u / sizeof *u)]);
            break;
        }
        case 5: key(g, "id"); check_put(g, "\"chatcmpl-FAKE00000000000000001\""); break;
        case 6: key(g, "created"); check_put(g, "1732800000"); break;
        case 7: key(g, "model"); check_put(g, "\"gpt-4o-mini-2024-07-18\""); break;
        case 8: key(g, "object"); check_put(g, "\"chat.completion.chunk\""); break;
        case 9:
            key(g, "prompt_filter_results");
            check_put(g, "[{\"prompt_index\":0,\"content_filter_results\":{\"hate\":{\"filtered\":false}}}]");
            break;
        case 10: key(g, "system_fingerprint"); check_put(g, "\"fp_bench\""); break;
        default:
            if (rnd(4)) {
                key(g, "type");
                check_put(g, rnd(2) ? "\"response.output_text.delta\",\"delta\":\"typed\"" : "\"other\"");
            } else {
                key(g, "nested");
                check_put(g, "{\"choices\":[{\"delta\":{\"content\":\"deep\"}}],\"usage\":{\"total_tokens\":1}}");
            }
            break;
        }
        ws(g);
    }
    check_put(g, "}");
    static const char *const tail[] = {"", "", "", "", " ", "\n", "x", "}", " {}"};
    check_put(g, tail[rnd(sizeof tail / sizeof *tail)]);
}

typedef struct chunk_result {
    ag_usage usage;
    int verdict;
    char *text;
    size_t text_len;
} chunk_result;

static chunk_result take(ag_request *r, const char *data, size_t len, bool want_text, bool tree)
{
    memset(&r->usage, 0, sizeof r->usage);
    r->want_text = want_text;
    ag_sse_event ev = {"", 0, data, len, data, len};
    chunk_result out;
    out.verdict = tree ? ag_usage_from_sse_event_tree(r, &ev) : ag_usage_from_sse_event(r, &ev);
    out.usage = r->usage;
    out.text = r->completion_text;
    out.text_len = r->completion_len;
    r->completion_text = NULL;
    r->completion_len = r->completion_cap = 0;
    return out;
}

static bool same_result(const chunk_result *a, const chunk_result *b)
{
    return same(a->usage, b->usage) && a->verdict == b->verdict && a->text_len == b->text_len &&
           (a->text_len == 0 || memcmp(a->text, b->text, a->text_len) == 0);
}

static void test_chunks_in_place(void)
{
    ag_worker *w = calloc(1, sizeof *w); /* only its event arena is used */
    ag_request *r = calloc(1, sizeof *r);
    r->worker = w;

    /* Azure's chunks: read in place (no tree: the event arena stays empty), same result. */
    static const char *const azure[] = {
        "{\"choices\":[{\"content_filter_results\":{\"hate\":{\"filtered\":false,\"severity\":\"safe\"}},"
        "\"delta\":{\"content\":\" the\"},\"finish_reason\":null,\"index\":0,\"logprobs\":null}],"
        "\"created\":1732800000,\"id\":\"chatcmpl-1\",\"model\":\"gpt-4o-mini\",\"object\":\"chat.completion.chunk\","
        "\"system_fingerprint\":\"fp\",\"usage\":null}",
        "{\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",\"prompt_filter_results\":"
        "[{\"prompt_index\":0,\"content_filter_results\":{}}]}",
        "{\"choices\":[],\"id\":\"c\",\"usage\":{\"completion_tokens\":200,\"prompt_tokens\":23,\"total_tokens\":223}}",
        "{\"id\":\"c\",\"choices\":[{\"index\":1,\"delta\":{\"content\":\"second choice\"}},"
        "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"first\"}}]}",
        "{\"choices\":[{\"text\":\"legacy\",\"index\":0,\"finish_reason\":null}],\"object\":\"text_completion\"}",
    };
    static const char *const azure_text[] = {" the", "", "", "first", "legacy"};
    static const int azure_verdict[] = {0, 0, 1, 0, 0};
    /* Shapes the reader leaves to the tree, or must read exactly as cJSON does. */
    static const char *const edges[] = {
        "{\"choices\":[{\"index\":0.5,\"delta\":{\"content\":\"a half is not zero\"}}]}",
        "{\"choices\":[{\"index\":1e-400,\"delta\":{\"content\":\"underflows to zero\"}}]}",
        "{\"choices\":[{\"index\":-0,\"delta\":{\"content\":\"minus zero\"},\"text\":\"+text\"}]}",
        "{\"choices\":[{\"delta\":{\"content\":\"first\",\"content\":\"second\"},\"delta\":{\"content\":\"no\"}}],"
        "\"choices\":[{\"delta\":{\"content\":\"not this array\"}}]}",
        "{\"choices\":[{\"delta\":{\"content\":\"esc\\n\\\"aped\\\"\"}}]}",
        "{\"choices\":[{\"delta\":{\"content\":\"\\u00e9\"}}]}",
        "{\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"total_tokens\":3}} trailing",
    };
    for (size_t i = 0; i < sizeof edges / sizeof *edges; i++) {
        chunk_result got = take(r, edges[i], strlen(edges[i]), true, false);
        chunk_result ref = take(r, edges[i], strlen(edges[i]), true, true);
        CHECK(same_result(&got, &ref));
        free(got.text);
        free(ref.text);
    }
    /* Many choices, each with text: more than the reader keeps in place. */
    check_text many = {.len = 0};
    check_put(&many, "{\"choices\":[");
    for (int i = 0; i < 12; i++)
        check_put(&many, i ? ",{\"delta\":{\"content\":\"c\"},\"text\":\"t\"}" : "{\"delta\":{\"content\":\"c\"},\"text\":\"t\"}");
    check_put(&many, "]}");
    chunk_result got_many = take(r, many.buf, many.len, true, false);
    chunk_result ref_many = take(r, many.buf, many.len, true, true);
    CHECK(same_result(&got_many, &ref_many));
    CHECK_INT(got_many.text_len, 24);
    free(got_many.text);
    free(ref_many.text);
    for (size_t i = 0; i < sizeof azure / sizeof *azure; i++) {
        size_t len = strlen(azure[i]);
        chunk_result got = take(r, azure[i], len, true, false);
        CHECK_INT(ag_json_arena_capacity(&w->event_arena), 0);
        chunk_result ref = take(r, azure[i], len, true, true);
        CHECK(same_result(&got, &ref));
        CHECK_INT(got.verdict, azure_verdict[i]);
        CHECK_INT(got.text_len, strlen(azure_text[i]));
        CHECK(got.text_len == strlen(azure_text[i]) &&
              (got.text_len == 0 || memcmp(got.text, azure_text[i], got.text_len) == 0));
        free(got.text);
        free(ref.text);
        ag_json_arena_free(&w->event_arena);
    }

    /* Generated chunks, then the same mutated: with the text wanted, and without (the prefilter
     * then decides first; it knows JSON's four whitespace bytes only, so events with another
     * control byte are compared with the text wanted alone). */
    static const char alphabet[] = "{}[]\",:\\ 0123456789.e-tnulrfaspmo_\t\nE+/u";
    int diffs = 0, in_place = 0, plain = 0, with_text = 0, usage_only = 0;
    for (int iter = 0; iter < 60000; iter++) {
        check_text g;
        chunk(&g);
        if (iter % 3 == 2) {
            for (int e = 1 + (int)rnd(3); e > 0 && g.len > 2; e--) {
                size_t at = rnd((unsigned)g.len);
                if (rnd(2))
                    g.buf[at] = alphabet[rnd(sizeof alphabet - 1)];
                else
                    memmove(g.buf + at, g.buf + at + 1, --g.len - at);
            }
        }
        bool ctl = false;
        for (size_t i = 0; i < g.len; i++)
            if ((unsigned char)g.buf[i] < 0x20 && !strchr("\t\n\r", g.buf[i]))
                ctl = true;
        for (int want = ctl ? 1 : 0; want < 2; want++) {
            ag_json_arena_free(&w->event_arena);
            chunk_result got = take(r, g.buf, g.len, want, false);
            bool no_tree = ag_json_arena_capacity(&w->event_arena) == 0;
            chunk_result ref = take(r, g.buf, g.len, want, true);
            if (!same_result(&got, &ref) && diffs++ < 5)
                fprintf(stderr, "  chunk differs (text %d: verdict %d/%d, usage %d/%d, text %zu/%zu) on: %.*s\n", want,
                        got.verdict, ref.verdict, got.usage.present, ref.usage.present, got.text_len, ref.text_len,
                        (int)g.len, g.buf);
            if (want && no_tree && !memchr(g.buf, '\\', g.len)) {
                plain++;
                in_place += ref.text_len > 0 || ref.usage.present; /* something taken, and no tree built */
            }
            with_text += want && ref.text_len > 0;
            usage_only += ref.verdict == 1;
            free(got.text);
            free(ref.text);
        }
    }
    fprintf(stderr, "  chunks: %d read in place with something taken, %d with text, %d usage-only\n", in_place,
            with_text, usage_only);
    CHECK_INT(diffs, 0);
    CHECK(in_place > 5000);
    CHECK(with_text > 10000);
    CHECK(usage_only > 100);
    ag_json_arena_free(&w->event_arena);
    free(r);
    free(w);
    (void)plain;
}

int main(void)
{
    test_chunks_in_place();
    req = calloc(1, sizeof *req);
    /* Azure's chat/completions usage, nested details included. */
    check_usage("{\"completion_tokens\":12,\"completion_tokens_details\":{\"accepted_prediction_tokens\":0,"
                "\"audio_tokens\":0,\"reasoning_tokens\":0,\"rejected_prediction_tokens\":0},\"prompt_tokens\":30,"
                "\"prompt_tokens_details\":{\"audio_tokens\":0,\"cached_tokens\":0},\"total_tokens\":42}",
                1, 30, 12, 42);
    check_usage("{\"prompt_tokens\":7,\"total_tokens\":7}", 1, 7, 0, 7);                 /* embeddings */
    check_usage("{\"input_tokens\":5,\"output_tokens\":9,\"total_tokens\":14}", 1, 5, 9, 14); /* responses */
    check_usage("{\"input_tokens\":5,\"output_tokens\":9}", 1, 5, 9, 14);
    check_usage("{ \"prompt_tokens\" : 3 ,\n \"completion_tokens\" :\t4 }", 1, 3, 4, 7);
    check_usage("{}", 0, 0, 0, 0);
    check_usage("{\"completion_tokens\":4}", 0, 0, 0, 0);                                 /* no prompt, no total */
    check_usage("{\"prompt_tokens\":3,\"prompt_tokens\":99,\"total_tokens\":5}", 1, 3, 0, 5); /* first wins */
    check_usage("{\"prompt_tokens\":3.0,\"total_tokens\":5}", 1, 3, 0, 5);                /* cJSON path */
    check_usage("{\"prompt_tokens\":3e1,\"total_tokens\":5}", 1, 30, 0, 5);
    check_usage("{\"prompt_tokens\":-3,\"total_tokens\":5}", 1, 0, 0, 5);
    check_usage("{\"prompt_tokens\":\"3\",\"total_tokens\":5}", 1, 0, 0, 5);
    check_usage("{\"prompt_tokens\":null,\"total_tokens\":null}", 0, 0, 0, 0);
    check_usage("{\"prompt_tokens\":99999999999999999999,\"total_tokens\":1}", 1, 0, 0, 1);
    check_usage("{\"prompt_tokens\":9000000000000001,\"total_tokens\":1}", 1, 0, 0, 1);
    check_usage("{\"prompt_tokens\":9000000000000000,\"total_tokens\":1}", 1, 9000000000000000LL, 0, 1);
    check_usage("{\"\\u0070rompt_tokens\":8,\"total_tokens\":9}", 1, 8, 0, 9);          /* escaped key */
    check_usage("{\"x\":{\"prompt_tokens\":1},\"y\":[\"prompt_tokens\",{\"total_tokens\":2}],\"total_tokens\":6}",
                1, 0, 0, 6);                                                               /* nested: not ours */
    check_usage("{\"note\":\"a \\\" quote, } and ]\",\"prompt_tokens\":2,\"total_tokens\":3}", 1, 2, 0, 3);
    check_usage("{\"prompt_tokens\":2 \"total_tokens\":3}", 0, 0, 0, 0);                  /* malformed */
    check_usage("{\"prompt_tokens\":2,}", 0, 0, 0, 0);
    check_usage("{\"prompt_tokens\":true,\"total_tokens\":false}", 0, 0, 0, 0);

    /* Truncated bodies: every prefix of a typical response. */
    const char *full = "{\"id\":\"c\",\"usage\":{\"completion_tokens\":12,\"completion_tokens_details\":{\"a\":0},"
                       "\"prompt_tokens\":30,\"total_tokens\":42}}";
    int prefix_diffs = 0;
    for (size_t n = 0; n <= strlen(full); n++)
        if (!same(fast(full, n), reference(full, n)))
            prefix_diffs++;
    CHECK_INT(prefix_diffs, 0);

    /* Random mutations: flip, insert and delete bytes of usage objects. */
    static const char *const seeds[] = {
        "{\"usage\":{\"completion_tokens\":12,\"completion_tokens_details\":{\"reasoning_tokens\":0},"
        "\"prompt_tokens\":30,\"prompt_tokens_details\":{\"cached_tokens\":0},\"total_tokens\":42}}",
        "{\"usage\":{\"input_tokens\":5,\"output_tokens\":9,\"total_tokens\":14,\"x\":[1,\"}\",{}]}}",
        "{\"usage\":{\"prompt_tokens\":7,\"total_tokens\":7}}",
    };
    static const char alphabet[] = "{}[]\",:\\ 0123456789.e-tnulrfaspmo_\x01\x1f\t\nE+/u";
    int diffs = 0;
    for (int iter = 0; iter < 200000; iter++) {
        char buf[512];
        const char *seed = seeds[rnd(3)];
        size_t len = strlen(seed);
        memcpy(buf, seed, len);
        int edits = 1 + (int)rnd(4);
        for (int e = 0; e < edits && len > 2 && len < sizeof buf - 2; e++) {
            size_t at = rnd((unsigned)len);
            switch (rnd(3)) {
            case 0:
                buf[at] = alphabet[rnd(sizeof alphabet - 1)];
                break;
            case 1:
                memmove(buf + at + 1, buf + at, len - at);
                buf[at] = alphabet[rnd(sizeof alphabet - 1)];
                len++;
                break;
            default:
                memmove(buf + at, buf + at + 1, len - at - 1);
                len--;
                break;
            }
        }
        if (!same(fast(buf, len), reference(buf, len))) {
            if (diffs++ < 5)
                fprintf(stderr, "  differs on: %.*s\n", (int)len, buf);
        }
    }
    CHECK_INT(diffs, 0);

    /* Streamed events: the prefilter that spares most events a parse must never skip one whose
     * tree has usage. Oracle: the same event with the completion text wanted, which parses every
     * event. Chunks of Azure's shapes, mutated. */
    static const char *const events[] = {
        "{\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"index\":0}],\"usage\":null}",
        "{\"choices\":[],\"usage\":{\"completion_tokens\":9,\"prompt_tokens\":4,\"total_tokens\":13}}",
        "{\"usage\":{\"prompt_tokens\":1,\"total_tokens\":1},\"choices\":[{\"delta\":{\"content\":\"usage\"}}]}",
        "{\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":2}}}",
        "{\"choices\":[{\"delta\":{\"content\":\"\\\"usage\\\":{\"}}],\"usage\" : \t{\"prompt_tokens\":2,\"total_tokens\":2}}",
    };
    /* No control bytes other than JSON's whitespace: cJSON skips any byte below 0x20 as space,
     * the prefilter (like the in-place scan) only JSON's four. */
    static const char sse_alphabet[] = "{}[]\",:\\ 0123456789.e-tnulrfaspmo_\t\nE+/u";
    int sse_diffs = 0, with_usage = 0;
    for (int iter = 0; iter < 100000; iter++) {
        char buf[512];
        const char *seed = events[rnd(sizeof events / sizeof *events)];
        size_t len = strlen(seed);
        memcpy(buf, seed, len);
        for (int e = (int)rnd(3); e > 0 && len > 2 && len < sizeof buf - 2; e--) {
            size_t at = rnd((unsigned)len);
            if (rnd(2)) {
                buf[at] = sse_alphabet[rnd(sizeof sse_alphabet - 1)];
            } else {
                memmove(buf + at, buf + at + 1, len - at - 1);
                len--;
            }
        }
        ag_sse_event ev = {"", 0, buf, len, buf, len};
        ag_usage got[2];
        for (int want = 0; want < 2; want++) {
            memset(&req->usage, 0, sizeof req->usage);
            req->want_text = want;
            ag_usage_from_sse_event(req, &ev);
            got[want] = req->usage;
            free(req->completion_text);
            req->completion_text = NULL;
            req->completion_len = req->completion_cap = 0;
        }
        with_usage += got[1].present;
        if (!same(got[0], got[1]) && sse_diffs++ < 5)
            fprintf(stderr, "  stream event differs (%d %lld %lld / %d %lld %lld) on: %.*s\n", got[0].present, got[0].prompt_tokens, got[0].total_tokens, got[1].present, got[1].prompt_tokens, got[1].total_tokens, (int)len, buf);
    }
    CHECK_INT(sse_diffs, 0);
    CHECK(with_usage > 10000);
    free(req);
    return CHECK_DONE();
}
