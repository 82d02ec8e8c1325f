/* The durable audit spool: records are appended to segment files before anything tries to deliver
 * them, and a checkpoint says how far delivery has been acknowledged.
 *
 * On disk (one directory per spool):
 *   00000000000000000001.seg ...  segments, each a sequence of records:
 *                                 magic "AGS1" | u32 length (LE) | u32 crc32(length bytes + payload) | payload
 *   checkpoint                    "AGCKPT1 <segment> <offset> <crc32 hex>\n", replaced atomically
 *                                 (write checkpoint.tmp, fsync, rename, fsync the directory)
 *   lock                          flock'd while open: one process per spool directory
 * A new process never appends to an old segment: it starts a new one, so a torn tail left by a crash
 * stays where it is and the reader skips it (bad magic, length or crc), resynchronising on the next
 * intact record when there is one. Segments wholly before the checkpoint are deleted.
 *
 * Threading: a spool is used by one thread (the audit thread). Not thread-safe. */
#ifndef AOAI_GUARD_SPOOL_H
#define AOAI_GUARD_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AG_SPOOL_MAX_RECORD ((size_t)4 * 1024 * 1024) /* payload bytes per record */
#define AG_SPOOL_HEADER 12                            /* framing bytes per record */

typedef struct ag_spool ag_spool;

/* A place in the spool: segment id and byte offset inside it. */
typedef struct ag_spool_pos {
    uint64_t segment;
    uint64_t offset;
} ag_spool_pos;

typedef struct ag_spool_options {
    const char *dir;          /* created (one level, mode 0700) when missing */
    uint64_t segment_bytes;   /* the active segment is rotated before it would exceed this; 0 = 8 MiB */
} ag_spool_options;

/* Opens (or creates) the spool in o->dir and starts a new active segment. NULL with a message in err
 * when the directory cannot be used (including: another process holds it). */
ag_spool *ag_spool_open(const ag_spool_options *o, char *err, size_t errlen);

/* Syncs the active segment and frees everything. NULL is a no-op. */
void ag_spool_close(ag_spool *s);

/* Appends one record (1..AG_SPOOL_MAX_RECORD bytes) with a single write; 0, or -1 on I/O error (the
 * segment is cut back to its previous length so no partial record remains). Not yet synced. */
int ag_spool_append(ag_spool *s, const void *data, size_t len);

/* fdatasync()s the active segment if anything was appended since the last sync; 0 or -1. */
int ag_spool_sync(ag_spool *s);

/* Reads the first intact record at or after *pos. Returns 1 with *data and *len (valid until the next read
 * or close) and *pos moved just past the record; 0 when nothing more is stored; -1 on I/O error.
 * Missing (deleted) segments are stepped over; corrupt or torn records are skipped and counted. */
int ag_spool_read(ag_spool *s, ag_spool_pos *pos, const char **data, size_t *len);

/* The checkpoint: the first position not yet acknowledged as delivered. */
ag_spool_pos ag_spool_checkpoint(const ag_spool *s);

/* Marks everything before pos delivered: persists the checkpoint atomically, then deletes segments
 * that lie wholly before it. A pos at or before the current checkpoint is a no-op. 0 or -1. */
int ag_spool_commit(ag_spool *s, ag_spool_pos pos);

/* Deletes the oldest segment that still holds undelivered records (rotating the active segment first
 * when it is the only one), moving the checkpoint past it. Returns 0 with the number of undelivered
 * records and bytes lost, 1 when there is nothing to drop, -1 on error. */
int ag_spool_drop_oldest(ag_spool *s, uint64_t *records, uint64_t *bytes);

/* Bytes of all segment files (delivered-but-not-yet-deleted bytes of the checkpoint segment count). */
uint64_t ag_spool_bytes(const ag_spool *s);

/* Bytes not yet acknowledged: what lies at or after the checkpoint. */
uint64_t ag_spool_pending_bytes(const ag_spool *s);

/* True when a read from pos would find nothing (every stored record lies before pos). */
bool ag_spool_at_end(const ag_spool *s, ag_spool_pos pos);

/* Corrupt or torn records skipped by reads so far. */
uint64_t ag_spool_corrupt(const ag_spool *s);

/* Orders positions: <0, 0, >0. */
int ag_spool_pos_cmp(ag_spool_pos a, ag_spool_pos b);

#endif
