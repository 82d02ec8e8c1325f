/* HTTP/1.1 syntax checks that llhttp does not make (or makes leniently), shared by the inbound
 * connection and the upstream client. All are pure functions over bytes. */
#ifndef AOAI_GUARD_HTTP_H
#define AOAI_GUARD_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>

/* Checks a request line without its CRLF: METHOD SP origin-form SP HTTP/1.x, exactly one SP each,
 * a token method, a target of visible ASCII starting with '/' (or "*" for OPTIONS), no '#'.
 * Returns 0 when valid, 400 when malformed, 505 for a well-formed but unsupported version. */
int ag_http_check_request_line(const char *line, size_t len);

/* True when s[0..n) is a non-empty RFC 9110 token (tchar); '_' is refused when strict. */
bool ag_http_is_token(const char *s, size_t n, bool allow_underscore);

/* True when the header value has no CR, LF, NUL or other control byte except HTAB. */
bool ag_http_value_ok(const char *s, size_t n);

/* True for headers that describe one hop and must not be forwarded (RFC 9110 7.6.1 plus the
 * de-facto ones: Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade,
 * HTTP2-Settings, Connection). */
bool ag_http_is_hop_by_hop(const char *name, size_t n);

/* True when the comma-separated header value list contains token (case-insensitive). */
bool ag_http_list_has(const char *value, size_t n, const char *token);

/* Checks a request's Transfer-Encoding value: 0 when it is exactly the "chunked" coding (case
 * insensitive, OWS allowed around it), 400 when malformed (empty, empty list elements, parameters,
 * non-token bytes), 501 when it names another coding. */
int ag_http_check_transfer_encoding(const char *v, size_t n);

/* Standard reason phrase for a status code ("OK", "Too Many Requests", ...). */
const char *ag_http_reason(int status);

/* Case-insensitive equality of s[0..n) and the NUL-terminated lit. */
static inline bool ag_http_name_is(const char *s, size_t n, const char *lit)
{
    return strlen(lit) == n && strncasecmp(s, lit, n) == 0; /* strlen of a literal folds */
}

/* A header name with its length, for tables scanned per header. */
typedef struct ag_http_name {
    const char *name;
    size_t len;
} ag_http_name;
#define AG_HTTP_NAME(lit) {lit, sizeof(lit) - 1}

/* True when s[0..n) is one of names[0..count), case-insensitively. */
bool ag_http_name_in(const char *s, size_t n, const ag_http_name *names, size_t count);

#endif
