/* Sharded in-memory counter table (see limit_store.h). */
#include "aoai_guard/limit_store.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct mem_entry {
    unsigned char key[AG_LIMIT_KEY_LEN];
    uint32_t next;     /* 1-based index of the next entry in the bucket chain or free list; 0 = end */
    uint8_t kind;
    uint8_t pinned;    /* referenced by the reservation holding the lock: not reclaimable */
    long long a, b, c; /* GCRA: level, last_ms, limit. Quota: used, window id, unused */
    long long idle_at; /* from this ms on the entry equals a fresh counter */
} mem_entry;

typedef struct mem_shard {
    pthread_mutex_t mu;
    uint32_t *buckets; /* 1-based entry index of each chain head */
    uint32_t nbuckets; /* power of two */
    mem_entry *entries;
    uint32_t cap;
    uint32_t free_head;
    uint32_t live;
    unsigned long long reclaimed;
    unsigned long long full;
    char pad[64];      /* keep neighbouring shard locks on separate cache lines */
} mem_shard;

struct ag_memstore {
    mem_shard *shards;
    unsigned nshards; /* power of two */
    size_t max_keys;
    size_t bytes;
};

/* Per-op scratch of one reservation. */
typedef struct op_slot {
    unsigned shard;
    mem_entry *e;
    long long na, nb, nc, idle_at;
    long long remaining_before; /* units admissible without this request's charge */
} op_slot;

#define STACK_OPS 32

static uint64_t key_hash(const unsigned char *k, unsigned off)
{
    uint64_t h = 0;
    for (unsigned i = 0; i < 8; i++)
        h = (h << 8) | k[off + i];
    return h;
}

static unsigned shard_of(const ag_memstore *m, const unsigned char *key)
{
    return (unsigned)(key_hash(key, 0) & (m->nshards - 1));
}

static uint32_t bucket_of(const mem_shard *s, const unsigned char *key)
{
    return (uint32_t)(key_hash(key, 8) & (s->nbuckets - 1));
}

ag_memstore *ag_memstore_new(size_t max_keys, unsigned shards)
{
    unsigned ns = 1;
    while (ns < shards && ns < (1u << 16))
        ns <<= 1;
    if (max_keys < ns || max_keys > (size_t)UINT32_MAX)
        return NULL;
    ag_memstore *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->nshards = ns;
    m->max_keys = max_keys;
    m->shards = calloc(ns, sizeof *m->shards);
    if (!m->shards) {
        free(m);
        return NULL;
    }
    m->bytes = sizeof *m + ns * sizeof *m->shards;
    size_t base = max_keys / ns, extra = max_keys % ns;
    for (unsigned i = 0; i < ns; i++) {
        mem_shard *s = &m->shards[i];
        s->cap = (uint32_t)(base + (i < extra ? 1 : 0));
        uint32_t nb = 1;
        while (nb < s->cap)
            nb <<= 1;
        s->nbuckets = nb;
        s->buckets = calloc(nb, sizeof *s->buckets);
        s->entries = calloc(s->cap ? s->cap : 1, sizeof *s->entries);
        if (!s->buckets || !s->entries || pthread_mutex_init(&s->mu, NULL) != 0) {
            free(s->buckets);
            free(s->entries);
            for (unsigned j = 0; j < i; j++) {
                pthread_mutex_destroy(&m->shards[j].mu);
                free(m->shards[j].buckets);
                free(m->shards[j].entries);
            }
            free(m->shards);
            free(m);
            return NULL;
        }
        for (uint32_t k = 0; k < s->cap; k++)
            s->entries[k].next = (k + 1 < s->cap) ? k + 2 : 0;
        s->free_head = s->cap ? 1 : 0;
        m->bytes += nb * sizeof *s->buckets + s->cap * sizeof *s->entries;
    }
    return m;
}

void ag_memstore_free(ag_memstore *m)
{
    if (!m)
        return;
    for (unsigned i = 0; i < m->nshards; i++) {
        pthread_mutex_destroy(&m->shards[i].mu);
        free(m->shards[i].buckets);
        free(m->shards[i].entries);
    }
    free(m->shards);
    free(m);
}

static mem_entry *shard_find(mem_shard *s, const unsigned char *key, uint8_t kind)
{
    for (uint32_t i = s->buckets[bucket_of(s, key)]; i; i = s->entries[i - 1].next) {
        mem_entry *e = &s->entries[i - 1];
        if (e->kind == kind && memcmp(e->key, key, AG_LIMIT_KEY_LEN) == 0)
            return e;
    }
    return NULL;
}

/* Unlinks and frees idle, unpinned entries of one shard; returns how many. Lock held. */
static size_t shard_reclaim(mem_shard *s, long long now_ms)
{
    size_t freed = 0;
    for (uint32_t b = 0; b < s->nbuckets; b++) {
        uint32_t *link = &s->buckets[b];
        while (*link) {
            uint32_t idx = *link;
            mem_entry *e = &s->entries[idx - 1];
            if (!e->pinned && e->idle_at <= now_ms) {
                *link = e->next;
                e->next = s->free_head;
                s->free_head = idx;
                s->live--;
                freed++;
            } else {
                link = &e->next;
            }
        }
    }
    s->reclaimed += freed;
    return freed;
}

/* Takes a free entry for key, reclaiming idle ones if needed, and links it. Lock held. */
static mem_entry *shard_insert(mem_shard *s, const unsigned char *key, uint8_t kind, long long now_ms)
{
    if (!s->free_head && shard_reclaim(s, now_ms) == 0)
        return NULL;
    uint32_t idx = s->free_head;
    mem_entry *e = &s->entries[idx - 1];
    s->free_head = e->next;
    memset(e, 0, sizeof *e);
    memcpy(e->key, key, AG_LIMIT_KEY_LEN);
    e->kind = kind;
    uint32_t b = bucket_of(s, key);
    e->next = s->buckets[b];
    s->buckets[b] = idx;
    s->live++;
    return e;
}

static void shard_remove(mem_shard *s, mem_entry *victim)
{
    uint32_t idx = (uint32_t)(victim - s->entries) + 1;
    uint32_t *link = &s->buckets[bucket_of(s, victim->key)];
    while (*link && *link != idx)
        link = &s->entries[*link - 1].next;
    if (*link == idx) {
        *link = victim->next;
        victim->next = s->free_head;
        s->free_head = idx;
        s->live--;
    }
}

/* Locks the distinct shards of slots in ascending order. */
static void lock_all(ag_memstore *m, const op_slot *slots, size_t n)
{
    unsigned prev = 0;
    bool first = true;
    for (;;) {
        unsigned next = 0;
        bool found = false;
        for (size_t i = 0; i < n; i++) {
            unsigned s = slots[i].shard;
            if ((first || s > prev) && (!found || s < next)) {
                next = s;
                found = true;
            }
        }
        if (!found)
            return;
        pthread_mutex_lock(&m->shards[next].mu);
        prev = next;
        first = false;
    }
}

static void unlock_all(ag_memstore *m, const op_slot *slots, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        bool seen = false;
        for (size_t j = 0; j < i; j++)
            if (slots[j].shard == slots[i].shard)
                seen = true;
        if (!seen)
            pthread_mutex_unlock(&m->shards[slots[i].shard].mu);
    }
}

/* Computes one op's decision from its entry (or a fresh counter); fills outputs and slot->n*. */
static bool decide(ag_limit_op *op, op_slot *slot, long long now_ms)
{
    const mem_entry *e = slot->e;
    op->refused = false;
    op->retry_after_ms = 0;
    op->reset_ms = 0;
    if (op->kind == AG_LIMIT_KIND_QUOTA) {
        long long id = ag_limit_window_id(op->period, now_ms);
        long long end = ag_limit_window_end_ms(op->period, id);
        long long used = (e && e->b == id) ? e->a : 0;
        long long cost = op->cost < 0 ? 0 : op->cost;
        op->window = id;
        op->reset_ms = end - now_ms;
        slot->remaining_before = used >= op->limit ? 0 : op->limit - used;
        if (cost > op->limit - used) {
            op->refused = true;
            op->retry_after_ms = end - now_ms;
            op->remaining = used >= op->limit ? 0 : op->limit - used;
            return false;
        }
        slot->na = used + cost;
        slot->nb = id;
        slot->nc = op->limit;
        slot->idle_at = end;
        op->remaining = op->limit - slot->na;
        return true;
    }
    ag_gcra_state st = { 0, now_ms, op->limit };
    if (e) {
        st.level = e->a;
        st.last_ms = e->b;
        st.limit = e->c;
    }
    ag_gcra_settle(&st, op->limit, now_ms);
    long long cap = (long long)AG_LIMIT_RATE_PERIOD_MS * st.limit;
    slot->remaining_before = st.level >= cap ? 0 : (cap - st.level) / AG_LIMIT_RATE_PERIOD_MS;
    long long level = 0;
    long long cost = op->kind == AG_LIMIT_KIND_RPM ? 1 : op->cost;
    if (!ag_gcra_check(&st, op->limit, cost, &level, &op->retry_after_ms, &op->remaining)) {
        op->refused = true;
        return false;
    }
    st.level = level;
    slot->na = st.level;
    slot->nb = st.last_ms;
    slot->nc = st.limit;
    slot->idle_at = ag_gcra_idle_at(&st);
    return true;
}

ag_memstore_status ag_memstore_reserve(ag_memstore *m, ag_limit_op *ops, size_t n, long long now_ms)
{
    if (n == 0)
        return AG_MEMSTORE_ADMIT;
    op_slot stack_slots[STACK_OPS];
    op_slot *slots = n <= STACK_OPS ? stack_slots : calloc(n, sizeof *slots);
    if (!slots)
        return AG_MEMSTORE_FULL;
    for (size_t i = 0; i < n; i++) {
        slots[i].shard = shard_of(m, ops[i].key);
        slots[i].e = NULL;
    }
    lock_all(m, slots, n);

    bool all = true;
    for (size_t i = 0; i < n; i++) {
        mem_shard *s = &m->shards[slots[i].shard];
        slots[i].e = shard_find(s, ops[i].key, (uint8_t)ops[i].kind);
        if (slots[i].e)
            slots[i].e->pinned = 1;
        if (!decide(&ops[i], &slots[i], now_ms))
            all = false;
    }
    ag_memstore_status status = all ? AG_MEMSTORE_ADMIT : AG_MEMSTORE_REFUSE;
    if (!all)
        for (size_t i = 0; i < n; i++)
            ops[i].remaining = slots[i].remaining_before; /* nothing was charged */
    if (all) {
        /* Room for the new counters first, so that a full shard charges nothing. */
        size_t made = 0;
        for (size_t i = 0; i < n; i++) {
            if (slots[i].e)
                continue;
            mem_shard *s = &m->shards[slots[i].shard];
            slots[i].e = shard_insert(s, ops[i].key, (uint8_t)ops[i].kind, now_ms);
            if (!slots[i].e) {
                s->full++;
                status = AG_MEMSTORE_FULL;
                break;
            }
            slots[i].e->pinned = 2; /* 2: created by this call */
            made++;
        }
        if (status == AG_MEMSTORE_FULL) {
            for (size_t i = 0; i < n; i++)
                ops[i].remaining = slots[i].remaining_before;
            for (size_t i = 0; i < n && made; i++)
                if (slots[i].e && slots[i].e->pinned == 2) {
                    shard_remove(&m->shards[slots[i].shard], slots[i].e);
                    slots[i].e = NULL;
                    made--;
                }
        } else {
            for (size_t i = 0; i < n; i++) {
                mem_entry *e = slots[i].e;
                e->a = slots[i].na;
                e->b = slots[i].nb;
                e->c = slots[i].nc;
                e->idle_at = slots[i].idle_at;
            }
        }
    }
    for (size_t i = 0; i < n; i++)
        if (slots[i].e)
            slots[i].e->pinned = 0;
    unlock_all(m, slots, n);
    if (slots != stack_slots)
        free(slots);
    return status;
}

void ag_memstore_adjust(ag_memstore *m, const ag_limit_op *ops, size_t n, long long now_ms)
{
    for (size_t i = 0; i < n; i++) {
        const ag_limit_op *op = &ops[i];
        if (op->delta == 0)
            continue;
        mem_shard *s = &m->shards[shard_of(m, op->key)];
        pthread_mutex_lock(&s->mu);
        mem_entry *e = shard_find(s, op->key, (uint8_t)op->kind);
        if (op->kind == AG_LIMIT_KIND_QUOTA) {
            long long id = ag_limit_window_id(op->period, now_ms);
            if (id == op->window) {
                if (!e && op->delta > 0)
                    e = shard_insert(s, op->key, (uint8_t)op->kind, now_ms);
                if (e) {
                    if (e->b != id) {
                        e->a = 0;
                        e->b = id;
                    }
                    long long used = e->a + op->delta;
                    e->a = used < 0 ? 0 : (used > AG_LIMIT_MAX_COST ? AG_LIMIT_MAX_COST : used);
                    e->idle_at = ag_limit_window_end_ms(op->period, id);
                }
            }
        } else {
            if (!e && op->delta > 0) {
                e = shard_insert(s, op->key, (uint8_t)op->kind, now_ms);
                if (e) {
                    e->b = now_ms;
                    e->c = op->limit;
                }
            }
            if (e) {
                ag_gcra_state st = { e->a, e->b, e->c };
                ag_gcra_settle(&st, op->limit, now_ms);
                ag_gcra_adjust(&st, op->delta);
                e->a = st.level;
                e->b = st.last_ms;
                e->c = st.limit;
                e->idle_at = ag_gcra_idle_at(&st);
            }
        }
        pthread_mutex_unlock(&s->mu);
    }
}

size_t ag_memstore_sweep(ag_memstore *m, long long now_ms)
{
    size_t total = 0;
    for (unsigned i = 0; i < m->nshards; i++) {
        mem_shard *s = &m->shards[i];
        pthread_mutex_lock(&s->mu);
        total += shard_reclaim(s, now_ms);
        pthread_mutex_unlock(&s->mu);
    }
    return total;
}

void ag_memstore_get_stats(ag_memstore *m, ag_memstore_stats *out)
{
    memset(out, 0, sizeof *out);
    out->max_keys = m->max_keys;
    out->bytes = m->bytes;
    for (unsigned i = 0; i < m->nshards; i++) {
        mem_shard *s = &m->shards[i];
        pthread_mutex_lock(&s->mu);
        out->keys += s->live;
        out->reclaimed += s->reclaimed;
        out->full_refusals += s->full;
        pthread_mutex_unlock(&s->mu);
    }
}
