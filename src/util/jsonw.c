/* Fixed-buffer JSON writer (see jsonw.h). */
#include "aoai_guard/jsonw.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

void ag_jw_init(ag_jsonw *w, char *buf, size_t cap)
{
    w->buf = buf;
    w->cap = cap;
    w->len = 0;
    w->depth = 0;
    w->need_comma = false;
    w->overflow = cap == 0;
    if (cap)
        buf[0] = '\0';
}

static void put(ag_jsonw *w, const char *s, size_t n)
{
    if (w->overflow)
        return;
    if (w->len + n + 1 > w->cap) {
        w->overflow = true;
        return;
    }
    memcpy(w->buf + w->len, s, n);
    w->len += n;
    w->buf[w->len] = '\0';
}

static void sep(ag_jsonw *w)
{
    if (w->need_comma)
        put(w, ",", 1);
    w->need_comma = true;
}

void ag_jw_object_begin(ag_jsonw *w)
{
    sep(w);
    put(w, "{", 1);
    w->need_comma = false;
    w->depth++;
}

void ag_jw_object_end(ag_jsonw *w)
{
    put(w, "}", 1);
    w->need_comma = true;
    w->depth--;
}

void ag_jw_array_begin(ag_jsonw *w)
{
    sep(w);
    put(w, "[", 1);
    w->need_comma = false;
    w->depth++;
}

void ag_jw_array_end(ag_jsonw *w)
{
    put(w, "]", 1);
    w->need_comma = true;
    w->depth--;
}

/* Length of the UTF-8 sequence at s (n bytes left), or 0 when it is malformed. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t need;
    unsigned int cp;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (need >= n)
        return 0;
    for (size_t k = 1; k <= need; k++) {
        if ((s[k] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[k] & 0x3F);
    }
    if ((need == 2 && cp < 0x800) || (need == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return need + 1;
}

size_t ag_json_escape(char *out, size_t cap, const char *s, size_t n)
{
    size_t o = 0;
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        char tmp[8];
        const char *add = tmp;
        size_t addlen;
        size_t step = 1;
        unsigned char c = p[i];
        if (c == '"') {
            add = "\\\"";
            addlen = 2;
        } else if (c == '\\') {
            add = "\\\\";
            addlen = 2;
        } else if (c == '\n') {
            add = "\\n";
            addlen = 2;
        } else if (c == '\r') {
            add = "\\r";
            addlen = 2;
        } else if (c == '\t') {
            add = "\\t";
            addlen = 2;
        } else if (c < 0x20 || c == 0x7F) {
            addlen = (size_t)snprintf(tmp, sizeof tmp, "\\u%04x", c);
        } else if (c < 0x80) {
            add = (const char *)p + i;
            addlen = 1;
        } else {
            size_t sl = utf8_seq(p + i, n - i);
            if (sl) {
                add = (const char *)p + i;
                addlen = sl;
                step = sl;
            } else {
                add = "\\ufffd";
                addlen = 6;
            }
        }
        if (o + addlen + 1 > cap)
            return (size_t)-1;
        memcpy(out + o, add, addlen);
        o += addlen;
        i += step;
    }
    if (o + 1 > cap)
        return (size_t)-1;
    out[o] = '\0';
    return o;
}

static void put_escaped(ag_jsonw *w, const char *s, size_t n)
{
    if (w->overflow)
        return;
    put(w, "\"", 1);
    if (w->overflow)
        return;
    size_t room = w->cap - w->len;
    size_t e = ag_json_escape(w->buf + w->len, room, s, n);
    if (e == (size_t)-1) {
        w->overflow = true;
        return;
    }
    w->len += e;
    put(w, "\"", 1);
}

void ag_jw_key(ag_jsonw *w, const char *key)
{
    sep(w);
    put_escaped(w, key, strlen(key));
    put(w, ":", 1);
    w->need_comma = false;
}

void ag_jw_str(ag_jsonw *w, const char *s)
{
    if (!s) {
        ag_jw_null(w);
        return;
    }
    ag_jw_strn(w, s, strlen(s));
}

void ag_jw_strn(ag_jsonw *w, const char *s, size_t n)
{
    sep(w);
    put_escaped(w, s, n);
}

void ag_jw_int(ag_jsonw *w, long long v)
{
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%lld", v);
    sep(w);
    put(w, tmp, (size_t)n);
}

void ag_jw_double(ag_jsonw *w, double v, int decimals)
{
    char tmp[64];
    if (!isfinite(v)) {
        ag_jw_null(w);
        return;
    }
    int n = snprintf(tmp, sizeof tmp, "%.*f", decimals, v);
    sep(w);
    put(w, tmp, (size_t)n);
}

void ag_jw_bool(ag_jsonw *w, bool v)
{
    sep(w);
    put(w, v ? "true" : "false", v ? 4 : 5);
}

void ag_jw_null(ag_jsonw *w)
{
    sep(w);
    put(w, "null", 4);
}

void ag_jw_raw(ag_jsonw *w, const char *json, size_t n)
{
    sep(w);
    put(w, json, n);
}

void ag_jw_kv_str(ag_jsonw *w, const char *key, const char *s)
{
    ag_jw_key(w, key);
    ag_jw_str(w, s);
}

void ag_jw_kv_strn(ag_jsonw *w, const char *key, const char *s, size_t n)
{
    ag_jw_key(w, key);
    ag_jw_strn(w, s, n);
}

void ag_jw_kv_int(ag_jsonw *w, const char *key, long long v)
{
    ag_jw_key(w, key);
    ag_jw_int(w, v);
}

void ag_jw_kv_bool(ag_jsonw *w, const char *key, bool v)
{
    ag_jw_key(w, key);
    ag_jw_bool(w, v);
}

size_t ag_jw_len(const ag_jsonw *w)
{
    return w->overflow ? 0 : w->len;
}
