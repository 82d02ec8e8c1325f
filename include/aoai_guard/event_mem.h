/* libevent's memory, with a per-thread cache of buffer-sized blocks.
 *
 * libevent allocates an evbuffer chain (a power of two from 1 KiB) for nearly every read it
 * appends and every write it queues, and frees it as soon as the bytes are drained: several
 * malloc/free pairs per proxied request, of sizes above glibc's per-thread cache (1032 bytes),
 * each a walk through the arena's bins (and, now and then, a consolidation of them).
 *
 * ag_event_mem_install() gives libevent allocation functions that keep freed blocks of 1 KiB to
 * 128 KiB on lists of the freeing thread, up to AG_EVENT_MEM_CACHE_BYTES per thread, and hand them
 * out again for libevent's next request of a power of two from 1 to 64 KiB. Blocks are malloc's
 * own, with no header: a freed block is filed by malloc_usable_size() under the largest power of
 * two it holds, so it is never handed out for more than it holds, realloc() and free() apply to it
 * wherever it came from, and every other allocation is plain malloc. A block may be freed on
 * another thread than the one that allocated it (it joins that thread's lists). A thread's lists
 * are freed when the thread exits. */
#ifndef AOAI_GUARD_EVENT_MEM_H
#define AOAI_GUARD_EVENT_MEM_H

#include <stddef.h>
#include <stdint.h>

#define AG_EVENT_MEM_CACHE_BYTES (1024 * 1024)

/* Installs the functions in libevent. Call once, first thing in main, before any libevent call. */
void ag_event_mem_install(void);

/* The functions themselves (what libevent calls), for tests. */
void *ag_event_mem_malloc(size_t n);
void *ag_event_mem_realloc(void *p, size_t n);
void ag_event_mem_free(void *p);

/* This thread's counters, for tests and profiles. */
typedef struct ag_event_mem_stats {
    uint64_t hits;       /* allocations served from the cache */
    uint64_t misses;     /* allocations of a cached size that went to malloc */
    uint64_t released;   /* frees of a cacheable block that went to free() (the cache was full) */
    size_t cached_bytes; /* usable bytes on this thread's lists now */
} ag_event_mem_stats;

ag_event_mem_stats ag_event_mem_thread_stats(void);

#endif
