/* Helpers for the audit tests: temporary directories, the fake_monitor child process, HTTP calls to
 * its control endpoints, and waiting on a condition with a deadline (never a fixed sleep). */
#ifndef AG_AUDIT_TEST_UTIL_H
#define AG_AUDIT_TEST_UTIL_H

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "aoai_guard/audit.h"

static inline long long ag_test_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Polls cond every 10 ms until it holds or timeout_ms passes; returns the last result. */
static inline bool ag_test_wait(bool (*cond)(void *), void *arg, long long timeout_ms)
{
    long long end = ag_test_now_ms() + timeout_ms;
    for (;;) {
        if (cond(arg))
            return true;
        if (ag_test_now_ms() >= end)
            return cond(arg);
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static inline void ag_test_tmpdir(char *out, size_t cap)
{
    snprintf(out, cap, "/tmp/ag-audit-test-XXXXXX");
    if (!mkdtemp(out)) {
        perror("mkdtemp");
        exit(2);
    }
}

static inline int ag_test_rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(p);
}

static inline void ag_test_rmtree(const char *dir)
{
    nftw(dir, ag_test_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* Regular files in dir whose name contains part. */
static inline int ag_test_count_files(const char *dir, const char *part)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strstr(e->d_name, part))
            n++;
    closedir(d);
    return n;
}

/* Reads a whole file (NUL-terminated, caller frees); NULL when missing. */
static inline char *ag_test_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (cap - n < 2) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
    }
    fclose(f);
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

static inline bool ag_test_mem_has(const char *hay, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (memcmp(hay + i, needle, k) == 0)
            return true;
    return false;
}

/* True when needle appears in any regular file under dir (recursively). */
static inline bool ag_test_tree_has(const char *dir, const char *needle)
{
    DIR *d = opendir(dir);
    if (!d)
        return false;
    bool found = false;
    struct dirent *e;
    while (!found && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char p[4096];
        int pl = snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (pl < 0 || (size_t)pl >= sizeof p)
            continue; /* a path too long for the buffer: not one the tests make */
        struct stat st;
        if (lstat(p, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            found = ag_test_tree_has(p, needle);
        } else if (S_ISREG(st.st_mode)) {
            size_t n;
            char *b = ag_test_read_file(p, &n);
            found = b && ag_test_mem_has(b, n, needle);
            free(b);
        }
    }
    closedir(d);
    return found;
}

/* ---- fake_monitor ---- */

#define AG_TEST_DCR "dcr-00112233445566778899aabbccddeeff"
#define AG_TEST_STREAM "Custom-AoaiGuardAudit"

typedef struct ag_test_fake {
    pid_t pid;
    int port;
    char dir[256];
    char base[128]; /* http://127.0.0.1:port */
} ag_test_fake;

static inline bool ag_test_port_ready(void *arg)
{
    ag_test_fake *f = arg;
    char p[512];
    snprintf(p, sizeof p, "%s/port", f->dir);
    char *s = ag_test_read_file(p, NULL);
    if (!s)
        return false;
    f->port = atoi(s);
    free(s);
    return f->port > 0;
}

/* Starts fake_monitor on an ephemeral port; exits the test on failure. */
static inline void ag_test_fake_start(ag_test_fake *f, const char *token)
{
    memset(f, 0, sizeof *f);
    ag_test_tmpdir(f->dir, sizeof f->dir);
    const char *bd = getenv("AG_BUILD_DIR");
    char exe[1024], portfile[512];
    snprintf(exe, sizeof exe, "%s/tests/fakes/fake_monitor", bd ? bd : ".");
    if (access(exe, X_OK) != 0)
        snprintf(exe, sizeof exe, "%s/fake_monitor", bd ? bd : ".");
    snprintf(portfile, sizeof portfile, "%s/port", f->dir);
    f->pid = fork();
    if (f->pid == 0) {
        execl(exe, exe, "--port", "0", "--port-file", portfile, "--token", token, "--dcr", AG_TEST_DCR,
              "--stream", AG_TEST_STREAM, (char *)NULL);
        perror(exe);
        _exit(127);
    }
    if (f->pid < 0 || !ag_test_wait(ag_test_port_ready, f, 10000)) {
        fprintf(stderr, "fake_monitor (%s) did not start\n", exe);
        exit(2);
    }
    snprintf(f->base, sizeof f->base, "http://127.0.0.1:%d", f->port);
}

static inline void ag_test_fake_stop(ag_test_fake *f)
{
    if (f->pid > 0) {
        kill(f->pid, SIGTERM);
        long long end = ag_test_now_ms() + 5000;
        int st;
        while (waitpid(f->pid, &st, WNOHANG) == 0) {
            if (ag_test_now_ms() > end) {
                kill(f->pid, SIGKILL);
                waitpid(f->pid, &st, 0);
                break;
            }
            struct timespec ts = {0, 5 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        f->pid = 0;
    }
    ag_test_rmtree(f->dir);
}

typedef struct ag_test_buf {
    char *data;
    size_t len;
} ag_test_buf;

static inline size_t ag_test_buf_write(char *p, size_t sz, size_t nm, void *arg)
{
    ag_test_buf *b = arg;
    size_t n = sz * nm;
    b->data = realloc(b->data, b->len + n + 1);
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

/* One HTTP call to the fake; returns the status (0 on transport failure) and the body (caller frees). */
static inline long ag_test_http(ag_test_fake *f, const char *method, const char *path, const char *body,
                                char **out)
{
    CURL *c = curl_easy_init();
    char url[512];
    snprintf(url, sizeof url, "%s%s", f->base, path);
    ag_test_buf b = {NULL, 0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, ag_test_buf_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    if (body)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    long status = 0;
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    if (out)
        *out = b.data;
    else
        free(b.data);
    return status;
}

/* Every record the fake stored, or NULL when it cannot be reached. */
static inline cJSON *ag_test_fake_records(ag_test_fake *f)
{
    char *body = NULL;
    long st = ag_test_http(f, "GET", "/_fake/records", NULL, &body);
    cJSON *r = st == 200 && body ? cJSON_Parse(body) : NULL;
    free(body);
    return r;
}

static inline cJSON *ag_test_fake_stats(ag_test_fake *f)
{
    char *body = NULL;
    long st = ag_test_http(f, "GET", "/_fake/stats", NULL, &body);
    cJSON *r = st == 200 && body ? cJSON_Parse(body) : NULL;
    free(body);
    return r;
}

static inline double ag_test_json_num(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

static inline long ag_test_fake_post(ag_test_fake *f, const char *path, const char *json)
{
    return ag_test_http(f, "POST", path, json, NULL);
}

/* Counts records whose string field key is distinct (unique) and all of them (total). */
static inline void ag_test_count_unique(const cJSON *arr, const char *key, int *unique, int *total)
{
    cJSON *seen = cJSON_CreateObject();
    *unique = *total = 0;
    for (const cJSON *r = arr ? arr->child : NULL; r; r = r->next) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(r, key);
        (*total)++;
        if (!cJSON_IsString(v))
            continue;
        if (!cJSON_GetObjectItemCaseSensitive(seen, v->valuestring)) {
            cJSON_AddTrueToObject(seen, v->valuestring);
            (*unique)++;
        }
    }
    cJSON_Delete(seen);
}

/* ---- an audit trail pointed at the fake ---- */

typedef struct ag_test_tok {
    pthread_mutex_t mu;
    char token[64];
    char next[64];      /* what token_rejected switches to ("" = keep) */
    atomic_int rejected;
} ag_test_tok;

static inline void ag_test_tok_init(ag_test_tok *t, const char *token)
{
    pthread_mutex_init(&t->mu, NULL);
    snprintf(t->token, sizeof t->token, "%s", token);
    t->next[0] = '\0';
    atomic_init(&t->rejected, 0);
}

static inline void ag_test_tok_set(ag_test_tok *t, const char *token, const char *next)
{
    pthread_mutex_lock(&t->mu);
    if (token)
        snprintf(t->token, sizeof t->token, "%s", token);
    if (next)
        snprintf(t->next, sizeof t->next, "%s", next);
    pthread_mutex_unlock(&t->mu);
}

static inline const char *ag_test_get_token(void *arg)
{
    static _Thread_local char copy[64];
    ag_test_tok *t = arg;
    pthread_mutex_lock(&t->mu);
    memcpy(copy, t->token, sizeof copy);
    pthread_mutex_unlock(&t->mu);
    return copy;
}

static inline void ag_test_token_rejected(void *arg)
{
    ag_test_tok *t = arg;
    atomic_fetch_add(&t->rejected, 1);
    pthread_mutex_lock(&t->mu);
    if (t->next[0])
        memcpy(t->token, t->next, sizeof t->token);
    pthread_mutex_unlock(&t->mu);
}

/* Opens a trail from a JSON "audit" section; exits the test when that fails. */
static inline ag_audit *ag_test_audit(const char *json, ag_test_tok *tok, int stdout_fd)
{
    cJSON *j = cJSON_Parse(json);
    ag_audit_config cfg;
    ag_conf_err cerr = {{0}};
    if (!j || ag_audit_config_parse(j, "audit", &cfg, &cerr) != 0) {
        fprintf(stderr, "audit config: %s\n%s\n", cerr.msg, json);
        exit(2);
    }
    cJSON_Delete(j);
    ag_audit_init init = {&cfg, {ag_test_get_token, ag_test_token_rejected, tok}, "gw-test", stdout_fd};
    char err[512];
    ag_audit *a = ag_audit_new(&init, err, sizeof err);
    ag_audit_config_free(&cfg);
    if (!a) {
        fprintf(stderr, "ag_audit_new: %s\n", err);
        exit(2);
    }
    return a;
}

static inline ag_audit_record *ag_test_record(const char *request_id, const char *prompt)
{
    ag_audit_record *r = ag_audit_record_new();
    snprintf(r->request_id, sizeof r->request_id, "%s", request_id);
    r->identity.kind = AG_IDENTITY_USER;
    snprintf(r->identity.oid, sizeof r->identity.oid, "oid-test");
    snprintf(r->deployment, sizeof r->deployment, "gpt-4o-mini");
    r->status = 200;
    r->latency_ms = 12;
    if (prompt)
        ag_audit_record_set_prompt(r, prompt, strlen(prompt));
    return r;
}

static inline int64_t ag_test_deadline(long long in_ms)
{
    return (int64_t)(ag_test_now_ms() + in_ms);
}

/* Unique request RequestIds stored by the fake (-1 when unreachable); *total gets all request rows. */
static inline int ag_test_fake_unique(ag_test_fake *f, int *total)
{
    cJSON *r = ag_test_fake_records(f);
    if (!r)
        return -1;
    cJSON *req = cJSON_CreateArray();
    for (const cJSON *e = r->child; e; e = e->next) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(e, "RecordType");
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(e, "Part");
        if (cJSON_IsString(t) && strcmp(t->valuestring, "request") == 0 && cJSON_IsNumber(p) &&
            p->valueint == 1)
            cJSON_AddItemReferenceToArray(req, (cJSON *)e);
    }
    int u, tot;
    ag_test_count_unique(req, "RequestId", &u, &tot);
    cJSON_Delete(req);
    cJSON_Delete(r);
    if (total)
        *total = tot;
    return u;
}

typedef struct ag_test_want {
    ag_test_fake *f;
    int n;
} ag_test_want;

static inline bool ag_test_fake_has(void *arg)
{
    ag_test_want *w = arg;
    return ag_test_fake_unique(w->f, NULL) >= w->n;
}

#endif
