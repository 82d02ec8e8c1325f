/* The audit trail: the pipeline hands finished records to a bounded lock-free queue; one audit thread
 * (its own event_base) turns them into rows, writes them to the file/stdout sinks, appends them to a
 * durable spool per azure_monitor sink and uploads from the spool to the Logs Ingestion API.
 *
 * Pipeline use (worker thread):
 *   admission:  if (!ag_audit_accepting(audit)) answer 503 (on_full = reject and the trail is full),
 *               so a request is refused BEFORE it could be served unaudited;
 *   end:        r = ag_audit_record_new(); fill r; ag_audit_submit(audit, r)  (ownership passes).
 * Neither call blocks or makes a syscall in the common case (submit writes an eventfd only when the
 * audit thread is asleep). Upload time never adds to a request's latency.
 *
 * Everything else (gateway events, counters, shutdown) is callable from any thread.
 *
 * Delivery: at least once. A row is durable once appended to the spool (fsync per drain, or every
 * N ms); it is deleted from the spool only after Azure Monitor acknowledged it (2xx), or after it was
 * moved to the dead-letter file (400/413 for that row alone). Every row carries a unique RecordId so
 * duplicates after a crash can be removed in KQL. Records still in the in-memory queue when the
 * process is killed (normally milliseconds' worth) are lost. */
#ifndef AOAI_GUARD_AUDIT_H
#define AOAI_GUARD_AUDIT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aoai_guard/audit_config.h"
#include "aoai_guard/audit_record.h"

typedef struct ag_audit ag_audit;

/* Monotonic counters and gauges, readable from any thread (relaxed atomic loads) for /metrics.
 * "rows" are table rows: one per record, more when long text is split into parts. */
typedef struct ag_audit_counters {
    _Atomic long long submitted;       /* records accepted by ag_audit_submit / ag_audit_event */
    _Atomic long long queue_depth;     /* gauge: records waiting for the audit thread */
    _Atomic long long queue_overflow;  /* records parked in the overflow list (queue full, reject) */
    _Atomic long long rows_spooled;    /* rows appended to a spool (per azure_monitor sink) */
    _Atomic long long spool_bytes;     /* gauge: spooled bytes not yet acknowledged, all sinks */
    _Atomic long long rows_sent;       /* rows acknowledged by Azure Monitor */
    _Atomic long long calls;           /* upload calls started */
    _Atomic long long retries;         /* uploads rescheduled after 429/5xx/401/403/transport errors */
    _Atomic long long failures;        /* upload calls that did not end in 2xx */
    _Atomic long long auth_failures;   /* 401/403 answers */
    _Atomic long long dead_lettered;   /* rows moved to a dead-letter file */
    _Atomic long long dropped;         /* rows or records lost: drop_oldest, queue drop, after close */
    _Atomic long long rejected;        /* admissions refused by ag_audit_accepting */
    _Atomic long long corrupt;         /* torn/corrupt spool records skipped */
    _Atomic long long io_errors;       /* spool, dead-letter and sink write errors */
    _Atomic long long lines_written;   /* rows written to file/stdout sinks */
} ag_audit_counters;

/* Where azure_monitor sinks get their bearer token (scope https://monitor.azure.com//.default). Both
 * functions are called on the audit thread. */
typedef struct ag_audit_token_source {
    /* The current token, or NULL when none is available yet; copied before the call returns. */
    const char *(*get_token)(void *arg);
    /* Azure Monitor answered 401/403 with the token: please refresh it (asynchronously). May be NULL. */
    void (*token_rejected)(void *arg);
    void *arg;
} ag_audit_token_source;

typedef struct ag_audit_init {
    const ag_audit_config *config;    /* copied */
    ag_audit_token_source token;      /* required when there is an azure_monitor sink */
    const char *gateway_instance;     /* GatewayInstance column; NULL: the host name */
    int stdout_fd;                    /* the stdout sink's fd; 0 means 1 (tests pass a pipe) */
} ag_audit_init;

typedef enum ag_audit_status {
    AG_AUDIT_OK = 0,          /* queued */
    AG_AUDIT_OK_DROPPED,      /* queued, but the queue was full and the oldest record was dropped */
    AG_AUDIT_CLOSED,          /* the trail is shut down: the record was freed, not recorded */
} ag_audit_status;

/* Opens every sink and spool and starts the audit thread. NULL with a message in err. */
ag_audit *ag_audit_new(const ag_audit_init *init, char *err, size_t errlen);

/* Admission check: false when a request must be refused with 503 because it could not be audited
 * (on_full = reject and the spool is over spool_max_bytes or the queue is nearly full), or after
 * shutdown. Lock-free; counts refusals. */
bool ag_audit_accepting(ag_audit *a);

/* Hands a finished record to the audit thread; always takes ownership of r. Never blocks. Under
 * reject a full queue parks the record in a short overflow list instead of losing it; under
 * drop_oldest the oldest queued record is dropped (counted). */
ag_audit_status ag_audit_submit(ag_audit *a, ag_audit_record *r);

/* Records a gateway event with details given as NULL-terminated "key", "value" string pairs, e.g.
 * ag_audit_event(a, AG_EVENT_CONFIG_RELOAD, "old_hash", h1, "new_hash", h2, "changed", "auth", NULL).
 * Same queueing as ag_audit_submit; returns its status, or -1 on allocation failure. */
int ag_audit_event(ag_audit *a, ag_audit_event_type type, ...);

/* The live counters (never NULL; valid until ag_audit_free). */
const ag_audit_counters *ag_audit_counters_get(const ag_audit *a);

/* Stops the trail (SIGTERM path): drains the queue into the spools and sinks, syncs them, and keeps
 * uploading until every spool is delivered or deadline_ms (ag_mono_ns() / 1e6 scale) passes; then
 * stops the thread. What is left stays in the spool for the next start. Returns 0 when everything
 * was delivered, 1 when rows remain spooled. Call once, after the workers stopped submitting. */
int ag_audit_shutdown(ag_audit *a, int64_t deadline_ms);

/* Frees the trail (shutting it down at once if ag_audit_shutdown was not called). NULL is a no-op. */
void ag_audit_free(ag_audit *a);

#endif
