/* Per-worker LRU cache of verified tokens (see token_cache.h).
 *
 * Layout: a fixed array of entries, a power-of-two bucket array of chain heads (SHA-256 keys are
 * uniform, so the first 8 bytes are the hash), and an intrusive doubly linked LRU list; links are
 * 32-bit indices. The identity is stored packed (its strings back to back) to keep 10,000 entries
 * in a few MB instead of 27. */
#include "aoai_guard/token_cache.h"

#include <pthread.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <stdlib.h>
#include <string.h>
#include <openssl/sha.h>

#define NIL UINT32_MAX

typedef struct cache_entry {
    unsigned char key[AG_TOKEN_CACHE_KEY_LEN];
    uint64_t generation;
    long long valid_until;
    uint32_t hnext;      /* next in the bucket chain, or in the free list */
    uint32_t prev, next; /* LRU list: prev toward the most recent */
    unsigned char *blob; /* packed identity; NULL when the entry is free */
} cache_entry;

struct ag_token_cache {
    cache_entry *e;
    uint32_t *buckets;
    size_t mask;
    size_t capacity, size;
    uint32_t free_head;
    uint32_t mru, lru;
    ag_token_cache_stats st;
};

ag_token_cache *ag_token_cache_new(size_t capacity)
{
    if (capacity == 0 || capacity > 10000000)
        return NULL;
    ag_token_cache *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    size_t nb = 16;
    while (nb < capacity)
        nb <<= 1;
    c->e = calloc(capacity, sizeof *c->e);
    c->buckets = malloc(nb * sizeof *c->buckets);
    if (!c->e || !c->buckets) {
        free(c->e);
        free(c->buckets);
        free(c);
        return NULL;
    }
    for (size_t i = 0; i < nb; i++)
        c->buckets[i] = NIL;
    c->mask = nb - 1;
    c->capacity = capacity;
    c->st.capacity = capacity;
    for (size_t i = 0; i < capacity; i++)
        c->e[i].hnext = i + 1 < capacity ? (uint32_t)(i + 1) : NIL;
    c->free_head = 0;
    c->mru = c->lru = NIL;
    return c;
}

void ag_token_cache_free(ag_token_cache *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->capacity; i++)
        free(c->e[i].blob);
    free(c->e);
    free(c->buckets);
    free(c);
}

static EVP_MD *sha256_md;

static void fetch_sha256(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

void ag_token_cache_key(const char *token, size_t len, unsigned char key[AG_TOKEN_CACHE_KEY_LEN])
{
    /* The digest is fetched once: SHA256() looks the algorithm up in OpenSSL 3 on every call. */
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, fetch_sha256);
    if (!sha256_md || EVP_Digest(token, len, key, NULL, sha256_md, NULL) != 1)
        SHA256((const unsigned char *)token, len, key);
}

void ag_token_memo_key(ag_token_memo *m, const char *token, size_t len, unsigned char key[AG_TOKEN_CACHE_KEY_LEN])
{
    if (m && m->token && m->len == len && memcmp(m->token, token, len) == 0) {
        memcpy(key, m->key, AG_TOKEN_CACHE_KEY_LEN);
        return;
    }
    ag_token_cache_key(token, len, key);
    if (!m || len > AG_TOKEN_MEMO_MAX)
        return;
    if (m->cap < len) {
        ag_token_memo_free(m);
        size_t cap = len < 2048 ? 2048 : len; /* most Entra tokens fit: one allocation per connection */
        m->token = malloc(cap);
        if (!m->token)
            return; /* only costs speed */
        m->cap = cap;
    } else if (m->len > len) {
        OPENSSL_cleanse(m->token + len, m->len - len); /* no tail of an older token is left behind */
    }
    memcpy(m->token, token, len);
    m->len = len;
    memcpy(m->key, key, AG_TOKEN_CACHE_KEY_LEN);
}

void ag_token_memo_free(ag_token_memo *m)
{
    if (m->token) {
        OPENSSL_cleanse(m->token, m->cap);
        free(m->token);
    }
    memset(m, 0, sizeof *m);
}

static size_t bucket_of(const ag_token_cache *c, const unsigned char *key)
{
    uint64_t h;
    memcpy(&h, key, sizeof h);
    return (size_t)(h & c->mask);
}

static void lru_unlink(ag_token_cache *c, uint32_t i)
{
    cache_entry *x = &c->e[i];
    if (x->prev != NIL)
        c->e[x->prev].next = x->next;
    else
        c->mru = x->next;
    if (x->next != NIL)
        c->e[x->next].prev = x->prev;
    else
        c->lru = x->prev;
}

static void lru_push_front(ag_token_cache *c, uint32_t i)
{
    cache_entry *x = &c->e[i];
    x->prev = NIL;
    x->next = c->mru;
    if (c->mru != NIL)
        c->e[c->mru].prev = i;
    c->mru = i;
    if (c->lru == NIL)
        c->lru = i;
}

/* Index of the entry holding key, or NIL; *link receives the pointer that references it. */
static uint32_t find(ag_token_cache *c, const unsigned char *key, uint32_t **link)
{
    uint32_t *l = &c->buckets[bucket_of(c, key)];
    while (*l != NIL) {
        if (memcmp(c->e[*l].key, key, AG_TOKEN_CACHE_KEY_LEN) == 0) {
            *link = l;
            return *l;
        }
        l = &c->e[*l].hnext;
    }
    return NIL;
}

/* Unlinks entry i from its chain and the LRU list and returns it to the free list. */
static void drop(ag_token_cache *c, uint32_t i)
{
    uint32_t *link = NULL;
    if (find(c, c->e[i].key, &link) == i)
        *link = c->e[i].hnext;
    lru_unlink(c, i);
    free(c->e[i].blob);
    c->e[i].blob = NULL;
    c->e[i].hnext = c->free_head;
    c->free_head = i;
    c->size--;
}

/* Packed identity: kind, exp, then tid oid app upn name roles scp, each NUL-terminated. */
static unsigned char *pack(const ag_identity *id)
{
    const char *f[] = {id->tid, id->oid, id->app, id->upn, id->name, id->roles, id->scp};
    size_t lens[7], total = 1 + sizeof id->exp;
    for (size_t i = 0; i < 7; i++)
        total += (lens[i] = strlen(f[i])) + 1;
    unsigned char *b = malloc(total), *p = b;
    if (!b)
        return NULL;
    *p++ = (unsigned char)id->kind;
    memcpy(p, &id->exp, sizeof id->exp);
    p += sizeof id->exp;
    for (size_t i = 0; i < 7; i++) {
        memcpy(p, f[i], lens[i] + 1);
        p += lens[i] + 1;
    }
    return b;
}

static void unpack(const unsigned char *b, ag_identity *id)
{
    memset(id, 0, sizeof *id);
    char *f[] = {id->tid, id->oid, id->app, id->upn, id->name, id->roles, id->scp};
    id->kind = (ag_identity_kind)*b++;
    memcpy(&id->exp, b, sizeof id->exp);
    b += sizeof id->exp;
    for (size_t i = 0; i < 7; i++) {
        size_t n = strlen((const char *)b);
        memcpy(f[i], b, n + 1); /* fits: packed from a field of the same size */
        b += n + 1;
    }
}

bool ag_token_cache_get(ag_token_cache *c, const unsigned char key[AG_TOKEN_CACHE_KEY_LEN], uint64_t generation,
                        long long now, ag_identity *out)
{
    uint32_t *link;
    uint32_t i = find(c, key, &link);
    if (i == NIL) {
        c->st.misses++;
        return false;
    }
    cache_entry *x = &c->e[i];
    if (x->generation != generation || now > x->valid_until) {
        if (x->generation != generation)
            c->st.stale++;
        else
            c->st.expired++;
        c->st.misses++;
        drop(c, i);
        return false;
    }
    if (c->mru != i) {
        lru_unlink(c, i);
        lru_push_front(c, i);
    }
    unpack(x->blob, out);
    c->st.hits++;
    return true;
}

int ag_token_cache_put(ag_token_cache *c, const unsigned char key[AG_TOKEN_CACHE_KEY_LEN], uint64_t generation,
                       long long valid_until, const ag_identity *id)
{
    unsigned char *blob = pack(id);
    if (!blob)
        return -1;
    uint32_t *link;
    uint32_t i = find(c, key, &link);
    if (i != NIL) {
        free(c->e[i].blob);
        lru_unlink(c, i);
    } else {
        if (c->free_head == NIL) {
            drop(c, c->lru);
            c->st.evictions++;
        }
        i = c->free_head;
        c->free_head = c->e[i].hnext;
        memcpy(c->e[i].key, key, AG_TOKEN_CACHE_KEY_LEN);
        uint32_t *head = &c->buckets[bucket_of(c, key)];
        c->e[i].hnext = *head;
        *head = i;
        c->size++;
    }
    c->e[i].blob = blob;
    c->e[i].generation = generation;
    c->e[i].valid_until = valid_until;
    lru_push_front(c, i);
    return 0;
}

void ag_token_cache_clear(ag_token_cache *c)
{
    while (c->lru != NIL)
        drop(c, c->lru);
}

void ag_token_cache_get_stats(const ag_token_cache *c, ag_token_cache_stats *out)
{
    *out = c->st;
    out->size = c->size;
    out->capacity = c->capacity;
}
