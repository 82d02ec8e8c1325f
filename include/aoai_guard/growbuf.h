/* A bounded, growable byte buffer: the request body, kept response bodies and the assembled
 * completion text all grow the same way, doubling up to a fixed maximum. */
#ifndef AOAI_GUARD_GROWBUF_H
#define AOAI_GUARD_GROWBUF_H

#include <stddef.h>

/* Appends data[0..n) to *buf (*len bytes used, *cap allocated; *buf may be NULL), growing by
 * doubling but never past max + 1 bytes, and keeps a NUL after the data. Returns 0, or -1 when the
 * result would exceed max bytes or memory ran out (the buffer is then unchanged). */
int ag_grow_append(char **buf, size_t *len, size_t *cap, size_t max, const void *data, size_t n);

#endif
