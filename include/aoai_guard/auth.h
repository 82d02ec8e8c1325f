/* The authenticate stage's front door: turns a request's credentials into an ag_identity, or into a
 * precise reason code that the pipeline logs and maps to an HTTP answer.
 *
 * Call pattern on a worker thread (all state passed in, nothing global, no lock, no blocking):
 *   keys = the worker's reference to the current key set (see jwks_manager.h: ag_jwks_manager_sync)
 *   code = ag_auth_authenticate(cfg, cache, keys, &in, time(NULL), &identity, &res);
 *   if (code == AG_AUTH_UNKNOWN_KID && ag_jwks_manager_request_refresh(mgr, gen)) park and retry later
 *   else if (code != AG_AUTH_OK) answer res.status with ag_auth_www_authenticate + ag_auth_error_body
 *   later, once the deployment is known: code = ag_authz_check(cfg, &identity, deployment, &res)
 * res.log holds the specific reason for the log line; the response only says as much as
 * ag_auth_code_public() does, so it never helps an attacker tune a forged token. */
#ifndef AOAI_GUARD_AUTH_H
#define AOAI_GUARD_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "aoai_guard/auth_config.h"
#include "aoai_guard/identity.h"

struct ag_jwks;
struct ag_token_cache;

typedef enum ag_auth_code {
    AG_AUTH_OK = 0,
    /* 401 with `Bearer realm=...`, no error parameter (RFC 6750 §3.1) */
    AG_AUTH_NO_CREDENTIALS,      /* no Authorization (entra) / no api-key header (api_key) */
    AG_AUTH_UNSUPPORTED_SCHEME,  /* Authorization with a scheme other than Bearer */
    /* 401 invalid_token: the token cannot even be read */
    AG_AUTH_TOKEN_TOO_LARGE,     /* longer than max_token_bytes */
    AG_AUTH_MALFORMED,           /* not three non-empty base64url segments */
    AG_AUTH_BAD_BASE64,          /* a segment is not strict unpadded base64url */
    AG_AUTH_BAD_HEADER,          /* header JSON invalid, typ not JWT, kid missing, b64/cty present */
    AG_AUTH_BAD_PAYLOAD,         /* payload JSON invalid: duplicate claim, \u0000, bad UTF-8, ... */
    /* 401 invalid_token: the header asks for something we never do */
    AG_AUTH_ALG_NONE,            /* alg none/None/NONE */
    AG_AUTH_ALG_NOT_ALLOWED,     /* alg not configured (HS256 lands here) or not allowed for the key */
    AG_AUTH_CRIT,                /* crit header present (we understand no extension) */
    AG_AUTH_HEADER_KEY_REF,      /* jku / x5u / jwk / x5c in the header */
    /* 401 invalid_token: claims */
    AG_AUTH_BAD_CLAIM,           /* wrong type, too long, control characters, bad GUID, bad ver */
    AG_AUTH_BAD_TIME_CLAIM,      /* exp missing; exp/nbf/iat not an integer in [0, 2^53) */
    AG_AUTH_EXPIRED,             /* now > exp + skew */
    AG_AUTH_NOT_YET_VALID,       /* now + skew < nbf */
    AG_AUTH_IAT_FUTURE,          /* iat > now + skew */
    AG_AUTH_BAD_TENANT,          /* tid missing or not a GUID */
    AG_AUTH_TENANT_NOT_ALLOWED,  /* tid not in auth.tenants */
    AG_AUTH_BAD_ISSUER,          /* iss is neither the v1 nor the v2 issuer form */
    AG_AUTH_ISSUER_TENANT_MISMATCH, /* iss names another tenant than tid */
    AG_AUTH_VERSION_NOT_ACCEPTED,   /* v1/v2 token while only the other is accepted */
    AG_AUTH_BAD_AUDIENCE,        /* no aud value is an accepted audience */
    /* 401 invalid_token: keys and signature */
    AG_AUTH_UNKNOWN_KID,         /* no key with this kid for this version/tenant: ask for a key refresh */
    AG_AUTH_KEY_ISSUER_MISMATCH, /* the key's issuer template, filled with tid, is not iss */
    AG_AUTH_BAD_SIGNATURE,
    /* 401 (api_key mode) */
    AG_AUTH_BAD_API_KEY,
    /* 403 insufficient_scope */
    AG_AUTH_FORBIDDEN,           /* valid identity, but no rule grants this deployment */
    /* 503: cannot decide now */
    AG_AUTH_NO_KEYS,             /* no key set loaded yet */
    AG_AUTH_INTERNAL,            /* allocation or OpenSSL failure: fail closed */
    AG_AUTH_CODE_COUNT
} ag_auth_code;

/* What the caller presented: header values exactly as received (NULL when the header is absent). */
typedef struct ag_auth_input {
    const char *authorization;   /* Authorization header value */
    size_t authorization_len;
    const char *api_key;         /* api-key header value (api_key mode) */
    size_t api_key_len;
    struct ag_token_memo *memo;  /* the connection's last token and its cache key; NULL: none */
} ag_auth_input;

#define AG_AUTH_LOG_LEN 384

typedef struct ag_auth_result {
    ag_auth_code code;
    int status;                  /* HTTP status to answer: 200 when OK, 401, 403 or 503 */
    bool cached;                 /* the token was found in the token cache (no RSA, no JSON) */
    bool refresh_keys;           /* unknown kid: ask the JWKS manager for a refresh */
    char log[AG_AUTH_LOG_LEN];   /* specific reason for the log line; untrusted bytes escaped; "" when OK */
} ag_auth_result;

/* Authenticates one request under cfg->mode. Entra: parses `Bearer <token>`, looks the token up in
 * cache (may be NULL: no cache), else validates it against keys (may be NULL: AG_AUTH_NO_KEYS) and
 * caches the identity until exp + skew. api_key: constant-time match against the configured digests.
 * none: anonymous. Fills *id only on AG_AUTH_OK (zeroed otherwise). Never blocks; allocates only on a
 * cache miss (cJSON parse, OpenSSL verify). */
ag_auth_code ag_auth_authenticate(const ag_auth_config *cfg, struct ag_token_cache *cache,
                                  const struct ag_jwks *keys, const ag_auth_input *in, long long now,
                                  ag_identity *id, ag_auth_result *res);

/* Copies untrusted bytes s[0..len) for a log line: printable ASCII kept (except '"' and '\\'), any
 * other byte as '?', at most 64 input bytes then "..."; always NUL-terminates out. Returns out. */
const char *ag_auth_log_safe(char *out, size_t outlen, const char *s, size_t len);

/* Stable snake_case name of a code for logs and the auth_failures_total{reason} metric. */
const char *ag_auth_code_str(ag_auth_code code);
/* HTTP status for a code: 200, 401, 403 or 503. */
int ag_auth_code_status(ag_auth_code code);
/* The deliberately generic error_description / message safe to send to the caller. */
const char *ag_auth_code_public(ag_auth_code code);

/* Writes the WWW-Authenticate value for code into out (RFC 6750 §3): `Bearer realm="<realm>"` for
 * missing credentials, `Bearer error="invalid_token", error_description="..."` for 401s,
 * `Bearer error="insufficient_scope", ...` for 403. Returns its length, or 0 when no header is due
 * (OK, 503, or mode api_key/none). out gets "" then. realm NULL = "aoai-guard". */
size_t ag_auth_www_authenticate(const ag_auth_config *cfg, ag_auth_code code, const char *realm, char *out,
                                size_t outlen);
/* Writes the Azure-style JSON error body {"error":{"code":"...","message":"..."}} for code; returns its
 * length (truncated output is never produced: 0 when outlen is too small). */
size_t ag_auth_error_body(ag_auth_code code, char *out, size_t outlen);

#endif
