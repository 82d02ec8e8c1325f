/* libevent's allocation functions with a per-thread block cache (see event_mem.h). */
#include "aoai_guard/event_mem.h"

#include <pthread.h>
#include <stdalign.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#define MIN_SHIFT 10 /* 1 KiB: libevent's smallest evbuffer chain */
#define NCLASS 7     /* 1 KiB .. 64 KiB */
#define CLASS_HEAP 0xffffu

#define MAGIC UINT32_C(0x65766d31) /* "evm1" */

typedef struct header {
    alignas(16) uint32_t magic;
    uint32_t cls; /* 0..NCLASS-1, or CLASS_HEAP: size of its own, from malloc */
    size_t size;  /* bytes after the header */
} header;

typedef struct free_block {
    struct free_block *next;
} free_block;

typedef struct thread_cache {
    free_block *head[NCLASS];
    size_t bytes;
    bool registered; /* the exit destructor knows this thread's cache */
    ag_event_mem_stats stats;
} thread_cache;

static _Thread_local thread_cache tc;
static pthread_key_t exit_key;
static pthread_once_t exit_once = PTHREAD_ONCE_INIT;

static size_t class_size(unsigned cls)
{
    return (size_t)1 << (MIN_SHIFT + cls);
}

/* The class of an allocation of n bytes: only the exact powers of two libevent uses for its
 * chains are cached, so no block is ever larger than what was asked. */
static unsigned class_of(size_t n)
{
    if (n < class_size(0) || n > class_size(NCLASS - 1) || (n & (n - 1)) != 0)
        return CLASS_HEAP;
    unsigned cls = 0;
    while (class_size(cls) < n)
        cls++;
    return cls;
}

static void cache_drop(void *arg)
{
    thread_cache *c = arg;
    for (unsigned i = 0; i < NCLASS; i++) {
        free_block *b = c->head[i];
        while (b) {
            free_block *next = b->next;
            free((header *)b - 1);
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

static void *block_new(unsigned cls, size_t n)
{
    if (n > SIZE_MAX - sizeof(header))
        return NULL;
    header *h = malloc(sizeof *h + n);
    if (!h)
        return NULL;
    h->magic = MAGIC;
    h->cls = cls;
    h->size = n;
    return h + 1;
}

static header *header_of(void *p)
{
    header *h = (header *)p - 1;
    if (h->magic != MAGIC) {
        /* A block libevent did not get from these functions: a broken rule of event_mem.h. */
        fprintf(stderr, "aoai-guard: libevent freed a block it did not allocate here\n");
        abort();
    }
    return h;
}

void *ag_event_mem_malloc(size_t n)
{
    unsigned cls = class_of(n);
    if (cls == CLASS_HEAP)
        return block_new(CLASS_HEAP, n);
    free_block *b = tc.head[cls];
    if (b) {
        tc.head[cls] = b->next;
        tc.bytes -= class_size(cls);
        tc.stats.hits++;
        return b;
    }
    tc.stats.misses++;
    return block_new(cls, class_size(cls));
}

void ag_event_mem_free(void *p)
{
    if (!p)
        return;
    header *h = header_of(p);
    unsigned cls = h->cls;
    if (cls != CLASS_HEAP && tc.bytes + class_size(cls) <= AG_EVENT_MEM_CACHE_BYTES && cache_registered()) {
        free_block *b = p;
        b->next = tc.head[cls];
        tc.head[cls] = b;
        tc.bytes += class_size(cls);
        return;
    }
    if (cls != CLASS_HEAP)
        tc.stats.released++;
    h->magic = 0; /* a second free of it then stops in header_of */
    free(h);
}

void *ag_event_mem_realloc(void *p, size_t n)
{
    if (!p)
        return ag_event_mem_malloc(n);
    header *h = header_of(p);
    if (h->cls == CLASS_HEAP && class_of(n) == CLASS_HEAP) {
        if (n > SIZE_MAX - sizeof(header))
            return NULL;
        header *g = realloc(h, sizeof *g + n);
        if (!g)
            return NULL;
        g->size = n;
        return g + 1;
    }
    if (h->cls != CLASS_HEAP && n <= class_size(h->cls) && class_of(n) == h->cls)
        return p;
    /* Between a cached class and another size: a new block, the bytes, the old one freed. */
    void *q = ag_event_mem_malloc(n);
    if (!q)
        return NULL;
    memcpy(q, p, h->size < n ? h->size : n);
    ag_event_mem_free(p);
    return q;
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
