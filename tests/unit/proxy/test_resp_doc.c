/* A held response parsed where the gateway reads it (resp_doc.c): the values read must equal what
 * cJSON makes of the whole text (choices reduced to message, text and index), in order and with
 * duplicates; each span holds its value; printing gives the whole document again, changed exactly
 * where the tree was; and everything the stepper does not follow falls back to the whole parse. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "aoai_guard/resp_doc.h"
#include "check.h"

static bool is_wanted(const char *k)
{
    return strcmp(k, "choices") == 0 || strcmp(k, "output") == 0 || strcmp(k, "object") == 0;
}

static bool is_choice_key(const char *k)
{
    return strcmp(k, "message") == 0 || strcmp(k, "text") == 0 || strcmp(k, "index") == 0;
}

/* "choices" as the stepper goes into it: an array whose elements are all objects. */
static bool stepped_choices(const cJSON *f)
{
    if (strcmp(f->string, "choices") != 0 || !cJSON_IsArray(f))
        return false;
    for (const cJSON *el = f->child; el; el = el->next)
        if (!cJSON_IsObject(el))
            return false;
    return true;
}

/* What the stepper keeps of a whole-parse member: stepped choices reduced to the members read. */
static cJSON *expected_member(const cJSON *f)
{
    cJSON *e = cJSON_Duplicate(f, true);
    if (e && stepped_choices(f))
        for (cJSON *el = e->child; el; el = el->next)
            for (cJSON *c = el->child, *next; c; c = next) {
                next = c->next;
                if (!is_choice_key(c->string))
                    cJSON_Delete(cJSON_DetachItemViaPointer(el, c));
            }
    return e;
}

/* Equal trees, children compared in order (cJSON_Compare looks duplicate keys up by name, so two
 * objects with the same key twice never compare equal). */
static bool same(const cJSON *a, const cJSON *b)
{
    if (!a || !b)
        return a == b;
    if ((a->type & 0xFF) != (b->type & 0xFF))
        return false;
    if ((a->string == NULL) != (b->string == NULL) || (a->string && strcmp(a->string, b->string) != 0))
        return false;
    if (cJSON_IsString(a) && strcmp(a->valuestring, b->valuestring) != 0)
        return false;
    if (cJSON_IsNumber(a) && a->valuedouble != b->valuedouble)
        return false;
    const cJSON *x = a->child, *y = b->child;
    for (; x && y; x = x->next, y = y->next)
        if (!same(x, y))
            return false;
    return x == NULL && y == NULL;
}

/* Appends "~" to node's string and to every string under it (what a redaction does: strings
 * changed in place). */
static void mark_tree(cJSON *node)
{
    if (cJSON_IsString(node)) {
        size_t n = strlen(node->valuestring);
        char *s = malloc(n + 2);
        memcpy(s, node->valuestring, n);
        memcpy(s + n, "~", 2);
        cJSON_SetValuestring(node, s);
        free(s);
    }
    for (cJSON *c = node->child; c; c = c->next)
        mark_tree(c);
}

/* The k-th span of d holds exactly the value of item. */
static void check_span(const char *text, const ag_resp_doc *d, size_t k, const cJSON *item)
{
    CHECK(k < d->nspans);
    if (k >= d->nspans)
        return;
    cJSON *v = cJSON_ParseWithLength(text + d->spans[k].start, d->spans[k].end - d->spans[k].start);
    CHECK(v && v->string == NULL);
    if (v) { /* the value alone: no key; compare with the item's */
        v->string = item->string;
        CHECK(same(v, item));
        v->string = NULL;
    }
    cJSON_Delete(v);
}

/* Checks d against the whole parse of text: the same members, and the prints. */
static void check_doc(const char *text, size_t len, bool want_partial)
{
    ag_resp_doc d;
    ag_resp_doc_parse(&d, text, len);
    cJSON *full = cJSON_ParseWithLength(text, len);
    if (d.partial != want_partial) {
        check_failures++;
        fprintf(stderr, "partial %d, expected %d: %.*s\n", d.partial, want_partial, (int)(len < 200 ? len : 200),
                text);
    }
    check_count++;
    if (!d.partial) {
        CHECK((d.root == NULL) == (full == NULL));
        if (d.root && full)
            CHECK(same(d.root, full));
        ag_resp_doc_free(&d);
        cJSON_Delete(full);
        return;
    }
    CHECK(full != NULL && cJSON_IsObject(full));
    if (!full) {
        ag_resp_doc_free(&d);
        return;
    }
    /* the values read: the whole parse's wanted members (choices reduced), in order, duplicates
     * included; and each span, in document order, holds its value */
    const cJSON *m = d.root->child;
    size_t k = 0;
    for (const cJSON *f = full->child; f; f = f->next) {
        if (!is_wanted(f->string))
            continue;
        cJSON *want = expected_member(f);
        CHECK(m != NULL && same(m, want));
        cJSON_Delete(want);
        if (!m)
            break;
        if (stepped_choices(f)) {
            for (const cJSON *el = m->child; el; el = el->next)
                for (const cJSON *c = el->child; c; c = c->next)
                    check_span(text, &d, k++, c);
        } else {
            check_span(text, &d, k++, m);
        }
        m = m->next;
    }
    CHECK(m == NULL && k == d.nspans);
    /* unchanged: the same document; outside the members, the same bytes */
    size_t olen;
    char *out = ag_resp_doc_print(&d, text, len, &olen);
    CHECK(out != NULL);
    if (out) {
        cJSON *again = cJSON_ParseWithLength(out, olen);
        CHECK(same(again, full));
        cJSON_Delete(again);
        CHECK(memcmp(out, text, d.nspans ? d.spans[0].start : len) == 0);
        size_t tail = d.nspans ? len - d.spans[d.nspans - 1].end : 0;
        CHECK(olen >= tail && memcmp(out + olen - tail, text + len - tail, tail) == 0);
    }
    cJSON_free(out);
    /* changed: the whole parse of the output is the whole parse of the input, changed the same way */
    for (cJSON *c = d.root->child; c; c = c->next)
        mark_tree(c);
    for (cJSON *f = full->child; f; f = f->next) {
        if (!is_wanted(f->string))
            continue;
        if (!stepped_choices(f)) {
            mark_tree(f);
            continue;
        }
        for (cJSON *el = f->child; el; el = el->next) /* the members read; the rest is as sent */
            for (cJSON *c = el->child; c; c = c->next)
                if (is_choice_key(c->string))
                    mark_tree(c);
    }
    out = ag_resp_doc_print(&d, text, len, &olen);
    CHECK(out != NULL);
    if (out) {
        cJSON *again = cJSON_ParseWithLength(out, olen);
        CHECK(same(again, full));
        cJSON_Delete(again);
    }
    cJSON_free(out);
    ag_resp_doc_free(&d);
    cJSON_Delete(full);
}

/* ---- random documents ---- */

static unsigned seed = 12345;
static unsigned rnd(unsigned n)
{
    seed = seed * 1103515245u + 12345u;
    return (seed >> 8) % n;
}

static void put(char *b, size_t *n, const char *s)
{
    size_t l = strlen(s);
    memcpy(b + *n, s, l);
    *n += l;
}

static void ws(char *b, size_t *n)
{
    static const char *const w[] = {"", "", "", " ", "\n", "\t ", "\r\n  "};
    put(b, n, w[rnd(7)]);
}

/* A random value; kind -1: any, 3: an array, 4: an object. */
static void value_of(char *b, size_t *n, int depth, int kind);

static void value(char *b, size_t *n, int depth)
{
    value_of(b, n, depth, -1);
}

/* An array of up to 3 values; choices: as Azure sends them, mostly objects. */
static void array_value(char *b, size_t *n, int depth, bool choices)
{
    put(b, n, "[");
    unsigned items = rnd(4);
    for (unsigned i = 0; i < items; i++) {
        if (i)
            put(b, n, ",");
        ws(b, n);
        value_of(b, n, depth, choices && rnd(8) ? 4 : -1);
        ws(b, n);
    }
    put(b, n, "]");
}

static void value_of(char *b, size_t *n, int depth, int forced)
{
    static const char *const strs[] = {"\"\"", "\"text\"", "\"a \\\"quoted\\\" word\"", "\"tab\\there\"",
                                       "\"caf\xc3\xa9\"", "\"\\u00e9t\\u00e9\"", "\"choices\"", "\"{[,]}\""};
    static const char *const nums[] = {"0", "-1", "42", "3.25", "1e3", "1795908635", "-0.5E-2"};
    static const char *const lits[] = {"true", "false", "null"};
    unsigned kind = forced >= 0 ? (unsigned)forced : depth > 3 ? rnd(3) : rnd(5);
    if (kind == 0) {
        put(b, n, strs[rnd(8)]);
    } else if (kind == 1) {
        put(b, n, nums[rnd(7)]);
    } else if (kind == 2) {
        put(b, n, lits[rnd(3)]);
    } else if (kind == 3) {
        array_value(b, n, depth + 1, false);
    } else {
        static const char *const keys[] = {"\"content\"", "\"role\"", "\"message\"", "\"text\"", "\"usage\"",
                                           "\"index\"", "\"logprobs\"", "\"content_filter_results\""};
        put(b, n, "{");
        unsigned items = rnd(5);
        for (unsigned i = 0; i < items; i++) {
            if (i)
                put(b, n, ",");
            ws(b, n);
            put(b, n, keys[rnd(8)]);
            ws(b, n);
            put(b, n, ":");
            ws(b, n);
            value(b, n, depth + 1);
            ws(b, n);
        }
        put(b, n, "}");
    }
}

static void test_random(void)
{
    static const char *const top[] = {"\"choices\"", "\"output\"", "\"object\"", "\"usage\"", "\"id\"",
                                      "\"prompt_filter_results\"", "\"created\""};
    char *b = malloc(1 << 16);
    int partial = 0;
    for (int it = 0; it < 3000; it++) {
        size_t n = 0;
        ws(b, &n);
        put(b, &n, "{");
        unsigned members = rnd(7);
        for (unsigned i = 0; i < members; i++) {
            if (i)
                put(b, &n, ",");
            ws(b, &n);
            unsigned key = rnd(7);
            put(b, &n, top[key]);
            ws(b, &n);
            put(b, &n, ":");
            ws(b, &n);
            if (key == 0 && rnd(4))
                array_value(b, &n, 1, true);
            else
                value(b, &n, 0);
            ws(b, &n);
        }
        put(b, &n, "}");
        ws(b, &n);
        b[n] = '\0';
        /* the stepper follows it unless a skipped member holds a \u escape */
        ag_resp_doc d;
        ag_resp_doc_parse(&d, b, n);
        partial += d.partial;
        bool expect = d.partial;
        ag_resp_doc_free(&d);
        check_doc(b, n, expect);
    }
    CHECK(partial > 1500); /* most documents took the stepper's path */
    free(b);
}

int main(void)
{
    /* Azure's chat completion: choices and object read, the rest stepped over */
    const char *azure =
        "{\"choices\":[{\"content_filter_results\":{\"hate\":{\"filtered\":false,\"severity\":\"safe\"}},"
        "\"finish_reason\":\"stop\",\"index\":0,\"logprobs\":null,\"message\":{\"content\":\"Echo: hi\","
        "\"refusal\":null,\"role\":\"assistant\"}}],\"created\":1795908635,\"id\":\"chatcmpl-1\","
        "\"model\":\"gpt-4o-mini-2024-07-18\",\"object\":\"chat.completion\",\"prompt_filter_results\":"
        "[{\"prompt_index\":0,\"content_filter_results\":{\"jailbreak\":{\"filtered\":false,\"detected\":false}}}],"
        "\"system_fingerprint\":\"fp_1\",\"usage\":{\"completion_tokens\":2,\"prompt_tokens\":1,\"total_tokens\":3}}";
    ag_resp_doc d;
    ag_resp_doc_parse(&d, azure, strlen(azure));
    CHECK(d.partial && d.nspans == 3); /* choices[0].index, choices[0].message, object */
    const cJSON *ch0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(d.root, "choices"), 0);
    CHECK(cJSON_GetArraySize(ch0) == 2 && cJSON_GetObjectItemCaseSensitive(ch0, "message") &&
          !cJSON_GetObjectItemCaseSensitive(ch0, "content_filter_results"));
    CHECK(cJSON_GetObjectItemCaseSensitive(d.root, "usage") == NULL);
    CHECK_STR(cJSON_GetObjectItemCaseSensitive(d.root, "object")->valuestring, "chat.completion");
    ag_resp_doc_free(&d);
    check_doc(azure, strlen(azure), true);

    /* the Responses API: output and object */
    const char *resp = "{\"id\":\"resp_1\",\"object\":\"response\",\"output\":[{\"type\":\"message\",\"content\":"
                       "[{\"type\":\"output_text\",\"text\":\"hello\"}]}],\"usage\":{\"input_tokens\":3}}";
    check_doc(resp, strlen(resp), true);
    check_doc("{}", 2, true);
    check_doc(" { \"id\" : 1 } ", 14, true);
    /* duplicates are kept in order, as the whole parse keeps them */
    const char *dup = "{\"choices\":[{\"text\":\"one\"}],\"id\":2,\"choices\":[{\"text\":\"two\"}]}";
    check_doc(dup, strlen(dup), true);

    /* what the stepper does not follow: the whole parse, as before */
    const char *esc_key = "{\"ch\\u006fices\":[{\"text\":\"secret\"}]}";
    check_doc(esc_key, strlen(esc_key), false);
    const char *esc_skipped = "{\"id\":\"\\u00e9\",\"choices\":[]}";
    check_doc(esc_skipped, strlen(esc_skipped), false);
    check_doc("[1,2]", 5, false);
    check_doc("{\"choices\":", 11, false);
    /* a text that ends where a value should start, in a buffer of exactly that size (ASan) */
    static const char *const cut[] = {"{\"choices\":", "{\"choices\": ", "{\"choices\":[{\"message\":",
                                      "{\"id\":"};
    for (size_t i = 0; i < sizeof cut / sizeof cut[0]; i++) {
        size_t n = strlen(cut[i]);
        char *exact = malloc(n);
        memcpy(exact, cut[i], n);
        ag_resp_doc_parse(&d, exact, n);
        CHECK(!d.partial && d.root == NULL);
        ag_resp_doc_free(&d);
        free(exact);
    }
    check_doc("not json", 8, false);
    char many[2048] = "{";
    for (int i = 0; i < AG_RESP_DOC_SPANS + 1; i++)
        strcat(many, i ? ",\"object\":\"x\"" : "\"object\":\"x\"");
    strcat(many, "}");
    check_doc(many, strlen(many), false);

    test_random();
    return CHECK_DONE();
}
