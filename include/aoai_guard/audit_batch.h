/* Upload batches for the Azure Monitor Logs Ingestion API: spool records joined into one JSON array
 * whose uncompressed size stays within a limit (the API's 1 MB per call, counted uncompressed as the
 * Azure SDKs do), and gzip for the body (Content-Encoding: gzip).
 *
 * Ownership: a batch owns its buffers; ag_audit_batch_free() releases them (not the struct). The
 * buffers returned by the gzip helpers are malloc'd and owned by the caller. */
#ifndef AOAI_GUARD_AUDIT_BATCH_H
#define AOAI_GUARD_AUDIT_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "aoai_guard/spool.h"

#define AG_MONITOR_MAX_CALL_BYTES ((size_t)1024 * 1024) /* the service's hard limit per call */

typedef struct ag_audit_batch {
    size_t max_bytes;        /* limit on the JSON array of any range, brackets and commas included */
    char *data;              /* the records back to back (no separators) */
    size_t len, cap;
    size_t *off;             /* record i is data[off[i] .. off[i] + rlen[i]) */
    size_t *rlen;
    ag_spool_pos *end;       /* spool position just after record i */
    size_t n, ncap;
    char *json;              /* scratch for ag_audit_batch_json() */
    size_t json_cap;
} ag_audit_batch;

/* An empty batch with the given limit (<= AG_MONITOR_MAX_CALL_BYTES). */
void ag_audit_batch_init(ag_audit_batch *b, size_t max_bytes);

/* Releases the buffers; the batch may be re-initialised. */
void ag_audit_batch_free(ag_audit_batch *b);

/* Empties the batch, keeping its buffers. */
void ag_audit_batch_reset(ag_audit_batch *b);

/* Adds one record (a JSON object) that ends at spool position end. Returns 1 when added, 0 when the
 * array would exceed max_bytes (not added; send what is there first), -2 when the record alone would
 * exceed it (never fits), -1 on allocation failure. */
int ag_audit_batch_add(ag_audit_batch *b, const char *rec, size_t len, ag_spool_pos end);

/* Bytes of "[r_lo,...,r_hi-1]". */
size_t ag_audit_batch_json_len(const ag_audit_batch *b, size_t lo, size_t hi);

/* Builds "[r_lo,...,r_hi-1]" in the batch's scratch buffer (valid until the next call or reset);
 * NULL on allocation failure. */
const char *ag_audit_batch_json(ag_audit_batch *b, size_t lo, size_t hi, size_t *len);

/* Compresses in[0..len) as a gzip stream; 0 with a malloc'd *out (caller frees), or -1. */
int ag_gzip(const void *in, size_t len, unsigned char **out, size_t *outlen);

/* Inflates a gzip stream, refusing output beyond max_out bytes. 0 with a malloc'd, NUL-terminated
 * *out (caller frees), -2 when the output would exceed max_out, -1 when the data is not valid gzip. */
int ag_gunzip(const void *in, size_t len, size_t max_out, char **out, size_t *outlen);

#endif
