/* Fake Azure OpenAI: behaviour configuration, fault queue and request recorder (see fake_aoai_internal.h). */
#include "fake_aoai_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/evp.h>

#include "aoai_guard/json_strict.h"

/* ---- small helpers ---- */

void ag_fake_oom(void)
{
    fputs("fake_aoai: out of memory\n", stderr);
    abort();
}

char *ag_fake_strdup(const char *s)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        ag_fake_oom();
    return d;
}

static void buf_reserve(ag_fake_buf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        ag_fake_oom();
    b->p = p;
    b->cap = cap;
}

void ag_fake_buf_add(ag_fake_buf *b, const void *data, size_t n)
{
    buf_reserve(b, n);
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void ag_fake_buf_str(ag_fake_buf *b, const char *s)
{
    ag_fake_buf_add(b, s, strlen(s));
}

void ag_fake_buf_printf(ag_fake_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void ag_fake_buf_free(ag_fake_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

const char *ag_fake_req_header(const ag_fake_req *r, const char *name, size_t *len)
{
    for (size_t i = 0; i < r->nhdrs; i++) {
        const ag_fake_hdr *h = &r->hdrs[i];
        if (strcasecmp(r->hbase + h->name_off, name) == 0) {
            if (len)
                *len = h->value_len;
            return r->hbase + h->value_off;
        }
    }
    return NULL;
}

/* ---- configuration ---- */

void ag_fake_conf_init(ag_fake_conf *c)
{
    memset(c, 0, sizeof *c);
    c->model = ag_fake_strdup("gpt-4o-mini-2024-07-18");
    c->embedding_model = ag_fake_strdup("text-embedding-3-small");
    c->region = ag_fake_strdup("East US");
    c->finish_reason = ag_fake_strdup("stop");
    c->ratelimit_requests = 1000;
    c->ratelimit_tokens = 1000000;
}

void ag_fake_fault_clear(ag_fake_fault *f)
{
    free(f->retry_after);
    free(f->retry_after_ms);
    free(f->code);
    free(f->message);
    memset(f, 0, sizeof *f);
}

static void faults_free(ag_fake_fault *faults, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ag_fake_fault_clear(&faults[i]);
    free(faults);
}

void ag_fake_conf_reset(ag_fake_conf *c)
{
    free(c->reply_text);
    free(c->model);
    free(c->embedding_model);
    free(c->region);
    free(c->finish_reason);
    faults_free(c->faults, c->nfaults);
    ag_fake_conf_init(c);
}

/* Reads a retry header value given as a string (verbatim) or a number (formatted as an integer). */
static int read_header_value(const cJSON *obj, const char *path, const char *key, char **out,
                             ag_conf_err *err)
{
    const cJSON *v = ag_conf_get(obj, key);
    if (!v)
        return 0;
    if (cJSON_IsString(v)) {
        for (const char *s = v->valuestring; *s; s++)
            if ((unsigned char)*s < 0x20 || *s == 0x7f)
                return ag_conf_fail(err, path, key, "must not contain control characters");
        *out = ag_fake_strdup(v->valuestring);
        return 0;
    }
    long long n = 0;
    if (ag_conf_int(obj, path, key, -1000000000LL, 1000000000LL, &n, err) != 0)
        return ag_conf_fail(err, path, key, "must be a string or an integer");
    char tmp[32];
    snprintf(tmp, sizeof tmp, "%lld", n);
    *out = ag_fake_strdup(tmp);
    return 0;
}

static int parse_fault(const cJSON *obj, const char *path, ag_fake_fault *f, ag_conf_err *err)
{
    static const char *const keys[] = {"status", "retry_after", "retry_after_ms", "code", "message",
                                       "reset_after_chunks", "stall_after_chunks",
                                       "close_before_response", "count", NULL};
    memset(f, 0, sizeof *f);
    if (ag_conf_object(obj, path, keys, err) != 0)
        return -1;
    int kinds = 0;
    long long v = 0;
    f->count = 1;
    if (ag_conf_int(obj, path, "count", 1, 1000000000LL, &f->count, err) != 0)
        return -1;
    if (ag_conf_get(obj, "status")) {
        if (ag_conf_int(obj, path, "status", 400, 599, &v, err) != 0)
            return -1;
        f->kind = AG_FAKE_FAULT_STATUS;
        f->status = (int)v;
        kinds++;
    }
    if (ag_conf_get(obj, "reset_after_chunks")) {
        if (ag_conf_int(obj, path, "reset_after_chunks", 0, 1000000000LL, &f->after_chunks, err) != 0)
            return -1;
        f->kind = AG_FAKE_FAULT_RESET;
        kinds++;
    }
    if (ag_conf_get(obj, "stall_after_chunks")) {
        if (ag_conf_int(obj, path, "stall_after_chunks", 0, 1000000000LL, &f->after_chunks, err) != 0)
            return -1;
        f->kind = AG_FAKE_FAULT_STALL;
        kinds++;
    }
    if (ag_conf_get(obj, "close_before_response")) {
        bool b = false;
        if (ag_conf_bool(obj, path, "close_before_response", &b, err) != 0)
            return -1;
        if (!b)
            return ag_conf_fail(err, path, "close_before_response", "must be true when present");
        f->kind = AG_FAKE_FAULT_CLOSE;
        kinds++;
    }
    if (kinds != 1)
        return ag_conf_fail(err, path, NULL, "needs exactly one of status, reset_after_chunks, "
                                             "stall_after_chunks, close_before_response");
    if (f->kind != AG_FAKE_FAULT_STATUS) {
        static const char *const status_only[] = {"retry_after", "retry_after_ms", "code", "message", NULL};
        for (size_t i = 0; status_only[i]; i++)
            if (ag_conf_get(obj, status_only[i]))
                return ag_conf_fail(err, path, status_only[i], "only allowed with status");
        return 0;
    }
    if (read_header_value(obj, path, "retry_after", &f->retry_after, err) != 0 ||
        read_header_value(obj, path, "retry_after_ms", &f->retry_after_ms, err) != 0 ||
        ag_conf_string(obj, path, "code", false, &f->code, err) != 0 ||
        ag_conf_string(obj, path, "message", false, &f->message, err) != 0) {
        ag_fake_fault_clear(f);
        return -1;
    }
    return 0;
}

/* Replaces *slot with a fresh copy of the string at key when present. */
static int take_string(const cJSON *obj, const char *key, char **slot, ag_conf_err *err)
{
    char *s = NULL;
    if (ag_conf_string(obj, "", key, false, &s, err) != 0)
        return -1;
    if (s) {
        free(*slot);
        *slot = s;
    }
    return 0;
}

int ag_fake_conf_apply(ag_fake_conf *c, const cJSON *obj, ag_conf_err *err)
{
    static const char *const keys[] = {"reply_text", "chunks", "chunk_interval_ms",
                                       "first_byte_delay_ms", "faults", "model", "embedding_model",
                                       "region", "finish_reason", "created", "ratelimit_requests",
                                       "ratelimit_tokens", NULL};
    if (ag_conf_object(obj, "", keys, err) != 0)
        return -1;

    /* Validate everything into temporaries first so a bad request changes nothing. */
    long long chunks = c->chunks, interval = c->chunk_interval_ms, delay = c->first_byte_delay_ms;
    long long created = c->created, rl_req = c->ratelimit_requests, rl_tok = c->ratelimit_tokens;
    if (ag_conf_int(obj, "", "chunks", 0, 100000, &chunks, err) != 0 ||
        ag_conf_int(obj, "", "chunk_interval_ms", 0, 600000, &interval, err) != 0 ||
        ag_conf_int(obj, "", "first_byte_delay_ms", 0, 600000, &delay, err) != 0 ||
        ag_conf_int(obj, "", "created", 0, 4102444800LL, &created, err) != 0 ||
        ag_conf_int(obj, "", "ratelimit_requests", 0, 1000000000LL, &rl_req, err) != 0 ||
        ag_conf_int(obj, "", "ratelimit_tokens", 0, 1000000000000LL, &rl_tok, err) != 0)
        return -1;
    static const char *const strkeys[] = {"reply_text", "model", "embedding_model", "region",
                                          "finish_reason", NULL};
    for (size_t i = 0; strkeys[i]; i++) {
        const cJSON *v = ag_conf_get(obj, strkeys[i]);
        if (v && !cJSON_IsString(v))
            return ag_conf_fail(err, "", strkeys[i], "must be a string");
    }
    const cJSON *region = ag_conf_get(obj, "region");
    if (region)
        for (const char *s = region->valuestring; *s; s++)
            if ((unsigned char)*s < 0x20 || *s == 0x7f)
                return ag_conf_fail(err, "", "region", "must not contain control characters");

    ag_fake_fault *faults = NULL;
    size_t nfaults = 0;
    const cJSON *fl = ag_conf_get(obj, "faults");
    bool replace_faults = fl != NULL;
    if (fl) {
        if (!cJSON_IsArray(fl))
            return ag_conf_fail(err, "", "faults", "must be an array");
        size_t n = (size_t)cJSON_GetArraySize(fl);
        if (n > 10000)
            return ag_conf_fail(err, "", "faults", "at most 10000 entries");
        faults = calloc(n ? n : 1, sizeof *faults);
        if (!faults)
            ag_fake_oom();
        for (const cJSON *e = fl->child; e; e = e->next) {
            char path[AG_CONF_PATH_LEN];
            ag_conf_path(path, sizeof path, "", "faults", (int)nfaults);
            if (parse_fault(e, path, &faults[nfaults], err) != 0) {
                faults_free(faults, nfaults);
                return -1;
            }
            nfaults++;
        }
    }

    /* Commit. ag_conf_string cannot fail now: every string key was type-checked above. */
    take_string(obj, "reply_text", &c->reply_text, err);
    take_string(obj, "model", &c->model, err);
    take_string(obj, "embedding_model", &c->embedding_model, err);
    take_string(obj, "region", &c->region, err);
    take_string(obj, "finish_reason", &c->finish_reason, err);
    c->chunks = chunks;
    c->chunk_interval_ms = interval;
    c->first_byte_delay_ms = delay;
    c->created = created;
    c->ratelimit_requests = rl_req;
    c->ratelimit_tokens = rl_tok;
    if (replace_faults) {
        faults_free(c->faults, c->nfaults);
        c->faults = faults;
        c->nfaults = nfaults;
    }
    return 0;
}

static cJSON *must(cJSON *j)
{
    if (!j)
        ag_fake_oom();
    return j;
}

static void add_str_or_null(cJSON *o, const char *key, const char *s)
{
    must(s ? cJSON_AddStringToObject(o, key, s) : cJSON_AddNullToObject(o, key));
}

cJSON *ag_fake_conf_to_json(const ag_fake_conf *c)
{
    static const char *const kind_names[] = {"none", "status", "reset_after_chunks",
                                             "stall_after_chunks", "close_before_response"};
    cJSON *o = must(cJSON_CreateObject());
    add_str_or_null(o, "reply_text", c->reply_text);
    must(cJSON_AddNumberToObject(o, "chunks", (double)c->chunks));
    must(cJSON_AddNumberToObject(o, "chunk_interval_ms", (double)c->chunk_interval_ms));
    must(cJSON_AddNumberToObject(o, "first_byte_delay_ms", (double)c->first_byte_delay_ms));
    add_str_or_null(o, "model", c->model);
    add_str_or_null(o, "embedding_model", c->embedding_model);
    add_str_or_null(o, "region", c->region);
    add_str_or_null(o, "finish_reason", c->finish_reason);
    must(cJSON_AddNumberToObject(o, "created", (double)c->created));
    must(cJSON_AddNumberToObject(o, "ratelimit_requests", (double)c->ratelimit_requests));
    must(cJSON_AddNumberToObject(o, "ratelimit_tokens", (double)c->ratelimit_tokens));
    cJSON *arr = must(cJSON_AddArrayToObject(o, "faults"));
    for (size_t i = 0; i < c->nfaults; i++) {
        const ag_fake_fault *f = &c->faults[i];
        cJSON *e = must(cJSON_CreateObject());
        cJSON_AddItemToArray(arr, e);
        must(cJSON_AddStringToObject(e, "kind", kind_names[f->kind]));
        if (f->kind == AG_FAKE_FAULT_STATUS) {
            must(cJSON_AddNumberToObject(e, "status", f->status));
            add_str_or_null(e, "retry_after", f->retry_after);
            add_str_or_null(e, "retry_after_ms", f->retry_after_ms);
            add_str_or_null(e, "code", f->code);
            add_str_or_null(e, "message", f->message);
        } else if (f->kind == AG_FAKE_FAULT_RESET || f->kind == AG_FAKE_FAULT_STALL) {
            must(cJSON_AddNumberToObject(e, "after_chunks", (double)f->after_chunks));
        }
        must(cJSON_AddNumberToObject(e, "count", (double)f->count));
    }
    return o;
}

bool ag_fake_conf_take_fault(ag_fake_conf *c, ag_fake_fault *out)
{
    if (c->nfaults == 0)
        return false;
    ag_fake_fault *h = &c->faults[0];
    *out = *h;
    out->retry_after = ag_fake_strdup(h->retry_after);
    out->retry_after_ms = ag_fake_strdup(h->retry_after_ms);
    out->code = ag_fake_strdup(h->code);
    out->message = ag_fake_strdup(h->message);
    out->count = 1;
    if (--h->count == 0) {
        ag_fake_fault_clear(h);
        memmove(&c->faults[0], &c->faults[1], (c->nfaults - 1) * sizeof *c->faults);
        c->nfaults--;
    }
    return true;
}

/* ---- recorder ---- */

void ag_fake_rec_init(ag_fake_recorder *r, size_t max_records, size_t max_bytes)
{
    memset(r, 0, sizeof *r);
    r->cap = max_records ? max_records : 1;
    r->ring = calloc(r->cap, sizeof *r->ring);
    r->sizes = calloc(r->cap, sizeof *r->sizes);
    if (!r->ring || !r->sizes)
        ag_fake_oom();
    r->max_bytes = max_bytes;
    r->first_seq = 1;
}

static void rec_drop_oldest(ag_fake_recorder *r)
{
    cJSON_Delete(r->ring[r->head]);
    r->ring[r->head] = NULL;
    r->bytes -= r->sizes[r->head];
    r->head = (r->head + 1) % r->cap;
    r->count--;
    r->first_seq++;
}

/* Adds s[0..len) to o under key: as a string when it is valid UTF-8 without NUL, else base64 with
 * key_b64 set to true. Returns the bytes stored. */
static size_t add_bytes(cJSON *o, const char *key, const char *key_b64, const char *s, size_t len)
{
    bool text = ag_utf8_valid_prefix((const unsigned char *)s, len) == len && memchr(s, 0, len) == NULL;
    if (text) {
        must(cJSON_AddStringToObject(o, key, s));
        if (key_b64)
            must(cJSON_AddFalseToObject(o, key_b64));
        return len;
    }
    if (len > ((size_t)1 << 30))
        len = (size_t)1 << 30; /* cannot happen under the body cap; keeps the int cast safe */
    size_t outlen = 4 * ((len + 2) / 3) + 1;
    unsigned char *b64 = malloc(outlen);
    if (!b64)
        ag_fake_oom();
    EVP_EncodeBlock(b64, (const unsigned char *)s, (int)len);
    must(cJSON_AddStringToObject(o, key, (const char *)b64));
    free(b64);
    must(cJSON_AddTrueToObject(o, key_b64 ? key_b64 : "base64"));
    return outlen;
}

void ag_fake_rec_add(ag_fake_recorder *r, const ag_fake_req *req)
{
    cJSON *o = must(cJSON_CreateObject());
    size_t size = 256 + req->url_len;
    must(cJSON_AddNumberToObject(o, "seq", (double)req->seq));
    must(cJSON_AddNumberToObject(o, "connection", (double)req->conn_id));
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    must(cJSON_AddNumberToObject(o, "time", (double)ts.tv_sec + (double)ts.tv_nsec / 1e9));
    must(cJSON_AddStringToObject(o, "method", req->method));
    size += add_bytes(o, "path", NULL, req->url, req->url_len);
    char ver[16];
    snprintf(ver, sizeof ver, "%d.%d", req->http_major, req->http_minor);
    must(cJSON_AddStringToObject(o, "http_version", ver));
    cJSON *hs = must(cJSON_AddArrayToObject(o, "headers"));
    for (size_t i = 0; i < req->nhdrs; i++) {
        const ag_fake_hdr *h = &req->hdrs[i];
        cJSON *e = must(cJSON_CreateObject());
        cJSON_AddItemToArray(hs, e);
        size += 96 + add_bytes(e, "name", NULL, req->hbase + h->name_off, h->name_len);
        const char *v = req->hbase + h->value_off;
        bool text = ag_utf8_valid_prefix((const unsigned char *)v, h->value_len) == h->value_len;
        if (text)
            must(cJSON_AddStringToObject(e, "value", v));
        else
            add_bytes(e, "value", "base64", v, h->value_len);
        size += h->value_len;
    }
    size += add_bytes(o, "body", "body_base64", req->body, req->body_len);
    must(cJSON_AddNullToObject(o, "status"));
    must(cJSON_AddNullToObject(o, "fault"));

    while (r->count > 0 && (r->count == r->cap || r->bytes + size > r->max_bytes))
        rec_drop_oldest(r);
    if (r->count == 0)
        r->first_seq = req->seq;
    size_t slot = (r->head + r->count) % r->cap;
    r->ring[slot] = o;
    r->sizes[slot] = size;
    r->bytes += size;
    r->count++;
}

void ag_fake_rec_set_result(ag_fake_recorder *r, uint64_t seq, int status, const char *fault)
{
    if (r->count == 0 || seq < r->first_seq || seq - r->first_seq >= r->count)
        return;
    cJSON *o = r->ring[(r->head + (size_t)(seq - r->first_seq)) % r->cap];
    cJSON_ReplaceItemInObjectCaseSensitive(o, "status", must(cJSON_CreateNumber(status)));
    cJSON_ReplaceItemInObjectCaseSensitive(o, "fault",
                                           must(fault ? cJSON_CreateString(fault) : cJSON_CreateNull()));
}

char *ag_fake_rec_dump(const ag_fake_recorder *r)
{
    cJSON *arr = must(cJSON_CreateArray());
    for (size_t i = 0; i < r->count; i++)
        cJSON_AddItemReferenceToArray(arr, r->ring[(r->head + i) % r->cap]);
    char *s = cJSON_PrintUnformatted(arr);
    cJSON_Delete(arr); /* deletes the references only */
    if (!s)
        ag_fake_oom();
    return s;
}

size_t ag_fake_rec_clear(ag_fake_recorder *r)
{
    size_t n = r->count;
    while (r->count > 0)
        rec_drop_oldest(r);
    r->head = 0;
    r->bytes = 0;
    return n;
}

void ag_fake_rec_free(ag_fake_recorder *r)
{
    ag_fake_rec_clear(r);
    free(r->ring);
    free(r->sizes);
    memset(r, 0, sizeof *r);
}
