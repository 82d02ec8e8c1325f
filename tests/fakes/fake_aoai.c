/* fake_aoai: a stand-in for the Azure OpenAI data plane, for integration tests and benchmarks.
 *
 *   fake_aoai --port N [--port-file PATH] [--name NAME] [--api-key KEY] [--bearer TOKEN]
 *             [--no-record] [--max-records N] [--max-body-bytes N] [--max-header-bytes N]
 *
 * One thread, one libevent loop, HTTP/1.1 on raw bufferevents parsed by llhttp (evhttp cannot send
 * an RST, stall mid-body or delay the status line). Persistent connections and pipelining: one
 * request is answered at a time, in order; the next is parsed only once the previous answer is
 * fully queued. Control endpoints live under /_fake/ (see README-aoai.md). Binds 127.0.0.1 only. */
#include "fake_aoai_internal.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/sockios.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <llhttp.h>
#include <openssl/rand.h>

#include "aoai_guard/json_strict.h"

#define FA_DEFAULT_MAX_BODY ((size_t)64 << 20)
#define FA_DEFAULT_MAX_HEADER_BYTES ((size_t)64 << 10)
#define FA_MAX_HEADERS 256
#define FA_DEFAULT_MAX_RECORDS 10000
#define FA_RECORD_MAX_BYTES ((size_t)256 << 20)
#define FA_OUT_HIGH ((size_t)4 << 20)    /* stop parsing pipelined requests above this much output */
#define FA_RESET_WAIT_MS 2000            /* longest wait for the peer to ACK before the RST */
#define FA_LINGER_MS 2000                /* longest drain of unread input before closing after an error */

typedef enum fa_phase {
    FA_IDLE = 0,   /* no response in progress: parse the next request */
    FA_SENDING,    /* writing a response, possibly waiting on a timer between steps */
    FA_STALLED,    /* stall fault: say nothing more, keep the connection */
    FA_RESETTING,  /* reset fault: waiting for the peer to ACK what was sent, then RST */
} fa_phase;

typedef enum fa_action {
    FA_ACT_NONE = 0,
    FA_ACT_CLOSE,
    FA_ACT_RESET,
    FA_ACT_STALL,
} fa_action;

struct fa_conn;

typedef struct fa_server {
    struct event_base *base;
    struct evconnlistener *listener;
    const char *name;
    const char *api_key;
    const char *bearer;
    bool record;
    size_t max_body;
    size_t max_header_bytes;
    ag_fake_conf conf;
    ag_fake_recorder rec;
    uint64_t requests;          /* data-plane requests, also the seq of the latest */
    uint64_t conns_accepted;
    uint64_t open_conns;
    struct fa_conn *conns;      /* every open connection, for shutdown */
    uint64_t rng;
    time_t rl_window;           /* start of the current per-minute rate-limit window */
    long long rl_requests, rl_tokens;
    time_t date_at;
    char date[64];
    llhttp_settings_t settings;
} fa_server;

typedef struct fa_conn {
    fa_server *srv;
    struct fa_conn *prev, *next;
    struct bufferevent *bev;
    struct event *timer;
    uint64_t id;
    llhttp_t parser;

    /* the request being parsed */
    ag_fake_buf hbuf;           /* url, then each header name and value, NUL-separated */
    ag_fake_hdr *hdrs;
    size_t nhdrs, hdr_cap;
    size_t url_len;
    int hstate;                 /* 0 in url, 1 in a header name, 2 in a header value */
    ag_fake_buf body;
    int req_error;              /* HTTP status for a limit hit inside a callback */
    bool in_message;
    bool req_ready;
    bool keep_alive;
    char method[32];
    int http_major, http_minor;

    bool read_eof;
    bool close_after;           /* close once the output is flushed */
    bool linger;                /* framing error: after the answer, half-close and drain input first */
    bool shut_wr;               /* linger: our FIN is sent, waiting for the peer's */
    bool dead;                  /* free at the end of the current top-level callback */

    /* the response being sent */
    fa_phase phase;
    ag_fake_resp resp;
    bool chunked;
    bool no_body;
    size_t nsegs;               /* body segments */
    size_t split;               /* non-stream body split point for a mid-body fault, 0 = none */
    size_t step;                /* 0 = headers, 1..nsegs = body segments */
    size_t action_at;           /* step at which the fault action replaces sending */
    fa_action action;
    bool delay_done;
    long long first_delay_ms, interval_ms;
    struct timespec reset_deadline;
} fa_conn;

static volatile sig_atomic_t fa_stop_signal;

/* ---- small utilities ---- */

static uint64_t rng_next(fa_server *s)
{
    uint64_t x = s->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    s->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static void make_uuid(fa_server *s, char out[37])
{
    uint64_t a = rng_next(s), b = rng_next(s);
    snprintf(out, 37, "%08x-%04x-4%03x-%04x-%012llx", (unsigned)(a >> 32), (unsigned)((a >> 16) & 0xffff),
             (unsigned)(a & 0xfff), (unsigned)(0x8000 | ((b >> 48) & 0x3fff)),
             (unsigned long long)(b & 0xffffffffffffULL));
}

static const char *http_date(fa_server *s)
{
    time_t now = time(NULL);
    if (now != s->date_at) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(s->date, sizeof s->date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        s->date_at = now;
    }
    return s->date;
}

static const char *status_text(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
    }
}

/* ---- connection lifetime ---- */

static void conn_free(fa_conn *c)
{
    fa_server *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->timer)
        event_free(c->timer);
    if (c->bev)
        bufferevent_free(c->bev);
    ag_fake_buf_free(&c->hbuf);
    ag_fake_buf_free(&c->body);
    free(c->hdrs);
    ag_fake_resp_free(&c->resp);
    s->open_conns--;
    free(c);
}

static void conn_request_reset(fa_conn *c)
{
    c->hbuf.len = 0;
    c->nhdrs = 0;
    c->url_len = 0;
    c->hstate = 0;
    c->body.len = 0;
    if (c->body.cap > ((size_t)1 << 20)) /* do not keep a huge body buffer on an idle connection */
        ag_fake_buf_free(&c->body);
    c->req_error = 0;
    c->req_ready = false;
}

/* ---- llhttp callbacks: collect one request ---- */

static int hbuf_add(fa_conn *c, const char *at, size_t len)
{
    if (c->hbuf.len + len + 2 > c->srv->max_header_bytes) {
        c->req_error = c->hstate == 0 ? 414 : 431;
        return -1;
    }
    ag_fake_buf_add(&c->hbuf, at, len);
    return 0;
}

static void hbuf_nul(fa_conn *c)
{
    ag_fake_buf_add(&c->hbuf, "", 1);
}

/* Ends the current header name; -1 when it is not an RFC 9110 token. llhttp built without
 * LLHTTP_STRICT_MODE lets spaces through ("Bad Header: x", "Name : x"), so check it here. */
static int header_name_end(fa_conn *c)
{
    static const char tchar_extra[] = "!#$%&'*+-.^_`|~";
    ag_fake_hdr *h = &c->hdrs[c->nhdrs - 1];
    h->name_len = c->hbuf.len - h->name_off;
    hbuf_nul(c);
    if (h->name_len == 0)
        goto bad;
    for (size_t i = 0; i < h->name_len; i++) {
        unsigned char ch = (unsigned char)c->hbuf.p[h->name_off + i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              (ch && strchr(tchar_extra, ch))))
            goto bad;
    }
    return 0;
bad:
    c->req_error = 400;
    llhttp_set_error_reason(&c->parser, "Invalid header token");
    return -1;
}

/* Ends whatever the parser was collecting (url, header name or value). */
static int header_finish(fa_conn *c)
{
    if (c->hstate == 0) {
        c->url_len = c->hbuf.len;
        hbuf_nul(c);
    } else if (c->hstate == 1) {
        if (header_name_end(c) != 0)
            return -1;
        ag_fake_hdr *h = &c->hdrs[c->nhdrs - 1];
        h->value_off = c->hbuf.len;
        h->value_len = 0;
        hbuf_nul(c);
    } else {
        ag_fake_hdr *h = &c->hdrs[c->nhdrs - 1];
        h->value_len = c->hbuf.len - h->value_off;
        hbuf_nul(c);
    }
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    fa_conn *c = p->data;
    conn_request_reset(c);
    c->in_message = true;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    return hbuf_add(p->data, at, len);
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    fa_conn *c = p->data;
    if (c->hstate != 1) {
        if (header_finish(c) != 0)
            return -1;
        if (c->nhdrs == FA_MAX_HEADERS) {
            c->req_error = 431;
            return -1;
        }
        if (c->nhdrs == c->hdr_cap) {
            size_t cap = c->hdr_cap ? c->hdr_cap * 2 : 16;
            ag_fake_hdr *h = realloc(c->hdrs, cap * sizeof *h);
            if (!h)
                ag_fake_oom();
            c->hdrs = h;
            c->hdr_cap = cap;
        }
        c->hdrs[c->nhdrs].name_off = c->hbuf.len;
        c->nhdrs++;
        c->hstate = 1;
    }
    return hbuf_add(c, at, len);
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    fa_conn *c = p->data;
    if (c->hstate == 1) {
        if (header_name_end(c) != 0)
            return -1;
        c->hdrs[c->nhdrs - 1].value_off = c->hbuf.len;
        c->hstate = 2;
    }
    return hbuf_add(c, at, len);
}

static int on_headers_complete(llhttp_t *p)
{
    fa_conn *c = p->data;
    if (header_finish(c) != 0)
        return -1;
    c->hstate = 3;
    snprintf(c->method, sizeof c->method, "%s", llhttp_method_name((llhttp_method_t)llhttp_get_method(p)));
    c->http_major = llhttp_get_http_major(p);
    c->http_minor = llhttp_get_http_minor(p);
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > c->srv->max_body) {
        c->req_error = 413;
        return -1;
    }
    for (size_t i = 0; i < c->nhdrs; i++) {
        const ag_fake_hdr *h = &c->hdrs[i];
        if (strcasecmp(c->hbuf.p + h->name_off, "expect") == 0 &&
            strcasecmp(c->hbuf.p + h->value_off, "100-continue") == 0 && c->http_minor >= 1)
            evbuffer_add(bufferevent_get_output(c->bev), "HTTP/1.1 100 Continue\r\n\r\n", 25);
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    fa_conn *c = p->data;
    if (c->body.len + len > c->srv->max_body) {
        c->req_error = 413;
        return -1;
    }
    ag_fake_buf_add(&c->body, at, len);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    fa_conn *c = p->data;
    c->keep_alive = llhttp_should_keep_alive(p) != 0;
    c->in_message = false;
    c->req_ready = true;
    return HPE_PAUSED;
}

/* ---- writing responses ---- */

/* Queues a complete response that is not a data-plane answer (control API, framing errors). */
static void conn_simple_response(fa_conn *c, int status, const char *body, size_t len)
{
    fa_server *s = c->srv;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    bool close = c->close_after || !c->keep_alive;
    evbuffer_add_printf(out,
                        "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                        "x-fake-name: %s\r\nDate: %s\r\n%s\r\n",
                        status, status_text(status), len, s->name, http_date(s),
                        close ? "Connection: close\r\n" : (c->http_minor == 0 ? "Connection: keep-alive\r\n" : ""));
    if (strcmp(c->method, "HEAD") != 0)
        evbuffer_add(out, body, len);
    if (close)
        c->close_after = true;
}

static void conn_framing_error(fa_conn *c, int status, const char *message)
{
    char body[512];
    char code[16];
    snprintf(code, sizeof code, "%d", status);
    cJSON *root = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(root, "error");
    if (!root || !e || !cJSON_AddStringToObject(e, "code", code) || !cJSON_AddStringToObject(e, "message", message) ||
        !cJSON_PrintPreallocated(root, body, sizeof body, false))
        snprintf(body, sizeof body, "{\"error\":{\"code\":\"%d\",\"message\":\"Bad request\"}}", status);
    cJSON_Delete(root);
    c->close_after = true;
    c->method[0] = '\0';
    conn_simple_response(c, status, body, strlen(body));
}

static void segment_range(const fa_conn *c, size_t i, size_t *off, size_t *len)
{
    const ag_fake_resp *r = &c->resp;
    if (r->stream) {
        *off = i == 0 ? 0 : r->seg_end[i - 1];
        *len = r->seg_end[i] - *off;
    } else if (c->split) {
        *off = i == 0 ? 0 : c->split;
        *len = i == 0 ? c->split : r->body.len - c->split;
    } else {
        *off = 0;
        *len = r->body.len;
    }
}

static void write_headers(fa_conn *c, const ag_fake_req *req)
{
    fa_server *s = c->srv;
    ag_fake_resp *r = &c->resp;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    char apim[37], xrid[37];
    make_uuid(s, apim);
    size_t len = 0;
    const char *rid = ag_fake_req_header(req, "x-request-id", &len);
    if (!rid || len == 0) {
        make_uuid(s, xrid);
        rid = xrid;
    }
    const char *crid = ag_fake_req_header(req, "x-ms-client-request-id", NULL);
    long long rem_req = s->conf.ratelimit_requests - s->rl_requests;
    long long rem_tok = s->conf.ratelimit_tokens - s->rl_tokens;
    evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n", r->status, status_text(r->status),
                        r->content_type);
    if (c->chunked)
        evbuffer_add(out, "Transfer-Encoding: chunked\r\n", 28);
    else if (!r->stream)
        evbuffer_add_printf(out, "Content-Length: %zu\r\n", r->body.len);
    evbuffer_add_printf(out, "apim-request-id: %s\r\nx-request-id: %s\r\n", apim, rid);
    if (crid)
        evbuffer_add_printf(out, "x-ms-client-request-id: %s\r\n", crid);
    evbuffer_add_printf(out,
                        "x-ms-region: %s\r\nx-ratelimit-remaining-requests: %lld\r\n"
                        "x-ratelimit-remaining-tokens: %lld\r\nx-content-type-options: nosniff\r\n",
                        s->conf.region, rem_req < 0 ? 0 : rem_req, rem_tok < 0 ? 0 : rem_tok);
    if (r->stream)
        evbuffer_add(out, "Cache-Control: no-cache\r\n", 25);
    if (r->headers.len)
        evbuffer_add(out, r->headers.p, r->headers.len);
    evbuffer_add_printf(out, "x-fake-name: %s\r\nDate: %s\r\n%s\r\n", s->name, http_date(s),
                        !c->keep_alive ? "Connection: close\r\n"
                                       : (c->http_minor == 0 ? "Connection: keep-alive\r\n" : ""));
}

static void write_segment(fa_conn *c, size_t i)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    size_t off, len;
    segment_range(c, i, &off, &len);
    if (len == 0)
        return;
    if (c->chunked) {
        evbuffer_add_printf(out, "%zx\r\n", len);
        evbuffer_add(out, c->resp.body.p + off, len);
        evbuffer_add(out, "\r\n", 2);
    } else {
        evbuffer_add(out, c->resp.body.p + off, len);
    }
}

static void arm_timer_ms(fa_conn *c, long long ms)
{
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(c->timer, &tv);
}

/* Sends the RST once everything written has been acknowledged (or the wait is over). */
static void conn_try_reset(fa_conn *c)
{
    int fd = (int)bufferevent_getfd(c->bev);
    int unacked = 0;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    bool late = now.tv_sec > c->reset_deadline.tv_sec ||
                (now.tv_sec == c->reset_deadline.tv_sec && now.tv_nsec >= c->reset_deadline.tv_nsec);
    bool flushed = evbuffer_get_length(bufferevent_get_output(c->bev)) == 0 &&
                   ioctl(fd, SIOCOUTQ, &unacked) == 0 && unacked == 0;
    if (!flushed && !late) {
        arm_timer_ms(c, 1);
        return;
    }
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    c->dead = true; /* bufferevent_free closes the socket: with linger 0 that is an RST */
}

static void conn_response_done(fa_conn *c)
{
    c->phase = FA_IDLE;
    if (!c->keep_alive)
        c->close_after = true;
    conn_request_reset(c);
}

/* Advances the response: waits on timers, writes steps, performs the fault action. */
static void conn_pump(fa_conn *c, const ag_fake_req *req)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    while (c->phase == FA_SENDING) {
        if (c->step > c->nsegs) {
            if (c->chunked && !c->no_body)
                evbuffer_add(out, "0\r\n\r\n", 5);
            conn_response_done(c);
            return;
        }
        long long delay = c->step == 0 ? c->first_delay_ms : (c->resp.stream && c->step >= 2 ? c->interval_ms : 0);
        if (delay > 0 && !c->delay_done) {
            arm_timer_ms(c, delay);
            return;
        }
        c->delay_done = false;
        if (c->step == c->action_at) {
            switch (c->action) {
            case FA_ACT_CLOSE:
                c->phase = FA_IDLE;
                c->close_after = true;
                c->keep_alive = false;
                break;
            case FA_ACT_STALL:
                c->phase = FA_STALLED;
                break;
            case FA_ACT_RESET:
                c->phase = FA_RESETTING;
                clock_gettime(CLOCK_MONOTONIC, &c->reset_deadline);
                c->reset_deadline.tv_sec += FA_RESET_WAIT_MS / 1000;
                conn_try_reset(c);
                break;
            case FA_ACT_NONE:
                break;
            }
            return;
        }
        if (c->step == 0) {
            write_headers(c, req);
            if (c->no_body)
                c->step = c->nsegs;
        } else {
            write_segment(c, c->step - 1);
        }
        c->step++;
    }
}

/* ---- request dispatch ---- */

static void conn_req_view(fa_conn *c, ag_fake_req *req)
{
    memset(req, 0, sizeof *req);
    if (!c->body.p)
        ag_fake_buf_add(&c->body, "", 0);
    req->method = c->method;
    req->url = c->hbuf.p;
    req->url_len = c->url_len;
    req->hbase = c->hbuf.p;
    req->hdrs = c->hdrs;
    req->nhdrs = c->nhdrs;
    req->body = c->body.p;
    req->body_len = c->body.len;
    req->http_major = c->http_major;
    req->http_minor = c->http_minor;
    req->conn_id = c->id;
}

static bool path_is(const char *url, const char *path)
{
    size_t n = strlen(path);
    return strncmp(url, path, n) == 0 && (url[n] == '\0' || url[n] == '?');
}

static void control_reply_json(fa_conn *c, int status, cJSON *j)
{
    char *s = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (!s)
        ag_fake_oom();
    conn_simple_response(c, status, s, strlen(s));
    cJSON_free(s);
}

static void control_error(fa_conn *c, int status, const char *code, const char *message)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(root, "error");
    if (!e || !cJSON_AddStringToObject(e, "code", code) || !cJSON_AddStringToObject(e, "message", message))
        ag_fake_oom();
    control_reply_json(c, status, root);
}

static void handle_control(fa_conn *c, const ag_fake_req *req)
{
    fa_server *s = c->srv;
    const char *m = req->method;
    if (path_is(req->url, "/_fake/requests")) {
        if (strcmp(m, "GET") == 0) {
            char *dump = ag_fake_rec_dump(&s->rec);
            conn_simple_response(c, 200, dump, strlen(dump));
            cJSON_free(dump);
        } else if (strcmp(m, "DELETE") == 0) {
            cJSON *o = cJSON_CreateObject();
            if (!o || !cJSON_AddNumberToObject(o, "cleared", (double)ag_fake_rec_clear(&s->rec)))
                ag_fake_oom();
            control_reply_json(c, 200, o);
        } else {
            control_error(c, 405, "405", "Method Not Allowed: use GET or DELETE");
        }
    } else if (path_is(req->url, "/_fake/config")) {
        if (strcmp(m, "GET") == 0) {
            control_reply_json(c, 200, ag_fake_conf_to_json(&s->conf));
        } else if (strcmp(m, "DELETE") == 0) {
            ag_fake_conf_reset(&s->conf);
            control_reply_json(c, 200, ag_fake_conf_to_json(&s->conf));
        } else if (strcmp(m, "POST") == 0) {
            static const ag_json_limits limits = {.max_depth = 16, .max_nodes = 200000};
            ag_json_status st = AG_JSON_OK;
            size_t off = 0;
            cJSON *j = ag_json_parse_strict(req->body, req->body_len, &limits, &st, &off);
            if (!j) {
                char msg[128];
                snprintf(msg, sizeof msg, "invalid JSON: %s at byte %zu", ag_json_status_str(st), off);
                control_error(c, 400, "BadRequest", msg);
                return;
            }
            ag_conf_err err;
            int rc = ag_fake_conf_apply(&s->conf, j, &err);
            cJSON_Delete(j);
            if (rc != 0)
                control_error(c, 400, "BadRequest", err.msg);
            else
                control_reply_json(c, 200, ag_fake_conf_to_json(&s->conf));
        } else {
            control_error(c, 405, "405", "Method Not Allowed: use GET, POST or DELETE");
        }
    } else if (path_is(req->url, "/_fake/stats")) {
        if (strcmp(m, "GET") != 0) {
            control_error(c, 405, "405", "Method Not Allowed: use GET");
            return;
        }
        cJSON *o = cJSON_CreateObject();
        if (!o || !cJSON_AddNumberToObject(o, "requests", (double)s->requests) ||
            !cJSON_AddNumberToObject(o, "open_connections", (double)s->open_conns) ||
            !cJSON_AddNumberToObject(o, "connections_accepted", (double)s->conns_accepted) ||
            !cJSON_AddNumberToObject(o, "recorded", (double)s->rec.count) ||
            !cJSON_AddNumberToObject(o, "faults_pending", (double)s->conf.nfaults))
            ag_fake_oom();
        control_reply_json(c, 200, o);
    } else {
        control_error(c, 404, "404", "Unknown control endpoint");
    }
}

static bool authorized(const fa_server *s, const ag_fake_req *req)
{
    if (!s->api_key && !s->bearer)
        return true;
    const char *v;
    if (s->api_key && (v = ag_fake_req_header(req, "api-key", NULL)) && strcmp(v, s->api_key) == 0)
        return true;
    /* Azure AI Content Safety's key header */
    if (s->api_key && (v = ag_fake_req_header(req, "ocp-apim-subscription-key", NULL)) && strcmp(v, s->api_key) == 0)
        return true;
    if (s->bearer && (v = ag_fake_req_header(req, "authorization", NULL)) && strncasecmp(v, "Bearer ", 7) == 0 &&
        strcmp(v + 7, s->bearer) == 0)
        return true;
    return false;
}

static void rl_account(fa_server *s, long long tokens)
{
    time_t now = time(NULL);
    if (now - s->rl_window >= 60) {
        s->rl_window = now;
        s->rl_requests = 0;
        s->rl_tokens = 0;
    }
    s->rl_requests++;
    s->rl_tokens += tokens;
}

static void handle_data_plane(fa_conn *c, ag_fake_req *req)
{
    fa_server *s = c->srv;
    ag_fake_resp *r = &c->resp;
    req->seq = ++s->requests;
    if (s->record)
        ag_fake_rec_add(&s->rec, req);

    ag_fake_fault fault = {0};
    const char *fault_name = NULL;
    if (!authorized(s, req)) {
        if (s->api_key && ag_fake_req_header(req, "api-key", NULL))
            ag_fake_api_error(r, 401, "401", "Access denied due to invalid subscription key or wrong API endpoint. "
                              "Make sure to provide a valid key for an active subscription and use a correct "
                              "regional API endpoint for your resource.", NULL, NULL);
        else
            ag_fake_api_error(r, 401, "401", "Unauthorized. Access token is missing, invalid, audience is "
                              "incorrect (https://cognitiveservices.azure.com), or have expired.", NULL, NULL);
    } else if (ag_fake_conf_take_fault(&s->conf, &fault) && fault.kind == AG_FAKE_FAULT_STATUS) {
        ag_fake_api_fault(req, &fault, r);
        fault_name = "status";
    } else {
        ag_fake_api_handle(req, &s->conf, r);
    }
    rl_account(s, r->tokens);

    c->first_delay_ms = s->conf.first_byte_delay_ms;
    c->interval_ms = s->conf.chunk_interval_ms;
    c->no_body = strcmp(c->method, "HEAD") == 0;
    c->chunked = r->stream && c->http_minor >= 1;
    if (r->stream && !c->chunked)
        c->keep_alive = false; /* HTTP/1.0: the stream ends at close */
    c->nsegs = r->stream ? r->nseg : 1;
    c->split = 0;
    c->action = FA_ACT_NONE;
    c->action_at = SIZE_MAX;
    if (fault.kind == AG_FAKE_FAULT_CLOSE) {
        c->action = FA_ACT_CLOSE;
        c->action_at = 0;
        fault_name = "close_before_response";
    } else if (fault.kind == AG_FAKE_FAULT_RESET || fault.kind == AG_FAKE_FAULT_STALL) {
        c->action = fault.kind == AG_FAKE_FAULT_RESET ? FA_ACT_RESET : FA_ACT_STALL;
        fault_name = fault.kind == AG_FAKE_FAULT_RESET ? "reset_after_chunks" : "stall_after_chunks";
        size_t k = (size_t)fault.after_chunks; /* 0..1e9, checked by the config parser */
        size_t send = 0;
        if (r->stream) {
            if (k == 0)
                send = 0;
            else if (k <= r->ndeltas)
                send = r->first_delta + k;
            else
                send = r->nseg - 1; /* everything but the terminal event */
        } else if (k > 0 && r->body.len > 1) {
            c->split = r->body.len / 2;
            c->nsegs = 2;
            send = 1;
        }
        c->action_at = 1 + send;
    }
    ag_fake_fault_clear(&fault);
    if (s->record)
        ag_fake_rec_set_result(&s->rec, req->seq, r->status, fault_name);
    c->phase = FA_SENDING;
    c->step = 0;
    c->delay_done = false;
}

static void conn_dispatch(fa_conn *c)
{
    ag_fake_req req;
    conn_req_view(c, &req);
    if (strncmp(req.url, "/_fake/", 7) == 0) {
        handle_control(c, &req);
        conn_response_done(c);
        return;
    }
    handle_data_plane(c, &req);
    conn_pump(c, &req);
}

/* ---- reading ---- */

/* Feeds buffered input to llhttp. Returns 1 when a request is complete, 0 when more input is
 * needed, -1 after a framing error (an error answer is queued and the connection will close). */
static int conn_parse(fa_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    while (!c->req_ready) {
        struct evbuffer_iovec v;
        if (evbuffer_get_length(in) == 0 || evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        llhttp_errno_t e = llhttp_execute(&c->parser, v.iov_base, v.iov_len);
        size_t used = v.iov_len;
        if (e == HPE_PAUSED) {
            used = (size_t)(llhttp_get_error_pos(&c->parser) - (const char *)v.iov_base);
            llhttp_resume(&c->parser);
        } else if (e != HPE_OK) {
            evbuffer_drain(in, evbuffer_get_length(in));
            int status = c->req_error ? c->req_error : 400;
            char msg[160];
            snprintf(msg, sizeof msg, "%s", status == 413 ? "Request body too large"
                                            : status == 431 ? "Request header fields too large"
                                            : status == 414 ? "Request URI too long"
                                                            : llhttp_get_error_reason(&c->parser));
            c->linger = true;
            conn_framing_error(c, status, msg);
            return -1;
        }
        evbuffer_drain(in, used);
    }
    return c->req_ready ? 1 : 0;
}

/* Runs the connection as far as it can go; frees it when it is finished. Call only from top-level
 * callbacks (never while a fa_conn function further up the stack still uses c). */
static void conn_drive(fa_conn *c)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    while (!c->dead) {
        if (c->phase == FA_SENDING) {
            ag_fake_req req;
            conn_req_view(c, &req);
            conn_pump(c, &req);
            if (c->phase == FA_SENDING)
                break;
            continue;
        }
        if (c->phase == FA_RESETTING) {
            conn_try_reset(c);
            break;
        }
        if (c->phase == FA_STALLED) {
            if (c->read_eof)
                c->dead = true;
            break;
        }
        if (c->close_after) {
            if (evbuffer_get_length(out) != 0)
                break;
            /* Closing with unread input would make the kernel send an RST that can destroy the
             * answer in flight: then send our FIN and discard input until the peer's FIN. */
            struct evbuffer *in = bufferevent_get_input(c->bev);
            int pending = 0;
            bool unread = c->linger || evbuffer_get_length(in) > 0 ||
                          ioctl((int)bufferevent_getfd(c->bev), FIONREAD, &pending) != 0 || pending > 0;
            if (c->read_eof || !unread) {
                c->dead = true;
                break;
            }
            evbuffer_drain(in, evbuffer_get_length(in));
            if (!c->shut_wr) {
                shutdown((int)bufferevent_getfd(c->bev), SHUT_WR);
                c->shut_wr = true;
                arm_timer_ms(c, FA_LINGER_MS);
            }
            break;
        }
        if (evbuffer_get_length(out) > FA_OUT_HIGH)
            break; /* the write callback resumes us */
        int r = conn_parse(c);
        if (r > 0) {
            conn_dispatch(c);
            continue;
        }
        if (r < 0)
            continue;
        if (c->read_eof) {
            c->close_after = true;
            continue;
        }
        break;
    }
    if (c->dead)
        conn_free(c);
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    conn_drive(arg);
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    conn_drive(arg);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    fa_conn *c = arg;
    if (what & BEV_EVENT_ERROR) {
        c->dead = true;
    } else if (what & BEV_EVENT_EOF) {
        c->read_eof = true;
    }
    conn_drive(c);
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fa_conn *c = arg;
    if (c->shut_wr)
        c->dead = true; /* linger time is over */
    else if (c->phase == FA_SENDING)
        c->delay_done = true;
    conn_drive(c);
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    (void)l;
    (void)sa;
    (void)salen;
    fa_server *s = arg;
    int one = 1;
    setsockopt((int)fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fa_conn *c = calloc(1, sizeof *c);
    if (!c)
        ag_fake_oom();
    c->srv = s;
    c->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
    c->timer = evtimer_new(s->base, conn_timer_cb, c);
    if (!c->bev || !c->timer)
        ag_fake_oom();
    c->id = ++s->conns_accepted;
    s->open_conns++;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    llhttp_init(&c->parser, HTTP_REQUEST, &s->settings);
    c->parser.data = c;
    c->keep_alive = true;
    bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
    /* Bound what a client can make us buffer while a response is in progress. */
    bufferevent_setwatermark(c->bev, EV_READ, 0, s->max_body + s->max_header_bytes + 65536);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

static void accept_error_cb(struct evconnlistener *l, void *arg)
{
    (void)l;
    (void)arg;
    int err = EVUTIL_SOCKET_ERROR();
    fprintf(stderr, "fake_aoai: accept failed: %s\n", evutil_socket_error_to_string(err));
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    fa_stop_signal = (sig_atomic_t)sig;
    event_base_loopbreak(arg);
}

/* ---- main ---- */

static void usage(void)
{
    fputs("usage: fake_aoai --port N [--port-file PATH] [--name NAME] [--api-key KEY] [--bearer TOKEN]\n"
          "                 [--no-record] [--max-records N] [--max-body-bytes N] [--max-header-bytes N]\n",
          stderr);
}

static int parse_size(const char *opt, const char *v, unsigned long long min, unsigned long long max,
                      unsigned long long *out)
{
    char *end = NULL;
    errno = 0;
    if (!v || !*v || *v == '-' || *v == '+') {
        fprintf(stderr, "fake_aoai: %s needs a number\n", opt);
        return -1;
    }
    unsigned long long n = strtoull(v, &end, 10);
    if (errno || *end || n < min || n > max) {
        fprintf(stderr, "fake_aoai: %s: '%s' is not a number from %llu to %llu\n", opt, v, min, max);
        return -1;
    }
    *out = n;
    return 0;
}

static int write_port_file(const char *path, int port)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp)
        return -1;
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    fprintf(f, "%d\n", port);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    fa_server srv;
    memset(&srv, 0, sizeof srv);
    srv.name = "fake-aoai";
    srv.record = true;
    srv.max_body = FA_DEFAULT_MAX_BODY;
    srv.max_header_bytes = FA_DEFAULT_MAX_HEADER_BYTES;
    unsigned long long port = 0, max_records = FA_DEFAULT_MAX_RECORDS, n = 0;
    bool have_port = false;
    const char *port_file = NULL;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--no-record") == 0) {
            srv.record = false;
            continue;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage();
            return 0;
        }
        if (!v) {
            fprintf(stderr, "fake_aoai: %s needs a value\n", a);
            usage();
            return 2;
        }
        i++;
        if (strcmp(a, "--port") == 0) {
            if (parse_size(a, v, 0, 65535, &port) != 0)
                return 2;
            have_port = true;
        } else if (strcmp(a, "--port-file") == 0) {
            port_file = v;
        } else if (strcmp(a, "--name") == 0) {
            srv.name = v;
        } else if (strcmp(a, "--api-key") == 0) {
            srv.api_key = v;
        } else if (strcmp(a, "--bearer") == 0) {
            srv.bearer = v;
        } else if (strcmp(a, "--max-records") == 0) {
            if (parse_size(a, v, 1, 10000000, &max_records) != 0)
                return 2;
        } else if (strcmp(a, "--max-body-bytes") == 0) {
            if (parse_size(a, v, 1, (unsigned long long)1 << 30, &n) != 0)
                return 2;
            srv.max_body = (size_t)n;
        } else if (strcmp(a, "--max-header-bytes") == 0) {
            if (parse_size(a, v, 1024, (unsigned long long)1 << 24, &n) != 0)
                return 2;
            srv.max_header_bytes = (size_t)n;
        } else {
            fprintf(stderr, "fake_aoai: unknown option %s\n", a);
            usage();
            return 2;
        }
    }
    if (!have_port) {
        fputs("fake_aoai: --port is required (0 = any free port)\n", stderr);
        usage();
        return 2;
    }
    for (const char *p = srv.name; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            fputs("fake_aoai: --name must not contain control characters\n", stderr);
            return 2;
        }
    }

    signal(SIGPIPE, SIG_IGN);
    if (RAND_bytes((unsigned char *)&srv.rng, sizeof srv.rng) != 1 || srv.rng == 0)
        srv.rng = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ 0x9E3779B97F4A7C15ULL;
    ag_fake_conf_init(&srv.conf);
    ag_fake_rec_init(&srv.rec, (size_t)max_records, FA_RECORD_MAX_BYTES);
    srv.rl_window = time(NULL);
    llhttp_settings_init(&srv.settings);
    srv.settings.on_message_begin = on_message_begin;
    srv.settings.on_url = on_url;
    srv.settings.on_header_field = on_header_field;
    srv.settings.on_header_value = on_header_value;
    srv.settings.on_headers_complete = on_headers_complete;
    srv.settings.on_body = on_body;
    srv.settings.on_message_complete = on_message_complete;

    srv.base = event_base_new();
    if (!srv.base) {
        fputs("fake_aoai: event_base_new failed\n", stderr);
        return 1;
    }
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    srv.listener = evconnlistener_new_bind(srv.base, accept_cb, &srv,
                                           LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
                                           1024, (struct sockaddr *)&sin, sizeof sin);
    if (!srv.listener) {
        fprintf(stderr, "fake_aoai: cannot listen on 127.0.0.1:%llu: %s\n", port, strerror(errno));
        return 1;
    }
    evconnlistener_set_error_cb(srv.listener, accept_error_cb);
    struct sockaddr_in bound;
    socklen_t blen = sizeof bound;
    if (getsockname((int)evconnlistener_get_fd(srv.listener), (struct sockaddr *)&bound, &blen) != 0) {
        perror("fake_aoai: getsockname");
        return 1;
    }
    int bound_port = ntohs(bound.sin_port);
    if (port_file && write_port_file(port_file, bound_port) != 0) {
        fprintf(stderr, "fake_aoai: cannot write port file %s: %s\n", port_file, strerror(errno));
        return 1;
    }
    struct event *sigterm = evsignal_new(srv.base, SIGTERM, signal_cb, srv.base);
    struct event *sigint = evsignal_new(srv.base, SIGINT, signal_cb, srv.base);
    if (!sigterm || !sigint || evsignal_add(sigterm, NULL) != 0 || evsignal_add(sigint, NULL) != 0) {
        fputs("fake_aoai: cannot install signal handlers\n", stderr);
        return 1;
    }
    fprintf(stderr, "fake_aoai[%s]: listening on 127.0.0.1:%d\n", srv.name, bound_port);

    event_base_dispatch(srv.base);

    while (srv.conns)
        conn_free(srv.conns);
    evconnlistener_free(srv.listener);
    event_free(sigterm);
    event_free(sigint);
    event_base_free(srv.base);
    ag_fake_conf_reset(&srv.conf);
    free(srv.conf.model);
    free(srv.conf.embedding_model);
    free(srv.conf.region);
    free(srv.conf.finish_reason);
    ag_fake_rec_free(&srv.rec);
    return 0;
}
