/* Entra ID access-token validation: a compact JWS (RFC 7515) signed RS256 (or another configured RSA
 * algorithm), checked against a key set and the auth configuration (AZURE.md 1, HOSTILE-INPUT A4).
 *
 * Order of checks (cheapest and most specific first, RSA last):
 *   size -> shape (3 non-empty base64url segments) -> header (crit, jku/x5u/jwk/x5c, b64, alg, typ, kid)
 *   -> claims (tid GUID, iss form and tenant, version, allow-list, aud, exp/nbf/iat, identity fields)
 *   -> key by (kid, version, tenant) -> key algorithm and issuer template -> signature.
 * Thread-safe: reads cfg and keys only. Decodes on the stack (max_token_bytes <= 16 KiB); allocates only
 * inside cJSON and OpenSSL. */
#ifndef AOAI_GUARD_JWT_H
#define AOAI_GUARD_JWT_H

#include <stddef.h>

#include "aoai_guard/auth.h"
#include "aoai_guard/auth_config.h"
#include "aoai_guard/identity.h"
#include "aoai_guard/jwks.h"

#define AG_JWT_MAX_AUD 16     /* an `aud` array longer than this is rejected */
#define AG_JWT_MAX_ROLES 200  /* a `roles` array longer than this is rejected */

/* Validates token[0..len) (without "Bearer "). On AG_AUTH_OK fills *id and *valid_until (exp + skew:
 * how long the verdict may be cached); otherwise *id is zeroed and log (may be NULL) receives the
 * specific reason with untrusted values escaped. keys NULL yields AG_AUTH_NO_KEYS. */
ag_auth_code ag_jwt_validate(const ag_auth_config *cfg, const ag_jwks *keys, const char *token, size_t len,
                             long long now, ag_identity *id, long long *valid_until, char *log, size_t loglen);

#endif
