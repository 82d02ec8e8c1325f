/* Prometheus metrics: a sharded registry rendered in the text exposition format, version 0.0.4.
 *
 * Shards. The registry has one shard per writing thread: one per worker plus one for the control
 * thread (by convention the last, ag_metrics_control_shard()). Every series keeps one cell per shard,
 * on its own cache line; a thread updates only the cells of its own shard, with relaxed atomic load +
 * store (no read-modify-write, no lock, no allocation), and the scraper sums the shards when it renders.
 * Counters and histograms are therefore exact once the writers are quiet; a gauge is the SUM of its
 * shards (a gauge that one thread owns, e.g. upstream_up set by the control thread, lives in that one
 * shard; open_connections is +1/-1 by each worker in its own shard and renders as the total).
 *
 * Families. Declare every family once, with fixed label NAMES, before the worker threads start (the
 * registry copies the strings; declaring later is also safe but serialised). Label VALUES are dynamic.
 *
 * Cardinality. Each labelled family keeps at most max_series distinct label sets (ag_metrics_new,
 * default AG_METRICS_DEFAULT_MAX_SERIES = 200, configurable as "max_series_per_family"). Once a family
 * is full, every label set not yet seen is counted in ONE extra series whose labels all read "other"
 * (AG_METRICS_OTHER), so a family renders at most max_series + 1 series. The same "other" series also
 * receives any label set with a value longer than AG_METRICS_MAX_VALUE_LEN bytes or not valid UTF-8
 * (label values often come from request paths: hostile input), and a label set whose values are all
 * literally "other". Series are never evicted.
 *
 * Hot path. ag_metric_series() finds (or, the first time, interns) a label set and returns a handle for
 * one shard. Finding an interned set is lock-free and allocation-free (an insert-only open-addressing
 * table read with acquire loads); interning takes the family's mutex once per new label set (rare), and
 * once a family is full, misses go straight to "other" without the mutex. Callers may cache a handle
 * (e.g. per worker, per upstream) and update it with no lookup at all.
 *
 * Thread rules: the update functions (ag_metric_inc/add/set/gauge_add/observe) on a handle for shard s
 * may be called only by the one thread that owns shard s. ag_metric_series() may be called from any
 * thread. ag_metrics_render() runs on one thread at a time (the control thread, serving the admin
 * listener's /metrics) concurrently with the writers. ag_metrics_free() only after all threads stop. */
#ifndef AOAI_GUARD_METRICS_H
#define AOAI_GUARD_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>

#include "aoai_guard/confparse.h"

struct evbuffer;

#define AG_METRICS_MAX_LABELS 4          /* label names per family */
#define AG_METRICS_MAX_BUCKETS 32        /* finite histogram bounds per family (+Inf is implied) */
#define AG_METRICS_MAX_FAMILIES 128
#define AG_METRICS_MAX_SHARDS 1024
#define AG_METRICS_MAX_SERIES_LIMIT 100000
#define AG_METRICS_DEFAULT_MAX_SERIES 200
#define AG_METRICS_MAX_VALUE_LEN 128     /* longer label values collapse into "other" */
#define AG_METRICS_OTHER "other"
/* The Content-Type of the rendered text. */
#define AG_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

typedef enum ag_metric_type {
    AG_METRIC_COUNTER = 0, /* monotonically increasing uint64 */
    AG_METRIC_GAUGE,       /* double, sum over shards */
    AG_METRIC_HISTOGRAM,   /* cumulative buckets, _sum, _count */
} ag_metric_type;

typedef struct ag_metrics ag_metrics;             /* the registry (opaque) */
typedef struct ag_metric_family ag_metric_family; /* one metric name (opaque, owned by the registry) */

/* A series in one shard. Plain value; copy and cache it freely while the registry lives. A handle with
 * cell == NULL (unknown family, bad shard, out of memory) makes every update a no-op. */
typedef struct ag_metric_handle {
    const ag_metric_family *family;
    void *cell; /* this shard's words of the series; opaque */
} ag_metric_handle;

/* A value computed at scrape time, on the rendering thread (e.g. queue depth, spool bytes, RSS). */
typedef double (*ag_metric_value_fn)(void *ctx);

typedef struct ag_metric_desc {
    const char *name;          /* [a-zA-Z_:][a-zA-Z0-9_:]*; counters by convention end in _total */
    const char *help;          /* free text (valid UTF-8); escaped on output */
    ag_metric_type type;
    const char *const *labels; /* NULL-terminated label names, or NULL for none */
    const double *buckets;     /* histograms: strictly increasing finite upper bounds */
    size_t nbuckets;           /* histograms: 1..AG_METRICS_MAX_BUCKETS; others: 0 */
} ag_metric_desc;

/* Creates a registry with nshards shards (1..AG_METRICS_MAX_SHARDS) and a per-family cap of max_series
 * label sets (1..AG_METRICS_MAX_SERIES_LIMIT; 0 means the default). NULL on bad arguments or no memory.
 * The caller owns it and frees it with ag_metrics_free. */
ag_metrics *ag_metrics_new(unsigned nshards, unsigned max_series);
/* Frees the registry, its families and series; every handle becomes invalid. NULL is fine. */
void ag_metrics_free(ag_metrics *m);
/* The number of shards given to ag_metrics_new. */
unsigned ag_metrics_nshards(const ag_metrics *m);
/* The shard reserved for the control thread by convention: nshards - 1. */
unsigned ag_metrics_control_shard(const ag_metrics *m);

/* Declares a family (strings copied). NULL with a message in err on an invalid or duplicate name,
 * invalid/duplicate/reserved label names ("le" in histograms, "__" prefix), bad buckets, or too many
 * families. A family without labels starts with its single series at 0, so it renders from the start. */
ag_metric_family *ag_metrics_declare(ag_metrics *m, const ag_metric_desc *desc, char *err, size_t errlen);
/* The family with this exact name, or NULL. */
ag_metric_family *ag_metrics_find(const ag_metrics *m, const char *name);
/* Makes an unlabelled counter or gauge report fn(ctx) at scrape time instead of its stored value.
 * Returns 0, or -1 for a labelled family or a histogram. fn runs on the rendering thread; fn = NULL
 * restores the stored value. ctx must outlive the registry or the next call. */
int ag_metric_family_set_fn(ag_metric_family *f, ag_metric_value_fn fn, void *ctx);
/* Distinct label sets interned so far, not counting the "other" series (at most max_series). */
size_t ag_metric_family_nseries(const ag_metric_family *f);

/* The handle of the series with these label values (values[i] for the i-th declared label; NULL reads
 * as ""; values may be NULL for an unlabelled family) in shard `shard`. Interns the set on first sight
 * or maps it to "other" (see Cardinality above). Lock-free for a set already seen. */
ag_metric_handle ag_metric_series(ag_metric_family *f, unsigned shard, const char *const *values);

/* One remembered label set and its handle, for a thread that asks for the same series again and
 * again (a worker's requests mostly share deployment, operation and status class): a hit compares
 * the values instead of validating, hashing and probing. Zero-initialised is empty; owned by the
 * thread of its shard. Values longer than AG_METRIC_MEMO_VALUE bytes are looked up every time. */
#define AG_METRIC_MEMO_LABELS 3
#define AG_METRIC_MEMO_VALUE 63
typedef struct ag_metric_memo {
    const ag_metric_family *family; /* NULL: empty */
    unsigned shard;
    char vals[AG_METRIC_MEMO_LABELS][AG_METRIC_MEMO_VALUE + 1];
    ag_metric_handle h;
} ag_metric_memo;

/* ag_metric_series() through memo m (series are never evicted, so a remembered handle stays
 * valid as long as the registry). */
ag_metric_handle ag_metric_series_memo(ag_metric_memo *m, ag_metric_family *f, unsigned shard,
                                       const char *const *values);

/* Counter += 1. No-op on a non-counter or null handle. */
void ag_metric_inc(ag_metric_handle h);
/* Counter += n. No-op on a non-counter or null handle. */
void ag_metric_add(ag_metric_handle h, uint64_t n);
/* Gauge (this shard's part) = v. No-op on a non-gauge or null handle. */
void ag_metric_set(ag_metric_handle h, double v);
/* Gauge (this shard's part) += d (d may be negative). No-op on a non-gauge or null handle. */
void ag_metric_gauge_add(ag_metric_handle h, double d);
/* Histogram: counts v in the first bucket whose bound >= v (else +Inf) and adds v to the sum. NaN is
 * ignored. No-op on a non-histogram or null handle. */
void ag_metric_observe(ag_metric_handle h, double v);

/* Reads a series summed over shards without interning it: *value = counter / gauge value or histogram
 * sum; *count = counter value or histogram count (0 for gauges). Either pointer may be NULL. False when
 * the label set was never seen (use AG_METRICS_OTHER values to read the overflow series). Any thread. */
bool ag_metric_read(const ag_metric_family *f, const char *const *values, double *value, uint64_t *count);

/* Appends every family, in declaration order, in text format 0.0.4 to out: "# HELP", "# TYPE", then the
 * series sorted by label values with "other" last; histograms as cumulative _bucket{le=...} lines ending
 * in le="+Inf", then _sum and _count (== the +Inf bucket). Label values escape \\ \" \n, HELP \\ \n.
 * Returns 0, or -1 when out could not grow (out then holds a truncated text: discard it). */
int ag_metrics_render(ag_metrics *m, struct evbuffer *out);

/* Resident set size of this process in bytes, from /proc/self/statm (NaN when unreadable); usable as an
 * ag_metric_value_fn (ctx unused). */
double ag_metrics_process_rss_bytes(void *ctx);
/* "1xx".."5xx" for an HTTP status in 100..599, else "other": the code_class label. */
const char *ag_metrics_code_class(int status);

/* Configuration of the metrics section (suggested place: "admin": {"metrics": {...}}). */
typedef enum ag_metrics_app_label {
    AG_METRICS_APP_LABEL_APP_ID = 0, /* aoai_guard_app_tokens_total{app=<azp/appid>} (capped) */
    AG_METRICS_APP_LABEL_OFF,        /* no per-app family at all */
} ag_metrics_app_label;

typedef struct ag_metrics_conf {
    unsigned max_series;             /* "max_series_per_family": 1..100000, default 200 */
    ag_metrics_app_label app_label;  /* "app_label": "app_id" (default) | "off" */
} ag_metrics_conf;

/* Fills the defaults (200 series, app_label app_id). */
void ag_metrics_conf_default(ag_metrics_conf *c);
/* Parses {"max_series_per_family": N, "app_label": "app_id"|"off"} at path into *out (absent keys keep
 * what *out holds: call ag_metrics_conf_default first). obj NULL keeps everything. 0 or -1 with err. */
int ag_metrics_conf_parse(const cJSON *obj, const char *path, ag_metrics_conf *out, ag_conf_err *err);

/* The proxy's standard families, so every stage uses the same names and labels. Pointers are owned by
 * the registry; NULL members (app_tokens_total when app_label is off) give no-op handles. */
typedef struct ag_metrics_std {
    ag_metric_family *requests_total;             /* counter {deployment,operation,code_class} */
    ag_metric_family *request_duration_seconds;   /* histogram {operation}, 0.5 ms .. 120 s */
    ag_metric_family *upstream_ttfb_seconds;      /* histogram {upstream}, 0.5 ms .. 120 s */
    ag_metric_family *tokens_total;               /* counter {deployment,kind}: kind prompt|completion */
    ag_metric_family *app_tokens_total;           /* counter {app,kind}; NULL when app_label is off */
    ag_metric_family *ratelimit_rejections_total; /* counter {policy} */
    ag_metric_family *policy_decisions_total;     /* counter {rule,action} */
    ag_metric_family *upstream_up;                /* gauge {upstream}: 1 up, 0 down (owner sets) */
    ag_metric_family *upstream_circuit_open;      /* gauge {upstream}: 1 open, 0 closed (owner sets) */
    ag_metric_family *upstream_failures_total;    /* counter {upstream,reason} */
    ag_metric_family *auth_failures_total;        /* counter {reason} */
    ag_metric_family *jwks_age_seconds;           /* gauge; give it a callback (set_fn) */
    ag_metric_family *jwks_refresh_failures_total;       /* counter */
    ag_metric_family *credential_refresh_failures_total; /* counter {scope} */
    ag_metric_family *audit_queue_depth;          /* gauge; give it a callback */
    ag_metric_family *audit_spool_bytes;          /* gauge; give it a callback */
    ag_metric_family *audit_records_sent_total;   /* counter */
    ag_metric_family *audit_retries_total;        /* counter */
    ag_metric_family *audit_dropped_total;        /* counter */
    ag_metric_family *open_connections;           /* gauge: each worker +1/-1 in its own shard */
    ag_metric_family *process_resident_memory_bytes; /* gauge; callback installed here */
    ag_metric_family *build_info;                 /* gauge {version} = 1 */
} ag_metrics_std;

/* Declares the standard families in m (conf NULL: defaults; only conf->app_label is read here, pass
 * conf->max_series to ag_metrics_new; version NULL: AG_VERSION), installs the RSS callback and sets
 * build_info{version} = 1 in the control shard. 0, or -1 with err. */
int ag_metrics_std_init(ag_metrics *m, const ag_metrics_conf *conf, const char *version,
                        ag_metrics_std *out, char *err, size_t errlen);
/* The standard latency buckets in seconds (0.0005 .. 120); *n receives their count. */
const double *ag_metrics_latency_buckets(size_t *n);

#endif
