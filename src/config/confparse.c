/* Path-aware typed readers for the JSON configuration (see confparse.h). */
#include "aoai_guard/confparse.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ag_conf_fail(ag_conf_err *err, const char *path, const char *key, const char *fmt, ...)
{
    char full[AG_CONF_PATH_LEN];
    ag_conf_path(full, sizeof full, path, key, -1);
    int n = snprintf(err->msg, sizeof err->msg, "%s: ", full[0] ? full : "(top level)");
    if (n < 0 || (size_t)n >= sizeof err->msg)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg + n, sizeof err->msg - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

void ag_conf_path(char *out, size_t outlen, const char *path, const char *key, int index)
{
    const char *p = path ? path : "";
    const char *k = key ? key : "";
    const char *dot = (p[0] && k[0]) ? "." : "";
    if (index >= 0)
        snprintf(out, outlen, "%s%s%s[%d]", p, dot, k, index);
    else
        snprintf(out, outlen, "%s%s%s", p, dot, k);
}

const cJSON *ag_conf_get(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return (v && !cJSON_IsNull(v)) ? v : NULL;
}

int ag_conf_object(const cJSON *obj, const char *path, const char *const *allowed, ag_conf_err *err)
{
    if (!cJSON_IsObject(obj))
        return ag_conf_fail(err, path, NULL, "must be a JSON object");
    for (const cJSON *c = obj->child; c; c = c->next) {
        if (strncmp(c->string, "//", 2) == 0)
            continue; /* a comment: {"//": "why this value"} */
        bool known = false;
        for (size_t i = 0; allowed && allowed[i]; i++)
            if (strcmp(c->string, allowed[i]) == 0)
                known = true;
        if (!known) {
            char list[AG_CONF_ERR_LEN / 2] = "";
            size_t used = 0;
            for (size_t i = 0; allowed && allowed[i] && used < sizeof list; i++) {
                int n = snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "", allowed[i]);
                if (n < 0)
                    break;
                used += (size_t)n;
            }
            return ag_conf_fail(err, path, c->string, "unknown key (allowed here: %s)", list);
        }
        for (const cJSON *d = obj->child; d != c; d = d->next)
            if (strcmp(d->string, c->string) == 0)
                return ag_conf_fail(err, path, c->string, "duplicate key");
    }
    return 0;
}

int ag_conf_int(const cJSON *obj, const char *path, const char *key, long long min, long long max,
                long long *out, ag_conf_err *err)
{
    const cJSON *v = ag_conf_get(obj, key);
    if (!v)
        return 0;
    if (!cJSON_IsNumber(v))
        return ag_conf_fail(err, path, key, "must be an integer");
    double d = v->valuedouble;
    if (!isfinite(d) || d != floor(d) || d < (double)min || d > (double)max)
        return ag_conf_fail(err, path, key, "must be an integer from %lld to %lld", min, max);
    *out = (long long)d;
    return 0;
}

int ag_conf_bool(const cJSON *obj, const char *path, const char *key, bool *out, ag_conf_err *err)
{
    const cJSON *v = ag_conf_get(obj, key);
    if (!v)
        return 0;
    if (!cJSON_IsBool(v))
        return ag_conf_fail(err, path, key, "must be true or false");
    *out = cJSON_IsTrue(v);
    return 0;
}

int ag_conf_string(const cJSON *obj, const char *path, const char *key, bool required, char **out,
                   ag_conf_err *err)
{
    const cJSON *v = ag_conf_get(obj, key);
    if (!v) {
        if (required)
            return ag_conf_fail(err, path, key, "is required");
        return 0;
    }
    if (!cJSON_IsString(v))
        return ag_conf_fail(err, path, key, "must be a string");
    if (required && v->valuestring[0] == '\0')
        return ag_conf_fail(err, path, key, "must not be empty");
    char *copy = strdup(v->valuestring);
    if (!copy)
        return ag_conf_fail(err, path, key, "out of memory");
    free(*out);
    *out = copy;
    return 0;
}

int ag_conf_enum(const cJSON *obj, const char *path, const char *key, const char *const *choices,
                 int *out, ag_conf_err *err)
{
    const cJSON *v = ag_conf_get(obj, key);
    if (!v)
        return 0;
    if (cJSON_IsString(v))
        for (int i = 0; choices[i]; i++)
            if (strcmp(v->valuestring, choices[i]) == 0) {
                *out = i;
                return 0;
            }
    char list[AG_CONF_ERR_LEN / 2] = "";
    size_t used = 0;
    for (int i = 0; choices[i] && used < sizeof list; i++) {
        int n = snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "", choices[i]);
        if (n < 0)
            break;
        used += (size_t)n;
    }
    return ag_conf_fail(err, path, key, "must be one of %s", list);
}

void ag_conf_strv_free(char **v)
{
    if (!v)
        return;
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

int ag_conf_strv(const cJSON *obj, const char *path, const char *key, char ***out, size_t *count,
                 ag_conf_err *err)
{
    const cJSON *v = ag_conf_get(obj, key);
    if (!v)
        return 0;
    if (!cJSON_IsArray(v))
        return ag_conf_fail(err, path, key, "must be an array of strings");
    size_t n = (size_t)cJSON_GetArraySize(v);
    char **vec = calloc(n + 1, sizeof *vec);
    if (!vec)
        return ag_conf_fail(err, path, key, "out of memory");
    size_t i = 0;
    for (const cJSON *c = v->child; c; c = c->next, i++) {
        if (!cJSON_IsString(c)) {
            ag_conf_strv_free(vec);
            char p[AG_CONF_PATH_LEN];
            ag_conf_path(p, sizeof p, path, key, (int)i);
            return ag_conf_fail(err, p, NULL, "must be a string");
        }
        vec[i] = strdup(c->valuestring);
        if (!vec[i]) {
            ag_conf_strv_free(vec);
            return ag_conf_fail(err, path, key, "out of memory");
        }
    }
    ag_conf_strv_free(*out);
    *out = vec;
    if (count)
        *count = n;
    return 0;
}

/* Expands ${NAME} references in one string; returns a malloc'd result or NULL with err set. */
static char *expand_one(const char *s, const char *path, ag_conf_err *err)
{
    size_t cap = strlen(s) + 1, len = 0;
    char *out = malloc(cap);
    if (!out) {
        ag_conf_fail(err, path, NULL, "out of memory");
        return NULL;
    }
    for (const char *p = s; *p;) {
        const char *add = p;
        size_t addlen = 1;
        if (p[0] == '$' && p[1] == '$' && p[2] == '{') {
            add = "${";
            addlen = 2;
            p += 3;
        } else if (p[0] == '$' && p[1] == '{') {
            const char *end = strchr(p + 2, '}');
            size_t nlen = end ? (size_t)(end - p - 2) : 0;
            if (!end || nlen == 0 || nlen > 128) {
                free(out);
                ag_conf_fail(err, path, NULL, "malformed ${NAME} reference");
                return NULL;
            }
            char name[129];
            memcpy(name, p + 2, nlen);
            name[nlen] = '\0';
            const char *val = getenv(name);
            if (!val) {
                free(out);
                ag_conf_fail(err, path, NULL, "environment variable %s is not set", name);
                return NULL;
            }
            add = val;
            addlen = strlen(val);
            p = end + 1;
        } else {
            p++;
        }
        if (len + addlen + 1 > cap) {
            cap = (len + addlen + 1) * 2;
            char *grown = realloc(out, cap);
            if (!grown) {
                free(out);
                ag_conf_fail(err, path, NULL, "out of memory");
                return NULL;
            }
            out = grown;
        }
        memcpy(out + len, add, addlen);
        len += addlen;
    }
    out[len] = '\0';
    return out;
}

static int expand_tree(cJSON *node, const char *path, ag_conf_err *err)
{
    int index = 0;
    for (cJSON *c = node->child; c; c = c->next, index++) {
        char p[AG_CONF_PATH_LEN];
        if (cJSON_IsArray(node))
            ag_conf_path(p, sizeof p, path, NULL, index);
        else
            ag_conf_path(p, sizeof p, path, c->string, -1);
        if (c->string && strncmp(c->string, "//", 2) == 0)
            continue; /* comments are text, not configuration */
        if (cJSON_IsString(c) && strchr(c->valuestring, '$')) {
            char *v = expand_one(c->valuestring, p, err);
            if (!v)
                return -1;
            /* cJSON owns its strings (json_arena.h): it copies v in, we free ours */
            bool ok = cJSON_SetValuestring(c, v) != NULL;
            free(v);
            if (!ok) {
                ag_conf_fail(err, p, NULL, "out of memory");
                return -1;
            }
        } else if (cJSON_IsObject(c) || cJSON_IsArray(c)) {
            if (expand_tree(c, p, err) != 0)
                return -1;
        }
    }
    return 0;
}

int ag_conf_expand_env(cJSON *root, ag_conf_err *err)
{
    return expand_tree(root, "", err);
}
