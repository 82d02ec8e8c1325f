/* When the trail cannot keep up (the service answers 503 for a while) and the spool reaches
 * spool_max_bytes: "reject" refuses admissions until there is room again and loses nothing;
 * "drop_oldest" keeps accepting, deletes the oldest segments, counts every lost row exactly and says
 * so with an audit_data_loss event. */
#include <stdlib.h>
#include <string.h>

#include "aoai_guard/audit.h"
#include "audit_test_util.h"
#include "check.h"

static ag_test_fake fake;
static ag_test_tok tok;
static char prompt[1000];

static void config(char *out, size_t cap, const char *dir, const char *on_full)
{
    snprintf(out, cap,
             "{\"sinks\":[{\"type\":\"azure_monitor\",\"endpoint\":\"%s\",\"dcr_immutable_id\":\"" AG_TEST_DCR
             "\",\"stream\":\"" AG_TEST_STREAM "\",\"retry_initial_ms\":50,\"retry_max_ms\":200}],"
             "\"spool_dir\":\"%s/spool\",\"spool_max_bytes\":65536,\"spool_segment_bytes\":8192,"
             "\"on_full\":\"%s\"}",
             fake.base, dir, on_full);
}

typedef struct spooled_want {
    ag_audit *a;
    long long n;
} spooled_want;

static bool spooled(void *arg)
{
    spooled_want *w = arg;
    const ag_audit_counters *c = ag_audit_counters_get(w->a);
    return atomic_load(&c->queue_depth) == 0 && atomic_load(&c->rows_spooled) >= w->n;
}

static bool accepting(void *arg)
{
    return ag_audit_accepting(arg);
}

static void test_reject(void)
{
    char dir[256], cfg[2048];
    ag_test_tmpdir(dir, sizeof dir);
    config(cfg, sizeof cfg, dir, "reject");
    CHECK_INT(ag_test_http(&fake, "DELETE", "/_fake/records", NULL, NULL), 204);
    CHECK_INT(ag_test_fake_post(&fake, "/_fake/faults", "{\"clear\":true,\"status\":503,\"count\":-1}"), 204);
    ag_audit *a = ag_test_audit(cfg, &tok, 0);
    int n = 0;
    while (ag_audit_accepting(a) && n < 1000) {
        char id[32];
        snprintf(id, sizeof id, "rej-%d", n);
        ag_audit_submit(a, ag_test_record(id, prompt));
        n++;
        spooled_want w = {a, n};
        CHECK(ag_test_wait(spooled, &w, 5000));
    }
    const ag_audit_counters *c = ag_audit_counters_get(a);
    fprintf(stderr, "reject: refused admissions after %d records (%lld spool bytes)\n", n,
            atomic_load(&c->spool_bytes));
    CHECK(n >= 30 && n <= 80); /* ~1.6 KB rows, 64 KiB cap */
    CHECK(!ag_audit_accepting(a));
    CHECK(atomic_load(&c->rejected) >= 1);
    CHECK(atomic_load(&c->spool_bytes) >= 65536);
    CHECK_INT(atomic_load(&c->dropped), 0);
    CHECK_INT(atomic_load(&c->rows_sent), 0);

    /* the service recovers: the spool drains, admissions resume, every record arrives */
    CHECK_INT(ag_test_fake_post(&fake, "/_fake/faults", "{\"clear\":true}"), 204);
    CHECK(ag_test_wait(accepting, a, 10000));
    ag_test_want want = {&fake, n};
    CHECK(ag_test_wait(ag_test_fake_has, &want, 10000));
    int total = -1;
    CHECK_INT(ag_test_fake_unique(&fake, &total), n);
    CHECK_INT(total, n);
    CHECK_INT(atomic_load(&c->dropped), 0);
    CHECK_INT(ag_audit_shutdown(a, ag_test_deadline(3000)), 0);
    ag_audit_free(a);
    ag_test_rmtree(dir);
}

typedef struct settled_want {
    ag_audit *a;
} settled_want;

/* Every spooled row is either at the fake or counted as dropped. */
static bool accounted(void *arg)
{
    settled_want *w = arg;
    const ag_audit_counters *c = ag_audit_counters_get(w->a);
    cJSON *st = ag_test_fake_stats(&fake);
    double got = ag_test_json_num(st, "records");
    cJSON_Delete(st);
    return got + (double)atomic_load(&c->dropped) >= (double)atomic_load(&c->rows_spooled);
}

static void test_drop_oldest(void)
{
    char dir[256], cfg[2048];
    ag_test_tmpdir(dir, sizeof dir);
    config(cfg, sizeof cfg, dir, "drop_oldest");
    CHECK_INT(ag_test_http(&fake, "DELETE", "/_fake/records", NULL, NULL), 204);
    CHECK_INT(ag_test_fake_post(&fake, "/_fake/faults", "{\"clear\":true,\"status\":503,\"count\":-1}"), 204);
    ag_audit *a = ag_test_audit(cfg, &tok, 0);
    for (int i = 0; i < 300; i++) {
        char id[32];
        snprintf(id, sizeof id, "drop-%d", i);
        CHECK(ag_audit_accepting(a)); /* never refuses */
        ag_audit_submit(a, ag_test_record(id, prompt));
    }
    spooled_want w = {a, 300};
    CHECK(ag_test_wait(spooled, &w, 10000));
    const ag_audit_counters *c = ag_audit_counters_get(a);
    long long dropped = atomic_load(&c->dropped);
    fprintf(stderr, "drop_oldest: %lld rows dropped, %lld spool bytes\n", dropped, atomic_load(&c->spool_bytes));
    CHECK(dropped >= 200);
    CHECK(atomic_load(&c->spool_bytes) <= 65536);
    CHECK(atomic_load(&c->spool_bytes) > 65536 - 2 * 8192); /* only whole old segments went */
    CHECK_INT(atomic_load(&c->rejected), 0);

    CHECK_INT(ag_test_fake_post(&fake, "/_fake/faults", "{\"clear\":true}"), 204);
    settled_want sw = {a};
    CHECK(ag_test_wait(accounted, &sw, 10000));
    CHECK_INT(ag_audit_shutdown(a, ag_test_deadline(3000)), 0);
    /* exact accounting: every spooled row was delivered once or counted as dropped */
    cJSON *recs = ag_test_fake_records(&fake);
    int total = cJSON_GetArraySize(recs), unique, all, loss_events = 0;
    ag_test_count_unique(recs, "RecordId", &unique, &all);
    CHECK_INT(unique, total);
    CHECK_INT(total + atomic_load(&c->dropped), atomic_load(&c->rows_spooled));
    for (const cJSON *e = recs ? recs->child : NULL; e; e = e->next) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(e, "EventType");
        if (cJSON_IsString(t) && strcmp(t->valuestring, "audit_data_loss") == 0)
            loss_events++;
    }
    CHECK(loss_events >= 1);
    /* the newest requests survived */
    int u299 = 0;
    for (const cJSON *e = recs ? recs->child : NULL; e; e = e->next) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "RequestId");
        if (cJSON_IsString(id) && strcmp(id->valuestring, "drop-299") == 0)
            u299++;
    }
    CHECK_INT(u299, 1);
    cJSON_Delete(recs);
    ag_audit_free(a);
    ag_test_rmtree(dir);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    memset(prompt, 'q', sizeof prompt - 1);
    ag_test_tok_init(&tok, "T1");
    ag_test_fake_start(&fake, "T1");
    test_reject();
    test_drop_oldest();
    ag_test_fake_stop(&fake);
    curl_global_cleanup();
    return CHECK_DONE();
}
