/* kill -9 in the middle of an upload: a forked child runs the trail and is killed while the fake holds
 * the answer to a batch it has already stored; a new trail on the same spool resumes from the
 * checkpoint. Nothing is lost, the unacknowledged batch is sent again (duplicates, reported apart),
 * and duplicates carry the same RecordId so KQL can remove them. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "aoai_guard/audit.h"
#include "audit_test_util.h"
#include "check.h"

#define N 200

static ag_test_fake fake;
static ag_test_tok tok;

typedef struct child_ctx {
    ag_audit *a;
} child_ctx;

/* Every row is durable and the fake holds the answer to a batch it stored. */
static bool mid_batch(void *arg)
{
    child_ctx *c = arg;
    if (atomic_load(&ag_audit_counters_get(c->a)->rows_spooled) < N)
        return false;
    cJSON *st = ag_test_fake_stats(&fake);
    bool held = ag_test_json_num(st, "held") >= 1;
    cJSON_Delete(st);
    return held;
}

static bool all_delivered(void *arg)
{
    return ag_test_fake_unique(&fake, NULL) >= N;
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    ag_test_tok_init(&tok, "T1");
    ag_test_fake_start(&fake, "T1");
    CHECK_INT(ag_test_fake_post(&fake, "/_fake/faults", "{\"delay_ms\":600}"), 204);
    char dir[256], cfg[2048];
    ag_test_tmpdir(dir, sizeof dir);
    snprintf(cfg, sizeof cfg,
             "{\"sinks\":[{\"type\":\"azure_monitor\",\"endpoint\":\"%s\",\"dcr_immutable_id\":\"" AG_TEST_DCR
             "\",\"stream\":\"" AG_TEST_STREAM "\",\"batch_max_bytes\":20000,\"retry_initial_ms\":50,"
             "\"retry_max_ms\":400}],\"spool_dir\":\"%s/spool\",\"fsync\":\"batch\"}",
             fake.base, dir);

    pid_t pid = fork();
    if (pid == 0) {
        child_ctx c = {ag_test_audit(cfg, &tok, 0)};
        char prompt[600];
        memset(prompt, 'p', sizeof prompt - 1);
        prompt[sizeof prompt - 1] = '\0';
        for (int i = 0; i < N; i++) {
            char id[32];
            snprintf(id, sizeof id, "crash-%03d", i);
            ag_audit_submit(c.a, ag_test_record(id, prompt));
        }
        if (!ag_test_wait(mid_batch, &c, 20000))
            _exit(3);
        kill(getpid(), SIGKILL); /* no shutdown, no free: as if the power went */
        _exit(4);
    }
    int st = 0;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    int before_total = 0;
    int before = ag_test_fake_unique(&fake, &before_total);
    CHECK(before >= 1 && before < N); /* killed mid-way */
    fprintf(stderr, "child killed with %d of %d requests stored by the service\n", before, N);

    CHECK_INT(ag_test_fake_post(&fake, "/_fake/faults", "{\"clear\":true}"), 204);
    ag_audit *a = ag_test_audit(cfg, &tok, 0);
    CHECK(ag_test_wait(all_delivered, NULL, 30000));
    CHECK_INT(ag_audit_shutdown(a, ag_test_deadline(5000)), 0);
    ag_audit_free(a);

    cJSON *recs = ag_test_fake_records(&fake);
    int unique_req, total, unique_ids, total_ids;
    ag_test_count_unique(recs, "RequestId", &unique_req, &total);
    ag_test_count_unique(recs, "RecordId", &unique_ids, &total_ids);
    int dups = total - unique_req;
    fprintf(stderr, "received %d rows: %d unique requests, %d duplicates\n", total, unique_req, dups);
    CHECK_INT(unique_req, N);      /* nothing lost */
    CHECK_INT(unique_ids, N);      /* duplicates are the same rows: removable by RecordId */
    CHECK(dups >= 1);              /* the batch whose 204 never arrived was sent again */
    CHECK(dups <= 20000 / 600);    /* ... and only that batch */
    cJSON_Delete(recs);

    ag_test_fake_stop(&fake);
    ag_test_rmtree(dir);
    curl_global_cleanup();
    return CHECK_DONE();
}
