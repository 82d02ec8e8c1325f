/* A small JSON writer into a caller-provided fixed buffer, for log lines and error bodies on the
 * hot path (no allocation). Untrusted strings are escaped; invalid UTF-8 becomes U+FFFD. When the
 * buffer is too small the writer stops adding and sets overflow; ag_jw_finish() still returns a
 * closed, valid document only if nothing overflowed. */
#ifndef AOAI_GUARD_JSONW_H
#define AOAI_GUARD_JSONW_H

#include <stdbool.h>
#include <stddef.h>

typedef struct ag_jsonw {
    char *buf;
    size_t cap;
    size_t len;
    int depth;
    bool need_comma;
    bool overflow;
} ag_jsonw;

/* Starts a writer over buf[0..cap); the document is NUL-terminated as it grows. */
void ag_jw_init(ag_jsonw *w, char *buf, size_t cap);
void ag_jw_object_begin(ag_jsonw *w);
void ag_jw_object_end(ag_jsonw *w);
void ag_jw_array_begin(ag_jsonw *w);
void ag_jw_array_end(ag_jsonw *w);
/* Writes a key inside an object; follow it with exactly one value call. */
void ag_jw_key(ag_jsonw *w, const char *key);
void ag_jw_str(ag_jsonw *w, const char *s);
void ag_jw_strn(ag_jsonw *w, const char *s, size_t n);
void ag_jw_int(ag_jsonw *w, long long v);
void ag_jw_double(ag_jsonw *w, double v, int decimals);
void ag_jw_bool(ag_jsonw *w, bool v);
void ag_jw_null(ag_jsonw *w);
/* Appends pre-serialised JSON as a value (the caller vouches for its validity). */
void ag_jw_raw(ag_jsonw *w, const char *json, size_t n);

/* Shorthands for "key": value inside an object. */
void ag_jw_kv_str(ag_jsonw *w, const char *key, const char *s);
void ag_jw_kv_strn(ag_jsonw *w, const char *key, const char *s, size_t n);
void ag_jw_kv_int(ag_jsonw *w, const char *key, long long v);
void ag_jw_kv_bool(ag_jsonw *w, const char *key, bool v);

/* Length of the document written so far; 0 when it overflowed. */
size_t ag_jw_len(const ag_jsonw *w);

/* Escapes s[0..n) as the inside of a JSON string into out (cap bytes, NUL-terminated); returns the
 * escaped length, or (size_t)-1 when it does not fit. */
size_t ag_json_escape(char *out, size_t cap, const char *s, size_t n);

#endif
