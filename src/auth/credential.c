/* The credential provider: keeps one token per registered scope fresh on the control thread and
 * publishes it to workers by an atomic pointer swap.
 *
 * Publication without locks: each scope slot holds one reference to its current ag_token. A reader
 * announces itself in slot->readers, loads the pointer, takes a reference, and leaves. The control
 * thread swaps in a new token and parks the old one on a retired list; it drops the slot's reference
 * to retired tokens only when it observes readers == 0 after the swap (every reader that could have
 * loaded the old pointer has then taken its own reference or gone). All atomics are seq_cst. */
#include "aoai_guard/credential.h"
#include "aoai_guard/log.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_ASSERTION_BYTES 65536
#define REAP_RETRY_MS 5

struct ag_token {
    atomic_long refs;
    long long expires_on;
    struct ag_token *retired_next; /* control thread only */
    size_t len;
    char value[];
};

typedef struct cred_slot {
    char scope[AG_CREDENTIAL_SCOPE_LEN];
    _Atomic(ag_token *) current;
    atomic_int readers;
    atomic_ullong refreshes;
    atomic_ullong failures;
    atomic_llong expires_on;
    /* control thread only */
    struct ag_credential *cred;
    struct event *timer;
    struct event *reap_timer;
    ag_token *retired;
    int in_flight;
    int attempt;
} cred_slot;

struct ag_credential {
    struct event_base *base;
    ag_curl_loop *http;
    ag_credential_settings s;
    atomic_int nslots;
    uint64_t rng;
    cred_slot slots[AG_CREDENTIAL_MAX_SCOPES];
};

/* The one place that logs: messages carry no token and no secret. */
static void cred_log(ag_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void cred_log(ag_log_level level, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    ag_log(level, NULL, "credential: %s", msg);
}

static double rand01(ag_credential *c)
{
    /* xorshift64*: jitter only, not security relevant */
    uint64_t x = c->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    c->rng = x;
    return (double)((x * 0x2545F4914F6CDD1DULL) >> 11) / 9007199254740992.0;
}

const char *ag_credential_source_str(ag_credential_source src)
{
    switch (src) {
    case AG_CRED_SRC_CLIENT_SECRET: return "client_secret";
    case AG_CRED_SRC_WORKLOAD_IDENTITY: return "workload_identity";
    case AG_CRED_SRC_IMDS: return "managed_identity_imds";
    case AG_CRED_SRC_APP_SERVICE: return "managed_identity_app_service";
    }
    return "unknown";
}

ag_credential_source ag_credential_get_source(const ag_credential *cred)
{
    return cred->s.source;
}

/* ---- tokens ---- */

static ag_token *token_new(const char *value, long long expires_on)
{
    size_t n = strlen(value);
    ag_token *t = malloc(sizeof(*t) + n + 1);
    if (!t)
        return NULL;
    atomic_init(&t->refs, 1);
    t->expires_on = expires_on;
    t->retired_next = NULL;
    t->len = n;
    memcpy(t->value, value, n + 1);
    return t;
}

void ag_token_release(ag_token *tok)
{
    if (tok && atomic_fetch_sub(&tok->refs, 1) == 1) {
        OPENSSL_cleanse(tok->value, tok->len);
        free(tok);
    }
}

const char *ag_token_value(const ag_token *tok)
{
    return tok->value;
}

size_t ag_token_len(const ag_token *tok)
{
    return tok->len;
}

long long ag_token_expires_on(const ag_token *tok)
{
    return tok->expires_on;
}

static cred_slot *find_slot(const ag_credential *cred, const char *scope)
{
    if (!cred || !scope)
        return NULL;
    int n = atomic_load(&cred->nslots);
    for (int i = 0; i < n; i++)
        if (strcmp(cred->slots[i].scope, scope) == 0)
            return (cred_slot *)&cred->slots[i];
    return NULL;
}

ag_token *ag_credential_token(ag_credential *cred, const char *scope)
{
    cred_slot *sl = find_slot(cred, scope);
    if (!sl)
        return NULL;
    atomic_fetch_add(&sl->readers, 1);
    ag_token *t = atomic_load(&sl->current);
    if (t)
        atomic_fetch_add(&t->refs, 1);
    atomic_fetch_sub(&sl->readers, 1);
    if (t && t->expires_on <= (long long)time(NULL)) {
        ag_token_release(t);
        return NULL;
    }
    return t;
}

long ag_credential_token_copy(ag_credential *cred, const char *scope, char *buf, size_t buflen)
{
    ag_token *t = ag_credential_token(cred, scope);
    if (!t)
        return -1;
    long rc = -1;
    if (buf && t->len < buflen) {
        memcpy(buf, t->value, t->len + 1);
        rc = (long)t->len;
    }
    ag_token_release(t);
    return rc;
}

bool ag_credential_ready(const ag_credential *cred)
{
    if (!cred)
        return false;
    long long now = (long long)time(NULL);
    int n = atomic_load(&cred->nslots);
    for (int i = 0; i < n; i++)
        if (atomic_load(&cred->slots[i].expires_on) <= now)
            return false;
    return true;
}

int ag_credential_stats_get(const ag_credential *cred, const char *scope, ag_credential_stats *out)
{
    cred_slot *sl = find_slot(cred, scope);
    if (!sl)
        return -1;
    long long now = (long long)time(NULL);
    out->refreshes = atomic_load(&sl->refreshes);
    out->failures = atomic_load(&sl->failures);
    out->expires_on = atomic_load(&sl->expires_on);
    out->seconds_to_expiry = out->expires_on > now ? out->expires_on - now : 0;
    return 0;
}

/* Drops the slot's reference to retired tokens once no reader can still be loading them. */
static void slot_reap(cred_slot *sl)
{
    if (!sl->retired)
        return;
    if (atomic_load(&sl->readers) == 0) {
        while (sl->retired) {
            ag_token *t = sl->retired;
            sl->retired = t->retired_next;
            ag_token_release(t);
        }
        return;
    }
    struct timeval tv = { 0, REAP_RETRY_MS * 1000 };
    evtimer_add(sl->reap_timer, &tv);
}

static void on_reap_timer(evutil_socket_t fd, short what, void *arg)
{
    slot_reap(arg);
}

static void slot_publish(cred_slot *sl, ag_token *t)
{
    ag_token *old = atomic_exchange(&sl->current, t);
    atomic_store(&sl->expires_on, t->expires_on);
    if (old) {
        old->retired_next = sl->retired;
        sl->retired = old;
    }
    slot_reap(sl);
}

/* ---- fetching ---- */

static void slot_schedule_ms(cred_slot *sl, long long ms)
{
    if (ms < 0)
        ms = 0;
    struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
    evtimer_add(sl->timer, &tv);
}

/* Records a failed fetch, logs it and schedules the retry. */
static void slot_failed(cred_slot *sl, long status, const char *retry_after, const char *why)
{
    ag_credential *c = sl->cred;
    atomic_fetch_add(&sl->failures, 1);
    sl->attempt++;
    long long now = (long long)time(NULL);
    long long ms = ag_credential_retry_delay_ms(sl->attempt, status, retry_after, now, rand01(c));
    long long exp = atomic_load(&sl->expires_on);
    char keep[96];
    if (exp > now)
        snprintf(keep, sizeof(keep), "keeping the current token, valid for %lld s more", exp - now);
    else
        snprintf(keep, sizeof(keep), "no valid token");
    char st[24];
    if (status)
        snprintf(st, sizeof(st), "HTTP %ld", status);
    else
        snprintf(st, sizeof(st), "no response");
    cred_log(exp > now ? AG_LOG_WARN : AG_LOG_ERROR,
             "token fetch for scope %s via %s failed (attempt %d, %s: %s); %s; retrying in %lld ms",
             sl->scope, ag_credential_source_str(c->s.source), sl->attempt, st, why, keep, ms);
    slot_schedule_ms(sl, ms);
}

static void on_fetch_done(const ag_http_response *resp, void *arg)
{
    cred_slot *sl = arg;
    ag_credential *c = sl->cred;
    sl->in_flight = 0;
    if (!resp->ok) {
        slot_failed(sl, 0, NULL, resp->error ? resp->error : "transfer failed");
        return;
    }
    if (resp->status != 200) {
        char why[320];
        ag_credential_describe_error(resp->body, resp->body_len, why, sizeof(why));
        slot_failed(sl, resp->status, resp->retry_after, why);
        return;
    }
    long long now = (long long)time(NULL);
    ag_token_response tr;
    char err[160];
    if (ag_credential_parse_token(resp->body, resp->body_len, now, &tr, err, sizeof(err)) != 0) {
        slot_failed(sl, 200, NULL, err); /* not retryable: a slow retry */
        return;
    }
    ag_token *t = token_new(tr.access_token, tr.expires_on);
    ag_token_response_free(&tr);
    if (!t) {
        slot_failed(sl, 0, NULL, "out of memory");
        return;
    }
    slot_publish(sl, t);
    atomic_fetch_add(&sl->refreshes, 1);
    sl->attempt = 0;
    long long delay = ag_credential_refresh_delay(now, t->expires_on, c->s.refresh_before_s, rand01(c));
    cred_log(AG_LOG_INFO, "token for scope %s via %s obtained, expires in %lld s, next refresh in %lld s",
             sl->scope, ag_credential_source_str(c->s.source), t->expires_on - now, delay);
    slot_schedule_ms(sl, delay * 1000);
}

/* Reads the federated token file (the kubelet rotates it, so on every fetch); trailing whitespace
 * trimmed. Returns a malloc'd string or NULL with why set. */
static char *read_assertion(const char *path, char *why, size_t whylen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, whylen, "cannot open federated token file %s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(MAX_ASSERTION_BYTES + 1);
    size_t len = 0;
    while (buf && len < MAX_ASSERTION_BYTES + 1) {
        ssize_t n = read(fd, buf + len, MAX_ASSERTION_BYTES + 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(why, whylen, "cannot read federated token file %s: %s", path, strerror(errno));
            goto fail;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    if (!buf) {
        snprintf(why, whylen, "out of memory");
        goto fail;
    }
    if (len > MAX_ASSERTION_BYTES) {
        snprintf(why, whylen, "federated token file %s is larger than %d bytes", path, MAX_ASSERTION_BYTES);
        goto fail;
    }
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' ' ||
                       buf[len - 1] == '\t'))
        len--;
    buf[len] = '\0';
    if (len == 0 || strlen(buf) != len) {
        snprintf(why, whylen, "federated token file %s is empty or contains NUL bytes", path);
        goto fail;
    }
    close(fd);
    return buf;
fail:
    close(fd);
    if (buf) {
        OPENSSL_cleanse(buf, MAX_ASSERTION_BYTES + 1);
        free(buf);
    }
    return NULL;
}

static void slot_fetch(cred_slot *sl)
{
    ag_credential *c = sl->cred;
    if (sl->in_flight)
        return;
    char why[512];
    char *assertion = NULL;
    if (c->s.source == AG_CRED_SRC_WORKLOAD_IDENTITY) {
        assertion = read_assertion(c->s.federated_token_file, why, sizeof(why));
        if (!assertion) {
            slot_failed(sl, 0, NULL, why);
            return;
        }
    }
    ag_credential_req rq;
    int rc = ag_credential_build_request(&c->s, sl->scope, assertion, &rq);
    if (assertion) {
        OPENSSL_cleanse(assertion, strlen(assertion));
        free(assertion);
    }
    if (rc != 0) {
        slot_failed(sl, 0, NULL, "cannot build the token request");
        return;
    }
    ag_http_request hr = {
        .method = rq.method, .url = rq.url, .headers = (const char *const *)rq.headers,
        .body = rq.body, .body_len = rq.body_len, .timeout_ms = c->s.timeout_ms, .ca_file = c->s.ca_file,
    };
    rc = ag_curl_loop_start(c->http, &hr, on_fetch_done, sl);
    ag_credential_req_free(&rq); /* start() copied it */
    if (rc != 0) {
        slot_failed(sl, 0, NULL, "cannot start the HTTP request");
        return;
    }
    sl->in_flight = 1;
}

static void on_slot_timer(evutil_socket_t fd, short what, void *arg)
{
    cred_slot *sl = arg;
    slot_reap(sl);
    slot_fetch(sl);
}

/* ---- lifecycle ---- */

ag_credential *ag_credential_new(struct event_base *base, ag_curl_loop *http, const ag_credential_config *cfg,
                                 ag_conf_err *err)
{
    if (!base || !http || !cfg) {
        ag_conf_fail(err, "credential", NULL, "internal error: missing event base, HTTP loop or config");
        return NULL;
    }
    ag_credential *c = calloc(1, sizeof(*c));
    if (!c) {
        ag_conf_fail(err, "credential", NULL, "out of memory");
        return NULL;
    }
    if (ag_credential_resolve(cfg, &c->s, err) != 0) {
        free(c);
        return NULL;
    }
    c->base = base;
    c->http = http;
    atomic_init(&c->nslots, 0);
    if (RAND_bytes((unsigned char *)&c->rng, sizeof(c->rng)) != 1 || c->rng == 0)
        c->rng = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ULL ^ (uint64_t)getpid();
    if (c->rng == 0)
        c->rng = 0x9E3779B97F4A7C15ULL;
    cred_log(AG_LOG_INFO, "using %s", ag_credential_source_str(c->s.source));
    return c;
}

void ag_credential_free(ag_credential *cred)
{
    if (!cred)
        return;
    int n = atomic_load(&cred->nslots);
    for (int i = 0; i < n; i++) {
        cred_slot *sl = &cred->slots[i];
        ag_curl_loop_cancel(cred->http, sl);
        if (sl->timer)
            event_free(sl->timer);
        if (sl->reap_timer)
            event_free(sl->reap_timer);
        while (sl->retired) {
            ag_token *t = sl->retired;
            sl->retired = t->retired_next;
            ag_token_release(t);
        }
        ag_token_release(atomic_load(&sl->current));
    }
    ag_credential_settings_free(&cred->s);
    free(cred);
}

int ag_credential_add_scope(ag_credential *cred, const char *scope)
{
    if (!cred || !scope)
        return -1;
    size_t len = strlen(scope);
    if (len == 0 || len >= AG_CREDENTIAL_SCOPE_LEN)
        return -1;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)scope[i] <= 0x20 || (unsigned char)scope[i] >= 0x7f)
            return -1;
    int n = atomic_load(&cred->nslots);
    for (int i = 0; i < n; i++)
        if (strcmp(cred->slots[i].scope, scope) == 0)
            return i;
    if (n >= AG_CREDENTIAL_MAX_SCOPES)
        return -1;
    if (cred->s.source == AG_CRED_SRC_IMDS || cred->s.source == AG_CRED_SRC_APP_SERVICE) {
        char res[AG_CREDENTIAL_SCOPE_LEN];
        if (ag_credential_scope_to_resource(scope, res, sizeof(res)) != 0)
            return -1;
    }
    cred_slot *sl = &cred->slots[n];
    memset(sl->scope, 0, sizeof(sl->scope));
    memcpy(sl->scope, scope, len);
    atomic_init(&sl->current, NULL);
    atomic_init(&sl->readers, 0);
    atomic_init(&sl->refreshes, 0);
    atomic_init(&sl->failures, 0);
    atomic_init(&sl->expires_on, 0);
    sl->cred = cred;
    sl->retired = NULL;
    sl->in_flight = 0;
    sl->attempt = 0;
    sl->timer = evtimer_new(cred->base, on_slot_timer, sl);
    sl->reap_timer = evtimer_new(cred->base, on_reap_timer, sl);
    if (!sl->timer || !sl->reap_timer) {
        if (sl->timer)
            event_free(sl->timer);
        if (sl->reap_timer)
            event_free(sl->reap_timer);
        sl->timer = sl->reap_timer = NULL;
        return -1;
    }
    atomic_store(&cred->nslots, n + 1); /* publishes the initialised slot to readers */
    slot_schedule_ms(sl, 0);
    return n;
}
