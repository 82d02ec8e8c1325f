/* Strict base64 decoding and encoding for JOSE (RFC 7515 §2) and JWK x5c (RFC 7517 §4.7).
 *
 * The strict checks (alphabet, no padding or exact padding, no whitespace, canonical trailing bits)
 * are ours; the bit shuffling is OpenSSL's EVP_DecodeBlock / EVP_EncodeBlock. Nothing allocates:
 * the caller passes the output buffer. */
#ifndef AOAI_GUARD_B64URL_H
#define AOAI_GUARD_B64URL_H

#include <stddef.h>

/* Upper bound of the decoded size of n encoded characters. */
#define AG_B64_DECODED_MAX(n) ((((n) + 3) / 4) * 3)
/* Buffer size ag_b64url_encode needs for n input bytes (padded length + NUL). */
#define AG_B64URL_ENCODE_CAP(n) ((((n) + 2) / 3) * 4 + 1)

/* Decodes unpadded base64url in[0..len) into out[0..cap); 0 and *out_len on success, -1 when the input
 * has padding, '+', '/', whitespace or any other byte outside [A-Za-z0-9_-], a length of 4k+1, or
 * non-zero trailing bits, or when out is too small. An empty input decodes to 0 bytes. */
int ag_b64url_decode(const char *in, size_t len, unsigned char *out, size_t cap, size_t *out_len);

/* Decodes padded standard base64 (the x5c form): length a multiple of 4, '=' only as the final one or
 * two characters, canonical trailing bits, no whitespace. 0 and *out_len, or -1. */
int ag_b64_decode(const char *in, size_t len, unsigned char *out, size_t cap, size_t *out_len);

/* Encodes in[0..len) as unpadded base64url into out (cap >= AG_B64URL_ENCODE_CAP(len)), NUL-terminated.
 * Returns 0 and *out_len (without the NUL), or -1 when out is too small. */
int ag_b64url_encode(const unsigned char *in, size_t len, char *out, size_t cap, size_t *out_len);

#endif
