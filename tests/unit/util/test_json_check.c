/* ag_json_object_check against ag_json_parse_strict: whatever the check proves (a strict object, and
 * the top-level values it found) the strict parse must confirm, on hand-written edge cases, on
 * random documents and on random mutations of them; and the check must prove the plain documents
 * that the gateway's ordinary requests are (no escapes, exponents, duplicates or deep nesting), or
 * the pipeline's fast path would never run. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aoai_guard/json_strict.h"
#include "check.h"

static const ag_json_limits LIMITS = {.max_depth = 64, .max_nodes = 500000};

/* 0 when the check proved nothing; 1 when it proved doc and the strict parse agrees on the object
 * and on each field found; -1 when the strict parse contradicts it. */
static int check_against_parse(const char *doc, size_t len)
{
    ag_json_field f[3] = {{.key = "model"}, {.key = "stream"}, {.key = "n"}};
    if (!ag_json_object_check(doc, len, &LIMITS, f, 3)) {
        for (int i = 0; i < 3; i++)
            if (f[i].value)
                return -1; /* no field is reported when nothing is proved */
        return 0;
    }
    ag_json_status st;
    size_t off;
    cJSON *tree = ag_json_parse_strict(doc, len, &LIMITS, &st, &off);
    int ok = tree && cJSON_IsObject(tree);
    for (int i = 0; ok && i < 3; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(tree, f[i].key);
        if (!v != !f[i].value) {
            ok = 0;
        } else if (v && cJSON_IsString(v)) {
            ok = f[i].value[0] == '"' && strlen(v->valuestring) == f[i].value_len - 2 &&
                 memcmp(v->valuestring, f[i].value + 1, f[i].value_len - 2) == 0;
        } else if (v) {
            char *printed = cJSON_PrintUnformatted(v);
            /* literals print as written; numbers and containers need only start alike */
            ok = printed && (cJSON_IsBool(v) || cJSON_IsNull(v)
                                 ? strlen(printed) == f[i].value_len && memcmp(printed, f[i].value, f[i].value_len) == 0
                                 : printed[0] == f[i].value[0] || (printed[0] != '{' && printed[0] != '['));
            cJSON_free(printed);
        }
    }
    cJSON_Delete(tree);
    return ok ? 1 : -1;
}

static int check_str(const char *doc)
{
    return check_against_parse(doc, strlen(doc));
}

static void test_cases(void)
{
    /* proved, and confirmed */
    CHECK_INT(check_str("{\"model\":\"gpt-4o\",\"stream\":true,\"n\":2,\"messages\":[{\"role\":\"user\","
                        "\"content\":\"caf\xc3\xa9 \\\"quoted\\\" \\\\ \\/ \\n\"}],\"temperature\":0.25,"
                        "\"stop\":null,\"logprobs\":false,\"x\":-0.5,\"y\":[],\"z\":{}}"), 1);
    CHECK_INT(check_str(" \t\r\n{}\n "), 1);
    CHECK_INT(check_str("{\"a\":{\"b\":{\"c\":[[[{\"d\":[1,2,3]}]]]}}}"), 1);
    CHECK_INT(check_str("{\"n\":999999999999999,\"m\":-999999999999999}"), 1);
    CHECK_INT(check_str("{\"stream\":{\"include_usage\":true}}"), 1);

    /* not proved: bad documents */
    static const char *const bad[] = {
        "", "   ", "{", "}", "{\"a\":1,\"a\":2}", "{\"a\":1}x", "{\"a\":1,}", "{\"a\" 1}", "{'a':1}",
        "{\"a\":01}", "{\"a\":1.}", "{\"a\":.5}", "{\"a\":-}", "{\"a\":+1}", "{\"a\":tru}", "{\"a\":nul}",
        "{\"a\":\"\x01\"}", "{\"a\":\"\\x\"}", "{\"a\":\"\\u0000\"}", "{\"a\":\"\xc3\"}", "{\"a\":\"\xed\xa0\x80\"}",
        "{\"a\":1\x0b}", "{\"a\":\"b}", "{\"a\":[1,2}", "{\"a\":9007199254740993}", "{\"a\":1e999}",
        "\xef\xbb\xbf{}", "{\"a\":1}\x00",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t len = strlen(bad[i]) + (strcmp(bad[i], "{\"a\":1}") == 0); /* the last keeps its NUL */
        int r = check_against_parse(bad[i], len);
        CHECK_INT(r, 0);
        if (r != 0)
            fprintf(stderr, "  proved: %s\n", bad[i]);
    }
    CHECK_INT(check_against_parse("{\"a\":1}\0", 8), 0);

    /* not proved, though strict JSON: left to the full parse on purpose */
    static const char *const deferred[] = {
        "[1,2]",                             /* not an object */
        "{\"a\\/\":1}",                      /* an escaped key */
        "{\"model\":\"gpt\\n4\"}",           /* an escaped string as a field's value */
        "{\"a\":\"\\u00e9\"}",               /* \u */
        "{\"a\":1e5}", "{\"a\":1E-5}",       /* exponents */
        "{\"a\":1234567890123456}",          /* 16 digits */
        "{\"a\":0.123456789012345678901234567890123}", /* 33 bytes */
    };
    for (size_t i = 0; i < sizeof deferred / sizeof deferred[0]; i++) {
        CHECK_INT(check_str(deferred[i]), 0);
        ag_json_status st;
        size_t off;
        cJSON *t = ag_json_parse_strict(deferred[i], strlen(deferred[i]), &LIMITS, &st, &off);
        CHECK(t != NULL);
        cJSON_Delete(t);
    }
    /* 33 keys, and nesting of 33: deferred; 32 of each: proved */
    char doc[4096];
    for (int keys = 32; keys <= 33; keys++) {
        size_t n = 0;
        doc[n++] = '{';
        for (int k = 0; k < keys; k++)
            n += (size_t)snprintf(doc + n, sizeof doc - n, "%s\"k%d\":%d", k ? "," : "", k, k);
        doc[n++] = '}';
        doc[n] = '\0';
        CHECK_INT(check_str(doc), keys == 32 ? 1 : 0);
    }
    for (int depth = 32; depth <= 33; depth++) {
        size_t n = 0;
        doc[n++] = '{';
        doc[n++] = '"', doc[n++] = 'a', doc[n++] = '"', doc[n++] = ':';
        for (int d = 1; d < depth; d++)
            doc[n++] = '[';
        for (int d = 1; d < depth; d++)
            doc[n++] = ']';
        doc[n++] = '}';
        doc[n] = '\0';
        CHECK_INT(check_str(doc), depth == 32 ? 1 : 0);
    }
}

/* ---- random documents ---- */

typedef struct gen {
    char *p;
    size_t n, cap;
    bool plain; /* only what the check must prove */
} gen;

static void put(gen *g, const char *s, size_t n)
{
    if (g->n + n < g->cap) {
        memcpy(g->p + g->n, s, n);
        g->n += n;
    }
}
static void PUTS(gen *g, const char *s) /* s evaluated once: it is often a random pick */
{
    put(g, s, strlen(s));
}

static void gen_ws(gen *g)
{
    static const char *const ws[] = {"", "", "", " ", "\n", "\t", "\r\n  "};
    PUTS(g, ws[check_rnd(7)]);
}

static void gen_string(gen *g, bool key, int idx)
{
    static const char *const pieces[] = {"a", "model", "stream", "n", "caf\xc3\xa9", "\xe2\x82\xac", "x y",
                                         "\xf0\x9f\x98\x80", "-", "0"};
    static const char *const escapes[] = {"\\\"", "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t", "\\u00e9",
                                          "\\ud83d\\ude00"};
    PUTS(g, "\"");
    if (key && idx >= 0) { /* distinct keys in plain documents */
        char k[16];
        snprintf(k, sizeof k, "%s%d", idx % 3 == 0 ? "k" : "key", idx);
        PUTS(g, idx == 0 ? pieces[1 + check_rnd(3)] : k);
    } else {
        int parts = (int)check_rnd(4);
        for (int i = 0; i < parts; i++) {
            if (!g->plain && check_rnd(4) == 0)
                PUTS(g, escapes[check_rnd(10)]);
            else
                PUTS(g, pieces[check_rnd(10)]);
        }
    }
    PUTS(g, "\"");
}

static void gen_value(gen *g, int depth)
{
    unsigned kind = check_rnd(depth > 4 ? 6 : 8);
    char num[64];
    switch (kind) {
    case 0: PUTS(g, "true"); break;
    case 1: PUTS(g, "false"); break;
    case 2: PUTS(g, "null"); break;
    case 3: gen_string(g, false, -1); break;
    case 4:
        if (!g->plain && check_rnd(3) == 0) {
            static const char *const odd[] = {"1e5", "-2.5E-3", "12345678901234567", "9007199254740992",
                                              "0.00000000000000000000000000000000001", "1E400"};
            PUTS(g, odd[check_rnd(6)]);
        } else {
            snprintf(num, sizeof num, "%s%u%s", check_rnd(2) ? "-" : "", check_rnd(1000000), check_rnd(2) ? ".25" : "");
            PUTS(g, num);
        }
        break;
    case 5: {
        int n = (int)check_rnd(4);
        PUTS(g, "[");
        for (int i = 0; i < n; i++) {
            if (i)
                PUTS(g, ",");
            gen_ws(g);
            gen_value(g, depth + 1);
            gen_ws(g);
        }
        PUTS(g, "]");
        break;
    }
    default: {
        int n = (int)check_rnd(5);
        PUTS(g, "{");
        for (int i = 0; i < n; i++) {
            if (i)
                PUTS(g, ",");
            gen_ws(g);
            /* plain: distinct keys; otherwise sometimes a repeat of the first */
            gen_string(g, true, g->plain || check_rnd(4) ? i : 0);
            gen_ws(g);
            PUTS(g, ":");
            gen_ws(g);
            gen_value(g, depth + 1);
        }
        PUTS(g, "}");
        break;
    }
    }
}

static void test_random(void)
{
    static char buf[65536];
    int contradictions = 0, plain_unproved = 0, proved = 0, mutated_proved = 0;
    for (int iter = 0; iter < 30000; iter++) {
        gen g = {buf, 0, sizeof buf - 1, iter % 2 == 0};
        gen_ws(&g);
        PUTS(&g, "{");
        int n = (int)check_rnd(6);
        for (int i = 0; i < n; i++) {
            if (i)
                PUTS(&g, ",");
            gen_string(&g, true, g.plain || check_rnd(4) ? i : 0);
            PUTS(&g, ":");
            gen_value(&g, 1);
        }
        PUTS(&g, "}");
        gen_ws(&g);
        int r = check_against_parse(buf, g.n);
        if (r < 0) {
            contradictions++;
            fprintf(stderr, "  contradicted: %.*s\n", (int)g.n, buf);
        }
        if (g.plain && r != 1 && g.n < g.cap - 1) {
            plain_unproved++;
            fprintf(stderr, "  plain, not proved: %.*s\n", (int)g.n, buf);
        }
        proved += r == 1;
        /* and a few byte-level mutations of it */
        for (int m = 0; m < 4; m++) {
            static char mut[65536];
            size_t ml = g.n;
            memcpy(mut, buf, ml);
            static const char bytes[] = "{}[]\",:\\ 0-.eE\x01\x80\xc3\xa9tfn";
            size_t at = ml ? check_rnd((unsigned)ml) : 0;
            switch (check_rnd(3)) {
            case 0: if (ml) mut[at] = bytes[check_rnd(sizeof bytes - 1)]; break;
            case 1: if (ml) { memmove(mut + at, mut + at + 1, ml - at - 1); ml--; } break;
            default: memmove(mut + at + 1, mut + at, ml - at); mut[at] = bytes[check_rnd(sizeof bytes - 1)]; ml++; break;
            }
            int mr = check_against_parse(mut, ml);
            if (mr < 0) {
                contradictions++;
                fprintf(stderr, "  contradicted (mutated): %.*s\n", (int)ml, mut);
            }
            mutated_proved += mr == 1;
        }
    }
    CHECK_INT(contradictions, 0);
    CHECK_INT(plain_unproved, 0);
    CHECK(proved > 15000);      /* every plain document, and some of the others */
    CHECK(mutated_proved > 0);  /* mutations that stay strict JSON are proved too */
}

int main(void)
{
    test_cases();
    test_random();
    return CHECK_DONE();
}
