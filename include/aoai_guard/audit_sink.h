/* Line sinks of the audit trail: "file" (JSON lines, rotated by size) and "stdout" (JSON lines for a
 * container log collector). Each row is written with one write(2), followed by a newline.
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

/* Writes one line (a newline is added); 0, or -1 on I/O error. */
int ag_line_sink_write(ag_line_sink *s, const char *line, size_t len);

/* fdatasync()s a file sink when it was written since the last sync (no-op for fd sinks); 0 or -1. */
int ag_line_sink_sync(ag_line_sink *s);

/* Syncs and closes. NULL is a no-op. */
void ag_line_sink_close(ag_line_sink *s);

#endif
