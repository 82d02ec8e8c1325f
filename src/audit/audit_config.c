/* Parsing of the "audit" configuration section (see audit_config.h). */
#include "aoai_guard/audit_config.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "aoai_guard/audit_batch.h"
#include "aoai_guard/identity.h"

#define MIB (1024LL * 1024)

static const char *const top_keys[] = {"sinks", "spool_dir", "capture", "max_text_bytes_per_request",
                                       "queue_capacity", "spool_max_bytes", "spool_segment_bytes",
                                       "on_full", "fsync", "capture_rules", NULL};
static const char *const file_keys[] = {"type", "name", "path", "max_bytes", "max_files", NULL};
static const char *const stdout_keys[] = {"type", "name", NULL};
static const char *const monitor_keys[] = {"type", "name", "endpoint", "dcr_immutable_id", "stream",
                                           "batch_max_bytes", "max_calls_per_minute", "dead_letter_path",
                                           "ca_file", "timeout_ms", "retry_initial_ms", "retry_max_ms",
                                           NULL};
static const char *const sink_types[] = {"file", "stdout", "azure_monitor", NULL};
/* index + 1 == ag_audit_capture */
static const char *const capture_names[] = {"full", "redacted", "hashed", "off", NULL};
static const char *const on_full_names[] = {"reject", "drop_oldest", NULL};

static void sink_free(ag_audit_sink_conf *s)
{
    free(s->name);
    free(s->path);
    free(s->endpoint);
    free(s->dcr_immutable_id);
    free(s->stream);
    free(s->dead_letter_path);
    free(s->ca_file);
    memset(s, 0, sizeof *s);
}

static void capture_rules_free(ag_audit_capture_rule *r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        ag_conf_strv_free(r[i].tenants);
        ag_conf_strv_free(r[i].apps);
        ag_conf_strv_free(r[i].roles);
        ag_conf_strv_free(r[i].deployments);
    }
    free(r);
}

static int parse_capture_rules(const cJSON *arr, const char *path, ag_audit_config *c, ag_conf_err *err)
{
    char p[AG_CONF_PATH_LEN];
    ag_conf_path(p, sizeof p, path, "capture_rules", -1);
    if (!cJSON_IsArray(arr))
        return ag_conf_fail(err, p, NULL, "must be an array");
    size_t n = (size_t)cJSON_GetArraySize(arr);
    c->capture_rules = calloc(n ? n : 1, sizeof *c->capture_rules);
    if (!c->capture_rules)
        return ag_conf_fail(err, p, NULL, "out of memory");
    c->ncapture_rules = n;
    static const char *const keys[] = {"scope", "capture", NULL};
    static const char *const scope_keys[] = {"tenants", "apps", "roles", "deployments", NULL};
    int i = 0;
    for (const cJSON *r = arr->child; r; r = r->next, i++) {
        char rp[AG_CONF_PATH_LEN], sp[AG_CONF_PATH_LEN];
        ag_conf_path(rp, sizeof rp, p, NULL, i);
        ag_audit_capture_rule *cr = &c->capture_rules[i];
        int idx = -1;
        if (ag_conf_object(r, rp, keys, err) || ag_conf_enum(r, rp, "capture", capture_names, &idx, err))
            return -1;
        if (idx < 0)
            return ag_conf_fail(err, rp, "capture", "is required (full, redacted, hashed or off)");
        cr->capture = (ag_audit_capture)(idx + 1);
        const cJSON *scope = ag_conf_get(r, "scope");
        ag_conf_path(sp, sizeof sp, rp, "scope", -1);
        if (!scope)
            return ag_conf_fail(err, rp, "scope", "is required");
        if (ag_conf_object(scope, sp, scope_keys, err) ||
            ag_conf_strv(scope, sp, "tenants", &cr->tenants, NULL, err) ||
            ag_conf_strv(scope, sp, "apps", &cr->apps, NULL, err) ||
            ag_conf_strv(scope, sp, "roles", &cr->roles, NULL, err) ||
            ag_conf_strv(scope, sp, "deployments", &cr->deployments, NULL, err))
            return -1;
    }
    return 0;
}

/* Case-insensitive; a trailing '*' matches by prefix; an empty or absent list matches anyone. */
static bool list_fits(char **list, const char *value)
{
    if (!list || !list[0])
        return true;
    for (size_t i = 0; list[i]; i++) {
        size_t n = strlen(list[i]);
        if (n && list[i][n - 1] == '*' ? strncasecmp(list[i], value, n - 1) == 0
                                        : strcasecmp(list[i], value) == 0)
            return true;
    }
    return false;
}

static bool roles_fit(char **list, const char *roles)
{
    if (!list || !list[0])
        return true;
    for (size_t i = 0; list[i]; i++)
        if (ag_identity_list_has(roles, list[i]))
            return true;
    return false;
}

ag_audit_capture ag_audit_capture_for(const ag_audit_config *c, const char *tid, const char *app,
                                      const char *roles, const char *deployment)
{
    for (size_t i = 0; i < c->ncapture_rules; i++) {
        const ag_audit_capture_rule *r = &c->capture_rules[i];
        if (list_fits(r->tenants, tid) && list_fits(r->apps, app) && roles_fit(r->roles, roles) &&
            list_fits(r->deployments, deployment))
            return r->capture;
    }
    return c->capture;
}

void ag_audit_config_free(ag_audit_config *c)
{
    capture_rules_free(c->capture_rules, c->ncapture_rules);
    for (size_t i = 0; i < c->nsinks; i++)
        sink_free(&c->sinks[i]);
    free(c->sinks);
    free(c->spool_dir);
    memset(c, 0, sizeof *c);
}

static void set_defaults(ag_audit_config *c)
{
    memset(c, 0, sizeof *c);
    c->capture = AG_CAPTURE_FULL;
    c->max_text_bytes_per_request = MIB;
    c->queue_capacity = 16384;
    c->spool_max_bytes = 1024 * MIB;
    c->on_full = AG_AUDIT_ON_FULL_REJECT;
    c->fsync_interval_ms = 0;
}

static void sink_defaults(ag_audit_sink_conf *s)
{
    s->max_bytes = 100 * MIB;
    s->max_files = 5;
    s->batch_max_bytes = 1000000;
    s->max_calls_per_minute = 12000;
    s->timeout_ms = 30000;
    s->retry_initial_ms = 1000;
    s->retry_max_ms = 60000;
}

static char *xstrdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

static bool only_chars(const char *s, const char *extra)
{
    if (!s[0])
        return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  strchr(extra, c) != NULL;
        if (!ok)
            return false;
    }
    return true;
}

/* https://host[:port][/path], or http:// to a loopback host only; the trailing slash is removed. */
static int check_endpoint(ag_audit_sink_conf *s, const char *path, ag_conf_err *err)
{
    CURLU *u = curl_url();
    if (!u)
        return ag_conf_fail(err, path, "endpoint", "out of memory");
    char *scheme = NULL, *host = NULL, *query = NULL, *user = NULL;
    int rc = 0;
    if (curl_url_set(u, CURLUPART_URL, s->endpoint, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
        rc = ag_conf_fail(err, path, "endpoint", "must be an absolute http(s) URL");
        goto out;
    }
    curl_url_get(u, CURLUPART_QUERY, &query, 0);
    curl_url_get(u, CURLUPART_USER, &user, 0);
    if (query || user) {
        rc = ag_conf_fail(err, path, "endpoint", "must not carry a query or user information");
        goto out;
    }
    bool loopback = strcmp(host, "127.0.0.1") == 0 || strcmp(host, "localhost") == 0 ||
                    strcmp(host, "[::1]") == 0;
    if (strcmp(scheme, "https") != 0 && !(strcmp(scheme, "http") == 0 && loopback)) {
        rc = ag_conf_fail(err, path, "endpoint", "must use https (http is allowed to loopback only)");
        goto out;
    }
    size_t n = strlen(s->endpoint);
    while (n > 0 && s->endpoint[n - 1] == '/')
        s->endpoint[--n] = '\0';
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(query);
    curl_free(user);
    curl_url_cleanup(u);
    return rc;
}

static int parse_sink(const cJSON *obj, const char *path, ag_audit_sink_conf *s, ag_conf_err *err)
{
    sink_defaults(s);
    if (!cJSON_IsObject(obj))
        return ag_conf_fail(err, path, NULL, "must be a JSON object");
    int type = -1;
    if (!ag_conf_get(obj, "type"))
        return ag_conf_fail(err, path, "type", "is required (file, stdout or azure_monitor)");
    if (ag_conf_enum(obj, path, "type", sink_types, &type, err) != 0)
        return -1;
    s->type = (ag_audit_sink_type)type;
    const char *const *allowed = type == AG_AUDIT_SINK_FILE     ? file_keys
                                 : type == AG_AUDIT_SINK_STDOUT ? stdout_keys
                                                                : monitor_keys;
    if (ag_conf_object(obj, path, allowed, err) != 0)
        return -1;
    if (ag_conf_string(obj, path, "name", false, &s->name, err) != 0)
        return -1;
    if (s->name && !only_chars(s->name, "_-."))
        return ag_conf_fail(err, path, "name", "must be letters, digits, '_', '-' or '.'");
    if (s->name && (strcmp(s->name, ".") == 0 || strcmp(s->name, "..") == 0))
        return ag_conf_fail(err, path, "name", "must not be . or ..");
    switch (s->type) {
    case AG_AUDIT_SINK_FILE:
        if (ag_conf_string(obj, path, "path", true, &s->path, err) != 0 ||
            ag_conf_int(obj, path, "max_bytes", 0, 1LL << 50, &s->max_bytes, err) != 0 ||
            ag_conf_int(obj, path, "max_files", 0, 1000, &s->max_files, err) != 0)
            return -1;
        if (s->max_bytes > 0 && s->max_bytes < 4096)
            return ag_conf_fail(err, path, "max_bytes", "must be 0 (no rotation) or at least 4096");
        break;
    case AG_AUDIT_SINK_STDOUT:
        break;
    case AG_AUDIT_SINK_AZURE_MONITOR:
        if (ag_conf_string(obj, path, "endpoint", true, &s->endpoint, err) != 0 ||
            check_endpoint(s, path, err) != 0)
            return -1;
        if (ag_conf_string(obj, path, "dcr_immutable_id", true, &s->dcr_immutable_id, err) != 0)
            return -1;
        if (!only_chars(s->dcr_immutable_id, "-") || strlen(s->dcr_immutable_id) > 128)
            return ag_conf_fail(err, path, "dcr_immutable_id",
                                "must be the DCR's immutableId (dcr-<32 hex>): letters, digits, '-'");
        if (ag_conf_string(obj, path, "stream", true, &s->stream, err) != 0)
            return -1;
        if (!only_chars(s->stream, "-_") || strlen(s->stream) > 128)
            return ag_conf_fail(err, path, "stream",
                                "must be a stream name such as Custom-AoaiGuardAudit: letters, digits, "
                                "'-', '_'");
        if (ag_conf_int(obj, path, "batch_max_bytes", 4096, (long long)AG_MONITOR_MAX_CALL_BYTES,
                        &s->batch_max_bytes, err) != 0 ||
            ag_conf_int(obj, path, "max_calls_per_minute", 1, 12000, &s->max_calls_per_minute, err) != 0 ||
            ag_conf_string(obj, path, "dead_letter_path", false, &s->dead_letter_path, err) != 0 ||
            ag_conf_string(obj, path, "ca_file", false, &s->ca_file, err) != 0 ||
            ag_conf_int(obj, path, "timeout_ms", 100, 600000, &s->timeout_ms, err) != 0 ||
            ag_conf_int(obj, path, "retry_initial_ms", 10, 600000, &s->retry_initial_ms, err) != 0 ||
            ag_conf_int(obj, path, "retry_max_ms", 10, 3600000, &s->retry_max_ms, err) != 0)
            return -1;
        if (s->retry_max_ms < s->retry_initial_ms)
            return ag_conf_fail(err, path, "retry_max_ms", "must be at least retry_initial_ms");
        break;
    }
    if (!s->name) {
        s->name = strdup(sink_types[type]);
        if (!s->name)
            return ag_conf_fail(err, path, "name", "out of memory");
    }
    return 0;
}

static int parse_fsync(const cJSON *section, const char *path, ag_audit_config *c, ag_conf_err *err)
{
    const cJSON *v = ag_conf_get(section, "fsync");
    if (!v)
        return 0;
    if (cJSON_IsString(v) && strcmp(v->valuestring, "batch") == 0) {
        c->fsync_interval_ms = 0;
        return 0;
    }
    if (cJSON_IsNumber(v))
        return ag_conf_int(section, path, "fsync", 1, 60000, &c->fsync_interval_ms, err);
    return ag_conf_fail(err, path, "fsync", "must be \"batch\" or an interval in ms (1 to 60000)");
}

int ag_audit_config_parse(const cJSON *section, const char *path, ag_audit_config *out, ag_conf_err *err)
{
    ag_audit_config c;
    set_defaults(&c);
    if (!section) {
        c.sinks = calloc(1, sizeof *c.sinks);
        if (!c.sinks)
            return ag_conf_fail(err, path, NULL, "out of memory");
        c.nsinks = 1;
        sink_defaults(&c.sinks[0]);
        c.sinks[0].type = AG_AUDIT_SINK_FILE;
        c.sinks[0].name = strdup("file");
        c.sinks[0].path = strdup("audit.jsonl");
        c.spool_dir = strdup("spool");
        if (!c.sinks[0].name || !c.sinks[0].path || !c.spool_dir) {
            ag_audit_config_free(&c);
            return ag_conf_fail(err, path, NULL, "out of memory");
        }
        *out = c;
        return 0;
    }
    if (ag_conf_object(section, path, top_keys, err) != 0)
        goto fail;
    int idx = 0;
    if (ag_conf_get(section, "capture")) {
        if (ag_conf_enum(section, path, "capture", capture_names, &idx, err) != 0)
            goto fail;
        c.capture = (ag_audit_capture)(idx + 1);
    }
    const cJSON *rules = ag_conf_get(section, "capture_rules");
    if (rules && parse_capture_rules(rules, path, &c, err) != 0)
        goto fail;
    if (ag_conf_get(section, "on_full")) {
        if (ag_conf_enum(section, path, "on_full", on_full_names, &idx, err) != 0)
            goto fail;
        c.on_full = (ag_audit_on_full)idx;
    }
    if (ag_conf_int(section, path, "max_text_bytes_per_request", 0, 256 * MIB,
                    &c.max_text_bytes_per_request, err) != 0 ||
        ag_conf_int(section, path, "queue_capacity", 16, 1 << 24, &c.queue_capacity, err) != 0 ||
        ag_conf_int(section, path, "spool_max_bytes", 64 * 1024, 1LL << 50, &c.spool_max_bytes, err) != 0 ||
        ag_conf_int(section, path, "spool_segment_bytes", 4096, 1024 * MIB, &c.spool_segment_bytes,
                    err) != 0 ||
        parse_fsync(section, path, &c, err) != 0)
        goto fail;
    if (ag_conf_string(section, path, "spool_dir", false, &c.spool_dir, err) != 0)
        goto fail;
    if (!c.spool_dir && !(c.spool_dir = strdup("spool"))) {
        ag_conf_fail(err, path, "spool_dir", "out of memory");
        goto fail;
    }

    const cJSON *sinks = ag_conf_get(section, "sinks");
    if (!sinks || !cJSON_IsArray(sinks) || cJSON_GetArraySize(sinks) == 0) {
        ag_conf_fail(err, path, "sinks", "must be a non-empty array of sinks (file, stdout, azure_monitor)");
        goto fail;
    }
    size_t n = (size_t)cJSON_GetArraySize(sinks);
    if (n > 16) {
        ag_conf_fail(err, path, "sinks", "at most 16 sinks");
        goto fail;
    }
    c.sinks = calloc(n, sizeof *c.sinks);
    if (!c.sinks) {
        ag_conf_fail(err, path, "sinks", "out of memory");
        goto fail;
    }
    size_t i = 0;
    for (const cJSON *e = sinks->child; e; e = e->next, i++) {
        char sp[AG_CONF_PATH_LEN];
        ag_conf_path(sp, sizeof sp, path, "sinks", (int)i);
        c.nsinks = i + 1;
        if (parse_sink(e, sp, &c.sinks[i], err) != 0)
            goto fail;
        /* an unnamed sink repeated gets its index appended: "azure_monitor-1" */
        for (size_t k = 0; k < i; k++) {
            if (strcmp(c.sinks[k].name, c.sinks[i].name) != 0)
                continue;
            if (ag_conf_get(e, "name")) {
                ag_conf_fail(err, sp, "name", "duplicates the name of sinks[%zu]", k);
                goto fail;
            }
            char buf[64];
            snprintf(buf, sizeof buf, "%s-%zu", sink_types[c.sinks[i].type], i);
            free(c.sinks[i].name);
            if (!(c.sinks[i].name = strdup(buf))) {
                ag_conf_fail(err, sp, "name", "out of memory");
                goto fail;
            }
        }
        if (c.sinks[i].type == AG_AUDIT_SINK_STDOUT)
            for (size_t k = 0; k < i; k++)
                if (c.sinks[k].type == AG_AUDIT_SINK_STDOUT) {
                    ag_conf_fail(err, sp, "type", "only one stdout sink");
                    goto fail;
                }
    }
    if (c.spool_segment_bytes == 0) {
        long long seg = c.spool_max_bytes / 8;
        c.spool_segment_bytes = seg < 64 * 1024 ? 64 * 1024 : seg > 8 * MIB ? 8 * MIB : seg;
    } else if (c.spool_segment_bytes * 2 > c.spool_max_bytes) {
        ag_conf_fail(err, path, "spool_segment_bytes", "must be at most half of spool_max_bytes");
        goto fail;
    }
    *out = c;
    return 0;
fail:
    ag_audit_config_free(&c);
    memset(out, 0, sizeof *out);
    return -1;
}

int ag_audit_config_copy(ag_audit_config *dst, const ag_audit_config *src)
{
    *dst = *src;
    dst->sinks = NULL;
    dst->nsinks = 0;
    dst->capture_rules = NULL;
    dst->ncapture_rules = 0;
    dst->spool_dir = xstrdup(src->spool_dir);
    if (src->spool_dir && !dst->spool_dir)
        goto fail;
    if (src->nsinks) {
        dst->sinks = calloc(src->nsinks, sizeof *dst->sinks);
        if (!dst->sinks)
            goto fail;
    }
    for (size_t i = 0; i < src->nsinks; i++) {
        const ag_audit_sink_conf *s = &src->sinks[i];
        ag_audit_sink_conf *d = &dst->sinks[i];
        *d = *s;
        d->name = xstrdup(s->name);
        d->path = xstrdup(s->path);
        d->endpoint = xstrdup(s->endpoint);
        d->dcr_immutable_id = xstrdup(s->dcr_immutable_id);
        d->stream = xstrdup(s->stream);
        d->dead_letter_path = xstrdup(s->dead_letter_path);
        d->ca_file = xstrdup(s->ca_file);
        dst->nsinks = i + 1;
        if ((s->name && !d->name) || (s->path && !d->path) || (s->endpoint && !d->endpoint) ||
            (s->dcr_immutable_id && !d->dcr_immutable_id) || (s->stream && !d->stream) ||
            (s->dead_letter_path && !d->dead_letter_path) || (s->ca_file && !d->ca_file))
            goto fail;
    }
    return 0;
fail:
    ag_audit_config_free(dst);
    return -1;
}
