/* In-memory rate-limit counters shared by all worker threads (the default store, and the local
 * fallback of the Redis store when it fails open).
 *
 * A fixed number of shards, each with its own mutex, hash buckets and a preallocated array of
 * entries: the table never allocates after creation, so memory is bounded by max_keys and known up
 * front. An entry is idle once its counter is equivalent to a fresh one (a drained GCRA bucket, a
 * quota window that has ended); idle entries are reclaimed when a shard needs room and by
 * ag_memstore_sweep(). A request's ops are checked and charged under the locks of all the shards
 * they touch (taken in index order): either every op is charged or none is. */
#ifndef AOAI_GUARD_LIMIT_STORE_H
#define AOAI_GUARD_LIMIT_STORE_H

#include <stddef.h>
#include "aoai_guard/limit_counter.h"

typedef struct ag_memstore ag_memstore;

typedef enum ag_memstore_status {
    AG_MEMSTORE_ADMIT = 0, /* every op admitted and charged */
    AG_MEMSTORE_REFUSE,    /* at least one op refused (see op->refused); nothing charged */
    AG_MEMSTORE_FULL,      /* a new counter was needed and its shard is full of live ones; nothing charged */
} ag_memstore_status;

typedef struct ag_memstore_stats {
    size_t keys;            /* live entries right now */
    size_t max_keys;        /* capacity */
    size_t bytes;           /* memory held by the table (allocated at creation) */
    unsigned long long reclaimed;    /* idle entries reused or swept */
    unsigned long long full_refusals; /* reservations refused with AG_MEMSTORE_FULL */
} ag_memstore_stats;

/* Creates a table for at most max_keys counters spread over shards (rounded up to a power of two,
 * at least 1). Returns NULL when max_keys < shards or on allocation failure. Free with ag_memstore_free. */
ag_memstore *ag_memstore_new(size_t max_keys, unsigned shards);

/* Frees the table; no call may be in progress. NULL is ignored. */
void ag_memstore_free(ag_memstore *m);

/* Checks every op at now_ms and, only if all admit, charges all of them atomically. Fills each op's
 * outputs (refused, retry_after_ms, remaining, window, reset_ms). Thread-safe. */
ag_memstore_status ag_memstore_reserve(ag_memstore *m, ag_limit_op *ops, size_t n, long long now_ms);

/* Adds ops[i].delta units to each counter (refunds when negative); quota deltas only apply while
 * the window ops[i].window is current. Counters that are gone are left alone. Thread-safe. */
void ag_memstore_adjust(ag_memstore *m, const ag_limit_op *ops, size_t n, long long now_ms);

/* Frees every idle entry; returns how many. Thread-safe; meant for a periodic timer. */
size_t ag_memstore_sweep(ag_memstore *m, long long now_ms);

/* Copies the counters above. Thread-safe (takes each shard lock briefly). */
void ag_memstore_get_stats(ag_memstore *m, ag_memstore_stats *out);

#endif
