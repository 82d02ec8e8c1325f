/* Text normalisation for content matching, with a map back to the original bytes.
 *
 * The policy engine never matches on the raw text a caller sent: trivial encodings (full-width
 * letters, mathematical alphanumerics, zero-width characters inside a word, Cyrillic look-alikes)
 * would slip past. ag_norm_run() produces:
 *   text: an NFKC-style folded copy (see docs/policy.md "Normalisation" for the exact tables),
 *         invisible / bidi / tag characters and combining marks removed, accents folded, runs of
 *         white space collapsed to one ' ' (or one '\n' when the run holds a line break);
 *   fold: the same bytes case-folded one for one (same length as text; '\n' becomes ' '), used for
 *         keyword and literal matching;
 *   map:  for every byte of text, the half-open byte range [start[i], end[i]) of the original
 *         character(s) that produced it, so a match found on text can be reported (and redacted)
 *         on the original offsets (not filled for the common all-ASCII case: see identity).
 * The output is always valid UTF-8: an invalid input byte becomes U+FFFD mapped to that byte.
 * Buffers are owned by the ag_norm and reused across calls (one per worker, see ag_policy_scratch). */
#ifndef AOAI_GUARD_NORMALIZE_H
#define AOAI_GUARD_NORMALIZE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ag_norm {
    char *text;          /* normalised UTF-8, NUL-terminated */
    char *fold;          /* text, case-folded byte for byte, NUL-terminated */
    uint32_t *start;     /* start[i]: original offset of the character that produced text[i] */
    uint32_t *end;       /* end[i]: original offset just past that character */
    size_t len;          /* bytes in text (and fold) */
    bool identity;       /* text is the input byte for byte (printable ASCII, single spaces):
                          * start/end are then not filled; use ag_norm_span() */
    size_t cap;          /* allocated bytes in text/fold (entries in start/end) */
    size_t src_len;      /* bytes of the last input */
    size_t src_chars;    /* code points of the last input */
    unsigned removed_invisible; /* zero-width, soft hyphen, variation selectors */
    unsigned removed_bidi;      /* bidi embedding / override / isolate controls */
    unsigned removed_tag;       /* tag characters U+E0000..U+E007F */
    unsigned folded;            /* characters rewritten by a compatibility or confusable fold */
} ag_norm;

/* Initialises an empty normaliser (no allocation until the first run). */
void ag_norm_init(ag_norm *n);

/* Releases the buffers; the struct may be reused after ag_norm_init(). */
void ag_norm_free(ag_norm *n);

/* Normalises src[0..len) into n (replacing the previous result). Returns 0, or -1 when out of
 * memory or len exceeds UINT32_MAX - 1. */
int ag_norm_run(ag_norm *n, const char *src, size_t len);

/* Maps the normalised byte range [nb, ne) (ne > nb) to the original byte range [*ob, *oe). */
void ag_norm_span(const ag_norm *n, size_t nb, size_t ne, size_t *ob, size_t *oe);

/* Normalises and case-folds a short string into a fresh malloc'd NUL-terminated copy (the caller
 * frees it); used at load time for keywords. Returns NULL when out of memory. */
char *ag_norm_fold_dup(const char *s);

#endif
