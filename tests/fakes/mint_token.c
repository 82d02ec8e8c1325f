/* mint_token: prints a compact JWT signed with a TEST key, for integration tests and benchmarks.
 *
 *   mint_token --key PEM --kid KID [--alg RS256|RS384|RS512|PS256|HS256|none] [--header JSON]
 *              (--claims JSON | --raw-payload BYTES) [--raw-header BYTES] [--lifetime SECONDS]
 *              [--hmac-secret-file FILE]
 *
 * --header is merged into {"typ":"JWT","alg":ALG,"kid":KID} (its keys win; null removes a key).
 * --claims is re-serialised; --lifetime S adds iat=nbf=now and exp=now+S when they are absent.
 * --raw-header / --raw-payload use the bytes exactly as given (duplicate claims, odd escapes).
 * --alg HS256 signs with the bytes of --hmac-secret-file (e.g. the PEM public key, for the HS/RS
 * confusion test); --alg none leaves the signature empty. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "entra_testkit.h"

static void usage(void)
{
    fprintf(stderr, "usage: mint_token --key PEM --kid KID [--alg ALG] [--header JSON] (--claims JSON | "
                    "--raw-payload BYTES) [--raw-header BYTES] [--lifetime S] [--hmac-secret-file FILE]\n");
    exit(2);
}

static unsigned char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    unsigned char *buf = malloc(cap);
    size_t r;
    while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            unsigned char *g = realloc(buf, cap *= 2);
            if (!g) {
                free(buf);
                buf = NULL;
            }
            buf = g;
        }
    }
    fclose(f);
    *len = n;
    return buf;
}

int main(int argc, char **argv)
{
    const char *key_path = NULL, *kid = NULL, *alg = "RS256", *header_merge = NULL, *claims = NULL;
    const char *raw_header = NULL, *raw_payload = NULL, *secret_file = NULL;
    long long lifetime = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            usage();
        if (strcmp(a, "--key") == 0) key_path = v;
        else if (strcmp(a, "--kid") == 0) kid = v;
        else if (strcmp(a, "--alg") == 0) alg = v;
        else if (strcmp(a, "--header") == 0) header_merge = v;
        else if (strcmp(a, "--claims") == 0) claims = v;
        else if (strcmp(a, "--raw-header") == 0) raw_header = v;
        else if (strcmp(a, "--raw-payload") == 0) raw_payload = v;
        else if (strcmp(a, "--hmac-secret-file") == 0) secret_file = v;
        else if (strcmp(a, "--lifetime") == 0) lifetime = strtoll(v, NULL, 10);
        else usage();
        i++;
    }
    bool rsa = strcmp(alg, "HS256") != 0 && strcmp(alg, "none") != 0;
    if ((!claims && !raw_payload) || (rsa && !key_path) || (!raw_header && !kid) ||
        (strcmp(alg, "HS256") == 0 && !secret_file))
        usage();

    EVP_PKEY *key = NULL;
    if (rsa && !(key = ag_tk_read_pem(key_path))) {
        fprintf(stderr, "mint_token: cannot read key %s\n", key_path);
        return 1;
    }
    unsigned char *secret = NULL;
    size_t secret_len = 0;
    if (secret_file && !(secret = read_file(secret_file, &secret_len))) {
        fprintf(stderr, "mint_token: cannot read %s\n", secret_file);
        return 1;
    }

    char *header = NULL, *payload = NULL;
    if (raw_header) {
        header = strdup(raw_header);
    } else {
        cJSON *h = cJSON_CreateObject();
        cJSON_AddStringToObject(h, "typ", "JWT");
        cJSON_AddStringToObject(h, "alg", alg);
        cJSON_AddStringToObject(h, "kid", kid);
        if (header_merge) {
            cJSON *m = cJSON_Parse(header_merge);
            if (!cJSON_IsObject(m)) {
                fprintf(stderr, "mint_token: --header is not a JSON object\n");
                return 1;
            }
            for (cJSON *c = m->child; c; c = c->next) {
                cJSON_DeleteItemFromObjectCaseSensitive(h, c->string);
                if (!cJSON_IsNull(c))
                    cJSON_AddItemToObject(h, c->string, cJSON_Duplicate(c, true));
            }
            cJSON_Delete(m);
        }
        header = cJSON_PrintUnformatted(h);
        cJSON_Delete(h);
    }
    if (raw_payload) {
        payload = strdup(raw_payload);
    } else {
        cJSON *c = cJSON_Parse(claims);
        if (!cJSON_IsObject(c)) {
            fprintf(stderr, "mint_token: --claims is not a JSON object\n");
            return 1;
        }
        if (lifetime >= 0) {
            long long now = (long long)time(NULL);
            if (!cJSON_GetObjectItemCaseSensitive(c, "iat"))
                cJSON_AddNumberToObject(c, "iat", (double)now);
            if (!cJSON_GetObjectItemCaseSensitive(c, "nbf"))
                cJSON_AddNumberToObject(c, "nbf", (double)now);
            if (!cJSON_GetObjectItemCaseSensitive(c, "exp"))
                cJSON_AddNumberToObject(c, "exp", (double)(now + lifetime));
        }
        payload = cJSON_PrintUnformatted(c);
        cJSON_Delete(c);
    }
    char *jwt = header && payload ? ag_tk_sign(header, strlen(header), payload, strlen(payload), alg, key, secret,
                                               secret_len)
                                  : NULL;
    if (!jwt) {
        fprintf(stderr, "mint_token: signing failed\n");
        return 1;
    }
    printf("%s\n", jwt);
    free(jwt);
    free(header);
    free(payload);
    free(secret);
    EVP_PKEY_free(key);
    return 0;
}
