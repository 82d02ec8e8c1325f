/* JSON-lines sinks: rotated file and stdout (see audit_sink.h). */
#include "aoai_guard/audit_sink.h"
#include "aoai_guard/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

struct ag_line_sink {
    int fd;
    bool owns_fd;
    char *path;        /* NULL for fd sinks */
    uint64_t max_bytes;
    unsigned max_files;
    uint64_t size;
    bool dirty;
};

static int open_append(const char *path, uint64_t *size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return -1;
    }
    *size = (uint64_t)st.st_size;
    return fd;
}

ag_line_sink *ag_line_sink_open_file(const char *path, uint64_t max_bytes, unsigned max_files, char *err,
                                     size_t errlen)
{
    ag_line_sink *s = calloc(1, sizeof *s);
    if (!s || !(s->path = strdup(path))) {
        free(s);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->fd = open_append(path, &s->size);
    if (s->fd < 0) {
        snprintf(err, errlen, "audit file %s: %s", path, strerror(errno));
        free(s->path);
        free(s);
        return NULL;
    }
    s->owns_fd = true;
    s->max_bytes = max_bytes;
    s->max_files = max_files;
    return s;
}

ag_line_sink *ag_line_sink_open_fd(int fd)
{
    ag_line_sink *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->fd = fd;
    return s;
}

static int rotate(ag_line_sink *s)
{
    size_t n = strlen(s->path) + 16;
    char *from = malloc(n), *to = malloc(n);
    int rc = -1;
    if (!from || !to)
        goto out;
    if (s->dirty)
        fdatasync(s->fd);
    close(s->fd);
    s->fd = -1;
    s->dirty = false;
    if (s->max_files == 0) {
        if (unlink(s->path) != 0 && errno != ENOENT)
            goto reopen;
    } else {
        snprintf(to, n, "%s.%u", s->path, s->max_files);
        if (unlink(to) != 0 && errno != ENOENT)
            goto reopen;
        for (unsigned k = s->max_files - 1; k >= 1; k--) {
            snprintf(from, n, "%s.%u", s->path, k);
            snprintf(to, n, "%s.%u", s->path, k + 1);
            if (rename(from, to) != 0 && errno != ENOENT)
                goto reopen;
        }
        snprintf(to, n, "%s.1", s->path);
        if (rename(s->path, to) != 0)
            goto reopen;
    }
    rc = 0;
reopen:
    s->fd = open_append(s->path, &s->size);
    if (s->fd < 0)
        rc = -1;
out:
    free(from);
    free(to);
    return rc;
}

int ag_line_sink_write(ag_line_sink *s, const char *line, size_t len)
{
    if (s->fd < 0 && s->path && (s->fd = open_append(s->path, &s->size)) < 0)
        return -1;
    if (s->path && s->max_bytes && s->size > 0 && s->size + len + 1 > s->max_bytes && rotate(s) != 0)
        return -1;
    struct iovec iov[2] = {{(void *)line, len}, {"\n", 1}};
    size_t want = len + 1, done = 0;
    bool shared = !s->path; /* stdout, shared with the log: one whole line under the lock */
    if (shared)
        ag_stdout_lock();
    int rc = 0;
    while (done < want) {
        ssize_t w;
        if (done < len) {
            struct iovec v[2] = {{(char *)line + done, len - done}, iov[1]};
            w = writev(s->fd, v, 2);
        } else {
            w = write(s->fd, "\n", 1);
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            rc = -1;
            break;
        }
        done += (size_t)w;
    }
    if (shared)
        ag_stdout_unlock();
    if (rc)
        return -1;
    s->size += want;
    s->dirty = true;
    return 0;
}

int ag_line_sink_sync(ag_line_sink *s)
{
    if (!s->path || !s->dirty || s->fd < 0)
        return 0;
    if (fdatasync(s->fd) != 0)
        return -1;
    s->dirty = false;
    return 0;
}

void ag_line_sink_close(ag_line_sink *s)
{
    if (!s)
        return;
    if (s->owns_fd && s->fd >= 0) {
        ag_line_sink_sync(s);
        close(s->fd);
    }
    free(s->path);
    free(s);
}
