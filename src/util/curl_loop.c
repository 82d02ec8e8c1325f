/* curl_loop: libcurl multi interface driven by a libevent event_base.
 *
 * curl tells us which sockets to watch (CURLMOPT_SOCKETFUNCTION) and when to wake it up
 * (CURLMOPT_TIMERFUNCTION); libevent watches them and we hand readiness back with
 * curl_multi_socket_action(). Finished transfers are collected with curl_multi_info_read() after each
 * socket_action call, outside any curl callback, so done() may start new transfers or free the loop. */
#include "aoai_guard/curl_loop.h"

#include <curl/curl.h>
#include <event2/event.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DEFAULT_TIMEOUT_MS 30000L
/* Never send loopback or IMDS traffic through an HTTP proxy taken from the environment. */
#define NOPROXY_BASE "localhost,127.0.0.1,::1,169.254.169.254"

typedef struct ag_curl_sock {
    curl_socket_t fd;
    struct event *ev;
    struct ag_curl_sock *prev, *next;
} ag_curl_sock;

typedef struct ag_curl_hdrcopy {
    struct ag_curl_hdrcopy *next;
    char value[]; /* NUL-terminated copy handed out by ag_http_response_header */
} ag_curl_hdrcopy;

typedef struct ag_curl_xfer {
    ag_http_response resp; /* handed to done(); ag_http_response_header() maps it back to the xfer */
    ag_curl_loop *loop;
    CURL *easy;
    struct curl_slist *hdrs;
    char *body;            /* our copy of the request body */
    char *rbuf;            /* response body, NUL-terminated */
    size_t rlen, rcap, max_body;
    int too_big;
    ag_curl_hdrcopy *hdrcopies;
    ag_http_done_fn done;
    void *arg;
    char errbuf[CURL_ERROR_SIZE];
    char errmsg[96];
    struct ag_curl_xfer *prev, *next;
} ag_curl_xfer;

struct ag_curl_loop {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;
    ag_curl_xfer *xfers;   /* pending transfers */
    ag_curl_sock *socks;   /* sockets curl asked us to watch */
    int pending;
    size_t max_body;
    int dispatching;       /* depth of check_done() */
    int closing;           /* free requested while dispatching */
    char *noproxy;
};

static pthread_once_t g_curl_once = PTHREAD_ONCE_INIT;
static int g_curl_init_rc = -1;

static void curl_global_once(void)
{
    g_curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

static void sock_free(ag_curl_loop *loop, ag_curl_sock *s)
{
    if (s->ev)
        event_free(s->ev);
    if (s->prev)
        s->prev->next = s->next;
    else
        loop->socks = s->next;
    if (s->next)
        s->next->prev = s->prev;
    free(s);
}

static void xfer_unlink(ag_curl_loop *loop, ag_curl_xfer *x)
{
    if (x->prev)
        x->prev->next = x->next;
    else
        loop->xfers = x->next;
    if (x->next)
        x->next->prev = x->prev;
    x->prev = x->next = NULL;
    loop->pending--;
}

/* Detaches the easy handle from the multi handle and frees everything the transfer owns. */
static void xfer_destroy(ag_curl_loop *loop, ag_curl_xfer *x)
{
    if (x->easy) {
        curl_multi_remove_handle(loop->multi, x->easy);
        curl_easy_cleanup(x->easy);
    }
    curl_slist_free_all(x->hdrs);
    while (x->hdrcopies) {
        ag_curl_hdrcopy *h = x->hdrcopies;
        x->hdrcopies = h->next;
        free(h);
    }
    free(x->body);
    free(x->rbuf);
    free(x);
}

static void loop_destroy(ag_curl_loop *loop)
{
    while (loop->xfers) {
        ag_curl_xfer *x = loop->xfers;
        xfer_unlink(loop, x);
        xfer_destroy(loop, x);
    }
    if (loop->multi)
        curl_multi_cleanup(loop->multi); /* may still report CURL_POLL_REMOVE for cached connections */
    while (loop->socks)
        sock_free(loop, loop->socks);
    if (loop->timer)
        event_free(loop->timer);
    free(loop->noproxy);
    free(loop);
}

/* Copies header `name` (last occurrence) of the finished transfer into storage owned by the xfer. */
static const char *xfer_header(ag_curl_xfer *x, const char *name)
{
    struct curl_header *h = NULL;
    if (curl_easy_header(x->easy, name, 0, CURLH_HEADER, -1, &h) != CURLHE_OK || !h)
        return NULL;
    if (h->amount > 1 &&
        curl_easy_header(x->easy, name, h->amount - 1, CURLH_HEADER, -1, &h) != CURLHE_OK)
        return NULL;
    size_t n = strlen(h->value);
    ag_curl_hdrcopy *c = malloc(sizeof(*c) + n + 1);
    if (!c)
        return NULL;
    memcpy(c->value, h->value, n + 1);
    c->next = x->hdrcopies;
    x->hdrcopies = c;
    return c->value;
}

static void xfer_finish(ag_curl_loop *loop, ag_curl_xfer *x, CURLcode rc)
{
    xfer_unlink(loop, x);
    ag_http_response *r = &x->resp;
    memset(r, 0, sizeof(*r));
    if (rc == CURLE_OK && !x->too_big) {
        r->ok = 1;
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &r->status);
        r->retry_after = xfer_header(x, "Retry-After");
    } else {
        r->ok = 0;
        r->status = 0;
        if (x->too_big || rc == CURLE_FILESIZE_EXCEEDED) {
            snprintf(x->errmsg, sizeof(x->errmsg), "response body larger than %zu bytes", x->max_body);
            r->error = x->errmsg;
        } else {
            r->error = x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc);
        }
    }
    if (x->rbuf && r->ok) {
        r->body = x->rbuf;
        r->body_len = x->rlen;
    } else {
        r->body = "";
        r->body_len = 0;
    }
    x->done(r, x->arg);
    xfer_destroy(loop, x);
}

/* Collects finished transfers; runs only outside curl callbacks. */
static void check_done(ag_curl_loop *loop)
{
    CURLMsg *msg;
    int left;
    loop->dispatching++;
    while (!loop->closing && (msg = curl_multi_info_read(loop->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *easy = msg->easy_handle;
        CURLcode rc = msg->data.result; /* msg is invalid once the handle is removed */
        char *priv = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
        if (priv)
            xfer_finish(loop, (ag_curl_xfer *)(void *)priv, rc);
    }
    loop->dispatching--;
    if (loop->closing && loop->dispatching == 0)
        loop_destroy(loop);
}

static void on_socket_event(evutil_socket_t fd, short what, void *arg)
{
    ag_curl_loop *loop = arg;
    int action = ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    int running = 0;
    curl_multi_socket_action(loop->multi, (curl_socket_t)fd, action, &running);
    check_done(loop);
}

static void on_timer_event(evutil_socket_t fd, short what, void *arg)
{
    ag_curl_loop *loop = arg;
    int running = 0;
    curl_multi_socket_action(loop->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(loop);
}

static int curl_socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    ag_curl_loop *loop = userp;
    ag_curl_sock *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            curl_multi_assign(loop->multi, fd, NULL);
            sock_free(loop, s);
        }
        return 0;
    }
    if (!s) {
        s = calloc(1, sizeof(*s));
        if (!s)
            return -1;
        s->fd = fd;
        s->next = loop->socks;
        if (loop->socks)
            loop->socks->prev = s;
        loop->socks = s;
        curl_multi_assign(loop->multi, fd, s);
    }
    if (s->ev) {
        event_free(s->ev);
        s->ev = NULL;
    }
    short kind = EV_PERSIST | ((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
    s->ev = event_new(loop->base, fd, kind, on_socket_event, loop);
    if (!s->ev || event_add(s->ev, NULL) != 0)
        return -1;
    return 0;
}

static int curl_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    ag_curl_loop *loop = userp;
    if (timeout_ms < 0) {
        evtimer_del(loop->timer);
        return 0;
    }
    struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
    return evtimer_add(loop->timer, &tv) == 0 ? 0 : -1;
}

static size_t curl_write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    ag_curl_xfer *x = userdata;
    size_t n = size * nmemb;
    if (n > x->max_body - x->rlen) {
        x->too_big = 1;
        return 0; /* CURLE_WRITE_ERROR ends the transfer */
    }
    if (x->rlen + n + 1 > x->rcap) {
        size_t cap = x->rcap ? x->rcap : 1024;
        while (cap < x->rlen + n + 1)
            cap *= 2;
        if (cap > x->max_body + 1)
            cap = x->max_body + 1;
        char *nb = realloc(x->rbuf, cap);
        if (!nb)
            return 0;
        x->rbuf = nb;
        x->rcap = cap;
    }
    memcpy(x->rbuf + x->rlen, ptr, n);
    x->rlen += n;
    x->rbuf[x->rlen] = '\0';
    return n;
}

ag_curl_loop *ag_curl_loop_new(struct event_base *base)
{
    if (!base)
        return NULL;
    pthread_once(&g_curl_once, curl_global_once);
    if (g_curl_init_rc != 0)
        return NULL;
    ag_curl_loop *loop = calloc(1, sizeof(*loop));
    if (!loop)
        return NULL;
    loop->base = base;
    loop->max_body = AG_CURL_LOOP_DEFAULT_MAX_BODY;
    const char *envnp = getenv("NO_PROXY");
    if (!envnp || !*envnp)
        envnp = getenv("no_proxy");
    size_t nplen = sizeof(NOPROXY_BASE) + (envnp ? strlen(envnp) + 1 : 0);
    loop->noproxy = malloc(nplen);
    loop->multi = curl_multi_init();
    loop->timer = evtimer_new(base, on_timer_event, loop);
    if (!loop->noproxy || !loop->multi || !loop->timer) {
        loop_destroy(loop);
        return NULL;
    }
    if (envnp && *envnp)
        snprintf(loop->noproxy, nplen, "%s,%s", NOPROXY_BASE, envnp);
    else
        snprintf(loop->noproxy, nplen, "%s", NOPROXY_BASE);
    curl_multi_setopt(loop->multi, CURLMOPT_SOCKETFUNCTION, curl_socket_cb);
    curl_multi_setopt(loop->multi, CURLMOPT_SOCKETDATA, loop);
    curl_multi_setopt(loop->multi, CURLMOPT_TIMERFUNCTION, curl_timer_cb);
    curl_multi_setopt(loop->multi, CURLMOPT_TIMERDATA, loop);
    return loop;
}

void ag_curl_loop_free(ag_curl_loop *loop)
{
    if (!loop)
        return;
    if (loop->dispatching > 0) {
        /* called from a done() callback: finish tearing down once check_done() unwinds */
        loop->closing = 1;
        return;
    }
    loop_destroy(loop);
}

void ag_curl_loop_set_max_body(ag_curl_loop *loop, size_t max_body)
{
    loop->max_body = max_body ? max_body : AG_CURL_LOOP_DEFAULT_MAX_BODY;
}

int ag_curl_loop_pending(const ag_curl_loop *loop)
{
    return loop ? loop->pending : 0;
}

int ag_curl_loop_cancel(ag_curl_loop *loop, void *arg)
{
    int n = 0;
    ag_curl_xfer *x = loop ? loop->xfers : NULL;
    while (x) {
        ag_curl_xfer *next = x->next;
        if (x->arg == arg) {
            xfer_unlink(loop, x);
            xfer_destroy(loop, x);
            n++;
        }
        x = next;
    }
    return n;
}

const char *ag_http_response_header(const ag_http_response *resp, const char *name)
{
    if (!resp || !name || !resp->ok)
        return NULL;
    ag_curl_xfer *x = (ag_curl_xfer *)(void *)((char *)(uintptr_t)resp - offsetof(ag_curl_xfer, resp));
    return xfer_header(x, name);
}

#define SETOPT(opt, val) do { if (curl_easy_setopt(x->easy, opt, val) != CURLE_OK) goto fail; } while (0)

int ag_curl_loop_start(ag_curl_loop *loop, const ag_http_request *req, ag_http_done_fn done, void *arg)
{
    if (!loop || loop->closing || !req || !req->url || !done || (req->body_len && !req->body))
        return -1;
    if (strncasecmp(req->url, "http://", 7) != 0 && strncasecmp(req->url, "https://", 8) != 0)
        return -1;
    ag_curl_xfer *x = calloc(1, sizeof(*x));
    if (!x)
        return -1;
    x->loop = loop;
    x->done = done;
    x->arg = arg;
    x->max_body = loop->max_body;
    x->easy = curl_easy_init();
    if (!x->easy)
        goto fail;

    const char *method = req->method ? req->method : (req->body ? "POST" : "GET");
    SETOPT(CURLOPT_URL, req->url);
    SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
    SETOPT(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
    SETOPT(CURLOPT_NOSIGNAL, 1L);
    SETOPT(CURLOPT_TIMEOUT_MS, req->timeout_ms > 0 ? req->timeout_ms : DEFAULT_TIMEOUT_MS);
    SETOPT(CURLOPT_ERRORBUFFER, x->errbuf);
    SETOPT(CURLOPT_PRIVATE, (void *)x);
    SETOPT(CURLOPT_WRITEFUNCTION, curl_write_cb);
    SETOPT(CURLOPT_WRITEDATA, (void *)x);
    SETOPT(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)x->max_body);
    SETOPT(CURLOPT_NOPROXY, loop->noproxy);
    SETOPT(CURLOPT_USERAGENT, "aoai-guard/" AG_VERSION);
    if (req->ca_file)
        SETOPT(CURLOPT_CAINFO, req->ca_file);

    if (req->body) {
        x->body = malloc(req->body_len ? req->body_len : 1);
        if (!x->body)
            goto fail;
        memcpy(x->body, req->body, req->body_len);
        SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        SETOPT(CURLOPT_POSTFIELDS, x->body);
    }
    if (strcmp(method, "HEAD") == 0) {
        SETOPT(CURLOPT_NOBODY, 1L);
    } else if (!req->body) {
        if (strcmp(method, "POST") == 0) {
            SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
            SETOPT(CURLOPT_POSTFIELDS, "");
        } else if (strcmp(method, "GET") == 0) {
            SETOPT(CURLOPT_HTTPGET, 1L);
        } else {
            SETOPT(CURLOPT_CUSTOMREQUEST, method);
        }
    } else if (strcmp(method, "POST") != 0) {
        SETOPT(CURLOPT_CUSTOMREQUEST, method); /* PUT/PATCH/... with the body set above */
    }

    if (req->headers) {
        for (const char *const *h = req->headers; *h; h++) {
            struct curl_slist *n = curl_slist_append(x->hdrs, *h);
            if (!n)
                goto fail;
            x->hdrs = n;
        }
    }
    if (req->body) {
        struct curl_slist *n = curl_slist_append(x->hdrs, "Expect:"); /* no 100-continue round trip */
        if (!n)
            goto fail;
        x->hdrs = n;
    }
    if (x->hdrs)
        SETOPT(CURLOPT_HTTPHEADER, x->hdrs);

    x->next = loop->xfers;
    if (loop->xfers)
        loop->xfers->prev = x;
    loop->xfers = x;
    loop->pending++;
    /* Only arms the timer (CURLMOPT_TIMERFUNCTION): the transfer runs from the event loop. */
    if (curl_multi_add_handle(loop->multi, x->easy) != CURLM_OK) {
        xfer_unlink(loop, x);
        CURL *easy = x->easy;
        x->easy = NULL;
        curl_easy_cleanup(easy);
        xfer_destroy(loop, x);
        return -1;
    }
    return 0;

fail:
    if (x->easy) {
        curl_easy_cleanup(x->easy);
        x->easy = NULL;
    }
    xfer_destroy(loop, x);
    return -1;
}
