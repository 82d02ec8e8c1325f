/* GCRA arithmetic at its boundaries and UTC calendar windows (limit_counter.h), plus the same
 * behaviour end to end through the memory store with an injected clock. */
#include "check.h"

#include <string.h>

#include "aoai_guard/limit_counter.h"
#include "aoai_guard/limit_store.h"

#define MS_DAY 86400000LL

/* ms of a UTC date-time */
static long long utc(long long y, int mo, int d, int h, int mi, int s, int ms)
{
    return ag_days_from_civil(y, mo, d) * MS_DAY + h * 3600000LL + mi * 60000LL + s * 1000LL + ms;
}

static ag_limit_op op_of(unsigned char id, ag_limit_kind kind, long long limit, long long cost)
{
    ag_limit_op op;
    memset(&op, 0, sizeof op);
    memset(op.key, id, sizeof op.key);
    snprintf(op.policy, sizeof op.policy, "p%u", id);
    op.kind = kind;
    op.limit = limit;
    op.cost = cost;
    return op;
}

static void test_gcra_exact_limit(void)
{
    /* 60 per minute from empty: exactly 60 admitted at one instant, the 61st waits 1000 ms */
    ag_gcra_state st = { 0, 1000, 60 };
    long long level, retry, remaining;
    int admitted = 0;
    for (int i = 0; i < 100; i++) {
        ag_gcra_settle(&st, 60, 1000);
        if (!ag_gcra_check(&st, 60, 1, &level, &retry, &remaining))
            break;
        st.level = level;
        admitted++;
        CHECK_INT(remaining, 60 - admitted);
    }
    CHECK_INT(admitted, 60);
    ag_gcra_settle(&st, 60, 1000);
    CHECK(!ag_gcra_check(&st, 60, 1, &level, &retry, &remaining));
    CHECK_INT(retry, 1000);
    CHECK_INT(remaining, 0);
    /* 999 ms later: still 1 ms short */
    ag_gcra_settle(&st, 60, 1999);
    CHECK(!ag_gcra_check(&st, 60, 1, &level, &retry, &remaining));
    CHECK_INT(retry, 1);
    /* at 1000 ms exactly one more fits, and the next waits a full interval again */
    ag_gcra_settle(&st, 60, 2000);
    CHECK(ag_gcra_check(&st, 60, 1, &level, &retry, &remaining));
    st.level = level;
    CHECK(!ag_gcra_check(&st, 60, 1, &level, &retry, &remaining));
    CHECK_INT(retry, 1000);
    /* empty again after a full minute of silence */
    ag_gcra_settle(&st, 60, 2000 + 60000);
    CHECK_INT(st.level, 0);
    CHECK_INT(ag_gcra_idle_at(&st), 62000);

    /* a limit that does not divide the period: 7 per minute -> interval 8571.43 ms, no drift */
    ag_gcra_state s7 = { 0, 0, 7 };
    admitted = 0;
    for (int i = 0; i < 10; i++) {
        ag_gcra_settle(&s7, 7, 0);
        if (!ag_gcra_check(&s7, 7, 1, &level, &retry, &remaining))
            break;
        s7.level = level;
        admitted++;
    }
    CHECK_INT(admitted, 7);
    CHECK_INT(retry, 8572); /* ceil(60000 / 7) */
    /* over 10 minutes at a steady 1 request per 8572 ms all are admitted, never more than 70 + 7 */
    int steady = 0;
    for (long long t = 0; t <= 600000; t += 100) {
        ag_gcra_settle(&s7, 7, t);
        if (ag_gcra_check(&s7, 7, 1, &level, &retry, &remaining)) {
            s7.level = level;
            steady++;
        }
    }
    CHECK_INT(steady, 70); /* 7 burst already used at t=0, then exactly 7 per minute for 10 minutes */
}

static void test_gcra_tokens(void)
{
    /* 1000 tokens per minute: 600 + 400 fit, one more token waits 60 ms (one token's interval) */
    ag_gcra_state st = { 0, 0, 1000 };
    long long level, retry, remaining;
    ag_gcra_settle(&st, 1000, 0);
    CHECK(ag_gcra_check(&st, 1000, 600, &level, &retry, &remaining));
    st.level = level;
    CHECK_INT(remaining, 400);
    CHECK(ag_gcra_check(&st, 1000, 400, &level, &retry, &remaining));
    st.level = level;
    CHECK_INT(remaining, 0);
    CHECK(!ag_gcra_check(&st, 1000, 1, &level, &retry, &remaining));
    CHECK_INT(retry, 60);
    CHECK(!ag_gcra_check(&st, 1000, 500, &level, &retry, &remaining));
    CHECK_INT(retry, 30000);
    /* a cost above the limit can never be admitted */
    ag_gcra_state fresh = { 0, 0, 1000 };
    CHECK(!ag_gcra_check(&fresh, 1000, 1001, &level, &retry, &remaining));
    CHECK_INT(retry, 60000);
    CHECK_INT(remaining, 1000);
    /* refund 400 tokens: they fit again immediately */
    ag_gcra_adjust(&st, -400);
    CHECK(ag_gcra_check(&st, 1000, 400, &level, &retry, &remaining));
    CHECK(!ag_gcra_check(&st, 1000, 401, &level, &retry, &remaining));
    /* overcharging pushes the bucket past full: the wait grows accordingly */
    ag_gcra_adjust(&st, 500);
    CHECK(!ag_gcra_check(&st, 1000, 1, &level, &retry, &remaining));
    CHECK_INT(retry, 6060); /* 1100 + 1 tokens against 1000: 101 tokens x 60 ms */
    ag_gcra_adjust(&st, -10000000); /* never below empty */
    CHECK_INT(st.level, 0);
}

static void test_gcra_limit_change(void)
{
    /* 100 per minute, 50 used; limit raised to 200: the 50 stay used, 150 fit */
    ag_gcra_state st = { 0, 0, 100 };
    long long level, retry, remaining;
    ag_gcra_settle(&st, 100, 0);
    CHECK(ag_gcra_check(&st, 100, 50, &level, &retry, &remaining));
    st.level = level;
    ag_gcra_settle(&st, 200, 0);
    CHECK_INT(st.level, 50LL * 60000);
    CHECK(!ag_gcra_check(&st, 200, 151, &level, &retry, &remaining));
    CHECK(ag_gcra_check(&st, 200, 150, &level, &retry, &remaining));
    CHECK_INT(remaining, 0);
    /* lowered to 10 with 50 outstanding: 6 more fit once 46 have drained at 10 per minute */
    ag_gcra_state s2 = { 50LL * 60000, 0, 100 };
    ag_gcra_settle(&s2, 10, 0);
    CHECK(!ag_gcra_check(&s2, 10, 6, &level, &retry, &remaining));
    CHECK_INT(retry, 46LL * 6000);
    CHECK_INT(remaining, 0);
}

static void test_calendar(void)
{
    /* civil <-> days round trip over four centuries, including 1900/2000/2100 */
    long long y;
    int m, d, bad = 0;
    for (long long day = ag_days_from_civil(1899, 1, 1); day < ag_days_from_civil(2301, 1, 1); day++) {
        ag_civil_from_days(day, &y, &m, &d);
        if (ag_days_from_civil(y, m, d) != day)
            bad++;
    }
    CHECK_INT(bad, 0);
    CHECK_INT(ag_days_from_civil(1970, 1, 1), 0);
    CHECK_INT(ag_days_from_civil(2000, 3, 1) - ag_days_from_civil(2000, 2, 28), 2); /* 2000 is leap */
    CHECK_INT(ag_days_from_civil(1900, 3, 1) - ag_days_from_civil(1900, 2, 28), 1); /* 1900 is not */
    CHECK_INT(ag_days_from_civil(2100, 3, 1) - ag_days_from_civil(2100, 2, 28), 1);
    CHECK_INT(ag_days_from_civil(2024, 3, 1) - ag_days_from_civil(2024, 2, 28), 2);
    CHECK_INT(ag_days_from_civil(2023, 3, 1) - ag_days_from_civil(2023, 2, 28), 1);

    /* hour */
    long long t = utc(2024, 5, 17, 13, 59, 59, 999);
    CHECK_INT(ag_limit_window_end_ms(AG_LIMIT_PERIOD_HOUR, ag_limit_window_id(AG_LIMIT_PERIOD_HOUR, t)),
              utc(2024, 5, 17, 14, 0, 0, 0));
    CHECK(ag_limit_window_id(AG_LIMIT_PERIOD_HOUR, t) + 1 == ag_limit_window_id(AG_LIMIT_PERIOD_HOUR, t + 1));
    /* day: the last millisecond of a day and the first of the next */
    t = utc(2024, 2, 28, 23, 59, 59, 999);
    long long dw = ag_limit_window_id(AG_LIMIT_PERIOD_DAY, t);
    CHECK_INT(ag_limit_window_end_ms(AG_LIMIT_PERIOD_DAY, dw), utc(2024, 2, 29, 0, 0, 0, 0));
    CHECK_INT(ag_limit_window_id(AG_LIMIT_PERIOD_DAY, t + 1), dw + 1);
    /* month: February of a leap year ends on the 29th, of a common year on the 28th */
    long long feb24 = ag_limit_window_id(AG_LIMIT_PERIOD_MONTH, utc(2024, 2, 29, 23, 59, 59, 999));
    CHECK_INT(feb24, 2024 * 12 + 1);
    CHECK_INT(ag_limit_window_end_ms(AG_LIMIT_PERIOD_MONTH, feb24), utc(2024, 3, 1, 0, 0, 0, 0));
    CHECK_INT(ag_limit_window_id(AG_LIMIT_PERIOD_MONTH, utc(2024, 3, 1, 0, 0, 0, 0)), feb24 + 1);
    long long feb23 = ag_limit_window_id(AG_LIMIT_PERIOD_MONTH, utc(2023, 2, 28, 12, 0, 0, 0));
    CHECK_INT(ag_limit_window_end_ms(AG_LIMIT_PERIOD_MONTH, feb23), utc(2023, 3, 1, 0, 0, 0, 0));
    CHECK_INT(ag_limit_window_id(AG_LIMIT_PERIOD_MONTH, utc(2023, 2, 28, 23, 59, 59, 999)), feb23);
    long long feb00 = ag_limit_window_id(AG_LIMIT_PERIOD_MONTH, utc(2000, 2, 29, 0, 0, 0, 0));
    CHECK_INT(ag_limit_window_end_ms(AG_LIMIT_PERIOD_MONTH, feb00), utc(2000, 3, 1, 0, 0, 0, 0));
    /* December rolls into January of the next year */
    long long dec = ag_limit_window_id(AG_LIMIT_PERIOD_MONTH, utc(2023, 12, 31, 23, 59, 59, 999));
    CHECK_INT(ag_limit_window_end_ms(AG_LIMIT_PERIOD_MONTH, dec), utc(2024, 1, 1, 0, 0, 0, 0));
    CHECK_INT(ag_limit_window_id(AG_LIMIT_PERIOD_MONTH, utc(2024, 1, 1, 0, 0, 0, 0)), dec + 1);
    /* ISO week: Monday 2024-01-01 00:00 starts a week; Sunday 2023-12-31 belongs to the previous */
    long long wk = ag_limit_window_id(AG_LIMIT_PERIOD_WEEK, utc(2024, 1, 1, 0, 0, 0, 0));
    CHECK_INT(ag_limit_window_id(AG_LIMIT_PERIOD_WEEK, utc(2023, 12, 31, 23, 59, 59, 999)), wk - 1);
    CHECK_INT(ag_limit_window_id(AG_LIMIT_PERIOD_WEEK, utc(2024, 1, 7, 23, 59, 59, 999)), wk);
    CHECK_INT(ag_limit_window_end_ms(AG_LIMIT_PERIOD_WEEK, wk), utc(2024, 1, 8, 0, 0, 0, 0));
    /* year */
    CHECK_INT(ag_limit_window_id(AG_LIMIT_PERIOD_YEAR, utc(2024, 12, 31, 23, 59, 59, 999)), 2024);
    CHECK_INT(ag_limit_window_end_ms(AG_LIMIT_PERIOD_YEAR, 2024), utc(2025, 1, 1, 0, 0, 0, 0));
}

/* Quotas through the store with an injected clock: rollover at the end of a day and of a month. */
static void test_quota_rollover(void)
{
    ag_memstore *m = ag_memstore_new(64, 4);
    CHECK(m != NULL);
    if (!m)
        return;
    ag_limit_op q = op_of(7, AG_LIMIT_KIND_QUOTA, 1000, 900);
    q.period = AG_LIMIT_PERIOD_DAY;
    long long t = utc(2024, 2, 28, 23, 59, 59, 0);
    CHECK_INT(ag_memstore_reserve(m, &q, 1, t), AG_MEMSTORE_ADMIT);
    CHECK_INT(q.remaining, 100);
    q.cost = 200;
    CHECK_INT(ag_memstore_reserve(m, &q, 1, t + 999), AG_MEMSTORE_REFUSE);
    CHECK(q.refused);
    CHECK_INT(q.retry_after_ms, 1);        /* until midnight UTC */
    CHECK_INT(q.remaining, 100);
    CHECK_INT(ag_memstore_reserve(m, &q, 1, t + 1000), AG_MEMSTORE_ADMIT); /* Feb 29: a new day */
    CHECK_INT(q.remaining, 800);
    CHECK_INT(q.reset_ms, MS_DAY);

    /* monthly quota: everything used on Feb 29 2024 resets at Mar 1 00:00 UTC */
    ag_limit_op mq = op_of(8, AG_LIMIT_KIND_QUOTA, 5000, 5000);
    mq.period = AG_LIMIT_PERIOD_MONTH;
    long long feb29 = utc(2024, 2, 29, 23, 0, 0, 0);
    CHECK_INT(ag_memstore_reserve(m, &mq, 1, feb29), AG_MEMSTORE_ADMIT);
    mq.cost = 1;
    CHECK_INT(ag_memstore_reserve(m, &mq, 1, utc(2024, 2, 29, 23, 59, 59, 999)), AG_MEMSTORE_REFUSE);
    CHECK_INT(mq.retry_after_ms, 1);
    CHECK_INT(ag_memstore_reserve(m, &mq, 1, utc(2024, 3, 1, 0, 0, 0, 0)), AG_MEMSTORE_ADMIT);
    CHECK_INT(mq.remaining, 4999);
    /* common year: Feb 28 2023 is the last day of February */
    ag_limit_op cq = op_of(9, AG_LIMIT_KIND_QUOTA, 10, 10);
    cq.period = AG_LIMIT_PERIOD_MONTH;
    CHECK_INT(ag_memstore_reserve(m, &cq, 1, utc(2023, 2, 28, 10, 0, 0, 0)), AG_MEMSTORE_ADMIT);
    cq.cost = 1;
    CHECK_INT(ag_memstore_reserve(m, &cq, 1, utc(2023, 2, 28, 23, 59, 59, 999)), AG_MEMSTORE_REFUSE);
    CHECK_INT(ag_memstore_reserve(m, &cq, 1, utc(2023, 3, 1, 0, 0, 0, 0)), AG_MEMSTORE_ADMIT);

    /* a reconciliation for a window that has ended does not touch the new window */
    ag_limit_op old = mq;
    old.window = ag_limit_window_id(AG_LIMIT_PERIOD_MONTH, feb29);
    old.delta = 3000;
    ag_memstore_adjust(m, &old, 1, utc(2024, 3, 1, 0, 0, 1, 0));
    mq.cost = 4999;
    CHECK_INT(ag_memstore_reserve(m, &mq, 1, utc(2024, 3, 1, 0, 0, 2, 0)), AG_MEMSTORE_ADMIT);
    ag_memstore_free(m);
}

/* No double burst across a minute boundary, unlike a fixed window. */
static void test_smooth_boundary(void)
{
    ag_memstore *m = ag_memstore_new(64, 4);
    CHECK(m != NULL);
    if (!m)
        return;
    ag_limit_op op = op_of(1, AG_LIMIT_KIND_RPM, 600, 1); /* one request per 100 ms */
    long long t = utc(2024, 6, 1, 12, 0, 59, 900);          /* 100 ms before a minute boundary */
    int first = 0, second = 0;
    for (int i = 0; i < 1000; i++)
        if (ag_memstore_reserve(m, &op, 1, t) == AG_MEMSTORE_ADMIT)
            first++;
    for (int i = 0; i < 1000; i++)
        if (ag_memstore_reserve(m, &op, 1, t + 200) == AG_MEMSTORE_ADMIT)
            second++;
    CHECK_INT(first, 600);
    CHECK_INT(second, 2); /* 200 ms later, only 200 ms worth of rate has drained */
    CHECK_INT(op.retry_after_ms, 100);
    ag_memstore_free(m);
}

int main(void)
{
    test_gcra_exact_limit();
    test_gcra_tokens();
    test_gcra_limit_change();
    test_calendar();
    test_quota_rollover();
    test_smooth_boundary();
    return CHECK_DONE();
}
