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
    uint64_t size;     /* of the file, the queued bytes included */
    bool dirty;        /* written since the last fdatasync */
    char *buf;         /* queued lines, written by ag_line_sink_flush */
    size_t blen;
    long rows;         /* lines queued in buf */
};

/* Lines are queued up to this many bytes; a longer line goes out on its own. */
#define SINK_BUF_BYTES (64 * 1024)

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

static int write_queue(ag_line_sink *s);

static int rotate(ag_line_sink *s)
{
    size_t n = strlen(s->path) + 16;
    char *from = malloc(n), *to = malloc(n);
    int rc = -1;
    if (!from || !to)
        goto out;
    if (s->blen && write_queue(s) != 0)
        goto out; /* the queued lines belong to this file: they stay queued, rotation waits */
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

/* Writes the n pieces in v at the end of the file (stdout: under the lock shared with the log, so
 * whole lines never interleave with it), retrying short writes; advances v past what was written.
 * 0, or -1 on an I/O error. */
static int write_iov(ag_line_sink *s, struct iovec *v, int n)
{
    bool shared = !s->path;
    if (shared)
        ag_stdout_lock();
    int rc = 0;
    while (n > 0) {
        if (v->iov_len == 0) {
            v++;
            n--;
            continue;
        }
        ssize_t w = writev(s->fd, v, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            rc = -1;
            break;
        }
        s->dirty = true;
        for (size_t left = (size_t)w; left > 0;) {
            size_t k = left < v->iov_len ? left : v->iov_len;
            v->iov_base = (char *)v->iov_base + k;
            v->iov_len -= k;
            left -= k;
            if (v->iov_len == 0 && left > 0) {
                v++;
                n--;
            }
        }
    }
    if (shared)
        ag_stdout_unlock();
    return rc;
}

/* Writes the queued lines; on an error what was not written stays queued. 0 or -1. */
static int write_queue(ag_line_sink *s)
{
    struct iovec v = {s->buf, s->blen};
    int rc = write_iov(s, &v, 1);
    if (v.iov_len && v.iov_base != s->buf)
        memmove(s->buf, v.iov_base, v.iov_len);
    s->blen = v.iov_len;
    return rc;
}

long ag_line_sink_flush(ag_line_sink *s)
{
    if (s->blen == 0 && s->rows == 0)
        return 0;
    if (s->fd < 0 && s->path && (s->fd = open_append(s->path, &s->size)) < 0)
        return -1;
    if (s->blen && write_queue(s) != 0)
        return -1;
    long rows = s->rows;
    s->rows = 0;
    return rows;
}

int ag_line_sink_write(ag_line_sink *s, const char *line, size_t len)
{
    if (s->fd < 0 && s->path && (s->fd = open_append(s->path, &s->size)) < 0)
        return -1;
    if (s->path && s->max_bytes && s->size > 0 && s->size + len + 1 > s->max_bytes && rotate(s) != 0)
        return -1;
    if (!s->buf && !(s->buf = malloc(SINK_BUF_BYTES)))
        return -1;
    if (s->blen + len + 1 > SINK_BUF_BYTES) {
        if (s->blen && write_queue(s) != 0)
            return -1; /* this line is refused; the queued ones stay queued */
        if (len + 1 > SINK_BUF_BYTES) { /* too long to queue: written now, newline included */
            struct iovec v[2] = {{(void *)line, len}, {"\n", 1}};
            if (write_iov(s, v, 2) != 0)
                return -1;
            s->size += len + 1;
            s->rows++; /* reported with the next flush */
            return 0;
        }
    }
    memcpy(s->buf + s->blen, line, len);
    s->buf[s->blen + len] = '\n';
    s->blen += len + 1;
    s->rows++;
    s->size += len + 1;
    return 0;
}

int ag_line_sink_sync(ag_line_sink *s)
{
    if (s->blen && ag_line_sink_flush(s) < 0)
        return -1;
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
    } else if (s->fd >= 0) {
        ag_line_sink_flush(s);
    }
    free(s->buf);
    free(s->path);
    free(s);
}
