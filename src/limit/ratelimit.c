/* The admit stage: policy matching, reservation in the store, reconciliation, responses
 * (see ratelimit.h). */
#include "aoai_guard/ratelimit.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "aoai_guard/headbuf.h"
#include "aoai_guard/token_estimate.h"

struct ag_limit_store {
    ag_limit_store_config cfg; /* deep copy */
    ag_memstore *mem;
};

typedef enum ticket_state { T_PENDING = 0, T_DECIDED, T_ADJUSTING } ticket_state;

struct ag_limit_ticket {
    ag_limiter *lim;           /* NULL once orphaned by ag_limiter_free */
    ag_limit_done_fn cb;
    void *arg;
    ticket_state state;
    bool cancelled;
    bool admitted;
    bool local;                /* reserved in the memory table (store or fallback) */
    ag_limit_ticket *prev, *next; /* the limiter's outstanding list */
    ag_limit_result result;
    ag_limit_redis_req req;
    size_t nops;
    ag_limit_op ops[];
};

/* The last counter keys made, by their preimage: a worker's callers are mostly the same few
 * identities, and each key costs two SHA-256 compressions. Direct-mapped on a hash of the
 * preimage; a hit is a whole-preimage comparison, so the memo can only return the key the digest
 * would make. */
#define KEY_MEMO_SLOTS 32
#define KEY_MEMO_PREIMAGE 192 /* longer preimages are not kept (the digest runs) */

typedef struct key_memo {
    size_t len; /* 0: empty */
    unsigned char preimage[KEY_MEMO_PREIMAGE];
    unsigned char key[AG_LIMIT_KEY_LEN];
} key_memo;

struct ag_limiter {
    ag_limit_store *store;
    ag_limit_redis *redis;     /* NULL with the memory store */
    ag_limit_clock_fn clock;
    void *clock_arg;
    ag_limit_log_fn log;
    void *log_arg;
    EVP_MD_CTX *md_ctx;
    EVP_MD *sha256;
    ag_limit_ticket *tickets;  /* outstanding */
    bool freeing;
    bool degraded_logged;
    ag_limiter_stats stats;
    key_memo memo[KEY_MEMO_SLOTS];
};

static void llog(ag_limiter *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void llog(ag_limiter *l, const char *fmt, ...)
{
    if (!l->log)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    l->log(l->log_arg, msg);
}

static long long now_ms(const ag_limiter *l)
{
    if (l->clock)
        return l->clock(l->clock_arg);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- store ---- */

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

ag_limit_store *ag_limit_store_new(const ag_limit_store_config *cfg)
{
    ag_limit_store *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->cfg = *cfg;
    s->cfg.url = dup_or_null(cfg->url);
    s->cfg.host = dup_or_null(cfg->host);
    s->cfg.username = dup_or_null(cfg->username);
    s->cfg.password = dup_or_null(cfg->password);
    s->cfg.key_prefix = dup_or_null(cfg->key_prefix ? cfg->key_prefix : "aoai-guard:rl:");
    long long max_keys = cfg->max_keys > 0 ? cfg->max_keys : 100000;
    long long shards = cfg->shards > 0 ? cfg->shards : 64;
    s->mem = ag_memstore_new((size_t)max_keys, (unsigned)shards);
    if (!s->mem || (cfg->url && !s->cfg.url) || (cfg->host && !s->cfg.host) ||
        (cfg->username && !s->cfg.username) || (cfg->password && !s->cfg.password) || !s->cfg.key_prefix) {
        ag_limit_store_free(s);
        return NULL;
    }
    return s;
}

void ag_limit_store_free(ag_limit_store *s)
{
    if (!s)
        return;
    ag_memstore_free(s->mem);
    free(s->cfg.url);
    free(s->cfg.host);
    free(s->cfg.username);
    free(s->cfg.password);
    free(s->cfg.key_prefix);
    free(s);
}

const ag_limit_store_config *ag_limit_store_config_of(const ag_limit_store *s)
{
    return &s->cfg;
}

size_t ag_limit_store_sweep(ag_limit_store *s, long long now)
{
    return ag_memstore_sweep(s->mem, now);
}

void ag_limit_store_get_stats(ag_limit_store *s, ag_memstore_stats *out)
{
    ag_memstore_get_stats(s->mem, out);
}

/* ---- limiter ---- */

static void redis_log(void *arg, const char *msg)
{
    ag_limiter *l = arg;
    if (l->log)
        l->log(l->log_arg, msg);
}

ag_limiter *ag_limiter_new(ag_limit_store *s, const ag_limiter_opts *opts)
{
    ag_limiter *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->store = s;
    if (opts) {
        l->clock = opts->clock;
        l->clock_arg = opts->clock_arg;
        l->log = opts->log;
        l->log_arg = opts->log_arg;
    }
    l->md_ctx = EVP_MD_CTX_new();
    l->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (!l->md_ctx || !l->sha256)
        goto fail;
    if (s->cfg.type == AG_LIMIT_STORE_REDIS) {
        if (!opts || !opts->base)
            goto fail;
        ag_limit_redis_config rc = {
            .host = s->cfg.host, .port = s->cfg.port, .db = s->cfg.db, .username = s->cfg.username,
            .password = s->cfg.password, .key_prefix = s->cfg.key_prefix, .timeout_ms = s->cfg.timeout_ms,
            .reconnect_min_ms = s->cfg.reconnect_min_ms, .reconnect_max_ms = s->cfg.reconnect_max_ms,
            .client_clock = opts->redis_client_clock, .log = redis_log, .log_arg = l,
        };
        l->redis = ag_limit_redis_new(opts->base, &rc);
        if (!l->redis)
            goto fail;
    }
    return l;
fail:
    EVP_MD_CTX_free(l->md_ctx);
    EVP_MD_free(l->sha256);
    free(l);
    return NULL;
}

static void ticket_link(ag_limiter *l, ag_limit_ticket *t)
{
    t->prev = NULL;
    t->next = l->tickets;
    if (l->tickets)
        l->tickets->prev = t;
    l->tickets = t;
}

static void ticket_free(ag_limit_ticket *t)
{
    ag_limiter *l = t->lim;
    if (l) {
        if (t->prev)
            t->prev->next = t->next;
        else if (l->tickets == t)
            l->tickets = t->next;
        if (t->next)
            t->next->prev = t->prev;
    }
    free(t);
}

/* Unlinks an outstanding ticket and detaches it from its limiter without freeing it. */
static void ticket_detach(ag_limit_ticket *t)
{
    ag_limiter *l = t->lim;
    if (l) {
        if (t->prev)
            t->prev->next = t->next;
        else if (l->tickets == t)
            l->tickets = t->next;
        if (t->next)
            t->next->prev = t->prev;
    }
    t->prev = t->next = NULL;
    t->lim = NULL;
}

void ag_limiter_free(ag_limiter *l)
{
    if (!l)
        return;
    l->freeing = true;
    /* pending requests complete (UNAVAILABLE), adjustments in flight are freed */
    ag_limit_redis_free(l->redis);
    l->redis = NULL;
    for (ag_limit_ticket *t = l->tickets, *next; t; t = next) {
        next = t->next;
        t->lim = NULL;
        t->prev = t->next = NULL;
    }
    EVP_MD_CTX_free(l->md_ctx);
    EVP_MD_free(l->sha256);
    free(l);
}

void ag_limiter_get_stats(const ag_limiter *l, ag_limiter_stats *out)
{
    *out = l->stats;
    out->redis_connected = l->redis ? ag_limit_redis_connected(l->redis) : false;
    memset(&out->redis, 0, sizeof out->redis);
    if (l->redis)
        ag_limit_redis_get_stats(l->redis, &out->redis);
}

/* ---- keys ---- */

/* The key's preimage on its way into the digest: bytes gather in buf; only a preimage longer than
 * buf goes to the digest in parts (started when buf first fills), an ordinary one is digested (or
 * found in the memo) whole at the end. */
typedef struct key_writer {
    ag_limiter *l;
    bool digesting; /* buf overflowed: the digest has started */
    size_t n;
    unsigned char buf[512];
} key_writer;

static void kw_byte(key_writer *w, unsigned char c)
{
    if (w->n == sizeof w->buf) {
        if (!w->digesting)
            EVP_DigestInit_ex2(w->l->md_ctx, w->l->sha256, NULL);
        w->digesting = true;
        EVP_DigestUpdate(w->l->md_ctx, w->buf, w->n);
        w->n = 0;
    }
    w->buf[w->n++] = c;
}

/* s and its NUL ("" for NULL), lower-cased when asked. */
static void kw_str(key_writer *w, const char *s, bool lower)
{
    for (s = s ? s : "";; s++) {
        unsigned char c = (unsigned char)*s;
        kw_byte(w, lower && c >= 'A' && c <= 'Z' ? (unsigned char)(c - 'A' + 'a') : c);
        if (!c)
            return;
    }
}

static void kw_field(key_writer *w, bool on, char tag, const char *s, bool lower)
{
    if (on) {
        kw_byte(w, (unsigned char)tag);
        kw_str(w, s, lower);
    }
}

/* The digest of what w holds (and took before), its first AG_LIMIT_KEY_LEN bytes into out. */
static void kw_digest(key_writer *w, unsigned char out[AG_LIMIT_KEY_LEN])
{
    if (!w->digesting)
        EVP_DigestInit_ex2(w->l->md_ctx, w->l->sha256, NULL);
    EVP_DigestUpdate(w->l->md_ctx, w->buf, w->n);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_DigestFinal_ex(w->l->md_ctx, md, &len);
    memcpy(out, md, AG_LIMIT_KEY_LEN);
}

/* The key of the preimage w holds whole: from the memo, or digested and remembered. */
static void kw_memo_key(key_writer *w, unsigned char out[AG_LIMIT_KEY_LEN])
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a: it only picks the slot */
    for (size_t i = 0; i < w->n; i++)
        h = (h ^ w->buf[i]) * 0x100000001b3ull;
    key_memo *m = &w->l->memo[(h ^ (h >> 32)) % KEY_MEMO_SLOTS];
    if (m->len == w->n && memcmp(m->preimage, w->buf, w->n) == 0) {
        memcpy(out, m->key, AG_LIMIT_KEY_LEN);
        return;
    }
    kw_digest(w, out);
    memcpy(m->preimage, w->buf, w->n);
    memcpy(m->key, out, AG_LIMIT_KEY_LEN);
    m->len = w->n;
}

/* Counter identity: SHA-256 of (version, policy, kind, period, key fields in canonical order). The
 * digests are the counters' names in Redis, shared by every replica and kept across upgrades: the
 * preimage's bytes must not change. */
static void make_key(ag_limiter *l, const ag_limit_policy *p, ag_limit_kind kind, const ag_limit_request *req,
                     unsigned char out[AG_LIMIT_KEY_LEN])
{
    key_writer w = {.l = l, .digesting = false, .n = 0};
    static const unsigned char version[] = "ag-rl";
    for (size_t i = 0; i < sizeof version - 1; i++)
        kw_byte(&w, version[i]);
    kw_byte(&w, 1);
    kw_byte(&w, (unsigned char)kind);
    kw_byte(&w, (unsigned char)(kind == AG_LIMIT_KIND_QUOTA ? p->quota_period : 0));
    kw_str(&w, p->name, false);
    const ag_identity *id = req->id;
    kw_field(&w, p->key_fields & AG_LIMIT_KEY_TID, 't', id ? id->tid : "", true);
    kw_field(&w, p->key_fields & AG_LIMIT_KEY_OID, 'o', id ? id->oid : "", true);
    kw_field(&w, p->key_fields & AG_LIMIT_KEY_APP, 'a', id ? id->app : "", true);
    kw_field(&w, p->key_fields & AG_LIMIT_KEY_NAME, 'n', id ? id->name : "", false);
    kw_field(&w, p->key_fields & AG_LIMIT_KEY_DEPLOYMENT, 'd', req->deployment, true);
    kw_field(&w, p->key_fields & AG_LIMIT_KEY_OPERATION, 'p', req->operation, false);
    if (!w.digesting && w.n <= KEY_MEMO_PREIMAGE)
        kw_memo_key(&w, out);
    else
        kw_digest(&w, out);
}

/* ---- results ---- */

static void fill_result(const ag_limit_op *ops, size_t n, bool admitted, ag_limit_result *r)
{
    bool degraded = r->degraded;
    memset(r, 0, sizeof *r);
    r->degraded = degraded;
    r->verdict = AG_LIMIT_ADMITTED;
    const ag_limit_op *refuser = NULL;
    for (size_t i = 0; i < n; i++) {
        const ag_limit_op *op = &ops[i];
        if (op->kind != AG_LIMIT_KIND_RPM && op->cost > r->estimate)
            r->estimate = op->cost;
        switch (op->kind) {
        case AG_LIMIT_KIND_RPM:
            if (!r->has_requests || op->remaining < r->remaining_requests) {
                r->has_requests = true;
                r->limit_requests = op->limit;
                r->remaining_requests = op->remaining;
            }
            break;
        case AG_LIMIT_KIND_TPM:
            if (!r->has_tokens || op->remaining < r->remaining_tokens) {
                r->has_tokens = true;
                r->limit_tokens = op->limit;
                r->remaining_tokens = op->remaining;
            }
            break;
        case AG_LIMIT_KIND_QUOTA:
            if (!r->has_quota || op->remaining < r->quota_remaining) {
                r->has_quota = true;
                r->quota_tokens = op->limit;
                r->quota_remaining = op->remaining;
                r->quota_reset_ms = op->reset_ms;
            }
            break;
        }
        if (!admitted && op->refused) {
            if (op->retry_after_ms > r->retry_after_ms)
                r->retry_after_ms = op->retry_after_ms;
            /* a quota refusal wins (403); otherwise the longest wait names the policy */
            if (!refuser || (op->kind == AG_LIMIT_KIND_QUOTA && refuser->kind != AG_LIMIT_KIND_QUOTA) ||
                ((op->kind == AG_LIMIT_KIND_QUOTA) == (refuser->kind == AG_LIMIT_KIND_QUOTA) &&
                 op->retry_after_ms > refuser->retry_after_ms))
                refuser = op;
        }
    }
    if (!admitted) {
        if (!refuser) { /* a store answer without a refusing op: treat as unavailable */
            r->verdict = AG_LIMIT_UNAVAILABLE;
            r->retry_after_ms = 1000;
            return;
        }
        r->verdict = refuser->kind == AG_LIMIT_KIND_QUOTA ? AG_LIMIT_QUOTA_EXCEEDED : AG_LIMIT_RATE_LIMITED;
        snprintf(r->policy, sizeof r->policy, "%s", refuser->policy);
        r->kind = refuser->kind;
        r->limit = refuser->limit;
        r->period = refuser->period;
        r->too_large = refuser->kind != AG_LIMIT_KIND_RPM && refuser->cost > refuser->limit;
        if (r->retry_after_ms < 1)
            r->retry_after_ms = 1;
    }
}

static void count_verdict(ag_limiter *l, const ag_limit_result *r)
{
    switch (r->verdict) {
    case AG_LIMIT_ADMITTED: l->stats.admitted++; break;
    case AG_LIMIT_RATE_LIMITED: l->stats.rate_limited++; break;
    case AG_LIMIT_QUOTA_EXCEEDED: l->stats.quota_exceeded++; break;
    case AG_LIMIT_UNAVAILABLE: l->stats.unavailable++; break;
    }
}

static void set_unavailable(ag_limit_result *r, const ag_limit_op *ops, size_t n)
{
    fill_result(ops, 0, true, r);
    r->verdict = AG_LIMIT_UNAVAILABLE;
    r->retry_after_ms = 1000;
    for (size_t i = 0; i < n; i++)
        if (ops[i].kind != AG_LIMIT_KIND_RPM && ops[i].cost > r->estimate)
            r->estimate = ops[i].cost;
}

/* Decides with the in-memory table; returns true when admitted (and charged). */
static bool decide_local(ag_limiter *l, ag_limit_ticket *t)
{
    ag_memstore_status st = ag_memstore_reserve(l->store->mem, t->ops, t->nops, now_ms(l));
    t->local = true;
    if (st == AG_MEMSTORE_FULL) {
        llog(l, "rate-limit table is full (max_keys %lld): refusing with 503", l->store->cfg.max_keys);
        bool degraded = t->result.degraded;
        set_unavailable(&t->result, t->ops, t->nops);
        t->result.degraded = degraded;
        return false;
    }
    fill_result(t->ops, t->nops, st == AG_MEMSTORE_ADMIT, &t->result);
    return st == AG_MEMSTORE_ADMIT;
}

/* Redis could not decide: fail open (local table) or closed (503). */
static bool decide_fallback(ag_limiter *l, ag_limit_ticket *t)
{
    if (l->store->cfg.on_error == AG_LIMIT_FAIL_CLOSED) {
        if (!l->degraded_logged)
            llog(l, "redis unavailable: rate-limited requests refused with 503 (on_error fail_closed)");
        l->degraded_logged = true;
        set_unavailable(&t->result, t->ops, t->nops);
        return false;
    }
    if (!l->degraded_logged)
        llog(l, "redis unavailable: deciding rate limits locally on this replica (on_error fail_open)");
    l->degraded_logged = true;
    l->stats.fallback_decisions++;
    t->result.degraded = true;
    return decide_local(l, t);
}

static void refund_and_free(ag_limit_ticket *t);

static void on_redis_done(ag_limit_redis_req *req)
{
    ag_limit_ticket *t = (ag_limit_ticket *)((char *)req - offsetof(ag_limit_ticket, req));
    ag_limiter *l = t->lim;
    if (t->state == T_ADJUSTING) {
        if (req->status != AG_LIMIT_REDIS_OK && l)
            l->stats.lost_adjustments++;
        ticket_free(t);
        return;
    }
    /* T_PENDING */
    bool admitted;
    if (l->freeing) {
        set_unavailable(&t->result, t->ops, t->nops);
        admitted = false;
    } else if (req->status == AG_LIMIT_REDIS_OK) {
        if (l->degraded_logged)
            llog(l, "redis is back: rate limits are shared again");
        l->degraded_logged = false;
        admitted = req->admitted;
        t->result.degraded = false;
        fill_result(t->ops, t->nops, admitted, &t->result);
    } else {
        admitted = decide_fallback(l, t);
    }
    t->admitted = admitted;
    t->state = T_DECIDED;
    count_verdict(l, &t->result);
    if (t->cancelled) {
        if (admitted && !l->freeing)
            refund_and_free(t);
        else
            ticket_free(t);
        return;
    }
    if (l->freeing) {
        /* the caller keeps the ticket, orphaned: finish/cancel will only free it */
        ticket_detach(t);
    }
    t->cb(t, &t->result, t->arg);
}

ag_limit_status ag_limiter_admit(ag_limiter *l, const ag_limit_policies *policies, const ag_limit_request *req,
                                 ag_limit_result *result, ag_limit_ticket **ticket, ag_limit_done_fn cb, void *arg)
{
    *ticket = NULL;
    memset(result, 0, sizeof *result);
    size_t nops = 0;
    for (size_t i = 0; policies && i < policies->n; i++) {
        const ag_limit_policy *p = &policies->v[i];
        if (!ag_limit_policy_matches(p, req->id, req->deployment, req->operation))
            continue;
        nops += (p->requests_per_minute > 0) + (p->tokens_per_minute > 0) + (p->quota_tokens > 0);
    }
    if (nops == 0) {
        l->stats.admitted++;
        return AG_LIMIT_DONE;
    }
    ag_limit_ticket *t = calloc(1, sizeof *t + nops * sizeof t->ops[0]);
    if (!t) {
        set_unavailable(result, NULL, 0);
        count_verdict(l, result);
        return AG_LIMIT_DONE;
    }
    t->lim = l;
    t->cb = cb;
    t->arg = arg;
    t->nops = nops;
    ag_token_estimate est;
    ag_tokens_estimate_request(req->body, req->operation, &est);
    size_t k = 0;
    bool static_refusal = false;
    for (size_t i = 0; i < policies->n; i++) {
        const ag_limit_policy *p = &policies->v[i];
        if (!ag_limit_policy_matches(p, req->id, req->deployment, req->operation))
            continue;
        long long cost = ag_tokens_estimate_cost(&est, p->default_completion_tokens);
        struct { ag_limit_kind kind; long long limit; } lims[3] = {
            { AG_LIMIT_KIND_RPM, p->requests_per_minute },
            { AG_LIMIT_KIND_TPM, p->tokens_per_minute },
            { AG_LIMIT_KIND_QUOTA, p->quota_tokens },
        };
        for (int j = 0; j < 3; j++) {
            if (lims[j].limit <= 0)
                continue;
            ag_limit_op *op = &t->ops[k++];
            make_key(l, p, lims[j].kind, req, op->key);
            _Static_assert(sizeof op->policy == sizeof p->name, "a policy name fits the op's copy");
            memcpy(op->policy, p->name, sizeof op->policy); /* NUL-terminated by the config parser */
            op->kind = lims[j].kind;
            op->period = p->quota_period;
            op->limit = lims[j].limit;
            op->cost = lims[j].kind == AG_LIMIT_KIND_RPM ? 1 : cost;
            if (op->kind != AG_LIMIT_KIND_RPM && op->cost > op->limit) {
                /* can never fit: refuse without touching any counter (no shared state involved) */
                long long now = now_ms(l);
                op->refused = true;
                op->retry_after_ms = op->kind == AG_LIMIT_KIND_QUOTA
                                         ? ag_limit_window_end_ms(op->period, ag_limit_window_id(op->period, now)) - now
                                         : AG_LIMIT_RATE_PERIOD_MS;
                op->remaining = op->limit;
                static_refusal = true;
            }
        }
    }
    if (static_refusal) {
        fill_result(t->ops, t->nops, false, result);
        result->has_requests = result->has_tokens = result->has_quota = false; /* counters not read */
        count_verdict(l, result);
        free(t);
        return AG_LIMIT_DONE;
    }
    if (l->redis) {
        t->req.ops = t->ops;
        t->req.nops = t->nops;
        t->req.adjust = false;
        t->req.client_now_ms = now_ms(l);
        t->req.done = on_redis_done;
        if (ag_limit_redis_submit(l->redis, &t->req) == 0) {
            t->state = T_PENDING;
            ticket_link(l, t);
            *ticket = t;
            return AG_LIMIT_PENDING;
        }
        t->admitted = decide_fallback(l, t);
    } else {
        t->admitted = decide_local(l, t);
    }
    t->state = T_DECIDED;
    *result = t->result;
    count_verdict(l, result);
    if (!t->admitted) {
        free(t);
        return AG_LIMIT_DONE;
    }
    ticket_link(l, t);
    *ticket = t;
    return AG_LIMIT_DONE;
}

/* Applies ops[i].delta (already set) and frees the ticket (after Redis answers, for Redis). */
static void apply_and_free(ag_limit_ticket *t)
{
    ag_limiter *l = t->lim;
    bool any = false;
    for (size_t i = 0; i < t->nops; i++)
        if (t->ops[i].delta != 0)
            any = true;
    if (!any || !l) {
        ticket_free(t);
        return;
    }
    if (t->local) {
        ag_memstore_adjust(l->store->mem, t->ops, t->nops, now_ms(l));
        ticket_free(t);
        return;
    }
    t->req.adjust = true;
    t->req.client_now_ms = now_ms(l);
    t->state = T_ADJUSTING;
    if (!l->redis || ag_limit_redis_submit(l->redis, &t->req) != 0) {
        l->stats.lost_adjustments++;
        ticket_free(t);
    }
}

static void refund_and_free(ag_limit_ticket *t)
{
    for (size_t i = 0; i < t->nops; i++)
        t->ops[i].delta = t->ops[i].kind == AG_LIMIT_KIND_RPM ? 0 : -t->ops[i].cost;
    apply_and_free(t);
}

void ag_limit_finish(ag_limit_ticket *t, long long used_tokens)
{
    if (!t)
        return;
    if (t->state == T_PENDING) {
        ag_limit_cancel(t);
        return;
    }
    if (t->state != T_DECIDED)
        return; /* already finishing */
    if (!t->admitted) {
        ticket_free(t);
        return;
    }
    if (used_tokens > AG_LIMIT_MAX_COST)
        used_tokens = AG_LIMIT_MAX_COST;
    for (size_t i = 0; i < t->nops; i++) {
        ag_limit_op *op = &t->ops[i];
        op->delta = (op->kind == AG_LIMIT_KIND_RPM || used_tokens < 0) ? 0 : used_tokens - op->cost;
    }
    apply_and_free(t);
}

void ag_limit_cancel(ag_limit_ticket *t)
{
    if (!t)
        return;
    if (t->state == T_PENDING) {
        t->cancelled = true; /* on_redis_done refunds and frees */
        return;
    }
    if (t->state != T_DECIDED)
        return;
    if (!t->admitted) {
        ticket_free(t);
        return;
    }
    refund_and_free(t);
}

/* ---- responses ---- */

const char *ag_limit_verdict_str(ag_limit_verdict v)
{
    switch (v) {
    case AG_LIMIT_ADMITTED: return "admitted";
    case AG_LIMIT_RATE_LIMITED: return "rate_limited";
    case AG_LIMIT_QUOTA_EXCEEDED: return "quota_exceeded";
    case AG_LIMIT_UNAVAILABLE: return "unavailable";
    }
    return "?";
}

static void add_header(ag_limit_response *out, const char *name, long long v)
{
    if (out->nheaders >= AG_LIMIT_MAX_HEADERS)
        return;
    ag_limit_header *h = &out->headers[out->nheaders++];
    h->name = name;
    h->value[ag_fmt_u64(h->value, v < 0 ? 0 : (uint64_t)v)] = '\0'; /* 20 digits at most */
}

void ag_limit_build_response(const ag_limit_result *r, ag_limit_response *out)
{
    memset(out, 0, sizeof *out);
    if (r->has_requests) {
        add_header(out, "x-ratelimit-limit-requests", r->limit_requests);
        add_header(out, "x-ratelimit-remaining-requests", r->remaining_requests);
    }
    if (r->has_tokens) {
        add_header(out, "x-ratelimit-limit-tokens", r->limit_tokens);
        add_header(out, "x-ratelimit-remaining-tokens", r->remaining_tokens);
    }
    if (r->verdict == AG_LIMIT_ADMITTED)
        return;
    long long ms = r->retry_after_ms < 1 ? 1 : r->retry_after_ms;
    add_header(out, "retry-after", (ms + 999) / 1000);
    add_header(out, "retry-after-ms", ms);
    long long secs = (ms + 999) / 1000;
    int n = 0;
    switch (r->verdict) {
    case AG_LIMIT_RATE_LIMITED:
        out->status = 429;
        if (r->too_large)
            n = snprintf(out->body, sizeof out->body,
                         "{\"error\":{\"code\":\"429\",\"message\":\"This request needs an estimated %lld "
                         "tokens, more than the limit of %lld %s of rate-limit policy '%s'. Lower max_tokens "
                         "(or max_completion_tokens) or shorten the prompt.\"}}",
                         r->estimate, r->limit, "tokens per minute", r->policy);
        else
            n = snprintf(out->body, sizeof out->body,
                         "{\"error\":{\"code\":\"429\",\"message\":\"Requests exceeded the limit of %lld %s of "
                         "rate-limit policy '%s'. Please retry after %lld second%s.\"}}",
                         r->limit, r->kind == AG_LIMIT_KIND_RPM ? "requests per minute" : "tokens per minute",
                         r->policy, secs, secs == 1 ? "" : "s");
        break;
    case AG_LIMIT_QUOTA_EXCEEDED:
        out->status = 403;
        if (r->too_large)
            n = snprintf(out->body, sizeof out->body,
                         "{\"error\":{\"code\":\"403\",\"message\":\"This request needs an estimated %lld "
                         "tokens, more than the token quota of %lld tokens per %s of policy '%s'.\"}}",
                         r->estimate, r->limit, ag_limit_period_str(r->period), r->policy);
        else
            n = snprintf(out->body, sizeof out->body,
                         "{\"error\":{\"code\":\"403\",\"message\":\"Out of token quota: policy '%s' allows "
                         "%lld tokens per %s (UTC). The quota is replenished in %lld second%s.\"}}",
                         r->policy, r->limit, ag_limit_period_str(r->period), secs, secs == 1 ? "" : "s");
        break;
    case AG_LIMIT_UNAVAILABLE:
    default:
        out->status = 503;
        n = snprintf(out->body, sizeof out->body,
                     "{\"error\":{\"code\":\"503\",\"message\":\"The rate-limit store is unavailable. Please "
                     "retry after %lld second%s.\"}}",
                     secs, secs == 1 ? "" : "s");
        break;
    }
    out->body_len = n < 0 ? 0 : ((size_t)n >= sizeof out->body ? sizeof out->body - 1 : (size_t)n);
}
