/* Durable audit spool: segment files, per-record crc32, atomic checkpoint (see spool.h). */
#include "aoai_guard/spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <zlib.h>

#include "aoai_guard/log.h"

#define SEG_NAME_DIGITS 20
#define CKPT_NAME "checkpoint"
#define CKPT_TMP "checkpoint.tmp"
#define LOCK_NAME "lock"
static const unsigned char MAGIC[4] = {'A', 'G', 'S', '1'};

typedef struct seg {
    uint64_t id;
    uint64_t size;
} seg;

struct ag_spool {
    char *dir;
    int dirfd;
    int lockfd;
    uint64_t segment_bytes;
    seg *segs;              /* ascending ids; the last one is the active segment */
    size_t nsegs, capsegs;
    int wfd;                /* active segment, append-only */
    uint64_t next_id;       /* id of the next segment to create */
    bool dirty;             /* appended since the last sync */
    uint64_t total;
    ag_spool_pos ckpt;
    /* reader */
    uint64_t rseg;          /* segment rfd is open on (0: none) */
    int rfd;
    char *rbuf;
    size_t rcap;
    uint64_t corrupt;
};

int ag_spool_pos_cmp(ag_spool_pos a, ag_spool_pos b)
{
    if (a.segment != b.segment)
        return a.segment < b.segment ? -1 : 1;
    if (a.offset != b.offset)
        return a.offset < b.offset ? -1 : 1;
    return 0;
}

static void put_le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static uint32_t get_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint32_t record_crc(const unsigned char lenbytes[4], const void *data, size_t len)
{
    uLong c = crc32(0L, Z_NULL, 0);
    c = crc32(c, lenbytes, 4);
    c = crc32_z(c, data, len);
    return (uint32_t)c;
}

static void seg_name(char *out, size_t cap, uint64_t id)
{
    snprintf(out, cap, "%020" PRIu64 ".seg", id);
}

static int sync_dir(ag_spool *s)
{
    return fsync(s->dirfd);
}

static int push_seg(ag_spool *s, uint64_t id, uint64_t size)
{
    if (s->nsegs == s->capsegs) {
        size_t cap = s->capsegs ? s->capsegs * 2 : 16;
        seg *n = realloc(s->segs, cap * sizeof *n);
        if (!n)
            return -1;
        s->segs = n;
        s->capsegs = cap;
    }
    s->segs[s->nsegs].id = id;
    s->segs[s->nsegs].size = size;
    s->nsegs++;
    s->total += size;
    return 0;
}

static void reader_close(ag_spool *s)
{
    if (s->rfd >= 0)
        close(s->rfd);
    s->rfd = -1;
    s->rseg = 0;
}

/* Removes segment i from disk and the list. */
static int unlink_seg(ag_spool *s, size_t i)
{
    char name[64];
    seg_name(name, sizeof name, s->segs[i].id);
    if (s->rseg == s->segs[i].id)
        reader_close(s);
    if (unlinkat(s->dirfd, name, 0) != 0 && errno != ENOENT)
        return -1;
    s->total -= s->segs[i].size;
    memmove(&s->segs[i], &s->segs[i + 1], (s->nsegs - i - 1) * sizeof *s->segs);
    s->nsegs--;
    return 0;
}

/* Closes the active segment (synced) and opens a new, empty one. */
static int new_active(ag_spool *s)
{
    uint64_t id = s->next_id;
    if (s->wfd >= 0) {
        if (s->dirty && fdatasync(s->wfd) != 0)
            return -1;
        close(s->wfd);
        s->wfd = -1;
        s->dirty = false;
    }
    char name[64];
    seg_name(name, sizeof name, id);
    int fd = openat(s->dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    if (push_seg(s, id, 0) != 0) {
        close(fd);
        unlinkat(s->dirfd, name, 0);
        return -1;
    }
    s->next_id = id + 1;
    s->wfd = fd;
    return sync_dir(s);
}

static int write_checkpoint(ag_spool *s, ag_spool_pos pos)
{
    char body[96], line[128];
    snprintf(body, sizeof body, "AGCKPT1 %" PRIu64 " %" PRIu64, pos.segment, pos.offset);
    uint32_t c = (uint32_t)crc32(0L, (const unsigned char *)body, (uInt)strlen(body));
    int n = snprintf(line, sizeof line, "%s %08x\n", body, c);
    int fd = openat(s->dirfd, CKPT_TMP, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    ssize_t w = write(fd, line, (size_t)n);
    if (w != n || fsync(fd) != 0) {
        close(fd);
        return -1;
    }
    close(fd);
    if (renameat(s->dirfd, CKPT_TMP, s->dirfd, CKPT_NAME) != 0)
        return -1;
    return sync_dir(s);
}

/* Reads the checkpoint; returns 0 with *pos, 1 when absent, -1 when unreadable or corrupt. */
static int read_checkpoint(ag_spool *s, ag_spool_pos *pos)
{
    int fd = openat(s->dirfd, CKPT_NAME, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 1 : -1;
    char buf[128];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    char *sp = strrchr(buf, ' ');
    if (!sp)
        return -1;
    *sp = '\0';
    unsigned int want;
    if (sscanf(sp + 1, "%8x", &want) != 1)
        return -1;
    if ((uint32_t)crc32(0L, (const unsigned char *)buf, (uInt)strlen(buf)) != want)
        return -1;
    uint64_t a, b;
    char tail;
    if (sscanf(buf, "AGCKPT1 %" SCNu64 " %" SCNu64 "%c", &a, &b, &tail) != 2)
        return -1;
    pos->segment = a;
    pos->offset = b;
    return 0;
}

static int cmp_seg(const void *a, const void *b)
{
    uint64_t x = ((const seg *)a)->id, y = ((const seg *)b)->id;
    return x < y ? -1 : x > y;
}

static bool parse_seg_name(const char *name, uint64_t *id)
{
    if (strlen(name) != SEG_NAME_DIGITS + 4 || strcmp(name + SEG_NAME_DIGITS, ".seg") != 0)
        return false;
    uint64_t v = 0;
    for (int i = 0; i < SEG_NAME_DIGITS; i++) {
        if (name[i] < '0' || name[i] > '9')
            return false;
        if (v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(name[i] - '0');
    }
    *id = v;
    return v > 0;
}

static int scan_dir(ag_spool *s)
{
    int fd = dup(s->dirfd);
    if (fd < 0)
        return -1;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -1;
    }
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) != NULL) {
        uint64_t id;
        if (!parse_seg_name(e->d_name, &id))
            continue;
        struct stat st;
        if (fstatat(s->dirfd, e->d_name, &st, 0) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (push_seg(s, id, (uint64_t)st.st_size) != 0) {
            rc = -1;
            break;
        }
    }
    closedir(d);
    if (rc == 0 && s->nsegs > 1)
        qsort(s->segs, s->nsegs, sizeof *s->segs, cmp_seg);
    return rc;
}

ag_spool *ag_spool_open(const ag_spool_options *o, char *err, size_t errlen)
{
    ag_spool *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->dirfd = s->lockfd = s->wfd = s->rfd = -1;
    s->segment_bytes = o->segment_bytes ? o->segment_bytes : 8u * 1024 * 1024;
    s->dir = strdup(o->dir);
    if (!s->dir) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (mkdir(o->dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "spool directory %s: %s", o->dir, strerror(errno));
        goto fail;
    }
    s->dirfd = open(o->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dirfd < 0) {
        snprintf(err, errlen, "spool directory %s: %s", o->dir, strerror(errno));
        goto fail;
    }
    s->lockfd = openat(s->dirfd, LOCK_NAME, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (s->lockfd < 0 || flock(s->lockfd, LOCK_EX | LOCK_NB) != 0) {
        snprintf(err, errlen, "spool directory %s: %s", o->dir,
                 errno == EWOULDBLOCK ? "in use by another process" : strerror(errno));
        goto fail;
    }
    unlinkat(s->dirfd, CKPT_TMP, 0);
    if (scan_dir(s) != 0) {
        snprintf(err, errlen, "spool directory %s: cannot list: %s", o->dir, strerror(errno));
        goto fail;
    }
    int crc = read_checkpoint(s, &s->ckpt);
    if (crc < 0) {
        ag_log(AG_LOG_WARN, NULL, "audit spool %s: checkpoint unreadable; resending from the oldest segment",
               o->dir);
    }
    if (crc != 0) {
        s->ckpt.segment = s->nsegs ? s->segs[0].id : 1;
        s->ckpt.offset = 0;
    }
    /* Segments wholly before the checkpoint were delivered: a crash between the checkpoint and the
     * unlink can leave them. */
    while (s->nsegs && s->segs[0].id < s->ckpt.segment)
        if (unlink_seg(s, 0) != 0) {
            snprintf(err, errlen, "spool directory %s: cannot delete a delivered segment: %s", o->dir,
                     strerror(errno));
            goto fail;
        }
    /* Empty segments (a run that stopped before writing) hold nothing to deliver. */
    for (size_t i = 0; i < s->nsegs;) {
        if (s->segs[i].size == 0 && unlink_seg(s, i) == 0)
            continue;
        i++;
    }
    /* Never reuse an id at or before the checkpoint, even when its segments are gone. */
    s->next_id = (s->nsegs ? s->segs[s->nsegs - 1].id : 0) + 1;
    if (s->next_id <= s->ckpt.segment)
        s->next_id = s->ckpt.segment + 1;
    if (new_active(s) != 0) {
        snprintf(err, errlen, "spool directory %s: cannot create a segment: %s", o->dir, strerror(errno));
        goto fail;
    }
    return s;
fail:
    ag_spool_close(s);
    return NULL;
}

void ag_spool_close(ag_spool *s)
{
    if (!s)
        return;
    if (s->wfd >= 0) {
        if (s->dirty)
            fdatasync(s->wfd);
        close(s->wfd);
    }
    reader_close(s);
    if (s->lockfd >= 0)
        close(s->lockfd);
    if (s->dirfd >= 0)
        close(s->dirfd);
    free(s->segs);
    free(s->rbuf);
    free(s->dir);
    free(s);
}

int ag_spool_append(ag_spool *s, const void *data, size_t len)
{
    if (len == 0 || len > AG_SPOOL_MAX_RECORD || s->wfd < 0)
        return -1;
    seg *a = &s->segs[s->nsegs - 1];
    if (a->size > 0 && a->size + AG_SPOOL_HEADER + len > s->segment_bytes) {
        if (new_active(s) != 0)
            return -1;
        a = &s->segs[s->nsegs - 1];
    }
    unsigned char hdr[AG_SPOOL_HEADER];
    memcpy(hdr, MAGIC, 4);
    put_le32(hdr + 4, (uint32_t)len);
    put_le32(hdr + 8, record_crc(hdr + 4, data, len));
    struct iovec iov[2] = {{hdr, sizeof hdr}, {(void *)data, len}};
    size_t want = sizeof hdr + len, done = 0;
    while (done < want) {
        ssize_t w;
        if (done < sizeof hdr) {
            struct iovec v[2] = {{hdr + done, sizeof hdr - done}, iov[1]};
            w = writev(s->wfd, v, 2);
        } else {
            w = write(s->wfd, (const char *)data + (done - sizeof hdr), want - done);
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            int saved = errno;
            if (ftruncate(s->wfd, (off_t)a->size) != 0)
                ag_log(AG_LOG_ERROR, NULL, "audit spool %s: cannot cut back a partial record: %s",
                       s->dir, strerror(errno));
            errno = saved;
            return -1;
        }
        done += (size_t)w;
    }
    a->size += want;
    s->total += want;
    s->dirty = true;
    return 0;
}

int ag_spool_sync(ag_spool *s)
{
    if (!s->dirty || s->wfd < 0)
        return 0;
    if (fdatasync(s->wfd) != 0)
        return -1;
    s->dirty = false;
    return 0;
}

ag_spool_pos ag_spool_checkpoint(const ag_spool *s)
{
    return s->ckpt;
}

uint64_t ag_spool_bytes(const ag_spool *s)
{
    return s->total;
}

uint64_t ag_spool_pending_bytes(const ag_spool *s)
{
    /* Segments wholly before the checkpoint are deleted; the checkpoint's own segment still holds
     * ckpt.offset delivered bytes. */
    return s->total > s->ckpt.offset ? s->total - s->ckpt.offset : 0;
}

uint64_t ag_spool_corrupt(const ag_spool *s)
{
    return s->corrupt;
}

/* Moves pos onto a stored segment: the first one at or after pos.segment (offset 0 if it moved).
 * Returns the index, or -1 when pos lies after every segment. */
static ssize_t settle(const ag_spool *s, ag_spool_pos *pos)
{
    for (size_t i = 0; i < s->nsegs; i++) {
        if (s->segs[i].id == pos->segment)
            return (ssize_t)i;
        if (s->segs[i].id > pos->segment) {
            pos->segment = s->segs[i].id;
            pos->offset = 0;
            return (ssize_t)i;
        }
    }
    return -1;
}

bool ag_spool_at_end(const ag_spool *s, ag_spool_pos pos)
{
    ssize_t i = settle(s, &pos);
    if (i < 0)
        return true;
    for (size_t k = (size_t)i; k < s->nsegs; k++)
        if (s->segs[k].size > (k == (size_t)i ? pos.offset : 0))
            return false;
    return true;
}

static int reader_open(ag_spool *s, uint64_t id)
{
    if (s->rseg == id && s->rfd >= 0)
        return 0;
    reader_close(s);
    char name[64];
    seg_name(name, sizeof name, id);
    int fd = openat(s->dirfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    s->rfd = fd;
    s->rseg = id;
    return 0;
}

static int pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        done += (size_t)n;
    }
    return 0;
}

static int grow_rbuf(ag_spool *s, size_t need)
{
    if (need <= s->rcap)
        return 0;
    size_t cap = s->rcap ? s->rcap : 4096;
    while (cap < need)
        cap *= 2;
    char *n = realloc(s->rbuf, cap);
    if (!n)
        return -1;
    s->rbuf = n;
    s->rcap = cap;
    return 0;
}

/* Checks the record at off (within size): 1 intact (payload in rbuf, *len set), 0 not intact,
 * -1 on I/O error. */
static int try_record(ag_spool *s, uint64_t off, uint64_t size, size_t *len)
{
    if (size - off < AG_SPOOL_HEADER)
        return 0;
    unsigned char hdr[AG_SPOOL_HEADER];
    if (pread_full(s->rfd, hdr, sizeof hdr, off) != 0)
        return -1;
    if (memcmp(hdr, MAGIC, 4) != 0)
        return 0;
    uint32_t n = get_le32(hdr + 4);
    if (n == 0 || n > AG_SPOOL_MAX_RECORD || n > size - off - AG_SPOOL_HEADER)
        return 0;
    if (grow_rbuf(s, (size_t)n + 1) != 0)
        return -1;
    if (pread_full(s->rfd, s->rbuf, n, off + AG_SPOOL_HEADER) != 0)
        return -1;
    if (record_crc(hdr + 4, s->rbuf, n) != get_le32(hdr + 8))
        return 0;
    s->rbuf[n] = '\0';
    *len = n;
    return 1;
}

/* After a bad record at off: the offset of the next intact record in the segment, or size. */
static int resync(ag_spool *s, uint64_t off, uint64_t size, uint64_t *next)
{
    unsigned char win[4096];
    uint64_t p = off + 1;
    while (p + AG_SPOOL_HEADER <= size) {
        size_t n = (size_t)(size - p < sizeof win ? size - p : sizeof win);
        if (pread_full(s->rfd, win, n, p) != 0)
            return -1;
        for (size_t i = 0; i + 4 <= n; i++) {
            if (memcmp(win + i, MAGIC, 4) != 0)
                continue;
            size_t len;
            int r = try_record(s, p + i, size, &len);
            if (r < 0)
                return -1;
            if (r == 1) {
                *next = p + i;
                return 0;
            }
        }
        if (n < 4)
            break;
        p += n - 3; /* keep an overlap so a magic split across windows is found */
    }
    *next = size;
    return 0;
}

int ag_spool_read(ag_spool *s, ag_spool_pos *pos, const char **data, size_t *len)
{
    for (;;) {
        ssize_t i = settle(s, pos);
        if (i < 0)
            return 0;
        uint64_t size = s->segs[i].size;
        bool active = (size_t)i == s->nsegs - 1;
        if (pos->offset >= size) {
            if (active)
                return 0;
            pos->segment = s->segs[i + 1].id;
            pos->offset = 0;
            continue;
        }
        if (reader_open(s, pos->segment) != 0)
            return -1;
        size_t n;
        int r = try_record(s, pos->offset, size, &n);
        if (r < 0)
            return -1;
        if (r == 1) {
            *data = s->rbuf;
            *len = n;
            pos->offset += AG_SPOOL_HEADER + n;
            return 1;
        }
        s->corrupt++;
        uint64_t next;
        if (resync(s, pos->offset, size, &next) != 0)
            return -1;
        ag_log(AG_LOG_WARN, NULL,
               "audit spool %s: corrupt or torn record in segment %" PRIu64 " at offset %" PRIu64
               "; skipped %" PRIu64 " bytes",
               s->dir, pos->segment, pos->offset, next - pos->offset);
        if (next >= size && active) {
            /* cannot happen for our own appends; do not spin */
            pos->offset = size;
            return 0;
        }
        pos->offset = next;
    }
}

int ag_spool_commit(ag_spool *s, ag_spool_pos pos)
{
    ssize_t i = settle(s, &pos);
    if (i < 0) /* past everything stored: the end of the active segment */
        pos = (ag_spool_pos){s->segs[s->nsegs - 1].id, s->segs[s->nsegs - 1].size};
    else if (pos.offset >= s->segs[i].size && (size_t)i + 1 < s->nsegs)
        pos = (ag_spool_pos){s->segs[i + 1].id, 0};
    if (ag_spool_pos_cmp(pos, s->ckpt) <= 0)
        return 0;
    if (write_checkpoint(s, pos) != 0)
        return -1;
    s->ckpt = pos;
    bool removed = false;
    while (s->nsegs > 1 && s->segs[0].id < pos.segment) {
        if (unlink_seg(s, 0) != 0)
            return -1;
        removed = true;
    }
    return removed ? sync_dir(s) : 0;
}

/* Counts intact records in segment index i from offset off (headers only; stops at damage). */
static uint64_t count_records(ag_spool *s, size_t i, uint64_t off)
{
    if (reader_open(s, s->segs[i].id) != 0)
        return 0;
    uint64_t n = 0, size = s->segs[i].size;
    unsigned char hdr[AG_SPOOL_HEADER];
    while (size - off >= AG_SPOOL_HEADER) {
        if (pread_full(s->rfd, hdr, sizeof hdr, off) != 0 || memcmp(hdr, MAGIC, 4) != 0)
            break;
        uint32_t len = get_le32(hdr + 4);
        if (len == 0 || len > size - off - AG_SPOOL_HEADER)
            break;
        n++;
        off += AG_SPOOL_HEADER + len;
    }
    return n;
}

int ag_spool_drop_oldest(ag_spool *s, uint64_t *records, uint64_t *bytes)
{
    *records = *bytes = 0;
    ag_spool_pos start = s->ckpt;
    ssize_t i = settle(s, &start);
    if (i < 0)
        return 1;
    if ((size_t)i == s->nsegs - 1) {
        if (s->segs[i].size <= start.offset)
            return 1;
        if (new_active(s) != 0)
            return -1;
    }
    seg victim = s->segs[i];
    *records = count_records(s, (size_t)i, start.offset);
    *bytes = victim.size - start.offset;
    ag_spool_pos next = {s->segs[i + 1].id, 0};
    if (write_checkpoint(s, next) != 0)
        return -1;
    s->ckpt = next;
    while (s->nsegs > 1 && s->segs[0].id < next.segment)
        if (unlink_seg(s, 0) != 0)
            return -1;
    return sync_dir(s);
}
