/* ag_grow_append: exact bounds, NUL termination, no change on refusal. */
#include <stdlib.h>
#include <string.h>

#include "aoai_guard/growbuf.h"
#include "check.h"

int main(void)
{
    char *b = NULL;
    size_t len = 0, cap = 0;
    CHECK_INT(ag_grow_append(&b, &len, &cap, 10, "hello", 5), 0);
    CHECK_STR(b, "hello");
    CHECK_INT(ag_grow_append(&b, &len, &cap, 10, "world", 5), 0); /* exactly max */
    CHECK_INT(len, 10);
    CHECK_STR(b, "helloworld");
    CHECK(cap <= 11);                                            /* never more than max + 1 */
    CHECK_INT(ag_grow_append(&b, &len, &cap, 10, "!", 1), -1);   /* one past: refused */
    CHECK_INT(len, 10);
    CHECK_STR(b, "helloworld");                                  /* unchanged */
    CHECK_INT(ag_grow_append(&b, &len, &cap, 10, "", 0), 0);     /* empty append at the bound */
    free(b);

    /* Growth by doubling from 4 KiB for large buffers. */
    b = NULL;
    len = cap = 0;
    char chunk[3000];
    memset(chunk, 'x', sizeof chunk);
    for (int i = 0; i < 10; i++)
        CHECK_INT(ag_grow_append(&b, &len, &cap, 1 << 20, chunk, sizeof chunk), 0);
    CHECK_INT(len, 30000);
    CHECK_INT(cap, 32768);
    CHECK(b[len] == '\0');
    free(b);
    return CHECK_DONE();
}
