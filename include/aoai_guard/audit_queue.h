/* A bounded lock-free multi-producer multi-consumer queue of pointers (a ring of cells with sequence
 * numbers, after D. Vyukov's bounded MPMC design). Workers push audit records without locks or
 * syscalls; the audit thread pops them. A producer may also pop (to drop the oldest when full).
 *
 * Ownership: the queue stores pointers only; whoever pops an item owns it. */
#ifndef AOAI_GUARD_AUDIT_QUEUE_H
#define AOAI_GUARD_AUDIT_QUEUE_H

#include <stdbool.h>
#include <stddef.h>

typedef struct ag_audit_queue ag_audit_queue;

/* A queue holding at least capacity items (rounded up to a power of two, minimum 2); NULL on failure. */
ag_audit_queue *ag_audit_queue_new(size_t capacity);

/* Frees the queue; items still inside are passed to drop (when not NULL). */
void ag_audit_queue_free(ag_audit_queue *q, void (*drop)(void *item));

/* Adds item (not NULL); false when the queue is full. Never blocks. Any thread. */
bool ag_audit_queue_push(ag_audit_queue *q, void *item);

/* Removes the oldest item; NULL when empty. Never blocks. Any thread. */
void *ag_audit_queue_pop(ag_audit_queue *q);

/* Items currently queued (a snapshot; exact when no push/pop runs concurrently). */
size_t ag_audit_queue_depth(const ag_audit_queue *q);

/* The real capacity (after rounding). */
size_t ag_audit_queue_capacity(const ag_audit_queue *q);

#endif
