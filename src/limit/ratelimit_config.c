/* Parsing and matching of the "rate_limits" section (see ratelimit_config.h). */
#include "aoai_guard/ratelimit_config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *const STORE_TYPES[] = { "memory", "redis", NULL };
static const char *const ON_ERROR[] = { "fail_open", "fail_closed", NULL };
static const char *const PERIODS[] = { "hour", "day", "week", "month", "year", NULL };
static const char *const KEY_FIELDS[] = { "tid", "oid", "app", "name", "deployment", "operation", NULL };
static const char *const OPERATIONS[] = { "chat/completions", "completions", "embeddings", "responses",
                                          "images/generations", "audio/transcriptions",
                                          "audio/translations", "audio/speech", NULL };

void ag_limit_policies_free(ag_limit_policies *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n; i++) {
        ag_limit_policy *q = &p->v[i];
        ag_conf_strv_free(q->tenants);
        ag_conf_strv_free(q->apps);
        ag_conf_strv_free(q->oids);
        ag_conf_strv_free(q->roles);
        ag_conf_strv_free(q->deployments);
        ag_conf_strv_free(q->operations);
    }
    free(p->v);
    free(p);
}

void ag_limit_config_clear(ag_limit_config *c)
{
    ag_limit_store_config *s = &c->store;
    free(s->url);
    free(s->host);
    free(s->username);
    free(s->password);
    free(s->key_prefix);
    ag_limit_policies_free(c->policies);
    memset(c, 0, sizeof *c);
}

/* Decodes %XX escapes of a URL userinfo part into a fresh string. */
static char *pct_decode(const char *s, size_t len)
{
    char *out = malloc(len + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%' && i + 2 < len) {
            char hex[3] = { s[i + 1], s[i + 2], 0 };
            char *end;
            long v = strtol(hex, &end, 16);
            if (*end == '\0' && v > 0) {
                out[o++] = (char)v;
                i += 2;
                continue;
            }
        }
        out[o++] = s[i];
    }
    out[o] = '\0';
    return out;
}

static int parse_port(const char *s, size_t len, int *out)
{
    if (len == 0 || len > 5)
        return -1;
    int v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v < 1 || v > 65535)
        return -1;
    *out = v;
    return 0;
}

/* redis://[[user]:password@]host[:port][/db] */
static int parse_redis_url(ag_limit_store_config *s, const char *path, ag_conf_err *err)
{
    const char *u = s->url;
    if (strncmp(u, "rediss://", 9) == 0)
        return ag_conf_fail(err, path, "url",
                            "TLS (rediss://) is not supported: Debian 12's hiredis 0.14 has no TLS "
                            "support; reach Redis over a private network or a TLS sidecar");
    if (strncmp(u, "redis://", 8) != 0)
        return ag_conf_fail(err, path, "url", "must start with redis://");
    const char *p = u + 8;
    const char *at = strrchr(p, '@');
    const char *slash = strchr(at ? at : p, '/');
    if (at && slash && slash < at)
        return ag_conf_fail(err, path, "url", "malformed");
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon) {
            if (colon > p)
                s->username = pct_decode(p, (size_t)(colon - p));
            s->password = pct_decode(colon + 1, (size_t)(at - colon - 1));
            if ((colon > p && !s->username) || !s->password)
                return ag_conf_fail(err, path, "url", "out of memory");
        } else {
            return ag_conf_fail(err, path, "url", "credentials must be written user:password@ or :password@");
        }
        p = at + 1;
    }
    const char *hend = slash ? slash : p + strlen(p);
    const char *hs = p, *he;
    const char *portp = NULL;
    if (*p == '[') {
        const char *rb = memchr(p, ']', (size_t)(hend - p));
        if (!rb)
            return ag_conf_fail(err, path, "url", "unterminated [IPv6] host");
        hs = p + 1;
        he = rb;
        if (rb + 1 < hend) {
            if (rb[1] != ':')
                return ag_conf_fail(err, path, "url", "malformed host");
            portp = rb + 2;
        }
    } else {
        const char *colon = memchr(p, ':', (size_t)(hend - p));
        he = colon ? colon : hend;
        if (colon)
            portp = colon + 1;
    }
    if (he == hs)
        return ag_conf_fail(err, path, "url", "has no host");
    s->port = 6379;
    if (portp && parse_port(portp, (size_t)(hend - portp), &s->port) != 0)
        return ag_conf_fail(err, path, "url", "port must be 1..65535");
    s->host = strndup(hs, (size_t)(he - hs));
    if (!s->host)
        return ag_conf_fail(err, path, "url", "out of memory");
    s->db = 0;
    if (slash && slash[1]) {
        int db = 0;
        const char *d = slash + 1;
        size_t dl = strlen(d);
        if (dl > 4)
            return ag_conf_fail(err, path, "url", "database must be 0..9999");
        for (size_t i = 0; i < dl; i++) {
            if (d[i] < '0' || d[i] > '9')
                return ag_conf_fail(err, path, "url", "database must be a number");
            db = db * 10 + (d[i] - '0');
        }
        s->db = db;
    }
    return 0;
}

static int parse_store(const cJSON *obj, const char *path, ag_limit_store_config *s, ag_conf_err *err)
{
    static const char *const keys[] = { "type", "max_keys", "shards", "url", "key_prefix", "timeout_ms",
                                        "on_error", "password", "tls", "reconnect_min_ms",
                                        "reconnect_max_ms", NULL };
    if (ag_conf_object(obj, path, keys, err) != 0)
        return -1;
    int type = AG_LIMIT_STORE_MEMORY;
    if (ag_conf_enum(obj, path, "type", STORE_TYPES, &type, err) != 0)
        return -1;
    s->type = (ag_limit_store_type)type;
    if (ag_conf_int(obj, path, "max_keys", 16, 100000000, &s->max_keys, err) != 0 ||
        ag_conf_int(obj, path, "shards", 1, 4096, &s->shards, err) != 0)
        return -1;
    if (s->max_keys < s->shards)
        return ag_conf_fail(err, path, "max_keys", "must be at least shards (%lld)", s->shards);
    if (s->type == AG_LIMIT_STORE_MEMORY) {
        static const char *const redis_only[] = { "url", "key_prefix", "timeout_ms", "on_error", "password",
                                                  "tls", "reconnect_min_ms", "reconnect_max_ms", NULL };
        for (size_t i = 0; redis_only[i]; i++)
            if (cJSON_GetObjectItemCaseSensitive(obj, redis_only[i]))
                return ag_conf_fail(err, path, redis_only[i], "only applies to \"type\": \"redis\"");
        return 0;
    }
    if (ag_conf_string(obj, path, "url", true, &s->url, err) != 0)
        return -1;
    bool tls = false;
    if (ag_conf_bool(obj, path, "tls", &tls, err) != 0)
        return -1;
    if (tls)
        return ag_conf_fail(err, path, "tls",
                            "TLS to Redis is not supported: Debian 12's hiredis 0.14 has no TLS support; "
                            "reach Redis over a private network or a TLS sidecar");
    if (parse_redis_url(s, path, err) != 0)
        return -1;
    char *pw = NULL;
    if (ag_conf_string(obj, path, "password", false, &pw, err) != 0)
        return -1;
    if (pw) {
        if (s->password) {
            free(pw);
            return ag_conf_fail(err, path, "password", "is also given in url: set it in one place");
        }
        s->password = pw;
    }
    if (ag_conf_string(obj, path, "key_prefix", false, &s->key_prefix, err) != 0)
        return -1;
    if (strlen(s->key_prefix) > AG_LIMIT_PREFIX_MAX)
        return ag_conf_fail(err, path, "key_prefix", "must be at most %d bytes", AG_LIMIT_PREFIX_MAX);
    int on_error = AG_LIMIT_FAIL_OPEN;
    if (ag_conf_enum(obj, path, "on_error", ON_ERROR, &on_error, err) != 0)
        return -1;
    s->on_error = (ag_limit_on_error)on_error;
    if (ag_conf_int(obj, path, "timeout_ms", 1, 60000, &s->timeout_ms, err) != 0 ||
        ag_conf_int(obj, path, "reconnect_min_ms", 1, 600000, &s->reconnect_min_ms, err) != 0 ||
        ag_conf_int(obj, path, "reconnect_max_ms", 1, 600000, &s->reconnect_max_ms, err) != 0)
        return -1;
    if (s->reconnect_max_ms < s->reconnect_min_ms)
        return ag_conf_fail(err, path, "reconnect_max_ms", "must be >= reconnect_min_ms");
    return 0;
}

static bool name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > AG_LIMIT_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* Reads a match list; an empty array means "any" and is stored as NULL. */
static int read_list(const cJSON *obj, const char *path, const char *key, char ***out, ag_conf_err *err)
{
    size_t n = 0;
    if (ag_conf_strv(obj, path, key, out, &n, err) != 0)
        return -1;
    for (size_t i = 0; *out && i < n; i++)
        if ((*out)[i][0] == '\0') {
            char p[AG_CONF_PATH_LEN];
            ag_conf_path(p, sizeof p, path, key, (int)i);
            return ag_conf_fail(err, p, NULL, "must not be empty");
        }
    if (*out && n == 0) {
        ag_conf_strv_free(*out);
        *out = NULL;
    }
    return 0;
}

static int parse_policy(const cJSON *obj, const char *path, ag_limit_policy *p, ag_conf_err *err)
{
    static const char *const keys[] = { "name", "match", "key", "requests_per_minute", "tokens_per_minute",
                                        "token_quota", "default_completion_tokens", NULL };
    if (ag_conf_object(obj, path, keys, err) != 0)
        return -1;
    char *name = NULL;
    if (ag_conf_string(obj, path, "name", true, &name, err) != 0)
        return -1;
    if (!name_ok(name)) {
        free(name);
        return ag_conf_fail(err, path, "name", "must be 1..%d characters of A-Z a-z 0-9 . _ -",
                            AG_LIMIT_NAME_MAX);
    }
    snprintf(p->name, sizeof p->name, "%s", name);
    free(name);

    const cJSON *match = ag_conf_get(obj, "match");
    if (match) {
        static const char *const mkeys[] = { "tenants", "apps", "oids", "roles", "deployments", "operations",
                                             NULL };
        char mpath[AG_CONF_PATH_LEN];
        ag_conf_path(mpath, sizeof mpath, path, "match", -1);
        if (ag_conf_object(match, mpath, mkeys, err) != 0 ||
            read_list(match, mpath, "tenants", &p->tenants, err) != 0 ||
            read_list(match, mpath, "apps", &p->apps, err) != 0 ||
            read_list(match, mpath, "oids", &p->oids, err) != 0 ||
            read_list(match, mpath, "roles", &p->roles, err) != 0 ||
            read_list(match, mpath, "deployments", &p->deployments, err) != 0 ||
            read_list(match, mpath, "operations", &p->operations, err) != 0)
            return -1;
        for (size_t i = 0; p->operations && p->operations[i]; i++) {
            bool known = false;
            for (size_t k = 0; OPERATIONS[k]; k++)
                if (strcmp(OPERATIONS[k], p->operations[i]) == 0)
                    known = true;
            if (!known) {
                char op[AG_CONF_PATH_LEN];
                ag_conf_path(op, sizeof op, mpath, "operations", (int)i);
                return ag_conf_fail(err, op, NULL,
                                    "unknown operation \"%s\" (known: chat/completions, completions, "
                                    "embeddings, responses, images/generations, audio/transcriptions, "
                                    "audio/translations, audio/speech)",
                                    p->operations[i]);
            }
        }
    }

    const cJSON *key = ag_conf_get(obj, "key");
    if (key) {
        if (!cJSON_IsArray(key))
            return ag_conf_fail(err, path, "key", "must be an array of field names");
        int i = 0;
        for (const cJSON *f = key->child; f; f = f->next, i++) {
            char kp[AG_CONF_PATH_LEN];
            ag_conf_path(kp, sizeof kp, path, "key", i);
            int which = -1;
            for (int k = 0; cJSON_IsString(f) && KEY_FIELDS[k]; k++)
                if (strcmp(KEY_FIELDS[k], f->valuestring) == 0)
                    which = k;
            if (which < 0)
                return ag_conf_fail(err, kp, NULL, "must be one of tid, oid, app, name, deployment, operation");
            if (p->key_fields & (1u << which))
                return ag_conf_fail(err, kp, NULL, "\"%s\" is listed twice", f->valuestring);
            p->key_fields |= 1u << which;
        }
    }

    if (ag_conf_int(obj, path, "requests_per_minute", 1, AG_LIMIT_MAX_LIMIT, &p->requests_per_minute, err) != 0 ||
        ag_conf_int(obj, path, "tokens_per_minute", 1, AG_LIMIT_MAX_LIMIT, &p->tokens_per_minute, err) != 0)
        return -1;
    p->default_completion_tokens = 1024;
    if (ag_conf_int(obj, path, "default_completion_tokens", 0, 1000000, &p->default_completion_tokens, err) != 0)
        return -1;
    const cJSON *quota = ag_conf_get(obj, "token_quota");
    if (quota) {
        static const char *const qkeys[] = { "period", "tokens", NULL };
        char qpath[AG_CONF_PATH_LEN];
        ag_conf_path(qpath, sizeof qpath, path, "token_quota", -1);
        if (ag_conf_object(quota, qpath, qkeys, err) != 0)
            return -1;
        if (!ag_conf_get(quota, "period"))
            return ag_conf_fail(err, qpath, "period", "is required (hour, day, week, month or year)");
        if (!ag_conf_get(quota, "tokens"))
            return ag_conf_fail(err, qpath, "tokens", "is required");
        int period = 0;
        if (ag_conf_enum(quota, qpath, "period", PERIODS, &period, err) != 0 ||
            ag_conf_int(quota, qpath, "tokens", 1, AG_LIMIT_MAX_LIMIT, &p->quota_tokens, err) != 0)
            return -1;
        p->quota_period = (ag_limit_period)period;
    }
    if (!p->requests_per_minute && !p->tokens_per_minute && !p->quota_tokens)
        return ag_conf_fail(err, path, NULL,
                            "sets no limit: give requests_per_minute, tokens_per_minute or token_quota");
    return 0;
}

int ag_limit_config_parse(const cJSON *section, const char *path, ag_limit_config *out, ag_conf_err *err)
{
    memset(out, 0, sizeof *out);
    ag_limit_store_config *s = &out->store;
    s->type = AG_LIMIT_STORE_MEMORY;
    s->max_keys = 100000;
    s->shards = 64;
    s->timeout_ms = 50;
    s->on_error = AG_LIMIT_FAIL_OPEN;
    s->reconnect_min_ms = 100;
    s->reconnect_max_ms = 5000;
    s->key_prefix = strdup("aoai-guard:rl:");
    out->policies = calloc(1, sizeof *out->policies);
    if (!s->key_prefix || !out->policies) {
        ag_limit_config_clear(out);
        return ag_conf_fail(err, path, NULL, "out of memory");
    }
    if (!section || cJSON_IsNull(section))
        return 0;
    static const char *const keys[] = { "store", "policies", NULL };
    if (ag_conf_object(section, path, keys, err) != 0)
        goto fail;
    const cJSON *store = ag_conf_get(section, "store");
    if (store) {
        char sp[AG_CONF_PATH_LEN];
        ag_conf_path(sp, sizeof sp, path, "store", -1);
        if (parse_store(store, sp, s, err) != 0)
            goto fail;
    }
    const cJSON *pols = ag_conf_get(section, "policies");
    if (pols) {
        if (!cJSON_IsArray(pols)) {
            ag_conf_fail(err, path, "policies", "must be an array");
            goto fail;
        }
        int n = cJSON_GetArraySize(pols);
        if (n > AG_LIMIT_MAX_POLICIES) {
            ag_conf_fail(err, path, "policies", "at most %d policies", AG_LIMIT_MAX_POLICIES);
            goto fail;
        }
        out->policies->v = calloc((size_t)(n ? n : 1), sizeof *out->policies->v);
        if (!out->policies->v) {
            ag_conf_fail(err, path, "policies", "out of memory");
            goto fail;
        }
        int i = 0;
        for (const cJSON *p = pols->child; p; p = p->next, i++) {
            char pp[AG_CONF_PATH_LEN];
            ag_conf_path(pp, sizeof pp, path, "policies", i);
            out->policies->n = (size_t)i + 1; /* so that clear frees a partly parsed policy */
            if (parse_policy(p, pp, &out->policies->v[i], err) != 0)
                goto fail;
            for (int k = 0; k < i; k++)
                if (strcmp(out->policies->v[k].name, out->policies->v[i].name) == 0) {
                    ag_conf_fail(err, pp, "name", "\"%s\" is already used by policies[%d]",
                                 out->policies->v[i].name, k);
                    goto fail;
                }
        }
    }
    return 0;
fail:
    ag_limit_config_clear(out);
    return -1;
}

static bool str_same(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

bool ag_limit_store_config_same(const ag_limit_store_config *a, const ag_limit_store_config *b)
{
    return a->type == b->type && a->max_keys == b->max_keys && a->shards == b->shards &&
           str_same(a->host, b->host) && a->port == b->port && a->db == b->db &&
           str_same(a->username, b->username) && str_same(a->password, b->password) &&
           str_same(a->key_prefix, b->key_prefix) && a->timeout_ms == b->timeout_ms &&
           a->on_error == b->on_error && a->reconnect_min_ms == b->reconnect_min_ms &&
           a->reconnect_max_ms == b->reconnect_max_ms;
}

static bool list_fits(char **list, const char *value, bool nocase)
{
    if (!list)
        return true;
    if (!value)
        value = "";
    for (char **p = list; *p; p++)
        if (nocase ? strcasecmp(*p, value) == 0 : strcmp(*p, value) == 0)
            return true;
    return false;
}

static bool roles_fit(char **list, const char *roles)
{
    if (!list)
        return true;
    for (char **p = list; *p; p++)
        if (ag_identity_list_has(roles, *p))
            return true;
    return false;
}

bool ag_limit_policy_matches(const ag_limit_policy *p, const ag_identity *id, const char *deployment,
                             const char *operation)
{
    return list_fits(p->tenants, id->tid, true) && list_fits(p->apps, id->app, true) &&
           list_fits(p->oids, id->oid, true) && roles_fit(p->roles, id->roles) &&
           list_fits(p->deployments, deployment, true) && list_fits(p->operations, operation, false);
}
