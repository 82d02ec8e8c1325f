/* Version-4 UUIDs for request ids and audit record ids: unique, not secret. Each thread draws them
 * from its own xoshiro256** generator, seeded once from the OpenSSL DRBG (RAND_bytes per id cost a
 * getpid(2) for its fork check and a DRBG round, on every request and every audit row). */
#ifndef AOAI_GUARD_UUID_H
#define AOAI_GUARD_UUID_H

/* Writes a lower-case UUID ("xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx") and its NUL to out. */
void ag_uuid4(char out[37]);

#endif
