/* Loading the "policy" config section into a compiled, immutable ag_policy (rule language in
 * docs/policy.md). Every error names the key path; unknown keys are rejected; regexes are compiled
 * (and JIT-compiled) here, once, with their prefilter literals extracted. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aoai_guard/json_strict.h"
#include "policy/policy_int.h"

#define DEFAULT_MATCH_LIMIT 100000
#define DEFAULT_DEPTH_LIMIT 10000
#define DEFAULT_HEAP_LIMIT_KB 20480
#define DEFAULT_HOLDBACK 256
#define MAX_MASK_LEN 256
#define MIN_PREFILTER_LEN 3
#define MAX_LITERAL 64
#define MAX_ALTS 32

static const char *const policy_keys[] = {
    "rules", "constraints", "regex_match_limit", "regex_depth_limit", "regex_heap_limit_kb",
    "on_regex_error", "stream_holdback_bytes", NULL};
static const char *const rule_keys[] = {
    "name", "description", "detector", "regex", "keywords", "action", "mask", "scope", "exempt",
    "apply_to", "threshold", "case_insensitive", "prefilter", "whole_word", "on_error", NULL};
static const char *const scope_keys[] = {"tenants", "apps", "roles", "deployments", "operations",
                                         NULL};
static const char *const cons_keys[] = {
    "name", "description", "scope", "exempt", "allowed_deployments", "max_tokens",
    "max_tokens_action", "insert_max_tokens", "max_prompt_chars", "max_messages", "denied_params",
    NULL};
static const char *const action_names[] = {"flag", "redact", "block", NULL};
static const char *const apply_names[] = {"request", "response", "both", NULL};
static const char *const onerr_names[] = {"no_match", "match", NULL};
static const char *const tokens_action_names[] = {"clamp", "reject", NULL};

/* ---- regex prefilter literal extraction ---- */

typedef struct lit_branch {
    char cur[MAX_LITERAL + 1], best[MAX_LITERAL + 1];
    size_t curlen, bestlen;
    /* a required group's alternatives, each with its own literal: "(?:INC|CHG)\d{7}" */
    char set[MAX_ALTS][MAX_LITERAL + 1];
    size_t nset, set_min; /* set_min: the shortest of them */
} lit_branch;

#define MAX_GROUP_DEPTH 3    /* groups inside groups followed this deep */
#define MAX_GROUP_PATTERN 512

static void lit_flush(lit_branch *b)
{
    if (b->curlen > b->bestlen) {
        memcpy(b->best, b->cur, b->curlen);
        b->bestlen = b->curlen;
    }
    b->curlen = 0;
}

static void lit_push(lit_branch *b, char c)
{
    if (b->curlen == MAX_LITERAL)
        lit_flush(b); /* a literal this long is plenty; start another run */
    if (c >= 'A' && c <= 'Z')
        c = (char)(c + 0x20);
    b->cur[b->curlen++] = c;
}

static bool is_digit_c(char c)
{
    return c >= '0' && c <= '9';
}

/* Length of a {n}, {n,}, {n,m} or {,m} quantifier at p, or 0 when p does not start one. */
static size_t brace_quant(const char *p, bool *zero_min)
{
    if (*p != '{')
        return 0;
    const char *q = p + 1;
    size_t digits = 0;
    long min = 0;
    while (is_digit_c(*q) && digits < 9) {
        min = min * 10 + (*q - '0');
        q++;
        digits++;
    }
    bool comma = false;
    if (*q == ',') {
        comma = true;
        q++;
        while (is_digit_c(*q))
            q++;
    }
    if (*q != '}' || (digits == 0 && !comma) || (digits == 0 && q == p + 2))
        return 0;
    *zero_min = (digits == 0 || min == 0);
    return (size_t)(q - p) + 1;
}

/* Parses a quantifier at p: returns its length (0 when none) and whether it allows zero. */
static size_t quant_at(const char *p, bool *zero_min)
{
    size_t n = 0;
    *zero_min = false;
    if (*p == '*' || *p == '?') {
        *zero_min = true;
        n = 1;
    } else if (*p == '+') {
        n = 1;
    } else {
        n = brace_quant(p, zero_min);
    }
    if (n && (p[n] == '?' || p[n] == '+'))
        n++; /* lazy / possessive */
    return n;
}

/* Skips a [...] class starting at p[0] == '['; returns the index after it, or 0 if unterminated. */
static size_t skip_class(const char *p)
{
    size_t i = 1;
    if (p[i] == '^')
        i++;
    if (p[i] == ']')
        i++;
    while (p[i] && p[i] != ']') {
        if (p[i] == '\\' && p[i + 1])
            i += 2;
        else if (p[i] == '[' && p[i + 1] == ':') {
            const char *e = strstr(p + i, ":]");
            if (!e)
                return 0;
            i = (size_t)(e - p) + 2;
        } else
            i++;
    }
    return p[i] == ']' ? i + 1 : 0;
}

/* Index just past the ')' closing the group that opens at pat[i], or 0 when unbalanced. */
static size_t group_end(const char *pat, size_t len, size_t i)
{
    int nest = 1;
    i++;
    while (nest > 0) {
        if (i >= len)
            return 0;
        if (pat[i] == '\\' && i + 1 < len) {
            i += 2;
        } else if (pat[i] == '[') {
            size_t k = skip_class(pat + i);
            if (!k)
                return 0;
            i += k;
        } else {
            nest += pat[i] == '(' ? 1 : pat[i] == ')' ? -1 : 0;
            i++;
        }
    }
    return i;
}

static size_t extract_literals_at(const char *pat, char out[][MAX_LITERAL + 1], size_t max, int depth);

/* A group pat[open..close] (close at its ')') that every match passes through: when it is plain
 * ("(", "(?:" or atomic "(?>") and each of its alternatives has a literal, those literals become
 * the branch's set if their shortest is longer than the set it had. Lookarounds, named and
 * branch-reset groups are left alone (no literal taken from them, which is always safe). */
static void lit_group(lit_branch *b, const char *pat, size_t open, size_t close, int depth)
{
    size_t start = open + 1;
    if (pat[start] == '?') {
        if (pat[start + 1] != ':' && pat[start + 1] != '>')
            return;
        start += 2;
    }
    if (depth >= MAX_GROUP_DEPTH || close <= start || close - start >= MAX_GROUP_PATTERN)
        return;
    char sub[MAX_GROUP_PATTERN];
    memcpy(sub, pat + start, close - start);
    sub[close - start] = '\0';
    char alts[MAX_ALTS][MAX_LITERAL + 1];
    size_t n = extract_literals_at(sub, alts, MAX_ALTS, depth + 1);
    if (n == 0)
        return;
    size_t shortest = MAX_LITERAL + 1;
    for (size_t k = 0; k < n; k++)
        if (strlen(alts[k]) < shortest)
            shortest = strlen(alts[k]);
    if (shortest <= b->set_min)
        return;
    memcpy(b->set, alts, sizeof alts[0] * n);
    b->nset = n;
    b->set_min = shortest;
}

/* Extracts, for each top-level alternative of pat, the literals every match of it must contain
 * one of (lower-cased): its longest literal run, or the alternatives of a required group when
 * their shortest is longer. Returns how many literals it wrote, or 0 when an alternative has none
 * of at least MIN_PREFILTER_LEN bytes, there are more than max, or the pattern uses syntax this
 * reader does not follow. */
static size_t extract_literals(const char *pat, char out[][MAX_LITERAL + 1], size_t max)
{
    return extract_literals_at(pat, out, max, 0);
}

static size_t extract_literals_at(const char *pat, char out[][MAX_LITERAL + 1], size_t max, int depth)
{
    if (strstr(pat, "\\Q") || strstr(pat, "(*"))
        return 0; /* (*UCP), (*ACCEPT) and other verbs are not groups of literals */
    for (const char *g = strstr(pat, "(?"); g; g = strstr(g + 2, "(?")) {
        const char *f = g + 2;
        while ((*f >= 'a' && *f <= 'z') || (*f >= 'A' && *f <= 'Z') || *f == '-' || *f == '^') {
            if (*f == 'x')
                return 0; /* extended mode changes what a literal is */
            f++;
        }
    }
    lit_branch b;
    b.curlen = b.bestlen = b.nset = b.set_min = 0;
    size_t nalts = 0, i = 0;
    /* leading inline options "(?i)" */
    if (pat[0] == '(' && pat[1] == '?') {
        size_t k = 2;
        while ((pat[k] >= 'a' && pat[k] <= 'z') || (pat[k] >= 'A' && pat[k] <= 'Z') ||
               pat[k] == '-')
            k++;
        if (pat[k] == ')')
            i = k + 1;
    }
    for (;;) {
        char c = pat[i];
        bool zero;
        if (c == '\0' || c == '|') {
            lit_flush(&b);
            if (b.bestlen >= MIN_PREFILTER_LEN && b.bestlen >= b.set_min) {
                if (nalts == max)
                    return 0;
                memcpy(out[nalts], b.best, b.bestlen);
                out[nalts][b.bestlen] = '\0';
                nalts++;
            } else if (b.nset > 0 && b.set_min >= MIN_PREFILTER_LEN) {
                if (max - nalts < b.nset)
                    return 0;
                memcpy(out[nalts], b.set, sizeof b.set[0] * b.nset);
                nalts += b.nset;
            } else {
                return 0;
            }
            b.curlen = b.bestlen = b.nset = b.set_min = 0;
            if (c == '\0')
                break;
            i++;
            continue;
        }
        if (c == '\\') {
            char e = pat[i + 1];
            if (e == '\0')
                return 0;
            bool alnum = (e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z') || is_digit_c(e);
            if (alnum) {
                lit_flush(&b);
                i += 2;
                if (e == 'k' || e == 'g')
                    return 0; /* back references: not followed */
                if (strchr("xpPNou", e) && pat[i] == '{') {
                    const char *close = strchr(pat + i, '}');
                    if (!close)
                        return 0;
                    i = (size_t)(close - pat) + 1;
                } else if (e == 'c' && pat[i]) {
                    i++;
                } else if (e == 'x') { /* \xhh */
                    for (int k = 0; k < 2 && pat[i] && strchr("0123456789abcdefABCDEF", pat[i]); k++)
                        i++;
                } else if (e == 'p' || e == 'P') { /* \pL */
                    if (pat[i])
                        i++;
                } else if (is_digit_c(e)) { /* \1 back reference or \012 octal */
                    while (is_digit_c(pat[i]))
                        i++;
                }
                i += quant_at(pat + i, &zero);
                continue;
            }
            if ((unsigned char)e >= 0x80 || e == '\n' || e == '\t' || e == ' ') {
                lit_flush(&b);
                i += 2;
                i += quant_at(pat + i, &zero);
                continue;
            }
            /* escaped punctuation: a literal character */
            size_t q = quant_at(pat + i + 2, &zero);
            if (q && zero) {
                lit_flush(&b);
            } else {
                lit_push(&b, e);
                if (q)
                    lit_flush(&b);
            }
            i += 2 + q;
            continue;
        }
        if (c == '(') {
            lit_flush(&b);
            size_t open = i;
            i = group_end(pat, strlen(pat), i);
            if (!i)
                return 0;
            size_t close = i - 1; /* its ')' */
            i += quant_at(pat + i, &zero);
            if (!zero) /* the group is required: its alternatives' literals may serve */
                lit_group(&b, pat, open, close, depth);
            continue;
        }
        if (c == '[') {
            lit_flush(&b);
            size_t k = skip_class(pat + i);
            if (!k)
                return 0;
            i += k;
            i += quant_at(pat + i, &zero);
            continue;
        }
        if (c == '{') {
            size_t q = brace_quant(pat + i, &zero);
            if (q) { /* a quantifier of something we already passed */
                lit_flush(&b);
                i += q;
                if (pat[i] == '?' || pat[i] == '+')
                    i++;
                continue;
            }
            /* otherwise a literal brace: handled below like any literal character */
        } else if (c == ')' || c == '*' || c == '+' || c == '?') {
            if (c == ')')
                return 0;
            lit_flush(&b); /* a quantifier of something we already passed */
            i++;
            continue;
        }
        if (c == '.' || c == '^' || c == '$' || (unsigned char)c >= 0x80 || (unsigned char)c < 0x20) {
            lit_flush(&b);
            i++;
            if (c == '.')
                i += quant_at(pat + i, &zero);
            continue;
        }
        /* a literal character, maybe quantified */
        size_t q = quant_at(pat + i + 1, &zero);
        if (q && zero) {
            lit_flush(&b);
        } else {
            lit_push(&b, c);
            if (q)
                lit_flush(&b);
        }
        i += 1 + q;
    }
    return nalts;
}

/* ---- regex prefilter: runs of digits, of capitals or digits, of letters or digits ---- */

/* The run kinds (AG_RUN_DIGITS ..., policy_int.h), and what one atom of a pattern can match: a bit
 * per kind of run whose characters are all it can match. */
#define ATOM_DIGIT (1u << AG_RUN_DIGITS | 1u << AG_RUN_UPPER | 1u << AG_RUN_ALNUM)
#define ATOM_UPPER (1u << AG_RUN_UPPER | 1u << AG_RUN_ALNUM)
#define ATOM_ALNUM (1u << AG_RUN_ALNUM)
#define ATOM_OTHER 0u
#define RUN_CAP 1000 /* counts stop here; a longer run needs nothing more */

typedef struct run_req {
    unsigned n[AG_RUN_KINDS];
    bool unknown; /* syntax not followed: nothing may be assumed */
} run_req;

/* What the class p[0..len) ("[...]" with its brackets) can match: ATOM_DIGIT when only ASCII digits,
 * ATOM_UPPER when only capitals and digits, ATOM_ALNUM when only letters and digits, else
 * ATOM_OTHER (negation, escapes other than \d, POSIX names, any other character). */
static unsigned class_kind(const char *p, size_t len)
{
    size_t i = 1, end = len - 1;
    if (p[i] == '^' || p[i] == ']')
        return ATOM_OTHER;
    unsigned kind = ATOM_DIGIT;
    while (i < end) {
        if (p[i] == '\\') {
            if (p[i + 1] != 'd')
                return ATOM_OTHER;
            i += 2;
            continue;
        }
        if (p[i] == '[')
            return ATOM_OTHER;
        char lo = p[i], hi = p[i];
        if (i + 2 < end && p[i + 1] == '-') {
            hi = p[i + 2];
            i += 3;
        } else {
            i++;
        }
        if (lo > hi)
            return ATOM_OTHER;
        if (lo >= 'A' && hi <= 'Z')
            kind &= ATOM_UPPER;
        else if (lo >= 'a' && hi <= 'z')
            kind &= ATOM_ALNUM;
        else if (!(is_digit_c(lo) && is_digit_c(hi)))
            return ATOM_OTHER;
    }
    return kind;
}

/* A quantifier at p: its length (0: none) and its minimum count in *min (1 without one). Only the
 * forms PCRE2 10.42 reads as quantifiers are taken; "{" starting anything else sets *bad. */
static size_t run_quant(const char *p, unsigned *min, bool *bad)
{
    size_t n = 0;
    *min = 1;
    if (*p == '*' || *p == '?') {
        *min = 0;
        n = 1;
    } else if (*p == '+') {
        n = 1;
    } else if (*p == '{') {
        const char *q = p + 1;
        unsigned long v = 0;
        size_t digits = 0;
        while (is_digit_c(*q)) {
            if (v < RUN_CAP)
                v = v * 10 + (unsigned long)(*q - '0');
            q++;
            digits++;
        }
        if (*q == ',') {
            q++;
            while (is_digit_c(*q))
                q++;
        }
        if (digits == 0 || *q != '}') {
            *bad = true;
            return 0;
        }
        *min = v < RUN_CAP ? (unsigned)v : RUN_CAP;
        n = (size_t)(q - p) + 1;
    }
    if (n && (p[n] == '?' || p[n] == '+'))
        n++; /* lazy / possessive */
    return n;
}

/* best = max(best, r), then r ends: the runs in progress are over. */
static void run_end(run_req *best, run_req *r)
{
    for (int k = 0; k < AG_RUN_KINDS; k++) {
        if (r->n[k] > best->n[k])
            best->n[k] = r->n[k];
        r->n[k] = 0;
    }
}

/* The runs every match of pat[0..len) must hold. In each alternative: consecutive atoms that can
 * only match characters of a run kind add their minimum counts to a run of that kind; any other
 * atom ends it; a required plain group counts with its own requirement. Across alternatives the
 * smallest counts. Whatever this reader does not follow ends a run or makes the whole pattern
 * unknown, so the result is never more than the truth. *caseless is set when the pattern turns on
 * (?i) anywhere. */
static run_req regex_runs_at(const char *pat, size_t len, int depth, bool *caseless)
{
    run_req all, best, cur;
    const run_req unknown = {{0}, true};
    memset(&best, 0, sizeof best);
    memset(&cur, 0, sizeof cur);
    for (int k = 0; k < AG_RUN_KINDS; k++)
        all.n[k] = RUN_CAP;
    all.unknown = false;
    if (depth > MAX_GROUP_DEPTH)
        return unknown;
    size_t i = 0;
    for (;;) {
        if (i >= len || pat[i] == '|') {
            run_end(&best, &cur);
            for (int k = 0; k < AG_RUN_KINDS; k++) {
                if (best.n[k] < all.n[k])
                    all.n[k] = best.n[k];
                best.n[k] = 0;
            }
            if (i >= len)
                return all;
            i++;
            continue;
        }
        char c = pat[i];
        unsigned kind = ATOM_OTHER;
        size_t atom = 1;
        run_req sub;
        bool group = false;
        if (c == '\\') {
            char e = i + 1 < len ? pat[i + 1] : '\0';
            atom = 2;
            if (e == 'd')
                kind = ATOM_DIGIT;
            else if (e == '\0' || ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z') || is_digit_c(e) ||
                                   (unsigned char)e >= 0x80)) {
                /* \D \w \s \b ... stand for one character or none; \x, \p, \k, \Q, back
                 * references and the rest have lengths of their own: not followed */
                if (!e || !strchr("DwWsShHvVbBAzZG", e))
                    return unknown;
            }
        } else if (c == '[') {
            atom = skip_class(pat + i);
            if (!atom || i + atom > len)
                return unknown;
            kind = class_kind(pat + i, atom);
        } else if (c == '(') {
            size_t end = group_end(pat, len, i);
            if (!end || pat[i + 1] == '*')
                return unknown; /* (*UCP) and other verbs change what \d means */
            atom = end - i;
            size_t body = i + 1;
            if (pat[body] == '?' && pat[body + 1] == '#')
                return unknown; /* a comment ends at its first ')', whatever it holds */
            if (pat[body] == '?') {
                size_t k = body + 1;
                bool opts = false;
                while (k < end && ((pat[k] >= 'a' && pat[k] <= 'z') || (pat[k] >= 'A' && pat[k] <= 'Z') ||
                                   pat[k] == '-' || pat[k] == '^')) {
                    if (pat[k] == 'x')
                        return unknown; /* extended syntax: spaces and comments */
                    if (pat[k] == 'i')
                        *caseless = true;
                    opts = true;
                    k++;
                }
                if (opts && pat[k] == ')') { /* (?i) and friends: no characters */
                    run_end(&best, &cur);
                    i = k + 1;
                    continue;
                }
                if ((opts && pat[k] == ':') || (!opts && (pat[k] == ':' || pat[k] == '>')))
                    body = k + 1;
                else
                    body = 0; /* lookaround, named, branch reset, conditional, ...: a break */
            }
            if (body) {
                group = true;
                sub = regex_runs_at(pat + body, end - 1 - body, depth + 1, caseless);
                if (sub.unknown)
                    return unknown;
            }
        } else if (c == ')' || c == '*' || c == '+' || c == '?' || c == '{') {
            return unknown; /* a quantifier with nothing before it, or a literal brace */
        } else if (is_digit_c(c)) {
            kind = ATOM_DIGIT;
        } else if (c >= 'A' && c <= 'Z') {
            kind = ATOM_UPPER;
        } else if (c >= 'a' && c <= 'z') {
            kind = ATOM_ALNUM;
        }
        bool bad = false;
        unsigned min;
        size_t q = run_quant(pat + i + atom, &min, &bad);
        if (bad)
            return unknown;
        i += atom + q;
        if (group) {
            run_end(&best, &cur);
            if (min > 0) /* one pass through the group holds its own runs */
                for (int k = 0; k < AG_RUN_KINDS; k++)
                    if (sub.n[k] > best.n[k])
                        best.n[k] = sub.n[k];
            continue;
        }
        /* an atom that can only match a kind's characters extends its run by the atom's minimum
         * count (also when it may be absent: its neighbours then meet); others end the run */
        for (int k = 0; k < AG_RUN_KINDS; k++) {
            if (kind & (1u << k)) {
                cur.n[k] = cur.n[k] + min < RUN_CAP ? cur.n[k] + min : RUN_CAP;
            } else {
                if (cur.n[k] > best.n[k])
                    best.n[k] = cur.n[k];
                cur.n[k] = 0;
            }
        }
    }
}

/* A rule's run requirements (0 where nothing is known). Letters count only in a case-sensitive
 * pattern: caseless, PCRE2 lets k and s match the Kelvin sign and the long s, and a capital its
 * small letter. */
static void regex_runs(const char *pat, bool caseless, uint16_t need[AG_RUN_KINDS])
{
    memset(need, 0, AG_RUN_KINDS * sizeof need[0]);
    if (strstr(pat, "\\Q"))
        return;
    run_req r = regex_runs_at(pat, strlen(pat), 0, &caseless);
    if (r.unknown)
        return;
    need[AG_RUN_DIGITS] = (uint16_t)r.n[AG_RUN_DIGITS];
    if (!caseless) {
        need[AG_RUN_UPPER] = (uint16_t)r.n[AG_RUN_UPPER];
        need[AG_RUN_ALNUM] = (uint16_t)r.n[AG_RUN_ALNUM];
    }
}

/* ---- helpers ---- */

static void scope_free(ag_pol_scope *sc)
{
    ag_conf_strv_free(sc->tenants);
    ag_conf_strv_free(sc->apps);
    ag_conf_strv_free(sc->roles);
    ag_conf_strv_free(sc->deployments);
    ag_conf_strv_free(sc->operations);
    memset(sc, 0, sizeof *sc);
}

static int read_list(const cJSON *obj, const char *path, const char *key, char ***out,
                     ag_conf_err *err)
{
    size_t n = 0;
    if (ag_conf_strv(obj, path, key, out, &n, err) != 0)
        return -1;
    if (*out && n == 0) { /* an empty list means "any" */
        ag_conf_strv_free(*out);
        *out = NULL;
    }
    for (size_t k = 0; k < n; k++)
        if ((*out)[k][0] == '\0') {
            char p[AG_CONF_PATH_LEN];
            ag_conf_path(p, sizeof p, path, key, (int)k);
            return ag_conf_fail(err, p, NULL, "must not be empty");
        }
    return 0;
}

/* Reads a scope object at obj[key]; *present tells whether the key was there. */
static int read_scope(const cJSON *obj, const char *path, const char *key, ag_pol_scope *sc,
                      bool *present, ag_conf_err *err)
{
    memset(sc, 0, sizeof *sc);
    const cJSON *v = ag_conf_get(obj, key);
    *present = v != NULL;
    if (!v)
        return 0;
    char p[AG_CONF_PATH_LEN];
    ag_conf_path(p, sizeof p, path, key, -1);
    if (ag_conf_object(v, p, scope_keys, err) != 0)
        return -1;
    if (read_list(v, p, "tenants", &sc->tenants, err) != 0 ||
        read_list(v, p, "apps", &sc->apps, err) != 0 ||
        read_list(v, p, "roles", &sc->roles, err) != 0 ||
        read_list(v, p, "deployments", &sc->deployments, err) != 0 ||
        read_list(v, p, "operations", &sc->operations, err) != 0)
        return -1;
    return 0;
}

static bool scope_empty(const ag_pol_scope *sc)
{
    return !sc->tenants && !sc->apps && !sc->roles && !sc->deployments && !sc->operations;
}

static bool valid_name(const char *n)
{
    size_t l = strlen(n);
    if (l == 0 || l > 64)
        return false;
    for (const char *p = n; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit_c(c) || c == '-' ||
              c == '_' || c == '.' || c == ':'))
            return false;
    }
    return true;
}

static int grow_kw(ag_policy *pol, size_t *cap)
{
    if (pol->nkw < *cap)
        return 0;
    size_t c = *cap ? *cap * 2 : 16;
    ag_pol_keyword *k = realloc(pol->kw, c * sizeof *k);
    if (!k)
        return -1;
    pol->kw = k;
    *cap = c;
    return 0;
}

/* Trims leading and trailing spaces in place; returns s. */
static char *trim(char *s)
{
    char *b = s;
    while (*b == ' ')
        b++;
    size_t l = strlen(b);
    while (l > 0 && b[l - 1] == ' ')
        l--;
    memmove(s, b, l);
    s[l] = '\0';
    return s;
}

/* ---- rules ---- */

static int parse_regex(ag_policy *pol, ag_pol_rule *ru, uint32_t idx, const cJSON *obj,
                       const char *path, ag_conf_err *err)
{
    const cJSON *rv = ag_conf_get(obj, "regex");
    if (!cJSON_IsString(rv) || rv->valuestring[0] == '\0')
        return ag_conf_fail(err, path, "regex", "must be a non-empty string");
    bool ci = false;
    if (ag_conf_bool(obj, path, "case_insensitive", &ci, err) != 0)
        return -1;
    int onerr = (int)pol->on_regex_error;
    if (ag_conf_enum(obj, path, "on_error", onerr_names, &onerr, err) != 0)
        return -1;
    ru->on_error = (ag_pol_onerr)onerr;
    int ec;
    PCRE2_SIZE eo;
    ru->re = pcre2_compile((PCRE2_SPTR)rv->valuestring, PCRE2_ZERO_TERMINATED,
                           PCRE2_UTF | (ci ? PCRE2_CASELESS : 0u), &ec, &eo, NULL);
    if (!ru->re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return ag_conf_fail(err, path, "regex", "rule \"%s\": PCRE2 error at offset %zu: %s",
                            ru->name, (size_t)eo, (const char *)msg);
    }
    uint32_t minlen = 0;
    pcre2_pattern_info(ru->re, PCRE2_INFO_MINLENGTH, &minlen);
    if (minlen == 0)
        return ag_conf_fail(err, path, "regex", "rule \"%s\": the pattern can match the empty "
                            "string", ru->name);
    ru->jit = pcre2_jit_compile(ru->re, PCRE2_JIT_COMPLETE) == 0; /* else the interpreter runs it */
    regex_runs(rv->valuestring, ci, ru->need_run);
    for (int k = 0; k < AG_RUN_KINDS; k++)
        ru->needs_runs |= ru->need_run[k] > 0;

    const cJSON *pf = ag_conf_get(obj, "prefilter");
    if (pf) {
        char **lits = NULL;
        size_t n = 0;
        if (ag_conf_strv(obj, path, "prefilter", &lits, &n, err) != 0)
            return -1;
        if (n == 0) {
            ag_conf_strv_free(lits);
            return ag_conf_fail(err, path, "prefilter", "must list at least one literal");
        }
        for (size_t k = 0; k < n; k++) {
            char *f = ag_norm_fold_dup(lits[k]);
            if (!f || trim(f)[0] == '\0') {
                free(f);
                ag_conf_strv_free(lits);
                char p[AG_CONF_PATH_LEN];
                ag_conf_path(p, sizeof p, path, "prefilter", (int)k);
                return ag_conf_fail(err, p, NULL, "must not be empty");
            }
            int rc = ag_litset_add(pol->lits, f, strlen(f), AG_LIT_ID(AG_LIT_REGEX, idx));
            free(f);
            if (rc != 0) {
                ag_conf_strv_free(lits);
                return ag_conf_fail(err, path, "prefilter", "out of memory");
            }
        }
        ag_conf_strv_free(lits);
        ru->prefiltered = true;
    } else {
        char alts[MAX_ALTS][MAX_LITERAL + 1];
        size_t n = extract_literals(rv->valuestring, alts, MAX_ALTS);
        for (size_t k = 0; k < n; k++)
            if (ag_litset_add(pol->lits, alts[k], strlen(alts[k]), AG_LIT_ID(AG_LIT_REGEX, idx)))
                return ag_conf_fail(err, path, "regex", "out of memory");
        ru->prefiltered = n > 0;
    }
    return 0;
}

static int parse_keywords(ag_policy *pol, ag_pol_rule *ru, uint32_t idx, const cJSON *obj,
                          const char *path, size_t *kwcap, ag_conf_err *err)
{
    char **kws = NULL;
    size_t n = 0;
    if (ag_conf_strv(obj, path, "keywords", &kws, &n, err) != 0)
        return -1;
    if (n == 0) {
        ag_conf_strv_free(kws);
        return ag_conf_fail(err, path, "keywords", "must list at least one keyword");
    }
    ru->whole_word = true;
    if (ag_conf_bool(obj, path, "whole_word", &ru->whole_word, err) != 0) {
        ag_conf_strv_free(kws);
        return -1;
    }
    for (size_t k = 0; k < n; k++) {
        char *f = ag_norm_fold_dup(kws[k]);
        if (!f || trim(f)[0] == '\0' || strlen(f) > 1024) {
            free(f);
            ag_conf_strv_free(kws);
            char p[AG_CONF_PATH_LEN];
            ag_conf_path(p, sizeof p, path, "keywords", (int)k);
            return ag_conf_fail(err, p, NULL, "must be 1 to 1024 bytes after normalisation");
        }
        if (grow_kw(pol, kwcap) != 0 ||
            ag_litset_add(pol->lits, f, strlen(f), AG_LIT_ID(AG_LIT_KEYWORD, pol->nkw)) != 0) {
            free(f);
            ag_conf_strv_free(kws);
            return ag_conf_fail(err, path, "keywords", "out of memory");
        }
        pol->kw[pol->nkw].rule = idx;
        pol->kw[pol->nkw].len = (uint32_t)strlen(f);
        pol->nkw++;
        free(f);
    }
    ag_conf_strv_free(kws);
    return 0;
}

static int parse_rule(ag_policy *pol, uint32_t idx, const cJSON *obj, const char *path,
                      size_t *kwcap, ag_conf_err *err)
{
    ag_pol_rule *ru = &pol->rules[idx];
    if (ag_conf_object(obj, path, rule_keys, err) != 0)
        return -1;
    if (ag_conf_string(obj, path, "name", true, &ru->name, err) != 0)
        return -1;
    if (!valid_name(ru->name))
        return ag_conf_fail(err, path, "name", "must be 1 to 64 characters of A-Z a-z 0-9 . _ : -");
    for (uint32_t k = 0; k < idx; k++)
        if (strcmp(pol->rules[k].name, ru->name) == 0)
            return ag_conf_fail(err, path, "name", "duplicate rule name \"%s\"", ru->name);
    const cJSON *desc = ag_conf_get(obj, "description");
    if (desc && !cJSON_IsString(desc))
        return ag_conf_fail(err, path, "description", "must be a string");

    int kinds = (ag_conf_get(obj, "detector") != NULL) + (ag_conf_get(obj, "regex") != NULL) +
                (ag_conf_get(obj, "keywords") != NULL);
    if (kinds != 1)
        return ag_conf_fail(err, path, NULL, "rule \"%s\": exactly one of detector, regex, "
                            "keywords is required", ru->name);
    if (!ag_conf_get(obj, "action"))
        return ag_conf_fail(err, path, "action", "is required (flag, redact or block)");
    int act = 0;
    if (ag_conf_enum(obj, path, "action", action_names, &act, err) != 0)
        return -1;
    ru->action = act == 0 ? AG_ACT_FLAG : act == 1 ? AG_ACT_REDACT : AG_ACT_BLOCK;
    int apply = 0;
    if (ag_conf_enum(obj, path, "apply_to", apply_names, &apply, err) != 0)
        return -1;
    ru->dirs = apply == 0 ? AG_DIR_REQUEST : apply == 1 ? AG_DIR_RESPONSE
                                                        : (AG_DIR_REQUEST | AG_DIR_RESPONSE);
    bool present;
    if (read_scope(obj, path, "scope", &ru->scope, &present, err) != 0)
        return -1;
    if (read_scope(obj, path, "exempt", &ru->exempt, &ru->has_exempt, err) != 0)
        return -1;
    if (ru->has_exempt && scope_empty(&ru->exempt))
        return ag_conf_fail(err, path, "exempt", "must name at least one tenant, app, role, "
                            "deployment or operation");
    ru->scoped = !scope_empty(&ru->scope) || ru->has_exempt;

    /* kind-specific keys must not appear on the other kinds */
    const char *det_name = NULL;
    if (ag_conf_get(obj, "detector")) {
        const cJSON *dv = ag_conf_get(obj, "detector");
        int d = cJSON_IsString(dv) ? ag_detector_lookup(dv->valuestring) : -1;
        if (d < 0) {
            char list[400] = "";
            size_t used = 0;
            for (int k = 0; k < AG_DET_COUNT && used < sizeof list; k++) {
                int w = snprintf(list + used, sizeof list - used, "%s%s", k ? ", " : "",
                                 ag_detector_name((ag_detector)k));
                if (w < 0)
                    break;
                used += (size_t)w;
            }
            return ag_conf_fail(err, path, "detector", "must be one of %s", list);
        }
        ru->kind = AG_POL_DETECTOR;
        ru->det = (ag_detector)d;
        det_name = ag_detector_name(ru->det);
    } else if (ag_conf_get(obj, "regex")) {
        ru->kind = AG_POL_REGEX;
    } else {
        ru->kind = AG_POL_KEYWORDS;
    }
    if (ru->kind != AG_POL_REGEX) {
        static const char *const rx_only[] = {"case_insensitive", "prefilter", "on_error", NULL};
        for (size_t k = 0; rx_only[k]; k++)
            if (ag_conf_get(obj, rx_only[k]))
                return ag_conf_fail(err, path, rx_only[k], "only applies to regex rules");
    }
    if (ru->kind != AG_POL_KEYWORDS && ag_conf_get(obj, "whole_word"))
        return ag_conf_fail(err, path, "whole_word", "only applies to keyword rules");
    bool injection = ru->kind == AG_POL_DETECTOR && ru->det == AG_DET_PROMPT_INJECTION;
    if (!injection && ag_conf_get(obj, "threshold"))
        return ag_conf_fail(err, path, "threshold", "only applies to the prompt_injection detector");
    if (injection) {
        long long th = 3;
        if (ag_conf_int(obj, path, "threshold", 1, 1000, &th, err) != 0)
            return -1;
        ru->threshold = (int)th;
        if (ru->action == AG_ACT_REDACT)
            return ag_conf_fail(err, path, "action", "prompt_injection supports flag or block");
        if (ru->dirs != AG_DIR_REQUEST)
            return ag_conf_fail(err, path, "apply_to", "prompt_injection applies to requests only");
        pol->has_injection = true;
    }

    /* mask */
    bool rewrites = ru->action == AG_ACT_REDACT ||
                    (ru->action == AG_ACT_BLOCK && (ru->dirs & AG_DIR_RESPONSE));
    if (ag_conf_get(obj, "mask")) {
        if (!rewrites)
            return ag_conf_fail(err, path, "mask", "only applies to action redact (or block on "
                                "the response side)");
        if (ag_conf_string(obj, path, "mask", false, &ru->mask, err) != 0)
            return -1;
        size_t ml = strlen(ru->mask);
        if (ml > MAX_MASK_LEN || ag_utf8_valid_prefix((const unsigned char *)ru->mask, ml) != ml)
            return ag_conf_fail(err, path, "mask", "must be valid UTF-8 of at most %d bytes",
                                MAX_MASK_LEN);
    } else {
        char m[128];
        snprintf(m, sizeof m, "[REDACTED:%s]", det_name ? det_name : ru->name);
        ru->mask = strdup(m);
        if (!ru->mask)
            return ag_conf_fail(err, path, "mask", "out of memory");
    }
    ru->mask_len = strlen(ru->mask);

    if (ru->kind == AG_POL_REGEX)
        return parse_regex(pol, ru, idx, obj, path, err);
    if (ru->kind == AG_POL_KEYWORDS)
        return parse_keywords(pol, ru, idx, obj, path, kwcap, err);
    return 0;
}

/* ---- constraints ---- */

static int parse_constraint(ag_policy *pol, size_t idx, const cJSON *obj, const char *path,
                            ag_conf_err *err)
{
    ag_pol_constraint *c = &pol->cons[idx];
    if (ag_conf_object(obj, path, cons_keys, err) != 0)
        return -1;
    if (ag_conf_string(obj, path, "name", false, &c->name, err) != 0)
        return -1;
    if (c->name && !valid_name(c->name))
        return ag_conf_fail(err, path, "name", "must be 1 to 64 characters of A-Z a-z 0-9 . _ : -");
    if (!c->name) {
        char n[32];
        snprintf(n, sizeof n, "constraints[%zu]", idx);
        c->name = strdup(n);
        if (!c->name)
            return ag_conf_fail(err, path, "name", "out of memory");
    }
    const cJSON *desc = ag_conf_get(obj, "description");
    if (desc && !cJSON_IsString(desc))
        return ag_conf_fail(err, path, "description", "must be a string");
    bool present;
    if (read_scope(obj, path, "scope", &c->scope, &present, err) != 0)
        return -1;
    if (read_scope(obj, path, "exempt", &c->exempt, &c->has_exempt, err) != 0)
        return -1;
    if (c->has_exempt && scope_empty(&c->exempt))
        return ag_conf_fail(err, path, "exempt", "must name at least one tenant, app, role, "
                            "deployment or operation");
    size_t n = 0;
    if (ag_conf_strv(obj, path, "allowed_deployments", &c->allowed_deployments, &n, err) != 0)
        return -1;
    if (c->allowed_deployments && n == 0)
        return ag_conf_fail(err, path, "allowed_deployments", "must not be empty (omit it to "
                            "allow any deployment)");
    if (ag_conf_int(obj, path, "max_tokens", 1, 100000000, &c->max_tokens, err) != 0)
        return -1;
    int ta = 0;
    if (ag_conf_enum(obj, path, "max_tokens_action", tokens_action_names, &ta, err) != 0)
        return -1;
    c->tokens_action = (ag_pol_tokens_action)ta;
    if (ag_conf_bool(obj, path, "insert_max_tokens", &c->insert_max_tokens, err) != 0)
        return -1;
    if ((ag_conf_get(obj, "max_tokens_action") || c->insert_max_tokens) && c->max_tokens == 0)
        return ag_conf_fail(err, path, "max_tokens", "is required with max_tokens_action / "
                            "insert_max_tokens");
    if (ag_conf_int(obj, path, "max_prompt_chars", 1, 1000000000, &c->max_prompt_chars, err) != 0)
        return -1;
    if (ag_conf_int(obj, path, "max_messages", 1, 1000000, &c->max_messages, err) != 0)
        return -1;
    if (ag_conf_strv(obj, path, "denied_params", &c->denied_params, &n, err) != 0)
        return -1;
    if (c->denied_params && n == 0) {
        ag_conf_strv_free(c->denied_params);
        c->denied_params = NULL;
    }
    return 0;
}

/* ---- load / free ---- */

void ag_policy_free(ag_policy *pol)
{
    if (!pol)
        return;
    for (size_t r = 0; r < pol->nrules; r++) {
        ag_pol_rule *ru = &pol->rules[r];
        free(ru->name);
        free(ru->mask);
        scope_free(&ru->scope);
        scope_free(&ru->exempt);
        pcre2_code_free(ru->re);
    }
    free(pol->rules);
    for (size_t k = 0; k < pol->ncons; k++) {
        ag_pol_constraint *c = &pol->cons[k];
        free(c->name);
        scope_free(&c->scope);
        scope_free(&c->exempt);
        ag_conf_strv_free(c->allowed_deployments);
        ag_conf_strv_free(c->denied_params);
    }
    free(pol->cons);
    for (size_t k = 0; k < pol->nsig; k++)
        pcre2_code_free(pol->sig[k].re);
    ag_litset_free(pol->lits);
    free(pol->kw);
    free(pol);
}

int ag_policy_load(const cJSON *section, const char *path, ag_policy **out, ag_conf_err *err)
{
    *out = NULL;
    ag_policy *pol = calloc(1, sizeof *pol);
    if (!pol)
        return ag_conf_fail(err, path, NULL, "out of memory");
    pol->match_limit = DEFAULT_MATCH_LIMIT;
    pol->depth_limit = DEFAULT_DEPTH_LIMIT;
    pol->heap_limit_kb = DEFAULT_HEAP_LIMIT_KB;
    pol->holdback = DEFAULT_HOLDBACK;
    pol->on_regex_error = AG_ONERR_NO_MATCH;
    pol->lits = ag_litset_new();
    if (!pol->lits) {
        ag_policy_free(pol);
        return ag_conf_fail(err, path, NULL, "out of memory");
    }
    if (section && !cJSON_IsNull(section)) {
        if (ag_conf_object(section, path, policy_keys, err) != 0)
            goto fail;
        long long v = pol->match_limit;
        if (ag_conf_int(section, path, "regex_match_limit", 1, 1000000000, &v, err) != 0)
            goto fail;
        pol->match_limit = (uint32_t)v;
        v = pol->depth_limit;
        if (ag_conf_int(section, path, "regex_depth_limit", 1, 100000000, &v, err) != 0)
            goto fail;
        pol->depth_limit = (uint32_t)v;
        v = pol->heap_limit_kb;
        if (ag_conf_int(section, path, "regex_heap_limit_kb", 64, 4194304, &v, err) != 0)
            goto fail;
        pol->heap_limit_kb = (uint32_t)v;
        v = (long long)pol->holdback;
        if (ag_conf_int(section, path, "stream_holdback_bytes", 16, 65536, &v, err) != 0)
            goto fail;
        pol->holdback = (size_t)v;
        int oe = 0;
        if (ag_conf_enum(section, path, "on_regex_error", onerr_names, &oe, err) != 0)
            goto fail;
        pol->on_regex_error = (ag_pol_onerr)oe;

        const cJSON *rules = ag_conf_get(section, "rules");
        if (rules) {
            if (!cJSON_IsArray(rules)) {
                ag_conf_fail(err, path, "rules", "must be an array of rule objects");
                goto fail;
            }
            size_t n = (size_t)cJSON_GetArraySize(rules);
            if (n > 0xFFFFF) {
                ag_conf_fail(err, path, "rules", "too many rules");
                goto fail;
            }
            pol->rules = calloc(n ? n : 1, sizeof *pol->rules);
            if (!pol->rules) {
                ag_conf_fail(err, path, "rules", "out of memory");
                goto fail;
            }
            size_t kwcap = 0, i = 0;
            for (const cJSON *r = rules->child; r; r = r->next, i++) {
                char p[AG_CONF_PATH_LEN];
                ag_conf_path(p, sizeof p, path, "rules", (int)i);
                pol->nrules = i + 1;
                if (parse_rule(pol, (uint32_t)i, r, p, &kwcap, err) != 0)
                    goto fail;
            }
        }
        const cJSON *cons = ag_conf_get(section, "constraints");
        if (cons) {
            if (!cJSON_IsArray(cons)) {
                ag_conf_fail(err, path, "constraints", "must be an array of constraint objects");
                goto fail;
            }
            size_t n = (size_t)cJSON_GetArraySize(cons);
            pol->cons = calloc(n ? n : 1, sizeof *pol->cons);
            if (!pol->cons) {
                ag_conf_fail(err, path, "constraints", "out of memory");
                goto fail;
            }
            size_t i = 0;
            for (const cJSON *c = cons->child; c; c = c->next, i++) {
                char p[AG_CONF_PATH_LEN];
                ag_conf_path(p, sizeof p, path, "constraints", (int)i);
                pol->ncons = i + 1;
                if (parse_constraint(pol, i, c, p, err) != 0)
                    goto fail;
            }
        }
    }
    if (pol->has_injection) {
        if (ag_pol_signals_compile(pol, err) != 0)
            goto fail;
        if (ag_pol_signals_add_literals(pol) != 0) {
            ag_conf_fail(err, path, NULL, "out of memory");
            goto fail;
        }
    }
    if (ag_litset_compile(pol->lits) != 0) {
        ag_conf_fail(err, path, NULL, "out of memory");
        goto fail;
    }
    *out = pol;
    return 0;
fail:
    ag_policy_free(pol);
    return -1;
}

size_t ag_policy_rule_count(const ag_policy *pol)
{
    return pol ? pol->nrules : 0;
}

bool ag_policy_has_response_rules(const ag_policy *pol)
{
    for (size_t i = 0; pol && i < pol->nrules; i++)
        if (pol->rules[i].dirs & AG_DIR_RESPONSE)
            return true;
    return false;
}

size_t ag_policy_holdback(const ag_policy *pol)
{
    return pol ? pol->holdback : 0;
}
