/* Lazy deadlines on libevent timers (see deadline.h). */
#include "aoai_guard/deadline.h"

#include <sys/time.h>

#include <event2/event.h>

#include "aoai_guard/clock.h"

static void add_timer(ag_deadline *d, uint64_t now)
{
    uint64_t us = (d->at_ns - now + 999) / 1000;
    struct timeval tv = {(time_t)(us / 1000000), (suseconds_t)(us % 1000000)};
    evtimer_add(d->ev, &tv);
    d->due_ns = d->at_ns;
}

void ag_deadline_set(ag_deadline *d, long long ms)
{
    uint64_t now = ag_mono_ns();
    d->at_ns = now + (uint64_t)(ms > 0 ? ms : 0) * 1000000u;
    if (d->due_ns == 0 || d->due_ns > d->at_ns)
        add_timer(d, now);
}

bool ag_deadline_fired(ag_deadline *d)
{
    d->due_ns = 0;
    if (d->at_ns == 0)
        return false;
    uint64_t now = ag_mono_ns();
    if (now < d->at_ns) {
        add_timer(d, now);
        return false;
    }
    d->at_ns = 0;
    return true;
}
