/* Internal interface of the fake Azure OpenAI server (tests/fakes/fake_aoai*.c).
 *
 * fake_aoai.c owns the event loop, the HTTP/1.1 connections (llhttp on bufferevents) and the
 * /_fake/ control endpoints; fake_aoai_api.c turns one data-plane request into a response
 * (JSON or SSE events); fake_aoai_state.c holds the behaviour configuration, the fault queue and the
 * request recorder. Everything runs on one thread. This is test code: allocation failure aborts. */
#ifndef AG_FAKE_AOAI_INTERNAL_H
#define AG_FAKE_AOAI_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>

#include "aoai_guard/confparse.h"

/* A growable byte buffer; owns p. Always NUL-terminated after the first add. */
typedef struct ag_fake_buf {
    char *p;
    size_t len;
    size_t cap;
} ag_fake_buf;

/* Appends n bytes (aborts on OOM). */
void ag_fake_buf_add(ag_fake_buf *b, const void *data, size_t n);
/* Appends a C string. */
void ag_fake_buf_str(ag_fake_buf *b, const char *s);
/* Appends printf-formatted text. */
void ag_fake_buf_printf(ag_fake_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Frees the storage and zeroes the struct. */
void ag_fake_buf_free(ag_fake_buf *b);

/* Prints "fake_aoai: out of memory" and aborts; never returns. */
void ag_fake_oom(void) __attribute__((noreturn));
/* strdup that aborts on OOM; NULL stays NULL. */
char *ag_fake_strdup(const char *s);

/* ---- behaviour configuration (POST /_fake/config) ---- */

typedef enum ag_fake_fault_kind {
    AG_FAKE_FAULT_NONE = 0,
    AG_FAKE_FAULT_STATUS, /* answer with an error status in Azure's shape */
    AG_FAKE_FAULT_RESET,  /* send after_chunks chunks, then RST (SO_LINGER 0) */
    AG_FAKE_FAULT_STALL,  /* send after_chunks chunks, then go silent, connection kept open */
    AG_FAKE_FAULT_CLOSE,  /* read the request, close without answering */
} ag_fake_fault_kind;

typedef struct ag_fake_fault {
    ag_fake_fault_kind kind;
    int status;              /* STATUS only */
    char *retry_after;       /* owned; NULL = header not sent */
    char *retry_after_ms;    /* owned; NULL = header not sent */
    char *code;              /* owned; NULL = Azure's default code for the status */
    char *message;           /* owned; NULL = Azure's default message for the status */
    long long after_chunks;  /* RESET / STALL */
    long long count;         /* requests still to be served this fault */
} ag_fake_fault;

typedef struct ag_fake_conf {
    char *reply_text;          /* owned; NULL = "Echo: " + last user text */
    long long chunks;          /* 0 = one stream chunk per word */
    long long chunk_interval_ms;
    long long first_byte_delay_ms;
    char *model;               /* owned; model name reported for chat/completions/responses */
    char *embedding_model;     /* owned */
    char *region;              /* owned; x-ms-region */
    char *finish_reason;       /* owned; "stop" by default */
    long long created;         /* 0 = current time */
    long long ratelimit_requests; /* per-minute budgets behind x-ratelimit-remaining-* */
    long long ratelimit_tokens;
    ag_fake_fault *faults;     /* owned queue, head first */
    size_t nfaults;
} ag_fake_conf;

/* Sets every field to its default (no faults). c must not hold allocations (or be cleared). */
void ag_fake_conf_init(ag_fake_conf *c);
/* Frees everything c owns and re-initialises it to the defaults. */
void ag_fake_conf_reset(ag_fake_conf *c);
/* Merges the keys present in obj into c (faults replace the queue). On error c is unchanged and
 * err names the key. */
int ag_fake_conf_apply(ag_fake_conf *c, const cJSON *obj, ag_conf_err *err);
/* The current configuration as JSON (caller frees with cJSON_Delete). */
cJSON *ag_fake_conf_to_json(const ag_fake_conf *c);
/* Pops one use of the head fault into *out (a deep copy the caller clears with ag_fake_fault_clear);
 * returns false when the queue is empty. */
bool ag_fake_conf_take_fault(ag_fake_conf *c, ag_fake_fault *out);
/* Frees the strings a fault owns. */
void ag_fake_fault_clear(ag_fake_fault *f);

/* ---- one parsed request, as seen by handlers (borrowed from the connection) ---- */

typedef struct ag_fake_hdr {
    size_t name_off, name_len;   /* offsets into ag_fake_req.hbase, NUL-terminated there */
    size_t value_off, value_len;
} ag_fake_hdr;

typedef struct ag_fake_req {
    const char *method;
    const char *url;             /* request-target as received, NUL-terminated */
    size_t url_len;
    const char *hbase;
    const ag_fake_hdr *hdrs;
    size_t nhdrs;
    const char *body;            /* NUL-terminated (body[body_len] == 0) */
    size_t body_len;
    int http_major, http_minor;
    uint64_t conn_id;
    uint64_t seq;                /* 1-based number of this data-plane request */
} ag_fake_req;

/* First header named name (case-insensitive), or NULL; *len gets the value length. */
const char *ag_fake_req_header(const ag_fake_req *r, const char *name, size_t *len);

/* ---- request recorder (GET/DELETE /_fake/requests) ---- */

typedef struct ag_fake_recorder {
    cJSON **ring;        /* owned records, ring[(head + i) % cap] for i < count, oldest first */
    size_t *sizes;       /* approximate bytes held by each record */
    size_t cap;
    size_t head;
    size_t count;
    size_t bytes;
    size_t max_bytes;
    uint64_t first_seq;  /* seq of ring[head] */
} ag_fake_recorder;

/* Prepares a recorder keeping at most max_records records and about max_bytes of bodies. */
void ag_fake_rec_init(ag_fake_recorder *r, size_t max_records, size_t max_bytes);
/* Records req (dropping the oldest records beyond the caps). */
void ag_fake_rec_add(ag_fake_recorder *r, const ag_fake_req *req);
/* Notes the answer given to request seq, if it is still recorded; fault may be NULL. */
void ag_fake_rec_set_result(ag_fake_recorder *r, uint64_t seq, int status, const char *fault);
/* All records as a JSON array text (caller frees with cJSON_free). */
char *ag_fake_rec_dump(const ag_fake_recorder *r);
/* Drops every record; returns how many there were. */
size_t ag_fake_rec_clear(ag_fake_recorder *r);
/* Frees everything. */
void ag_fake_rec_free(ag_fake_recorder *r);

/* ---- responses built by the API layer ---- */

typedef struct ag_fake_resp {
    int status;
    bool stream;               /* chunked text/event-stream; body split into segments */
    const char *content_type;  /* static string */
    ag_fake_buf headers;       /* extra header lines, each "name: value\r\n" */
    ag_fake_buf body;
    size_t *seg_end;           /* stream: end offset in body of each event */
    size_t nseg, seg_cap;
    size_t first_delta;        /* stream: index of the first content-delta segment */
    size_t ndeltas;            /* stream: number of content-delta segments */
    long long tokens;          /* tokens charged to the per-minute budget */
} ag_fake_resp;

/* Empties r for reuse, keeping its buffers' capacity. */
void ag_fake_resp_reset(ag_fake_resp *r);
/* Frees r's buffers. */
void ag_fake_resp_free(ag_fake_resp *r);
/* Makes r an error in Azure's shape {"error":{"code","message"[,"param","type"]}} (param/type
 * are only emitted when non-NULL). */
void ag_fake_api_error(ag_fake_resp *r, int status, const char *code, const char *message,
                       const char *param, const char *type);
/* Answers one authenticated data-plane request according to conf. */
void ag_fake_api_handle(const ag_fake_req *req, const ag_fake_conf *conf, ag_fake_resp *r);
/* Makes r the error response of a STATUS fault for req (Azure's exact shapes, retry headers). */
void ag_fake_api_fault(const ag_fake_req *req, const ag_fake_fault *f, ag_fake_resp *r);

#endif
