/* The "rate_limits" configuration section: the counter store and the list of policies.
 *
 *   "rate_limits": {
 *     "store": { "type": "memory", "max_keys": 100000, "shards": 64 },
 *     "policies": [ { "name": "per-user-tpm",
 *                     "match": { "tenants": [], "apps": [], "oids": [], "roles": [],
 *                                "deployments": ["gpt-4o"], "operations": [] },
 *                     "key": ["tid", "oid", "deployment"],
 *                     "requests_per_minute": 60, "tokens_per_minute": 20000,
 *                     "token_quota": { "period": "day", "tokens": 500000 },
 *                     "default_completion_tokens": 1024 } ] }
 *
 * Every policy whose match fits the request applies (all matches, not the first): per-user, per-app
 * and per-tenant limits stack, and all must admit. Within a match field any listed value fits (an
 * empty or absent list fits everything); across fields all must fit. Tenants, apps, oids and
 * deployments compare case-insensitively (deployments are case-insensitive in Azure, so a case
 * change must not escape a limit); roles and operations compare exactly. */
#ifndef AOAI_GUARD_RATELIMIT_CONFIG_H
#define AOAI_GUARD_RATELIMIT_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <cjson/cJSON.h>

#include "aoai_guard/confparse.h"
#include "aoai_guard/identity.h"
#include "aoai_guard/limit_counter.h"

#define AG_LIMIT_NAME_MAX 64 /* policy names: 1..64 of [A-Za-z0-9._-] */
#define AG_LIMIT_PREFIX_MAX 64
#define AG_LIMIT_MAX_POLICIES 256

typedef enum ag_limit_store_type {
    AG_LIMIT_STORE_MEMORY = 0,
    AG_LIMIT_STORE_REDIS,
} ag_limit_store_type;

typedef enum ag_limit_on_error {
    AG_LIMIT_FAIL_OPEN = 0, /* Redis down: decide with the local memory table (per replica) */
    AG_LIMIT_FAIL_CLOSED,   /* Redis down: refuse with 503 */
} ag_limit_on_error;

/* Fields that can form a counter key (bit flags, in this canonical order). */
typedef enum ag_limit_key_field {
    AG_LIMIT_KEY_TID = 1u << 0,
    AG_LIMIT_KEY_OID = 1u << 1,
    AG_LIMIT_KEY_APP = 1u << 2,
    AG_LIMIT_KEY_NAME = 1u << 3, /* api-key mode identity name */
    AG_LIMIT_KEY_DEPLOYMENT = 1u << 4,
    AG_LIMIT_KEY_OPERATION = 1u << 5,
} ag_limit_key_field;

typedef struct ag_limit_store_config {
    ag_limit_store_type type;
    long long max_keys;          /* memory table capacity; default 100000 */
    long long shards;            /* memory table shards; default 64 */
    /* redis only */
    char *url;                   /* "redis://[[user]:password@]host[:port][/db]" as written */
    char *host;                  /* parsed from url (IPv6 without brackets) */
    int port;                    /* default 6379 */
    int db;                      /* default 0 */
    char *username;              /* NULL: none */
    char *password;              /* from the url or the "password" key; NULL: none */
    char *key_prefix;            /* default "aoai-guard:rl:" */
    long long timeout_ms;        /* longest wait for Redis per request; default 50 */
    ag_limit_on_error on_error;  /* default fail_open */
    long long reconnect_min_ms;  /* default 100 */
    long long reconnect_max_ms;  /* default 5000 */
} ag_limit_store_config;

typedef struct ag_limit_policy {
    char name[AG_LIMIT_NAME_MAX + 1];
    char **tenants, **apps, **oids, **roles, **deployments, **operations; /* NULL: any */
    unsigned key_fields;                 /* ag_limit_key_field bits */
    long long requests_per_minute;       /* 0: no request rate */
    long long tokens_per_minute;         /* 0: no token rate */
    long long quota_tokens;              /* 0: no quota */
    ag_limit_period quota_period;
    long long default_completion_tokens; /* reserved when the body sets no max; default 1024 */
} ag_limit_policy;

/* An immutable, compiled policy list (a reload builds a new one; counters live in the store). */
typedef struct ag_limit_policies {
    size_t n;
    ag_limit_policy *v;
} ag_limit_policies;

typedef struct ag_limit_config {
    ag_limit_store_config store;
    ag_limit_policies *policies; /* never NULL after a successful parse (n may be 0) */
} ag_limit_config;

/* Parses the section (NULL: defaults, memory store, no policy) into out, which the caller clears
 * with ag_limit_config_clear. Errors name the key path under path ("rate_limits.policies[2].key[0]:
 * ..."), reject unknown keys, and leave out cleared. */
int ag_limit_config_parse(const cJSON *section, const char *path, ag_limit_config *out, ag_conf_err *err);

/* Frees everything the config owns and zeroes it. */
void ag_limit_config_clear(ag_limit_config *c);

/* Frees a policy list (NULL is ignored). */
void ag_limit_policies_free(ag_limit_policies *p);

/* True when a reload can keep the running store: same type, address, credentials and limits. */
bool ag_limit_store_config_same(const ag_limit_store_config *a, const ag_limit_store_config *b);

/* True when the policy applies to this caller, deployment and operation. */
bool ag_limit_policy_matches(const ag_limit_policy *p, const ag_identity *id, const char *deployment,
                             const char *operation);

#endif
