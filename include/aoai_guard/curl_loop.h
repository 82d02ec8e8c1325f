/* curl_loop: control-plane HTTP client. libcurl's multi interface driven by one libevent event_base
 * (socket + timer callbacks, curl_multi_socket_action); it never blocks the loop. One ag_curl_loop
 * per thread/event_base; all calls on that thread only. Protocols restricted to http/https, no
 * redirects, CURLOPT_NOSIGNAL, response body capped (default 4 MiB, transfer fails beyond it).
 *
 * Ownership: start() copies everything in the request (method, url, headers, body, ca_file), so the
 * caller may free them as soon as start() returns. The response passed to the callback and all of
 * its strings belong to the loop and are valid only during the callback. */
#ifndef AOAI_GUARD_CURL_LOOP_H
#define AOAI_GUARD_CURL_LOOP_H

#include <stddef.h>

struct event_base;

typedef struct ag_curl_loop ag_curl_loop; /* one per thread/event_base */

typedef struct ag_http_request {
    const char *method;              /* "GET", "POST", ...; NULL = GET (or POST when body != NULL) */
    const char *url;                 /* http:// or https:// only */
    const char *const *headers;      /* NULL-terminated "Name: value" list, or NULL */
    const void *body;                /* request body or NULL */
    size_t body_len;
    long timeout_ms;                 /* whole-transfer timeout; <= 0 means 30000 */
    const char *ca_file;             /* CA bundle path; NULL = system default */
} ag_http_request;

typedef struct ag_http_response {
    int ok;                  /* 1: transfer completed (any HTTP status); 0: transport failure */
    long status;             /* HTTP status, 0 when !ok */
    const char *body;        /* NUL-terminated (NUL not counted); "" when empty, never NULL */
    size_t body_len;
    const char *retry_after; /* Retry-After header value or NULL */
    const char *error;       /* curl error text when !ok, NULL when ok */
} ag_http_response;

typedef void (*ag_http_done_fn)(const ag_http_response *resp, void *arg);

#define AG_CURL_LOOP_DEFAULT_MAX_BODY ((size_t)4 * 1024 * 1024)

/* Creates a loop bound to base (not owned); NULL on allocation/curl failure. */
ag_curl_loop *ag_curl_loop_new(struct event_base *base);

/* Cancels pending transfers without calling their callbacks, then frees the loop (also safe from inside
 * a done callback: teardown then completes when the callback returns). NULL is a no-op. */
void ag_curl_loop_free(ag_curl_loop *loop);

/* Starts a transfer; done(resp, arg) is called exactly once later from the event loop (never from
 * inside start()). Returns 0, or -1 (bad request / allocation failure) and then done is never called. */
int ag_curl_loop_start(ag_curl_loop *loop, const ag_http_request *req, ag_http_done_fn done, void *arg);

/* Cancels every pending transfer whose callback arg equals arg, without calling its callback (for an
 * owner that goes away before its transfers finish). Returns how many were cancelled. */
int ag_curl_loop_cancel(ag_curl_loop *loop, void *arg);

/* Sets the response-body cap for transfers started afterwards (0 = default 4 MiB). */
void ag_curl_loop_set_max_body(ag_curl_loop *loop, size_t max_body);

/* Number of transfers started whose callback has not run yet. */
int ag_curl_loop_pending(const ag_curl_loop *loop);

/* Value of response header name (case-insensitive, last occurrence) or NULL; only valid when called
 * with the resp passed to the callback, during that callback. */
const char *ag_http_response_header(const ag_http_response *resp, const char *name);

#endif
