/* bench_mint: writes N distinct, valid Entra ID v2 app tokens (one per line) signed with a TEST key of
 * fake_entra, for the benchmark's cached-token and cold-token scenarios. Tokens differ only in their
 * `uti` claim (Entra's unique token id), so each one has its own token-cache key but the same identity.
 *
 *   bench_mint --key PEM --kid KID --issuer ISS --tenant GUID --audience AUD --count N
 *              [--first K] [--lifetime S] --out FILE
 *
 * --first numbers the tokens (uti bench-<K>...), so two processes can mint disjoint halves. TEST ONLY. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "entra_testkit.h"

#define OID "0a0a0a0a-0000-4000-8000-000000000001"
#define APP "a1a1a1a1-0000-4000-8000-000000000001"

int main(int argc, char **argv)
{
    const char *key_path = NULL, *kid = NULL, *issuer = NULL, *tenant = NULL, *audience = NULL, *out = NULL;
    long count = 1, first = 0, lifetime = 7200;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (strcmp(a, "--key") == 0) key_path = v;
        else if (strcmp(a, "--kid") == 0) kid = v;
        else if (strcmp(a, "--issuer") == 0) issuer = v;
        else if (strcmp(a, "--tenant") == 0) tenant = v;
        else if (strcmp(a, "--audience") == 0) audience = v;
        else if (strcmp(a, "--count") == 0) count = atol(v);
        else if (strcmp(a, "--first") == 0) first = atol(v);
        else if (strcmp(a, "--lifetime") == 0) lifetime = atol(v);
        else if (strcmp(a, "--out") == 0) out = v;
        else {
            fprintf(stderr, "bench_mint: unknown option %s\n", a);
            return 2;
        }
    }
    if (!key_path || !kid || !issuer || !tenant || !audience || !out || count < 1 || lifetime < 60) {
        fprintf(stderr, "usage: bench_mint --key PEM --kid KID --issuer ISS --tenant GUID --audience AUD "
                        "--count N [--first K] [--lifetime S] --out FILE\n");
        return 2;
    }
    EVP_PKEY *key = ag_tk_read_pem(key_path);
    if (!key) {
        fprintf(stderr, "bench_mint: cannot read the key %s\n", key_path);
        return 1;
    }
    FILE *f = fopen(out, "w");
    if (!f) {
        perror(out);
        return 1;
    }
    long long now = (long long)time(NULL);
    char payload[2048];
    for (long i = 0; i < count; i++) {
        int n = snprintf(payload, sizeof payload,
                         "{\"aud\":\"%s\",\"iss\":\"%s\",\"iat\":%lld,\"nbf\":%lld,\"exp\":%lld,"
                         "\"azp\":\"" APP "\",\"azpacr\":\"1\",\"idtyp\":\"app\",\"oid\":\"" OID "\","
                         "\"roles\":[\"AI.User\"],\"sub\":\"" OID "\",\"tid\":\"%s\",\"uti\":\"bench-%010ld\","
                         "\"ver\":\"2.0\"}",
                         audience, issuer, now - 60, now - 60, now + lifetime, tenant, first + i);
        if (n <= 0 || (size_t)n >= sizeof payload) {
            fprintf(stderr, "bench_mint: claims too long\n");
            return 1;
        }
        char *tok = ag_tk_mint(key, kid, "RS256", payload);
        if (!tok) {
            fprintf(stderr, "bench_mint: signing failed\n");
            return 1;
        }
        fputs(tok, f);
        fputc('\n', f);
        free(tok);
    }
    EVP_PKEY_free(key);
    return fclose(f) == 0 ? 0 : 1;
}
