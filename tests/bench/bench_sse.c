/* bench_sse: time to first byte and to last byte of streamed (SSE) responses, one request at a time on
 * one keep-alive connection, so a proxy's added latency shows without queueing.
 *
 *   bench_sse --port P --body-file F [--path TARGET] [--header "Name: value"]... [--count N]
 *             [--warmup N] [--expect-chunks N] [--json]
 *
 * --json: the responses are plain JSON completions (the body must be a JSON object), for the added
 * latency of a whole non-streamed request.
 *
 * For every request: t0 just before the request is written, TTFB at the first response byte, TTLB when
 * the chunked body's last chunk (or Content-Length) is complete. Every response must be 200 and end
 * with "data: [DONE]"; with --expect-chunks N it must carry at least N "data:" events. The connection
 * is reopened when the server closes it (counted). Prints one JSON object on stdout:
 *   {"count","errors","reconnects","bytes","ttfb_us":{"p50","p90","p99","min"},"ttlb_us":{...}}
 * and exits 1 when any response was not a complete 200 stream. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEADERS 16

static double mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {.tv_sec = 30};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* A growable receive buffer; the body is decoded into a second one. */
typedef struct buf {
    char *p;
    size_t len, cap;
} buf;

static void buf_reserve(buf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 65536;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        fprintf(stderr, "bench_sse: out of memory\n");
        exit(2);
    }
    b->p = p;
    b->cap = cap;
}

static void buf_put(buf *b, const char *p, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = '\0';
}

typedef struct exchange {
    int status;
    int keep_alive;
    double ttfb, ttlb;
    size_t bytes;
    size_t events;
    int done_seen;
    int json_object;                   /* the body is one JSON object ({...}) */
} exchange;

/* Reads one response from fd, whose first bytes may already be in *in (left over from before: there
 * are none with one request at a time, but a server may send extra bytes after a close). Returns 0 on
 * a complete response, -1 on a transport or framing failure. */
static int read_response(int fd, buf *in, double t0, exchange *ex)
{
    buf body = {0};
    size_t pos = 0;
    int have_head = 0, chunked = 0;
    long long clen = -1;
    int first = 1;
    /* chunked decoding state */
    size_t chunk_left = 0;
    enum { SIZE, DATA, DATA_CRLF, TRAILER, DONE } cs = SIZE;
    memset(ex, 0, sizeof *ex);
    for (;;) {
        /* parse what is buffered */
        if (!have_head) {
            char *end = strstr(in->p ? in->p : "", "\r\n\r\n");
            if (end) {
                have_head = 1;
                *end = '\0';
                if (sscanf(in->p, "HTTP/1.%*d %d", &ex->status) != 1) {
                    free(body.p);
                    return -1;
                }
                ex->keep_alive = 1;
                for (char *line = strstr(in->p, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
                    char *h = line + 2;
                    if (strncasecmp(h, "content-length:", 15) == 0)
                        clen = atoll(h + 15);
                    else if (strncasecmp(h, "transfer-encoding:", 18) == 0 && strstr(h, "chunked"))
                        chunked = 1;
                    else if (strncasecmp(h, "connection:", 11) == 0 && strstr(h, "close"))
                        ex->keep_alive = 0;
                }
                pos = (size_t)(end - in->p) + 4;
            }
        }
        if (have_head) {
            if (chunked) {
                while (cs != DONE) {
                    if (cs == SIZE || cs == DATA_CRLF || cs == TRAILER) {
                        char *eol = memmem(in->p + pos, in->len - pos, "\r\n", 2);
                        if (!eol)
                            break;
                        if (cs == SIZE) {
                            char *e;
                            unsigned long n = strtoul(in->p + pos, &e, 16);
                            if (e == in->p + pos) {
                                free(body.p);
                                return -1;
                            }
                            chunk_left = n;
                            cs = n == 0 ? TRAILER : DATA;
                        } else if (cs == DATA_CRLF) {
                            if (eol != in->p + pos) {
                                free(body.p);
                                return -1;
                            }
                            cs = SIZE;
                        } else { /* trailer section: ends with an empty line */
                            if (eol == in->p + pos)
                                cs = DONE;
                        }
                        pos = (size_t)(eol - in->p) + 2;
                    } else { /* DATA */
                        size_t avail = in->len - pos;
                        if (avail == 0)
                            break;
                        size_t take = avail < chunk_left ? avail : chunk_left;
                        buf_put(&body, in->p + pos, take);
                        pos += take;
                        chunk_left -= take;
                        if (chunk_left == 0)
                            cs = DATA_CRLF;
                    }
                }
                if (cs == DONE)
                    break;
            } else if (clen >= 0) {
                size_t avail = in->len - pos;
                size_t need = (size_t)clen - body.len;
                size_t take = avail < need ? avail : need;
                buf_put(&body, in->p + pos, take);
                pos += take;
                if (body.len == (size_t)clen)
                    break;
            } else {
                buf_put(&body, in->p + pos, in->len - pos); /* read until close */
                pos = in->len;
            }
        }
        /* compact the input buffer */
        if (pos > 0 && have_head) {
            memmove(in->p, in->p + pos, in->len - pos);
            in->len -= pos;
            in->p[in->len] = '\0';
            pos = 0;
        }
        buf_reserve(in, 65536);
        ssize_t r = read(fd, in->p + in->len, in->cap - in->len - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (have_head && !chunked && clen < 0) {
                ex->keep_alive = 0;
                break;
            }
            free(body.p);
            return -1;
        }
        if (first) {
            ex->ttfb = mono_us() - t0;
            first = 0;
        }
        in->len += (size_t)r;
        in->p[in->len] = '\0';
        ex->bytes += (size_t)r;
    }
    ex->ttlb = mono_us() - t0;
    /* leave any bytes after this response in the buffer */
    if (pos > 0) {
        memmove(in->p, in->p + pos, in->len - pos);
        in->len -= pos;
        in->p[in->len] = '\0';
    }
    for (const char *p = body.p; p && (p = strstr(p, "data:")) != NULL; p += 5)
        ex->events++;
    ex->done_seen = body.p && strstr(body.p, "data: [DONE]") != NULL;
    ex->json_object = body.p && body.len > 1 && body.p[0] == '{' && body.p[body.len - 1] == '}';
    free(body.p);
    return 0;
}

static void pct(const double *v, size_t n, const char *name, int last)
{
    printf("\"%s\":{\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,\"min\":%.1f,\"max\":%.1f}%s", name,
           n ? v[n / 2] : 0.0, n ? v[(size_t)(n * 0.90)] : 0.0, n ? v[(size_t)(n * 0.99)] : 0.0,
           n ? v[0] : 0.0, n ? v[n - 1] : 0.0, last ? "" : ",");
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) {
        b[n] = '\0';
        *len = (size_t)n;
    }
    return b;
}

int main(int argc, char **argv)
{
    int port = 0, count = 500, warmup = 20;
    long expect_chunks = 0;
    int json_mode = 0;
    const char *path = "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21";
    const char *body_file = NULL;
    const char *headers[MAX_HEADERS];
    int nheaders = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--json") == 0) {
            json_mode = 1;
            continue;
        }
        if (!v)
            goto usage;
        if (strcmp(a, "--port") == 0) port = atoi(v);
        else if (strcmp(a, "--count") == 0) count = atoi(v);
        else if (strcmp(a, "--warmup") == 0) warmup = atoi(v);
        else if (strcmp(a, "--path") == 0) path = v;
        else if (strcmp(a, "--body-file") == 0) body_file = v;
        else if (strcmp(a, "--expect-chunks") == 0) expect_chunks = atol(v);
        else if (strcmp(a, "--header") == 0 && nheaders < MAX_HEADERS) headers[nheaders++] = v;
        else goto usage;
        i++;
    }
    if (port <= 0 || !body_file || count <= 0 || warmup < 0)
        goto usage;
    size_t blen;
    char *body = read_file(body_file, &blen);
    if (!body) {
        fprintf(stderr, "bench_sse: cannot read %s\n", body_file);
        return 2;
    }
    buf req = {0};
    char line[512];
    snprintf(line, sizeof line, "POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
             "Accept: %s\r\nContent-Length: %zu\r\n", path, port,
             json_mode ? "application/json" : "text/event-stream", blen);
    buf_put(&req, line, strlen(line));
    for (int i = 0; i < nheaders; i++) {
        buf_put(&req, headers[i], strlen(headers[i]));
        buf_put(&req, "\r\n", 2);
    }
    buf_put(&req, "\r\n", 2);
    buf_put(&req, body, blen);

    double *ttfb = calloc((size_t)count, sizeof *ttfb), *ttlb = calloc((size_t)count, sizeof *ttlb);
    size_t n = 0, bytes = 0;
    int errors = 0, reconnects = 0, fd = -1;
    buf in = {0};
    for (int i = 0; i < warmup + count; i++) {
        if (fd < 0) {
            fd = connect_to(port);
            if (fd < 0) {
                fprintf(stderr, "bench_sse: connect to 127.0.0.1:%d: %s\n", port, strerror(errno));
                return 1;
            }
            in.len = 0;
            if (i > 0)
                reconnects++;
        }
        double t0 = mono_us();
        exchange ex;
        if (write_all(fd, req.p, req.len) != 0 || read_response(fd, &in, t0, &ex) != 0) {
            errors++;
            fprintf(stderr, "bench_sse: request %d: transport or framing failure\n", i);
            close(fd);
            fd = -1;
            if (errors > 10)
                break;
            continue;
        }
        int complete = json_mode ? ex.json_object : ex.done_seen;
        if (ex.status != 200 || !complete || (expect_chunks && (long)ex.events < expect_chunks)) {
            errors++;
            if (errors <= 3)
                fprintf(stderr, "bench_sse: request %d: status %d, %zu events, [DONE] %s\n", i, ex.status,
                        ex.events, ex.done_seen ? "seen" : "missing");
        } else if (i >= warmup) {
            ttfb[n] = ex.ttfb;
            ttlb[n] = ex.ttlb;
            n++;
            bytes += ex.bytes;
        }
        if (!ex.keep_alive) {
            close(fd);
            fd = -1;
        }
    }
    if (fd >= 0)
        close(fd);
    qsort(ttfb, n, sizeof *ttfb, cmp_double);
    qsort(ttlb, n, sizeof *ttlb, cmp_double);
    printf("{\"count\":%zu,\"errors\":%d,\"reconnects\":%d,\"bytes\":%zu,", n, errors, reconnects, bytes);
    pct(ttfb, n, "ttfb_us", 0);
    pct(ttlb, n, "ttlb_us", 1);
    printf("}\n");
    free(ttfb);
    free(ttlb);
    free(req.p);
    free(in.p);
    free(body);
    return errors ? 1 : 0;
usage:
    fprintf(stderr, "usage: bench_sse --port P --body-file F [--path T] [--header 'N: v']... [--count N] "
                    "[--warmup N] [--expect-chunks N] [--json]\n");
    return 2;
}
