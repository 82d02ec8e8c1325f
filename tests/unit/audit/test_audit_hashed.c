/* capture = hashed never writes the text anywhere: not in the spool segments (checked while the
 * rows wait there because the service answers 503), not in the file sink, not at the service. The
 * same run with capture = full finds the text in the spool, so the search itself works. */
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "aoai_guard/audit.h"
#include "audit_test_util.h"
#include "check.h"

#define SECRET_PROMPT "SECRET-PROMPT-7d1f0c"
#define SECRET_ANSWER "SECRET-ANSWER-9c2e41"

static ag_test_fake fake;
static ag_test_tok tok;

typedef struct want {
    ag_audit *a;
    long long n;
} want;

static bool spooled(void *arg)
{
    want *w = arg;
    return atomic_load(&ag_audit_counters_get(w->a)->rows_spooled) >= w->n;
}

static bool sent(void *arg)
{
    want *w = arg;
    return atomic_load(&ag_audit_counters_get(w->a)->rows_sent) >= w->n;
}

static void sha_hex(const char *s, char out[65])
{
    unsigned char md[32];
    unsigned int n;
    EVP_Digest(s, strlen(s), md, &n, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* Runs one trail with the given capture; returns whether the secret was found in the spool. */
static bool run(const char *capture, bool expect_text)
{
    char dir[256], cfg[2048], spool[512], file[512];
    ag_test_tmpdir(dir, sizeof dir);
    snprintf(cfg, sizeof cfg,
             "{\"sinks\":[{\"type\":\"file\",\"path\":\"%s/audit.jsonl\"},{\"type\":\"azure_monitor\","
             "\"endpoint\":\"%s\",\"dcr_immutable_id\":\"" AG_TEST_DCR "\",\"stream\":\"" AG_TEST_STREAM "\","
             "\"retry_initial_ms\":50,\"retry_max_ms\":200}],\"spool_dir\":\"%s/spool\",\"capture\":\"%s\"}",
             dir, fake.base, dir, capture);
    snprintf(spool, sizeof spool, "%s/spool", dir);
    snprintf(file, sizeof file, "%s/audit.jsonl", dir);
    CHECK_INT(ag_test_http(&fake, "DELETE", "/_fake/records", NULL, NULL), 204);
    CHECK_INT(ag_test_fake_post(&fake, "/_fake/faults", "{\"clear\":true,\"status\":503,\"count\":-1}"), 204);
    ag_audit *a = ag_test_audit(cfg, &tok, 0);
    ag_audit_record *r = ag_test_record("hashed-1", SECRET_PROMPT);
    ag_audit_record_append_response(r, SECRET_ANSWER, strlen(SECRET_ANSWER));
    ag_audit_submit(a, r);
    want w = {a, 1};
    CHECK(ag_test_wait(spooled, &w, 5000));
    bool in_spool = ag_test_tree_has(spool, SECRET_PROMPT) || ag_test_tree_has(spool, SECRET_ANSWER);
    CHECK_INT(in_spool, expect_text);
    CHECK_INT(ag_test_fake_post(&fake, "/_fake/faults", "{\"clear\":true}"), 204);
    CHECK(ag_test_wait(sent, &w, 5000));
    CHECK_INT(ag_audit_shutdown(a, ag_test_deadline(3000)), 0);
    ag_audit_free(a);

    CHECK_INT(ag_test_tree_has(dir, SECRET_PROMPT), expect_text);  /* file sink and spool */
    CHECK_INT(ag_test_tree_has(dir, SECRET_ANSWER), expect_text);
    cJSON *recs = ag_test_fake_records(&fake);
    char *all = cJSON_PrintUnformatted(recs);
    CHECK_INT(all && strstr(all, SECRET_PROMPT) != NULL, expect_text);
    CHECK_INT(all && strstr(all, SECRET_ANSWER) != NULL, expect_text);
    char hex[65];
    sha_hex(SECRET_PROMPT, hex);
    const cJSON *row = cJSON_GetArrayItem(recs, 0);
    CHECK_STR(cJSON_GetObjectItemCaseSensitive(row, "PromptSha256")->valuestring, hex);
    sha_hex(SECRET_ANSWER, hex);
    CHECK_STR(cJSON_GetObjectItemCaseSensitive(row, "ResponseSha256")->valuestring, hex);
    CHECK_STR(cJSON_GetObjectItemCaseSensitive(row, "CaptureMode")->valuestring, capture);
    free(all);
    cJSON_Delete(recs);
    ag_test_rmtree(dir);
    return in_spool;
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    ag_test_tok_init(&tok, "T1");
    ag_test_fake_start(&fake, "T1");
    run("hashed", false);
    run("full", true); /* control: the same search does find the text */
    ag_test_fake_stop(&fake);
    curl_global_cleanup();
    return CHECK_DONE();
}
