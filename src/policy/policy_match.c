/* The matching core: scope evaluation, the per-worker scratch, and one scan of one text for every
 * rule in view (one literal pass, one detector pass, prefiltered regexes, injection signals). */
#include <stdlib.h>
#include <string.h>

#include "policy/policy_int.h"

#define MAX_MATCHES_PER_RULE_TEXT 4096 /* beyond this a regex rule stops looking in that text */

/* ---- scratch ---- */

ag_policy_scratch *ag_policy_scratch_new(void)
{
    ag_policy_scratch *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    ag_norm_init(&s->norm);
    s->md = pcre2_match_data_create(1, NULL);
    s->mc = pcre2_match_context_create(NULL);
    s->js = pcre2_jit_stack_create(32 * 1024, 1024 * 1024, NULL);
    if (!s->md || !s->mc || !s->js) {
        ag_policy_scratch_free(s);
        return NULL;
    }
    pcre2_jit_stack_assign(s->mc, NULL, s->js);
    return s;
}

void ag_policy_scratch_free(ag_policy_scratch *s)
{
    if (!s)
        return;
    ag_norm_free(&s->norm);
    pcre2_match_data_free(s->md);
    pcre2_match_context_free(s->mc);
    pcre2_jit_stack_free(s->js);
    free(s->active);
    free(s->cand);
    free(s->errs);
    free(s->count);
    free(s->kw_end);
    free(s->m);
    free(s->texts);
    free(s->text_len);
    free(s->buf);
    free(s);
}

int ag_pol_scratch_fit(ag_policy_scratch *s, const ag_policy *pol)
{
    size_t need = pol->nrules ? pol->nrules : 1;
    if (need > s->rules_cap) {
        size_t words = (need + 63) / 64;
        uint64_t *a = realloc(s->active, words * sizeof *a);
        if (a)
            s->active = a;
        uint64_t *c = realloc(s->cand, words * sizeof *c);
        if (c)
            s->cand = c;
        uint32_t *e = realloc(s->errs, need * sizeof *e);
        if (e)
            s->errs = e;
        uint32_t *n = realloc(s->count, need * sizeof *n);
        if (n)
            s->count = n;
        uint32_t *k = realloc(s->kw_end, need * sizeof *k);
        if (k)
            s->kw_end = k;
        if (!a || !c || !e || !n || !k)
            return -1;
        s->rules_cap = need;
    }
    pcre2_set_match_limit(s->mc, pol->match_limit);
    pcre2_set_depth_limit(s->mc, pol->depth_limit);
    pcre2_set_heap_limit(s->mc, pol->heap_limit_kb);
    return 0;
}

/* ---- scope ---- */

static bool entry_match(const char *e, const char *v, size_t vlen)
{
    size_t el = strlen(e);
    if (el > 0 && e[el - 1] == '*')
        return vlen >= el - 1 && memcmp(e, v, el - 1) == 0;
    return el == vlen && memcmp(e, v, vlen) == 0;
}

static bool list_match(char **list, const char *v)
{
    if (!list)
        return true;
    if (!v || !v[0])
        return false;
    size_t vl = strlen(v);
    for (char **p = list; *p; p++)
        if (entry_match(*p, v, vl))
            return true;
    return false;
}

static bool roles_match(char **list, const char *roles)
{
    if (!list)
        return true;
    if (!roles)
        return false;
    for (const char *p = roles; *p;) {
        while (*p == ' ')
            p++;
        const char *e = p;
        while (*e && *e != ' ')
            e++;
        if (e > p)
            for (char **q = list; *q; q++)
                if (entry_match(*q, p, (size_t)(e - p)))
                    return true;
        p = e;
    }
    return false;
}

bool ag_pol_scope_match(const ag_pol_scope *sc, const ag_policy_call *call, const char *deployment)
{
    const ag_identity *id = call ? call->identity : NULL;
    if (!list_match(sc->tenants, id ? id->tid : NULL))
        return false;
    if (sc->apps && !list_match(sc->apps, id ? id->app : NULL) &&
        !list_match(sc->apps, id ? id->name : NULL))
        return false;
    if (!roles_match(sc->roles, id ? id->roles : NULL))
        return false;
    if (!list_match(sc->deployments, deployment))
        return false;
    if (!list_match(sc->operations, call ? call->operation : NULL))
        return false;
    return true;
}

void ag_pol_view_build(const ag_policy *pol, const ag_policy_call *call, const char *deployment,
                       ag_policy_dir dir, uint64_t *bits, ag_pol_view *view)
{
    memset(view, 0, sizeof *view);
    size_t words = (pol->nrules + 63) / 64;
    memset(bits, 0, (words ? words : 1) * sizeof *bits);
    view->active = bits;
    view->dir = dir;
    for (size_t r = 0; r < pol->nrules; r++) {
        const ag_pol_rule *ru = &pol->rules[r];
        if (!(ru->dirs & (unsigned)dir))
            continue;
        if (ru->scoped && (!ag_pol_scope_match(&ru->scope, call, deployment) ||
                           (ru->has_exempt && ag_pol_scope_match(&ru->exempt, call, deployment))))
            continue;
        bits[r / 64] |= 1ull << (r % 64);
        switch (ru->kind) {
        case AG_POL_DETECTOR:
            if (ru->det == AG_DET_PROMPT_INJECTION)
                view->injection = true;
            else
                view->det_mask |= AG_DET_BIT(ru->det);
            break;
        case AG_POL_REGEX:
            view->regex = true;
            break;
        case AG_POL_KEYWORDS:
            view->keywords = true;
            break;
        }
    }
}

static inline bool active(const ag_pol_view *v, size_t r)
{
    return (v->active[r / 64] >> (r % 64)) & 1u;
}

/* ---- matches ---- */

static void add_match(ag_policy_scratch *s, uint32_t rule, size_t nb, size_t ne, bool open)
{
    if (s->nm == s->cap_m) {
        size_t cap = s->cap_m ? s->cap_m * 2 : 64;
        ag_pol_match *m = realloc(s->m, cap * sizeof *m);
        if (!m) {
            s->oom = 1;
            return;
        }
        s->m = m;
        s->cap_m = cap;
    }
    ag_pol_match *m = &s->m[s->nm++];
    m->rule = rule;
    m->text = s->cur_text;
    ag_norm_span(&s->norm, nb, ne, &m->start, &m->end);
    m->open = open;
    if (open)
        m->end = s->norm.src_len;
}

static void add_whole(ag_policy_scratch *s, uint32_t rule)
{
    if (s->norm.len == 0)
        return;
    add_match(s, rule, 0, s->norm.len, false);
    s->m[s->nm - 1].start = 0;
    s->m[s->nm - 1].end = s->norm.src_len;
}

static inline bool word_byte(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c >= 0x80 ||
           (c >= 'A' && c <= 'Z');
}

static int lit_cb(void *arg, uint32_t id, size_t end)
{
    ag_policy_scratch *s = arg;
    const ag_policy *pol = s->pol;
    uint32_t idx = AG_LIT_INDEX(id);
    switch (AG_LIT_KIND(id)) {
    case AG_LIT_KEYWORD: {
        const ag_pol_keyword *kw = &pol->kw[idx];
        if (!active(s->view, kw->rule))
            break;
        size_t start = end - kw->len;
        if (start < s->kw_end[kw->rule])
            break; /* overlaps this rule's previous match: matches do not overlap */
        if (pol->rules[kw->rule].whole_word) {
            const unsigned char *f = (const unsigned char *)s->norm.fold;
            if ((start > 0 && word_byte(f[start - 1]) && word_byte(f[start])) ||
                (end < s->norm.len && word_byte(f[end]) && word_byte(f[end - 1])))
                break;
        }
        add_match(s, kw->rule, start, end, false);
        s->kw_end[kw->rule] = (uint32_t)end;
        break;
    }
    case AG_LIT_REGEX:
        s->cand[idx / 64] |= 1ull << (idx % 64);
        break;
    case AG_LIT_SIGNAL:
        s->sig_cand |= 1u << idx;
        break;
    default:
        break;
    }
    return s->oom;
}

static int det_cb(void *arg, const ag_detect_hit *h)
{
    ag_policy_scratch *s = arg;
    const ag_policy *pol = s->pol;
    for (size_t r = 0; r < pol->nrules; r++) {
        const ag_pol_rule *ru = &pol->rules[r];
        if (ru->kind == AG_POL_DETECTOR && ru->det == h->det && active(s->view, r))
            add_match(s, (uint32_t)r, h->start, h->end, h->open);
    }
    return s->oom;
}

/* Per byte: bit k set when the byte belongs to run kind k (AG_RUN_DIGITS, _UPPER, _ALNUM). */
static const uint8_t run_class[256] = {
    ['0'] = 7, ['1'] = 7, ['2'] = 7, ['3'] = 7, ['4'] = 7, ['5'] = 7, ['6'] = 7, ['7'] = 7, ['8'] = 7, ['9'] = 7,
    ['A'] = 6, ['B'] = 6, ['C'] = 6, ['D'] = 6, ['E'] = 6, ['F'] = 6, ['G'] = 6, ['H'] = 6, ['I'] = 6, ['J'] = 6,
    ['K'] = 6, ['L'] = 6, ['M'] = 6, ['N'] = 6, ['O'] = 6, ['P'] = 6, ['Q'] = 6, ['R'] = 6, ['S'] = 6, ['T'] = 6,
    ['U'] = 6, ['V'] = 6, ['W'] = 6, ['X'] = 6, ['Y'] = 6, ['Z'] = 6,
    ['a'] = 4, ['b'] = 4, ['c'] = 4, ['d'] = 4, ['e'] = 4, ['f'] = 4, ['g'] = 4, ['h'] = 4, ['i'] = 4, ['j'] = 4,
    ['k'] = 4, ['l'] = 4, ['m'] = 4, ['n'] = 4, ['o'] = 4, ['p'] = 4, ['q'] = 4, ['r'] = 4, ['s'] = 4, ['t'] = 4,
    ['u'] = 4, ['v'] = 4, ['w'] = 4, ['x'] = 4, ['y'] = 4, ['z'] = 4};

/* True when t[0..len) holds n consecutive bytes of run kind k. Looks at the last byte of each window
 * of n first: a byte outside the kind rules out every window holding it, so on text without long
 * runs most bytes are never read (the check costs about len / n steps). */
static bool has_run(const unsigned char *t, size_t len, unsigned k, size_t n)
{
    const unsigned bit = 1u << k;
    size_t i = n - 1; /* the end of the window under test */
    while (i < len) {
        if (!(run_class[t[i]] & bit)) {
            i += n;
            continue;
        }
        size_t run = 1; /* t[i] is in; extend back, then forward */
        while (run < n && (run_class[t[i - run]] & bit))
            run++;
        if (run == n)
            return true;
        size_t j = i + 1;
        while (j < len && run < n && (run_class[t[j]] & bit)) {
            run++;
            j++;
        }
        if (run == n)
            return true;
        i = j + n; /* t[j] is out (or the end): the next window ends n bytes past it */
    }
    return false;
}

/* True when the 8 bytes of x hold an ASCII digit. */
static bool word_has_digit(uint64_t x)
{
    const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
    uint64_t low7 = x & ~high;
    /* per byte, without carries between bytes: (low7 + (0x80 - '0')) sets the high bit when the
     * byte is >= '0', (low7 + (0x80 - ('9' + 1))) when >= '9' + 1; bytes >= 0x80 are not digits */
    uint64_t ge0 = low7 + ones * (0x80 - '0');
    uint64_t gt9 = low7 + ones * (0x80 - ('9' + 1));
    return (ge0 & ~gt9 & ~x & high) != 0;
}

/* True when the current text holds a run of at least n bytes of kind k; answers are kept per text
 * (the longest run known present, the shortest known absent). */
static bool text_has_run(ag_policy_scratch *s, unsigned k, unsigned n)
{
    const unsigned char *t = (const unsigned char *)s->norm.text;
    size_t len = s->norm.len;
    if (!s->runs_known) {
        /* digits are rare in prose: one pass eight bytes at a time settles "no digit at all" */
        size_t i = 0;
        bool digit = false;
        for (; i + 8 <= len && !digit; i += 8) {
            uint64_t x;
            memcpy(&x, t + i, 8);
            digit = word_has_digit(x);
        }
        for (; i < len && !digit; i++)
            digit = (unsigned)(t[i] - '0') < 10u;
        for (unsigned j = 0; j < AG_RUN_KINDS; j++) {
            s->run_yes[j] = 0;
            s->run_no[j] = UINT16_MAX;
        }
        if (!digit)
            s->run_no[AG_RUN_DIGITS] = 1;
        s->runs_known = true;
    }
    if (n <= s->run_yes[k])
        return true;
    if (n >= s->run_no[k])
        return false;
    bool yes = has_run(t, len, k, n);
    if (yes)
        s->run_yes[k] = (uint16_t)n;
    else
        s->run_no[k] = (uint16_t)n;
    return yes;
}

/* True when the current text has runs as long as every match of rule ru needs. */
static bool runs_suffice(ag_policy_scratch *s, const ag_pol_rule *ru)
{
    if (!ru->needs_runs)
        return true;
    for (unsigned k = 0; k < AG_RUN_KINDS; k++)
        if (ru->need_run[k] && !text_has_run(s, k, ru->need_run[k]))
            return false;
    return true;
}

static void run_regex(const ag_policy *pol, ag_policy_scratch *s, uint32_t r)
{
    const ag_pol_rule *ru = &pol->rules[r];
    const char *text = s->norm.text;
    size_t len = s->norm.len, off = 0;
    unsigned found = 0;
    while (off < len && found < MAX_MATCHES_PER_RULE_TEXT) {
        int rc = ru->jit ? pcre2_jit_match(ru->re, (PCRE2_SPTR)text, len, off, 0, s->md, s->mc)
                         : pcre2_match(ru->re, (PCRE2_SPTR)text, len, off, PCRE2_NO_UTF_CHECK, s->md,
                                       s->mc);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0) {
            s->errs[r]++;
            if (ru->on_error == AG_ONERR_MATCH)
                add_whole(s, r);
            break;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(s->md);
        size_t ms = ov[0], me = ov[1];
        if (me <= ms) {
            /* A zero-length match (lookaround-only patterns) counts for block and flag; it has
             * nothing to redact. Then step one character. */
            if (!ag_pol_rewrites(ru, s->view->dir)) {
                add_match(s, r, ms, ms + 1, false);
                if (s->nm)
                    s->m[s->nm - 1].end = s->m[s->nm - 1].start;
                found++;
            }
            off = ms + 1;
            while (off < len && ((unsigned char)text[off] & 0xC0) == 0x80)
                off++;
            continue;
        }
        add_match(s, r, ms, me, false);
        found++;
        off = me;
    }
}

static unsigned run_signal(const ag_policy *pol, ag_policy_scratch *s, size_t k)
{
    const char *fold = s->norm.fold;
    size_t len = s->norm.len, off = 0;
    unsigned n = 0;
    while (off < len && n < 64) {
        const ag_pol_signal *sg = &pol->sig[k];
        int rc = sg->jit ? pcre2_jit_match(sg->re, (PCRE2_SPTR)fold, len, off, 0, s->md, s->mc)
                         : pcre2_match(sg->re, (PCRE2_SPTR)fold, len, off, PCRE2_NO_UTF_CHECK,
                                       s->md, s->mc);
        if (rc < 0)
            break;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(s->md);
        n++;
        off = ov[1] > ov[0] ? ov[1] : ov[0] + 1;
    }
    return n;
}

int ag_pol_scan(const ag_policy *pol, ag_policy_scratch *s, const ag_pol_view *view,
                const char *text, size_t len, uint32_t text_id)
{
    if (!view->det_mask && !view->keywords && !view->regex && !view->injection)
        return 0;
    if (ag_norm_run(&s->norm, text, len) != 0)
        return -1;
    s->pol = pol;
    s->view = view;
    s->cur_text = text_id;
    s->oom = 0;
    s->runs_known = false;
    s->sig_cand = 0;
    size_t words = (pol->nrules + 63) / 64;
    memset(s->cand, 0, (words ? words : 1) * sizeof *s->cand);
    if (view->keywords)
        memset(s->kw_end, 0, (pol->nrules ? pol->nrules : 1) * sizeof *s->kw_end);
    const ag_norm *n = &s->norm;

    if (view->keywords || view->regex || view->injection)
        ag_litset_scan(pol->lits, n->fold, n->len, lit_cb, s);
    if (view->det_mask && !s->oom)
        ag_detect_scan(n->text, n->len, view->det_mask, det_cb, s);
    if (view->regex && !s->oom) {
        for (size_t r = 0; r < pol->nrules; r++) {
            const ag_pol_rule *ru = &pol->rules[r];
            if (ru->kind != AG_POL_REGEX || !active(view, r))
                continue;
            if (ru->prefiltered && !((s->cand[r / 64] >> (r % 64)) & 1u))
                continue;
            if (!runs_suffice(s, ru))
                continue; /* no run long enough for any match */
            run_regex(pol, s, (uint32_t)r);
        }
    }
    if (view->injection) {
        if (n->removed_tag) {
            s->sig_seen |= 1u << AG_SIG_HIDDEN_TAGS;
            s->sig_hits++;
        }
        if (n->removed_bidi) {
            s->sig_seen |= 1u << AG_SIG_BIDI;
            s->sig_hits++;
        }
        for (size_t k = 0; k < pol->nsig; k++) {
            if (!pol->sig[k].re || !(s->sig_cand & (1u << k)))
                continue;
            unsigned c = run_signal(pol, s, k);
            if (c) {
                s->sig_seen |= 1u << k;
                s->sig_hits += c;
            }
        }
    }
    return s->oom ? -1 : 0;
}

/* ---- redaction ---- */

static int cmp_match(const void *a, const void *b)
{
    const ag_pol_match *x = a, *y = b;
    if (x->text != y->text)
        return x->text < y->text ? -1 : 1;
    if (x->start != y->start)
        return x->start < y->start ? -1 : 1;
    if (x->end != y->end)
        return x->end > y->end ? -1 : 1;
    return x->rule < y->rule ? -1 : x->rule > y->rule;
}

void ag_pol_sort_matches(ag_pol_match *m, size_t n)
{
    if (n > 1)
        qsort(m, n, sizeof *m, cmp_match);
}

bool ag_pol_rewrites(const ag_pol_rule *r, ag_policy_dir dir)
{
    return r->action == AG_ACT_REDACT || (dir == AG_DIR_RESPONSE && r->action == AG_ACT_BLOCK);
}

const char *ag_pol_rule_source(const ag_pol_rule *r)
{
    switch (r->kind) {
    case AG_POL_DETECTOR: return ag_detector_name(r->det);
    case AG_POL_REGEX: return "regex";
    case AG_POL_KEYWORDS: return "keywords";
    }
    return "unknown";
}

static int reserve_buf(ag_policy_scratch *s, size_t need)
{
    if (need <= s->cap_buf)
        return 0;
    size_t cap = s->cap_buf ? s->cap_buf : 256;
    while (cap < need)
        cap *= 2;
    char *b = realloc(s->buf, cap);
    if (!b)
        return -1;
    s->buf = b;
    s->cap_buf = cap;
    return 0;
}

size_t ag_pol_redact(const ag_policy *pol, ag_policy_scratch *s, const char *src, size_t len,
                     const ag_pol_match *m, size_t n, ag_policy_dir dir)
{
    size_t extra = 0;
    for (size_t k = 0; k < n; k++)
        extra += pol->rules[m[k].rule].mask_len;
    if (reserve_buf(s, len + extra + 1) != 0)
        return (size_t)-1;
    size_t pos = 0, w = 0;
    for (size_t k = 0; k < n; k++) {
        const ag_pol_rule *ru = &pol->rules[m[k].rule];
        if (!ag_pol_rewrites(ru, dir))
            continue;
        size_t st = m[k].start, en = m[k].end > len ? len : m[k].end;
        if (st < pos) { /* overlaps the span already masked: extend it */
            if (en > pos)
                pos = en;
            continue;
        }
        memcpy(s->buf + w, src + pos, st - pos);
        w += st - pos;
        memcpy(s->buf + w, ru->mask, ru->mask_len);
        w += ru->mask_len;
        pos = en;
    }
    memcpy(s->buf + w, src + pos, len - pos);
    w += len - pos;
    s->buf[w] = '\0';
    return w;
}
