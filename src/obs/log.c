/* JSON-lines logger (see log.h). */
#include "aoai_guard/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "aoai_guard/clock.h"
#include "aoai_guard/jsonw.h"

static _Atomic int log_level = AG_LOG_INFO;
static pthread_mutex_t stdout_mutex = PTHREAD_MUTEX_INITIALIZER;

void ag_stdout_lock(void)
{
    pthread_mutex_lock(&stdout_mutex);
}

void ag_stdout_unlock(void)
{
    pthread_mutex_unlock(&stdout_mutex);
}
static _Atomic int log_fd = 1;

void ag_log_set_level(ag_log_level level)
{
    atomic_store(&log_level, (int)level);
}

ag_log_level ag_log_get_level(void)
{
    return (ag_log_level)atomic_load_explicit(&log_level, memory_order_relaxed);
}

void ag_log_set_fd(int fd)
{
    atomic_store(&log_fd, fd);
}

const char *ag_log_level_str(ag_log_level level)
{
    switch (level) {
    case AG_LOG_DEBUG: return "debug";
    case AG_LOG_INFO: return "info";
    case AG_LOG_WARN: return "warn";
    case AG_LOG_ERROR: return "error";
    }
    return "info";
}

int ag_log_level_parse(const char *s, ag_log_level *out)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (strcmp(s, names[i]) == 0) {
            *out = (ag_log_level)i;
            return 0;
        }
    return -1;
}

void ag_log_line(const char *json, size_t len)
{
    int fd = atomic_load_explicit(&log_fd, memory_order_relaxed);
    size_t want = len + 1, done = 0;
    ag_stdout_lock();
    while (done < want) {
        struct iovec iov[2] = {{(char *)json + (done < len ? done : len), done < len ? len - done : 0},
                               {"\n", 1}};
        ssize_t r = writev(fd, iov, 2);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        done += (size_t)r;
    }
    ag_stdout_unlock();
}

void ag_log(ag_log_level level, const char *request_id, const char *fmt, ...)
{
    if (!AG_LOG_ENABLED(level))
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    char line[4096], ts[32];
    ag_format_rfc3339_ms(ag_wall_ms(), ts);
    ag_jsonw w;
    ag_jw_init(&w, line, sizeof line);
    ag_jw_object_begin(&w);
    ag_jw_kv_str(&w, "time", ts);
    ag_jw_kv_str(&w, "level", ag_log_level_str(level));
    if (request_id)
        ag_jw_kv_str(&w, "request_id", request_id);
    ag_jw_kv_str(&w, "msg", msg);
    ag_jw_object_end(&w);
    size_t n = ag_jw_len(&w);
    if (n)
        ag_log_line(line, n);
}
