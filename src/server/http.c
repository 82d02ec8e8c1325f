/* HTTP/1.1 syntax checks (see http.h). */
#include "aoai_guard/http.h"

#include <stdint.h>
#include <string.h>
#include <strings.h>

bool ag_http_name_in(const char *s, size_t n, const ag_http_name *names, size_t count)
{
    for (size_t i = 0; i < count; i++)
        if (names[i].len == n && strncasecmp(s, names[i].name, n) == 0)
            return true;
    return false;
}

/* RFC 9110 tchar (ALPHA, DIGIT and "!#$%&'*+-.^`|~"), one bit per byte value. */
static const uint64_t TCHAR[4] = {UINT64_C(0x03ff6cfa00000000), UINT64_C(0x57ffffff47fffffe), 0, 0};

static bool is_tchar(unsigned char c, bool allow_underscore)
{
    return ((TCHAR[c >> 6] >> (c & 63)) & 1) || (c == '_' && allow_underscore);
}

bool ag_http_is_token(const char *s, size_t n, bool allow_underscore)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_tchar((unsigned char)s[i], allow_underscore))
            return false;
    return true;
}

#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)

static uint64_t load8(const char *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

/* A mark in the high bit of each byte of w below 0x20 or equal to 0x7F (no false marks below the
 * lowest true one; bytes at or above 0x80 are never marked). */
static uint64_t ctl_bytes(uint64_t w)
{
    uint64_t del = w ^ (ONES * 0x7F);
    return (((w - ONES * 0x20) & ~w) | ((del - ONES) & ~del)) & HIGHS;
}

bool ag_http_value_ok(const char *s, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        if (ctl_bytes(load8(s + i)))
            break; /* a control byte here (maybe HTAB): the bytes decide below */
    for (; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && c != '\t') || c == 0x7F)
            return false;
    }
    return true;
}

int ag_http_check_request_line(const char *line, size_t len)
{
    size_t i = 0;
    while (i < len && is_tchar((unsigned char)line[i], false))
        i++;
    if (i == 0 || i >= len || line[i] != ' ')
        return 400;
    size_t method_len = i;
    size_t t0 = ++i;
    /* Eight target bytes at a time while none is a control, space, DEL or '#'; the bytes decide
     * from the first word with one. */
    while (i + 8 <= len) {
        uint64_t w = load8(line + i), hash = w ^ (ONES * '#');
        if ((ctl_bytes(w) | (w & HIGHS) | ((w - ONES * 0x21) & ~w & HIGHS) | ((hash - ONES) & ~hash & HIGHS)) != 0)
            break;
        i += 8;
    }
    while (i < len && line[i] != ' ') {
        unsigned char c = (unsigned char)line[i];
        if (c <= 0x20 || c >= 0x7F || c == '#')
            return 400;
        i++;
    }
    size_t tlen = i - t0;
    if (tlen == 0 || i >= len)
        return 400;
    bool star = tlen == 1 && line[t0] == '*';
    if (star && !(method_len == 7 && memcmp(line, "OPTIONS", 7) == 0))
        return 400;
    if (!star && line[t0] != '/')
        return 400; /* absolute-form and authority-form are not for a reverse proxy */
    i++;
    const char *v = line + i;
    size_t vlen = len - i;
    if (vlen != 8 || memcmp(v, "HTTP/", 5) != 0 || v[6] != '.' || v[5] < '0' || v[5] > '9' ||
        v[7] < '0' || v[7] > '9')
        return 400;
    if (v[5] != '1' || (v[7] != '0' && v[7] != '1'))
        return 505;
    return 0;
}

bool ag_http_is_hop_by_hop(const char *name, size_t n)
{
    switch (n) { /* most names have no hop-by-hop name of their length */
    case 2: return strncasecmp(name, "te", 2) == 0;
    case 7: return strncasecmp(name, "trailer", 7) == 0 || strncasecmp(name, "upgrade", 7) == 0;
    case 10: return strncasecmp(name, "connection", 10) == 0 || strncasecmp(name, "keep-alive", 10) == 0;
    case 14: return strncasecmp(name, "http2-settings", 14) == 0;
    case 16: return strncasecmp(name, "proxy-connection", 16) == 0;
    case 17: return strncasecmp(name, "transfer-encoding", 17) == 0;
    case 18: return strncasecmp(name, "proxy-authenticate", 18) == 0;
    case 19: return strncasecmp(name, "proxy-authorization", 19) == 0;
    default: return false;
    }
}

bool ag_http_list_has(const char *value, size_t n, const char *token)
{
    size_t tl = strlen(token);
    size_t i = 0;
    while (i < n) {
        while (i < n && (value[i] == ' ' || value[i] == '\t' || value[i] == ','))
            i++;
        size_t s = i;
        while (i < n && value[i] != ',')
            i++;
        size_t e = i;
        while (e > s && (value[e - 1] == ' ' || value[e - 1] == '\t'))
            e--;
        if (e - s == tl && strncasecmp(value + s, token, tl) == 0)
            return true;
    }
    return false;
}

int ag_http_check_transfer_encoding(const char *v, size_t n)
{
    size_t i = 0, elements = 0;
    bool other = false, last_chunked = false;
    for (;;) {
        while (i < n && (v[i] == ' ' || v[i] == '\t'))
            i++;
        size_t s = i;
        while (i < n && v[i] != ',' && v[i] != ' ' && v[i] != '\t')
            i++;
        size_t e = i;
        while (i < n && (v[i] == ' ' || v[i] == '\t'))
            i++;
        if (e == s || !ag_http_is_token(v + s, e - s, false))
            return 400; /* empty element (",chunked", "") or a non-token (parameters, 0xA0...) */
        elements++;
        last_chunked = e - s == 7 && strncasecmp(v + s, "chunked", 7) == 0;
        other |= !last_chunked;
        if (i == n)
            break;
        if (v[i] != ',')
            return 400;
        i++;
    }
    if (!last_chunked)
        return other && elements == 1 ? 501 : 400; /* chunked must be the final coding */
    return elements == 1 ? 0 : (other ? 501 : 400);
}

const char *ag_http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return status < 300 ? "OK" : status < 400 ? "Redirect" : status < 500 ? "Client Error"
                                                                                     : "Server Error";
    }
}
