/* The reference SSE parser for test_sse.c (sse_reference.c): ag_sse_parser's interface. */
#ifndef AG_TEST_SSE_REFERENCE_H
#define AG_TEST_SSE_REFERENCE_H

#include "aoai_guard/sse.h"

typedef struct ref_sse_parser ref_sse_parser;

ref_sse_parser *ref_sse_parser_new(size_t max_event_bytes, ag_sse_event_fn fn, void *arg);
ref_sse_parser *ref_sse_parser_new_raw(size_t max_event_bytes, ag_sse_event_fn fn, void *arg);
const char *ref_sse_parser_rest(const ref_sse_parser *p, size_t *len);
void ref_sse_parser_free(ref_sse_parser *p);
int ref_sse_parser_feed(ref_sse_parser *p, const char *data, size_t len);
size_t ref_sse_parser_events(const ref_sse_parser *p);

#endif
