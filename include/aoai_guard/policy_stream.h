/* Response-side policy on streamed (SSE) completions: detectors and rules run on the text deltas
 * as they arrive; redaction rewrites a delta before it is sent.
 *
 * Hold-back window (H = the policy's stream_holdback_bytes, default 256): the last H bytes of the
 * text seen so far are held back so that a match split over several deltas is found whole before
 * any of it is sent. A match that reaches into the held part is held whole as long as that keeps
 * the held text within 2*H; so at most 2*H bytes of original text are ever held (the bound
 * ag_policy_stream_held() reports), and every match of up to H bytes is redacted wherever the
 * chunk boundaries fall. Text is only re-scanned once at least H/4 new bytes have arrived, so
 * emission comes in bursts. A PEM private key whose END line is still to come is replaced by the
 * mask at once and the rest of the block is swallowed until its END line. Matches longer than H
 * (e.g. a JWT longer than H) may be partly sent before they are recognised: raise H if that matters.
 *
 * One ag_policy_stream per choice (n > 1 gives several). All text pointers returned stay valid until
 * the next call on the same stream. The stream holds no reference to the caller's identity or
 * deployment strings after init. */
#ifndef AOAI_GUARD_POLICY_STREAM_H
#define AOAI_GUARD_POLICY_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>

#include "aoai_guard/chat_chunk.h"
#include "aoai_guard/policy.h"

typedef struct ag_policy_stream {
    const ag_policy *policy;
    uint64_t *active;       /* response-side rules in scope for this call */
    uint32_t det_mask;
    bool any_rules;
    bool keywords, regex;
    char *buf;              /* held-back original text */
    size_t len, cap;
    char *out;              /* text to emit, valid until the next call */
    size_t out_len, out_cap;
    size_t holdback;
    bool suppress;          /* inside a redacted PEM block, waiting for its END line */
    uint32_t suppress_rule;
    uint32_t *spans;        /* per rule: finalised matches */
    uint32_t *errors;       /* per rule: regex runs cut off */
    size_t max_held;        /* largest hold-back seen (for tests and metrics) */
} ag_policy_stream;

/* Prepares a stream for one choice of one response; call->deployment should be the resolved one
 * (ag_policy_result.deployment). Returns 0, or -1 when out of memory. */
int ag_policy_stream_init(ag_policy_stream *st, const ag_policy *pol, const ag_policy_call *call);

/* Adds a text delta; *out / *out_len receive the text to send now (redacted; possibly empty; when
 * no response-side rule is in scope, *out is delta itself). Returns 0, or -1 when out of memory
 * (the stream must then be aborted). */
int ag_policy_stream_feed(ag_policy_stream *st, ag_policy_scratch *s, const char *delta,
                          size_t len, const char **out, size_t *out_len);

/* End of this choice's text (finish_reason, [DONE], or EOF): releases everything still held,
 * redacted. Returns 0 or -1. */
int ag_policy_stream_finish(ag_policy_stream *st, ag_policy_scratch *s, const char **out,
                            size_t *out_len);

/* Bytes of original text currently held back (never more than 2 * holdback after a call). */
size_t ag_policy_stream_held(const ag_policy_stream *st);

/* Adds this stream's decisions (rules that matched, spans, errors) to dec, as response side. */
void ag_policy_stream_decisions(const ag_policy_stream *st, ag_policy_decisions *dec);

/* Frees the stream's buffers. */
void ag_policy_stream_free(ag_policy_stream *st);

#define AG_POLICY_SSE_SLOTS 8

/* Rewrites parsed SSE data payloads of a whole response: chat.completion.chunk (choices[].delta.
 * content, choices[].text) and Responses events (response.output_text.delta / .done,
 * response.completed). One per streamed response. */
typedef struct ag_policy_sse {
    const ag_policy *policy;
    ag_policy_call call;
    struct ag_policy_sse_slot {
        bool used;
        long key;           /* choice index, or output_index * 1024 + content_index */
        ag_policy_stream st;
    } slots[AG_POLICY_SSE_SLOTS];
    bool responses_api;     /* saw Responses events (typed "response.*") */
    char id[128];           /* of the last chat chunk, for the closing event */
    char model[128];
    double created;
    unsigned overflow;      /* choices beyond AG_POLICY_SSE_SLOTS (their text is redacted with no
                             * hold-back, one delta at a time) */
} ag_policy_sse;

/* Prepares a rewriter; call is copied (its strings must outlive the rewriter). */
void ag_policy_sse_init(ag_policy_sse *sse, const ag_policy *pol, const ag_policy_call *call);

/* Rewrites one event payload in place. Returns 1 when data changed (re-serialise it), 0 when it
 * did not, -1 when out of memory. When *before is set on return, it is an extra event the caller
 * must send first (and then cJSON_Delete): held text flushed ahead of a Responses ".done" event. */
int ag_policy_sse_rewrite(ag_policy_sse *sse, ag_policy_scratch *s, cJSON *data, cJSON **before);

/* The same for a chat chunk read in place, without a tree: ck is what ag_chat_chunk_read found
 * in the event's payload data (a payload it refused goes to ag_policy_sse_rewrite). Returns 0 when it is sent as it is, 1 when *out (malloc'd, the caller frees it)
 * holds the rewritten payload (len *out_len: the payload's own bytes with the changed strings
 * spliced in), -1 when out of memory, or -2 for a payload this path leaves to the tree (escaped
 * "id" or "model", an index or "created" longer than cJSON
 * reads, a choice beyond the free slots, a finish with no delta object): nothing has changed
 * then, and the caller parses it and calls ag_policy_sse_rewrite. The two paths take the same
 * decisions and produce the same JSON. */
int ag_policy_sse_rewrite_chunk(ag_policy_sse *sse, ag_policy_scratch *s, const char *data,
                                const ag_chat_chunk *ck, char **out, size_t *out_len);

/* At [DONE] or end of stream: a JSON array of events carrying text still held (chat: one chunk
 * with a choice per held stream; Responses: one output_text.delta per held part). The caller sends
 * each before [DONE] and frees the array; NULL when nothing is held (*err set on out of memory). */
cJSON *ag_policy_sse_end(ag_policy_sse *sse, ag_policy_scratch *s, bool *err);

/* Adds the decisions of every choice to dec. */
void ag_policy_sse_decisions(const ag_policy_sse *sse, ag_policy_decisions *dec);

/* Frees every per-choice stream. */
void ag_policy_sse_free(ag_policy_sse *sse);

#endif
