/* Strict JSON parsing: a pre-scan over the raw bytes, cJSON, then a walk for duplicate keys. */
#include "aoai_guard/json_strict.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

const char *ag_json_status_str(ag_json_status status)
{
    switch (status) {
    case AG_JSON_OK: return "ok";
    case AG_JSON_EMPTY: return "empty document";
    case AG_JSON_SYNTAX: return "invalid JSON";
    case AG_JSON_TRAILING: return "trailing bytes after the JSON value";
    case AG_JSON_BAD_UTF8: return "invalid UTF-8";
    case AG_JSON_CONTROL_CHAR: return "control character (unescaped in a string, or between tokens)";
    case AG_JSON_NUL_ESCAPE: return "\\u0000 in a string";
    case AG_JSON_DUP_KEY: return "duplicate key";
    case AG_JSON_TOO_DEEP: return "nesting too deep";
    case AG_JSON_TOO_MANY_NODES: return "too many JSON values";
    case AG_JSON_BAD_NUMBER: return "malformed or out-of-range number";
    }
    return "unknown";
}

/* The scan, inlined into this file's scanners: most strings they meet (keys, short values) end
 * within the first sixteen bytes, where a call would cost more than the scan. */
static inline size_t plain_prefix(const char *s, size_t len)
{
    size_t i = 0;
#if defined(__SSE2__)
    /* sixteen bytes at a time: a byte is special when it is '"', '\\' or at most 0x1f */
    const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'), ctl = _mm_set1_epi8(0x1f);
    while (i + 16 <= len) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
        __m128i special = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash)),
                                       _mm_cmpeq_epi8(_mm_min_epu8(v, ctl), v));
        unsigned m = (unsigned)_mm_movemask_epi8(special);
        if (m)
            return i + (size_t)__builtin_ctz(m);
        i += 16;
    }
#endif
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    while (i + 8 <= len) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        uint64_t q = w ^ (ones * '"'), bs = w ^ (ones * '\\');
        /* the high bit of each byte that is < 0x20, '"' or '\\' (bytes >= 0x80 never are) */
        uint64_t special = (((w - ones * 0x20) & ~w) | ((q - ones) & ~q) | ((bs - ones) & ~bs)) & highs;
        if (special) /* the lowest marked byte is a real one: borrows only run upwards */
            return i + (size_t)(__builtin_ctzll(special) >> 3);
        i += 8;
    }
#endif
    while (i < len && (unsigned char)s[i] >= 0x20 && s[i] != '"' && s[i] != '\\')
        i++;
    return i;
}

size_t ag_json_plain_prefix(const char *s, size_t len)
{
    return plain_prefix(s, len);
}

size_t ag_utf8_valid_prefix(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        /* ASCII runs sixteen (SSE2) or eight bytes at a time (prompts are mostly ASCII). */
#if defined(__SSE2__)
        while (i + 16 <= len && !_mm_movemask_epi8(_mm_loadu_si128((const __m128i *)(const void *)(s + i))))
            i += 16;
#endif
        while (i + 8 <= len) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull)
                break;
            i += 8;
        }
        if (i >= len)
            break;
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
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
            return i;
        }
        for (size_t k = 1; k <= need; k++) {
            if (i + k >= len || (s[i + k] & 0xC0) != 0x80)
                return i;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((need == 2 && cp < 0x800) || (need == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return i;
        i += need + 1;
    }
    return len;
}

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Checks one number token at buf[i..] per RFC 8259 (no leading zeros, digits after '.' and in the
 * exponent) and refuses integers beyond 2^53, which other parsers read exactly and cJSON does not.
 * Returns the token length, or 0 when it is malformed or out of range. */
static size_t number_token(const char *buf, size_t len, size_t i)
{
    size_t s = i;
    if (i < len && buf[i] == '-')
        i++;
    size_t d0 = i;
    while (i < len && buf[i] >= '0' && buf[i] <= '9')
        i++;
    size_t ndig = i - d0;
    if (ndig == 0 || (ndig > 1 && buf[d0] == '0'))
        return 0;
    bool integer = true;
    if (i < len && buf[i] == '.') {
        integer = false;
        size_t f0 = ++i;
        while (i < len && buf[i] >= '0' && buf[i] <= '9')
            i++;
        if (i == f0)
            return 0;
    }
    if (i < len && (buf[i] == 'e' || buf[i] == 'E')) {
        integer = false;
        i++;
        if (i < len && (buf[i] == '+' || buf[i] == '-'))
            i++;
        size_t e0 = i;
        while (i < len && buf[i] >= '0' && buf[i] <= '9')
            i++;
        if (i == e0)
            return 0;
    }
    if (integer) {
        /* 2^53 = 9007199254740992 (16 digits): compare digit strings without converting. */
        if (ndig > 16 || (ndig == 16 && memcmp(buf + d0, "9007199254740992", 16) > 0))
            return 0;
    }
    return i - s;
}

/* One pass over the raw bytes: string contents, escapes, depth and a value count. */
static ag_json_status prescan(const char *buf, size_t len, const ag_json_limits *lim, size_t *off)
{
    int depth = 0;
    size_t nodes = 0;
    bool in_string = false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (in_string) {
            size_t plain = plain_prefix(buf + i, len - i);
            if (plain) {
                i += plain - 1; /* the loop steps past the last plain byte */
                continue;
            }
            if (c == '"') {
                in_string = false;
            } else if (c == '\\') {
                if (i + 1 >= len)
                    break; /* cJSON reports the syntax error */
                if (buf[i + 1] == 'u' && i + 5 < len && memcmp(buf + i + 2, "0000", 4) == 0) {
                    *off = i;
                    return AG_JSON_NUL_ESCAPE;
                }
                i++;
            } else if (c < 0x20) {
                *off = i;
                return AG_JSON_CONTROL_CHAR;
            }
            continue;
        }
        if (c == '-' || (c >= '0' && c <= '9')) {
            size_t n = number_token(buf, len, i);
            if (n == 0) {
                *off = i;
                return AG_JSON_BAD_NUMBER;
            }
            i += n - 1;
            continue;
        }
        switch (c) {
        case '"':
            in_string = true;
            nodes++;
            break;
        case '{':
        case '[':
            if (++depth > lim->max_depth) {
                *off = i;
                return AG_JSON_TOO_DEEP;
            }
            nodes++;
            break;
        case '}':
        case ']':
            depth--;
            break;
        case ',':
            nodes++;
            break;
        default:
            /* cJSON skips every byte up to 0x20 between tokens; JSON's whitespace is four */
            if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') {
                *off = i;
                return AG_JSON_CONTROL_CHAR;
            }
            break;
        }
        if (nodes > lim->max_nodes * 2 + 1) {
            *off = i;
            return AG_JSON_TOO_MANY_NODES;
        }
    }
    return AG_JSON_OK;
}

static int cmp_keys(const void *a, const void *b)
{
    const cJSON *x = *(const cJSON *const *)a, *y = *(const cJSON *const *)b;
    return strcmp(x->string, y->string);
}

/* Walks the tree: duplicate keys, non-finite numbers, node count. */
static ag_json_status walk(const cJSON *node, size_t *nodes, size_t max_nodes)
{
    if (++*nodes > max_nodes)
        return AG_JSON_TOO_MANY_NODES;
    if (cJSON_IsNumber(node) && !isfinite(node->valuedouble))
        return AG_JSON_BAD_NUMBER;
    if (cJSON_IsObject(node)) {
        size_t n = 0;
        for (const cJSON *c = node->child; c; c = c->next)
            n++;
        if (n > 1 && n <= 16) {
            for (const cJSON *c = node->child; c; c = c->next)
                for (const cJSON *d = c->next; d; d = d->next)
                    if (strcmp(c->string, d->string) == 0)
                        return AG_JSON_DUP_KEY;
        } else if (n > 16) {
            const cJSON **v = malloc(n * sizeof *v);
            if (!v)
                return AG_JSON_TOO_MANY_NODES;
            size_t i = 0;
            for (const cJSON *c = node->child; c; c = c->next)
                v[i++] = c;
            qsort(v, n, sizeof *v, cmp_keys);
            bool dup = false;
            for (i = 1; i < n && !dup; i++)
                dup = strcmp(v[i - 1]->string, v[i]->string) == 0;
            free(v);
            if (dup)
                return AG_JSON_DUP_KEY;
        }
    }
    for (const cJSON *c = node->child; c; c = c->next) {
        ag_json_status st = walk(c, nodes, max_nodes);
        if (st != AG_JSON_OK)
            return st;
    }
    return AG_JSON_OK;
}

cJSON *ag_json_parse_strict(const char *buf, size_t len, const ag_json_limits *limits,
                            ag_json_status *status, size_t *err_offset)
{
    size_t off = 0;
    ag_json_status st;
    *status = AG_JSON_OK;
    if (err_offset)
        *err_offset = 0;

    size_t first = 0;
    while (first < len && is_ws(buf[first]))
        first++;
    if (first == len) {
        *status = AG_JSON_EMPTY;
        return NULL;
    }
    size_t good = ag_utf8_valid_prefix((const unsigned char *)buf, len);
    if (good != len) {
        st = AG_JSON_BAD_UTF8;
        off = good;
        goto fail;
    }
    st = prescan(buf, len, limits, &off);
    if (st != AG_JSON_OK)
        goto fail;

    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, len, &end, false);
    if (!root) {
        st = AG_JSON_SYNTAX;
        off = end ? (size_t)(end - buf) : 0;
        const char *e = cJSON_GetErrorPtr();
        if (e && e >= buf && e <= buf + len)
            off = (size_t)(e - buf);
        goto fail;
    }
    size_t pos = end ? (size_t)(end - buf) : len;
    while (pos < len && is_ws(buf[pos]))
        pos++;
    if (pos < len) {
        cJSON_Delete(root);
        st = AG_JSON_TRAILING;
        off = pos;
        goto fail;
    }
    size_t nodes = 0;
    st = walk(root, &nodes, limits->max_nodes);
    if (st != AG_JSON_OK) {
        cJSON_Delete(root);
        goto fail;
    }
    return root;
fail:
    *status = st;
    if (err_offset)
        *err_offset = off;
    return NULL;
}

const char *ag_json_skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    return p;
}

/* One value at p, at most 32 levels deep (ag_json_skip_value). */
static const char *skip_value(const char *p, const char *end, int depth)
{
    if (p >= end || depth > 32)
        return NULL;
    char c = *p;
    if (c == '"') {
        for (p++; p < end; p++) {
            p += plain_prefix(p, (size_t)(end - p)); /* ordinary text, sixteen bytes at a time */
            if (p >= end)
                break;
            unsigned char b = (unsigned char)*p;
            if (b == '"')
                return p + 1;
            if (b < 0x20)
                return NULL;
            if (b == '\\') {
                if (++p >= end || !strchr("\"\\/bfnrt", *p) || *p == 0)
                    return NULL;
            }
        }
        return NULL;
    }
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        p = ag_json_skip_ws(p + 1, end);
        if (p < end && *p == close)
            return p + 1;
        for (;;) {
            if (c == '{') {
                if (p >= end || *p != '"')
                    return NULL;
                p = skip_value(p, end, depth + 1);
                if (!p)
                    return NULL;
                p = ag_json_skip_ws(p, end);
                if (p >= end || *p != ':')
                    return NULL;
                p = ag_json_skip_ws(p + 1, end);
            }
            p = skip_value(p, end, depth + 1);
            if (!p)
                return NULL;
            p = ag_json_skip_ws(p, end);
            if (p < end && *p == ',') {
                p = ag_json_skip_ws(p + 1, end);
                continue;
            }
            return p < end && *p == close ? p + 1 : NULL;
        }
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        if (c == '-')
            p++;
        if (p >= end || *p < '0' || *p > '9')
            return NULL;
        if (*p == '0')
            p++;
        else
            while (p < end && *p >= '0' && *p <= '9')
                p++;
        if (p < end && *p == '.') {
            if (++p >= end || *p < '0' || *p > '9')
                return NULL;
            while (p < end && *p >= '0' && *p <= '9')
                p++;
        }
        if (p < end && (*p == 'e' || *p == 'E')) {
            p++;
            if (p < end && (*p == '+' || *p == '-'))
                p++;
            if (p >= end || *p < '0' || *p > '9')
                return NULL;
            while (p < end && *p >= '0' && *p <= '9')
                p++;
        }
        return p < end ? p : NULL;
    }
    static const char *const lits[3] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(lits[i]);
        if ((size_t)(end - p) > n && memcmp(p, lits[i], n) == 0)
            return p + n;
    }
    return NULL;
}

const char *ag_json_skip_value(const char *p, const char *end)
{
    return skip_value(p, end, 0);
}

/* ---- the tree-less check (ag_json_object_check) ---- */

#define CHECK_MAX_KEYS 32  /* keys of one object compared pairwise; more: the full parse */
#define CHECK_MAX_DEPTH 32 /* nesting the check follows; deeper: the full parse */

typedef struct check_ctx {
    const char *end;
    size_t values, max_values;
    int max_depth;
    ag_json_field *fields;
    size_t nfields;
} check_ctx;

/* The string at p (its opening quote): returns the byte after the closing quote, or NULL for a
 * control byte, a \u escape or an unknown escape. *escaped: it holds a backslash. */
static const char *check_string(const char *p, const char *end, bool *escaped)
{
    *escaped = false;
    for (p++; p < end; p++) {
        p += plain_prefix(p, (size_t)(end - p));
        if (p >= end)
            return NULL;
        unsigned char b = (unsigned char)*p;
        if (b == '"')
            return p + 1;
        if (b < 0x20 || ++p >= end)
            return NULL;
        switch (*p) { /* the escapes both parsers decode alike; \u (surrogates, NUL) is not one */
        case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
            *escaped = true;
            break;
        default:
            return NULL;
        }
    }
    return NULL;
}

/* A number of RFC 8259 with no exponent (which can overflow to infinity) and short enough to be
 * exact: an integer of at most 15 digits (below 2^53), a decimal of at most 32 bytes (within
 * cJSON's 63-byte copy). Returns its end, or NULL. */
static const char *check_number(const char *p, const char *end)
{
    const char *s = p;
    if (*p == '-')
        p++;
    if (p >= end || *p < '0' || *p > '9')
        return NULL;
    if (*p == '0')
        p++;
    else
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    bool integer = true;
    if (p < end && *p == '.') {
        integer = false;
        if (++p >= end || *p < '0' || *p > '9')
            return NULL;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E'))
        return NULL;
    if ((size_t)(p - s) - (integer && *s == '-') > (integer ? 15u : 32u))
        return NULL;
    return p;
}

static const char *check_value(check_ctx *x, const char *p, int depth);

/* The object at p ('{') at nesting depth; every key unescaped and distinct (byte for byte is then
 * what cJSON's decoded comparison sees). At depth 1 it notes the values of x->fields. */
static const char *check_object(check_ctx *x, const char *p, int depth)
{
    const char *end = x->end;
    if (depth > x->max_depth)
        return NULL;
    const char *key[CHECK_MAX_KEYS];
    size_t key_len[CHECK_MAX_KEYS], nkeys = 0;
    p = ag_json_skip_ws(p + 1, end);
    if (p < end && *p == '}')
        return p + 1;
    for (;;) {
        if (p >= end || *p != '"' || nkeys == CHECK_MAX_KEYS)
            return NULL;
        bool escaped;
        const char *key_end = check_string(p, end, &escaped);
        if (!key_end || escaped)
            return NULL;
        const char *k = p + 1;
        size_t kl = (size_t)(key_end - 1 - k);
        for (size_t i = 0; i < nkeys; i++)
            if (key_len[i] == kl && memcmp(key[i], k, kl) == 0)
                return NULL; /* a duplicate: the full parse reports it */
        key[nkeys] = k;
        key_len[nkeys++] = kl;
        p = ag_json_skip_ws(key_end, end);
        if (p >= end || *p != ':')
            return NULL;
        const char *v = ag_json_skip_ws(p + 1, end);
        p = check_value(x, v, depth);
        if (!p)
            return NULL;
        if (depth == 1) {
            for (size_t f = 0; f < x->nfields; f++) {
                if (strlen(x->fields[f].key) != kl || memcmp(x->fields[f].key, k, kl) != 0)
                    continue;
                if (*v == '"' && memchr(v, '\\', (size_t)(p - v)))
                    return NULL; /* an escaped string value: the caller reads it decoded */
                x->fields[f].value = v;
                x->fields[f].value_len = (size_t)(p - v);
            }
        }
        p = ag_json_skip_ws(p, end);
        if (p < end && *p == ',') {
            p = ag_json_skip_ws(p + 1, end);
            continue;
        }
        return p < end && *p == '}' ? p + 1 : NULL;
    }
}

static const char *check_value(check_ctx *x, const char *p, int depth)
{
    const char *end = x->end;
    if (p >= end || ++x->values > x->max_values)
        return NULL;
    switch (*p) {
    case '"': {
        bool escaped;
        return check_string(p, end, &escaped);
    }
    case '{':
        return check_object(x, p, depth + 1);
    case '[': {
        if (depth + 1 > x->max_depth)
            return NULL;
        p = ag_json_skip_ws(p + 1, end);
        if (p < end && *p == ']')
            return p + 1;
        for (;;) {
            p = check_value(x, p, depth + 1);
            if (!p)
                return NULL;
            p = ag_json_skip_ws(p, end);
            if (p < end && *p == ',') {
                p = ag_json_skip_ws(p + 1, end);
                continue;
            }
            return p < end && *p == ']' ? p + 1 : NULL;
        }
    }
    case 't':
        return end - p >= 4 && memcmp(p, "true", 4) == 0 ? p + 4 : NULL;
    case 'f':
        return end - p >= 5 && memcmp(p, "false", 5) == 0 ? p + 5 : NULL;
    case 'n':
        return end - p >= 4 && memcmp(p, "null", 4) == 0 ? p + 4 : NULL;
    default:
        return *p == '-' || (*p >= '0' && *p <= '9') ? check_number(p, end) : NULL;
    }
}

bool ag_json_object_check(const char *buf, size_t len, const ag_json_limits *limits, ag_json_field *fields,
                          size_t nfields)
{
    for (size_t f = 0; f < nfields; f++) {
        fields[f].value = NULL;
        fields[f].value_len = 0;
    }
    if (ag_utf8_valid_prefix((const unsigned char *)buf, len) != len)
        return false;
    const char *end = buf + len, *p = ag_json_skip_ws(buf, end);
    if (p >= end || *p != '{')
        return false;
    /* Half the node limit: the strict parse's pre-scan counts keys and commas too. */
    check_ctx x = {.end = end, .max_values = limits->max_nodes / 2,
                   .max_depth = limits->max_depth < CHECK_MAX_DEPTH ? limits->max_depth : CHECK_MAX_DEPTH,
                   .fields = fields, .nfields = nfields};
    p = check_value(&x, p, 0);
    if (p && ag_json_skip_ws(p, end) == end)
        return true;
    for (size_t f = 0; f < nfields; f++)
        fields[f].value = NULL;
    return false;
}
