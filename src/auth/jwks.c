/* JWKS parsing into immutable, reference-counted key sets; OpenID metadata parsing (see jwks.h). */
#include "aoai_guard/jwks.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/param_build.h>
#include <openssl/x509.h>

#include "aoai_guard/auth.h"
#include "aoai_guard/auth_config.h"
#include "aoai_guard/b64url.h"
#include "aoai_guard/json_strict.h"

#define NOTES_LEN 512

/* Keys are shared between sets (ag_jwks_merge), so each has its own count. */
typedef struct ag_jwk_shared {
    ag_jwk key;
    atomic_long refs;
} ag_jwk_shared;

struct ag_jwks {
    atomic_long refs;
    uint64_t generation;
    size_t nkeys;
    ag_jwk_shared **keys; /* sorted by kid, tenant */
    unsigned char fingerprint[32];
    char notes[NOTES_LEN];
};

static const ag_json_limits JWKS_LIMITS = {.max_depth = 8, .max_nodes = 20000};

static void jwk_unref(ag_jwk_shared *k)
{
    if (k && atomic_fetch_sub_explicit(&k->refs, 1, memory_order_acq_rel) == 1) {
        EVP_PKEY_free(k->key.pkey);
        free(k->key.issuer);
        free(k);
    }
}

static void set_free(ag_jwks *set)
{
    for (size_t i = 0; i < set->nkeys; i++)
        jwk_unref(set->keys[i]);
    free(set->keys);
    free(set);
}

ag_jwks *ag_jwks_ref(ag_jwks *set)
{
    atomic_fetch_add_explicit(&set->refs, 1, memory_order_relaxed);
    return set;
}

void ag_jwks_unref(ag_jwks *set)
{
    if (set && atomic_fetch_sub_explicit(&set->refs, 1, memory_order_acq_rel) == 1)
        set_free(set);
}

size_t ag_jwks_count(const ag_jwks *set)
{
    return set->nkeys;
}

const ag_jwk *ag_jwks_at(const ag_jwks *set, size_t i)
{
    return i < set->nkeys ? &set->keys[i]->key : NULL;
}

const unsigned char *ag_jwks_fingerprint(const ag_jwks *set)
{
    return set->fingerprint;
}

uint64_t ag_jwks_generation(const ag_jwks *set)
{
    return set->generation;
}

void ag_jwks_set_generation(ag_jwks *set, uint64_t generation)
{
    set->generation = generation;
}

const char *ag_jwks_notes(const ag_jwks *set)
{
    return set->notes;
}

const ag_jwk *ag_jwks_find(const ag_jwks *set, const char *kid, size_t kid_len, unsigned version,
                           const char *tid)
{
    if (!set || kid_len == 0 || kid_len > AG_JWK_KID_MAX)
        return NULL;
    /* Binary search for the first key with this kid, then scan its (few) scopes. */
    size_t lo = 0, hi = set->nkeys;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const char *k = set->keys[mid]->key.kid;
        int c = strncmp(k, kid, kid_len);
        if (c == 0 && k[kid_len] != '\0')
            c = 1;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (size_t i = lo; i < set->nkeys; i++) {
        const ag_jwk *k = &set->keys[i]->key;
        if (strncmp(k->kid, kid, kid_len) != 0 || k->kid[kid_len] != '\0')
            break;
        if (!(k->versions & version))
            continue;
        if (k->tenant[0] == '\0' || (tid && strcmp(k->tenant, tid) == 0))
            return k;
    }
    return NULL;
}

static int cmp_keys(const void *a, const void *b)
{
    const ag_jwk *x = &(*(ag_jwk_shared *const *)a)->key, *y = &(*(ag_jwk_shared *const *)b)->key;
    int c = strcmp(x->kid, y->kid);
    if (c == 0)
        c = strcmp(x->tenant, y->tenant);
    if (c == 0)
        c = (int)x->versions - (int)y->versions;
    return c;
}

/* Sorts the keys and computes the fingerprint; 0 or -1. */
static int finish_set(ag_jwks *set)
{
    qsort(set->keys, set->nkeys, sizeof *set->keys, cmp_keys);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(md);
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; i < set->nkeys && rc == 0; i++) {
        const ag_jwk *k = &set->keys[i]->key;
        unsigned char *der = NULL;
        int dl = i2d_PUBKEY(k->pkey, &der);
        unsigned char scope[2] = {(unsigned char)k->versions, (unsigned char)k->algs};
        if (dl <= 0 || EVP_DigestUpdate(md, k->kid, strlen(k->kid) + 1) != 1 ||
            EVP_DigestUpdate(md, k->tenant, strlen(k->tenant) + 1) != 1 ||
            EVP_DigestUpdate(md, k->issuer ? k->issuer : "", k->issuer ? strlen(k->issuer) + 1 : 1) != 1 ||
            EVP_DigestUpdate(md, scope, sizeof scope) != 1 || EVP_DigestUpdate(md, der, (size_t)dl) != 1)
            rc = -1;
        OPENSSL_free(der);
    }
    if (rc == 0 && EVP_DigestFinal_ex(md, set->fingerprint, NULL) != 1)
        rc = -1;
    EVP_MD_CTX_free(md);
    return rc;
}

static void fmt_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fmt_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Appends "; " + text to the notes, silently cut at the buffer's end. */
static void append_note(ag_jwks *set, const char *text)
{
    size_t used = strlen(set->notes), room = sizeof set->notes - 1 - used;
    const char *sep = used ? "; " : "";
    size_t sl = strlen(sep), tl = strlen(text);
    if (room < sl)
        return;
    memcpy(set->notes + used, sep, sl);
    used += sl;
    room -= sl;
    if (tl > room)
        tl = room;
    memcpy(set->notes + used, text, tl);
    set->notes[used + tl] = '\0';
}

static void add_note(ag_jwks *set, const char *kid, const char *reason)
{
    char k[72], line[160];
    ag_auth_log_safe(k, sizeof k, kid ? kid : "(none)", strlen(kid ? kid : "(none)"));
    snprintf(line, sizeof line, "kid %s: %s", k, reason);
    append_note(set, line);
}

/* Decodes a base64url JWK member into a fresh BIGNUM; NULL when absent or malformed. */
static BIGNUM *b64_bignum(const cJSON *jwk, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(jwk, name);
    if (!cJSON_IsString(v))
        return NULL;
    size_t len = strlen(v->valuestring);
    if (len == 0 || len > 2048)
        return NULL;
    unsigned char buf[AG_B64_DECODED_MAX(2048)];
    size_t n;
    if (ag_b64url_decode(v->valuestring, len, buf, sizeof buf, &n) != 0 || n == 0)
        return NULL;
    return BN_bin2bn(buf, (int)n, NULL);
}

/* Builds the RSA public key from n and e; NULL with reason set. */
static EVP_PKEY *rsa_from_ne(const cJSON *jwk, const char **reason)
{
    BIGNUM *n = b64_bignum(jwk, "n"), *e = b64_bignum(jwk, "e");
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    if (!n || !e) {
        *reason = "missing or malformed n/e";
        goto out;
    }
    if (!BN_is_odd(e) || BN_is_one(e) || BN_num_bits(e) > 64) {
        *reason = "bad public exponent";
        goto out;
    }
    int bits = BN_num_bits(n);
    if (bits < AG_JWK_MIN_BITS) {
        *reason = "RSA key shorter than 2048 bits";
        goto out;
    }
    if (bits > AG_JWK_MAX_BITS) {
        *reason = "RSA key longer than 8192 bits";
        goto out;
    }
    if (!BN_is_odd(n)) {
        *reason = "bad modulus";
        goto out;
    }
    *reason = "cannot build RSA key";
    bld = OSSL_PARAM_BLD_new();
    if (!bld || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) || !(params = OSSL_PARAM_BLD_to_param(bld)))
        goto out;
    ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    if (!ctx || EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        pkey = NULL;
    else
        *reason = NULL;
out:
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(e);
    return pkey;
}

/* When x5c is present its first certificate must carry the same public key; NULL = fine. */
static const char *check_x5c(const cJSON *jwk, EVP_PKEY *pkey)
{
    const cJSON *x5c = cJSON_GetObjectItemCaseSensitive(jwk, "x5c");
    if (!x5c)
        return NULL;
    if (!cJSON_IsArray(x5c) || !cJSON_IsString(x5c->child))
        return "x5c is not an array of strings";
    const char *b64 = x5c->child->valuestring;
    size_t len = strlen(b64);
    if (len > 16384)
        return "x5c certificate too large";
    unsigned char der[AG_B64_DECODED_MAX(16384)];
    size_t n;
    if (ag_b64_decode(b64, len, der, sizeof der, &n) != 0)
        return "x5c is not canonical base64";
    const unsigned char *p = der;
    X509 *cert = d2i_X509(NULL, &p, (long)n);
    const char *reason = NULL;
    if (!cert || p != der + n)
        reason = "x5c is not one DER certificate";
    else if (EVP_PKEY_eq(X509_get0_pubkey(cert), pkey) != 1)
        reason = "x5c certificate key differs from n/e";
    X509_free(cert);
    return reason;
}

/* Parses one JWK; NULL with *reason when it is skipped (or hard=true when the whole doc must fail). */
static ag_jwk_shared *parse_jwk(const cJSON *jwk, const ag_jwks_scope *scope, const char **reason)
{
    if (!cJSON_IsObject(jwk)) {
        *reason = "not an object";
        return NULL;
    }
    const cJSON *kty = cJSON_GetObjectItemCaseSensitive(jwk, "kty");
    const cJSON *use = cJSON_GetObjectItemCaseSensitive(jwk, "use");
    const cJSON *kid = cJSON_GetObjectItemCaseSensitive(jwk, "kid");
    const cJSON *alg = cJSON_GetObjectItemCaseSensitive(jwk, "alg");
    const cJSON *iss = cJSON_GetObjectItemCaseSensitive(jwk, "issuer");
    const cJSON *ops = cJSON_GetObjectItemCaseSensitive(jwk, "key_ops");
    if (!cJSON_IsString(kty) || strcmp(kty->valuestring, "RSA") != 0) {
        *reason = "kty is not RSA";
        return NULL;
    }
    if (use && (!cJSON_IsString(use) || strcmp(use->valuestring, "sig") != 0)) {
        *reason = "use is not sig";
        return NULL;
    }
    if (ops) {
        bool verify = false;
        for (const cJSON *o = cJSON_IsArray(ops) ? ops->child : NULL; o; o = o->next)
            verify |= cJSON_IsString(o) && strcmp(o->valuestring, "verify") == 0;
        if (!verify) {
            *reason = "key_ops lacks verify";
            return NULL;
        }
    }
    if (!cJSON_IsString(kid) || kid->valuestring[0] == '\0' || strlen(kid->valuestring) > AG_JWK_KID_MAX) {
        *reason = "kid missing or longer than 128 bytes";
        return NULL;
    }
    for (const char *p = kid->valuestring; *p; p++)
        if ((unsigned char)*p < 0x21 || (unsigned char)*p > 0x7e) {
            *reason = "kid has non-printable bytes";
            return NULL;
        }
    unsigned algs = AG_ALG_RS256 | AG_ALG_RS384 | AG_ALG_RS512 | AG_ALG_PS256;
    if (alg) {
        algs = cJSON_IsString(alg) ? ag_jwt_alg_from_name(alg->valuestring, strlen(alg->valuestring)) : 0;
        if (!algs) {
            *reason = "alg not supported";
            return NULL;
        }
    }
    if (iss && (!cJSON_IsString(iss) || iss->valuestring[0] == '\0' || strlen(iss->valuestring) > 512)) {
        *reason = "issuer is not a string of 1..512 bytes";
        return NULL;
    }
    EVP_PKEY *pkey = rsa_from_ne(jwk, reason);
    if (!pkey)
        return NULL;
    if ((*reason = check_x5c(jwk, pkey)) != NULL) {
        EVP_PKEY_free(pkey);
        return NULL;
    }
    ag_jwk_shared *k = calloc(1, sizeof *k);
    char *issuer = iss ? strdup(iss->valuestring) : NULL;
    if (!k || (iss && !issuer)) {
        free(k);
        free(issuer);
        EVP_PKEY_free(pkey);
        *reason = "out of memory";
        return NULL;
    }
    atomic_init(&k->refs, 1);
    memcpy(k->key.kid, kid->valuestring, strlen(kid->valuestring) + 1);
    k->key.pkey = pkey;
    k->key.bits = EVP_PKEY_get_bits(pkey);
    k->key.algs = algs;
    k->key.versions = scope ? scope->versions : (AG_TOKEN_V1 | AG_TOKEN_V2);
    if (scope && scope->tenant)
        snprintf(k->key.tenant, sizeof k->key.tenant, "%s", scope->tenant);
    k->key.issuer = issuer;
    return k;
}

ag_jwks *ag_jwks_parse(const char *json, size_t len, const ag_jwks_scope *scope, char *err, size_t errlen)
{
    ag_json_status st;
    size_t off;
    cJSON *root = ag_json_parse_strict(json, len, &JWKS_LIMITS, &st, &off);
    if (!root) {
        fmt_err(err, errlen, "JWKS is not valid JSON: %s at byte %zu", ag_json_status_str(st), off);
        return NULL;
    }
    ag_jwks *set = NULL;
    const cJSON *keys = cJSON_GetObjectItemCaseSensitive(root, "keys");
    if (!cJSON_IsObject(root) || !cJSON_IsArray(keys)) {
        fmt_err(err, errlen, "JWKS has no \"keys\" array");
        goto out;
    }
    int count = cJSON_GetArraySize(keys);
    if (count > AG_JWKS_MAX_KEYS) {
        fmt_err(err, errlen, "JWKS lists %d keys, more than the limit of %d", count, AG_JWKS_MAX_KEYS);
        goto out;
    }
    set = calloc(1, sizeof *set);
    if (!set || (count && !(set->keys = calloc((size_t)count, sizeof *set->keys)))) {
        fmt_err(err, errlen, "out of memory");
        goto fail;
    }
    atomic_init(&set->refs, 1);
    for (const cJSON *jwk = keys->child; jwk; jwk = jwk->next) {
        const cJSON *kid = cJSON_IsObject(jwk) ? cJSON_GetObjectItemCaseSensitive(jwk, "kid") : NULL;
        const char *kids = cJSON_IsString(kid) ? kid->valuestring : NULL;
        if (kids)
            for (const cJSON *prev = keys->child; prev != jwk; prev = prev->next) {
                const cJSON *pk = cJSON_IsObject(prev) ? cJSON_GetObjectItemCaseSensitive(prev, "kid") : NULL;
                if (cJSON_IsString(pk) && strcmp(pk->valuestring, kids) == 0) {
                    char k[72];
                    ag_auth_log_safe(k, sizeof k, kids, strlen(kids));
                    fmt_err(err, errlen, "JWKS lists kid %s twice", k);
                    goto fail;
                }
            }
        const char *reason = NULL;
        ag_jwk_shared *k = parse_jwk(jwk, scope, &reason);
        if (k)
            set->keys[set->nkeys++] = k;
        else
            add_note(set, kids, reason ? reason : "unusable");
    }
    if (set->nkeys == 0) {
        fmt_err(err, errlen, "JWKS has no usable RSA signing key%s%s", set->notes[0] ? ": " : "", set->notes);
        goto fail;
    }
    if (finish_set(set) != 0) {
        fmt_err(err, errlen, "cannot fingerprint the key set");
        goto fail;
    }
    goto out;
fail:
    if (set)
        set_free(set);
    set = NULL;
out:
    cJSON_Delete(root);
    return set;
}

ag_jwks *ag_jwks_merge(ag_jwks *const *sets, size_t n)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += sets[i] ? sets[i]->nkeys : 0;
    if (total == 0)
        return NULL;
    ag_jwks *set = calloc(1, sizeof *set);
    if (!set || !(set->keys = calloc(total, sizeof *set->keys))) {
        free(set);
        return NULL;
    }
    atomic_init(&set->refs, 1);
    for (size_t i = 0; i < n; i++) {
        if (!sets[i])
            continue;
        for (size_t j = 0; j < sets[i]->nkeys; j++) {
            ag_jwk_shared *k = sets[i]->keys[j];
            atomic_fetch_add_explicit(&k->refs, 1, memory_order_relaxed);
            set->keys[set->nkeys++] = k;
        }
        if (sets[i]->notes[0])
            append_note(set, sets[i]->notes);
    }
    if (finish_set(set) != 0) {
        set_free(set);
        return NULL;
    }
    return set;
}

void ag_oidc_metadata_free(ag_oidc_metadata *md)
{
    free(md->issuer);
    free(md->jwks_uri);
    md->issuer = md->jwks_uri = NULL;
}

int ag_oidc_metadata_parse(const char *json, size_t len, ag_oidc_metadata *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    ag_json_status st;
    size_t off;
    cJSON *root = ag_json_parse_strict(json, len, &JWKS_LIMITS, &st, &off);
    if (!root) {
        fmt_err(err, errlen, "metadata is not valid JSON: %s at byte %zu", ag_json_status_str(st), off);
        return -1;
    }
    int rc = -1;
    const cJSON *iss = cJSON_GetObjectItemCaseSensitive(root, "issuer");
    const cJSON *uri = cJSON_GetObjectItemCaseSensitive(root, "jwks_uri");
    if (!cJSON_IsObject(root) || !cJSON_IsString(iss) || iss->valuestring[0] == '\0' ||
        strlen(iss->valuestring) > 512) {
        fmt_err(err, errlen, "metadata has no usable \"issuer\"");
    } else if (!cJSON_IsString(uri) || strlen(uri->valuestring) > 2048 || !ag_auth_url_allowed(uri->valuestring)) {
        fmt_err(err, errlen, "metadata has no usable \"jwks_uri\" (https, or http to loopback only)");
    } else if (!(out->issuer = strdup(iss->valuestring)) || !(out->jwks_uri = strdup(uri->valuestring))) {
        ag_oidc_metadata_free(out);
        fmt_err(err, errlen, "out of memory");
    } else {
        rc = 0;
    }
    cJSON_Delete(root);
    return rc;
}
