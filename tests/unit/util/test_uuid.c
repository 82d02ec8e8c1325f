/* ag_uuid4: the version-4 layout, and no repeat within a thread or across threads. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "aoai_guard/uuid.h"
#include "check.h"

#define PER_THREAD 100000

static int cmp(const void *a, const void *b)
{
    return memcmp(a, b, 37);
}

static void *draw(void *arg)
{
    char (*ids)[37] = arg;
    for (int i = 0; i < PER_THREAD; i++)
        ag_uuid4(ids[i]);
    return NULL;
}

int main(void)
{
    char one[37];
    ag_uuid4(one);
    CHECK_INT(strlen(one), 36);
    CHECK(one[8] == '-' && one[13] == '-' && one[18] == '-' && one[23] == '-');
    CHECK(one[14] == '4');                                   /* version 4 */
    CHECK(strchr("89ab", one[19]) != NULL);                  /* RFC 4122 variant */
    CHECK(strspn(one, "0123456789abcdef-") == 36);

    /* Two threads, each with its own generator: 200,000 ids, all distinct. */
    char (*ids)[37] = malloc(2 * PER_THREAD * sizeof *ids);
    pthread_t t1, t2;
    pthread_create(&t1, NULL, draw, ids);
    pthread_create(&t2, NULL, draw, ids + PER_THREAD);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    qsort(ids, 2 * PER_THREAD, sizeof *ids, cmp);
    int repeats = 0;
    for (int i = 1; i < 2 * PER_THREAD; i++)
        repeats += memcmp(ids[i - 1], ids[i], 37) == 0;
    CHECK_INT(repeats, 0);
    free(ids);
    return CHECK_DONE();
}
