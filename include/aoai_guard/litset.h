/* A set of byte-string literals found in one pass over a text (Aho-Corasick automaton).
 *
 * Built once at policy load (add literals, then compile) and read-only afterwards, so any number of
 * threads may scan with the same set concurrently. The policy engine puts every keyword, every
 * regex prefilter literal and the prompt-injection anchors into one set and scans the case-folded
 * text once per string. The set owns its memory; ag_litset_free() releases it. */
#ifndef AOAI_GUARD_LITSET_H
#define AOAI_GUARD_LITSET_H

#include <stddef.h>
#include <stdint.h>

typedef struct ag_litset ag_litset;

/* Called for each occurrence: id as given to ag_litset_add, end = offset just past the match.
 * Return nonzero to stop the scan. */
typedef int (*ag_litset_cb)(void *arg, uint32_t id, size_t end);

/* Creates an empty set in the building state; NULL when out of memory. */
ag_litset *ag_litset_new(void);

/* Adds literal lit[0..len) (len >= 1) with a caller-chosen id; the same bytes may be added under
 * several ids. Returns 0, or -1 when out of memory, len is 0 or the set is already compiled. */
int ag_litset_add(ag_litset *ls, const char *lit, size_t len, uint32_t id);

/* Builds the automaton; no literal may be added afterwards. Returns 0 or -1 (out of memory). */
int ag_litset_compile(ag_litset *ls);

/* Number of literals added. */
size_t ag_litset_count(const ag_litset *ls);

/* Reports every occurrence of every literal in text[0..len) (overlapping ones included) in order
 * of their end offset. The set must be compiled; an empty set reports nothing. */
void ag_litset_scan(const ag_litset *ls, const char *text, size_t len, ag_litset_cb cb, void *arg);

/* Frees the set (NULL is fine). */
void ag_litset_free(ag_litset *ls);

#endif
