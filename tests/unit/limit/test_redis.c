/* The Redis store against a real redis-server started by this test (127.0.0.1, a free port):
 * two limiters on two event_bases (two replicas) enforce one combined limit, tokens reconcile across
 * them, the Lua calendar matches the C one, NOSCRIPT falls back to EVAL, a hung Redis (SIGSTOP) and a
 * dead one (SIGKILL) give fail_open local decisions and fail_closed 503s within timeout_ms, and a
 * restarted Redis is used again. Without redis-server the test FAILS (CI installs it). */
#include "check.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>

#include "aoai_guard/json_strict.h"
#include "aoai_guard/ratelimit.h"

#define TIMEOUT_MS 200

static pid_t redis_pid = -1;
static int redis_port;

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void pause_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static const char *find_redis_server(void)
{
    static char path[512];
    const char *forced = getenv("AG_REDIS_SERVER"); /* an explicit binary, e.g. to check this failure */
    if (forced)
        return access(forced, X_OK) == 0 ? forced : NULL;
    const char *env = getenv("PATH");
    char dirs[4096];
    snprintf(dirs, sizeof dirs, "%s:/usr/bin:/usr/local/bin:/usr/sbin", env ? env : "");
    for (char *save = NULL, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        snprintf(path, sizeof path, "%s/redis-server", d);
        if (access(path, X_OK) == 0)
            return path;
    }
    return NULL;
}

/* PING with a deadline; true when Redis answers PONG. */
static bool redis_ping(long long deadline_ms)
{
    while (mono_ms() < deadline_ms) {
        struct timeval tv = { 0, 200000 };
        redisContext *c = redisConnectWithTimeout("127.0.0.1", redis_port, tv);
        if (c && !c->err) {
            redisReply *r = redisCommand(c, "PING");
            bool ok = r && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
            if (r)
                freeReplyObject(r);
            redisFree(c);
            if (ok)
                return true;
        } else if (c) {
            redisFree(c);
        }
        pause_ms(10);
    }
    return false;
}

static bool start_redis(void)
{
    const char *bin = find_redis_server();
    if (!bin) {
        fprintf(stderr, "FAIL: redis-server is not installed (apt-get install redis-server) or AG_REDIS_SERVER "
                        "is not executable; this test needs it and does not skip\n");
        return false;
    }
    char port[16];
    snprintf(port, sizeof port, "%d", redis_port);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0 && !getenv("AG_TEST_VERBOSE")) {
            dup2(devnull, 1);
            dup2(devnull, 2);
        }
        execl(bin, bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", "/tmp",
              "--daemonize", "no", "--loglevel", "warning", (char *)NULL);
        _exit(127);
    }
    if (pid < 0)
        return false;
    redis_pid = pid;
    if (!redis_ping(mono_ms() + 10000)) {
        fprintf(stderr, "FAIL: redis-server on port %d did not answer PING within 10 s\n", redis_port);
        return false;
    }
    return true;
}

static void stop_redis(int sig)
{
    if (redis_pid <= 0)
        return;
    kill(redis_pid, SIGCONT);
    kill(redis_pid, sig);
    waitpid(redis_pid, NULL, 0);
    redis_pid = -1;
}

static void cleanup(void)
{
    stop_redis(SIGKILL);
}

static void redis_cmd(const char *cmd)
{
    struct timeval tv = { 1, 0 };
    redisContext *c = redisConnectWithTimeout("127.0.0.1", redis_port, tv);
    if (c && !c->err) {
        redisReply *r = redisCommand(c, cmd);
        if (r)
            freeReplyObject(r);
    }
    if (c)
        redisFree(c);
}

/* ---- replicas ---- */

typedef struct replica {
    const char *name;
    struct event_base *base;
    ag_limit_config cfg;
    ag_limit_store *store;
    ag_limiter *lim;
} replica;

static long long fake_now;

static long long fake_clock(void *arg)
{
    (void)arg;
    return fake_now;
}

static void log_line(void *arg, const char *msg)
{
    if (getenv("AG_TEST_VERBOSE"))
        fprintf(stderr, "[%s] %s\n", (const char *)arg, msg);
}

#define POLICY_RPM "{\"name\":\"user-rpm\",\"key\":[\"oid\"],\"requests_per_minute\":10}"
#define POLICY_TPM "{\"name\":\"app-tpm\",\"key\":[\"app\"],\"tokens_per_minute\":1000}"
#define POLICY_QUOTA \
    "{\"name\":\"tenant-month\",\"key\":[\"tid\"],\"token_quota\":{\"period\":\"month\",\"tokens\":100000}}"

static bool replica_open(replica *r, const char *name, const char *on_error, bool client_clock, const char *policies)
{
    char json[2048];
    snprintf(json, sizeof json,
             "{\"store\":{\"type\":\"redis\",\"url\":\"redis://%s:%d\",\"timeout_ms\":%d,\"on_error\":\"%s\","
             "\"key_prefix\":\"t:\",\"reconnect_min_ms\":20,\"reconnect_max_ms\":200},\"policies\":[%s]}",
             client_clock ? "localhost" : "127.0.0.1", redis_port, TIMEOUT_MS, on_error, policies);
    ag_json_limits jl = { 32, 10000 };
    ag_json_status st;
    size_t off;
    cJSON *j = ag_json_parse_strict(json, strlen(json), &jl, &st, &off);
    ag_conf_err err;
    memset(r, 0, sizeof *r);
    r->name = name;
    if (ag_limit_config_parse(j, "rate_limits", &r->cfg, &err) != 0) {
        fprintf(stderr, "config: %s\n", err.msg);
        cJSON_Delete(j);
        return false;
    }
    cJSON_Delete(j);
    r->base = event_base_new();
    r->store = ag_limit_store_new(&r->cfg.store);
    ag_limiter_opts o = { .base = r->base, .log = log_line, .log_arg = (void *)name,
                          .clock = client_clock ? fake_clock : NULL, .redis_client_clock = client_clock };
    r->lim = ag_limiter_new(r->store, &o);
    return r->base && r->store && r->lim;
}

static void replica_close(replica *r)
{
    ag_limiter_free(r->lim);
    ag_limit_store_free(r->store);
    ag_limit_config_clear(&r->cfg);
    if (r->base)
        event_base_free(r->base);
}

static void spin(replica **rs, int n)
{
    for (int i = 0; i < n; i++)
        event_base_loop(rs[i]->base, EVLOOP_NONBLOCK);
}

static bool connected(replica *r)
{
    ag_limiter_stats st;
    ag_limiter_get_stats(r->lim, &st);
    return st.redis_connected;
}

/* Drives the loops until every replica is connected or the deadline passes. */
static bool wait_connected(replica **rs, int n, long long deadline)
{
    for (;;) {
        spin(rs, n);
        bool all = true;
        for (int i = 0; i < n; i++)
            all = all && connected(rs[i]);
        if (all)
            return true;
        if (mono_ms() > deadline)
            return false;
        pause_ms(2);
    }
}

/* One admission in flight. */
typedef struct pending {
    bool done;
    ag_limit_status status;
    ag_limit_result result;
    ag_limit_ticket *ticket;
    long long started, finished;
} pending;

static void on_done(ag_limit_ticket *t, const ag_limit_result *r, void *arg)
{
    pending *p = arg;
    p->done = true;
    p->result = *r;
    p->ticket = t;
    p->finished = mono_ms();
}

static ag_identity ident(const char *tid, const char *app, const char *oid)
{
    ag_identity id;
    memset(&id, 0, sizeof id);
    snprintf(id.tid, sizeof id.tid, "%s", tid);
    snprintf(id.app, sizeof id.app, "%s", app);
    snprintf(id.oid, sizeof id.oid, "%s", oid);
    return id;
}

static cJSON *body108; /* prompt 8 + max_tokens 100 */
static cJSON *body9;   /* prompt 8 + max_tokens 1 */

static void start_body(replica *r, const ag_identity *id, const cJSON *body, pending *p)
{
    memset(p, 0, sizeof *p);
    ag_limit_request req = { id, "gpt-4o", "chat/completions", body };
    p->started = mono_ms();
    p->status = ag_limiter_admit(r->lim, r->cfg.policies, &req, &p->result, &p->ticket, on_done, p);
    if (p->status == AG_LIMIT_DONE) {
        p->done = true;
        p->finished = p->started;
    }
}

static void start(replica *r, const ag_identity *id, pending *p)
{
    start_body(r, id, body108, p);
}

static bool wait_all(replica **rs, int n, pending *ps, int np, long long deadline)
{
    for (;;) {
        spin(rs, n);
        bool all = true;
        for (int i = 0; i < np; i++)
            all = all && ps[i].done;
        if (all)
            return true;
        if (mono_ms() > deadline)
            return false;
        pause_ms(1);
    }
}

static void test_shared_limit(replica *a, replica *b)
{
    replica *rs[2] = { a, b };
    ag_identity u = ident("tenant-1", "app-shared", "user-shared");
    /* 10 requests per minute per user, 9 tokens each (the app's 1000 tokens are not what limits).
     * Phase 1: A takes 3, then B takes 3. Phase 2: 24 concurrent admissions alternating A and B, all
     * in flight at once: only 4 more pass in total, as if one replica had seen them all. */
    pending ps[30];
    long long t0 = mono_ms();
    for (int i = 0; i < 6; i++) {
        start_body(i < 3 ? a : b, &u, body9, &ps[i]);
        CHECK(wait_all(rs, 2, ps, i + 1, mono_ms() + 5000));
    }
    for (int i = 6; i < 30; i++)
        start_body(i % 2 ? b : a, &u, body9, &ps[i]);
    CHECK(wait_all(rs, 2, ps, 30, mono_ms() + 5000));
    int admitted = 0, by_a = 0, by_b = 0, pending_count = 0;
    for (int i = 0; i < 30; i++) {
        if (ps[i].status == AG_LIMIT_PENDING)
            pending_count++;
        if (ps[i].result.verdict == AG_LIMIT_ADMITTED) {
            admitted++;
            if ((i >= 3 && i < 6) || (i >= 6 && i % 2))
                by_b++;
            else
                by_a++;
            CHECK(!ps[i].result.degraded);
        } else {
            CHECK_INT(ps[i].result.verdict, AG_LIMIT_RATE_LIMITED);
        }
        ag_limit_finish(ps[i].ticket, AG_LIMIT_USAGE_UNKNOWN);
    }
    long long elapsed = mono_ms() - t0;
    fprintf(stderr, "shared limit: %d admitted (%d via A, %d via B) of 30 in %lld ms\n", admitted, by_a, by_b, elapsed);
    CHECK_INT(pending_count, 30); /* every one went to Redis */
    CHECK(admitted >= 10 && admitted <= 10 + elapsed / 6000);
    CHECK(by_a >= 3);
    CHECK(by_b >= 3);
    /* the refusal carries the shared bucket's wait: one interval of 6 s at most */
    for (int i = 0; i < 30; i++)
        if (ps[i].result.verdict == AG_LIMIT_RATE_LIMITED) {
            CHECK_STR(ps[i].result.policy, "user-rpm");
            CHECK(ps[i].result.retry_after_ms > 0 && ps[i].result.retry_after_ms <= 6000);
            break;
        }
}

static void test_tokens_across(replica *a, replica *b)
{
    replica *rs[2] = { a, b };
    ag_identity u1 = ident("tenant-1", "app-tok", "user-t1"), u2 = ident("tenant-1", "app-tok", "user-t2");
    pending p;
    /* A reserves 108 of the app's 1000 tokens and reports 50 used */
    start(a, &u1, &p);
    CHECK(wait_all(rs, 2, &p, 1, mono_ms() + 2000));
    CHECK_INT(p.result.verdict, AG_LIMIT_ADMITTED);
    long long after_a = p.result.remaining_tokens;
    CHECK(after_a >= 1000 - 108 && after_a <= 1000 - 108 + 2);
    CHECK_INT(p.result.limit_tokens, 1000);
    ag_limit_finish(p.ticket, 50);
    /* B (another user, same app) sees A's actual 50 plus its own 108 */
    pending q;
    memset(&q, 0, sizeof q);
    long long deadline = mono_ms() + 2000;
    /* the adjust command and the next reserve travel on different connections: wait for A's reply */
    while (mono_ms() < deadline) {
        spin(rs, 2);
        pause_ms(2);
        if (mono_ms() > p.finished + 50)
            break;
    }
    start(b, &u2, &q);
    CHECK(wait_all(rs, 2, &q, 1, mono_ms() + 2000));
    CHECK_INT(q.result.verdict, AG_LIMIT_ADMITTED);
    /* 50 used by A + 108 reserved by B, plus what drained back at 1000/min (1 token per 60 ms) */
    long long drained = (q.finished - p.started) / 60 + 1;
    CHECK(q.result.remaining_tokens >= 1000 - 50 - 108);
    CHECK(q.result.remaining_tokens <= 1000 - 50 - 108 + drained);
    CHECK(q.result.remaining_tokens > after_a - 108); /* the refund of 58 reached the shared counter */
    CHECK_INT(q.result.quota_tokens, 100000);
    ag_limit_finish(q.ticket, 108);
}

/* Lua's calendar against C's, using the client clock (test mode): month rollover in a leap year. */
static void test_lua_calendar(void)
{
    replica c;
    CHECK(replica_open(&c, "clock", "fail_closed", true, POLICY_QUOTA));
    replica *rs[1] = { &c };
    CHECK(wait_connected(rs, 1, mono_ms() + 3000)); /* also resolves "localhost" through evdns */
    ag_identity u = ident("tenant-cal", "app-cal", "user-cal");
    long long feb29_last = (ag_days_from_civil(2024, 3, 1) * 86400000LL) - 1;
    fake_now = feb29_last - 999;
    pending p;
    start(&c, &u, &p);
    CHECK(wait_all(rs, 1, &p, 1, mono_ms() + 2000));
    CHECK_INT(p.result.verdict, AG_LIMIT_ADMITTED);
    CHECK_INT(p.result.quota_reset_ms, 1000); /* ends at Mar 1 00:00:00.000 UTC */
    CHECK_INT(p.result.quota_remaining, 100000 - 108);
    ag_limit_finish(p.ticket, 100000 - 50); /* nearly everything used this month: 50 left */
    /* adjust and next reserve share a connection here: FIFO order makes the adjust land first */
    fake_now = feb29_last;
    start(&c, &u, &p);
    CHECK(wait_all(rs, 1, &p, 1, mono_ms() + 2000));
    CHECK_INT(p.result.verdict, AG_LIMIT_QUOTA_EXCEEDED);
    CHECK_INT(p.result.retry_after_ms, 1);
    CHECK_INT(p.result.quota_remaining, 50);
    ag_limit_finish(p.ticket, 0);
    fake_now = feb29_last + 1; /* March: a fresh quota */
    start(&c, &u, &p);
    CHECK(wait_all(rs, 1, &p, 1, mono_ms() + 2000));
    CHECK_INT(p.result.verdict, AG_LIMIT_ADMITTED);
    CHECK_INT(p.result.quota_remaining, 100000 - 108);
    CHECK_INT(p.result.quota_reset_ms, 31LL * 86400000);
    ag_limit_finish(p.ticket, AG_LIMIT_USAGE_UNKNOWN);
    /* a sample of instants over several years: Lua's reset_ms equals C's window end */
    int mismatches = 0;
    for (long long day = ag_days_from_civil(2023, 12, 25); day < ag_days_from_civil(2028, 3, 5); day += 17) {
        fake_now = day * 86400000LL + (day % 24) * 3600000LL;
        char oid[32];
        snprintf(oid, sizeof oid, "cal-%lld", day);
        ag_identity v = ident(oid, "app-cal", oid); /* a fresh quota counter each time */
        start(&c, &v, &p);
        if (!wait_all(rs, 1, &p, 1, mono_ms() + 2000))
            break;
        long long end = ag_limit_window_end_ms(AG_LIMIT_PERIOD_MONTH, ag_limit_window_id(AG_LIMIT_PERIOD_MONTH, fake_now));
        if (p.result.quota_reset_ms != end - fake_now)
            mismatches++;
        ag_limit_finish(p.ticket, AG_LIMIT_USAGE_UNKNOWN);
    }
    CHECK_INT(mismatches, 0);
    replica_close(&c);
}

static void test_noscript(replica *a)
{
    replica *rs[1] = { a };
    redis_cmd("SCRIPT FLUSH");
    ag_identity u = ident("tenant-1", "app-1", "user-noscript");
    pending p;
    start(a, &u, &p);
    CHECK(wait_all(rs, 1, &p, 1, mono_ms() + 2000));
    CHECK_INT(p.result.verdict, AG_LIMIT_ADMITTED);
    CHECK(!p.result.degraded);
    ag_limit_finish(p.ticket, AG_LIMIT_USAGE_UNKNOWN);
    /* both scripts were loaded again: a refund (adjust script) and the next reserve keep their order */
    ag_identity v = ident("tenant-1", "app-noscript", "user-noscript2");
    start(a, &v, &p);
    CHECK(wait_all(rs, 1, &p, 1, mono_ms() + 2000));
    ag_limit_cancel(p.ticket); /* refund 108 */
    start(a, &v, &p);
    CHECK(wait_all(rs, 1, &p, 1, mono_ms() + 2000));
    CHECK_INT(p.result.remaining_tokens, 1000 - 108);
    ag_limit_finish(p.ticket, AG_LIMIT_USAGE_UNKNOWN);
}

/* The client goes away while the decision is pending: the callback never runs and the reservation
 * made in Redis is refunded. A limiter freed with a decision pending calls back with 503. */
static void test_cancel_and_free(replica *a)
{
    replica *rs[1] = { a };
    ag_identity u = ident("tenant-1", "app-cancel", "user-cancel");
    ag_limiter_stats before, now;
    ag_limiter_get_stats(a->lim, &before);
    pending p;
    start(a, &u, &p);
    CHECK_INT(p.status, AG_LIMIT_PENDING);
    CHECK(p.ticket != NULL);
    ag_limit_cancel(p.ticket);
    long long deadline = mono_ms() + 2000;
    do {
        spin(rs, 1);
        ag_limiter_get_stats(a->lim, &now);
        pause_ms(1);
    } while (now.admitted == before.admitted && mono_ms() < deadline);
    CHECK_INT(now.admitted, before.admitted + 1); /* Redis admitted it... */
    CHECK(!p.done);                              /* ...but nobody was called back */
    /* the refund was sent on this connection before the next reserve: the bucket is empty again */
    pending q;
    start(a, &u, &q);
    CHECK(wait_all(rs, 1, &q, 1, mono_ms() + 2000));
    CHECK_INT(q.result.verdict, AG_LIMIT_ADMITTED);
    CHECK_INT(q.result.remaining_tokens, 1000 - 108);
    ag_limit_finish(q.ticket, AG_LIMIT_USAGE_UNKNOWN);

    replica d;
    CHECK(replica_open(&d, "D", "fail_open", false, POLICY_RPM));
    replica *ds[1] = { &d };
    CHECK(wait_connected(ds, 1, mono_ms() + 3000));
    start(&d, &u, &p);
    CHECK_INT(p.status, AG_LIMIT_PENDING);
    replica_close(&d); /* calls back now */
    CHECK(p.done);
    CHECK_INT(p.result.verdict, AG_LIMIT_UNAVAILABLE);
    ag_limit_finish(p.ticket, 5); /* still valid: only frees */
}

/* Redis down (hung or dead): fail_open decides locally, fail_closed answers 503, within timeout_ms. */
static void check_outage(replica *open_r, replica *closed_r, const char *what, long long budget_ms)
{
    replica *rs[2] = { open_r, closed_r };
    ag_identity u = ident("tenant-1", "app-1", "user-outage");
    pending po, pc;
    start(open_r, &u, &po);
    start(closed_r, &u, &pc);
    long long deadline = mono_ms() + budget_ms + 2000;
    while (!(po.done && pc.done) && mono_ms() < deadline) {
        spin(rs, 2);
        pause_ms(1);
    }
    CHECK(po.done && pc.done);
    long long wait_open = po.finished - po.started, wait_closed = pc.finished - pc.started;
    fprintf(stderr, "%s: fail_open decided in %lld ms (%s, degraded=%d), fail_closed in %lld ms (%s)\n", what,
            wait_open, ag_limit_verdict_str(po.result.verdict), po.result.degraded, wait_closed,
            ag_limit_verdict_str(pc.result.verdict));
    CHECK_INT(po.result.verdict, AG_LIMIT_ADMITTED);
    CHECK(po.result.degraded);
    CHECK_INT(pc.result.verdict, AG_LIMIT_UNAVAILABLE);
    CHECK(wait_open <= budget_ms);
    CHECK(wait_closed <= budget_ms);
    ag_limit_response resp;
    ag_limit_build_response(&pc.result, &resp);
    CHECK_INT(resp.status, 503);
    ag_limit_finish(po.ticket, AG_LIMIT_USAGE_UNKNOWN);
    ag_limit_finish(pc.ticket, AG_LIMIT_USAGE_UNKNOWN);
    ag_limiter_stats st;
    ag_limiter_get_stats(open_r->lim, &st);
    CHECK(st.fallback_decisions >= 1);
    ag_limiter_get_stats(closed_r->lim, &st);
    CHECK(st.unavailable >= 1);
}

/* The counters' names in Redis are shared by every replica and kept across upgrades: the digest of
 * a key's preimage must not change. The preimage is rebuilt here byte by byte from its definition
 * (ratelimit.c make_key: "ag-rl", version 1, kind, quota period, the policy name, then each key
 * field in canonical order as a tag letter and its value, tid/oid/app/deployment lower-cased, every
 * string with its NUL) and the counter must exist under the name it gives. */
static void test_key_names(void)
{
    replica k;
    CHECK(replica_open(&k, "K", "fail_open", false,
                       "{\"name\":\"all-keys\",\"key\":[\"tid\",\"oid\",\"app\",\"name\",\"deployment\",\"operation\"],"
                       "\"requests_per_minute\":10}"));
    replica *rs[1] = { &k };
    CHECK(wait_connected(rs, 1, mono_ms() + 3000));
    ag_identity u = ident("Tenant-A", "App-B", "User-C");
    snprintf(u.name, sizeof u.name, "%s", "Svc Name");
    ag_limit_request req = { &u, "GPT-4o", "chat/completions", body108 };
    pending p;
    memset(&p, 0, sizeof p);
    p.status = ag_limiter_admit(k.lim, k.cfg.policies, &req, &p.result, &p.ticket, on_done, &p);
    p.done = p.status == AG_LIMIT_DONE;
    CHECK(wait_all(rs, 1, &p, 1, mono_ms() + 2000));
    CHECK_INT(p.result.verdict, AG_LIMIT_ADMITTED);
    ag_limit_finish(p.ticket, AG_LIMIT_USAGE_UNKNOWN);

    static const char pre[] = "ag-rl\x01\x00\x00" "all-keys\0" "ttenant-a\0" "ouser-c\0" "aapp-b\0" "nSvc Name\0"
                              "dgpt-4o\0" "pchat/completions\0";
    unsigned char md[32];
    unsigned int mdlen = 0;
    CHECK(EVP_Digest(pre, sizeof pre - 1, md, &mdlen, EVP_sha256(), NULL) == 1);
    char name[128] = "EXISTS t:all-keys:rpm:";
    for (int i = 0; i < AG_LIMIT_KEY_LEN; i++)
        snprintf(name + strlen(name), 3, "%02x", md[i]);
    struct timeval tv = { 1, 0 };
    redisContext *c = redisConnectWithTimeout("127.0.0.1", redis_port, tv);
    redisReply *r = c && !c->err ? redisCommand(c, name) : NULL;
    CHECK(r != NULL && r->type == REDIS_REPLY_INTEGER);
    if (r && r->type == REDIS_REPLY_INTEGER && r->integer != 1)
        fprintf(stderr, "  no counter named %s\n", name + 7);
    CHECK(r != NULL && r->integer == 1);
    if (r)
        freeReplyObject(r);
    if (c)
        redisFree(c);
    replica_close(&k);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    atexit(cleanup);
    redis_port = free_port();
    CHECK(redis_port > 0);
    if (!start_redis()) {
        CHECK(!"redis-server must be installed and start");
        return CHECK_DONE();
    }
    ag_json_limits jl = { 32, 1000 };
    ag_json_status jst;
    size_t off;
    const char *b = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":100}";
    body108 = ag_json_parse_strict(b, strlen(b), &jl, &jst, &off);
    const char *b9 = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":1}";
    body9 = ag_json_parse_strict(b9, strlen(b9), &jl, &jst, &off);

    replica a, bb, closed;
    CHECK(replica_open(&a, "A", "fail_open", false, POLICY_RPM "," POLICY_TPM "," POLICY_QUOTA));
    CHECK(replica_open(&bb, "B", "fail_open", false, POLICY_RPM "," POLICY_TPM "," POLICY_QUOTA));
    CHECK(replica_open(&closed, "C", "fail_closed", false, POLICY_RPM "," POLICY_TPM "," POLICY_QUOTA));
    replica *all[3] = { &a, &bb, &closed };
    CHECK(wait_connected(all, 3, mono_ms() + 3000));

    test_shared_limit(&a, &bb);
    test_tokens_across(&a, &bb);
    test_lua_calendar();
    test_cancel_and_free(&a);
    test_noscript(&a);
    test_key_names();
    ag_limiter_stats st;
    ag_limiter_get_stats(a.lim, &st);
    CHECK_INT(st.fallback_decisions, 0);
    CHECK_INT(st.redis.noscript, 1); /* the SCRIPT FLUSH above: EVALSHA answered NOSCRIPT once */
    CHECK_INT(st.redis.timeouts, 0);

    /* hung Redis: the watchdog gives up after timeout_ms */
    kill(redis_pid, SIGSTOP);
    check_outage(&a, &closed, "redis stopped (SIGSTOP)", TIMEOUT_MS + 100);
    kill(redis_pid, SIGCONT);
    CHECK(wait_connected(all, 3, mono_ms() + 5000));

    /* dead Redis: decisions without waiting */
    stop_redis(SIGKILL);
    check_outage(&a, &closed, "redis killed (SIGKILL)", TIMEOUT_MS + 100);
    /* while it stays down, later requests do not wait at all */
    pending p;
    ag_identity u = ident("tenant-1", "app-1", "user-down");
    start(&closed, &u, &p);
    CHECK_INT(p.status, AG_LIMIT_DONE);
    CHECK_INT(p.result.verdict, AG_LIMIT_UNAVAILABLE);
    ag_limit_finish(p.ticket, 0);

    /* restart on the same port: the limiters reconnect (backoff <= 200 ms) and use Redis again */
    CHECK(start_redis());
    CHECK(wait_connected(all, 3, mono_ms() + 5000));
    replica *one[1] = { &closed };
    start(&closed, &u, &p);
    CHECK(wait_all(one, 1, &p, 1, mono_ms() + 2000));
    CHECK_INT(p.result.verdict, AG_LIMIT_ADMITTED);
    CHECK(!p.result.degraded);
    ag_limit_finish(p.ticket, AG_LIMIT_USAGE_UNKNOWN);
    ag_limiter_get_stats(a.lim, &st);
    fprintf(stderr, "replica A: admitted %llu, rate_limited %llu, fallback %llu, lost adjustments %llu, "
            "redis timeouts %llu, disconnects %llu, connects %llu\n", st.admitted, st.rate_limited,
            st.fallback_decisions, st.lost_adjustments, st.redis.timeouts, st.redis.disconnects, st.redis.connects);
    CHECK_INT(st.redis.timeouts, 1);   /* the SIGSTOP outage */
    CHECK(st.redis.connects >= 3);     /* first connect, after SIGCONT, after the restart */

    replica_close(&a);
    replica_close(&bb);
    replica_close(&closed);
    cJSON_Delete(body108);
    cJSON_Delete(body9);
    stop_redis(SIGTERM);
    return CHECK_DONE();
}
