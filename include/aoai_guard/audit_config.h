/* The "audit" section of the configuration:
 *
 *   "audit": {
 *     "sinks": [ { "type": "file", "path": "audit.jsonl", "max_bytes": 104857600, "max_files": 5 },
 *                { "type": "stdout" },
 *                { "type": "azure_monitor", "endpoint": "https://x.eastus-1.ingest.monitor.azure.com",
 *                  "dcr_immutable_id": "dcr-...", "stream": "Custom-AoaiGuardAudit" } ],
 *     "spool_dir": "spool", "capture": "full", "max_text_bytes_per_request": 1048576,
 *     "queue_capacity": 16384, "spool_max_bytes": 1073741824, "on_full": "reject", "fsync": "batch"
 *   }
 *
 * docs/audit.md describes every key. Ownership: the strings belong to the config struct and are
 * released by ag_audit_config_free(). */
#ifndef AOAI_GUARD_AUDIT_CONFIG_H
#define AOAI_GUARD_AUDIT_CONFIG_H

#include <stddef.h>
#include <cjson/cJSON.h>

#include "aoai_guard/audit_record.h"
#include "aoai_guard/confparse.h"

typedef enum ag_audit_on_full {
    AG_AUDIT_ON_FULL_REJECT = 0,    /* refuse new requests (503) while the spool is over its cap */
    AG_AUDIT_ON_FULL_DROP_OLDEST,   /* delete the oldest undelivered segment (counted, logged) */
} ag_audit_on_full;

typedef enum ag_audit_sink_type {
    AG_AUDIT_SINK_FILE = 0,
    AG_AUDIT_SINK_STDOUT,
    AG_AUDIT_SINK_AZURE_MONITOR,
} ag_audit_sink_type;

typedef struct ag_audit_sink_conf {
    ag_audit_sink_type type;
    char *name;                     /* unique among the sinks; azure_monitor: its spool subdirectory */
    /* file */
    char *path;
    long long max_bytes;            /* rotate beyond this; 0 = never */
    long long max_files;            /* rotated files kept */
    /* azure_monitor */
    char *endpoint;                 /* DCE or DCR ingestion endpoint, no trailing slash */
    char *dcr_immutable_id;
    char *stream;
    long long batch_max_bytes;      /* uncompressed JSON per call, <= 1048576 */
    long long max_calls_per_minute; /* per DCR; the service allows 12000 */
    char *dead_letter_path;         /* default <spool_dir>/<name>/dead-letter.jsonl */
    char *ca_file;                  /* NULL: system trust store */
    long long timeout_ms;           /* per call */
    long long retry_initial_ms;     /* first backoff after 429/5xx/transport failure */
    long long retry_max_ms;         /* backoff ceiling */
} ag_audit_sink_conf;

/* "capture_rules": the capture mode for the callers and deployments a scope names (first match
 * wins; lists AND together, entries OR; a trailing '*' matches by prefix; empty = anyone). */
typedef struct ag_audit_capture_rule {
    char **tenants;
    char **apps;          /* client app id, or the name of an api-key identity */
    char **roles;
    char **deployments;
    ag_audit_capture capture;
} ag_audit_capture_rule;

typedef struct ag_audit_config {
    ag_audit_sink_conf *sinks;
    size_t nsinks;
    char *spool_dir;
    ag_audit_capture capture;             /* default for scopes that do not choose */
    ag_audit_capture_rule *capture_rules; /* read by the workers' audit stage (not copied) */
    size_t ncapture_rules;
    long long max_text_bytes_per_request; /* prompt + response bytes kept per request */
    long long queue_capacity;             /* records between the workers and the audit thread */
    long long spool_max_bytes;            /* per azure_monitor sink */
    long long spool_segment_bytes;        /* 0: spool_max_bytes / 8, between 64 KiB and 8 MiB */
    ag_audit_on_full on_full;
    long long fsync_interval_ms;          /* 0 ("batch"): after every drain of the queue */
} ag_audit_config;

/* Parses the section (NULL = absent: the development default, one file sink "audit.jsonl"). path names
 * the section in messages ("audit"). 0, or -1 with err naming the exact key; *out is then empty. */
int ag_audit_config_parse(const cJSON *section, const char *path, ag_audit_config *out, ag_conf_err *err);

/* Releases everything the config owns and zeroes it. */
void ag_audit_config_free(ag_audit_config *c);

/* The capture mode for a caller and deployment: the first matching capture rule, else the default.
 * app is the client app id or the api-key identity name; roles is space separated. */
ag_audit_capture ag_audit_capture_for(const ag_audit_config *c, const char *tid, const char *app,
                                      const char *roles, const char *deployment);

/* A deep copy of src into dst (capture_rules are not copied: the audit thread does not use them);
 * 0 or -1 (allocation failure). */
int ag_audit_config_copy(ag_audit_config *dst, const ag_audit_config *src);

#endif
