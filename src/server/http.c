/* HTTP/1.1 syntax checks (see http.h). */
#include "aoai_guard/http.h"

#include <string.h>
#include <strings.h>

bool ag_http_name_in(const char *s, size_t n, const ag_http_name *names, size_t count)
{
    for (size_t i = 0; i < count; i++)
        if (names[i].len == n && strncasecmp(s, names[i].name, n) == 0)
            return true;
    return false;
}

static bool is_tchar(unsigned char c, bool allow_underscore)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    if (c == '_')
        return allow_underscore;
    return c && strchr("!#$%&'*+-.^`|~", c) != NULL;
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

bool ag_http_value_ok(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
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
    static const ag_http_name hop[] = {
        AG_HTTP_NAME("connection"), AG_HTTP_NAME("keep-alive"), AG_HTTP_NAME("proxy-connection"),
        AG_HTTP_NAME("te"), AG_HTTP_NAME("trailer"), AG_HTTP_NAME("transfer-encoding"),
        AG_HTTP_NAME("upgrade"), AG_HTTP_NAME("http2-settings"), AG_HTTP_NAME("proxy-authenticate"),
        AG_HTTP_NAME("proxy-authorization"),
    };
    return ag_http_name_in(name, n, hop, sizeof hop / sizeof *hop);
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
