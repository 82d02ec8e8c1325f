/* Aho-Corasick multi-literal matcher (see litset.h).
 *
 * Build: a trie with a sparse child list per state, then breadth-first failure links, then a dense
 * transition table over byte equivalence classes (bytes that appear in no literal share class 0),
 * so the scan is one table lookup per input byte. Outputs of a state include those reachable
 * through its failure chain, flattened into one array at compile time. */
#include "aoai_guard/litset.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define AG_LIT_OUT_FLAG 0x80000000u

typedef struct ag_lit_edge {
    unsigned char byte;
    uint32_t to;
    uint32_t next; /* next edge of the same state, UINT32_MAX at the end */
} ag_lit_edge;

typedef struct ag_lit_node {
    uint32_t first_edge; /* UINT32_MAX: none */
    uint32_t fail;
    uint32_t out_first;  /* index into own-output list (build), UINT32_MAX: none */
} ag_lit_node;

typedef struct ag_lit_out {
    uint32_t id;
    uint32_t next;
} ag_lit_out;

struct ag_litset {
    bool compiled;
    size_t nlits;
    size_t maxlen;       /* longest literal */
    /* build state */
    ag_lit_node *nodes;
    size_t nnodes, cap_nodes;
    ag_lit_edge *edges;
    size_t nedges, cap_edges;
    ag_lit_out *outs;
    size_t nouts, cap_outs;
    /* compiled state */
    uint16_t cls[256];
    uint32_t ncls;
    uint32_t *delta;     /* nnodes * ncls: target row offset | AG_LIT_OUT_FLAG */
    uint32_t *out_start; /* nnodes + 1: range in out_ids */
    uint32_t *out_ids;
};

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap * 2 : 64;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q)
        return -1;
    *p = q;
    *cap = c;
    return 0;
}

static int new_node(ag_litset *ls, uint32_t *id)
{
    if (grow((void **)&ls->nodes, &ls->cap_nodes, ls->nnodes + 1, sizeof *ls->nodes) != 0)
        return -1;
    ag_lit_node *n = &ls->nodes[ls->nnodes];
    n->first_edge = UINT32_MAX;
    n->fail = 0;
    n->out_first = UINT32_MAX;
    *id = (uint32_t)ls->nnodes++;
    return 0;
}

static uint32_t child(const ag_litset *ls, uint32_t state, unsigned char b)
{
    for (uint32_t e = ls->nodes[state].first_edge; e != UINT32_MAX; e = ls->edges[e].next)
        if (ls->edges[e].byte == b)
            return ls->edges[e].to;
    return UINT32_MAX;
}

ag_litset *ag_litset_new(void)
{
    ag_litset *ls = calloc(1, sizeof *ls);
    if (!ls)
        return NULL;
    uint32_t root;
    if (new_node(ls, &root) != 0) {
        free(ls);
        return NULL;
    }
    return ls;
}

int ag_litset_add(ag_litset *ls, const char *lit, size_t len, uint32_t id)
{
    if (!ls || ls->compiled || len == 0)
        return -1;
    uint32_t s = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char b = (unsigned char)lit[i];
        uint32_t t = child(ls, s, b);
        if (t == UINT32_MAX) {
            if (new_node(ls, &t) != 0)
                return -1;
            if (grow((void **)&ls->edges, &ls->cap_edges, ls->nedges + 1, sizeof *ls->edges) != 0)
                return -1;
            ag_lit_edge *e = &ls->edges[ls->nedges];
            e->byte = b;
            e->to = t;
            e->next = ls->nodes[s].first_edge;
            ls->nodes[s].first_edge = (uint32_t)ls->nedges++;
        }
        s = t;
    }
    if (grow((void **)&ls->outs, &ls->cap_outs, ls->nouts + 1, sizeof *ls->outs) != 0)
        return -1;
    ls->outs[ls->nouts].id = id;
    ls->outs[ls->nouts].next = ls->nodes[s].out_first;
    ls->nodes[s].out_first = (uint32_t)ls->nouts++;
    ls->nlits++;
    if (len > ls->maxlen)
        ls->maxlen = len;
    return 0;
}

size_t ag_litset_count(const ag_litset *ls)
{
    return ls ? ls->nlits : 0;
}

int ag_litset_compile(ag_litset *ls)
{
    if (!ls || ls->compiled)
        return -1;
    /* byte classes */
    memset(ls->cls, 0, sizeof ls->cls);
    ls->ncls = 1;
    for (size_t e = 0; e < ls->nedges; e++) {
        unsigned char b = ls->edges[e].byte;
        if (ls->cls[b] == 0)
            ls->cls[b] = (uint16_t)ls->ncls++;
    }
    size_t n = ls->nnodes;
    uint32_t *queue = malloc(n * sizeof *queue);
    ls->delta = calloc(n * ls->ncls, sizeof *ls->delta);
    ls->out_start = calloc(n + 1, sizeof *ls->out_start);
    if (!queue || !ls->delta || !ls->out_start) {
        free(queue);
        return -1;
    }
    /* BFS: failure links and the dense transition table. The root's missing edges loop to 0. */
    size_t head = 0, tail = 0;
    for (uint32_t e = ls->nodes[0].first_edge; e != UINT32_MAX; e = ls->edges[e].next) {
        uint32_t t = ls->edges[e].to;
        ls->nodes[t].fail = 0;
        ls->delta[ls->cls[ls->edges[e].byte]] = t;
        queue[tail++] = t;
    }
    while (head < tail) {
        uint32_t s = queue[head++];
        uint32_t f = ls->nodes[s].fail;
        /* start from the failure state's row, then override with own edges */
        memcpy(&ls->delta[(size_t)s * ls->ncls], &ls->delta[(size_t)f * ls->ncls],
               ls->ncls * sizeof *ls->delta);
        for (uint32_t e = ls->nodes[s].first_edge; e != UINT32_MAX; e = ls->edges[e].next) {
            uint32_t t = ls->edges[e].to;
            uint32_t c = ls->cls[ls->edges[e].byte];
            ls->nodes[t].fail = ls->delta[(size_t)f * ls->ncls + c];
            ls->delta[(size_t)s * ls->ncls + c] = t;
            queue[tail++] = t;
        }
    }
    /* Flatten outputs: own outputs plus those of the failure chain. BFS order guarantees a state's
     * failure target is complete before the state itself. */
    size_t total = 0;
    uint32_t *cnt = calloc(n, sizeof *cnt);
    if (!cnt) {
        free(queue);
        return -1;
    }
    uint32_t *order = queue; /* BFS order, root excluded */
    size_t norder = tail;
    for (size_t k = 0; k < norder; k++) {
        uint32_t s = order[k];
        uint32_t c = 0;
        for (uint32_t o = ls->nodes[s].out_first; o != UINT32_MAX; o = ls->outs[o].next)
            c++;
        c += cnt[ls->nodes[s].fail];
        cnt[s] = c;
        total += c;
    }
    ls->out_ids = malloc((total ? total : 1) * sizeof *ls->out_ids);
    if (!ls->out_ids) {
        free(cnt);
        free(queue);
        return -1;
    }
    /* out_start indexed by state: prefix sums in state order */
    uint32_t acc = 0;
    for (size_t s = 0; s < n; s++) {
        ls->out_start[s] = acc;
        acc += cnt[s];
    }
    ls->out_start[n] = acc;
    for (size_t k = 0; k < norder; k++) {
        uint32_t s = order[k];
        uint32_t w = ls->out_start[s];
        for (uint32_t o = ls->nodes[s].out_first; o != UINT32_MAX; o = ls->outs[o].next)
            ls->out_ids[w++] = ls->outs[o].id;
        uint32_t f = ls->nodes[s].fail;
        for (uint32_t j = ls->out_start[f]; j < ls->out_start[f + 1]; j++)
            ls->out_ids[w++] = ls->out_ids[j];
    }
    free(cnt);
    free(queue);
    /* Scan form: each entry holds the target state's row offset (state * ncls) and, in the top
     * bit, whether that state reports anything, so the scan does one load per byte. */
    if ((uint64_t)n * ls->ncls >= AG_LIT_OUT_FLAG)
        return -1;
    for (size_t x = 0; x < n * ls->ncls; x++) {
        uint32_t t = ls->delta[x];
        ls->delta[x] = t * ls->ncls | (ls->out_start[t] != ls->out_start[t + 1] ? AG_LIT_OUT_FLAG : 0);
    }
    /* the sparse build structures are no longer needed */
    free(ls->edges);
    ls->edges = NULL;
    ls->nedges = ls->cap_edges = 0;
    free(ls->outs);
    ls->outs = NULL;
    ls->nouts = ls->cap_outs = 0;
    ls->compiled = true;
    return 0;
}

/* Reports the hits of one range in order; the automaton starts from the root at from and hits
 * are reported only when they end after report_after. Returns nonzero when cb asked to stop. */
static int scan_range(const ag_litset *ls, const unsigned char *t, size_t from, size_t to,
                      size_t report_after, ag_litset_cb cb, void *arg)
{
    const uint32_t *delta = ls->delta;
    const uint16_t *cls = ls->cls;
    uint32_t s = 0;
    for (size_t i = from; i < to; i++) {
        s = delta[(s & ~AG_LIT_OUT_FLAG) + cls[t[i]]];
        if ((s & AG_LIT_OUT_FLAG) && i + 1 > report_after) {
            uint32_t st = (s & ~AG_LIT_OUT_FLAG) / ls->ncls;
            for (uint32_t j = ls->out_start[st]; j < ls->out_start[st + 1]; j++)
                if (cb(arg, ls->out_ids[j], i + 1))
                    return 1;
        }
    }
    return 0;
}

#define LANES 4
#define LANE_HITS 64

typedef struct lane_hits {
    size_t report_after, from, end;
    uint32_t n;
    bool overflow;
    uint32_t state[LANE_HITS];
    size_t at[LANE_HITS];
} lane_hits;

__attribute__((noinline)) static void lane_record(lane_hits *h, uint32_t s, size_t at)
{
    if (at <= h->report_after)
        return; /* warm-up part: the previous lane reports it */
    if (h->n == LANE_HITS) {
        h->overflow = true;
        return;
    }
    h->state[h->n] = s & ~AG_LIT_OUT_FLAG;
    h->at[h->n++] = at;
}

void ag_litset_scan(const ag_litset *ls, const char *text, size_t len, ag_litset_cb cb, void *arg)
{
    if (!ls || !ls->compiled || ls->nlits == 0)
        return;
    const unsigned char *t = (const unsigned char *)text;
    size_t warm = ls->maxlen - 1;
    if (len < 1024 || len / LANES <= 4 * warm) {
        scan_range(ls, t, 0, len, 0, cb, arg);
        return;
    }
    /* The automaton's next state depends on the previous one, so a single scan runs at the
     * latency of one table load per byte. Four lanes over four quarters of the text (each lane
     * but the first starts maxlen-1 bytes early, from the root, so no match across a boundary is
     * lost) let those loads overlap. Hits are buffered per lane and reported lane by lane, i.e. in
     * the order of a single scan; a lane whose buffer fills is rescanned directly. */
    const uint32_t *delta = ls->delta;
    const uint16_t *cls = ls->cls;
    const uint32_t M = ~AG_LIT_OUT_FLAG;
    size_t q = len / LANES;
    lane_hits h[LANES];
    for (int k = 0; k < LANES; k++) {
        h[k].report_after = (size_t)k * q;
        h[k].from = k ? (size_t)k * q - warm : 0;
        h[k].end = k == LANES - 1 ? len : (size_t)(k + 1) * q;
        h[k].n = 0;
        h[k].overflow = false;
    }
    /* lane 0 starts at 0 with no warm-up: run its first `warm` bytes alone so that all four lanes
     * then advance in lock-step for q bytes */
    uint32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t p0 = 0;
    for (; p0 < warm; p0++) {
        s0 = delta[(s0 & M) + cls[t[p0]]];
        if (s0 & AG_LIT_OUT_FLAG)
            lane_record(&h[0], s0, p0 + 1);
    }
    const unsigned char *t1 = t + h[1].from, *t2 = t + h[2].from, *t3 = t + h[3].from;
    /* lanes 1..3 have q + warm bytes (lane 3 maybe more), lane 0 has q - warm left */
    size_t steps = h[0].end - p0;
    size_t base0 = p0;
    for (size_t j = 0; j < steps; j++) {
        s0 = delta[(s0 & M) + cls[t[base0 + j]]];
        s1 = delta[(s1 & M) + cls[t1[j]]];
        s2 = delta[(s2 & M) + cls[t2[j]]];
        s3 = delta[(s3 & M) + cls[t3[j]]];
        if (__builtin_expect(((s0 | s1 | s2 | s3) & AG_LIT_OUT_FLAG) != 0, 0)) {
            if (s0 & AG_LIT_OUT_FLAG)
                lane_record(&h[0], s0, base0 + j + 1);
            if (s1 & AG_LIT_OUT_FLAG)
                lane_record(&h[1], s1, h[1].from + j + 1);
            if (s2 & AG_LIT_OUT_FLAG)
                lane_record(&h[2], s2, h[2].from + j + 1);
            if (s3 & AG_LIT_OUT_FLAG)
                lane_record(&h[3], s3, h[3].from + j + 1);
        }
    }
    /* leftovers of each lane */
    uint32_t st[LANES] = {s0, s1, s2, s3};
    size_t pos[LANES] = {base0 + steps, h[1].from + steps, h[2].from + steps, h[3].from + steps};
    for (int k = 0; k < LANES; k++)
        for (size_t i = pos[k]; i < h[k].end; i++) {
            st[k] = delta[(st[k] & M) + cls[t[i]]];
            if (st[k] & AG_LIT_OUT_FLAG)
                lane_record(&h[k], st[k], i + 1);
        }
    for (int k = 0; k < LANES; k++) {
        if (h[k].overflow) {
            if (scan_range(ls, t, h[k].from, h[k].end, h[k].report_after, cb, arg))
                return;
            continue;
        }
        for (uint32_t x = 0; x < h[k].n; x++) {
            uint32_t state = h[k].state[x] / ls->ncls;
            for (uint32_t j = ls->out_start[state]; j < ls->out_start[state + 1]; j++)
                if (cb(arg, ls->out_ids[j], h[k].at[x]))
                    return;
        }
    }
}

void ag_litset_free(ag_litset *ls)
{
    if (!ls)
        return;
    free(ls->nodes);
    free(ls->edges);
    free(ls->outs);
    free(ls->delta);
    free(ls->out_start);
    free(ls->out_ids);
    free(ls);
}
