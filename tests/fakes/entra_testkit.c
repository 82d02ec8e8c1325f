/* TEST-ONLY key, certificate, JWK and token helpers (see entra_testkit.h). */
#include "entra_testkit.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>

#include "aoai_guard/b64url.h"

EVP_PKEY *ag_tk_rsa_new(int bits)
{
    return EVP_RSA_gen((unsigned int)bits);
}

X509 *ag_tk_self_signed(EVP_PKEY *key, const char *cn)
{
    X509 *x = X509_new();
    if (!x)
        return NULL;
    unsigned char serial[8];
    BIGNUM *bn = NULL;
    X509_NAME *name = X509_get_subject_name(x);
    if (X509_set_version(x, 2) != 1 || RAND_bytes(serial, sizeof serial) != 1 ||
        !(bn = BN_bin2bn(serial, sizeof serial, NULL)) || !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) ||
        !X509_gmtime_adj(X509_getm_notBefore(x), 0) || !X509_gmtime_adj(X509_getm_notAfter(x), 365L * 86400) ||
        X509_set_pubkey(x, key) != 1 ||
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0) != 1 ||
        X509_set_issuer_name(x, name) != 1 || X509_sign(x, key, EVP_sha256()) <= 0) {
        BN_free(bn);
        X509_free(x);
        return NULL;
    }
    BN_free(bn);
    return x;
}

/* base64url of bytes, malloc'd. */
static char *b64url(const unsigned char *in, size_t len)
{
    size_t cap = AG_B64URL_ENCODE_CAP(len), n;
    char *out = malloc(cap);
    if (out && ag_b64url_encode(in, len, out, cap, &n) != 0) {
        free(out);
        out = NULL;
    }
    return out;
}

char *ag_tk_thumbprint(X509 *cert)
{
    unsigned char *der = NULL;
    int dl = i2d_X509(cert, &der);
    if (dl <= 0)
        return NULL;
    unsigned char sha1[SHA_DIGEST_LENGTH];
    SHA1(der, (size_t)dl, sha1);
    OPENSSL_free(der);
    return b64url(sha1, sizeof sha1);
}

static char *bn_param_b64url(EVP_PKEY *key, const char *param)
{
    BIGNUM *bn = NULL;
    if (EVP_PKEY_get_bn_param(key, param, &bn) != 1)
        return NULL;
    size_t n = (size_t)BN_num_bytes(bn);
    unsigned char *buf = malloc(n ? n : 1);
    char *out = NULL;
    if (buf) {
        BN_bn2bin(bn, buf);
        out = b64url(buf, n);
    }
    free(buf);
    BN_free(bn);
    return out;
}

cJSON *ag_tk_jwk(EVP_PKEY *key, X509 *cert, const char *kid, const char *issuer)
{
    char *n = bn_param_b64url(key, OSSL_PKEY_PARAM_RSA_N), *e = bn_param_b64url(key, OSSL_PKEY_PARAM_RSA_E);
    cJSON *jwk = cJSON_CreateObject();
    if (!n || !e || !jwk)
        goto fail;
    cJSON_AddStringToObject(jwk, "kty", "RSA");
    cJSON_AddStringToObject(jwk, "use", "sig");
    cJSON_AddStringToObject(jwk, "kid", kid);
    if (cert) {
        char *x5t = ag_tk_thumbprint(cert);
        unsigned char *der = NULL;
        int dl = i2d_X509(cert, &der);
        char *b64 = dl > 0 ? malloc(((size_t)dl + 2) / 3 * 4 + 1) : NULL;
        if (!x5t || !b64) {
            free(x5t);
            free(b64);
            OPENSSL_free(der);
            goto fail;
        }
        EVP_EncodeBlock((unsigned char *)b64, der, dl);
        OPENSSL_free(der);
        cJSON_AddStringToObject(jwk, "x5t", x5t);
        free(x5t);
        cJSON_AddStringToObject(jwk, "n", n);
        cJSON_AddStringToObject(jwk, "e", e);
        cJSON *x5c = cJSON_AddArrayToObject(jwk, "x5c");
        cJSON_AddItemToArray(x5c, cJSON_CreateString(b64));
        free(b64);
    } else {
        cJSON_AddStringToObject(jwk, "n", n);
        cJSON_AddStringToObject(jwk, "e", e);
    }
    if (issuer)
        cJSON_AddStringToObject(jwk, "issuer", issuer);
    free(n);
    free(e);
    return jwk;
fail:
    free(n);
    free(e);
    cJSON_Delete(jwk);
    return NULL;
}

int ag_tk_write_pem(EVP_PKEY *key, const char *path, bool private_key)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, private_key ? 0600 : 0644);
    if (fd < 0)
        return -1;
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        return -1;
    }
    int ok = private_key ? PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) : PEM_write_PUBKEY(f, key);
    return (fclose(f) == 0 && ok == 1) ? 0 : -1;
}

EVP_PKEY *ag_tk_read_pem(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    EVP_PKEY *key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    if (!key) {
        rewind(f);
        key = PEM_read_PUBKEY(f, NULL, NULL, NULL);
    }
    fclose(f);
    return key;
}

static const EVP_MD *md_for(const char *alg)
{
    if (strcmp(alg, "RS384") == 0)
        return EVP_sha384();
    if (strcmp(alg, "RS512") == 0)
        return EVP_sha512();
    return EVP_sha256();
}

char *ag_tk_sign(const char *header, size_t hlen, const char *payload, size_t plen, const char *alg,
                 EVP_PKEY *key, const unsigned char *secret, size_t secret_len)
{
    char *h = b64url((const unsigned char *)header, hlen), *p = b64url((const unsigned char *)payload, plen);
    char *out = NULL, *sig64 = NULL;
    unsigned char sig[1024];
    size_t siglen = 0;
    if (!h || !p)
        goto done;
    size_t slen = strlen(h) + 1 + strlen(p);
    char *signing = malloc(slen + 1);
    if (!signing)
        goto done;
    snprintf(signing, slen + 1, "%s.%s", h, p);
    bool ok = true;
    if (strcmp(alg, "none") == 0) {
        siglen = 0;
    } else if (strcmp(alg, "HS256") == 0) {
        unsigned int ml = 0;
        ok = HMAC(EVP_sha256(), secret, (int)secret_len, (const unsigned char *)signing, slen, sig, &ml) != NULL;
        siglen = ml;
    } else {
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        EVP_PKEY_CTX *pctx = NULL;
        siglen = sizeof sig;
        ok = ctx && key && EVP_DigestSignInit(ctx, &pctx, md_for(alg), NULL, key) == 1;
        if (ok && strcmp(alg, "PS256") == 0)
            ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0 &&
                 EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) > 0;
        ok = ok && EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)signing, slen) == 1;
        EVP_MD_CTX_free(ctx);
    }
    if (ok && (sig64 = b64url(sig, siglen)) != NULL) {
        size_t total = slen + 1 + strlen(sig64) + 1;
        out = malloc(total);
        if (out)
            snprintf(out, total, "%s.%s", signing, sig64);
    }
    free(signing);
done:
    free(h);
    free(p);
    free(sig64);
    return out;
}

char *ag_tk_mint(EVP_PKEY *key, const char *kid, const char *alg, const char *payload_json)
{
    char header[512];
    int n = snprintf(header, sizeof header, "{\"typ\":\"JWT\",\"alg\":\"%s\",\"kid\":\"%s\"}", alg, kid);
    if (n < 0 || (size_t)n >= sizeof header)
        return NULL;
    return ag_tk_sign(header, (size_t)n, payload_json, strlen(payload_json), alg, key, NULL, 0);
}
