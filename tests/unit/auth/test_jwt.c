/* Token validation (jwt.h) and the front door (auth.h): v1 and v2 tokens accepted, every rejection of
 * AZURE.md 1 / HOSTILE-INPUT A4 with its specific reason code, and the HTTP answer each maps to. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "aoai_guard/auth.h"
#include "aoai_guard/jwt.h"
#include "aoai_guard/token_cache.h"
#include "auth_fixture.h"
#include "check.h"

static ag_auth_config cfg;
static ag_jwks *keys;
static EVP_PKEY *key1, *key2, *other;

/* Validates tok (freed) and checks the code; on mismatch prints both codes and the log line. */
#define EXPECT(tok, code) expect_at(__LINE__, &cfg, keys, (tok), (code), NULL)
#define EXPECT_CFG(c, tok, code) expect_at(__LINE__, (c), keys, (tok), (code), NULL)
static void expect_at(int line, const ag_auth_config *c, const ag_jwks *ks, char *tok, ag_auth_code want,
                      ag_identity *out)
{
    ag_identity id;
    long long until = 0;
    char log[AG_AUTH_LOG_LEN];
    ag_auth_code got = ag_jwt_validate(c, ks, tok, strlen(tok), NOW, &id, &until, log, sizeof log);
    check_count++;
    if (got != want) {
        check_failures++;
        fprintf(stderr, "test_jwt.c:%d: got %s, expected %s (log: %s)\n", line, ag_auth_code_str(got),
                ag_auth_code_str(want), log);
    } else if (got != AG_AUTH_OK && strncmp(log, ag_auth_code_str(want), strlen(ag_auth_code_str(want))) != 0) {
        check_failures++;
        fprintf(stderr, "test_jwt.c:%d: log line does not start with the reason: %s\n", line, log);
    }
    if (out)
        *out = id;
    free(tok);
}

static char *mint(cJSON *claims)
{
    return fx_mint(key1, "k1", "RS256", claims);
}

/* A token with a raw header and raw payload, signed by key1 (RS256). */
static char *raw(const char *header, const char *payload)
{
    char *t = ag_tk_sign(header, strlen(header), payload, strlen(payload), "RS256", key1, NULL, 0);
    if (!t)
        exit(2);
    return t;
}

static char *strdup_cat(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 1;
    char *s = malloc(n);
    snprintf(s, n, "%s%s", a, b);
    return s;
}

static const char *H_OK = "{\"typ\":\"JWT\",\"alg\":\"RS256\",\"kid\":\"k1\"}";

static char *payload_v2(void)
{
    cJSON *c = fx_claims_v2();
    char *s = cJSON_PrintUnformatted(c);
    cJSON_Delete(c);
    return s;
}

static void test_accept(void)
{
    ag_identity id;
    char *t = mint(fx_claims_v2());
    long long until = 0;
    char log[AG_AUTH_LOG_LEN];
    CHECK_INT(ag_jwt_validate(&cfg, keys, t, strlen(t), NOW, &id, &until, log, sizeof log), AG_AUTH_OK);
    CHECK_INT(id.kind, AG_IDENTITY_APP);
    CHECK_STR(id.tid, T1);
    CHECK_STR(id.oid, OID1);
    CHECK_STR(id.app, APP1);
    CHECK_STR(id.roles, "AI.User");
    CHECK_STR(id.scp, "");
    CHECK_STR(id.upn, "");
    CHECK_INT(id.exp, NOW + 3600);
    CHECK_INT(until, NOW + 3600 + 300);
    CHECK_STR(log, "");
    free(t);

    /* v1 delegated token: appid, scp, upn; no idtyp and scp present -> user. */
    t = mint(fx_claims_v1());
    CHECK_INT(ag_jwt_validate(&cfg, keys, t, strlen(t), NOW, &id, &until, log, sizeof log), AG_AUTH_OK);
    CHECK_INT(id.kind, AG_IDENTITY_USER);
    CHECK_STR(id.app, APP2);
    CHECK_STR(id.scp, "user_impersonation Chat.Use");
    CHECK_STR(id.upn, "alice@contoso.example");
    CHECK_STR(id.roles, "");
    free(t);

    /* Other tenant of the allow-list; aud as an array; several roles; preferred_username. */
    cJSON *c = fx_claims_v2();
    fx_set(c, "tid", "\"" T2 "\"");
    fx_set(c, "iss", "\"https://login.microsoftonline.com/" T2 "/v2.0\"");
    fx_set(c, "aud", "[\"api://other\",\"" AUD "\"]");
    fx_set(c, "roles", "[\"AI.User\",\"analytics\"]");
    fx_set(c, "preferred_username", "\"svc@contoso.example\"");
    expect_at(__LINE__, &cfg, keys, mint(c), AG_AUTH_OK, &id);
    CHECK_STR(id.tid, T2);
    CHECK_STR(id.roles, "AI.User analytics");
    CHECK_STR(id.upn, "svc@contoso.example");
    CHECK(ag_identity_list_has(id.roles, "analytics"));

    /* Second configured audience (a GUID, as v2 tokens carry). No typ header is fine. */
    EXPECT(mint(fx_set(fx_claims_v2(), "aud", "\"" APP2 "\"")), AG_AUTH_OK);
    char *p = payload_v2();
    EXPECT(raw("{\"alg\":\"RS256\",\"kid\":\"k1\"}", p), AG_AUTH_OK);
    /* Unknown, non-critical header parameters are ignored (Entra sends x5t, nonce). */
    EXPECT(raw("{\"typ\":\"JWT\",\"alg\":\"RS256\",\"kid\":\"k1\",\"x5t\":\"k1\",\"nonce\":\"abc\"}", p), AG_AUTH_OK);
    free(p);

    /* Identity type: idtyp wins; without it, scp means user and no scp means app. */
    expect_at(__LINE__, &cfg, keys, mint(fx_set(fx_set(fx_claims_v2(), "idtyp", NULL), "scp", "\"a b\"")),
              AG_AUTH_OK, &id);
    CHECK_INT(id.kind, AG_IDENTITY_USER);
    expect_at(__LINE__, &cfg, keys, mint(fx_set(fx_claims_v2(), "idtyp", NULL)), AG_AUTH_OK, &id);
    CHECK_INT(id.kind, AG_IDENTITY_APP);
    expect_at(__LINE__, &cfg, keys, mint(fx_set(fx_set(fx_claims_v2(), "idtyp", NULL), "roles", NULL)),
              AG_AUTH_OK, &id);
    CHECK_INT(id.kind, AG_IDENTITY_APP);
    expect_at(__LINE__, &cfg, keys, mint(fx_set(fx_claims_v2(), "idtyp", "\"user\"")), AG_AUTH_OK, &id);
    CHECK_INT(id.kind, AG_IDENTITY_USER);
    EXPECT(mint(fx_set(fx_claims_v2(), "idtyp", "\"robot\"")), AG_AUTH_BAD_CLAIM);
}

/* A token whose exp is the literal text given (not re-printed by cJSON, which rounds big numbers). */
static char *with_exp(const char *literal)
{
    char *p = payload_v2(), buf[2048];
    char *e = strstr(p, "\"exp\":");
    size_t pre = (size_t)(e - p);
    const char *after = strchr(e, ',');
    snprintf(buf, sizeof buf, "%.*s\"exp\":%s%s", (int)pre, p, literal, after);
    free(p);
    return raw(H_OK, buf);
}

static void test_times(void)
{
    EXPECT(mint(fx_set(fx_claims_v2(), "exp", "1799999699")), AG_AUTH_EXPIRED);   /* now - 301 */
    EXPECT(mint(fx_set(fx_claims_v2(), "exp", "1799999700")), AG_AUTH_OK);        /* now - 300: in skew */
    EXPECT(mint(fx_set(fx_claims_v2(), "nbf", "1800000301")), AG_AUTH_NOT_YET_VALID);
    EXPECT(mint(fx_set(fx_claims_v2(), "nbf", "1800000300")), AG_AUTH_OK);
    EXPECT(mint(fx_set(fx_claims_v2(), "iat", "1800000301")), AG_AUTH_IAT_FUTURE);
    EXPECT(mint(fx_set(fx_claims_v2(), "iat", "1800000300")), AG_AUTH_OK);
    EXPECT(mint(fx_set(fx_set(fx_claims_v2(), "iat", NULL), "nbf", NULL)), AG_AUTH_OK);
    /* Shapes: exp required; strings, huge, fractional and negative numbers refused before any cast. */
    EXPECT(mint(fx_set(fx_claims_v2(), "exp", NULL)), AG_AUTH_BAD_TIME_CLAIM);
    EXPECT(mint(fx_set(fx_claims_v2(), "exp", "\"1800003600\"")), AG_AUTH_BAD_TIME_CLAIM);
    EXPECT(mint(fx_set(fx_claims_v2(), "exp", "1e300")), AG_AUTH_BAD_TIME_CLAIM);
    EXPECT(mint(fx_set(fx_claims_v2(), "exp", "1152921504606846976")), AG_AUTH_BAD_TIME_CLAIM); /* 2^60 */
    /* An integer literal beyond 2^53 is refused by the strict JSON layer itself (other parsers
     * read it differently from cJSON), before the claim is looked at. */
    EXPECT(with_exp("9007199254740993"), AG_AUTH_BAD_PAYLOAD);
    EXPECT(with_exp("9007199254740992"), AG_AUTH_BAD_TIME_CLAIM); /* = 2^53 */
    EXPECT(with_exp("9007199254740991"), AG_AUTH_OK);             /* 2^53 - 1 */
    EXPECT(mint(fx_set(fx_claims_v2(), "exp", "1800003600.5")), AG_AUTH_BAD_TIME_CLAIM);
    EXPECT(mint(fx_set(fx_claims_v2(), "exp", "-1")), AG_AUTH_BAD_TIME_CLAIM);
    EXPECT(mint(fx_set(fx_claims_v2(), "exp", "null")), AG_AUTH_BAD_TIME_CLAIM);
    EXPECT(mint(fx_set(fx_claims_v2(), "exp", "true")), AG_AUTH_BAD_TIME_CLAIM);
    EXPECT(mint(fx_set(fx_claims_v2(), "nbf", "\"0\"")), AG_AUTH_BAD_TIME_CLAIM);
    EXPECT(mint(fx_set(fx_claims_v2(), "iat", "1e300")), AG_AUTH_BAD_TIME_CLAIM);
    /* 2^53 - 1 is in range (and far in the future): accepted. */
    EXPECT(mint(fx_set(fx_claims_v2(), "exp", "9007199254740991")), AG_AUTH_OK);
    /* 1.8000036e9 is an integer value written with an exponent: accepted. */
    EXPECT(mint(fx_set(fx_claims_v2(), "exp", "1.8000036e9")), AG_AUTH_OK);
    /* Skew 0: one second past exp fails. */
    ag_auth_config strict;
    fx_config("{\"tenants\":[\"" T1 "\"],\"audiences\":[\"" AUD "\"],\"clock_skew_s\":0}", &strict);
    EXPECT_CFG(&strict, mint(fx_set(fx_claims_v2(), "exp", "1799999999")), AG_AUTH_EXPIRED);
    EXPECT_CFG(&strict, mint(fx_set(fx_claims_v2(), "exp", "1800000000")), AG_AUTH_OK);
    ag_auth_config_free(&strict);
}

static void test_claims(void)
{
    /* Audience. */
    EXPECT(mint(fx_set(fx_claims_v2(), "aud", "\"api://someone-else\"")), AG_AUTH_BAD_AUDIENCE);
    EXPECT(mint(fx_set(fx_claims_v2(), "aud", "\"API://AOAI-GUARD\"")), AG_AUTH_BAD_AUDIENCE);
    EXPECT(mint(fx_set(fx_claims_v2(), "aud", "\"" AUD "/\"")), AG_AUTH_BAD_AUDIENCE);
    EXPECT(mint(fx_set(fx_claims_v2(), "aud", "\"api://aoai-guar\"")), AG_AUTH_BAD_AUDIENCE);
    EXPECT(mint(fx_set(fx_claims_v2(), "aud", "[]")), AG_AUTH_BAD_CLAIM);
    EXPECT(mint(fx_set(fx_claims_v2(), "aud", "[\"x\",1]")), AG_AUTH_BAD_CLAIM);
    EXPECT(mint(fx_set(fx_claims_v2(), "aud", "42")), AG_AUTH_BAD_CLAIM);
    EXPECT(mint(fx_set(fx_claims_v2(), "aud", NULL)), AG_AUTH_BAD_CLAIM);
    EXPECT(mint(fx_set(fx_claims_v2(), "aud",
                       "[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\",\"11\",\"12\",\"13\",\"14\","
                       "\"15\",\"16\",\"" AUD "\"]")),
           AG_AUTH_BAD_CLAIM);
    ag_auth_config slash;
    fx_config("{\"tenants\":[\"" T1 "\"],\"audiences\":[\"" AUD "\"],\"accept_audience_trailing_slash\":true}",
              &slash);
    EXPECT_CFG(&slash, mint(fx_set(fx_claims_v2(), "aud", "\"" AUD "/\"")), AG_AUTH_OK);
    EXPECT_CFG(&slash, mint(fx_set(fx_claims_v2(), "aud", "\"" AUD "//\"")), AG_AUTH_BAD_AUDIENCE);
    ag_auth_config_free(&slash);

    /* Issuer and tenant (AZURE.md 1.5). */
    EXPECT(mint(fx_set(fx_claims_v2(), "iss", "\"https://evil.example/" T1 "/v2.0\"")), AG_AUTH_BAD_ISSUER);
    EXPECT(mint(fx_set(fx_claims_v2(), "iss", "\"https://login.microsoftonline.com/" T1 "/v2.0/\"")),
           AG_AUTH_BAD_ISSUER);
    EXPECT(mint(fx_set(fx_claims_v2(), "iss", "\"https://login.microsoftonline.com/" T1 "\"")), AG_AUTH_BAD_ISSUER);
    EXPECT(mint(fx_set(fx_claims_v2(), "iss", "\"https://login.microsoftonline.com/{tenantid}/v2.0\"")),
           AG_AUTH_BAD_ISSUER);
    EXPECT(mint(fx_set(fx_claims_v2(), "iss", NULL)), AG_AUTH_BAD_ISSUER);
    EXPECT(mint(fx_set(fx_claims_v2(), "iss", "\"https://login.microsoftonline.com/" T2 "/v2.0\"")),
           AG_AUTH_ISSUER_TENANT_MISMATCH);
    EXPECT(mint(fx_set(fx_claims_v1(), "iss", "\"https://sts.windows.net/" T2 "/\"")), AG_AUTH_ISSUER_TENANT_MISMATCH);
    EXPECT(mint(fx_set(fx_set(fx_claims_v2(), "tid", "\"" T3 "\""), "iss",
                       "\"https://login.microsoftonline.com/" T3 "/v2.0\"")),
           AG_AUTH_TENANT_NOT_ALLOWED);
    EXPECT(mint(fx_set(fx_claims_v2(), "tid", NULL)), AG_AUTH_BAD_TENANT);
    EXPECT(mint(fx_set(fx_claims_v2(), "tid", "\"contoso.onmicrosoft.com\"")), AG_AUTH_BAD_TENANT);
    EXPECT(mint(fx_set(fx_claims_v2(), "tid", "\"11111111-1111-4111-8111-11111111111A\"")), AG_AUTH_BAD_TENANT);
    EXPECT(mint(fx_set(fx_claims_v2(), "tid", "[\"" T1 "\"]")), AG_AUTH_BAD_TENANT);
    /* Version. */
    EXPECT(mint(fx_set(fx_claims_v2(), "ver", "\"1.0\"")), AG_AUTH_BAD_CLAIM);
    EXPECT(mint(fx_set(fx_claims_v1(), "ver", "\"2.0\"")), AG_AUTH_BAD_CLAIM);
    EXPECT(mint(fx_set(fx_claims_v2(), "ver", NULL)), AG_AUTH_OK);
    ag_auth_config v2only;
    fx_config("{\"tenants\":[\"" T1 "\"],\"audiences\":[\"" AUD "\"],\"accepted_token_versions\":[\"2.0\"]}",
              &v2only);
    EXPECT_CFG(&v2only, mint(fx_claims_v1()), AG_AUTH_VERSION_NOT_ACCEPTED);
    EXPECT_CFG(&v2only, mint(fx_claims_v2()), AG_AUTH_OK);
    ag_auth_config_free(&v2only);

    /* Identity fields: wrong shapes, overlong values and control characters reject, never truncate. */
    char longname[400];
    memset(longname, 'x', sizeof longname);
    longname[0] = '"';
    longname[257] = '"';
    longname[258] = '\0'; /* 256 x's: one more than the field holds */
    EXPECT(mint(fx_set(fx_claims_v1(), "upn", longname)), AG_AUTH_BAD_CLAIM);
    longname[256] = '"';
    longname[257] = '\0'; /* 255 x's: fits */
    EXPECT(mint(fx_set(fx_claims_v1(), "upn", longname)), AG_AUTH_OK);
    EXPECT(mint(fx_set(fx_claims_v1(), "upn", "\"alice\\u0001@contoso\"")), AG_AUTH_BAD_CLAIM);
    EXPECT(mint(fx_set(fx_claims_v1(), "upn", "\"alice\\u0085@contoso\"")), AG_AUTH_BAD_CLAIM);
    EXPECT(mint(fx_set(fx_claims_v1(), "upn", "\"alice\\n@contoso\"")), AG_AUTH_BAD_CLAIM);
    EXPECT(mint(fx_set(fx_claims_v1(), "upn", "\"ålice@contoso\"")), AG_AUTH_OK);
    EXPECT(mint(fx_set(fx_claims_v1(), "upn", "7")), AG_AUTH_BAD_CLAIM);
    EXPECT(mint(fx_set(fx_claims_v1(), "scp", "[\"a\"]")), AG_AUTH_BAD_CLAIM);
    EXPECT(mint(fx_set(fx_claims_v1(), "scp", "\"a\\tb\"")), AG_AUTH_BAD_CLAIM);
    EXPECT(mint(fx_set(fx_claims_v2(), "oid", "\"not-a-guid\"")), AG_AUTH_BAD_CLAIM);
    EXPECT(mint(fx_set(fx_claims_v2(), "azp", "\"" APP1 " \"")), AG_AUTH_BAD_CLAIM);
    EXPECT(mint(fx_set(fx_claims_v1(), "appid", "12")), AG_AUTH_BAD_CLAIM);
    EXPECT(mint(fx_set(fx_claims_v2(), "roles", "\"AI.User\"")), AG_AUTH_BAD_CLAIM);
    EXPECT(mint(fx_set(fx_claims_v2(), "roles", "[\"AI User\"]")), AG_AUTH_BAD_CLAIM);
    EXPECT(mint(fx_set(fx_claims_v2(), "roles", "[\"\"]")), AG_AUTH_BAD_CLAIM);
    EXPECT(mint(fx_set(fx_claims_v2(), "roles", "[1]")), AG_AUTH_BAD_CLAIM);
    /* Roles joined must fit the 1023-byte field: 93 roles of 10 bytes + 92 spaces = 1022 fit, 94 do not. */
    char roles[4000] = "[";
    for (int i = 0; i < 93; i++)
        snprintf(roles + strlen(roles), sizeof roles - strlen(roles), "%s\"role%06d\"", i ? "," : "", i);
    size_t open_end = strlen(roles);
    strcat(roles, "]");
    EXPECT(mint(fx_set(fx_claims_v2(), "roles", roles)), AG_AUTH_OK);
    snprintf(roles + open_end, sizeof roles - open_end, ",\"role999999\"]");
    EXPECT(mint(fx_set(fx_claims_v2(), "roles", roles)), AG_AUTH_BAD_CLAIM);
    /* At most 200 roles, however short. */
    strcpy(roles, "[");
    for (int i = 0; i < 201; i++)
        strcat(roles, i ? ",\"r\"" : "\"r\"");
    strcat(roles, "]");
    EXPECT(mint(fx_set(fx_claims_v2(), "roles", roles)), AG_AUTH_BAD_CLAIM);
    /* Claim names are case-sensitive: "TID" is not "tid". */
    EXPECT(mint(fx_set(fx_set(fx_claims_v2(), "tid", NULL), "TID", "\"" T1 "\"")), AG_AUTH_BAD_TENANT);
}

static void test_header_and_shape(void)
{
    char *p = payload_v2();
    /* alg none in every casing, with a signature so the header is read; and the stripped form. */
    EXPECT(raw("{\"typ\":\"JWT\",\"alg\":\"none\",\"kid\":\"k1\"}", p), AG_AUTH_ALG_NONE);
    EXPECT(raw("{\"typ\":\"JWT\",\"alg\":\"None\",\"kid\":\"k1\"}", p), AG_AUTH_ALG_NONE);
    EXPECT(raw("{\"typ\":\"JWT\",\"alg\":\"NONE\",\"kid\":\"k1\"}", p), AG_AUTH_ALG_NONE);
    {
        const char *h = "{\"typ\":\"JWT\",\"alg\":\"none\",\"kid\":\"k1\"}";
        char *t = ag_tk_sign(h, strlen(h), p, strlen(p), "none", NULL, NULL, 0);
        CHECK(t && t[strlen(t) - 1] == '.');
        EXPECT(t, AG_AUTH_MALFORMED); /* "h.p." : empty signature segment */
    }
    /* HS256 keyed with the RSA public key (CVE-2015-9235 class). */
    {
        const char *h = "{\"typ\":\"JWT\",\"alg\":\"HS256\",\"kid\":\"k1\"}";
        char path[] = "/tmp/ag_test_jwt_pubXXXXXX";
        int fd = mkstemp(path);
        CHECK(fd >= 0);
        close(fd);
        CHECK_INT(ag_tk_write_pem(key1, path, false), 0);
        FILE *f = fopen(path, "rb");
        unsigned char pem[4096];
        size_t n = f ? fread(pem, 1, sizeof pem, f) : 0;
        if (f)
            fclose(f);
        unlink(path);
        CHECK(n > 100);
        EXPECT(ag_tk_sign(h, strlen(h), p, strlen(p), "HS256", NULL, pem, n), AG_AUTH_ALG_NOT_ALLOWED);
    }
    /* Algorithms not configured; an unknown name. */
    EXPECT(fx_mint(key1, "k1", "RS384", fx_claims_v2()), AG_AUTH_ALG_NOT_ALLOWED);
    EXPECT(fx_mint(key1, "k1", "PS256", fx_claims_v2()), AG_AUTH_ALG_NOT_ALLOWED);
    EXPECT(raw("{\"typ\":\"JWT\",\"alg\":\"rs256\",\"kid\":\"k1\"}", p), AG_AUTH_ALG_NOT_ALLOWED);
    EXPECT(raw("{\"typ\":\"JWT\",\"alg\":\"ES256\",\"kid\":\"k1\"}", p), AG_AUTH_ALG_NOT_ALLOWED);
    EXPECT(raw("{\"typ\":\"JWT\",\"kid\":\"k1\"}", p), AG_AUTH_BAD_HEADER);
    EXPECT(raw("{\"typ\":\"JWT\",\"alg\":[\"RS256\"],\"kid\":\"k1\"}", p), AG_AUTH_BAD_HEADER);
    /* crit: unknown, registered or empty - all refused. */
    EXPECT(raw("{\"typ\":\"JWT\",\"alg\":\"RS256\",\"kid\":\"k1\",\"crit\":[\"exp\"],\"exp\":1}", p), AG_AUTH_CRIT);
    EXPECT(raw("{\"typ\":\"JWT\",\"alg\":\"RS256\",\"kid\":\"k1\",\"crit\":[]}", p), AG_AUTH_CRIT);
    EXPECT(raw("{\"typ\":\"JWT\",\"alg\":\"RS256\",\"kid\":\"k1\",\"crit\":[\"b64\"],\"b64\":false}", p), AG_AUTH_CRIT);
    /* Key references in the header: never followed. */
    EXPECT(raw("{\"typ\":\"JWT\",\"alg\":\"RS256\",\"kid\":\"k1\",\"jku\":\"https://evil/keys\"}", p),
           AG_AUTH_HEADER_KEY_REF);
    EXPECT(raw("{\"typ\":\"JWT\",\"alg\":\"RS256\",\"kid\":\"k1\",\"x5u\":\"https://evil/cert\"}", p),
           AG_AUTH_HEADER_KEY_REF);
    EXPECT(raw("{\"typ\":\"JWT\",\"alg\":\"RS256\",\"kid\":\"k1\",\"jwk\":{\"kty\":\"RSA\"}}", p), AG_AUTH_HEADER_KEY_REF);
    EXPECT(raw("{\"typ\":\"JWT\",\"alg\":\"RS256\",\"kid\":\"k1\",\"x5c\":[\"MIIB\"]}", p), AG_AUTH_HEADER_KEY_REF);
    EXPECT(raw("{\"typ\":\"JWT\",\"alg\":\"RS256\",\"kid\":\"k1\",\"b64\":false}", p), AG_AUTH_BAD_HEADER);
    EXPECT(raw("{\"typ\":\"JWT\",\"alg\":\"RS256\",\"kid\":\"k1\",\"cty\":\"JWT\"}", p), AG_AUTH_BAD_HEADER);
    /* typ and kid. */
    EXPECT(raw("{\"typ\":\"at+jwt\",\"alg\":\"RS256\",\"kid\":\"k1\"}", p), AG_AUTH_BAD_HEADER);
    EXPECT(raw("{\"typ\":\"JWE\",\"alg\":\"RS256\",\"kid\":\"k1\"}", p), AG_AUTH_BAD_HEADER);
    EXPECT(raw("{\"typ\":\"JWT\",\"alg\":\"RS256\"}", p), AG_AUTH_BAD_HEADER);
    EXPECT(raw("{\"typ\":\"JWT\",\"alg\":\"RS256\",\"kid\":17}", p), AG_AUTH_BAD_HEADER);
    EXPECT(raw("{\"typ\":\"JWT\",\"alg\":\"RS256\",\"kid\":\"\"}", p), AG_AUTH_BAD_HEADER);
    EXPECT(raw("{\"typ\":\"JWT\",\"alg\":\"RS256\",\"kid\":\"k 1\"}", p), AG_AUTH_BAD_HEADER);
    EXPECT(raw("{\"typ\":\"JWT\",\"alg\":\"RS256\",\"kid\":\"../../dev/null\"}", p), AG_AUTH_UNKNOWN_KID);
    EXPECT(raw("{\"typ\":\"JWT\",\"alg\":\"RS256\",\"kid\":\"k2-unknown\"}", p), AG_AUTH_UNKNOWN_KID);
    /* Header JSON pitfalls. */
    EXPECT(raw("{\"typ\":\"JWT\",\"alg\":\"RS256\",\"alg\":\"none\",\"kid\":\"k1\"}", p), AG_AUTH_BAD_HEADER);
    EXPECT(raw("[\"RS256\"]", p), AG_AUTH_BAD_HEADER);
    EXPECT(raw("{\"typ\":\"JWT\",\"alg\":\"RS256\",\"kid\":\"k1\"} x", p), AG_AUTH_BAD_HEADER);
    EXPECT(raw("{\"typ\":\"JWT\",\"alg\":\"RS256\",\"kid\":\"k1\\u0000\"}", p), AG_AUTH_BAD_HEADER);

    /* Payload JSON pitfalls: duplicate claims (first or last would differ between parsers), NUL. */
    {
        cJSON *c = fx_claims_v2();
        char *s = cJSON_PrintUnformatted(c);
        cJSON_Delete(c);
        char dup[2048];
        snprintf(dup, sizeof dup, "{\"tid\":\"" T3 "\",%s", s + 1);
        EXPECT(raw(H_OK, dup), AG_AUTH_BAD_PAYLOAD);
        snprintf(dup, sizeof dup, "{\"exp\":9999999999,%s", s + 1);
        EXPECT(raw(H_OK, dup), AG_AUTH_BAD_PAYLOAD);
        snprintf(dup, sizeof dup, "{\"upn\":\"a\\u0000b\",%s", s + 1);
        EXPECT(raw(H_OK, dup), AG_AUTH_BAD_PAYLOAD);
        snprintf(dup, sizeof dup, "{\"upn\":\"a\xff\",%s", s + 1);
        EXPECT(raw(H_OK, dup), AG_AUTH_BAD_PAYLOAD);
        snprintf(dup, sizeof dup, "%s trailing", s);
        EXPECT(raw(H_OK, dup), AG_AUTH_BAD_PAYLOAD);
        EXPECT(raw(H_OK, "[1,2]"), AG_AUTH_BAD_PAYLOAD);
        EXPECT(raw(H_OK, "{\"a\":[[[[[[[[1]]]]]]]]}"), AG_AUTH_BAD_PAYLOAD);
        free(s);
    }

    /* Segments. */
    char *good = mint(fx_claims_v2());
    char *dot1 = strchr(good, '.'), *dot2 = strchr(dot1 + 1, '.');
    {
        char *two = strdup(good);
        two[dot2 - good] = '\0';
        EXPECT(two, AG_AUTH_MALFORMED);
        EXPECT(strdup_cat(good, ".e30"), AG_AUTH_MALFORMED);           /* 4 segments */
        EXPECT(strdup_cat(good, ".e30.e30"), AG_AUTH_MALFORMED);       /* 5 segments (JWE shape) */
        EXPECT(strdup(""), AG_AUTH_MALFORMED);
        EXPECT(strdup(".."), AG_AUTH_MALFORMED);
        char *nohead = strdup(dot1);                                    /* ".p.s" */
        EXPECT(nohead, AG_AUTH_MALFORMED);
    }
    /* base64url strictness. */
    {
        EXPECT(strdup_cat(good, "="), AG_AUTH_BAD_BASE64);
        EXPECT(strdup_cat(good, "=="), AG_AUTH_BAD_BASE64);
        char *t = strdup(good);
        t[dot1 - good - 1] = '+';
        EXPECT(t, AG_AUTH_BAD_BASE64);
        t = strdup(good);
        t[5] = '/';
        EXPECT(t, AG_AUTH_BAD_BASE64);
        t = strdup(good);
        t[5] = ' ';
        EXPECT(t, AG_AUTH_MALFORMED);
        t = strdup(good);
        t[5] = '\n';
        EXPECT(t, AG_AUTH_MALFORMED);
        /* Non-canonical trailing bits: a 256-byte signature is 342 characters, the last carries
         * 2 bits; bump it by one so an unused bit is set (the bytes would still decode the same). */
        t = strdup(good);
        size_t n = strlen(t);
        CHECK_INT(n - (size_t)(dot2 - good) - 1, 342);
        char last = t[n - 1];
        static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        t[n - 1] = alpha[(strchr(alpha, last) - alpha) + 1];
        EXPECT(t, AG_AUTH_BAD_BASE64);
    }
    /* Signature: one flipped character, a foreign key under our kid, a truncated signature. */
    {
        char *t = strdup(good);
        size_t mid = (size_t)(dot2 - good) + 100;
        t[mid] = t[mid] == 'A' ? 'B' : 'A';
        EXPECT(t, AG_AUTH_BAD_SIGNATURE);
        EXPECT(fx_mint(other, "k1", "RS256", fx_claims_v2()), AG_AUTH_BAD_SIGNATURE);
        t = strdup(good);
        t[strlen(t) - 6] = '\0'; /* 336 chars: 252 bytes, wrong length for the key */
        EXPECT(t, AG_AUTH_BAD_SIGNATURE);
        /* The payload of one valid token with the signature of another. */
        char *second = mint(fx_set(fx_claims_v2(), "oid", "\"" APP2 "\""));
        char *s2 = strrchr(second, '.');
        t = malloc((size_t)(dot2 - good) + strlen(s2) + 1);
        memcpy(t, good, (size_t)(dot2 - good));
        strcpy(t + (dot2 - good), s2);
        EXPECT(t, AG_AUTH_BAD_SIGNATURE);
        free(second);
    }
    /* Size limit before any decoding. */
    {
        char big[9000];
        memset(big, 'a', sizeof big);
        big[0] = '"';
        big[8800] = '"';
        big[8801] = '\0';
        EXPECT(mint(fx_set(fx_claims_v2(), "pad", big)), AG_AUTH_TOKEN_TOO_LARGE);
        big[5000] = '"';
        big[5001] = '\0';
        EXPECT(mint(fx_set(fx_claims_v2(), "pad", big)), AG_AUTH_OK); /* 5 KB of claims still fits 8 KiB */
    }
    free(good);
    free(p);
}

static void test_keys(void)
{
    /* No key set yet: 503, not 401. */
    char *t = mint(fx_claims_v2());
    ag_identity id;
    long long until;
    CHECK_INT(ag_jwt_validate(&cfg, NULL, t, strlen(t), NOW, &id, &until, NULL, 0), AG_AUTH_NO_KEYS);
    free(t);
    /* Second key: its issuer names another tenant, so it may not sign v2 tokens for T1 (key issuer
     * template check), but the template check does not apply to v1 tokens. */
    EXPECT(fx_mint(key2, "k2", "RS256", fx_claims_v2()), AG_AUTH_KEY_ISSUER_MISMATCH);
    EXPECT(fx_mint(key2, "k2", "RS256", fx_claims_v1()), AG_AUTH_OK);
    /* A key bound to RS384 by its JWK alg cannot verify RS256, even with RS384 configured. */
    ag_auth_config both;
    fx_config("{\"tenants\":[\"" T1 "\"],\"audiences\":[\"" AUD "\"],\"algorithms\":[\"RS256\",\"RS384\",\"PS256\"]}",
              &both);
    EXPECT_CFG(&both, fx_mint(key1, "k384", "RS256", fx_claims_v2()), AG_AUTH_ALG_NOT_ALLOWED);
    EXPECT_CFG(&both, fx_mint(key1, "k384", "RS384", fx_claims_v2()), AG_AUTH_OK);
    EXPECT_CFG(&both, fx_mint(key1, "k1", "PS256", fx_claims_v2()), AG_AUTH_OK);
    EXPECT_CFG(&both, fx_mint(key1, "k1", "RS384", fx_claims_v2()), AG_AUTH_OK);
    ag_auth_config_free(&both);
    /* Keys scoped to one tenant and version. */
    cJSON *d = cJSON_CreateObject();
    cJSON_AddItemToArray(cJSON_AddArrayToObject(d, "keys"), ag_tk_jwk(key1, NULL, "k1", NULL));
    char *s = cJSON_PrintUnformatted(d);
    cJSON_Delete(d);
    ag_jwks_scope scope = {.versions = AG_TOKEN_V2, .tenant = T1};
    char err[256];
    ag_jwks *scoped = ag_jwks_parse(s, strlen(s), &scope, err, sizeof err);
    free(s);
    CHECK(scoped != NULL);
    expect_at(__LINE__, &cfg, scoped, mint(fx_claims_v2()), AG_AUTH_OK, NULL);
    expect_at(__LINE__, &cfg, scoped, mint(fx_claims_v1()), AG_AUTH_UNKNOWN_KID, NULL);
    expect_at(__LINE__, &cfg, scoped,
              mint(fx_set(fx_set(fx_claims_v2(), "tid", "\"" T2 "\""), "iss",
                          "\"https://login.microsoftonline.com/" T2 "/v2.0\"")),
              AG_AUTH_UNKNOWN_KID, NULL);
    ag_jwks_unref(scoped);
}

static void test_front_door(void)
{
    ag_identity id;
    ag_auth_result res;
    char buf[512];
    ag_auth_input in = {0};
    /* No credentials: 401 with a realm and no error (RFC 6750 3.1). */
    CHECK_INT(ag_auth_authenticate(&cfg, NULL, keys, &in, NOW, &id, &res), AG_AUTH_NO_CREDENTIALS);
    CHECK_INT(res.status, 401);
    CHECK_INT(ag_auth_www_authenticate(&cfg, res.code, NULL, buf, sizeof buf), strlen("Bearer realm=\"aoai-guard\""));
    CHECK_STR(buf, "Bearer realm=\"aoai-guard\"");
    ag_auth_www_authenticate(&cfg, res.code, "contoso \"x\"", buf, sizeof buf);
    CHECK_STR(buf, "Bearer realm=\"aoai-guard\""); /* a realm needing escapes is replaced */
    ag_auth_www_authenticate(&cfg, res.code, "contoso", buf, sizeof buf);
    CHECK_STR(buf, "Bearer realm=\"contoso\"");
    ag_auth_error_body(res.code, buf, sizeof buf);
    CHECK_STR(buf, "{\"error\":{\"code\":\"401\",\"message\":\"Access token is missing\"}}");
    CHECK_STR(res.log, "no_credentials: no Authorization header");

    in.authorization = "Basic dXNlcjpwYXNz";
    in.authorization_len = strlen(in.authorization);
    CHECK_INT(ag_auth_authenticate(&cfg, NULL, keys, &in, NOW, &id, &res), AG_AUTH_UNSUPPORTED_SCHEME);
    ag_auth_www_authenticate(&cfg, res.code, NULL, buf, sizeof buf);
    CHECK_STR(buf, "Bearer realm=\"aoai-guard\"");
    in.authorization = "Bearer ";
    in.authorization_len = strlen(in.authorization);
    CHECK_INT(ag_auth_authenticate(&cfg, NULL, keys, &in, NOW, &id, &res), AG_AUTH_MALFORMED);
    in.authorization = "Bearertoken";
    in.authorization_len = strlen(in.authorization);
    CHECK_INT(ag_auth_authenticate(&cfg, NULL, keys, &in, NOW, &id, &res), AG_AUTH_UNSUPPORTED_SCHEME);

    /* A valid token: case-insensitive scheme, trailing whitespace tolerated. */
    char *t = mint(fx_claims_v2());
    char hdr[4096];
    snprintf(hdr, sizeof hdr, "bearer %s ", t);
    in.authorization = hdr;
    in.authorization_len = strlen(hdr);
    CHECK_INT(ag_auth_authenticate(&cfg, NULL, keys, &in, NOW, &id, &res), AG_AUTH_OK);
    CHECK_INT(res.status, 200);
    CHECK(!res.cached && !res.refresh_keys);
    CHECK_STR(id.oid, OID1);
    CHECK_STR(res.log, "");
    CHECK_INT(ag_auth_www_authenticate(&cfg, res.code, NULL, buf, sizeof buf), 0);
    CHECK_STR(buf, "");
    /* Keys not loaded: 503, no challenge. */
    CHECK_INT(ag_auth_authenticate(&cfg, NULL, NULL, &in, NOW, &id, &res), AG_AUTH_NO_KEYS);
    CHECK_INT(res.status, 503);
    CHECK_INT(ag_auth_www_authenticate(&cfg, res.code, NULL, buf, sizeof buf), 0);
    ag_auth_error_body(res.code, buf, sizeof buf);
    CHECK_STR(buf, "{\"error\":{\"code\":\"ServiceUnavailable\",\"message\":\"Token validation is temporarily "
                   "unavailable, retry later\"}}");
    /* Expired: the log is specific, the answer generic. */
    free(t);
    t = mint(fx_set(fx_claims_v2(), "exp", "1799990000"));
    snprintf(hdr, sizeof hdr, "Bearer %s", t);
    in.authorization_len = strlen(hdr);
    CHECK_INT(ag_auth_authenticate(&cfg, NULL, keys, &in, NOW, &id, &res), AG_AUTH_EXPIRED);
    CHECK_STR(res.log, "expired: exp 1799990000, now 1800000000, skew 300s");
    CHECK_STR(id.tid, ""); /* identity zeroed on failure */
    ag_auth_www_authenticate(&cfg, res.code, NULL, buf, sizeof buf);
    CHECK_STR(buf, "Bearer error=\"invalid_token\", error_description=\"The access token is expired or not yet valid\"");
    ag_auth_error_body(res.code, buf, sizeof buf);
    CHECK_STR(buf, "{\"error\":{\"code\":\"401\",\"message\":\"The access token is expired or not yet valid\"}}");
    /* Unknown kid: distinct code and the refresh hint. */
    free(t);
    t = fx_mint(key1, "rotated-kid", "RS256", fx_claims_v2());
    snprintf(hdr, sizeof hdr, "Bearer %s", t);
    in.authorization_len = strlen(hdr);
    CHECK_INT(ag_auth_authenticate(&cfg, NULL, keys, &in, NOW, &id, &res), AG_AUTH_UNKNOWN_KID);
    CHECK(res.refresh_keys);
    CHECK(strstr(res.log, "kid \"rotated-kid\" not in key set") != NULL);
    free(t);
    /* Oversize header is refused before hashing or decoding. */
    char *huge = malloc(20000);
    memcpy(huge, "Bearer ", 7);
    memset(huge + 7, 'a', 20000 - 8);
    huge[19999] = '\0';
    in.authorization = huge;
    in.authorization_len = strlen(huge);
    CHECK_INT(ag_auth_authenticate(&cfg, NULL, keys, &in, NOW, &id, &res), AG_AUTH_TOKEN_TOO_LARGE);
    free(huge);
    /* Every code has a name, a status and a public text without quote or backslash. */
    int bad = 0;
    for (int c = 0; c < AG_AUTH_CODE_COUNT; c++) {
        const char *pub = ag_auth_code_public((ag_auth_code)c);
        if (!ag_auth_code_str((ag_auth_code)c) || strcmp(ag_auth_code_str((ag_auth_code)c), "unknown") == 0 ||
            !pub || strpbrk(pub, "\"\\") || ag_auth_code_status((ag_auth_code)c) < 200)
            bad++;
    }
    CHECK_INT(bad, 0);
    CHECK_INT(ag_auth_code_status(AG_AUTH_FORBIDDEN), 403);
    ag_auth_www_authenticate(&cfg, AG_AUTH_FORBIDDEN, NULL, buf, sizeof buf);
    CHECK_STR(buf, "Bearer error=\"insufficient_scope\", error_description=\"The caller is not permitted to use "
                   "this deployment\"");
    ag_auth_error_body(AG_AUTH_FORBIDDEN, buf, sizeof buf);
    CHECK_STR(buf, "{\"error\":{\"code\":\"PermissionDenied\",\"message\":\"The caller is not permitted to use "
                   "this deployment\"}}");
    CHECK_INT(ag_auth_error_body(AG_AUTH_FORBIDDEN, buf, 10), 0);
}

int main(void)
{
    key1 = ag_tk_rsa_new(2048);
    key2 = ag_tk_rsa_new(2048);
    other = ag_tk_rsa_new(2048);
    X509 *cert1 = ag_tk_self_signed(key1, "k1");
    CHECK(key1 && key2 && other && cert1);
    fx_config("{\"mode\":\"entra\",\"tenants\":[\"" T1 "\",\"" T2 "\"],\"audiences\":[\"" AUD "\",\"" APP2 "\"]}",
              &cfg);
    cJSON *k384 = ag_tk_jwk(key1, NULL, "k384", NULL);
    cJSON_AddStringToObject(k384, "alg", "RS384");
    cJSON *jwks[] = {ag_tk_jwk(key1, cert1, "k1", "https://login.microsoftonline.com/{tenantid}/v2.0"),
                     ag_tk_jwk(key2, NULL, "k2", "https://login.microsoftonline.com/" T3 "/v2.0"), k384};
    keys = fx_keyset(jwks, 3);
    ag_jwks_set_generation(keys, 1);

    test_accept();
    test_times();
    test_claims();
    test_header_and_shape();
    test_keys();
    test_front_door();

    ag_jwks_unref(keys);
    ag_auth_config_free(&cfg);
    EVP_PKEY_free(key1);
    EVP_PKEY_free(key2);
    EVP_PKEY_free(other);
    X509_free(cert1);
    return CHECK_DONE();
}
