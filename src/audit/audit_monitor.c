/* Azure Monitor Logs Ingestion uploader (see audit_monitor.h). */
#include "aoai_guard/audit_monitor.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <event2/event.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "aoai_guard/audit_batch.h"
#include "aoai_guard/audit_record.h"
#include "aoai_guard/clock.h"
#include "aoai_guard/log.h"

#define API_VERSION "2023-01-01"
#define MAX_RANGES 64
#define MAX_RETRY_AFTER_MS 600000
#define REASON_MAX 2048

typedef struct range {
    size_t lo, hi;
} range;

struct ag_monitor {
    ag_monitor_env env;
    char *dead_letter_path;
    char *url;
    ag_audit_batch batch;
    ag_spool_pos read_pos;       /* just after the last row taken into the batch */
    ag_spool_pos batch_start;    /* where the batch's first row starts */
    range stack[MAX_RANGES];     /* ranges of the batch still to send; the top one goes next */
    int top;
    bool inflight;
    struct event *timer;
    bool timer_armed;
    unsigned attempt;            /* consecutive retryable failures (backoff exponent) */
    unsigned auth_failures;      /* consecutive 401/403 */
    int64_t window_start_ms;
    long long window_calls;
    bool flushing;
    bool failed_since_flush;
    uint64_t corrupt_seen;
    uint64_t rng;
};

static int64_t now_ms(void)
{
    return (int64_t)(ag_mono_ns() / 1000000u);
}

static uint64_t next_rand(ag_monitor *m)
{
    /* xorshift64*: jitter only, not security */
    uint64_t x = m->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    m->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static long long backoff_ms(ag_monitor *m)
{
    const ag_audit_sink_conf *c = m->env.conf;
    long long d = c->retry_initial_ms;
    for (unsigned i = 0; i < m->attempt && d < c->retry_max_ms; i++)
        d *= 2;
    if (d > c->retry_max_ms)
        d = c->retry_max_ms;
    if (m->attempt < 64)
        m->attempt++;
    long long half = d / 2;
    return half + (long long)(next_rand(m) % (uint64_t)(half + 1)); /* "equal jitter": [d/2, d] */
}

/* Retry-After as ms: delta-seconds or an HTTP date; -1 when absent or unparsable. */
static long long retry_after_ms(const char *v)
{
    if (!v)
        return -1;
    while (*v == ' ' || *v == '\t')
        v++;
    if (!*v)
        return -1;
    long long ms;
    if (isdigit((unsigned char)*v)) {
        char *end;
        errno = 0;
        unsigned long long s = strtoull(v, &end, 10);
        while (*end == ' ' || *end == '\t')
            end++;
        if (errno || *end)
            return -1;
        ms = s > (unsigned long long)MAX_RETRY_AFTER_MS / 1000 ? MAX_RETRY_AFTER_MS : (long long)s * 1000;
    } else {
        time_t t = curl_getdate(v, NULL);
        if (t < 0)
            return -1;
        long long d = ((long long)t - (long long)time(NULL)) * 1000;
        ms = d < 0 ? 0 : d > MAX_RETRY_AFTER_MS ? MAX_RETRY_AFTER_MS : d;
    }
    return ms;
}

static void arm(ag_monitor *m, long long ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(m->timer, &tv);
    m->timer_armed = true;
}

static void send_next(ag_monitor *m);

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    ag_monitor *m = arg;
    m->timer_armed = false;
    send_next(m);
}

static void commit(ag_monitor *m, ag_spool_pos pos)
{
    if (ag_spool_commit(m->env.spool, pos) != 0) {
        atomic_fetch_add(&m->env.counters->io_errors, 1);
        ag_log(AG_LOG_ERROR, NULL, "audit sink %s: cannot write the spool checkpoint: %s (rows will be resent)",
               m->env.conf->name, strerror(errno));
    }
    if (m->env.progress)
        m->env.progress(m->env.progress_arg);
}

/* Appends one line to the dead-letter file and syncs it; 0 or -1. */
static int dead_letter(ag_monitor *m, const char *rec, size_t len, long status, const char *reason)
{
    char ts[32];
    ag_format_rfc3339_ms(ag_wall_ms(), ts);
    char why[REASON_MAX + 1];
    size_t n = 0;
    for (const char *p = reason ? reason : ""; *p && n < REASON_MAX; p++) /* ASCII, printable */
        why[n++] = ((unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7F) ? *p : ' ';
    why[n] = '\0';
    char *raw = malloc(len + 1);
    cJSON *o = cJSON_CreateObject();
    char *line = NULL;
    int rc = -1;
    if (!raw || !o)
        goto out;
    memcpy(raw, rec, len);
    raw[len] = '\0';
    if (!cJSON_AddStringToObject(o, "TimeDeadLettered", ts) ||
        !cJSON_AddStringToObject(o, "Sink", m->env.conf->name) ||
        !cJSON_AddStringToObject(o, "Stream", m->env.conf->stream) ||
        !cJSON_AddNumberToObject(o, "Status", (double)status) || !cJSON_AddStringToObject(o, "Reason", why) ||
        !cJSON_AddRawToObject(o, "Record", raw))
        goto out;
    line = cJSON_PrintUnformatted(o);
    if (!line)
        goto out;
    int fd = open(m->dead_letter_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0)
        goto out;
    size_t ll = strlen(line);
    line[ll] = '\n'; /* replaces the NUL; the length is known */
    ssize_t w = write(fd, line, ll + 1);
    line[ll] = '\0';
    if (w == (ssize_t)(ll + 1) && fsync(fd) == 0)
        rc = 0;
    close(fd);
out:
    if (rc != 0) {
        atomic_fetch_add(&m->env.counters->io_errors, 1);
        ag_log(AG_LOG_ERROR, NULL, "audit sink %s: cannot write the dead-letter file %s: %s",
               m->env.conf->name, m->dead_letter_path, strerror(errno));
    }
    free(raw);
    cJSON_free(line);
    cJSON_Delete(o);
    return rc;
}

/* Reads rows from the spool into a new batch; returns 1 when there is something to send, 0 if not. */
static int fill_batch(ag_monitor *m)
{
    ag_audit_batch_reset(&m->batch);
    ag_spool_pos ck = ag_spool_checkpoint(m->env.spool);
    if (ag_spool_pos_cmp(m->read_pos, ck) < 0)
        m->read_pos = ck;
    m->batch_start = m->read_pos;
    for (;;) {
        ag_spool_pos p = m->read_pos;
        const char *data;
        size_t len;
        int r = ag_spool_read(m->env.spool, &p, &data, &len);
        if (r < 0) {
            atomic_fetch_add(&m->env.counters->io_errors, 1);
            ag_log(AG_LOG_ERROR, NULL, "audit sink %s: cannot read the spool: %s", m->env.conf->name,
                   strerror(errno));
            break;
        }
        if (r == 0) {
            m->read_pos = p; /* only skipped damage lies between */
            break;
        }
        int add = ag_audit_batch_add(&m->batch, data, len, p);
        if (add == 1) {
            m->read_pos = p;
            continue;
        }
        if (add == -2 && m->batch.n == 0) {
            if (dead_letter(m, data, len, 0, "row larger than batch_max_bytes") != 0)
                break;
            atomic_fetch_add(&m->env.counters->dead_lettered, 1);
            m->read_pos = p;
            commit(m, p);
            continue;
        }
        break; /* full (or a row that needs a batch of its own next time) */
    }
    uint64_t corrupt = ag_spool_corrupt(m->env.spool);
    if (corrupt > m->corrupt_seen) {
        atomic_fetch_add(&m->env.counters->corrupt, (long long)(corrupt - m->corrupt_seen));
        m->corrupt_seen = corrupt;
    }
    if (m->batch.n == 0) {
        if (ag_spool_pos_cmp(m->read_pos, ag_spool_checkpoint(m->env.spool)) > 0)
            commit(m, m->read_pos); /* step over damaged bytes so their segment can go */
        return 0;
    }
    m->stack[0] = (range){0, m->batch.n};
    m->top = 1;
    return 1;
}

static void on_done(const ag_http_response *resp, void *arg);

static void send_next(ag_monitor *m)
{
    if (m->inflight || m->timer_armed)
        return;
    if (m->top > 0) {
        /* drop_oldest may have deleted the segment the pending rows came from: they are counted as
         * dropped, so they must not be sent either; start again from the checkpoint */
        range r = m->stack[m->top - 1];
        ag_spool_pos first = r.lo == 0 ? m->batch_start : m->batch.end[r.lo - 1];
        ag_spool_pos ck = ag_spool_checkpoint(m->env.spool);
        if (ag_spool_pos_cmp(ck, first) > 0) {
            m->top = 0;
            ag_audit_batch_reset(&m->batch);
            m->read_pos = ck;
        }
    }
    if (m->top == 0 && !fill_batch(m))
        return;
    int64_t now = now_ms();
    if (now - m->window_start_ms >= 60000) {
        m->window_start_ms = now;
        m->window_calls = 0;
    }
    if (m->window_calls >= m->env.conf->max_calls_per_minute && !m->flushing) { /* shutdown: last try */
        arm(m, m->window_start_ms + 60000 - now);
        return;
    }
    const char *tok = m->env.token.get_token ? m->env.token.get_token(m->env.token.arg) : NULL;
    if (!tok || !tok[0]) {
        ag_log(AG_LOG_WARN, NULL, "audit sink %s: no Azure Monitor token available yet; retrying",
               m->env.conf->name);
        if (m->flushing)
            m->failed_since_flush = true;
        arm(m, m->env.conf->retry_initial_ms);
        return;
    }
    range r = m->stack[m->top - 1];
    size_t jlen;
    const char *json = ag_audit_batch_json(&m->batch, r.lo, r.hi, &jlen);
    unsigned char *gz = NULL;
    size_t gzlen = 0;
    size_t alen = strlen(tok) + 32;
    char *auth = malloc(alen);
    char guid[37], reqid[64];
    if (!json || !auth || ag_gzip(json, jlen, &gz, &gzlen) != 0 || ag_audit_guid(guid) != 0) {
        free(auth);
        free(gz);
        ag_log(AG_LOG_ERROR, NULL, "audit sink %s: cannot build an upload (out of memory)", m->env.conf->name);
        arm(m, backoff_ms(m));
        return;
    }
    snprintf(auth, alen, "Authorization: Bearer %s", tok);
    snprintf(reqid, sizeof reqid, "x-ms-client-request-id: %s", guid);
    const char *headers[] = {auth, "Content-Type: application/json", "Content-Encoding: gzip", reqid,
                             "Expect:", NULL};
    ag_http_request req = {
        .method = "POST",
        .url = m->url,
        .headers = headers,
        .body = gz,
        .body_len = gzlen,
        .timeout_ms = m->env.conf->timeout_ms,
        .ca_file = m->env.conf->ca_file,
    };
    int rc = ag_curl_loop_start(m->env.curl, &req, on_done, m);
    OPENSSL_cleanse(auth, alen);
    free(auth);
    free(gz);
    if (rc != 0) {
        atomic_fetch_add(&m->env.counters->failures, 1);
        ag_log(AG_LOG_ERROR, NULL, "audit sink %s: cannot start an upload", m->env.conf->name);
        arm(m, backoff_ms(m));
        return;
    }
    m->inflight = true;
    m->window_calls++;
    atomic_fetch_add(&m->env.counters->calls, 1);
}

static void on_done(const ag_http_response *resp, void *arg)
{
    ag_monitor *m = arg;
    m->inflight = false;
    range r = m->stack[m->top - 1];
    long st = resp->ok ? resp->status : 0;
    const char *name = m->env.conf->name;
    ag_audit_counters *c = m->env.counters;

    if (resp->ok && st >= 200 && st < 300) {
        m->top--;
        atomic_fetch_add(&c->rows_sent, (long long)(r.hi - r.lo));
        m->attempt = 0;
        if (m->auth_failures >= 2)
            ag_log(AG_LOG_INFO, NULL, "audit sink %s: Azure Monitor accepts the credential again", name);
        m->auth_failures = 0;
        commit(m, m->batch.end[r.hi - 1]);
        if (m->top == 0)
            ag_audit_batch_reset(&m->batch);
        send_next(m);
        return;
    }
    atomic_fetch_add(&c->failures, 1);
    if (m->flushing)
        m->failed_since_flush = true;

    if (resp->ok && (st == 400 || st == 413)) {
        if (r.hi - r.lo > 1 && m->top + 1 < MAX_RANGES) {
            size_t mid = r.lo + (r.hi - r.lo) / 2;
            m->top--;
            m->stack[m->top++] = (range){mid, r.hi};
            m->stack[m->top++] = (range){r.lo, mid};
            ag_log(AG_LOG_WARN, NULL, "audit sink %s: HTTP %ld for %zu rows; splitting to isolate the bad row",
                   name, st, r.hi - r.lo);
            send_next(m);
            return;
        }
        const char *rec = m->batch.data + m->batch.off[r.lo];
        if (dead_letter(m, rec, m->batch.rlen[r.lo], st, resp->body) != 0) {
            atomic_fetch_add(&c->retries, 1);
            arm(m, backoff_ms(m));
            return;
        }
        atomic_fetch_add(&c->dead_lettered, 1);
        ag_log(AG_LOG_ERROR, NULL, "audit sink %s: HTTP %ld for one row; moved to %s", name, st,
               m->dead_letter_path);
        m->top--;
        commit(m, m->batch.end[r.lo]);
        if (m->top == 0)
            ag_audit_batch_reset(&m->batch);
        send_next(m);
        return;
    }
    long long delay;
    if (resp->ok && (st == 401 || st == 403)) {
        atomic_fetch_add(&c->auth_failures, 1);
        m->auth_failures++;
        if (m->env.token.token_rejected)
            m->env.token.token_rejected(m->env.token.arg);
        if (m->auth_failures == 1) {
            ag_log(AG_LOG_WARN, NULL, "audit sink %s: HTTP %ld from Azure Monitor; refreshing the token", name,
                   st);
            delay = m->env.conf->retry_initial_ms;
        } else {
            delay = backoff_ms(m);
            ag_log(AG_LOG_ERROR, NULL,
                   "ALERT audit sink %s: Azure Monitor refuses the credential (HTTP %ld, %u times in a row): "
                   "check the Monitoring Metrics Publisher role on the DCR; holding %zu rows, retry in %lld ms",
                   name, st, m->auth_failures, r.hi - r.lo, delay);
        }
    } else if (!resp->ok || st == 408 || st == 429 || st >= 500) {
        long long ra = resp->ok ? retry_after_ms(resp->retry_after) : -1;
        if (ra >= 0) {
            delay = ra + (long long)(next_rand(m) % 250);
            if (m->attempt < 64)
                m->attempt++;
        } else {
            delay = backoff_ms(m);
        }
        if (resp->ok)
            ag_log(AG_LOG_WARN, NULL, "audit sink %s: HTTP %ld from Azure Monitor; retry in %lld ms", name, st,
                   delay);
        else
            ag_log(AG_LOG_WARN, NULL, "audit sink %s: upload failed (%s); retry in %lld ms", name,
                   resp->error ? resp->error : "transport error", delay);
    } else {
        delay = backoff_ms(m);
        char snippet[256];
        snprintf(snippet, sizeof snippet, "%s", resp->body ? resp->body : "");
        ag_log(AG_LOG_ERROR, NULL,
               "audit sink %s: HTTP %ld from Azure Monitor (check endpoint, dcr_immutable_id, stream): %s; "
               "retry in %lld ms",
               name, st, snippet, delay);
    }
    atomic_fetch_add(&c->retries, 1);
    arm(m, delay);
}

ag_monitor *ag_monitor_new(const ag_monitor_env *env, char *err, size_t errlen)
{
    ag_monitor *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    m->env = *env;
    const ag_audit_sink_conf *c = env->conf;
    size_t ulen = strlen(c->endpoint) + strlen(c->dcr_immutable_id) + strlen(c->stream) + 96;
    m->url = malloc(ulen);
    m->dead_letter_path = strdup(env->dead_letter_path);
    m->timer = evtimer_new(env->base, on_timer, m);
    if (!m->url || !m->dead_letter_path || !m->timer) {
        snprintf(err, errlen, "out of memory");
        ag_monitor_free(m);
        return NULL;
    }
    snprintf(m->url, ulen, "%s/dataCollectionRules/%s/streams/%s?api-version=" API_VERSION, c->endpoint,
             c->dcr_immutable_id, c->stream);
    /* fail at start rather than at the first poisoned row */
    int fd = open(m->dead_letter_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "audit sink %s: dead-letter file %s: %s", c->name, m->dead_letter_path,
                 strerror(errno));
        ag_monitor_free(m);
        return NULL;
    }
    close(fd);
    ag_audit_batch_init(&m->batch, (size_t)c->batch_max_bytes);
    m->read_pos = ag_spool_checkpoint(env->spool);
    m->window_start_ms = now_ms();
    if (RAND_bytes((unsigned char *)&m->rng, sizeof m->rng) != 1 || m->rng == 0)
        m->rng = ag_mono_ns() | 1;
    return m;
}

void ag_monitor_kick(ag_monitor *m)
{
    send_next(m);
}

void ag_monitor_flush(ag_monitor *m)
{
    m->flushing = true;
    m->failed_since_flush = false;
    if (m->timer_armed) {
        evtimer_del(m->timer);
        m->timer_armed = false;
    }
    send_next(m);
}

bool ag_monitor_delivered(const ag_monitor *m)
{
    return !m->inflight && m->top == 0 && ag_spool_at_end(m->env.spool, ag_spool_checkpoint(m->env.spool));
}

bool ag_monitor_settled(const ag_monitor *m)
{
    if (m->inflight)
        return false;
    return ag_monitor_delivered(m) || (m->flushing && m->failed_since_flush);
}

void ag_monitor_free(ag_monitor *m)
{
    if (!m)
        return;
    if (m->timer)
        event_free(m->timer);
    ag_audit_batch_free(&m->batch);
    free(m->url);
    free(m->dead_letter_path);
    free(m);
}
