/* The "auth" configuration section (see auth_config.h). */
#include "aoai_guard/auth_config.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

void ag_auth_config_init(ag_auth_config *out)
{
    memset(out, 0, sizeof *out);
    out->mode = AG_AUTH_MODE_ENTRA;
    out->clock_skew_s = AG_AUTH_DEFAULT_SKEW_S;
    out->versions = AG_TOKEN_V1 | AG_TOKEN_V2;
    out->algorithms = AG_ALG_RS256;
    out->max_token_bytes = AG_AUTH_DEFAULT_MAX_TOKEN;
    out->token_cache_size = AG_AUTH_DEFAULT_CACHE_SIZE;
    out->jwks_refresh_s = AG_AUTH_DEFAULT_REFRESH_S;
    out->unknown_kid_refetch_s = AG_AUTH_DEFAULT_REFETCH_S;
}

void ag_auth_config_free(ag_auth_config *cfg)
{
    free(cfg->authority_host);
    ag_conf_strv_free(cfg->tenants);
    ag_conf_strv_free(cfg->audiences);
    free(cfg->jwks_uri);
    free(cfg->ca_file);
    for (size_t i = 0; i < cfg->nrules; i++) {
        ag_conf_strv_free(cfg->rules[i].roles);
        ag_conf_strv_free(cfg->rules[i].scopes);
        ag_conf_strv_free(cfg->rules[i].apps);
        ag_conf_strv_free(cfg->rules[i].deployments);
    }
    free(cfg->rules);
    for (size_t i = 0; i < cfg->napi_keys; i++) {
        free(cfg->api_keys[i].name);
        ag_conf_strv_free(cfg->api_keys[i].deployments);
        OPENSSL_cleanse(cfg->api_keys[i].digest, sizeof cfg->api_keys[i].digest);
    }
    free(cfg->api_keys);
    ag_auth_config_init(cfg);
}

unsigned ag_jwt_alg_from_name(const char *name, size_t len)
{
    static const struct {
        const char *name;
        unsigned bit;
    } algs[] = {{"RS256", AG_ALG_RS256}, {"RS384", AG_ALG_RS384}, {"RS512", AG_ALG_RS512},
                {"PS256", AG_ALG_PS256}};
    for (size_t i = 0; i < sizeof algs / sizeof algs[0]; i++)
        if (len == strlen(algs[i].name) && memcmp(name, algs[i].name, len) == 0)
            return algs[i].bit;
    return 0;
}

bool ag_auth_is_guid(const char *s, size_t len)
{
    if (len != 36)
        return false;
    for (size_t i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
        } else if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) {
            return false;
        }
    }
    return true;
}

bool ag_auth_url_allowed(const char *url)
{
    const char *host;
    bool tls;
    if (strncmp(url, "https://", 8) == 0) {
        host = url + 8;
        tls = true;
    } else if (strncmp(url, "http://", 7) == 0) {
        host = url + 7;
        tls = false;
    } else {
        return false;
    }
    for (const char *p = url; *p; p++)
        if (*p == '?' || *p == '#' || *p == '@' || (unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
            return false;
    size_t hl = strcspn(host, ":/");
    if (host[0] == '[')
        hl = strcspn(host, "]") + 1;
    if (hl == 0 || (host[0] == '[' && host[hl - 1] != ']'))
        return false;
    if (tls)
        return true;
    return (hl == 9 && memcmp(host, "127.0.0.1", 9) == 0) || (hl == 9 && memcmp(host, "localhost", 9) == 0) ||
           (hl == 5 && memcmp(host, "[::1]", 5) == 0);
}

/* Lowercases every string of a GUID list and checks its shape; fails naming the element. */
static int guid_list(char **v, const char *path, const char *key, ag_conf_err *err)
{
    for (size_t i = 0; v && v[i]; i++) {
        for (char *p = v[i]; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        if (!ag_auth_is_guid(v[i], strlen(v[i]))) {
            char p[AG_CONF_PATH_LEN];
            ag_conf_path(p, sizeof p, path, key, (int)i);
            return ag_conf_fail(err, p, NULL, "must be a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)");
        }
    }
    return 0;
}

/* Reads an optional non-empty string list whose items are non-empty and have no spaces or controls. */
static int word_list(const cJSON *obj, const char *path, const char *key, bool required, char ***out,
                     size_t *n, ag_conf_err *err)
{
    if (!ag_conf_get(obj, key)) {
        if (required)
            return ag_conf_fail(err, path, key, "is required");
        return 0;
    }
    if (ag_conf_strv(obj, path, key, out, n, err))
        return -1;
    if (*n == 0)
        return ag_conf_fail(err, path, key, "must not be empty");
    for (size_t i = 0; i < *n; i++) {
        const char *s = (*out)[i];
        bool bad = s[0] == '\0';
        for (const char *p = s; *p && !bad; p++)
            bad = (unsigned char)*p <= 0x20 || *p == 0x7f;
        if (bad) {
            char p[AG_CONF_PATH_LEN];
            ag_conf_path(p, sizeof p, path, key, (int)i);
            return ag_conf_fail(err, p, NULL, "must be non-empty, without spaces or control characters");
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp((*out)[j], s) == 0) {
                char p[AG_CONF_PATH_LEN];
                ag_conf_path(p, sizeof p, path, key, (int)i);
                return ag_conf_fail(err, p, NULL, "duplicate value \"%s\"", s);
            }
    }
    return 0;
}

static bool has_star(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        if (strcmp(v[i], "*") == 0)
            return true;
    return false;
}

static int parse_rule(const cJSON *o, const char *path, ag_auth_rule *r, ag_conf_err *err)
{
    static const char *const keys[] = {"roles", "scopes", "apps", "identity_type", "deployments", NULL};
    static const char *const types[] = {"any", "app", "user", NULL};
    int type = AG_IDTYPE_ANY;
    if (ag_conf_object(o, path, keys, err) ||
        word_list(o, path, "roles", false, &r->roles, &r->nroles, err) ||
        word_list(o, path, "scopes", false, &r->scopes, &r->nscopes, err) ||
        word_list(o, path, "apps", false, &r->apps, &r->napps, err) ||
        guid_list(r->apps, path, "apps", err) ||
        ag_conf_enum(o, path, "identity_type", types, &type, err) ||
        word_list(o, path, "deployments", true, &r->deployments, &r->ndeployments, err))
        return -1;
    r->identity_type = (ag_identity_type_req)type;
    r->all_deployments = has_star(r->deployments);
    return 0;
}

static int parse_api_key(const cJSON *o, const char *path, ag_auth_api_key *k, ag_conf_err *err)
{
    static const char *const keys[] = {"name", "key", "deployments", NULL};
    char *secret = NULL;
    if (ag_conf_object(o, path, keys, err) || ag_conf_string(o, path, "name", true, &k->name, err))
        return -1;
    size_t nl = strlen(k->name);
    if (nl >= 256)
        return ag_conf_fail(err, path, "name", "must be at most 255 characters");
    for (const char *p = k->name; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_' && *p != '.')
            return ag_conf_fail(err, path, "name", "may contain only letters, digits, '-', '_' and '.'");
    if (ag_conf_string(o, path, "key", true, &secret, err))
        return -1;
    size_t sl = strlen(secret);
    int rc = 0;
    if (strstr(secret, "${"))
        rc = ag_conf_fail(err, path, "key", "holds an unexpanded ${NAME} reference");
    else if (sl < AG_AUTH_MIN_API_KEY_LEN)
        rc = ag_conf_fail(err, path, "key", "must be at least %d characters", AG_AUTH_MIN_API_KEY_LEN);
    else
        SHA256((const unsigned char *)secret, sl, k->digest);
    OPENSSL_cleanse(secret, sl);
    free(secret);
    if (rc)
        return rc;
    if (word_list(o, path, "deployments", true, &k->deployments, &k->ndeployments, err))
        return -1;
    k->all_deployments = has_star(k->deployments);
    return 0;
}

static int parse_array_of_objects(const cJSON *auth, const char *path, const char *key, size_t max,
                                  size_t *count, ag_conf_err *err)
{
    const cJSON *v = ag_conf_get(auth, key);
    *count = 0;
    if (!v)
        return 0;
    if (!cJSON_IsArray(v))
        return ag_conf_fail(err, path, key, "must be an array of objects");
    size_t n = (size_t)cJSON_GetArraySize(v);
    if (n > max)
        return ag_conf_fail(err, path, key, "at most %zu entries", max);
    *count = n;
    return 0;
}

/* Strips trailing '/' and checks the URL form; path/key name the config key in errors. */
static int normalise_url(char *url, const char *path, const char *key, ag_conf_err *err)
{
    size_t n = strlen(url);
    while (n > 0 && url[n - 1] == '/')
        url[--n] = '\0';
    if (!ag_auth_url_allowed(url))
        return ag_conf_fail(err, path, key,
                            "must be an https:// URL (http:// only to 127.0.0.1, [::1] or localhost), "
                            "without userinfo, query or fragment");
    return 0;
}

static int parse_body(const cJSON *auth, const char *path, ag_auth_config *out, ag_conf_err *err)
{
    static const char *const keys[] = {
        "mode", "authority_host", "tenants", "audiences", "accept_audience_trailing_slash", "jwks_uri",
        "clock_skew_s", "rules", "accepted_token_versions", "algorithms", "max_token_bytes",
        "token_cache_size", "jwks_refresh_s", "unknown_kid_refetch_s", "ca_file", "api_keys", NULL};
    static const char *const modes[] = {"entra", "api_key", "none", NULL};
    int mode = AG_AUTH_MODE_ENTRA;
    if (ag_conf_object(auth, path, keys, err) || ag_conf_enum(auth, path, "mode", modes, &mode, err))
        return -1;
    out->mode = (ag_auth_mode)mode;

    out->authority_host = strdup(AG_AUTH_DEFAULT_AUTHORITY);
    if (!out->authority_host)
        return ag_conf_fail(err, path, NULL, "out of memory");
    if (ag_conf_string(auth, path, "authority_host", false, &out->authority_host, err) ||
        normalise_url(out->authority_host, path, "authority_host", err))
        return -1;
    if (ag_conf_string(auth, path, "jwks_uri", false, &out->jwks_uri, err) ||
        (out->jwks_uri && !ag_auth_url_allowed(out->jwks_uri) &&
         ag_conf_fail(err, path, "jwks_uri", "must be an https:// URL (http:// only to a loopback host)")))
        return -1;
    if (ag_conf_string(auth, path, "ca_file", false, &out->ca_file, err))
        return -1;

    if (ag_conf_strv(auth, path, "tenants", &out->tenants, &out->ntenants, err) ||
        guid_list(out->tenants, path, "tenants", err))
        return -1;
    if (out->ntenants > AG_AUTH_MAX_TENANTS)
        return ag_conf_fail(err, path, "tenants", "at most %d tenants", AG_AUTH_MAX_TENANTS);
    if (ag_conf_get(auth, "audiences") &&
        word_list(auth, path, "audiences", false, &out->audiences, &out->naudiences, err))
        return -1;
    if (out->naudiences > AG_AUTH_MAX_AUDIENCES)
        return ag_conf_fail(err, path, "audiences", "at most %d audiences", AG_AUTH_MAX_AUDIENCES);
    if (ag_conf_bool(auth, path, "accept_audience_trailing_slash", &out->audience_trailing_slash, err) ||
        ag_conf_int(auth, path, "clock_skew_s", 0, AG_AUTH_MAX_SKEW_S, &out->clock_skew_s, err) ||
        ag_conf_int(auth, path, "max_token_bytes", 512, AG_AUTH_MAX_TOKEN_LIMIT, &out->max_token_bytes, err) ||
        ag_conf_int(auth, path, "token_cache_size", 0, 10000000, &out->token_cache_size, err) ||
        ag_conf_int(auth, path, "jwks_refresh_s", 1, 7 * 86400, &out->jwks_refresh_s, err) ||
        ag_conf_int(auth, path, "unknown_kid_refetch_s", 1, 86400, &out->unknown_kid_refetch_s, err))
        return -1;

    char **list = NULL;
    size_t n = 0;
    if (ag_conf_get(auth, "accepted_token_versions")) {
        if (word_list(auth, path, "accepted_token_versions", false, &list, &n, err))
            goto fail_list;
        out->versions = 0;
        for (size_t i = 0; i < n; i++) {
            if (strcmp(list[i], "1.0") == 0)
                out->versions |= AG_TOKEN_V1;
            else if (strcmp(list[i], "2.0") == 0)
                out->versions |= AG_TOKEN_V2;
            else {
                char p[AG_CONF_PATH_LEN];
                ag_conf_path(p, sizeof p, path, "accepted_token_versions", (int)i);
                ag_conf_fail(err, p, NULL, "must be \"1.0\" or \"2.0\"");
                goto fail_list;
            }
        }
        ag_conf_strv_free(list);
        list = NULL;
    }
    if (ag_conf_get(auth, "algorithms")) {
        if (word_list(auth, path, "algorithms", false, &list, &n, err))
            goto fail_list;
        out->algorithms = 0;
        for (size_t i = 0; i < n; i++) {
            unsigned bit = ag_jwt_alg_from_name(list[i], strlen(list[i]));
            if (!bit) {
                char p[AG_CONF_PATH_LEN];
                ag_conf_path(p, sizeof p, path, "algorithms", (int)i);
                ag_conf_fail(err, p, NULL, "must be one of RS256, RS384, RS512, PS256");
                goto fail_list;
            }
            out->algorithms |= bit;
        }
        ag_conf_strv_free(list);
        list = NULL;
    }

    size_t nrules;
    if (parse_array_of_objects(auth, path, "rules", 1000, &nrules, err))
        return -1;
    if (nrules) {
        out->rules = calloc(nrules, sizeof *out->rules);
        if (!out->rules)
            return ag_conf_fail(err, path, "rules", "out of memory");
        int i = 0;
        for (const cJSON *r = ag_conf_get(auth, "rules")->child; r; r = r->next, i++) {
            char p[AG_CONF_PATH_LEN];
            ag_conf_path(p, sizeof p, path, "rules", i);
            out->nrules = (size_t)i + 1;
            if (parse_rule(r, p, &out->rules[i], err))
                return -1;
        }
    }

    size_t nkeys;
    if (parse_array_of_objects(auth, path, "api_keys", 1000, &nkeys, err))
        return -1;
    if (nkeys) {
        out->api_keys = calloc(nkeys, sizeof *out->api_keys);
        if (!out->api_keys)
            return ag_conf_fail(err, path, "api_keys", "out of memory");
        int i = 0;
        for (const cJSON *k = ag_conf_get(auth, "api_keys")->child; k; k = k->next, i++) {
            char p[AG_CONF_PATH_LEN];
            ag_conf_path(p, sizeof p, path, "api_keys", i);
            out->napi_keys = (size_t)i + 1;
            if (parse_api_key(k, p, &out->api_keys[i], err))
                return -1;
            for (int j = 0; j < i; j++) {
                if (strcmp(out->api_keys[j].name, out->api_keys[i].name) == 0)
                    return ag_conf_fail(err, p, "name", "duplicate name \"%s\"", out->api_keys[i].name);
                if (memcmp(out->api_keys[j].digest, out->api_keys[i].digest, 32) == 0)
                    return ag_conf_fail(err, p, "key", "same key as api_keys[%d]", j);
            }
        }
    }

    if (out->mode == AG_AUTH_MODE_ENTRA) {
        if (out->ntenants == 0)
            return ag_conf_fail(err, path, "tenants", "is required (tenant GUIDs) when mode is \"entra\"");
        if (out->naudiences == 0)
            return ag_conf_fail(err, path, "audiences", "is required when mode is \"entra\"");
    }
    if (out->mode == AG_AUTH_MODE_API_KEY && out->napi_keys == 0)
        return ag_conf_fail(err, path, "api_keys", "is required when mode is \"api_key\"");
    return 0;
fail_list:
    ag_conf_strv_free(list);
    return -1;
}

int ag_auth_config_parse(const cJSON *auth, const char *path, ag_auth_config *out, ag_conf_err *err)
{
    ag_auth_config_init(out);
    if (!auth) {
        out->mode = AG_AUTH_MODE_NONE;
        out->authority_host = strdup(AG_AUTH_DEFAULT_AUTHORITY);
        return out->authority_host ? 0 : ag_conf_fail(err, path, NULL, "out of memory");
    }
    if (parse_body(auth, path, out, err) != 0) {
        ag_auth_config_free(out);
        return -1;
    }
    return 0;
}
