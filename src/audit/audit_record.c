/* Audit records and their rows in the AoaiGuardAudit_CL table (see audit_record.h). */
#include "aoai_guard/audit_record.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <openssl/evp.h>

#include "aoai_guard/clock.h"
#include "aoai_guard/headbuf.h"
#include "aoai_guard/json_strict.h"
#include "aoai_guard/json_strict.h"
#include "aoai_guard/uuid.h"

#ifndef AG_VERSION
#define AG_VERSION "dev"
#endif

static const char *const capture_names[] = {"default", "full", "redacted", "hashed", "off"};
static const char *const reason_names[] = {"complete", "rejected", "client_disconnected",
                                           "upstream_reset", "upstream_timeout", "upstream_error",
                                           "shutdown"};
static const char *const event_names[] = {"start", "stop", "config_reload", "jwks_rotation",
                                          "credential_refresh_failed", "auth_failure_burst",
                                          "audit_data_loss"};

const char *ag_audit_capture_str(ag_audit_capture c)
{
    return (unsigned)c < sizeof capture_names / sizeof *capture_names ? capture_names[c] : "unknown";
}

const char *ag_completion_reason_str(ag_completion_reason c)
{
    return (unsigned)c < sizeof reason_names / sizeof *reason_names ? reason_names[c] : "unknown";
}

const char *ag_audit_event_type_str(ag_audit_event_type t)
{
    return (unsigned)t < sizeof event_names / sizeof *event_names ? event_names[t] : "unknown";
}

ag_audit_record *ag_audit_record_new(void)
{
    ag_audit_record *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->type = AG_AUDIT_REQUEST;
    r->time_ms = ag_wall_ms();
    r->latency_ms = r->ttfb_ms = -1;
    r->prompt_tokens = r->completion_tokens = r->total_tokens = r->estimated_tokens = -1;
    return r;
}

void ag_audit_record_free(ag_audit_record *r)
{
    if (!r)
        return;
    free(r->prompt);
    free(r->response);
    free(r->event_details);
    free(r);
}

static char *dup_bytes(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (!p)
        return NULL;
    if (n)
        memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

int ag_audit_record_set_prompt(ag_audit_record *r, const char *text, size_t len)
{
    size_t keep = len < AG_AUDIT_TEXT_HARD_MAX ? len : AG_AUDIT_TEXT_HARD_MAX;
    char *p = dup_bytes(text ? text : "", text ? keep : 0);
    if (!p)
        return -1;
    free(r->prompt);
    r->prompt = p;
    r->prompt_len = text ? keep : 0;
    r->prompt_bytes = text ? len : 0;
    return 0;
}

void ag_audit_record_take_prompt(ag_audit_record *r, char *text, size_t len)
{
    free(r->prompt);
    r->prompt = text;
    r->prompt_len = text ? len : 0;
    r->prompt_bytes = r->prompt_len;
}

int ag_audit_record_set_response(ag_audit_record *r, const char *text, size_t len)
{
    size_t keep = len < AG_AUDIT_TEXT_HARD_MAX ? len : AG_AUDIT_TEXT_HARD_MAX;
    char *p = dup_bytes(text ? text : "", text ? keep : 0);
    if (!p)
        return -1;
    free(r->response);
    r->response = p;
    r->response_len = text ? keep : 0;
    r->response_cap = r->response_len + 1;
    r->response_bytes = text ? len : 0;
    return 0;
}

int ag_audit_record_append_response(ag_audit_record *r, const char *delta, size_t len)
{
    r->response_bytes += len;
    if (len == 0 && r->response)
        return 0;
    size_t room = AG_AUDIT_TEXT_HARD_MAX - r->response_len;
    size_t take = len < room ? len : room;
    if (r->response_len + take + 1 > r->response_cap) {
        size_t cap = r->response_cap ? r->response_cap : 256;
        while (cap < r->response_len + take + 1)
            cap *= 2;
        char *p = realloc(r->response, cap);
        if (!p)
            return -1;
        r->response = p;
        r->response_cap = cap;
    }
    if (take)
        memcpy(r->response + r->response_len, delta, take);
    r->response_len += take;
    r->response[r->response_len] = '\0';
    return 0;
}

/* Length of the longest prefix of s[0..n) that is at most max bytes and does not end inside a UTF-8
 * sequence (continuation bytes after the cut are given back). */
static size_t utf8_cut(const char *s, size_t n, size_t max)
{
    if (n <= max)
        return n;
    size_t cut = max;
    for (int k = 0; k < 3 && cut > 0 && ((unsigned char)s[cut] & 0xC0) == 0x80; k++)
        cut--;
    return cut;
}

void ag_audit_copy_field(char *dst, size_t cap, const char *src)
{
    if (cap == 0)
        return;
    if (!src) {
        dst[0] = '\0';
        return;
    }
    size_t n = strlen(src);
    n = utf8_cut(src, n, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

int ag_audit_record_add_decision(ag_audit_record *r, const char *rule, const char *action)
{
    if (r->ndecisions >= AG_AUDIT_MAX_DECISIONS) {
        r->decisions_truncated = true;
        return -1;
    }
    ag_audit_decision *d = &r->decisions[r->ndecisions++];
    ag_audit_copy_field(d->rule, sizeof d->rule, rule);
    ag_audit_copy_field(d->action, sizeof d->action, action);
    return 0;
}

size_t ag_audit_escaped_len(const char *s, size_t n)
{
    size_t out = 0;
    for (size_t i = 0; i < n; i++) {
        size_t plain = ag_json_plain_prefix(s + i, n - i);
        out += plain;
        i += plain;
        if (i >= n)
            break;
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\' || c == '\b' || c == '\f' || c == '\n' || c == '\r' || c == '\t')
            out += 2;
        else if (c < 0x20)
            out += 6;
        else
            out += 1;
    }
    return out;
}

int ag_audit_guid(char out[37])
{
    ag_uuid4(out);
    return 0;
}

/* Returns a malloc'd copy of s[0..n) that is valid UTF-8 without NUL bytes: every byte that does not
 * start a well-formed sequence, and every NUL, becomes U+FFFD. *outlen gets the length. */
static char *utf8_repair(const char *s, size_t n, size_t *outlen)
{
    char *out = malloc(n * 3 + 1);
    if (!out)
        return NULL;
    size_t o = 0, i = 0;
    while (i < n) {
        size_t good = ag_utf8_valid_prefix((const unsigned char *)s + i, n - i);
        for (size_t k = 0; k < good; k++) {
            if (s[i + k] == '\0') {
                memcpy(out + o, "\xEF\xBF\xBD", 3);
                o += 3;
            } else {
                out[o++] = s[i + k];
            }
        }
        i += good;
        if (i < n) {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    out[o] = '\0';
    *outlen = o;
    return out;
}

static size_t utf8_seq_len(unsigned char c)
{
    if (c < 0x80)
        return 1;
    if (c >= 0xF0)
        return 4;
    if (c >= 0xE0)
        return 3;
    return 2;
}

typedef struct text_part {
    size_t off;
    size_t len;
} text_part;

typedef struct text_plan {
    char *text;         /* repaired and owned, or the caller's text when it needed no repair */
    bool borrowed;
    size_t len;
    text_part *parts;   /* owned */
    size_t nparts;
} text_plan;

static void plan_free(text_plan *p)
{
    if (!p->borrowed)
        free(p->text);
    free(p->parts);
    memset(p, 0, sizeof *p);
}

/* Repairs s[0..n) and cuts it into parts whose escaped size is at most field_max, never inside a
 * UTF-8 sequence. */
static int plan_text(const char *s, size_t n, size_t field_max, text_plan *p)
{
    memset(p, 0, sizeof *p);
    if (ag_utf8_valid_prefix((const unsigned char *)s, n) == n && !memchr(s, '\0', n)) {
        p->text = (char *)s; /* valid already: used in place, never written */
        p->borrowed = true;
        p->len = n;
    } else {
        p->text = utf8_repair(s, n, &p->len);
        if (!p->text)
            return -1;
    }
    size_t cap = 4;
    p->parts = malloc(cap * sizeof *p->parts);
    if (!p->parts) {
        plan_free(p);
        return -1;
    }
    /* A byte escapes to at most six ("\u0000"): a text of field_max / 6 bytes fits unmeasured. */
    if (p->len > 0 && p->len <= field_max &&
        (p->len <= field_max / 6 || ag_audit_escaped_len(p->text, p->len) <= field_max)) {
        p->parts[0].off = 0; /* the common case: it fits one field */
        p->parts[0].len = p->len;
        p->nparts = 1;
        return 0;
    }
    size_t i = 0;
    while (i < p->len) {
        size_t start = i, used = 0;
        while (i < p->len) {
            unsigned char c = (unsigned char)p->text[i];
            size_t sl = utf8_seq_len(c);
            size_t cost = sl == 1 ? ag_audit_escaped_len(p->text + i, 1) : sl;
            if (used + cost > field_max)
                break;
            used += cost;
            i += sl;
        }
        if (i == start) { /* field_max below one code point: cannot happen with sane limits */
            plan_free(p);
            return -1;
        }
        if (p->nparts == cap) {
            cap *= 2;
            text_part *np = realloc(p->parts, cap * sizeof *np);
            if (!np) {
                plan_free(p);
                return -1;
            }
            p->parts = np;
        }
        p->parts[p->nparts].off = start;
        p->parts[p->nparts].len = i - start;
        p->nparts++;
    }
    return 0;
}

static EVP_MD *sha256_md;

static void fetch_sha256(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

/* SHA-256 fetched once: EVP_sha256() makes OpenSSL 3 look the algorithm up on every digest. */
static const EVP_MD *audit_sha256(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, fetch_sha256);
    return sha256_md ? sha256_md : EVP_sha256();
}

static void sha256_hex(const char *s, size_t n, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    static const char hex[] = "0123456789abcdef";
    if (EVP_Digest(s, n, md, &mdlen, audit_sha256(), NULL) != 1 || mdlen != 32) {
        out[0] = '\0';
        return;
    }
    for (unsigned i = 0; i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 0x0F];
    }
    out[64] = '\0';
}

/* Adds s[0..n) as a string, repaired to valid UTF-8. Returns false on allocation failure. */
static bool add_strn(cJSON *o, const char *key, const char *s, size_t n)
{
    size_t len;
    char *fixed = utf8_repair(s, n, &len);
    if (!fixed)
        return false;
    cJSON *v = cJSON_CreateString(fixed);
    free(fixed);
    if (v && cJSON_AddItemToObject(o, key, v))
        return true;
    cJSON_Delete(v);
    return false;
}

/* Adds a fixed field when non-empty. */
static bool add_field(cJSON *o, const char *key, const char *s)
{
    if (!s || !s[0])
        return true;
    return add_strn(o, key, s, strlen(s));
}

static bool add_num(cJSON *o, const char *key, double v)
{
    return cJSON_AddNumberToObject(o, key, v) != NULL;
}

/* Emits o as one row (gateway events, which are rare and carry free-form details). */
static int emit_row(cJSON *o, ag_audit_row_fn emit, void *arg)
{
    char *json = cJSON_PrintUnformatted(o);
    if (!json)
        return -1;
    int rc = emit(json, strlen(json), arg);
    cJSON_free(json);
    return rc;
}

/* The fields every event row starts with. */
static cJSON *row_head(const ag_audit_record *r, const char *type, int part, int nparts)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    char ts[32], guid[37];
    ag_format_rfc3339_ms(r->time_ms, ts);
    bool ok = ag_audit_guid(guid) == 0;
    ok = ok && cJSON_AddStringToObject(o, "TimeGenerated", ts);
    ok = ok && cJSON_AddStringToObject(o, "RecordId", guid);
    ok = ok && cJSON_AddStringToObject(o, "RecordType", type);
    ok = ok && add_field(o, "RequestId", r->request_id);
    ok = ok && add_num(o, "Part", part) && add_num(o, "PartCount", nparts);
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* ---- request rows, written directly ------------------------------------------------------------
 * A request row is written straight into one growing buffer: the same text cJSON would print for
 * the same tree (keys in the same order, strings escaped as ag_audit_escaped_len counts them,
 * integers in decimal), at a tenth of the cost of building and printing a tree per row. */

typedef struct rowbuf {
    char *p;
    size_t len, cap;
    bool failed;
    bool comma;
} rowbuf;

static bool rb_reserve(rowbuf *b, size_t n)
{
    if (b->failed)
        return false;
    if (b->len + n + 1 <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n + 1)
        cap *= 2;
    char *np = realloc(b->p, cap);
    if (!np) {
        b->failed = true;
        return false;
    }
    b->p = np;
    b->cap = cap;
    return true;
}

static void rb_put(rowbuf *b, const char *s, size_t n)
{
    if (!rb_reserve(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

/* Escapes valid UTF-8 s[0..n) as cJSON prints a string's inside. */
static void rb_escape(rowbuf *b, const char *s, size_t n)
{
    if (!rb_reserve(b, 6 * n)) /* the worst case: every byte a \u00XX */
        return;
    char *o = b->p + b->len;
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        i += ag_json_plain_prefix(s + i, n - i); /* ordinary text, eight bytes at a time */
        if (i >= n)
            break;
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        memcpy(o, s + run, i - run);
        o += i - run;
        run = i + 1;
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\b': *o++ = 'b'; break;
        case '\f': *o++ = 'f'; break;
        case '\n': *o++ = 'n'; break;
        case '\r': *o++ = 'r'; break;
        case '\t': *o++ = 't'; break;
        default: {
            static const char hex[] = "0123456789abcdef";
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        }
        }
    }
    memcpy(o, s + run, n - run);
    o += n - run;
    b->len = (size_t)(o - b->p);
    b->p[b->len] = '\0';
}

/* A string value: s[0..n) with invalid UTF-8 and NUL bytes replaced by U+FFFD (as utf8_repair). */
static void rb_string(rowbuf *b, const char *s, size_t n, bool repair)
{
    rb_put(b, "\"", 1);
    size_t i = 0;
    while (i < n) {
        size_t good = repair ? ag_utf8_valid_prefix((const unsigned char *)s + i, n - i) : n - i;
        const char *nul = good ? memchr(s + i, '\0', good) : NULL;
        if (repair && nul)
            good = (size_t)(nul - (s + i));
        rb_escape(b, s + i, good);
        i += good;
        if (i < n) {
            rb_put(b, "\xEF\xBF\xBD", 3);
            i++;
        }
    }
    rb_put(b, "\"", 1);
}

static void rb_key(rowbuf *b, const char *key)
{
    if (b->comma)
        rb_put(b, ",", 1);
    rb_put(b, "\"", 1);
    rb_put(b, key, strlen(key));
    rb_put(b, "\":", 2);
    b->comma = true;
}

/* "key":"value" for a fixed field, left out when empty (as add_field). */
static void rb_field(rowbuf *b, const char *key, const char *s)
{
    if (!s || !s[0])
        return;
    rb_key(b, key);
    rb_string(b, s, strlen(s), true);
}

static void rb_int(rowbuf *b, const char *key, long long v)
{
    char tmp[24];
    size_t n = 0;
    if (v < 0)
        tmp[n++] = '-';
    n += ag_fmt_u64(tmp + n, v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v);
    rb_key(b, key);
    rb_put(b, tmp, n);
}

/* A counter that may be unknown (negative): left out then, as add_known. */
static void rb_known(rowbuf *b, const char *key, long long v)
{
    if (v >= 0)
        rb_int(b, key, v);
}

static void rb_bool(rowbuf *b, const char *key, bool v)
{
    rb_key(b, key);
    rb_put(b, v ? "true" : "false", v ? 4 : 5);
}

/* Starts a request row: "{" and the fields every row starts with. */
static bool rb_head(rowbuf *b, const ag_audit_record *r, int part, int nparts)
{
    char ts[32], guid[37];
    ag_format_rfc3339_ms(r->time_ms, ts);
    if (ag_audit_guid(guid) != 0)
        return false;
    b->len = 0;
    b->comma = false;
    rb_put(b, "{", 1);
    rb_key(b, "TimeGenerated");
    rb_string(b, ts, strlen(ts), false);
    rb_key(b, "RecordId");
    rb_string(b, guid, strlen(guid), false);
    rb_key(b, "RecordType");
    rb_put(b, "\"request\"", 9);
    rb_field(b, "RequestId", r->request_id);
    rb_int(b, "Part", part);
    rb_int(b, "PartCount", nparts);
    return !b->failed;
}

static void rb_roles(rowbuf *b, const char *roles)
{
    if (!roles[0])
        return;
    rb_key(b, "CallerRoles");
    rb_put(b, "[", 1);
    bool first = true;
    const char *p = roles;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *e = p;
        while (*e && *e != ' ')
            e++;
        if (e > p) {
            if (!first)
                rb_put(b, ",", 1);
            first = false;
            rb_string(b, p, (size_t)(e - p), true);
        }
        p = e;
    }
    rb_put(b, "]", 1);
}

static const char *policy_outcome(const ag_audit_record *r)
{
    bool redact = false;
    for (int i = 0; i < r->ndecisions; i++) {
        if (strcmp(r->decisions[i].action, "block") == 0)
            return "block";
        if (strcmp(r->decisions[i].action, "redact") == 0)
            redact = true;
    }
    return redact ? "redact" : "allow";
}

/* Replaces invalid UTF-8 in every string value under node (event details come from callers). */
static bool repair_tree(cJSON *node)
{
    for (cJSON *c = node->child; c; c = c->next) {
        if (cJSON_IsString(c) && c->valuestring) {
            size_t n = strlen(c->valuestring);
            if (ag_utf8_valid_prefix((const unsigned char *)c->valuestring, n) != n) {
                size_t len;
                char *fixed = utf8_repair(c->valuestring, n, &len);
                bool ok = fixed && cJSON_SetValuestring(c, fixed) != NULL;
                free(fixed);
                if (!ok)
                    return false;
            }
        } else if ((cJSON_IsObject(c) || cJSON_IsArray(c)) && !repair_tree(c)) {
            return false;
        }
    }
    return true;
}

static int event_rows(const ag_audit_record *r, const ag_audit_row_opts *o, ag_audit_row_fn emit,
                      void *arg)
{
    cJSON *row = row_head(r, "gateway_event", 1, 1);
    if (!row)
        return -1;
    bool ok = add_field(row, "GatewayInstance", o->gateway_instance);
    ok = ok && cJSON_AddStringToObject(row, "GatewayVersion", AG_VERSION);
    ok = ok && cJSON_AddStringToObject(row, "EventType", ag_audit_event_type_str(r->event_type));
    cJSON *details = r->event_details ? cJSON_Parse(r->event_details) : cJSON_CreateObject();
    if (details && !cJSON_IsObject(details)) {
        cJSON_Delete(details);
        details = NULL;
    }
    if (!details && r->event_details) { /* not an object: keep it as text */
        details = cJSON_CreateObject();
        if (details && !add_strn(details, "raw", r->event_details, strlen(r->event_details))) {
            cJSON_Delete(details);
            details = NULL;
        }
    }
    if (ok && details && repair_tree(details) && cJSON_AddItemToObject(row, "EventDetails", details))
        details = NULL;
    else
        ok = false;
    cJSON_Delete(details);
    int rc = ok ? emit_row(row, emit, arg) : -1;
    cJSON_Delete(row);
    return rc == 0 ? 1 : -1;
}

int ag_audit_record_rows(const ag_audit_record *r, const ag_audit_row_opts *o, ag_audit_row_fn emit,
                         void *arg)
{
    if (r->type == AG_AUDIT_GATEWAY_EVENT)
        return event_rows(r, o, emit, arg);

    ag_audit_capture cap = r->capture == AG_CAPTURE_DEFAULT ? o->default_capture : r->capture;
    if (cap == AG_CAPTURE_DEFAULT)
        cap = AG_CAPTURE_FULL;
    size_t field_max = o->field_max ? o->field_max : AG_AUDIT_FIELD_MAX;
    bool with_text = cap == AG_CAPTURE_FULL || cap == AG_CAPTURE_REDACTED;
    bool truncated = r->prompt_bytes > r->prompt_len || r->response_bytes > r->response_len;

    /* Share the per-request cap: each side gets half, and what one does not use goes to the other. */
    size_t pkeep = r->prompt ? r->prompt_len : 0, rkeep = r->response ? r->response_len : 0;
    if (with_text && o->max_text_bytes && pkeep + rkeep > o->max_text_bytes) {
        size_t half = o->max_text_bytes / 2;
        if (pkeep <= half)
            rkeep = o->max_text_bytes - pkeep;
        else if (rkeep <= half)
            pkeep = o->max_text_bytes - rkeep;
        else {
            pkeep = half;
            rkeep = o->max_text_bytes - half;
        }
        pkeep = utf8_cut(r->prompt ? r->prompt : "", r->prompt ? r->prompt_len : 0, pkeep);
        rkeep = utf8_cut(r->response ? r->response : "", r->response ? r->response_len : 0, rkeep);
        truncated = true;
    }

    text_plan pp = {0}, rp = {0};
    if (with_text && r->prompt && plan_text(r->prompt, pkeep, field_max, &pp) != 0)
        return -1;
    if (with_text && r->response && plan_text(r->response, rkeep, field_max, &rp) != 0) {
        plan_free(&pp);
        return -1;
    }
    size_t nparts = pp.nparts > rp.nparts ? pp.nparts : rp.nparts;
    if (nparts == 0)
        nparts = 1;

    int rows = -1;
    rowbuf row = {0};
    if (!rb_head(&row, r, 1, (int)nparts))
        goto out;
    const ag_identity *id = &r->identity;
    rb_field(&row, "GatewayInstance", o->gateway_instance);
    rb_key(&row, "GatewayVersion");
    rb_string(&row, AG_VERSION, strlen(AG_VERSION), false);
    rb_key(&row, "CallerKind");
    rb_string(&row, ag_identity_kind_str(id->kind), strlen(ag_identity_kind_str(id->kind)), false);
    rb_field(&row, "CallerTenantId", id->tid);
    rb_field(&row, "CallerObjectId", id->oid);
    rb_field(&row, "CallerAppId", id->app);
    rb_field(&row, "CallerUpn", id->upn);
    rb_field(&row, "CallerName", id->name);
    rb_roles(&row, id->roles);
    rb_field(&row, "ClientAddress", r->client_address);
    rb_field(&row, "Deployment", r->deployment);
    rb_field(&row, "Operation", r->operation);
    rb_field(&row, "Model", r->model);
    rb_field(&row, "ApiVersion", r->api_version);
    rb_bool(&row, "Stream", r->stream);
    rb_int(&row, "Status", r->status);
    rb_field(&row, "Upstream", r->upstream);
    rb_known(&row, "LatencyMs", r->latency_ms);
    rb_known(&row, "TimeToFirstByteMs", r->ttfb_ms);
    rb_known(&row, "PromptTokens", r->prompt_tokens);
    rb_known(&row, "CompletionTokens", r->completion_tokens);
    rb_known(&row, "TotalTokens", r->total_tokens);
    rb_known(&row, "EstimatedTokens", r->estimated_tokens);
    rb_field(&row, "RateLimitDecision", r->rate_limit_decision);
    rb_field(&row, "RateLimitPolicy", r->rate_limit_policy);
    const char *outcome = policy_outcome(r);
    rb_key(&row, "PolicyOutcome");
    rb_string(&row, outcome, strlen(outcome), false);
    rb_key(&row, "PolicyDecisions");
    rb_put(&row, "[", 1);
    for (int i = 0; i < r->ndecisions; i++) {
        rb_put(&row, i ? ",{" : "{", i ? 2 : 1);
        row.comma = false;
        rb_field(&row, "rule", r->decisions[i].rule);
        rb_field(&row, "action", r->decisions[i].action);
        rb_put(&row, "}", 1);
    }
    if (r->decisions_truncated) { /* more decisions than AG_AUDIT_MAX_DECISIONS were made */
        static const char more[] = "{\"rule\":\"(more)\",\"action\":\"truncated\"}";
        if (r->ndecisions)
            rb_put(&row, ",", 1);
        rb_put(&row, more, sizeof more - 1);
    }
    rb_put(&row, "]", 1);
    row.comma = true;
    const char *capname = ag_audit_capture_str(cap);
    rb_key(&row, "CaptureMode");
    rb_string(&row, capname, strlen(capname), false);
    if (cap != AG_CAPTURE_OFF) {
        char hex[65];
        if (r->prompt) {
            sha256_hex(r->prompt, r->prompt_len, hex);
            rb_key(&row, "PromptSha256");
            rb_string(&row, hex, strlen(hex), false);
        }
        if (r->response) {
            sha256_hex(r->response, r->response_len, hex);
            rb_key(&row, "ResponseSha256");
            rb_string(&row, hex, strlen(hex), false);
        }
    }
    rb_int(&row, "PromptBytes", (long long)r->prompt_bytes);
    rb_int(&row, "ResponseBytes", (long long)r->response_bytes);
    rb_bool(&row, "TextTruncated", with_text && truncated);
    const char *reason = ag_completion_reason_str(r->completion_reason);
    rb_key(&row, "CompletionReason");
    rb_string(&row, reason, strlen(reason), false);

    bool ok = !row.failed;
    for (size_t part = 0; ok && part < nparts; part++) {
        if (part > 0) {
            ok = rb_head(&row, r, (int)part + 1, (int)nparts);
            rb_key(&row, "CaptureMode");
            rb_string(&row, capname, strlen(capname), false);
        }
        if (part < pp.nparts) {
            rb_key(&row, "PromptText");
            rb_string(&row, pp.text + pp.parts[part].off, pp.parts[part].len, false);
        }
        if (part < rp.nparts) {
            rb_key(&row, "ResponseText");
            rb_string(&row, rp.text + rp.parts[part].off, rp.parts[part].len, false);
        }
        rb_put(&row, "}", 1);
        ok = ok && !row.failed && emit(row.p, row.len, arg) == 0;
    }
    if (ok)
        rows = (int)nparts;
out:
    free(row.p);
    plan_free(&pp);
    plan_free(&rp);
    return rows;
}
