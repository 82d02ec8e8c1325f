/* Bounded lock-free MPMC pointer queue (see audit_queue.h). */
#include "aoai_guard/audit_queue.h"

#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct cell {
    atomic_size_t seq;
    void *item;
} cell;

struct ag_audit_queue {
    cell *cells;
    size_t mask;
    alignas(64) atomic_size_t head; /* next position to pop */
    alignas(64) atomic_size_t tail; /* next position to push */
};

ag_audit_queue *ag_audit_queue_new(size_t capacity)
{
    size_t cap = 2;
    while (cap < capacity) {
        if (cap > SIZE_MAX / 4)
            return NULL;
        cap *= 2;
    }
    ag_audit_queue *q = aligned_alloc(64, (sizeof *q + 63) / 64 * 64);
    if (!q)
        return NULL;
    q->cells = calloc(cap, sizeof *q->cells);
    if (!q->cells) {
        free(q);
        return NULL;
    }
    for (size_t i = 0; i < cap; i++) {
        atomic_init(&q->cells[i].seq, i);
        q->cells[i].item = NULL;
    }
    q->mask = cap - 1;
    atomic_init(&q->head, 0);
    atomic_init(&q->tail, 0);
    return q;
}

void ag_audit_queue_free(ag_audit_queue *q, void (*drop)(void *item))
{
    if (!q)
        return;
    void *item;
    while ((item = ag_audit_queue_pop(q)) != NULL)
        if (drop)
            drop(item);
    free(q->cells);
    free(q);
}

bool ag_audit_queue_push(ag_audit_queue *q, void *item)
{
    size_t pos = atomic_load_explicit(&q->tail, memory_order_relaxed);
    cell *c;
    for (;;) {
        c = &q->cells[pos & q->mask];
        size_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
        intptr_t diff = (intptr_t)seq - (intptr_t)pos;
        if (diff == 0) {
            if (atomic_compare_exchange_weak_explicit(&q->tail, &pos, pos + 1, memory_order_relaxed,
                                                      memory_order_relaxed))
                break;
        } else if (diff < 0) {
            return false; /* the cell still holds an item from one lap ago: full */
        } else {
            pos = atomic_load_explicit(&q->tail, memory_order_relaxed);
        }
    }
    c->item = item;
    atomic_store_explicit(&c->seq, pos + 1, memory_order_release);
    return true;
}

void *ag_audit_queue_pop(ag_audit_queue *q)
{
    size_t pos = atomic_load_explicit(&q->head, memory_order_relaxed);
    cell *c;
    for (;;) {
        c = &q->cells[pos & q->mask];
        size_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
        intptr_t diff = (intptr_t)seq - (intptr_t)(pos + 1);
        if (diff == 0) {
            if (atomic_compare_exchange_weak_explicit(&q->head, &pos, pos + 1, memory_order_relaxed,
                                                      memory_order_relaxed))
                break;
        } else if (diff < 0) {
            return NULL; /* not yet written: empty */
        } else {
            pos = atomic_load_explicit(&q->head, memory_order_relaxed);
        }
    }
    void *item = c->item;
    atomic_store_explicit(&c->seq, pos + q->mask + 1, memory_order_release);
    return item;
}

size_t ag_audit_queue_depth(const ag_audit_queue *q)
{
    size_t head = atomic_load_explicit(&((ag_audit_queue *)q)->head, memory_order_acquire);
    size_t tail = atomic_load_explicit(&((ag_audit_queue *)q)->tail, memory_order_acquire);
    return tail > head ? tail - head : 0;
}

size_t ag_audit_queue_capacity(const ag_audit_queue *q)
{
    return q->mask + 1;
}
