/* Normalisation: each fold table, removals, white space, the offset map, invalid UTF-8. */
#include <stdlib.h>
#include <string.h>

#include "aoai_guard/normalize.h"
#include "check.h"

static ag_norm n;

static const char *norm(const char *s)
{
    CHECK_INT(ag_norm_run(&n, s, strlen(s)), 0);
    return n.text;
}

static void test_ascii(void)
{
    CHECK_STR(norm("Hello World!"), "Hello World!");
    CHECK_STR(n.fold, "hello world!");
    CHECK_INT(n.len, 12);
    CHECK_INT(n.src_chars, 12);
    CHECK_INT(n.folded, 0);
    CHECK_STR(norm(""), "");
    CHECK_INT(n.len, 0);
}

static void test_compat(void)
{
    /* full-width ASCII and ideographic space */
    CHECK_STR(norm("\xEF\xBD\x89\xEF\xBD\x87\xEF\xBD\x8E\xEF\xBD\x8F\xEF\xBD\x92\xEF\xBD\x85"
                   "\xE3\x80\x80\xEF\xBC\xA1\xEF\xBC\x91"),
              "ignore A1");
    CHECK_INT(n.src_chars, 9);
    CHECK_INT(n.folded, 8);
    /* mathematical bold / italic / sans-serif letters and digits */
    CHECK_STR(norm("\xF0\x9D\x90\xA2\xF0\x9D\x90\xA0\xF0\x9D\x90\xA7\xF0\x9D\x90\xA8"
                   "\xF0\x9D\x90\xAB\xF0\x9D\x90\x9E"), "ignore"); /* U+1D422.. bold small */
    CHECK_STR(norm("\xF0\x9D\x91\xA8\xF0\x9D\x92\x9B"), "Az");   /* U+1D468 bold italic A, U+1D49B z */
    CHECK_STR(norm("\xF0\x9D\x9F\x8F\xF0\x9D\x9F\x90\xF0\x9D\x9F\xBF"), "129"); /* U+1D7CF,1D7D0,1D7FF */
    /* circled / enclosed letters and numbers */
    CHECK_STR(norm("\xE2\x92\xB6\xE2\x93\x91\xE2\x91\xA0\xE2\x91\xB3\xF0\x9F\x85\x90"), "Ab120A");
    CHECK_STR(norm("\xE2\x92\x9C"), "(a)");
    /* super- and subscripts */
    CHECK_STR(norm("x\xC2\xB2\xE2\x82\x83\xE2\x81\xBF"), "x23n");
    /* ligatures and roman numerals */
    CHECK_STR(norm("\xEF\xAC\x81le \xEF\xAC\x82ow \xE2\x85\xAB"), "file flow XII");
    /* letterlike: double-struck H, Kelvin sign, script l */
    CHECK_STR(norm("\xE2\x84\x8D\xE2\x84\xAA\xE2\x84\x93"), "HKl");
    /* ellipsis */
    CHECK_STR(norm("wait\xE2\x80\xA6"), "wait...");
}

static void test_confusables_and_accents(void)
{
    /* Cyrillic i, o, e inside a Latin word */
    CHECK_STR(norm("\xD1\x96gn\xD0\xBEr\xD0\xB5"), "ignore");
    /* Greek capitals that look Latin; Gamma has no Latin look-alike and stays */
    CHECK_STR(norm("\xCE\x91\xCE\x92\xCE\x93"), "AB\xCE\x93");
    CHECK_STR(n.fold, "ab\xCE\xB3"); /* case-folded to small gamma */
    /* precomposed and decomposed accents */
    CHECK_STR(norm("caf\xC3\xA9 cafe\xCC\x81 \xC5\x81\xC3\xB3""d\xC5\xBA"), "cafe cafe Lodz");
    /* Cyrillic letter without Latin look-alike keeps, but case-folds */
    CHECK_STR(norm("\xD0\x96"), "\xD0\x96");
    CHECK_STR(n.fold, "\xD0\xB6");
    /* dashes and quotes */
    CHECK_STR(norm("a\xE2\x80\x93""b \xE2\x80\x9Cq\xE2\x80\x9D"), "a-b \"q\"");
}

static void test_removals(void)
{
    /* zero-width space inside a word, soft hyphen, BOM, word joiner */
    CHECK_STR(norm("pass\xE2\x80\x8Bword ig\xC2\xADnore \xEF\xBB\xBFok\xE2\x81\xA0!"),
              "password ignore ok!");
    CHECK_INT(n.removed_invisible, 4);
    /* bidi override and isolates */
    CHECK_STR(norm("a\xE2\x80\xAE""b\xE2\x81\xA6""c"), "abc");
    CHECK_INT(n.removed_bidi, 2);
    CHECK_INT(n.removed_invisible, 0);
    /* tag characters (ASCII smuggling) */
    CHECK_STR(norm("hi\xF3\xA0\x81\x81\xF3\xA0\x81\x82"), "hi");
    CHECK_INT(n.removed_tag, 2);
    /* variation selector */
    CHECK_STR(norm("x\xEF\xB8\x8Fy"), "xy");
}

static void test_whitespace(void)
{
    CHECK_STR(norm("a \t b"), "a b");
    CHECK_STR(norm("a \r\n  b"), "a\nb");
    CHECK_STR(n.fold, "a b");
    CHECK_STR(norm("a\xC2\xA0\xE2\x80\x83z"), "a z"); /* NBSP + em space */
    CHECK_STR(norm("  x  "), " x ");
    CHECK_STR(norm("a\xE2\x80\x8B b"), "a b"); /* invisible inside a space run */
}

static void test_map(void)
{
    /* full-width "ignore" then " me": every output byte maps to its 3-byte source */
    const char *src = "\xEF\xBD\x89\xEF\xBD\x87\xEF\xBD\x8E\xEF\xBD\x8F\xEF\xBD\x92\xEF\xBD\x85 me";
    norm(src);
    CHECK_STR(n.text, "ignore me");
    size_t ob, oe;
    ag_norm_span(&n, 0, 6, &ob, &oe);
    CHECK_INT(ob, 0);
    CHECK_INT(oe, 18);
    ag_norm_span(&n, 7, 9, &ob, &oe);
    CHECK_INT(ob, 19);
    CHECK_INT(oe, 21);
    /* a match across a removed zero-width character covers it */
    norm("x pass\xE2\x80\x8Bword y");
    ag_norm_span(&n, 2, 10, &ob, &oe);
    CHECK_INT(ob, 2);
    CHECK_INT(oe, 13);
    /* expansion: both bytes of "fi" map to the ligature */
    norm("a\xEF\xAC\x81");
    CHECK_STR(n.text, "afi");
    CHECK_INT(n.start[1], 1);
    CHECK_INT(n.end[1], 4);
    CHECK_INT(n.start[2], 1);
    CHECK_INT(n.end[2], 4);
    /* collapsed white space maps to the whole run */
    norm("a \t\n b");
    ag_norm_span(&n, 1, 2, &ob, &oe);
    CHECK_INT(ob, 1);
    CHECK_INT(oe, 5);
    /* out of range: maps to the end */
    ag_norm_span(&n, 99, 100, &ob, &oe);
    CHECK_INT(ob, 6);
    CHECK_INT(oe, 6);
}

static void test_invalid_utf8(void)
{
    const char src[] = "a\xFF" "b\xE2\x82";
    CHECK_INT(ag_norm_run(&n, src, sizeof src - 1), 0);
    CHECK_STR(n.text, "a\xEF\xBF\xBD" "b\xEF\xBF\xBD\xEF\xBF\xBD");
    CHECK_INT(n.start[1], 1);
    CHECK_INT(n.end[1], 2);
    CHECK_INT(n.start[5], 3); /* each byte of the truncated sequence is its own U+FFFD */
    CHECK_INT(n.end[5], 4);
    CHECK_INT(n.start[8], 4);
    /* overlong and surrogate encodings are invalid too */
    const char bad[] = "\xC0\xAF\xED\xA0\x80";
    CHECK_INT(ag_norm_run(&n, bad, sizeof bad - 1), 0);
    CHECK_INT(n.len, 15);
}

static void test_identity_and_growth(void)
{
    /* printable ASCII with single spaces: unchanged, no map needed */
    norm("Plain text, single spaces.");
    CHECK(n.identity);
    size_t ob, oe;
    ag_norm_span(&n, 6, 10, &ob, &oe);
    CHECK_INT(ob, 6);
    CHECK_INT(oe, 10);
    CHECK_STR(n.fold, "plain text, single spaces.");
    norm("two  spaces");
    CHECK(!n.identity);
    CHECK_STR(n.text, "two spaces");
    norm("tab\there");
    CHECK(!n.identity);
    /* output longer than the input: small roman numeral eight (3 bytes) becomes "viii" */
    static char big[3 * 2000 + 1], want[4 * 2000 + 1];
    for (int k = 0; k < 2000; k++) {
        memcpy(big + 3 * k, "\xE2\x85\xB7", 3);
        memcpy(want + 4 * k, "viii", 4);
    }
    big[6000] = want[8000] = '\0';
    CHECK_STR(norm(big), want);
    CHECK_INT(n.len, 8000);
    CHECK_INT(n.start[7999], 5997);
    CHECK_INT(n.end[7999], 6000);
    /* every byte invalid: three output bytes each */
    static char bad[1500];
    memset(bad, 0xFF, sizeof bad);
    CHECK_INT(ag_norm_run(&n, bad, sizeof bad), 0);
    CHECK_INT(n.len, 4500);
    CHECK_INT(n.start[4499], 1499);
}

static void test_fold_dup(void)
{
    char *f = ag_norm_fold_dup("  \xEF\xBC\xA8""ELLO  W\xD0\x9Erld ");
    CHECK_STR(f, " hello world ");
    free(f);
    f = ag_norm_fold_dup("Stra\xC3\x9F""e");
    CHECK_STR(f, "stra\xC3\x9F""e"); /* sharp s is kept (no length-changing folds) */
    free(f);
}

/* The fast path (printable ASCII with single spaces: checked, copied and folded sixteen or eight
 * bytes at a time) on texts of every length up to 120 built from printable bytes, single and double
 * spaces, and the bytes that must send a text to the general path (control bytes, DEL, bytes above
 * 0x7F) at every offset of a block: such a text must never take it; a text that takes it must come
 * out unchanged, folded to lower case and mapped byte for byte. With SSE2 the check is exact, so
 * every plain text must take it. */
static void test_ascii_fast_path(void)
{
    static const char *const atoms[] = { "a", "Z", "Hello", "WORLD", " ", " ", " ", "  ", ",", "~", "@", "[",
                                         "`", "{", "0", "\t", "\n", "\x7f", "\x1f", "\x80", "\xc3\xa9" };
    const size_t natoms = sizeof atoms / sizeof atoms[0];
    static check_text t;
    int wrong = 0, fast = 0;
    for (int iter = 0; iter < 20000; iter++) {
        t.len = 0;
        size_t want = 1 + check_rnd(120);
        while (t.len < want) { /* a word, then mostly a single space, now and then anything */
            check_put(&t, atoms[check_rnd(4)]);
            check_put(&t, check_rnd(24) ? " " : atoms[check_rnd((unsigned)natoms)]);
        }
        bool plain = true;
        for (size_t k = 0; k < t.len; k++) {
            unsigned char c = (unsigned char)t.buf[k];
            if (c < 0x20 || c > 0x7E || (c == ' ' && k > 0 && t.buf[k - 1] == ' '))
                plain = false;
        }
        if (ag_norm_run(&n, t.buf, t.len) != 0) {
            wrong++;
            continue;
        }
        fast += n.identity;
        if (n.identity && !plain)
            wrong++;
#if defined(__SSE2__)
        if (plain && !n.identity)
            wrong++;
#endif
        if (!n.identity)
            continue;
        if (n.len != t.len || memcmp(n.text, t.buf, t.len) != 0)
            wrong++;
        for (size_t k = 0; k < t.len; k++) {
            char c = t.buf[k];
            if (n.fold[k] != (c >= 'A' && c <= 'Z' ? (char)(c + 0x20) : c))
                wrong++;
        }
        size_t b = check_rnd((unsigned)t.len), e = b + 1 + check_rnd((unsigned)(t.len - b)), ob, oe; /* not empty */
        ag_norm_span(&n, b, e, &ob, &oe);
        if (ob != b || oe != e)
            wrong++;
    }
    CHECK_INT(wrong, 0);
    CHECK(fast > 5000); /* the fast path did run */
}

int main(void)
{
    ag_norm_init(&n);
    test_ascii();
    test_compat();
    test_confusables_and_accents();
    test_removals();
    test_whitespace();
    test_map();
    test_invalid_utf8();
    test_identity_and_growth();
    test_ascii_fast_path();
    test_fold_dup();
    ag_norm_free(&n);
    return CHECK_DONE();
}
