/* JSON-lines sinks: size rotation with a bounded number of files, an fd (stdout) sink, and the queue
 * of lines that a flush writes (full queue, over-long line, write errors that keep what is left). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "aoai_guard/audit_sink.h"
#include "audit_test_util.h"
#include "check.h"

static long fsize(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 ? (long)st.st_size : -1;
}

/* Reads the pipe until it is empty (non-blocking read end), appending to out. */
static void drain_pipe(int fd, char *out, size_t cap, size_t *len)
{
    for (;;) {
        ssize_t r = read(fd, out + *len, cap - *len);
        if (r <= 0)
            break;
        *len += (size_t)r;
    }
}

static void test_queue(const char *dir)
{
    char path[512], err[256];
    snprintf(path, sizeof path, "%s/queue.jsonl", dir);
    ag_line_sink *s = ag_line_sink_open_file(path, 0, 0, err, sizeof err);
    CHECK(s != NULL);
    /* 1000 lines of 100 bytes: the 64 KiB queue is written when the next line does not fit */
    char line[128];
    for (int i = 0; i < 1000; i++) {
        snprintf(line, sizeof line, "{\"n\":%04d,\"pad\":\"%080d\"}", i, 0);
        CHECK_INT(ag_line_sink_write(s, line, 99), 0);
    }
    CHECK_INT(fsize(path), 655 * 100); /* 65536 / 100 lines per write */
    CHECK_INT(ag_line_sink_flush(s), 1000);
    CHECK_INT(fsize(path), 100000);
    /* a line longer than the queue is written on its own, in order, newline included */
    size_t big_len = 100 * 1000;
    char *big = malloc(big_len);
    memset(big, 'x', big_len);
    big[0] = '{';
    big[big_len - 1] = '}';
    CHECK_INT(ag_line_sink_write(s, "{\"before\":1}", 12), 0);
    CHECK_INT(ag_line_sink_write(s, big, big_len), 0);
    CHECK_INT(ag_line_sink_write(s, "{\"after\":1}", 11), 0);
    CHECK_INT(ag_line_sink_flush(s), 3);
    size_t n;
    char *all = ag_test_read_file(path, &n);
    CHECK_INT(n, 100000 + 13 + big_len + 1 + 12);
    if (all && n == 100000 + 13 + big_len + 1 + 12) {
        for (int i = 0; i < 1000; i++) {
            char want[16];
            snprintf(want, sizeof want, "{\"n\":%04d,", i);
            CHECK(strncmp(all + i * 100, want, 10) == 0 && all[i * 100 + 99] == '\n');
        }
        CHECK(memcmp(all + 100000, "{\"before\":1}\n{x", 15) == 0);
        CHECK(memcmp(all + 100000 + 13 + big_len - 1, "}\n{\"after\":1}\n", 15) == 0);
    }
    free(all);
    ag_line_sink_close(s);

    /* /dev/full: every write fails; the lines stay queued and each flush reports the error */
    s = ag_line_sink_open_file("/dev/full", 0, 0, err, sizeof err);
    CHECK(s != NULL);
    if (s) {
        CHECK_INT(ag_line_sink_write(s, "{\"a\":1}", 7), 0);
        CHECK_INT(ag_line_sink_flush(s), -1);
        CHECK_INT(ag_line_sink_flush(s), -1);
        CHECK_INT(ag_line_sink_sync(s), -1);
        ag_line_sink_close(s);
    }

    /* A pipe that fills up (non-blocking, one page): flushes write what fits, keep the rest, and once
     * the reader catches up every line has arrived once, whole and in order. */
    signal(SIGPIPE, SIG_IGN);
    int pfd[2];
    CHECK_INT(pipe2(pfd, O_NONBLOCK), 0);
    fcntl(pfd[1], F_SETPIPE_SZ, 4096);
    s = ag_line_sink_open_fd(pfd[1]);
    size_t cap = 300 * 100, got = 0;
    char *recv = malloc(cap);
    int failed = 0;
    for (int i = 0; i < 300; i++) {
        snprintf(line, sizeof line, "{\"n\":%04d,\"pad\":\"%080d\"}", i, 0);
        CHECK_INT(ag_line_sink_write(s, line, 99), 0);
        if (i % 50 == 49) {
            failed += ag_line_sink_flush(s) < 0; /* 5000 bytes into a 4096-byte pipe */
            drain_pipe(pfd[0], recv, cap, &got);
        }
    }
    long rows = 0, r;
    for (int k = 0; k < 100 && (r = ag_line_sink_flush(s)) != 0; k++) {
        if (r > 0)
            rows += r;
        drain_pipe(pfd[0], recv, cap, &got);
    }
    drain_pipe(pfd[0], recv, cap, &got);
    CHECK(failed > 0); /* the pipe did fill */
    CHECK_INT(got, 300 * 100);
    for (int i = 0; i < 300 && got == 300 * 100; i++) {
        char want[16];
        snprintf(want, sizeof want, "{\"n\":%04d,", i);
        CHECK(strncmp(recv + i * 100, want, 10) == 0 && recv[i * 100 + 99] == '\n');
    }
    free(recv);
    free(big);
    ag_line_sink_close(s);
    close(pfd[0]);
    close(pfd[1]);
}

int main(void)
{
    char dir[256], path[512], p1[600], p2[600], p3[600];
    ag_test_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/audit.jsonl", dir);
    snprintf(p1, sizeof p1, "%s.1", path);
    snprintf(p2, sizeof p2, "%s.2", path);
    snprintf(p3, sizeof p3, "%s.3", path);
    char err[256];
    ag_line_sink *s = ag_line_sink_open_file(path, 4096, 2, err, sizeof err);
    CHECK(s != NULL);
    char line[100];
    for (int i = 0; i < 200; i++) { /* 200 lines of 100 bytes: 20000 bytes */
        snprintf(line, sizeof line, "{\"n\":%03d,\"pad\":\"%081d\"}", i, 0);
        CHECK_INT(strlen(line), 99);
        CHECK_INT(ag_line_sink_write(s, line, 99), 0);
    }
    CHECK_INT(ag_line_sink_sync(s), 0);
    /* 40 lines (4000 bytes) per file; the current one holds lines 160..199 */
    CHECK_INT(fsize(path), 4000);
    CHECK_INT(fsize(p1), 4000);
    CHECK_INT(fsize(p2), 4000);
    CHECK_INT(fsize(p3), -1);
    size_t n;
    char *cur = ag_test_read_file(path, &n);
    CHECK(cur && strncmp(cur, "{\"n\":160,", 9) == 0);
    CHECK(cur && strstr(cur, "{\"n\":199,") != NULL && cur[n - 1] == '\n');
    free(cur);
    char *old = ag_test_read_file(p2, &n);
    CHECK(old && strncmp(old, "{\"n\":080,", 9) == 0);
    free(old);
    ag_line_sink_close(s);

    /* reopening appends (and counts the existing size towards rotation) */
    s = ag_line_sink_open_file(path, 4096, 2, err, sizeof err);
    CHECK_INT(ag_line_sink_write(s, line, 99), 0);
    CHECK_INT(fsize(path), 0); /* 4000 + 100 > 4096: rotated first; the line is queued */
    CHECK_INT(ag_line_sink_flush(s), 1);
    CHECK_INT(fsize(path), 100);
    old = ag_test_read_file(p1, &n);
    CHECK(old && strncmp(old, "{\"n\":160,", 9) == 0);
    free(old);
    CHECK_INT(ag_line_sink_write(s, line, 99), 0);
    CHECK_INT(ag_line_sink_flush(s), 1);
    CHECK_INT(ag_line_sink_flush(s), 0); /* nothing queued */
    CHECK_INT(fsize(path), 200);
    ag_line_sink_close(s);

    /* max_files 0: the old content is discarded; queued lines go to the file they were queued for */
    unlink(path);
    s = ag_line_sink_open_file(path, 4096, 0, err, sizeof err);
    for (int i = 0; i < 41; i++)
        ag_line_sink_write(s, line, 99);
    CHECK_INT(ag_line_sink_flush(s), 41); /* 40 went out with the rotation, counted now */
    CHECK_INT(fsize(path), 100);
    ag_line_sink_close(s);

    /* a file that cannot be opened */
    char bad[600];
    snprintf(bad, sizeof bad, "%s/missing-dir/x.jsonl", dir);
    CHECK(ag_line_sink_open_file(bad, 0, 0, err, sizeof err) == NULL);
    CHECK(strstr(err, "No such file") != NULL);

    /* fd sink: lines arrive as written, the fd stays open */
    int pfd[2];
    CHECK_INT(pipe(pfd), 0);
    s = ag_line_sink_open_fd(pfd[1]);
    CHECK_INT(ag_line_sink_write(s, "{\"a\":1}", 7), 0);
    CHECK_INT(ag_line_sink_write(s, "{\"b\":2}", 7), 0);
    ag_line_sink_close(s);
    char buf[64] = "";
    CHECK_INT(read(pfd[0], buf, sizeof buf - 1), 16);
    CHECK_STR(buf, "{\"a\":1}\n{\"b\":2}\n");
    CHECK_INT(write(pfd[1], "x", 1), 1);
    close(pfd[0]);
    close(pfd[1]);
    test_queue(dir);
    ag_test_rmtree(dir);
    return CHECK_DONE();
}
