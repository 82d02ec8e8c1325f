/* A deadline kept with one libevent timer, lazily, as nginx keeps its timers.
 *
 * Moving a deadline only writes a number. The timer is added only when it is not pending or would
 * fire after the new deadline; when it fires before the deadline (which has moved later since),
 * it is added again for the rest. The phases of an ordinary exchange mostly move a deadline later
 * (head, body, then idle), so a steady run of requests adds almost no timers, where adding and
 * deleting one per phase was an event_add or event_del each time (a heap update in libevent).
 *
 * The owner creates the event (evtimer_new) with a callback that starts with
 * `if (!ag_deadline_fired(&d)) return;` and frees it; a pending timer with no deadline fires once
 * for nothing. */
#ifndef AOAI_GUARD_DEADLINE_H
#define AOAI_GUARD_DEADLINE_H

#include <stdbool.h>
#include <stdint.h>

struct event;

typedef struct ag_deadline {
    struct event *ev; /* the owner's timer event */
    uint64_t at_ns;   /* the deadline, monotonic; 0: none */
    uint64_t due_ns;  /* when ev fires; 0: not pending */
} ag_deadline;

/* The deadline is ms milliseconds from now. */
void ag_deadline_set(ag_deadline *d, long long ms);

/* No deadline. */
static inline void ag_deadline_clear(ag_deadline *d)
{
    d->at_ns = 0;
}

/* For the timer's callback: true when the deadline has passed (it is cleared then); false when
 * there is none or it is still ahead (the timer is added again for the rest). */
bool ag_deadline_fired(ag_deadline *d);

#endif
