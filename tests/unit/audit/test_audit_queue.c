/* The bounded MPMC queue: capacity, full/empty, and four producers racing one consumer (every item
 * arrives exactly once and each producer's items stay in order). */
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>

#include "aoai_guard/audit_queue.h"
#include "check.h"

#define PRODUCERS 4
#define PER_PRODUCER 50000

typedef struct prod {
    ag_audit_queue *q;
    int id;
    long long full_hits;
} prod;

static void *producer(void *arg)
{
    prod *p = arg;
    for (uintptr_t i = 1; i <= PER_PRODUCER; i++) {
        uintptr_t item = ((uintptr_t)p->id << 32) | i;
        while (!ag_audit_queue_push(p->q, (void *)item)) {
            p->full_hits++;
            sched_yield();
        }
    }
    return NULL;
}

int main(void)
{
    ag_audit_queue *q = ag_audit_queue_new(5);
    CHECK_INT(ag_audit_queue_capacity(q), 8);
    CHECK(ag_audit_queue_pop(q) == NULL);
    for (uintptr_t i = 1; i <= 8; i++)
        CHECK(ag_audit_queue_push(q, (void *)i));
    CHECK(!ag_audit_queue_push(q, (void *)9));
    CHECK_INT(ag_audit_queue_depth(q), 8);
    CHECK_INT((uintptr_t)ag_audit_queue_pop(q), 1);
    CHECK(ag_audit_queue_push(q, (void *)9));
    for (uintptr_t i = 2; i <= 9; i++)
        CHECK_INT((uintptr_t)ag_audit_queue_pop(q), i);
    CHECK(ag_audit_queue_pop(q) == NULL);
    CHECK_INT(ag_audit_queue_depth(q), 0);
    ag_audit_queue_free(q, NULL);

    q = ag_audit_queue_new(1024);
    pthread_t th[PRODUCERS];
    prod ps[PRODUCERS];
    for (int i = 0; i < PRODUCERS; i++) {
        ps[i] = (prod){q, i + 1, 0};
        pthread_create(&th[i], NULL, producer, &ps[i]);
    }
    uintptr_t last[PRODUCERS + 1] = {0};
    long long got = 0, order_errors = 0;
    while (got < (long long)PRODUCERS * PER_PRODUCER) {
        void *v = ag_audit_queue_pop(q);
        if (!v) {
            sched_yield();
            continue;
        }
        uintptr_t item = (uintptr_t)v;
        int id = (int)(item >> 32);
        uintptr_t seq = item & 0xFFFFFFFFu;
        if (id < 1 || id > PRODUCERS || seq != last[id] + 1)
            order_errors++;
        else
            last[id] = seq;
        got++;
    }
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(th[i], NULL);
    CHECK_INT(order_errors, 0);
    for (int i = 1; i <= PRODUCERS; i++)
        CHECK_INT(last[i], PER_PRODUCER);
    CHECK(ag_audit_queue_pop(q) == NULL);
    ag_audit_queue_free(q, NULL);
    return CHECK_DONE();
}
