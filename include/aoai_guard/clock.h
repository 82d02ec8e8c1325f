/* Clocks: monotonic time for durations and deadlines, wall time for records. */
#ifndef AOAI_GUARD_CLOCK_H
#define AOAI_GUARD_CLOCK_H

#include <stdint.h>
#include <stddef.h>

/* Monotonic nanoseconds (CLOCK_MONOTONIC). */
uint64_t ag_mono_ns(void);
/* Wall-clock milliseconds since the Unix epoch. */
int64_t ag_wall_ms(void);
/* Formats wall-clock ms as RFC 3339 UTC with milliseconds ("2026-11-28T15:45:00.123Z"); needs 25 bytes. */
void ag_format_rfc3339_ms(int64_t wall_ms, char out[32]);

#endif
