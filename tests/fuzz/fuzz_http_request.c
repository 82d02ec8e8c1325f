/* Fuzz target: inbound HTTP/1.1 request intake, through the real connection code.
 *
 * src/server/conn.c is compiled into this file (the h2o habit of including the .c under test), so
 * the target drives its real static code: head collection across reads (conn_take_head), the
 * request-line and header-line checks, llhttp with our callbacks (duplicates, framing, chunk
 * extension and tiny-chunk bounds, the body limit), keep-alive and pipelining, the 408 deadline
 * path, and response writing (Content-Length, chunked, abort). The connection's bufferevent is one
 * end of a bufferevent pair, so no socket is involved and a run is deterministic.
 *
 * The only seam: the two pipeline entry points conn.c calls, ag_pipeline_run and
 * ag_pipeline_resume, are renamed by macro before the include and implemented below by a stand-in
 * pipeline (read the body, answer in one of four ways) instead of route/auth/.../forward, which
 * need an upstream. Everything conn.c calls besides those two is the real code (request.c,
 * http.c, jsonw.c, log.c, worker.c).
 *
 * Input: byte 0 chooses the stand-in's behaviour and how the rest is cut into reads:
 *   bits 0-1  answer: 0 = 200 with Content-Length after the body, 1 = chunked 200 in two pieces,
 *             2 = 401 before reading the body, 3 = chunked 200 aborted mid-body
 *   bits 2-4  read size: 1, 2, 3, 7, 64, 512, 4096 bytes or all at once
 *   bit  5    at the end, the phase deadline fires (408 path / idle close)
 *   bit  6    tight limits (1 KiB head, 8 headers, 1 KiB body) instead of the defaults
 *   bit  7    at the end, the client closes its side (EOF)
 * Bytes 1.. are what the client sends.
 *
 * Oracle besides the sanitizers: the bytes written back must parse as a sequence of HTTP/1.x
 * responses, and nothing may follow a response that said "Connection: close" (a framing error is
 * answered, then the connection closes; RFC 9112 6.3). */
#include <openssl/evp.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#define ag_pipeline_run fuzz_pipeline_run
#define ag_pipeline_resume fuzz_pipeline_resume
#include "server/conn.c"
#undef ag_pipeline_run
#undef ag_pipeline_resume

#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>

#include "aoai_guard/runtime.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

enum { ANSWER_LENGTH = 0, ANSWER_CHUNKED, ANSWER_EARLY_401, ANSWER_ABORT };

static struct {
    struct event_base *base;
    ag_runtime rt;
    ag_worker w;
    ag_config *cfg_default, *cfg_tight;
    int answer;
} F;

/* ---- the stand-in pipeline ------------------------------------------------------------------- */

static void fuzz_answer(ag_request *r)
{
    char head[128];
    int hl = snprintf(head, sizeof head, "Content-Type: text/plain\r\nx-request-id: %s\r\n", r->id);
    char body[64];
    int bl = snprintf(body, sizeof body, "got %zu body bytes\n", r->body_len);
    if (strcmp(r->method_str, "HEAD") == 0) {
        /* A HEAD response has no body: a well-behaved stage sends only the head. */
        ag_response_begin(r, 200, head, (size_t)hl, bl);
        ag_response_end(r);
        return;
    }
    switch (F.answer) {
    case ANSWER_CHUNKED:
        ag_response_begin(r, 200, head, (size_t)hl, -1);
        ag_response_body(r, body, (size_t)bl);
        ag_response_body(r, "tail\n", 5);
        ag_response_end(r);
        break;
    case ANSWER_ABORT:
        ag_response_begin(r, 200, head, (size_t)hl, -1);
        ag_response_body(r, body, (size_t)bl);
        ag_response_abort(r, "upstream_reset");
        break;
    default:
        ag_response_begin(r, 200, head, (size_t)hl, bl);
        ag_response_body(r, body, (size_t)bl);
        ag_response_end(r);
        break;
    }
}

/* Mirrors the real engine's contract (request.h): stages run in order, a stage that waits for the
 * body returns and is resumed by conn.c, and a request answered while the engine is on the stack
 * is completed when it unwinds. */
void fuzz_pipeline_run(ag_request *r)
{
    if (r->in_pipeline)
        return;
    r->in_pipeline = true;
    if (r->stage == 0) {
        r->stage = 1;
        if (F.answer == ANSWER_EARLY_401) {
            ag_request_error(r, 401, "Unauthorized", "No credentials.", NULL, false);
            goto out;
        }
    }
    if (r->stage == 1) {
        if (!r->body_done) {
            ag_conn_read_body(r->conn);
            if (!r->body_done)
                goto out;
        }
        r->stage = 2;
    }
    if (r->stage == 2) {
        r->stage = 3;
        fuzz_answer(r);
    }
out:
    r->in_pipeline = false;
    if (r->done_pending)
        ag_conn_request_done(r->conn);
}

void fuzz_pipeline_resume(ag_request *r)
{
    if (r->in_pipeline)
        return;
    fuzz_pipeline_run(r);
}

/* ---- the oracle ------------------------------------------------------------------------------ */

static const char *find(const char *s, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (memcmp(s + i, needle, k) == 0)
            return s + i;
    return NULL;
}

/* Checks the bytes the gateway wrote; traps on a violation. */
static void check_output(const char *o, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (n - i < 12 || memcmp(o + i, "HTTP/1.", 7) != 0)
            __builtin_trap(); /* not a status line */
        const char *end = find(o + i, n - i, "\r\n\r\n");
        if (!end)
            __builtin_trap(); /* heads are written whole */
        size_t hstart = i, hlen = (size_t)(end - (o + i)) + 4;
        int status = atoi(o + i + 9);
        if (status < 100 || status > 599)
            __builtin_trap();
        bool close = find(o + hstart, hlen, "\r\nConnection: close\r\n") != NULL;
        const char *cl = find(o + hstart, hlen, "\r\nContent-Length: ");
        bool chunked = find(o + hstart, hlen, "\r\nTransfer-Encoding: chunked\r\n") != NULL;
        i += hlen;
        if (status == 100)
            continue;
        if (cl && chunked)
            __builtin_trap(); /* our own framing is never ambiguous */
        if (cl) {
            size_t len = strtoul(cl + 18, NULL, 10);
            if (len > n - i)
                __builtin_trap(); /* a Content-Length response is never cut short */
            i += len;
        } else if (chunked) {
            for (;;) {
                const char *le = find(o + i, n - i, "\r\n");
                if (!le)
                    return; /* truncated (abort): must be the last bytes */
                size_t sz = strtoul(o + i, NULL, 16);
                i = (size_t)(le - o) + 2;
                if (sz > n - i)
                    return;
                i += sz;
                if (n - i < 2)
                    return;
                if (o[i] != '\r' || o[i + 1] != '\n')
                    __builtin_trap();
                i += 2;
                if (sz == 0)
                    break;
            }
        } else if (close) {
            return; /* close-delimited: the rest is the body */
        }
        if (close && i < n)
            __builtin_trap(); /* bytes after a response that announced the close */
    }
}

/* ---- driving a connection -------------------------------------------------------------------- */

static void drain_output(struct bufferevent *client, struct evbuffer *collected)
{
    evbuffer_add_buffer(collected, bufferevent_get_input(client));
}

static void run_loop(void)
{
    /* Runs what is active (the reap event) until nothing is left; timers are not waited for. */
    for (int k = 0; k < 8; k++)
        if (event_base_loop(F.base, EVLOOP_NONBLOCK) != 0)
            break;
}

static ag_conn *fuzz_conn_new(ag_config *cfg, struct bufferevent *bev)
{
    ag_worker *w = &F.w;
    ag_conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    /* What ag_conn_accept does after accept(), with a bufferevent pair for the socket. */
    atomic_fetch_add(&F.rt.connections, 1);
    c->worker = w;
    c->cfg = ag_config_ref(cfg);
    c->listener = &cfg->listeners[0];
    snprintf(c->client_addr, sizeof c->client_addr, "127.0.0.1");
    c->bev = bev;
    c->deadline.ev = evtimer_new(w->base, conn_timer_cb, c);
    llhttp_init(&c->parser, HTTP_REQUEST, &parser_settings);
    c->parser.data = c;
    TAILQ_INSERT_TAIL(&w->conns, c, link);
    w->nconns++;
    bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
    bufferevent_setwatermark(c->bev, EV_READ, 0, IN_HIGH_WATER);
    bufferevent_setwatermark(c->bev, EV_WRITE, OUT_LOW_WATER, 0);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    ag_reader_init(&c->rd, c->bev); /* not attached: a pair has no socket, libevent reads it */
    c->state = AG_CONN_IDLE;
    conn_arm_timer(c, cfg->limits.header_timeout_ms);
    return c;
}

static void reap_cb(evutil_socket_t fd, short what, void *arg)
{
    ag_conn_reap_all(arg);
}

static ag_config *load(const char *json)
{
    ag_conf_err err;
    ag_config *cfg = ag_config_load_json(json, strlen(json), "fuzz", &err);
    if (!cfg) {
        fprintf(stderr, "fuzz_http_request: config: %s\n", err.msg);
        abort();
    }
    return cfg;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    /* Log lines (rejections, the access log) are formatted as in production and thrown away. */
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (devnull >= 0)
        ag_log_set_fd(devnull);
    ag_log_set_level(AG_LOG_DEBUG);
    F.cfg_default = load("{\"listeners\":[{\"address\":\"127.0.0.1\",\"port\":0}],"
                         "\"upstreams\":[{\"name\":\"u\",\"url\":\"http://127.0.0.1:9\","
                         "\"auth\":{\"type\":\"api_key\",\"api_key\":\"k\"}}],"
                         "\"log\":{\"level\":\"debug\",\"access_log\":true}}");
    F.cfg_tight = load("{\"listeners\":[{\"address\":\"127.0.0.1\",\"port\":0}],"
                       "\"upstreams\":[{\"name\":\"u\",\"url\":\"http://127.0.0.1:9\","
                       "\"auth\":{\"type\":\"api_key\",\"api_key\":\"k\"}}],"
                       "\"limits\":{\"max_header_bytes\":1024,\"max_headers\":8,\"max_body_bytes\":1024,"
                       "\"max_requests_per_connection\":3},"
                       "\"log\":{\"level\":\"debug\",\"access_log\":true}}");
    F.base = event_base_new();
    F.w.base = F.base;
    F.w.rt = &F.rt;
    F.w.cfg = F.cfg_default;
    TAILQ_INIT(&F.w.conns);
    TAILQ_INIT(&F.w.reap_list);
    F.w.reap = event_new(F.base, -1, 0, reap_cb, &F.w);
    if (!F.base || !F.w.reap)
        abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!F.base)
        LLVMFuzzerInitialize(NULL, NULL);
    if (size < 1)
        return 0;
    static const size_t read_sizes[8] = {1, 2, 3, 7, 64, 512, 4096, SIZE_MAX};
    uint8_t flags = data[0];
    F.answer = flags & 3;
    size_t step = read_sizes[(flags >> 2) & 7];
    bool fire_timer = flags & 0x20;
    ag_config *cfg = (flags & 0x40) ? F.cfg_tight : F.cfg_default;
    bool eof = flags & 0x80;
    data++;
    size--;

    struct bufferevent *pair[2];
    if (bufferevent_pair_new(F.base, 0, pair) != 0)
        abort();
    struct evbuffer *out = evbuffer_new();
    ag_conn *c = fuzz_conn_new(cfg, pair[0]);
    if (!c || !out)
        abort();
    bufferevent_enable(pair[1], EV_READ | EV_WRITE);

    for (size_t off = 0; off < size;) {
        size_t n = size - off < step ? size - off : step;
        bufferevent_write(pair[1], data + off, n);
        off += n;
        run_loop();
        drain_output(pair[1], out);
        if (TAILQ_EMPTY(&F.w.conns))
            break; /* the gateway closed the connection */
    }
    if (!TAILQ_EMPTY(&F.w.conns) && fire_timer) {
        ag_conn *cc = TAILQ_FIRST(&F.w.conns);
        if (cc->deadline.at_ns)
            cc->deadline.at_ns = 1; /* the phase's deadline has passed (a phase without one: nothing) */
        conn_timer_cb(-1, EV_TIMEOUT, cc);
        run_loop();
        drain_output(pair[1], out);
    }
    if (!TAILQ_EMPTY(&F.w.conns) && eof) {
        bufferevent_flush(pair[1], EV_WRITE, BEV_FINISHED);
        run_loop();
        drain_output(pair[1], out);
    }

    /* Whatever is still open is torn down the way worker teardown does it. */
    ag_conn *cc;
    while ((cc = TAILQ_FIRST(&F.w.conns))) {
        if (cc->state == AG_CONN_BUSY && cc->req)
            ag_request_client_gone(cc->req);
        if (!cc->reaped)
            ag_conn_close_soon(cc);
        run_loop();
    }
    run_loop();
    drain_output(pair[1], out);
    if (F.w.nconns != 0 || F.w.active_requests != 0 || atomic_load(&F.rt.connections) != 0)
        __builtin_trap(); /* a connection or request outlived its close */
    size_t olen = evbuffer_get_length(out);
    const char *obytes = (const char *)evbuffer_pullup(out, -1);
    if (getenv("AG_FUZZ_DEBUG")) /* shows what the gateway answered: AG_FUZZ_DEBUG=1 fuzz_http_request FILE */
        fprintf(stderr, "--- %zu bytes in, %zu bytes out ---\n%.*s\n", size, olen, (int)olen, obytes ? obytes : "");
    check_output(obytes, olen);
    evbuffer_free(out);
    bufferevent_free(pair[1]);
    return 0;
}
