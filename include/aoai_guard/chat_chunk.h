/* A streamed chat.completion.chunk payload read in place, without a tree.
 *
 * A 200-chunk stream is 200 small JSON documents, each a few hundred bytes of envelope (ids, model,
 * content filter results) around a few bytes of text. The gateway reads each one twice: the usage
 * and the audit text (usage.c), and, under a response policy, the text to redact (policy_stream.c).
 * ag_chat_chunk_read steps over the envelope with ag_json_skip_value and records where the members
 * those readers look at are, as cJSON_GetObjectItemCaseSensitive would find them: the first member
 * of each name counts. A name written with an escape is none of the names looked for (no escape
 * spells a letter of them).
 *
 * It refuses, and the caller then parses the payload with cJSON, whatever it does not follow: text
 * that is not strict JSON or has \u escapes or more than 32 levels (ag_json_skip_value), a top-level
 * "type" (a Responses API event), more than AG_CHAT_CHUNK_CHOICES elements in "choices". Bytes after
 * the object are ignored, as cJSON_ParseWithLength ignores them. */
#ifndef AOAI_GUARD_CHAT_CHUNK_H
#define AOAI_GUARD_CHAT_CHUNK_H

#include <stdbool.h>
#include <stddef.h>

#define AG_CHAT_CHUNK_CHOICES 8

/* One value as it is in the payload: tok[0..len), quotes included for a string; tok NULL when the
 * member is absent. */
typedef struct ag_chunk_value {
    const char *tok;
    size_t len;
} ag_chunk_value;

typedef struct ag_chunk_choice {
    const char *start;           /* the element's first byte; end: one past its last */
    const char *end;
    ag_chunk_value index;        /* first "index" */
    ag_chunk_value delta;        /* first "delta" */
    ag_chunk_value content;      /* first "content" of that delta, when the delta is an object */
    ag_chunk_value text;         /* first "text" */
    ag_chunk_value finish_reason;
} ag_chunk_choice;

typedef struct ag_chat_chunk {
    size_t object_len;           /* bytes of the object itself (what follows it is ignored) */
    ag_chunk_value id, model, created, choices, usage; /* first of each name at the top level */
    size_t nchoices;             /* elements of choices, when it is an array */
    ag_chunk_choice choice[AG_CHAT_CHUNK_CHOICES];
} ag_chat_chunk;

/* Reads the payload data[0..len) (its first byte a '{'). Returns true when it was read whole; false
 * for anything the caller must leave to cJSON (above). */
bool ag_chat_chunk_read(const char *data, size_t len, ag_chat_chunk *out);

/* Whether v is a string token / an object / an array / a number. */
bool ag_chunk_is_string(ag_chunk_value v);
bool ag_chunk_is_object(ag_chunk_value v);
bool ag_chunk_is_array(ag_chunk_value v);
bool ag_chunk_is_number(ag_chunk_value v);

/* Whether a number token is a plain integer (no fraction, no exponent): its value is then exact. */
bool ag_chunk_is_integer(ag_chunk_value v);

/* Whether a string token holds an escape (its text then differs from its bytes). */
bool ag_chunk_has_escape(ag_chunk_value v);

#endif
