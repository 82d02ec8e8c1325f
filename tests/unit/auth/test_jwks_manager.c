/* The JWKS manager against the fake_entra stand-in (registered as CTest "fake.entra"):
 * startup discovery + fetch, key rotation picked up through an unknown-kid refresh, at most one
 * refetch per interval under a flood of unknown-kid requests from several threads, an outage that
 * keeps the last good keys and recovers with backoff, periodic refresh, an explicit jwks_uri, and
 * metadata that fails its issuer check. Also mints one token with the mint_token tool.
 *
 * Usage: fake_entra_test /path/to/fake_entra /path/to/mint_token */

#include <ftw.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <curl/curl.h>
#include <event2/event.h>

#include "aoai_guard/clock.h"
#include "aoai_guard/jwks_manager.h"
#include "aoai_guard/jwt.h"
#include "check.h"
#include "entra_testkit.h"

extern char **environ;

#define T1 "11111111-1111-4111-8111-111111111111"
#define T2 "22222222-2222-4222-8222-222222222222"
#define T3 "33333333-3333-4333-8333-333333333333"
#define AUD "api://aoai-guard"

static char dir[64], base_url[64];
static struct event_base *base;
static ag_curl_loop *curl_loop;

/* ---- helpers ---------------------------------------------------------------------------------- */

static size_t collect(char *ptr, size_t size, size_t n, void *arg)
{
    char *buf = arg;
    size_t used = strlen(buf), add = size * n;
    if (used + add >= 8192)
        add = 8191 - used;
    memcpy(buf + used, ptr, add);
    buf[used + add] = '\0';
    return size * n;
}

/* Blocking call to the fake's control API (test thread only). Returns the HTTP status. */
static long fake_call(const char *method, const char *path, char out[8192])
{
    char url[256];
    snprintf(url, sizeof url, "%s%s", base_url, path);
    out[0] = '\0';
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "POST") == 0)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    long status = 0;
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    return status;
}

typedef struct fake_stats {
    long jwks, metadata;
    char last_kid[64];
} fake_stats;

static fake_stats stats_now(void)
{
    char buf[8192];
    fake_stats s = {-1, -1, ""};
    if (fake_call("GET", "/_fake/stats", buf) != 200)
        return s;
    cJSON *j = cJSON_Parse(buf);
    cJSON *kids = cJSON_GetObjectItemCaseSensitive(j, "kids");
    s.jwks = (long)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(j, "jwks_fetches"));
    s.metadata = (long)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(j, "metadata_fetches"));
    cJSON *last = cJSON_GetArrayItem(kids, cJSON_GetArraySize(kids) - 1);
    if (cJSON_IsString(last))
        snprintf(s.last_kid, sizeof s.last_kid, "%s", last->valuestring);
    cJSON_Delete(j);
    return s;
}

static void tick(evutil_socket_t fd, short what, void *arg)
{
}

/* Runs the loop until pred(arg) holds or ms pass; returns pred's final value. */
static bool run_until(bool (*pred)(void *), void *arg, long ms)
{
    uint64_t deadline = ag_mono_ns() + (uint64_t)ms * 1000000u;
    while (!pred(arg) && ag_mono_ns() < deadline)
        event_base_loop(base, EVLOOP_ONCE);
    return pred(arg);
}

static bool is_ready(void *m)
{
    return ag_jwks_manager_ready(m);
}

typedef struct wait_gen {
    ag_jwks_manager *m;
    uint64_t value;
} wait_gen;

static bool gen_reached(void *a)
{
    wait_gen *w = a;
    return ag_jwks_manager_generation(w->m) >= w->value;
}

static bool rounds_reached(void *a)
{
    wait_gen *w = a;
    return ag_jwks_manager_rounds(w->m) >= w->value;
}

static bool no_failures(void *m)
{
    ag_jwks_manager_stats st;
    ag_jwks_manager_get_stats(m, &st);
    return st.consecutive_failures == 0;
}

static bool refresh_granted(void *a)
{
    wait_gen *w = a;
    return ag_jwks_manager_request_refresh(w->m, w->value);
}

static void config(ag_auth_config *cfg, const char *extra)
{
    char json[1024];
    snprintf(json, sizeof json,
             "{\"authority_host\":\"%s\",\"tenants\":[\"" T1 "\"],\"audiences\":[\"" AUD "\"],"
             "\"unknown_kid_refetch_s\":2%s}",
             base_url, extra);
    cJSON *j = cJSON_Parse(json);
    ag_conf_err err;
    if (!j || ag_auth_config_parse(j, "auth", cfg, &err) != 0) {
        fprintf(stderr, "config: %s\n", j ? err.msg : json);
        exit(2);
    }
    cJSON_Delete(j);
}

static ag_jwks_manager *manager(const ag_auth_config *cfg)
{
    ag_jwks_manager_opts o = {.cfg = cfg, .base = base, .curl = curl_loop, .backoff_min_ms = 100,
                              .backoff_max_ms = 400, .fetch_timeout_ms = 5000};
    char err[256];
    ag_jwks_manager *m = ag_jwks_manager_new(&o, err, sizeof err);
    if (!m) {
        fprintf(stderr, "manager: %s\n", err);
        exit(2);
    }
    CHECK_INT(ag_jwks_manager_start(m), 0);
    return m;
}

/* A token for tenant tid, version 1 or 2, signed with the fake's private key kid. */
static char *token(const char *kid, const char *tid, int version)
{
    char path[256], claims[1024];
    snprintf(path, sizeof path, "%s/keys/%s.pem", dir, kid);
    EVP_PKEY *key = ag_tk_read_pem(path);
    if (!key)
        return NULL;
    long long now = (long long)time(NULL);
    if (version == 2)
        snprintf(claims, sizeof claims,
                 "{\"aud\":\"" AUD "\",\"iss\":\"%s/%s/v2.0\",\"iat\":%lld,\"nbf\":%lld,\"exp\":%lld,"
                 "\"azp\":\"a1a1a1a1-0000-4000-8000-000000000001\",\"idtyp\":\"app\",\"roles\":[\"AI.User\"],"
                 "\"tid\":\"%s\",\"ver\":\"2.0\"}",
                 base_url, tid, now, now, now + 3600, tid);
    else
        snprintf(claims, sizeof claims,
                 "{\"aud\":\"" AUD "\",\"iss\":\"https://sts.windows.net/%s/\",\"iat\":%lld,\"nbf\":%lld,"
                 "\"exp\":%lld,\"appid\":\"a1a1a1a1-0000-4000-8000-000000000001\",\"scp\":\"Chat.Use\","
                 "\"tid\":\"%s\",\"ver\":\"1.0\"}",
                 tid, now, now, now + 3600, tid);
    char *t = ag_tk_mint(key, kid, "RS256", claims);
    EVP_PKEY_free(key);
    return t;
}

static ag_auth_code validate(const ag_auth_config *cfg, ag_jwks_manager *m, const char *tok)
{
    ag_jwks *keys = ag_jwks_manager_acquire(m);
    ag_identity id;
    long long until;
    char log[AG_AUTH_LOG_LEN] = "";
    ag_auth_code code = tok ? ag_jwt_validate(cfg, keys, tok, strlen(tok), (long long)time(NULL), &id, &until, log,
                                              sizeof log)
                            : AG_AUTH_INTERNAL;
    if (code != AG_AUTH_OK)
        fprintf(stderr, "  (validate: %s)\n", log);
    ag_jwks_unref(keys);
    return code;
}

typedef struct flood_arg {
    ag_jwks_manager *m;
    uint64_t gen;
    atomic_int yes, no;
} flood_arg;

static void *flood_thread(void *a)
{
    flood_arg *f = a;
    for (int i = 0; i < 1000; i++) {
        if (ag_jwks_manager_request_refresh(f->m, f->gen))
            atomic_fetch_add(&f->yes, 1);
        else
            atomic_fetch_add(&f->no, 1);
    }
    return NULL;
}

/* 4 threads x 1000 unknown-kid refresh requests; returns how many were told "a refresh will happen". */
static int flood(ag_jwks_manager *m, uint64_t gen)
{
    flood_arg f = {.m = m, .gen = gen};
    atomic_init(&f.yes, 0);
    atomic_init(&f.no, 0);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, flood_thread, &f);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    CHECK_INT(atomic_load(&f.yes) + atomic_load(&f.no), 4000);
    return atomic_load(&f.yes);
}

/* A worker: keeps its own reference current with sync() and reads keys while the control thread
 * publishes new sets (exercises the publication path under -DAG_TSAN=ON). */
typedef struct reader_arg {
    ag_jwks_manager *m;
    atomic_bool stop;
    atomic_ulong reads;
    uint64_t max_gen;
} reader_arg;

static void *reader_thread(void *a)
{
    reader_arg *r = a;
    ag_jwks *held = NULL;
    while (!atomic_load(&r->stop)) {
        held = ag_jwks_manager_sync(r->m, held);
        if (held) {
            const ag_jwk *k = ag_jwks_at(held, 0);
            if (k && k->bits >= 2048 && ag_jwks_generation(held) > r->max_gen)
                r->max_gen = ag_jwks_generation(held);
            atomic_fetch_add(&r->reads, 1);
        }
    }
    ag_jwks_unref(held);
    return NULL;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

/* ---- the test --------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s FAKE_ENTRA MINT_TOKEN\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    snprintf(dir, sizeof dir, "/tmp/ag_fake_entra_XXXXXX");
    if (!mkdtemp(dir))
        return 2;
    char port_file[128], keys_dir[128];
    snprintf(port_file, sizeof port_file, "%s/port", dir);
    snprintf(keys_dir, sizeof keys_dir, "%s/keys", dir);
    char *fargv[] = {argv[1], "--port", "0", "--port-file", port_file, "--keys-dir", keys_dir,
                     "--tenant", T1, "--tenant", T2, NULL};
    pid_t pid;
    if (posix_spawn(&pid, argv[1], NULL, NULL, fargv, environ) != 0) {
        fprintf(stderr, "cannot start %s\n", argv[1]);
        return 2;
    }
    int port = 0;
    for (uint64_t deadline = ag_mono_ns() + 15000000000ull; !port && ag_mono_ns() < deadline;) {
        FILE *f = fopen(port_file, "r");
        if (f) {
            if (fscanf(f, "%d", &port) != 1)
                port = 0;
            fclose(f);
        }
        if (!port)
            usleep(20000); /* polling the port file, bounded by the deadline */
    }
    CHECK(port > 0);
    if (port <= 0) {
        kill(pid, SIGKILL);
        return CHECK_DONE();
    }
    snprintf(base_url, sizeof base_url, "http://127.0.0.1:%d", port);

    base = event_base_new();
    curl_loop = ag_curl_loop_new(base);
    struct event *ticker = event_new(base, -1, EV_PERSIST, tick, NULL);
    struct timeval tv = {0, 10000};
    event_add(ticker, &tv);

    /* 1. Startup: v1 + v2 metadata and keys for T1. */
    ag_auth_config cfg;
    config(&cfg, "");
    ag_jwks_manager *m = manager(&cfg);
    CHECK(!ag_jwks_manager_ready(m));
    CHECK(ag_jwks_manager_acquire(m) == NULL);
    CHECK(run_until(is_ready, m, 10000));
    fake_stats s0 = stats_now();
    CHECK_INT(s0.metadata, 2);
    CHECK_INT(s0.jwks, 2);
    ag_jwks_manager_stats st;
    ag_jwks_manager_get_stats(m, &st);
    CHECK_INT(st.generation, 1);
    CHECK_INT(st.keys, 2); /* the same kid, scoped once for v1 and once for v2 */
    CHECK_INT(st.rounds, 1);
    CHECK_INT(st.failures, 0);
    CHECK_INT(st.fetches, 4);
    CHECK(st.last_success_ms > 0 && st.last_change_ms > 0);
    double age = ag_jwks_manager_age_seconds(m);
    CHECK(age >= 0 && age < 60);
    char *kid1 = strdup(s0.last_kid);
    char *t = token(kid1, T1, 2);
    CHECK_INT(validate(&cfg, m, t), AG_AUTH_OK);
    free(t);
    t = token(kid1, T1, 1);
    CHECK_INT(validate(&cfg, m, t), AG_AUTH_OK);
    free(t);
    /* The keys are scoped to T1's endpoints: T2 is neither configured nor fetched. */
    t = token(kid1, T2, 2);
    CHECK_INT(validate(&cfg, m, t), AG_AUTH_TENANT_NOT_ALLOWED);
    free(t);
    /* mint_token, the command-line tool, produces a token the validator accepts. */
    {
        char cmd[1024], claims[512], out[8192] = "";
        long long now = (long long)time(NULL);
        snprintf(claims, sizeof claims,
                 "{\"aud\":\"" AUD "\",\"iss\":\"%s/" T1 "/v2.0\",\"tid\":\"" T1 "\",\"ver\":\"2.0\",\"iat\":%lld}",
                 base_url, now);
        snprintf(cmd, sizeof cmd, "'%s' --key '%s/%s.pem' --kid '%s' --lifetime 600 --claims '%s'", argv[2],
                 keys_dir, kid1, kid1, claims);
        FILE *p = popen(cmd, "r");
        CHECK(p != NULL);
        if (p) {
            if (!fgets(out, sizeof out, p))
                out[0] = '\0';
            CHECK_INT(pclose(p), 0);
        }
        out[strcspn(out, "\n")] = '\0';
        CHECK_INT(validate(&cfg, m, out), AG_AUTH_OK);
        snprintf(cmd, sizeof cmd, "'%s' --alg HS256 --hmac-secret-file '%s/%s.pub.pem' --kid '%s' --claims '%s'",
                 argv[2], keys_dir, kid1, kid1, claims);
        p = popen(cmd, "r");
        out[0] = '\0';
        if (p) {
            if (!fgets(out, sizeof out, p))
                out[0] = '\0';
            pclose(p);
        }
        out[strcspn(out, "\n")] = '\0';
        CHECK_INT(validate(&cfg, m, out), AG_AUTH_ALG_NOT_ALLOWED);
    }

    /* 2. Rotation: a token signed with the new key names an unknown kid until a refresh. A worker
     *    thread reads the current set all along (steps 2-5). */
    reader_arg rd = {.m = m};
    atomic_init(&rd.stop, false);
    atomic_init(&rd.reads, 0);
    pthread_t reader;
    pthread_create(&reader, NULL, reader_thread, &rd);
    char buf[8192];
    CHECK_INT(fake_call("POST", "/_fake/rotate", buf), 200);
    fake_stats s1 = stats_now();
    CHECK(strcmp(s1.last_kid, kid1) != 0 && strstr(buf, s1.last_kid) != NULL);
    char *kid2 = strdup(s1.last_kid);
    t = token(kid2, T1, 2);
    CHECK_INT(validate(&cfg, m, t), AG_AUTH_UNKNOWN_KID);
    ag_jwks *held = ag_jwks_manager_acquire(m);
    CHECK(ag_jwks_manager_sync(m, held) == held);
    CHECK(ag_jwks_manager_request_refresh(m, 1));
    wait_gen w = {m, 2};
    CHECK(run_until(gen_reached, &w, 10000));
    CHECK_INT(validate(&cfg, m, t), AG_AUTH_OK);
    free(t);
    t = token(kid1, T1, 2);
    CHECK_INT(validate(&cfg, m, t), AG_AUTH_OK); /* the old key is still published */
    free(t);
    held = ag_jwks_manager_sync(m, held);
    CHECK(held && ag_jwks_generation(held) == 2);
    ag_jwks_unref(held);
    fake_stats s2 = stats_now();
    CHECK_INT(s2.jwks - s1.jwks, 2);   /* both sources, keys only */
    CHECK_INT(s2.metadata - s1.metadata, 0);
    ag_jwks_manager_get_stats(m, &st);
    CHECK_INT(st.keys, 4);
    CHECK_INT(st.ondemand_granted, 1);

    /* 3. Within the interval every further request is refused, from any number of threads. */
    CHECK(!ag_jwks_manager_request_refresh(m, 2));
    CHECK_INT(flood(m, 2), 0);
    ag_jwks_manager_get_stats(m, &st);
    CHECK_INT(st.ondemand_granted, 1);
    CHECK(st.ondemand_throttled >= 4001);
    /* Keys newer than what the caller saw: "retry now", no refresh needed. */
    CHECK(ag_jwks_manager_request_refresh(m, 1));

    /* 4. After the interval exactly one refresh is granted however many ask, and it fetches once. */
    wait_gen g2 = {m, 2};
    uint64_t rounds_before = ag_jwks_manager_rounds(m);
    CHECK(run_until(refresh_granted, &g2, 10000));
    int yes = flood(m, 2);
    CHECK_INT(yes, 4000); /* all told to wait for the pending refresh */
    ag_jwks_manager_get_stats(m, &st);
    CHECK_INT(st.ondemand_granted, 2);
    fake_stats s3 = stats_now();
    wait_gen r = {m, rounds_before + 1};
    CHECK(run_until(rounds_reached, &r, 10000));
    fake_stats s4 = stats_now();
    CHECK_INT(s4.jwks - s3.jwks, 2);
    CHECK_INT(s4.metadata - s3.metadata, 0);
    CHECK_INT(ag_jwks_manager_rounds(m), rounds_before + 1);
    CHECK_INT(ag_jwks_manager_generation(m), 2); /* same keys: no new generation */
    CHECK_INT(flood(m, 2), 0);

    /* 5. Outage: the round fails, the last good keys stay; recovery through backoff retries. */
    CHECK_INT(fake_call("POST", "/_fake/down", buf), 200);
    ag_jwks_manager_get_stats(m, &st);
    uint64_t failures_before = st.failures;
    rounds_before = st.rounds;
    ag_jwks_manager_refresh_now(m);
    r.value = rounds_before + 1;
    CHECK(run_until(rounds_reached, &r, 10000));
    ag_jwks_manager_get_stats(m, &st);
    CHECK_INT(st.failures - failures_before, 2);
    CHECK(st.consecutive_failures >= 1);
    CHECK(st.ready);
    CHECK_INT(st.generation, 2);
    CHECK_INT(st.keys, 4);
    t = token(kid2, T1, 2);
    CHECK_INT(validate(&cfg, m, t), AG_AUTH_OK);
    free(t);
    /* Still down: the backoff retries keep failing without touching the keys. */
    r.value = st.rounds + 2;
    CHECK(run_until(rounds_reached, &r, 10000));
    ag_jwks_manager_get_stats(m, &st);
    CHECK(st.consecutive_failures >= 3);
    CHECK_INT(st.generation, 2);
    int64_t success_before = st.last_success_ms;
    CHECK_INT(fake_call("POST", "/_fake/up", buf), 200);
    CHECK(run_until(no_failures, m, 10000));
    ag_jwks_manager_get_stats(m, &st);
    CHECK_INT(st.generation, 2);
    CHECK(st.last_success_ms >= success_before);

    atomic_store(&rd.stop, true);
    pthread_join(reader, NULL);
    CHECK(atomic_load(&rd.reads) > 0);
    CHECK_INT(rd.max_gen, 2); /* the worker saw the rotated set */

    /* 6. Periodic refresh (1 s) for T2, v2 only; every round rediscovers metadata. */
    ag_auth_config cfg2;
    char json[1024];
    snprintf(json, sizeof json,
             "{\"authority_host\":\"%s\",\"tenants\":[\"" T2 "\"],\"audiences\":[\"" AUD "\"],"
             "\"accepted_token_versions\":[\"2.0\"],\"jwks_refresh_s\":1}",
             base_url);
    cJSON *j = cJSON_Parse(json);
    ag_conf_err cerr;
    CHECK_INT(ag_auth_config_parse(j, "auth", &cfg2, &cerr), 0);
    cJSON_Delete(j);
    fake_stats s5 = stats_now();
    ag_jwks_manager *m2 = manager(&cfg2);
    wait_gen r2 = {m2, 3};
    CHECK(run_until(rounds_reached, &r2, 15000));
    ag_jwks_manager_get_stats(m2, &st);
    CHECK(st.ready);
    CHECK_INT(st.generation, 1);
    CHECK_INT(st.fetches, st.rounds * 2 + (ag_jwks_manager_rounds(m2) > st.rounds ? 2 : 0));
    fake_stats s6 = stats_now();
    CHECK(s6.metadata - s5.metadata >= 3);
    t = token(kid2, T2, 2);
    CHECK_INT(validate(&cfg2, m2, t), AG_AUTH_OK);
    free(t);
    t = token(kid2, T2, 1);
    CHECK_INT(validate(&cfg2, m2, t), AG_AUTH_VERSION_NOT_ACCEPTED);
    free(t);
    ag_jwks_manager_free(m2);
    ag_auth_config_free(&cfg2);

    /* 7. Explicit jwks_uri (the common endpoint, issuer template): serves every version and tenant. */
    ag_auth_config cfg3;
    char extra[256];
    snprintf(extra, sizeof extra, ",\"jwks_uri\":\"%s/common/discovery/v2.0/keys\"", base_url);
    config(&cfg3, extra);
    ag_jwks_manager *m3 = manager(&cfg3);
    CHECK(run_until(is_ready, m3, 10000));
    ag_jwks_manager_get_stats(m3, &st);
    CHECK_INT(st.fetches, 1);
    CHECK_INT(st.keys, 2);
    t = token(kid1, T1, 2);
    CHECK_INT(validate(&cfg3, m3, t), AG_AUTH_OK);
    free(t);
    t = token(kid2, T1, 1);
    CHECK_INT(validate(&cfg3, m3, t), AG_AUTH_OK);
    free(t);
    ag_jwks_manager_free(m3);
    ag_auth_config_free(&cfg3);

    /* 8. Metadata whose issuer is not the one expected for the authority: refused, nothing loaded.
     *    And a tenant the authority does not know (400). */
    ag_auth_config cfg4, cfg5;
    snprintf(json, sizeof json, "{\"authority_host\":\"http://localhost:%d\",\"tenants\":[\"" T1 "\"],"
             "\"audiences\":[\"" AUD "\"],\"accepted_token_versions\":[\"2.0\"]}", port);
    j = cJSON_Parse(json);
    CHECK_INT(ag_auth_config_parse(j, "auth", &cfg4, &cerr), 0);
    cJSON_Delete(j);
    snprintf(json, sizeof json, "{\"authority_host\":\"%s\",\"tenants\":[\"" T3 "\"],\"audiences\":[\"" AUD "\"]}",
             base_url);
    j = cJSON_Parse(json);
    CHECK_INT(ag_auth_config_parse(j, "auth", &cfg5, &cerr), 0);
    cJSON_Delete(j);
    ag_jwks_manager *m4 = manager(&cfg4), *m5 = manager(&cfg5);
    wait_gen r4 = {m4, 2}, r5 = {m5, 2};
    CHECK(run_until(rounds_reached, &r4, 10000));
    CHECK(run_until(rounds_reached, &r5, 10000));
    ag_jwks_manager_get_stats(m4, &st);
    CHECK(!st.ready && st.failures >= 2 && st.generation == 0);
    CHECK(ag_jwks_manager_acquire(m4) == NULL);
    CHECK(isnan(ag_jwks_manager_age_seconds(m4)));
    ag_jwks_manager_get_stats(m5, &st);
    CHECK(!st.ready && st.failures >= 4 && st.generation == 0);
    ag_jwks_manager_free(m4);
    ag_jwks_manager_free(m5);
    ag_auth_config_free(&cfg4);
    ag_auth_config_free(&cfg5);

    /* Free the manager with a transfer in flight: it is cancelled, no callback afterwards. */
    ag_jwks_manager_refresh_now(m);
    CHECK(ag_curl_loop_pending(curl_loop) > 0);
    ag_jwks_manager_free(m);
    CHECK_INT(ag_curl_loop_pending(curl_loop), 0);
    ag_auth_config_free(&cfg);
    free(kid1);
    free(kid2);

    event_free(ticker);
    ag_curl_loop_free(curl_loop);
    event_base_free(base);

    /* The stand-in stops cleanly on SIGTERM. */
    kill(pid, SIGTERM);
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    curl_global_cleanup();
    return CHECK_DONE();
}
