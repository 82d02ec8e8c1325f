/* Inbound client connections (see conn.h).
 *
 * Reading a request happens in two steps. First the whole head (request line + headers, at most
 * limits.max_header_bytes) is collected and checked line by line: the request line strictly,
 * obs-fold, bare CR/LF, header names and the header count. Then the head is copied into the
 * request's own buffer and handed to llhttp, which checks framing (Content-Length vs
 * Transfer-Encoding, chunk syntax) and records header offsets into that buffer. llhttp pauses at the
 * end of the headers (the header-phase stages run) and at the end of the message (the body-phase
 * stages run); bytes of a pipelined next request stay in the input buffer until the response to
 * this one has been written. */
#include "aoai_guard/conn.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>

#include "aoai_guard/clock.h"
#include "aoai_guard/growbuf.h"
#include "aoai_guard/headbuf.h"
#include "aoai_guard/http.h"
#include "aoai_guard/log.h"
#include "aoai_guard/request_metrics.h"
#include "aoai_guard/runtime.h"

#define OUT_HIGH_WATER (256 * 1024)  /* pause the upstream above this much unsent client data */
#define OUT_LOW_WATER (64 * 1024)    /* and resume below this */
#define IN_HIGH_WATER (128 * 1024)   /* stop reading a client that pipelines this much ahead */
#define MAX_CHUNK_EXT_BYTES 1024
#define CLOSE_LINGER_MS 5000

enum { PAUSE_NONE = 0, PAUSE_HEADERS, PAUSE_MESSAGE };

static void conn_process_input(ag_conn *c);
static void conn_arm_timer(ag_conn *c, long long ms);

/* ---- llhttp callbacks ------------------------------------------------------------------------ */

static ag_conn *conn_of(llhttp_t *p)
{
    return (ag_conn *)p->data;
}

static int parse_fail(ag_conn *c, int status, const char *code, const char *msg)
{
    c->err_status = status;
    c->err_code = code;
    c->err_msg = msg;
    return -1;
}

/* Trailers are never merged into the headers, but they count against the header limit. */
static int trailer_bytes(ag_conn *c, size_t len)
{
    c->req->trailer_bytes += len;
    if (c->req->trailer_bytes > (size_t)c->cfg->limits.max_header_bytes)
        return parse_fail(c, 431, "RequestHeaderFieldsTooLarge", "The request trailers are too large.");
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    ag_conn *c = conn_of(p);
    ag_request *r = c->req;
    if (r->head_done)
        return trailer_bytes(c, len);
    if (!c->value_pending) {
        if (r->nheaders == r->headers_cap)
            return parse_fail(c, 431, "RequestHeaderFieldsTooLarge", "Too many request headers.");
        ag_header *h = &r->headers[r->nheaders++];
        h->name_off = (uint32_t)(at - r->hbuf);
        h->name_len = 0;
        h->value_off = 0;
        h->value_len = 0;
        c->value_pending = true;
    }
    r->headers[r->nheaders - 1].name_len += (uint32_t)len;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    ag_conn *c = conn_of(p);
    ag_request *r = c->req;
    if (r->head_done)
        return trailer_bytes(c, len);
    ag_header *h = &r->headers[r->nheaders - 1];
    if (h->value_len == 0)
        h->value_off = (uint32_t)(at - r->hbuf);
    h->value_len += (uint32_t)len;
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    ag_conn *c = conn_of(p);
    ag_request *r = c->req;
    if (r->head_done)
        return 0;
    c->value_pending = false;
    int i = (int)r->nheaders - 1;
    ag_header *h = &r->headers[i];
    while (h->value_len && (r->hbuf[h->value_off + h->value_len - 1] == ' ' ||
                            r->hbuf[h->value_off + h->value_len - 1] == '\t'))
        h->value_len--;
    const char *name = r->hbuf + h->name_off;
    const char *value = r->hbuf + h->value_off;
    if (!ag_http_value_ok(value, h->value_len))
        return parse_fail(c, 400, "InvalidHeader", "A request header value has a control character.");
#define ONCE(field, label)                                                                         \
    do {                                                                                           \
        if (r->field >= 0)                                                                         \
            return parse_fail(c, 400, "InvalidHeader", "Duplicate " label " header.");             \
        r->field = i;                                                                              \
    } while (0)
    switch (name[0] | 32) {
    case 'h':
        if (ag_http_name_is(name, h->name_len, "host"))
            ONCE(h_host, "Host");
        break;
    case 'a':
        if (ag_http_name_is(name, h->name_len, "authorization"))
            ONCE(h_authorization, "Authorization");
        else if (ag_http_name_is(name, h->name_len, "api-key"))
            ONCE(h_api_key, "api-key");
        break;
    case 'c':
        if (ag_http_name_is(name, h->name_len, "content-type"))
            ONCE(h_content_type, "Content-Type");
        else if (ag_http_name_is(name, h->name_len, "connection"))
            ONCE(h_connection, "Connection");
        else if (ag_http_name_is(name, h->name_len, "content-encoding"))
            ONCE(h_content_encoding, "Content-Encoding");
        break;
    case 'x':
        if (ag_http_name_is(name, h->name_len, "x-request-id"))
            ONCE(h_request_id, "x-request-id");
        break;
    case 't':
        if (ag_http_name_is(name, h->name_len, "transfer-encoding"))
            ONCE(h_transfer_encoding, "Transfer-Encoding");
        break;
    case 'e':
        if (ag_http_name_is(name, h->name_len, "expect"))
            ONCE(h_expect, "Expect");
        break;
    default:
        break;
    }
#undef ONCE
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    ag_conn *c = conn_of(p);
    if (c->req->head_done)
        return 0; /* end of trailers */
    c->pause_reason = PAUSE_HEADERS;
    return HPE_PAUSED;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    ag_conn *c = conn_of(p);
    ag_request *r = c->req;
    if (ag_grow_append(&r->body, &r->body_len, &r->body_cap, (size_t)c->cfg->limits.max_body_bytes, at, len)) {
        if (r->body_len + len > (size_t)c->cfg->limits.max_body_bytes)
            return parse_fail(c, 413, "RequestBodyTooLarge", "The request body is larger than allowed.");
        return parse_fail(c, 503, "ServiceUnavailable", "Out of memory.");
    }
    return 0;
}

static int on_chunk_extension(llhttp_t *p, const char *at, size_t len)
{
    ag_conn *c = conn_of(p);
    c->req->chunk_ext_bytes += len;
    if (c->req->chunk_ext_bytes > MAX_CHUNK_EXT_BYTES)
        return parse_fail(c, 400, "InvalidChunk", "Chunk extensions are too large.");
    return 0;
}

static int on_chunk_header(llhttp_t *p)
{
    ag_conn *c = conn_of(p);
    /* Many tiny chunks cost more than they carry: at most one chunk per 16 body bytes (+64). */
    c->req->chunks++;
    if ((size_t)c->req->chunks > 64 + c->req->body_len / 16)
        return parse_fail(c, 400, "InvalidChunk", "Too many small chunks.");
    return 0;
}

/* Chunk sizes: llhttp checks the framing strictly and the value for overflow, but accepts any
 * number of leading zeros ("00000000000000000005"). Other proxies stop at 16 hex digits, so such
 * a size is a framing the two could read differently: refuse it. This scanner follows the chunked
 * framing of the body bytes llhttp is about to read, only to count each size's digits; llhttp
 * stays the judge of everything else, and the scanner stops at the end of the body, so it never
 * reads a pipelined request. */
enum { CK_OFF, CK_SIZE, CK_LINE, CK_DATA, CK_DATA_END, CK_TRAILER_START, CK_TRAILER_LINE, CK_DONE };

static int hex_value(unsigned char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* The end of a chunk-size line: data follows, or the trailers after the last chunk. */
static void chunk_size_line_done(ag_conn *c)
{
    c->ck_state = c->ck_left ? CK_DATA : CK_TRAILER_START;
}

/* Follows p[0..n); false when a chunk size has more than 16 hex digits. */
static bool chunk_scan(ag_conn *c, const char *p, size_t n)
{
    for (size_t i = 0; i < n && c->ck_state != CK_DONE; i++) {
        unsigned char ch = (unsigned char)p[i];
        switch (c->ck_state) {
        case CK_SIZE: {
            int v = hex_value(ch);
            if (v >= 0) {
                if (++c->ck_digits > 16)
                    return false;
                c->ck_left = (c->ck_left << 4) | (uint64_t)v;
            } else if (ch == '\n') {
                chunk_size_line_done(c);
            } else {
                c->ck_state = CK_LINE; /* CR, or an extension */
            }
            break;
        }
        case CK_LINE:
            if (ch == '\n')
                chunk_size_line_done(c);
            break;
        case CK_DATA: {
            uint64_t avail = n - i;
            uint64_t take = avail < c->ck_left ? avail : c->ck_left;
            i += (size_t)take - 1;
            c->ck_left -= take;
            if (c->ck_left == 0)
                c->ck_state = CK_DATA_END;
            break;
        }
        case CK_DATA_END: /* the CRLF after the data */
            if (ch == '\n') {
                c->ck_state = CK_SIZE;
                c->ck_digits = 0;
                c->ck_left = 0;
            }
            break;
        case CK_TRAILER_START: /* an empty line ends the body; anything else is a trailer field */
            if (ch == '\n')
                c->ck_state = CK_DONE;
            else if (ch != '\r')
                c->ck_state = CK_TRAILER_LINE;
            break;
        case CK_TRAILER_LINE:
            if (ch == '\n')
                c->ck_state = CK_TRAILER_START;
            break;
        default:
            return true;
        }
    }
    return true;
}

static int on_message_complete(llhttp_t *p)
{
    ag_conn *c = conn_of(p);
    c->pause_reason = PAUSE_MESSAGE;
    return HPE_PAUSED;
}

static const llhttp_settings_t parser_settings = {
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_chunk_extension_name = on_chunk_extension,
    .on_chunk_extension_value = on_chunk_extension,
    .on_chunk_header = on_chunk_header,
    .on_message_complete = on_message_complete,
};

/* ---- lifecycle ------------------------------------------------------------------------------- */

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg);

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    ag_conn *c = arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
        c->peer_gone = true;
        if (c->state == AG_CONN_BUSY && c->req) {
            /* The forward stage notices through ag_response_client_gone() or its write failing;
             * tell it now so the upstream is cancelled at once. */
            ag_request_client_gone(c->req);
            return;
        }
        if ((what & BEV_EVENT_EOF) && c->state == AG_CONN_HEAD && c->req && AG_LOG_ENABLED(AG_LOG_DEBUG))
            ag_log(AG_LOG_DEBUG, c->req->id, "client %s closed mid-request", c->client_addr);
        ag_conn_close_soon(c);
    }
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
    conn_process_input(arg);
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
    ag_conn *c = arg;
    ag_sender_written(&c->snd);
    if (c->state == AG_CONN_CLOSING) {
        if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
            ag_conn_close_soon(c);
        return;
    }
    if (c->drain_fn) {
        ag_conn_drain_fn fn = c->drain_fn;
        c->drain_fn = NULL;
        fn(c->drain_arg);
    }
}

/* A direct write emptied the output: what libevent's write callback would have reported. */
static void conn_drained(void *arg)
{
    ag_conn *c = arg;
    conn_write_cb(c->bev, c);
}

void ag_conn_accept(ag_worker *w, int fd, const struct sockaddr *sa, int socklen, size_t li)
{
    ag_runtime *rt = w->rt;
    ag_config *cfg = w->cfg;
    long open = atomic_fetch_add(&rt->connections, 1) + 1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    const ag_listener_conf *lc = &cfg->listeners[li];
    if (open > cfg->limits.max_connections) {
        atomic_fetch_sub(&rt->connections, 1);
        if (!lc->tls) {
            static const char busy[] =
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                "Connection: close\r\nContent-Length: 92\r\n\r\n"
                "{\"error\":{\"code\":\"TooManyConnections\",\"message\":\"The gateway is at its connection limit.\"}}";
            ssize_t r = write(fd, busy, sizeof busy - 1);
            (void)r;
        }
        ag_log(AG_LOG_WARN, NULL, "connection limit %lld reached; refusing a connection",
               cfg->limits.max_connections);
        close(fd);
        return;
    }
    ag_conn *c = calloc(1, sizeof *c);
    if (!c) {
        atomic_fetch_sub(&rt->connections, 1);
        close(fd);
        return;
    }
    c->worker = w;
    c->cfg = ag_config_ref(cfg);
    c->listener = lc;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, c->client_addr, sizeof c->client_addr);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, c->client_addr, sizeof c->client_addr);
    else
        snprintf(c->client_addr, sizeof c->client_addr, "unix");
    (void)socklen;
    if (lc->tls) {
        SSL *ssl = SSL_new(lc->tls->ctx);
        c->bev = ssl ? bufferevent_openssl_socket_new(w->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                      BEV_OPT_CLOSE_ON_FREE)
                     : NULL;
        if (!c->bev && ssl)
            SSL_free(ssl);
    } else {
        c->bev = bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE);
    }
    c->deadline.ev = evtimer_new(w->base, conn_timer_cb, c);
    if (!c->bev || !c->deadline.ev) {
        if (!c->bev)
            close(fd);
        ag_conn_free(c);
        return;
    }
    llhttp_init(&c->parser, HTTP_REQUEST, &parser_settings);
    c->parser.data = c;
    TAILQ_INSERT_TAIL(&w->conns, c, link);
    w->nconns++;
    ag_request_metrics_connection(w, +1);
    c->counted = true;
    bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
    bufferevent_setwatermark(c->bev, EV_READ, 0, IN_HIGH_WATER);
    bufferevent_setwatermark(c->bev, EV_WRITE, OUT_LOW_WATER, 0);
    struct timeval send_tv = {c->cfg->limits.send_timeout_ms / 1000,
                              (c->cfg->limits.send_timeout_ms % 1000) * 1000};
    bufferevent_set_timeouts(c->bev, NULL, &send_tv);
    if (!ag_sender_attach(&c->snd, &w->sendq, c->bev, conn_drained, c))
        bufferevent_enable(c->bev, EV_WRITE); /* TLS: libevent writes through OpenSSL */
    ag_reader_init(&c->rd, c->bev);
    ag_reader_attach(&c->rd, &w->rscratch, w->base); /* plain listeners; TLS reads stay with libevent */
    ag_reader_enable(&c->rd);
    c->state = AG_CONN_IDLE;
    /* A fresh connection must send its first head within the header deadline (slowloris). */
    conn_arm_timer(c, c->cfg->limits.header_timeout_ms);
}

void ag_conn_close_soon(ag_conn *c)
{
    if (c->reaped)
        return;
    c->reaped = true;
    ag_worker *w = c->worker;
    TAILQ_REMOVE(&w->conns, c, link);
    TAILQ_INSERT_TAIL(&w->reap_list, c, link);
    event_active(w->reap, EV_TIMEOUT, 0);
}

void ag_conn_free(ag_conn *c)
{
    if (c->req)
        ag_request_free(c->req);
    c->req = NULL;
    if (c->deadline.ev)
        event_free(c->deadline.ev);
    if (c->bev) {
        ag_sender_detach(&c->snd);
        ag_reader_detach(&c->rd);
        SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
        if (ssl && !c->peer_gone)
            SSL_shutdown(ssl); /* best-effort close_notify */
        bufferevent_free(c->bev);
        atomic_fetch_sub(&c->worker->rt->connections, 1);
        if (c->counted)
            ag_request_metrics_connection(c->worker, -1);
    }
    ag_token_memo_free(&c->token_memo);
    ag_config_unref(c->cfg);
    free(c);
}

/* Called through the worker's reap event: frees every connection marked for closing. */
void ag_conn_reap_all(ag_worker *w)
{
    ag_conn *c;
    while ((c = TAILQ_FIRST(&w->reap_list))) {
        TAILQ_REMOVE(&w->reap_list, c, link);
        w->nconns--;
        ag_conn_free(c);
    }
    ag_worker_check_drained(w);
}

void ag_conn_close_if_idle(ag_conn *c)
{
    if (c->state == AG_CONN_IDLE && !c->reaped)
        ag_conn_close_soon(c);
}

/* The phase deadlines are lazy (deadline.h): most requests add no timer. */
static void conn_arm_timer(ag_conn *c, long long ms)
{
    ag_deadline_set(&c->deadline, ms);
}

/* Writes whatever is queued, then closes. */
static void conn_finish_and_close(ag_conn *c)
{
    c->state = AG_CONN_CLOSING;
    ag_reader_disable(&c->rd);
    conn_arm_timer(c, CLOSE_LINGER_MS);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        ag_conn_close_soon(c);
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    ag_conn *c = arg;
    if (!ag_deadline_fired(&c->deadline))
        return; /* early, or the phase has no deadline now */
    switch (c->state) {
    case AG_CONN_IDLE:
        if (c->req) /* bytes of a head arrived in the meantime */
            break;
        ag_conn_close_soon(c);
        return;
    case AG_CONN_HEAD:
    case AG_CONN_BODY:
        if (!c->req) {
            ag_conn_close_soon(c);
            return;
        }
        ag_log(AG_LOG_INFO, c->req->id, "client %s too slow sending the request %s; 408",
               c->client_addr, c->state == AG_CONN_HEAD ? "head" : "body");
        ag_request_error(c->req, 408, "RequestTimeout", "The request was not received in time.", NULL, true);
        return;
    case AG_CONN_CLOSING:
        ag_conn_close_soon(c);
        return;
    default:
        return;
    }
}

/* ---- reading --------------------------------------------------------------------------------- */

static void conn_start_request(ag_conn *c)
{
    ag_request *r = ag_request_new(c);
    if (!r) {
        ag_conn_close_soon(c);
        return;
    }
    c->req = r;
    c->state = AG_CONN_HEAD;
    c->line_checked = false;
    c->empty_lines = 0;
    c->value_pending = false;
    c->pause_reason = PAUSE_NONE;
    c->err_status = 0;
    conn_arm_timer(c, c->cfg->limits.header_timeout_ms);
}

static void conn_reject(ag_conn *c, int status, const char *code, const char *msg)
{
    if (!c->req)
        conn_start_request(c);
    if (!c->req)
        return;
    ag_log(AG_LOG_INFO, c->req->id, "client %s: %d %s", c->client_addr, status, msg);
    ag_request_error(c->req, status, code, msg, NULL, true);
}

/* Checks every header line of a complete head (request line excluded), before llhttp. */
static int check_header_lines(ag_conn *c, const char *h, size_t len, const char **msg)
{
    size_t count = 0;
    size_t i = 0;
    while (i < len) {
        const char *line = h + i;
        const char *eol = memchr(line, '\r', len - i);
        if (!eol || (size_t)(eol - h) + 1 >= len || eol[1] != '\n') {
            *msg = "Bare CR in the request head.";
            return 400;
        }
        size_t ll = (size_t)(eol - line);
        if (ll == 0)
            break; /* the empty line that ends the head */
        if (memchr(line, '\n', ll)) {
            *msg = "Bare LF in the request head.";
            return 400;
        }
        if (line[0] == ' ' || line[0] == '\t') {
            *msg = "Obsolete line folding is not allowed.";
            return 400;
        }
        const char *colon = memchr(line, ':', ll);
        if (!colon || !ag_http_is_token(line, (size_t)(colon - line), false)) {
            *msg = "Malformed header name.";
            return 400;
        }
        if (++count > (size_t)c->cfg->limits.max_headers) {
            *msg = "Too many request headers.";
            return 431;
        }
        i += ll + 2;
    }
    return 0;
}

/* Collects a complete head; returns 1 when req->hbuf holds it, 0 to wait, -1 after rejecting. */
static int conn_take_head(ag_conn *c, struct evbuffer *in)
{
    size_t max = (size_t)c->cfg->limits.max_header_bytes;
    struct evbuffer_ptr eol = evbuffer_search(in, "\r\n", 2, NULL);
    /* Empty lines before a request line are ignored (RFC 9112 2.2), a few of them, however the
     * CR and LF were split across reads. */
    while (eol.pos == 0 && c->empty_lines < 4) {
        evbuffer_drain(in, 2);
        c->empty_lines++;
        eol = evbuffer_search(in, "\r\n", 2, NULL);
    }
    size_t avail = evbuffer_get_length(in);
    if (eol.pos < 0) {
        if (evbuffer_search(in, "\n", 1, NULL).pos >= 0) {
            conn_reject(c, 400, "BadRequest", "Bare LF in the request line.");
            return -1;
        }
        if (avail > max) {
            conn_reject(c, 414, "UriTooLong", "The request line is too long.");
            return -1;
        }
        return 0;
    }
    if ((size_t)eol.pos + 2 > max) {
        conn_reject(c, 414, "UriTooLong", "The request line is too long.");
        return -1;
    }
    if (eol.pos == 0) {
        conn_reject(c, 400, "BadRequest", "Empty request line.");
        return -1;
    }
    if (!c->line_checked) {
        char *line = (char *)evbuffer_pullup(in, eol.pos);
        if (memchr(line, '\n', (size_t)eol.pos)) {
            conn_reject(c, 400, "BadRequest", "Bare LF in the request line.");
            return -1;
        }
        int st = ag_http_check_request_line(line, (size_t)eol.pos);
        if (st) {
            conn_reject(c, st, st == 505 ? "HttpVersionNotSupported" : "BadRequest",
                        st == 505 ? "Only HTTP/1.0 and HTTP/1.1 are supported." : "Malformed request line.");
            return -1;
        }
        c->line_checked = true;
    }
    struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
    if (end.pos < 0) {
        if (avail > max) {
            conn_reject(c, 431, "RequestHeaderFieldsTooLarge", "The request head is too large.");
            return -1;
        }
        return 0;
    }
    size_t headlen = (size_t)end.pos + 4;
    if (headlen > max) {
        conn_reject(c, 431, "RequestHeaderFieldsTooLarge", "The request head is too large.");
        return -1;
    }
    ag_request *r = c->req;
    if (r->hbuf_cap < headlen + 1) {
        free(r->hbuf); /* a cached buffer too small for this head */
        r->hbuf = malloc(headlen + 1);
        r->hbuf_cap = r->hbuf ? headlen + 1 : 0;
    }
    if (r->headers && r->headers_cap != (size_t)c->cfg->limits.max_headers) {
        free(r->headers); /* a cached table sized under another configuration */
        r->headers = NULL;
    }
    if (!r->headers)
        r->headers = malloc(((size_t)c->cfg->limits.max_headers + 1) * sizeof *r->headers);
    if (!r->hbuf || !r->headers) {
        conn_reject(c, 503, "ServiceUnavailable", "Out of memory.");
        return -1;
    }
    r->headers_cap = (size_t)c->cfg->limits.max_headers;
    evbuffer_remove(in, r->hbuf, headlen);
    r->hbuf[headlen] = '\0';
    r->hlen = headlen;
    const char *crlf = strstr(r->hbuf, "\r\n");
    size_t line_len = (size_t)(crlf - r->hbuf);
    const char *msg = NULL;
    int st = check_header_lines(c, crlf + 2, headlen - line_len - 2, &msg);
    if (st) {
        conn_reject(c, st, st == 431 ? "RequestHeaderFieldsTooLarge" : "InvalidHeader", msg);
        return -1;
    }
    /* The request line, copied out for routing. */
    size_t sp1 = strcspn(r->hbuf, " ");
    size_t ml = sp1 < sizeof r->method_str - 1 ? sp1 : sizeof r->method_str - 1;
    memcpy(r->method_str, r->hbuf, ml);
    r->method_str[ml] = '\0';
    const char *t = r->hbuf + sp1 + 1;
    const char *tend = memchr(t, ' ', line_len - sp1 - 1);
    r->target_len = (size_t)(tend - t);
    r->target = malloc(r->target_len + 1);
    if (!r->target) {
        conn_reject(c, 503, "ServiceUnavailable", "Out of memory.");
        return -1;
    }
    memcpy(r->target, t, r->target_len);
    r->target[r->target_len] = '\0';
    const char *q = memchr(r->target, '?', r->target_len);
    r->path_len = q ? (size_t)(q - r->target) : r->target_len;
    return 1;
}

static void conn_handle_llhttp_error(ag_conn *c, llhttp_errno_t e)
{
    if (c->err_status) {
        conn_reject(c, c->err_status, c->err_code, c->err_msg);
        return;
    }
    const char *reason = llhttp_get_error_reason(&c->parser);
    int status = 400;
    const char *code = "BadRequest";
    if (e == HPE_INVALID_TRANSFER_ENCODING && c->req && c->req->h_transfer_encoding >= 0) {
        size_t vl;
        const char *v = ag_request_header_value(c->req, c->req->h_transfer_encoding, &vl);
        if (!ag_http_list_has(v, vl, "chunked")) {
            status = 501;
            code = "NotImplemented";
        }
    }
    ag_log(AG_LOG_INFO, c->req ? c->req->id : NULL, "client %s: framing error %s: %s",
           c->client_addr, llhttp_errno_name(e), reason ? reason : "");
    conn_reject(c, status, code, status == 501 ? "Unsupported Transfer-Encoding." : "Malformed request framing.");
}

static void conn_after_headers(ag_conn *c);
static void conn_after_message(ag_conn *c);

static void conn_process_input(ag_conn *c)
{
    /* Stages may call back into the connection (ag_conn_read_body) while we are below on the
     * stack; the loop below re-reads the state on every turn, so a nested call just returns. */
    if (c->in_input)
        return;
    c->in_input = true;
    for (;;) {
        if (c->reaped || !c->bev)
            break;
        if (c->state == AG_CONN_BUSY || c->state == AG_CONN_CLOSING || c->state == AG_CONN_HEAD_WAIT)
            break;
        struct evbuffer *in = bufferevent_get_input(c->bev);
        size_t avail = evbuffer_get_length(in);
        if (c->state == AG_CONN_IDLE) {
            /* RFC 9112 2.2: ignore at least one empty line before a request. */
            for (int k = 0; k < 4 && avail >= 2; k++) {
                unsigned char two[2];
                evbuffer_copyout(in, two, 2);
                if (two[0] != '\r' || two[1] != '\n')
                    break;
                evbuffer_drain(in, 2);
                avail -= 2;
            }
            if (avail == 0)
                break;
            if (c->worker->draining) {
                ag_conn_close_soon(c);
                break;
            }
            conn_start_request(c);
            if (!c->req)
                break;
        }
        if (c->state == AG_CONN_HEAD) {
            int got = conn_take_head(c, in);
            if (got <= 0)
                break;
            llhttp_errno_t e = llhttp_execute(&c->parser, c->req->hbuf, c->req->hlen);
            if (e != HPE_PAUSED || c->pause_reason != PAUSE_HEADERS) {
                conn_handle_llhttp_error(c, e == HPE_OK ? HPE_INVALID_EOF_STATE : e);
                break;
            }
            llhttp_resume(&c->parser);
            c->pause_reason = PAUSE_NONE;
            c->state = AG_CONN_HEAD_WAIT;
            conn_after_headers(c);
            continue;
        }
        if (c->state == AG_CONN_BODY) {
            struct evbuffer_iovec v;
            const char *data = "";
            size_t len = 0;
            if (avail > 0 && (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)) {
                evbuffer_pullup(in, -1);
                evbuffer_peek(in, -1, NULL, &v, 1);
            }
            if (avail > 0) {
                data = v.iov_base;
                len = v.iov_len;
            }
            if (c->ck_state != CK_OFF && !chunk_scan(c, data, len)) {
                conn_reject(c, 400, "InvalidChunk", "A chunk size has more than 16 hex digits.");
                break;
            }
            llhttp_errno_t e = llhttp_execute(&c->parser, data, len);
            if (e == HPE_OK) {
                evbuffer_drain(in, len);
                if (len == 0)
                    break;
                continue;
            }
            if (e == HPE_PAUSED && c->pause_reason == PAUSE_MESSAGE) {
                size_t used = (size_t)(llhttp_get_error_pos(&c->parser) - data);
                evbuffer_drain(in, used);
                llhttp_resume(&c->parser);
                c->pause_reason = PAUSE_NONE;
                conn_after_message(c);
                continue;
            }
            conn_handle_llhttp_error(c, e);
            break;
        }
        break;
    }
    c->in_input = false;
}

static bool host_ok(const char *v, size_t n)
{
    if (n == 0 || n > 255)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)v[i];
        if (ch <= 0x20 || ch >= 0x7F || ch == '@' || ch == ',' || ch == '/' || ch == '\\')
            return false;
    }
    return true;
}

static void conn_after_headers(ag_conn *c)
{
    ag_request *r = c->req;
    r->head_done = true;
    r->t_head = ag_mono_ns();
    r->http_major = c->parser.http_major;
    r->http_minor = c->parser.http_minor;
    r->method = c->parser.method;
    ag_request_assign_id(r);
    if (r->http_minor == 1 && r->h_host < 0) {
        conn_reject(c, 400, "BadRequest", "The Host header is required.");
        return;
    }
    if (r->h_host >= 0) {
        size_t hl;
        const char *hv = ag_request_header_value(r, r->h_host, &hl);
        if (!host_ok(hv, hl)) {
            conn_reject(c, 400, "BadRequest", "Invalid Host header.");
            return;
        }
    }
    if (r->http_minor == 0 && r->h_transfer_encoding >= 0) {
        conn_reject(c, 400, "BadRequest", "Transfer-Encoding is not allowed in HTTP/1.0.");
        return;
    }
    if (r->h_transfer_encoding >= 0) {
        /* Only "chunked" alone: an empty list, empty elements, parameters or non-token bytes are
         * malformed (400); another coding, alone or before chunked, is unsupported (501). */
        size_t tl;
        const char *tv = ag_request_header_value(r, r->h_transfer_encoding, &tl);
        int st = ag_http_check_transfer_encoding(tv, tl);
        if (st) {
            conn_reject(c, st, st == 501 ? "NotImplemented" : "BadRequest",
                        st == 501 ? "Unsupported Transfer-Encoding." : "Malformed Transfer-Encoding.");
            return;
        }
    }
    if (c->parser.upgrade || (c->parser.flags & F_CONNECTION_UPGRADE)) {
        /* Upgrade is never forwarded (h2c, websocket); llhttp stays in its upgrade state after
         * this message, so this is the connection's last request. */
        r->upgrade_requested = true;
    }
    if (r->h_expect >= 0) {
        size_t el;
        const char *ev = ag_request_header_value(r, r->h_expect, &el);
        if (!ag_http_name_is(ev, el, "100-continue")) {
            conn_reject(c, 417, "ExpectationFailed", "Only Expect: 100-continue is supported.");
            return;
        }
        r->expect_continue = r->http_minor == 1;
    }
    if ((c->parser.flags & F_CONTENT_LENGTH) &&
        c->parser.content_length > (uint64_t)c->cfg->limits.max_body_bytes) {
        conn_reject(c, 413, "RequestBodyTooLarge", "The request body is larger than allowed.");
        return;
    }
    r->keep_alive = llhttp_should_keep_alive(&c->parser) && !r->upgrade_requested &&
                    c->requests + 1 < c->cfg->limits.max_requests_per_connection;
    ag_pipeline_run(r);
}

void ag_conn_read_body(ag_conn *c)
{
    ag_request *r = c->req;
    if (c->state != AG_CONN_HEAD_WAIT)
        return;
    if (r->expect_continue) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        bufferevent_write(c->bev, cont, sizeof cont - 1);
        r->expect_continue = false;
    }
    c->state = AG_CONN_BODY;
    c->ck_state = (c->parser.flags & F_CHUNKED) ? CK_SIZE : CK_OFF;
    c->ck_digits = 0;
    c->ck_left = 0;
    conn_arm_timer(c, c->cfg->limits.body_timeout_ms);
    if (c->in_input)
        return; /* the input loop above us carries on reading */
    conn_process_input(c);
}

static void conn_after_message(ag_conn *c)
{
    ag_request *r = c->req;
    r->body_done = true;
    r->t_body = ag_mono_ns();
    c->state = AG_CONN_BUSY;
    ag_deadline_clear(&c->deadline);
    ag_pipeline_resume(r);
}

/* ---- responses ------------------------------------------------------------------------------- */

void ag_response_begin(ag_request *r, int status, const char *headers, size_t headers_len,
                       long long content_length)
{
    ag_conn *c = r->conn;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    bool head = strcmp(r->method_str, "HEAD") == 0;
    bool no_body = head || status == 204 || status == 304 || (status >= 100 && status < 200);
    bool close = !r->keep_alive || c->worker->draining || !r->body_done || c->peer_gone;
    r->status = status;
    r->response_started = true;
    ag_headbuf hb;
    ag_hb_init(&hb);
    ag_hb_add(&hb, r->http_minor == 0 ? "HTTP/1.0 " : "HTTP/1.1 ", 9);
    ag_hb_u64(&hb, (uint64_t)status);
    AG_HB_LIT(&hb, " ");
    ag_hb_str(&hb, ag_http_reason(status));
    AG_HB_LIT(&hb, "\r\n");
    ag_hb_add(&hb, headers, headers_len);
    if (!no_body) {
        if (content_length >= 0) {
            AG_HB_LIT(&hb, "Content-Length: ");
            ag_hb_u64(&hb, (uint64_t)content_length);
            AG_HB_LIT(&hb, "\r\n");
        } else if (r->http_minor == 1) {
            AG_HB_LIT(&hb, "Transfer-Encoding: chunked\r\n");
            r->response_chunked = true;
        } else {
            close = true; /* HTTP/1.0 without a length: the end is the close */
        }
    }
    if (close) {
        AG_HB_LIT(&hb, "Connection: close\r\n");
        r->response_close = true;
    } else if (r->http_minor == 0) {
        AG_HB_LIT(&hb, "Connection: keep-alive\r\n");
    }
    AG_HB_LIT(&hb, "\r\n");
    if (hb.failed) {
        /* Out of memory for a huge head: the status line alone, and the connection ends. */
        static const char bare[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        evbuffer_add(out, bare, sizeof bare - 1);
        r->response_close = true;
        no_body = true;
    } else {
        evbuffer_add(out, hb.p, hb.len);
    }
    ag_hb_release(&hb);
    if (no_body) {
        r->response_chunked = false;
        r->response_no_body = true; /* HEAD, 1xx, 204, 304: headers only */
    }
}

void ag_response_body(ag_request *r, const void *data, size_t len)
{
    if (len == 0 || !r->conn->bev || r->response_no_body)
        return;
    struct evbuffer *out = bufferevent_get_output(r->conn->bev);
    if (r->bytes_out == 0)
        r->t_first_byte = ag_mono_ns();
    if (r->response_chunked) {
        char size[18];
        size_t n = ag_fmt_hex(size, len);
        size[n++] = '\r';
        size[n++] = '\n';
        evbuffer_add(out, size, n);
        evbuffer_add(out, data, len);
        evbuffer_add(out, "\r\n", 2);
    } else {
        evbuffer_add(out, data, len);
    }
    r->bytes_out += len;
}

/* After the response: the next request on this connection, or the close. */
void ag_conn_request_done(ag_conn *c)
{
    ag_request *r = c->req;
    if (r->in_pipeline) {
        r->done_pending = true; /* the stage engine completes it when the stage returns */
        return;
    }
    bool close = r->response_close || c->peer_gone;
    ag_request_finish(r);
    ag_request_free(r);
    c->req = NULL;
    c->requests++;
    c->drain_fn = NULL;
    if (close) {
        conn_finish_and_close(c);
        return;
    }
    c->state = AG_CONN_IDLE;
    conn_arm_timer(c, c->cfg->limits.idle_timeout_ms);
    ag_worker_check_drained(c->worker);
    if (c->worker->draining) {
        conn_finish_and_close(c);
        return;
    }
    /* A pipelined request may already be waiting in the input buffer. */
    ag_reader_enable(&c->rd);
    conn_process_input(c);
}

void ag_response_end(ag_request *r)
{
    ag_conn *c = r->conn;
    if (r->response_chunked)
        evbuffer_add(bufferevent_get_output(c->bev), "0\r\n\r\n", 5);
    if (!r->completion)
        r->completion = "complete";
    ag_conn_request_done(c);
}

void ag_response_abort(ag_request *r, const char *reason)
{
    ag_conn *c = r->conn;
    r->completion = reason;
    r->response_close = true;
    /* Whatever was written goes out, but no terminating chunk: the client sees a truncated body. */
    ag_conn_request_done(c);
}

void ag_response_flush(ag_request *r)
{
    if (r->conn && r->conn->bev)
        ag_sender_flush(&r->conn->snd);
}

bool ag_response_congested(const ag_request *r)
{
    return evbuffer_get_length(bufferevent_get_output(r->conn->bev)) > OUT_HIGH_WATER;
}

void ag_response_on_drain(ag_request *r, ag_conn_drain_fn fn, void *arg)
{
    r->conn->drain_fn = fn;
    r->conn->drain_arg = arg;
}

bool ag_response_client_gone(const ag_request *r)
{
    return r->conn->peer_gone;
}
