/* TEST-ONLY helpers for Entra ID stand-ins: RSA test keys, self-signed certificates, JWKs and token
 * minting. Linked by fake_entra, mint_token, unit tests and benchmarks; never by the product.
 * Every returned pointer is owned by the caller (free with the function named in its comment). */
#ifndef AG_TESTS_ENTRA_TESTKIT_H
#define AG_TESTS_ENTRA_TESTKIT_H

#include <stdbool.h>
#include <stddef.h>
#include <cjson/cJSON.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

/* A fresh RSA key of `bits` bits (EVP_PKEY_free). */
EVP_PKEY *ag_tk_rsa_new(int bits);
/* A self-signed certificate for key, CN=cn, valid from now for a year (X509_free). */
X509 *ag_tk_self_signed(EVP_PKEY *key, const char *cn);
/* The x5t thumbprint of cert: base64url(SHA-1(DER)), the form Entra uses as kid (free). */
char *ag_tk_thumbprint(X509 *cert);
/* The JWK of key's public half: kty, use, kid, n, e, and x5t + x5c when cert is given, issuer when
 * given (cJSON_Delete). */
cJSON *ag_tk_jwk(EVP_PKEY *key, X509 *cert, const char *kid, const char *issuer);

/* Writes the private key as PKCS#8 PEM (mode 0600) or the public key as SubjectPublicKeyInfo PEM; 0/-1. */
int ag_tk_write_pem(EVP_PKEY *key, const char *path, bool private_key);
/* Reads a private or public PEM key (EVP_PKEY_free); NULL on failure. */
EVP_PKEY *ag_tk_read_pem(const char *path);

/* Signs header.payload given as raw bytes (encoded as they are: duplicate claims, odd bytes and all).
 * alg: RS256 | RS384 | RS512 | PS256 (key), HS256 (secret), none (empty signature). Returns the compact
 * JWT (free), or NULL. */
char *ag_tk_sign(const char *header, size_t hlen, const char *payload, size_t plen, const char *alg,
                 EVP_PKEY *key, const unsigned char *secret, size_t secret_len);
/* Convenience: header {"typ":"JWT","alg":alg,"kid":kid} and payload as given (free). */
char *ag_tk_mint(EVP_PKEY *key, const char *kid, const char *alg, const char *payload_json);

#endif
