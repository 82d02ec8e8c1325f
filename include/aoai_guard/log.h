/* Structured logging: one JSON object per line on stdout ({"time","level","msg",...}), so container
 * log collectors need no parsing rules. Access-log lines carry "type":"access". Writes are one
 * write(2) each, so lines from different threads never interleave. */
#ifndef AOAI_GUARD_LOG_H
#define AOAI_GUARD_LOG_H

#include <stdbool.h>
#include <stddef.h>

typedef enum ag_log_level { AG_LOG_DEBUG = 0, AG_LOG_INFO, AG_LOG_WARN, AG_LOG_ERROR } ag_log_level;

/* Sets the minimum level written (thread-safe; takes effect on the next line). */
void ag_log_set_level(ag_log_level level);
ag_log_level ag_log_get_level(void);
/* Parses "debug" | "info" | "warn" | "error"; returns 0 or -1. */
int ag_log_level_parse(const char *s, ag_log_level *out);
const char *ag_log_level_str(ag_log_level level);
/* Redirects output to fd (default 1); for tests and the audit-less dev mode. */
void ag_log_set_fd(int fd);

/* Writes {"time":..,"level":..,"request_id":..,"msg":..} when level is enabled. request_id may be NULL.
 * The message is escaped; keep secrets out of it. */
void ag_log(ag_log_level level, const char *request_id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes a complete pre-built JSON line (no trailing newline needed). */
void ag_log_line(const char *json, size_t len);

/* Every writer of the shared stdout (log lines, the audit stdout sink) holds this lock for one
 * whole line: a write larger than PIPE_BUF to a pipe is not atomic, and a container's stdout is a
 * pipe. The critical section is one write(2). */
void ag_stdout_lock(void);
void ag_stdout_unlock(void);

#define AG_LOG_ENABLED(lvl) ((lvl) >= ag_log_get_level())

#endif
