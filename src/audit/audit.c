/* The audit trail: queue, audit thread, sinks, spools and uploaders (see audit.h). */
#include "aoai_guard/audit.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/event.h>

#include "aoai_guard/audit_monitor.h"
#include "aoai_guard/audit_queue.h"
#include "aoai_guard/audit_sink.h"
#include "aoai_guard/clock.h"
#include "aoai_guard/curl_loop.h"
#include "aoai_guard/log.h"
#include "aoai_guard/spool.h"

#define STOP_POLL_MS 20
#define DRAIN_SLICE 4096
/* After a write error a reject trail refuses admissions this long, then lets traffic probe again
 * (re-evaluated by a 1 s tick even when nothing arrives). */
#define FAIL_HOLD_MS 1000
#define TICK_MS 1000

typedef struct sink_rt {
    const ag_audit_sink_conf *conf;   /* points into the trail's config copy */
    ag_line_sink *line;               /* file / stdout */
    ag_spool *spool;                  /* azure_monitor */
    ag_monitor *mon;
    bool over;                        /* spool at its cap (cleared below 90%) */
    int64_t failed_until_ms;          /* a write failed: count the sink as failing until then */
    unsigned long long errors_logged;
} sink_rt;

struct ag_audit {
    ag_audit_config cfg;
    ag_audit_row_opts row_opts;
    char instance[256];
    ag_audit_token_source token;
    ag_audit_queue *q;
    long long reject_depth;           /* queue depth at which a reject trail refuses admissions */
    pthread_mutex_t ovf_lock;
    ag_audit_record *ovf_head, *ovf_tail;
    atomic_bool ovf_nonempty;
    int wake_fd;
    atomic_int wake_pending;
    atomic_bool stopping;
    atomic_bool closed;
    atomic_bool full;                 /* reject: refuse admissions */
    int64_t deadline_ms;              /* written before stopping is set */
    pthread_t thread;
    bool started;
    bool shut;
    int shut_rc;
    bool stop_begun;
    bool no_upload;                   /* after the thread stopped: spool only */
    struct event_base *base;
    struct event *wake_ev, *fsync_ev, *stop_ev, *tick_ev;
    ag_curl_loop *curl;
    sink_rt *sinks;
    size_t nsinks;
    bool need_sync;
    unsigned long long lost_pending;  /* rows lost since the last data-loss event */
    ag_audit_counters ctr;
};

static int64_t now_ms(void)
{
    return (int64_t)(ag_mono_ns() / 1000000u);
}

static void free_record(void *p)
{
    ag_audit_record_free(p);
}

static void wake(ag_audit *a, bool force)
{
    if (atomic_exchange(&a->wake_pending, 1) == 0 || force) {
        uint64_t one = 1;
        ssize_t w = write(a->wake_fd, &one, sizeof one);
        (void)w; /* EAGAIN: the counter is already non-zero, the thread will wake */
    }
}

/* ---- audit thread ---- */

static void note_error(sink_rt *s, const char *what)
{
    /* the first error, then every 1000th, so a dead disk does not flood the log */
    if (s->errors_logged++ % 1000 == 0)
        ag_log(AG_LOG_ERROR, NULL, "audit sink %s: %s: %s", s->conf->name, what, strerror(errno));
}

static void update_state(ag_audit *a);

static void spool_put(ag_audit *a, sink_rt *s, const char *json, size_t len)
{
    uint64_t need = len + AG_SPOOL_HEADER;
    uint64_t max = (uint64_t)a->cfg.spool_max_bytes;
    if (ag_spool_bytes(s->spool) + need > max) {
        if (a->cfg.on_full == AG_AUDIT_ON_FULL_DROP_OLDEST) {
            while (ag_spool_bytes(s->spool) + need > max) {
                uint64_t recs, bytes;
                int r = ag_spool_drop_oldest(s->spool, &recs, &bytes);
                if (r != 0)
                    break;
                atomic_fetch_add(&a->ctr.dropped, (long long)recs);
                a->lost_pending += recs;
                ag_log(AG_LOG_WARN, NULL,
                       "audit sink %s: spool over spool_max_bytes; dropped the oldest segment (%llu rows, "
                       "%llu bytes undelivered)",
                       s->conf->name, (unsigned long long)recs, (unsigned long long)bytes);
            }
        } else {
            s->over = true;
        }
    }
    if (ag_spool_append(s->spool, json, len) != 0) {
        s->failed_until_ms = now_ms() + FAIL_HOLD_MS;
        atomic_fetch_add(&a->ctr.io_errors, 1);
        atomic_fetch_add(&a->ctr.dropped, 1);
        a->lost_pending++;
        note_error(s, "cannot append to the spool");
        return;
    }
    s->failed_until_ms = 0;
    update_state(a); /* a spool now over its cap refuses admissions before its bytes show */
    atomic_fetch_add(&a->ctr.rows_spooled, 1);
}

static int row_cb(const char *json, size_t len, void *arg)
{
    ag_audit *a = arg;
    for (size_t i = 0; i < a->nsinks; i++) {
        sink_rt *s = &a->sinks[i];
        if (s->spool) {
            spool_put(a, s, json, len);
        } else if (s->line && ag_line_sink_write(s->line, json, len) != 0) {
            s->failed_until_ms = now_ms() + FAIL_HOLD_MS;
            atomic_fetch_add(&a->ctr.io_errors, 1);
            note_error(s, "cannot write");
        }
    }
    return 0;
}

/* Writes what the drain queued in the line sinks: one write per sink and drain. */
static void flush_lines(ag_audit *a)
{
    for (size_t i = 0; i < a->nsinks; i++) {
        sink_rt *s = &a->sinks[i];
        if (!s->line)
            continue;
        long n = ag_line_sink_flush(s->line);
        if (n < 0) {
            s->failed_until_ms = now_ms() + FAIL_HOLD_MS;
            atomic_fetch_add(&a->ctr.io_errors, 1);
            note_error(s, "cannot write");
        } else if (n > 0) {
            s->failed_until_ms = 0;
            atomic_fetch_add(&a->ctr.lines_written, n);
        }
    }
}

static void process(ag_audit *a, ag_audit_record *r)
{
    if (ag_audit_record_rows(r, &a->row_opts, row_cb, a) < 0) {
        atomic_fetch_add(&a->ctr.dropped, 1);
        a->lost_pending++;
        ag_log(AG_LOG_ERROR, r->request_id[0] ? r->request_id : NULL,
               "audit: cannot serialise a record (out of memory); lost");
    }
}

static void update_state(ag_audit *a)
{
    bool full = false;
    long long total = 0;
    for (size_t i = 0; i < a->nsinks; i++) {
        sink_rt *s = &a->sinks[i];
        if (s->spool) {
            uint64_t b = ag_spool_bytes(s->spool); /* the cap is about disk space */
            total += (long long)ag_spool_pending_bytes(s->spool);
            if (s->over && b < (uint64_t)a->cfg.spool_max_bytes / 10 * 9)
                s->over = false;
            else if (!s->over && b >= (uint64_t)a->cfg.spool_max_bytes)
                s->over = true;
        }
        if (s->over || (s->failed_until_ms && now_ms() < s->failed_until_ms))
            full = true;
    }
    /* The state first, then the gauge: whoever sees the bytes sees the refusal they caused. */
    bool was = atomic_load(&a->full);
    bool now = full && a->cfg.on_full == AG_AUDIT_ON_FULL_REJECT;
    if (now != was)
        atomic_store(&a->full, now);
    atomic_store(&a->ctr.spool_bytes, total);
    if (now != was) {
        if (now)
            ag_log(AG_LOG_ERROR, NULL, "audit: trail full or failing (spool %lld bytes); refusing new requests "
                                       "(on_full = reject)", total);
        else
            ag_log(AG_LOG_INFO, NULL, "audit: trail has room again; accepting requests");
    }
}

static void sync_all(ag_audit *a)
{
    flush_lines(a);
    for (size_t i = 0; i < a->nsinks; i++) {
        sink_rt *s = &a->sinks[i];
        int rc = s->spool ? ag_spool_sync(s->spool) : s->line ? ag_line_sink_sync(s->line) : 0;
        if (rc != 0) {
            s->failed_until_ms = now_ms() + FAIL_HOLD_MS;
            atomic_fetch_add(&a->ctr.io_errors, 1);
            note_error(s, "cannot sync");
        }
    }
    a->need_sync = false;
}

static void emit_loss_event(ag_audit *a)
{
    if (!a->lost_pending)
        return;
    char n[32];
    snprintf(n, sizeof n, "%llu", a->lost_pending);
    a->lost_pending = 0;
    ag_audit_record *r = ag_audit_record_new();
    if (!r)
        return;
    r->type = AG_AUDIT_GATEWAY_EVENT;
    r->event_type = AG_EVENT_AUDIT_DATA_LOSS;
    cJSON *d = cJSON_CreateObject();
    if (d && cJSON_AddStringToObject(d, "records", n) &&
        cJSON_AddStringToObject(d, "reason", a->cfg.on_full == AG_AUDIT_ON_FULL_DROP_OLDEST
                                                 ? "spool full (drop_oldest) or write error"
                                                 : "write error")) {
        char *s = cJSON_PrintUnformatted(d);
        if (s) {
            r->event_details = strdup(s);
            cJSON_free(s);
        }
    }
    cJSON_Delete(d);
    process(a, r); /* losses it causes are reported with the next drain */
    ag_audit_record_free(r);
}

/* Moves up to limit queued records (0: all) into the sinks and spools; returns how many. */
static size_t drain(ag_audit *a, size_t limit)
{
    size_t n = 0;
    while (limit == 0 || n < limit) {
        ag_audit_record *r = ag_audit_queue_pop(a->q);
        if (r) {
            atomic_fetch_sub(&a->ctr.queue_depth, 1);
            process(a, r);
            ag_audit_record_free(r);
            n++;
            continue;
        }
        if (!atomic_load(&a->ovf_nonempty))
            break;
        pthread_mutex_lock(&a->ovf_lock);
        ag_audit_record *list = a->ovf_head;
        a->ovf_head = a->ovf_tail = NULL;
        atomic_store(&a->ovf_nonempty, false);
        pthread_mutex_unlock(&a->ovf_lock);
        while (list) {
            ag_audit_record *next = list->next_;
            atomic_fetch_sub(&a->ctr.queue_depth, 1);
            process(a, list);
            ag_audit_record_free(list);
            list = next;
            n++;
        }
    }
    if (n == 0 && !a->lost_pending)
        return 0;
    emit_loss_event(a);
    flush_lines(a);
    if (a->cfg.fsync_interval_ms == 0)
        sync_all(a);
    else
        a->need_sync = true;
    update_state(a);
    if (!a->no_upload)
        for (size_t i = 0; i < a->nsinks; i++)
            if (a->sinks[i].mon)
                ag_monitor_kick(a->sinks[i].mon);
    return n;
}

static void on_progress(void *arg)
{
    update_state(arg);
}

static bool all_settled(ag_audit *a)
{
    for (size_t i = 0; i < a->nsinks; i++)
        if (a->sinks[i].mon && !ag_monitor_settled(a->sinks[i].mon))
            return false;
    return true;
}

static void on_stop_poll(evutil_socket_t fd, short what, void *arg)
{
    ag_audit *a = arg;
    drain(a, 0);
    if (all_settled(a) || now_ms() >= a->deadline_ms)
        event_base_loopbreak(a->base);
}

static void begin_stop(ag_audit *a)
{
    a->stop_begun = true;
    drain(a, 0);
    sync_all(a);
    for (size_t i = 0; i < a->nsinks; i++)
        if (a->sinks[i].mon)
            ag_monitor_flush(a->sinks[i].mon);
    struct timeval tv = {0, STOP_POLL_MS * 1000};
    event_add(a->stop_ev, &tv);
    on_stop_poll(-1, 0, a);
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    ag_audit *a = arg;
    uint64_t v;
    ssize_t r = read(a->wake_fd, &v, sizeof v);
    (void)r;
    atomic_store(&a->wake_pending, 0);
    /* a bounded slice, so upload callbacks get their turn under a flood; the rest on the next pass */
    if (drain(a, DRAIN_SLICE) == DRAIN_SLICE)
        event_active(a->wake_ev, EV_READ, 0);
    if (atomic_load(&a->stopping) && !a->stop_begun)
        begin_stop(a);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    update_state(arg);
}

static void on_fsync_timer(evutil_socket_t fd, short what, void *arg)
{
    ag_audit *a = arg;
    if (a->need_sync) {
        sync_all(a);
        update_state(a);
    }
}

static void *thread_main(void *arg)
{
    ag_audit *a = arg;
    for (size_t i = 0; i < a->nsinks; i++)
        if (a->sinks[i].mon)
            ag_monitor_kick(a->sinks[i].mon); /* what a previous run left */
    event_base_dispatch(a->base);
    return NULL;
}

/* ---- public API ---- */

static char *path_join(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", a, b);
    return p;
}

static int open_sinks(ag_audit *a, int stdout_fd, char *err, size_t errlen)
{
    a->sinks = calloc(a->cfg.nsinks, sizeof *a->sinks);
    if (!a->sinks) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    a->nsinks = a->cfg.nsinks;
    for (size_t i = 0; i < a->nsinks; i++) {
        sink_rt *s = &a->sinks[i];
        const ag_audit_sink_conf *c = &a->cfg.sinks[i];
        s->conf = c;
        if (c->type == AG_AUDIT_SINK_FILE) {
            s->line = ag_line_sink_open_file(c->path, (uint64_t)c->max_bytes, (unsigned)c->max_files, err,
                                             errlen);
            if (!s->line)
                return -1;
        } else if (c->type == AG_AUDIT_SINK_STDOUT) {
            s->line = ag_line_sink_open_fd(stdout_fd > 0 ? stdout_fd : 1);
            if (!s->line) {
                snprintf(err, errlen, "out of memory");
                return -1;
            }
        } else {
            if (!a->token.get_token) {
                snprintf(err, errlen, "audit sink %s: azure_monitor needs a token source", c->name);
                return -1;
            }
            if (mkdir(a->cfg.spool_dir, 0700) != 0 && errno != EEXIST) {
                snprintf(err, errlen, "audit spool_dir %s: %s", a->cfg.spool_dir, strerror(errno));
                return -1;
            }
            char *dir = path_join(a->cfg.spool_dir, c->name);
            char *dead = c->dead_letter_path ? strdup(c->dead_letter_path) : NULL;
            if (!dead && dir)
                dead = path_join(dir, "dead-letter.jsonl");
            if (!dir || !dead) {
                free(dir);
                free(dead);
                snprintf(err, errlen, "out of memory");
                return -1;
            }
            ag_spool_options so = {.dir = dir, .segment_bytes = (uint64_t)a->cfg.spool_segment_bytes};
            s->spool = ag_spool_open(&so, err, errlen);
            if (s->spool) {
                ag_monitor_env env = {
                    .base = a->base,
                    .curl = a->curl,
                    .spool = s->spool,
                    .conf = c,
                    .dead_letter_path = dead,
                    .token = a->token,
                    .counters = &a->ctr,
                    .progress = on_progress,
                    .progress_arg = a,
                };
                s->mon = ag_monitor_new(&env, err, errlen);
            }
            free(dir);
            free(dead);
            if (!s->spool || !s->mon)
                return -1;
        }
    }
    return 0;
}

static void close_all(ag_audit *a)
{
    ag_curl_loop_free(a->curl); /* cancels a call in flight without its callback */
    a->curl = NULL;
    for (size_t i = 0; i < a->nsinks; i++) {
        sink_rt *s = &a->sinks[i];
        ag_monitor_free(s->mon);
        ag_spool_close(s->spool);
        ag_line_sink_close(s->line);
    }
    free(a->sinks);
    a->sinks = NULL;
    a->nsinks = 0;
    if (a->wake_ev)
        event_free(a->wake_ev);
    if (a->fsync_ev)
        event_free(a->fsync_ev);
    if (a->stop_ev)
        event_free(a->stop_ev);
    if (a->tick_ev)
        event_free(a->tick_ev);
    a->wake_ev = a->fsync_ev = a->stop_ev = a->tick_ev = NULL;
    if (a->base)
        event_base_free(a->base);
    a->base = NULL;
}

ag_audit *ag_audit_new(const ag_audit_init *init, char *err, size_t errlen)
{
    ag_audit *a = calloc(1, sizeof *a);
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    a->wake_fd = -1;
    pthread_mutex_init(&a->ovf_lock, NULL);
    if (ag_audit_config_copy(&a->cfg, init->config) != 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    a->token = init->token;
    if (init->gateway_instance)
        snprintf(a->instance, sizeof a->instance, "%s", init->gateway_instance);
    else if (gethostname(a->instance, sizeof a->instance - 1) != 0)
        a->instance[0] = '\0';
    a->row_opts.default_capture = a->cfg.capture;
    a->row_opts.max_text_bytes = (size_t)a->cfg.max_text_bytes_per_request;
    a->row_opts.field_max = AG_AUDIT_FIELD_MAX;
    a->row_opts.gateway_instance = a->instance;

    a->q = ag_audit_queue_new((size_t)a->cfg.queue_capacity);
    a->reject_depth = a->q ? (long long)ag_audit_queue_capacity(a->q) / 8 * 7 : 0;
    a->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    a->base = event_base_new();
    if (!a->q || a->wake_fd < 0 || !a->base) {
        snprintf(err, errlen, "audit: cannot create the queue or event loop: %s", strerror(errno));
        goto fail;
    }
    a->curl = ag_curl_loop_new(a->base);
    a->wake_ev = event_new(a->base, a->wake_fd, EV_READ | EV_PERSIST, on_wake, a);
    a->stop_ev = event_new(a->base, -1, EV_PERSIST, on_stop_poll, a);
    a->tick_ev = event_new(a->base, -1, EV_PERSIST, on_tick, a);
    struct timeval tick = {TICK_MS / 1000, TICK_MS % 1000 * 1000};
    if (!a->curl || !a->wake_ev || !a->stop_ev || !a->tick_ev || event_add(a->wake_ev, NULL) != 0 ||
        event_add(a->tick_ev, &tick) != 0) {
        snprintf(err, errlen, "audit: cannot set up the event loop");
        goto fail;
    }
    if (a->cfg.fsync_interval_ms > 0) {
        a->fsync_ev = event_new(a->base, -1, EV_PERSIST, on_fsync_timer, a);
        struct timeval tv = {(time_t)(a->cfg.fsync_interval_ms / 1000),
                             (suseconds_t)(a->cfg.fsync_interval_ms % 1000 * 1000)};
        if (!a->fsync_ev || event_add(a->fsync_ev, &tv) != 0) {
            snprintf(err, errlen, "audit: cannot set up the fsync timer");
            goto fail;
        }
    }
    if (open_sinks(a, init->stdout_fd, err, errlen) != 0)
        goto fail;
    update_state(a);

    /* The audit thread takes no signals: they go to the main thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&a->thread, NULL, thread_main, a);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        snprintf(err, errlen, "audit: cannot start the audit thread: %s", strerror(rc));
        goto fail;
    }
    a->started = true;
    return a;
fail:
    close_all(a);
    if (a->wake_fd >= 0)
        close(a->wake_fd);
    ag_audit_queue_free(a->q, free_record);
    ag_audit_config_free(&a->cfg);
    pthread_mutex_destroy(&a->ovf_lock);
    free(a);
    return NULL;
}

bool ag_audit_accepting(ag_audit *a)
{
    if (atomic_load_explicit(&a->stopping, memory_order_relaxed))
        return false;
    if (a->cfg.on_full == AG_AUDIT_ON_FULL_REJECT &&
        (atomic_load_explicit(&a->full, memory_order_relaxed) ||
         atomic_load_explicit(&a->ctr.queue_depth, memory_order_relaxed) >= a->reject_depth)) {
        atomic_fetch_add_explicit(&a->ctr.rejected, 1, memory_order_relaxed);
        return false;
    }
    return true;
}

ag_audit_status ag_audit_submit(ag_audit *a, ag_audit_record *r)
{
    if (!r)
        return AG_AUDIT_OK;
    if (atomic_load(&a->closed)) {
        ag_audit_record_free(r);
        atomic_fetch_add(&a->ctr.dropped, 1);
        return AG_AUDIT_CLOSED;
    }
    atomic_fetch_add_explicit(&a->ctr.submitted, 1, memory_order_relaxed);
    atomic_fetch_add(&a->ctr.queue_depth, 1);
    if (ag_audit_queue_push(a->q, r)) {
        wake(a, false);
        return AG_AUDIT_OK;
    }
    ag_audit_status st = AG_AUDIT_OK;
    if (a->cfg.on_full == AG_AUDIT_ON_FULL_DROP_OLDEST) {
        for (int i = 0; i < 4; i++) {
            ag_audit_record *old = ag_audit_queue_pop(a->q);
            if (old) {
                ag_audit_record_free(old);
                atomic_fetch_sub(&a->ctr.queue_depth, 1);
                atomic_fetch_add(&a->ctr.dropped, 1);
                st = AG_AUDIT_OK_DROPPED;
            }
            if (ag_audit_queue_push(a->q, r)) {
                wake(a, false);
                return st;
            }
        }
    }
    /* reject (or a drop_oldest race): keep it in the overflow list; admissions are refused meanwhile */
    r->next_ = NULL;
    pthread_mutex_lock(&a->ovf_lock);
    if (a->ovf_tail)
        a->ovf_tail->next_ = r;
    else
        a->ovf_head = r;
    a->ovf_tail = r;
    atomic_store(&a->ovf_nonempty, true);
    pthread_mutex_unlock(&a->ovf_lock);
    atomic_fetch_add(&a->ctr.queue_overflow, 1);
    wake(a, false);
    return st;
}

int ag_audit_event(ag_audit *a, ag_audit_event_type type, ...)
{
    ag_audit_record *r = ag_audit_record_new();
    cJSON *d = cJSON_CreateObject();
    bool ok = r && d;
    va_list ap;
    va_start(ap, type);
    for (const char *k; ok && (k = va_arg(ap, const char *)) != NULL;) {
        const char *v = va_arg(ap, const char *);
        ok = cJSON_AddStringToObject(d, k, v ? v : "") != NULL;
    }
    va_end(ap);
    char *s = ok ? cJSON_PrintUnformatted(d) : NULL;
    cJSON_Delete(d);
    if (s) {
        r->event_details = strdup(s);
        cJSON_free(s);
    }
    if (!r || !r->event_details) {
        ag_audit_record_free(r);
        return -1;
    }
    r->type = AG_AUDIT_GATEWAY_EVENT;
    r->event_type = type;
    return (int)ag_audit_submit(a, r);
}

const ag_audit_counters *ag_audit_counters_get(const ag_audit *a)
{
    return &a->ctr;
}

int ag_audit_shutdown(ag_audit *a, int64_t deadline_ms)
{
    if (a->shut)
        return a->shut_rc;
    a->deadline_ms = deadline_ms;
    atomic_store(&a->stopping, true);
    if (a->started) {
        wake(a, true);
        pthread_join(a->thread, NULL);
        a->started = false;
    }
    /* Late records (a submitter racing the stop) go to the spools for the next start. */
    atomic_store(&a->closed, true);
    a->no_upload = true;
    drain(a, 0);
    sync_all(a);
    int rc = 0;
    for (size_t i = 0; i < a->nsinks; i++)
        if (a->sinks[i].mon && !ag_monitor_delivered(a->sinks[i].mon))
            rc = 1;
    long long left = atomic_load(&a->ctr.spool_bytes);
    if (rc)
        ag_log(AG_LOG_WARN, NULL, "audit: stopped with undelivered rows in the spool (%lld bytes); the next "
                                  "start uploads them", left);
    a->shut = true;
    a->shut_rc = rc;
    return rc;
}

void ag_audit_free(ag_audit *a)
{
    if (!a)
        return;
    if (!a->shut)
        ag_audit_shutdown(a, now_ms());
    close_all(a);
    long long lost = 0;
    ag_audit_record *r;
    while ((r = ag_audit_queue_pop(a->q)) != NULL) {
        ag_audit_record_free(r);
        lost++;
    }
    for (r = a->ovf_head; r;) {
        ag_audit_record *next = r->next_;
        ag_audit_record_free(r);
        r = next;
        lost++;
    }
    if (lost)
        ag_log(AG_LOG_ERROR, NULL, "audit: %lld records submitted after shutdown were lost", lost);
    ag_audit_queue_free(a->q, NULL);
    if (a->wake_fd >= 0)
        close(a->wake_fd);
    ag_audit_config_free(&a->cfg);
    pthread_mutex_destroy(&a->ovf_lock);
    free(a);
}
