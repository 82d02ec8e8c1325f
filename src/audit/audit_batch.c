/* Upload batches and gzip (see audit_batch.h). */
#include "aoai_guard/audit_batch.h"

#include <stdlib.h>
#include <string.h>

#include <zlib.h>

void ag_audit_batch_init(ag_audit_batch *b, size_t max_bytes)
{
    memset(b, 0, sizeof *b);
    b->max_bytes = max_bytes && max_bytes <= AG_MONITOR_MAX_CALL_BYTES ? max_bytes
                                                                      : AG_MONITOR_MAX_CALL_BYTES;
}

void ag_audit_batch_free(ag_audit_batch *b)
{
    free(b->data);
    free(b->off);
    free(b->rlen);
    free(b->end);
    free(b->json);
    size_t max = b->max_bytes;
    memset(b, 0, sizeof *b);
    b->max_bytes = max;
}

void ag_audit_batch_reset(ag_audit_batch *b)
{
    b->len = 0;
    b->n = 0;
}

size_t ag_audit_batch_json_len(const ag_audit_batch *b, size_t lo, size_t hi)
{
    if (hi <= lo)
        return 2;
    size_t sum = 0;
    for (size_t i = lo; i < hi; i++)
        sum += b->rlen[i];
    return 2 + sum + (hi - lo - 1);
}

int ag_audit_batch_add(ag_audit_batch *b, const char *rec, size_t len, ag_spool_pos end)
{
    if (len + 2 > b->max_bytes)
        return -2;
    /* current array: 2 + len + (n - 1) commas; adding one: + len + 1 comma (none when empty) */
    size_t now = b->n ? 2 + b->len + (b->n - 1) : 2;
    size_t after = now + len + (b->n ? 1 : 0);
    if (after > b->max_bytes)
        return 0;
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 64 * 1024;
        while (cap < b->len + len)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d)
            return -1;
        b->data = d;
        b->cap = cap;
    }
    if (b->n == b->ncap) {
        size_t cap = b->ncap ? b->ncap * 2 : 256;
        size_t *o = realloc(b->off, cap * sizeof *o);
        if (!o)
            return -1;
        b->off = o;
        size_t *l = realloc(b->rlen, cap * sizeof *l);
        if (!l)
            return -1;
        b->rlen = l;
        ag_spool_pos *e = realloc(b->end, cap * sizeof *e);
        if (!e)
            return -1;
        b->end = e;
        b->ncap = cap;
    }
    memcpy(b->data + b->len, rec, len);
    b->off[b->n] = b->len;
    b->rlen[b->n] = len;
    b->end[b->n] = end;
    b->len += len;
    b->n++;
    return 1;
}

const char *ag_audit_batch_json(ag_audit_batch *b, size_t lo, size_t hi, size_t *len)
{
    size_t need = ag_audit_batch_json_len(b, lo, hi) + 1;
    if (need > b->json_cap) {
        char *j = realloc(b->json, need);
        if (!j)
            return NULL;
        b->json = j;
        b->json_cap = need;
    }
    size_t o = 0;
    b->json[o++] = '[';
    for (size_t i = lo; i < hi; i++) {
        if (i > lo)
            b->json[o++] = ',';
        memcpy(b->json + o, b->data + b->off[i], b->rlen[i]);
        o += b->rlen[i];
    }
    b->json[o++] = ']';
    b->json[o] = '\0';
    *len = o;
    return b->json;
}

int ag_gzip(const void *in, size_t len, unsigned char **out, size_t *outlen)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    /* windowBits 15 + 16: a gzip wrapper rather than zlib's */
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return -1;
    size_t cap = deflateBound(&z, (uLong)len) + 32;
    unsigned char *buf = malloc(cap);
    if (!buf) {
        deflateEnd(&z);
        return -1;
    }
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)len;
    z.next_out = buf;
    z.avail_out = (uInt)cap;
    int rc = deflate(&z, Z_FINISH);
    deflateEnd(&z);
    if (rc != Z_STREAM_END) {
        free(buf);
        return -1;
    }
    *out = buf;
    *outlen = cap - z.avail_out;
    return 0;
}

int ag_gunzip(const void *in, size_t len, size_t max_out, char **out, size_t *outlen)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, 15 + 16) != Z_OK)
        return -1;
    size_t cap = len * 4 + 1024;
    if (cap > max_out + 1)
        cap = max_out + 1;
    char *buf = malloc(cap + 1);
    if (!buf) {
        inflateEnd(&z);
        return -1;
    }
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)len;
    size_t have = 0;
    int rc;
    for (;;) {
        if (have == cap) {
            if (cap > max_out) { /* already holds max_out + 1 bytes */
                rc = -2;
                goto done;
            }
            size_t ncap = cap * 2 > max_out + 1 ? max_out + 1 : cap * 2;
            char *nb = realloc(buf, ncap + 1);
            if (!nb) {
                rc = -1;
                goto done;
            }
            buf = nb;
            cap = ncap;
        }
        z.next_out = (Bytef *)buf + have;
        z.avail_out = (uInt)(cap - have);
        int zr = inflate(&z, Z_NO_FLUSH);
        have = cap - z.avail_out;
        if (zr == Z_STREAM_END) {
            rc = (z.avail_in == 0) ? 0 : -1; /* trailing garbage or a second member: refuse */
            break;
        }
        if (zr != Z_OK && !(zr == Z_BUF_ERROR && have == cap)) {
            rc = -1;
            break;
        }
        if (zr == Z_OK && z.avail_in == 0 && have < cap) {
            rc = -1; /* truncated stream */
            break;
        }
    }
    if (rc == 0 && have > max_out)
        rc = -2;
done:
    inflateEnd(&z);
    if (rc != 0) {
        free(buf);
        return rc;
    }
    buf[have] = '\0';
    *out = buf;
    *outlen = have;
    return 0;
}
