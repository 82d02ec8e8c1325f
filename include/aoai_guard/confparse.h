/* Typed, path-aware readers for the JSON configuration.
 *
 * Every stage parses its own section with these helpers so that every error names the exact key
 * ("upstreams[1].auth.type: must be one of api_key, entra, passthrough") and unknown or duplicate
 * keys are rejected the same way everywhere. All functions return 0 on success and -1 on error,
 * with the message in *err. Optional keys that are absent (or JSON null) leave the default. */
#ifndef AOAI_GUARD_CONFPARSE_H
#define AOAI_GUARD_CONFPARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <cjson/cJSON.h>

#define AG_CONF_ERR_LEN 512
#define AG_CONF_PATH_LEN 256

typedef struct ag_conf_err {
    char msg[AG_CONF_ERR_LEN];
} ag_conf_err;

/* Formats "path.key: message" into err; always returns -1 so callers can `return ag_conf_fail(...)`. */
int ag_conf_fail(ag_conf_err *err, const char *path, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Builds a child path: "path.key", or "key" when path is empty; index >= 0 appends "[index]". */
void ag_conf_path(char *out, size_t outlen, const char *path, const char *key, int index);

/* Requires obj to be a JSON object whose keys are all in allowed (NULL-terminated) and unique.
 * Keys starting with "//" are comments and are skipped everywhere. */
int ag_conf_object(const cJSON *obj, const char *path, const char *const *allowed, ag_conf_err *err);

/* Looks a key up case-sensitively; NULL when absent or JSON null. */
const cJSON *ag_conf_get(const cJSON *obj, const char *key);

int ag_conf_int(const cJSON *obj, const char *path, const char *key, long long min, long long max,
                long long *out, ag_conf_err *err);
int ag_conf_bool(const cJSON *obj, const char *path, const char *key, bool *out, ag_conf_err *err);
/* On success *out is a fresh malloc'd copy (the caller owns it) or stays untouched when absent. */
int ag_conf_string(const cJSON *obj, const char *path, const char *key, bool required, char **out,
                   ag_conf_err *err);
/* Maps a string value to an index in choices (NULL-terminated). */
int ag_conf_enum(const cJSON *obj, const char *path, const char *key, const char *const *choices,
                 int *out, ag_conf_err *err);
/* Reads an array of strings into a malloc'd, NULL-terminated vector (free with ag_conf_strv_free). */
int ag_conf_strv(const cJSON *obj, const char *path, const char *key, char ***out, size_t *count,
                 ag_conf_err *err);
void ag_conf_strv_free(char **v);

/* Replaces every ${NAME} in every string of the tree with the environment variable NAME.
 * Fails naming the key path and the variable when NAME is unset. "$${" escapes a literal "${". */
int ag_conf_expand_env(cJSON *root, ag_conf_err *err);

#endif
