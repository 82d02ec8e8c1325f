/* Arenas for parsed JSON and the cJSON hooks that serve them (see json_arena.h). */
#include "aoai_guard/json_arena.h"

#include <stdalign.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cjson/cJSON.h>

/* Every block cJSON gets is preceded by this tag; 16 bytes keep the block max-aligned. */
typedef struct tag {
    alignas(16) uint64_t kind;
} tag;

#define KIND_HEAP UINT64_C(0x48454150484541b1)  /* from malloc: freed by the free hook */
#define KIND_ARENA UINT64_C(0x4152454e4152b2a5) /* from an arena: released with the arena */

struct ag_json_chunk {
    ag_json_chunk *next;
    size_t size; /* bytes of data[] */
    alignas(16) char data[];
};

#define CHUNK_MIN (8 * 1024)
#define CHUNK_MAX_STEP (1024 * 1024)

static _Thread_local ag_json_arena *current;
static _Thread_local unsigned long long heap_allocs; /* cJSON's blocks from malloc, this thread */

static ag_json_chunk *chunk_new(size_t size)
{
    ag_json_chunk *c = malloc(sizeof *c + size);
    if (!c)
        return NULL;
    c->size = size;
    c->next = NULL;
    return c;
}

/* n bytes (a multiple of 16) from a, in a new chunk when the current one is short. */
static void *arena_take(ag_json_arena *a, size_t n)
{
    if ((size_t)(a->end - a->cur) < n) {
        size_t size = a->chunks ? a->chunks->size * 2 : CHUNK_MIN;
        if (size > CHUNK_MAX_STEP)
            size = CHUNK_MAX_STEP;
        if (size < n)
            size = n;
        ag_json_chunk *c = chunk_new(size);
        if (!c)
            return NULL;
        c->next = a->chunks;
        a->chunks = c;
        a->cur = c->data;
        a->end = c->data + size;
    }
    void *p = a->cur;
    a->cur += n;
    return p;
}

static void *hook_malloc(size_t size)
{
    if (size > SIZE_MAX - 2 * sizeof(tag))
        return NULL;
    size_t n = (sizeof(tag) + size + 15) & ~(size_t)15;
    tag *t;
    if (current) {
        t = arena_take(current, n);
        if (!t)
            return NULL;
        t->kind = KIND_ARENA;
    } else {
        t = malloc(n);
        if (!t)
            return NULL;
        t->kind = KIND_HEAP;
        heap_allocs++;
    }
    return t + 1;
}

static void hook_free(void *p)
{
    if (!p)
        return;
    tag *t = (tag *)p - 1;
    if (t->kind == KIND_HEAP) {
        t->kind = 0; /* a second free of the same block then stops below instead of corrupting */
        free(t);
    } else if (t->kind != KIND_ARENA) {
        /* Freed memory cJSON did not allocate: a broken rule of json_arena.h. Stop loudly. */
        fprintf(stderr, "aoai-guard: cJSON freed a block it did not allocate\n");
        abort();
    }
}

void ag_json_hooks_install(void)
{
    cJSON_Hooks hooks = {.malloc_fn = hook_malloc, .free_fn = hook_free};
    cJSON_InitHooks(&hooks);
}

void ag_json_arena_enter(ag_json_arena *a)
{
    current = a;
}

void ag_json_arena_leave(void)
{
    current = NULL;
}

void ag_json_arena_reset(ag_json_arena *a)
{
    ag_json_chunk *keep = NULL;
    for (ag_json_chunk *c = a->chunks; c; c = c->next)
        if (c->size <= AG_JSON_ARENA_KEEP && (!keep || c->size > keep->size))
            keep = c;
    ag_json_chunk *c = a->chunks;
    while (c) {
        ag_json_chunk *next = c->next;
        if (c != keep)
            free(c);
        c = next;
    }
    a->chunks = keep;
    if (keep) {
        keep->next = NULL;
        a->cur = keep->data;
        a->end = keep->data + keep->size;
    } else {
        a->cur = a->end = NULL;
    }
}

void ag_json_arena_free(ag_json_arena *a)
{
    ag_json_chunk *c = a->chunks;
    while (c) {
        ag_json_chunk *next = c->next;
        free(c);
        c = next;
    }
    a->chunks = NULL;
    a->cur = a->end = NULL;
}

ag_json_heap_mark ag_json_heap_mark_now(void)
{
    return (ag_json_heap_mark){.thread = &heap_allocs, .count = heap_allocs};
}

int ag_json_heap_mark_same(ag_json_heap_mark a, ag_json_heap_mark b)
{
    return a.thread == b.thread && a.count == b.count;
}

size_t ag_json_arena_capacity(const ag_json_arena *a)
{
    size_t n = 0;
    for (const ag_json_chunk *c = a->chunks; c; c = c->next)
        n += c->size;
    return n;
}
