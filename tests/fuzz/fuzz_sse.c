/* Fuzz target: upstream server-sent event streams — the incremental SSE parser (src/proxy/sse.c),
 * usage and completion-text extraction from each event (src/proxy/usage.c), and the response-side
 * policy rewriter for streamed chat chunks and Responses events (ag_policy_sse_*, policy_stream.c).
 *
 * Input: byte 0 seeds how the stream is cut into reads, its bit 0 turns the audit's text capture
 * on, its bit 7 the policy rewriter and its bit 6 (with bit 7) the comparison of the rewriter's
 * in-place path with its tree path; the rest is the byte stream as the upstream sends it (after
 * HTTP de-chunking).
 * Oracles besides the sanitizers:
 *   - cutting the stream differently never changes the events (sse.h: "events may be split at any
 *     byte"): the transcript fed whole must equal the transcript fed in pieces, including whether
 *     the parser gave up on an over-long event;
 *   - usage counts are never negative and the completion text never exceeds its bound;
 *   - with the text wanted (bit 0 of byte 0), the in-place reading of each event gives the usage,
 *     verdict and text that the event's cJSON tree gives;
 *   - an event payload the policy rewrote serialises to strict JSON again;
 *   - with bit 6, chat chunks rewritten in place (spliced) give the JSON the tree path gives, the
 *     same held text at [DONE] and the same decisions. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aoai_guard/chat_chunk.h"
#include "aoai_guard/json_strict.h"
#include "aoai_guard/policy.h"
#include "aoai_guard/policy_stream.h"
#include "aoai_guard/request.h"
#include "aoai_guard/sse.h"
#include "aoai_guard/usage.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Small enough that the fuzzer reaches the bound; forward.c uses 1 MiB. */
#define MAX_EVENT 4096

static const char POLICY[] =
    "{\"stream_holdback_bytes\":16,\"rules\":["
    "{\"name\":\"email\",\"detector\":\"email\",\"action\":\"redact\",\"apply_to\":\"response\"},"
    "{\"name\":\"pem\",\"detector\":\"private_key\",\"action\":\"redact\",\"apply_to\":\"response\"},"
    "{\"name\":\"card\",\"detector\":\"credit_card\",\"action\":\"block\",\"apply_to\":\"response\"},"
    "{\"name\":\"pw\",\"regex\":\"secret=[a-z0-9]{4,}\",\"action\":\"redact\",\"mask\":\"\\u00e9\",\"apply_to\":\"response\"},"
    "{\"name\":\"kw\",\"keywords\":[\"forbidden words\"],\"action\":\"redact\",\"apply_to\":\"response\"}]}";

static struct {
    ag_policy *pol;
    ag_policy_scratch *scratch;
} F;

/* The events seen, as one transcript: event name, NUL, data length, data. */
typedef struct transcript {
    char *buf;
    size_t len, cap;
    ag_request *req;
    ag_request *ref; /* with the text wanted: the same events through the tree (the oracle) */
    ag_policy_sse *psse;
    ag_policy_sse *tree; /* bit 6 of byte 0: psse takes the in-place path, tree the tree path */
    bool tainted; /* an earlier payload was not strict JSON: held-back text may carry its bytes */
} transcript;

static void append(transcript *t, const void *p, size_t n)
{
    if (n == 0)
        return;
    if (t->len + n > t->cap) {
        size_t c = t->cap ? t->cap * 2 : 1024;
        while (c < t->len + n)
            c *= 2;
        char *nb = realloc(t->buf, c);
        if (!nb)
            abort();
        t->buf = nb;
        t->cap = c;
    }
    memcpy(t->buf + t->len, p, n);
    t->len += n;
}

static void strict_json_or_trap(const char *s)
{
    static const ag_json_limits lim = {.max_depth = 64, .max_nodes = 500000};
    ag_json_status st;
    size_t off;
    cJSON *j = ag_json_parse_strict(s, strlen(s), &lim, &st, &off);
    if (!j)
        __builtin_trap();
    cJSON_Delete(j);
}

/* "<before>\n<payload>": what a rewriter sends for one event, as text; "=" for a payload sent as
 * it came. Traps when out of memory. */
static char *joined(const char *before, const char *payload)
{
    size_t bn = before ? strlen(before) : 0, pn = payload ? strlen(payload) : 1;
    char *s = malloc(bn + pn + 2);
    if (!s)
        __builtin_trap();
    memcpy(s, before ? before : "", bn);
    s[bn] = '\n';
    memcpy(s + bn + 1, payload ? payload : "=", pn);
    s[bn + 1 + pn] = '\0';
    return s;
}

/* What a rewriter sends for one event, by the tree path or, with in_place, by
 * ag_policy_sse_rewrite_chunk first (the tree for what it leaves), a spliced payload printed as
 * cJSON prints it; "(failed)" when the rewriter fails (the stream would be cut). Traps on a spliced
 * payload that is not one JSON object. */
static char *sent(ag_policy_sse *sse, const ag_sse_event *ev, bool in_place)
{
    ag_chat_chunk ck;
    int rc = -2;
    char *p = NULL, *out;
    size_t pn = 0;
    if (in_place && ag_chat_chunk_read(ev->data, ev->data_len, &ck))
        rc = ag_policy_sse_rewrite_chunk(sse, F.scratch, ev->data, &ck, &p, &pn);
    if (rc == -1)
        return strdup("(failed)"); /* the stream would be cut: the tree path must fail alike */
    if (rc == 1) {
        const char *end = NULL;
        cJSON *j = cJSON_ParseWithLengthOpts(p, pn, &end, false);
        if (!j || end != p + pn)
            __builtin_trap(); /* the splice broke the payload */
        char *s = cJSON_PrintUnformatted(j);
        out = joined(NULL, s);
        cJSON_free(s);
        cJSON_Delete(j);
        free(p);
        return out;
    }
    if (rc == 0)
        return joined(NULL, NULL);
    cJSON *j = cJSON_ParseWithLength(ev->data, ev->data_len);
    if (!j)
        return joined(NULL, NULL);
    cJSON *before = NULL;
    rc = ag_policy_sse_rewrite(sse, F.scratch, j, &before);
    if (rc < 0) {
        cJSON_Delete(before);
        cJSON_Delete(j);
        return strdup("(failed)");
    }
    char *b = before ? cJSON_PrintUnformatted(before) : NULL, *d = rc == 1 ? cJSON_PrintUnformatted(j) : NULL;
    out = joined(b, d);
    cJSON_free(b);
    cJSON_free(d);
    cJSON_Delete(before);
    cJSON_Delete(j);
    return out;
}

/* The in-place rewrite of chat chunks (ag_policy_sse_rewrite_chunk) sends what the tree path
 * sends and keeps the same state: both run on the same events, each with its own rewriter. */
static void compare_in_place(transcript *t, const ag_sse_event *ev)
{
    if (ev->data_len == 6 && memcmp(ev->data, "[DONE]", 6) == 0) {
        bool err1 = false, err2 = false;
        cJSON *h1 = ag_policy_sse_end(t->tree, F.scratch, &err1), *h2 = ag_policy_sse_end(t->psse, F.scratch, &err2);
        char *s1 = h1 ? cJSON_PrintUnformatted(h1) : NULL, *s2 = h2 ? cJSON_PrintUnformatted(h2) : NULL;
        if (err1 != err2 || !s1 != !s2 || (s1 && strcmp(s1, s2) != 0)) {
            fprintf(stderr, "END TREE %s\nINPLACE %s\n", s1 ? s1 : "-", s2 ? s2 : "-");
            __builtin_trap();
        }
        cJSON_free(s1);
        cJSON_free(s2);
        cJSON_Delete(h1);
        cJSON_Delete(h2);
        return;
    }
    char *a = sent(t->tree, ev, false), *b = sent(t->psse, ev, true);
    if (strcmp(a, b) != 0) {
        fprintf(stderr, "EVENT %.*s\nTREE %s\nINPLACE %s\n", (int)ev->data_len, ev->data, a, b);
        __builtin_trap();
    }
    free(a);
    free(b);
}

static void rewrite(transcript *t, const ag_sse_event *ev)
{
    if (t->tree) {
        compare_in_place(t, ev);
        return;
    }
    /* Only streams whose payloads were all strict JSON must stay strict: the hold-back window
     * carries text from one event into the next, so an earlier invalid byte may surface later. */
    if (!(ev->data_len == 6 && memcmp(ev->data, "[DONE]", 6) == 0)) {
        static const ag_json_limits lim = {.max_depth = 64, .max_nodes = 500000};
        ag_json_status st;
        size_t off;
        cJSON *orig = ag_json_parse_strict(ev->data, ev->data_len, &lim, &st, &off);
        if (!orig)
            t->tainted = true;
        cJSON_Delete(orig);
    }
    if (ev->data_len == 6 && memcmp(ev->data, "[DONE]", 6) == 0) {
        bool err = false;
        cJSON *held = ag_policy_sse_end(t->psse, F.scratch, &err);
        if (held) {
            char *s = cJSON_PrintUnformatted(held);
            if (!s)
                __builtin_trap();
            if (!t->tainted)
                strict_json_or_trap(s);
            cJSON_free(s);
            cJSON_Delete(held);
        }
        return;
    }
    cJSON *j = cJSON_ParseWithLength(ev->data, ev->data_len);
    if (!j)
        return;
    cJSON *before = NULL;
    int rc = ag_policy_sse_rewrite(t->psse, F.scratch, j, &before);
    if (before) {
        char *s = cJSON_PrintUnformatted(before);
        if (!s)
            __builtin_trap();
        if (!t->tainted)
            strict_json_or_trap(s);
        cJSON_free(s);
        cJSON_Delete(before);
    }
    if (rc == 1) {
        char *s = cJSON_PrintUnformatted(j);
        if (!s)
            __builtin_trap();
        if (!t->tainted)
            strict_json_or_trap(s);
        cJSON_free(s);
    }
    cJSON_Delete(j);
}

static int on_event(void *arg, const ag_sse_event *ev)
{
    transcript *t = arg;
    /* sse.h: the event name is "" when absent, and data never exceeds the bound (+64 slack). */
    if (ev->event_len >= 64 || ev->event[ev->event_len] != '\0' || ev->data_len > MAX_EVENT + 64)
        __builtin_trap();
    append(t, ev->event, ev->event_len);
    append(t, "", 1);
    append(t, &ev->data_len, sizeof ev->data_len);
    append(t, ev->data, ev->data_len);
    if (t->req) {
        int verdict = ag_usage_from_sse_event(t->req, ev);
        if (t->req->usage.present && (t->req->usage.prompt_tokens < 0 || t->req->usage.completion_tokens < 0 ||
                                      t->req->usage.total_tokens < 0))
            __builtin_trap();
        if (t->ref) {
            /* The in-place reading of chat chunks takes what the event's tree gives, no more. */
            int ref_verdict = ag_usage_from_sse_event_tree(t->ref, ev);
            const ag_usage *a = &t->req->usage, *b = &t->ref->usage;
            if (verdict != ref_verdict || a->present != b->present ||
                (a->present && (a->prompt_tokens != b->prompt_tokens || a->completion_tokens != b->completion_tokens ||
                                a->total_tokens != b->total_tokens)))
                __builtin_trap();
            if (t->req->completion_len != t->ref->completion_len ||
                (t->req->completion_len &&
                 memcmp(t->req->completion_text, t->ref->completion_text, t->req->completion_len) != 0))
                __builtin_trap();
        }
    }
    if (t->psse)
        rewrite(t, ev);
    return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    cJSON *j = cJSON_Parse(POLICY);
    ag_conf_err err;
    if (!j || ag_policy_load(j, "policy", &F.pol, &err) != 0) {
        fprintf(stderr, "fuzz_sse: policy: %s\n", j ? err.msg : "JSON");
        abort();
    }
    cJSON_Delete(j);
    F.scratch = ag_policy_scratch_new();
    if (!F.scratch)
        abort();
    return 0;
}

/* Feeds the stream in pieces whose sizes come from a small PRNG seeded by seed (0: all at once);
 * returns 0 or -1 as the parser did. */
static int run(const char *s, size_t n, unsigned seed, transcript *t)
{
    ag_sse_parser *p = ag_sse_parser_new(MAX_EVENT, on_event, t);
    if (!p)
        abort();
    int rc = 0;
    uint32_t x = seed * 2654435761u + 1;
    size_t i = 0;
    size_t first_min = 1; /* a BOM may be split too */
    while (i < n && rc == 0) {
        size_t k = n - i;
        if (seed) {
            x = x * 1103515245u + 12345u;
            k = 1 + (x >> 16) % 17;
            if (i == 0 && k < first_min)
                k = first_min;
            if (k > n - i)
                k = n - i;
        }
        rc = ag_sse_parser_feed(p, s + i, k);
        i += k;
    }
    ag_sse_parser_free(p);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!F.pol)
        LLVMFuzzerInitialize(NULL, NULL);
    if (size < 1 || size > (1 << 20))
        return 0;
    unsigned seed = data[0] & 0x7f;
    bool with_policy = data[0] & 0x80;
    const char *s = (const char *)data + 1;
    size_t n = size - 1;

    transcript whole = {0}, pieces = {0};
    whole.req = calloc(1, sizeof *whole.req);
    if (!whole.req)
        abort();
    if (seed & 1) { /* the audit's text capture on */
        whole.req->want_text = true;
        whole.ref = calloc(1, sizeof *whole.ref);
        if (!whole.ref)
            abort();
        whole.ref->want_text = true;
    }
    ag_policy_sse psse, tree;
    ag_policy_call call = {.identity = NULL, .deployment = "gpt-4o-mini", .operation = "chat/completions"};
    if (with_policy) {
        ag_policy_sse_init(&psse, F.pol, &call);
        whole.psse = &psse;
        if (data[0] & 0x40) {
            ag_policy_sse_init(&tree, F.pol, &call);
            whole.tree = &tree;
        }
    }
    int rc_whole = run(s, n, 0, &whole);
    int rc_pieces = run(s, n, seed ? seed : 1, &pieces);
    /* Whether the bound is hit must not depend on the cut either. */
    if (rc_whole != rc_pieces)
        __builtin_trap(); /* the cut changed whether the stream was accepted */
    if (rc_whole == 0 && rc_pieces == 0 && (whole.len != pieces.len || (whole.len && memcmp(whole.buf, pieces.buf, whole.len) != 0)))
        __builtin_trap(); /* the cut changed the events */
    if (with_policy) {
        ag_policy_decisions dec;
        memset(&dec, 0, sizeof dec);
        ag_policy_sse_decisions(&psse, &dec);
        if (dec.count > AG_POLICY_MAX_DECISIONS)
            __builtin_trap();
        if (whole.tree) {
            ag_policy_decisions tdec;
            memset(&tdec, 0, sizeof tdec);
            ag_policy_sse_decisions(&tree, &tdec);
            if (memcmp(&dec, &tdec, sizeof dec) != 0 || psse.overflow != tree.overflow)
                __builtin_trap(); /* the in-place path decided otherwise */
            ag_policy_sse_free(&tree);
        }
        ag_policy_sse_free(&psse);
    }
    if (whole.req->completion_len > 1024 * 1024)
        __builtin_trap();
    free(whole.req->completion_text);
    free(whole.req);
    if (whole.ref)
        free(whole.ref->completion_text);
    free(whole.ref);
    free(whole.buf);
    free(pieces.buf);
    return 0;
}
