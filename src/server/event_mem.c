/* libevent's allocation functions with a per-thread block cache (see event_mem.h). */
#include "aoai_guard/event_mem.h"

#include <malloc.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include <event2/event.h>

#define MIN_SHIFT 10 /* 1 KiB: libevent's smallest evbuffer chain */
#define NCLASS 7     /* 1 KiB .. 64 KiB */

typedef struct free_block {
    struct free_block *next;
} free_block;

typedef struct thread_cache {
    free_block *head[NCLASS]; /* class k: blocks of at least 2^(10+k) usable bytes */
    size_t bytes;             /* usable bytes on the lists */
    bool registered;          /* the exit destructor knows this thread's cache */
    ag_event_mem_stats stats;
} thread_cache;

static _Thread_local thread_cache tc;
static pthread_key_t exit_key;
static pthread_once_t exit_once = PTHREAD_ONCE_INIT;

static size_t class_size(int cls)
{
    return (size_t)1 << (MIN_SHIFT + cls);
}

/* The class an allocation of n bytes is served from: only the exact powers of two libevent asks
 * for its chains; -1 for every other size. */
static int class_of_request(size_t n)
{
    if (n < class_size(0) || n > class_size(NCLASS - 1) || (n & (n - 1)) != 0)
        return -1;
    int cls = 0;
    while (class_size(cls) < n)
        cls++;
    return cls;
}

/* The class a freed block of u usable bytes can serve: the largest class it holds whole (a block
 * is never handed out for more than it holds); -1 when it is outside the cached range. */
static int class_of_block(size_t u)
{
    if (u < class_size(0) || u >= class_size(NCLASS - 1) * 2)
        return -1;
    int cls = NCLASS - 1;
    while (class_size(cls) > u)
        cls--;
    return cls;
}

static void cache_drop(void *arg)
{
    thread_cache *c = arg;
    for (int i = 0; i < NCLASS; i++) {
        free_block *b = c->head[i];
        while (b) {
            free_block *next = b->next;
            free(b);
            b = next;
        }
        c->head[i] = NULL;
    }
    c->bytes = 0;
    c->registered = false; /* a block freed later in the thread's exit registers the lists again */
}

static void make_exit_key(void)
{
    if (pthread_key_create(&exit_key, cache_drop) != 0)
        exit_key = (pthread_key_t)-1;
}

/* True when this thread's lists will be freed at its exit (so they may hold blocks). */
static bool cache_registered(void)
{
    if (tc.registered)
        return true;
    pthread_once(&exit_once, make_exit_key);
    if (exit_key == (pthread_key_t)-1 || pthread_setspecific(exit_key, &tc) != 0)
        return false;
    tc.registered = true;
    return true;
}

void *ag_event_mem_malloc(size_t n)
{
    int cls = class_of_request(n);
    if (cls < 0)
        return malloc(n);
    free_block *b = tc.head[cls];
    if (b) {
        tc.head[cls] = b->next;
        tc.bytes -= malloc_usable_size(b);
        tc.stats.hits++;
        return b;
    }
    tc.stats.misses++;
    return malloc(n);
}

void ag_event_mem_free(void *p)
{
    if (!p)
        return;
    size_t u = malloc_usable_size(p);
    int cls = class_of_block(u);
    if (cls >= 0 && tc.bytes + u <= AG_EVENT_MEM_CACHE_BYTES && cache_registered()) {
        free_block *b = p;
        b->next = tc.head[cls];
        tc.head[cls] = b;
        tc.bytes += u;
        return;
    }
    if (cls >= 0)
        tc.stats.released++;
    free(p);
}

void *ag_event_mem_realloc(void *p, size_t n)
{
    return realloc(p, n); /* every block is malloc's own, wherever it was cached */
}

void ag_event_mem_install(void)
{
    event_set_mem_functions(ag_event_mem_malloc, ag_event_mem_realloc, ag_event_mem_free);
}

ag_event_mem_stats ag_event_mem_thread_stats(void)
{
    ag_event_mem_stats s = tc.stats;
    s.cached_bytes = tc.bytes;
    return s;
}
