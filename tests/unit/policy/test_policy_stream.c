/* Response streams: matches split over deltas are redacted, the hold-back bound holds, flags are
 * counted once, PEM blocks are swallowed, SSE chat and Responses events are rewritten. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aoai_guard/policy_stream.h"
#include "check.h"

static ag_policy_scratch *S;

static ag_policy *mkpol(const char *json)
{
    cJSON *root = cJSON_Parse(json);
    CHECK(root != NULL);
    ag_conf_err err = {{0}};
    ag_policy *pol = NULL;
    if (ag_policy_load(root, "policy", &pol, &err) != 0)
        fprintf(stderr, "policy load: %s\n", err.msg);
    CHECK(pol != NULL);
    cJSON_Delete(root);
    return pol;
}

typedef struct sink {
    char buf[65536];
    size_t len;
} sink;

static void put(sink *k, const char *p, size_t n)
{
    if (k->len + n < sizeof k->buf) {
        memcpy(k->buf + k->len, p, n);
        k->len += n;
        k->buf[k->len] = '\0';
    }
}

/* Streams text in chunks of the given sizes (cycled); returns the emitted text in out and checks
 * the hold-back bound after every delta. */
static void stream_text(ag_policy_stream *st, const char *text, const size_t *sizes, size_t nsizes,
                        sink *out, int *bound_violations)
{
    size_t len = strlen(text), pos = 0, k = 0;
    out->len = 0;
    out->buf[0] = '\0';
    while (pos < len) {
        size_t n = sizes[k++ % nsizes];
        if (n > len - pos)
            n = len - pos;
        const char *o;
        size_t ol;
        CHECK_INT(ag_policy_stream_feed(st, S, text + pos, n, &o, &ol), 0);
        put(out, o, ol);
        if (ag_policy_stream_held(st) > 2 * st->holdback)
            (*bound_violations)++;
        pos += n;
    }
    const char *o;
    size_t ol;
    CHECK_INT(ag_policy_stream_finish(st, S, &o, &ol), 0);
    put(out, o, ol);
    CHECK_INT(ag_policy_stream_held(st), 0);
}

static const char *POLICY =
    "{\"stream_holdback_bytes\":128,\"rules\":["
    "{\"name\":\"email\",\"detector\":\"email\",\"action\":\"redact\",\"apply_to\":\"response\","
    "\"mask\":\"[E]\"},"
    "{\"name\":\"aws\",\"detector\":\"aws_access_key\",\"action\":\"block\",\"apply_to\":\"both\","
    "\"mask\":\"[AWS]\"},"
    "{\"name\":\"card\",\"detector\":\"credit_card\",\"action\":\"redact\",\"apply_to\":\"both\","
    "\"mask\":\"[CARD]\"},"
    "{\"name\":\"gh\",\"detector\":\"github_token\",\"action\":\"redact\",\"apply_to\":\"response\","
    "\"mask\":\"[GH]\"},"
    "{\"name\":\"key\",\"detector\":\"private_key\",\"action\":\"redact\",\"apply_to\":\"response\","
    "\"mask\":\"[PEM]\"},"
    "{\"name\":\"ip\",\"detector\":\"ipv4\",\"action\":\"flag\",\"apply_to\":\"response\"},"
    "{\"name\":\"word\",\"regex\":\"(?i)top\\\\s+secret\",\"action\":\"redact\",\"apply_to\":"
    "\"response\",\"mask\":\"[TS]\"},"
    "{\"name\":\"req-only\",\"detector\":\"phone\",\"action\":\"redact\"}]}";

static void test_split_secret(void)
{
    ag_policy *pol = mkpol(POLICY);
    ag_policy_call call = {NULL, "d", "chat/completions"};
    ag_policy_stream st;
    CHECK_INT(ag_policy_stream_init(&st, pol, &call), 0);
    /* the key arrives in three deltas */
    static const char *deltas[] = {"Your key is AKIAIOS", "FODNN7E", "XAMPLE, keep it safe.", NULL};
    sink out = {.len = 0};
    for (size_t k = 0; deltas[k]; k++) {
        const char *o;
        size_t ol;
        CHECK_INT(ag_policy_stream_feed(&st, S, deltas[k], strlen(deltas[k]), &o, &ol), 0);
        put(&out, o, ol);
        CHECK(strstr(out.buf, "AKIA") == NULL);
    }
    const char *o;
    size_t ol;
    CHECK_INT(ag_policy_stream_finish(&st, S, &o, &ol), 0);
    put(&out, o, ol);
    CHECK_STR(out.buf, "Your key is [AWS], keep it safe.");
    ag_policy_decisions dec;
    memset(&dec, 0, sizeof dec);
    ag_policy_stream_decisions(&st, &dec);
    char line[128];
    ag_policy_decisions_format(&dec, line, sizeof line);
    CHECK_STR(line, "aws:redact:1:resp");
    ag_policy_stream_free(&st);
    ag_policy_free(pol);
}

static void test_chunkings(void)
{
    ag_policy *pol = mkpol(POLICY);
    ag_policy_call call = {NULL, "d", "chat/completions"};
    /* several matches of up to H bytes, multi-byte text, and a long match-free tail */
    char text[8192], want[8192];
    snprintf(text, sizeof text,
             "Hällo 😀 write to anna.berg@example.com or ring 415-555-2671. Card 4111 1111 1111 1111 "
             "and token ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789 on 10.1.2.3; this is TOP   "
             "SECRET — über AKIAIOSFODNN7EXAMPLE%s end 10.9.8.7.",
             " lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
             "incididunt ut labore et dolore magna aliqua ut enim ad minim veniam quis nostrud");
    snprintf(want, sizeof want,
             "Hällo 😀 write to [E] or ring 415-555-2671. Card [CARD] "
             "and token [GH] on 10.1.2.3; this is [TS] — über [AWS]%s end 10.9.8.7.",
             " lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
             "incididunt ut labore et dolore magna aliqua ut enim ad minim veniam quis nostrud");
    static const size_t patterns[][6] = {
        {1}, {2}, {3}, {5, 1, 7}, {13}, {64}, {127}, {128}, {129}, {300}, {4096}, {1, 200, 3, 50},
    };
    static const size_t npat[] = {1, 1, 1, 3, 1, 1, 1, 1, 1, 1, 1, 4};
    int bound = 0, wrong = 0;
    for (size_t p = 0; p < sizeof npat / sizeof npat[0]; p++) {
        ag_policy_stream st;
        CHECK_INT(ag_policy_stream_init(&st, pol, &call), 0);
        static sink out;
        stream_text(&st, text, patterns[p], npat[p], &out, &bound);
        if (strcmp(out.buf, want) != 0) {
            wrong++;
            fprintf(stderr, "chunking %zu:\n got %s\nwant %s\n", p, out.buf, want);
        }
        CHECK(st.max_held <= 2 * st.holdback);
        ag_policy_decisions dec;
        memset(&dec, 0, sizeof dec);
        ag_policy_stream_decisions(&st, &dec);
        char line[256];
        ag_policy_decisions_format(&dec, line, sizeof line);
        /* every match counted exactly once whatever the chunking; request-only rules never run */
        CHECK_STR(line, "email:redact:1:resp,aws:redact:1:resp,card:redact:1:resp,"
                        "gh:redact:1:resp,ip:flag:2:resp,word:redact:1:resp");
        ag_policy_stream_free(&st);
    }
    CHECK_INT(wrong, 0);
    CHECK_INT(bound, 0);
    ag_policy_free(pol);
}

static void test_holdback_bound(void)
{
    ag_policy *pol = mkpol("{\"stream_holdback_bytes\":64,\"rules\":[{\"name\":\"e\",\"detector\":"
                           "\"email\",\"action\":\"redact\",\"apply_to\":\"response\"}]}");
    ag_policy_call call = {NULL, "d", "chat/completions"};
    ag_policy_stream st;
    CHECK_INT(ag_policy_stream_init(&st, pol, &call), 0);
    CHECK_INT(st.holdback, 64);
    size_t emitted = 0, fed = 0;
    int over = 0;
    for (int k = 0; k < 400; k++) {
        const char *piece = (k % 50 == 7) ? "contact x.y@example.com " : "words and more words ";
        const char *o;
        size_t ol;
        CHECK_INT(ag_policy_stream_feed(&st, S, piece, strlen(piece), &o, &ol), 0);
        emitted += ol;
        fed += strlen(piece);
        if (ag_policy_stream_held(&st) > 128)
            over++;
        /* text leaves in bounded time: never more than 2H behind (masks only shorten it) */
        if (fed - ag_policy_stream_held(&st) > fed)
            over++;
    }
    CHECK_INT(over, 0);
    CHECK(st.max_held <= 128);
    CHECK(st.max_held >= 64); /* it does hold back H bytes */
    CHECK(emitted > 0);
    const char *o;
    size_t ol;
    CHECK_INT(ag_policy_stream_finish(&st, S, &o, &ol), 0);
    ag_policy_decisions dec;
    memset(&dec, 0, sizeof dec);
    ag_policy_stream_decisions(&st, &dec);
    CHECK_INT(dec.count, 1);
    CHECK_INT(dec.items[0].spans, 8);
    ag_policy_stream_free(&st);

    /* one huge delta is processed in slices: the held text stays bounded */
    CHECK_INT(ag_policy_stream_init(&st, pol, &call), 0);
    static char big[20000];
    for (size_t k = 0; k < sizeof big - 1; k++)
        big[k] = "abcdefgh "[k % 9];
    big[sizeof big - 1] = '\0';
    CHECK_INT(ag_policy_stream_feed(&st, S, big, strlen(big), &o, &ol), 0);
    CHECK(ag_policy_stream_held(&st) <= 128);
    CHECK_INT(ol + ag_policy_stream_held(&st), strlen(big));
    CHECK(st.max_held <= 128);
    ag_policy_stream_free(&st);
    ag_policy_free(pol);
}

static void test_pem_stream(void)
{
    ag_policy *pol = mkpol(POLICY);
    ag_policy_call call = {NULL, "d", "chat/completions"};
    ag_policy_stream st;
    CHECK_INT(ag_policy_stream_init(&st, pol, &call), 0);
    char text[4096];
    size_t n = (size_t)snprintf(text, sizeof text, "Here it is:\n-----BEGIN RSA PRIVATE KEY-----\n");
    for (int l = 0; l < 20; l++)
        n += (size_t)snprintf(text + n, sizeof text - n,
                              "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTL%02d\n", l);
    snprintf(text + n, sizeof text - n, "-----END RSA PRIVATE KEY-----\nUse it wisely.");
    static const size_t sizes[] = {7};
    static sink out;
    int bound = 0;
    stream_text(&st, text, sizes, 1, &out, &bound);
    CHECK_STR(out.buf, "Here it is:\n[PEM]\nUse it wisely.");
    CHECK_INT(bound, 0);
    ag_policy_stream_free(&st);
    /* a key cut off by the end of the stream is still masked */
    CHECK_INT(ag_policy_stream_init(&st, pol, &call), 0);
    text[n - 10] = '\0';
    stream_text(&st, text, sizes, 1, &out, &bound);
    CHECK_STR(out.buf, "Here it is:\n[PEM]");
    ag_policy_stream_free(&st);
    ag_policy_free(pol);
}

static void test_passthrough(void)
{
    ag_policy *pol = mkpol("{\"rules\":[{\"name\":\"e\",\"detector\":\"email\",\"action\":"
                           "\"redact\"}]}"); /* request side only */
    ag_policy_call call = {NULL, "d", "chat/completions"};
    ag_policy_stream st;
    CHECK_INT(ag_policy_stream_init(&st, pol, &call), 0);
    const char *delta = "a@example.com";
    const char *o;
    size_t ol;
    CHECK_INT(ag_policy_stream_feed(&st, S, delta, strlen(delta), &o, &ol), 0);
    CHECK(o == delta);
    CHECK_INT(ol, strlen(delta));
    ag_policy_stream_free(&st);
    ag_policy_free(pol);
}

static char *content_of(cJSON *chunk, int choice)
{
    cJSON *choices = cJSON_GetObjectItemCaseSensitive(chunk, "choices");
    cJSON *c = cJSON_GetArrayItem(choices, choice);
    cJSON *d = cJSON_GetObjectItemCaseSensitive(c, "delta");
    cJSON *t = cJSON_GetObjectItemCaseSensitive(d, "content");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

static void test_sse_chat(void)
{
    ag_policy *pol = mkpol(POLICY);
    ag_policy_call call = {NULL, "gpt-4o", "chat/completions"};
    ag_policy_sse sse;
    ag_policy_sse_init(&sse, pol, &call);
    static const char *events[] = {
        "{\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\","
        "\"prompt_filter_results\":[{\"prompt_index\":0,\"content_filter_results\":{}}]}",
        "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":"
        "\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
        "\"finish_reason\":null}]}",
        "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":"
        "\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Mail jane.d\"},"
        "\"finish_reason\":null},{\"index\":1,\"delta\":{\"content\":\"Other AKIAIOSF\"},"
        "\"finish_reason\":null}]}",
        "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":"
        "\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"oe@exam\"},"
        "\"finish_reason\":null},{\"index\":1,\"delta\":{\"content\":\"ODNN7EXAMPLE ok\"},"
        "\"finish_reason\":null}]}",
        "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":"
        "\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ple.com now\"},"
        "\"finish_reason\":null}]}",
        "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":"
        "\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}",
        "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":"
        "\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7,"
        "\"total_tokens\":12}}",
        NULL};
    sink c0 = {.len = 0}, c1 = {.len = 0};
    int changed = 0;
    for (size_t k = 0; events[k]; k++) {
        cJSON *ev = cJSON_Parse(events[k]);
        cJSON *before = NULL;
        int rc = ag_policy_sse_rewrite(&sse, S, ev, &before);
        CHECK(rc >= 0);
        CHECK(before == NULL);
        changed += rc;
        for (int ch = 0; ch < 2; ch++) {
            cJSON *choices = cJSON_GetObjectItemCaseSensitive(ev, "choices");
            for (cJSON *c = choices ? choices->child : NULL; c; c = c->next) {
                cJSON *idx = cJSON_GetObjectItemCaseSensitive(c, "index");
                if (!cJSON_IsNumber(idx) || idx->valueint != ch)
                    continue;
                cJSON *d = cJSON_GetObjectItemCaseSensitive(c, "delta");
                cJSON *t = cJSON_GetObjectItemCaseSensitive(d, "content");
                if (cJSON_IsString(t))
                    put(ch ? &c1 : &c0, t->valuestring, strlen(t->valuestring));
            }
        }
        if (k == 5) { /* the finish chunk carries the flushed text */
            CHECK(content_of(ev, 0) != NULL);
            CHECK_STR(content_of(ev, 0), "Mail [E] now");
        }
        if (k == 6) { /* the usage chunk is untouched */
            char *s = cJSON_PrintUnformatted(ev);
            CHECK_STR(s, events[6]);
            cJSON_free(s);
        }
        cJSON_Delete(ev);
    }
    CHECK_STR(c0.buf, "Mail [E] now");
    CHECK(changed > 0);
    /* choice 1 never got a finish_reason: its held text comes with the end event */
    bool err = false;
    cJSON *tail = ag_policy_sse_end(&sse, S, &err);
    CHECK(!err);
    CHECK(tail != NULL);
    char *ts = cJSON_PrintUnformatted(tail);
    CHECK_STR(ts, "[{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,"
                  "\"model\":\"gpt-4o\",\"choices\":[{\"index\":1,\"delta\":{\"content\":"
                  "\"Other [AWS] ok\"},\"finish_reason\":null}]}]");
    cJSON_free(ts);
    cJSON_Delete(tail);
    CHECK(c1.len == 0); /* everything of choice 1 was still held (less than H) */
    CHECK(ag_policy_sse_end(&sse, S, &err) == NULL); /* nothing left */
    ag_policy_decisions dec;
    memset(&dec, 0, sizeof dec);
    ag_policy_sse_decisions(&sse, &dec);
    char line[128];
    ag_policy_decisions_format(&dec, line, sizeof line);
    CHECK_STR(line, "email:redact:1:resp,aws:redact:1:resp");
    ag_policy_sse_free(&sse);
    ag_policy_free(pol);
}

static void test_sse_responses(void)
{
    ag_policy *pol = mkpol(POLICY);
    ag_policy_call call = {NULL, "gpt-4o", "responses"};
    ag_policy_sse sse;
    ag_policy_sse_init(&sse, pol, &call);
    static const char *deltas[] = {"Send to bo", "b@exa", "mple.org ", "please", NULL};
    sink out = {.len = 0};
    for (size_t k = 0; deltas[k]; k++) {
        char js[256];
        snprintf(js, sizeof js, "{\"type\":\"response.output_text.delta\",\"item_id\":\"msg_1\","
                 "\"output_index\":0,\"content_index\":0,\"delta\":\"%s\"}", deltas[k]);
        cJSON *ev = cJSON_Parse(js), *before = NULL;
        CHECK(ag_policy_sse_rewrite(&sse, S, ev, &before) >= 0);
        CHECK(before == NULL);
        cJSON *d = cJSON_GetObjectItemCaseSensitive(ev, "delta");
        put(&out, d->valuestring, strlen(d->valuestring));
        cJSON_Delete(ev);
    }
    CHECK_INT(out.len, 0); /* all held (shorter than H) */
    cJSON *done = cJSON_Parse("{\"type\":\"response.output_text.done\",\"item_id\":\"msg_1\","
                              "\"output_index\":0,\"content_index\":0,\"text\":\"Send to "
                              "bob@example.org please\"}");
    cJSON *before = NULL;
    CHECK_INT(ag_policy_sse_rewrite(&sse, S, done, &before), 1);
    CHECK(before != NULL);
    char *bs = cJSON_PrintUnformatted(before);
    CHECK_STR(bs, "{\"type\":\"response.output_text.delta\",\"item_id\":\"msg_1\",\"output_index\":"
                  "0,\"content_index\":0,\"delta\":\"Send to [E] please\"}");
    cJSON_free(bs);
    cJSON_Delete(before);
    char *ds = cJSON_PrintUnformatted(done);
    CHECK_STR(ds, "{\"type\":\"response.output_text.done\",\"item_id\":\"msg_1\",\"output_index\":"
                  "0,\"content_index\":0,\"text\":\"Send to [E] please\"}");
    cJSON_free(ds);
    cJSON_Delete(done);
    cJSON *completed = cJSON_Parse(
        "{\"type\":\"response.completed\",\"response\":{\"id\":\"r1\",\"output\":[{\"type\":"
        "\"message\",\"content\":[{\"type\":\"output_text\",\"text\":\"Send to bob@example.org "
        "please\"}]}],\"usage\":{\"input_tokens\":3}}}");
    CHECK_INT(ag_policy_sse_rewrite(&sse, S, completed, &before), 1);
    char *cs = cJSON_PrintUnformatted(completed);
    CHECK(strstr(cs, "\"text\":\"Send to [E] please\"") != NULL);
    CHECK(strstr(cs, "bob@") == NULL);
    cJSON_free(cs);
    cJSON_Delete(completed);
    /* counted once (on the stream), not again for the .done / .completed copies */
    ag_policy_decisions dec;
    memset(&dec, 0, sizeof dec);
    ag_policy_sse_decisions(&sse, &dec);
    char line[128];
    ag_policy_decisions_format(&dec, line, sizeof line);
    CHECK_STR(line, "email:redact:1:resp");
    bool err = false;
    CHECK(ag_policy_sse_end(&sse, S, &err) == NULL);
    ag_policy_sse_free(&sse);
    ag_policy_free(pol);
}

/* ---- chat chunks rewritten in place (ag_policy_sse_rewrite_chunk) against the tree path ---- */


static void gany(check_text *g, const char *const *pool, size_t n)
{
    check_put(g, pool[check_rnd((unsigned)n)]);
}
#define GANY(g, pool) gany((g), (pool), sizeof(pool) / sizeof *(pool))

/* Text pieces that make matches split over deltas, with escapes and raw UTF-8. */
static const char *const pieces[] = {
    "\"Mail jane.d\"", "\"oe@exam\"", "\"ple.com now\"", "\" top \"", "\"secret\\n\"", "\"AKIAIOSF\"",
    "\"ODNN7EXAMPLE ok\"", "\"-----BEGIN RSA PRIVATE KEY-----\\nMIIEow\"", "\"\\n-----END RSA PRIVATE KEY-----\\n\"",
    "\"4111 1111 \"", "\"1111 1111\"", "\"caf\xc3\xa9 \\\"q\\\" \\\\ \\/ \"", "\"\"", "\" plain words \"",
    "\"10.1.2.3 \"", "\"\\u00e9\"", "null", "7",
};

static void gchoice(check_text *g, int i)
{
    static const char *const idx[] = {"0", "0", "1", "2", "-0", "1.5", "1e0", "\"0\"", "null", "1000000",
                                      "99999999999999999999", "9", "12", "30", "31", "47"};
    check_put(g, "{");
    int first = 1;
    for (int m = (int)check_rnd(5) + 1; m > 0; m--) {
        check_put(g, first ? "" : ",");
        first = 0;
        switch (check_rnd(8)) {
        case 0:
            check_put(g, "\"index\":");
            if (check_rnd(3)) {
                char b[16];
                snprintf(b, sizeof b, "%d", i);
                check_put(g, b);
            }
            else
                GANY(g, idx);
            break;
        case 1: case 2: case 3:
            check_put(g, "\"delta\":");
            switch (check_rnd(10)) {
            case 0: check_put(g, "null"); break;
            case 1: check_put(g, "{}"); break;
            case 2: check_put(g, "{ }"); break;
            case 3: check_put(g, "{\"role\":\"assistant\"}"); break;
            default:
                check_put(g, check_rnd(2) ? "{\"content\":" : "{\"role\":\"assistant\",\"content\":");
                GANY(g, pieces);
                check_put(g, check_rnd(6) ? "}" : ",\"content\":\"dup\"}");
            }
            break;
        case 4:
            check_put(g, "\"text\":");
            GANY(g, pieces);
            break;
        case 5:
            check_put(g, check_rnd(3) ? "\"finish_reason\":null" : "\"finish_reason\":\"stop\"");
            break;
        case 6:
            check_put(g, "\"content_filter_results\":{\"hate\":{\"filtered\":false,\"severity\":\"safe\"}}");
            break;
        default:
            check_put(g, "\"logprobs\":null");
        }
    }
    check_put(g, "}");
}

static void gchunk(check_text *g)
{
    static const char *const ids[] = {"\"chatcmpl-1\"", "\"\"", "\"chat\\/1\"", "7"};
    static const char *const models[] = {"\"gpt-4o\"", "\"gpt-4o-mini-2024-07-18\"", "\"m\\u00e9\""};
    static const char *const created[] = {"1700000000", "0", "1.5e9", "-3", "\"x\"",
                                          "1234567890123456789012345678901234567890123456789012345678901234567"};
    static const char *const tails[] = {"", "", "", "", " ", "x", "}"};
    g->len = 0;
    check_put(g, "{");
    int first = 1;
    for (int m = (int)check_rnd(6) + 1; m > 0; m--) {
        check_put(g, first ? "" : ",");
        first = 0;
        switch (check_rnd(10)) {
        case 0: case 1: case 2: case 3: {
            check_put(g, "\"choices\":[");
            int n = check_rnd(6) ? 1 : (int)check_rnd(11);
            for (int i = 0; i < n; i++) {
                check_put(g, i ? ", " : "");
                if (check_rnd(20))
                    gchoice(g, i);
                else
                    check_put(g, "null");
            }
            check_put(g, "]");
            break;
        }
        case 4: check_put(g, "\"id\":"); GANY(g, ids); break;
        case 5: check_put(g, "\"model\":"); GANY(g, models); break;
        case 6: check_put(g, "\"created\":"); GANY(g, created); break;
        case 7: check_put(g, "\"usage\":null"); break;
        case 8: check_put(g, "\"object\":\"chat.completion.chunk\""); break;
        default: check_put(g, check_rnd(5) ? "\"system_fingerprint\":\"fp\"" : "\"type\":\"other\"");
        }
    }
    check_put(g, "}");
    GANY(g, tails);
}

/* One event through the tree path as forward.c takes it; the payloads sent are appended to out
 * (NUL-separated), printed trees as cJSON prints them. -1 on failure. */
static int tree_event(ag_policy_sse *sse, const char *data, size_t len, check_text *out)
{
    cJSON *d = len && data[0] == '{' ? cJSON_ParseWithLength(data, len) : NULL;
    if (!d) {
        check_put(out, "raw:");
        check_put(out, data);
        check_put(out, "\n");
        return 0;
    }
    cJSON *before = NULL;
    int rc = ag_policy_sse_rewrite(sse, S, d, &before);
    if (before) {
        char *p = cJSON_PrintUnformatted(before);
        check_put(out, p);
        check_put(out, "\n");
        cJSON_free(p);
        cJSON_Delete(before);
    }
    if (rc == 1) {
        char *p = cJSON_PrintUnformatted(d);
        check_put(out, p);
        check_put(out, "\n");
        cJSON_free(p);
    } else if (rc == 0) {
        check_put(out, "raw:");
        check_put(out, data);
        check_put(out, "\n");
    }
    cJSON_Delete(d);
    return rc < 0 ? -1 : 0;
}

/* A run of continuation bytes longer than the hold-back (not UTF-8: an upstream's garbage) must
 * not stop the emission: the boundary steps back over one character's worth of them at most. */
static void test_invalid_utf8_run(void)
{
    char *short_holdback = strdup(POLICY);
    memcpy(strstr(short_holdback, "128"), "016", 3);
    ag_policy *pol = mkpol(short_holdback);
    free(short_holdback);
    ag_policy_call call = {NULL, "gpt-4o", "chat/completions"};
    ag_policy_stream st;
    CHECK_INT(ag_policy_stream_init(&st, pol, &call), 0);
    char run[400];
    memset(run, 0x90, sizeof run);
    size_t sent = 0;
    for (int i = 0; i < 10; i++) {
        const char *o;
        size_t ol;
        CHECK_INT(ag_policy_stream_feed(&st, S, run, sizeof run, &o, &ol), 0);
        sent += ol;
        CHECK(ag_policy_stream_held(&st) <= 2 * st.holdback);
    }
    const char *o;
    size_t ol;
    CHECK_INT(ag_policy_stream_finish(&st, S, &o, &ol), 0);
    CHECK_INT(sent + ol, 10 * sizeof run);
    ag_policy_stream_free(&st);
    ag_policy_free(pol);
}

static void test_sse_chunk_in_place(void)
{
    static const char *const policies[2] = {
        NULL, /* POLICY, with a short hold-back so that text moves between events */
        "{\"rules\":[{\"name\":\"req\",\"detector\":\"email\",\"action\":\"redact\",\"apply_to\":\"request\"}]}",
    };
    char *short_holdback = strdup(POLICY);
    memcpy(strstr(short_holdback, "128"), "016", 3);
    ag_policy *pols[2] = {mkpol(short_holdback), mkpol(policies[1])};
    free(short_holdback);
    ag_policy_call call = {NULL, "gpt-4o", "chat/completions"};
    int diffs = 0, spliced = 0, unchanged = 0, tree = 0;
    for (int stream = 0; stream < 4000; stream++) {
        ag_policy *pol = pols[stream % 5 == 4];
        ag_policy_sse a, b;
        ag_policy_sse_init(&a, pol, &call);
        ag_policy_sse_init(&b, pol, &call);
        check_text out_a = {.len = 0}, out_b = {.len = 0};
        bool failed = false;
        for (int e = (int)check_rnd(12) + 1; e > 0 && !failed; e--) {
            check_text ev;
            gchunk(&ev);
            if (check_rnd(8) == 0) { /* a mutated byte */
                static const char alphabet[] = "{}[]\",:\\ 0123456789.e-tnulr\n";
                ev.buf[check_rnd((unsigned)ev.len)] = alphabet[check_rnd(sizeof alphabet - 1)];
            }
            failed |= tree_event(&a, ev.buf, ev.len, &out_a) != 0;
            char *p = NULL;
            size_t pn = 0;
            ag_chat_chunk ck;
            int rc = ag_chat_chunk_read(ev.buf, ev.len, &ck) ? ag_policy_sse_rewrite_chunk(&b, S, ev.buf, &ck, &p, &pn)
                                                             : -2;
            if (rc == -2) {
                tree++;
                failed |= tree_event(&b, ev.buf, ev.len, &out_b) != 0;
            } else if (rc == 0) {
                unchanged++;
                check_put(&out_b, "raw:");
                check_put(&out_b, ev.buf);
                check_put(&out_b, "\n");
            } else if (rc == 1) {
                spliced++;
                CHECK(pn == strlen(p));
                const char *t_end = NULL; /* the spliced payload is one object, printed as cJSON prints */
                cJSON *t = cJSON_ParseWithLengthOpts(p, pn, &t_end, false);
                CHECK(t_end == p + pn);
                char *q = t ? cJSON_PrintUnformatted(t) : NULL;
                check_put(&out_b, q ? q : "(not JSON)");
                check_put(&out_b, "\n");
                cJSON_free(q);
                cJSON_Delete(t);
                free(p);
            } else {
                failed = true;
            }
        }
        CHECK(!failed);
        bool err_a = false, err_b = false;
        cJSON *end_a = ag_policy_sse_end(&a, S, &err_a), *end_b = ag_policy_sse_end(&b, S, &err_b);
        char *pa = end_a ? cJSON_PrintUnformatted(end_a) : NULL, *pb = end_b ? cJSON_PrintUnformatted(end_b) : NULL;
        check_put(&out_a, pa ? pa : "(nothing held)");
        check_put(&out_b, pb ? pb : "(nothing held)");
        cJSON_free(pa);
        cJSON_free(pb);
        cJSON_Delete(end_a);
        cJSON_Delete(end_b);
        ag_policy_decisions da, db;
        memset(&da, 0, sizeof da);
        memset(&db, 0, sizeof db);
        ag_policy_sse_decisions(&a, &da);
        ag_policy_sse_decisions(&b, &db);
        if ((strcmp(out_a.buf, out_b.buf) != 0 || memcmp(&da, &db, sizeof da) != 0 || a.overflow != b.overflow ||
             strcmp(a.id, b.id) != 0 || strcmp(a.model, b.model) != 0 || a.created != b.created) &&
            diffs++ < 3)
            fprintf(stderr, "  stream %d differs:\n--- tree\n%s\n--- in place\n%s\n", stream, out_a.buf, out_b.buf);
        ag_policy_sse_free(&a);
        ag_policy_sse_free(&b);
    }
    fprintf(stderr, "  in place: %d spliced, %d sent as they are, %d left to the tree\n", spliced, unchanged, tree);
    CHECK_INT(diffs, 0);
    CHECK(spliced > 3000);
    CHECK(unchanged > 3000);
    CHECK(tree > 1000);
    ag_policy_free(pols[0]);
    ag_policy_free(pols[1]);
}

int main(void)
{
    S = ag_policy_scratch_new();
    test_split_secret();
    test_chunkings();
    test_holdback_bound();
    test_pem_stream();
    test_passthrough();
    test_sse_chat();
    test_sse_responses();
    test_invalid_utf8_run();
    test_sse_chunk_in_place();
    ag_policy_scratch_free(S);
    return CHECK_DONE();
}
