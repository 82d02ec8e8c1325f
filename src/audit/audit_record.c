/* Audit records and their rows in the AoaiGuardAudit_CL table (see audit_record.h). */
#include "aoai_guard/audit_record.h"

#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "aoai_guard/clock.h"
#include "aoai_guard/json_strict.h"

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
    unsigned char b[16];
    if (RAND_bytes(b, sizeof b) != 1)
        return -1;
    b[6] = (unsigned char)((b[6] & 0x0F) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3F) | 0x80);
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 0x0F];
    }
    out[o] = '\0';
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
    char *text;         /* repaired, owned */
    size_t len;
    text_part *parts;   /* owned */
    size_t nparts;
} text_plan;

static void plan_free(text_plan *p)
{
    free(p->text);
    free(p->parts);
    memset(p, 0, sizeof *p);
}

/* Repairs s[0..n) and cuts it into parts whose escaped size is at most field_max, never inside a
 * UTF-8 sequence. */
static int plan_text(const char *s, size_t n, size_t field_max, text_plan *p)
{
    memset(p, 0, sizeof *p);
    p->text = utf8_repair(s, n, &p->len);
    if (!p->text)
        return -1;
    size_t cap = 4;
    p->parts = malloc(cap * sizeof *p->parts);
    if (!p->parts) {
        plan_free(p);
        return -1;
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

static void sha256_hex(const char *s, size_t n, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    static const char hex[] = "0123456789abcdef";
    if (EVP_Digest(s, n, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32) {
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

/* Adds s[0..n) (already valid UTF-8 without NUL) as a string. */
static bool add_plain(cJSON *o, const char *key, const char *s, size_t n)
{
    char *tmp = dup_bytes(s, n);
    if (!tmp)
        return false;
    cJSON *v = cJSON_CreateString(tmp);
    free(tmp);
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

static bool add_known(cJSON *o, const char *key, int64_t v)
{
    return v < 0 || add_num(o, key, (double)v);
}

/* Emits o as one row (assigning its RecordId first). */
static int emit_row(cJSON *o, ag_audit_row_fn emit, void *arg)
{
    char *json = cJSON_PrintUnformatted(o);
    if (!json)
        return -1;
    int rc = emit(json, strlen(json), arg);
    cJSON_free(json);
    return rc;
}

/* The fields every row starts with. */
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

static bool add_roles(cJSON *o, const char *roles)
{
    if (!roles[0])
        return true;
    cJSON *arr = cJSON_AddArrayToObject(o, "CallerRoles");
    if (!arr)
        return false;
    const char *p = roles;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *e = p;
        while (*e && *e != ' ')
            e++;
        if (e > p) {
            size_t len;
            char *fixed = utf8_repair(p, (size_t)(e - p), &len);
            cJSON *v = fixed ? cJSON_CreateString(fixed) : NULL;
            free(fixed);
            if (!v || !cJSON_AddItemToArray(arr, v)) {
                cJSON_Delete(v);
                return false;
            }
        }
        p = e;
    }
    return true;
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
    cJSON *row = row_head(r, "request", 1, (int)nparts);
    if (!row)
        goto out;
    const ag_identity *id = &r->identity;
    bool ok = add_field(row, "GatewayInstance", o->gateway_instance);
    ok = ok && cJSON_AddStringToObject(row, "GatewayVersion", AG_VERSION);
    ok = ok && cJSON_AddStringToObject(row, "CallerKind", ag_identity_kind_str(id->kind));
    ok = ok && add_field(row, "CallerTenantId", id->tid) && add_field(row, "CallerObjectId", id->oid);
    ok = ok && add_field(row, "CallerAppId", id->app) && add_field(row, "CallerUpn", id->upn);
    ok = ok && add_field(row, "CallerName", id->name) && add_roles(row, id->roles);
    ok = ok && add_field(row, "ClientAddress", r->client_address);
    ok = ok && add_field(row, "Deployment", r->deployment) && add_field(row, "Operation", r->operation);
    ok = ok && add_field(row, "Model", r->model) && add_field(row, "ApiVersion", r->api_version);
    ok = ok && cJSON_AddBoolToObject(row, "Stream", r->stream);
    ok = ok && add_num(row, "Status", r->status);
    ok = ok && add_field(row, "Upstream", r->upstream);
    ok = ok && add_known(row, "LatencyMs", r->latency_ms);
    ok = ok && add_known(row, "TimeToFirstByteMs", r->ttfb_ms);
    ok = ok && add_known(row, "PromptTokens", r->prompt_tokens);
    ok = ok && add_known(row, "CompletionTokens", r->completion_tokens);
    ok = ok && add_known(row, "TotalTokens", r->total_tokens);
    ok = ok && add_known(row, "EstimatedTokens", r->estimated_tokens);
    ok = ok && add_field(row, "RateLimitDecision", r->rate_limit_decision);
    ok = ok && add_field(row, "RateLimitPolicy", r->rate_limit_policy);
    ok = ok && cJSON_AddStringToObject(row, "PolicyOutcome", policy_outcome(r));
    cJSON *decs = ok ? cJSON_AddArrayToObject(row, "PolicyDecisions") : NULL;
    ok = ok && decs;
    for (int i = 0; ok && i < r->ndecisions; i++) {
        cJSON *d = cJSON_CreateObject();
        ok = d && cJSON_AddItemToArray(decs, d);
        ok = ok && add_field(d, "rule", r->decisions[i].rule);
        ok = ok && add_field(d, "action", r->decisions[i].action);
    }
    if (ok && r->decisions_truncated) { /* more decisions than AG_AUDIT_MAX_DECISIONS were made */
        cJSON *d = cJSON_CreateObject();
        ok = d && cJSON_AddItemToArray(decs, d);
        ok = ok && cJSON_AddStringToObject(d, "rule", "(more)") && cJSON_AddStringToObject(d, "action", "truncated");
    }
    ok = ok && cJSON_AddStringToObject(row, "CaptureMode", ag_audit_capture_str(cap));
    if (cap != AG_CAPTURE_OFF) {
        char hex[65];
        if (ok && r->prompt) {
            sha256_hex(r->prompt, r->prompt_len, hex);
            ok = cJSON_AddStringToObject(row, "PromptSha256", hex) != NULL;
        }
        if (ok && r->response) {
            sha256_hex(r->response, r->response_len, hex);
            ok = cJSON_AddStringToObject(row, "ResponseSha256", hex) != NULL;
        }
    }
    ok = ok && add_num(row, "PromptBytes", (double)r->prompt_bytes);
    ok = ok && add_num(row, "ResponseBytes", (double)r->response_bytes);
    ok = ok && cJSON_AddBoolToObject(row, "TextTruncated", with_text && truncated);
    ok = ok && cJSON_AddStringToObject(row, "CompletionReason",
                                       ag_completion_reason_str(r->completion_reason));

    for (size_t part = 0; ok && part < nparts; part++) {
        if (part > 0) {
            cJSON_Delete(row);
            row = row_head(r, "request", (int)part + 1, (int)nparts);
            ok = row && cJSON_AddStringToObject(row, "CaptureMode", ag_audit_capture_str(cap));
        }
        if (ok && part < pp.nparts)
            ok = add_plain(row, "PromptText", pp.text + pp.parts[part].off, pp.parts[part].len);
        if (ok && part < rp.nparts)
            ok = add_plain(row, "ResponseText", rp.text + rp.parts[part].off, rp.parts[part].len);
        if (ok && emit_row(row, emit, arg) != 0)
            ok = false;
    }
    if (ok)
        rows = (int)nparts;
out:
    cJSON_Delete(row);
    plan_free(&pp);
    plan_free(&rp);
    return rows;
}
