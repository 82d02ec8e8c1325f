/* Loading, validating and publishing the configuration (see config.h). */
#include "aoai_guard/config.h"

#include <errno.h>
#include <limits.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "aoai_guard/json_strict.h"
#include "aoai_guard/log.h"
#include "aoai_guard/policy.h"

#define MAX_CONFIG_BYTES (4 * 1024 * 1024)

const char *const ag_config_section_names[AG_CONFIG_SECTIONS] = {
    "workers", "listeners", "admin", "limits", "upstreams", "routes", "auth",
    "credential", "rate_limits", "policy", "audit", "log", "shutdown", "content_safety",
};

static const char *const top_keys[] = {
    "workers", "listeners", "admin", "limits", "upstreams", "routes", "auth", "credential",
    "rate_limits", "policy", "audit", "log", "shutdown", "content_safety", NULL,
};

/* ---- TLS contexts ---------------------------------------------------------------------------- */

static void openssl_reason(char *out, size_t len)
{
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, out, len);
    else
        snprintf(out, len, "unknown OpenSSL error");
    ERR_clear_error();
}

static int alpn_select_http11(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                              const unsigned char *in, unsigned int inlen, void *arg)
{
    /* Offer only http/1.1; a client that offers only h2 gets no_application_protocol. */
    for (unsigned int i = 0; i < inlen;) {
        unsigned int l = in[i];
        if (i + 1 + l > inlen)
            break;
        if (l == 8 && memcmp(in + i + 1, "http/1.1", 8) == 0) {
            *out = in + i + 1;
            *outlen = (unsigned char)l;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + l;
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

static SSL_CTX *server_tls_ctx(const ag_tls_conf *t, const char *path, ag_conf_err *err)
{
    char reason[256];
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        openssl_reason(reason, sizeof reason);
        ag_conf_fail(err, path, NULL, "cannot create TLS context: %s", reason);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | /* client renegotiation is off by default in OpenSSL 3 */
                                 SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_max_early_data(ctx, 0);
    /* Idle keep-alive connections give their 34 KB of TLS read/write buffers back. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select_http11, NULL);
    if (SSL_CTX_use_certificate_chain_file(ctx, t->cert_file) != 1) {
        openssl_reason(reason, sizeof reason);
        ag_conf_fail(err, path, "cert_file", "cannot load %s: %s", t->cert_file, reason);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, t->key_file, SSL_FILETYPE_PEM) != 1) {
        openssl_reason(reason, sizeof reason);
        ag_conf_fail(err, path, "key_file", "cannot load %s: %s", t->key_file, reason);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ag_conf_fail(err, path, "key_file", "does not match cert_file");
        goto fail;
    }
    if (t->client_ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, t->client_ca_file, NULL) != 1) {
            openssl_reason(reason, sizeof reason);
            ag_conf_fail(err, path, "client_ca_file", "cannot load %s: %s", t->client_ca_file, reason);
            goto fail;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(t->client_ca_file);
        if (names)
            SSL_CTX_set_client_CA_list(ctx, names);
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

static SSL_CTX *client_tls_ctx(const ag_upstream_conf *u, const char *path, ag_conf_err *err)
{
    char reason[256];
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        openssl_reason(reason, sizeof reason);
        ag_conf_fail(err, path, NULL, "cannot create TLS context: %s", reason);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    static const unsigned char alpn[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn);
    int ok = u->ca_file ? SSL_CTX_load_verify_locations(ctx, u->ca_file, NULL)
                        : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        openssl_reason(reason, sizeof reason);
        ag_conf_fail(err, path, "ca_file", "cannot load trust anchors: %s", reason);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* ---- sections -------------------------------------------------------------------------------- */

static int parse_tls(const cJSON *obj, const char *path, ag_tls_conf **out, ag_conf_err *err)
{
    static const char *const keys[] = {"cert_file", "key_file", "client_ca_file", NULL};
    if (ag_conf_object(obj, path, keys, err))
        return -1;
    ag_tls_conf *t = calloc(1, sizeof *t);
    if (!t)
        return ag_conf_fail(err, path, NULL, "out of memory");
    *out = t;
    if (ag_conf_string(obj, path, "cert_file", true, &t->cert_file, err) ||
        ag_conf_string(obj, path, "key_file", true, &t->key_file, err) ||
        ag_conf_string(obj, path, "client_ca_file", false, &t->client_ca_file, err))
        return -1;
    t->ctx = server_tls_ctx(t, path, err);
    return t->ctx ? 0 : -1;
}

static int parse_listeners(const cJSON *arr, ag_config *cfg, ag_conf_err *err)
{
    if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) == 0)
        return ag_conf_fail(err, "listeners", NULL, "must be a non-empty array");
    cfg->nlisteners = (size_t)cJSON_GetArraySize(arr);
    if (cfg->nlisteners > 16)
        return ag_conf_fail(err, "listeners", NULL, "at most 16 listeners");
    cfg->listeners = calloc(cfg->nlisteners, sizeof *cfg->listeners);
    if (!cfg->listeners)
        return ag_conf_fail(err, "listeners", NULL, "out of memory");
    int i = 0;
    for (const cJSON *l = arr->child; l; l = l->next, i++) {
        static const char *const keys[] = {"address", "port", "tls", NULL};
        char path[AG_CONF_PATH_LEN];
        ag_conf_path(path, sizeof path, "listeners", NULL, i);
        ag_listener_conf *lc = &cfg->listeners[i];
        long long port = -1;
        if (ag_conf_object(l, path, keys, err) ||
            ag_conf_string(l, path, "address", true, &lc->address, err) ||
            ag_conf_int(l, path, "port", 0, 65535, &port, err))
            return -1;
        if (port < 0)
            return ag_conf_fail(err, path, "port", "is required");
        lc->port = (int)port;
        const cJSON *tls = ag_conf_get(l, "tls");
        if (tls) {
            char tpath[AG_CONF_PATH_LEN];
            ag_conf_path(tpath, sizeof tpath, path, "tls", -1);
            if (parse_tls(tls, tpath, &lc->tls, err))
                return -1;
        }
    }
    return 0;
}

static int parse_limits(const cJSON *obj, ag_limits_conf *lim, ag_conf_err *err)
{
    static const char *const keys[] = {
        "max_header_bytes", "max_headers", "max_body_bytes", "header_timeout_ms", "body_timeout_ms",
        "idle_timeout_ms", "send_timeout_ms", "max_connections", "max_requests_per_connection", NULL,
    };
    if (!obj)
        return 0;
    const char *p = "limits";
    if (ag_conf_object(obj, p, keys, err) ||
        ag_conf_int(obj, p, "max_header_bytes", 1024, 1048576, &lim->max_header_bytes, err) ||
        ag_conf_int(obj, p, "max_headers", 8, 1000, &lim->max_headers, err) ||
        ag_conf_int(obj, p, "max_body_bytes", 1024, 256LL * 1024 * 1024, &lim->max_body_bytes, err) ||
        ag_conf_int(obj, p, "header_timeout_ms", 100, 600000, &lim->header_timeout_ms, err) ||
        ag_conf_int(obj, p, "body_timeout_ms", 100, 3600000, &lim->body_timeout_ms, err) ||
        ag_conf_int(obj, p, "idle_timeout_ms", 100, 3600000, &lim->idle_timeout_ms, err) ||
        ag_conf_int(obj, p, "send_timeout_ms", 100, 3600000, &lim->send_timeout_ms, err) ||
        ag_conf_int(obj, p, "max_connections", 1, 1000000, &lim->max_connections, err) ||
        ag_conf_int(obj, p, "max_requests_per_connection", 1, 100000000,
                    &lim->max_requests_per_connection, err))
        return -1;
    return 0;
}

/* Splits "https://host[:port][/]" into parts; rejects paths, queries and userinfo. */
static int parse_upstream_url(ag_upstream_conf *u, const char *path, ag_conf_err *err)
{
    const char *s = u->url;
    const char *rest;
    if (strncmp(s, "https://", 8) == 0) {
        u->tls = true;
        rest = s + 8;
    } else if (strncmp(s, "http://", 7) == 0) {
        u->tls = false;
        rest = s + 7;
    } else {
        return ag_conf_fail(err, path, "url", "must start with https:// (or http:// for tests)");
    }
    size_t hostlen;
    const char *after;
    if (rest[0] == '[') {
        const char *close = strchr(rest, ']');
        if (!close)
            return ag_conf_fail(err, path, "url", "unterminated IPv6 literal");
        u->host = strndup(rest + 1, (size_t)(close - rest - 1));
        hostlen = (size_t)(close - rest + 1);
        after = close + 1;
    } else {
        hostlen = strcspn(rest, ":/?#@");
        u->host = strndup(rest, hostlen);
        after = rest + hostlen;
    }
    if (!u->host || u->host[0] == '\0')
        return ag_conf_fail(err, path, "url", "has no host");
    for (const char *c = u->host; *c; c++)
        if (!(((*c | 32) >= 'a' && (*c | 32) <= 'z') || (*c >= '0' && *c <= '9') || *c == '.' ||
              *c == '-' || *c == ':'))
            return ag_conf_fail(err, path, "url", "host has an invalid character");
    u->port = u->tls ? 443 : 80;
    bool explicit_port = false;
    if (*after == ':') {
        char *end;
        errno = 0;
        long port = strtol(after + 1, &end, 10);
        if (errno || end == after + 1 || port < 1 || port > 65535)
            return ag_conf_fail(err, path, "url", "invalid port");
        u->port = (int)port;
        explicit_port = true;
        after = end;
    }
    if (*after == '@')
        return ag_conf_fail(err, path, "url", "must not contain credentials");
    if (*after != '\0' && strcmp(after, "/") != 0)
        return ag_conf_fail(err, path, "url",
                            "must be the resource endpoint only (no path, query or fragment)");
    bool is_v6 = strchr(u->host, ':') != NULL;
    bool default_port = u->port == (u->tls ? 443 : 80);
    size_t hl = strlen(u->host) + 16;
    u->host_header = malloc(hl);
    if (!u->host_header)
        return ag_conf_fail(err, path, "url", "out of memory");
    if (default_port && !explicit_port)
        snprintf(u->host_header, hl, is_v6 ? "[%s]" : "%s", u->host);
    else
        snprintf(u->host_header, hl, is_v6 ? "[%s]:%d" : "%s:%d", u->host, u->port);
    (void)hostlen;
    return 0;
}

static int parse_upstreams(const cJSON *arr, ag_config *cfg, ag_conf_err *err)
{
    if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) == 0)
        return ag_conf_fail(err, "upstreams", NULL, "must be a non-empty array");
    cfg->nupstreams = (size_t)cJSON_GetArraySize(arr);
    if (cfg->nupstreams > 32)
        return ag_conf_fail(err, "upstreams", NULL, "at most 32 upstreams");
    cfg->upstreams = calloc(cfg->nupstreams, sizeof *cfg->upstreams);
    if (!cfg->upstreams)
        return ag_conf_fail(err, "upstreams", NULL, "out of memory");
    int i = 0;
    for (const cJSON *o = arr->child; o; o = o->next, i++) {
        static const char *const keys[] = {
            "name", "url", "priority", "weight", "auth", "ca_file", "connect_timeout_ms",
            "first_byte_timeout_ms", "idle_timeout_ms", "max_idle_connections",
            "pool_idle_timeout_ms", "circuit_breaker", NULL,
        };
        char path[AG_CONF_PATH_LEN];
        ag_conf_path(path, sizeof path, "upstreams", NULL, i);
        ag_upstream_conf *u = &cfg->upstreams[i];
        long long prio = 1, weight = 1;
        u->connect_timeout_ms = 5000;
        u->first_byte_timeout_ms = 120000;
        u->idle_timeout_ms = 60000;
        u->max_idle_connections = 64;
        u->pool_idle_timeout_ms = 60000;
        u->failure_threshold = 5;
        u->cooldown_ms = 30000;
        if (ag_conf_object(o, path, keys, err) ||
            ag_conf_string(o, path, "name", true, &u->name, err) ||
            ag_conf_string(o, path, "url", true, &u->url, err) ||
            ag_conf_int(o, path, "priority", 0, 1000, &prio, err) ||
            ag_conf_int(o, path, "weight", 1, 1000, &weight, err) ||
            ag_conf_string(o, path, "ca_file", false, &u->ca_file, err) ||
            ag_conf_int(o, path, "connect_timeout_ms", 10, 600000, &u->connect_timeout_ms, err) ||
            ag_conf_int(o, path, "first_byte_timeout_ms", 10, 3600000, &u->first_byte_timeout_ms, err) ||
            ag_conf_int(o, path, "idle_timeout_ms", 10, 3600000, &u->idle_timeout_ms, err) ||
            ag_conf_int(o, path, "max_idle_connections", 0, 10000, &u->max_idle_connections, err) ||
            ag_conf_int(o, path, "pool_idle_timeout_ms", 100, 3600000, &u->pool_idle_timeout_ms, err))
            return -1;
        u->priority = (int)prio;
        u->weight = (int)weight;
        for (int j = 0; j < i; j++)
            if (strcmp(cfg->upstreams[j].name, u->name) == 0)
                return ag_conf_fail(err, path, "name", "duplicate upstream name \"%s\"", u->name);
        const cJSON *cb = ag_conf_get(o, "circuit_breaker");
        if (cb) {
            static const char *const cbkeys[] = {"failure_threshold", "cooldown_ms", NULL};
            char cpath[AG_CONF_PATH_LEN];
            ag_conf_path(cpath, sizeof cpath, path, "circuit_breaker", -1);
            if (ag_conf_object(cb, cpath, cbkeys, err) ||
                ag_conf_int(cb, cpath, "failure_threshold", 1, 1000, &u->failure_threshold, err) ||
                ag_conf_int(cb, cpath, "cooldown_ms", 100, 3600000, &u->cooldown_ms, err))
                return -1;
        }
        if (parse_upstream_url(u, path, err))
            return -1;
        const cJSON *auth = ag_conf_get(o, "auth");
        char apath[AG_CONF_PATH_LEN];
        ag_conf_path(apath, sizeof apath, path, "auth", -1);
        if (!auth)
            return ag_conf_fail(err, path, "auth", "is required (type api_key, entra or passthrough)");
        static const char *const akeys[] = {"type", "api_key", NULL};
        static const char *const types[] = {"api_key", "entra", "passthrough", NULL};
        int type = -1;
        if (ag_conf_object(auth, apath, akeys, err) ||
            ag_conf_enum(auth, apath, "type", types, &type, err) ||
            ag_conf_string(auth, apath, "api_key", false, &u->api_key, err))
            return -1;
        if (type < 0)
            return ag_conf_fail(err, apath, "type", "is required (api_key, entra or passthrough)");
        u->auth = (ag_upstream_auth)type;
        if (u->auth == AG_UPSTREAM_AUTH_API_KEY && (!u->api_key || !u->api_key[0]))
            return ag_conf_fail(err, apath, "api_key", "is required when type is api_key");
        if (u->auth != AG_UPSTREAM_AUTH_API_KEY && u->api_key)
            return ag_conf_fail(err, apath, "api_key", "is only valid when type is api_key");
        if (u->tls) {
            u->ssl_ctx = client_tls_ctx(u, path, err);
            if (!u->ssl_ctx)
                return -1;
        }
    }
    return 0;
}

static int parse_routes(const cJSON *obj, ag_config *cfg, ag_conf_err *err)
{
    static const char *const keys[] = {"allow_paths", "forward_client_ip", NULL};
    if (!obj)
        return 0;
    if (ag_conf_object(obj, "routes", keys, err) ||
        ag_conf_strv(obj, "routes", "allow_paths", &cfg->allow_paths, NULL, err) ||
        ag_conf_bool(obj, "routes", "forward_client_ip", &cfg->forward_client_ip, err))
        return -1;
    for (size_t i = 0; cfg->allow_paths && cfg->allow_paths[i]; i++) {
        const char *ap = cfg->allow_paths[i];
        if (ap[0] != '/' || strstr(ap, "..") || strpbrk(ap, "?#% "))
            return ag_conf_fail(err, "routes", "allow_paths",
                                "entry %zu must be a plain absolute path prefix", i);
    }
    return 0;
}

static int parse_log(const cJSON *obj, ag_config *cfg, ag_conf_err *err)
{
    static const char *const keys[] = {"level", "access_log", NULL};
    static const char *const levels[] = {"debug", "info", "warn", "error", NULL};
    if (!obj)
        return 0;
    return (ag_conf_object(obj, "log", keys, err) ||
            ag_conf_enum(obj, "log", "level", levels, &cfg->log_level, err) ||
            ag_conf_bool(obj, "log", "access_log", &cfg->access_log, err))
               ? -1
               : 0;
}

/* The stage sections, each through its own parser (errors name the exact key). */
static int parse_stage_sections(const cJSON *root, ag_config *cfg, ag_conf_err *err)
{
    if (ag_auth_config_parse(ag_conf_get(root, "auth"), "auth", &cfg->auth, err))
        return -1;
    bool needs_credential = false;
    for (size_t i = 0; i < cfg->nupstreams; i++)
        if (cfg->upstreams[i].auth == AG_UPSTREAM_AUTH_ENTRA)
            needs_credential = true;
    const cJSON *audit = ag_conf_get(root, "audit");
    if (audit) {
        if (ag_audit_config_parse(audit, "audit", &cfg->audit, err))
            return -1;
        cfg->has_audit = true;
        for (size_t i = 0; i < cfg->audit.nsinks; i++)
            if (cfg->audit.sinks[i].type == AG_AUDIT_SINK_AZURE_MONITOR)
                needs_credential = true;
    }
    if (ag_content_safety_config_parse(ag_conf_get(root, "content_safety"), "content_safety",
                                       &cfg->content_safety, err))
        return -1;
    if (cfg->content_safety.use_entra)
        needs_credential = true;
    const cJSON *cred = ag_conf_get(root, "credential");
    if (cred || needs_credential) {
        if (ag_credential_config_parse(cred, "credential", &cfg->credential, err))
            return -1;
        cfg->has_credential = true;
    }
    const cJSON *rl = ag_conf_get(root, "rate_limits");
    if (rl) {
        if (ag_limit_config_parse(rl, "rate_limits", &cfg->rate_limits, err))
            return -1;
        cfg->has_rate_limits = true;
    }
    const cJSON *pol = ag_conf_get(root, "policy");
    if (pol && ag_policy_load(pol, "policy", &cfg->policy, err))
        return -1;
    return 0;
}

static void hash_sections(ag_config *cfg, const cJSON *root)
{
    for (int i = 0; i < AG_CONFIG_SECTIONS; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, ag_config_section_names[i]);
        char *s = v ? cJSON_PrintUnformatted(v) : NULL;
        EVP_Digest(s ? s : "", s ? strlen(s) : 0, cfg->section_sha256[i], NULL, EVP_sha256(), NULL);
        cJSON_free(s);
    }
}

static void free_tls(ag_tls_conf *t)
{
    if (!t)
        return;
    SSL_CTX_free(t->ctx);
    free(t->cert_file);
    free(t->key_file);
    free(t->client_ca_file);
    free(t);
}

static void config_free(ag_config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        free(cfg->listeners[i].address);
        free_tls(cfg->listeners[i].tls);
    }
    free(cfg->listeners);
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        ag_upstream_conf *u = &cfg->upstreams[i];
        free(u->name);
        free(u->url);
        free(u->host);
        free(u->host_header);
        free(u->api_key);
        free(u->ca_file);
        SSL_CTX_free(u->ssl_ctx);
    }
    free(cfg->upstreams);
    ag_conf_strv_free(cfg->allow_paths);
    free(cfg->admin_address);
    free(cfg->source);
    ag_auth_config_free(&cfg->auth);
    if (cfg->has_credential)
        ag_credential_config_free(&cfg->credential);
    if (cfg->has_rate_limits)
        ag_limit_config_clear(&cfg->rate_limits);
    if (cfg->has_audit)
        ag_audit_config_free(&cfg->audit);
    if (cfg->policy)
        ag_policy_free(cfg->policy);
    ag_content_safety_config_free(&cfg->content_safety);
    free(cfg);
}

static long online_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? n : 1;
}

static int parse_root(cJSON *root, ag_config *cfg, ag_conf_err *err)
{
    if (ag_conf_object(root, "", top_keys, err))
        return -1;
    if (ag_conf_expand_env(root, err))
        return -1;
    long long workers = 0;
    if (ag_conf_int(root, "", "workers", 0, 256, &workers, err))
        return -1;
    cfg->workers = workers ? workers : online_cpus();

    const cJSON *listeners = ag_conf_get(root, "listeners");
    if (!listeners)
        return ag_conf_fail(err, "listeners", NULL, "is required");
    if (parse_listeners(listeners, cfg, err))
        return -1;

    const cJSON *admin = ag_conf_get(root, "admin");
    ag_metrics_conf_default(&cfg->metrics);
    if (admin) {
        static const char *const keys[] = {"address", "port", "metrics", NULL};
        long long port = 9901;
        if (ag_conf_object(admin, "admin", keys, err) ||
            ag_conf_string(admin, "admin", "address", true, &cfg->admin_address, err) ||
            ag_conf_int(admin, "admin", "port", 0, 65535, &port, err))
            return -1;
        cfg->admin_port = (int)port;
        const cJSON *m = ag_conf_get(admin, "metrics");
        if (m && ag_metrics_conf_parse(m, "admin.metrics", &cfg->metrics, err))
            return -1;
    }

    cfg->limits = (ag_limits_conf){
        .max_header_bytes = 16384,
        .max_headers = 100,
        .max_body_bytes = 4194304,
        .header_timeout_ms = 10000,
        .body_timeout_ms = 30000,
        .idle_timeout_ms = 60000,
        .send_timeout_ms = 60000,
        .max_connections = 10000,
        .max_requests_per_connection = 10000,
    };
    if (parse_limits(ag_conf_get(root, "limits"), &cfg->limits, err))
        return -1;

    const cJSON *ups = ag_conf_get(root, "upstreams");
    if (!ups)
        return ag_conf_fail(err, "upstreams", NULL, "is required");
    if (parse_upstreams(ups, cfg, err))
        return -1;
    if (parse_routes(ag_conf_get(root, "routes"), cfg, err))
        return -1;

    cfg->log_level = AG_LOG_INFO;
    cfg->access_log = true;
    if (parse_log(ag_conf_get(root, "log"), cfg, err))
        return -1;

    cfg->drain_timeout_ms = 30000;
    const cJSON *shutdown = ag_conf_get(root, "shutdown");
    if (shutdown) {
        static const char *const keys[] = {"drain_timeout_ms", NULL};
        if (ag_conf_object(shutdown, "shutdown", keys, err) ||
            ag_conf_int(shutdown, "shutdown", "drain_timeout_ms", 0, 3600000, &cfg->drain_timeout_ms, err))
            return -1;
    }

    if (parse_stage_sections(root, cfg, err))
        return -1;
    hash_sections(cfg, root);
    return 0;
}

ag_config *ag_config_load_json(const char *json, size_t len, const char *origin, ag_conf_err *err)
{
    static const ag_json_limits limits = {.max_depth = 32, .max_nodes = 100000};
    ag_json_status st;
    size_t off;
    cJSON *root = ag_json_parse_strict(json, len, &limits, &st, &off);
    if (!root) {
        /* Report the line and column so a person can find the mistake. */
        size_t line = 1, col = 1;
        for (size_t i = 0; i < off && i < len; i++) {
            if (json[i] == '\n') {
                line++;
                col = 1;
            } else {
                col++;
            }
        }
        snprintf(err->msg, sizeof err->msg, "%s:%zu:%zu: %s", origin, line, col, ag_json_status_str(st));
        return NULL;
    }
    ag_config *cfg = calloc(1, sizeof *cfg);
    if (!cfg) {
        cJSON_Delete(root);
        snprintf(err->msg, sizeof err->msg, "out of memory");
        return NULL;
    }
    atomic_init(&cfg->refs, 1);
    cfg->source = strdup(origin);
    EVP_Digest(json, len, cfg->sha256, NULL, EVP_sha256(), NULL);
    int rc = parse_root(root, cfg, err);
    cJSON_Delete(root);
    if (rc) {
        config_free(cfg);
        return NULL;
    }
    return cfg;
}

ag_config *ag_config_load_file(const char *path, ag_conf_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err->msg, sizeof err->msg, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(MAX_CONFIG_BYTES + 1);
    size_t n = buf ? fread(buf, 1, MAX_CONFIG_BYTES + 1, f) : 0;
    int rerr = ferror(f);
    fclose(f);
    if (!buf || rerr) {
        free(buf);
        snprintf(err->msg, sizeof err->msg, "%s: cannot read", path);
        return NULL;
    }
    if (n > MAX_CONFIG_BYTES) {
        free(buf);
        snprintf(err->msg, sizeof err->msg, "%s: larger than %d bytes", path, MAX_CONFIG_BYTES);
        return NULL;
    }
    ag_config *cfg = ag_config_load_json(buf, n, path, err);
    free(buf);
    return cfg;
}

ag_config *ag_config_load_defaults(ag_conf_err *err)
{
    const char *endpoint = getenv("AZURE_OPENAI_ENDPOINT");
    char json[2048];
    if (endpoint && endpoint[0]) {
        if (!getenv("AZURE_OPENAI_API_KEY")) {
            snprintf(err->msg, sizeof err->msg,
                     "AZURE_OPENAI_ENDPOINT is set but AZURE_OPENAI_API_KEY is not");
            return NULL;
        }
        snprintf(json, sizeof json,
                 "{\"listeners\":[{\"address\":\"127.0.0.1\",\"port\":8080}],"
                 "\"admin\":{\"address\":\"127.0.0.1\",\"port\":9901},"
                 "\"upstreams\":[{\"name\":\"azure\",\"url\":\"${AZURE_OPENAI_ENDPOINT}\","
                 "\"auth\":{\"type\":\"api_key\",\"api_key\":\"${AZURE_OPENAI_API_KEY}\"}}]}");
    } else {
        snprintf(json, sizeof json,
                 "{\"listeners\":[{\"address\":\"127.0.0.1\",\"port\":8080}],"
                 "\"admin\":{\"address\":\"127.0.0.1\",\"port\":9901},"
                 "\"upstreams\":[{\"name\":\"stand-in\",\"url\":\"http://127.0.0.1:8081\","
                 "\"auth\":{\"type\":\"api_key\",\"api_key\":\"dev-key-not-secret\"}}]}");
    }
    return ag_config_load_json(json, strlen(json), "(embedded defaults)", err);
}

ag_config *ag_config_ref(ag_config *cfg)
{
    atomic_fetch_add_explicit(&cfg->refs, 1, memory_order_relaxed);
    return cfg;
}

void ag_config_unref(ag_config *cfg)
{
    if (cfg && atomic_fetch_sub_explicit(&cfg->refs, 1, memory_order_acq_rel) == 1)
        config_free(cfg);
}

void ag_config_diff(const ag_config *a, const ag_config *b, char *out, size_t outlen)
{
    size_t used = 0;
    out[0] = '\0';
    for (int i = 0; i < AG_CONFIG_SECTIONS; i++) {
        if (memcmp(a->section_sha256[i], b->section_sha256[i], 32) == 0)
            continue;
        int n = snprintf(out + used, outlen - used, "%s%s", used ? "," : "", ag_config_section_names[i]);
        if (n < 0 || (size_t)n >= outlen - used)
            break;
        used += (size_t)n;
    }
}
