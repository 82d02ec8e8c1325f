/* Upload batches stay within the uncompressed limit; gzip round trip (checked with zlib directly). */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <zlib.h>

#include "aoai_guard/audit_batch.h"
#include "check.h"

static char *make_rec(size_t len, int i)
{
    /* {"i":N,"p":"xxxx"} padded to exactly len bytes */
    char head[32];
    int h = snprintf(head, sizeof head, "{\"i\":%d,\"p\":\"", i);
    char *r = malloc(len + 1);
    memcpy(r, head, (size_t)h);
    memset(r + h, 'a' + i % 26, len - (size_t)h - 2);
    memcpy(r + len - 2, "\"}", 2);
    r[len] = '\0';
    return r;
}

static void test_fill(void)
{
    ag_audit_batch b;
    ag_audit_batch_init(&b, 1000000);
    CHECK_INT(b.max_bytes, 1000000);
    int added = 0, r;
    for (;;) {
        char *rec = make_rec(999, added);
        r = ag_audit_batch_add(&b, rec, 999, (ag_spool_pos){1, (uint64_t)(added + 1) * 1011});
        free(rec);
        if (r != 1)
            break;
        added++;
    }
    /* 2 + n*999 + (n-1) <= 1000000  =>  n <= 999999/1000 = 999 */
    CHECK_INT(r, 0);
    CHECK_INT(added, 999);
    CHECK_INT(b.n, 999);
    size_t len;
    const char *json = ag_audit_batch_json(&b, 0, b.n, &len);
    CHECK_INT(len, ag_audit_batch_json_len(&b, 0, b.n));
    CHECK(len <= 1000000);
    CHECK_INT(len, 2 + 999 * 999 + 998);
    cJSON *arr = cJSON_ParseWithLength(json, len);
    CHECK_INT(cJSON_GetArraySize(arr), 999);
    CHECK_INT(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(arr, 998), "i")->valueint, 998);
    cJSON_Delete(arr);
    CHECK_INT(b.end[998].offset, 999 * 1011);

    /* a range: records 10..12 */
    json = ag_audit_batch_json(&b, 10, 13, &len);
    arr = cJSON_ParseWithLength(json, len);
    CHECK_INT(cJSON_GetArraySize(arr), 3);
    CHECK_INT(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(arr, 0), "i")->valueint, 10);
    cJSON_Delete(arr);

    /* a record that can never fit alone; after reset the batch is empty */
    ag_audit_batch_reset(&b);
    CHECK_INT(b.n, 0);
    char *huge = make_rec(999999, 1);
    CHECK_INT(ag_audit_batch_add(&b, huge, 999999, (ag_spool_pos){1, 1}), -2);
    CHECK_INT(ag_audit_batch_add(&b, huge, 999998, (ag_spool_pos){1, 1}), 1); /* 999998 + 2 fits */
    free(huge);
    ag_audit_batch_free(&b);

    /* the limit is clamped to the service's 1 MiB */
    ag_audit_batch_init(&b, 5u * 1024 * 1024);
    CHECK_INT(b.max_bytes, AG_MONITOR_MAX_CALL_BYTES);
    ag_audit_batch_free(&b);
}

static void test_gzip(void)
{
    size_t n = 300000;
    char *in = malloc(n);
    unsigned x = 12345;
    for (size_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        in[i] = (char)("{}[]\",:abcdefghij0123456789"[(x >> 16) % 27]);
    }
    unsigned char *gz;
    size_t gzlen;
    CHECK_INT(ag_gzip(in, n, &gz, &gzlen), 0);
    CHECK(gzlen < n);
    CHECK(gz[0] == 0x1f && gz[1] == 0x8b); /* a gzip member, not a bare zlib stream */

    /* inflate with zlib directly */
    char *out = malloc(n + 16);
    z_stream z;
    memset(&z, 0, sizeof z);
    CHECK_INT(inflateInit2(&z, 16 + MAX_WBITS), Z_OK);
    z.next_in = gz;
    z.avail_in = (uInt)gzlen;
    z.next_out = (Bytef *)out;
    z.avail_out = (uInt)(n + 16);
    CHECK_INT(inflate(&z, Z_FINISH), Z_STREAM_END);
    CHECK_INT(z.total_out, n);
    inflateEnd(&z);
    CHECK(memcmp(out, in, n) == 0);
    free(out);

    /* and with ag_gunzip: exact, too large, corrupt, trailing bytes */
    char *back;
    size_t blen;
    CHECK_INT(ag_gunzip(gz, gzlen, n, &back, &blen), 0);
    CHECK_INT(blen, n);
    CHECK(memcmp(back, in, n) == 0);
    free(back);
    CHECK_INT(ag_gunzip(gz, gzlen, n - 1, &back, &blen), -2);
    gz[gzlen / 2] ^= 0xFF;
    CHECK_INT(ag_gunzip(gz, gzlen, n, &back, &blen), -1);
    gz[gzlen / 2] ^= 0xFF;
    unsigned char *longer = malloc(gzlen + 3);
    memcpy(longer, gz, gzlen);
    memcpy(longer + gzlen, "xyz", 3);
    CHECK_INT(ag_gunzip(longer, gzlen + 3, n, &back, &blen), -1);
    CHECK_INT(ag_gunzip(gz, gzlen - 4, n, &back, &blen), -1); /* truncated */
    free(longer);
    free(gz);

    /* the empty array still round-trips */
    CHECK_INT(ag_gzip("[]", 2, &gz, &gzlen), 0);
    CHECK_INT(ag_gunzip(gz, gzlen, 10, &back, &blen), 0);
    CHECK_STR(back, "[]");
    free(back);
    free(gz);
    free(in);
}

int main(void)
{
    test_fill();
    test_gzip();
    return CHECK_DONE();
}
