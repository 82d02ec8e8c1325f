/* A JSON response held for the response policy, parsed only where the gateway reads it.
 *
 * The response policy and the audit text read the top-level members "choices", "output" and
 * "object", and in each choice its "message", "text" and "index". Everything else (usage, which
 * usage.c scans by itself; prompt_filter_results; ids; each choice's content_filter_results and
 * logprobs: most of an Azure chat completion's nodes and numbers) is stepped over without building
 * a tree. Each value parsed keeps its span in the original bytes, so after a redaction only those
 * values are printed again and the bytes around them go out as they came. When the text is not
 * what the stepper follows (a \u escape in a value stepped over, an escaped key, a choice that is
 * not an object, more values than fit), the whole text is parsed with cJSON instead, as it always
 * was.
 *
 * Allocation: cJSON's (inside the request's JSON arena when the caller entered it). */
#ifndef AOAI_GUARD_RESP_DOC_H
#define AOAI_GUARD_RESP_DOC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>

#define AG_RESP_DOC_SPANS 64

typedef struct ag_resp_doc {
    cJSON *root;         /* NULL when the text is not JSON; owned: ag_resp_doc_free */
    bool partial;        /* root holds only the values read; spans[k] is where the k-th was */
    uint64_t stepped;    /* bit i: root's member i ("choices") was stepped into, element by element */
    size_t nspans;
    struct {
        size_t start, end;
    } spans[AG_RESP_DOC_SPANS];
} ag_resp_doc;

/* Makes d empty (no tree), ready for ag_resp_doc_parse or ag_resp_doc_free. */
void ag_resp_doc_init(ag_resp_doc *d);

/* Parses text[0..len) into d (whatever it held before is not freed): the members above when the
 * stepper follows the text, else the whole text. d->root is NULL when neither worked. */
void ag_resp_doc_parse(ag_resp_doc *d, const char *text, size_t len);

/* The response after its tree was changed in place (string values replaced, nothing added or
 * removed): partial, the original text with each value's span replaced by that value printed;
 * else the whole tree printed. Returns a string to free with cJSON_free and its length in *out_len,
 * or NULL (out of memory, or a tree whose members no longer match the spans). */
char *ag_resp_doc_print(const ag_resp_doc *d, const char *text, size_t len, size_t *out_len);

/* Deletes the tree; d may then be parsed again. */
void ag_resp_doc_free(ag_resp_doc *d);

#endif
