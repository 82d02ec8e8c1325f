/* Counter arithmetic shared by the rate-limit stores: one "op" per limit a request is checked against.
 *
 * Rates (requests or tokens per minute) use GCRA in its leaky-bucket form with exact integer state:
 * the bucket level is kept as V = (TAT - now) * L, in "ms x units", so that charging c units adds
 * exactly c * 60000, draining over dt ms subtracts exactly dt * L, and the admission test is
 * V <= 60000 * L. No rounding accumulates: from an empty bucket exactly L units are admitted at once,
 * the next one is refused with retry-after = ceil(60000 / L) ms, and then one unit is admitted every
 * 60000 / L ms (smooth: no second burst at a minute boundary).
 * Quotas over long periods are fixed windows aligned on UTC calendar boundaries (hour, day, ISO week
 * starting Monday, month, year): the counter resets when the window id changes.
 * The same formulas are implemented in the Redis Lua script (limit_redis.c); keep them in step. */
#ifndef AOAI_GUARD_LIMIT_COUNTER_H
#define AOAI_GUARD_LIMIT_COUNTER_H

#include <stdbool.h>
#include <stddef.h>

#define AG_LIMIT_KEY_LEN 16           /* bytes of SHA-256 kept as a counter's identity */
#define AG_LIMIT_RATE_PERIOD_MS 60000 /* rates are per minute */
#define AG_LIMIT_MAX_LIMIT 1000000000LL   /* largest configurable limit or quota */
#define AG_LIMIT_MAX_COST 1000000000000LL /* costs and adjustments are clamped to this */
#define AG_LIMIT_POLICY_LEN 65 /* a policy name (at most 64 bytes) and its NUL */

typedef enum ag_limit_kind {
    AG_LIMIT_KIND_RPM = 0,   /* requests per minute (GCRA, cost 1) */
    AG_LIMIT_KIND_TPM = 1,   /* tokens per minute (GCRA, cost = token estimate) */
    AG_LIMIT_KIND_QUOTA = 2, /* tokens per calendar window (fixed window) */
} ag_limit_kind;

typedef enum ag_limit_period {
    AG_LIMIT_PERIOD_HOUR = 0,
    AG_LIMIT_PERIOD_DAY,
    AG_LIMIT_PERIOD_WEEK, /* ISO week, Monday 00:00 UTC */
    AG_LIMIT_PERIOD_MONTH,
    AG_LIMIT_PERIOD_YEAR,
} ag_limit_period;

/* One limit applied to one request: inputs set by the limiter, outputs set by the store. */
typedef struct ag_limit_op {
    unsigned char key[AG_LIMIT_KEY_LEN]; /* counter identity (policy, kind, key fields) */
    char policy[AG_LIMIT_POLICY_LEN];    /* policy name, for results and Redis key names */
    ag_limit_kind kind;
    ag_limit_period period;              /* quotas only */
    long long limit;                     /* per minute, or per window for quotas */
    long long cost;                      /* units reserved at admission */
    long long delta;                     /* adjustments: units to add (>0) or refund (<0) */
    /* outputs */
    long long window;                    /* quotas: window id the reservation landed in */
    long long remaining;                 /* units admissible right after this decision */
    long long retry_after_ms;            /* > 0 when this op refused */
    long long reset_ms;                  /* quotas: ms until the window ends */
    bool refused;
} ag_limit_op;

/* State of one GCRA counter: level V (ms x units), time of the last update, limit it was kept for. */
typedef struct ag_gcra_state {
    long long level;
    long long last_ms;
    long long limit;
} ag_gcra_state;

/* Drains st to now_ms at the given limit's rate. A changed limit keeps the units outstanding
 * (level / 60000), so a reload neither resets nor inflates a counter. */
void ag_gcra_settle(ag_gcra_state *st, long long limit, long long now_ms);

/* Checks cost against a settled state: true when admitted, with *new_level the charged level;
 * otherwise *retry_after_ms (>= 1) is how long until it would be admitted. *remaining is the
 * whole units admissible after the decision (after the charge when admitted). */
bool ag_gcra_check(const ag_gcra_state *st, long long limit, long long cost, long long *new_level,
                   long long *retry_after_ms, long long *remaining);

/* Ms after last_ms at which a counter with this level is empty (equivalent to a fresh counter). */
long long ag_gcra_idle_at(const ag_gcra_state *st);

/* Applies an adjustment of delta units (refund when negative) to a settled state; level stays >= 0. */
void ag_gcra_adjust(ag_gcra_state *st, long long delta);

/* Id of the calendar window (UTC) containing now_ms, e.g. year*12+month-1 for months. */
long long ag_limit_window_id(ag_limit_period period, long long now_ms);

/* First millisecond (Unix epoch, UTC) after the window with that id. */
long long ag_limit_window_end_ms(ag_limit_period period, long long window_id);

/* Days since 1970-01-01 of a proleptic Gregorian date (month 1..12). */
long long ag_days_from_civil(long long year, int month, int day);

/* Civil date of a day number (inverse of ag_days_from_civil). */
void ag_civil_from_days(long long days, long long *year, int *month, int *day);

/* Short name: "requests_per_minute", "tokens_per_minute", "token_quota". */
const char *ag_limit_kind_str(ag_limit_kind kind);

/* Short name: "hour", "day", "week", "month", "year". */
const char *ag_limit_period_str(ag_limit_period period);

#endif
