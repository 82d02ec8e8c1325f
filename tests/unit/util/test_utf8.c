/* ag_utf8_valid_prefix: its sixteen- and eight-bytes-at-a-time ASCII paths must agree with a plain byte-by-byte
 * reading of RFC 3629 on every input; and the boundaries it must reject. ag_json_plain_prefix:
 * its eight-bytes-at-a-time scan agrees with a byte loop. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "aoai_guard/json_strict.h"
#include "check.h"

/* The oracle: one code point at a time, no shortcuts. */
static size_t reference(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i], need, cp;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF)
            need = 1, cp = c & 0x1F;
        else if (c >= 0xE0 && c <= 0xEF)
            need = 2, cp = c & 0x0F;
        else if (c >= 0xF0 && c <= 0xF4)
            need = 3, cp = c & 0x07;
        else
            return i;
        for (unsigned k = 1; k <= need; k++) {
            if (i + k >= len || (s[i + k] & 0xC0) != 0x80)
                return i;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((need == 2 && cp < 0x800) || (need == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return i;
        i += need + 1;
    }
    return len;
}

int main(void)
{
    const unsigned char *t = (const unsigned char *)"plain ascii text of some length, more than eight bytes";
    CHECK_INT(ag_utf8_valid_prefix(t, strlen((const char *)t)), strlen((const char *)t));
    CHECK_INT(ag_utf8_valid_prefix((const unsigned char *)"abcdefgh\xC3\xA9", 10), 10);
    CHECK_INT(ag_utf8_valid_prefix((const unsigned char *)"abcdefghij\xC0\xAF", 12), 10); /* overlong */
    CHECK_INT(ag_utf8_valid_prefix((const unsigned char *)"abcdefgh\xED\xA0\x80", 11), 8); /* surrogate */
    CHECK_INT(ag_utf8_valid_prefix((const unsigned char *)"abcdefgh\xF4\x90\x80\x80", 12), 8); /* > U+10FFFF */
    CHECK_INT(ag_utf8_valid_prefix((const unsigned char *)"abcdefgh\xE2\x82", 10), 8); /* truncated */

    /* Random buffers of mostly ASCII with multi-byte, truncated and invalid sequences at every
     * alignment. */
    static const char *const pieces[] = {"a", "bcdefghijk", " ", "\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80",
                                         "\x80", "\xC3", "\xE2\x82", "\xF5\x80\x80\x80", "\xED\xA0\x80", "\x7F",
                                         "\xC1\xBF", "\xEF\xBF\xBD", "\x00"};
    int diffs = 0;
    unsigned char buf[256];
    for (int iter = 0; iter < 200000; iter++) {
        size_t len = 0;
        while (len + 10 < sizeof buf) { /* the longest piece is 10 bytes */
            unsigned k = check_rnd(100) < 85 ? check_rnd(3) : check_rnd(sizeof pieces / sizeof *pieces);
            size_t pl = k == 14 ? 1 : strlen(pieces[k]);
            if (check_rnd(40) == 0)
                break;
            memcpy(buf + len, pieces[k], pl);
            len += pl;
        }
        size_t off = check_rnd(8);
        if (off > len)
            off = 0;
        if (ag_utf8_valid_prefix(buf + off, len - off) != reference(buf + off, len - off))
            diffs++;
    }
    CHECK_INT(diffs, 0);

    /* ag_json_plain_prefix against a byte loop: random bytes biased towards the ones that matter
     * ('"', '\\', controls, 0x7F, high bytes next to them), every length and alignment; sparse
     * ones in half the runs so that whole 16- and 8-byte blocks pass before the first hit. */
    static const unsigned char special[] = {'"', '\\', 0x00, 0x1F, 0x20, 0x21, 0x5B, 0x5D, 0x7F, 0x80,
                                            0x9F, 0xA2, 0xDC, 0xFF, 0x01, '\n'};
    diffs = 0;
    for (int iter = 0; iter < 200000; iter++) {
        size_t len = check_rnd(80);
        unsigned every = iter % 2 ? 10 : 70;
        for (size_t k = 0; k < len + 8; k++)
            buf[k] = check_rnd(every) == 0 ? special[check_rnd(sizeof special)] : (unsigned char)('a' + check_rnd(26));
        size_t off = check_rnd(8);
        size_t want = 0;
        while (want < len && buf[off + want] >= 0x20 && buf[off + want] != '"' && buf[off + want] != '\\')
            want++;
        if (ag_json_plain_prefix((const char *)buf + off, len) != want)
            diffs++;
    }
    CHECK_INT(diffs, 0);
    CHECK_INT(ag_json_plain_prefix("abcdefghijklmnop\"", 17), 16);
    CHECK_INT(ag_json_plain_prefix("\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80" "xyz", 12), 12);
    CHECK_INT(ag_json_plain_prefix("abc\x01" "defghijklm", 13), 3);
    return CHECK_DONE();
}
