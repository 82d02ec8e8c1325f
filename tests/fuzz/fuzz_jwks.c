/* Fuzz target: JWKS documents (ag_jwks_parse, then merge, lookup and fingerprint) and OpenID
 * metadata documents (ag_oidc_metadata_parse), the two things the control thread reads from the
 * network before any token is checked (src/auth/jwks.c).
 *
 * Input: byte 0 picks the scope the keys are parsed under (bit 0: tenant-scoped, bit 1: v1 only);
 * the rest is the document, tried as both a JWKS and a metadata document.
 * Oracles besides the sanitizers: parsing is deterministic (the same bytes give the same
 * fingerprint), every kept key is RSA of 2048..8192 bits with a kid that finds itself, a set never
 * holds more than AG_JWKS_MAX_KEYS keys, and a metadata document that parses has both fields with an
 * allowed jwks_uri. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aoai_guard/auth_config.h"
#include "aoai_guard/jwks.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define TENANT "11111111-1111-4111-8111-111111111111"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 1 << 20)
        return 0;
    uint8_t mode = data[0];
    const char *doc = (const char *)data + 1;
    size_t len = size - 1;
    ag_jwks_scope scope = {(mode & 2) ? AG_TOKEN_V1 : (AG_TOKEN_V1 | AG_TOKEN_V2), (mode & 1) ? TENANT : NULL};
    char err[256];
    ag_jwks *set = ag_jwks_parse(doc, len, &scope, err, sizeof err);
    if (set) {
        size_t n = ag_jwks_count(set);
        if (n == 0 || n > AG_JWKS_MAX_KEYS)
            __builtin_trap();
        for (size_t i = 0; i < n; i++) {
            const ag_jwk *k = ag_jwks_at(set, i);
            if (!k || !k->pkey || k->bits < AG_JWK_MIN_BITS || k->bits > AG_JWK_MAX_BITS ||
                strlen(k->kid) > AG_JWK_KID_MAX)
                __builtin_trap();
            unsigned v = (k->versions & AG_TOKEN_V2) ? AG_TOKEN_V2 : AG_TOKEN_V1;
            if (!ag_jwks_find(set, k->kid, strlen(k->kid), v, TENANT))
                __builtin_trap(); /* a kept key must be found by its own kid */
        }
        (void)ag_jwks_find(set, "", 0, AG_TOKEN_V2, TENANT);
        (void)ag_jwks_notes(set);
        ag_jwks *again = ag_jwks_parse(doc, len, &scope, err, sizeof err);
        if (!again || memcmp(ag_jwks_fingerprint(set), ag_jwks_fingerprint(again), 32) != 0)
            __builtin_trap(); /* parsing is not deterministic */
        ag_jwks *sets[3] = {set, NULL, again};
        ag_jwks *merged = ag_jwks_merge(sets, 3);
        if (merged) {
            if (ag_jwks_count(merged) < n)
                __builtin_trap();
            ag_jwks_unref(merged);
        }
        ag_jwks_unref(again);
        ag_jwks_unref(set);
    }
    ag_oidc_metadata md;
    if (ag_oidc_metadata_parse(doc, len, &md, err, sizeof err) == 0) {
        if (!md.issuer || !md.jwks_uri || !ag_auth_url_allowed(md.jwks_uri))
            __builtin_trap();
        ag_oidc_metadata_free(&md);
    }
    return 0;
}
