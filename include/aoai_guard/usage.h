/* What the response says about itself: token usage and the completion text, from a JSON body or
 * from streamed events, for the chat/completions, completions, embeddings and responses APIs. */
#ifndef AOAI_GUARD_USAGE_H
#define AOAI_GUARD_USAGE_H

#include <stddef.h>
#include <cjson/cJSON.h>

#include "aoai_guard/chat_chunk.h"
#include "aoai_guard/request.h"
#include "aoai_guard/sse.h"

/* Reads a "usage" object of either shape (prompt/completion tokens or input/output tokens).
 * Returns 0 when it found one. */
int ag_usage_parse(const cJSON *usage, ag_usage *out);

/* Takes usage and completion text from a whole non-streamed JSON response. */
void ag_usage_from_json_response(ag_request *req, const char *body, size_t len);
/* The same from a response already parsed (root may be NULL); root is not changed. */
void ag_usage_from_json_tree(ag_request *req, const cJSON *root);
/* The same from a response held for the response policy: usage scanned from body, the text from
 * root (a resp_doc.h tree: "choices", "output", "object"; may be NULL). root is not changed. */
void ag_usage_from_held_response(ag_request *req, const cJSON *root, const char *body, size_t len);

/* Takes usage and text deltas from one streamed event (chat/completions chunks or Responses API
 * typed events). Returns 1 when the event is the usage-only chunk that include_usage adds
 * ("choices":[] with a usage object), else 0. */
int ag_usage_from_sse_event(ag_request *req, const ag_sse_event *ev);
/* The same for an event its caller has read with ag_chat_chunk_read (ck; NULL when it refused). */
int ag_usage_from_sse_event_read(ag_request *req, const ag_sse_event *ev, const ag_chat_chunk *ck);
/* The same through a cJSON tree of the whole event, whatever its text says (no prefilter): the
 * path ag_usage_from_sse_event leaves an event to when its in-place reader does not follow it,
 * and the tests' reference for that reader. */
int ag_usage_from_sse_event_tree(ag_request *req, const ag_sse_event *ev);

#endif
