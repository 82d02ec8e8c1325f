/* Private to src/policy/: the compiled policy, the per-worker scratch and the matching core shared
 * by policy_conf.c, policy_match.c, policy_request.c and policy_stream.c. */
#ifndef AOAI_GUARD_POLICY_INT_H
#define AOAI_GUARD_POLICY_INT_H

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aoai_guard/detect.h"
#include "aoai_guard/litset.h"
#include "aoai_guard/normalize.h"
#include "aoai_guard/policy.h"

typedef enum ag_pol_kind {
    AG_POL_DETECTOR = 0,
    AG_POL_REGEX,
    AG_POL_KEYWORDS,
} ag_pol_kind;

/* Literal ids in the shared litset: kind in the top 8 bits, index below. */
#define AG_LIT_KEYWORD 1u   /* index into pol->kw */
#define AG_LIT_REGEX 2u     /* index: rule number (prefilter literal seen) */
#define AG_LIT_SIGNAL 3u    /* index: injection signal number */
#define AG_LIT_ID(kind, idx) (((uint32_t)(kind) << 24) | (uint32_t)(idx))
#define AG_LIT_KIND(id) ((id) >> 24)
#define AG_LIT_INDEX(id) ((id) & 0xFFFFFFu)

/* A scope: every non-empty list must match (OR inside a list). NULL list = any. Entries ending in
 * '*' match by prefix. */
typedef struct ag_pol_scope {
    char **tenants;
    char **apps;
    char **roles;
    char **deployments;
    char **operations;
} ag_pol_scope;

typedef enum ag_pol_onerr {
    AG_ONERR_NO_MATCH = 0,
    AG_ONERR_MATCH,
} ag_pol_onerr;

/* Kinds of character runs a regex rule can require (ASCII only: \d and classes without UCP). */
enum {
    AG_RUN_DIGITS = 0, /* 0-9 */
    AG_RUN_UPPER,      /* A-Z 0-9 */
    AG_RUN_ALNUM,      /* A-Z a-z 0-9 */
    AG_RUN_KINDS
};

typedef struct ag_pol_rule {
    char *name;
    ag_pol_kind kind;
    ag_detector det;          /* AG_POL_DETECTOR */
    ag_policy_action action;  /* flag / redact / block */
    char *mask;               /* replacement text for redact (and response-side block) */
    size_t mask_len;
    ag_pol_scope scope;
    ag_pol_scope exempt;
    bool has_exempt;
    bool scoped;              /* scope or exempt names something: checked for every call */
    unsigned dirs;            /* AG_DIR_REQUEST | AG_DIR_RESPONSE */
    int threshold;            /* prompt_injection */
    /* regex */
    pcre2_code *re;
    bool jit;                 /* JIT-compiled: matched with pcre2_jit_match */
    bool prefiltered;         /* runs only when one of its literals occurs */
    /* Every match holds a run of this many consecutive characters of each kind: a text whose
     * longest run is shorter is not searched (policy_conf.c, regex_runs). 0: nothing known. */
    uint16_t need_run[AG_RUN_KINDS];
    bool needs_runs;          /* one of them is not 0 */
    ag_pol_onerr on_error;
    /* keywords */
    bool whole_word;
} ag_pol_rule;

typedef struct ag_pol_keyword {
    uint32_t rule;
    uint32_t len;             /* bytes of the folded keyword */
} ag_pol_keyword;

typedef enum ag_pol_tokens_action {
    AG_TOKENS_CLAMP = 0,
    AG_TOKENS_REJECT,
} ag_pol_tokens_action;

typedef struct ag_pol_constraint {
    char *name;
    ag_pol_scope scope;
    ag_pol_scope exempt;
    bool has_exempt;
    char **allowed_deployments;   /* NULL: any */
    long long max_tokens;         /* 0: no cap */
    ag_pol_tokens_action tokens_action;
    bool insert_max_tokens;
    long long max_prompt_chars;   /* 0: no cap */
    long long max_messages;       /* 0: no cap */
    char **denied_params;
} ag_pol_constraint;

/* Built-in prompt-injection signals (injection.c). */
typedef struct ag_pol_signal {
    const char *name;
    int weight;
    pcre2_code *re;           /* run on the folded text; NULL for the normaliser-count signals */
    bool jit;
} ag_pol_signal;

#define AG_SIG_HIDDEN_TAGS 0u /* signal index of "hidden_tag_characters" (normaliser count) */
#define AG_SIG_BIDI 1u        /* signal index of "bidi_controls" (normaliser count) */
#define AG_POL_MAX_SIGNALS 16

struct ag_policy {
    ag_pol_rule *rules;
    size_t nrules;
    ag_pol_constraint *cons;
    size_t ncons;
    ag_litset *lits;
    ag_pol_keyword *kw;
    size_t nkw;
    ag_pol_signal sig[AG_POL_MAX_SIGNALS];
    size_t nsig;
    bool has_injection;
    uint32_t match_limit;
    uint32_t depth_limit;
    uint32_t heap_limit_kb;
    ag_pol_onerr on_regex_error;
    size_t holdback;
    size_t max_ovector;
};

/* What a call may match: the rules in scope for one direction. */
typedef struct ag_pol_view {
    const uint64_t *active;   /* bit r set: rule r applies */
    uint32_t det_mask;        /* detectors the active rules need */
    bool keywords;            /* an active keyword rule exists */
    bool regex;               /* an active regex rule exists */
    bool injection;           /* an active prompt_injection rule exists */
    ag_policy_dir dir;
} ag_pol_view;

/* One matched span on the original text (never the text itself). */
typedef struct ag_pol_match {
    uint32_t rule;
    uint32_t text;            /* which text (request: index into scratch->texts) */
    size_t start, end;        /* original byte offsets */
    bool open;                /* runs on past the end of the text (PEM without END) */
} ag_pol_match;

struct ag_policy_scratch {
    ag_norm norm;
    pcre2_match_data *md;
    pcre2_match_context *mc;
    pcre2_jit_stack *js;
    /* sized to the policy in use (grown on demand) */
    size_t rules_cap;
    uint64_t *active;         /* request view bits */
    uint64_t *cand;           /* per text: regex rules whose prefilter literal was seen */
    uint32_t *errs;           /* per rule: regex errors in this call */
    uint32_t *count;          /* per rule: spans in this call */
    uint32_t *kw_end;         /* per rule: end of its last keyword match in the current text */
    /* per call */
    uint32_t sig_seen;        /* bit k: injection signal k seen */
    uint32_t sig_cand;        /* bit k: an anchor of signal k occurs in the current text */
    uint32_t sig_hits;        /* injection signal occurrences */
    ag_pol_match *m;
    size_t nm, cap_m;
    cJSON **texts;
    size_t *text_len;         /* strlen of each text's value */
    size_t ntexts, cap_texts;
    char *buf;                /* redaction output */
    size_t cap_buf;
    /* state of the text being scanned (for the litset / detector callbacks) */
    const ag_policy *pol;
    const ag_pol_view *view;
    uint32_t cur_text;
    int oom;
    bool runs_known;          /* run_yes / run_no set up for the current text */
    uint16_t run_yes[AG_RUN_KINDS]; /* a run this long of each kind is in the current text */
    uint16_t run_no[AG_RUN_KINDS];  /* no run this long is (UINT16_MAX: not known) */
};

/* Sizes the scratch's per-rule arrays for pol. Returns 0 or -1. */
int ag_pol_scratch_fit(ag_policy_scratch *s, const ag_policy *pol);

/* True when the call (identity, deployment, operation) is in scope. */
bool ag_pol_scope_match(const ag_pol_scope *sc, const ag_policy_call *call, const char *deployment);

/* Fills view and the active bits (bits has room for pol->nrules) for one direction. */
void ag_pol_view_build(const ag_policy *pol, const ag_policy_call *call, const char *deployment,
                       ag_policy_dir dir, uint64_t *bits, ag_pol_view *view);

/* Normalises text[0..len) and appends every match of the view's rules to s->m (tagged text_id);
 * regex errors go to s->errs, injection signals to s->sig_seen / s->sig_hits. Returns 0 or -1. */
int ag_pol_scan(const ag_policy *pol, ag_policy_scratch *s, const ag_pol_view *view,
                const char *text, size_t len, uint32_t text_id);

/* Compiles the built-in injection signals into pol->sig. Returns 0 or -1 with err set. */
int ag_pol_signals_compile(ag_policy *pol, ag_conf_err *err);

/* Adds the injection signals' anchor literals to pol->lits. Returns 0 or -1. */
int ag_pol_signals_add_literals(ag_policy *pol);

/* Score of the signals in seen (bitmask). */
int ag_pol_signals_score(const ag_policy *pol, uint32_t seen);

/* Response-side rules over a JSON response tree (choices / output texts): redacts in place and sets
 * *modified; adds decisions to dec unless dec is NULL (text already counted on the stream). */
int ag_pol_response_tree(const ag_policy *pol, ag_policy_scratch *s, const ag_policy_call *call,
                         cJSON *resp, ag_policy_decisions *dec, bool *modified);

/* Sorts m[0..n) by (text, start, end desc). */
void ag_pol_sort_matches(ag_pol_match *m, size_t n);

/* Writes src[0..len) with the redact-class spans of m[0..n) (same text, sorted) replaced by their
 * rule's mask into s->buf; returns the new length or (size_t)-1 when out of memory. A span with
 * action flag is left as is. */
size_t ag_pol_redact(const ag_policy *pol, ag_policy_scratch *s, const char *src, size_t len,
                     const ag_pol_match *m, size_t n, ag_policy_dir dir);

/* True when a rule's action changes the text on that side (redact; block on the response side). */
bool ag_pol_rewrites(const ag_pol_rule *r, ag_policy_dir dir);

/* The decision "source" string of a rule. */
const char *ag_pol_rule_source(const ag_pol_rule *r);

#endif
