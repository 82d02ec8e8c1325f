/* curl_loop against an in-process evhttp server on the same event_base (127.0.0.1, ephemeral port). */
#include "aoai_guard/curl_loop.h"
#include "check.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct event_base *g_base;
static int g_port;

/* ---- the test server ---- */

static void reply_text(struct evhttp_request *req, int code, const char *body, size_t len)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, body, len);
    evhttp_send_reply(req, code, "X", b);
    evbuffer_free(b);
}

static long query_long(struct evhttp_request *req, const char *key)
{
    struct evkeyvalq q;
    const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    long v = -1;
    if (query && evhttp_parse_query_str(query, &q) == 0) {
        const char *s = evhttp_find_header(&q, key);
        if (s)
            v = strtol(s, NULL, 10);
        evhttp_clear_headers(&q);
    }
    return v;
}

static void on_request(struct evhttp_request *req, void *arg)
{
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    if (strcmp(path, "/hello") == 0) {
        evhttp_add_header(out, "X-Test", "a");
        evhttp_add_header(out, "X-Test", "b");
        reply_text(req, 200, "hello world", 11);
    } else if (strcmp(path, "/echo") == 0) {
        const char *m = "OTHER";
        switch (evhttp_request_get_command(req)) {
        case EVHTTP_REQ_GET: m = "GET"; break;
        case EVHTTP_REQ_POST: m = "POST"; break;
        case EVHTTP_REQ_PUT: m = "PUT"; break;
        case EVHTTP_REQ_DELETE: m = "DELETE"; break;
        default: break;
        }
        const char *xr = evhttp_find_header(in, "X-Req");
        const char *ct = evhttp_find_header(in, "Content-Type");
        struct evbuffer *b = evbuffer_new();
        evbuffer_add_printf(b, "%s\n%s\n%s\n", m, xr ? xr : "", ct ? ct : "");
        evbuffer_add_buffer(b, evhttp_request_get_input_buffer(req));
        evhttp_send_reply(req, 200, "OK", b);
        evbuffer_free(b);
    } else if (strncmp(path, "/status/", 8) == 0) {
        int code = atoi(path + 8);
        if (code == 429)
            evhttp_add_header(out, "Retry-After", "7");
        reply_text(req, code, "{\"error\":\"x\"}", 13);
    } else if (strcmp(path, "/redirect") == 0) {
        evhttp_add_header(out, "Location", "/hello");
        reply_text(req, 302, "", 0);
    } else if (strcmp(path, "/big") == 0) {
        long n = query_long(req, "n");
        int chunked = query_long(req, "chunked") == 1;
        char *buf = malloc((size_t)n + 1);
        memset(buf, 'x', (size_t)n);
        if (chunked) {
            evhttp_send_reply_start(req, 200, "OK");
            struct evbuffer *b = evbuffer_new();
            for (long off = 0; off < n; off += 700) {
                long k = n - off < 700 ? n - off : 700;
                evbuffer_add(b, buf + off, (size_t)k);
                evhttp_send_reply_chunk(req, b);
            }
            evbuffer_free(b);
            evhttp_send_reply_end(req);
        } else {
            reply_text(req, 200, buf, (size_t)n);
        }
        free(buf);
    } else if (strcmp(path, "/id") == 0) {
        char body[64];
        int n = snprintf(body, sizeof(body), "id=%ld", query_long(req, "i"));
        reply_text(req, 200, body, (size_t)n);
    } else {
        reply_text(req, 404, "nope", 4);
    }
}

/* ---- result capture ---- */

typedef struct result {
    int calls, ok;
    long status;
    char body[256];
    size_t body_len;
    char retry_after[32];
    int has_retry_after;
    char error[256];
    char xtest[16];
    int id;                      /* for the concurrency test */
} result;

static int g_done;

static void copy_str(char *dst, size_t n, const char *src)
{
    snprintf(dst, n, "%s", src ? src : "");
}

static void on_done(const ag_http_response *r, void *arg)
{
    result *res = arg;
    res->calls++;
    res->ok = r->ok;
    res->status = r->status;
    res->body_len = r->body_len;
    copy_str(res->body, sizeof(res->body), r->body);
    res->has_retry_after = r->retry_after != NULL;
    copy_str(res->retry_after, sizeof(res->retry_after), r->retry_after);
    copy_str(res->error, sizeof(res->error), r->error);
    copy_str(res->xtest, sizeof(res->xtest), ag_http_response_header(r, "x-test"));
    g_done++;
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    *(int *)arg = 1;
}

/* Runs the loop until *v >= want or ms elapse; returns 1 when the condition held. */
static int wait_for(const int *v, int want, int ms)
{
    int expired = 0;
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    struct event *t = evtimer_new(g_base, on_deadline, &expired);
    evtimer_add(t, &tv);
    while (*v < want && !expired)
        event_base_loop(g_base, EVLOOP_ONCE);
    event_free(t);
    return *v >= want;
}

static void url_for(char *out, size_t n, const char *path)
{
    snprintf(out, n, "http://127.0.0.1:%d%s", g_port, path);
}

static int get(ag_curl_loop *loop, const char *path, long timeout_ms, result *res)
{
    char url[256];
    url_for(url, sizeof(url), path);
    ag_http_request req = { .method = "GET", .url = url, .timeout_ms = timeout_ms };
    return ag_curl_loop_start(loop, &req, on_done, res);
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- tests ---- */

static void test_get(ag_curl_loop *loop)
{
    result r = { 0 };
    CHECK_INT(get(loop, "/hello", 5000, &r), 0);
    CHECK_INT(r.calls, 0); /* never called from inside start() */
    CHECK_INT(ag_curl_loop_pending(loop), 1);
    CHECK(wait_for(&r.calls, 1, 5000));
    CHECK_INT(r.calls, 1);
    CHECK_INT(r.ok, 1);
    CHECK_INT(r.status, 200);
    CHECK_STR(r.body, "hello world");
    CHECK_INT(r.body_len, 11);
    CHECK_INT(r.has_retry_after, 0);
    CHECK_STR(r.xtest, "b"); /* last occurrence, case-insensitive name */
    CHECK_STR(r.error, "");
    CHECK_INT(ag_curl_loop_pending(loop), 0);

    result nf = { 0 };
    CHECK_INT(get(loop, "/missing", 5000, &nf), 0);
    CHECK(wait_for(&nf.calls, 1, 5000));
    CHECK_INT(nf.ok, 1);
    CHECK_INT(nf.status, 404);
    CHECK_STR(nf.body, "nope");
    CHECK_STR(nf.xtest, "");
}

static void test_methods(ag_curl_loop *loop)
{
    char url[256];
    url_for(url, sizeof(url), "/echo");
    /* heap copies that we clobber and free right after start(): start() must have copied them */
    char *body = strdup("a=1&b=2");
    char *h1 = strdup("X-Req: hi");
    char *h2 = strdup("Content-Type: application/x-www-form-urlencoded");
    char *u = strdup(url);
    const char *hdrs[] = { h1, h2, NULL };
    ag_http_request req = { .method = "POST", .url = u, .headers = hdrs, .body = body, .body_len = 7,
                            .timeout_ms = 5000 };
    result post = { 0 };
    CHECK_INT(ag_curl_loop_start(loop, &req, on_done, &post), 0);
    memset(body, 'Z', 7);
    memset(h1, 'Z', strlen(h1));
    memset(u, 'Z', strlen(u));
    free(body);
    free(h1);
    free(h2);
    free(u);
    CHECK(wait_for(&post.calls, 1, 5000));
    CHECK_INT(post.ok, 1);
    CHECK_INT(post.status, 200);
    CHECK_STR(post.body, "POST\nhi\napplication/x-www-form-urlencoded\na=1&b=2");

    const char *hp[] = { "X-Req: put", NULL };
    ag_http_request put = { .method = "PUT", .url = url, .headers = hp, .body = "xyz", .body_len = 3 };
    result rput = { 0 };
    CHECK_INT(ag_curl_loop_start(loop, &put, on_done, &rput), 0);
    CHECK(wait_for(&rput.calls, 1, 5000));
    CHECK_STR(rput.body, "PUT\nput\napplication/x-www-form-urlencoded\nxyz"); /* curl's default type */

    ag_http_request del = { .method = "DELETE", .url = url };
    result rdel = { 0 };
    CHECK_INT(ag_curl_loop_start(loop, &del, on_done, &rdel), 0);
    CHECK(wait_for(&rdel.calls, 1, 5000));
    CHECK_STR(rdel.body, "DELETE\n\n\n");

    /* method NULL + body means POST; a body with embedded NUL is sent whole */
    ag_http_request implicit = { .url = url, .body = "a\0b", .body_len = 3 };
    result rimp = { 0 };
    CHECK_INT(ag_curl_loop_start(loop, &implicit, on_done, &rimp), 0);
    CHECK(wait_for(&rimp.calls, 1, 5000));
    CHECK_INT(rimp.body_len, strlen("POST\n\napplication/x-www-form-urlencoded\n") + 3);
    CHECK_STR(rimp.body, "POST\n\napplication/x-www-form-urlencoded\na"); /* NUL ends the C view */
}

static void test_status(ag_curl_loop *loop)
{
    result r429 = { 0 }, r503 = { 0 }, r302 = { 0 };
    CHECK_INT(get(loop, "/status/429", 5000, &r429), 0);
    CHECK_INT(get(loop, "/status/503", 5000, &r503), 0);
    CHECK_INT(get(loop, "/redirect", 5000, &r302), 0);
    int base = g_done;
    CHECK(wait_for(&g_done, base + 3, 5000));
    CHECK_INT(r429.ok, 1);
    CHECK_INT(r429.status, 429);
    CHECK_INT(r429.has_retry_after, 1);
    CHECK_STR(r429.retry_after, "7");
    CHECK_STR(r429.body, "{\"error\":\"x\"}");
    CHECK_INT(r503.status, 503);
    CHECK_INT(r503.has_retry_after, 0);
    CHECK_INT(r302.ok, 1);
    CHECK_INT(r302.status, 302); /* redirects are not followed */
    CHECK_STR(r302.body, "");
}

/* A TCP socket bound to 127.0.0.1 on an ephemeral port (listening when asked); returns the fd. */
static int local_socket(int do_listen, int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = 0 };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(sa);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || (do_listen && listen(fd, 16) != 0) ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    *port = ntohs(sa.sin_port);
    return fd;
}

static void test_timeout_and_refused(ag_curl_loop *loop)
{
    /* a socket that listens but never accepts: the TCP handshake completes, no reply ever comes */
    int bh_port = 0, bh_fd = local_socket(1, &bh_port);
    CHECK(bh_fd >= 0);
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/x", bh_port);
    ag_http_request req = { .url = url, .timeout_ms = 300 };
    result rt = { 0 };
    double t0 = mono_s();
    CHECK_INT(ag_curl_loop_start(loop, &req, on_done, &rt), 0);
    CHECK(wait_for(&rt.calls, 1, 10000));
    double took = mono_s() - t0;
    CHECK_INT(rt.ok, 0);
    CHECK_INT(rt.status, 0);
    CHECK(strstr(rt.error, "timed out") != NULL);
    CHECK(took >= 0.25 && took < 5.0);

    /* a port that was bound then closed: connection refused */
    int rf_port = 0, rf_fd = local_socket(0, &rf_port);
    CHECK(rf_fd >= 0);
    close(rf_fd);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/x", rf_port);
    ag_http_request req2 = { .url = url, .timeout_ms = 5000 };
    result rr = { 0 };
    CHECK_INT(ag_curl_loop_start(loop, &req2, on_done, &rr), 0);
    CHECK(wait_for(&rr.calls, 1, 5000));
    CHECK_INT(rr.ok, 0);
    CHECK(strstr(rr.error, "onnect") != NULL);

    /* https against a plain-HTTP port: the TLS handshake fails, reported as a transport error */
    char surl[128];
    snprintf(surl, sizeof(surl), "https://127.0.0.1:%d/hello", g_port);
    ag_http_request req3 = { .url = surl, .timeout_ms = 5000, .ca_file = "/nonexistent/ca.pem" };
    result rs = { 0 };
    CHECK_INT(ag_curl_loop_start(loop, &req3, on_done, &rs), 0);
    CHECK(wait_for(&rs.calls, 1, 5000));
    CHECK_INT(rs.ok, 0);
    CHECK(rs.error[0] != '\0');

    /* freeing the loop with a transfer pending: its callback never runs */
    ag_curl_loop *l2 = ag_curl_loop_new(g_base);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/x", bh_port);
    ag_http_request req4 = { .url = url, .timeout_ms = 200 };
    result rp = { 0 };
    CHECK_INT(ag_curl_loop_start(l2, &req4, on_done, &rp), 0);
    CHECK_INT(ag_curl_loop_pending(l2), 1);
    ag_curl_loop_free(l2);
    /* a later transfer on the main loop that outlives the 200 ms the freed one would have taken */
    ag_http_request req5 = { .url = url, .timeout_ms = 400 };
    result rsent = { 0 };
    CHECK_INT(ag_curl_loop_start(loop, &req5, on_done, &rsent), 0);
    CHECK(wait_for(&rsent.calls, 1, 5000));
    CHECK_INT(rp.calls, 0);
    close(bh_fd);
}

static void test_body_cap(ag_curl_loop *loop)
{
    result a = { 0 }, b = { 0 }, c = { 0 }, d = { 0 };
    ag_curl_loop_set_max_body(loop, 1000);
    CHECK_INT(get(loop, "/big?n=1000", 5000, &a), 0);
    CHECK_INT(get(loop, "/big?n=1001", 5000, &b), 0);
    CHECK_INT(get(loop, "/big?n=1000&chunked=1", 5000, &c), 0);
    CHECK_INT(get(loop, "/big?n=1001&chunked=1", 5000, &d), 0);
    int base = g_done;
    CHECK(wait_for(&g_done, base + 4, 5000));
    CHECK_INT(a.ok, 1);
    CHECK_INT(a.body_len, 1000);
    CHECK_INT(b.ok, 0);
    CHECK_STR(b.error, "response body larger than 1000 bytes");
    CHECK_INT(c.ok, 1);
    CHECK_INT(c.body_len, 1000);
    CHECK_INT(d.ok, 0);
    CHECK_STR(d.error, "response body larger than 1000 bytes");

    ag_curl_loop_set_max_body(loop, 0); /* back to the 4 MiB default */
    result e = { 0 }, f = { 0 };
    char p1[64], p2[64];
    snprintf(p1, sizeof(p1), "/big?n=%zu&chunked=1", AG_CURL_LOOP_DEFAULT_MAX_BODY);
    snprintf(p2, sizeof(p2), "/big?n=%zu&chunked=1", AG_CURL_LOOP_DEFAULT_MAX_BODY + 1);
    CHECK_INT(get(loop, p1, 20000, &e), 0);
    CHECK_INT(get(loop, p2, 20000, &f), 0);
    base = g_done;
    CHECK(wait_for(&g_done, base + 2, 20000));
    CHECK_INT(e.ok, 1);
    CHECK_INT(e.body_len, 4194304);
    CHECK_INT(f.ok, 0);
    CHECK_STR(f.error, "response body larger than 4194304 bytes");
}

#define NCONC 200

static int g_conc_good;

static void on_conc(const ag_http_response *r, void *arg)
{
    result *res = arg;
    char want[32];
    snprintf(want, sizeof(want), "id=%d", res->id);
    res->calls++;
    if (r->ok && r->status == 200 && r->body_len == strlen(want) && strcmp(r->body, want) == 0)
        g_conc_good++;
    g_done++;
}

static void test_concurrent(ag_curl_loop *loop)
{
    static result rs[NCONC];
    int started = 0;
    for (int i = 0; i < NCONC; i++) {
        char url[128];
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/id?i=%d", g_port, i);
        rs[i].id = i;
        ag_http_request req = { .url = url, .timeout_ms = 20000 };
        started += ag_curl_loop_start(loop, &req, on_conc, &rs[i]) == 0;
    }
    CHECK_INT(started, NCONC);
    CHECK_INT(ag_curl_loop_pending(loop), NCONC);
    CHECK(wait_for(&g_conc_good, NCONC, 30000));
    CHECK_INT(g_conc_good, NCONC);
    int once = 1;
    for (int i = 0; i < NCONC; i++)
        once &= rs[i].calls == 1;
    CHECK(once);
    CHECK_INT(ag_curl_loop_pending(loop), 0);
}

static void test_bad_args(ag_curl_loop *loop)
{
    result r = { 0 };
    ag_http_request ftp = { .url = "ftp://127.0.0.1/x" };
    ag_http_request file = { .url = "file:///etc/passwd" };
    ag_http_request nourl = { .url = NULL };
    ag_http_request nobody = { .url = "http://127.0.0.1:1/", .body = NULL, .body_len = 5 };
    CHECK_INT(ag_curl_loop_start(loop, &ftp, on_done, &r), -1);
    CHECK_INT(ag_curl_loop_start(loop, &file, on_done, &r), -1);
    CHECK_INT(ag_curl_loop_start(loop, &nourl, on_done, &r), -1);
    CHECK_INT(ag_curl_loop_start(loop, &nobody, on_done, &r), -1);
    CHECK_INT(ag_curl_loop_start(loop, NULL, on_done, &r), -1);
    ag_http_request ok = { .url = "http://127.0.0.1:1/" };
    CHECK_INT(ag_curl_loop_start(loop, &ok, NULL, &r), -1);
    CHECK_INT(ag_curl_loop_pending(loop), 0);
    CHECK_INT(r.calls, 0);
    CHECK(ag_curl_loop_new(NULL) == NULL);
    ag_curl_loop_free(NULL);
}

static void test_cancel(ag_curl_loop *loop)
{
    result a1 = { 0 }, b = { 0 };
    CHECK_INT(get(loop, "/hello", 5000, &a1), 0);
    CHECK_INT(get(loop, "/hello", 5000, &a1), 0);
    CHECK_INT(get(loop, "/hello", 5000, &b), 0);
    CHECK_INT(ag_curl_loop_cancel(loop, &a1), 2);
    CHECK_INT(ag_curl_loop_cancel(loop, &a1), 0);
    CHECK_INT(ag_curl_loop_pending(loop), 1);
    CHECK(wait_for(&b.calls, 1, 5000));
    CHECK_INT(b.status, 200);
    CHECK_INT(a1.calls, 0);
}

/* done() that frees its own loop, and done() that starts the next transfer */
typedef struct reentry {
    ag_curl_loop *loop;
    int calls;
    int chain_left;
} reentry;

static void on_free_self(const ag_http_response *r, void *arg)
{
    reentry *re = arg;
    re->calls++;
    ag_curl_loop_free(re->loop);
}

static void on_chain(const ag_http_response *r, void *arg)
{
    reentry *re = arg;
    re->calls++;
    if (r->ok && r->status == 200 && --re->chain_left > 0) {
        char url[128];
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/hello", g_port);
        ag_http_request req = { .url = url, .timeout_ms = 5000 };
        if (ag_curl_loop_start(re->loop, &req, on_chain, re) != 0)
            re->chain_left = -100;
    }
}

static void test_reentry(ag_curl_loop *loop)
{
    reentry fr = { .loop = ag_curl_loop_new(g_base) };
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/hello", g_port);
    ag_http_request req = { .url = url, .timeout_ms = 5000 };
    for (int i = 0; i < 3; i++)
        CHECK_INT(ag_curl_loop_start(fr.loop, &req, on_free_self, &fr), 0);
    CHECK(wait_for(&fr.calls, 1, 5000));
    result sentinel = { 0 };
    CHECK_INT(get(loop, "/hello", 5000, &sentinel), 0);
    CHECK(wait_for(&sentinel.calls, 1, 5000));
    CHECK_INT(fr.calls, 1);

    reentry ch = { .loop = loop, .chain_left = 5 };
    CHECK_INT(ag_curl_loop_start(loop, &req, on_chain, &ch), 0);
    CHECK(wait_for(&ch.calls, 5, 5000));
    CHECK_INT(ch.calls, 5);
    CHECK_INT(ch.chain_left, 0);
}

int main(void)
{
    g_base = event_base_new();
    struct evhttp *http = evhttp_new(g_base);
    evhttp_set_max_body_size(http, 1 << 20);
    evhttp_set_max_headers_size(http, 16384);
    evhttp_set_gencb(http, on_request, NULL);
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(http, "127.0.0.1", 0);
    CHECK(bs != NULL);
    if (!bs)
        return CHECK_DONE();
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sa, &len);
    g_port = ntohs(sa.sin_port);

    ag_curl_loop *loop = ag_curl_loop_new(g_base);
    CHECK(loop != NULL);
    if (!loop)
        return CHECK_DONE();
    test_get(loop);
    test_methods(loop);
    test_status(loop);
    test_timeout_and_refused(loop);
    test_body_cap(loop);
    test_concurrent(loop);
    test_bad_args(loop);
    test_cancel(loop);
    test_reentry(loop);

    ag_curl_loop_free(loop);
    evhttp_free(http);
    event_base_free(g_base);
    return CHECK_DONE();
}
