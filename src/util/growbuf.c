/* Bounded growable buffers (see growbuf.h). */
#include "aoai_guard/growbuf.h"

#include <stdlib.h>
#include <string.h>

int ag_grow_append(char **buf, size_t *len, size_t *cap, size_t max, const void *data, size_t n)
{
    if (*len + n > max)
        return -1;
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 4096;
        while (c < *len + n + 1)
            c *= 2;
        if (c > max + 1)
            c = max + 1;
        char *nb = realloc(*buf, c);
        if (!nb)
            return -1;
        *buf = nb;
        *cap = c;
    }
    if (n)
        memcpy(*buf + *len, data, n);
    *len += n;
    (*buf)[*len] = '\0';
    return 0;
}
