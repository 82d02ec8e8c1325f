/* Key sets (JWKS, RFC 7517) for verifying Entra ID access tokens, and OpenID metadata parsing.
 *
 * A key set is immutable once built and reference-counted with an atomic counter: the control thread
 * builds it (ag_jwks_parse, ag_jwks_merge), publishes it, and worker threads read it concurrently
 * through their own references. Only RSA signature keys of 2048..8192 bits are kept; each key is
 * scoped to the token versions and tenant of the endpoint that published it, so a v1 token is never
 * verified with a key that only the v2 endpoint listed (AZURE.md 1.1). */
#ifndef AOAI_GUARD_JWKS_H
#define AOAI_GUARD_JWKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <openssl/evp.h>

#define AG_JWKS_MAX_KEYS 100      /* a document listing more keys is rejected */
#define AG_JWK_KID_MAX 128
#define AG_JWK_MIN_BITS 2048
#define AG_JWK_MAX_BITS 8192

typedef struct ag_jwk {
    char kid[AG_JWK_KID_MAX + 1];
    EVP_PKEY *pkey;          /* RSA public key (owned by the set) */
    int bits;
    unsigned algs;           /* ag_jwt_alg bits this key may verify: its JWK "alg", or every RSA alg */
    unsigned versions;       /* AG_TOKEN_V1 / AG_TOKEN_V2 bits this key serves */
    char tenant[40];         /* tenant GUID whose endpoint published it; "" = any tenant */
    char *issuer;            /* the JWK "issuer" (may hold "{tenantid}"), NULL when absent */
} ag_jwk;

typedef struct ag_jwks ag_jwks; /* opaque, immutable, reference-counted */

/* Where a document's keys apply: token versions (bits) and tenant ("" or NULL = any). */
typedef struct ag_jwks_scope {
    unsigned versions;
    const char *tenant;
} ag_jwks_scope;

/* Parses one JWKS document (strict JSON) into a new set with one reference, its keys scoped by scope
 * (NULL: every version, any tenant). Keys of another kty/use/alg, malformed or short keys, and keys
 * whose x5c certificate disagrees with n/e are skipped and described in ag_jwks_notes(). Returns NULL
 * with a message in err when the document is malformed, lists more than AG_JWKS_MAX_KEYS keys or the
 * same kid twice, or has no usable key. */
ag_jwks *ag_jwks_parse(const char *json, size_t len, const ag_jwks_scope *scope, char *err, size_t errlen);

/* Builds a new set holding the keys of every set in sets (keys are shared, not copied); NULL entries are
 * skipped. Returns NULL when no key remains or on allocation failure. The inputs are not consumed. */
ag_jwks *ag_jwks_merge(ag_jwks *const *sets, size_t n);

/* Takes a reference (any thread); returns set. */
ag_jwks *ag_jwks_ref(ag_jwks *set);
/* Drops a reference (any thread); the last one frees the set and its keys. NULL is a no-op. */
void ag_jwks_unref(ag_jwks *set);

/* The key with this kid that serves token version `version` (one bit) for tenant tid, or NULL. */
const ag_jwk *ag_jwks_find(const ag_jwks *set, const char *kid, size_t kid_len, unsigned version,
                           const char *tid);
/* Number of keys, and the i-th key (sorted by kid, then tenant). */
size_t ag_jwks_count(const ag_jwks *set);
const ag_jwk *ag_jwks_at(const ag_jwks *set, size_t i);
/* SHA-256 over every key's kid, scope, issuer and public key: equal fingerprints, equal key sets. */
const unsigned char *ag_jwks_fingerprint(const ag_jwks *set);
/* Generation stamped by the publisher (0 until set); token cache entries remember it. */
uint64_t ag_jwks_generation(const ag_jwks *set);
/* Stamps the generation; only before the set is shared with other threads. */
void ag_jwks_set_generation(ag_jwks *set, uint64_t generation);
/* What was skipped while parsing ("kid abc: kty EC not supported; ..."), "" when nothing. */
const char *ag_jwks_notes(const ag_jwks *set);

/* OpenID Connect discovery document: the two fields we use. Strings owned by the struct. */
typedef struct ag_oidc_metadata {
    char *issuer;   /* may hold the "{tenantid}" template (common / organizations) */
    char *jwks_uri;
} ag_oidc_metadata;

/* Parses metadata (strict JSON); issuer and jwks_uri are required strings, jwks_uri must pass
 * ag_auth_url_allowed. 0, or -1 with a message in err (and *out zeroed). */
int ag_oidc_metadata_parse(const char *json, size_t len, ag_oidc_metadata *out, char *err, size_t errlen);
/* Frees the strings and zeroes *md. */
void ag_oidc_metadata_free(ag_oidc_metadata *md);

#endif
