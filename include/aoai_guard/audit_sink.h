/* Line sinks of the audit trail: "file" (JSON lines, rotated by size) and "stdout" (JSON lines for a
 * container log collector), each row followed by a newline. Rows are queued (up to 64 KiB) and
 * written together by ag_line_sink_flush, which the audit thread calls once per drain: one write(2)
 * per drain instead of one per row. A row longer than the queue is written on its own.
 *
 * Rotation ("file"): before a line would push the file past max_bytes, path.(k) becomes path.(k+1)
 * for k = max_files-1 .. 1, path becomes path.1 and a new path is started; at most max_files rotated
 * files are kept (0: the old content is simply discarded).
 *
 * Threading: a sink is used by one thread (the audit thread). */
#ifndef AOAI_GUARD_AUDIT_SINK_H
#define AOAI_GUARD_AUDIT_SINK_H

#include <stddef.h>
#include <stdint.h>

typedef struct ag_line_sink ag_line_sink;

/* Opens (appends to) a file sink; max_bytes 0 = never rotate. NULL with a message in err. */
ag_line_sink *ag_line_sink_open_file(const char *path, uint64_t max_bytes, unsigned max_files, char *err,
                                     size_t errlen);

/* A sink writing to fd (normally 1); the fd is not closed by ag_line_sink_close. */
ag_line_sink *ag_line_sink_open_fd(int fd);

/* Queues one line (a newline is added), writing the queue first when the line does not fit; 0, or -1
 * when an I/O error refused the line (the lines queued before it stay queued). */
int ag_line_sink_write(ag_line_sink *s, const char *line, size_t len);

/* Writes the queued lines. Returns how many lines reached the file since the last flush (0 when
 * none), or -1 on an I/O error: what was not written stays queued for the next flush. */
long ag_line_sink_flush(ag_line_sink *s);

/* Flushes, then fdatasync()s a file sink when it was written since the last sync (fd sinks: flush
 * only); 0 or -1. */
int ag_line_sink_sync(ag_line_sink *s);

/* Flushes, syncs and closes. NULL is a no-op. */
void ag_line_sink_close(ag_line_sink *s);

#endif
