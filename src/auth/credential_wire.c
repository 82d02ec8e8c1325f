/* Token requests and responses on the wire, and the refresh/retry arithmetic: pure functions. */
#include "aoai_guard/credential.h"
#include "aoai_guard/json_strict.h"

#include <curl/curl.h>
#include <openssl/crypto.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- a small growable string ---- */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_addn(sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *np = malloc(cap);
        if (!np) {
            b->oom = 1;
            return;
        }
        if (b->p) {
            memcpy(np, b->p, b->len);
            OPENSSL_cleanse(b->p, b->cap); /* may hold a secret */
            free(b->p);
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_add(sbuf *b, const char *s)
{
    sb_addn(b, s, strlen(s));
}

/* Appends s percent-encoded (everything but unreserved characters). */
static void sb_add_esc(sbuf *b, const char *s)
{
    char *e = curl_easy_escape(NULL, s, 0);
    if (!e) {
        b->oom = 1;
        return;
    }
    sb_add(b, e);
    OPENSSL_cleanse(e, strlen(e));
    curl_free(e);
}

static void sb_param(sbuf *b, const char *sep, const char *name, const char *value)
{
    sb_add(b, sep);
    sb_add(b, name);
    sb_add(b, "=");
    sb_add_esc(b, value);
}

static char *sb_take(sbuf *b)
{
    if (b->oom) {
        if (b->p) {
            OPENSSL_cleanse(b->p, b->cap);
            free(b->p);
        }
        return NULL;
    }
    return b->p;
}

/* ---- requests ---- */

void ag_credential_req_free(ag_credential_req *req)
{
    if (!req)
        return;
    free(req->url);
    if (req->body) {
        OPENSSL_cleanse(req->body, req->body_len);
        free(req->body);
    }
    for (int i = 0; i < 3; i++) {
        if (req->headers[i]) {
            OPENSSL_cleanse(req->headers[i], strlen(req->headers[i]));
            free(req->headers[i]);
        }
    }
    memset(req, 0, sizeof(*req));
}

int ag_credential_scope_to_resource(const char *scope, char *out, size_t outlen)
{
    static const char suffix[] = "/.default";
    if (!scope || !*scope || outlen == 0)
        return -1;
    size_t n = strlen(scope);
    size_t sl = sizeof(suffix) - 1;
    if (n > sl && strcmp(scope + n - sl, suffix) == 0) {
        n -= sl;
        const char *sep = strstr(scope, "://");
        size_t min = sep ? (size_t)(sep - scope) + 4 : 1; /* keep at least one host character */
        if (n > min && scope[n - 1] == '/')
            n--;
    }
    if (n == 0 || n >= outlen)
        return -1;
    memcpy(out, scope, n);
    out[n] = '\0';
    return 0;
}

static char *dup_header(const char *name, const char *value)
{
    size_t n = strlen(name) + 2 + strlen(value) + 1;
    char *h = malloc(n);
    if (h)
        snprintf(h, n, "%s: %s", name, value);
    return h;
}

int ag_credential_build_request(const ag_credential_settings *s, const char *scope, const char *assertion,
                                ag_credential_req *out)
{
    memset(out, 0, sizeof(*out));
    if (!s || !scope || !*scope)
        return -1;
    sbuf url = { 0 }, body = { 0 };
    switch (s->source) {
    case AG_CRED_SRC_CLIENT_SECRET:
    case AG_CRED_SRC_WORKLOAD_IDENTITY:
        if (!s->token_url || !s->client_id)
            return -1;
        if (s->source == AG_CRED_SRC_CLIENT_SECRET && !s->client_secret)
            return -1;
        if (s->source == AG_CRED_SRC_WORKLOAD_IDENTITY && (!assertion || !*assertion))
            return -1;
        out->method = "POST";
        sb_add(&url, s->token_url);
        sb_param(&body, "", "client_id", s->client_id);
        sb_param(&body, "&", "scope", scope);
        if (s->source == AG_CRED_SRC_CLIENT_SECRET) {
            sb_param(&body, "&", "client_secret", s->client_secret);
        } else {
            sb_param(&body, "&", "client_assertion_type",
                     "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
            sb_param(&body, "&", "client_assertion", assertion);
        }
        sb_param(&body, "&", "grant_type", "client_credentials");
        out->headers[0] = strdup("Content-Type: application/x-www-form-urlencoded");
        out->headers[1] = strdup("Accept: application/json");
        break;
    case AG_CRED_SRC_IMDS:
    case AG_CRED_SRC_APP_SERVICE: {
        char resource[AG_CREDENTIAL_SCOPE_LEN];
        if (ag_credential_scope_to_resource(scope, resource, sizeof(resource)) != 0)
            return -1;
        out->method = "GET";
        if (s->source == AG_CRED_SRC_IMDS) {
            if (!s->imds_endpoint)
                return -1;
            sb_add(&url, s->imds_endpoint);
            sb_add(&url, "/metadata/identity/oauth2/token?api-version=2018-02-01");
            sb_param(&url, "&", "resource", resource);
            out->headers[0] = strdup("Metadata: true");
        } else {
            if (!s->identity_endpoint || !s->identity_header)
                return -1;
            sb_add(&url, s->identity_endpoint);
            sb_param(&url, strchr(s->identity_endpoint, '?') ? "&" : "?", "resource", resource);
            sb_add(&url, "&api-version=2019-08-01");
            out->headers[0] = dup_header("X-IDENTITY-HEADER", s->identity_header);
        }
        if (s->mi_id_param && s->mi_id_value)
            sb_param(&url, "&", s->mi_id_param, s->mi_id_value);
        break;
    }
    default:
        return -1;
    }
    out->url = sb_take(&url);
    out->body_len = body.len;
    out->body = sb_take(&body);
    bool body_needed = strcmp(out->method, "POST") == 0;
    if (!out->url || (body_needed && !out->body) || !out->headers[0] ||
        (body_needed && !out->headers[1])) {
        ag_credential_req_free(out);
        return -1;
    }
    return 0;
}

/* ---- responses ---- */

void ag_token_response_free(ag_token_response *r)
{
    if (r && r->access_token) {
        OPENSSL_cleanse(r->access_token, strlen(r->access_token));
        free(r->access_token);
        r->access_token = NULL;
    }
}

/* A JSON number, or a string of 1..12 decimal digits (IMDS and App Service send numbers as strings). */
static int json_int(const cJSON *v, long long *out)
{
    if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        if (!(d >= 0 && d < 1e12) || d != (double)(long long)d)
            return -1;
        *out = (long long)d;
        return 0;
    }
    if (cJSON_IsString(v)) {
        const char *s = v->valuestring;
        size_t n = strlen(s);
        if (n == 0 || n > 12)
            return -1;
        long long x = 0;
        for (size_t i = 0; i < n; i++) {
            if (s[i] < '0' || s[i] > '9')
                return -1;
            x = x * 10 + (s[i] - '0');
        }
        *out = x;
        return 0;
    }
    return -1;
}

int ag_credential_parse_token(const char *body, size_t len, long long now, ag_token_response *out,
                              char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    ag_json_limits lim = { .max_depth = 8, .max_nodes = 256 };
    ag_json_status st;
    size_t off;
    cJSON *root = ag_json_parse_strict(body, len, &lim, &st, &off);
    if (!root) {
        snprintf(err, errlen, "token response is not valid JSON (%s at byte %zu)", ag_json_status_str(st), off);
        return -1;
    }
    int rc = -1;
    const cJSON *tok = NULL;
    if (!cJSON_IsObject(root)) {
        snprintf(err, errlen, "token response is not a JSON object");
        goto out;
    }
    tok = cJSON_GetObjectItemCaseSensitive(root, "access_token");
    if (!cJSON_IsString(tok) || tok->valuestring[0] == '\0') {
        snprintf(err, errlen, "token response has no access_token string");
        goto out;
    }
    size_t tlen = strlen(tok->valuestring);
    if (tlen > AG_CREDENTIAL_MAX_TOKEN) {
        snprintf(err, errlen, "access_token is %zu bytes, more than %d", tlen, AG_CREDENTIAL_MAX_TOKEN);
        goto out;
    }
    for (size_t i = 0; i < tlen; i++) {
        unsigned char c = (unsigned char)tok->valuestring[i];
        if (c < 0x21 || c > 0x7e) {
            snprintf(err, errlen, "access_token contains a byte outside printable ASCII (at %zu)", i);
            goto out;
        }
    }
    const cJSON *tt = cJSON_GetObjectItemCaseSensitive(root, "token_type");
    if (tt && (!cJSON_IsString(tt) || strcasecmp(tt->valuestring, "Bearer") != 0)) {
        snprintf(err, errlen, "token_type is not Bearer");
        goto out;
    }
    const cJSON *ein = cJSON_GetObjectItemCaseSensitive(root, "expires_in");
    const cJSON *eon = cJSON_GetObjectItemCaseSensitive(root, "expires_on");
    long long v = 0, exp = 0;
    if (ein) {
        if (json_int(ein, &v) != 0 || v <= 0 || v > 10LL * 365 * 86400) {
            snprintf(err, errlen, "expires_in is not a positive number of seconds");
            goto out;
        }
        exp = now + v;
    } else if (eon) {
        if (json_int(eon, &v) != 0) {
            snprintf(err, errlen, "expires_on is not a Unix time");
            goto out;
        }
        exp = v;
    } else {
        snprintf(err, errlen, "token response has neither expires_in nor expires_on");
        goto out;
    }
    if (exp <= now) {
        snprintf(err, errlen, "token already expired (expires %lld s ago)", now - exp);
        goto out;
    }
    out->access_token = strdup(tok->valuestring);
    if (!out->access_token) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    out->expires_on = exp;
    rc = 0;
out:
    if (tok && cJSON_IsString(tok))
        OPENSSL_cleanse(tok->valuestring, strlen(tok->valuestring));
    cJSON_Delete(root);
    return rc;
}

/* Appends s to out[*used..] with control and non-ASCII bytes as '?', up to max bytes of s. */
static void append_clean(char *out, size_t outlen, size_t *used, const char *s, size_t max)
{
    size_t i = 0;
    for (; s[i] && i < max && *used + 1 < outlen; i++) {
        unsigned char c = (unsigned char)s[i];
        out[(*used)++] = (c < 0x20 || c > 0x7e) ? (c == '\r' || c == '\n' || c == '\t' ? ' ' : '?') : (char)c;
    }
    if (s[i] && *used + 4 < outlen) {
        memcpy(out + *used, "...", 3);
        *used += 3;
    }
    out[*used] = '\0';
}

void ag_credential_describe_error(const char *body, size_t len, char *out, size_t outlen)
{
    if (outlen == 0)
        return;
    out[0] = '\0';
    ag_json_limits lim = { .max_depth = 8, .max_nodes = 1000 };
    ag_json_status st;
    size_t off;
    cJSON *root = body && len ? ag_json_parse_strict(body, len, &lim, &st, &off) : NULL;
    const cJSON *e = root ? cJSON_GetObjectItemCaseSensitive(root, "error") : NULL;
    const cJSON *d = root ? cJSON_GetObjectItemCaseSensitive(root, "error_description") : NULL;
    const cJSON *m = root ? cJSON_GetObjectItemCaseSensitive(root, "message") : NULL;
    if (cJSON_IsObject(e)) { /* {"error":{"code":..,"message":..}} */
        m = cJSON_GetObjectItemCaseSensitive(e, "message");
        e = cJSON_GetObjectItemCaseSensitive(e, "code");
    }
    size_t used = 0;
    if (cJSON_IsString(e))
        append_clean(out, outlen, &used, e->valuestring, 64);
    const cJSON *desc = cJSON_IsString(d) ? d : cJSON_IsString(m) ? m : NULL;
    if (desc) {
        if (used && used + 2 < outlen) {
            memcpy(out + used, ": ", 3);
            used += 2;
        }
        append_clean(out, outlen, &used, desc->valuestring, 200);
    }
    if (used == 0)
        snprintf(out, outlen, "(no error body)");
    cJSON_Delete(root);
}

/* ---- scheduling ---- */

long long ag_credential_refresh_delay(long long now, long long expires_on, long long refresh_before_s,
                                      double jitter01)
{
    long long lifetime = expires_on - now;
    if (lifetime <= 1)
        return 1;
    long long half = lifetime / 2;
    long long margin;
    if (lifetime >= 7200)
        margin = refresh_before_s > half ? refresh_before_s : half;
    else
        margin = refresh_before_s < half ? refresh_before_s : half;
    if (jitter01 < 0)
        jitter01 = 0;
    if (jitter01 >= 1)
        jitter01 = 0.999999;
    long long jitter = (long long)(jitter01 * (double)margin / 10.0);
    long long delay = lifetime - margin - jitter;
    return delay < 1 ? 1 : delay;
}

bool ag_credential_retryable(long status)
{
    return status == 0 || status == 404 || status == 408 || status == 410 || status == 429 ||
           (status >= 500 && status <= 599);
}

long long ag_credential_retry_delay_ms(int attempt, long status, const char *retry_after, long long now,
                                       double jitter01)
{
    long long ms;
    if (!ag_credential_retryable(status)) {
        ms = 60000;
    } else {
        int a = attempt < 1 ? 1 : attempt > 4 ? 4 : attempt;
        long long base_s = (1LL << (a + 1)) - 2; /* 2, 6, 14, 30 */
        if (jitter01 < 0)
            jitter01 = 0;
        if (jitter01 > 1)
            jitter01 = 1;
        ms = (long long)((double)base_s * 1000.0 * (0.8 + 0.2 * jitter01));
    }
    if (retry_after && *retry_after) {
        long long ra = -1;
        const char *p = retry_after;
        if (*p >= '0' && *p <= '9') {
            ra = 0;
            for (; *p >= '0' && *p <= '9' && ra < 1000000; p++)
                ra = ra * 10 + (*p - '0');
            if (*p != '\0')
                ra = -1;
        } else {
            time_t t = curl_getdate(retry_after, NULL);
            if (t != (time_t)-1)
                ra = (long long)t - now;
        }
        if (ra > 300)
            ra = 300;
        if (ra > 0 && ra * 1000 > ms)
            ms = ra * 1000;
    }
    return ms;
}
