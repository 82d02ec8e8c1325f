/* NFKC-style folding with an offset map (see normalize.h and docs/policy.md "Normalisation").
 *
 * No ICU: the tables below cover the compatibility and look-alike forms that matter for evading
 * content rules. Each input code point goes through: drop (invisible, bidi, tag, combining mark)
 * -> white space (collapsed) -> compatibility fold (may yield ASCII text or another code point)
 * -> confusable / accent fold to ASCII -> emitted as is. */
#include "aoai_guard/normalize.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

enum cp_kind {
    CP_KEEP,      /* emit rep (possibly rewritten) */
    CP_ASCII,     /* emit the ASCII string asc */
    CP_INVISIBLE,
    CP_BIDI,
    CP_TAG,
    CP_MARK,      /* combining mark: dropped */
    CP_SPACE,
    CP_NEWLINE,
};

typedef struct fold_out {
    enum cp_kind kind;
    uint32_t rep;     /* CP_KEEP: the code point to emit */
    char asc[6];      /* CP_ASCII: NUL-terminated */
    bool folded;      /* a fold table rewrote the character */
} fold_out;

/* Latin-1 U+00C0..U+00FF with accents removed; '.' keeps the character. */
static const char latin1_fold[64 + 1] =
    "AAAAAA.CEEEEIIII.NOOOOO.OUUUUY.."
    "aaaaaa.ceeeeiiii.nooooo.ouuuuy.y";
/* Latin Extended-A U+0100..U+017F with accents removed; '.' keeps the character. */
static const char latin_ext_a_fold[128 + 1] =
    "AaAaAaCcCcCcCcDd" "DdEeEeEeEeEeGgGg" "GgGgHhHhIiIiIiIi" "Ii..JjKkkLlLlLlL"
    "lLlNnNnNnnNnOoOo" "Oo..RrRrRrSsSsSs" "SsTtTtTtUuUuUuUu" "UuUuWwYyYZzZzZzs";

/* Cyrillic and Greek letters that render like Latin ones (a subset of Unicode UTS #39
 * confusables), plus other single look-alikes. Returns the ASCII letter or 0. */
static char confusable(uint32_t cp)
{
    switch (cp) {
    /* Cyrillic capitals */
    case 0x0405: return 'S'; case 0x0406: return 'I'; case 0x0408: return 'J';
    case 0x0410: return 'A'; case 0x0412: return 'B'; case 0x0415: return 'E';
    case 0x041A: return 'K'; case 0x041C: return 'M'; case 0x041D: return 'H';
    case 0x041E: return 'O'; case 0x0420: return 'P'; case 0x0421: return 'C';
    case 0x0422: return 'T'; case 0x0423: return 'Y'; case 0x0425: return 'X';
    case 0x04C0: return 'I'; case 0x051A: return 'Q'; case 0x051C: return 'W';
    /* Cyrillic small letters */
    case 0x0430: return 'a'; case 0x0435: return 'e'; case 0x043A: return 'k';
    case 0x043E: return 'o'; case 0x0440: return 'p'; case 0x0441: return 'c';
    case 0x0443: return 'y'; case 0x0445: return 'x'; case 0x0455: return 's';
    case 0x0456: return 'i'; case 0x0458: return 'j'; case 0x04BB: return 'h';
    case 0x04CF: return 'l'; case 0x0501: return 'd'; case 0x051B: return 'q';
    case 0x051D: return 'w';
    /* Greek capitals */
    case 0x0391: return 'A'; case 0x0392: return 'B'; case 0x0395: return 'E';
    case 0x0396: return 'Z'; case 0x0397: return 'H'; case 0x0399: return 'I';
    case 0x039A: return 'K'; case 0x039C: return 'M'; case 0x039D: return 'N';
    case 0x039F: return 'O'; case 0x03A1: return 'P'; case 0x03A4: return 'T';
    case 0x03A5: return 'Y'; case 0x03A7: return 'X'; case 0x03F9: return 'C';
    /* Greek small letters */
    case 0x03B1: return 'a'; case 0x03B3: return 'y'; case 0x03B9: return 'i';
    case 0x03BA: return 'k'; case 0x03BD: return 'v'; case 0x03BF: return 'o';
    case 0x03C1: return 'p'; case 0x03C5: return 'u'; case 0x03F2: return 'c';
    case 0x03F3: return 'j';
    /* others */
    case 0x0131: return 'i'; /* dotless i */
    case 0x0237: return 'j'; /* dotless j */
    case 0x0585: return 'o'; /* Armenian oh */
    case 0x2010: case 0x2011: case 0x2012: case 0x2013: case 0x2014: case 0x2015:
    case 0x2212: case 0xFE63: return '-';
    case 0x2018: case 0x2019: case 0x201B: case 0x2032: return '\'';
    case 0x201C: case 0x201D: case 0x201F: case 0x2033: return '"';
    }
    return 0;
}

/* Letterlike symbols U+2100..U+214F that NFKC maps to Latin letters (or short strings). */
static const char *letterlike(uint32_t cp)
{
    switch (cp) {
    case 0x2102: return "C"; case 0x210A: return "g"; case 0x210B: return "H";
    case 0x210C: return "H"; case 0x210D: return "H"; case 0x210E: return "h";
    case 0x210F: return "h"; case 0x2110: return "I"; case 0x2111: return "I";
    case 0x2112: return "L"; case 0x2113: return "l"; case 0x2115: return "N";
    case 0x2116: return "No"; case 0x2119: return "P"; case 0x211A: return "Q";
    case 0x211B: return "R"; case 0x211C: return "R"; case 0x211D: return "R";
    case 0x2120: return "SM"; case 0x2122: return "TM"; case 0x2124: return "Z";
    case 0x2128: return "Z"; case 0x212A: return "K"; case 0x212B: return "A";
    case 0x212C: return "B"; case 0x212D: return "C"; case 0x212F: return "e";
    case 0x2130: return "E"; case 0x2131: return "F"; case 0x2133: return "M";
    case 0x2134: return "o"; case 0x2139: return "i"; case 0x2145: return "D";
    case 0x2146: return "d"; case 0x2147: return "e"; case 0x2148: return "i";
    case 0x2149: return "j";
    }
    return NULL;
}

static const char *const roman[16] = {"I", "II", "III", "IV", "V", "VI", "VII", "VIII",
                                      "IX", "X", "XI", "XII", "L", "C", "D", "M"};
static const char *const roman_lc[16] = {"i", "ii", "iii", "iv", "v", "vi", "vii", "viii",
                                         "ix", "x", "xi", "xii", "l", "c", "d", "m"};

static void set_ascii(fold_out *o, const char *s)
{
    o->kind = CP_ASCII;
    o->folded = true;
    size_t n = strlen(s);
    if (n > sizeof o->asc - 1)
        n = sizeof o->asc - 1;
    memcpy(o->asc, s, n);
    o->asc[n] = '\0';
}

static void set_char(fold_out *o, char c)
{
    char s[2] = {c, '\0'};
    set_ascii(o, s);
}

/* Writes the decimal form of v (0..99), optionally wrapped, as the ASCII result. */
static void set_number(fold_out *o, unsigned v, const char *pre, const char *post)
{
    char buf[8];
    size_t k = 0;
    for (const char *p = pre; *p; p++)
        buf[k++] = *p;
    if (v >= 10)
        buf[k++] = (char)('0' + v / 10);
    buf[k++] = (char)('0' + v % 10);
    for (const char *p = post; *p; p++)
        buf[k++] = *p;
    buf[k] = '\0';
    set_ascii(o, buf);
}

/* Mathematical alphanumeric symbols U+1D400..U+1D7FF. */
static void math_alnum(uint32_t cp, fold_out *o)
{
    if (cp <= 0x1D6A3) { /* 13 styles of A-Z a-z */
        unsigned k = (cp - 0x1D400) % 52;
        set_char(o, (char)(k < 26 ? 'A' + k : 'a' + (k - 26)));
    } else if (cp == 0x1D6A4) {
        set_char(o, 'i');
    } else if (cp == 0x1D6A5) {
        set_char(o, 'j');
    } else if (cp >= 0x1D6A8 && cp <= 0x1D7C9) { /* 5 styles of 58 Greek symbols */
        unsigned k = (cp - 0x1D6A8) % 58;
        uint32_t g;
        if (k <= 24)
            g = (k == 17) ? 0x03F4 : 0x0391 + k;
        else if (k == 25)
            g = 0x2207;
        else if (k <= 50)
            g = 0x03B1 + (k - 26);
        else {
            static const uint32_t tail[7] = {0x2202, 0x03F5, 0x03D1, 0x03F0, 0x03D5, 0x03F1, 0x03D6};
            g = tail[k - 51];
        }
        o->kind = CP_KEEP;
        o->rep = g;
        o->folded = true;
    } else if (cp == 0x1D7CA) {
        o->kind = CP_KEEP;
        o->rep = 0x03DC;
        o->folded = true;
    } else if (cp == 0x1D7CB) {
        o->kind = CP_KEEP;
        o->rep = 0x03DD;
        o->folded = true;
    } else if (cp >= 0x1D7CE) {
        set_char(o, (char)('0' + (cp - 0x1D7CE) % 10));
    }
}

/* Compatibility folds (NFKC where it maps to ASCII, plus a few look-alike extensions). Leaves
 * o untouched when cp has no fold. */
static void compat(uint32_t cp, fold_out *o)
{
    if (cp >= 0xFF01 && cp <= 0xFF5E) { /* full-width ASCII */
        set_char(o, (char)(cp - 0xFEE0));
        return;
    }
    if (cp >= 0x1D400 && cp <= 0x1D7FF) {
        math_alnum(cp, o);
        return;
    }
    if (cp >= 0x2100 && cp <= 0x214F) {
        const char *s = letterlike(cp);
        if (s)
            set_ascii(o, s);
        else if (cp == 0x2126) { /* ohm sign -> omega */
            o->kind = CP_KEEP;
            o->rep = 0x03A9;
            o->folded = true;
        }
        return;
    }
    if (cp >= 0x2160 && cp <= 0x216F) {
        set_ascii(o, roman[cp - 0x2160]);
        return;
    }
    if (cp >= 0x2170 && cp <= 0x217F) {
        set_ascii(o, roman_lc[cp - 0x2170]);
        return;
    }
    /* enclosed alphanumerics */
    if (cp >= 0x2460 && cp <= 0x2473) { set_number(o, cp - 0x245F, "", ""); return; }
    if (cp >= 0x2474 && cp <= 0x2487) { set_number(o, cp - 0x2473, "(", ")"); return; }
    if (cp >= 0x2488 && cp <= 0x249B) { set_number(o, cp - 0x2487, "", "."); return; }
    if (cp >= 0x249C && cp <= 0x24B5) {
        char s[4] = {'(', (char)('a' + (cp - 0x249C)), ')', '\0'};
        set_ascii(o, s);
        return;
    }
    if (cp >= 0x24B6 && cp <= 0x24CF) { set_char(o, (char)('A' + (cp - 0x24B6))); return; }
    if (cp >= 0x24D0 && cp <= 0x24E9) { set_char(o, (char)('a' + (cp - 0x24D0))); return; }
    if (cp == 0x24EA || cp == 0x24FF) { set_char(o, '0'); return; }
    if (cp >= 0x24EB && cp <= 0x24F4) { set_number(o, cp - 0x24EB + 11, "", ""); return; }
    if (cp >= 0x24F5 && cp <= 0x24FE) { set_number(o, cp - 0x24F5 + 1, "", ""); return; }
    if (cp >= 0x2776 && cp <= 0x2793) { set_number(o, (cp - 0x2776) % 10 + 1, "", ""); return; }
    if (cp >= 0x3251 && cp <= 0x325F) { set_number(o, cp - 0x3251 + 21, "", ""); return; }
    if (cp >= 0x32B1 && cp <= 0x32BF) { set_number(o, cp - 0x32B1 + 36, "", ""); return; }
    if (cp >= 0x1F110 && cp <= 0x1F129) {
        char s[4] = {'(', (char)('A' + (cp - 0x1F110)), ')', '\0'};
        set_ascii(o, s);
        return;
    }
    if ((cp >= 0x1F130 && cp <= 0x1F149) || (cp >= 0x1F150 && cp <= 0x1F169) ||
        (cp >= 0x1F170 && cp <= 0x1F189)) {
        set_char(o, (char)('A' + (cp - 0x1F110) % 0x20));
        return;
    }
    if (cp >= 0x1F1E6 && cp <= 0x1F1FF) { /* regional indicators */
        set_char(o, (char)('A' + (cp - 0x1F1E6)));
        return;
    }
    /* super- and subscripts */
    if (cp >= 0x2070 && cp <= 0x209C) {
        static const char sup[] = "0i..456789+-=()n0123456789+-=()." "aeoxXhklmnpst";
        char c = sup[cp - 0x2070];
        if (c != '.' && c != 'X')
            set_char(o, c);
        return;
    }
    switch (cp) {
    case 0x00B2: set_char(o, '2'); return;
    case 0x00B3: set_char(o, '3'); return;
    case 0x00B9: set_char(o, '1'); return;
    case 0x00AA: set_char(o, 'a'); return;
    case 0x00BA: set_char(o, 'o'); return;
    case 0x00B5: o->kind = CP_KEEP; o->rep = 0x03BC; o->folded = true; return;
    case 0x2024: set_ascii(o, "."); return;
    case 0x2025: set_ascii(o, ".."); return;
    case 0x2026: set_ascii(o, "..."); return;
    case 0xFB00: set_ascii(o, "ff"); return;
    case 0xFB01: set_ascii(o, "fi"); return;
    case 0xFB02: set_ascii(o, "fl"); return;
    case 0xFB03: set_ascii(o, "ffi"); return;
    case 0xFB04: set_ascii(o, "ffl"); return;
    case 0xFB05: set_ascii(o, "st"); return;
    case 0xFB06: set_ascii(o, "st"); return;
    case 0x0132: set_ascii(o, "IJ"); return;
    case 0x0133: set_ascii(o, "ij"); return;
    }
}

static bool is_invisible(uint32_t cp)
{
    return cp == 0x00AD || cp == 0x034F || cp == 0x115F || cp == 0x1160 || cp == 0x17B4 ||
           cp == 0x17B5 || (cp >= 0x180B && cp <= 0x180F) || (cp >= 0x200B && cp <= 0x200D) ||
           (cp >= 0x2060 && cp <= 0x2064) || (cp >= 0x206A && cp <= 0x206F) || cp == 0x3164 ||
           (cp >= 0xFE00 && cp <= 0xFE0F) || cp == 0xFEFF || cp == 0xFFA0 ||
           (cp >= 0x1BCA0 && cp <= 0x1BCA3) || (cp >= 0xE0100 && cp <= 0xE01EF);
}

static bool is_bidi(uint32_t cp)
{
    return cp == 0x061C || cp == 0x200E || cp == 0x200F || (cp >= 0x202A && cp <= 0x202E) ||
           (cp >= 0x2066 && cp <= 0x2069);
}

static bool is_mark(uint32_t cp)
{
    return (cp >= 0x0300 && cp <= 0x036F) || (cp >= 0x1AB0 && cp <= 0x1AFF) ||
           (cp >= 0x1DC0 && cp <= 0x1DFF) || (cp >= 0x20D0 && cp <= 0x20FF) ||
           (cp >= 0xFE20 && cp <= 0xFE2F);
}

static bool is_space(uint32_t cp)
{
    return cp == 0x00A0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

/* Classifies one non-ASCII code point. */
static void classify(uint32_t cp, fold_out *o)
{
    o->kind = CP_KEEP;
    o->rep = cp;
    o->folded = false;
    if (is_invisible(cp)) { o->kind = CP_INVISIBLE; return; }
    if (is_bidi(cp)) { o->kind = CP_BIDI; return; }
    if (cp >= 0xE0000 && cp <= 0xE007F) { o->kind = CP_TAG; return; }
    if (is_mark(cp)) { o->kind = CP_MARK; return; }
    if (is_space(cp)) { o->kind = CP_SPACE; return; }
    if (cp == 0x0085 || cp == 0x2028 || cp == 0x2029) { o->kind = CP_NEWLINE; return; }
    compat(cp, o);
    if (o->kind != CP_KEEP)
        return;
    uint32_t c = o->rep;
    char a = 0;
    if (c >= 0xC0 && c <= 0xFF)
        a = latin1_fold[c - 0xC0] != '.' ? latin1_fold[c - 0xC0] : 0;
    else if (c >= 0x100 && c <= 0x17F)
        a = latin_ext_a_fold[c - 0x100] != '.' ? latin_ext_a_fold[c - 0x100] : 0;
    if (!a)
        a = confusable(c);
    if (a)
        set_char(o, a);
}

/* Simple case fold that keeps the UTF-8 length (ASCII, Latin-1, Latin Ext-A ligatures, Greek,
 * Cyrillic, Armenian). */
static uint32_t fold_case(uint32_t cp)
{
    if (cp >= 'A' && cp <= 'Z')
        return cp + 0x20;
    if (cp >= 0xC0 && cp <= 0xDE && cp != 0xD7)
        return cp + 0x20;
    if (cp == 0x0152)
        return 0x0153;
    if (cp >= 0x0391 && cp <= 0x03A9 && cp != 0x03A2)
        return cp + 0x20;
    if (cp >= 0x0410 && cp <= 0x042F)
        return cp + 0x20;
    if (cp >= 0x0400 && cp <= 0x040F)
        return cp + 0x50;
    if (cp >= 0x0531 && cp <= 0x0556)
        return cp + 0x30;
    return cp;
}

static size_t utf8_put(char *out, uint32_t cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decodes one UTF-8 sequence at s[i..len); returns its length, or 0 when malformed. */
static size_t utf8_get(const unsigned char *s, size_t i, size_t len, uint32_t *cp)
{
    unsigned char c = s[i];
    size_t need;
    uint32_t v;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
        v = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        v = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        v = c & 0x07;
    } else {
        return 0;
    }
    if (i + need >= len)
        return 0;
    for (size_t k = 1; k <= need; k++) {
        if ((s[i + k] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (s[i + k] & 0x3F);
    }
    if ((need == 2 && v < 0x800) || (need == 3 && (v < 0x10000 || v > 0x10FFFF)) ||
        (v >= 0xD800 && v <= 0xDFFF))
        return 0;
    *cp = v;
    return need + 1;
}

void ag_norm_init(ag_norm *n)
{
    memset(n, 0, sizeof *n);
}

void ag_norm_free(ag_norm *n)
{
    free(n->text);
    free(n->fold);
    free(n->start);
    free(n->end);
    memset(n, 0, sizeof *n);
}

/* Sets the capacity of the four arrays to cap entries (growing or shrinking); 0 or -1. */
static int resize(ag_norm *n, size_t cap)
{
    char *t = realloc(n->text, cap + 1);
    if (!t)
        return -1;
    n->text = t;
    char *f = realloc(n->fold, cap + 1);
    if (!f)
        return -1;
    n->fold = f;
    uint32_t *st = realloc(n->start, cap * sizeof *st);
    if (!st)
        return -1;
    n->start = st;
    uint32_t *en = realloc(n->end, cap * sizeof *en);
    if (!en)
        return -1;
    n->end = en;
    n->cap = cap;
    return 0;
}

/* Makes room for need output bytes, keeping what is there. */
static int reserve(ag_norm *n, size_t need)
{
    if (need <= n->cap)
        return 0;
    size_t cap = n->cap ? n->cap : 256;
    while (cap < need)
        cap *= 2;
    return resize(n, cap);
}

/* Before a run: releases an outsized buffer left by one huge text (over 1 MiB and more than 8
 * times what this run starts with), so a worker does not keep it for ever. */
static void maybe_shrink(ag_norm *n, size_t need)
{
    if (n->cap > ((size_t)1 << 20) && need < n->cap / 8) {
        size_t cap = 256;
        while (cap < need)
            cap *= 2;
        resize(n, cap); /* on failure the old, larger buffers stay valid */
    }
}

/* Appends k output bytes produced by the original range [os, oe). */
static inline void put(ag_norm *n, const char *bytes, const char *folded, size_t k, uint32_t os,
                       uint32_t oe)
{
    for (size_t j = 0; j < k; j++) {
        n->text[n->len] = bytes[j];
        n->fold[n->len] = folded[j];
        n->start[n->len] = os;
        n->end[n->len] = oe;
        n->len++;
    }
}

static inline char lower_ascii(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c + 0x20) : c;
}

#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

/* True when s[0..len) is printable ASCII (0x20..0x7E) with no two spaces in a row. May answer
 * false for some such texts (then the general path runs: the eight-byte loop's space test has false
 * marks; the sixteen-byte one has none); never true for others. */
static bool ascii_simple(const unsigned char *s, size_t len)
{
    size_t k = 0;
    unsigned char prev = 0;
#if defined(__SSE2__)
    /* sixteen bytes at a time, exactly: 0x20..0x7E are the bytes above 0x1F and below 0x7F as
     * signed bytes (0x80..0xFF are negative) */
    const __m128i below = _mm_set1_epi8(0x1F), above = _mm_set1_epi8(0x7F), space = _mm_set1_epi8(' ');
    for (; k + 16 <= len; k += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + k));
        __m128i ok = _mm_and_si128(_mm_cmpgt_epi8(v, below), _mm_cmplt_epi8(v, above));
        unsigned sp = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, space));
        if ((unsigned)_mm_movemask_epi8(ok) != 0xFFFFu || (sp & (sp >> 1)) || (prev == ' ' && (sp & 1u)))
            return false;
        prev = s[k + 15];
    }
#endif
    for (; k + 8 <= len; k += 8) {
        uint64_t x;
        memcpy(&x, s + k, 8);
        uint64_t low = (x - ONES * 0x20) & ~x & HIGHS;   /* a byte < 0x20 */
        uint64_t high = ((x + ONES * 0x01) | x) & HIGHS; /* a byte > 0x7E */
        uint64_t y = x ^ (ONES * 0x20);
        uint64_t sp = (y - ONES) & ~y & HIGHS;           /* spaces (and some false marks) */
        if (low | high | (sp & (sp >> 8)) | (prev == ' ' && s[k] == ' '))
            return false;
        prev = s[k + 7];
    }
    for (; k < len; k++) {
        unsigned char c = s[k];
        if (c < 0x20 || c > 0x7E || (c == ' ' && prev == ' '))
            return false;
        prev = c;
    }
    return true;
}

/* Lower-cases printable ASCII, sixteen (SSE2) or eight bytes at a time. */
static void fold_ascii(char *out, const unsigned char *s, size_t len)
{
    size_t k = 0;
#if defined(__SSE2__)
    const __m128i before_a = _mm_set1_epi8('A' - 1), after_z = _mm_set1_epi8('Z' + 1), bit = _mm_set1_epi8(0x20);
    for (; k + 16 <= len; k += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + k));
        __m128i upper = _mm_and_si128(_mm_cmpgt_epi8(v, before_a), _mm_cmplt_epi8(v, after_z));
        _mm_storeu_si128((__m128i *)(void *)(out + k), _mm_or_si128(v, _mm_and_si128(upper, bit)));
    }
#endif
    for (; k + 8 <= len; k += 8) {
        uint64_t x;
        memcpy(&x, s + k, 8);
        uint64_t ge_a = x + ONES * (0x80 - 'A');  /* high bit: byte >= 'A' */
        uint64_t gt_z = x + ONES * (0x7F - 'Z');  /* high bit: byte > 'Z' */
        x |= ((ge_a & ~gt_z) & HIGHS) >> 2;
        memcpy(out + k, &x, 8);
    }
    for (; k < len; k++)
        out[k] = lower_ascii((char)s[k]);
}

int ag_norm_run(ag_norm *n, const char *src, size_t len)
{
    if (len >= UINT32_MAX - 1)
        return -1;
    maybe_shrink(n, len + 8);
    if (reserve(n, len + 8) != 0) /* grown below when folds expand the text */
        return -1;
    const unsigned char *s = (const unsigned char *)src;
    n->len = 0;
    n->src_len = len;
    n->src_chars = 0;
    n->removed_invisible = n->removed_bidi = n->removed_tag = n->folded = 0;
    n->identity = false;
    /* Fast path: printable ASCII with single spaces comes out unchanged. Checked, copied and
     * case-folded eight bytes at a time. */
    if (ascii_simple(s, len)) {
        memcpy(n->text, s, len);
        fold_ascii(n->fold, s, len);
        n->identity = true;
        n->len = len;
        n->src_chars = len;
        n->text[len] = '\0';
        n->fold[len] = '\0';
        return 0;
    }
    size_t i = 0;
    bool ws = false, ws_nl = false;
    uint32_t ws_s = 0, ws_e = 0;
    while (i < len) {
        unsigned char c = s[i];
        if (c > 0x20 && c < 0x7F) { /* printable ASCII: the common case */
            if (ws) {
                put(n, ws_nl ? "\n" : " ", " ", 1, ws_s, ws_e);
                ws = false;
            }
            if (reserve(n, n->len + (len - i) + 8) != 0) /* the run emits at most len - i */
                return -1;
            size_t j = i;
            while (j < len && s[j] > 0x20 && s[j] < 0x7F) {
                n->text[n->len] = (char)s[j];
                n->fold[n->len] = lower_ascii((char)s[j]);
                n->start[n->len] = (uint32_t)j;
                n->end[n->len] = (uint32_t)j + 1;
                n->len++;
                j++;
            }
            n->src_chars += j - i;
            i = j;
            continue;
        }
        uint32_t cp;
        size_t clen;
        if (c < 0x80) {
            cp = c;
            clen = 1;
        } else {
            clen = utf8_get(s, i, len, &cp);
            if (clen == 0) { /* invalid byte: U+FFFD for this one byte */
                cp = 0xFFFD;
                clen = 1;
            }
        }
        n->src_chars++;
        if (reserve(n, n->len + 8) != 0) /* one character emits at most 6 bytes (+1 space) */
            return -1;
        uint32_t os = (uint32_t)i, oe = (uint32_t)(i + clen);
        i += clen;
        fold_out o;
        if (cp < 0x80) {
            o.folded = false;
            if (cp == ' ' || cp == '\t' || cp == '\v' || cp == '\f')
                o.kind = CP_SPACE;
            else if (cp == '\n' || cp == '\r')
                o.kind = CP_NEWLINE;
            else {
                o.kind = CP_KEEP; /* other control characters and DEL are kept */
                o.rep = cp;
            }
        } else {
            classify(cp, &o);
        }
        switch (o.kind) {
        case CP_INVISIBLE: n->removed_invisible++; continue;
        case CP_BIDI: n->removed_bidi++; continue;
        case CP_TAG: n->removed_tag++; continue;
        case CP_MARK: continue;
        case CP_SPACE:
        case CP_NEWLINE:
            if (!ws) {
                ws = true;
                ws_nl = false;
                ws_s = os;
            }
            ws_e = oe;
            if (o.kind == CP_NEWLINE)
                ws_nl = true;
            continue;
        default:
            break;
        }
        if (ws) {
            put(n, ws_nl ? "\n" : " ", " ", 1, ws_s, ws_e);
            ws = false;
        }
        if (o.folded)
            n->folded++;
        if (o.kind == CP_ASCII) {
            char f[sizeof o.asc];
            size_t k = strlen(o.asc);
            for (size_t j = 0; j < k; j++)
                f[j] = lower_ascii(o.asc[j]);
            put(n, o.asc, f, k, os, oe);
        } else {
            char b[4], f[4];
            size_t k = utf8_put(b, o.rep);
            uint32_t lc = fold_case(o.rep);
            if (utf8_put(f, lc) != k)
                memcpy(f, b, k);
            put(n, b, f, k, os, oe);
        }
    }
    if (ws)
        put(n, ws_nl ? "\n" : " ", " ", 1, ws_s, ws_e);
    n->text[n->len] = '\0';
    n->fold[n->len] = '\0';
    return 0;
}

void ag_norm_span(const ag_norm *n, size_t nb, size_t ne, size_t *ob, size_t *oe)
{
    if (n->len == 0 || nb >= n->len) {
        *ob = *oe = n->src_len;
        return;
    }
    if (ne > n->len)
        ne = n->len;
    if (ne <= nb)
        ne = nb + 1;
    if (n->identity) {
        *ob = nb;
        *oe = ne;
        return;
    }
    *ob = n->start[nb];
    *oe = n->end[ne - 1];
}

char *ag_norm_fold_dup(const char *s)
{
    ag_norm n;
    ag_norm_init(&n);
    if (ag_norm_run(&n, s, strlen(s)) != 0) {
        ag_norm_free(&n);
        return NULL;
    }
    char *out = malloc(n.len + 1);
    if (out)
        memcpy(out, n.fold, n.len + 1);
    ag_norm_free(&n);
    return out;
}
