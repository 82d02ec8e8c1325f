/* ag_json_arena: trees parsed in an arena mix with malloc'd nodes and strings, chunks are kept
 * and reused within the bound, other threads are not affected, and a foreign free stops the
 * process. Run under AddressSanitizer, a wrong free or a leak fails the test. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "aoai_guard/json_arena.h"
#include "check.h"

static const char doc[] =
    "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},"
    "{\"role\":\"assistant\",\"content\":\"hello there\"}],\"stream\":false,\"n\":1}";

static cJSON *parse_in(ag_json_arena *a, const char *text, size_t len)
{
    ag_json_arena_enter(a);
    cJSON *j = cJSON_ParseWithLength(text, len);
    ag_json_arena_leave();
    return j;
}

/* A JSON array of n small objects: a document needing several chunks. */
static char *big_doc(size_t n, size_t *len)
{
    size_t cap = n * 32 + 16, off = 0;
    char *s = malloc(cap);
    s[off++] = '[';
    for (size_t i = 0; i < n; i++)
        off += (size_t)snprintf(s + off, cap - off, "%s{\"k\":%zu,\"v\":\"x%zu\"}", i ? "," : "", i, i);
    s[off++] = ']';
    s[off] = '\0';
    *len = off;
    return s;
}

typedef struct thread_arg {
    ag_json_arena *arena;
    cJSON *tree; /* parsed by the thread outside any arena */
} thread_arg;

static void *other_thread(void *p)
{
    thread_arg *t = p;
    t->tree = cJSON_Parse(doc); /* this thread is not inside the main thread's arena */
    return NULL;
}

static void *mark_on_thread(void *arg)
{
    *(ag_json_heap_mark *)arg = ag_json_heap_mark_now();
    return NULL;
}

/* The heap mark: unchanged by arena parses, moved by every heap block cJSON takes on this
 * thread, and never equal to a mark from another thread. An arena tree released by a reset
 * alone (no cJSON_Delete) leaks nothing under LeakSanitizer. */
static void test_heap_mark(ag_json_arena *a)
{
    ag_json_heap_mark m0 = ag_json_heap_mark_now();
    cJSON *j = parse_in(a, doc, sizeof doc - 1);
    CHECK(j != NULL);
    ag_json_heap_mark m1 = ag_json_heap_mark_now();
    CHECK(ag_json_heap_mark_same(m0, m1)); /* the parse took nothing from malloc */
    CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "stream")) == 0);
    CHECK(ag_json_heap_mark_same(m1, ag_json_heap_mark_now())); /* reading takes nothing */
    ag_json_arena_reset(a); /* released without cJSON_Delete */

    j = parse_in(a, doc, sizeof doc - 1);
    m1 = ag_json_heap_mark_now();
    CHECK(cJSON_AddTrueToObject(j, "x") != NULL); /* a node and its key from malloc */
    CHECK(!ag_json_heap_mark_same(m1, ag_json_heap_mark_now()));
    cJSON_Delete(j); /* what the mark says to do: the heap node goes */
    ag_json_arena_reset(a);

    j = parse_in(a, doc, sizeof doc - 1);
    m1 = ag_json_heap_mark_now();
    cJSON *model = cJSON_GetObjectItemCaseSensitive(j, "model");
    CHECK(cJSON_SetValuestring(model, "a-much-longer-deployment-name-than-before") != NULL);
    CHECK(!ag_json_heap_mark_same(m1, ag_json_heap_mark_now()));
    cJSON_Delete(j);
    ag_json_arena_reset(a);

    ag_json_heap_mark other;
    pthread_t t;
    CHECK(pthread_create(&t, NULL, mark_on_thread, &other) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(!ag_json_heap_mark_same(other, ag_json_heap_mark_now()));
}

int main(void)
{
    ag_json_hooks_install();
    ag_json_arena a = {0};
    test_heap_mark(&a);

    /* A tree from the arena, changed with heap strings and nodes, printed, deleted. */
    cJSON *j = parse_in(&a, doc, sizeof doc - 1);
    CHECK(j != NULL);
    size_t cap1 = ag_json_arena_capacity(&a);
    CHECK(cap1 > 0 && cap1 <= AG_JSON_ARENA_KEEP);
    cJSON *model = cJSON_GetObjectItemCaseSensitive(j, "model");
    CHECK(cJSON_SetValuestring(model, "a-much-longer-deployment-name-than-before") != NULL); /* heap */
    CHECK(cJSON_SetValuestring(model, "short") != NULL); /* in place */
    CHECK(cJSON_AddStringToObject(j, "user", "someone") != NULL);              /* heap node */
    cJSON *msgs = cJSON_GetObjectItemCaseSensitive(j, "messages");
    cJSON_Delete(cJSON_DetachItemFromArray(msgs, 0)); /* arena nodes freed early: no-op */
    char *out = cJSON_PrintUnformatted(j);
    CHECK(out != NULL);
    CHECK(strstr(out, "\"model\":\"short\"") != NULL);
    CHECK(strstr(out, "\"user\":\"someone\"") != NULL);
    CHECK(strstr(out, "\"hi\"") == NULL);
    cJSON_free(out);
    cJSON_Delete(j);
    ag_json_arena_reset(&a);
    CHECK_INT(ag_json_arena_capacity(&a), cap1);

    /* The kept chunk serves the next document of the same size without growing. */
    for (int i = 0; i < 100; i++) {
        j = parse_in(&a, doc, sizeof doc - 1);
        CHECK(j != NULL);
        cJSON_Delete(j);
        ag_json_arena_reset(&a);
    }
    CHECK_INT(ag_json_arena_capacity(&a), cap1);

    /* A large document takes several chunks; reset keeps one of at most AG_JSON_ARENA_KEEP. */
    size_t blen;
    char *big = big_doc(20000, &blen);
    j = parse_in(&a, big, blen);
    CHECK(j != NULL);
    CHECK_INT(cJSON_GetArraySize(j), 20000);
    CHECK(ag_json_arena_capacity(&a) > 1024 * 1024);
    cJSON *last = cJSON_GetArrayItem(j, 19999);
    CHECK_STR(cJSON_GetObjectItemCaseSensitive(last, "v")->valuestring, "x19999");
    cJSON_Delete(j);
    ag_json_arena_reset(&a);
    CHECK(ag_json_arena_capacity(&a) > 0 && ag_json_arena_capacity(&a) <= AG_JSON_ARENA_KEEP);

    /* A failed parse inside the arena leaves nothing behind that needs freeing. */
    CHECK(parse_in(&a, "{\"a\":[1,2,", 10) == NULL);
    ag_json_arena_reset(&a);

    /* Outside the arena, on this thread and another, cJSON allocates from malloc: those trees
     * outlive the arena (ASan would report a use after free otherwise). */
    thread_arg t = {&a, NULL};
    ag_json_arena_enter(&a); /* this thread inside: the other thread must not use it */
    pthread_t th;
    CHECK_INT(pthread_create(&th, NULL, other_thread, &t), 0);
    CHECK_INT(pthread_join(th, NULL), 0);
    ag_json_arena_leave();
    cJSON *mine = cJSON_Parse(doc);
    ag_json_arena_free(&a);
    CHECK_INT(ag_json_arena_capacity(&a), 0);
    CHECK(t.tree != NULL && mine != NULL);
    CHECK_STR(cJSON_GetObjectItemCaseSensitive(t.tree, "model")->valuestring, "gpt-4o");
    CHECK_STR(cJSON_GetObjectItemCaseSensitive(mine, "model")->valuestring, "gpt-4o");
    cJSON_Delete(t.tree);
    cJSON_Delete(mine);
    free(big);

    /* cJSON freeing memory it did not allocate stops the process instead of corrupting it. */
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        char *foreign = calloc(1, 64); /* readable bytes before the block: the tag reads as 0 */
        cJSON_free(foreign + 32);
        _exit(0);
    }
    int st = 0;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    return CHECK_DONE();
}
