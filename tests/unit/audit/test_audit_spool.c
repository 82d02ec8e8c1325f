/* The durable spool: append/read, crc, torn tails, resynchronisation, checkpoint across restarts,
 * segment deletion, drop_oldest, the directory lock. */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "aoai_guard/spool.h"
#include "audit_test_util.h"
#include "check.h"

static ag_spool *open_spool(const char *dir, uint64_t seg)
{
    char err[256] = "";
    ag_spool_options o = {dir, seg};
    ag_spool *s = ag_spool_open(&o, err, sizeof err);
    if (!s)
        fprintf(stderr, "open: %s\n", err);
    return s;
}

static void rec(char *buf, size_t cap, int i)
{
    snprintf(buf, cap, "{\"seq\":%d,\"pad\":\"%0*d\"}", i, 40 + i % 7, i);
}

/* Reads everything from pos; returns the count and checks the sequence numbers expected[]. */
static int read_all(ag_spool *s, ag_spool_pos *pos, const int *expected, int nexp)
{
    const char *d;
    size_t len;
    int n = 0, r;
    while ((r = ag_spool_read(s, pos, &d, &len)) == 1) {
        char want[128];
        if (n < nexp) {
            rec(want, sizeof want, expected[n]);
            if (strlen(want) != len || memcmp(want, d, len) != 0)
                fprintf(stderr, "record %d: got %.*s want %s\n", n, (int)len, d, want);
            CHECK(strlen(want) == len && memcmp(want, d, len) == 0);
        }
        n++;
    }
    CHECK_INT(r, 0);
    CHECK_INT(n, nexp);
    return n;
}

static void append_range(ag_spool *s, int from, int to)
{
    for (int i = from; i < to; i++) {
        char b[128];
        rec(b, sizeof b, i);
        CHECK_INT(ag_spool_append(s, b, strlen(b)), 0);
    }
}

static void seq(int *out, int from, int to)
{
    for (int i = from; i < to; i++)
        out[i - from] = i;
}

static void test_append_read_checkpoint(void)
{
    char dir[256];
    ag_test_tmpdir(dir, sizeof dir);
    ag_spool *s = open_spool(dir, 1024);
    CHECK(s != NULL);
    append_range(s, 0, 50);
    CHECK_INT(ag_spool_sync(s), 0);
    CHECK(ag_test_count_files(dir, ".seg") > 2); /* 1 KiB segments rotate */
    ag_spool_pos pos = ag_spool_checkpoint(s);
    int want[100];
    seq(want, 0, 50);
    read_all(s, &pos, want, 50);
    CHECK(ag_spool_at_end(s, pos));
    CHECK(!ag_spool_at_end(s, ag_spool_checkpoint(s)));

    /* acknowledge the first 20 */
    pos = ag_spool_checkpoint(s);
    const char *d;
    size_t len;
    for (int i = 0; i < 20; i++)
        CHECK_INT(ag_spool_read(s, &pos, &d, &len), 1);
    int before = ag_test_count_files(dir, ".seg");
    CHECK_INT(ag_spool_commit(s, pos), 0);
    CHECK(ag_test_count_files(dir, ".seg") < before); /* delivered segments are deleted */
    /* committing an older position changes nothing */
    CHECK_INT(ag_spool_commit(s, (ag_spool_pos){1, 0}), 0);
    CHECK_INT(ag_spool_pos_cmp(ag_spool_checkpoint(s), pos) >= 0, 1);
    ag_spool_close(s);

    /* restart: resume at the checkpoint, new appends follow */
    s = open_spool(dir, 1024);
    CHECK(s != NULL);
    append_range(s, 50, 60);
    pos = ag_spool_checkpoint(s);
    seq(want, 20, 60);
    read_all(s, &pos, want, 40);
    CHECK_INT(ag_spool_corrupt(s), 0);
    CHECK_INT(ag_spool_commit(s, pos), 0);
    CHECK(ag_spool_at_end(s, ag_spool_checkpoint(s)));
    CHECK_INT(ag_test_count_files(dir, ".seg"), 1); /* only the active segment is left */
    ag_spool_close(s);
    ag_test_rmtree(dir);
}

/* Path of the newest segment in dir. */
static void last_segment(const char *dir, char *out, size_t cap)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char best[256] = "";
    while ((e = readdir(d)) != NULL)
        if (strstr(e->d_name, ".seg") && strcmp(e->d_name, best) > 0)
            snprintf(best, sizeof best, "%s", e->d_name);
    closedir(d);
    snprintf(out, cap, "%s/%s", dir, best);
}

/* Offset of record i (0-based) in a segment holding records from..; all records written by rec(). */
static long offset_of(int from, int i)
{
    long off = 0;
    for (int k = from; k < from + i; k++) {
        char b[128];
        rec(b, sizeof b, k);
        off += AG_SPOOL_HEADER + (long)strlen(b);
    }
    return off;
}

static void test_torn_tail(void)
{
    char dir[256], seg[512];
    ag_test_tmpdir(dir, sizeof dir);
    ag_spool *s = open_spool(dir, 1 << 20);
    append_range(s, 0, 5);
    ag_spool_close(s); /* as if killed: the next run starts a new segment */
    last_segment(dir, seg, sizeof seg);
    struct stat st;
    CHECK_INT(stat(seg, &st), 0);
    CHECK_INT(truncate(seg, st.st_size - 3), 0); /* power cut inside the last record */

    s = open_spool(dir, 1 << 20);
    append_range(s, 5, 8);
    ag_spool_pos pos = ag_spool_checkpoint(s);
    int want[] = {0, 1, 2, 3, 5, 6, 7};
    read_all(s, &pos, want, 7);
    CHECK_INT(ag_spool_corrupt(s), 1);
    ag_spool_close(s);
    ag_test_rmtree(dir);
}

static void corrupt_byte(const char *path, long off, unsigned char v)
{
    int fd = open(path, O_WRONLY);
    CHECK(fd >= 0);
    CHECK_INT(pwrite(fd, &v, 1, off), 1);
    close(fd);
}

static void test_corruption_resync(void)
{
    char dir[256], seg[512];
    /* a flipped payload byte: the crc rejects record 2, reading resumes at record 3 */
    ag_test_tmpdir(dir, sizeof dir);
    ag_spool *s = open_spool(dir, 1 << 20);
    append_range(s, 0, 5);
    ag_spool_close(s);
    last_segment(dir, seg, sizeof seg);
    corrupt_byte(seg, offset_of(0, 2) + AG_SPOOL_HEADER + 3, 'X');
    s = open_spool(dir, 1 << 20);
    ag_spool_pos pos = ag_spool_checkpoint(s);
    int want1[] = {0, 1, 3, 4};
    read_all(s, &pos, want1, 4);
    CHECK_INT(ag_spool_corrupt(s), 1);
    ag_spool_close(s);
    ag_test_rmtree(dir);

    /* a huge length field in record 3 */
    ag_test_tmpdir(dir, sizeof dir);
    s = open_spool(dir, 1 << 20);
    append_range(s, 0, 5);
    ag_spool_close(s);
    last_segment(dir, seg, sizeof seg);
    corrupt_byte(seg, offset_of(0, 3) + 7, 0x7F);
    s = open_spool(dir, 1 << 20);
    pos = ag_spool_checkpoint(s);
    int want2[] = {0, 1, 2, 4};
    read_all(s, &pos, want2, 4);
    CHECK_INT(ag_spool_corrupt(s), 1);
    ag_spool_close(s);
    ag_test_rmtree(dir);

    /* a damaged checkpoint: start over from the oldest segment (at least once) */
    ag_test_tmpdir(dir, sizeof dir);
    s = open_spool(dir, 1 << 20);
    append_range(s, 0, 4);
    pos = ag_spool_checkpoint(s);
    const char *d;
    size_t len;
    CHECK_INT(ag_spool_read(s, &pos, &d, &len), 1);
    CHECK_INT(ag_spool_read(s, &pos, &d, &len), 1);
    CHECK_INT(ag_spool_commit(s, pos), 0);
    ag_spool_close(s);
    char ck[512];
    snprintf(ck, sizeof ck, "%s/checkpoint", dir);
    corrupt_byte(ck, 9, '7');
    s = open_spool(dir, 1 << 20);
    pos = ag_spool_checkpoint(s);
    int want3[] = {0, 1, 2, 3};
    read_all(s, &pos, want3, 4);
    ag_spool_close(s);
    ag_test_rmtree(dir);
}

static void test_drop_oldest(void)
{
    char dir[256];
    ag_test_tmpdir(dir, sizeof dir);
    ag_spool *s = open_spool(dir, 600);
    append_range(s, 0, 30);
    uint64_t bytes_before = ag_spool_bytes(s);
    /* the first segment holds the records whose frames fit in 600 bytes */
    int first_seg = 0;
    while (offset_of(0, first_seg + 1) <= 600)
        first_seg++;
    uint64_t recs, bytes;
    CHECK_INT(ag_spool_drop_oldest(s, &recs, &bytes), 0);
    CHECK_INT(recs, first_seg);
    CHECK_INT(bytes, offset_of(0, first_seg));
    CHECK_INT(ag_spool_bytes(s), bytes_before - bytes);
    ag_spool_pos pos = ag_spool_checkpoint(s);
    int want[30];
    seq(want, first_seg, 30);
    read_all(s, &pos, want, 30 - first_seg);

    /* partly delivered oldest segment: only the undelivered records count */
    pos = ag_spool_checkpoint(s);
    const char *d;
    size_t len;
    CHECK_INT(ag_spool_read(s, &pos, &d, &len), 1);
    CHECK_INT(ag_spool_commit(s, pos), 0);
    int second = 0;
    while (offset_of(first_seg, second + 1) <= 600)
        second++;
    CHECK_INT(ag_spool_drop_oldest(s, &recs, &bytes), 0);
    CHECK_INT(recs, second - 1);
    ag_spool_close(s);

    /* only the active segment: it is rotated and dropped; an empty spool has nothing to drop */
    ag_test_rmtree(dir);
    ag_test_tmpdir(dir, sizeof dir);
    s = open_spool(dir, 1 << 20);
    CHECK_INT(ag_spool_drop_oldest(s, &recs, &bytes), 1);
    append_range(s, 0, 3);
    CHECK_INT(ag_spool_drop_oldest(s, &recs, &bytes), 0);
    CHECK_INT(recs, 3);
    CHECK_INT(ag_spool_bytes(s), 0);
    pos = ag_spool_checkpoint(s);
    CHECK_INT(ag_spool_read(s, &pos, &d, &len), 0);
    append_range(s, 3, 4);
    pos = ag_spool_checkpoint(s);
    int w4[] = {3};
    read_all(s, &pos, w4, 1);
    ag_spool_close(s);
    ag_test_rmtree(dir);
}

/* The checkpoint points past every segment left (emptied and cleaned up): new segments must still come
 * after it, or their records would never be read. */
static void test_ids_after_checkpoint(void)
{
    char dir[256], p[512];
    ag_test_tmpdir(dir, sizeof dir);
    ag_spool *s = open_spool(dir, 1 << 20);
    append_range(s, 0, 2);
    ag_spool_pos pos = ag_spool_checkpoint(s);
    int want[] = {0, 1};
    read_all(s, &pos, want, 2);
    CHECK_INT(ag_spool_commit(s, pos), 0);
    ag_spool_close(s);
    for (int round = 0; round < 3; round++) { /* restarts that write nothing leave empty segments */
        s = open_spool(dir, 1 << 20);
        ag_spool_close(s);
    }
    CHECK_INT(ag_test_count_files(dir, ".seg"), 2); /* the delivered one and the last empty one */
    /* remove every segment: only the checkpoint is left */
    for (int id = 1; id <= 10; id++) {
        snprintf(p, sizeof p, "%s/%020d.seg", dir, id);
        unlink(p);
    }
    s = open_spool(dir, 1 << 20);
    append_range(s, 2, 4);
    pos = ag_spool_checkpoint(s);
    int want2[] = {2, 3};
    read_all(s, &pos, want2, 2);
    ag_spool_close(s);
    ag_test_rmtree(dir);
}

static void test_lock_and_limits(void)
{
    char dir[256];
    ag_test_tmpdir(dir, sizeof dir);
    ag_spool *s = open_spool(dir, 0);
    CHECK(s != NULL);
    char err[256] = "";
    ag_spool_options o = {dir, 0};
    ag_spool *t = ag_spool_open(&o, err, sizeof err);
    CHECK(t == NULL);
    CHECK(strstr(err, "in use") != NULL);
    CHECK_INT(ag_spool_append(s, "", 0), -1);
    ag_spool_close(s);
    t = ag_spool_open(&o, err, sizeof err); /* released on close */
    CHECK(t != NULL);
    ag_spool_close(t);
    ag_test_rmtree(dir);
}

int main(void)
{
    test_append_read_checkpoint();
    test_torn_tail();
    test_corruption_resync();
    test_drop_oldest();
    test_ids_after_checkpoint();
    test_lock_and_limits();
    return CHECK_DONE();
}
