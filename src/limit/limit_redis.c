/* Per-worker asynchronous Redis client running the rate-limit scripts (see limit_redis.h). */
#include "aoai_guard/limit_redis.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>

/* ---- Lua ---------------------------------------------------------------------------------------
 * Shared prelude: the time (Redis TIME unless the caller passed one) and UTC calendar windows, the
 * same arithmetic as limit_counter.c. Lua numbers are doubles: every value stays below 2^53 because
 * limits are <= 10^9 and levels <= 60000 x 10^9. Numbers written to Redis are formatted with %.0f
 * (Lua's default %.14g would round large integers). */
#define LUA_PRELUDE                                                                                     \
    "local now = tonumber(ARGV[1])\n"                                                                   \
    "if now == 0 then\n"                                                                                \
    "  if redis.replicate_commands then pcall(redis.replicate_commands) end\n"                          \
    "  local t = redis.call('TIME')\n"                                                                  \
    "  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"                              \
    "end\n"                                                                                             \
    "local T = 60000\n"                                                                                 \
    "local DAY = 86400000\n"                                                                            \
    "local floor, ceil = math.floor, math.ceil\n"                                                       \
    "local function fdiv(a, b) return floor(a / b) end\n"                                               \
    "local function num(x) return string.format('%.0f', x) end\n"                                      \
    "local function civil(z)\n"                                                                         \
    "  z = z + 719468\n"                                                                                \
    "  local era = fdiv(z, 146097)\n"                                                                   \
    "  local doe = z - era * 146097\n"                                                                  \
    "  local yoe = fdiv(doe - fdiv(doe, 1460) + fdiv(doe, 36524) - fdiv(doe, 146096), 365)\n"           \
    "  local doy = doe - (365 * yoe + fdiv(yoe, 4) - fdiv(yoe, 100))\n"                                 \
    "  local mp = fdiv(5 * doy + 2, 153)\n"                                                             \
    "  local m = mp + 3\n"                                                                              \
    "  if mp >= 10 then m = mp - 9 end\n"                                                               \
    "  local y = yoe + era * 400\n"                                                                     \
    "  if m <= 2 then y = y + 1 end\n"                                                                  \
    "  return y, m\n"                                                                                   \
    "end\n"                                                                                             \
    "local function days_from_civil(y, m, d)\n"                                                         \
    "  if m <= 2 then y = y - 1 end\n"                                                                  \
    "  local era = fdiv(y, 400)\n"                                                                      \
    "  local yoe = y - era * 400\n"                                                                     \
    "  local mp = m + 9\n"                                                                              \
    "  if m > 2 then mp = m - 3 end\n"                                                                  \
    "  local doy = fdiv(153 * mp + 2, 5) + d - 1\n"                                                     \
    "  local doe = yoe * 365 + fdiv(yoe, 4) - fdiv(yoe, 100) + doy\n"                                   \
    "  return era * 146097 + doe - 719468\n"                                                            \
    "end\n"                                                                                             \
    "local function window(period, t)\n"                                                                \
    "  local days = fdiv(t, DAY)\n"                                                                     \
    "  if period == 0 then local id = fdiv(t, 3600000); return id, (id + 1) * 3600000 end\n"            \
    "  if period == 1 then return days, (days + 1) * DAY end\n"                                         \
    "  if period == 2 then local id = fdiv(days + 3, 7); return id, ((id + 1) * 7 - 3) * DAY end\n"     \
    "  local y, m = civil(days)\n"                                                                      \
    "  if period == 3 then\n"                                                                           \
    "    local ny, nm = y, m + 1\n"                                                                     \
    "    if nm > 12 then ny = y + 1; nm = 1 end\n"                                                      \
    "    return y * 12 + m - 1, days_from_civil(ny, nm, 1) * DAY\n"                                     \
    "  end\n"                                                                                           \
    "  return y, days_from_civil(y + 1, 1, 1) * DAY\n"                                                  \
    "end\n"                                                                                             \
    "local function gcra_load(key, L)\n"                                                                \
    "  local h = redis.call('HMGET', key, 'v', 't')\n"                                                  \
    "  local v = tonumber(h[1]) or 0\n"                                                                 \
    "  local t = tonumber(h[2]) or now\n"                                                               \
    "  if now > t then\n"                                                                               \
    "    if now - t >= ceil(v / L) then v = 0 else v = v - (now - t) * L end\n"                         \
    "    t = now\n"                                                                                     \
    "  end\n"                                                                                           \
    "  return v, t, h[1]\n"                                                                             \
    "end\n"                                                                                             \
    "local function gcra_store(key, v, t, L)\n"                                                         \
    "  redis.call('HSET', key, 'v', num(v), 't', num(t))\n"                                             \
    "  local ttl = (t - now) + ceil(v / L) + 1000\n"                                                    \
    "  redis.call('PEXPIRE', key, num(ttl))\n"                                                          \
    "end\n"                                                                                             \
    "local function quota_store(key, id, used, wend)\n"                                                 \
    "  redis.call('HSET', key, 'w', num(id), 'u', num(used))\n"                                         \
    "  redis.call('PEXPIRE', key, num(wend - now + 60000))\n"                                           \
    "end\n"

/* KEYS[i]: one counter per op. ARGV[1]: now (0: Redis TIME); then per op: kind, limit, cost, period.
 * Returns {admitted, now, then per op: refused, remaining, retry_after_ms, window, reset_ms}. */
static const char RESERVE_LUA[] =
    LUA_PRELUDE
    "local n = #KEYS\n"
    "local st, res = {}, {}\n"
    "local ok = true\n"
    "for i = 1, n do\n"
    "  local b = 1 + (i - 1) * 4\n"
    "  local kind, L, c, period = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), "
    "tonumber(ARGV[b + 4])\n"
    "  local refused, before, after, retry, win, reset = 0, 0, 0, 0, 0, 0\n"
    "  if kind == 2 then\n"
    "    local id, wend = window(period, now)\n"
    "    local h = redis.call('HMGET', KEYS[i], 'w', 'u')\n"
    "    local used = 0\n"
    "    if tonumber(h[1]) == id then used = tonumber(h[2]) or 0 end\n"
    "    win = id\n"
    "    reset = wend - now\n"
    "    before = math.max(L - used, 0)\n"
    "    if c > L - used then\n"
    "      refused = 1; retry = wend - now\n"
    "    else\n"
    "      st[i] = {2, id, used + c, wend}; after = L - used - c\n"
    "    end\n"
    "  else\n"
    "    if kind == 0 then c = 1 end\n"
    "    local v, t = gcra_load(KEYS[i], L)\n"
    "    local cap = T * L\n"
    "    local nv = v + c * T\n"
    "    if v < cap then before = floor((cap - v) / T) end\n"
    "    if c > L or nv > cap then\n"
    "      refused = 1\n"
    "      if c > L then retry = T else retry = math.max(ceil((nv - cap) / L), 1) end\n"
    "    else\n"
    "      st[i] = {kind, nv, t, L}; after = floor((cap - nv) / T)\n"
    "    end\n"
    "  end\n"
    "  if refused == 1 then ok = false end\n"
    "  res[i] = {refused, before, after, retry, win, reset}\n"
    "end\n"
    "local out = {0, now}\n"
    "if ok then out[1] = 1 end\n"
    "for i = 1, n do\n"
    "  local r = res[i]\n"
    "  out[#out + 1] = r[1]\n"
    "  if ok then out[#out + 1] = r[3] else out[#out + 1] = r[2] end\n"
    "  out[#out + 1] = r[4]\n"
    "  out[#out + 1] = r[5]\n"
    "  out[#out + 1] = r[6]\n"
    "  if ok then\n"
    "    local s = st[i]\n"
    "    if s[1] == 2 then quota_store(KEYS[i], s[2], s[3], s[4]) else gcra_store(KEYS[i], s[2], s[3], s[4]) end\n"
    "  end\n"
    "end\n"
    "return out\n";

/* KEYS[i]: one counter per op. ARGV[1]: now (0: TIME); then per op: kind, limit, delta, period,
 * window. Quota deltas apply only while that window is current. Returns 1. */
static const char ADJUST_LUA[] =
    LUA_PRELUDE
    "local MAXV = 60000 * 1000000000000\n"
    "for i = 1, #KEYS do\n"
    "  local b = 1 + (i - 1) * 5\n"
    "  local kind, L, d, period, w = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), "
    "tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])\n"
    "  if kind == 2 then\n"
    "    local id, wend = window(period, now)\n"
    "    if id == w then\n"
    "      local h = redis.call('HMGET', KEYS[i], 'w', 'u')\n"
    "      local used = 0\n"
    "      if tonumber(h[1]) == id then used = tonumber(h[2]) or 0 end\n"
    "      if h[1] or d > 0 then quota_store(KEYS[i], id, math.max(used + d, 0), wend) end\n"
    "    end\n"
    "  else\n"
    "    local v, t, existed = gcra_load(KEYS[i], L)\n"
    "    if existed or d > 0 then\n"
    "      v = v + d * T\n"
    "      if v < 0 then v = 0 end\n"
    "      if v > MAXV then v = MAXV end\n"
    "      gcra_store(KEYS[i], v, t, L)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return 1\n";

/* ---- client ------------------------------------------------------------------------------------ */

enum conn_state { R_IDLE = 0, R_RESOLVING, R_CONNECTING, R_READY };
enum internal_cmd { IC_AUTH = 0, IC_SELECT, IC_LOAD_RESERVE, IC_LOAD_ADJUST, IC_COUNT };

#define MAX_INFLIGHT 10000
#define KEY_TEXT_MAX 256

struct ag_limit_redis {
    struct event_base *base;
    char *host, *username, *password, *prefix;
    int port, db;
    long long timeout_ms, backoff_min, backoff_max, backoff;
    bool client_clock;
    void (*log)(void *arg, const char *msg);
    void *log_arg;

    redisAsyncContext *ac;
    enum conn_state state;
    bool closing;  /* we are freeing ac ourselves: ignore its disconnect callback */
    bool freeing;  /* ag_limit_redis_free in progress */
    int failures;  /* consecutive failed attempts since the last good connection */
    unsigned rnd;
    struct event *retry_ev, *watch_ev, *kill_ev;
    struct evdns_base *dns;
    struct evdns_getaddrinfo_request *dns_req;

    ag_limit_redis_req internal[IC_COUNT];
    ag_limit_redis_req *head, *tail; /* in flight, oldest first */
    size_t inflight;

    char sha[2][41]; /* reserve, adjust */
    const char **argv;
    size_t *argl;
    size_t argcap;
    char *text;
    size_t textcap;

    ag_limit_redis_stats stats;
};

static void rlog(ag_limit_redis *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void rlog(ag_limit_redis *r, const char *fmt, ...)
{
    if (!r->log)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    r->log(r->log_arg, msg);
}

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

const char *ag_limit_redis_script(bool adjust)
{
    return adjust ? ADJUST_LUA : RESERVE_LUA;
}

static void sha1_hex(const char *s, char out[41])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    out[0] = '\0';
    if (EVP_Digest(s, strlen(s), md, &len, EVP_sha1(), NULL) != 1 || len != 20)
        return;
    for (unsigned i = 0; i < len; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static void list_link(ag_limit_redis *r, ag_limit_redis_req *q)
{
    q->owner_ = r;
    q->sent_ms_ = mono_ms();
    q->next_ = NULL;
    q->prev_ = r->tail;
    if (r->tail)
        r->tail->next_ = q;
    else
        r->head = q;
    r->tail = q;
    r->inflight++;
    if (!evtimer_pending(r->watch_ev, NULL)) {
        struct timeval tv = { (time_t)(r->timeout_ms / 1000), (suseconds_t)((r->timeout_ms % 1000) * 1000) };
        evtimer_add(r->watch_ev, &tv);
    }
}

static void list_unlink(ag_limit_redis *r, ag_limit_redis_req *q)
{
    if (q->prev_)
        q->prev_->next_ = q->next_;
    else if (r->head == q)
        r->head = q->next_;
    else
        return; /* not linked */
    if (q->next_)
        q->next_->prev_ = q->prev_;
    else
        r->tail = q->prev_;
    q->prev_ = q->next_ = NULL;
    r->inflight--;
}

static bool is_internal(const ag_limit_redis *r, const ag_limit_redis_req *q)
{
    return q >= &r->internal[0] && q < &r->internal[IC_COUNT];
}

/* Makes room in the argument scratch for nargs arguments and textlen bytes of text. */
static int scratch_reserve(ag_limit_redis *r, size_t nargs, size_t textlen)
{
    if (nargs > r->argcap) {
        const char **a = realloc(r->argv, nargs * sizeof *a);
        if (!a)
            return -1;
        r->argv = a;
        size_t *l = realloc(r->argl, nargs * sizeof *l);
        if (!l)
            return -1;
        r->argl = l;
        r->argcap = nargs;
    }
    if (textlen > r->textcap) {
        char *t = realloc(r->text, textlen);
        if (!t)
            return -1;
        r->text = t;
        r->textcap = textlen;
    }
    return 0;
}

static const char *kind_tag(const ag_limit_op *op)
{
    if (op->kind == AG_LIMIT_KIND_RPM)
        return "rpm";
    if (op->kind == AG_LIMIT_KIND_TPM)
        return "tpm";
    return ag_limit_period_str(op->period);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* Formats and queues one request as EVALSHA (or EVAL). 0: queued; -1: hiredis refused. */
static int send_request(ag_limit_redis *r, ag_limit_redis_req *q, bool eval)
{
    size_t per = q->adjust ? 5 : 4;
    size_t nargs = 4 + q->nops + q->nops * per;
    size_t textlen = 32 + q->nops * (KEY_TEXT_MAX + per * 24);
    if (!r->ac || scratch_reserve(r, nargs, textlen) != 0)
        return -1;
    char *t = r->text;
    size_t used = 0, a = 0;
#define ARG_TEXT(...)                                                                          \
    do {                                                                                       \
        int n_ = snprintf(t + used, r->textcap - used, __VA_ARGS__);                           \
        if (n_ < 0 || (size_t)n_ >= r->textcap - used)                                         \
            return -1;                                                                         \
        r->argv[a] = t + used;                                                                 \
        r->argl[a++] = (size_t)n_;                                                             \
        used += (size_t)n_ + 1;                                                                \
    } while (0)
    if (eval) {
        r->argv[a] = "EVAL";
        r->argl[a++] = 4;
        const char *src = ag_limit_redis_script(q->adjust);
        r->argv[a] = src;
        r->argl[a++] = strlen(src);
    } else {
        r->argv[a] = "EVALSHA";
        r->argl[a++] = 7;
        r->argv[a] = r->sha[q->adjust ? 1 : 0];
        r->argl[a++] = 40;
    }
    ARG_TEXT("%zu", q->nops);
    for (size_t i = 0; i < q->nops; i++) {
        const ag_limit_op *op = &q->ops[i];
        char hex[2 * AG_LIMIT_KEY_LEN + 1];
        for (size_t k = 0; k < AG_LIMIT_KEY_LEN; k++)
            snprintf(hex + 2 * k, 3, "%02x", op->key[k]);
        ARG_TEXT("%s%s:%s:%s", r->prefix, op->policy, kind_tag(op), hex);
    }
    ARG_TEXT("%lld", r->client_clock ? (q->client_now_ms > 0 ? q->client_now_ms : 1) : 0LL);
    for (size_t i = 0; i < q->nops; i++) {
        const ag_limit_op *op = &q->ops[i];
        ARG_TEXT("%d", (int)op->kind);
        ARG_TEXT("%lld", op->limit);
        ARG_TEXT("%lld", q->adjust ? op->delta : op->cost);
        ARG_TEXT("%d", (int)op->period);
        if (q->adjust)
            ARG_TEXT("%lld", op->window);
    }
#undef ARG_TEXT
    if (redisAsyncCommandArgv(r->ac, on_reply, q, (int)a, r->argv, r->argl) != REDIS_OK)
        return -1;
    list_link(r, q);
    return 0;
}

static int send_internal(ag_limit_redis *r, enum internal_cmd which, int argc, const char **argv)
{
    ag_limit_redis_req *q = &r->internal[which];
    size_t lens[4];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    if (redisAsyncCommandArgv(r->ac, on_reply, q, argc, argv, lens) != REDIS_OK)
        return -1;
    list_link(r, q);
    return 0;
}

static bool is_linked(const ag_limit_redis *r, const ag_limit_redis_req *q)
{
    return q->prev_ || q->next_ || r->head == q;
}

/* SCRIPT LOAD both scripts (on connect, and again after a NOSCRIPT so later EVALSHAs succeed). */
static void load_scripts(ag_limit_redis *r)
{
    const char *l1[3] = { "SCRIPT", "LOAD", RESERVE_LUA };
    const char *l2[3] = { "SCRIPT", "LOAD", ADJUST_LUA };
    if (!is_linked(r, &r->internal[IC_LOAD_RESERVE]))
        send_internal(r, IC_LOAD_RESERVE, 3, l1);
    if (!is_linked(r, &r->internal[IC_LOAD_ADJUST]))
        send_internal(r, IC_LOAD_ADJUST, 3, l2);
}

static void schedule_reconnect(ag_limit_redis *r)
{
    if (r->freeing || evtimer_pending(r->retry_ev, NULL))
        return;
    long long delay = r->backoff;
    /* +-20% jitter so that workers and replicas do not reconnect in lockstep */
    r->rnd = r->rnd * 1103515245u + 12345u;
    long long span = delay / 5;
    if (span > 0)
        delay += (long long)((r->rnd >> 8) % (unsigned)(2 * span + 1)) - span;
    if (delay < 1)
        delay = 1;
    r->backoff = r->backoff * 2 > r->backoff_max ? r->backoff_max : r->backoff * 2;
    struct timeval tv = { (time_t)(delay / 1000), (suseconds_t)((delay % 1000) * 1000) };
    evtimer_add(r->retry_ev, &tv);
}

/* Drops the connection now (not from inside a hiredis callback): every request in flight
 * completes with an error, then a reconnect is scheduled. */
static void drop_connection(ag_limit_redis *r)
{
    if (r->ac) {
        redisAsyncContext *ac = r->ac;
        r->closing = true;
        redisAsyncFree(ac); /* runs on_reply(NULL) for everything pending */
        r->ac = NULL;
        r->closing = false;
    }
    r->state = R_IDLE;
    r->failures++;
    schedule_reconnect(r);
}

static void complete(ag_limit_redis *r, ag_limit_redis_req *q, const redisReply *rep)
{
    q->status = AG_LIMIT_REDIS_ERROR;
    q->admitted = false;
    if (rep && q->adjust && rep->type == REDIS_REPLY_INTEGER) {
        q->status = AG_LIMIT_REDIS_OK;
    } else if (rep && !q->adjust && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 + 5 * q->nops) {
        bool ints = true;
        for (size_t i = 0; i < rep->elements; i++)
            if (rep->element[i]->type != REDIS_REPLY_INTEGER)
                ints = false;
        if (ints) {
            q->status = AG_LIMIT_REDIS_OK;
            q->admitted = rep->element[0]->integer == 1;
            q->server_now_ms = rep->element[1]->integer;
            for (size_t i = 0; i < q->nops; i++) {
                redisReply **e = &rep->element[2 + 5 * i];
                ag_limit_op *op = &q->ops[i];
                op->refused = e[0]->integer != 0;
                op->remaining = e[1]->integer;
                op->retry_after_ms = e[2]->integer;
                op->window = e[3]->integer;
                op->reset_ms = e[4]->integer;
            }
        }
    }
    if (q->status != AG_LIMIT_REDIS_OK) {
        r->stats.errors++;
        if (rep && rep->type == REDIS_REPLY_ERROR)
            rlog(r, "redis rate-limit script failed: %.200s", rep->str);
    }
    q->done(q);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    ag_limit_redis_req *q = privdata;
    ag_limit_redis *r = q->owner_;
    const redisReply *rep = reply;
    list_unlink(r, q);
    if (is_internal(r, q)) {
        if (rep && rep->type == REDIS_REPLY_ERROR) {
            rlog(r, "redis %s failed: %.200s", q == &r->internal[IC_AUTH] ? "AUTH" :
                 q == &r->internal[IC_SELECT] ? "SELECT" : "SCRIPT LOAD", rep->str);
            if (q == &r->internal[IC_AUTH] || q == &r->internal[IC_SELECT])
                event_active(r->kill_ev, 0, 0); /* unusable connection: drop it outside this callback */
        }
        return;
    }
    if (rep && rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0 && !q->eval_retry_ &&
        r->ac == ac && !r->closing) {
        r->stats.noscript++;
        q->eval_retry_ = true;
        load_scripts(r);
        if (send_request(r, q, true) == 0)
            return;
        rep = NULL;
    }
    complete(r, q, rep);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    ag_limit_redis *r = ac->data;
    if (status != REDIS_OK) {
        rlog(r, "redis connect to %s:%d failed: %s", r->host, r->port, ac->errstr ? ac->errstr : "?");
        r->ac = NULL; /* hiredis frees it after this callback, failing what was queued */
        r->state = R_IDLE;
        r->stats.disconnects++;
        r->failures++;
        schedule_reconnect(r);
        return;
    }
    r->state = R_READY;
    r->failures = 0;
    r->backoff = r->backoff_min;
    r->stats.connects++;
    rlog(r, "redis connected to %s:%d", r->host, r->port);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    ag_limit_redis *r = ac->data;
    if (r->closing || r->ac != ac)
        return;
    rlog(r, "redis connection to %s:%d lost: %s", r->host, r->port, ac->errstr ? ac->errstr : "closed");
    r->ac = NULL;
    r->state = R_IDLE;
    r->stats.disconnects++;
    r->failures = 1; /* reconnect soon, but do not queue requests on the attempt */
    schedule_reconnect(r);
}

static void connect_to(ag_limit_redis *r, const char *ip)
{
    redisAsyncContext *ac = redisAsyncConnect(ip, r->port);
    if (!ac || ac->err) {
        rlog(r, "redis connect to %s:%d failed: %s", r->host, r->port, ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        r->state = R_IDLE;
        r->stats.disconnects++;
        r->failures++;
        schedule_reconnect(r);
        return;
    }
    ac->data = r;
    if (redisLibeventAttach(ac, r->base) != REDIS_OK) {
        redisAsyncFree(ac);
        r->state = R_IDLE;
        r->failures++;
        schedule_reconnect(r);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    r->ac = ac;
    r->state = R_CONNECTING;
    if (r->password) {
        const char *argv[3] = { "AUTH", r->username ? r->username : r->password, r->password };
        send_internal(r, IC_AUTH, r->username ? 3 : 2, argv);
    }
    if (r->db) {
        char db[16];
        snprintf(db, sizeof db, "%d", r->db);
        const char *argv[2] = { "SELECT", db };
        send_internal(r, IC_SELECT, 2, argv);
    }
    load_scripts(r);
}

static void on_resolved(int result, struct evutil_addrinfo *res, void *arg)
{
    ag_limit_redis *r = arg;
    r->dns_req = NULL;
    if (result == EVUTIL_EAI_CANCEL || r->freeing) {
        if (res)
            evutil_freeaddrinfo(res);
        return;
    }
    char ip[INET6_ADDRSTRLEN] = "";
    for (struct evutil_addrinfo *ai = res; ai && !ip[0]; ai = ai->ai_next) {
        if (ai->ai_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)ai->ai_addr)->sin_addr, ip, sizeof ip);
        else if (ai->ai_family == AF_INET6)
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr, ip, sizeof ip);
    }
    if (res)
        evutil_freeaddrinfo(res);
    if (result != 0 || !ip[0]) {
        rlog(r, "redis host %s does not resolve: %s", r->host, result ? evutil_gai_strerror(result) : "no address");
        r->state = R_IDLE;
        r->stats.disconnects++;
        r->failures++;
        schedule_reconnect(r);
        return;
    }
    connect_to(r, ip);
}

static void start_connect(ag_limit_redis *r)
{
    unsigned char buf[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, r->host, buf) == 1 || inet_pton(AF_INET6, r->host, buf) == 1) {
        connect_to(r, r->host);
        return;
    }
    if (!r->dns)
        r->dns = evdns_base_new(r->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
    if (!r->dns) {
        rlog(r, "redis: cannot start a DNS resolver for %s", r->host);
        r->failures++;
        schedule_reconnect(r);
        return;
    }
    struct evutil_addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    r->state = R_RESOLVING;
    struct evdns_getaddrinfo_request *req = evdns_getaddrinfo(r->dns, r->host, NULL, &hints, on_resolved, r);
    if (r->state == R_RESOLVING) /* not answered synchronously (e.g. from /etc/hosts) */
        r->dns_req = req;
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    ag_limit_redis *r = arg;
    if (r->state == R_IDLE && !r->ac)
        start_connect(r);
}

static void on_watch(evutil_socket_t fd, short what, void *arg)
{
    ag_limit_redis *r = arg;
    if (!r->head)
        return;
    long long age = mono_ms() - r->head->sent_ms_;
    if (age >= r->timeout_ms) {
        r->stats.timeouts++;
        rlog(r, "redis %s:%d did not answer within %lld ms: dropping the connection", r->host, r->port,
             r->timeout_ms);
        drop_connection(r);
        return;
    }
    long long wait = r->timeout_ms - age;
    struct timeval tv = { (time_t)(wait / 1000), (suseconds_t)((wait % 1000) * 1000) };
    evtimer_add(r->watch_ev, &tv);
}

static void on_kill(evutil_socket_t fd, short what, void *arg)
{
    drop_connection(arg);
}

ag_limit_redis *ag_limit_redis_new(struct event_base *base, const ag_limit_redis_config *cfg)
{
    ag_limit_redis *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->base = base;
    r->host = strdup(cfg->host ? cfg->host : "127.0.0.1");
    r->username = cfg->username ? strdup(cfg->username) : NULL;
    r->password = cfg->password ? strdup(cfg->password) : NULL;
    r->prefix = strdup(cfg->key_prefix ? cfg->key_prefix : "");
    r->port = cfg->port;
    r->db = cfg->db;
    r->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 50;
    r->backoff_min = cfg->reconnect_min_ms > 0 ? cfg->reconnect_min_ms : 100;
    r->backoff_max = cfg->reconnect_max_ms >= r->backoff_min ? cfg->reconnect_max_ms : r->backoff_min;
    r->backoff = r->backoff_min;
    r->client_clock = cfg->client_clock;
    r->log = cfg->log;
    r->log_arg = cfg->log_arg;
    r->rnd = (unsigned)mono_ms() ^ (unsigned)(uintptr_t)r;
    for (int i = 0; i < IC_COUNT; i++)
        r->internal[i].owner_ = r;
    sha1_hex(RESERVE_LUA, r->sha[0]);
    sha1_hex(ADJUST_LUA, r->sha[1]);
    r->retry_ev = evtimer_new(base, on_retry, r);
    r->watch_ev = evtimer_new(base, on_watch, r);
    r->kill_ev = evtimer_new(base, on_kill, r);
    if (!r->host || !r->prefix || (cfg->username && !r->username) || (cfg->password && !r->password) ||
        !r->retry_ev || !r->watch_ev || !r->kill_ev || !r->sha[0][0] || !r->sha[1][0]) {
        ag_limit_redis_free(r);
        return NULL;
    }
    start_connect(r);
    return r;
}

void ag_limit_redis_free(ag_limit_redis *r)
{
    if (!r)
        return;
    r->freeing = true;
    if (r->dns_req) {
        evdns_getaddrinfo_cancel(r->dns_req);
        r->dns_req = NULL;
    }
    if (r->ac) {
        redisAsyncContext *ac = r->ac;
        r->closing = true;
        redisAsyncFree(ac);
        r->ac = NULL;
    }
    if (r->dns)
        evdns_base_free(r->dns, 1);
    if (r->retry_ev)
        event_free(r->retry_ev);
    if (r->watch_ev)
        event_free(r->watch_ev);
    if (r->kill_ev)
        event_free(r->kill_ev);
    free(r->host);
    free(r->username);
    free(r->password);
    free(r->prefix);
    free(r->argv);
    free(r->argl);
    free(r->text);
    free(r);
}

int ag_limit_redis_submit(ag_limit_redis *r, ag_limit_redis_req *q)
{
    if (r->freeing || r->closing || !r->ac || r->inflight >= MAX_INFLIGHT)
        return -1;
    if (!(r->state == R_READY || (r->state == R_CONNECTING && r->failures == 0)))
        return -1;
    q->owner_ = r;
    q->eval_retry_ = false;
    q->prev_ = q->next_ = NULL;
    if (send_request(r, q, false) != 0)
        return -1;
    r->stats.sent++;
    return 0;
}

bool ag_limit_redis_connected(const ag_limit_redis *r)
{
    return r->state == R_READY && r->ac != NULL;
}

void ag_limit_redis_get_stats(const ag_limit_redis *r, ag_limit_redis_stats *out)
{
    *out = r->stats;
    out->connected = ag_limit_redis_connected(r);
}
