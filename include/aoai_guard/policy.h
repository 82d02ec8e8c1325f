/* The prompt-content policy engine: rules (detectors, regular expressions, keyword lists, prompt
 * injection score) with actions block / redact / flag, scoped by identity and deployment, plus
 * request constraints (allowed deployments, max_tokens cap, prompt size, denied parameters).
 *
 * Threading and memory:
 *   - ag_policy is compiled once from the "policy" config section (ag_policy_load) and is then
 *     immutable: all worker threads share it read-only. Whoever loaded it frees it, after the last
 *     request holding it has finished (decisions point at its rule names).
 *   - ag_policy_scratch is per worker thread: normalisation buffers, PCRE2 match data and JIT
 *     stack, span lists. It is only used during a call and holds nothing between calls, so one
 *     scratch serves all the requests of a worker, and any policy snapshot. Never share one
 *     between threads.
 *   - ag_policy_result is per request (embed it in the request); it holds the verdict and the
 *     decision list, and owns the re-serialised body when the verdict is AG_VERDICT_MODIFIED.
 *
 * Request pipeline (inspect stage, on the worker thread, after authenticate and admit):
 *     ag_policy_result_init(&r);
 *     ag_policy_inspect_request(pol, scratch, &call, body_tree, &r);
 *     ALLOW    -> forward the original bytes
 *     MODIFIED -> forward r.body / r.body_len (redacted and/or clamped, cJSON_PrintUnformatted)
 *     BLOCK    -> answer r.status (400) with ag_policy_error_body() (Azure content_filter shape)
 *     REJECT   -> answer r.status (400/403) with ag_policy_error_body() (constraint violated)
 *     ERROR    -> out of memory: fail closed (500)
 *   then, on the response: ag_policy_inspect_response() for JSON bodies, or policy_stream.h for
 *   SSE; finally the audit record and access log read r.decisions (ag_policy_decisions_json /
 *   ag_policy_decisions_format) and ag_policy_result_clear(&r).
 * The optional Azure AI Content Safety call-out is not part of this module yet: its place is after
 * the local rules, only when the local verdict is ALLOW or MODIFIED (see docs/policy.md). */
#ifndef AOAI_GUARD_POLICY_H
#define AOAI_GUARD_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <cjson/cJSON.h>

#include "aoai_guard/confparse.h"
#include "aoai_guard/identity.h"

typedef struct ag_policy ag_policy;
typedef struct ag_policy_scratch ag_policy_scratch;

typedef enum ag_policy_action {
    AG_ACT_FLAG = 0, /* forward unchanged, record */
    AG_ACT_REDACT,   /* replace the matched span with the rule's mask */
    AG_ACT_BLOCK,    /* refuse the request (response side: acts as redact) */
    AG_ACT_CLAMP,    /* constraint: max_tokens lowered to the cap */
    AG_ACT_REJECT,   /* constraint violated: request refused */
} ag_policy_action;

typedef enum ag_policy_dir {
    AG_DIR_REQUEST = 1,
    AG_DIR_RESPONSE = 2,
} ag_policy_dir;

typedef enum ag_policy_verdict {
    AG_VERDICT_ALLOW = 0,
    AG_VERDICT_MODIFIED,
    AG_VERDICT_BLOCK,
    AG_VERDICT_REJECT,
    AG_VERDICT_ERROR,
} ag_policy_verdict;

#define AG_POLICY_MAX_DECISIONS 32

/* One rule that fired. Never holds matched text: only names and counts. */
typedef struct ag_policy_decision {
    const char *rule;        /* rule or constraint-set name (points into the policy) */
    const char *source;      /* detector name, "regex", "keywords" or "constraint" */
    ag_policy_action action;
    ag_policy_dir dir;
    unsigned spans;          /* matched spans (injection: signals seen; clamp: 1) */
    unsigned errors;         /* regex matches cut off by the match limit */
} ag_policy_decision;

typedef struct ag_policy_decisions {
    ag_policy_decision items[AG_POLICY_MAX_DECISIONS];
    unsigned count;
    unsigned dropped;        /* decisions that did not fit */
} ag_policy_decisions;

/* Who calls what: identity may be NULL (anonymous); deployment NULL means "take the body's model"
 * (v1 and Responses paths); operation is the path tail: "chat/completions", "completions",
 * "embeddings", "responses", "images/generations", "audio/transcriptions", ... */
typedef struct ag_policy_call {
    const ag_identity *identity;
    const char *deployment;
    const char *operation;
} ag_policy_call;

typedef struct ag_policy_result {
    ag_policy_verdict verdict;
    int status;              /* BLOCK: 400; REJECT: 400, or 403 for a deployment not allowed */
    const char *rule;        /* BLOCK / REJECT: the first blocking rule or the constraint set */
    char code[48];           /* REJECT: error code ("max_tokens_exceeded", ...) */
    char param[48];          /* REJECT: the offending parameter */
    char message[256];       /* REJECT: human-readable reason (no request content) */
    char *body;              /* MODIFIED: new request body, owned here (ag_policy_result_clear) */
    size_t body_len;
    unsigned texts;          /* strings inspected */
    unsigned chars;          /* code points in them */
    unsigned images;         /* image parts counted, not read */
    unsigned messages;       /* chat messages / Responses input items */
    int injection_score;     /* sum of the prompt-injection signal weights seen */
    char deployment[128];    /* the deployment rules were scoped on (path, else body model):
                              * pass it as call.deployment on the response side */
    ag_policy_decisions decisions;
} ag_policy_result;

/* Compiles the "policy" config section (path names it in errors, e.g. "policy"). On success *out is
 * a new immutable policy (free with ag_policy_free); on error returns -1 with the key path in err:
 * unknown keys, bad values, a regex that does not compile (rule name and PCRE2 offset). */
int ag_policy_load(const cJSON *section, const char *path, ag_policy **out, ag_conf_err *err);

/* Frees a compiled policy (NULL is fine). No call may be using it. */
void ag_policy_free(ag_policy *pol);

/* Number of content rules in the policy. */
size_t ag_policy_rule_count(const ag_policy *pol);

/* The configured stream hold-back window in bytes (stream_holdback_bytes). */
size_t ag_policy_holdback(const ag_policy *pol);
/* True when some rule applies to responses (the gateway then inspects completions). */
bool ag_policy_has_response_rules(const ag_policy *pol);

/* Creates a worker's scratch; NULL when out of memory. */
ag_policy_scratch *ag_policy_scratch_new(void);

/* Frees a scratch (NULL is fine). */
void ag_policy_scratch_free(ag_policy_scratch *s);

/* Zeroes a result before first use. */
void ag_policy_result_init(ag_policy_result *res);

/* Frees what the result owns (the modified body) and zeroes it. */
void ag_policy_result_clear(ag_policy_result *res);

/* Applies the request constraints only: may set REJECT, or clamp max_tokens in body (verdict
 * MODIFIED, body re-serialised). Returns 0, or -1 when out of memory (verdict ERROR). */
int ag_policy_check_constraints(const ag_policy *pol, ag_policy_scratch *s,
                                const ag_policy_call *call, cJSON *body, ag_policy_result *res);

/* Constraints, then every content rule in scope for this call over every text the model would
 * read. May rewrite string values of body in place (redaction) and then stores the re-serialised
 * body in res. body may be NULL (multipart audio): only scope and deployment checks apply.
 * Returns 0 with the verdict in res, or -1 when out of memory (verdict ERROR). */
int ag_policy_inspect_request(const ag_policy *pol, ag_policy_scratch *s,
                              const ag_policy_call *call, cJSON *body, ag_policy_result *res);

/* Runs response-side rules on a JSON (non-streamed) response body: choices[].message.content,
 * choices[].text, tool call arguments, Responses output[].content[].text. Redacts in place and
 * sets *modified (the caller re-serialises); decisions are added to dec. Returns 0 or -1. */
int ag_policy_inspect_response(const ag_policy *pol, ag_policy_scratch *s,
                               const ag_policy_call *call, cJSON *resp, ag_policy_decisions *dec,
                               bool *modified);

/* The error body to send for a BLOCK or REJECT verdict, as malloc'd JSON (caller frees with free),
 * length in *len. BLOCK: {"error":{"code":"content_filter",...,"innererror":{"code":
 * "ResponsibleAIPolicyViolation","content_filter_result":{"custom_blocklists":{"filtered":true,
 * "details":[{"filtered":true,"id":"<rule>"}]}}}}}. NULL for other verdicts or out of memory. */
char *ag_policy_error_body(const ag_policy_result *res, size_t *len);

/* Adds (or merges into the entry with the same rule and direction) one decision. */
void ag_policy_decisions_add(ag_policy_decisions *d, const ag_policy_decision *item);

/* The decision list as a JSON array for the audit record: [{"rule","source","action","dir",
 * "spans","errors"}]; the caller owns the result (cJSON_Delete). NULL when out of memory. */
cJSON *ag_policy_decisions_json(const ag_policy_decisions *d);

/* The decision list in one access-log token: "rule:action:spans[:resp][:err=N],..." ("-" when
 * empty). Only whole items are written; those that do not fit in len are left out (always
 * NUL-terminated when len > 0). Returns the length written. */
size_t ag_policy_decisions_format(const ag_policy_decisions *d, char *buf, size_t len);

/* "flag", "redact", "block", "clamp", "reject". */
const char *ag_policy_action_name(ag_policy_action a);

/* "allow", "modified", "block", "reject", "error". */
const char *ag_policy_verdict_name(ag_policy_verdict v);

#endif
