/* The credential provider end to end, on an event_base with a curl_loop, against tests/fakes/fake_identity
 * for each flow: token obtained, refreshed before expiry, failures keep the old token until it
 * expires, ready() flips, worker threads read lock-free while tokens are swapped. */
#include "aoai_guard/credential.h"
#include "aoai_guard/curl_loop.h"
#include "check.h"

#include <curl/curl.h>
#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static struct event_base *g_base;
static ag_curl_loop *g_http;
static char g_tmpdir[256];

/* ---- the stand-in process ---- */

typedef struct fake {
    pid_t pid;
    int port;
} fake;

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void pause_ms(int ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* Starts fake_identity with extra args (NULL-terminated); waits (bounded) for its port file. */
static int fake_start(fake *f, const char *const *extra)
{
    static int seq;
    const char *bdir = getenv("AG_BUILD_DIR");
    char bin[512], portfile[512];
    snprintf(bin, sizeof(bin), "%s/tests/fakes/fake_identity", bdir ? bdir : ".");
    snprintf(portfile, sizeof(portfile), "%s/port-%d", g_tmpdir, ++seq);
    const char *argv[32] = { bin, "--port", "0", "--port-file", portfile };
    int n = 5;
    for (int i = 0; extra && extra[i] && n < 31; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    f->pid = fork();
    if (f->pid == 0) {
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    double deadline = mono_s() + 10;
    while (mono_s() < deadline) {
        FILE *pf = fopen(portfile, "r");
        if (pf) {
            int ok = fscanf(pf, "%d", &f->port) == 1;
            fclose(pf);
            if (ok && f->port > 0)
                return 0;
        }
        int st;
        if (waitpid(f->pid, &st, WNOHANG) == f->pid) {
            fprintf(stderr, "fake_identity (%s) exited early\n", bin);
            return -1;
        }
        pause_ms(10); /* polling the port file, bounded by the deadline */
    }
    return -1;
}

/* SIGTERM; returns the exit status (0 = clean stop) or -1. */
static int fake_stop(fake *f)
{
    int st = 0;
    kill(f->pid, SIGTERM);
    if (waitpid(f->pid, &st, 0) != f->pid)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static size_t collect(char *p, size_t sz, size_t nm, void *ud)
{
    char *buf = ud;
    size_t have = strlen(buf), n = sz * nm;
    if (have + n >= 8192)
        n = 8191 - have;
    memcpy(buf + have, p, n);
    buf[have + n] = '\0';
    return sz * nm;
}

/* Blocking control call to the stand-in (test code only). Returns the HTTP status. */
static long fake_call(const fake *f, const char *path, const char *post, char out[8192])
{
    char url[256];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", f->port, path);
    out[0] = '\0';
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    if (post)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, post);
    long status = 0;
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    return status;
}

static int fake_fail(const fake *f, int status, int count)
{
    char body[128], out[8192];
    snprintf(body, sizeof(body), "{\"status\":%d,\"count\":%d}", status, count);
    return fake_call(f, "/_fake/fail", body, out) == 200 ? 0 : -1;
}

/* A number or string from /_fake/stats: "requests.imds", "issued", "last_resource"... */
static long fake_stat(const fake *f, const char *key, char *str, size_t strlen_)
{
    char out[8192];
    if (fake_call(f, "/_fake/stats", NULL, out) != 200)
        return -1;
    cJSON *o = cJSON_Parse(out);
    const cJSON *v = o;
    char k[128];
    snprintf(k, sizeof(k), "%s", key);
    for (char *part = strtok(k, "."); part && v; part = strtok(NULL, "."))
        v = cJSON_GetObjectItemCaseSensitive(v, part);
    long r = -1;
    if (cJSON_IsNumber(v))
        r = (long)v->valuedouble;
    else if (cJSON_IsString(v) && str) {
        snprintf(str, strlen_, "%s", v->valuestring);
        r = 0;
    }
    cJSON_Delete(o);
    return r;
}

/* ---- running the loop until a condition holds ---- */

typedef int (*pred_fn)(void *ctx);

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)arg; /* wakes EVLOOP_ONCE so time-based conditions are re-checked */
}

/* Runs the event loop until pred(ctx) is true or seconds pass; returns 1 when it held. */
static int run_until(pred_fn pred, void *ctx, double seconds)
{
    struct event *tick = event_new(g_base, -1, EV_PERSIST, on_tick, NULL);
    struct timeval tv = { 0, 20000 };
    event_add(tick, &tv);
    double deadline = mono_s() + seconds;
    int ok;
    while (!(ok = pred(ctx)) && mono_s() < deadline)
        event_base_loop(g_base, EVLOOP_ONCE);
    event_free(tick);
    return ok;
}

typedef struct waitctx {
    ag_credential *cred;
    const char *scope;
    unsigned long long n;
} waitctx;

static int p_ready(void *c) { return ag_credential_ready(((waitctx *)c)->cred); }
static int p_no_token(void *c)
{
    waitctx *w = c;
    ag_token *t = ag_credential_token(w->cred, w->scope);
    ag_token_release(t);
    return t == NULL;
}

static int p_refreshes(void *c)
{
    waitctx *w = c;
    ag_credential_stats st;
    return ag_credential_stats_get(w->cred, w->scope, &st) == 0 && st.refreshes >= w->n;
}

static int p_failures(void *c)
{
    waitctx *w = c;
    ag_credential_stats st;
    return ag_credential_stats_get(w->cred, w->scope, &st) == 0 && st.failures >= w->n;
}

static int p_any_failure(void *c)
{
    ag_credential_stats a, b;
    return ag_credential_stats_get(c, AG_SCOPE_COGNITIVE, &a) == 0 &&
           ag_credential_stats_get(c, AG_SCOPE_MONITOR, &b) == 0 && a.failures + b.failures >= 1;
}

static int p_pending(void *c)
{
    return ag_curl_loop_pending(c) > 0;
}

static ag_credential *make_cred(const char *json)
{
    ag_credential_config cfg;
    ag_conf_err err;
    cJSON *root = cJSON_Parse(json);
    int rc = ag_credential_config_parse(root, "credential", &cfg, &err);
    cJSON_Delete(root);
    if (rc != 0) {
        fprintf(stderr, "config: %s\n", err.msg);
        return NULL;
    }
    ag_credential *c = ag_credential_new(g_base, g_http, &cfg, &err);
    if (!c)
        fprintf(stderr, "new: %s\n", err.msg);
    ag_credential_config_free(&cfg);
    return c;
}

static void token_str(ag_credential *c, const char *scope, char *out, size_t n)
{
    if (ag_credential_token_copy(c, scope, out, n) < 0)
        snprintf(out, n, "(none)");
}

/* ---- worker threads reading while the control loop swaps tokens ---- */

typedef struct reader {
    ag_credential *cred;
    atomic_int *stop;
    long reads, hits, bad;
} reader;

static void *reader_main(void *arg)
{
    reader *r = arg;
    char buf[512];
    while (!atomic_load(r->stop)) {
        ag_token *t = ag_credential_token(r->cred, AG_SCOPE_COGNITIVE);
        r->reads++;
        if (t) {
            const char *v = ag_token_value(t);
            size_t len = ag_token_len(t);
            if (strncmp(v, "fake-token-", 11) != 0 || len != strlen(v) ||
                strcmp(v + len - strlen(AG_SCOPE_COGNITIVE), AG_SCOPE_COGNITIVE) != 0)
                r->bad++;
            r->hits++;
            ag_token_release(t);
        }
        long n = ag_credential_token_copy(r->cred, AG_SCOPE_COGNITIVE, buf, sizeof(buf));
        if (n >= 0 && (strncmp(buf, "fake-token-", 11) != 0 || (size_t)n != strlen(buf)))
            r->bad++;
    }
    return NULL;
}

/* ---- flows ---- */

static void flow_client_secret(void)
{
    fake f;
    const char *args[] = { "--expires-in", "4", "--client-id", "cid", "--client-secret", "s3cr3t",
                           "--tenant", "tenant1", NULL };
    CHECK_INT(fake_start(&f, args), 0);
    char cfg[512];
    snprintf(cfg, sizeof(cfg), "{\"type\":\"client_secret\",\"tenant_id\":\"tenant1\",\"client_id\":\"cid\","
             "\"client_secret\":\"s3cr3t\",\"authority_host\":\"http://127.0.0.1:%d\",\"refresh_before_s\":2}", f.port);
    ag_credential *c = make_cred(cfg);
    CHECK(c != NULL);
    if (!c) {
        fake_stop(&f);
        return;
    }
    CHECK_INT(ag_credential_get_source(c), AG_CRED_SRC_CLIENT_SECRET);
    CHECK(ag_credential_ready(c)); /* nothing registered yet */
    CHECK_INT(ag_credential_add_scope(c, AG_SCOPE_COGNITIVE), 0);
    CHECK_INT(ag_credential_add_scope(c, AG_SCOPE_COGNITIVE), 0); /* idempotent */
    CHECK(!ag_credential_ready(c));
    CHECK(ag_credential_token(c, AG_SCOPE_COGNITIVE) == NULL);
    CHECK(ag_credential_token(c, "https://unknown/.default") == NULL);
    CHECK_INT(ag_credential_add_scope(c, "has space/.default"), -1);

    waitctx w = { .cred = c, .scope = AG_SCOPE_COGNITIVE, .n = 1 };
    CHECK(run_until(p_ready, &w, 5));
    char tok[512];
    token_str(c, AG_SCOPE_COGNITIVE, tok, sizeof(tok));
    CHECK_STR(tok, "fake-token-1-https://cognitiveservices.azure.com/.default");
    ag_token *t1 = ag_credential_token(c, AG_SCOPE_COGNITIVE);
    CHECK(t1 != NULL);
    long long e1 = t1 ? ag_token_expires_on(t1) : 0;
    long long now = (long long)time(NULL);
    CHECK(e1 - now >= 3 && e1 - now <= 4);
    ag_credential_stats st;
    CHECK_INT(ag_credential_stats_get(c, AG_SCOPE_COGNITIVE, &st), 0);
    CHECK_INT(st.refreshes, 1);
    CHECK_INT(st.failures, 0);
    CHECK_INT(st.expires_on, e1);
    CHECK_INT(ag_credential_stats_get(c, AG_SCOPE_MONITOR, &st), -1);
    char small[8];
    CHECK_INT(ag_credential_token_copy(c, AG_SCOPE_COGNITIVE, small, sizeof(small)), -1);

    /* the monitor scope, with its double slash, is sent as is to Entra */
    CHECK_INT(ag_credential_add_scope(c, AG_SCOPE_MONITOR), 1);
    CHECK(!ag_credential_ready(c));
    CHECK(run_until(p_ready, &w, 5));
    token_str(c, AG_SCOPE_MONITOR, tok, sizeof(tok));
    CHECK_STR(tok, "fake-token-2-https://monitor.azure.com//.default");
    char last[512] = "";
    fake_stat(&f, "last_scope", last, sizeof(last));
    CHECK_STR(last, AG_SCOPE_MONITOR);

    /* worker threads read throughout the rest of this flow */
    atomic_int stop = 0;
    reader rd[2] = { { .cred = c, .stop = &stop }, { .cred = c, .stop = &stop } };
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, reader_main, &rd[i]);

    /* refreshed before expiry, never unready in between */
    w.n = 2;
    CHECK(run_until(p_refreshes, &w, 6));
    now = (long long)time(NULL);
    CHECK(now < e1);
    CHECK(ag_credential_ready(c));
    token_str(c, AG_SCOPE_COGNITIVE, tok, sizeof(tok));
    CHECK(strcmp(tok, "fake-token-1-https://cognitiveservices.azure.com/.default") != 0);
    CHECK(strncmp(tok, "fake-token-", 11) == 0);
    /* a reference taken before the swap stays valid */
    CHECK_STR(t1 ? ag_token_value(t1) : NULL, "fake-token-1-https://cognitiveservices.azure.com/.default");
    ag_token_release(t1);

    /* failures: the current token is kept until it expires, then ready() flips */
    ag_token *t2 = ag_credential_token(c, AG_SCOPE_COGNITIVE);
    long long e2 = t2 ? ag_token_expires_on(t2) : 0;
    char v2[512];
    snprintf(v2, sizeof(v2), "%s", t2 ? ag_token_value(t2) : "");
    ag_token_release(t2);
    CHECK_INT(ag_credential_stats_get(c, AG_SCOPE_COGNITIVE, &st), 0);
    unsigned long long f0 = st.failures;
    CHECK_INT(fake_fail(&f, 503, 1000), 0);
    w.n = f0 + 1;
    CHECK(run_until(p_failures, &w, 6));
    now = (long long)time(NULL);
    if (now < e2) {
        /* Only this scope's token is known to be valid still (ready() also needs the monitor
         * scope's, which may expire a moment earlier under load). */
        token_str(c, AG_SCOPE_COGNITIVE, tok, sizeof(tok));
        CHECK_STR(tok, v2);
    }
    CHECK(run_until(p_no_token, &w, 6));
    CHECK((long long)time(NULL) >= e2);
    CHECK(!ag_credential_ready(c));
    CHECK(ag_credential_token(c, AG_SCOPE_COGNITIVE) == NULL);
    CHECK_INT(ag_credential_token_copy(c, AG_SCOPE_COGNITIVE, tok, sizeof(tok)), -1);
    CHECK_INT(ag_credential_stats_get(c, AG_SCOPE_COGNITIVE, &st), 0);
    CHECK(st.failures >= f0 + 1);
    CHECK_INT(st.seconds_to_expiry, 0);

    /* recovery once the endpoint answers again */
    CHECK_INT(fake_fail(&f, 503, 0), 0);
    CHECK(run_until(p_ready, &w, 10));
    token_str(c, AG_SCOPE_COGNITIVE, tok, sizeof(tok));
    CHECK(strncmp(tok, "fake-token-", 11) == 0 && strcmp(tok, v2) != 0);
    CHECK(fake_stat(&f, "injected", NULL, 0) >= 2);

    atomic_store(&stop, 1);
    long reads = 0, hits = 0, bad = 0;
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        reads += rd[i].reads;
        hits += rd[i].hits;
        bad += rd[i].bad;
    }
    CHECK(reads > 1000);
    CHECK(hits > 0);
    CHECK_INT(bad, 0);

    /* a wrong secret is a counted, non-retryable failure */
    snprintf(cfg, sizeof(cfg), "{\"type\":\"client_secret\",\"tenant_id\":\"tenant1\",\"client_id\":\"cid\","
             "\"client_secret\":\"wrong\",\"authority_host\":\"http://127.0.0.1:%d/\"}", f.port);
    ag_credential *bad_c = make_cred(cfg);
    CHECK(bad_c != NULL);
    if (bad_c) {
        CHECK_INT(ag_credential_add_scope(bad_c, AG_SCOPE_COGNITIVE), 0);
        waitctx wb = { .cred = bad_c, .scope = AG_SCOPE_COGNITIVE, .n = 1 };
        CHECK(run_until(p_failures, &wb, 5));
        CHECK(!ag_credential_ready(bad_c));
        ag_credential_free(bad_c); /* with its 60 s retry timer pending */
    }
    long rejected = fake_stat(&f, "rejected", NULL, 0);
    CHECK(rejected >= 3);
    CHECK(fake_stat(&f, "requests.client_secret", NULL, 0) >= 5);
    CHECK_INT(fake_stat(&f, "requests.imds", NULL, 0), 0);
    ag_credential_free(c);
    CHECK_INT(fake_stop(&f), 0);
}

static int write_file(const char *path, const char *content)
{
    char tmp[600];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *fp = fopen(tmp, "w");
    if (!fp)
        return -1;
    fputs(content, fp);
    fclose(fp);
    return rename(tmp, path); /* atomic, like the kubelet's symlink swap */
}

static void flow_workload_identity(void)
{
    fake f;
    const char *args[] = { "--expires-in", "4", "--client-id", "wi-client", "--tenant", "wi-tenant",
                           "--expected-assertion", "eyJhbGciOiJSUzI1NiJ9.assertion-A.sig", NULL };
    CHECK_INT(fake_start(&f, args), 0);
    char tfile[512];
    snprintf(tfile, sizeof(tfile), "%s/azure-identity-token", g_tmpdir);
    CHECK_INT(write_file(tfile, "eyJhbGciOiJSUzI1NiJ9.assertion-A.sig\n"), 0);
    /* the env-driven setup the AKS webhook produces, through `default` */
    char authority[128], port[16];
    snprintf(authority, sizeof(authority), "http://127.0.0.1:%d/", f.port);
    snprintf(port, sizeof(port), "%d", f.port);
    setenv("AZURE_TENANT_ID", "wi-tenant", 1);
    setenv("AZURE_CLIENT_ID", "wi-client", 1);
    setenv("AZURE_FEDERATED_TOKEN_FILE", tfile, 1);
    setenv("AZURE_AUTHORITY_HOST", authority, 1);
    ag_credential *c = make_cred("{\"type\":\"default\",\"refresh_before_s\":2}");
    unsetenv("AZURE_TENANT_ID");
    unsetenv("AZURE_CLIENT_ID");
    unsetenv("AZURE_FEDERATED_TOKEN_FILE");
    unsetenv("AZURE_AUTHORITY_HOST");
    CHECK(c != NULL);
    if (!c) {
        fake_stop(&f);
        return;
    }
    CHECK_INT(ag_credential_get_source(c), AG_CRED_SRC_WORKLOAD_IDENTITY);
    CHECK_INT(ag_credential_add_scope(c, AG_SCOPE_COGNITIVE), 0);
    waitctx w = { .cred = c, .scope = AG_SCOPE_COGNITIVE, .n = 1 };
    CHECK(run_until(p_ready, &w, 5));
    char tok[512], last[1024] = "";
    token_str(c, AG_SCOPE_COGNITIVE, tok, sizeof(tok));
    CHECK_STR(tok, "fake-token-1-https://cognitiveservices.azure.com/.default");
    fake_stat(&f, "last_assertion", last, sizeof(last));
    CHECK_STR(last, "eyJhbGciOiJSUzI1NiJ9.assertion-A.sig"); /* trailing newline trimmed */
    CHECK_INT(fake_stat(&f, "requests.client_assertion", NULL, 0), 1);

    /* the kubelet rotates the file: the next refresh reads the new content (which this stand-in
     * rejects, so the failure is counted and the old token is kept) */
    CHECK_INT(write_file(tfile, "eyJhbGciOiJSUzI1NiJ9.assertion-B.sig"), 0);
    CHECK(run_until(p_failures, &w, 6));
    fake_stat(&f, "last_assertion", last, sizeof(last));
    CHECK_STR(last, "eyJhbGciOiJSUzI1NiJ9.assertion-B.sig");
    ag_credential_free(c);

    /* a missing token file is a local failure, reported without any request */
    char cfg[768];
    snprintf(cfg, sizeof(cfg), "{\"type\":\"workload_identity\",\"tenant_id\":\"wi-tenant\",\"client_id\":\"wi-client\","
             "\"federated_token_file\":\"%s/missing\",\"authority_host\":\"http://127.0.0.1:%d\"}", g_tmpdir, f.port);
    long before = fake_stat(&f, "requests.client_assertion", NULL, 0);
    c = make_cred(cfg);
    CHECK(c != NULL);
    if (c) {
        CHECK_INT(ag_credential_add_scope(c, AG_SCOPE_MONITOR), 0);
        waitctx wm = { .cred = c, .scope = AG_SCOPE_MONITOR, .n = 1 };
        CHECK(run_until(p_failures, &wm, 5));
        CHECK(!ag_credential_ready(c));
        CHECK_INT(fake_stat(&f, "requests.client_assertion", NULL, 0), before);
        ag_credential_free(c);
    }
    CHECK_INT(fake_stop(&f), 0);
}

static void flow_imds(void)
{
    fake f;
    const char *args[] = { "--expires-in", "4", "--client-id", "mi-client", NULL };
    CHECK_INT(fake_start(&f, args), 0);
    char cfg[512];
    snprintf(cfg, sizeof(cfg), "{\"type\":\"managed_identity\",\"imds_endpoint\":\"http://127.0.0.1:%d\","
             "\"managed_identity_client_id\":\"mi-client\",\"refresh_before_s\":2}", f.port);
    ag_credential *c = make_cred(cfg);
    CHECK(c != NULL);
    if (!c) {
        fake_stop(&f);
        return;
    }
    CHECK_INT(ag_credential_get_source(c), AG_CRED_SRC_IMDS);
    CHECK_INT(ag_credential_add_scope(c, AG_SCOPE_COGNITIVE), 0);
    CHECK_INT(ag_credential_add_scope(c, AG_SCOPE_MONITOR), 1);
    waitctx w = { .cred = c, .scope = AG_SCOPE_COGNITIVE, .n = 1 };
    CHECK(run_until(p_ready, &w, 5));
    char tok[512];
    token_str(c, AG_SCOPE_COGNITIVE, tok, sizeof(tok));
    const char *suffix = "-https://cognitiveservices.azure.com";
    CHECK(strncmp(tok, "fake-token-", 11) == 0 && strlen(tok) > strlen(suffix) &&
          strcmp(tok + strlen(tok) - strlen(suffix), suffix) == 0);
    token_str(c, AG_SCOPE_MONITOR, tok, sizeof(tok));
    suffix = "-https://monitor.azure.com"; /* the resource, without "/.default" and the double slash */
    CHECK(strncmp(tok, "fake-token-", 11) == 0 && strcmp(tok + strlen(tok) - strlen(suffix), suffix) == 0);
    ag_credential_stats st;
    CHECK_INT(ag_credential_stats_get(c, AG_SCOPE_MONITOR, &st), 0);
    CHECK(st.seconds_to_expiry >= 3 && st.seconds_to_expiry <= 4); /* from the string expires_in */
    char last[128] = "";
    fake_stat(&f, "last_mi_param", last, sizeof(last));
    CHECK_STR(last, "client_id");
    fake_stat(&f, "last_client_id", last, sizeof(last));
    CHECK_STR(last, "mi-client");
    CHECK_INT(fake_stat(&f, "requests.imds", NULL, 0), 2);

    /* 410 (IMDS updating) is retried quickly and the refresh still lands */
    CHECK_INT(fake_fail(&f, 410, 1), 0);
    CHECK(run_until(p_any_failure, c, 6)); /* whichever scope refreshes first gets it */
    w.scope = AG_SCOPE_COGNITIVE;
    w.n = 2;
    CHECK(run_until(p_refreshes, &w, 8));
    w.scope = AG_SCOPE_MONITOR;
    CHECK(run_until(p_refreshes, &w, 8));
    CHECK(ag_credential_ready(c));
    CHECK_INT(fake_stat(&f, "injected", NULL, 0), 1);
    ag_credential_free(c);

    /* the wrong user-assigned identity: IMDS answers 400, counted as a failure */
    snprintf(cfg, sizeof(cfg), "{\"type\":\"managed_identity\",\"imds_endpoint\":\"http://127.0.0.1:%d\","
             "\"managed_identity_client_id\":\"other\"}", f.port);
    c = make_cred(cfg);
    CHECK(c != NULL);
    if (c) {
        CHECK_INT(ag_credential_add_scope(c, AG_SCOPE_COGNITIVE), 0);
        waitctx wb = { .cred = c, .scope = AG_SCOPE_COGNITIVE, .n = 1 };
        CHECK(run_until(p_failures, &wb, 5));
        CHECK(!ag_credential_ready(c));
        ag_credential_free(c);
    }
    CHECK_INT(fake_stop(&f), 0);
}

static void flow_app_service(void)
{
    fake f;
    const char *args[] = { "--expires-in", "4", "--identity-header", "hdr-1", NULL };
    CHECK_INT(fake_start(&f, args), 0);
    char ep[128];
    snprintf(ep, sizeof(ep), "http://127.0.0.1:%d/msi/token", f.port);
    setenv("IDENTITY_ENDPOINT", ep, 1);
    setenv("IDENTITY_HEADER", "hdr-1", 1);
    ag_credential *c = make_cred("{\"type\":\"managed_identity\",\"refresh_before_s\":2}");
    CHECK(c != NULL);
    if (c) {
        CHECK_INT(ag_credential_get_source(c), AG_CRED_SRC_APP_SERVICE);
        CHECK_INT(ag_credential_add_scope(c, AG_SCOPE_COGNITIVE), 0);
        waitctx w = { .cred = c, .scope = AG_SCOPE_COGNITIVE, .n = 1 };
        CHECK(run_until(p_ready, &w, 5));
        char tok[512];
        token_str(c, AG_SCOPE_COGNITIVE, tok, sizeof(tok));
        CHECK_STR(tok, "fake-token-1-https://cognitiveservices.azure.com");
        ag_credential_stats st;
        ag_credential_stats_get(c, AG_SCOPE_COGNITIVE, &st);
        CHECK(st.seconds_to_expiry >= 3 && st.seconds_to_expiry <= 4); /* from expires_on alone */
        w.n = 2;
        CHECK(run_until(p_refreshes, &w, 6));
        CHECK_INT(fake_stat(&f, "requests.app_service", NULL, 0), 2);
        ag_credential_free(c);
    }
    setenv("IDENTITY_HEADER", "wrong", 1);
    c = make_cred("{\"type\":\"managed_identity\"}");
    unsetenv("IDENTITY_ENDPOINT");
    unsetenv("IDENTITY_HEADER");
    CHECK(c != NULL);
    if (c) {
        CHECK_INT(ag_credential_add_scope(c, AG_SCOPE_COGNITIVE), 0);
        waitctx w = { .cred = c, .scope = AG_SCOPE_COGNITIVE, .n = 1 };
        CHECK(run_until(p_failures, &w, 5));
        CHECK(!ag_credential_ready(c));
        ag_credential_free(c);
    }
    CHECK_INT(fake_stop(&f), 0);
}

/* No stand-in at all: connection refused is a failure with a quick retry; free() cancels the fetch. */
static void flow_unreachable(void)
{
    ag_credential *c = make_cred("{\"type\":\"managed_identity\",\"imds_endpoint\":\"http://127.0.0.1:1\"}");
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK_INT(ag_credential_add_scope(c, AG_SCOPE_COGNITIVE), 0);
    waitctx w = { .cred = c, .scope = AG_SCOPE_COGNITIVE, .n = 1 };
    CHECK(run_until(p_failures, &w, 5));
    CHECK(!ag_credential_ready(c));
    ag_credential_free(c);
    /* freeing while a fetch is in flight leaves nothing behind in the loop */
    c = make_cred("{\"type\":\"managed_identity\",\"imds_endpoint\":\"http://127.0.0.1:1\"}");
    CHECK(c != NULL);
    if (c) {
        ag_credential_add_scope(c, AG_SCOPE_MONITOR);
        CHECK(run_until(p_pending, g_http, 5)); /* the zero-delay timer started the fetch */
        ag_credential_free(c);
        CHECK_INT(ag_curl_loop_pending(g_http), 0);
    }
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    snprintf(g_tmpdir, sizeof(g_tmpdir), "/tmp/ag-cred-e2e-XXXXXX");
    if (!mkdtemp(g_tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    static const char *const env[] = { "AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET",
                                       "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST",
                                       "IDENTITY_ENDPOINT", "IDENTITY_HEADER", NULL };
    for (int i = 0; env[i]; i++)
        unsetenv(env[i]);
    g_base = event_base_new();
    g_http = ag_curl_loop_new(g_base);
    CHECK(g_http != NULL);

    double t0 = mono_s();
    flow_client_secret();
    fprintf(stderr, "client_secret flow: %.1f s\n", mono_s() - t0);
    t0 = mono_s();
    flow_workload_identity();
    fprintf(stderr, "workload identity flow: %.1f s\n", mono_s() - t0);
    t0 = mono_s();
    flow_imds();
    fprintf(stderr, "imds flow: %.1f s\n", mono_s() - t0);
    t0 = mono_s();
    flow_app_service();
    fprintf(stderr, "app service flow: %.1f s\n", mono_s() - t0);
    flow_unreachable();

    ag_curl_loop_free(g_http);
    event_base_free(g_base);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", g_tmpdir);
    curl_global_cleanup();
    return CHECK_DONE();
}
