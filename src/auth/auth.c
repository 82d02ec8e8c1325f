/* The authenticate stage's front door and the mapping of reason codes to HTTP answers (see auth.h). */
#include "aoai_guard/auth.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "aoai_guard/jwks.h"
#include "aoai_guard/jwt.h"
#include "aoai_guard/token_cache.h"

#define PUBLIC_MALFORMED "The access token is malformed or uses an unsupported format"
#define PUBLIC_TIME "The access token is expired or not yet valid"
#define PUBLIC_INVALID "The access token is invalid or was not issued for this service"
#define DEFAULT_REALM "aoai-guard"
#define MAX_API_KEY_LEN 512

static const struct {
    const char *name;
    int status;
    const char *public;
} CODES[AG_AUTH_CODE_COUNT] = {
    [AG_AUTH_OK] = {"ok", 200, "OK"},
    [AG_AUTH_NO_CREDENTIALS] = {"no_credentials", 401, "Access token is missing"},
    [AG_AUTH_UNSUPPORTED_SCHEME] = {"unsupported_scheme", 401, "Use Authorization: Bearer with an access token"},
    [AG_AUTH_TOKEN_TOO_LARGE] = {"token_too_large", 401, PUBLIC_MALFORMED},
    [AG_AUTH_MALFORMED] = {"malformed", 401, PUBLIC_MALFORMED},
    [AG_AUTH_BAD_BASE64] = {"bad_base64", 401, PUBLIC_MALFORMED},
    [AG_AUTH_BAD_HEADER] = {"bad_header", 401, PUBLIC_MALFORMED},
    [AG_AUTH_BAD_PAYLOAD] = {"bad_payload", 401, PUBLIC_MALFORMED},
    [AG_AUTH_ALG_NONE] = {"alg_none", 401, PUBLIC_MALFORMED},
    [AG_AUTH_ALG_NOT_ALLOWED] = {"alg_not_allowed", 401, PUBLIC_MALFORMED},
    [AG_AUTH_CRIT] = {"crit_header", 401, PUBLIC_MALFORMED},
    [AG_AUTH_HEADER_KEY_REF] = {"header_key_reference", 401, PUBLIC_MALFORMED},
    [AG_AUTH_BAD_CLAIM] = {"bad_claim", 401, PUBLIC_MALFORMED},
    [AG_AUTH_BAD_TIME_CLAIM] = {"bad_time_claim", 401, PUBLIC_MALFORMED},
    [AG_AUTH_EXPIRED] = {"expired", 401, PUBLIC_TIME},
    [AG_AUTH_NOT_YET_VALID] = {"not_yet_valid", 401, PUBLIC_TIME},
    [AG_AUTH_IAT_FUTURE] = {"iat_in_future", 401, PUBLIC_TIME},
    [AG_AUTH_BAD_TENANT] = {"bad_tenant", 401, PUBLIC_INVALID},
    [AG_AUTH_TENANT_NOT_ALLOWED] = {"tenant_not_allowed", 401, PUBLIC_INVALID},
    [AG_AUTH_BAD_ISSUER] = {"bad_issuer", 401, PUBLIC_INVALID},
    [AG_AUTH_ISSUER_TENANT_MISMATCH] = {"issuer_tenant_mismatch", 401, PUBLIC_INVALID},
    [AG_AUTH_VERSION_NOT_ACCEPTED] = {"version_not_accepted", 401, PUBLIC_INVALID},
    [AG_AUTH_BAD_AUDIENCE] = {"bad_audience", 401, PUBLIC_INVALID},
    [AG_AUTH_UNKNOWN_KID] = {"unknown_kid", 401, PUBLIC_INVALID},
    [AG_AUTH_KEY_ISSUER_MISMATCH] = {"key_issuer_mismatch", 401, PUBLIC_INVALID},
    [AG_AUTH_BAD_SIGNATURE] = {"bad_signature", 401, PUBLIC_INVALID},
    [AG_AUTH_BAD_API_KEY] = {"bad_api_key", 401, "Access denied due to an invalid API key"},
    [AG_AUTH_FORBIDDEN] = {"forbidden", 403, "The caller is not permitted to use this deployment"},
    [AG_AUTH_NO_KEYS] = {"no_keys", 503, "Token validation is temporarily unavailable, retry later"},
    [AG_AUTH_INTERNAL] = {"internal_error", 503, "Authentication failed on an internal error, retry later"},
};

const char *ag_auth_log_safe(char *out, size_t outlen, const char *s, size_t len)
{
    if (outlen == 0)
        return out;
    size_t j = 0, i = 0;
    for (; i < len && i < 64 && j + 4 < outlen; i++) {
        unsigned char c = (unsigned char)s[i];
        out[j++] = (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') ? (char)c : '?';
    }
    if (i < len && j + 3 < outlen) {
        memcpy(out + j, "...", 3);
        j += 3;
    }
    out[j] = '\0';
    return out;
}

const char *ag_auth_code_str(ag_auth_code code)
{
    return (unsigned)code < AG_AUTH_CODE_COUNT ? CODES[code].name : "unknown";
}

int ag_auth_code_status(ag_auth_code code)
{
    return (unsigned)code < AG_AUTH_CODE_COUNT ? CODES[code].status : 503;
}

const char *ag_auth_code_public(ag_auth_code code)
{
    return (unsigned)code < AG_AUTH_CODE_COUNT ? CODES[code].public : CODES[AG_AUTH_INTERNAL].public;
}

static ag_auth_code finish(ag_auth_result *res, ag_auth_code code, ag_identity *id)
{
    res->code = code;
    res->status = ag_auth_code_status(code);
    res->refresh_keys = code == AG_AUTH_UNKNOWN_KID;
    if (code != AG_AUTH_OK)
        memset(id, 0, sizeof *id);
    else
        res->log[0] = '\0';
    return code;
}

static ag_auth_code fail_msg(ag_auth_result *res, ag_auth_code code, ag_identity *id, const char *msg)
{
    snprintf(res->log, sizeof res->log, "%s: %s", ag_auth_code_str(code), msg);
    return finish(res, code, id);
}

static ag_auth_code authenticate_api_key(const ag_auth_config *cfg, const ag_auth_input *in, ag_identity *id,
                                         ag_auth_result *res)
{
    if (!in->api_key)
        return fail_msg(res, AG_AUTH_NO_CREDENTIALS, id, "no api-key header");
    if (in->api_key_len == 0 || in->api_key_len > MAX_API_KEY_LEN)
        return fail_msg(res, AG_AUTH_BAD_API_KEY, id, "api-key empty or longer than 512 bytes");
    unsigned char digest[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)in->api_key, in->api_key_len, digest);
    /* Compare against every key, digest to digest: neither the length nor the position of a match
     * shows in the timing. */
    size_t match = cfg->napi_keys;
    for (size_t i = 0; i < cfg->napi_keys; i++)
        if (CRYPTO_memcmp(digest, cfg->api_keys[i].digest, sizeof digest) == 0)
            match = i;
    OPENSSL_cleanse(digest, sizeof digest);
    if (match == cfg->napi_keys)
        return fail_msg(res, AG_AUTH_BAD_API_KEY, id, "api-key matches no configured key");
    memset(id, 0, sizeof *id);
    id->kind = AG_IDENTITY_API_KEY;
    snprintf(id->name, sizeof id->name, "%s", cfg->api_keys[match].name);
    return finish(res, AG_AUTH_OK, id);
}

/* Splits `Bearer <token>`: AG_AUTH_OK with the token span, or the failure code. */
static ag_auth_code bearer_token(const char *v, size_t len, const char **tok, size_t *tlen)
{
    while (len > 0 && (v[len - 1] == ' ' || v[len - 1] == '\t'))
        len--;
    size_t s = 0;
    while (s < len && v[s] != ' ')
        s++;
    if (s != 6 || strncasecmp(v, "Bearer", 6) != 0)
        return AG_AUTH_UNSUPPORTED_SCHEME;
    while (s < len && v[s] == ' ')
        s++;
    if (s == len)
        return AG_AUTH_MALFORMED;
    *tok = v + s;
    *tlen = len - s;
    return AG_AUTH_OK;
}

ag_auth_code ag_auth_authenticate(const ag_auth_config *cfg, struct ag_token_cache *cache,
                                  const struct ag_jwks *keys, const ag_auth_input *in, long long now,
                                  ag_identity *id, ag_auth_result *res)
{
    res->cached = false;
    res->log[0] = '\0';
    if (cfg->mode == AG_AUTH_MODE_NONE) {
        memset(id, 0, sizeof *id);
        id->kind = AG_IDENTITY_ANONYMOUS;
        return finish(res, AG_AUTH_OK, id);
    }
    if (cfg->mode == AG_AUTH_MODE_API_KEY)
        return authenticate_api_key(cfg, in, id, res);

    if (!in->authorization)
        return fail_msg(res, AG_AUTH_NO_CREDENTIALS, id, "no Authorization header");
    if (in->authorization_len > (size_t)cfg->max_token_bytes + 64) {
        snprintf(res->log, sizeof res->log, "%s: Authorization header is %zu bytes, token limit %lld",
                 ag_auth_code_str(AG_AUTH_TOKEN_TOO_LARGE), in->authorization_len, cfg->max_token_bytes);
        return finish(res, AG_AUTH_TOKEN_TOO_LARGE, id);
    }
    const char *tok = NULL;
    size_t tlen = 0;
    ag_auth_code code = bearer_token(in->authorization, in->authorization_len, &tok, &tlen);
    if (code == AG_AUTH_UNSUPPORTED_SCHEME)
        return fail_msg(res, code, id, "Authorization scheme is not Bearer");
    if (code != AG_AUTH_OK)
        return fail_msg(res, code, id, "Bearer without a token");
    if (!keys)
        return fail_msg(res, AG_AUTH_NO_KEYS, id, "no key set loaded yet");

    uint64_t gen = ag_jwks_generation(keys);
    unsigned char ckey[AG_TOKEN_CACHE_KEY_LEN];
    if (cache) {
        ag_token_memo_key(in->memo, tok, tlen, ckey);
        if (ag_token_cache_get(cache, ckey, gen, now, id)) {
            res->cached = true;
            return finish(res, AG_AUTH_OK, id);
        }
    }
    long long valid_until = 0;
    code = ag_jwt_validate(cfg, keys, tok, tlen, now, id, &valid_until, res->log, sizeof res->log);
    if (code == AG_AUTH_OK && cache)
        ag_token_cache_put(cache, ckey, gen, valid_until, id); /* a failed insert only costs speed */
    return finish(res, code, id);
}

size_t ag_auth_www_authenticate(const ag_auth_config *cfg, ag_auth_code code, const char *realm, char *out,
                                size_t outlen)
{
    if (outlen == 0)
        return 0;
    out[0] = '\0';
    if (cfg->mode != AG_AUTH_MODE_ENTRA || (unsigned)code >= AG_AUTH_CODE_COUNT)
        return 0;
    /* realm is a quoted-string: refuse anything that would need escaping. */
    if (!realm || !realm[0] || strpbrk(realm, "\"\\"))
        realm = DEFAULT_REALM;
    for (const char *p = realm; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e) {
            realm = DEFAULT_REALM;
            break;
        }
    int n;
    int status = CODES[code].status;
    if (code == AG_AUTH_NO_CREDENTIALS || code == AG_AUTH_UNSUPPORTED_SCHEME)
        n = snprintf(out, outlen, "Bearer realm=\"%s\"", realm);
    else if (status == 401)
        n = snprintf(out, outlen, "Bearer error=\"invalid_token\", error_description=\"%s\"", CODES[code].public);
    else if (status == 403)
        n = snprintf(out, outlen, "Bearer error=\"insufficient_scope\", error_description=\"%s\"",
                     CODES[code].public);
    else
        return 0;
    if (n < 0 || (size_t)n >= outlen) {
        out[0] = '\0';
        return 0;
    }
    return (size_t)n;
}

size_t ag_auth_error_body(ag_auth_code code, char *out, size_t outlen)
{
    if (outlen == 0)
        return 0;
    int status = ag_auth_code_status(code);
    const char *acode = status == 403 ? "PermissionDenied" : status == 401 ? "401" : "ServiceUnavailable";
    int n = snprintf(out, outlen, "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", acode,
                     ag_auth_code_public(code));
    if (n < 0 || (size_t)n >= outlen) {
        out[0] = '\0';
        return 0;
    }
    return (size_t)n;
}
