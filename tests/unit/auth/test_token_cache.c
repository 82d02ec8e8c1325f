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

/* The memo gives exactly the key ag_token_cache_key gives, over a random walk of tokens built to
 * trip a lazy comparison: equal lengths differing in one byte (first, middle, last), prefixes of one
 * another, growing past the first allocation, and tokens too long to keep. */
static void test_memo_keys(void)
{
    static char pool[8][AG_TOKEN_MEMO_MAX + 16];
    size_t plen[8];
    for (int i = 0; i < 8; i++)
        for (size_t j = 0; j < sizeof pool[i]; j++)
            pool[i][j] = (char)('A' + (j * 7 + (size_t)i) % 26);
    memcpy(pool[1], pool[0], sizeof pool[0]);
    memcpy(pool[2], pool[0], sizeof pool[0]);
    memcpy(pool[3], pool[0], sizeof pool[0]);
    plen[0] = plen[1] = plen[2] = plen[3] = 1500;
    pool[1][0] ^= 1;    /* first byte */
    pool[2][750] ^= 1;  /* middle */
    pool[3][1499] ^= 1; /* last */
    plen[4] = 900;      /* a shorter token ... */
    memcpy(pool[4], pool[0], plen[4]); /* ... that is a prefix of pool[0] */
    plen[5] = 3000;     /* larger than the first allocation */
    memcpy(pool[5], pool[0], 1500);
    plen[6] = AG_TOKEN_MEMO_MAX;     /* the longest that is kept */
    plen[7] = AG_TOKEN_MEMO_MAX + 1; /* hashed every time, not kept */
    ag_token_memo m;
    memset(&m, 0, sizeof m);
    unsigned state = 12345;
    int kept_long = 0, dropped_long = 0;
    for (int step = 0; step < 4000; step++) {
        state = state * 1103515245u + 12345u;
        int i = (int)((state >> 16) % 8);
        unsigned char want[AG_TOKEN_CACHE_KEY_LEN], got[AG_TOKEN_CACHE_KEY_LEN];
        ag_token_cache_key(pool[i], plen[i], want);
        const char *prev = m.token;
        size_t prev_len = m.len;
        ag_token_memo_key(&m, pool[i], plen[i], got);
        CHECK(memcmp(want, got, sizeof want) == 0);
        if (plen[i] <= AG_TOKEN_MEMO_MAX) {
            CHECK(m.token != NULL && m.len == plen[i] && memcmp(m.token, pool[i], plen[i]) == 0);
            kept_long += i == 6;
        } else {
            CHECK(m.token == prev && m.len == prev_len); /* the memo keeps its last token */
            dropped_long++;
        }
    }
    CHECK(kept_long > 0 && dropped_long > 0);
    /* Without a memo the key is computed as before. */
    unsigned char a[AG_TOKEN_CACHE_KEY_LEN], b[AG_TOKEN_CACHE_KEY_LEN];
    ag_token_memo_key(NULL, "abc", 3, a);
    ag_token_cache_key("abc", 3, b);
    CHECK(memcmp(a, b, sizeof a) == 0);
    ag_token_memo_free(&m);
    CHECK(m.token == NULL && m.len == 0 && m.cap == 0);
    ag_token_memo_free(&m); /* twice is harmless */
}

int main(void)
{
    test_memo_keys();
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

    /* With the connection's memo: a cached token stays a hit; a forged token of the same length on the
     * same connection (another key's signature, or one byte changed) is validated, and fails. */
    ag_token_memo memo;
    memset(&memo, 0, sizeof memo);
    char good_hdr[4096], bad_hdr[4096];
    snprintf(good_hdr, sizeof good_hdr, "Bearer %s", tok);
    snprintf(bad_hdr, sizeof bad_hdr, "Bearer %s", bad);
    CHECK_INT((int)strlen(good_hdr), (int)strlen(bad_hdr));
    ag_auth_input min = {.authorization = good_hdr, .authorization_len = strlen(good_hdr), .memo = &memo};
    CHECK_INT(ag_auth_authenticate(&cfg, c, newgen, &min, NOW, &id, &res), AG_AUTH_OK);
    CHECK(!res.cached); /* the expiry check above dropped the entry: validated and cached again */
    CHECK_INT(ag_auth_authenticate(&cfg, c, newgen, &min, NOW, &id, &res), AG_AUTH_OK);
    CHECK(res.cached && memo.len == strlen(tok));
    min.authorization = bad_hdr;
    CHECK_INT(ag_auth_authenticate(&cfg, c, newgen, &min, NOW, &id, &res), AG_AUTH_BAD_SIGNATURE);
    CHECK(!res.cached);
    memcpy(bad_hdr, good_hdr, sizeof good_hdr);
    /* another base64url character in the signature (a full 6-bit one: the last holds 2 bits); a
     * flipped bit could leave the alphabet and be refused as malformed instead */
    char *sig_char = &bad_hdr[strlen(bad_hdr) - 2];
    *sig_char = *sig_char == 'A' ? 'B' : 'A';
    CHECK_INT(ag_auth_authenticate(&cfg, c, newgen, &min, NOW, &id, &res), AG_AUTH_BAD_SIGNATURE);
    CHECK(!res.cached);
    min.authorization = good_hdr;
    CHECK_INT(ag_auth_authenticate(&cfg, c, newgen, &min, NOW, &id, &res), AG_AUTH_OK);
    CHECK(res.cached);
    /* The memo keeps no validity of its own: past exp + skew the cache's answer stands. */
    CHECK_INT(ag_auth_authenticate(&cfg, c, newgen, &min, NOW + 3600 + 301, &id, &res), AG_AUTH_EXPIRED);
    ag_token_memo_free(&memo);
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
