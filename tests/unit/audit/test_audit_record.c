/* Audit record rows: fields, capture modes, UTF-8 repair, 64 KB splitting, the per-request cap. */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "aoai_guard/audit_record.h"
#include "aoai_guard/json_strict.h"
#include "check.h"

typedef struct rows {
    char *json[64];
    cJSON *obj[64];
    int n;
} rows;

static int collect(const char *json, size_t len, void *arg)
{
    rows *r = arg;
    if (r->n >= 64)
        return -1;
    r->json[r->n] = malloc(len + 1);
    memcpy(r->json[r->n], json, len);
    r->json[r->n][len] = '\0';
    r->obj[r->n] = cJSON_ParseWithLength(json, len);
    r->n++;
    return 0;
}

static void rows_free(rows *r)
{
    for (int i = 0; i < r->n; i++) {
        free(r->json[i]);
        cJSON_Delete(r->obj[i]);
    }
    r->n = 0;
}

static const char *str(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static double num(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : -12345;
}

static bool has(const cJSON *o, const char *k)
{
    return cJSON_GetObjectItemCaseSensitive(o, k) != NULL;
}

/* Bytes the string value of key occupies inside its quotes in the row as printed. */
static size_t printed_len(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!v)
        return 0;
    char *s = cJSON_PrintUnformatted(v);
    size_t n = strlen(s) - 2;
    cJSON_free(s);
    return n;
}

static ag_audit_row_opts opts(ag_audit_capture def, size_t max_text)
{
    ag_audit_row_opts o = {def, max_text, 0, "gw-test-1"};
    return o;
}

static void test_full_record(void)
{
    ag_audit_record *r = ag_audit_record_new();
    CHECK(r != NULL);
    CHECK_INT(r->latency_ms, -1);
    CHECK_INT(r->prompt_tokens, -1);
    snprintf(r->request_id, sizeof r->request_id, "req-42");
    r->identity.kind = AG_IDENTITY_USER;
    snprintf(r->identity.tid, sizeof r->identity.tid, "11111111-1111-1111-1111-111111111111");
    snprintf(r->identity.oid, sizeof r->identity.oid, "22222222-2222-2222-2222-222222222222");
    snprintf(r->identity.roles, sizeof r->identity.roles, " AI.User  AI.Admin ");
    snprintf(r->client_address, sizeof r->client_address, "10.1.2.3");
    snprintf(r->deployment, sizeof r->deployment, "gpt-4o-mini");
    r->stream = true;
    r->status = 200;
    r->latency_ms = 1234;
    r->prompt_tokens = 10;
    r->completion_tokens = 20;
    r->total_tokens = 30;
    CHECK_INT(ag_audit_record_add_decision(r, "pii-email", "redact"), 0);
    CHECK_INT(ag_audit_record_set_prompt(r, "hello", 5), 0);
    CHECK_INT(ag_audit_record_append_response(r, "wor", 3), 0);
    CHECK_INT(ag_audit_record_append_response(r, "ld", 2), 0);
    r->completion_reason = AG_COMPLETION_CLIENT_DISCONNECTED;

    rows out = {0};
    ag_audit_row_opts o = opts(AG_CAPTURE_FULL, 0);
    CHECK_INT(ag_audit_record_rows(r, &o, collect, &out), 1);
    CHECK_INT(out.n, 1);
    cJSON *row = out.obj[0];
    CHECK(row != NULL);
    CHECK_STR(str(row, "RecordType"), "request");
    CHECK_STR(str(row, "RequestId"), "req-42");
    CHECK_INT(num(row, "Part"), 1);
    CHECK_INT(num(row, "PartCount"), 1);
    CHECK_STR(str(row, "GatewayInstance"), "gw-test-1");
    CHECK_STR(str(row, "CallerKind"), "user");
    CHECK_STR(str(row, "CallerObjectId"), "22222222-2222-2222-2222-222222222222");
    const cJSON *roles = cJSON_GetObjectItemCaseSensitive(row, "CallerRoles");
    CHECK_INT(cJSON_GetArraySize(roles), 2);
    CHECK_STR(cJSON_GetArrayItem(roles, 0)->valuestring, "AI.User");
    CHECK_STR(cJSON_GetArrayItem(roles, 1)->valuestring, "AI.Admin");
    CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(row, "Stream")));
    CHECK_INT(num(row, "Status"), 200);
    CHECK_INT(num(row, "LatencyMs"), 1234);
    CHECK(!has(row, "TimeToFirstByteMs")); /* unknown (-1) is omitted */
    CHECK(!has(row, "EstimatedTokens"));
    CHECK_INT(num(row, "TotalTokens"), 30);
    CHECK_STR(str(row, "PolicyOutcome"), "redact");
    CHECK_STR(str(row, "PromptText"), "hello");
    CHECK_STR(str(row, "ResponseText"), "world");
    CHECK_STR(str(row, "PromptSha256"), "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
    CHECK_INT(num(row, "PromptBytes"), 5);
    CHECK_INT(num(row, "ResponseBytes"), 5);
    CHECK(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(row, "TextTruncated")));
    CHECK_STR(str(row, "CompletionReason"), "client_disconnected");
    CHECK_STR(str(row, "CaptureMode"), "full");
    CHECK(!has(row, "Upstream")); /* empty strings are omitted */
    const char *ts = str(row, "TimeGenerated");
    CHECK(ts && strlen(ts) == 24 && ts[10] == 'T' && ts[23] == 'Z');
    const char *id = str(row, "RecordId");
    CHECK(id && strlen(id) == 36 && id[14] == '4' && strchr("89ab", id[19]) != NULL);
    rows_free(&out);

    /* a second serialisation gets a new RecordId; block wins over redact */
    CHECK_INT(ag_audit_record_add_decision(r, "jailbreak", "block"), 0);
    CHECK_INT(ag_audit_record_rows(r, &o, collect, &out), 1);
    CHECK_STR(str(out.obj[0], "PolicyOutcome"), "block");
    CHECK_INT(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(out.obj[0], "PolicyDecisions")), 2);
    rows_free(&out);
    for (int i = 2; i < AG_AUDIT_MAX_DECISIONS; i++)
        CHECK_INT(ag_audit_record_add_decision(r, "r", "log"), 0);
    CHECK_INT(ag_audit_record_add_decision(r, "one-too-many", "log"), -1);
    CHECK(r->decisions_truncated);
    CHECK_INT(ag_audit_record_rows(r, &o, collect, &out), 1);
    const cJSON *decs = cJSON_GetObjectItemCaseSensitive(out.obj[0], "PolicyDecisions");
    CHECK_INT(cJSON_GetArraySize(decs), AG_AUDIT_MAX_DECISIONS + 1);
    CHECK_STR(str(cJSON_GetArrayItem(decs, AG_AUDIT_MAX_DECISIONS), "action"), "truncated");
    rows_free(&out);
    ag_audit_record_free(r);
}

static void test_capture_modes(void)
{
    const char *secret = "SECRET-PROMPT-do-not-store";
    ag_audit_record *r = ag_audit_record_new();
    ag_audit_record_set_prompt(r, secret, strlen(secret));
    ag_audit_record_set_response(r, "RESPONSE-do-not-store", 21);
    rows out = {0};

    ag_audit_row_opts o = opts(AG_CAPTURE_HASHED, 0);
    CHECK_INT(ag_audit_record_rows(r, &o, collect, &out), 1);
    CHECK(strstr(out.json[0], "SECRET") == NULL);
    CHECK(strstr(out.json[0], "RESPONSE-do") == NULL);
    CHECK(!has(out.obj[0], "PromptText"));
    CHECK(!has(out.obj[0], "ResponseText"));
    CHECK_STR(str(out.obj[0], "CaptureMode"), "hashed");
    const char *h = str(out.obj[0], "PromptSha256");
    CHECK(h && strlen(h) == 64);
    CHECK_INT(num(out.obj[0], "PromptBytes"), (long long)strlen(secret));
    rows_free(&out);

    /* the record's own mode wins over the default */
    r->capture = AG_CAPTURE_OFF;
    o = opts(AG_CAPTURE_FULL, 0);
    CHECK_INT(ag_audit_record_rows(r, &o, collect, &out), 1);
    CHECK(strstr(out.json[0], "SECRET") == NULL);
    CHECK(!has(out.obj[0], "PromptText"));
    CHECK(!has(out.obj[0], "PromptSha256"));
    CHECK_STR(str(out.obj[0], "CaptureMode"), "off");
    rows_free(&out);

    r->capture = AG_CAPTURE_REDACTED;
    CHECK_INT(ag_audit_record_rows(r, &o, collect, &out), 1);
    CHECK_STR(str(out.obj[0], "CaptureMode"), "redacted");
    CHECK_STR(str(out.obj[0], "PromptText"), secret);
    rows_free(&out);
    ag_audit_record_free(r);
}

static void test_utf8_repair(void)
{
    ag_audit_record *r = ag_audit_record_new();
    static const char bad[] = "ab\xff" "cd\0e\xe2\x82"; /* stray byte, NUL, truncated sequence */
    ag_audit_record_set_prompt(r, bad, sizeof bad - 1);
    snprintf(r->identity.upn, sizeof r->identity.upn, "x\xc3(y");
    rows out = {0};
    ag_audit_row_opts o = opts(AG_CAPTURE_FULL, 0);
    CHECK_INT(ag_audit_record_rows(r, &o, collect, &out), 1);
    CHECK_STR(str(out.obj[0], "PromptText"), "ab\xEF\xBF\xBD" "cd\xEF\xBF\xBD" "e\xEF\xBF\xBD\xEF\xBF\xBD");
    CHECK_STR(str(out.obj[0], "CallerUpn"), "x\xEF\xBF\xBD(y");
    size_t n = strlen(out.json[0]);
    CHECK_INT(ag_utf8_valid_prefix((const unsigned char *)out.json[0], n), n);
    rows_free(&out);
    ag_audit_record_free(r);
}

/* Splits text as the prompt and checks every part: escaped size within the limit, valid UTF-8, the
 * parts re-join to the text, and each cut was forced (the next code point would not have fitted). */
static int split_and_check(const char *text, size_t len, size_t expect_parts, const size_t *expect_lens)
{
    ag_audit_record *r = ag_audit_record_new();
    snprintf(r->request_id, sizeof r->request_id, "split-1");
    ag_audit_record_set_prompt(r, text, len);
    rows out = {0};
    ag_audit_row_opts o = opts(AG_CAPTURE_FULL, 16 * 1024 * 1024);
    int n = ag_audit_record_rows(r, &o, collect, &out);
    CHECK_INT(n, (long long)expect_parts);
    size_t off = 0;
    for (int i = 0; i < out.n; i++) {
        cJSON *row = out.obj[i];
        CHECK_INT(num(row, "Part"), i + 1);
        CHECK_INT(num(row, "PartCount"), (long long)expect_parts);
        CHECK_STR(str(row, "RequestId"), "split-1");
        for (int k = 0; k < i; k++)
            CHECK(strcmp(str(row, "RecordId"), str(out.obj[k], "RecordId")) != 0);
        const char *p = str(row, "PromptText");
        CHECK(p != NULL);
        if (!p)
            break;
        size_t pl = strlen(p);
        CHECK(printed_len(row, "PromptText") <= AG_AUDIT_FIELD_MAX);
        CHECK_INT(printed_len(row, "PromptText"), ag_audit_escaped_len(p, pl));
        CHECK_INT(ag_utf8_valid_prefix((const unsigned char *)p, pl), pl);
        if (expect_lens)
            CHECK_INT(pl, expect_lens[i]);
        CHECK(off + pl <= len && memcmp(text + off, p, pl) == 0);
        off += pl;
        if (off < len) { /* the cut was forced */
            size_t next = 1;
            unsigned char c = (unsigned char)text[off];
            if (c >= 0xF0)
                next = 4;
            else if (c >= 0xE0)
                next = 3;
            else if (c >= 0xC0)
                next = 2;
            CHECK(ag_audit_escaped_len(p, pl) + ag_audit_escaped_len(text + off, next) > AG_AUDIT_FIELD_MAX);
        }
        if (i > 0) /* continuation parts carry identifiers and text only */
            CHECK(!has(row, "Deployment") && !has(row, "PromptSha256") && has(row, "TimeGenerated"));
    }
    CHECK_INT(off, len);
    CHECK_INT(out.n, (long long)expect_parts);
    rows_free(&out);
    ag_audit_record_free(r);
    return 0;
}

static void test_split(void)
{
    /* plain ASCII: 64000-byte parts */
    size_t len = 150000;
    char *t = malloc(len + 1);
    memset(t, 'a', len);
    static const size_t ascii[] = {64000, 64000, 22000};
    split_and_check(t, len, 3, ascii);

    /* quotes escape to two bytes: 32000 per part */
    memset(t, '"', 40000);
    static const size_t quotes[] = {32000, 8000};
    split_and_check(t, 40000, 2, quotes);

    /* control bytes escape to \u00XX: 10666 per part (63996 escaped) */
    memset(t, '\x01', 20000);
    static const size_t ctl[] = {10666, 9334};
    split_and_check(t, 20000, 2, ctl);

    /* a 4-byte sequence would straddle the limit: it moves whole to the next part */
    t[0] = 'a';
    for (size_t i = 0; i < 16000; i++)
        memcpy(t + 1 + 4 * i, "\xF0\x9D\x84\x9E", 4); /* U+1D11E */
    static const size_t four[] = {63997, 4};
    split_and_check(t, 1 + 4 * 16000, 2, four);

    /* a mix of 1- to 4-byte sequences, quotes and newlines */
    static const char *pieces[] = {"\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80", "a", "\"", "\n", "\\"};
    size_t o = 0, k = 0;
    while (o < 140000) {
        const char *p = pieces[(k * 7 + k / 3) % 7];
        memcpy(t + o, p, strlen(p));
        o += strlen(p);
        k++;
    }
    split_and_check(t, o, 3, NULL);
    free(t);
}

static void test_cap(void)
{
    char *p = malloc(2000), *q = malloc(2000);
    memset(p, 'p', 2000);
    memset(q, 'q', 2000);
    rows out = {0};
    ag_audit_row_opts o = opts(AG_CAPTURE_FULL, 1000);

    ag_audit_record *r = ag_audit_record_new();
    ag_audit_record_set_prompt(r, p, 800);
    ag_audit_record_set_response(r, q, 800);
    CHECK_INT(ag_audit_record_rows(r, &o, collect, &out), 1);
    CHECK_INT(strlen(str(out.obj[0], "PromptText")), 500);
    CHECK_INT(strlen(str(out.obj[0], "ResponseText")), 500);
    CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(out.obj[0], "TextTruncated")));
    CHECK_INT(num(out.obj[0], "PromptBytes"), 800); /* the original size stays visible */
    rows_free(&out);

    ag_audit_record_set_prompt(r, p, 300);
    ag_audit_record_set_response(r, q, 2000);
    CHECK_INT(ag_audit_record_rows(r, &o, collect, &out), 1);
    CHECK_INT(strlen(str(out.obj[0], "PromptText")), 300);
    CHECK_INT(strlen(str(out.obj[0], "ResponseText")), 700);
    rows_free(&out);

    ag_audit_record_set_prompt(r, p, 400);
    ag_audit_record_set_response(r, q, 600);
    CHECK_INT(ag_audit_record_rows(r, &o, collect, &out), 1);
    CHECK(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(out.obj[0], "TextTruncated")));
    rows_free(&out);

    /* the cut never lands inside a UTF-8 sequence: 400 x 3-byte euro signs capped at 1000 bytes */
    char euro[1200];
    for (int i = 0; i < 400; i++)
        memcpy(euro + 3 * i, "\xE2\x82\xAC", 3);
    ag_audit_record_set_prompt(r, euro, sizeof euro);
    ag_audit_record_set_response(r, "", 0);
    CHECK_INT(ag_audit_record_rows(r, &o, collect, &out), 1);
    CHECK_INT(strlen(str(out.obj[0], "PromptText")), 999);
    rows_free(&out);
    ag_audit_record_free(r);
    free(p);
    free(q);
}

static void test_event(void)
{
    ag_audit_record *r = ag_audit_record_new();
    r->type = AG_AUDIT_GATEWAY_EVENT;
    r->event_type = AG_EVENT_CONFIG_RELOAD;
    r->event_details = strdup("{\"old_hash\":\"aa\",\"new_hash\":\"bb\",\"changed\":\"auth,limits\",\"x\":\"\xff\"}");
    rows out = {0};
    ag_audit_row_opts o = opts(AG_CAPTURE_FULL, 0);
    CHECK_INT(ag_audit_record_rows(r, &o, collect, &out), 1);
    CHECK_STR(str(out.obj[0], "RecordType"), "gateway_event");
    CHECK_STR(str(out.obj[0], "EventType"), "config_reload");
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(out.obj[0], "EventDetails");
    CHECK(cJSON_IsObject(d));
    CHECK_STR(str(d, "changed"), "auth,limits");
    CHECK_STR(str(d, "x"), "\xEF\xBF\xBD");
    CHECK(!has(out.obj[0], "Status"));
    rows_free(&out);
    ag_audit_record_free(r);

    CHECK_STR(ag_audit_event_type_str(AG_EVENT_AUTH_FAILURE_BURST), "auth_failure_burst");
    CHECK_STR(ag_completion_reason_str(AG_COMPLETION_UPSTREAM_TIMEOUT), "upstream_timeout");
    CHECK_STR(ag_audit_capture_str(AG_CAPTURE_HASHED), "hashed");
}

static void test_copy_field(void)
{
    char small[5];
    ag_audit_copy_field(small, sizeof small, "ab\xE2\x82\xAC"); /* "ab€": 5 bytes, room for 4 */
    CHECK_STR(small, "ab");
    ag_audit_copy_field(small, sizeof small, "abcd");
    CHECK_STR(small, "abcd");
    CHECK_INT(ag_audit_escaped_len("a\"\n\x01", 4), 1 + 2 + 2 + 6);
}

int main(void)
{
    test_full_record();
    test_capture_modes();
    test_utf8_repair();
    test_split();
    test_cap();
    test_event();
    test_copy_field();
    return CHECK_DONE();
}
