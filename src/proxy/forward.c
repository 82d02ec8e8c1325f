/* The forward stage and the upstream exchange (see forward.h). */
#include "aoai_guard/forward.h"

#include <errno.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <llhttp.h>

#include "aoai_guard/clock.h"
#include "aoai_guard/deadline.h"
#include "aoai_guard/credential.h"
#include "aoai_guard/growbuf.h"
#include "aoai_guard/headbuf.h"
#include "aoai_guard/runtime.h"
#include "aoai_guard/conn.h"
#include "aoai_guard/http.h"
#include "aoai_guard/log.h"
#include "aoai_guard/policy.h"
#include "aoai_guard/policy_stream.h"
#include "aoai_guard/sse.h"
#include "aoai_guard/upstream.h"
#include "aoai_guard/resp_doc.h"
#include "aoai_guard/usage.h"
#include "aoai_guard/worker.h"

#define MAX_RESPONSE_HEAD (64 * 1024)
#define MAX_RESPONSE_HEADERS 200
#define MAX_JSON_KEEP (1024 * 1024)
#define MAX_SSE_EVENT (1024 * 1024)
#define MAX_BUFFERED_RESPONSE (8 * 1024 * 1024)

typedef enum ex_state {
    EX_CONNECTING = 0,
    EX_WAITING,      /* request sent, waiting for the response head */
    EX_STREAMING,    /* response head sent to the client, body flowing */
    EX_DISCARDING,   /* a retryable response (429/5xx) being read off before the next attempt */
} ex_state;

struct ag_exchange {
    ag_request *req;
    ag_upstream_set *set;              /* a reference for the exchange's lifetime */
    int idx;                           /* current upstream */
    uint64_t tried;                    /* upstreams attempted (bit per index) */
    bool fresh_retry_used;             /* a stale pooled connection was retried once */
    ag_connect_req *connecting;
    ag_upconn *uc;
    ex_state state;
    llhttp_t parser;
    ag_deadline deadline;              /* first byte, then idle between reads (lazy: deadline.h) */
    /* response head, collected from llhttp callbacks */
    char *rh;
    size_t rhlen, rhcap;               /* grows up to MAX_RESPONSE_HEAD */
    uint32_t hname[MAX_RESPONSE_HEADERS][2], hvalue[MAX_RESPONSE_HEADERS][2];
    size_t nh;
    bool field_open;
    bool head_too_big;
    bool complete;                     /* llhttp saw the end of the response */
    bool is_sse, is_json;
    bool paused;                       /* upstream reads paused for a slow client */
    bool policy_failed;                /* response policy could not run: fail closed */
    bool head_scanned;                 /* obs-fold scan reached the end of the response head */
    char head_prev;                    /* last byte seen by that scan */
    long long retry_after_ms;
    size_t resp_bytes;                 /* any response bytes at all from this connection */
};

static void ex_attempt(ag_exchange *ex);
static void ex_on_connected(ag_upconn *uc, const char *err, bool timed_out, void *arg);

/* ---- request head ---------------------------------------------------------------------------- */

/* Is header name (n bytes) listed in the client's Connection header? */
static bool named_in_connection(const ag_request *r, const char *name, size_t n)
{
    if (r->h_connection < 0)
        return false;
    size_t cl;
    const char *cv = ag_request_header_value(r, r->h_connection, &cl);
    char tok[64];
    if (n >= sizeof tok)
        return false;
    memcpy(tok, name, n);
    tok[n] = '\0';
    return ag_http_list_has(cv, cl, tok);
}

static bool drop_request_header(const ag_request *r, const ag_upstream_conf *up, const char *n, size_t nl)
{
    if (ag_http_is_hop_by_hop(n, nl) || named_in_connection(r, n, nl))
        return true;
    static const ag_http_name drop[] = {
        AG_HTTP_NAME("host"), AG_HTTP_NAME("content-length"), AG_HTTP_NAME("expect"),
        AG_HTTP_NAME("x-request-id"), AG_HTTP_NAME("forwarded"), AG_HTTP_NAME("accept-encoding"),
        AG_HTTP_NAME("x-real-ip"),
    };
    if (ag_http_name_in(n, nl, drop, sizeof drop / sizeof *drop))
        return true;
    if (nl >= 12 && strncasecmp(n, "x-forwarded-", 12) == 0)
        return true;
    if (up->auth != AG_UPSTREAM_AUTH_PASSTHROUGH &&
        (ag_http_name_is(n, nl, "authorization") || ag_http_name_is(n, nl, "api-key")))
        return true;
    return false;
}

int ag_forward_write_head(const ag_request *r, const ag_upstream_conf *up, size_t body_len,
                          const char *bearer, struct evbuffer *out)
{
    ag_headbuf hb;
    ag_hb_init(&hb);
    ag_hb_str(&hb, r->method_str);
    AG_HB_LIT(&hb, " ");
    ag_hb_str(&hb, r->target);
    AG_HB_LIT(&hb, " HTTP/1.1\r\nHost: ");
    ag_hb_str(&hb, up->host_header);
    AG_HB_LIT(&hb, "\r\n");
    for (size_t i = 0; i < r->nheaders; i++) {
        const ag_header *h = &r->headers[i];
        const char *n = r->hbuf + h->name_off;
        if (drop_request_header(r, up, n, h->name_len))
            continue;
        ag_hb_add(&hb, n, h->name_len);
        AG_HB_LIT(&hb, ": ");
        ag_hb_add(&hb, r->hbuf + h->value_off, h->value_len);
        AG_HB_LIT(&hb, "\r\n");
    }
    if (up->auth == AG_UPSTREAM_AUTH_API_KEY) {
        AG_HB_LIT(&hb, "api-key: ");
        ag_hb_str(&hb, up->api_key);
        AG_HB_LIT(&hb, "\r\n");
    } else if (up->auth == AG_UPSTREAM_AUTH_ENTRA && bearer) {
        AG_HB_LIT(&hb, "Authorization: Bearer ");
        ag_hb_str(&hb, bearer);
        AG_HB_LIT(&hb, "\r\n");
    }
    if (r->cfg->forward_client_ip) {
        AG_HB_LIT(&hb, "X-Forwarded-For: ");
        ag_hb_str(&hb, r->client_addr);
        AG_HB_LIT(&hb, "\r\n");
    }
    bool has_body = body_len > 0 || strcmp(r->method_str, "POST") == 0 || strcmp(r->method_str, "PUT") == 0 ||
                    strcmp(r->method_str, "PATCH") == 0;
    if (has_body) {
        AG_HB_LIT(&hb, "Content-Length: ");
        ag_hb_u64(&hb, body_len);
        AG_HB_LIT(&hb, "\r\n");
    }
    AG_HB_LIT(&hb, "x-request-id: ");
    ag_hb_str(&hb, r->id);
    AG_HB_LIT(&hb, "\r\n\r\n");
    int rc = hb.failed || evbuffer_add(out, hb.p, hb.len) != 0 ? -1 : 0;
    ag_hb_release(&hb);
    return rc;
}

/* ---- response parsing ------------------------------------------------------------------------ */

static ag_exchange *ex_of(llhttp_t *p)
{
    return p->data;
}

static int rh_append(ag_exchange *ex, const char *at, size_t len)
{
    if (ex->rhlen + len > MAX_RESPONSE_HEAD) {
        ex->head_too_big = true;
        return -1;
    }
    if (ex->rhlen + len > ex->rhcap) {
        size_t cap = ex->rhcap ? ex->rhcap * 2 : 4096;
        while (cap < ex->rhlen + len)
            cap *= 2;
        if (cap > MAX_RESPONSE_HEAD)
            cap = MAX_RESPONSE_HEAD;
        char *n = realloc(ex->rh, cap);
        if (!n) {
            ex->head_too_big = true;
            return -1;
        }
        ex->rh = n;
        ex->rhcap = cap;
    }
    memcpy(ex->rh + ex->rhlen, at, len);
    ex->rhlen += len;
    return 0;
}

static int on_resp_header_field(llhttp_t *p, const char *at, size_t len)
{
    ag_exchange *ex = ex_of(p);
    if (ex->state == EX_STREAMING)
        return 0; /* trailers are not forwarded */
    if (!ex->field_open) {
        if (ex->nh == MAX_RESPONSE_HEADERS) {
            ex->head_too_big = true;
            return -1;
        }
        ex->hname[ex->nh][0] = (uint32_t)ex->rhlen;
        ex->hname[ex->nh][1] = 0;
        ex->hvalue[ex->nh][0] = (uint32_t)ex->rhlen;
        ex->hvalue[ex->nh][1] = 0;
        ex->nh++;
        ex->field_open = true;
    }
    if (rh_append(ex, at, len))
        return -1;
    ex->hname[ex->nh - 1][1] += (uint32_t)len;
    return 0;
}

static int on_resp_header_field_complete(llhttp_t *p)
{
    ag_exchange *ex = ex_of(p);
    ex->field_open = false;
    if (ex->state != EX_STREAMING && ex->nh)
        ex->hvalue[ex->nh - 1][0] = (uint32_t)ex->rhlen;
    return 0;
}

static int on_resp_header_value(llhttp_t *p, const char *at, size_t len)
{
    ag_exchange *ex = ex_of(p);
    if (ex->state == EX_STREAMING)
        return 0;
    if (rh_append(ex, at, len))
        return -1;
    ex->hvalue[ex->nh - 1][1] += (uint32_t)len;
    return 0;
}

static const char *rh_value(ag_exchange *ex, const char *name, size_t *len)
{
    for (size_t i = 0; i < ex->nh; i++)
        if (ag_http_name_is(ex->rh + ex->hname[i][0], ex->hname[i][1], name)) {
            *len = ex->hvalue[i][1];
            return ex->rh + ex->hvalue[i][0];
        }
    return NULL;
}

/* retry-after-ms (ms) or retry-after (seconds; an HTTP-date is ignored); -1 when absent. */
static long long parse_retry_after(ag_exchange *ex)
{
    size_t n;
    const char *v = rh_value(ex, "retry-after-ms", &n);
    long long scale = 1;
    if (!v) {
        v = rh_value(ex, "retry-after", &n);
        scale = 1000;
    }
    if (!v || n == 0 || n > 12)
        return -1;
    char tmp[16];
    memcpy(tmp, v, n);
    tmp[n] = '\0';
    char *end;
    double d = strtod(tmp, &end);
    if (end == tmp || *end != '\0' || d < 0 || d > 86400000.0)
        return -1;
    return (long long)(d * (double)scale);
}

static bool value_starts(const char *v, size_t n, const char *prefix)
{
    size_t pl = strlen(prefix);
    return v && n >= pl && strncasecmp(v, prefix, pl) == 0;
}

/* Response headers forwarded to the client. */
static bool drop_response_header(const char *n, size_t nl)
{
    return ag_http_is_hop_by_hop(n, nl) || ag_http_name_is(n, nl, "content-length") ||
           ag_http_name_is(n, nl, "x-request-id") || ag_http_name_is(n, nl, "server-timing");
}

/* cl: the Content-Length to announce, or -2 to take the upstream's framing. */
static void ex_send_head(ag_exchange *ex, long long cl_override)
{
    ag_request *r = ex->req;
    ag_headbuf hb;
    ag_hb_init(&hb);
    for (size_t i = 0; i < ex->nh; i++) {
        const char *n = ex->rh + ex->hname[i][0];
        size_t nl = ex->hname[i][1];
        if (drop_response_header(n, nl))
            continue;
        /* With our own limits in force, the caller sees our x-ratelimit-* values, not Azure's. */
        if (r->ratelimit_headers[0] && nl > 12 && strncasecmp(n, "x-ratelimit-", 12) == 0)
            continue;
        ag_hb_add(&hb, n, nl);
        AG_HB_LIT(&hb, ": ");
        ag_hb_add(&hb, ex->rh + ex->hvalue[i][0], ex->hvalue[i][1]);
        AG_HB_LIT(&hb, "\r\n");
    }
    uint64_t now = ag_mono_ns();
    AG_HB_LIT(&hb, "x-request-id: ");
    ag_hb_str(&hb, r->id);
    AG_HB_LIT(&hb, "\r\nServer-Timing: gateway;dur=");
    ag_hb_ms3(&hb, r->gateway_ns + (now - r->t_upstream_head));
    AG_HB_LIT(&hb, ", upstream;dur=");
    ag_hb_ms3(&hb, r->t_upstream_head - r->t_upstream_sent);
    AG_HB_LIT(&hb, "\r\n");
    ag_hb_str(&hb, r->ratelimit_headers);
    long long cl = cl_override != -2 ? cl_override
                   : (ex->parser.flags & F_CONTENT_LENGTH) ? (long long)ex->parser.content_length : -1;
    /* Out of memory for a huge head: the status and framing still go out, without its fields. */
    ag_response_begin(r, ex->parser.status_code, hb.failed ? "" : hb.p, hb.failed ? 0 : hb.len, cl);
    ag_hb_release(&hb);
    r->gateway_ns += ag_mono_ns() - r->t_upstream_head;
}

/* Sends one event, "event: <name>\n" (when the original had a name) and "data: <payload>\n\n", as
 * one chunk. */
static void emit_frame(ag_request *r, const char *event, size_t event_len, const char *payload, size_t len)
{
    size_t n = (event_len ? 8 + event_len : 0) + 6 + len + 2;
    char stack[4096], *frame = n <= sizeof stack ? stack : malloc(n);
    if (!frame)
        return;
    char *p = frame;
    if (event_len) {
        memcpy(p, "event: ", 7);
        memcpy(p + 7, event, event_len);
        p[7 + event_len] = '\n';
        p += 8 + event_len;
    }
    memcpy(p, "data: ", 6);
    memcpy(p + 6, payload, len);
    memcpy(p + 6 + len, "\n\n", 2);
    ag_response_body(r, frame, n);
    if (frame != stack)
        free(frame);
}

/* Sends one event whose payload we re-serialised from its tree. */
static void emit_event(ag_request *r, const char *event, size_t event_len, const cJSON *data)
{
    char *text = cJSON_PrintUnformatted(data);
    if (text)
        emit_frame(r, event, event_len, text, strlen(text));
    cJSON_free(text);
}

/* Sends what the response policy still holds back (at [DONE], or at the end of a Responses
 * stream, which has no [DONE]). 0, or -1 when out of memory. */
static int flush_policy(ag_request *r)
{
    if (!r->policy_sse || r->policy_flushed)
        return 0;
    r->policy_flushed = true;
    bool err = false;
    cJSON *arr = ag_policy_sse_end(r->policy_sse, r->worker->policy_scratch, &err);
    for (const cJSON *e = arr ? arr->child : NULL; e; e = e->next) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(e, "type");
        bool typed = cJSON_IsString(type) && strncmp(type->valuestring, "response.", 9) == 0;
        emit_event(r, typed ? type->valuestring : "", typed ? strlen(type->valuestring) : 0, e);
    }
    cJSON_Delete(arr);
    return err ? -1 : 0;
}

/* Response policy on one event: rewrite its text (redaction with a bounded hold-back). chunk: the
 * event as ag_chat_chunk_read found it, or NULL when it refused (or the event is not an object). */
static int policy_event(ag_request *r, const ag_sse_event *ev, const ag_chat_chunk *chunk)
{
    if (ev->data_len == 6 && memcmp(ev->data, "[DONE]", 6) == 0) {
        if (flush_policy(r) != 0)
            return -1;
        ag_response_body(r, ev->raw, ev->raw_len);
        return 0;
    }
    /* A chat chunk is rewritten in place: its changed strings spliced into its own bytes. */
    char *spliced = NULL;
    size_t spliced_len = 0;
    int in_place = chunk ? ag_policy_sse_rewrite_chunk(r->policy_sse, r->worker->policy_scratch, ev->data, chunk,
                                                       &spliced, &spliced_len)
                         : -2;
    if (in_place == 0) {
        ag_response_body(r, ev->raw, ev->raw_len);
        return 0;
    }
    if (in_place == 1) {
        emit_frame(r, ev->event, ev->event_len, spliced, spliced_len);
        free(spliced);
        return 0;
    }
    if (in_place == -1)
        return -1;
    /* Any other event: a tree. Its nodes come from the worker's event arena; the strings
     * the rewrite puts in come from malloc (json_arena.h). Deleted below, before the reset. */
    cJSON *d = NULL;
    ag_json_arena *arena = &r->worker->event_arena;
    if (ev->data_len && ev->data[0] == '{') {
        ag_json_arena_enter(arena);
        d = cJSON_ParseWithLength(ev->data, ev->data_len);
        ag_json_arena_leave();
    }
    if (!d) {
        ag_json_arena_reset(arena);
        ag_response_body(r, ev->raw, ev->raw_len);
        return 0;
    }
    cJSON *before = NULL;
    int changed = ag_policy_sse_rewrite(r->policy_sse, r->worker->policy_scratch, d, &before);
    if (before) {
        emit_event(r, ev->event, ev->event_len, before);
        cJSON_Delete(before);
    }
    if (changed == 1)
        emit_event(r, ev->event, ev->event_len, d);
    else if (changed == 0)
        ag_response_body(r, ev->raw, ev->raw_len);
    cJSON_Delete(d);
    ag_json_arena_reset(arena);
    return changed < 0 ? -1 : 0;
}

static int sse_event_cb(void *arg, const ag_sse_event *ev)
{
    ag_request *r = arg;
    if (!r->policy_sse) {
        int usage_only = ag_usage_from_sse_event(r, ev);
        if (!r->sse_events || (r->strip_usage && usage_only == 1))
            return 0; /* the usage chunk we asked for is not the caller's */
        ag_response_body(r, ev->raw, ev->raw_len); /* filter mode: events go out whole */
        return 0;
    }
    /* Under a response policy the chunk is read once, for the usage and for the policy. */
    ag_chat_chunk ck;
    const ag_chat_chunk *read = ev->data_len && ev->data[0] == '{' && ag_chat_chunk_read(ev->data, ev->data_len, &ck)
                                    ? &ck
                                    : NULL;
    int usage_only = ag_usage_from_sse_event_read(r, ev, read);
    if (!r->sse_events || (r->strip_usage && usage_only == 1))
        return 0;
    return policy_event(r, ev, read);
}

static int on_resp_headers_complete(llhttp_t *p)
{
    ag_exchange *ex = ex_of(p);
    ag_request *r = ex->req;
    if (ex->state == EX_STREAMING)
        return 0; /* end of trailers */
    int status = p->status_code;
    if (status >= 100 && status < 200) {
        /* An interim response: ignore it and read the final one. */
        ex->nh = 0;
        ex->rhlen = 0;
        return 0;
    }
    r->t_upstream_head = ag_mono_ns();
    ag_deadline_clear(&ex->deadline);
    ag_upstream_state *up = &ex->set->ups[ex->idx];
    bool retryable = status == 429 || status >= 500;
    if (retryable) {
        long long ra = parse_retry_after(ex);
        if (status == 429 || status == 503)
            ag_upstream_report_retry_after(up, ra > 0 ? ra : 1000, r->t_upstream_head);
        if (status == 429)
            ag_upstream_count_failure(up, "429"); /* throttled: counted, but not a circuit failure */
        if (status >= 500)
            ag_upstream_report_failure(up, r->t_upstream_head, "5xx");
        if (ag_upstream_any_available(ex->set, ex->tried, r->t_upstream_head)) {
            ag_log(AG_LOG_INFO, r->id, "upstream %s answered %d; trying the next upstream",
                   up->conf->name, status);
            ex->state = EX_DISCARDING;
            return 0;
        }
    } else {
        ag_upstream_report_success(up);
    }
    size_t ctl = 0;
    const char *ct = rh_value(ex, "content-type", &ctl);
    ex->is_sse = value_starts(ct, ctl, "text/event-stream");
    ex->is_json = value_starts(ct, ctl, "application/json");
    size_t un = strnlen(up->conf->name, sizeof r->upstream - 1);
    memcpy(r->upstream, up->conf->name, un);
    r->upstream[un] = '\0';
    const ag_policy *pol = r->cfg->policy;
    const char *op = r->route.operation;
    r->want_text = r->worker->rt->svc.audit != NULL; /* only the audit trail keeps the completion */
    r->resp_policy = pol && r->json_ok && status >= 200 && status < 300 && ag_policy_has_response_rules(pol) &&
                     (strcmp(op, "chat/completions") == 0 || strcmp(op, "completions") == 0 ||
                      strcmp(op, "responses") == 0);
    if (ex->is_sse) {
        r->stream = true;
        if (r->resp_policy) {
            r->policy_sse = calloc(1, sizeof *r->policy_sse);
            if (r->policy_sse) {
                ag_policy_call call = {&r->identity, r->route.deployment[0] ? r->route.deployment : NULL, op};
                ag_policy_sse_init(r->policy_sse, pol, &call);
            }
        }
        r->sse_events = r->strip_usage || r->policy_sse;
        r->sse = r->sse_events ? ag_sse_parser_new_raw(MAX_SSE_EVENT, sse_event_cb, r)
                               : ag_sse_parser_new(MAX_SSE_EVENT, sse_event_cb, r);
    } else {
        r->strip_usage = false; /* not a stream after all: nothing to filter */
        r->resp_buffered = r->resp_policy && ex->is_json;
    }
    ex->state = EX_STREAMING;
    if (!r->resp_buffered) {
        ex_send_head(ex, -2);
        if (ex->is_sse)
            ag_response_flush(r); /* the head goes out before this read's events are processed */
    }
    /* From now on the upstream may go quiet only for idle_timeout_ms between bytes. */
    ag_deadline_set(&ex->deadline, up->conf->idle_timeout_ms);
    return strcmp(r->method_str, "HEAD") == 0 ? 1 : 0;
}

static int on_resp_body(llhttp_t *p, const char *at, size_t len)
{
    ag_exchange *ex = ex_of(p);
    if (ex->state != EX_STREAMING)
        return 0;
    ag_request *r = ex->req;
    if (r->resp_buffered) {
        /* Held whole for response-side policy; bounded, and fail closed beyond the bound. */
        if (ag_grow_append(&r->resp_json, &r->resp_json_len, &r->resp_json_cap, MAX_BUFFERED_RESPONSE, at, len)) {
            ex->policy_failed = true;
            return -1;
        }
        return 0;
    }
    if (!r->sse_events)
        ag_response_body(r, at, len);
    if (r->sse) {
        if (ag_sse_parser_feed(r->sse, at, len) != 0 && r->sse_events) {
            if (r->policy_sse) {
                ex->policy_failed = true; /* never let uninspected text through */
                return -1;
            }
            r->sse_events = r->strip_usage = false; /* an event over the bound: pass bytes on */
            size_t rl;
            const char *rest = ag_sse_parser_rest(r->sse, &rl);
            ag_response_body(r, rest, rl);
        }
    } else if (ex->is_json && !r->resp_json_overflow) {
        /* Kept (bounded) for the usage at the end; beyond the bound the usage is simply unknown. */
        if (ag_grow_append(&r->resp_json, &r->resp_json_len, &r->resp_json_cap, MAX_JSON_KEEP, at, len))
            r->resp_json_overflow = true;
    }
    return 0;
}

static int on_resp_message_complete(llhttp_t *p)
{
    ag_exchange *ex = ex_of(p);
    ex->complete = true;
    return HPE_PAUSED;
}

static const llhttp_settings_t resp_settings = {
    .on_header_field = on_resp_header_field,
    .on_header_field_complete = on_resp_header_field_complete,
    .on_header_value = on_resp_header_value,
    .on_headers_complete = on_resp_headers_complete,
    .on_body = on_resp_body,
    .on_message_complete = on_resp_message_complete,
};

/* ---- exchange lifecycle ---------------------------------------------------------------------- */

/* Response heads up to this size keep their buffer when the exchange goes back to the cache. */
#define CACHED_HEAD_MAX (16 * 1024)

static void ex_free(ag_exchange *ex)
{
    if (ex->connecting)
        ag_upstream_connect_cancel(ex->connecting);
    if (ex->uc)
        ag_upconn_release(ex->uc, false);
    ag_worker *w = ex->set->worker;
    ag_upstream_set_unref(ex->set);
    if (ex->deadline.ev && w->nex_cache < AG_REQUEST_CACHE && ex->rhcap <= CACHED_HEAD_MAX) {
        ag_deadline_clear(&ex->deadline); /* the timer stays bound to this memory and this worker's loop */
        w->ex_cache[w->nex_cache++] = ex;
        return;
    }
    if (ex->deadline.ev)
        event_free(ex->deadline.ev);
    free(ex->rh);
    free(ex);
}

void ag_exchange_cache_drain(ag_worker *w)
{
    while (w->nex_cache > 0) {
        ag_exchange *ex = w->ex_cache[--w->nex_cache];
        event_free(ex->deadline.ev);
        free(ex->rh);
        free(ex);
    }
}

/* Detaches the exchange from its request and frees it; the request continues on its own. */
static ag_request *ex_detach(ag_exchange *ex)
{
    ag_request *r = ex->req;
    r->ex = NULL;
    ex_free(ex);
    return r;
}

/* Answers with our own error when nothing was sent yet, else truncates. */
static void ex_fail(ag_exchange *ex, int status, const char *code, const char *msg, const char *reason)
{
    ag_request *r = ex_detach(ex);
    if (r->response_started) {
        ag_log(AG_LOG_WARN, r->id, "upstream response interrupted: %s", reason);
        ag_response_abort(r, reason);
        return;
    }
    r->completion = reason;
    ag_request_error(r, status, code, msg, NULL, false);
}

/* Sends the response held for response-side policy: inspect, redact, then send it whole. doc is
 * its parsed body (doc->root NULL: not JSON), freed here. */
static void ex_send_buffered(ag_exchange *ex, ag_resp_doc *doc)
{
    ag_request *r = ex->req;
    char *text = NULL;
    size_t tlen = 0;
    if (doc->root) {
        ag_policy_call call = {&r->identity, r->route.deployment[0] ? r->route.deployment : NULL,
                               r->route.operation};
        bool modified = false;
        ag_policy_inspect_response(r->cfg->policy, r->worker->policy_scratch, &call, doc->root,
                                   &r->policy_decisions, &modified);
        if (modified)
            text = ag_resp_doc_print(doc, r->resp_json, r->resp_json_len, &tlen);
    }
    ag_resp_doc_free(doc);
    const char *body = text ? text : (r->resp_json ? r->resp_json : "");
    size_t blen = text ? tlen : r->resp_json_len;
    ex_send_head(ex, (long long)blen);
    ag_response_body(r, body, blen);
    cJSON_free(text);
}

static void ex_finish(ag_exchange *ex)
{
    ag_request *r = ex->req;
    if (r->sse && r->sse_events) {
        flush_policy(r);
        size_t rl;
        const char *rest = ag_sse_parser_rest(r->sse, &rl);
        ag_response_body(r, rest, rl);
    }
    if (r->policy_sse)
        ag_policy_sse_decisions(r->policy_sse, &r->policy_decisions);
    bool usage_json = ex->is_json && r->resp_json && !r->resp_json_overflow;
    if (r->resp_buffered) {
        /* A response held for the response policy is parsed once (where the policy and the audit
         * text read it), for the policy and for usage. */
        ag_resp_doc doc;
        ag_resp_doc_init(&doc);
        if (r->resp_json) {
            ag_json_arena_enter(&r->json_arena); /* deleted in ex_send_buffered */
            ag_resp_doc_parse(&doc, r->resp_json, r->resp_json_len);
            ag_json_arena_leave();
        }
        if (usage_json && doc.root)
            ag_usage_from_held_response(r, doc.root, r->resp_json, r->resp_json_len);
        else if (usage_json)
            ag_usage_from_json_response(r, r->resp_json, r->resp_json_len);
        ex_send_buffered(ex, &doc);
    } else if (usage_json) {
        ag_usage_from_json_response(r, r->resp_json, r->resp_json_len);
    }
    bool reusable = llhttp_should_keep_alive(&ex->parser);
    ag_upconn *uc = ex->uc;
    ex->uc = NULL;
    ag_upconn_release(uc, reusable);
    r = ex_detach(ex);
    ag_response_end(r);
}

/* Ends the current attempt's connection (not reusable) and tries the next upstream. */
static void ex_next_attempt(ag_exchange *ex)
{
    if (ex->uc) {
        ag_upconn_release(ex->uc, false);
        ex->uc = NULL;
    }
    ag_deadline_clear(&ex->deadline);
    ex_attempt(ex);
}

static void ex_resume_read(void *arg)
{
    ag_exchange *ex = arg;
    ex->paused = false;
    if (ex->uc)
        ag_reader_enable(&ex->uc->rd);
}

/* llhttp accepts obs-fold in response heads; an upstream that folds a header line is answered 502.
 * Scans the head only (up to its blank line), carrying the last byte across reads: only the byte
 * after each line feed matters, so the scan jumps from one line feed to the next. */
static bool head_has_obs_fold(ag_exchange *ex, const char *data, size_t len)
{
    const char *p = data, *end = data + len;
    while (p < end) {
        if (ex->head_prev == '\n') {
            if (*p == ' ' || *p == '\t')
                return true;
            if (*p == '\r' || *p == '\n') {
                ex->head_scanned = true; /* the blank line: the body follows */
                return false;
            }
        }
        const char *lf = memchr(p, '\n', (size_t)(end - p));
        if (!lf) {
            ex->head_prev = end[-1];
            return false;
        }
        ex->head_prev = '\n';
        p = lf + 1;
    }
    return false;
}

/* Feeds what the upstream sent to llhttp. Returns false when the exchange is gone (finished,
 * failed or moved on), true when it waits for more bytes. */
static bool ex_process(ag_exchange *ex, struct bufferevent *bev)
{
    struct evbuffer *in = bufferevent_get_input(bev);
    while (!ex->complete && evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0) {
            evbuffer_pullup(in, -1); /* an empty chunk at the front: make the data contiguous */
            if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
                break;
        }
        ex->resp_bytes += v.iov_len;
        if (!ex->head_scanned && head_has_obs_fold(ex, v.iov_base, v.iov_len)) {
            ag_upstream_state *fup = &ex->set->ups[ex->idx];
            ag_log(AG_LOG_WARN, ex->req->id, "upstream %s: obsolete line folding in the response head", fup->conf->name);
            ag_upstream_report_failure(fup, ag_mono_ns(), "protocol");
            ex_fail(ex, 502, "BadGateway", "The upstream sent a malformed response.", "upstream_protocol_error");
            return false;
        }
        llhttp_errno_t e = llhttp_execute(&ex->parser, v.iov_base, v.iov_len);
        if (e == HPE_OK) {
            evbuffer_drain(in, v.iov_len);
            continue;
        }
        if (e == HPE_PAUSED && ex->complete) {
            evbuffer_drain(in, (size_t)(llhttp_get_error_pos(&ex->parser) - (const char *)v.iov_base));
            break;
        }
        if (ex->policy_failed) {
            ag_log(AG_LOG_ERROR, ex->req->id, "response policy could not inspect the response; cut (fail closed)");
            ex_fail(ex, 502, "BadGateway", "The response could not be inspected.", "policy_error");
            return false;
        }
        ag_upstream_state *up = &ex->set->ups[ex->idx];
        ag_log(AG_LOG_WARN, ex->req->id, "upstream %s: malformed response: %s%s", up->conf->name,
               llhttp_errno_name(e), ex->head_too_big ? " (head too large)" : "");
        ag_upstream_report_failure(up, ag_mono_ns(), "protocol");
        ex_fail(ex, 502, "BadGateway", "The upstream sent a malformed response.", "upstream_protocol_error");
        return false;
    }
    if (ex->complete) {
        if (ex->state == EX_DISCARDING) {
            ex->complete = false;
            ag_upconn *uc = ex->uc;
            ex->uc = NULL;
            ag_upconn_release(uc, llhttp_should_keep_alive(&ex->parser));
            ex_attempt(ex);
            return false;
        }
        ex_finish(ex);
        return false;
    }
    if (ex->state == EX_STREAMING) {
        ag_request *r = ex->req;
        if (ag_response_congested(r) && !ex->paused) {
            ex->paused = true;
            ag_reader_disable(&ex->uc->rd);
            ag_response_on_drain(r, ex_resume_read, ex);
        }
        ag_upstream_state *up = &ex->set->ups[ex->idx];
        if (!ex->paused)
            ag_deadline_set(&ex->deadline, up->conf->idle_timeout_ms);
        else
            ag_deadline_clear(&ex->deadline);
    }
    return true;
}

static void ex_read_cb(struct bufferevent *bev, void *arg)
{
    ex_process(arg, bev);
}

static void ex_write_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    ag_exchange *ex = arg;
    if (ex->uc)
        ag_sender_written(&ex->uc->snd);
}

static void ex_event_cb(struct bufferevent *bev, short what, void *arg)
{
    ag_exchange *ex = arg;
    ag_upstream_state *up = &ex->set->ups[ex->idx];
    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))) {
        /* An exchange runs its own timers and sets no bufferevent timeout: a timeout here is the
         * pool's idle timeout of this connection, expired in the same loop pass that handed the
         * connection to us, whose callback was already queued (TLS upstreams; the direct reader
         * of plain ones drops such a stale timeout itself). libevent turned reading off before
         * telling us; ignoring it left the exchange deaf until its first-byte timeout. Turn
         * reading back on (unless paused for backpressure) and carry on. */
        if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_READING) && !ex->paused) {
            ag_log(AG_LOG_DEBUG, ex->req->id, "upstream %s: stale pool idle timeout ignored", up->conf->name);
            if (ex->uc)
                ag_reader_enable(&ex->uc->rd);
        }
        return;
    }
    if (!ex_process(ex, bev))
        return;
    /* End of input: a close-delimited body ends here; anything else is a truncation. */
    if ((what & BEV_EVENT_EOF) && llhttp_finish(&ex->parser) == HPE_OK && ex->complete &&
        ex->state == EX_STREAMING) {
        ex_finish(ex);
        return;
    }
    bool nothing_back = ex->resp_bytes == 0;
    if (ex->state == EX_WAITING && nothing_back && ex->uc && ex->uc->reused && !ex->fresh_retry_used) {
        /* A pooled connection the upstream had already closed: one retry on a fresh connection to
         * the same upstream (the request never reached it). */
        ex->fresh_retry_used = true;
        ag_upconn_release(ex->uc, false);
        ex->uc = NULL;
        ag_deadline_clear(&ex->deadline);
        const char *err = NULL;
        ex->state = EX_CONNECTING;
        ex->connecting = ag_upstream_connect(ex->set, ex->idx, ex_on_connected, ex, &err);
        if (!ex->connecting)
            ex_fail(ex, 502, "BadGateway", "Cannot connect to the upstream.", "upstream_connect_failed");
        return;
    }
    ag_upstream_report_failure(up, ag_mono_ns(), "reset");
    if (ex->state == EX_DISCARDING) {
        ex_next_attempt(ex);
        return;
    }
    if (ex->state == EX_STREAMING)
        ag_log(AG_LOG_WARN, ex->req->id, "upstream %s reset the response mid-stream", up->conf->name);
    ex_fail(ex, 502, "BadGateway", "The upstream closed the connection without a complete response.",
            "upstream_reset");
}

static void ex_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    ag_exchange *ex = arg;
    if (!ag_deadline_fired(&ex->deadline))
        return; /* early, or no deadline (a finished exchange waiting in the cache, too) */
    ag_upstream_state *up = &ex->set->ups[ex->idx];
    if (ex->state == EX_STREAMING) {
        ag_log(AG_LOG_WARN, ex->req->id, "upstream %s idle for %lld ms mid-response", up->conf->name,
               up->conf->idle_timeout_ms);
        ag_upstream_report_failure(up, ag_mono_ns(), "timeout");
        ex_fail(ex, 504, "GatewayTimeout", "", "upstream_timeout");
        return;
    }
    ag_log(AG_LOG_WARN, ex->req->id, "upstream %s: no response within %lld ms", up->conf->name,
           up->conf->first_byte_timeout_ms);
    ag_upstream_report_failure(up, ag_mono_ns(), "timeout");
    ex_fail(ex, 504, "GatewayTimeout", "The upstream did not answer in time.", "upstream_timeout");
}

static void ex_send(ag_exchange *ex)
{
    ag_request *r = ex->req;
    ag_upconn *uc = ex->uc;
    ag_upstream_state *up = &ex->set->ups[ex->idx];
    struct evbuffer *out = bufferevent_get_output(uc->bev);
    const char *body = r->forward_body ? r->forward_body : r->body;
    size_t blen = r->forward_body ? r->forward_body_len : r->body_len;
    ag_token *tok = NULL;
    if (up->conf->auth == AG_UPSTREAM_AUTH_ENTRA) {
        ag_credential *cred = r->worker->rt->svc.credential;
        tok = cred ? ag_credential_token(cred, AG_SCOPE_COGNITIVE) : NULL;
        if (!tok) {
            ag_log(AG_LOG_ERROR, r->id, "upstream %s: no Entra token for Azure OpenAI yet", up->conf->name);
            ex_fail(ex, 503, "ServiceUnavailable", "The gateway has no credential for the upstream yet.",
                    "no_credential");
            return;
        }
    }
    int head_rc = ag_forward_write_head(r, up->conf, blen, tok ? ag_token_value(tok) : NULL, out);
    if (tok)
        ag_token_release(tok);
    if (head_rc != 0) {
        ex_fail(ex, 503, "ServiceUnavailable", "Out of memory.", "gateway_error");
        return;
    }
    if (blen)
        evbuffer_add(out, body, blen);
    llhttp_init(&ex->parser, HTTP_RESPONSE, &resp_settings);
    ex->parser.data = ex;
    ex->nh = 0;
    ex->rhlen = 0;
    ex->field_open = false;
    ex->head_scanned = false;
    ex->head_prev = 0;
    ex->complete = false;
    ex->resp_bytes = 0;
    ex->state = EX_WAITING;
    bufferevent_setcb(uc->bev, ex_read_cb, ex_write_cb, ex_event_cb, ex);
    /* A direct sender writes the request once this callback returns; others (TLS) arm EV_WRITE. */
    ag_reader_enable(&uc->rd);
    if (!uc->snd.bev)
        bufferevent_enable(uc->bev, EV_WRITE);
    r->t_upstream_sent = ag_mono_ns();
    ag_deadline_set(&ex->deadline, up->conf->first_byte_timeout_ms);
}

static void ex_on_connected(ag_upconn *uc, const char *err, bool timed_out, void *arg)
{
    ag_exchange *ex = arg;
    ex->connecting = NULL;
    if (!uc) {
        ag_upstream_report_failure(&ex->set->ups[ex->idx], ag_mono_ns(), timed_out ? "timeout" : "connect");
        ex->req->completion = timed_out ? "upstream_connect_timeout" : "upstream_connect_failed";
        ex_attempt(ex);
        return;
    }
    ex->uc = uc;
    ex_send(ex);
}

static void ex_attempt(ag_exchange *ex)
{
    ag_request *r = ex->req;
    if (ag_response_client_gone(r)) {
        ag_response_abort(ex_detach(ex), "client_disconnected");
        return;
    }
    uint64_t now = ag_mono_ns();
    long long wait_ms = 0;
    int idx = ag_upstream_pick(ex->set, ex->tried, now, &wait_ms);
    if (idx < 0) {
        if (r->attempts == 0) {
            char hdr[96];
            long long secs = (wait_ms + 999) / 1000;
            snprintf(hdr, sizeof hdr, "retry-after: %lld\r\nretry-after-ms: %lld\r\n", secs ? secs : 1,
                     wait_ms ? wait_ms : 1000);
            ag_request *rr = ex_detach(ex);
            rr->completion = "no_upstream_available";
            ag_request_error(rr, 503, "ServiceUnavailable", "No upstream is available right now.", hdr, false);
            return;
        }
        bool timeout = r->completion && strcmp(r->completion, "upstream_connect_timeout") == 0;
        ex_fail(ex, timeout ? 504 : 502, timeout ? "GatewayTimeout" : "BadGateway",
                timeout ? "Connecting to the upstream timed out." : "No upstream could be reached.",
                timeout ? "upstream_connect_timeout" : "upstream_connect_failed");
        return;
    }
    ex->idx = idx;
    ex->tried |= 1ull << idx;
    r->attempts++;
    r->completion = NULL;
    ex->uc = ag_upstream_take_idle(ex->set, idx);
    if (ex->uc) {
        ex_send(ex);
        return;
    }
    const char *err = NULL;
    ex->state = EX_CONNECTING;
    ex->connecting = ag_upstream_connect(ex->set, idx, ex_on_connected, ex, &err);
    if (!ex->connecting) {
        ag_upstream_report_failure(&ex->set->ups[idx], now, "connect");
        ag_log(AG_LOG_WARN, r->id, "upstream %s: %s", ex->set->ups[idx].conf->name, err ? err : "connect failed");
        ex_attempt(ex);
    }
}

/* The length of s[0..n) without its trailing JSON whitespace. */
static size_t skip_ws_back(const char *s, size_t n)
{
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
        n--;
    return n;
}

/* A checked body without "stream_options": the member is added before the closing brace, the
 * caller's bytes kept as they are. Returns 0, or -1 after answering 503 (memory). */
static int add_stream_options(ag_request *r)
{
    static const char member[] = "\"stream_options\":{\"include_usage\":true}";
    size_t inner = skip_ws_back(r->body, r->body_len) - 1; /* the closing brace of the checked object */
    bool empty = r->body[skip_ws_back(r->body, inner) - 1] == '{';
    size_t n = inner + !empty + (sizeof member - 1) + 1;
    char *out = cJSON_malloc(n + 1); /* freed with cJSON_free, as a printed body is */
    if (!out) {
        ag_request_error(r, 503, "ServiceUnavailable", "The gateway is short of memory; retry later.",
                         "Retry-After: 1\r\n", false);
        return -1;
    }
    memcpy(out, r->body, inner);
    size_t o = inner;
    if (!empty)
        out[o++] = ',';
    memcpy(out + o, member, sizeof member - 1);
    o += sizeof member - 1;
    out[o++] = '}';
    out[o] = '\0';
    r->forward_body = out;
    r->forward_body_len = o;
    r->strip_usage = true;
    return 0;
}

ag_stage_result ag_forward_prepare_stage(ag_request *r)
{
    if (!r->json_ok || !r->stream)
        return AG_STAGE_NEXT;
    if (strcmp(r->route.operation, "chat/completions") != 0 && strcmp(r->route.operation, "completions") != 0)
        return AG_STAGE_NEXT;
    if (!r->json && !r->forward_body) { /* the body was checked, not parsed: no tree yet */
        if (r->usage_asked)
            return AG_STAGE_NEXT; /* the caller asked for usage itself */
        if (r->no_stream_options)
            return add_stream_options(r) == 0 ? AG_STAGE_NEXT : AG_STAGE_DONE;
    }
    bool failed;
    cJSON *body = ag_request_json(r, &failed);
    if (failed)
        return AG_STAGE_DONE;
    cJSON *doc = r->forward_body ? cJSON_ParseWithLength(r->forward_body, r->forward_body_len) : body;
    if (!doc)
        return AG_STAGE_NEXT;
    cJSON *so = cJSON_GetObjectItemCaseSensitive(doc, "stream_options");
    bool asked = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(so, "include_usage"));
    if (!asked && (!so || cJSON_IsObject(so))) {
        if (!so)
            so = cJSON_AddObjectToObject(doc, "stream_options");
        cJSON_DeleteItemFromObjectCaseSensitive(so, "include_usage");
        if (so && cJSON_AddTrueToObject(so, "include_usage")) {
            char *text = cJSON_PrintUnformatted(doc);
            if (text) {
                cJSON_free(r->forward_body);
                r->forward_body = text;
                r->forward_body_len = strlen(text);
                r->strip_usage = true;
            }
        }
    }
    if (doc != body)
        cJSON_Delete(doc);
    return AG_STAGE_NEXT;
}

ag_stage_result ag_forward_stage(ag_request *r)
{
    ag_worker *w = r->worker;
    ag_exchange *ex;
    if (w->nex_cache > 0) {
        /* A finished exchange's memory, with its head buffer and timer (bound to this memory). */
        ex = w->ex_cache[--w->nex_cache];
        char *rh = ex->rh;
        size_t rhcap = ex->rhcap;
        ag_deadline deadline = ex->deadline; /* its timer may still be pending: it stays so */
        memset(ex, 0, offsetof(ag_exchange, hname));
        memset(&ex->nh, 0, sizeof *ex - offsetof(ag_exchange, nh));
        ex->rh = rh;
        ex->rhcap = rhcap;
        ex->deadline = deadline;
    } else {
        ex = calloc(1, sizeof *ex);
        if (!ex) {
            ag_request_error(r, 503, "ServiceUnavailable", "Out of memory.", NULL, true);
            return AG_STAGE_DONE;
        }
        ex->deadline.ev = evtimer_new(w->base, ex_timer_cb, ex);
    }
    ex->req = r;
    ex->set = w->upstreams;
    ag_upstream_set_ref(ex->set);
    r->ex = ex;
    ex_attempt(ex);
    /* ex_attempt may have answered already (no upstream); the request is still alive either way
     * until its response ends, which happens from an event callback, never before we return. */
    return AG_STAGE_WAIT;
}

void ag_exchange_cancel(ag_exchange *ex)
{
    ex->req->ex = NULL;
    ex_free(ex);
}

void ag_exchange_client_gone(ag_exchange *ex)
{
    ag_request *r = ex_detach(ex);
    ag_response_abort(r, "client_disconnected");
}
