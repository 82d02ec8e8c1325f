/* A main() for fuzz targets built without libFuzzer: runs LLVMFuzzerTestOneInput once over every
 * file named on the command line, or every regular file of every directory named there (one level,
 * sorted by name so runs are reproducible). This is how the corpora run as ordinary CTest tests
 * (fuzz.replay.<target>) in every build, under ASan/UBSan when the build is sanitized.
 *
 *   fuzz_<target> DIR|FILE...      exit 0 when every input ran; 1 when an input could not be read
 *                                  or no input was found at all (an empty corpus is a mistake)
 *
 * A crash in the target is a crash of this program, which is what fails the test. */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

/* Inputs above this size are refused rather than silently cut: a corpus file that large is a
 * mistake (libFuzzer's own default -max_len is far smaller). */
#define REPLAY_MAX_INPUT (16u * 1024u * 1024u)

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    uint8_t *buf = malloc(REPLAY_MAX_INPUT + 1);
    size_t n = buf ? fread(buf, 1, REPLAY_MAX_INPUT + 1, f) : 0;
    int bad = !buf || ferror(f) || n > REPLAY_MAX_INPUT;
    fclose(f);
    if (bad) {
        fprintf(stderr, "replay: %s: cannot read (or larger than %u bytes)\n", path, REPLAY_MAX_INPUT);
        free(buf);
        return -1;
    }
    /* An exact-size copy, so ASan sees reads past the end of the input as what they are. */
    uint8_t *exact = malloc(n ? n : 1);
    if (!exact) {
        free(buf);
        return -1;
    }
    memcpy(exact, buf, n);
    free(buf);
    LLVMFuzzerTestOneInput(exact, n);
    free(exact);
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Runs every regular file in dir; returns the number run, or -1 on an error. */
static long run_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **nn = realloc(names, cap * sizeof *nn);
            if (!nn)
                break;
            names = nn;
        }
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        names[n] = malloc(len);
        if (!names[n])
            break;
        snprintf(names[n], len, "%s/%s", dir, e->d_name);
        n++;
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof *names, by_name);
    long ran = 0;
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) {
            if (run_file(names[i]) != 0)
                ran = -1;
            else if (ran >= 0)
                ran++;
        }
        free(names[i]);
    }
    free(names);
    return ran;
}

int main(int argc, char **argv)
{
    if (LLVMFuzzerInitialize)
        LLVMFuzzerInitialize(&argc, &argv);
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR|FILE...\n", argv[0]);
        return 2;
    }
    long total = 0;
    int failed = 0;
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] == '-')
            continue; /* libFuzzer-style flags are accepted and ignored */
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            failed = 1;
            continue;
        }
        if (S_ISDIR(st.st_mode)) {
            long r = run_dir(argv[i]);
            if (r < 0)
                failed = 1;
            else
                total += r;
        } else if (run_file(argv[i]) != 0) {
            failed = 1;
        } else {
            total++;
        }
    }
    printf("replay: %ld inputs ran\n", total);
    if (total == 0) {
        fprintf(stderr, "replay: no input found\n");
        return 1;
    }
    return failed;
}
