/* credential: the proxy's own Entra ID tokens (Azure OpenAI upstream auth mode `entra`, audit upload
 * to Azure Monitor), from workload identity, managed identity (IMDS or App Service), a client secret,
 * or `default` (the Azure SDKs' DefaultAzureCredential order, decided from config + environment).
 *
 * Threads: ag_credential_new/free/add_scope and all fetching run on the control thread's event_base
 * (HTTP through its ag_curl_loop). Workers only call ag_credential_token / _token_copy / _ready /
 * _stats: these take no lock, never block and never allocate (dropping the last reference to a
 * replaced token frees it); they read an immutable, reference-counted ag_token published by an
 * atomic pointer swap.
 *
 * Ownership: the config struct owns its strings (ag_credential_config_free). ag_credential_new copies
 * what it needs from the config. An ag_token returned by ag_credential_token belongs to the caller
 * until ag_token_release. Secrets and tokens are never logged. */
#ifndef AOAI_GUARD_CREDENTIAL_H
#define AOAI_GUARD_CREDENTIAL_H

#include <stdbool.h>
#include <stddef.h>
#include <cjson/cJSON.h>

#include "aoai_guard/confparse.h"
#include "aoai_guard/curl_loop.h"

struct event_base;

#define AG_SCOPE_COGNITIVE "https://cognitiveservices.azure.com/.default"
#define AG_SCOPE_MONITOR "https://monitor.azure.com//.default"
#define AG_CREDENTIAL_MAX_SCOPES 8
#define AG_CREDENTIAL_SCOPE_LEN 256
#define AG_CREDENTIAL_MAX_TOKEN 16384 /* longer access tokens are rejected */

typedef enum ag_credential_type {
    AG_CRED_DEFAULT = 0,
    AG_CRED_WORKLOAD_IDENTITY,
    AG_CRED_MANAGED_IDENTITY,
    AG_CRED_CLIENT_SECRET,
} ag_credential_type;

/* Where tokens actually come from, once config and environment are resolved. */
typedef enum ag_credential_source {
    AG_CRED_SRC_CLIENT_SECRET = 0,
    AG_CRED_SRC_WORKLOAD_IDENTITY,
    AG_CRED_SRC_IMDS,
    AG_CRED_SRC_APP_SERVICE,
} ag_credential_source;

/* The `credential` config section as written (NULL = key absent; env fallbacks applied by _new). */
typedef struct ag_credential_config {
    ag_credential_type type;
    char *tenant_id;                    /* env AZURE_TENANT_ID */
    char *client_id;                    /* env AZURE_CLIENT_ID */
    char *client_secret;                /* env AZURE_CLIENT_SECRET */
    char *federated_token_file;         /* env AZURE_FEDERATED_TOKEN_FILE */
    char *authority_host;               /* env AZURE_AUTHORITY_HOST, else https://login.microsoftonline.com/ */
    char *imds_endpoint;                /* default http://169.254.169.254 */
    char *identity_endpoint;            /* env IDENTITY_ENDPOINT (App Service / Container Apps) */
    char *identity_header;              /* env IDENTITY_HEADER */
    char *managed_identity_client_id;   /* user-assigned identity, at most one of these three */
    char *managed_identity_object_id;
    char *managed_identity_resource_id;
    char *ca_file;                      /* CA bundle for the token endpoints; NULL = system */
    long long refresh_before_s;         /* default 300 */
    long long timeout_ms;               /* per token request; default 10000 */
} ag_credential_config;

/* Parses the section obj (NULL = absent: all defaults) at path ("credential"); unknown keys, bad
 * types and bad values fail naming the key. On failure *out holds nothing to free. */
int ag_credential_config_parse(const cJSON *obj, const char *path, ag_credential_config *out,
                               ag_conf_err *err);
/* Frees the strings of a parsed config (not the struct itself). */
void ag_credential_config_free(ag_credential_config *cfg);

typedef struct ag_credential ag_credential;
typedef struct ag_token ag_token; /* immutable once published; refcounted */

/* Resolves config + environment into one source and validates it (naming the missing key or env var
 * in err). Does no I/O. http and base are borrowed and must outlive the credential. */
ag_credential *ag_credential_new(struct event_base *base, ag_curl_loop *http,
                                 const ag_credential_config *cfg, ag_conf_err *err);
/* Cancels timers and in-flight fetches and frees everything; call after workers stopped reading.
 * Tokens still held by callers stay valid until their ag_token_release. */
void ag_credential_free(ag_credential *cred);

/* Registers scope (e.g. AG_SCOPE_COGNITIVE) to keep fresh and starts fetching it from the loop.
 * Returns the scope's index (idempotent for the same scope) or -1 (full, bad scope). Control thread. */
int ag_credential_add_scope(ag_credential *cred, const char *scope);

/* The current valid token for scope, with a reference the caller drops with ag_token_release; NULL
 * when the scope is unknown or has no unexpired token. Any thread; lock-free, no allocation. */
ag_token *ag_credential_token(ag_credential *cred, const char *scope);
/* Copies the current valid token for scope into buf (NUL-terminated); returns its length, or -1
 * (no valid token, or buflen too small). Any thread. */
long ag_credential_token_copy(ag_credential *cred, const char *scope, char *buf, size_t buflen);
/* The token string (NUL-terminated, printable ASCII only). */
const char *ag_token_value(const ag_token *tok);
/* Length of the token string. */
size_t ag_token_len(const ag_token *tok);
/* Expiry, Unix seconds. */
long long ag_token_expires_on(const ag_token *tok);
/* Drops a reference taken by ag_credential_token; NULL is a no-op. Any thread. */
void ag_token_release(ag_token *tok);

/* True when every registered scope has an unexpired token (vacuously true with none). Any thread. */
bool ag_credential_ready(const ag_credential *cred);

typedef struct ag_credential_stats {
    unsigned long long refreshes;    /* successful fetches */
    unsigned long long failures;     /* failed fetches */
    long long expires_on;            /* current token expiry (Unix s), 0 when none */
    long long seconds_to_expiry;     /* expires_on - now, 0 when none or expired */
} ag_credential_stats;

/* Counters for scope; -1 when the scope is not registered. Any thread. */
int ag_credential_stats_get(const ag_credential *cred, const char *scope, ag_credential_stats *out);
/* The resolved source. */
ag_credential_source ag_credential_get_source(const ag_credential *cred);
/* "client_secret", "workload_identity", "managed_identity_imds", "managed_identity_app_service". */
const char *ag_credential_source_str(ag_credential_source src);

/* ---- building blocks (pure functions, used by the provider and its tests) ---- */

/* Config + environment resolved into one source with everything a fetch needs (all malloc'd). */
typedef struct ag_credential_settings {
    ag_credential_source source;
    char *tenant_id;            /* client secret, workload identity */
    char *client_id;            /* client secret, workload identity */
    char *client_secret;        /* client secret only */
    char *federated_token_file; /* workload identity only; re-read on every fetch */
    char *token_url;            /* {authority_host}{tenant}/oauth2/v2.0/token */
    char *imds_endpoint;        /* IMDS: base URL without trailing '/' */
    char *identity_endpoint;    /* App Service: full token URL */
    char *identity_header;      /* App Service: X-IDENTITY-HEADER value */
    const char *mi_id_param;    /* user-assigned identity query parameter name, or NULL */
    char *mi_id_value;
    char *ca_file;
    long long refresh_before_s;
    long long timeout_ms;
} ag_credential_settings;

/* Resolves cfg with the environment (AZURE_* / IDENTITY_* variables) into out; `default` picks, like
 * DefaultAzureCredential: client secret (EnvironmentCredential) when tenant + client id + secret are
 * known, else workload identity when tenant + client id + token file are known, else managed
 * identity (AZURE_CLIENT_ID then names the user-assigned identity). Fails naming the missing key and
 * env var. On failure *out holds nothing to free. */
int ag_credential_resolve(const ag_credential_config *cfg, ag_credential_settings *out, ag_conf_err *err);
/* Frees the strings of resolved settings (secrets are wiped first). */
void ag_credential_settings_free(ag_credential_settings *s);

/* Token request: one fetch of one scope, fully built. */
typedef struct ag_credential_req {
    const char *method;     /* "GET" or "POST" (static string) */
    char *url;
    char *body;             /* form body for POST, NULL for GET; contains secrets: never log */
    size_t body_len;
    char *headers[3];       /* NULL-terminated "Name: value" list; may contain secrets */
} ag_credential_req;

/* Frees the strings of a built request (secrets are wiped first). */
void ag_credential_req_free(ag_credential_req *req);

/* Resource for IMDS / App Service from a v2 scope: drops "/.default" then one trailing '/'
 * ("https://monitor.azure.com//.default" -> "https://monitor.azure.com"); a scope without
 * "/.default" is used as is. Returns 0, or -1 when out is too small or scope is empty. */
int ag_credential_scope_to_resource(const char *scope, char *out, size_t outlen);

/* Builds the request for scope; assertion is the federated token (workload identity only). All
 * values are URL-encoded. Returns 0 or -1 (allocation failure, missing assertion, bad scope). */
int ag_credential_build_request(const ag_credential_settings *s, const char *scope,
                                const char *assertion, ag_credential_req *out);

/* A parsed token response. */
typedef struct ag_token_response {
    char *access_token;     /* malloc'd; owned by the struct */
    long long expires_on;   /* Unix seconds */
} ag_token_response;

/* Parses a 200 token response (Entra numeric expires_in; IMDS/App Service string numbers, expires_on).
 * expires_in wins (relative to now) over expires_on. Rejects empty or non-printable tokens, tokens
 * longer than AG_CREDENTIAL_MAX_TOKEN, token_type other than Bearer, missing or non-positive
 * lifetimes. Returns 0, or -1 with a reason in err (never containing the token). */
int ag_credential_parse_token(const char *body, size_t len, long long now, ag_token_response *out,
                              char *err, size_t errlen);
/* Wipes and frees the token string of a parsed response. */
void ag_token_response_free(ag_token_response *r);

/* Summarises an error body ({"error","error_description"} of Entra/IMDS, or {"message"}) into out as
 * "error: description" (escaped, truncated); "(no error body)" when unparsable. */
void ag_credential_describe_error(const char *body, size_t len, char *out, size_t outlen);

/* Seconds from now until the refresh of a token valid until expires_on: refresh `margin` before
 * expiry, margin = min(refresh_before_s, lifetime/2), or max(refresh_before_s, lifetime/2) for
 * lifetimes of 2 h or more (MSAL's refresh_in), minus jitter01 (in [0,1)) x 10% of margin; >= 1. */
long long ag_credential_refresh_delay(long long now, long long expires_on, long long refresh_before_s,
                                      double jitter01);

/* True for a failed fetch worth a quick retry: transport failure (status 0), 404, 408, 410, 429, 5xx. */
bool ag_credential_retryable(long status);

/* Milliseconds before retry number `attempt` (1-based) after a failure with status: quick retries
 * follow IMDS guidance 2, 6, 14, 30, 30... s scaled by (0.8 + 0.2 x jitter01); Retry-After (delta
 * seconds or HTTP date, relative to now) wins when longer, capped at 300 s; non-retryable failures
 * wait 60 s. */
long long ag_credential_retry_delay_ms(int attempt, long status, const char *retry_after, long long now,
                                       double jitter01);

#endif
