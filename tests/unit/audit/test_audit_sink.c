/* JSON-lines sinks: size rotation with a bounded number of files, and an fd (stdout) sink. */
#include <fcntl.h>
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
    CHECK_INT(fsize(path), 100); /* 4000 + 100 > 4096: rotated first */
    old = ag_test_read_file(p1, &n);
    CHECK(old && strncmp(old, "{\"n\":160,", 9) == 0);
    free(old);
    CHECK_INT(ag_line_sink_write(s, line, 99), 0);
    CHECK_INT(fsize(path), 200);
    ag_line_sink_close(s);

    /* max_files 0: the old content is discarded */
    unlink(path);
    s = ag_line_sink_open_file(path, 4096, 0, err, sizeof err);
    for (int i = 0; i < 41; i++)
        ag_line_sink_write(s, line, 99);
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
    ag_test_rmtree(dir);
    return CHECK_DONE();
}
