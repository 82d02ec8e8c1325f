/* Shared fixture for the auth unit tests: an auth config parsed from JSON, a test key set, and a
 * claims builder that mints tokens in-process (entra_testkit). Header-only, static functions. */
#ifndef AG_TEST_AUTH_FIXTURE_H
#define AG_TEST_AUTH_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aoai_guard/auth_config.h"
#include "aoai_guard/jwks.h"
#include "entra_testkit.h"

#define T1 "11111111-1111-4111-8111-111111111111"
#define T2 "22222222-2222-4222-8222-222222222222"
#define T3 "33333333-3333-4333-8333-333333333333"
#define OID1 "0a0a0a0a-0000-4000-8000-000000000001"
#define APP1 "a1a1a1a1-0000-4000-8000-000000000001"
#define APP2 "a2a2a2a2-0000-4000-8000-000000000002"
#define AUD "api://aoai-guard"
#define NOW 1800000000LL

/* Parses an "auth" section or aborts the test. */
static inline void fx_config(const char *json, ag_auth_config *cfg)
{
    cJSON *j = cJSON_Parse(json);
    ag_conf_err err;
    if (!j || ag_auth_config_parse(j, "auth", cfg, &err) != 0) {
        fprintf(stderr, "fixture config does not parse: %s\n", j ? err.msg : "JSON");
        exit(2);
    }
    cJSON_Delete(j);
}

/* Base v2 app claims (valid at NOW for T1 and AUD). Caller owns the object. */
static inline cJSON *fx_claims_v2(void)
{
    cJSON *c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "aud", AUD);
    cJSON_AddStringToObject(c, "iss", "https://login.microsoftonline.com/" T1 "/v2.0");
    cJSON_AddNumberToObject(c, "iat", (double)(NOW - 60));
    cJSON_AddNumberToObject(c, "nbf", (double)(NOW - 60));
    cJSON_AddNumberToObject(c, "exp", (double)(NOW + 3600));
    cJSON_AddStringToObject(c, "azp", APP1);
    cJSON_AddStringToObject(c, "azpacr", "1");
    cJSON_AddStringToObject(c, "idtyp", "app");
    cJSON_AddStringToObject(c, "oid", OID1);
    cJSON *roles = cJSON_AddArrayToObject(c, "roles");
    cJSON_AddItemToArray(roles, cJSON_CreateString("AI.User"));
    cJSON_AddStringToObject(c, "sub", OID1);
    cJSON_AddStringToObject(c, "tid", T1);
    cJSON_AddStringToObject(c, "ver", "2.0");
    return c;
}

/* Base v1 user claims (delegated: scp, upn, appid). */
static inline cJSON *fx_claims_v1(void)
{
    cJSON *c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "aud", AUD);
    cJSON_AddStringToObject(c, "iss", "https://sts.windows.net/" T1 "/");
    cJSON_AddNumberToObject(c, "iat", (double)(NOW - 60));
    cJSON_AddNumberToObject(c, "nbf", (double)(NOW - 60));
    cJSON_AddNumberToObject(c, "exp", (double)(NOW + 3600));
    cJSON_AddStringToObject(c, "appid", APP2);
    cJSON_AddStringToObject(c, "appidacr", "0");
    cJSON_AddStringToObject(c, "oid", OID1);
    cJSON_AddStringToObject(c, "scp", "user_impersonation Chat.Use");
    cJSON_AddStringToObject(c, "tid", T1);
    cJSON_AddStringToObject(c, "unique_name", "alice@contoso.example");
    cJSON_AddStringToObject(c, "upn", "alice@contoso.example");
    cJSON_AddStringToObject(c, "ver", "1.0");
    return c;
}

/* Replaces (or adds) member k with the JSON value v; v NULL removes k. Returns c. */
static inline cJSON *fx_set(cJSON *c, const char *k, const char *v)
{
    cJSON_DeleteItemFromObjectCaseSensitive(c, k);
    if (v) {
        cJSON *val = cJSON_Parse(v);
        if (!val) {
            fprintf(stderr, "fixture: bad JSON value for %s: %s\n", k, v);
            exit(2);
        }
        cJSON_AddItemToObject(c, k, val);
    }
    return c;
}

/* Mints a token over the claims (consumed) with key/kid/alg; caller frees. */
static inline char *fx_mint(EVP_PKEY *key, const char *kid, const char *alg, cJSON *claims)
{
    char *payload = cJSON_PrintUnformatted(claims);
    cJSON_Delete(claims);
    char *t = ag_tk_mint(key, kid, alg, payload);
    free(payload);
    if (!t) {
        fprintf(stderr, "fixture: minting failed\n");
        exit(2);
    }
    return t;
}

/* A key set of the given JWKs (consumed), any tenant, every version. */
static inline ag_jwks *fx_keyset(cJSON **jwks, size_t n)
{
    cJSON *d = cJSON_CreateObject();
    cJSON *keys = cJSON_AddArrayToObject(d, "keys");
    for (size_t i = 0; i < n; i++)
        cJSON_AddItemToArray(keys, jwks[i]);
    char *s = cJSON_PrintUnformatted(d);
    cJSON_Delete(d);
    char err[512];
    ag_jwks *set = ag_jwks_parse(s, strlen(s), NULL, err, sizeof err);
    free(s);
    if (!set) {
        fprintf(stderr, "fixture key set: %s\n", err);
        exit(2);
    }
    return set;
}

#endif
