/* Entra ID access-token validation (see jwt.h). */
#include "aoai_guard/jwt.h"

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "aoai_guard/b64url.h"
#include "aoai_guard/json_strict.h"

#define V1_ISSUER_PREFIX "https://sts.windows.net/"
#define MAX_SAFE_INT 9007199254740992.0 /* 2^53 */

static const ag_json_limits HEADER_LIMITS = {.max_depth = 4, .max_nodes = 64};
static const ag_json_limits PAYLOAD_LIMITS = {.max_depth = 6, .max_nodes = 1024};

static ag_auth_code fail(char *log, size_t loglen, ag_auth_code code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static ag_auth_code fail(char *log, size_t loglen, ag_auth_code code, const char *fmt, ...)
{
    if (log && loglen) {
        int n = snprintf(log, loglen, "%s: ", ag_auth_code_str(code));
        if (n > 0 && (size_t)n < loglen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(log + n, loglen - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    return code;
}

static bool is_b64url_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

/* A time claim: 1 present and valid, 0 absent, -1 present but not an integer in [[0, 2^53)). The range
 * check comes before the conversion (a double such as 1e300 does not fit a long long); 2^53 itself is
 * refused because 2^53 + 1 parses to the same double. */
static int time_claim(const cJSON *root, const char *name, long long *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!v)
        return 0;
    if (!cJSON_IsNumber(v))
        return -1;
    double d = v->valuedouble;
    if (!isfinite(d) || d < 0 || d >= MAX_SAFE_INT || d != floor(d))
        return -1;
    *out = (long long)d;
    return 1;
}

/* A string claim: 1 present (s, len set), 0 absent, -1 not a string. */
static int str_claim(const cJSON *root, const char *name, const char **s, size_t *len)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!v)
        return 0;
    if (!cJSON_IsString(v))
        return -1;
    *s = v->valuestring;
    *len = strlen(v->valuestring);
    return 1;
}

/* True when s has no C0/C1 control character or DEL (the JSON is already valid UTF-8). */
static bool no_controls(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return false;
        if (c == 0xC2 && i + 1 < len && (unsigned char)s[i + 1] >= 0x80 && (unsigned char)s[i + 1] <= 0x9F)
            return false;
    }
    return true;
}

/* Copies a claim into a fixed identity field; false when it does not fit or holds control characters
 * (the token is rejected rather than truncated). */
static bool put_field(char *dst, size_t cap, const char *s, size_t len)
{
    if (len >= cap || !no_controls(s, len))
        return false;
    memcpy(dst, s, len);
    dst[len] = '\0';
    return true;
}

/* Matches iss against prefix + tid + suffix: 1 exact, 2 same form but another GUID, 0 neither. */
static int issuer_form(const char *iss, size_t il, const char *prefix, size_t pl, const char *tid,
                       const char *suffix)
{
    size_t sl = strlen(suffix);
    if (il != pl + 36 + sl || memcmp(iss, prefix, pl) != 0 || memcmp(iss + pl + 36, suffix, sl) != 0)
        return 0;
    if (memcmp(iss + pl, tid, 36) == 0)
        return 1;
    return ag_auth_is_guid(iss + pl, 36) ? 2 : 0;
}

/* True when template (with "{tenantid}" placeholders) filled with tid equals iss[0..il). */
static bool template_matches(const char *tmpl, const char *tid, const char *iss, size_t il)
{
    static const char ph[] = "{tenantid}";
    size_t pos = 0;
    for (const char *t = tmpl; *t;) {
        if (strncmp(t, ph, sizeof ph - 1) == 0) {
            if (pos + 36 > il || memcmp(iss + pos, tid, 36) != 0)
                return false;
            pos += 36;
            t += sizeof ph - 1;
        } else {
            if (pos >= il || iss[pos] != *t)
                return false;
            pos++;
            t++;
        }
    }
    return pos == il;
}

static bool audience_ok(const ag_auth_config *cfg, const char *aud, size_t len)
{
    for (size_t i = 0; i < cfg->naudiences; i++) {
        const char *a = cfg->audiences[i];
        size_t al = strlen(a);
        if (al == len && memcmp(a, aud, len) == 0)
            return true;
        if (!cfg->audience_trailing_slash)
            continue;
        if (al + 1 == len && aud[al] == '/' && memcmp(a, aud, al) == 0)
            return true;
        if (len + 1 == al && a[len] == '/' && memcmp(a, aud, len) == 0)
            return true;
    }
    return false;
}

static const EVP_MD *alg_md(unsigned alg)
{
    switch (alg) {
    case AG_ALG_RS384: return EVP_sha384();
    case AG_ALG_RS512: return EVP_sha512();
    default: return EVP_sha256();
    }
}

/* Verifies sig over signed[0..slen) with key under alg; true only on a valid signature. */
static bool verify_signature(const ag_jwk *key, unsigned alg, const char *signed_part, size_t slen,
                             const unsigned char *sig, size_t siglen)
{
    if ((int)siglen != EVP_PKEY_get_size(key->pkey))
        return false;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    bool ok = false;
    if (ctx && EVP_DigestVerifyInit(ctx, &pctx, alg_md(alg), NULL, key->pkey) == 1) {
        bool setup = true;
        if (alg == AG_ALG_PS256)
            setup = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0 &&
                    EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) > 0 &&
                    EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, EVP_sha256()) > 0;
        else
            setup = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) > 0;
        ok = setup && EVP_DigestVerify(ctx, sig, siglen, (const unsigned char *)signed_part, slen) == 1;
    }
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    return ok;
}

typedef struct jwt_header {
    unsigned alg;
    char kid[AG_JWK_KID_MAX + 1];
} jwt_header;

static ag_auth_code check_header(const ag_auth_config *cfg, const unsigned char *buf, size_t len,
                                 jwt_header *hdr, char *log, size_t loglen)
{
    char e[80];
    ag_json_status st;
    size_t off;
    cJSON *h = ag_json_parse_strict((const char *)buf, len, &HEADER_LIMITS, &st, &off);
    if (!h)
        return fail(log, loglen, AG_AUTH_BAD_HEADER, "header JSON: %s at byte %zu", ag_json_status_str(st), off);
    ag_auth_code code = AG_AUTH_OK;
    if (!cJSON_IsObject(h)) {
        code = fail(log, loglen, AG_AUTH_BAD_HEADER, "header is not a JSON object");
        goto out;
    }
    for (const cJSON *m = h->child; m; m = m->next) {
        const char *n = m->string;
        if (strcmp(n, "crit") == 0) {
            code = fail(log, loglen, AG_AUTH_CRIT, "header has crit (no extension is understood)");
            goto out;
        }
        if (strcmp(n, "jku") == 0 || strcmp(n, "x5u") == 0 || strcmp(n, "jwk") == 0 || strcmp(n, "x5c") == 0) {
            code = fail(log, loglen, AG_AUTH_HEADER_KEY_REF, "header carries %s (keys come only from the JWKS)", n);
            goto out;
        }
        if (strcmp(n, "b64") == 0 || strcmp(n, "cty") == 0 || strcmp(n, "enc") == 0 || strcmp(n, "zip") == 0) {
            code = fail(log, loglen, AG_AUTH_BAD_HEADER, "header parameter %s is not accepted", n);
            goto out;
        }
    }
    const cJSON *alg = cJSON_GetObjectItemCaseSensitive(h, "alg");
    if (!cJSON_IsString(alg)) {
        code = fail(log, loglen, AG_AUTH_BAD_HEADER, "alg missing or not a string");
        goto out;
    }
    size_t al = strlen(alg->valuestring);
    if (strcasecmp(alg->valuestring, "none") == 0) {
        code = fail(log, loglen, AG_AUTH_ALG_NONE, "alg \"%s\"", ag_auth_log_safe(e, sizeof e, alg->valuestring, al));
        goto out;
    }
    hdr->alg = ag_jwt_alg_from_name(alg->valuestring, al);
    if (!(hdr->alg & cfg->algorithms)) {
        code = fail(log, loglen, AG_AUTH_ALG_NOT_ALLOWED, "alg \"%s\" is not configured",
                    ag_auth_log_safe(e, sizeof e, alg->valuestring, al));
        goto out;
    }
    const cJSON *typ = cJSON_GetObjectItemCaseSensitive(h, "typ");
    if (typ && !(cJSON_IsString(typ) && strcmp(typ->valuestring, "JWT") == 0)) {
        code = fail(log, loglen, AG_AUTH_BAD_HEADER, "typ is not \"JWT\"");
        goto out;
    }
    const cJSON *kid = cJSON_GetObjectItemCaseSensitive(h, "kid");
    size_t kl = cJSON_IsString(kid) ? strlen(kid->valuestring) : 0;
    if (kl == 0 || kl > AG_JWK_KID_MAX) {
        code = fail(log, loglen, AG_AUTH_BAD_HEADER, "kid missing, not a string or longer than %d", AG_JWK_KID_MAX);
        goto out;
    }
    for (size_t i = 0; i < kl; i++)
        if ((unsigned char)kid->valuestring[i] < 0x21 || (unsigned char)kid->valuestring[i] > 0x7e) {
            code = fail(log, loglen, AG_AUTH_BAD_HEADER, "kid has non-printable bytes");
            goto out;
        }
    memcpy(hdr->kid, kid->valuestring, kl + 1);
out:
    cJSON_Delete(h);
    return code;
}

/* Joins the roles array into id->roles; false on a wrong shape or overflow. */
static bool put_roles(ag_identity *id, const cJSON *roles)
{
    if (!cJSON_IsArray(roles) || cJSON_GetArraySize(roles) > AG_JWT_MAX_ROLES)
        return false;
    size_t used = 0;
    for (const cJSON *r = roles->child; r; r = r->next) {
        if (!cJSON_IsString(r))
            return false;
        size_t n = strlen(r->valuestring);
        if (n == 0 || memchr(r->valuestring, ' ', n) || used + (used ? 1 : 0) + n >= sizeof id->roles ||
            !no_controls(r->valuestring, n))
            return false;
        if (used)
            id->roles[used++] = ' ';
        memcpy(id->roles + used, r->valuestring, n);
        used += n;
        id->roles[used] = '\0';
    }
    return true;
}

/* All claim checks and the identity; the token version bit, iss and exp go to the out parameters. */
static ag_auth_code check_claims(const ag_auth_config *cfg, const cJSON *root, long long now, ag_identity *id,
                                 unsigned *version, const char **iss_out, size_t *iss_len, long long *exp_out,
                                 char *log, size_t loglen)
{
    char e[80];
    const char *s;
    size_t sl;
    if (!cJSON_IsObject(root))
        return fail(log, loglen, AG_AUTH_BAD_PAYLOAD, "payload is not a JSON object");

    /* Tenant and issuer (AZURE.md 1.1 and 1.5). */
    const char *tid;
    size_t tl;
    if (str_claim(root, "tid", &tid, &tl) != 1 || !ag_auth_is_guid(tid, tl))
        return fail(log, loglen, AG_AUTH_BAD_TENANT, "tid missing or not a lowercase GUID");
    const char *iss;
    size_t il;
    if (str_claim(root, "iss", &iss, &il) != 1)
        return fail(log, loglen, AG_AUTH_BAD_ISSUER, "iss missing or not a string");
    size_t hl = strlen(cfg->authority_host);
    int v2 = il > hl && iss[hl] == '/' && memcmp(iss, cfg->authority_host, hl) == 0
                 ? issuer_form(iss + hl + 1, il - hl - 1, "", 0, tid, "/v2.0")
                 : 0;
    int v1 = issuer_form(iss, il, V1_ISSUER_PREFIX, sizeof V1_ISSUER_PREFIX - 1, tid, "/");
    if (v2 == 2 || v1 == 2)
        return fail(log, loglen, AG_AUTH_ISSUER_TENANT_MISMATCH, "iss \"%s\" names another tenant than tid %s",
                    ag_auth_log_safe(e, sizeof e, iss, il), tid);
    if (v2 != 1 && v1 != 1)
        return fail(log, loglen, AG_AUTH_BAD_ISSUER, "iss \"%s\" is not an accepted issuer", ag_auth_log_safe(e, sizeof e, iss, il));
    *version = v2 == 1 ? AG_TOKEN_V2 : AG_TOKEN_V1;
    int r = str_claim(root, "ver", &s, &sl);
    if (r < 0 || (r == 1 && !((*version == AG_TOKEN_V2 && sl == 3 && memcmp(s, "2.0", 3) == 0) ||
                             (*version == AG_TOKEN_V1 && sl == 3 && memcmp(s, "1.0", 3) == 0))))
        return fail(log, loglen, AG_AUTH_BAD_CLAIM, "ver does not match the v%d issuer form",
                    *version == AG_TOKEN_V2 ? 2 : 1);
    if (!(cfg->versions & *version))
        return fail(log, loglen, AG_AUTH_VERSION_NOT_ACCEPTED, "v%d.0 tokens are not accepted",
                    *version == AG_TOKEN_V2 ? 2 : 1);
    bool allowed = false;
    for (size_t i = 0; i < cfg->ntenants && !allowed; i++)
        allowed = memcmp(cfg->tenants[i], tid, 37) == 0;
    if (!allowed)
        return fail(log, loglen, AG_AUTH_TENANT_NOT_ALLOWED, "tid %s is not an allowed tenant", tid);
    memcpy(id->tid, tid, 37);
    *iss_out = iss;
    *iss_len = il;

    /* Audience: a string or a short array of strings; one must match exactly. */
    const cJSON *aud = cJSON_GetObjectItemCaseSensitive(root, "aud");
    bool aud_ok = false;
    if (cJSON_IsString(aud)) {
        aud_ok = audience_ok(cfg, aud->valuestring, strlen(aud->valuestring));
    } else if (cJSON_IsArray(aud)) {
        int n = cJSON_GetArraySize(aud);
        if (n == 0 || n > AG_JWT_MAX_AUD)
            return fail(log, loglen, AG_AUTH_BAD_CLAIM, "aud array has %d entries (1..%d allowed)", n, AG_JWT_MAX_AUD);
        for (const cJSON *a = aud->child; a; a = a->next) {
            if (!cJSON_IsString(a))
                return fail(log, loglen, AG_AUTH_BAD_CLAIM, "aud array holds a non-string");
            aud_ok = aud_ok || audience_ok(cfg, a->valuestring, strlen(a->valuestring));
        }
    } else {
        return fail(log, loglen, AG_AUTH_BAD_CLAIM, "aud missing or neither a string nor an array");
    }
    if (!aud_ok)
        return fail(log, loglen, AG_AUTH_BAD_AUDIENCE, "aud %s is not an accepted audience",
                    cJSON_IsString(aud) ? ag_auth_log_safe(e, sizeof e, aud->valuestring, strlen(aud->valuestring)) : "[array]");

    /* Times. */
    long long exp = 0, nbf = 0, iat = 0;
    int rexp = time_claim(root, "exp", &exp), rnbf = time_claim(root, "nbf", &nbf),
        riat = time_claim(root, "iat", &iat);
    if (rexp != 1)
        return fail(log, loglen, AG_AUTH_BAD_TIME_CLAIM, "exp %s", rexp == 0 ? "missing" : "not an integer in [0, 2^53)");
    if (rnbf < 0 || riat < 0)
        return fail(log, loglen, AG_AUTH_BAD_TIME_CLAIM, "%s not an integer in [0, 2^53)", rnbf < 0 ? "nbf" : "iat");
    long long skew = cfg->clock_skew_s;
    if (now > exp + skew)
        return fail(log, loglen, AG_AUTH_EXPIRED, "exp %lld, now %lld, skew %llds", exp, now, skew);
    if (rnbf == 1 && now + skew < nbf)
        return fail(log, loglen, AG_AUTH_NOT_YET_VALID, "nbf %lld, now %lld, skew %llds", nbf, now, skew);
    if (riat == 1 && iat > now + skew)
        return fail(log, loglen, AG_AUTH_IAT_FUTURE, "iat %lld, now %lld, skew %llds", iat, now, skew);
    *exp_out = exp;
    id->exp = exp;

    /* Identity fields: rejected, never truncated, when they do not fit or hold control characters. */
    r = str_claim(root, "oid", &s, &sl);
    if (r < 0 || (r == 1 && (!ag_auth_is_guid(s, sl) || !put_field(id->oid, sizeof id->oid, s, sl))))
        return fail(log, loglen, AG_AUTH_BAD_CLAIM, "oid is not a lowercase GUID");
    const char *app_claim = *version == AG_TOKEN_V2 ? "azp" : "appid";
    r = str_claim(root, app_claim, &s, &sl);
    if (r < 0 || (r == 1 && (!ag_auth_is_guid(s, sl) || !put_field(id->app, sizeof id->app, s, sl))))
        return fail(log, loglen, AG_AUTH_BAD_CLAIM, "%s is not a lowercase GUID", app_claim);
    static const char *const upn_claims[] = {"upn", "preferred_username", "unique_name"};
    for (size_t i = 0; i < 3; i++) {
        r = str_claim(root, upn_claims[i], &s, &sl);
        if (r == 0)
            continue;
        if (r < 0 || !put_field(id->upn, sizeof id->upn, s, sl))
            return fail(log, loglen, AG_AUTH_BAD_CLAIM, "%s is not a string of at most %zu bytes without controls",
                        upn_claims[i], sizeof id->upn - 1);
        break;
    }
    const cJSON *roles = cJSON_GetObjectItemCaseSensitive(root, "roles");
    if (roles && !put_roles(id, roles))
        return fail(log, loglen, AG_AUTH_BAD_CLAIM, "roles is not an array of at most %d plain strings fitting %zu bytes",
                    AG_JWT_MAX_ROLES, sizeof id->roles - 1);
    r = str_claim(root, "scp", &s, &sl);
    if (r < 0 || (r == 1 && !put_field(id->scp, sizeof id->scp, s, sl)))
        return fail(log, loglen, AG_AUTH_BAD_CLAIM, "scp is not a string of at most %zu bytes without controls",
                    sizeof id->scp - 1);
    r = str_claim(root, "idtyp", &s, &sl);
    if (r == 1 && sl == 3 && memcmp(s, "app", 3) == 0)
        id->kind = AG_IDENTITY_APP;
    else if (r == 1 && sl == 4 && memcmp(s, "user", 4) == 0)
        id->kind = AG_IDENTITY_USER;
    else if (r != 0)
        return fail(log, loglen, AG_AUTH_BAD_CLAIM, "idtyp is neither \"app\" nor \"user\"");
    else /* no idtyp: delegated tokens always carry scp, app-only tokens never do (AZURE.md 1.4) */
        id->kind = id->scp[0] ? AG_IDENTITY_USER : AG_IDENTITY_APP;
    return AG_AUTH_OK;
}

ag_auth_code ag_jwt_validate(const ag_auth_config *cfg, const ag_jwks *keys, const char *token, size_t len,
                             long long now, ag_identity *id, long long *valid_until, char *log, size_t loglen)
{
    memset(id, 0, sizeof *id);
    if (log && loglen)
        log[0] = '\0';
    if (len > (size_t)cfg->max_token_bytes || len > AG_AUTH_MAX_TOKEN_LIMIT)
        return fail(log, loglen, AG_AUTH_TOKEN_TOO_LARGE, "token is %zu bytes, limit %lld", len, cfg->max_token_bytes);

    /* Shape: exactly three non-empty segments of base64url characters. */
    size_t dot[3], ndots = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)token[i];
        if (c == '.') {
            if (ndots < 3)
                dot[ndots] = i;
            ndots++;
        } else if (!is_b64url_char(c)) {
            return fail(log, loglen, (c == '=' || c == '+' || c == '/') ? AG_AUTH_BAD_BASE64 : AG_AUTH_MALFORMED,
                        "byte 0x%02x at offset %zu is not base64url", c, i);
        }
    }
    if (ndots != 2)
        return fail(log, loglen, AG_AUTH_MALFORMED, "%zu segments, expected 3", ndots + 1);
    const char *hseg = token, *pseg = token + dot[0] + 1, *sseg = token + dot[1] + 1;
    size_t hlen = dot[0], plen = dot[1] - dot[0] - 1, slen = len - dot[1] - 1;
    if (hlen == 0 || plen == 0 || slen == 0)
        return fail(log, loglen, AG_AUTH_MALFORMED, "empty %s segment", !hlen ? "header" : !plen ? "payload" : "signature");

    unsigned char buf[AG_B64_DECODED_MAX(AG_AUTH_MAX_TOKEN_LIMIT)];
    size_t n;
    if (ag_b64url_decode(hseg, hlen, buf, sizeof buf, &n) != 0)
        return fail(log, loglen, AG_AUTH_BAD_BASE64, "header segment is not strict base64url");
    jwt_header hdr;
    ag_auth_code code = check_header(cfg, buf, n, &hdr, log, loglen);
    if (code != AG_AUTH_OK)
        return code;

    if (ag_b64url_decode(pseg, plen, buf, sizeof buf, &n) != 0)
        return fail(log, loglen, AG_AUTH_BAD_BASE64, "payload segment is not strict base64url");
    ag_json_status st;
    size_t off;
    cJSON *payload = ag_json_parse_strict((const char *)buf, n, &PAYLOAD_LIMITS, &st, &off);
    if (!payload)
        return fail(log, loglen, AG_AUTH_BAD_PAYLOAD, "payload JSON: %s at byte %zu", ag_json_status_str(st), off);
    unsigned version = 0;
    const char *iss = NULL;
    size_t il = 0;
    long long exp = 0;
    code = check_claims(cfg, payload, now, id, &version, &iss, &il, &exp, log, loglen);
    if (code != AG_AUTH_OK)
        goto out;

    if (!keys) {
        code = fail(log, loglen, AG_AUTH_NO_KEYS, "no key set loaded yet");
        goto out;
    }
    const ag_jwk *key = ag_jwks_find(keys, hdr.kid, strlen(hdr.kid), version, id->tid);
    char e[80];
    if (!key) {
        code = fail(log, loglen, AG_AUTH_UNKNOWN_KID, "kid \"%s\" not in key set generation %llu (v%d, tid %s)",
                    ag_auth_log_safe(e, sizeof e, hdr.kid, strlen(hdr.kid)), (unsigned long long)ag_jwks_generation(keys),
                    version == AG_TOKEN_V2 ? 2 : 1, id->tid);
        goto out;
    }
    if (!(key->algs & hdr.alg)) {
        code = fail(log, loglen, AG_AUTH_ALG_NOT_ALLOWED, "key %s is bound to another algorithm", key->kid);
        goto out;
    }
    if (version == AG_TOKEN_V2 && key->issuer && !template_matches(key->issuer, id->tid, iss, il)) {
        code = fail(log, loglen, AG_AUTH_KEY_ISSUER_MISMATCH, "key %s issuer \"%s\" does not yield iss for tid %s",
                    key->kid, ag_auth_log_safe(e, sizeof e, key->issuer, strlen(key->issuer)), id->tid);
        goto out;
    }
    if (ag_b64url_decode(sseg, slen, buf, sizeof buf, &n) != 0) {
        code = fail(log, loglen, AG_AUTH_BAD_BASE64, "signature segment is not strict base64url");
        goto out;
    }
    if (!verify_signature(key, hdr.alg, token, dot[1], buf, n)) {
        code = fail(log, loglen, AG_AUTH_BAD_SIGNATURE, "signature does not verify with key %s", key->kid);
        goto out;
    }
    *valid_until = exp + cfg->clock_skew_s;
out:
    cJSON_Delete(payload);
    if (code != AG_AUTH_OK)
        memset(id, 0, sizeof *id);
    return code;
}
