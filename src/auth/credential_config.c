/* The `credential` config section, and its resolution with the environment into one token source. */
#include "aoai_guard/credential.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SECTION "credential"
#define DEFAULT_AUTHORITY "https://login.microsoftonline.com/"
#define DEFAULT_IMDS "http://169.254.169.254"

static const char *const g_keys[] = {
    "type", "tenant_id", "client_id", "client_secret", "federated_token_file", "authority_host",
    "imds_endpoint", "identity_endpoint", "identity_header", "managed_identity_client_id",
    "managed_identity_object_id", "managed_identity_resource_id", "refresh_before_s", "timeout_ms",
    "ca_file", NULL,
};
/* Same order as ag_credential_type. */
static const char *const g_types[] = { "default", "workload_identity", "managed_identity", "client_secret",
                                       NULL };

static void wipe_free(char *s)
{
    if (s) {
        OPENSSL_cleanse(s, strlen(s));
        free(s);
    }
}

void ag_credential_config_free(ag_credential_config *c)
{
    if (!c)
        return;
    free(c->tenant_id);
    free(c->client_id);
    wipe_free(c->client_secret);
    free(c->federated_token_file);
    free(c->authority_host);
    free(c->imds_endpoint);
    free(c->identity_endpoint);
    wipe_free(c->identity_header);
    free(c->managed_identity_client_id);
    free(c->managed_identity_object_id);
    free(c->managed_identity_resource_id);
    free(c->ca_file);
    memset(c, 0, sizeof(*c));
}

static bool has_prefix_ci(const char *s, const char *p)
{
    return strncasecmp(s, p, strlen(p)) == 0;
}

/* Host part right after "scheme://" is a loopback address. */
static bool is_loopback_host(const char *h)
{
    static const char *const names[] = { "127.", "localhost", "[::1]", NULL };
    for (int i = 0; names[i]; i++) {
        size_t n = strlen(names[i]);
        if (strncasecmp(h, names[i], n) == 0) {
            if (names[i][n - 1] == '.')
                return true; /* 127.x.y.z */
            char c = h[n];
            if (c == '\0' || c == ':' || c == '/')
                return true;
        }
    }
    return false;
}

static bool printable_no_space(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
            return false;
    return true;
}

/* An http(s) URL without spaces or control characters; https required unless loopback_http_ok and
 * the host is loopback, or any_http_ok. */
static int check_url(const char *v, const char *key, bool any_http_ok, ag_conf_err *err, const char *origin)
{
    if (!printable_no_space(v))
        return ag_conf_fail(err, SECTION, key, "%smust not contain spaces or control characters", origin);
    if (has_prefix_ci(v, "https://") && v[8])
        return 0;
    if (has_prefix_ci(v, "http://") && v[7]) {
        if (any_http_ok || is_loopback_host(v + 7))
            return 0;
        return ag_conf_fail(err, SECTION, key, "%smust use https (http is allowed only to 127.0.0.1/localhost)",
                            origin);
    }
    return ag_conf_fail(err, SECTION, key, "%smust be an http(s) URL", origin);
}

static int read_str(const cJSON *obj, const char *path, const char *key, char **out, ag_conf_err *err)
{
    if (ag_conf_string(obj, path, key, false, out, err) != 0)
        return -1;
    if (*out && (*out)[0] == '\0')
        return ag_conf_fail(err, path, key, "must not be empty");
    return 0;
}

int ag_credential_config_parse(const cJSON *obj, const char *path, ag_credential_config *out,
                               ag_conf_err *err)
{
    memset(out, 0, sizeof(*out));
    out->type = AG_CRED_DEFAULT;
    out->refresh_before_s = 300;
    out->timeout_ms = 10000;
    if (!obj || cJSON_IsNull(obj))
        return 0;
    if (ag_conf_object(obj, path, g_keys, err) != 0)
        return -1;
    int type = AG_CRED_DEFAULT;
    if (ag_conf_enum(obj, path, "type", g_types, &type, err) != 0)
        goto fail;
    out->type = (ag_credential_type)type;
    if (read_str(obj, path, "tenant_id", &out->tenant_id, err) ||
        read_str(obj, path, "client_id", &out->client_id, err) ||
        read_str(obj, path, "client_secret", &out->client_secret, err) ||
        read_str(obj, path, "federated_token_file", &out->federated_token_file, err) ||
        read_str(obj, path, "authority_host", &out->authority_host, err) ||
        read_str(obj, path, "imds_endpoint", &out->imds_endpoint, err) ||
        read_str(obj, path, "identity_endpoint", &out->identity_endpoint, err) ||
        read_str(obj, path, "identity_header", &out->identity_header, err) ||
        read_str(obj, path, "managed_identity_client_id", &out->managed_identity_client_id, err) ||
        read_str(obj, path, "managed_identity_object_id", &out->managed_identity_object_id, err) ||
        read_str(obj, path, "managed_identity_resource_id", &out->managed_identity_resource_id, err) ||
        read_str(obj, path, "ca_file", &out->ca_file, err) ||
        ag_conf_int(obj, path, "refresh_before_s", 1, 86400, &out->refresh_before_s, err) ||
        ag_conf_int(obj, path, "timeout_ms", 100, 120000, &out->timeout_ms, err))
        goto fail;
    /* Shape checks that need no environment; resolve() repeats them for env-provided values. */
    if (out->authority_host && !strstr(out->authority_host, "://")) {
        /* host name only: https is implied */
    } else if (out->authority_host && check_url(out->authority_host, "authority_host", false, err, "") != 0) {
        goto fail;
    }
    if (out->imds_endpoint && check_url(out->imds_endpoint, "imds_endpoint", true, err, "") != 0)
        goto fail;
    if (out->identity_endpoint && check_url(out->identity_endpoint, "identity_endpoint", true, err, "") != 0)
        goto fail;
    int nmi = !!out->managed_identity_client_id + !!out->managed_identity_object_id +
              !!out->managed_identity_resource_id;
    if (nmi > 1) {
        ag_conf_fail(err, path, "managed_identity_client_id",
                     "set at most one of managed_identity_client_id, managed_identity_object_id, "
                     "managed_identity_resource_id");
        goto fail;
    }
    if (out->type == AG_CRED_CLIENT_SECRET && (out->federated_token_file || nmi)) {
        ag_conf_fail(err, path, out->federated_token_file ? "federated_token_file" : "managed_identity_client_id",
                     "not used with type client_secret");
        goto fail;
    }
    if (out->type == AG_CRED_WORKLOAD_IDENTITY && (out->client_secret || nmi)) {
        ag_conf_fail(err, path, out->client_secret ? "client_secret" : "managed_identity_client_id",
                     "not used with type workload_identity");
        goto fail;
    }
    if (out->type == AG_CRED_MANAGED_IDENTITY && (out->client_secret || out->federated_token_file)) {
        ag_conf_fail(err, path, out->client_secret ? "client_secret" : "federated_token_file",
                     "not used with type managed_identity");
        goto fail;
    }
    return 0;
fail:
    ag_credential_config_free(out);
    return -1;
}

/* ---- resolution ---- */

static const char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return (v && *v) ? v : NULL;
}

/* Config value, else the environment variable. */
static const char *pick(const char *cfg, const char *env)
{
    return cfg ? cfg : env_nonempty(env);
}

void ag_credential_settings_free(ag_credential_settings *s)
{
    if (!s)
        return;
    free(s->tenant_id);
    free(s->client_id);
    wipe_free(s->client_secret);
    free(s->federated_token_file);
    free(s->token_url);
    free(s->imds_endpoint);
    free(s->identity_endpoint);
    wipe_free(s->identity_header);
    free(s->mi_id_value);
    free(s->ca_file);
    memset(s, 0, sizeof(*s));
}

static int dup_into(char **dst, const char *src, ag_conf_err *err)
{
    if (!src)
        return 0;
    *dst = strdup(src);
    if (!*dst)
        return ag_conf_fail(err, SECTION, NULL, "out of memory");
    return 0;
}

static int require(const char *val, const char *key, const char *env, const char *type, ag_conf_err *err)
{
    if (val)
        return 0;
    return ag_conf_fail(err, SECTION, key, "required for type %s (set it or the environment variable %s)",
                        type, env);
}

/* Tenant: a GUID or domain name; it becomes a URL path segment. */
static int check_tenant(const char *t, ag_conf_err *err)
{
    size_t n = strlen(t);
    bool ok = n > 0 && n <= 128;
    for (size_t i = 0; ok && i < n; i++) {
        char c = t[i];
        ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
             c == '.' || c == '_';
    }
    if (!ok || strcmp(t, ".") == 0 || strcmp(t, "..") == 0)
        return ag_conf_fail(err, SECTION, "tenant_id", "must be a tenant GUID or domain name");
    return 0;
}

static int build_token_url(ag_credential_settings *s, const char *authority, const char *origin,
                           ag_conf_err *err)
{
    const char *scheme = NULL;
    if (!strstr(authority, "://"))
        scheme = "https://";
    size_t n = strlen(authority);
    const char *slash = (n && authority[n - 1] == '/') ? "" : "/";
    char probe[1024];
    snprintf(probe, sizeof(probe), "%s%s", scheme ? scheme : "", authority);
    if (check_url(probe, "authority_host", false, err, origin) != 0)
        return -1;
    size_t len = strlen(probe) + 1 + strlen(s->tenant_id) + sizeof("/oauth2/v2.0/token");
    s->token_url = malloc(len);
    if (!s->token_url)
        return ag_conf_fail(err, SECTION, NULL, "out of memory");
    snprintf(s->token_url, len, "%s%s%s/oauth2/v2.0/token", probe, slash, s->tenant_id);
    return 0;
}

int ag_credential_resolve(const ag_credential_config *cfg, ag_credential_settings *out, ag_conf_err *err)
{
    memset(out, 0, sizeof(*out));
    const char *tenant = pick(cfg->tenant_id, "AZURE_TENANT_ID");
    const char *client = pick(cfg->client_id, "AZURE_CLIENT_ID");
    const char *secret = pick(cfg->client_secret, "AZURE_CLIENT_SECRET");
    const char *tfile = pick(cfg->federated_token_file, "AZURE_FEDERATED_TOKEN_FILE");
    const char *authority = pick(cfg->authority_host, "AZURE_AUTHORITY_HOST");
    const char *authority_origin = cfg->authority_host ? ""
                                   : env_nonempty("AZURE_AUTHORITY_HOST") ? "(from AZURE_AUTHORITY_HOST) "
                                                                          : "";
    if (!authority)
        authority = DEFAULT_AUTHORITY;
    const char *id_ep = pick(cfg->identity_endpoint, "IDENTITY_ENDPOINT");
    const char *id_hdr = pick(cfg->identity_header, "IDENTITY_HEADER");

    ag_credential_type type = cfg->type;
    const char *tname = g_types[type];
    ag_credential_source src;
    if (type == AG_CRED_CLIENT_SECRET) {
        src = AG_CRED_SRC_CLIENT_SECRET;
    } else if (type == AG_CRED_WORKLOAD_IDENTITY) {
        src = AG_CRED_SRC_WORKLOAD_IDENTITY;
    } else if (type == AG_CRED_MANAGED_IDENTITY) {
        src = AG_CRED_SRC_IMDS;
    } else if (tenant && client && secret) {
        src = AG_CRED_SRC_CLIENT_SECRET;       /* EnvironmentCredential */
    } else if (tenant && client && tfile) {
        src = AG_CRED_SRC_WORKLOAD_IDENTITY;   /* WorkloadIdentityCredential */
    } else {
        src = AG_CRED_SRC_IMDS;                /* ManagedIdentityCredential */
    }
    if (src == AG_CRED_SRC_IMDS && id_ep && id_hdr)
        src = AG_CRED_SRC_APP_SERVICE;
    out->source = src;
    out->refresh_before_s = cfg->refresh_before_s > 0 ? cfg->refresh_before_s : 300;
    out->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 10000;
    if (dup_into(&out->ca_file, cfg->ca_file, err))
        goto fail;

    if (src == AG_CRED_SRC_CLIENT_SECRET || src == AG_CRED_SRC_WORKLOAD_IDENTITY) {
        if (require(tenant, "tenant_id", "AZURE_TENANT_ID", tname, err) ||
            require(client, "client_id", "AZURE_CLIENT_ID", tname, err))
            goto fail;
        if (src == AG_CRED_SRC_CLIENT_SECRET &&
            require(secret, "client_secret", "AZURE_CLIENT_SECRET", tname, err))
            goto fail;
        if (src == AG_CRED_SRC_WORKLOAD_IDENTITY &&
            require(tfile, "federated_token_file", "AZURE_FEDERATED_TOKEN_FILE", tname, err))
            goto fail;
        if (check_tenant(tenant, err))
            goto fail;
        if (!printable_no_space(client) || strlen(client) > 128) {
            ag_conf_fail(err, SECTION, "client_id", "must be an application (client) id");
            goto fail;
        }
        if (dup_into(&out->tenant_id, tenant, err) || dup_into(&out->client_id, client, err))
            goto fail;
        if (src == AG_CRED_SRC_CLIENT_SECRET && dup_into(&out->client_secret, secret, err))
            goto fail;
        if (src == AG_CRED_SRC_WORKLOAD_IDENTITY && dup_into(&out->federated_token_file, tfile, err))
            goto fail;
        if (build_token_url(out, authority, authority_origin, err))
            goto fail;
        return 0;
    }

    /* Managed identity: which user-assigned identity, if any. */
    const char *mi_client = cfg->managed_identity_client_id;
    if (!mi_client && !cfg->managed_identity_object_id && !cfg->managed_identity_resource_id)
        /* DefaultAzureCredential passes AZURE_CLIENT_ID to ManagedIdentityCredential; an explicit
         * managed_identity type takes only a configured client_id */
        mi_client = type == AG_CRED_DEFAULT ? client : cfg->client_id;
    bool appsvc = src == AG_CRED_SRC_APP_SERVICE;
    if (mi_client) {
        out->mi_id_param = "client_id";
        if (dup_into(&out->mi_id_value, mi_client, err))
            goto fail;
    } else if (cfg->managed_identity_object_id) {
        out->mi_id_param = appsvc ? "principal_id" : "object_id";
        if (dup_into(&out->mi_id_value, cfg->managed_identity_object_id, err))
            goto fail;
    } else if (cfg->managed_identity_resource_id) {
        out->mi_id_param = appsvc ? "mi_res_id" : "msi_res_id";
        if (dup_into(&out->mi_id_value, cfg->managed_identity_resource_id, err))
            goto fail;
    }
    if (appsvc) {
        const char *origin = cfg->identity_endpoint ? "" : "(from IDENTITY_ENDPOINT) ";
        if (check_url(id_ep, "identity_endpoint", true, err, origin))
            goto fail;
        if (!printable_no_space(id_hdr)) {
            ag_conf_fail(err, SECTION, "identity_header", "must not contain spaces or control characters");
            goto fail;
        }
        if (dup_into(&out->identity_endpoint, id_ep, err) || dup_into(&out->identity_header, id_hdr, err))
            goto fail;
        return 0;
    }
    if (cfg->identity_endpoint && !id_hdr) {
        ag_conf_fail(err, SECTION, "identity_header",
                     "required with identity_endpoint (set it or the environment variable IDENTITY_HEADER)");
        goto fail;
    }
    const char *imds = cfg->imds_endpoint ? cfg->imds_endpoint : DEFAULT_IMDS;
    if (check_url(imds, "imds_endpoint", true, err, ""))
        goto fail;
    if (dup_into(&out->imds_endpoint, imds, err))
        goto fail;
    size_t n = strlen(out->imds_endpoint);
    while (n > 0 && out->imds_endpoint[n - 1] == '/')
        out->imds_endpoint[--n] = '\0';
    return 0;
fail:
    ag_credential_settings_free(out);
    return -1;
}
