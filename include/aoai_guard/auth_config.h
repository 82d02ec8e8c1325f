/* The "auth" configuration section: how callers authenticate (Entra ID bearer tokens, inbound API
 * keys, or nothing) and which identities may call which deployments.
 *
 * Parsed once on the control thread into an immutable ag_auth_config that workers read without locks.
 * All strings and arrays are owned by the struct: ag_auth_config_free releases them. */
#ifndef AOAI_GUARD_AUTH_CONFIG_H
#define AOAI_GUARD_AUTH_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <cjson/cJSON.h>

#include "aoai_guard/confparse.h"

#define AG_AUTH_DEFAULT_AUTHORITY "https://login.microsoftonline.com"
#define AG_AUTH_DEFAULT_SKEW_S 300
#define AG_AUTH_MAX_SKEW_S 600
#define AG_AUTH_DEFAULT_MAX_TOKEN 8192
#define AG_AUTH_MAX_TOKEN_LIMIT 16384    /* validation decodes on the stack up to this size */
#define AG_AUTH_DEFAULT_CACHE_SIZE 10000
#define AG_AUTH_DEFAULT_REFRESH_S 3600
#define AG_AUTH_DEFAULT_REFETCH_S 300
#define AG_AUTH_MAX_AUDIENCES 32
#define AG_AUTH_MAX_TENANTS 64
#define AG_AUTH_MIN_API_KEY_LEN 16

typedef enum ag_auth_mode {
    AG_AUTH_MODE_ENTRA = 0, /* Authorization: Bearer <Entra ID access token> */
    AG_AUTH_MODE_API_KEY,   /* api-key: <one of the configured keys> */
    AG_AUTH_MODE_NONE,      /* no authentication: every caller is anonymous */
} ag_auth_mode;

/* Token versions (the `ver` claim), as bits. */
#define AG_TOKEN_V1 1u
#define AG_TOKEN_V2 2u

/* Signature algorithms, as bits. */
typedef enum ag_jwt_alg {
    AG_ALG_RS256 = 1u << 0,
    AG_ALG_RS384 = 1u << 1,
    AG_ALG_RS512 = 1u << 2,
    AG_ALG_PS256 = 1u << 3,
} ag_jwt_alg;

typedef enum ag_identity_type_req {
    AG_IDTYPE_ANY = 0,
    AG_IDTYPE_APP,
    AG_IDTYPE_USER,
} ag_identity_type_req;

/* One authorization rule: an identity matching every non-empty requirement may call the deployments. */
typedef struct ag_auth_rule {
    char **roles;             /* any-of app roles (`roles` claim); NULL-terminated; empty = no requirement */
    size_t nroles;
    char **scopes;            /* any-of delegated scopes (`scp` claim) */
    size_t nscopes;
    char **apps;              /* client app GUIDs (azp/appid), lowercased */
    size_t napps;
    ag_identity_type_req identity_type;
    char **deployments;       /* granted deployments; "*" = all */
    size_t ndeployments;
    bool all_deployments;     /* deployments contains "*" */
} ag_auth_rule;

/* One inbound API key: only its SHA-256 digest is kept. */
typedef struct ag_auth_api_key {
    char *name;                      /* identity name (ag_identity.name) */
    unsigned char digest[32];        /* SHA-256 of the key */
    char **deployments;              /* granted deployments; "*" = all */
    size_t ndeployments;
    bool all_deployments;
} ag_auth_api_key;

typedef struct ag_auth_config {
    ag_auth_mode mode;
    char *authority_host;            /* scheme://host[:port], no trailing '/' */
    char **tenants;                  /* allowed tenant GUIDs, lowercased; NULL-terminated */
    size_t ntenants;
    char **audiences;                /* accepted `aud` values, exact match */
    size_t naudiences;
    bool audience_trailing_slash;    /* "accept_audience_trailing_slash": also accept aud ± a final '/' */
    char *jwks_uri;                  /* NULL: discover from the OpenID metadata of each tenant */
    long long clock_skew_s;          /* 0..600, default 300 */
    ag_auth_rule *rules;
    size_t nrules;
    unsigned versions;               /* AG_TOKEN_V1 | AG_TOKEN_V2 */
    unsigned algorithms;             /* ag_jwt_alg bits; default RS256 */
    long long max_token_bytes;       /* 512..16384, default 8192 */
    long long token_cache_size;      /* entries per worker; 0 disables the cache */
    long long jwks_refresh_s;        /* background refresh period, default 3600 */
    long long unknown_kid_refetch_s; /* at most one key refetch per this many seconds, default 300 */
    char *ca_file;                   /* CA bundle for metadata/JWKS fetches; NULL: system */
    ag_auth_api_key *api_keys;
    size_t napi_keys;
} ag_auth_config;

/* Fills the defaults (mode entra with no tenants: only valid once parsed from a real section). */
void ag_auth_config_init(ag_auth_config *out);

/* Parses the "auth" object at path into *out (call ag_auth_config_init first, or let this do it: it
 * always starts from the defaults). auth NULL means {"mode":"none"}. Unknown keys, wrong types and
 * out-of-range values fail with the exact key path in *err; on failure *out is left freed. */
int ag_auth_config_parse(const cJSON *auth, const char *path, ag_auth_config *out, ag_conf_err *err);

/* Releases everything *cfg owns and resets it to the defaults. */
void ag_auth_config_free(ag_auth_config *cfg);

/* Algorithm bit for a JOSE `alg` name (case-sensitive), or 0 when unknown. */
unsigned ag_jwt_alg_from_name(const char *name, size_t len);

/* True when s[0..len) is a canonical lowercase GUID (8-4-4-4-12 hex digits). */
bool ag_auth_is_guid(const char *s, size_t len);

/* True when url may be fetched for keys/metadata: https://, or http:// to a loopback host only
 * (127.0.0.1, [::1], localhost: the test stand-ins), with no userinfo, query or fragment. */
bool ag_auth_url_allowed(const char *url);

#endif
