/* The request context: creation, header access, errors in Azure's shape, the access log. */
#include "aoai_guard/request.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>


#include "aoai_guard/audit_stage.h"
#include "aoai_guard/clock.h"
#include "aoai_guard/limit_stage.h"
#include "aoai_guard/request_metrics.h"
#include "aoai_guard/conn.h"
#include "aoai_guard/forward.h"
#include "aoai_guard/growbuf.h"
#include "aoai_guard/headbuf.h"
#include "aoai_guard/jsonw.h"
#include "aoai_guard/log.h"
#include "aoai_guard/sse.h"
#include "aoai_guard/uuid.h"

#define MAX_COMPLETION_TEXT (1024 * 1024)

_Static_assert(sizeof ((ag_request *)0)->client_addr == sizeof ((ag_conn *)0)->client_addr,
               "a request copies its connection's client address whole");

/* Buffers up to this size stay with the request's memory when it goes back to the cache. */
#define CACHED_BUFFER_MAX (64 * 1024)

#define END_OF(field) (offsetof(ag_request, field) + sizeof((ag_request *)0)->field)
_Static_assert(END_OF(identity) <= offsetof(ag_request, policy_decisions), "the layout clear_for_reuse skips");

/* Zeroes a finished request for reuse, except what is already in its zero state: the identity
 * (2.7 KB) when authentication did not write it, and the decisions past their count (1 KB,
 * never read). The rest is cleared whole. */
static void clear_for_reuse(ag_request *r)
{
    char *base = (char *)r;
    bool identity_written = r->identity_written;
    memset(base, 0, offsetof(ag_request, identity));
    if (identity_written)
        memset(&r->identity, 0, sizeof r->identity);
    else
        r->identity.kind = 0; /* the no-auth stage sets only the kind */
    memset(base + END_OF(identity), 0, offsetof(ag_request, policy_decisions) - END_OF(identity));
    r->policy_decisions.count = 0;
    r->policy_decisions.dropped = 0;
    memset(base + END_OF(policy_decisions), 0, sizeof *r - END_OF(policy_decisions));
}

const ag_json_limits ag_request_json_limits = {.max_depth = 64, .max_nodes = 500000};

cJSON *ag_request_parse_json(ag_request *r, ag_json_status *status, size_t *err_offset)
{
    ag_json_arena_enter(&r->json_arena);
    r->json = ag_json_parse_strict(r->body, r->body_len, &ag_request_json_limits, status, err_offset);
    ag_json_arena_leave();
    r->json_mark = ag_json_heap_mark_now();
    return r->json;
}

cJSON *ag_request_json(ag_request *r, bool *failed)
{
    *failed = false;
    if (r->json || !r->json_ok)
        return r->json;
    ag_json_status st;
    size_t off;
    if (ag_request_parse_json(r, &st, &off))
        return r->json;
    /* The body was checked: only memory can fail here. */
    ag_log(AG_LOG_ERROR, r->id, "request body: cannot build its tree (%s at byte %zu)", ag_json_status_str(st), off);
    ag_request_error(r, 503, "ServiceUnavailable", "The gateway is short of memory; retry later.", "Retry-After: 1\r\n",
                     false);
    *failed = true;
    return NULL;
}

ag_request *ag_request_new(struct ag_conn *c)
{
    ag_worker *w = c->worker;
    ag_request *r;
    if (w->nreq_cache > 0) {
        /* A finished request's memory, with its body buffer and header table kept. */
        r = w->req_cache[--w->nreq_cache];
        char *body = r->body, *hbuf = r->hbuf, *resp_json = r->resp_json;
        size_t body_cap = r->body_cap, hbuf_cap = r->hbuf_cap, resp_json_cap = r->resp_json_cap;
        ag_header *headers = r->headers;
        size_t headers_cap = r->headers_cap;
        ag_json_arena arena = r->json_arena;
        clear_for_reuse(r);
        r->json_arena = arena;
        r->body = body;
        r->body_cap = body_cap;
        r->hbuf = hbuf;
        r->hbuf_cap = hbuf_cap;
        r->resp_json = resp_json;
        r->resp_json_cap = resp_json_cap;
        r->headers = headers;
        r->headers_cap = headers_cap;
        if (r->body)
            r->body[0] = '\0';
    } else {
        r = calloc(1, sizeof *r);
        if (!r)
            return NULL;
    }
    r->conn = c;
    r->worker = c->worker;
    r->cfg = c->cfg; /* borrowed: the connection holds a reference and outlives its requests */
    memcpy(r->client_addr, c->client_addr, sizeof r->client_addr); /* same size, NUL-terminated */
    r->h_host = r->h_authorization = r->h_api_key = r->h_content_type = r->h_request_id = -1;
    r->h_connection = r->h_transfer_encoding = r->h_expect = r->h_content_encoding = -1;
    r->http_major = 1;
    r->http_minor = 1;
    r->wall_start_ms = ag_wall_ms();
    r->limit_estimate = -1;
    r->t_start = ag_mono_ns();
    r->worker->active_requests++;
    return r;
}

/* The buffers a request keeps across reuse, and the request itself. */
static void free_request_memory(ag_request *r)
{
    free(r->body);
    free(r->hbuf);
    free(r->resp_json);
    free(r->headers);
    ag_json_arena_free(&r->json_arena);
    free(r);
}

void ag_request_free(ag_request *r)
{
    if (!r)
        return;
    if (r->on_free)
        r->on_free(r, r->on_free_arg);
    ag_limit_stage_abandon(r);
    if (r->ex)
        ag_exchange_cancel(r->ex);
    r->ex = NULL;
    ag_sse_parser_free(r->sse);
    if (r->policy_sse) {
        ag_policy_sse_free(r->policy_sse);
        free(r->policy_sse);
    }
    /* A tree nothing was added to since the parse is all in the arena: resetting it releases it. */
    if (r->json && !ag_json_heap_mark_same(r->json_mark, ag_json_heap_mark_now()))
        cJSON_Delete(r->json);
    r->json = NULL;
    ag_json_arena_reset(&r->json_arena); /* no tree from it is left */
    cJSON_free(r->forward_body); /* printed by cJSON (policy rewrite or include_usage) */
    free(r->target);
    free(r->completion_text);
    ag_worker *w = r->worker;
    w->active_requests--;
    if (w->nreq_cache < AG_REQUEST_CACHE) {
        /* Kept for the next request: the header table, and buffers of ordinary size. */
        if (r->body_cap > CACHED_BUFFER_MAX) {
            free(r->body);
            r->body = NULL;
            r->body_cap = 0;
        }
        if (r->hbuf_cap > CACHED_BUFFER_MAX) {
            free(r->hbuf);
            r->hbuf = NULL;
            r->hbuf_cap = 0;
        }
        if (r->resp_json_cap > CACHED_BUFFER_MAX) {
            free(r->resp_json);
            r->resp_json = NULL;
            r->resp_json_cap = 0;
        }
        w->req_cache[w->nreq_cache++] = r;
        return;
    }
    free_request_memory(r);
}

void ag_request_cache_drain(ag_worker *w)
{
    while (w->nreq_cache > 0)
        free_request_memory(w->req_cache[--w->nreq_cache]);
}

int ag_request_header_find(const ag_request *r, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < r->nheaders; i++)
        if (r->headers[i].name_len == n && strncasecmp(r->hbuf + r->headers[i].name_off, name, n) == 0)
            return (int)i;
    return -1;
}

const char *ag_request_header_name(const ag_request *r, int i, size_t *len)
{
    *len = r->headers[i].name_len;
    return r->hbuf + r->headers[i].name_off;
}

const char *ag_request_header_value(const ag_request *r, int i, size_t *len)
{
    *len = r->headers[i].value_len;
    return r->hbuf + r->headers[i].value_off;
}

static bool request_id_ok(const char *v, size_t n)
{
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = v[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_' || ch == '.' || ch == ':'))
            return false;
    }
    return true;
}

void ag_request_assign_id(ag_request *r)
{
    if (r->h_request_id >= 0) {
        size_t n;
        const char *v = ag_request_header_value(r, r->h_request_id, &n);
        if (request_id_ok(v, n)) {
            memcpy(r->id, v, n);
            r->id[n] = '\0';
            return;
        }
    }
    ag_uuid4(r->id);
}

void ag_request_error_body(ag_request *r, int status, const char *code, const char *body, size_t blen,
                           const char *extra_headers, bool close)
{
    if (r->response_started) {
        ag_response_abort(r, "gateway_error");
        return;
    }
    if (!r->id[0])
        ag_request_assign_id(r);
    r->error_code = code;
    if (close)
        r->keep_alive = false;
    ag_headbuf hb;
    ag_hb_init(&hb);
    uint64_t now = ag_mono_ns();
    AG_HB_LIT(&hb, "Content-Type: application/json\r\nx-request-id: ");
    ag_hb_str(&hb, r->id);
    AG_HB_LIT(&hb, "\r\nServer-Timing: gateway;dur=");
    ag_hb_ms3(&hb, r->gateway_ns ? r->gateway_ns : now - (r->t_head ? r->t_head : r->t_start));
    AG_HB_LIT(&hb, "\r\n");
    ag_hb_str(&hb, r->ratelimit_headers);
    if (extra_headers)
        ag_hb_str(&hb, extra_headers);
    ag_response_begin(r, status, hb.failed ? "" : hb.p, hb.failed ? 0 : hb.len, (long long)blen);
    ag_hb_release(&hb);
    ag_response_body(r, body, blen);
    ag_response_end(r);
}

void ag_request_error(ag_request *r, int status, const char *code, const char *message,
                      const char *extra_headers, bool close)
{
    char body[1024];
    ag_jsonw w;
    ag_jw_init(&w, body, sizeof body);
    ag_jw_object_begin(&w);
    ag_jw_key(&w, "error");
    ag_jw_object_begin(&w);
    ag_jw_kv_str(&w, "code", code);
    ag_jw_kv_str(&w, "message", message);
    ag_jw_object_end(&w);
    ag_jw_object_end(&w);
    ag_request_error_body(r, status, code, body, ag_jw_len(&w), extra_headers, close);
}

void ag_request_add_completion(ag_request *r, const char *text, size_t len)
{
    if (r->completion_len + len > MAX_COMPLETION_TEXT)
        len = MAX_COMPLETION_TEXT - r->completion_len; /* the rest is counted in usage, not kept */
    ag_grow_append(&r->completion_text, &r->completion_len, &r->completion_cap, MAX_COMPLETION_TEXT, text, len);
}

void ag_request_client_gone(ag_request *r)
{
    if (r->ex)
        ag_exchange_client_gone(r->ex);
    else if (!r->response_started)
        ag_response_abort(r, "client_disconnected");
}

static double ms_between(uint64_t a, uint64_t b)
{
    return (a && b && b >= a) ? (double)(b - a) / 1e6 : -1.0;
}

void ag_request_finish(ag_request *r)
{
    if (r->head_done) {
        ag_limit_stage_finish(r);
        ag_request_metrics_done(r);
        ag_audit_stage_record(r);
    }
    uint64_t now = ag_mono_ns();
    if (!r->cfg->access_log || !r->head_done) {
        if (!r->head_done)
            return; /* nothing was parsed: the rejection was logged where it happened */
    }
    if (!r->cfg->access_log)
        return;
    char line[4096], ts[32];
    ag_format_rfc3339_ms(r->wall_start_ms, ts);
    ag_jsonw w;
    ag_jw_init(&w, line, sizeof line);
    ag_jw_object_begin(&w);
    ag_jw_kv_str(&w, "time", ts);
    ag_jw_kv_str(&w, "type", "access");
    ag_jw_kv_str(&w, "request_id", r->id);
    ag_jw_kv_str(&w, "client", r->client_addr);
    ag_jw_kv_str(&w, "method", r->method_str);
    ag_jw_kv_strn(&w, "path", r->target ? r->target : "", r->target ? r->path_len : 0);
    if (r->api_version[0])
        ag_jw_kv_str(&w, "api_version", r->api_version);
    if (r->route.deployment[0])
        ag_jw_kv_str(&w, "deployment", r->route.deployment);
    if (r->route.operation[0])
        ag_jw_kv_str(&w, "operation", r->route.operation);
    ag_jw_kv_int(&w, "status", r->status);
    if (r->upstream[0])
        ag_jw_kv_str(&w, "upstream", r->upstream);
    ag_jw_kv_int(&w, "attempts", r->attempts);
    ag_jw_kv_int(&w, "bytes_in", (long long)r->body_len);
    ag_jw_kv_int(&w, "bytes_out", (long long)r->bytes_out);
    ag_jw_key(&w, "latency_ms");
    ag_jw_double(&w, ms_between(r->t_start, now), 3);
    ag_jw_key(&w, "ttfb_ms");
    ag_jw_double(&w, ms_between(r->t_start, r->t_first_byte), 3);
    ag_jw_key(&w, "gateway_ms");
    ag_jw_double(&w, (double)r->gateway_ns / 1e6, 3);
    ag_jw_kv_bool(&w, "stream", r->stream);
    if (r->usage.present) {
        ag_jw_kv_int(&w, "prompt_tokens", r->usage.prompt_tokens);
        ag_jw_kv_int(&w, "completion_tokens", r->usage.completion_tokens);
        ag_jw_kv_int(&w, "total_tokens", r->usage.total_tokens);
    }
    if (r->identity.kind != AG_IDENTITY_ANONYMOUS) {
        ag_jw_kv_str(&w, "identity_type", ag_identity_kind_str(r->identity.kind));
        if (r->identity.tid[0])
            ag_jw_kv_str(&w, "tid", r->identity.tid);
        if (r->identity.oid[0])
            ag_jw_kv_str(&w, "oid", r->identity.oid);
        if (r->identity.app[0])
            ag_jw_kv_str(&w, "app", r->identity.app);
        if (r->identity.name[0])
            ag_jw_kv_str(&w, "identity", r->identity.name);
    }
    if (r->policy_verdict) {
        char dec[512] = "";
        ag_policy_decisions_format(&r->policy_decisions, dec, sizeof dec);
        ag_jw_kv_str(&w, "policy", r->policy_verdict);
        if (dec[0])
            ag_jw_kv_str(&w, "policy_decisions", dec);
    }
    if (r->completion)
        ag_jw_kv_str(&w, "completion", r->completion);
    if (r->error_code)
        ag_jw_kv_str(&w, "error_code", r->error_code);
    ag_jw_object_end(&w);
    size_t n = ag_jw_len(&w);
    if (n)
        ag_log_line(line, n);
}
