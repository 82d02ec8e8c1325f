/* Server-sent events parsed on the side of a stream that is forwarded byte for byte: events may be
 * split at any byte, lines end in CRLF, LF or CR (a CR and its LF may arrive in different reads), a
 * leading BOM and ':' comments are ignored. Lines and events are bounded. */
#ifndef AOAI_GUARD_SSE_H
#define AOAI_GUARD_SSE_H

#include <stdbool.h>
#include <stddef.h>

typedef struct ag_sse_event {
    const char *event;   /* the "event:" field, "" when absent */
    size_t event_len;
    const char *data;    /* "data:" lines joined with '\n' */
    size_t data_len;
    const char *raw;     /* with keep_raw: the bytes fed since the previous event, this one's included */
    size_t raw_len;
} ag_sse_event;

/* Called for each complete event; return 0 to go on, -1 to stop feeding. */
typedef int (*ag_sse_event_fn)(void *arg, const ag_sse_event *ev);

typedef struct ag_sse_parser ag_sse_parser;

/* A parser that calls fn for every event; max_event_bytes bounds one event's data. With keep_raw the
 * event also carries the exact bytes it came from, so a filter can forward events whole (the
 * concatenation of all raw spans and the final rest is the input, byte for byte). */
ag_sse_parser *ag_sse_parser_new(size_t max_event_bytes, ag_sse_event_fn fn, void *arg);
ag_sse_parser *ag_sse_parser_new_raw(size_t max_event_bytes, ag_sse_event_fn fn, void *arg);
/* keep_raw: the bytes fed after the last event (a trailing line end, an unfinished event). */
const char *ag_sse_parser_rest(const ag_sse_parser *p, size_t *len);
void ag_sse_parser_free(ag_sse_parser *p);
/* Feeds bytes; returns 0, or -1 when an event exceeded the bound or fn asked to stop. */
int ag_sse_parser_feed(ag_sse_parser *p, const char *data, size_t len);
/* Events completed so far. */
size_t ag_sse_parser_events(const ag_sse_parser *p);

#endif
