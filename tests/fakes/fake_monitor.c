/* fake_monitor: a stand-in for the Azure Monitor Logs Ingestion API, on 127.0.0.1 only.
 *
 *   fake_monitor --port 0 --port-file PATH --token T --dcr ID --stream NAME [--max-bytes N]
 *
 * POST /dataCollectionRules/{ID}/streams/{NAME}?api-version=2023-01-01 is checked like the service
 * does it: path, api-version, "Authorization: Bearer T", Content-Type application/json, optional
 * Content-Encoding gzip (inflated with zlib), at most N (1 MiB) uncompressed bytes (413 beyond), body
 * a JSON array of objects. Accepted records are stored and the answer is 204.
 *
 * Control (same port):
 *   GET    /_fake/records  every record received, in order, as a JSON array (duplicates included)
 *   DELETE /_fake/records  forget them
 *   GET    /_fake/stats    {"calls","accepted_calls","records","gzip_calls","max_uncompressed",
 *                           "oversize_fields","auth_failures","held","status":{"204":n,...}}
 *                           (held: answers currently delayed by delay_ms)
 *   POST   /_fake/faults   {"status":429|500|503|..., "count":n (-1: until cleared),
 *                           "retry_after":"2", "poison_field":"RequestId", "poison_value":"bad",
 *                           "delay_ms":n (hold every 204 that long: the records are stored first),
 *                           "clear":true}
 *   POST   /_fake/outage   {"seconds":n} or {"ms":n}: stop listening (connections are refused) and
 *                           drop requests on open connections without an answer, for that long
 *   POST   /_fake/token    {"token":"T2"}: the token expected from now on
 * SIGTERM/SIGINT stop it cleanly. */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <zlib.h>

#define FIELD_LIMIT 65536

typedef struct fake {
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *bound;
    int port;
    char *token;
    char *dcr;
    char *stream;
    char ingest_path[512];
    size_t max_bytes;
    cJSON *records;
    /* stats */
    long long calls, accepted_calls, gzip_calls, oversize_fields, auth_failures;
    long long held; /* 204s currently delayed by delay_ms */
    size_t max_uncompressed;
    cJSON *status_counts;
    /* faults */
    int fault_status;
    long long fault_count;
    char retry_after[64];
    char *poison_field, *poison_value;
    long long delay_ms;
    bool outage;
    struct event *outage_ev;
} fake;

static void count_status(fake *f, int status)
{
    char k[16];
    snprintf(k, sizeof k, "%d", status);
    cJSON *v = cJSON_GetObjectItemCaseSensitive(f->status_counts, k);
    if (v)
        cJSON_SetNumberValue(v, v->valuedouble + 1);
    else
        cJSON_AddNumberToObject(f->status_counts, k, 1);
}

static void reply_json(fake *f, struct evhttp_request *req, int status, const char *reason, const char *json)
{
    struct evbuffer *b = evbuffer_new();
    if (json) {
        evbuffer_add(b, json, strlen(json));
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    }
    evhttp_send_reply(req, status, reason, b);
    evbuffer_free(b);
    if (f)
        count_status(f, status);
}

static int reply_error(fake *f, struct evhttp_request *req, int status, const char *code, const char *msg)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(o, "error");
    cJSON_AddStringToObject(e, "code", code);
    cJSON_AddStringToObject(e, "message", msg);
    char *s = cJSON_PrintUnformatted(o);
    reply_json(f, req, status, code, s);
    cJSON_free(s);
    cJSON_Delete(o);
    return 0;
}

/* Inflates a gzip body; 0 ok, -2 beyond max, -1 invalid. */
static int inflate_gzip(const unsigned char *in, size_t len, size_t max, char **out, size_t *outlen)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK)
        return -1;
    char *buf = malloc(max + 2);
    if (!buf) {
        inflateEnd(&z);
        return -1;
    }
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)len;
    z.next_out = (Bytef *)buf;
    z.avail_out = (uInt)(max + 1);
    int rc = inflate(&z, Z_FINISH);
    size_t have = max + 1 - z.avail_out;
    inflateEnd(&z);
    if (have > max) {
        free(buf);
        return -2;
    }
    if (rc != Z_STREAM_END || z.avail_in != 0) {
        free(buf);
        return -1;
    }
    buf[have] = '\0';
    *out = buf;
    *outlen = have;
    return 0;
}

static void count_oversize(fake *f, const cJSON *rec)
{
    for (const cJSON *c = rec->child; c; c = c->next)
        if (cJSON_IsString(c) && strlen(c->valuestring) > FIELD_LIMIT)
            f->oversize_fields++;
}

typedef struct delayed {
    fake *f;
    struct evhttp_request *req;
    struct event *ev;
} delayed;

static void on_delayed(evutil_socket_t fd, short what, void *arg)
{
    delayed *d = arg;
    d->f->held--;
    reply_json(d->f, d->req, 204, "No Content", NULL);
    event_free(d->ev);
    free(d);
}

/* Drops the request without an answer: the client sees the connection close. */
static void drop_request(struct evhttp_request *req)
{
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    struct bufferevent *bev = conn ? evhttp_connection_get_bufferevent(conn) : NULL;
    if (bev)
        shutdown(bufferevent_getfd(bev), SHUT_RDWR);
    evhttp_send_reply(req, 503, "Outage", NULL); /* fails on the dead socket; frees the request */
}

static int handle_ingest(fake *f, struct evhttp_request *req)
{
    f->calls++;
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST)
        return reply_error(f, req, 405, "MethodNotAllowed", "POST only");
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = evhttp_uri_get_path(uri);
    if (!path || strcmp(path, f->ingest_path) != 0)
        return reply_error(f, req, 404, "NotFound", "unknown data collection rule or stream");
    struct evkeyvalq q;
    const char *query = evhttp_uri_get_query(uri);
    bool version_ok = false;
    if (query && evhttp_parse_query_str(query, &q) == 0) {
        const char *v = evhttp_find_header(&q, "api-version");
        version_ok = v && strcmp(v, "2023-01-01") == 0;
        evhttp_clear_headers(&q);
    }
    if (!version_ok)
        return reply_error(f, req, 400, "InvalidApiVersion", "api-version must be 2023-01-01");
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    const char *auth = evhttp_find_header(h, "Authorization");
    if (!auth || strncmp(auth, "Bearer ", 7) != 0 || strcmp(auth + 7, f->token) != 0) {
        f->auth_failures++;
        return reply_error(f, req, 401, "InvalidToken", "bearer token missing or not accepted");
    }
    const char *ct = evhttp_find_header(h, "Content-Type");
    if (!ct || strncmp(ct, "application/json", 16) != 0 || (ct[16] && ct[16] != ';'))
        return reply_error(f, req, 415, "UnsupportedMediaType", "Content-Type must be application/json");
    if (f->fault_status && f->fault_count != 0) {
        if (f->fault_count > 0)
            f->fault_count--;
        if (f->retry_after[0] && (f->fault_status == 429 || f->fault_status == 503))
            evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", f->retry_after);
        return reply_error(f, req, f->fault_status, "InjectedFault", "fault injected by the test");
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t blen = evbuffer_get_length(in);
    unsigned char *body = evbuffer_pullup(in, -1);
    const char *ce = evhttp_find_header(h, "Content-Encoding");
    char *json = NULL;
    size_t jlen = 0;
    if (ce && strcmp(ce, "gzip") == 0) {
        f->gzip_calls++;
        int r = inflate_gzip(body, blen, f->max_bytes, &json, &jlen);
        if (r == -2)
            return reply_error(f, req, 413, "ContentLengthLimitExceeded", "more than 1 MB uncompressed");
        if (r != 0)
            return reply_error(f, req, 400, "InvalidContentEncoding", "body is not valid gzip");
    } else if (ce) {
        return reply_error(f, req, 415, "UnsupportedContentEncoding", "only gzip");
    } else {
        if (blen > f->max_bytes)
            return reply_error(f, req, 413, "ContentLengthLimitExceeded", "more than 1 MB");
        json = malloc(blen + 1);
        memcpy(json, body, blen);
        json[blen] = '\0';
        jlen = blen;
    }
    if (jlen > f->max_uncompressed)
        f->max_uncompressed = jlen;
    cJSON *arr = cJSON_ParseWithLength(json, jlen);
    free(json);
    bool ok = cJSON_IsArray(arr) && cJSON_GetArraySize(arr) > 0;
    for (const cJSON *c = ok ? arr->child : NULL; c; c = c->next)
        if (!cJSON_IsObject(c))
            ok = false;
    if (!ok) {
        cJSON_Delete(arr);
        return reply_error(f, req, 400, "InvalidData", "body must be a non-empty JSON array of objects");
    }
    if (f->poison_field && f->poison_value)
        for (const cJSON *c = arr->child; c; c = c->next) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, f->poison_field);
            if (cJSON_IsString(v) && strcmp(v->valuestring, f->poison_value) == 0) {
                cJSON_Delete(arr);
                return reply_error(f, req, 400, "InvalidData", "poisoned record rejected");
            }
        }
    while (arr->child) {
        cJSON *c = cJSON_DetachItemViaPointer(arr, arr->child);
        count_oversize(f, c);
        cJSON_AddItemToArray(f->records, c);
    }
    cJSON_Delete(arr);
    f->accepted_calls++;
    if (f->delay_ms > 0) {
        delayed *d = calloc(1, sizeof *d);
        d->f = f;
        d->req = req;
        d->ev = evtimer_new(f->base, on_delayed, d);
        f->held++;
        struct timeval tv = {(time_t)(f->delay_ms / 1000), (suseconds_t)(f->delay_ms % 1000 * 1000)};
        evtimer_add(d->ev, &tv);
        return 0;
    }
    reply_json(f, req, 204, "No Content", NULL);
    return 0;
}

static cJSON *body_json(struct evhttp_request *req)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    return cJSON_ParseWithLength((const char *)evbuffer_pullup(in, -1), n);
}

static void set_str(char **dst, const cJSON *v)
{
    free(*dst);
    *dst = cJSON_IsString(v) ? strdup(v->valuestring) : NULL;
}

static int bind_listener(fake *f)
{
    f->bound = evhttp_bind_socket_with_handle(f->http, "127.0.0.1", (ev_uint16_t)f->port);
    return f->bound ? 0 : -1;
}

static void on_outage_end(evutil_socket_t fd, short what, void *arg)
{
    fake *f = arg;
    if (bind_listener(f) != 0) { /* the port is briefly unavailable: try again soon */
        struct timeval tv = {0, 50000};
        evtimer_add(f->outage_ev, &tv);
        return;
    }
    f->outage = false;
}

static int handle_control(fake *f, struct evhttp_request *req, const char *path)
{
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (strcmp(path, "/_fake/records") == 0 && cmd == EVHTTP_REQ_GET) {
        char *s = cJSON_PrintUnformatted(f->records);
        reply_json(NULL, req, 200, "OK", s);
        cJSON_free(s);
    } else if (strcmp(path, "/_fake/records") == 0 && cmd == EVHTTP_REQ_DELETE) {
        cJSON_Delete(f->records);
        f->records = cJSON_CreateArray();
        reply_json(NULL, req, 204, "No Content", NULL);
    } else if (strcmp(path, "/_fake/stats") == 0 && cmd == EVHTTP_REQ_GET) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "calls", (double)f->calls);
        cJSON_AddNumberToObject(o, "accepted_calls", (double)f->accepted_calls);
        cJSON_AddNumberToObject(o, "records", cJSON_GetArraySize(f->records));
        cJSON_AddNumberToObject(o, "gzip_calls", (double)f->gzip_calls);
        cJSON_AddNumberToObject(o, "max_uncompressed", (double)f->max_uncompressed);
        cJSON_AddNumberToObject(o, "oversize_fields", (double)f->oversize_fields);
        cJSON_AddNumberToObject(o, "auth_failures", (double)f->auth_failures);
        cJSON_AddNumberToObject(o, "held", (double)f->held);
        cJSON_AddItemToObject(o, "status", cJSON_Duplicate(f->status_counts, 1));
        char *s = cJSON_PrintUnformatted(o);
        reply_json(NULL, req, 200, "OK", s);
        cJSON_free(s);
        cJSON_Delete(o);
    } else if (strcmp(path, "/_fake/faults") == 0 && cmd == EVHTTP_REQ_POST) {
        cJSON *o = body_json(req);
        if (!cJSON_IsObject(o)) {
            cJSON_Delete(o);
            return reply_error(NULL, req, 400, "BadControl", "JSON object expected");
        }
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "clear"))) {
            f->fault_status = 0;
            f->fault_count = 0;
            f->retry_after[0] = '\0';
            set_str(&f->poison_field, NULL);
            set_str(&f->poison_value, NULL);
            f->delay_ms = 0;
        }
        const cJSON *v;
        if (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(o, "status"))) {
            f->fault_status = v->valueint;
            f->fault_count = -1;
        }
        if (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(o, "count")))
            f->fault_count = (long long)v->valuedouble;
        if (cJSON_IsString(v = cJSON_GetObjectItemCaseSensitive(o, "retry_after")))
            snprintf(f->retry_after, sizeof f->retry_after, "%s", v->valuestring);
        if ((v = cJSON_GetObjectItemCaseSensitive(o, "poison_field")))
            set_str(&f->poison_field, v);
        if ((v = cJSON_GetObjectItemCaseSensitive(o, "poison_value")))
            set_str(&f->poison_value, v);
        if (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(o, "delay_ms")))
            f->delay_ms = (long long)v->valuedouble;
        cJSON_Delete(o);
        reply_json(NULL, req, 204, "No Content", NULL);
    } else if (strcmp(path, "/_fake/outage") == 0 && cmd == EVHTTP_REQ_POST) {
        cJSON *o = body_json(req);
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "seconds");
        const cJSON *ms = cJSON_GetObjectItemCaseSensitive(o, "ms");
        long long dur = cJSON_IsNumber(ms) ? (long long)ms->valuedouble
                        : cJSON_IsNumber(s) ? (long long)(s->valuedouble * 1000)
                                            : -1;
        cJSON_Delete(o);
        if (dur <= 0 || f->outage)
            return reply_error(NULL, req, 400, "BadControl", "{\"seconds\":n} or {\"ms\":n}, one at a time");
        reply_json(NULL, req, 204, "No Content", NULL);
        f->outage = true;
        evhttp_del_accept_socket(f->http, f->bound); /* closes the listening socket */
        f->bound = NULL;
        struct timeval tv = {(time_t)(dur / 1000), (suseconds_t)(dur % 1000 * 1000)};
        evtimer_add(f->outage_ev, &tv);
    } else if (strcmp(path, "/_fake/token") == 0 && cmd == EVHTTP_REQ_POST) {
        cJSON *o = body_json(req);
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "token");
        if (cJSON_IsString(t)) {
            free(f->token);
            f->token = strdup(t->valuestring);
        }
        cJSON_Delete(o);
        reply_json(NULL, req, cJSON_IsString(t) ? 204 : 400, "Token", NULL);
    } else {
        reply_error(NULL, req, 404, "NotFound", "unknown control endpoint");
    }
    return 0;
}

static void on_request(struct evhttp_request *req, void *arg)
{
    fake *f = arg;
    if (f->outage) {
        drop_request(req);
        return;
    }
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    if (path && strncmp(path, "/_fake/", 7) == 0)
        handle_control(f, req, path);
    else
        handle_ingest(f, req);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    event_base_loopbreak(arg);
}

static int write_port_file(const char *path, int port)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *fp = fopen(tmp, "w");
    if (!fp)
        return -1;
    fprintf(fp, "%d\n", port);
    if (fclose(fp) != 0)
        return -1;
    return rename(tmp, path);
}

static void usage(void)
{
    fprintf(stderr, "usage: fake_monitor --port N --port-file PATH --token T --dcr ID --stream NAME "
                    "[--max-bytes N]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    fake f;
    memset(&f, 0, sizeof f);
    f.max_bytes = 1024 * 1024;
    const char *port_file = NULL;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        const char *k = argv[i], *v = argv[++i];
        if (strcmp(k, "--port") == 0)
            f.port = atoi(v);
        else if (strcmp(k, "--port-file") == 0)
            port_file = v;
        else if (strcmp(k, "--token") == 0)
            f.token = strdup(v);
        else if (strcmp(k, "--dcr") == 0)
            f.dcr = strdup(v);
        else if (strcmp(k, "--stream") == 0)
            f.stream = strdup(v);
        else if (strcmp(k, "--max-bytes") == 0)
            f.max_bytes = (size_t)strtoull(v, NULL, 10);
        else
            usage();
    }
    if (!f.token || !f.dcr || !f.stream || f.port < 0 || f.port > 65535)
        usage();
    snprintf(f.ingest_path, sizeof f.ingest_path, "/dataCollectionRules/%s/streams/%s", f.dcr, f.stream);
    signal(SIGPIPE, SIG_IGN);
    f.base = event_base_new();
    f.http = evhttp_new(f.base);
    f.records = cJSON_CreateArray();
    f.status_counts = cJSON_CreateObject();
    f.outage_ev = evtimer_new(f.base, on_outage_end, &f);
    evhttp_set_max_body_size(f.http, 8 * 1024 * 1024);
    evhttp_set_max_headers_size(f.http, 64 * 1024);
    evhttp_set_timeout(f.http, 30);
    evhttp_set_allowed_methods(f.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_DELETE);
    evhttp_set_gencb(f.http, on_request, &f);
    if (bind_listener(&f) != 0) {
        fprintf(stderr, "fake_monitor: cannot listen on 127.0.0.1:%d: %s\n", f.port, strerror(errno));
        return 1;
    }
    if (f.port == 0) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        if (getsockname(evhttp_bound_socket_get_fd(f.bound), (struct sockaddr *)&ss, &sl) != 0)
            return 1;
        f.port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    }
    if (port_file && write_port_file(port_file, f.port) != 0) {
        fprintf(stderr, "fake_monitor: cannot write %s\n", port_file);
        return 1;
    }
    struct event *sterm = evsignal_new(f.base, SIGTERM, on_signal, f.base);
    struct event *sint = evsignal_new(f.base, SIGINT, on_signal, f.base);
    event_add(sterm, NULL);
    event_add(sint, NULL);
    event_base_dispatch(f.base);
    event_free(sterm);
    event_free(sint);
    event_free(f.outage_ev);
    evhttp_free(f.http);
    event_base_free(f.base);
    cJSON_Delete(f.records);
    cJSON_Delete(f.status_counts);
    free(f.token);
    free(f.dcr);
    free(f.stream);
    free(f.poison_field);
    free(f.poison_value);
    return 0;
}
