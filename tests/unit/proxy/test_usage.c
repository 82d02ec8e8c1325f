/* Usage from a whole JSON response: the in-place scan of the usage object (usage.c) must give
 * exactly what cJSON + ag_usage_parse gives, on Azure's shapes, on odd ones and on random
 * mutations of both. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "aoai_guard/request.h"
#include "aoai_guard/usage.h"
#include "check.h"

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

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static unsigned rnd(unsigned n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (unsigned)(rng % n);
}

int main(void)
{
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
