/* Strict JSON parsing for bytes that must mean the same thing to us and to Azure.
 *
 * cJSON alone is lenient in ways that let two parsers disagree: it keeps duplicate keys (and looks up
 * the first), truncates strings at an escaped NUL, copies invalid UTF-8, takes NUL and the other
 * control bytes for whitespace, and ignores trailing bytes.
 * ag_json_parse_strict() refuses all of these, plus raw control characters in strings, non-finite
 * numbers, excessive nesting and excessive node counts, before or right after cJSON parses. */
#ifndef AOAI_GUARD_JSON_STRICT_H
#define AOAI_GUARD_JSON_STRICT_H

#include <stdbool.h>
#include <stddef.h>
#include <cjson/cJSON.h>

typedef enum ag_json_status {
    AG_JSON_OK = 0,
    AG_JSON_EMPTY,        /* nothing but whitespace */
    AG_JSON_SYNTAX,       /* cJSON could not parse it */
    AG_JSON_TRAILING,     /* bytes after the top-level value */
    AG_JSON_BAD_UTF8,     /* malformed, overlong, surrogate or > U+10FFFF sequence */
    AG_JSON_CONTROL_CHAR, /* raw byte < 0x20 inside a string, or one other than tab, LF and CR
                           * between tokens (cJSON takes any byte <= 0x20 for whitespace) */
    AG_JSON_NUL_ESCAPE,   /* \u0000 inside a string */
    AG_JSON_DUP_KEY,      /* the same key twice in one object */
    AG_JSON_TOO_DEEP,     /* nesting beyond the limit */
    AG_JSON_TOO_MANY_NODES,
    AG_JSON_BAD_NUMBER,   /* overflows to infinity */
} ag_json_status;

typedef struct ag_json_limits {
    int max_depth;     /* arrays + objects nested; e.g. 32 */
    size_t max_nodes;  /* values in the whole document; e.g. 100000 */
} ag_json_limits;

/* Parses exactly len bytes as one JSON document under the rules above. Returns the tree (caller frees
 * with cJSON_Delete) or NULL with *status set and *err_offset at the offending byte (best effort). */
cJSON *ag_json_parse_strict(const char *buf, size_t len, const ag_json_limits *limits,
                            ag_json_status *status, size_t *err_offset);

/* A top-level key to find with ag_json_object_check. */
typedef struct ag_json_field {
    const char *key;          /* in: the key, unescaped */
    const char *value;        /* out: the value's bytes in the document (a string with its quotes,
                               * never one holding an escape); NULL when the key is absent */
    size_t value_len;
} ag_json_field;

/* Proves without building a tree that ag_json_parse_strict(buf, len, limits) returns an object, and
 * finds the values of the given top-level keys. False does not mean "bad": it also covers what the
 * check leaves to the full parse (\u escapes, escaped keys, a field's escaped string value,
 * exponents, long numbers, objects of over 32 keys, nesting over 32). The caller then parses and
 * reports what ag_json_parse_strict reports. */
bool ag_json_object_check(const char *buf, size_t len, const ag_json_limits *limits, ag_json_field *fields,
                          size_t nfields);

/* A short human-readable reason for a status ("duplicate key", ...). */
const char *ag_json_status_str(ag_json_status status);

/* Length of the longest prefix of s[0..len) that a JSON string holds as it is: no '"', no '\\', no
 * byte below 0x20. Sixteen bytes at a time (SSE2); the scanners of strings (strict parse, audit
 * escaping) use it to skip ordinary text. */
size_t ag_json_plain_prefix(const char *s, size_t len);

/* Skips JSON whitespace at p; returns the first other byte (or end). */
const char *ag_json_skip_ws(const char *p, const char *end);

/* Skips one JSON value at p without building it, accepting only strict JSON that cJSON reads the
 * same way: no \u escapes (whose surrogate rules differ), at most 32 levels, and something after
 * the value (a number or literal cannot end the text). Returns where the value ends, or NULL for
 * anything else: the caller then leaves the text to cJSON. */
const char *ag_json_skip_value(const char *p, const char *end);

/* Checks that s[0..len) is well-formed UTF-8 (no overlongs, surrogates or code points > U+10FFFF).
 * Returns len when valid, else the offset of the first bad byte. */
size_t ag_utf8_valid_prefix(const unsigned char *s, size_t len);

#endif
