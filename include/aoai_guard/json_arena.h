/* Arenas for parsed JSON: the nodes and strings of a request body or a held response come from a
 * bump allocator owned by the request and go back all at once when the request ends, instead of
 * one malloc and one free each (a chat completion response is a few hundred of them).
 *
 * How it works: ag_json_hooks_install() gives cJSON allocation hooks that put a 16-byte tag in
 * front of every block. While a thread is inside ag_json_arena_enter()/leave(), its cJSON
 * allocations come from that arena; everywhere else, and on every other thread, from malloc. The
 * free hook reads the tag: malloc'd blocks are freed, arena blocks are left for the arena.
 *
 * The rules that follow, for the whole program once the hooks are installed:
 *  - memory cJSON allocated (printed text, valuestring, node keys) is freed with cJSON_free or
 *    cJSON_Delete, never with free(); and cJSON is never handed a block from malloc to own.
 *  - a tree with nodes from an arena is deleted (or never touched again) before the arena is
 *    reset or freed. Nodes added to it later, and strings replaced in it, come from malloc and
 *    are freed by cJSON_Delete as usual.
 *  - enter/leave bracket a parse only: nothing from inside may be freed on another thread while
 *    the arena lives, and nothing long-lived (the audit record, a cache) may point into it. */
#ifndef AOAI_GUARD_JSON_ARENA_H
#define AOAI_GUARD_JSON_ARENA_H

#include <stddef.h>

typedef struct ag_json_chunk ag_json_chunk;

/* Zero-initialised is an empty arena. Owned by one request; used by one thread at a time. */
typedef struct ag_json_arena {
    ag_json_chunk *chunks; /* newest first */
    char *cur, *end;       /* free space in the newest chunk */
} ag_json_arena;

/* Installs the tagging hooks in cJSON. Call once, before any thread uses cJSON. */
void ag_json_hooks_install(void);

/* This thread's cJSON allocations come from a until ag_json_arena_leave(). Not nestable. */
void ag_json_arena_enter(ag_json_arena *a);
void ag_json_arena_leave(void);

/* Releases everything allocated from a; keeps one chunk of at most AG_JSON_ARENA_KEEP bytes for
 * the next use, so a request of the usual size allocates nothing. */
#define AG_JSON_ARENA_KEEP (32 * 1024)
void ag_json_arena_reset(ag_json_arena *a);

/* Releases every chunk; a is empty afterwards. */
void ag_json_arena_free(ag_json_arena *a);

/* A mark of this thread's cJSON allocations from malloc. Two equal marks, taken on the same
 * thread, mean cJSON took nothing from malloc in between: a tree parsed in an arena just before
 * the first mark and not handed to another thread has no block that cJSON_Delete would free, and
 * resetting the arena is all that releasing it takes. (That rests on the rule above: what joins
 * a tree later is allocated when it joins; a node older than the tree is never moved into it.) */
typedef struct ag_json_heap_mark {
    const void *thread; /* identifies the thread */
    unsigned long long count;
} ag_json_heap_mark;

ag_json_heap_mark ag_json_heap_mark_now(void);
int ag_json_heap_mark_same(ag_json_heap_mark a, ag_json_heap_mark b);

/* Bytes the arena holds (its chunks), for tests. */
size_t ag_json_arena_capacity(const ag_json_arena *a);

#endif
