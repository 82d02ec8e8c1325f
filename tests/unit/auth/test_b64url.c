/* Strict base64url / base64 (b64url.h): accepted forms decode exactly, every lenient form is refused. */
#include <stdlib.h>
#include <string.h>

#include "aoai_guard/b64url.h"
#include "check.h"

/* Decodes s with ag_b64url_decode; returns the length or -1, output in out. */
static long dec(const char *s, unsigned char *out, size_t cap)
{
    size_t n = 0;
    return ag_b64url_decode(s, strlen(s), out, cap, &n) == 0 ? (long)n : -1;
}

static long dec_std(const char *s, unsigned char *out, size_t cap)
{
    size_t n = 0;
    return ag_b64_decode(s, strlen(s), out, cap, &n) == 0 ? (long)n : -1;
}

int main(void)
{
    unsigned char out[256];

    /* Accepted unpadded base64url, exact bytes. */
    CHECK_INT(dec("", out, sizeof out), 0);
    CHECK_INT(dec("QQ", out, sizeof out), 1);
    CHECK(memcmp(out, "A", 1) == 0);
    CHECK_INT(dec("QUI", out, sizeof out), 2);
    CHECK(memcmp(out, "AB", 2) == 0);
    CHECK_INT(dec("QUJD", out, sizeof out), 3);
    CHECK(memcmp(out, "ABC", 3) == 0);
    CHECK_INT(dec("_-8", out, sizeof out), 2);
    CHECK(out[0] == 0xff && out[1] == 0xef);
    CHECK_INT(dec("-_-_", out, sizeof out), 3);
    CHECK(out[0] == 0xfb && out[1] == 0xff && out[2] == 0xbf);
    CHECK_INT(dec("AQAB", out, sizeof out), 3);
    CHECK(out[0] == 0x01 && out[1] == 0x00 && out[2] == 0x01);

    /* Refused: padding, the standard alphabet, whitespace, bad length, non-canonical trailing bits. */
    CHECK_INT(dec("QQ==", out, sizeof out), -1);
    CHECK_INT(dec("QQ=", out, sizeof out), -1);
    CHECK_INT(dec("QUI=", out, sizeof out), -1);
    CHECK_INT(dec("Q", out, sizeof out), -1);
    CHECK_INT(dec("QUJDQ", out, sizeof out), -1);
    CHECK_INT(dec("QR", out, sizeof out), -1);   /* 'R' leaves a 1 in the unused low bits */
    CHECK_INT(dec("QUJ", out, sizeof out), -1);  /* 'J' likewise for a 3-character group */
    CHECK_INT(dec("QU+D", out, sizeof out), -1);
    CHECK_INT(dec("QU/D", out, sizeof out), -1);
    CHECK_INT(dec("QU D", out, sizeof out), -1);
    CHECK_INT(dec("QUJD\n", out, sizeof out), -1);
    CHECK_INT(dec(" QUJD", out, sizeof out), -1);
    CHECK_INT(dec("QU.D", out, sizeof out), -1);
    size_t n = 0;
    CHECK_INT(ag_b64url_decode("QU\0D", 4, out, sizeof out, &n), -1);

    /* Output capacity: exact size is enough, one byte less is refused without overflow. */
    unsigned char exact[2];
    CHECK_INT(dec("QUI", exact, sizeof exact), 2);
    CHECK(memcmp(exact, "AB", 2) == 0);
    CHECK_INT(dec("QUI", exact, 1), -1);
    CHECK_INT(dec("QUJD", exact, 2), -1);

    /* Round trip for every length 0..200 (crosses the internal 1024-character chunking at 768+). */
    unsigned char in[1200], back[1200];
    char enc[AG_B64URL_ENCODE_CAP(1200)];
    for (size_t i = 0; i < sizeof in; i++)
        in[i] = (unsigned char)(i * 37 + 11);
    int bad = 0;
    size_t lens[] = {0, 1, 2, 3, 4, 5, 31, 32, 33, 255, 256, 767, 768, 769, 770, 1023, 1024, 1200};
    for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
        size_t el = 0, dl = 0;
        if (ag_b64url_encode(in, lens[k], enc, sizeof enc, &el) != 0 || strlen(enc) != el ||
            strchr(enc, '=') || strchr(enc, '+') || strchr(enc, '/') ||
            ag_b64url_decode(enc, el, back, sizeof back, &dl) != 0 || dl != lens[k] || memcmp(in, back, dl) != 0)
            bad++;
    }
    CHECK_INT(bad, 0);
    size_t el = 0;
    CHECK_INT(ag_b64url_encode((const unsigned char *)"ABC", 3, enc, 4, &el), -1); /* needs 5 */
    CHECK_INT(ag_b64url_encode((const unsigned char *)"\xff\xef", 2, enc, 5, &el), 0);
    CHECK_STR(enc, "_-8");

    /* Standard padded base64 (x5c). */
    CHECK_INT(dec_std("QQ==", out, sizeof out), 1);
    CHECK(out[0] == 'A');
    CHECK_INT(dec_std("QUI=", out, sizeof out), 2);
    CHECK(memcmp(out, "AB", 2) == 0);
    CHECK_INT(dec_std("QUJD", out, sizeof out), 3);
    CHECK_INT(dec_std("QUJDRA==", out, sizeof out), 4);
    CHECK(memcmp(out, "ABCD", 4) == 0);
    CHECK_INT(dec_std("+/8=", out, sizeof out), 2);
    CHECK(out[0] == 0xfb && out[1] == 0xff);
    CHECK_INT(dec_std("QQ", out, sizeof out), -1);     /* padding required */
    CHECK_INT(dec_std("QR==", out, sizeof out), -1);   /* non-canonical */
    CHECK_INT(dec_std("QUJ=", out, sizeof out), -1);   /* non-canonical */
    CHECK_INT(dec_std("Q===", out, sizeof out), -1);
    CHECK_INT(dec_std("QQ=A", out, sizeof out), -1);
    CHECK_INT(dec_std("-_8=", out, sizeof out), -1);   /* url alphabet */
    CHECK_INT(dec_std("QU JD", out, sizeof out), -1);
    CHECK_INT(dec_std("", out, sizeof out), -1);
    CHECK_INT(dec_std("QUJDRA==", out, 3), -1);
    return CHECK_DONE();
}
