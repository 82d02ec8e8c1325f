/* JWKS parsing (jwks.h): usable RSA keys are kept and found by kid/version/tenant; everything else is
 * skipped with a note or fails the whole document. Also OpenID metadata parsing. */
#include <stdlib.h>
#include <string.h>

#include "aoai_guard/auth_config.h"
#include "aoai_guard/jwks.h"
#include "check.h"
#include "entra_testkit.h"

static EVP_PKEY *key_a, *key_b, *key_short;
static X509 *cert_a, *cert_b;

/* Serialises {"keys":[items...]} taking ownership of the items; returns a malloc'd string. */
static char *doc(cJSON **items, size_t n)
{
    cJSON *d = cJSON_CreateObject();
    cJSON *keys = cJSON_AddArrayToObject(d, "keys");
    for (size_t i = 0; i < n; i++)
        cJSON_AddItemToArray(keys, items[i]);
    char *s = cJSON_PrintUnformatted(d);
    cJSON_Delete(d);
    return s;
}

static ag_jwks *parse(char *json, char *err, size_t errlen)
{
    ag_jwks *s = ag_jwks_parse(json, strlen(json), NULL, err, errlen);
    free(json);
    return s;
}

static void set_str(cJSON *o, const char *k, const char *v)
{
    cJSON_DeleteItemFromObjectCaseSensitive(o, k);
    cJSON_AddStringToObject(o, k, v);
}

int main(void)
{
    key_a = ag_tk_rsa_new(2048);
    key_b = ag_tk_rsa_new(3072);
    key_short = ag_tk_rsa_new(1024);
    cert_a = ag_tk_self_signed(key_a, "a");
    cert_b = ag_tk_self_signed(key_b, "b");
    CHECK(key_a && key_b && key_short && cert_a && cert_b);
    char err[512];

    /* Valid: two keys, with and without x5c, with an issuer template. */
    {
        cJSON *items[] = {ag_tk_jwk(key_a, cert_a, "kid-a", "https://login.microsoftonline.com/{tenantid}/v2.0"),
                          ag_tk_jwk(key_b, NULL, "kid-b", NULL)};
        ag_jwks *s = parse(doc(items, 2), err, sizeof err);
        CHECK(s != NULL);
        if (s) {
            CHECK_INT(ag_jwks_count(s), 2);
            CHECK_STR(ag_jwks_notes(s), "");
            const ag_jwk *a = ag_jwks_find(s, "kid-a", 5, AG_TOKEN_V2, "11111111-1111-1111-1111-111111111111");
            CHECK(a != NULL);
            if (a) {
                CHECK_INT(a->bits, 2048);
                CHECK_STR(a->issuer, "https://login.microsoftonline.com/{tenantid}/v2.0");
                CHECK_INT(a->versions, AG_TOKEN_V1 | AG_TOKEN_V2);
                CHECK_STR(a->tenant, "");
            }
            const ag_jwk *b = ag_jwks_find(s, "kid-b", 5, AG_TOKEN_V1, NULL);
            CHECK(b != NULL && b->bits == 3072 && b->issuer == NULL);
            CHECK(ag_jwks_find(s, "kid-c", 5, AG_TOKEN_V2, NULL) == NULL);
            CHECK(ag_jwks_find(s, "kid-", 4, AG_TOKEN_V2, NULL) == NULL);   /* no prefix matches */
            CHECK(ag_jwks_find(s, "kid-ab", 6, AG_TOKEN_V2, NULL) == NULL);
            CHECK(ag_jwks_find(s, "kid-a", 5, 0, NULL) == NULL);            /* no version */
            CHECK(ag_jwks_at(s, 0) && strcmp(ag_jwks_at(s, 0)->kid, "kid-a") == 0);
            CHECK(ag_jwks_at(s, 2) == NULL);
            CHECK_INT(ag_jwks_generation(s), 0);
            ag_jwks_set_generation(s, 7);
            CHECK_INT(ag_jwks_generation(s), 7);
            /* References: the set survives until the last unref. */
            ag_jwks *r = ag_jwks_ref(s);
            CHECK(r == s);
            ag_jwks_unref(s);
            CHECK_INT(ag_jwks_count(r), 2);
            ag_jwks_unref(r);
        }
    }

    /* Scope: keys serve only the versions and tenant they were published for. */
    {
        cJSON *items[] = {ag_tk_jwk(key_a, NULL, "kid-a", NULL)};
        char *json = doc(items, 1);
        ag_jwks_scope scope = {.versions = AG_TOKEN_V2, .tenant = "11111111-1111-1111-1111-111111111111"};
        ag_jwks *s = ag_jwks_parse(json, strlen(json), &scope, err, sizeof err);
        CHECK(s != NULL);
        if (s) {
            CHECK(ag_jwks_find(s, "kid-a", 5, AG_TOKEN_V2, "11111111-1111-1111-1111-111111111111") != NULL);
            CHECK(ag_jwks_find(s, "kid-a", 5, AG_TOKEN_V1, "11111111-1111-1111-1111-111111111111") == NULL);
            CHECK(ag_jwks_find(s, "kid-a", 5, AG_TOKEN_V2, "22222222-2222-2222-2222-222222222222") == NULL);
            CHECK(ag_jwks_find(s, "kid-a", 5, AG_TOKEN_V2, NULL) == NULL);
        }
        /* Same content, same fingerprint; a different scope, a different one. */
        ag_jwks *again = ag_jwks_parse(json, strlen(json), &scope, err, sizeof err);
        ag_jwks *wide = ag_jwks_parse(json, strlen(json), NULL, err, sizeof err);
        CHECK(again && wide);
        if (s && again && wide) {
            CHECK(memcmp(ag_jwks_fingerprint(s), ag_jwks_fingerprint(again), 32) == 0);
            CHECK(memcmp(ag_jwks_fingerprint(s), ag_jwks_fingerprint(wide), 32) != 0);
            /* Merge shares the keys; they outlive the source sets. */
            ag_jwks *parts[] = {s, NULL, wide};
            ag_jwks *m = ag_jwks_merge(parts, 3);
            CHECK(m != NULL);
            ag_jwks_unref(s);
            ag_jwks_unref(wide);
            s = wide = NULL;
            if (m) {
                CHECK_INT(ag_jwks_count(m), 2);
                CHECK(ag_jwks_find(m, "kid-a", 5, AG_TOKEN_V1, NULL) != NULL);
                CHECK(ag_jwks_find(m, "kid-a", 5, AG_TOKEN_V2, "33333333-3333-3333-3333-333333333333") != NULL);
                ag_jwks_unref(m);
            }
        }
        ag_jwks *none[] = {NULL};
        CHECK(ag_jwks_merge(none, 1) == NULL);
        ag_jwks_unref(s);
        ag_jwks_unref(again);
        ag_jwks_unref(wide);
        free(json);
    }

    /* Unusable keys are skipped with a note; a document with no usable key fails. */
    {
        cJSON *ec = cJSON_CreateObject();
        set_str(ec, "kty", "EC");
        set_str(ec, "kid", "kid-ec");
        set_str(ec, "crv", "P-256");
        cJSON *enc = ag_tk_jwk(key_a, NULL, "kid-enc", NULL);
        set_str(enc, "use", "enc");
        cJSON *badn = ag_tk_jwk(key_a, NULL, "kid-badn", NULL);
        set_str(badn, "n", "abc=");
        cJSON *bade = ag_tk_jwk(key_a, NULL, "kid-bade", NULL);
        set_str(bade, "e", "AQAA"); /* 65536: even */
        cJSON *nonum = ag_tk_jwk(key_a, NULL, "kid-non", NULL);
        cJSON_DeleteItemFromObjectCaseSensitive(nonum, "n");
        cJSON *shortk = ag_tk_jwk(key_short, NULL, "kid-short", NULL);
        cJSON *mismatch = ag_tk_jwk(key_a, cert_b, "kid-x5c", NULL); /* x5c of another key */
        cJSON *badalg = ag_tk_jwk(key_a, NULL, "kid-alg", NULL);
        set_str(badalg, "alg", "RSA-OAEP");
        cJSON *items[] = {ec, enc, badn, bade, nonum, shortk, mismatch, badalg};
        ag_jwks *s = parse(doc(items, 8), err, sizeof err);
        CHECK(s == NULL);
        CHECK(strstr(err, "no usable RSA signing key") != NULL);
        CHECK(strstr(err, "kid kid-ec: kty is not RSA") != NULL);
        CHECK(strstr(err, "kid kid-enc: use is not sig") != NULL);
        CHECK(strstr(err, "kid kid-badn: missing or malformed n/e") != NULL);
        CHECK(strstr(err, "kid kid-bade: bad public exponent") != NULL);
        CHECK(strstr(err, "kid kid-short: RSA key shorter than 2048 bits") != NULL);
    }
    {
        /* The same bad keys next to a good one: only the good one stays, the notes name the rest. */
        cJSON *shortk = ag_tk_jwk(key_short, NULL, "kid-short", NULL);
        cJSON *mismatch = ag_tk_jwk(key_a, cert_b, "kid-x5c", NULL);
        cJSON *badx5c = ag_tk_jwk(key_a, cert_a, "kid-x5c-b64", NULL);
        cJSON_ReplaceItemInArray(cJSON_GetObjectItemCaseSensitive(badx5c, "x5c"), 0, cJSON_CreateString("MIIB=A=="));
        cJSON *good = ag_tk_jwk(key_b, cert_b, "kid-good", NULL);
        cJSON *items[] = {shortk, mismatch, badx5c, good};
        ag_jwks *s = parse(doc(items, 4), err, sizeof err);
        CHECK(s != NULL);
        if (s) {
            CHECK_INT(ag_jwks_count(s), 1);
            CHECK(ag_jwks_find(s, "kid-good", 8, AG_TOKEN_V2, NULL) != NULL);
            CHECK(ag_jwks_find(s, "kid-short", 9, AG_TOKEN_V2, NULL) == NULL);
            CHECK(strstr(ag_jwks_notes(s), "kid kid-x5c: x5c certificate key differs from n/e") != NULL);
            CHECK(strstr(ag_jwks_notes(s), "kid kid-x5c-b64: x5c is not canonical base64") != NULL);
            CHECK(strstr(ag_jwks_notes(s), "kid kid-short: RSA key shorter than 2048 bits") != NULL);
            ag_jwks_unref(s);
        }
    }

    /* Duplicate kids fail the document (which key would a token mean?). */
    {
        cJSON *items[] = {ag_tk_jwk(key_a, NULL, "dup", NULL), ag_tk_jwk(key_b, NULL, "dup", NULL)};
        CHECK(parse(doc(items, 2), err, sizeof err) == NULL);
        CHECK_STR(err, "JWKS lists kid dup twice");
    }
    /* More keys than the cap fail the document. */
    {
        cJSON *items[AG_JWKS_MAX_KEYS + 1];
        for (int i = 0; i <= AG_JWKS_MAX_KEYS; i++) {
            char kid[16];
            snprintf(kid, sizeof kid, "k%d", i);
            items[i] = ag_tk_jwk(key_a, NULL, kid, NULL);
        }
        CHECK(parse(doc(items, AG_JWKS_MAX_KEYS + 1), err, sizeof err) == NULL);
        CHECK_STR(err, "JWKS lists 101 keys, more than the limit of 100");
    }
    /* Malformed documents. */
    {
        const char *bad[] = {"", "[]", "{\"keys\":{}}", "{}", "{\"keys\":[]} x", "{\"keys\":[],\"keys\":[]}",
                             "{\"keys\":[{\"kty\":\"RSA\",\"kty\":\"EC\"}]}"};
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
            CHECK(ag_jwks_parse(bad[i], strlen(bad[i]), NULL, err, sizeof err) == NULL);
        CHECK(ag_jwks_parse("{\"keys\":[]}", 11, NULL, err, sizeof err) == NULL);
        CHECK_STR(err, "JWKS has no usable RSA signing key");
    }

    /* OpenID metadata. */
    {
        ag_oidc_metadata md;
        const char *ok = "{\"issuer\":\"https://login.microsoftonline.com/{tenantid}/v2.0\","
                         "\"jwks_uri\":\"https://login.microsoftonline.com/common/discovery/v2.0/keys\",\"x\":1}";
        CHECK_INT(ag_oidc_metadata_parse(ok, strlen(ok), &md, err, sizeof err), 0);
        CHECK_STR(md.issuer, "https://login.microsoftonline.com/{tenantid}/v2.0");
        CHECK_STR(md.jwks_uri, "https://login.microsoftonline.com/common/discovery/v2.0/keys");
        ag_oidc_metadata_free(&md);
        CHECK(md.issuer == NULL && md.jwks_uri == NULL);
        const char *loop = "{\"issuer\":\"i\",\"jwks_uri\":\"http://127.0.0.1:8080/t/discovery/keys\"}";
        CHECK_INT(ag_oidc_metadata_parse(loop, strlen(loop), &md, err, sizeof err), 0);
        ag_oidc_metadata_free(&md);
        const char *plain = "{\"issuer\":\"i\",\"jwks_uri\":\"http://evil.example/keys\"}";
        CHECK_INT(ag_oidc_metadata_parse(plain, strlen(plain), &md, err, sizeof err), -1);
        CHECK(strstr(err, "jwks_uri") != NULL);
        const char *noiss = "{\"jwks_uri\":\"https://x/keys\"}";
        CHECK_INT(ag_oidc_metadata_parse(noiss, strlen(noiss), &md, err, sizeof err), -1);
        CHECK_STR(err, "metadata has no usable \"issuer\"");
        const char *dup = "{\"issuer\":\"a\",\"issuer\":\"b\",\"jwks_uri\":\"https://x/keys\"}";
        CHECK_INT(ag_oidc_metadata_parse(dup, strlen(dup), &md, err, sizeof err), -1);
        CHECK(strstr(err, "duplicate key") != NULL);
    }

    EVP_PKEY_free(key_a);
    EVP_PKEY_free(key_b);
    EVP_PKEY_free(key_short);
    X509_free(cert_a);
    X509_free(cert_b);
    return CHECK_DONE();
}
