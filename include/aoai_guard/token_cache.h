/* Per-worker cache of verified tokens: SHA-256(token) -> identity, so a repeated token costs one hash
 * and one lookup instead of a JSON parse and an RSA verification.
 *
 * One cache per worker thread, owned by that worker: no locks inside, never share it between threads.
 * Capacity is fixed at creation (LRU eviction beyond it). An entry is valid until the time given at
 * insertion (the token's exp + clock skew) and only for the key-set generation it was verified with,
 * so a key rotation invalidates every entry verified under the old set. Entries hold a compact copy of
 * the identity (one allocation per insertion, freed on eviction); the cache owns it. */
#ifndef AOAI_GUARD_TOKEN_CACHE_H
#define AOAI_GUARD_TOKEN_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aoai_guard/identity.h"

#define AG_TOKEN_CACHE_KEY_LEN 32

typedef struct ag_token_cache ag_token_cache;

typedef struct ag_token_cache_stats {
    uint64_t hits;
    uint64_t misses;        /* includes expired and stale-generation lookups */
    uint64_t expired;       /* entries dropped because they outlived valid_until */
    uint64_t stale;         /* entries dropped because the key-set generation changed */
    uint64_t evictions;     /* LRU evictions at capacity */
    size_t size;
    size_t capacity;
} ag_token_cache_stats;

/* Creates a cache for capacity entries (1..10,000,000); NULL on 0 or allocation failure. Owned by the
 * caller: free with ag_token_cache_free. */
ag_token_cache *ag_token_cache_new(size_t capacity);
/* Frees the cache and every entry. NULL is a no-op. */
void ag_token_cache_free(ag_token_cache *c);

/* The cache key of a token: SHA-256 of its bytes. */
void ag_token_cache_key(const char *token, size_t len, unsigned char key[AG_TOKEN_CACHE_KEY_LEN]);

/* One connection's last bearer token and its cache key. A client sends the same token on every request
 * of a keep-alive connection; with the memo that costs one comparison of the bytes instead of SHA-256
 * over them (1-2 KB for an Entra token). The key is a pure function of the bytes, so the memo decides
 * nothing: expiry, key-set generation and eviction stay the cache's. Owned by the connection, zeroed at
 * start; tokens longer than AG_TOKEN_MEMO_MAX are hashed every time and not kept. */
#define AG_TOKEN_MEMO_MAX 8192

typedef struct ag_token_memo {
    char *token;                              /* copy of the last token; NULL before the first */
    size_t len, cap;
    unsigned char key[AG_TOKEN_CACHE_KEY_LEN];
} ag_token_memo;

/* The cache key of token (as ag_token_cache_key): taken from the memo when token is byte for byte
 * the memo's last one, else computed and remembered. m may be NULL (always computed). */
void ag_token_memo_key(ag_token_memo *m, const char *token, size_t len, unsigned char key[AG_TOKEN_CACHE_KEY_LEN]);
/* Wipes and frees the memo's copy; the memo is zero again. */
void ag_token_memo_free(ag_token_memo *m);

/* Looks key up: on a hit (entry present, now <= valid_until, same generation) copies the identity into
 * *out, marks the entry most recently used and returns true. An expired or stale entry is dropped. */
bool ag_token_cache_get(ag_token_cache *c, const unsigned char key[AG_TOKEN_CACHE_KEY_LEN], uint64_t generation,
                        long long now, ag_identity *out);

/* Inserts or replaces key -> identity, valid until valid_until for generation; evicts the least recently
 * used entry when full. Returns 0, or -1 on allocation failure (the cache is unchanged then). */
int ag_token_cache_put(ag_token_cache *c, const unsigned char key[AG_TOKEN_CACHE_KEY_LEN], uint64_t generation,
                       long long valid_until, const ag_identity *id);

/* Drops every entry (e.g. after an auth configuration change). */
void ag_token_cache_clear(ag_token_cache *c);

/* Counters and size, for metrics. */
void ag_token_cache_get_stats(const ag_token_cache *c, ag_token_cache_stats *out);

#endif
