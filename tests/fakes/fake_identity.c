/* fake_identity: stand-in for the token endpoints the proxy's own credential calls (AZURE.md 2.1-2.4).
 *
 *   POST /{tenant}/oauth2/v2.0/token   Entra client credentials (client_secret or jwt-bearer assertion)
 *   GET  /metadata/identity/oauth2/token   IMDS (needs "Metadata: true"; numbers are JSON strings)
 *   GET  /msi/token                    App Service / Container Apps (needs X-IDENTITY-HEADER)
 *   POST /_fake/fail  {"status":500,"count":n,"retry_after":"1"}   next n token requests fail
 *   GET  /_fake/stats                  request counts per flow, issued tokens, last scope/resource/
 *                                      client id/assertion (test data, never real secrets)
 *
 * Usage: fake_identity --port 0 --port-file PATH [--expires-in S] [--client-id ID]
 *        [--client-secret S] [--tenant T] [--expected-assertion A] [--identity-header H]
 * Tokens are "fake-token-<n>-<scope or resource>", n counting from 1 over all flows. Listens on
 * 127.0.0.1 only; SIGTERM/SIGINT stop it cleanly. */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>

typedef struct fake_opts {
    int port;
    const char *port_file;
    long expires_in;
    const char *client_id;          /* NULL: any */
    const char *client_secret;      /* NULL: any */
    const char *tenant;             /* NULL: any */
    const char *expected_assertion; /* NULL: any non-empty */
    const char *identity_header;
} fake_opts;

typedef struct fake_state {
    fake_opts o;
    long n_secret, n_assertion, n_imds, n_appsvc;
    long issued, rejected, injected;
    long fail_status, fail_count;
    char fail_retry_after[32];
    char last_scope[512], last_resource[512], last_client_id[256], last_mi_param[64], last_assertion[1024];
    unsigned long seq;
} fake_state;

static fake_state g;

static void reply_json(struct evhttp_request *req, int code, cJSON *body, const char *retry_after)
{
    char *s = cJSON_PrintUnformatted(body);
    struct evbuffer *b = evbuffer_new();
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", "application/json; charset=utf-8");
    evhttp_add_header(h, "Cache-Control", "no-store, no-cache");
    if (retry_after && *retry_after)
        evhttp_add_header(h, "Retry-After", retry_after);
    if (s)
        evbuffer_add(b, s, strlen(s));
    evhttp_send_reply(req, code, code == 200 ? "OK" : "Error", b);
    evbuffer_free(b);
    free(s);
    cJSON_Delete(body);
}

static void guid(char out[37])
{
    unsigned long x = ++g.seq;
    snprintf(out, 37, "%08lx-0000-4000-8000-%012lx", x & 0xffffffffUL, x * 2654435761UL & 0xffffffffffffUL);
}

/* Entra error body: {error, error_description, error_codes[], timestamp, trace_id, correlation_id, error_uri}. */
static void entra_error(struct evhttp_request *req, int code, const char *error, int aadsts, const char *desc,
                        const char *retry_after)
{
    char trace[37], corr[37], ts[32], full[1024];
    guid(trace);
    guid(corr);
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%d %H:%M:%SZ", &tm);
    snprintf(full, sizeof(full), "AADSTS%d: %s Trace ID: %s Correlation ID: %s Timestamp: %s", aadsts, desc, trace,
             corr, ts);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "error", error);
    cJSON_AddStringToObject(o, "error_description", full);
    cJSON *codes = cJSON_AddArrayToObject(o, "error_codes");
    cJSON_AddItemToArray(codes, cJSON_CreateNumber(aadsts));
    cJSON_AddStringToObject(o, "timestamp", ts);
    cJSON_AddStringToObject(o, "trace_id", trace);
    cJSON_AddStringToObject(o, "correlation_id", corr);
    char uri[96];
    snprintf(uri, sizeof(uri), "https://login.microsoftonline.com/error?code=%d", aadsts);
    cJSON_AddStringToObject(o, "error_uri", uri);
    g.rejected++;
    reply_json(req, code, o, retry_after);
}

/* IMDS error body: {error, error_description}. */
static void imds_error(struct evhttp_request *req, int code, const char *error, const char *desc,
                       const char *retry_after)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "error", error);
    cJSON_AddStringToObject(o, "error_description", desc);
    g.rejected++;
    reply_json(req, code, o, retry_after);
}

/* App Service error body: {statusCode, message, correlationId} (shape as observed; not in AZURE.md). */
static void appsvc_error(struct evhttp_request *req, int code, const char *msg, const char *retry_after)
{
    char corr[37];
    guid(corr);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "statusCode", code);
    cJSON_AddStringToObject(o, "message", msg);
    cJSON_AddStringToObject(o, "correlationId", corr);
    g.rejected++;
    reply_json(req, code, o, retry_after);
}

typedef enum flow { FLOW_ENTRA, FLOW_IMDS, FLOW_APPSVC } flow;

/* Consumes one injected failure, if any, answering in the flow's error shape. */
static int injected_failure(struct evhttp_request *req, flow f)
{
    if (g.fail_count <= 0)
        return 0;
    g.fail_count--;
    g.injected++;
    int st = (int)g.fail_status;
    const char *ra = g.fail_retry_after[0] ? g.fail_retry_after : NULL;
    if (f == FLOW_ENTRA) {
        if (st == 429 || st >= 500)
            entra_error(req, st, "temporarily_unavailable", 50196, "The server is temporarily unavailable.", ra);
        else if (st == 401)
            entra_error(req, st, "invalid_client", 7000215, "Invalid client secret provided.", ra);
        else
            entra_error(req, st, "invalid_request", 900144, "Injected failure.", ra);
    } else if (f == FLOW_IMDS) {
        imds_error(req, st, st >= 500 ? "server_error" : "invalid_request", "Injected failure.", ra);
    } else {
        appsvc_error(req, st, "Injected failure.", ra);
    }
    return 1;
}

static void new_token(char *out, size_t n, const char *what)
{
    snprintf(out, n, "fake-token-%ld-%s", ++g.issued, what);
}

static int copy_body(struct evhttp_request *req, char *buf, size_t cap)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    if (len >= cap)
        return -1;
    evbuffer_copyout(in, buf, len);
    buf[len] = '\0';
    return strlen(buf) == len ? 0 : -1;
}

static void copy_str(char *dst, size_t n, const char *src)
{
    snprintf(dst, n, "%s", src ? src : "");
}

static void handle_entra(struct evhttp_request *req, const char *tenant)
{
    struct evkeyvalq form;
    static char body[65536];
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        entra_error(req, 400, "invalid_request", 900561, "The endpoint only accepts POST, OPTIONS requests. Received a GET request.", NULL);
        return;
    }
    const char *ct = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
    if (copy_body(req, body, sizeof(body)) != 0 || !ct ||
        strncasecmp(ct, "application/x-www-form-urlencoded", 33) != 0 ||
        evhttp_parse_query_str(body, &form) != 0) {
        entra_error(req, 400, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'.", NULL);
        return;
    }
    const char *grant = evhttp_find_header(&form, "grant_type");
    const char *cid = evhttp_find_header(&form, "client_id");
    const char *scope = evhttp_find_header(&form, "scope");
    const char *secret = evhttp_find_header(&form, "client_secret");
    const char *atype = evhttp_find_header(&form, "client_assertion_type");
    const char *assertion = evhttp_find_header(&form, "client_assertion");
    if (secret)
        g.n_secret++;
    else
        g.n_assertion++;
    copy_str(g.last_scope, sizeof(g.last_scope), scope);
    copy_str(g.last_client_id, sizeof(g.last_client_id), cid);
    copy_str(g.last_assertion, sizeof(g.last_assertion), assertion);
    char desc[512];
    if (injected_failure(req, FLOW_ENTRA)) {
        /* counted above */
    } else if (g.o.tenant && strcmp(tenant, g.o.tenant) != 0) {
        snprintf(desc, sizeof(desc), "Tenant '%s' not found. Check to make sure you have the correct tenant ID.", tenant);
        entra_error(req, 400, "invalid_request", 90002, desc, NULL);
    } else if (!grant) {
        entra_error(req, 400, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'.", NULL);
    } else if (strcmp(grant, "client_credentials") != 0) {
        entra_error(req, 400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.", NULL);
    } else if (!cid) {
        entra_error(req, 400, "invalid_request", 900144, "The request body must contain the following parameter: 'client_id'.", NULL);
    } else if (g.o.client_id && strcmp(cid, g.o.client_id) != 0) {
        snprintf(desc, sizeof(desc), "Application with identifier '%s' was not found in the directory.", cid);
        entra_error(req, 400, "unauthorized_client", 700016, desc, NULL);
    } else if (!scope) {
        entra_error(req, 400, "invalid_request", 900144, "The request body must contain the following parameter: 'scope'.", NULL);
    } else if (strlen(scope) < 10 || strcmp(scope + strlen(scope) - 9, "/.default") != 0 || strchr(scope, ' ')) {
        snprintf(desc, sizeof(desc), "The provided value for scope %s is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).", scope);
        entra_error(req, 400, "invalid_scope", 1002012, desc, NULL);
    } else if (secret && assertion) {
        entra_error(req, 400, "invalid_request", 50027, "Only one of client_secret and client_assertion may be sent.", NULL);
    } else if (secret) {
        if (g.o.client_secret && strcmp(secret, g.o.client_secret) != 0) {
            entra_error(req, 401, "invalid_client", 7000215, "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app.", NULL);
        } else {
            goto issue;
        }
    } else if (!assertion) {
        entra_error(req, 401, "invalid_client", 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.", NULL);
    } else if (!atype || strcmp(atype, "urn:ietf:params:oauth:client-assertion-type:jwt-bearer") != 0) {
        entra_error(req, 400, "invalid_request", 50027, "Invalid client_assertion_type.", NULL);
    } else if (g.o.expected_assertion && strcmp(assertion, g.o.expected_assertion) != 0) {
        entra_error(req, 400, "invalid_client", 70021, "No matching federated identity record found for presented assertion.", NULL);
    } else {
        goto issue;
    }
    evhttp_clear_headers(&form);
    return;
issue: {
        char tok[700];
        new_token(tok, sizeof(tok), scope);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "token_type", "Bearer");
        cJSON_AddNumberToObject(o, "expires_in", (double)g.o.expires_in);
        cJSON_AddNumberToObject(o, "ext_expires_in", (double)g.o.expires_in);
        cJSON_AddStringToObject(o, "access_token", tok);
        evhttp_clear_headers(&form);
        reply_json(req, 200, o, NULL);
    }
}

static const char *query_get(struct evkeyvalq *q, const char *k)
{
    return evhttp_find_header(q, k);
}

/* The user-assigned identity parameter of a managed-identity request (at most one is allowed). */
static int mi_identity(struct evkeyvalq *q, const char *const *names, const char **which, const char **value)
{
    int n = 0;
    *which = NULL;
    *value = NULL;
    for (int i = 0; names[i]; i++) {
        const char *v = query_get(q, names[i]);
        if (v) {
            n++;
            *which = names[i];
            *value = v;
        }
    }
    return n;
}

static void handle_managed(struct evhttp_request *req, flow f)
{
    struct evkeyvalq q;
    TAILQ_INIT(&q);
    const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    if (f == FLOW_IMDS)
        g.n_imds++;
    else
        g.n_appsvc++;
    if (query && evhttp_parse_query_str(query, &q) != 0)
        TAILQ_INIT(&q);
    const char *api = query_get(&q, "api-version");
    const char *res = query_get(&q, "resource");
    copy_str(g.last_resource, sizeof(g.last_resource), res);
    static const char *const imds_ids[] = { "client_id", "object_id", "msi_res_id", NULL };
    static const char *const appsvc_ids[] = { "client_id", "principal_id", "object_id", "mi_res_id", NULL };
    const char *which, *idval;
    int nid = mi_identity(&q, f == FLOW_IMDS ? imds_ids : appsvc_ids, &which, &idval);
    copy_str(g.last_mi_param, sizeof(g.last_mi_param), which);
    copy_str(g.last_client_id, sizeof(g.last_client_id), idval);
    char desc[600];
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
        if (f == FLOW_IMDS)
            imds_error(req, 405, "invalid_request", "Only GET is supported", NULL);
        else
            appsvc_error(req, 405, "Only GET is supported", NULL);
    } else if (f == FLOW_IMDS) {
        const char *md = evhttp_find_header(in, "Metadata");
        if (!md || strcmp(md, "true") != 0) {
            imds_error(req, 400, "bad_request_102", "Required metadata header not specified", NULL);
        } else if (injected_failure(req, f)) {
        } else if (!api || strcmp(api, "2018-02-01") != 0) {
            imds_error(req, 400, "invalid_request", "Required query variable 'api-version' is missing or unsupported", NULL);
        } else if (!res || !*res) {
            imds_error(req, 400, "invalid_request", "Required query variable 'resource' is missing", NULL);
        } else if (strstr(res, "/.default")) {
            snprintf(desc, sizeof(desc), "AADSTS500011: The resource principal named %s was not found in the tenant.", res);
            imds_error(req, 400, "invalid_resource", desc, NULL);
        } else if (nid > 1) {
            imds_error(req, 400, "invalid_request", "Only one of client_id, object_id, msi_res_id may be given", NULL);
        } else if (nid == 1 && g.o.client_id && strcmp(which, "client_id") == 0 && strcmp(idval, g.o.client_id) != 0) {
            imds_error(req, 400, "invalid_request", "Identity not found", NULL);
        } else {
            goto issue;
        }
    } else {
        const char *hdr = evhttp_find_header(in, "X-IDENTITY-HEADER");
        if (!hdr || strcmp(hdr, g.o.identity_header) != 0) {
            appsvc_error(req, 400, "The X-IDENTITY-HEADER header is missing or invalid.", NULL);
        } else if (injected_failure(req, f)) {
        } else if (!api || strcmp(api, "2019-08-01") != 0) {
            appsvc_error(req, 400, "Unsupported or missing api-version.", NULL);
        } else if (!res || !*res || strstr(res, "/.default")) {
            appsvc_error(req, 400, "The resource parameter is missing or invalid.", NULL);
        } else if (nid > 1) {
            appsvc_error(req, 400, "Only one identity parameter may be given.", NULL);
        } else if (nid == 1 && g.o.client_id && strcmp(which, "client_id") == 0 && strcmp(idval, g.o.client_id) != 0) {
            appsvc_error(req, 400, "Unable to load the proper Managed Identity.", NULL);
        } else {
            goto issue;
        }
    }
    evhttp_clear_headers(&q);
    return;
issue: {
        char tok[700], num[32];
        new_token(tok, sizeof(tok), res);
        long long now = (long long)time(NULL);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "access_token", tok);
        if (f == FLOW_IMDS) {
            cJSON_AddStringToObject(o, "refresh_token", "");
            snprintf(num, sizeof(num), "%ld", g.o.expires_in);
            cJSON_AddStringToObject(o, "expires_in", num);
        }
        snprintf(num, sizeof(num), "%lld", now + g.o.expires_in);
        cJSON_AddStringToObject(o, "expires_on", num);
        snprintf(num, sizeof(num), "%lld", now);
        cJSON_AddStringToObject(o, "not_before", num);
        cJSON_AddStringToObject(o, "resource", res);
        cJSON_AddStringToObject(o, "token_type", "Bearer");
        if (f == FLOW_APPSVC)
            cJSON_AddStringToObject(o, "client_id", g.o.client_id ? g.o.client_id : "00000000-0000-0000-0000-000000000000");
        evhttp_clear_headers(&q);
        reply_json(req, 200, o, NULL);
    }
}

static void handle_fail(struct evhttp_request *req)
{
    static char body[4096];
    cJSON *o = NULL;
    if (evhttp_request_get_command(req) == EVHTTP_REQ_POST && copy_body(req, body, sizeof(body)) == 0)
        o = cJSON_Parse(body);
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "status");
    const cJSON *cnt = cJSON_GetObjectItemCaseSensitive(o, "count");
    const cJSON *ra = cJSON_GetObjectItemCaseSensitive(o, "retry_after");
    if (!cJSON_IsNumber(st) || st->valueint < 400 || st->valueint > 599 || !cJSON_IsNumber(cnt) ||
        cnt->valueint < 0 || (ra && !cJSON_IsString(ra))) {
        cJSON_Delete(o);
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "error", "want {\"status\":400..599,\"count\":n,\"retry_after\":\"s\"}");
        reply_json(req, 400, e, NULL);
        return;
    }
    g.fail_status = st->valueint;
    g.fail_count = cnt->valueint;
    copy_str(g.fail_retry_after, sizeof(g.fail_retry_after), ra ? ra->valuestring : NULL);
    cJSON_Delete(o);
    cJSON *r = cJSON_CreateObject();
    cJSON_AddNumberToObject(r, "status", (double)g.fail_status);
    cJSON_AddNumberToObject(r, "count", (double)g.fail_count);
    reply_json(req, 200, r, NULL);
}

static void handle_stats(struct evhttp_request *req)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *r = cJSON_AddObjectToObject(o, "requests");
    cJSON_AddNumberToObject(r, "client_secret", (double)g.n_secret);
    cJSON_AddNumberToObject(r, "client_assertion", (double)g.n_assertion);
    cJSON_AddNumberToObject(r, "imds", (double)g.n_imds);
    cJSON_AddNumberToObject(r, "app_service", (double)g.n_appsvc);
    cJSON_AddNumberToObject(o, "issued", (double)g.issued);
    cJSON_AddNumberToObject(o, "rejected", (double)g.rejected);
    cJSON_AddNumberToObject(o, "injected", (double)g.injected);
    cJSON_AddNumberToObject(o, "fail_remaining", (double)g.fail_count);
    cJSON_AddStringToObject(o, "last_scope", g.last_scope);
    cJSON_AddStringToObject(o, "last_resource", g.last_resource);
    cJSON_AddStringToObject(o, "last_client_id", g.last_client_id);
    cJSON_AddStringToObject(o, "last_mi_param", g.last_mi_param);
    cJSON_AddStringToObject(o, "last_assertion", g.last_assertion);
    reply_json(req, 200, o, NULL);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    size_t n = path ? strlen(path) : 0;
    static const char tok_suffix[] = "/oauth2/v2.0/token";
    size_t sl = sizeof(tok_suffix) - 1;
    if (!path) {
        evhttp_send_error(req, 400, NULL);
    } else if (strcmp(path, "/metadata/identity/oauth2/token") == 0) {
        handle_managed(req, FLOW_IMDS);
    } else if (strcmp(path, "/msi/token") == 0) {
        handle_managed(req, FLOW_APPSVC);
    } else if (strcmp(path, "/_fake/fail") == 0) {
        handle_fail(req);
    } else if (strcmp(path, "/_fake/stats") == 0) {
        handle_stats(req);
    } else if (n > sl + 1 && path[0] == '/' && strcmp(path + n - sl, tok_suffix) == 0 &&
               memchr(path + 1, '/', n - sl - 1) == NULL) {
        char tenant[256];
        size_t tl = n - sl - 1;
        if (tl >= sizeof(tenant))
            tl = sizeof(tenant) - 1;
        memcpy(tenant, path + 1, tl);
        tenant[tl] = '\0';
        handle_entra(req, tenant);
    } else {
        evhttp_send_error(req, 404, NULL);
    }
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    event_base_loopexit(arg, NULL);
}

static int write_port_file(const char *path, int port)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    fprintf(f, "%d\n", port);
    if (fclose(f) != 0)
        return -1;
    return rename(tmp, path);
}

static void usage(void)
{
    fprintf(stderr, "usage: fake_identity --port N --port-file PATH [--expires-in S] [--client-id ID] "
                    "[--client-secret S] [--tenant T] [--expected-assertion A] [--identity-header H]\n");
}

int main(int argc, char **argv)
{
    g.o.port = -1;
    g.o.expires_in = 3599;
    g.o.identity_header = "fake-identity-header";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            usage();
            return 2;
        }
        if (strcmp(a, "--port") == 0)
            g.o.port = atoi(v);
        else if (strcmp(a, "--port-file") == 0)
            g.o.port_file = v;
        else if (strcmp(a, "--expires-in") == 0)
            g.o.expires_in = strtol(v, NULL, 10);
        else if (strcmp(a, "--client-id") == 0)
            g.o.client_id = v;
        else if (strcmp(a, "--client-secret") == 0)
            g.o.client_secret = v;
        else if (strcmp(a, "--tenant") == 0)
            g.o.tenant = v;
        else if (strcmp(a, "--expected-assertion") == 0)
            g.o.expected_assertion = v;
        else if (strcmp(a, "--identity-header") == 0)
            g.o.identity_header = v;
        else {
            usage();
            return 2;
        }
        i++;
    }
    if (g.o.port < 0 || g.o.port > 65535 || g.o.expires_in <= 0) {
        usage();
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct event_base *base = event_base_new();
    struct evhttp *http = evhttp_new(base);
    evhttp_set_max_body_size(http, 65536);
    evhttp_set_max_headers_size(http, 16384);
    evhttp_set_timeout(http, 30);
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST);
    evhttp_set_gencb(http, on_request, NULL);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(http, "127.0.0.1", (ev_uint16_t)g.o.port);
    if (!bs) {
        fprintf(stderr, "fake_identity: cannot bind 127.0.0.1:%d\n", g.o.port);
        return 1;
    }
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sa, &len);
    int port = ntohs(sa.sin_port);
    if (g.o.port_file && write_port_file(g.o.port_file, port) != 0) {
        fprintf(stderr, "fake_identity: cannot write %s\n", g.o.port_file);
        return 1;
    }
    fprintf(stderr, "fake_identity: listening on 127.0.0.1:%d\n", port);
    struct event *sigterm = evsignal_new(base, SIGTERM, on_signal, base);
    struct event *sigint = evsignal_new(base, SIGINT, on_signal, base);
    event_add(sigterm, NULL);
    event_add(sigint, NULL);
    event_base_dispatch(base);
    event_free(sigterm);
    event_free(sigint);
    evhttp_free(http);
    event_base_free(base);
    return 0;
}
