/* ag_deadline: a deadline never fires before its time, moving it later adds no timer (the early
 * timer is added again for the rest), moving it earlier does, and a cleared deadline fires for
 * nothing. Only lower bounds on time are checked (when it fires, the time has come); the loop runs
 * until the expected event or a generous safety limit. */
#include <event2/event.h>

#include "aoai_guard/clock.h"
#include "aoai_guard/deadline.h"
#include "check.h"

typedef struct rig {
    struct event_base *base;
    ag_deadline d;
    int wakeups;    /* callback runs */
    int fired;      /* ag_deadline_fired() true */
    uint64_t fired_at;
} rig;

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rig *g = arg;
    g->wakeups++;
    if (!ag_deadline_fired(&g->d))
        return;
    g->fired++;
    g->fired_at = ag_mono_ns();
}

/* Runs the loop until cond holds or 5 s pass. */
#define RUN_UNTIL(g, cond)                                                                         \
    do {                                                                                           \
        uint64_t limit_ = ag_mono_ns() + 5000000000u;                                              \
        while (!(cond) && ag_mono_ns() < limit_)                                                   \
            event_base_loop((g)->base, EVLOOP_ONCE);                                               \
    } while (0)

int main(void)
{
    rig g = {0};
    g.base = event_base_new();
    g.d.ev = evtimer_new(g.base, on_timer, &g);

    /* Set, then moved earlier: a new timer; it fires once, not before the earlier deadline. */
    uint64_t t0 = ag_mono_ns();
    ag_deadline_set(&g.d, 200);
    uint64_t due_first = g.d.due_ns;
    ag_deadline_set(&g.d, 30);
    CHECK(g.d.due_ns < due_first); /* added again, earlier */
    RUN_UNTIL(&g, g.fired == 1);
    CHECK_INT(g.fired, 1);
    CHECK(g.fired_at - t0 >= 30000000u);
    CHECK_INT(g.d.at_ns, 0);  /* a fired deadline is cleared */
    CHECK_INT(g.d.due_ns, 0); /* and nothing is pending */

    /* Set, then moved later: no new timer; the early wakeup adds it for the rest. */
    g.wakeups = g.fired = 0;
    t0 = ag_mono_ns();
    ag_deadline_set(&g.d, 20);
    uint64_t due = g.d.due_ns;
    ag_deadline_set(&g.d, 120);
    CHECK(g.d.due_ns == due); /* lazy: the pending timer stays as it was */
    RUN_UNTIL(&g, g.fired == 1);
    CHECK_INT(g.fired, 1);
    CHECK(g.wakeups >= 2); /* the early one, then the deadline */
    CHECK(g.fired_at - t0 >= 120000000u);

    /* Cleared: the pending timer wakes once and nothing fires. */
    g.wakeups = g.fired = 0;
    ag_deadline_set(&g.d, 10);
    ag_deadline_clear(&g.d);
    RUN_UNTIL(&g, g.wakeups == 1);
    CHECK_INT(g.wakeups, 1);
    CHECK_INT(g.fired, 0);
    CHECK_INT(g.d.due_ns, 0);

    /* Many moves later while pending: still one timer, one firing at the last deadline. */
    g.wakeups = g.fired = 0;
    t0 = ag_mono_ns();
    ag_deadline_set(&g.d, 5);
    due = g.d.due_ns;
    for (int i = 1; i <= 50; i++)
        ag_deadline_set(&g.d, 5 + i);
    CHECK(g.d.due_ns == due);
    RUN_UNTIL(&g, g.fired == 1);
    CHECK_INT(g.fired, 1);
    CHECK(g.fired_at - t0 >= 55000000u);

    event_free(g.d.ev);
    event_base_free(g.base);
    return CHECK_DONE();
}
