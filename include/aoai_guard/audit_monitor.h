/* The Azure Monitor Logs Ingestion uploader of one azure_monitor sink. Runs on the audit thread's
 * event_base and sends one call at a time, in spool order:
 *
 *   POST {endpoint}/dataCollectionRules/{dcr_immutable_id}/streams/{stream}?api-version=2023-01-01
 *   Authorization: Bearer <token>, Content-Type: application/json, Content-Encoding: gzip,
 *   x-ms-client-request-id: <GUID>; body: gzip of a JSON array of rows, <= batch_max_bytes uncompressed.
 *
 *   2xx          the rows are acknowledged: the spool checkpoint moves past them
 *   400 / 413    the batch is halved until the offending row is alone; it goes to the dead-letter file
 *                (JSON lines: time, sink, status, reason, record) and the rest is sent
 *   401 / 403    token_rejected() is called and the call retried; if refused again the uploader holds
 *                (logged as an error at every retry) and retries with backoff until it is accepted
 *   429 / 5xx / 408 / transport failure: retried with exponential backoff and jitter, honouring
 *                Retry-After (seconds or HTTP date)
 *   other 4xx    configuration problem (wrong DCR, stream, endpoint): logged, retried with backoff
 * Calls are also kept within max_calls_per_minute (a one-minute window).
 *
 * Ownership: the uploader borrows base, curl loop, spool, conf and counters (they must outlive it).
 * Free order: the curl loop first (cancelling a call in flight without its callback), then the
 * uploader. */
#ifndef AOAI_GUARD_AUDIT_MONITOR_H
#define AOAI_GUARD_AUDIT_MONITOR_H

#include <stdbool.h>
#include <stddef.h>

#include "aoai_guard/audit.h"
#include "aoai_guard/audit_config.h"
#include "aoai_guard/curl_loop.h"
#include "aoai_guard/spool.h"

struct event_base;

typedef struct ag_monitor ag_monitor;

typedef struct ag_monitor_env {
    struct event_base *base;
    ag_curl_loop *curl;
    ag_spool *spool;
    const ag_audit_sink_conf *conf;
    const char *dead_letter_path;       /* resolved path (copied) */
    ag_audit_token_source token;
    ag_audit_counters *counters;
    void (*progress)(void *arg);        /* called after rows left the spool (commit) */
    void *progress_arg;
} ag_monitor_env;

/* Creates an idle uploader that will start from the spool's checkpoint. NULL with a message in err. */
ag_monitor *ag_monitor_new(const ag_monitor_env *env, char *err, size_t errlen);

/* Rows were appended to the spool: start a call unless one is in flight or a backoff is pending. */
void ag_monitor_kick(ag_monitor *m);

/* Shutdown: cut a pending backoff short and try now; settled() then also reports a failed try. */
void ag_monitor_flush(ag_monitor *m);

/* True when no call is in flight and either everything is delivered or (after flush) the last try
 * failed and is waiting for a retry. */
bool ag_monitor_settled(const ag_monitor *m);

/* True when every spooled row has been acknowledged or dead-lettered. */
bool ag_monitor_delivered(const ag_monitor *m);

/* Cancels timers and frees the uploader (see the free order above). NULL is a no-op. */
void ag_monitor_free(ag_monitor *m);

#endif
