/* Token cache (token_cache.h): hit, miss, LRU eviction, expiry, key-set generation, and the front
 * door's use of it (a hit skips validation entirely). */
#include <stdlib.h>
#include <string.h>

#include "aoai_guard/auth.h"
#include "aoai_guard/token_cache.h"
#include "auth_fixture.h"
#include "check.h"

static void key_of(int i, unsigned char k[AG_TOKEN_CACHE_KEY_LEN])
{
    char s[32];
    snprintf(s, sizeof s, "token-%d", i);
    ag_token_cache_key(s, strlen(s), k);
}

static ag_identity ident(const char *oid, const char *roles)
{
    ag_identity id;
    memset(&id, 0, sizeof id);
    id.kind = AG_IDENTITY_APP;
    snprintf(id.tid, sizeof id.tid, "%s", T1);
    snprintf(id.oid, sizeof id.oid, "%s", oid);
    snprintf(id.app, sizeof id.app, "%s", APP1);
    snprintf(id.roles, sizeof id.roles, "%s", roles);
    snprintf(id.upn, sizeof id.upn, "%s", "svc@contoso.example");
    id.exp = NOW + 3600;
    return id;
}

int main(void)
{
    CHECK(ag_token_cache_new(0) == NULL);
    ag_token_cache_stats st;

    /* The key is SHA-256 of the token. */
    unsigned char k[AG_TOKEN_CACHE_KEY_LEN];
    ag_token_cache_key("abc", 3, k);
    static const unsigned char sha_abc[32] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
                                              0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17,
                                              0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    CHECK(memcmp(k, sha_abc, 32) == 0);

    /* Hit, generation change, expiry. */
    ag_token_cache *c = ag_token_cache_new(3);
    CHECK(c != NULL);
    unsigned char k1[32], k2[32], k3[32], k4[32];
    key_of(1, k1);
    key_of(2, k2);
    key_of(3, k3);
    key_of(4, k4);
    ag_identity a = ident(OID1, "AI.User analytics"), out;
    CHECK_INT(ag_token_cache_put(c, k1, 1, 100, &a), 0);
    CHECK(ag_token_cache_get(c, k1, 1, 50, &out));
    CHECK(memcmp(&a, &out, sizeof a) == 0);
    CHECK(ag_token_cache_get(c, k1, 1, 100, &out)); /* valid_until inclusive */
    CHECK(!ag_token_cache_get(c, k2, 1, 50, &out));
    CHECK(!ag_token_cache_get(c, k1, 2, 50, &out)); /* key set changed: dropped */
    CHECK(!ag_token_cache_get(c, k1, 1, 50, &out)); /* and gone */
    ag_token_cache_get_stats(c, &st);
    CHECK_INT(st.hits, 2);
    CHECK_INT(st.misses, 3);
    CHECK_INT(st.stale, 1);
    CHECK_INT(st.size, 0);
    CHECK_INT(ag_token_cache_put(c, k1, 1, 100, &a), 0);
    CHECK(!ag_token_cache_get(c, k1, 1, 101, &out)); /* expired: dropped */
    ag_token_cache_get_stats(c, &st);
    CHECK_INT(st.expired, 1);
    CHECK_INT(st.size, 0);

    /* LRU: k1 touched after k2, so k2 is the one evicted by k4. */
    ag_identity b = ident("0b0b0b0b-0000-4000-8000-000000000002", ""), d = ident("0d0d0d0d-0000-4000-8000-000000000004", "x");
    CHECK_INT(ag_token_cache_put(c, k1, 1, 1000, &a), 0);
    CHECK_INT(ag_token_cache_put(c, k2, 1, 1000, &b), 0);
    CHECK_INT(ag_token_cache_put(c, k3, 1, 1000, &b), 0);
    CHECK(ag_token_cache_get(c, k1, 1, 10, &out));
    CHECK_INT(ag_token_cache_put(c, k4, 1, 1000, &d), 0);
    CHECK(!ag_token_cache_get(c, k2, 1, 10, &out));
    CHECK(ag_token_cache_get(c, k1, 1, 10, &out) && strcmp(out.oid, OID1) == 0);
    CHECK(ag_token_cache_get(c, k3, 1, 10, &out));
    CHECK(ag_token_cache_get(c, k4, 1, 10, &out) && strcmp(out.roles, "x") == 0);
    ag_token_cache_get_stats(c, &st);
    CHECK_INT(st.evictions, 1);
    CHECK_INT(st.size, 3);
    CHECK_INT(st.capacity, 3);
    /* Replacing an entry keeps the size and returns the new identity. */
    CHECK_INT(ag_token_cache_put(c, k4, 2, 1000, &a), 0);
    ag_token_cache_get_stats(c, &st);
    CHECK_INT(st.size, 3);
    CHECK(ag_token_cache_get(c, k4, 2, 10, &out) && strcmp(out.oid, OID1) == 0);
    ag_token_cache_clear(c);
    ag_token_cache_get_stats(c, &st);
    CHECK_INT(st.size, 0);
    CHECK(!ag_token_cache_get(c, k1, 1, 10, &out));
    ag_token_cache_free(c);

    /* Many entries: exactly capacity stay, the newest. */
    c = ag_token_cache_new(1000);
    int fails = 0;
    for (int i = 0; i < 5000; i++) {
        key_of(i, k);
        fails += ag_token_cache_put(c, k, 9, 1000, &a) != 0;
    }
    CHECK_INT(fails, 0);
    ag_token_cache_get_stats(c, &st);
    CHECK_INT(st.size, 1000);
    CHECK_INT(st.evictions, 4000);
    int hits = 0;
    for (int i = 0; i < 5000; i++) {
        key_of(i, k);
        hits += ag_token_cache_get(c, k, 9, 10, &out);
    }
    CHECK_INT(hits, 1000);
    key_of(4999, k);
    CHECK(ag_token_cache_get(c, k, 9, 10, &out));
    key_of(3999, k);
    CHECK(!ag_token_cache_get(c, k, 9, 10, &out));
    ag_token_cache_free(c);
    ag_token_cache_free(NULL);

    /* Front door: the second call is a hit; a hit does no validation at all (proved with a key set of
     * the same generation that lacks the key); a new generation forces validation again. */
    ag_auth_config cfg;
    fx_config("{\"tenants\":[\"" T1 "\"],\"audiences\":[\"" AUD "\"]}", &cfg);
    EVP_PKEY *key = ag_tk_rsa_new(2048), *other = ag_tk_rsa_new(2048);
    cJSON *j1[] = {ag_tk_jwk(key, NULL, "k1", NULL)};
    cJSON *j2[] = {ag_tk_jwk(other, NULL, "k-other", NULL)};
    cJSON *j3[] = {ag_tk_jwk(key, NULL, "k1", NULL)};
    ag_jwks *keys = fx_keyset(j1, 1), *lacking = fx_keyset(j2, 1), *newgen = fx_keyset(j3, 1);
    ag_jwks_set_generation(keys, 5);
    ag_jwks_set_generation(lacking, 5);
    ag_jwks_set_generation(newgen, 6);
    c = ag_token_cache_new(cfg.token_cache_size);
    char *tok = fx_mint(key, "k1", "RS256", fx_claims_v2());
    char hdr[4096];
    snprintf(hdr, sizeof hdr, "Bearer %s", tok);
    ag_auth_input in = {.authorization = hdr, .authorization_len = strlen(hdr)};
    ag_identity id;
    ag_auth_result res;
    CHECK_INT(ag_auth_authenticate(&cfg, c, keys, &in, NOW, &id, &res), AG_AUTH_OK);
    CHECK(!res.cached);
    CHECK_INT(ag_auth_authenticate(&cfg, c, keys, &in, NOW, &id, &res), AG_AUTH_OK);
    CHECK(res.cached);
    CHECK_STR(id.oid, OID1);
    CHECK_INT(ag_auth_authenticate(&cfg, c, lacking, &in, NOW, &id, &res), AG_AUTH_OK);
    CHECK(res.cached);
    CHECK_INT(ag_auth_authenticate(&cfg, NULL, lacking, &in, NOW, &id, &res), AG_AUTH_UNKNOWN_KID);
    CHECK_INT(ag_auth_authenticate(&cfg, c, newgen, &in, NOW, &id, &res), AG_AUTH_OK);
    CHECK(!res.cached);
    CHECK_INT(ag_auth_authenticate(&cfg, c, newgen, &in, NOW, &id, &res), AG_AUTH_OK);
    CHECK(res.cached);
    /* Cached until exp + skew, not beyond: then validation runs and reports the expiry. */
    CHECK_INT(ag_auth_authenticate(&cfg, c, newgen, &in, NOW + 3600 + 300, &id, &res), AG_AUTH_OK);
    CHECK(res.cached);
    CHECK_INT(ag_auth_authenticate(&cfg, c, newgen, &in, NOW + 3600 + 301, &id, &res), AG_AUTH_EXPIRED);
    CHECK(!res.cached);
    /* Rejected tokens are never cached. */
    char *bad = fx_mint(other, "k1", "RS256", fx_claims_v2());
    snprintf(hdr, sizeof hdr, "Bearer %s", bad);
    in.authorization_len = strlen(hdr);
    CHECK_INT(ag_auth_authenticate(&cfg, c, newgen, &in, NOW, &id, &res), AG_AUTH_BAD_SIGNATURE);
    CHECK_INT(ag_auth_authenticate(&cfg, c, newgen, &in, NOW, &id, &res), AG_AUTH_BAD_SIGNATURE);
    CHECK(!res.cached);
    free(bad);
    free(tok);
    ag_token_cache_free(c);
    ag_jwks_unref(keys);
    ag_jwks_unref(lacking);
    ag_jwks_unref(newgen);
    EVP_PKEY_free(key);
    EVP_PKEY_free(other);
    ag_auth_config_free(&cfg);
    return CHECK_DONE();
}
