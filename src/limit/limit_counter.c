/* GCRA and calendar-window arithmetic (see limit_counter.h). */
#include "aoai_guard/limit_counter.h"

#define T_MS ((long long)AG_LIMIT_RATE_PERIOD_MS)
#define MAX_LEVEL (AG_LIMIT_MAX_COST * T_MS)

static long long floor_div(long long a, long long b)
{
    long long q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0)))
        q--;
    return q;
}

static long long ceil_div_pos(long long a, long long b)
{
    return a <= 0 ? 0 : (a + b - 1) / b;
}

void ag_gcra_settle(ag_gcra_state *st, long long limit, long long now_ms)
{
    if (limit <= 0)
        limit = 1;
    /* V / 60000 is the number of units still outstanding, whatever the limit: a changed limit keeps
     * them and drains them at the new rate. */
    st->limit = limit;
    if (now_ms > st->last_ms) {
        long long dt = now_ms - st->last_ms;
        if (dt >= ceil_div_pos(st->level, limit))
            st->level = 0;
        else
            st->level -= dt * limit; /* dt * limit < level here: no overflow */
        st->last_ms = now_ms;
    }
}

bool ag_gcra_check(const ag_gcra_state *st, long long limit, long long cost, long long *new_level,
                   long long *retry_after_ms, long long *remaining)
{
    if (limit <= 0)
        limit = 1;
    long long cap = T_MS * limit;
    long long level = st->level;
    if (cost < 0)
        cost = 0;
    if (cost > limit) {
        /* Can never be admitted: report a full period, the caller explains. */
        *retry_after_ms = T_MS;
        *remaining = level >= cap ? 0 : (cap - level) / T_MS;
        return false;
    }
    long long next = level + cost * T_MS;
    if (next > cap) {
        long long wait = ceil_div_pos(next - cap, limit);
        *retry_after_ms = wait < 1 ? 1 : wait;
        *remaining = level >= cap ? 0 : (cap - level) / T_MS;
        return false;
    }
    *new_level = next;
    *retry_after_ms = 0;
    *remaining = (cap - next) / T_MS;
    return true;
}

long long ag_gcra_idle_at(const ag_gcra_state *st)
{
    long long limit = st->limit > 0 ? st->limit : 1;
    return st->last_ms + ceil_div_pos(st->level, limit);
}

void ag_gcra_adjust(ag_gcra_state *st, long long delta)
{
    if (delta > AG_LIMIT_MAX_COST)
        delta = AG_LIMIT_MAX_COST;
    if (delta < -AG_LIMIT_MAX_COST)
        delta = -AG_LIMIT_MAX_COST;
    long long level = st->level + delta * T_MS;
    if (level < 0)
        level = 0;
    if (level > MAX_LEVEL)
        level = MAX_LEVEL;
    st->level = level;
}

long long ag_days_from_civil(long long year, int month, int day)
{
    long long y = year - (month <= 2);
    long long era = floor_div(y, 400);
    long long yoe = y - era * 400;                                     /* [0, 399] */
    long long mp = month > 2 ? month - 3 : month + 9;                  /* March = 0 */
    long long doy = (153 * mp + 2) / 5 + day - 1;                      /* [0, 365] */
    long long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;             /* [0, 146096] */
    return era * 146097 + doe - 719468;
}

void ag_civil_from_days(long long days, long long *year, int *month, int *day)
{
    long long z = days + 719468;
    long long era = floor_div(z, 146097);
    long long doe = z - era * 146097;
    long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    long long mp = (5 * doy + 2) / 153;
    int d = (int)(doy - (153 * mp + 2) / 5 + 1);
    int m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *year = yoe + era * 400 + (m <= 2);
    *month = m;
    *day = d;
}

#define MS_HOUR 3600000LL
#define MS_DAY 86400000LL

long long ag_limit_window_id(ag_limit_period period, long long now_ms)
{
    long long days = floor_div(now_ms, MS_DAY);
    long long y;
    int m, d;
    switch (period) {
    case AG_LIMIT_PERIOD_HOUR:
        return floor_div(now_ms, MS_HOUR);
    case AG_LIMIT_PERIOD_DAY:
        return days;
    case AG_LIMIT_PERIOD_WEEK:
        return floor_div(days + 3, 7); /* 1970-01-01 was a Thursday; weeks start on Monday */
    case AG_LIMIT_PERIOD_MONTH:
        ag_civil_from_days(days, &y, &m, &d);
        return y * 12 + (m - 1);
    case AG_LIMIT_PERIOD_YEAR:
        ag_civil_from_days(days, &y, &m, &d);
        return y;
    }
    return 0;
}

long long ag_limit_window_end_ms(ag_limit_period period, long long id)
{
    switch (period) {
    case AG_LIMIT_PERIOD_HOUR:
        return (id + 1) * MS_HOUR;
    case AG_LIMIT_PERIOD_DAY:
        return (id + 1) * MS_DAY;
    case AG_LIMIT_PERIOD_WEEK:
        return ((id + 1) * 7 - 3) * MS_DAY;
    case AG_LIMIT_PERIOD_MONTH: {
        long long next = id + 1;
        return ag_days_from_civil(floor_div(next, 12), (int)(next - floor_div(next, 12) * 12) + 1, 1) *
               MS_DAY;
    }
    case AG_LIMIT_PERIOD_YEAR:
        return ag_days_from_civil(id + 1, 1, 1) * MS_DAY;
    }
    return 0;
}

const char *ag_limit_kind_str(ag_limit_kind kind)
{
    switch (kind) {
    case AG_LIMIT_KIND_RPM: return "requests_per_minute";
    case AG_LIMIT_KIND_TPM: return "tokens_per_minute";
    case AG_LIMIT_KIND_QUOTA: return "token_quota";
    }
    return "?";
}

const char *ag_limit_period_str(ag_limit_period period)
{
    switch (period) {
    case AG_LIMIT_PERIOD_HOUR: return "hour";
    case AG_LIMIT_PERIOD_DAY: return "day";
    case AG_LIMIT_PERIOD_WEEK: return "week";
    case AG_LIMIT_PERIOD_MONTH: return "month";
    case AG_LIMIT_PERIOD_YEAR: return "year";
    }
    return "?";
}
