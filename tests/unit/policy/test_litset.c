/* Multi-literal matcher: exact occurrences (overlapping, nested, shared ids) against a naive
 * search over random texts. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "aoai_guard/litset.h"
#include "check.h"

typedef struct occ {
    uint32_t id;
    size_t end;
} occ;

typedef struct occs {
    occ v[65536];
    size_t n;
    size_t stop_after;
} occs;

static int collect(void *arg, uint32_t id, size_t end)
{
    occs *o = arg;
    if (o->n < 65536)
        o->v[o->n++] = (occ){id, end};
    return o->stop_after && o->n >= o->stop_after;
}

static int cmp_occ(const void *a, const void *b)
{
    const occ *x = a, *y = b;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static void test_basic(void)
{
    ag_litset *ls = ag_litset_new();
    CHECK(ls != NULL);
    CHECK_INT(ag_litset_add(ls, "he", 2, 1), 0);
    CHECK_INT(ag_litset_add(ls, "she", 3, 2), 0);
    CHECK_INT(ag_litset_add(ls, "his", 3, 3), 0);
    CHECK_INT(ag_litset_add(ls, "hers", 4, 4), 0);
    CHECK_INT(ag_litset_add(ls, "hers", 4, 5), 0); /* same bytes, second id */
    CHECK_INT(ag_litset_add(ls, "", 0, 6), -1);
    CHECK_INT(ag_litset_compile(ls), 0);
    CHECK_INT(ag_litset_add(ls, "x", 1, 7), -1);   /* compiled: closed */
    CHECK_INT(ag_litset_count(ls), 5);
    occs o = {.n = 0};
    ag_litset_scan(ls, "ushers", 6, collect, &o);
    qsort(o.v, o.n, sizeof o.v[0], cmp_occ);
    CHECK_INT(o.n, 4);
    CHECK(o.n == 4 && o.v[0].id == 1 && o.v[0].end == 4); /* he */
    CHECK(o.n == 4 && o.v[1].id == 2 && o.v[1].end == 4); /* she */
    CHECK(o.n == 4 && o.v[2].id == 4 && o.v[2].end == 6); /* hers */
    CHECK(o.n == 4 && o.v[3].id == 5 && o.v[3].end == 6);
    /* early stop */
    occs o2 = {.n = 0, .stop_after = 1};
    ag_litset_scan(ls, "she said hers", 13, collect, &o2);
    CHECK_INT(o2.n, 1);
    ag_litset_free(ls);

    /* empty set scans nothing */
    ls = ag_litset_new();
    CHECK_INT(ag_litset_compile(ls), 0);
    occs o3 = {.n = 0};
    ag_litset_scan(ls, "anything", 8, collect, &o3);
    CHECK_INT(o3.n, 0);
    ag_litset_free(ls);
}

static void test_random_vs_naive(void)
{
    unsigned seed = 12345;
    int mismatches = 0;
    for (int round = 0; round < 200; round++) {
        bool sparse = round % 4 == 2; /* few hits: the buffered lane path; else dense: overflow */
        char lits[20][8];
        size_t ll[20];
        ag_litset *ls = ag_litset_new();
        size_t nl = 1 + (size_t)(round % 20);
        for (size_t k = 0; k < nl; k++) {
            seed = seed * 1103515245u + 12345u;
            ll[k] = (sparse ? 3 : 1) + (seed >> 16) % 5;
            for (size_t j = 0; j < ll[k]; j++) {
                seed = seed * 1103515245u + 12345u;
                lits[k][j] = sparse ? (char)('a' + (seed >> 16) % 20)
                                    : (char)("abc\xC3"[(seed >> 16) % 4]);
            }
            ag_litset_add(ls, lits[k], ll[k], (uint32_t)k);
        }
        ag_litset_compile(ls);
        static char text[6000];
        size_t tl = round % 2 ? 150 : 1024 + (size_t)round * 23; /* short: one lane; long: four */
        for (size_t j = 0; j < tl; j++) {
            seed = seed * 1103515245u + 12345u;
            text[j] = sparse ? (char)('a' + (seed >> 16) % 20) : (char)("abcd\xC3"[(seed >> 16) % 5]);
        }
        static occs got;
        got.n = 0;
        ag_litset_scan(ls, text, tl, collect, &got);
        /* reported in order of end offset */
        for (size_t j = 1; j < got.n; j++)
            if (got.v[j].end < got.v[j - 1].end)
                mismatches++;
        static occs want;
        want.n = 0;
        for (size_t e = 1; e <= tl; e++)
            for (size_t k = 0; k < nl; k++)
                if (ll[k] <= e && memcmp(text + e - ll[k], lits[k], ll[k]) == 0)
                    want.v[want.n++] = (occ){(uint32_t)k, e};
        qsort(got.v, got.n, sizeof got.v[0], cmp_occ);
        qsort(want.v, want.n, sizeof want.v[0], cmp_occ);
        bool same = got.n == want.n;
        for (size_t j = 0; same && j < got.n; j++)
            same = got.v[j].id == want.v[j].id && got.v[j].end == want.v[j].end;
        if (!same)
            mismatches++;
        ag_litset_free(ls);
    }
    CHECK_INT(mismatches, 0);
}

int main(void)
{
    test_basic();
    test_random_vs_naive();
    return CHECK_DONE();
}
