/* The request context: one per request, owned by its client connection, flowing through the
 * pipeline stages in order:
 *
 *   route -> authenticate -> read_body -> parse_body -> admit -> inspect -> forward
 *         -> respond (stream back, reconcile usage) -> finish (access log, audit)
 *
 * A stage returns AG_STAGE_NEXT to pass the request on, AG_STAGE_DONE when it has answered the
 * request itself (an error), or AG_STAGE_WAIT when it will call ag_pipeline_resume() later from the
 * same worker thread (async work: Redis, JWKS refetch, the request body, the upstream).
 *
 * While a stage runs, the request is never freed under it: answering (ag_request_error) marks the
 * request done and the engine completes it when the stage returns. A stage that starts async work
 * sets on_free so the work is cancelled if the client goes away first; if the work finishes
 * synchronously, the stage returns AG_STAGE_NEXT instead of WAIT. */
#ifndef AOAI_GUARD_REQUEST_H
#define AOAI_GUARD_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <cjson/cJSON.h>

#include "aoai_guard/config.h"
#include "aoai_guard/identity.h"
#include "aoai_guard/json_arena.h"
#include "aoai_guard/json_strict.h"
#include "aoai_guard/policy.h"
#include "aoai_guard/policy_stream.h"
#include "aoai_guard/ratelimit_config.h"

struct ag_conn;
struct ag_worker;
struct ag_exchange;
struct ag_sse_parser;

typedef enum ag_stage_result { AG_STAGE_NEXT = 0, AG_STAGE_DONE, AG_STAGE_WAIT } ag_stage_result;

typedef enum ag_api_kind {
    AG_API_NONE = 0,
    AG_API_DEPLOYMENT,    /* /openai/deployments/{deployment}/{operation}?api-version= */
    AG_API_RESPONSES,     /* /openai/responses?api-version= (model in the body) */
    AG_API_V1,            /* /openai/v1/{operation} (model in the body) */
    AG_API_ALLOWED_PATH,  /* an allow-listed path forwarded as-is */
} ag_api_kind;

typedef struct ag_route {
    ag_api_kind kind;
    char deployment[128];  /* from the path, or the body's "model" for v1/responses */
    char operation[48];    /* "chat/completions", "embeddings", "responses", "audio/transcriptions"... */
    bool json_body;        /* the operation takes a JSON body the later stages read */
} ag_route;

typedef struct ag_header {
    uint32_t name_off, name_len;
    uint32_t value_off, value_len;
} ag_header;

typedef struct ag_usage {
    bool present;
    long long prompt_tokens;
    long long completion_tokens;
    long long total_tokens;
} ag_usage;




typedef struct ag_request {
    struct ag_conn *conn;
    struct ag_worker *worker;
    ag_config *cfg;                 /* the snapshot this request runs under (its connection's) */
    char id[72];                    /* x-request-id */
    char client_addr[64];

    /* request line */
    int method;                     /* llhttp_method_t */
    char method_str[16];
    char *target;                   /* request-target, NUL-terminated, in hbuf-independent storage */
    size_t target_len;
    size_t path_len;                /* target bytes before '?' */
    int http_major, http_minor;

    /* headers: names and values are stored back to back in hbuf */
    char *hbuf;
    size_t hbuf_cap;
    size_t hlen;
    ag_header *headers;
    size_t nheaders, headers_cap;
    int h_host, h_authorization, h_api_key, h_content_type, h_request_id, h_connection,
        h_transfer_encoding, h_expect, h_content_encoding;
    bool keep_alive;                /* the client allows another request on this connection */
    bool expect_continue;
    bool head_done;                 /* headers parsed and checked */
    bool body_done;                 /* the whole body is in */
    uint32_t chunks;                /* chunked request body: chunks seen (overhead bound) */
    size_t chunk_ext_bytes;         /* chunk-extension bytes seen */
    size_t trailer_bytes;           /* trailer bytes seen (bounded like the head) */
    bool upgrade_requested;         /* Upgrade asked for: never forwarded; last request here */
    char api_version[48];           /* the api-version query parameter, when present */

    /* body: read whole (bounded by limits.max_body_bytes) */
    char *body;
    size_t body_len, body_cap;
    bool json_ok;                   /* the body is a strict JSON object (json built or not) */
    cJSON *json;                    /* its tree, built when a stage needs it (ag_request_json) */
    ag_json_heap_mark json_mark;    /* taken right after the parse (json_arena.h) */
    ag_json_arena json_arena;       /* nodes of json and of a held response (json_arena.h) */
    char *forward_body;             /* a rewritten body printed by cJSON (cJSON_free), else NULL */
    size_t forward_body_len;

    ag_route route;
    ag_identity identity;
    bool identity_written;          /* authentication filled identity: reuse clears all of it */

    /* pipeline */
    int stage;                      /* index of the stage to run next */
    bool in_pipeline;               /* a stage is on the stack: completion is deferred */
    bool done_pending;              /* the response ended while in_pipeline */
    void (*on_free)(struct ag_request *req, void *arg); /* cancels a stage's async work */
    void *on_free_arg;
    TAILQ_ENTRY(ag_request) park_link;  /* on the worker's parked list (auth key refetch) */
    bool parked;
    bool auth_retried;              /* validated again after a key refetch */
    struct event *park_timer;
    struct ag_limit_ticket *limit_ticket; /* rate-limit reservation, reconciled at the end */
    char ratelimit_headers[512];    /* x-ratelimit-* lines added to the response */
    bool limit_refused;
    char limit_policy[AG_LIMIT_NAME_MAX + 2]; /* the policy that refused */
    long long limit_estimate;       /* tokens reserved at admission (-1: none) */
    ag_policy_decisions policy_decisions; /* rule names point into cfg->policy */
    const char *policy_verdict;     /* "allow", "modified", "block", ... (NULL: no policy) */

    /* response */
    int status;                     /* sent to the client */
    bool response_started;          /* the status line went out: no retry or error body any more */
    bool response_chunked;
    bool response_close;            /* "Connection: close" was sent */
    bool response_no_body;          /* HEAD / 204 / 304: no body bytes go out */
    uint64_t bytes_in, bytes_out;   /* body bytes */
    char upstream[64];              /* name of the upstream that answered */
    int attempts;                   /* upstream attempts made */
    ag_usage usage;
    char model[128];                /* the body's "model" string (cut to fit), "" when none */
    size_t model_len;               /* its whole length */
    bool has_model;                 /* "model" is a string */
    bool usage_asked;               /* the body holds "stream_options": {"include_usage": true} */
    bool no_stream_options;         /* the checked body has no "stream_options" at all */
    bool stream;                    /* SSE response */
    bool want_text;                 /* assemble the completion text (the audit trail records it) */
    bool strip_usage;               /* we asked Azure for include_usage: drop that chunk for the caller */
    bool sse_events;                /* forward SSE event by event (usage strip, response policy) */
    bool resp_policy;               /* response-side policy rules run on this response */
    bool resp_buffered;             /* JSON response held whole for response-side policy */
    ag_policy_sse *policy_sse;      /* streamed response rewriter (owned) */
    bool policy_flushed;            /* held-back text sent at the end of the stream */
    const char *completion;         /* why the response ended: "complete", "client_disconnected", "upstream_reset"... */
    const char *error_code;         /* our error code when we answered (static or error_code_buf) */
    char error_code_buf[48];        /* a code that is not a static string (policy constraint codes) */
    struct ag_exchange *ex;
    struct ag_sse_parser *sse;
    char *completion_text;          /* assembled from the response (bounded) */
    size_t completion_len, completion_cap;
    char *resp_json;                /* non-streamed JSON response body, kept for usage (bounded) */
    size_t resp_json_len, resp_json_cap;
    bool resp_json_overflow;

    /* timing (monotonic ns) */
    int64_t wall_start_ms;
    uint64_t t_start;               /* first byte of the request */
    uint64_t t_head;                /* headers complete */
    uint64_t t_body;                /* body complete */
    uint64_t t_upstream_sent;       /* request written to the upstream */
    uint64_t t_upstream_head;       /* upstream status line + headers in */
    uint64_t t_first_byte;          /* first response byte to the client */
    uint64_t gateway_ns;            /* time spent in our own stages (excludes waiting on upstream) */
} ag_request;

/* Creates the context for the next request on connection c (NULL when out of memory). */
ag_request *ag_request_new(struct ag_conn *c);
/* Releases everything the request owns (its upstream exchange included). */
void ag_request_free(ag_request *req);
/* Frees the worker's cache of finished requests' memory (at worker teardown). */
void ag_request_cache_drain(struct ag_worker *w);
/* Takes a valid client x-request-id or generates a UUIDv4 into req->id. */
void ag_request_assign_id(ag_request *req);
/* End of a request: writes the access-log line and hands the audit record over. */
void ag_request_finish(ag_request *req);
/* The client connection went away while the request was being served. */
void ag_request_client_gone(ag_request *req);
/* Appends to the assembled completion text (bounded; excess is counted, not kept). */
void ag_request_add_completion(ag_request *req, const char *text, size_t len);

/* Header lookup by case-insensitive name; returns the index or -1. */
int ag_request_header_find(const ag_request *req, const char *name);
/* Name/value of header i (not NUL-terminated; use the lengths). */
const char *ag_request_header_name(const ag_request *req, int i, size_t *len);
const char *ag_request_header_value(const ag_request *req, int i, size_t *len);

/* Answers the request with an Azure-shaped error {"error":{"code","message"}}; extra_headers is a
 * block of "Name: value\r\n" lines or NULL. close forces "Connection: close" and closes afterwards. */
void ag_request_error(ag_request *req, int status, const char *code, const char *message,
                      const char *extra_headers, bool close);

/* Answers with a ready JSON body (Azure's error shape, built by the stage); code names the error in
 * the access log. */
void ag_request_error_body(ag_request *req, int status, const char *code, const char *json, size_t len,
                           const char *extra_headers, bool close);

/* The parse_body stage's limits for request bodies. */
extern const ag_json_limits ag_request_json_limits;

/* Parses the body into req->json under ag_request_json_limits (its nodes in req->json_arena).
 * Returns the tree, or NULL with *status and *err_offset set. */
cJSON *ag_request_parse_json(ag_request *req, ag_json_status *status, size_t *err_offset);

/* The body's tree for a stage that reads it: NULL when the route takes no JSON body (the stage
 * skips), else the tree, built now if the parse_body stage only checked the body. Sets *failed and
 * answers 503 when the tree cannot be built (memory), so that no stage goes on without it. */
cJSON *ag_request_json(ag_request *req, bool *failed);

/* Runs stages from req->stage until one answers or waits. */
void ag_pipeline_run(ag_request *req);
/* Continues after a stage returned AG_STAGE_WAIT and its async work is done. */
void ag_pipeline_resume(ag_request *req);
/* Runs the stage that returned AG_STAGE_WAIT once more (e.g. validation after a key refetch). */
void ag_pipeline_retry_stage(ag_request *req);

#endif
