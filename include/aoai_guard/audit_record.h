/* The audit record: what one request (or one gateway event) leaves in the audit trail, and how it is
 * turned into rows of the AoaiGuardAudit_CL table (conf/azure/audit-table-dcr.json).
 *
 * A worker fills an ag_audit_record (fixed-size fields, so filling it allocates nothing beyond the
 * record itself and the prompt/response text) and hands it to ag_audit_submit(), which takes
 * ownership. Everything costly (capture mode, SHA-256, UTF-8 repair, splitting into 64 KB parts,
 * JSON) happens later on the audit thread in ag_audit_record_rows().
 *
 * Ownership: a record from ag_audit_record_new() is freed with ag_audit_record_free(), which also
 * frees the prompt, response and event-details strings it owns. */
#ifndef AOAI_GUARD_AUDIT_RECORD_H
#define AOAI_GUARD_AUDIT_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aoai_guard/identity.h"

#define AG_AUDIT_ID_LEN 64           /* request id */
#define AG_AUDIT_ADDR_LEN 64         /* an IPv6 address with zone fits */
#define AG_AUDIT_NAME_LEN 128        /* deployment, model, upstream, rule names */
#define AG_AUDIT_SHORT_LEN 32        /* operation, api-version, actions, decisions */
#define AG_AUDIT_MAX_DECISIONS 16    /* policy decisions kept per request */
/* Azure Monitor silently truncates a field over 64 KB: each text field of a row is kept at or under
 * this many bytes in its JSON-escaped form (quotes excluded). */
#define AG_AUDIT_FIELD_MAX 64000
/* Text beyond this per field is not even buffered by the append helpers (the byte count goes on). */
#define AG_AUDIT_TEXT_HARD_MAX ((size_t)64 * 1024 * 1024)

typedef enum ag_audit_capture {
    AG_CAPTURE_DEFAULT = 0,  /* use the audit section's "capture" */
    AG_CAPTURE_FULL,         /* text as sent / received */
    AG_CAPTURE_REDACTED,     /* the text the pipeline passed is already redacted by the policy stage */
    AG_CAPTURE_HASHED,       /* only SHA-256 (hex) of the text and its length */
    AG_CAPTURE_OFF,          /* no text, no hash */
} ag_audit_capture;

typedef enum ag_audit_record_type {
    AG_AUDIT_REQUEST = 0,
    AG_AUDIT_GATEWAY_EVENT,
} ag_audit_record_type;

typedef enum ag_completion_reason {
    AG_COMPLETION_COMPLETE = 0,         /* the response was delivered whole */
    AG_COMPLETION_REJECTED,             /* answered by the gateway (auth, limits, policy), not forwarded */
    AG_COMPLETION_CLIENT_DISCONNECTED,  /* the caller went away mid-response */
    AG_COMPLETION_UPSTREAM_RESET,       /* upstream closed / reset mid-response */
    AG_COMPLETION_UPSTREAM_TIMEOUT,     /* first-byte or idle timeout on the upstream */
    AG_COMPLETION_UPSTREAM_ERROR,       /* connect/TLS failure or malformed upstream response (502) */
    AG_COMPLETION_SHUTDOWN,             /* cut by the drain deadline at shutdown */
} ag_completion_reason;

typedef enum ag_audit_event_type {
    AG_EVENT_START = 0,
    AG_EVENT_STOP,
    AG_EVENT_CONFIG_RELOAD,             /* details: old_hash, new_hash, changed */
    AG_EVENT_JWKS_ROTATION,             /* details: tenant, added, removed */
    AG_EVENT_CREDENTIAL_REFRESH_FAILED, /* details: credential, error */
    AG_EVENT_AUTH_FAILURE_BURST,        /* details: client_address, failures, window_s */
    AG_EVENT_AUDIT_DATA_LOSS,           /* details: reason, records (emitted by the audit trail itself) */
    AG_EVENT_TYPE_COUNT
} ag_audit_event_type;

typedef struct ag_audit_decision {
    char rule[AG_AUDIT_NAME_LEN];
    char action[AG_AUDIT_SHORT_LEN];    /* e.g. "allow", "block", "redact", "log" */
} ag_audit_decision;

typedef struct ag_audit_record {
    ag_audit_record_type type;
    int64_t time_ms;                    /* wall clock, Unix ms (set to "now" by ag_audit_record_new) */
    char request_id[AG_AUDIT_ID_LEN];

    /* request records */
    ag_identity identity;
    char client_address[AG_AUDIT_ADDR_LEN];    /* caller IP address (no port) */
    char deployment[AG_AUDIT_NAME_LEN];
    char operation[AG_AUDIT_SHORT_LEN];  /* "chat.completions", "embeddings", ... */
    char model[AG_AUDIT_NAME_LEN];
    char api_version[AG_AUDIT_SHORT_LEN];
    bool stream;
    int status;                          /* HTTP status sent to the caller; 0 = none sent */
    char upstream[AG_AUDIT_NAME_LEN];    /* upstream name used, "" when not forwarded */
    int64_t latency_ms;                  /* -1 = unknown (omitted from the row) */
    int64_t ttfb_ms;                     /* time to first byte from upstream; -1 = unknown */
    int64_t prompt_tokens;               /* usage as reported by upstream; -1 = unknown */
    int64_t completion_tokens;
    int64_t total_tokens;
    int64_t estimated_tokens;            /* the admission estimate; -1 = none */
    char rate_limit_decision[AG_AUDIT_SHORT_LEN]; /* "allow", "reject", "" */
    char rate_limit_policy[AG_AUDIT_NAME_LEN];
    ag_audit_decision decisions[AG_AUDIT_MAX_DECISIONS];
    int ndecisions;
    bool decisions_truncated;            /* more than AG_AUDIT_MAX_DECISIONS were added */
    ag_audit_capture capture;            /* from the policy scope; DEFAULT = audit config */
    ag_completion_reason completion_reason;
    char *prompt;                        /* owned; NULL = none */
    size_t prompt_len;                   /* bytes held in prompt */
    size_t prompt_bytes;                 /* bytes seen (> prompt_len when the hard max cut it) */
    char *response;                      /* owned; for streams the text assembled from the deltas */
    size_t response_len;
    size_t response_cap;
    size_t response_bytes;

    /* gateway events */
    ag_audit_event_type event_type;
    char *event_details;                 /* owned JSON object text, or NULL */

    /* Internal: link for the audit queue's overflow list. */
    struct ag_audit_record *next_;
} ag_audit_record;

/* Callback receiving one serialised row (a JSON object, not NUL-terminated in the count); returns 0 to
 * continue or -1 to stop. json is valid only during the call. */
typedef int (*ag_audit_row_fn)(const char *json, size_t len, void *arg);

typedef struct ag_audit_row_opts {
    ag_audit_capture default_capture;    /* applied when the record says AG_CAPTURE_DEFAULT */
    size_t max_text_bytes;               /* cap on prompt + response bytes kept per request (0 = none) */
    size_t field_max;                    /* escaped bytes per text field and row; 0 = AG_AUDIT_FIELD_MAX */
    const char *gateway_instance;        /* host name of this replica, or NULL */
} ag_audit_row_opts;

/* A zeroed record with unknown (-1) numbers, type request, time now; NULL on allocation failure. */
ag_audit_record *ag_audit_record_new(void);

/* Frees the record and every string it owns. NULL is a no-op. */
void ag_audit_record_free(ag_audit_record *r);

/* Copies text as the prompt (replacing any previous one); 0 or -1 on allocation failure. */
int ag_audit_record_set_prompt(ag_audit_record *r, const char *text, size_t len);

/* Takes ownership of a malloc'd prompt buffer (no copy). */
void ag_audit_record_take_prompt(ag_audit_record *r, char *text, size_t len);

/* Copies text as the response (replacing any previous one); 0 or -1 on allocation failure. */
int ag_audit_record_set_response(ag_audit_record *r, const char *text, size_t len);

/* Appends a streamed delta to the response (amortised growth; beyond AG_AUDIT_TEXT_HARD_MAX the bytes
 * are only counted). 0 or -1 on allocation failure (the bytes are still counted). */
int ag_audit_record_append_response(ag_audit_record *r, const char *delta, size_t len);

/* Adds a policy decision; returns 0, or -1 when the list is full (decisions_truncated is then set). */
int ag_audit_record_add_decision(ag_audit_record *r, const char *rule, const char *action);

/* Copies src into a fixed field (dst of size cap), truncating on a UTF-8 boundary; always terminates. */
void ag_audit_copy_field(char *dst, size_t cap, const char *src);

/* Serialises the record into one or more rows in order (part 1 carries every field; parts 2..n carry
 * the identifiers and the continuation of the text). Applies the capture mode first: hashed and off
 * never put the text in any row. Returns the number of rows emitted, or -1 (allocation failure, or
 * emit asked to stop). Thread: any; meant for the audit thread. */
int ag_audit_record_rows(const ag_audit_record *r, const ag_audit_row_opts *opts, ag_audit_row_fn emit,
                         void *arg);

/* Bytes s[0..n) occupies inside a JSON string as cJSON prints it (quotes excluded). */
size_t ag_audit_escaped_len(const char *s, size_t n);

/* Writes a random (version 4) GUID, lower-case, 36 chars + NUL (ag_uuid4); returns 0. */
int ag_audit_guid(char out[37]);

/* Names used in the rows: "full", "redacted", ...; "complete", "client_disconnected", ...;
 * "start", "config_reload", .... */
const char *ag_audit_capture_str(ag_audit_capture c);
const char *ag_completion_reason_str(ag_completion_reason c);
const char *ag_audit_event_type_str(ag_audit_event_type t);

#endif
