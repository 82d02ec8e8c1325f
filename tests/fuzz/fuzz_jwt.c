/* Fuzz target: Entra ID access-token validation (src/auth/jwt.c) behind the Authorization header
 * handling of src/auth/auth.c, and authorization (src/auth/authz.c) of what validates.
 *
 * The signature step is stubbed HERE ONLY: src/auth/jwt.c is compiled into this file with
 * EVP_DigestVerify renamed by macro to a stub that accepts a signature whose first byte is even.
 * Every other step is the real code (size, shape, strict base64url, the header checks, strict
 * JSON with the claim checks, the key lookup by kid/version/tenant, the key's algorithm binding and
 * issuer template, the identity fields, the token cache), so the fuzzer reaches the accept path and
 * what follows it without having to forge RSA signatures.
 *
 * Input: byte 0 is the mode.
 *   mode & 1 == 0: the rest is an Authorization header value ("Bearer <token>"), as a client sends.
 *   mode & 1 == 1: the rest is "<header JSON>\n<payload JSON>\n<signature byte>": the target
 *                  base64url-encodes the two JSON documents and appends a 256-byte signature of
 *                  that byte, so mutations land in the JSON rather than in base64.
 *   mode & 2: the token cache is used (a second call must answer the same from the cache).
 * Oracles besides the sanitizers: an accepted token has a tenant from the allow-list, and a cached
 * verdict equals the uncached one. */
#include <openssl/evp.h>

static int fuzz_digest_verify(EVP_MD_CTX *ctx, const unsigned char *sig, size_t siglen,
                              const unsigned char *tbs, size_t tbslen)
{
    (void)ctx;
    (void)tbs;
    (void)tbslen;
    return siglen > 0 && (sig[0] & 1) == 0 ? 1 : 0;
}
#define EVP_DigestVerify fuzz_digest_verify
#include "auth/jwt.c"
#undef EVP_DigestVerify

#include <stdint.h>
#include <stdlib.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>

#include "aoai_guard/auth.h"
#include "aoai_guard/authz.h"
#include "aoai_guard/token_cache.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define TENANT "11111111-1111-4111-8111-111111111111"
#define NOW 1800000000LL

static struct {
    ag_auth_config cfg;
    ag_jwks *keys;
    ag_token_cache *cache;
} F;

/* A JWKS with one RSA-2048 key under kid "k1" (RS256, v2, issuer template) and one under "k2"
 * (any RSA algorithm, v1 + v2, tenant-scoped), so both lookup branches are reachable. */
static ag_jwks *make_keys(void)
{
    EVP_PKEY *pk = EVP_RSA_gen(2048);
    BIGNUM *n = NULL, *e = NULL;
    if (!pk || !EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_RSA_N, &n) ||
        !EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_RSA_E, &e))
        abort();
    unsigned char nb[512], eb[8];
    int nl = BN_bn2bin(n, nb), el = BN_bn2bin(e, eb);
    char ns[700], es[16];
    size_t l;
    if (ag_b64url_encode(nb, (size_t)nl, ns, sizeof ns, &l) || ag_b64url_encode(eb, (size_t)el, es, sizeof es, &l))
        abort();
    char doc[2048];
    snprintf(doc, sizeof doc,
             "{\"keys\":[{\"kty\":\"RSA\",\"use\":\"sig\",\"kid\":\"k1\",\"alg\":\"RS256\",\"n\":\"%s\",\"e\":\"%s\","
             "\"issuer\":\"https://login.microsoftonline.com/{tenantid}/v2.0\"},"
             "{\"kty\":\"RSA\",\"use\":\"sig\",\"kid\":\"k2\",\"n\":\"%s\",\"e\":\"%s\"}]}",
             ns, es, ns, es);
    char err[256];
    ag_jwks *a = ag_jwks_parse(doc, strlen(doc), NULL, err, sizeof err);
    ag_jwks_scope scope = {AG_TOKEN_V1 | AG_TOKEN_V2, TENANT};
    ag_jwks *b = ag_jwks_parse(doc, strlen(doc), &scope, err, sizeof err);
    if (!a || !b) {
        fprintf(stderr, "fuzz_jwt: JWKS: %s\n", err);
        abort();
    }
    ag_jwks *sets[2] = {a, b};
    ag_jwks *m = ag_jwks_merge(sets, 2);
    if (!m)
        abort();
    ag_jwks_set_generation(m, 7);
    ag_jwks_unref(a);
    ag_jwks_unref(b);
    BN_free(n);
    BN_free(e);
    EVP_PKEY_free(pk);
    return m;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const char auth[] =
        "{\"mode\":\"entra\",\"tenants\":[\"" TENANT "\",\"22222222-2222-4222-8222-222222222222\"],"
        "\"audiences\":[\"api://aoai-guard\",\"https://cognitiveservices.azure.com\"],"
        "\"accept_audience_trailing_slash\":true,\"accepted_token_versions\":[\"1.0\",\"2.0\"],"
        "\"algorithms\":[\"RS256\",\"PS256\"],\"clock_skew_s\":300,"
        "\"rules\":[{\"roles\":[\"AI.User\"],\"deployments\":[\"gpt-4o-mini\"]},"
        "{\"scopes\":[\"user_impersonation\"],\"deployments\":[\"*\"]}]}";
    cJSON *j = cJSON_Parse(auth);
    ag_conf_err err;
    if (!j || ag_auth_config_parse(j, "auth", &F.cfg, &err) != 0) {
        fprintf(stderr, "fuzz_jwt: auth config: %s\n", j ? err.msg : "JSON");
        abort();
    }
    cJSON_Delete(j);
    F.keys = make_keys();
    F.cache = ag_token_cache_new(64);
    if (!F.cache)
        abort();
    return 0;
}

static char *b64(const uint8_t *in, size_t n, char *out, size_t cap)
{
    size_t l;
    if (ag_b64url_encode(in, n, out, cap, &l) != 0)
        return NULL;
    return out + l;
}

static void check(const char *authz, size_t len, bool use_cache)
{
    ag_auth_input in = {.authorization = authz, .authorization_len = len};
    ag_identity id;
    ag_auth_result res;
    ag_auth_code code = ag_auth_authenticate(&F.cfg, use_cache ? F.cache : NULL, F.keys, &in, NOW, &id, &res);
    if (code == AG_AUTH_OK) {
        bool allowed = false;
        for (size_t i = 0; i < F.cfg.ntenants; i++)
            allowed = allowed || strcmp(F.cfg.tenants[i], id.tid) == 0;
        if (!allowed)
            __builtin_trap(); /* accepted a token of a tenant not on the allow-list */
        ag_auth_result zres;
        (void)ag_authz_check(&F.cfg, &id, "gpt-4o-mini", &zres);
        (void)ag_authz_check(&F.cfg, &id, "other", &zres);
    }
    if (use_cache) {
        ag_identity id2;
        ag_auth_result res2;
        ag_auth_code again = ag_auth_authenticate(&F.cfg, F.cache, F.keys, &in, NOW, &id2, &res2);
        if (again != code || (code == AG_AUTH_OK && memcmp(&id, &id2, sizeof id) != 0))
            __builtin_trap(); /* the cache changed the verdict */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!F.keys)
        LLVMFuzzerInitialize(NULL, NULL);
    if (size < 1 || size > 32768)
        return 0;
    uint8_t mode = data[0];
    data++;
    size--;
    bool use_cache = mode & 2;
    if (!(mode & 1)) {
        check((const char *)data, size, use_cache);
        return 0;
    }
    /* Structured: header JSON \n payload JSON \n signature byte. */
    const uint8_t *nl1 = memchr(data, '\n', size);
    if (!nl1)
        return 0;
    size_t hl = (size_t)(nl1 - data);
    const uint8_t *p = nl1 + 1;
    size_t rest = size - hl - 1;
    const uint8_t *nl2 = memchr(p, '\n', rest);
    size_t pl = nl2 ? (size_t)(nl2 - p) : rest;
    uint8_t sigbyte = nl2 && (size_t)(nl2 - p) + 1 < rest ? nl2[1] : 0;
    if (hl > 4096 || pl > 8192)
        return 0;
    static char tok[16384 + 32];
    char *w = tok;
    memcpy(w, "Bearer ", 7);
    w += 7;
    char *end = tok + sizeof tok;
    if (!(w = b64(data, hl, w, (size_t)(end - w))) || w + 1 >= end)
        return 0;
    *w++ = '.';
    if (!(w = b64(p, pl, w, (size_t)(end - w))) || w + 1 >= end)
        return 0;
    *w++ = '.';
    uint8_t sig[256];
    memset(sig, sigbyte, sizeof sig);
    if (!(w = b64(sig, sizeof sig, w, (size_t)(end - w))))
        return 0;
    check(tok, (size_t)(w - tok), use_cache);
    return 0;
}
