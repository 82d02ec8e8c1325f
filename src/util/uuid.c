/* Version-4 UUIDs from a per-thread generator (see uuid.h). */
#include "aoai_guard/uuid.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

static _Thread_local uint64_t state[4];
static _Thread_local bool seeded;

static uint64_t rotl64(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

/* xoshiro256** (Blackman and Vigna). */
static uint64_t next(void)
{
    uint64_t *s = state;
    uint64_t result = rotl64(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

static void seed(void)
{
    if (RAND_bytes((unsigned char *)state, sizeof state) != 1) {
        /* No DRBG: time, the thread and an address still make each thread's sequence distinct. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        state[0] = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32);
        state[1] = (uint64_t)(uintptr_t)&ts;
        state[2] = (uint64_t)pthread_self();
        state[3] = 0x9e3779b97f4a7c15ull;
    }
    if (!(state[0] | state[1] | state[2] | state[3]))
        state[0] = 1; /* the one state xoshiro cannot leave */
    seeded = true;
}

void ag_uuid4(char out[37])
{
    if (!seeded)
        seed();
    unsigned char b[16];
    uint64_t a = next(), c = next();
    memcpy(b, &a, 8);
    memcpy(b + 8, &c, 8);
    b[6] = (unsigned char)((b[6] & 0x0F) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3F) | 0x80);
    static const char hex[] = "0123456789abcdef";
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *o++ = '-';
        *o++ = hex[b[i] >> 4];
        *o++ = hex[b[i] & 15];
    }
    *o = '\0';
}
