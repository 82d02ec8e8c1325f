/* ag_event_mem: libevent's chains come back from the thread's cache, bytes survive realloc across
 * sizes, the cache stays within its bound, blocks freed on another thread are kept there and
 * released when it exits, and blocks libevent got before the functions were installed (plain
 * malloc) may be freed through them. Run under AddressSanitizer, an overrun (a cached block handed
 * out for more than it holds), a wrong free or a leak fails the test. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "aoai_guard/event_mem.h"
#include "check.h"

/* An evbuffer that takes 700 bytes and is drained, many times: the data path's pattern. */
static void test_chains_come_back(void)
{
    struct evbuffer *b = evbuffer_new();
    char data[700];
    memset(data, 'x', sizeof data);
    ag_event_mem_stats before = ag_event_mem_thread_stats();
    for (int i = 0; i < 1000; i++) {
        CHECK(evbuffer_add(b, data, sizeof data) == 0);
        CHECK(evbuffer_drain(b, sizeof data) == 0);
    }
    ag_event_mem_stats after = ag_event_mem_thread_stats();
    /* Every chain after the first is a cached one. */
    CHECK(after.hits - before.hits >= 999);
    CHECK(after.misses - before.misses <= 1);
    evbuffer_free(b);
}

static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(seed + i * 7);
}

static int same(const unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(seed + i * 7))
            return 0;
    return 1;
}

/* realloc between odd sizes (malloc) and cached classes, growing and shrinking. */
static void test_realloc_keeps_bytes(void)
{
    const size_t sizes[] = {100, 2048, 5000, 1024, 300, 65536, 65537, 4096, 4096, 17, 1 << 20, 8192};
    unsigned char *p = ag_event_mem_malloc(10);
    fill(p, 10, 3);
    size_t have = 10;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        p = ag_event_mem_realloc(p, n);
        CHECK(p != NULL);
        size_t keep = have < n ? have : n;
        CHECK(same(p, keep, 3));
        fill(p, n, 3); /* writes the whole new size: an overrun shows under ASan */
        have = n;
    }
    ag_event_mem_free(p);
    ag_event_mem_free(NULL);
    void *q = ag_event_mem_realloc(NULL, 2048); /* realloc(NULL) is malloc */
    CHECK(q != NULL);
    ag_event_mem_free(q);
}

/* The lists hold at most AG_EVENT_MEM_CACHE_BYTES; the rest goes back to malloc. */
static void test_cache_is_bounded(void)
{
    enum { N = 40 };
    void *blocks[N];
    for (int i = 0; i < N; i++) {
        blocks[i] = ag_event_mem_malloc(65536);
        memset(blocks[i], i, 65536);
    }
    ag_event_mem_stats before = ag_event_mem_thread_stats();
    for (int i = 0; i < N; i++)
        ag_event_mem_free(blocks[i]);
    ag_event_mem_stats after = ag_event_mem_thread_stats();
    CHECK(after.cached_bytes <= AG_EVENT_MEM_CACHE_BYTES);
    CHECK(after.cached_bytes > before.cached_bytes);
    CHECK(after.released - before.released >= (uint64_t)(N - AG_EVENT_MEM_CACHE_BYTES / 65536));
    /* Taken again, the cached ones are hits. */
    void *again = ag_event_mem_malloc(65536);
    CHECK(ag_event_mem_thread_stats().hits == after.hits + 1);
    ag_event_mem_free(again);
}

struct handoff {
    void *blocks[64];
    size_t cached_in_thread;
};

/* Allocated here, freed by another thread that then exits: its lists go with it (a leak would
 * show under LeakSanitizer). */
static void *free_elsewhere(void *arg)
{
    struct handoff *h = arg;
    for (int i = 0; i < 64; i++)
        ag_event_mem_free(h->blocks[i]);
    h->cached_in_thread = ag_event_mem_thread_stats().cached_bytes;
    return NULL;
}

static void test_free_on_another_thread(void)
{
    struct handoff h;
    for (int i = 0; i < 64; i++)
        h.blocks[i] = ag_event_mem_malloc(i % 2 ? 2048 : 333);
    size_t mine = ag_event_mem_thread_stats().cached_bytes;
    pthread_t t;
    CHECK(pthread_create(&t, NULL, free_elsewhere, &h) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(h.cached_in_thread >= 32 * 2048 && h.cached_in_thread < 32 * 4096); /* usable sizes */
    CHECK_INT(ag_event_mem_thread_stats().cached_bytes, mine);
}

/* libevent running on the functions: a base, an event, a buffer on a worker thread. */
static void *loop_thread(void *arg)
{
    (void)arg;
    struct event_base *base = event_base_new();
    if (!base)
        return (void *)1;
    struct evbuffer *b = evbuffer_new();
    for (int i = 0; i < 100; i++) {
        char line[3000];
        memset(line, 'a' + i % 26, sizeof line);
        evbuffer_add(b, line, sizeof line);
        if (i % 3 == 2)
            evbuffer_drain(b, evbuffer_get_length(b));
    }
    evbuffer_free(b);
    struct timeval tv = {0, 1000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
    event_base_free(base);
    return NULL;
}

static void test_libevent_on_threads(void)
{
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        CHECK(pthread_create(&t[i], NULL, loop_thread, NULL) == 0);
    for (int i = 0; i < 2; i++) {
        void *rv = (void *)1;
        CHECK(pthread_join(t[i], &rv) == 0);
        CHECK(rv == NULL);
    }
}

/* Any malloc'd block may come through: it is filed by what it holds (a 1500-byte block serves
 * 1 KiB requests, never 2 KiB ones), and odd sizes go back to free(). */
static void test_any_malloc_block(void)
{
    ag_event_mem_stats before = ag_event_mem_thread_stats();
    ag_event_mem_free(malloc(1500));
    ag_event_mem_free(malloc(100));
    ag_event_mem_stats mid = ag_event_mem_thread_stats();
    CHECK(mid.cached_bytes >= before.cached_bytes + 1500);
    char *b = ag_event_mem_malloc(2048); /* not the 1500-byte block: it holds less */
    memset(b, 1, 2048);
    char *a = ag_event_mem_malloc(1024);
    memset(a, 2, 1024);
    ag_event_mem_free(a);
    ag_event_mem_free(b);
}

int main(void)
{
    ag_event_mem_install();
    test_chains_come_back();
    test_realloc_keeps_bytes();
    test_cache_is_bounded();
    test_free_on_another_thread();
    test_libevent_on_threads();
    test_any_malloc_block();
    return CHECK_DONE();
}
