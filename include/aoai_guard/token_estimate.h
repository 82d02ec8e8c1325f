/* Token estimates of Azure OpenAI request bodies, for reserving tokens at admission.
 *
 * A heuristic that tracks o200k_base/cl100k_base without their vocabularies: text is split the way
 * their pre-tokenizer splits it (letter runs with one leading space or punctuation mark, digit groups
 * of at most 3, punctuation runs, whitespace runs) and each piece is priced by class and length;
 * CJK and Hangul cost 1 token per character (cl100k-like; o200k needs fewer, so this errs high).
 * Chat messages add the OpenAI cookbook overhead (3 per message, 1 per name, 3 to prime the reply);
 * tool definitions follow the cookbook's function-counting rule. The error measured on
 * tests/unit/limit/corpus is printed by the unit test limit_estimate and documented in
 * docs/rate-limits.md. An exact tokenizer can replace this behind the same functions. */
#ifndef AOAI_GUARD_TOKEN_ESTIMATE_H
#define AOAI_GUARD_TOKEN_ESTIMATE_H

#include <stdbool.h>
#include <stddef.h>
#include <cjson/cJSON.h>

typedef struct ag_token_estimate {
    long long prompt;         /* estimated input tokens */
    long long completion_max; /* completion budget per choice the body asks for; -1 when unset */
    long long choices;        /* choices generated per request (n, best_of): >= 1 */
    bool completes;           /* false when the operation produces no completion (embeddings) */
} ag_token_estimate;

/* Estimated tokens of len bytes of UTF-8 text (invalid bytes count one token each); never < 0. */
long long ag_tokens_text(const char *s, size_t len);
/* The same count without the fast path for plain ASCII words: the unit tests' reference. */
long long ag_tokens_text_general(const char *s, size_t len);

/* Estimates a parsed request body for an operation ("chat/completions", "completions",
 * "embeddings", "responses"; anything else counts a top-level "prompt" string only). Reads the
 * body without modifying or keeping it; never fails (missing or odd fields count 0). */
void ag_tokens_estimate_request(const cJSON *body, const char *operation, ag_token_estimate *out);

/* Tokens to reserve: prompt + choices x (completion_max, or default_completion when unset),
 * clamped to [0, 10^12]. */
long long ag_tokens_estimate_cost(const ag_token_estimate *e, long long default_completion);

#endif
