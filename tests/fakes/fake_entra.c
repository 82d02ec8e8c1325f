/* fake_entra: a stand-in for Entra ID's OpenID metadata and signing keys (AZURE.md 1.1-1.3).
 *
 * Usage: fake_entra --port 0 --port-file PATH --keys-dir DIR [--tenant GUID ...] [--keys N]
 *
 * Serves, for every --tenant and for "common" / "organizations":
 *   GET /{t}/v2.0/.well-known/openid-configuration  issuer http://127.0.0.1:PORT/{t}/v2.0
 *   GET /{t}/.well-known/openid-configuration       issuer https://sts.windows.net/{t}/
 *   GET /{t}/discovery/v2.0/keys                    JWKS (kty, use, kid, x5t, n, e, x5c, issuer)
 *   GET /{t}/discovery/keys                         JWKS (v1: no issuer member)
 * "common"/"organizations" use the literal {tenantid} template in issuers. Unknown tenants get 400.
 * Control: POST /_fake/rotate (new key published alongside the old ones; answers {"kid":...}),
 *          POST /_fake/down | /_fake/up (metadata and JWKS answer 503 while down),
 *          GET /_fake/stats ({"jwks_fetches","metadata_fetches","kids":[...],"down"}).
 * Keys: RSA-2048 generated at start (--keys N of them, default 1); each private key is written to
 * DIR/<kid>.pem and its public key to DIR/<kid>.pub.pem, and DIR/kids lists every kid, newest last.
 * TEST ONLY. Listens on 127.0.0.1 only; SIGTERM/SIGINT stop it cleanly (exit 0). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "entra_testkit.h"

#define MAX_KEYS 32
#define MAX_TENANTS 16

typedef struct fake_key {
    EVP_PKEY *pkey;
    X509 *cert;
    char *kid;
} fake_key;

static struct {
    const char *keys_dir;
    const char *tenants[MAX_TENANTS];
    int ntenants;
    int port;
    char base_url[64];
    fake_key keys[MAX_KEYS];
    int nkeys;
    bool down;
    unsigned long jwks_fetches, metadata_fetches;
} g;

static int write_atomic(const char *path, const char *data)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    int ok = fputs(data, f) >= 0;
    if (fclose(f) != 0 || !ok)
        return -1;
    return rename(tmp, path);
}

static int write_kids_file(void)
{
    char path[4096], list[MAX_KEYS * 64] = "";
    size_t used = 0;
    for (int i = 0; i < g.nkeys; i++)
        used += (size_t)snprintf(list + used, sizeof list - used, "%s\n", g.keys[i].kid);
    snprintf(path, sizeof path, "%s/kids", g.keys_dir);
    return write_atomic(path, list);
}

/* Generates a key + certificate, writes its PEM files; the kid is the certificate thumbprint. */
static int add_key(void)
{
    if (g.nkeys == MAX_KEYS)
        return -1;
    fake_key *k = &g.keys[g.nkeys];
    k->pkey = ag_tk_rsa_new(2048);
    k->cert = k->pkey ? ag_tk_self_signed(k->pkey, "fake-entra test key") : NULL;
    k->kid = k->cert ? ag_tk_thumbprint(k->cert) : NULL;
    if (!k->kid)
        return -1;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.pem", g.keys_dir, k->kid);
    if (ag_tk_write_pem(k->pkey, path, true) != 0)
        return -1;
    snprintf(path, sizeof path, "%s/%s.pub.pem", g.keys_dir, k->kid);
    if (ag_tk_write_pem(k->pkey, path, false) != 0)
        return -1;
    g.nkeys++;
    return write_kids_file();
}

static void reply_json(struct evhttp_request *req, int code, const char *reason, const char *json)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", "application/json; charset=utf-8");
    evhttp_add_header(h, "Cache-Control", "no-store");
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, json, strlen(json));
    evhttp_send_reply(req, code, reason, b);
    evbuffer_free(b);
}

static void reply_cjson(struct evhttp_request *req, cJSON *doc)
{
    char *s = cJSON_PrintUnformatted(doc);
    reply_json(req, 200, "OK", s ? s : "{}");
    cJSON_free(s);
    cJSON_Delete(doc);
}

/* "common"/"organizations" give issuers with the {tenantid} template, a tenant GUID its own. */
static bool known_tenant(const char *t, size_t len, bool *templated)
{
    *templated = (len == 6 && memcmp(t, "common", 6) == 0) || (len == 13 && memcmp(t, "organizations", 13) == 0);
    if (*templated)
        return true;
    for (int i = 0; i < g.ntenants; i++)
        if (strlen(g.tenants[i]) == len && memcmp(g.tenants[i], t, len) == 0)
            return true;
    return false;
}

static void serve_metadata(struct evhttp_request *req, const char *tenant, bool v2, bool templated)
{
    g.metadata_fetches++;
    const char *tid = templated ? "{tenantid}" : tenant;
    char issuer[256], jwks[256], authz[256], token[256];
    if (v2) {
        snprintf(issuer, sizeof issuer, "%s/%s/v2.0", g.base_url, tid);
        snprintf(jwks, sizeof jwks, "%s/%s/discovery/v2.0/keys", g.base_url, tenant);
        snprintf(authz, sizeof authz, "%s/%s/oauth2/v2.0/authorize", g.base_url, tenant);
        snprintf(token, sizeof token, "%s/%s/oauth2/v2.0/token", g.base_url, tenant);
    } else {
        snprintf(issuer, sizeof issuer, "https://sts.windows.net/%s/", tid);
        snprintf(jwks, sizeof jwks, "%s/%s/discovery/keys", g.base_url, tenant);
        snprintf(authz, sizeof authz, "%s/%s/oauth2/authorize", g.base_url, tenant);
        snprintf(token, sizeof token, "%s/%s/oauth2/token", g.base_url, tenant);
    }
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "token_endpoint", token);
    cJSON_AddStringToObject(d, "jwks_uri", jwks);
    cJSON_AddStringToObject(d, "issuer", issuer);
    cJSON_AddStringToObject(d, "authorization_endpoint", authz);
    cJSON *a = cJSON_AddArrayToObject(d, "id_token_signing_alg_values_supported");
    cJSON_AddItemToArray(a, cJSON_CreateString("RS256"));
    cJSON *r = cJSON_AddArrayToObject(d, "response_types_supported");
    cJSON_AddItemToArray(r, cJSON_CreateString("code"));
    cJSON_AddItemToArray(r, cJSON_CreateString("id_token"));
    cJSON_AddStringToObject(d, "tenant_region_scope", "NA");
    reply_cjson(req, d);
}

static void serve_jwks(struct evhttp_request *req, const char *tenant, bool v2, bool templated)
{
    g.jwks_fetches++;
    char issuer[256];
    snprintf(issuer, sizeof issuer, "%s/%s/v2.0", g.base_url, templated ? "{tenantid}" : tenant);
    cJSON *d = cJSON_CreateObject();
    cJSON *keys = cJSON_AddArrayToObject(d, "keys");
    for (int i = 0; i < g.nkeys; i++)
        cJSON_AddItemToArray(keys, ag_tk_jwk(g.keys[i].pkey, g.keys[i].cert, g.keys[i].kid, v2 ? issuer : NULL));
    reply_cjson(req, d);
}

static void serve_stats(struct evhttp_request *req)
{
    cJSON *d = cJSON_CreateObject();
    cJSON_AddNumberToObject(d, "jwks_fetches", (double)g.jwks_fetches);
    cJSON_AddNumberToObject(d, "metadata_fetches", (double)g.metadata_fetches);
    cJSON *kids = cJSON_AddArrayToObject(d, "kids");
    for (int i = 0; i < g.nkeys; i++)
        cJSON_AddItemToArray(kids, cJSON_CreateString(g.keys[i].kid));
    cJSON_AddBoolToObject(d, "down", g.down);
    reply_cjson(req, d);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    const char *uri = evhttp_request_get_uri(req);
    struct evhttp_uri *parsed = evhttp_uri_parse(uri);
    const char *path = parsed ? evhttp_uri_get_path(parsed) : NULL;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (!path || path[0] != '/') {
        reply_json(req, 400, "Bad Request", "{\"error\":\"invalid_request\"}");
        goto out;
    }
    if (strncmp(path, "/_fake/", 7) == 0) {
        const char *op = path + 7;
        if (cmd == EVHTTP_REQ_GET && strcmp(op, "stats") == 0) {
            serve_stats(req);
        } else if (cmd == EVHTTP_REQ_POST && strcmp(op, "rotate") == 0) {
            if (add_key() != 0) {
                reply_json(req, 500, "Internal Server Error", "{\"error\":\"cannot add a key\"}");
            } else {
                char body[128];
                snprintf(body, sizeof body, "{\"kid\":\"%s\"}", g.keys[g.nkeys - 1].kid);
                reply_json(req, 200, "OK", body);
            }
        } else if (cmd == EVHTTP_REQ_POST && (strcmp(op, "down") == 0 || strcmp(op, "up") == 0)) {
            g.down = strcmp(op, "down") == 0;
            reply_json(req, 200, "OK", g.down ? "{\"down\":true}" : "{\"down\":false}");
        } else {
            reply_json(req, 404, "Not Found", "{\"error\":\"not_found\"}");
        }
        goto out;
    }
    /* /{tenant}/... */
    const char *t = path + 1, *rest = strchr(t, '/');
    size_t tl = rest ? (size_t)(rest - t) : strlen(t);
    char tenant[64];
    bool templated = false;
    if (cmd != EVHTTP_REQ_GET || !rest || tl == 0 || tl >= sizeof tenant) {
        reply_json(req, 404, "Not Found", "{\"error\":\"not_found\"}");
        goto out;
    }
    memcpy(tenant, t, tl);
    tenant[tl] = '\0';
    bool meta_v2 = strcmp(rest, "/v2.0/.well-known/openid-configuration") == 0;
    bool meta_v1 = strcmp(rest, "/.well-known/openid-configuration") == 0;
    bool keys_v2 = strcmp(rest, "/discovery/v2.0/keys") == 0;
    bool keys_v1 = strcmp(rest, "/discovery/keys") == 0;
    if (!meta_v2 && !meta_v1 && !keys_v2 && !keys_v1) {
        reply_json(req, 404, "Not Found", "{\"error\":\"not_found\"}");
        goto out;
    }
    if (!known_tenant(tenant, tl, &templated)) {
        reply_json(req, 400, "Bad Request",
                   "{\"error\":\"invalid_tenant\",\"error_description\":\"AADSTS90002: Tenant not found.\"}");
        goto out;
    }
    if (g.down) {
        reply_json(req, 503, "Service Unavailable", "{\"error\":\"temporarily_unavailable\"}");
        goto out;
    }
    if (meta_v2 || meta_v1)
        serve_metadata(req, tenant, meta_v2, templated);
    else
        serve_jwks(req, tenant, keys_v2, templated);
out:
    if (parsed)
        evhttp_uri_free(parsed);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    event_base_loopbreak(arg);
}

static void usage(void)
{
    fprintf(stderr, "usage: fake_entra --port N --port-file PATH --keys-dir DIR [--tenant GUID ...] [--keys N]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *port_file = NULL;
    int initial_keys = 1;
    g.port = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            usage();
        if (strcmp(a, "--port") == 0)
            g.port = atoi(v);
        else if (strcmp(a, "--port-file") == 0)
            port_file = v;
        else if (strcmp(a, "--keys-dir") == 0)
            g.keys_dir = v;
        else if (strcmp(a, "--tenant") == 0 && g.ntenants < MAX_TENANTS)
            g.tenants[g.ntenants++] = v;
        else if (strcmp(a, "--keys") == 0)
            initial_keys = atoi(v);
        else
            usage();
        i++;
    }
    if (g.port < 0 || g.port > 65535 || !g.keys_dir || initial_keys < 1 || initial_keys > MAX_KEYS)
        usage();
    mkdir(g.keys_dir, 0700);
    for (int i = 0; i < initial_keys; i++)
        if (add_key() != 0) {
            fprintf(stderr, "fake_entra: cannot create a key in %s\n", g.keys_dir);
            return 1;
        }

    signal(SIGPIPE, SIG_IGN);
    struct event_base *base = event_base_new();
    struct evhttp *http = base ? evhttp_new(base) : NULL;
    if (!http)
        return 1;
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST);
    evhttp_set_max_headers_size(http, 16384);
    evhttp_set_max_body_size(http, 4096);
    evhttp_set_timeout(http, 30);
    evhttp_set_gencb(http, on_request, NULL);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(http, "127.0.0.1", (ev_uint16_t)g.port);
    if (!bs) {
        fprintf(stderr, "fake_entra: cannot bind 127.0.0.1:%d\n", g.port);
        return 1;
    }
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sa, &len);
    g.port = ntohs(sa.sin_port);
    snprintf(g.base_url, sizeof g.base_url, "http://127.0.0.1:%d", g.port);
    if (port_file) {
        char buf[32];
        snprintf(buf, sizeof buf, "%d\n", g.port);
        if (write_atomic(port_file, buf) != 0) {
            fprintf(stderr, "fake_entra: cannot write %s\n", port_file);
            return 1;
        }
    }
    struct event *sigterm = evsignal_new(base, SIGTERM, on_signal, base);
    struct event *sigint = evsignal_new(base, SIGINT, on_signal, base);
    event_add(sigterm, NULL);
    event_add(sigint, NULL);
    event_base_dispatch(base);

    event_free(sigterm);
    event_free(sigint);
    evhttp_free(http);
    event_base_free(base);
    for (int i = 0; i < g.nkeys; i++) {
        EVP_PKEY_free(g.keys[i].pkey);
        X509_free(g.keys[i].cert);
        free(g.keys[i].kid);
    }
    return 0;
}
