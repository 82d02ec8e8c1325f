/* Strict base64url / base64: validation here, conversion by OpenSSL EVP_DecodeBlock/EVP_EncodeBlock. */
#include "aoai_guard/b64url.h"

#include <stdbool.h>
#include <string.h>
#include <openssl/evp.h>

/* 6-bit value of c in the given alphabet, or -1. */
static int b64_value(unsigned char c, bool url)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == (url ? '-' : '+'))
        return 62;
    if (c == (url ? '_' : '/'))
        return 63;
    return -1;
}

/* The final character of a group of `rem` (2 or 3) characters must leave its unused low bits zero. */
static bool canonical_tail(int last_value, size_t rem)
{
    if (rem == 2)
        return (last_value & 0x0F) == 0;
    if (rem == 3)
        return (last_value & 0x03) == 0;
    return true;
}

/* Translates groups of base64url into standard base64 in a small stack buffer, decoding each chunk
 * with EVP_DecodeBlock. Input already validated; the final partial group is padded with '='. */
static int decode_url_chunks(const char *in, size_t len, unsigned char *out, size_t *out_len)
{
    char chunk[1024 + 4];
    size_t pos = 0, written = 0;
    while (pos < len) {
        size_t take = len - pos;
        if (take > 1024)
            take = 1024;
        size_t pad = 0;
        for (size_t i = 0; i < take; i++) {
            char c = in[pos + i];
            chunk[i] = c == '-' ? '+' : c == '_' ? '/' : c;
        }
        while ((take + pad) % 4 != 0)
            chunk[take + pad++] = '=';
        int n = EVP_DecodeBlock(out + written, (const unsigned char *)chunk, (int)(take + pad));
        if (n < 0)
            return -1;
        written += (size_t)n - pad; /* EVP_DecodeBlock counts the pad positions as zero bytes */
        pos += take;
    }
    *out_len = written;
    return 0;
}

int ag_b64url_decode(const char *in, size_t len, unsigned char *out, size_t cap, size_t *out_len)
{
    size_t rem = len % 4;
    if (rem == 1)
        return -1;
    size_t need = (len / 4) * 3 + (rem ? rem - 1 : 0);
    if (need > cap)
        return -1;
    int last = 0;
    for (size_t i = 0; i < len; i++) {
        last = b64_value((unsigned char)in[i], true);
        if (last < 0)
            return -1;
    }
    if (len && !canonical_tail(last, rem))
        return -1;
    if (len == 0) {
        *out_len = 0;
        return 0;
    }
    /* The output buffer may be exactly `need` long; EVP_DecodeBlock writes whole groups of 3, so the
     * final group goes through a scratch buffer. */
    size_t whole = len - rem;
    size_t done = 0;
    if (whole && decode_url_chunks(in, whole, out, &done) != 0)
        return -1;
    if (rem) {
        unsigned char tail[3];
        size_t t = 0;
        if (decode_url_chunks(in + whole, rem, tail, &t) != 0 || t != rem - 1)
            return -1;
        memcpy(out + done, tail, t);
        done += t;
    }
    *out_len = done;
    return 0;
}

int ag_b64_decode(const char *in, size_t len, unsigned char *out, size_t cap, size_t *out_len)
{
    if (len == 0 || len % 4 != 0 || len > (size_t)0x7fffffff)
        return -1;
    size_t pad = 0;
    if (in[len - 1] == '=')
        pad = (in[len - 2] == '=') ? 2 : 1;
    size_t body = len - pad;
    int last = 0;
    for (size_t i = 0; i < body; i++) {
        last = b64_value((unsigned char)in[i], false);
        if (last < 0)
            return -1;
    }
    if (!canonical_tail(last, pad ? 4 - pad : 0))
        return -1;
    size_t need = len / 4 * 3 - pad;
    if (need > cap)
        return -1;
    /* EVP_DecodeBlock writes len/4*3 bytes; decode all but the last group in place, the last via a
     * scratch buffer so that out may be exactly `need` long. */
    size_t head = len - 4, done = 0;
    if (head) {
        int n = EVP_DecodeBlock(out, (const unsigned char *)in, (int)head);
        if (n < 0)
            return -1;
        done = (size_t)n;
    }
    unsigned char tail[3];
    if (EVP_DecodeBlock(tail, (const unsigned char *)in + head, 4) != 3)
        return -1;
    memcpy(out + done, tail, 3 - pad);
    *out_len = done + 3 - pad;
    return 0;
}

int ag_b64url_encode(const unsigned char *in, size_t len, char *out, size_t cap, size_t *out_len)
{
    if (cap < AG_B64URL_ENCODE_CAP(len) || len > (size_t)0x3fffffff)
        return -1;
    int n = EVP_EncodeBlock((unsigned char *)out, in, (int)len);
    if (n < 0)
        return -1;
    size_t k = (size_t)n;
    while (k > 0 && out[k - 1] == '=')
        k--;
    for (size_t i = 0; i < k; i++)
        out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
    out[k] = '\0';
    *out_len = k;
    return 0;
}
