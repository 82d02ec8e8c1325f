/* The whole trail against fake_monitor (a child process on an ephemeral port): delivery with gzip
 * under the 1 MB limit, long text in parts, a poisoned row to the dead-letter file, an outage, 429
 * with Retry-After, 5xx, token refresh and hold on 401, shutdown with a deadline, the stdout sink. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "aoai_guard/audit.h"
#include "audit_test_util.h"
#include "check.h"

static ag_test_fake fake;
static ag_test_tok tok;

/* An audit section with a file sink and an azure_monitor sink pointed at the fake. */
static void config(char *out, size_t cap, const char *dir, const char *extra_sink, const char *extra_top)
{
    snprintf(out, cap,
             "{\"sinks\":[{\"type\":\"file\",\"path\":\"%s/audit.jsonl\"},"
             "{\"type\":\"azure_monitor\",\"endpoint\":\"%s\",\"dcr_immutable_id\":\"" AG_TEST_DCR "\","
             "\"stream\":\"" AG_TEST_STREAM "\",\"retry_initial_ms\":50,\"retry_max_ms\":400,"
             "\"timeout_ms\":3000%s}],"
             "\"spool_dir\":\"%s/spool\"%s}",
             dir, fake.base, extra_sink ? extra_sink : "", dir, extra_top ? extra_top : "");
}

typedef struct ctr_want {
    ag_audit *a;
    long long sent, dead, auth;
} ctr_want;

static bool counters_reached(void *arg)
{
    ctr_want *w = arg;
    const ag_audit_counters *c = ag_audit_counters_get(w->a);
    return atomic_load(&c->rows_sent) >= w->sent && atomic_load(&c->dead_lettered) >= w->dead &&
           atomic_load(&c->auth_failures) >= w->auth;
}

static void reset_fake(void)
{
    CHECK_INT(ag_test_http(&fake, "DELETE", "/_fake/records", NULL, NULL), 204);
    CHECK_INT(ag_test_fake_post(&fake, "/_fake/faults", "{\"clear\":true}"), 204);
}

static void test_basic(void)
{
    char dir[256], cfg[2048];
    ag_test_tmpdir(dir, sizeof dir);
    config(cfg, sizeof cfg, dir, NULL, NULL);
    reset_fake();
    cJSON *stats0 = ag_test_fake_stats(&fake);
    ag_audit *a = ag_test_audit(cfg, &tok, 0);
    CHECK(ag_audit_accepting(a));
    for (int i = 0; i < 40; i++) {
        char id[32];
        snprintf(id, sizeof id, "basic-%d", i);
        ag_audit_record *r = ag_test_record(id, "hello");
        r->stream = true;
        ag_audit_record_append_response(r, "Hel", 3);
        ag_audit_record_append_response(r, "lo!", 3);
        CHECK_INT(ag_audit_submit(a, r), AG_AUDIT_OK);
    }
    CHECK_INT(ag_audit_event(a, AG_EVENT_CONFIG_RELOAD, "old_hash", "aa", "new_hash", "bb", "changed", "audit",
                             (const char *)NULL),
              AG_AUDIT_OK);
    ctr_want w = {a, 41, 0, 0};
    CHECK(ag_test_wait(counters_reached, &w, 10000));
    const ag_audit_counters *c = ag_audit_counters_get(a);
    CHECK_INT(atomic_load(&c->submitted), 41);
    CHECK_INT(atomic_load(&c->rows_spooled), 41);
    CHECK_INT(atomic_load(&c->rows_sent), 41);
    CHECK_INT(atomic_load(&c->lines_written), 41);
    CHECK_INT(atomic_load(&c->failures), 0);
    CHECK_INT(atomic_load(&c->queue_depth), 0);

    int total;
    CHECK_INT(ag_test_fake_unique(&fake, &total), 40);
    CHECK_INT(total, 40);
    cJSON *recs = ag_test_fake_records(&fake);
    int events = 0;
    for (const cJSON *e = recs ? recs->child : NULL; e; e = e->next) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(e, "EventType");
        if (cJSON_IsString(t) && strcmp(t->valuestring, "config_reload") == 0) {
            events++;
            const cJSON *d = cJSON_GetObjectItemCaseSensitive(e, "EventDetails");
            CHECK_STR(cJSON_GetObjectItemCaseSensitive(d, "new_hash")->valuestring, "bb");
        }
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "RequestId");
        if (cJSON_IsString(id) && strcmp(id->valuestring, "basic-7") == 0)
            CHECK_STR(cJSON_GetObjectItemCaseSensitive(e, "ResponseText")->valuestring, "Hello!");
    }
    CHECK_INT(events, 1);
    cJSON_Delete(recs);
    cJSON *stats = ag_test_fake_stats(&fake);
    double calls = ag_test_json_num(stats, "accepted_calls") - ag_test_json_num(stats0, "accepted_calls");
    double gz = ag_test_json_num(stats, "gzip_calls") - ag_test_json_num(stats0, "gzip_calls");
    CHECK(calls >= 1);
    CHECK(gz == calls); /* every call gzip'd */
    CHECK_INT(atomic_load(&c->calls), (long long)calls);
    cJSON_Delete(stats);
    cJSON_Delete(stats0);

    CHECK_INT(ag_audit_shutdown(a, ag_test_deadline(3000)), 0);
    CHECK(!ag_audit_accepting(a));
    CHECK_INT(ag_audit_submit(a, ag_test_record("late", NULL)), AG_AUDIT_CLOSED);
    ag_audit_free(a);

    char p[512];
    snprintf(p, sizeof p, "%s/audit.jsonl", dir);
    size_t n;
    char *lines = ag_test_read_file(p, &n);
    int nl = 0;
    for (size_t i = 0; lines && i < n; i++)
        nl += lines[i] == '\n';
    CHECK_INT(nl, 41);
    free(lines);
    snprintf(p, sizeof p, "%s/spool/azure_monitor", dir);
    CHECK(ag_test_count_files(p, ".seg") <= 1); /* delivered segments are deleted */
    ag_test_rmtree(dir);
}

static void test_batches_and_parts(void)
{
    char dir[256], cfg[2048];
    ag_test_tmpdir(dir, sizeof dir);
    config(cfg, sizeof cfg, dir, NULL, ",\"max_text_bytes_per_request\":4194304");
    reset_fake();
    cJSON *stats0 = ag_test_fake_stats(&fake);
    ag_audit *a = ag_test_audit(cfg, &tok, 0);
    char *text = malloc(200001);
    memset(text, 'x', 200000);
    text[200000] = '\0';
    for (int i = 0; i < 24; i++) { /* rows of ~120 KB: about 8 per 1 MB call */
        char id[32];
        snprintf(id, sizeof id, "big-%d", i);
        ag_audit_record *r = ag_test_record(id, NULL);
        ag_audit_record_set_prompt(r, text, 60000);
        ag_audit_record_set_response(r, text, 60000);
        ag_audit_submit(a, r);
    }
    ag_audit_record *r = ag_test_record("parts", text); /* 200000 bytes: 4 parts */
    ag_audit_submit(a, r);
    ctr_want w = {a, 28, 0, 0};
    CHECK(ag_test_wait(counters_reached, &w, 15000));
    cJSON *stats = ag_test_fake_stats(&fake);
    CHECK(ag_test_json_num(stats, "max_uncompressed") <= 1000000);
    CHECK(ag_test_json_num(stats, "max_uncompressed") > 700000); /* batches are filled, not one row each */
    CHECK(ag_test_json_num(stats, "accepted_calls") - ag_test_json_num(stats0, "accepted_calls") >= 3);
    CHECK_INT(ag_test_json_num(stats, "oversize_fields"), 0);
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(stats, "status");
    CHECK(cJSON_GetObjectItemCaseSensitive(st, "413") == NULL);
    cJSON_Delete(stats);
    cJSON_Delete(stats0);
    CHECK_INT(ag_test_fake_unique(&fake, NULL), 25);
    cJSON *recs = ag_test_fake_records(&fake);
    size_t joined = 0;
    int parts = 0;
    for (const cJSON *e = recs ? recs->child : NULL; e; e = e->next) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "RequestId");
        if (!cJSON_IsString(id) || strcmp(id->valuestring, "parts") != 0)
            continue;
        parts++;
        CHECK_INT(cJSON_GetObjectItemCaseSensitive(e, "PartCount")->valueint, 4);
        joined += strlen(cJSON_GetObjectItemCaseSensitive(e, "PromptText")->valuestring);
    }
    CHECK_INT(parts, 4);
    CHECK_INT(joined, 200000);
    cJSON_Delete(recs);
    free(text);
    CHECK_INT(ag_audit_shutdown(a, ag_test_deadline(3000)), 0);
    ag_audit_free(a);
    ag_test_rmtree(dir);
}

static void test_poison(void)
{
    char dir[256], cfg[2048];
    ag_test_tmpdir(dir, sizeof dir);
    config(cfg, sizeof cfg, dir, NULL, NULL);
    reset_fake();
    CHECK_INT(ag_test_fake_post(&fake, "/_fake/faults",
                                "{\"poison_field\":\"RequestId\",\"poison_value\":\"poison-7\"}"),
              204);
    ag_audit *a = ag_test_audit(cfg, &tok, 0);
    for (int i = 0; i < 20; i++) {
        char id[32];
        snprintf(id, sizeof id, "poison-%d", i);
        ag_audit_submit(a, ag_test_record(id, "text"));
    }
    ctr_want w = {a, 19, 1, 0};
    CHECK(ag_test_wait(counters_reached, &w, 10000));
    const ag_audit_counters *c = ag_audit_counters_get(a);
    CHECK_INT(atomic_load(&c->dead_lettered), 1);
    CHECK_INT(atomic_load(&c->rows_sent), 19);
    CHECK(atomic_load(&c->failures) >= 5); /* the halving took several 400s */
    CHECK_INT(ag_test_fake_unique(&fake, NULL), 19);
    CHECK_INT(ag_audit_shutdown(a, ag_test_deadline(3000)), 0);
    ag_audit_free(a);

    char p[512];
    snprintf(p, sizeof p, "%s/spool/azure_monitor/dead-letter.jsonl", dir);
    size_t n;
    char *dl = ag_test_read_file(p, &n);
    CHECK(dl != NULL);
    int nl = 0;
    for (size_t i = 0; dl && i < n; i++)
        nl += dl[i] == '\n';
    CHECK_INT(nl, 1);
    cJSON *line = dl ? cJSON_Parse(dl) : NULL;
    CHECK_INT(ag_test_json_num(line, "Status"), 400);
    const cJSON *recd = cJSON_GetObjectItemCaseSensitive(line, "Record");
    CHECK_STR(cJSON_GetObjectItemCaseSensitive(recd, "RequestId")->valuestring, "poison-7");
    const cJSON *reason = cJSON_GetObjectItemCaseSensitive(line, "Reason");
    CHECK(cJSON_IsString(reason) && strstr(reason->valuestring, "poisoned") != NULL);
    CHECK_STR(cJSON_GetObjectItemCaseSensitive(line, "Sink")->valuestring, "azure_monitor");
    cJSON_Delete(line);
    free(dl);
    ag_test_rmtree(dir);
}

static bool fake_reachable(void *arg)
{
    return ag_test_http(arg, "GET", "/_fake/stats", NULL, NULL) == 200;
}

static void test_outage(void)
{
    char dir[256], cfg[2048];
    ag_test_tmpdir(dir, sizeof dir);
    config(cfg, sizeof cfg, dir, NULL, NULL);
    reset_fake();
    ag_audit *a = ag_test_audit(cfg, &tok, 0);
    ag_audit_submit(a, ag_test_record("outage-warm", "x")); /* leaves a keep-alive connection open */
    ctr_want w = {a, 1, 0, 0};
    CHECK(ag_test_wait(counters_reached, &w, 5000));
    CHECK_INT(ag_test_fake_post(&fake, "/_fake/outage", "{\"ms\":1500}"), 204);
    for (int i = 0; i < 30; i++) {
        char id[32];
        snprintf(id, sizeof id, "outage-%d", i);
        ag_audit_submit(a, ag_test_record(id, "during the outage"));
    }
    ag_test_want want = {&fake, 31};
    CHECK(ag_test_wait(ag_test_fake_has, &want, 20000));
    /* The fake stores the rows before its 204 reaches the uploader: wait for the counter too. */
    ctr_want w31 = {a, 31, 0, 0};
    CHECK(ag_test_wait(counters_reached, &w31, 5000));
    const ag_audit_counters *c = ag_audit_counters_get(a);
    CHECK(atomic_load(&c->failures) >= 1);
    CHECK(atomic_load(&c->retries) >= 1);
    CHECK_INT(atomic_load(&c->rows_sent), 31);
    CHECK_INT(atomic_load(&c->dropped), 0);
    int total;
    CHECK_INT(ag_test_fake_unique(&fake, &total), 31);
    CHECK_INT(total, 31);
    CHECK_INT(ag_audit_shutdown(a, ag_test_deadline(3000)), 0);
    ag_audit_free(a);
    ag_test_rmtree(dir);
}

static void test_throttle_and_errors(void)
{
    char dir[256], cfg[2048];
    ag_test_tmpdir(dir, sizeof dir);
    config(cfg, sizeof cfg, dir, NULL, NULL);
    reset_fake();
    ag_audit *a = ag_test_audit(cfg, &tok, 0);
    CHECK_INT(ag_test_fake_post(&fake, "/_fake/faults", "{\"status\":429,\"count\":2,\"retry_after\":\"1\"}"),
              204);
    long long t0 = ag_test_now_ms();
    for (int i = 0; i < 5; i++) {
        char id[32];
        snprintf(id, sizeof id, "throttle-%d", i);
        ag_audit_submit(a, ag_test_record(id, "x"));
    }
    ctr_want w = {a, 5, 0, 0};
    CHECK(ag_test_wait(counters_reached, &w, 10000));
    long long took = ag_test_now_ms() - t0;
    CHECK(took >= 1900); /* two Retry-After: 1 waits, not the 50 ms backoff */
    const ag_audit_counters *c = ag_audit_counters_get(a);
    CHECK_INT(atomic_load(&c->retries), 2);
    CHECK_INT(atomic_load(&c->failures), 2);

    CHECK_INT(ag_test_fake_post(&fake, "/_fake/faults", "{\"clear\":true,\"status\":503,\"count\":2}"), 204);
    ag_audit_submit(a, ag_test_record("e503", "x"));
    w.sent = 6;
    CHECK(ag_test_wait(counters_reached, &w, 10000));
    CHECK_INT(ag_test_fake_post(&fake, "/_fake/faults", "{\"clear\":true,\"status\":500,\"count\":1}"), 204);
    ag_audit_submit(a, ag_test_record("e500", "x"));
    w.sent = 7;
    CHECK(ag_test_wait(counters_reached, &w, 10000));
    CHECK_INT(atomic_load(&c->retries), 5);
    CHECK_INT(ag_test_fake_unique(&fake, NULL), 7);
    CHECK_INT(ag_audit_shutdown(a, ag_test_deadline(3000)), 0);
    ag_audit_free(a);
    ag_test_rmtree(dir);
}

static void test_token_refresh_and_hold(void)
{
    char dir[256], cfg[2048];
    ag_test_tmpdir(dir, sizeof dir);
    config(cfg, sizeof cfg, dir, NULL, NULL);
    reset_fake();
    ag_audit *a = ag_test_audit(cfg, &tok, 0);
    /* the service now wants T2; a refresh yields it */
    CHECK_INT(ag_test_fake_post(&fake, "/_fake/token", "{\"token\":\"T2\"}"), 204);
    ag_test_tok_set(&tok, NULL, "T2");
    for (int i = 0; i < 3; i++) {
        char id[32];
        snprintf(id, sizeof id, "token-%d", i);
        ag_audit_submit(a, ag_test_record(id, "x"));
    }
    ctr_want w = {a, 3, 0, 1};
    CHECK(ag_test_wait(counters_reached, &w, 10000));
    CHECK_INT(atomic_load(&tok.rejected), 1);
    const ag_audit_counters *c = ag_audit_counters_get(a);
    CHECK_INT(atomic_load(&c->auth_failures), 1);

    /* refused again and a refresh does not help: hold (retrying), deliver nothing, lose nothing */
    CHECK_INT(ag_test_fake_post(&fake, "/_fake/token", "{\"token\":\"T3\"}"), 204);
    ag_test_tok_set(&tok, NULL, "");
    ag_audit_submit(a, ag_test_record("held", "x"));
    w.auth = 4;
    CHECK(ag_test_wait(counters_reached, &w, 10000));
    CHECK_INT(atomic_load(&c->rows_sent), 3);
    CHECK(atomic_load(&tok.rejected) >= 4);
    /* the role is granted / the token fixed: delivery resumes */
    ag_test_tok_set(&tok, "T3", NULL);
    w.sent = 4;
    CHECK(ag_test_wait(counters_reached, &w, 10000));
    CHECK_INT(ag_test_fake_unique(&fake, NULL), 4);
    CHECK_INT(ag_audit_shutdown(a, ag_test_deadline(3000)), 0);
    ag_audit_free(a);
    CHECK_INT(ag_test_fake_post(&fake, "/_fake/token", "{\"token\":\"T1\"}"), 204);
    ag_test_tok_set(&tok, "T1", "");
    ag_test_rmtree(dir);
}

static void test_shutdown_deadline(void)
{
    char dir[256], cfg[2048];
    ag_test_tmpdir(dir, sizeof dir);
    config(cfg, sizeof cfg, dir, NULL, NULL);
    reset_fake();
    CHECK_INT(ag_test_fake_post(&fake, "/_fake/outage", "{\"ms\":1500}"), 204);
    ag_audit *a = ag_test_audit(cfg, &tok, 0);
    for (int i = 0; i < 5; i++) {
        char id[32];
        snprintf(id, sizeof id, "shut-%d", i);
        ag_audit_submit(a, ag_test_record(id, "x"));
    }
    long long t0 = ag_test_now_ms();
    CHECK_INT(ag_audit_shutdown(a, ag_test_deadline(1000)), 1); /* spooled, not delivered */
    CHECK(ag_test_now_ms() - t0 < 1300);
    const ag_audit_counters *c = ag_audit_counters_get(a);
    CHECK_INT(atomic_load(&c->rows_spooled), 5);
    ag_audit_free(a);
    CHECK(ag_test_wait(fake_reachable, &fake, 10000));
    /* the next start uploads what was left */
    a = ag_test_audit(cfg, &tok, 0);
    ag_test_want want = {&fake, 5};
    CHECK(ag_test_wait(ag_test_fake_has, &want, 10000));
    CHECK_INT(ag_audit_shutdown(a, ag_test_deadline(3000)), 0);
    ag_audit_free(a);
    ag_test_rmtree(dir);
}

typedef struct calls_want {
    ag_audit *a;
    long long calls;
} calls_want;

static bool calls_above(void *arg)
{
    calls_want *w = arg;
    return atomic_load(&ag_audit_counters_get(w->a)->calls) > w->calls;
}

static void test_rate_limit(void)
{
    char dir[256], cfg[2048];
    ag_test_tmpdir(dir, sizeof dir);
    config(cfg, sizeof cfg, dir, ",\"max_calls_per_minute\":2,\"batch_max_bytes\":4096", NULL);
    reset_fake();
    ag_audit *a = ag_test_audit(cfg, &tok, 0);
    for (int i = 0; i < 40; i++) { /* ~500-byte rows: 8 per 4 KiB call, 5 calls needed */
        char id[32];
        snprintf(id, sizeof id, "rate-%d", i);
        ag_audit_submit(a, ag_test_record(id, "0123456789"));
    }
    calls_want cw = {a, 1};
    CHECK(ag_test_wait(calls_above, &cw, 5000)); /* two calls go out */
    cw.calls = 2;
    CHECK(!ag_test_wait(calls_above, &cw, 400)); /* the third waits for the next minute */
    const ag_audit_counters *c = ag_audit_counters_get(a);
    CHECK_INT(atomic_load(&c->calls), 2);
    CHECK(atomic_load(&c->rows_sent) < 40);
    /* shutdown makes one last try regardless of the window */
    CHECK_INT(ag_audit_shutdown(a, ag_test_deadline(5000)), 0);
    CHECK_INT(atomic_load(&c->rows_sent), 40);
    ag_audit_free(a);
    ag_test_rmtree(dir);
}

static void test_stdout_sink(void)
{
    char dir[256], cfg[1024];
    ag_test_tmpdir(dir, sizeof dir);
    snprintf(cfg, sizeof cfg, "{\"sinks\":[{\"type\":\"stdout\"}],\"spool_dir\":\"%s/spool\"}", dir);
    int pfd[2];
    CHECK_INT(pipe(pfd), 0);
    ag_audit *a = ag_test_audit(cfg, &tok, pfd[1]);
    ag_audit_submit(a, ag_test_record("out-1", "a"));
    ag_audit_submit(a, ag_test_record("out-2", "b"));
    CHECK_INT(ag_audit_shutdown(a, ag_test_deadline(1000)), 0);
    ag_audit_free(a);
    close(pfd[1]);
    char buf[8192];
    size_t n = 0;
    ssize_t r;
    while ((r = read(pfd[0], buf + n, sizeof buf - 1 - n)) > 0)
        n += (size_t)r;
    buf[n] = '\0';
    close(pfd[0]);
    char *nl = strchr(buf, '\n');
    CHECK(nl != NULL);
    if (nl) {
        *nl = '\0';
        cJSON *o = cJSON_Parse(buf);
        CHECK_STR(cJSON_GetObjectItemCaseSensitive(o, "RequestId")->valuestring, "out-1");
        cJSON_Delete(o);
        CHECK(strstr(nl + 1, "\"RequestId\":\"out-2\"") != NULL);
    }
    ag_test_rmtree(dir);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    ag_test_tok_init(&tok, "T1");
    ag_test_fake_start(&fake, "T1");
    test_basic();
    test_batches_and_parts();
    test_poison();
    test_outage();
    test_throttle_and_errors();
    test_token_refresh_and_hold();
    test_shutdown_deadline();
    test_rate_limit();
    test_stdout_sink();
    ag_test_fake_stop(&fake);
    curl_global_cleanup();
    return CHECK_DONE();
}
