/* The sharded memory table: multi-limit atomicity, exactness under concurrency, reconciliation both
 * ways, idle-key expiry and the max_keys bound. */
#include "check.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "aoai_guard/limit_store.h"

static ag_limit_op op_of(unsigned id, ag_limit_kind kind, long long limit, long long cost)
{
    ag_limit_op op;
    memset(&op, 0, sizeof op);
    for (size_t i = 0; i < sizeof op.key; i++)
        op.key[i] = (unsigned char)((id * 2654435761u) >> (i % 4 * 8)) ^ (unsigned char)(i * 31);
    snprintf(op.policy, sizeof op.policy, "p%u", id);
    op.kind = kind;
    op.limit = limit;
    op.cost = cost;
    return op;
}

static void test_atomic_multi(void)
{
    ag_memstore *m = ag_memstore_new(1024, 8);
    CHECK(m != NULL);
    if (!m)
        return;
    /* per-user RPM 10, per-app TPM 1000, per-tenant quota 500/day, with the quota nearly used */
    ag_limit_op ops[3] = {
        op_of(1, AG_LIMIT_KIND_RPM, 10, 1),
        op_of(2, AG_LIMIT_KIND_TPM, 1000, 300),
        op_of(3, AG_LIMIT_KIND_QUOTA, 500, 300),
    };
    ops[2].period = AG_LIMIT_PERIOD_DAY;
    long long t = 1700000000000LL;
    CHECK_INT(ag_memstore_reserve(m, ops, 3, t), AG_MEMSTORE_ADMIT);
    CHECK_INT(ops[0].remaining, 9);
    CHECK_INT(ops[1].remaining, 700);
    CHECK_INT(ops[2].remaining, 200);
    /* the third refuses (300 > 200 left): the first two must not be charged */
    CHECK_INT(ag_memstore_reserve(m, ops, 3, t), AG_MEMSTORE_REFUSE);
    CHECK(!ops[0].refused);
    CHECK(!ops[1].refused);
    CHECK(ops[2].refused);
    CHECK_INT(ops[0].remaining, 9); /* as before: nothing was taken */
    CHECK_INT(ops[1].remaining, 700);
    CHECK_INT(ops[2].remaining, 200);
    /* proof by the counters: the first two alone still have their full previous room */
    CHECK_INT(ag_memstore_reserve(m, ops, 2, t), AG_MEMSTORE_ADMIT);
    CHECK_INT(ops[0].remaining, 8);
    CHECK_INT(ops[1].remaining, 400);
    /* the first refusing: nothing of the others is charged either */
    ag_limit_op big[2] = { op_of(2, AG_LIMIT_KIND_TPM, 1000, 1000), op_of(1, AG_LIMIT_KIND_RPM, 10, 1) };
    CHECK_INT(ag_memstore_reserve(m, big, 2, t), AG_MEMSTORE_REFUSE);
    CHECK(big[0].refused);
    CHECK_INT(big[0].retry_after_ms, 36000); /* 600 tokens over: 600 x 60 ms */
    CHECK_INT(ag_memstore_reserve(m, &ops[0], 1, t), AG_MEMSTORE_ADMIT);
    CHECK_INT(ops[0].remaining, 7);
    ag_memstore_free(m);
}

static void test_adjust(void)
{
    ag_memstore *m = ag_memstore_new(64, 2);
    CHECK(m != NULL);
    if (!m)
        return;
    long long t = 1700000000000LL;
    ag_limit_op tpm = op_of(5, AG_LIMIT_KIND_TPM, 1000, 800);
    ag_limit_op quota = op_of(6, AG_LIMIT_KIND_QUOTA, 10000, 800);
    quota.period = AG_LIMIT_PERIOD_MONTH;
    ag_limit_op both[2] = { tpm, quota };
    CHECK_INT(ag_memstore_reserve(m, both, 2, t), AG_MEMSTORE_ADMIT);
    /* actual usage 300: refund 500 on both */
    both[0].delta = -500;
    both[1].delta = -500;
    ag_memstore_adjust(m, both, 2, t);
    both[0].cost = 0;
    both[1].cost = 0;
    CHECK_INT(ag_memstore_reserve(m, both, 2, t), AG_MEMSTORE_ADMIT);
    CHECK_INT(both[0].remaining, 700);
    CHECK_INT(both[1].remaining, 9700);
    /* actual usage above the estimate: charge the difference (may exceed the limit) */
    both[0].delta = 1200;
    both[1].delta = 1200;
    ag_memstore_adjust(m, both, 2, t);
    both[0].cost = 1;
    CHECK_INT(ag_memstore_reserve(m, both, 2, t), AG_MEMSTORE_REFUSE);
    CHECK(both[0].refused);
    CHECK_INT(both[0].retry_after_ms, 30060); /* 1500 + 1 tokens in a 1000 bucket */
    CHECK_INT(both[1].remaining, 8500);
    ag_memstore_free(m);
}

typedef struct hammer {
    ag_memstore *m;
    long long now;
    atomic_int admitted;
    atomic_int start;
    ag_limit_kind kind;
    long long limit, cost;
} hammer;

static void *hammer_thread(void *arg)
{
    hammer *h = arg;
    while (!atomic_load(&h->start))
        ;
    for (int i = 0; i < 20000; i++) {
        ag_limit_op ops[2] = { op_of(42, h->kind, h->limit, h->cost), op_of(43, AG_LIMIT_KIND_RPM, 1000000, 1) };
        if (ag_memstore_reserve(h->m, ops, 2, h->now) == AG_MEMSTORE_ADMIT)
            atomic_fetch_add(&h->admitted, 1);
    }
    return NULL;
}

static int run_hammer(ag_limit_kind kind, long long limit, long long cost)
{
    enum { THREADS = 8 };
    hammer h;
    memset(&h, 0, sizeof h);
    h.m = ag_memstore_new(1024, 16);
    h.now = 1700000000000LL;
    h.kind = kind;
    h.limit = limit;
    h.cost = cost;
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++)
        pthread_create(&th[i], NULL, hammer_thread, &h);
    atomic_store(&h.start, 1);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    ag_memstore_free(h.m);
    return atomic_load(&h.admitted);
}

static void test_concurrency(void)
{
    /* 8 threads x 20000 attempts on one key at a frozen instant: exactly the limit is admitted */
    CHECK_INT(run_hammer(AG_LIMIT_KIND_RPM, 1000, 1), 1000);
    CHECK_INT(run_hammer(AG_LIMIT_KIND_TPM, 100000, 37), 100000 / 37);
    CHECK_INT(run_hammer(AG_LIMIT_KIND_QUOTA, 5000, 7), 5000 / 7);
}

static void test_expiry_and_bound(void)
{
    ag_memstore *m = ag_memstore_new(16, 1);
    CHECK(m != NULL);
    if (!m)
        return;
    ag_memstore_stats st;
    ag_memstore_get_stats(m, &st);
    CHECK_INT(st.max_keys, 16);
    CHECK_INT(st.keys, 0);
    CHECK(st.bytes >= 16 * 48);
    long long t = 1700000000000LL;
    /* 16 live keys: 60 per minute, one used each -> idle 1000 ms later */
    for (unsigned i = 0; i < 16; i++) {
        ag_limit_op op = op_of(100 + i, AG_LIMIT_KIND_RPM, 60, 1);
        CHECK_INT(ag_memstore_reserve(m, &op, 1, t), AG_MEMSTORE_ADMIT);
    }
    ag_memstore_get_stats(m, &st);
    CHECK_INT(st.keys, 16);
    /* a 17th key does not fit while the others are live, and nothing is charged */
    ag_limit_op extra[2] = { op_of(100, AG_LIMIT_KIND_RPM, 60, 1), op_of(200, AG_LIMIT_KIND_RPM, 60, 1) };
    CHECK_INT(ag_memstore_reserve(m, extra, 2, t + 999), AG_MEMSTORE_FULL);
    ag_memstore_get_stats(m, &st);
    CHECK_INT(st.full_refusals, 1);
    CHECK_INT(st.keys, 16);
    /* key 100 was not charged by the refused call: it holds one request, 59 fit */
    int fit = 0;
    for (int i = 0; i < 100; i++) {
        ag_limit_op op = op_of(100, AG_LIMIT_KIND_RPM, 60, 1);
        if (ag_memstore_reserve(m, &op, 1, t + 999) == AG_MEMSTORE_ADMIT)
            fit++;
    }
    CHECK_INT(fit, 59);
    /* once the other keys are idle (1000 ms after their only request) a new key reclaims one */
    ag_limit_op n = op_of(300, AG_LIMIT_KIND_RPM, 60, 1);
    CHECK_INT(ag_memstore_reserve(m, &n, 1, t + 1000), AG_MEMSTORE_ADMIT);
    ag_memstore_get_stats(m, &st);
    CHECK(st.reclaimed >= 1);
    CHECK(st.keys <= 16);
    /* a sweep after everything drained frees all of them */
    CHECK(ag_memstore_sweep(m, t + 120000) >= 2);
    ag_memstore_get_stats(m, &st);
    CHECK_INT(st.keys, 0);
    /* an expired key starts fresh: a full burst again */
    fit = 0;
    for (int i = 0; i < 100; i++) {
        ag_limit_op op = op_of(100, AG_LIMIT_KIND_RPM, 60, 1);
        if (ag_memstore_reserve(m, &op, 1, t + 120000) == AG_MEMSTORE_ADMIT)
            fit++;
    }
    CHECK_INT(fit, 60);
    ag_memstore_free(m);
    /* bad shapes */
    CHECK(ag_memstore_new(2, 4) == NULL);
}

int main(void)
{
    test_atomic_multi();
    test_adjust();
    test_concurrency();
    test_expiry_and_bound();
    return CHECK_DONE();
}
