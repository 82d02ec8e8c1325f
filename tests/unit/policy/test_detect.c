/* Detectors: positives with exact spans, and near-miss negatives for each. */
#include <stdlib.h>
#include <string.h>

#include "aoai_guard/detect.h"
#include "check.h"

#define MAX_HITS 512

typedef struct hits {
    ag_detect_hit h[MAX_HITS];
    int n;
} hits;

static int collect(void *arg, const ag_detect_hit *hit)
{
    hits *hs = arg;
    if (hs->n < MAX_HITS)
        hs->h[hs->n++] = *hit;
    return 0;
}

/* Number of hits of detector d in text; the first one's matched text goes to span. */
static int scan_one(const char *text, ag_detector d, char *span, size_t spanlen)
{
    hits hs = {.n = 0};
    ag_detect_scan(text, strlen(text), AG_DET_BIT(d), collect, &hs);
    if (span && spanlen) {
        span[0] = '\0';
        if (hs.n > 0) {
            size_t l = hs.h[0].end - hs.h[0].start;
            if (l >= spanlen)
                l = spanlen - 1;
            memcpy(span, text + hs.h[0].start, l);
            span[l] = '\0';
        }
    }
    for (int k = 0; k < hs.n; k++)
        if (hs.h[k].det != d)
            return -100; /* a detector outside the mask reported */
    return hs.n;
}

#define FOUND(text, det, expect_span) do { char sp_[512]; \
    CHECK_INT(scan_one(text, det, sp_, sizeof sp_), 1); CHECK_STR(sp_, expect_span); } while (0)
#define NONE(text, det) CHECK_INT(scan_one(text, det, NULL, 0), 0)

static void test_validators(void)
{
    CHECK(ag_luhn_valid("4111111111111111", 16));
    CHECK(!ag_luhn_valid("4111111111111112", 16));
    CHECK(ag_luhn_valid("378282246310005", 15));
    CHECK(!ag_luhn_valid("", 0));
    CHECK(!ag_luhn_valid("41111111a1111111", 16));
    CHECK(ag_iban_valid("GB82WEST12345698765432", 22));
    CHECK(ag_iban_valid("DE89370400440532013000", 22));
    CHECK(!ag_iban_valid("DE89370400440532013001", 22)); /* checksum */
    CHECK(!ag_iban_valid("DE8937040044053201300", 21));  /* length for DE */
    CHECK(!ag_iban_valid("XX89370400440532013000", 22)); /* unknown country */
    CHECK_INT(ag_iban_country_length("NO"), 15);
    CHECK_INT(ag_iban_country_length("DE"), 22);
    CHECK_INT(ag_iban_country_length("ZZ"), 0);
    CHECK(ag_ssn_valid(123, 45, 6789));
    CHECK(ag_ssn_valid(78, 5, 1120));
    CHECK(!ag_ssn_valid(0, 45, 6789));
    CHECK(!ag_ssn_valid(666, 45, 6789));
    CHECK(!ag_ssn_valid(900, 45, 6789));
    CHECK(!ag_ssn_valid(999, 45, 6789));
    CHECK(!ag_ssn_valid(123, 0, 6789));
    CHECK(!ag_ssn_valid(123, 45, 0));
    CHECK_INT(ag_detector_lookup("credit_card"), AG_DET_CREDIT_CARD);
    CHECK_INT(ag_detector_lookup("prompt_injection"), AG_DET_PROMPT_INJECTION);
    CHECK_INT(ag_detector_lookup("creditcard"), -1);
    CHECK_STR(ag_detector_name(AG_DET_AZURE_SAS_TOKEN), "azure_sas_token");
}

static void test_email(void)
{
    FOUND("contact john.doe+tag@example.co.uk today", AG_DET_EMAIL, "john.doe+tag@example.co.uk");
    FOUND("mail bob@example.com.", AG_DET_EMAIL, "bob@example.com");
    FOUND("<a_b-c@sub.domain.org>", AG_DET_EMAIL, "a_b-c@sub.domain.org");
    NONE("user@localhost", AG_DET_EMAIL);
    NONE("a@b.c", AG_DET_EMAIL);
    NONE("@example.com", AG_DET_EMAIL);
    NONE("x@-bad.com", AG_DET_EMAIL);
    NONE("version 1.2@3.4", AG_DET_EMAIL);
}

static void test_phone(void)
{
    FOUND("call +1 (415) 555-2671 now", AG_DET_PHONE, "+1 (415) 555-2671");
    FOUND("tel:+442079460958", AG_DET_PHONE, "+442079460958");
    FOUND("office (415) 555-2671.", AG_DET_PHONE, "(415) 555-2671");
    FOUND("415-555-2671", AG_DET_PHONE, "415-555-2671");
    FOUND("415.555.2671", AG_DET_PHONE, "415.555.2671");
    FOUND("1-800-555-0199", AG_DET_PHONE, "1-800-555-0199");
    FOUND("London 020 7946 0958", AG_DET_PHONE, "020 7946 0958");
    FOUND("Paris 06 12 34 56 78", AG_DET_PHONE, "06 12 34 56 78");
    NONE("order 12345678901 shipped", AG_DET_PHONE);   /* bare digits, no '+' */
    NONE("on 2024-01-15 at noon", AG_DET_PHONE);       /* a date */
    NONE("ticket 123-456", AG_DET_PHONE);
    NONE("pi is 3.14159265", AG_DET_PHONE);
    NONE("host 192.168.1.10", AG_DET_PHONE);
    NONE("ssn 123-45-6789", AG_DET_PHONE);
    NONE("+12345", AG_DET_PHONE);                       /* too few digits */
    NONE("415-555-26712", AG_DET_PHONE);               /* wrong grouping */
    NONE("115-555-2671", AG_DET_PHONE);                /* NANP area cannot start with 1 */
}

static void test_card(void)
{
    FOUND("card 4111 1111 1111 1111 exp 12/25", AG_DET_CREDIT_CARD, "4111 1111 1111 1111");
    FOUND("4111-1111-1111-1111", AG_DET_CREDIT_CARD, "4111-1111-1111-1111");
    FOUND("pay 4111111111111111.", AG_DET_CREDIT_CARD, "4111111111111111");
    FOUND("amex 3782 822463 10005", AG_DET_CREDIT_CARD, "3782 822463 10005");
    FOUND("mc 5555555555554444", AG_DET_CREDIT_CARD, "5555555555554444");
    FOUND("card 4111 1111 1111 1111 2025", AG_DET_CREDIT_CARD, "4111 1111 1111 1111");
    NONE("card 4111 1111 1111 1112", AG_DET_CREDIT_CARD);   /* 16 digits, fails Luhn */
    NONE("id 1234567812345670", AG_DET_CREDIT_CARD);        /* Luhn ok, no card prefix */
    NONE("4111.1111.1111.1111", AG_DET_CREDIT_CARD);        /* dots are not card separators */
    NONE("41111 11111 111111", AG_DET_CREDIT_CARD);         /* not a card grouping */
    NONE("411111111111", AG_DET_CREDIT_CARD);               /* 12 digits */
    NONE("ref4111111111111111", AG_DET_CREDIT_CARD);        /* glued to letters */
}

static void test_ssn(void)
{
    FOUND("ssn 123-45-6789.", AG_DET_US_SSN, "123-45-6789");
    FOUND("078 05 1120", AG_DET_US_SSN, "078 05 1120");
    NONE("666-12-3456", AG_DET_US_SSN);
    NONE("000-12-3456", AG_DET_US_SSN);
    NONE("912-12-3456", AG_DET_US_SSN);
    NONE("123-00-4567", AG_DET_US_SSN);
    NONE("123-45-0000", AG_DET_US_SSN);
    NONE("123456789", AG_DET_US_SSN);      /* unformatted: too ambiguous */
    NONE("123-45-67890", AG_DET_US_SSN);
    NONE("123-45 6789", AG_DET_US_SSN);    /* mixed separators */
}

static void test_iban(void)
{
    FOUND("iban DE89 3704 0044 0532 0130 00 thanks", AG_DET_IBAN, "DE89 3704 0044 0532 0130 00");
    FOUND("GB82WEST12345698765432", AG_DET_IBAN, "GB82WEST12345698765432");
    FOUND("FR1420041010050500013M02606", AG_DET_IBAN, "FR1420041010050500013M02606");
    NONE("DE89 3704 0044 0532 0130 01", AG_DET_IBAN);   /* bad checksum */
    NONE("DE8937040044053201300", AG_DET_IBAN);          /* one short */
    NONE("DE893704004405320130001", AG_DET_IBAN);        /* one long */
    NONE("XX89370400440532013000", AG_DET_IBAN);         /* unknown country */
}

static void test_ip(void)
{
    FOUND("connect to 10.0.0.1 now", AG_DET_IPV4, "10.0.0.1");
    FOUND("gw=192.168.1.254:8080", AG_DET_IPV4, "192.168.1.254");
    NONE("256.1.1.1", AG_DET_IPV4);
    NONE("1.2.3", AG_DET_IPV4);
    NONE("version 1.2.3.4.5", AG_DET_IPV4);
    NONE("01.02.03.04", AG_DET_IPV4);
    NONE("v1.2.3.4", AG_DET_IPV4);
    FOUND("addr 2001:db8::1 ok", AG_DET_IPV6, "2001:db8::1");
    FOUND("fe80::1ff:fe23:4567:890a.", AG_DET_IPV6, "fe80::1ff:fe23:4567:890a");
    FOUND("localhost is ::1", AG_DET_IPV6, "::1");
    NONE("at 12:30:45 today", AG_DET_IPV6);
    NONE("std::string", AG_DET_IPV6);
    NONE("a:b:c", AG_DET_IPV6);
}

static void make_b64(char *out, size_t n, unsigned seed)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        out[i] = a[(seed >> 16) % 64];
    }
    out[n] = '\0';
}

static void test_azure(void)
{
    char key[100], text[400], expect[200];
    make_b64(key, 86, 7);
    snprintf(text, sizeof text, "key: %s== end", key);
    snprintf(expect, sizeof expect, "%s==", key);
    FOUND(text, AG_DET_AZURE_STORAGE_KEY, expect);
    snprintf(text, sizeof text, "key: %.85s== end", key); /* 85 + == */
    NONE(text, AG_DET_AZURE_STORAGE_KEY);
    snprintf(text, sizeof text, "key: %s= end", key);     /* single '=' */
    NONE(text, AG_DET_AZURE_STORAGE_KEY);
    snprintf(text, sizeof text, "key: %sA== end", key);   /* 87 + == */
    NONE(text, AG_DET_AZURE_STORAGE_KEY);

    snprintf(text, sizeof text, "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=%s==;"
             "EndpointSuffix=core.windows.net", key);
    snprintf(expect, sizeof expect, "AccountKey=%s==", key);
    FOUND(text, AG_DET_AZURE_CONNECTION_STRING, expect);
    FOUND("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;"
          "SharedAccessKey=AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefg=",
          AG_DET_AZURE_CONNECTION_STRING,
          "SharedAccessKey=AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefg=");
    NONE("AccountKey=short;", AG_DET_AZURE_CONNECTION_STRING);

    FOUND("api-key: 0123456789abcdef0123456789abcdef", AG_DET_AZURE_KEY,
          "0123456789abcdef0123456789abcdef");
    FOUND("KEY=ABCDEF0123456789ABCDEF0123456789;", AG_DET_AZURE_KEY,
          "ABCDEF0123456789ABCDEF0123456789");
    NONE("id 123e4567-e89b-12d3-a456-426614174000", AG_DET_AZURE_KEY); /* a GUID is not a key */
    NONE("0123456789abcdef0123456789abcde", AG_DET_AZURE_KEY);         /* 31 */
    NONE("0123456789abcdef0123456789abcdef0", AG_DET_AZURE_KEY);       /* 33 */
    NONE("sha 0123456789abcdef0123456789abcdefg", AG_DET_AZURE_KEY);   /* glued */

    FOUND("https://acct.blob.core.windows.net/c/f.txt?sv=2022-11-02&ss=b&sp=r&se=2030-01-01T00%3A00"
          "%3A00Z&spr=https&sig=AbCdEfGhIjKlMnOpQrStUvWxYz0123456789%2B%2F%3D done",
          AG_DET_AZURE_SAS_TOKEN,
          "sv=2022-11-02&ss=b&sp=r&se=2030-01-01T00%3A00%3A00Z&spr=https&sig=AbCdEfGhIjKlMnOpQrS"
          "tUvWxYz0123456789%2B%2F%3D");
    FOUND("SharedAccessSignature=sv=2022-11-02&sp=rl&sig=AbCdEfGhIjKlMnOpQrStUvWxYz0123%3D",
          AG_DET_AZURE_SAS_TOKEN,
          "SharedAccessSignature=sv=2022-11-02&sp=rl&sig=AbCdEfGhIjKlMnOpQrStUvWxYz0123%3D");
    NONE("https://x.blob.core.windows.net/c?sv=2022-11-02&sp=r", AG_DET_AZURE_SAS_TOKEN);
    NONE("https://example.com/?a=b&sig=AbCdEfGhIjKlMnOpQrStUvWxYz0123", AG_DET_AZURE_SAS_TOKEN);
    NONE("?sv=2022-11-02&sig=short", AG_DET_AZURE_SAS_TOKEN);
}

static void test_other_secrets(void)
{
    FOUND("aws AKIAIOSFODNN7EXAMPLE key", AG_DET_AWS_ACCESS_KEY, "AKIAIOSFODNN7EXAMPLE");
    FOUND("ASIAY34FZKBOKMUTVV7A", AG_DET_AWS_ACCESS_KEY, "ASIAY34FZKBOKMUTVV7A");
    NONE("AKIAIOSFODNN7EXAMPL", AG_DET_AWS_ACCESS_KEY);
    NONE("AKIAIOSFODNN7EXAMPLEX", AG_DET_AWS_ACCESS_KEY);
    NONE("akiaiosfodnn7example", AG_DET_AWS_ACCESS_KEY);
    NONE("AKIDIOSFODNN7EXAMPLE", AG_DET_AWS_ACCESS_KEY);

    FOUND("token ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789 ok", AG_DET_GITHUB_TOKEN,
          "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789");
    FOUND("gho_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", AG_DET_GITHUB_TOKEN,
          "gho_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789");
    FOUND("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQR",
          AG_DET_GITHUB_TOKEN,
          "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQR");
    NONE("ghp_short123", AG_DET_GITHUB_TOKEN);
    NONE("ghx_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", AG_DET_GITHUB_TOKEN);
    NONE("github_pat_tooshort", AG_DET_GITHUB_TOKEN);

    const char *pem = "here:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA1234abcd\n"
                      "zzzz/+==\n-----END RSA PRIVATE KEY-----\nthanks";
    FOUND(pem, AG_DET_PRIVATE_KEY, "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA1234abcd\n"
                                   "zzzz/+==\n-----END RSA PRIVATE KEY-----");
    FOUND("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH "
          "PRIVATE KEY-----", AG_DET_PRIVATE_KEY,
          "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE "
          "KEY-----");
    NONE("-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkq\n-----END PUBLIC KEY-----", AG_DET_PRIVATE_KEY);
    NONE("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----", AG_DET_PRIVATE_KEY);
    /* no END line yet: an open hit to the end of the text */
    hits hs = {.n = 0};
    const char *open = "x -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC";
    ag_detect_scan(open, strlen(open), AG_DET_BIT(AG_DET_PRIVATE_KEY), collect, &hs);
    CHECK_INT(hs.n, 1);
    CHECK(hs.n == 1 && hs.h[0].open);
    CHECK_INT(hs.h[0].start, 2);
    CHECK_INT(hs.h[0].end, strlen(open));

    FOUND("Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
          "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U end", AG_DET_JWT,
          "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
          "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U");
    NONE("eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiIxIn0.c2lnbmF0dXJl", AG_DET_JWT); /* header has no alg */
    NONE("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxIn0", AG_DET_JWT); /* two segments */
    NONE("eyJhbGciOi.eyJzdWIiOiIxIn0.c2ln", AG_DET_JWT); /* header is not JSON */
    NONE("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.a.b.c.d", AG_DET_JWT); /* five segments (JWE) */
}

static void test_mask_and_all(void)
{
    /* detectors outside the mask do not report; all of them together in one pass */
    const char *t = "mail a@example.com card 4111 1111 1111 1111 ip 10.1.2.3 "
                    "aws AKIAIOSFODNN7EXAMPLE";
    hits hs = {.n = 0};
    ag_detect_scan(t, strlen(t), AG_DET_BIT(AG_DET_IPV4), collect, &hs);
    CHECK_INT(hs.n, 1);
    CHECK_INT(hs.h[0].det, AG_DET_IPV4);
    hs.n = 0;
    ag_detect_scan(t, strlen(t), 0xFFFFFFFFu & ~AG_DET_BIT(AG_DET_PROMPT_INJECTION), collect, &hs);
    unsigned seen = 0;
    for (int k = 0; k < hs.n; k++)
        seen |= AG_DET_BIT(hs.h[k].det);
    CHECK_INT(seen, AG_DET_BIT(AG_DET_EMAIL) | AG_DET_BIT(AG_DET_CREDIT_CARD) |
                        AG_DET_BIT(AG_DET_IPV4) | AG_DET_BIT(AG_DET_AWS_ACCESS_KEY));
    hs.n = 0;
    ag_detect_scan(t, strlen(t), 0, collect, &hs);
    CHECK_INT(hs.n, 0);
}

/* Runs the scan with its shortcuts and the general one over text[0..n); 1 when their hits differ.
 * Adds the hits to *hits_seen. */
static int scans_differ(const char *text, size_t n, int *hits_seen)
{
    static hits a, b;
    const uint32_t mask = 0xFFFFFFFFu & ~AG_DET_BIT(AG_DET_PROMPT_INJECTION);
    a.n = b.n = 0;
    ag_detect_scan(text, n, mask, collect, &a);
    ag_detect_scan_general(text, n, mask, collect, &b);
    *hits_seen += a.n;
    if (a.n != b.n)
        return 1;
    for (int k = 0; k < a.n; k++)
        if (a.h[k].det != b.h[k].det || a.h[k].start != b.h[k].start || a.h[k].end != b.h[k].end ||
            a.h[k].open != b.h[k].open)
            return 1;
    return 0;
}

/* The shortcut for plain lower-case words against the scan without it: texts built from prose
 * words (every first letter, 32-letter hex words, words before ':' and '_') and from each kind of
 * secret and PII, joined by the separators the detectors look at. All hits must agree. */
static void test_fast_path(void)
{
    static char storage[100];
    make_b64(storage, 86, 11);
    storage[0] = 'q'; /* a plain first letter: the shortcut must still try the storage key */
    memcpy(storage + 86, "==", 3);
    const char *atoms[] = {
        "the", "regional", "team", "reviewed", "bcdef", "face", "deadbeef", "zebra", "quiet", "young",
        "abcdefabcdefabcdefabcdefabcdefab", "bcdefabcdefabcdefabcdefabcdefabc", "b123456789abcdef0123456789abcdef", "cafe", "beef", "fade",
        "sig", "sv", "accountkey", "endpoint", "eyes", "eyJ", "ghp", "github", "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
        "a@example.com", "mail.me@contoso.org", "4111 1111 1111 1111", "123-45-6789", "+1 (425) 555-0100",
        "10.1.2.3", "fe80::1", "2001:db8::8a2e:370:7334", "AKIAIOSFODNN7EXAMPLE", "DE89370400440532013000",
        "0123456789abcdef0123456789abcdef", "AccountKey=", "SharedAccessKey=", "AccountName=", "&sig=",
        "?sv=2022-11-02&sp=r&sig=AbCdEfGhIjKlMnOpQrStUvWxYz0123%3D",
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----", storage,
        "==", "=", ":", "_", "-", ".", ",", "@", "&", "?", "+", "(", "/", "7", "42",
        "zyzzyva[q]", "qz{y}z", "b`c", "z@z", "\xc3\xa9t\xc3\xa9", "w\xffz", "09:", "Z/z",
    };
    /* bytes just outside [0-9A-Za-z] end words too: / : @ [ ` { and bytes above 0x7F */
    const char *seps[] = { " ", " ", " ", "", "\n", ", ", ":", "=", "_", "-", "/", "@", "[", "`", "{", "\x80", "\xfa" };
    const size_t natoms = sizeof atoms / sizeof atoms[0], nseps = sizeof seps / sizeof seps[0];
    static check_text text;
    int diffs = 0, hits_seen = 0;
    for (int iter = 0; iter < 20000; iter++) {
        text.len = 0;
        while (text.len < 1500) {
            check_put(&text, atoms[check_rnd((unsigned)natoms)]);
            check_put(&text, seps[check_rnd((unsigned)nseps)]);
            if (check_rnd(30) == 0)
                break;
        }
        diffs += scans_differ(text.buf, text.len, &hits_seen);
    }
    CHECK_INT(diffs, 0);
    CHECK(hits_seen > 100000); /* the texts do hold secrets */
}

/* The prose shortcut (sixteen bytes of words at a time) against the general scan: texts that are
 * mostly prose, so that the shortcut runs, with the words and bytes that must stop it (a word
 * starting a secret, a separator a detector starts at, a word before ':', '_' or '=', a JWT whose
 * header is 14 letters) dropped in at every offset of a block. */
static void test_prose_runs(void)
{
    static char storage[100];
    make_b64(storage, 86, 13);
    storage[0] = 'q';
    memcpy(storage + 86, "==", 3);
    const char *prose[] = {
        "the", "regional", "team", "a", "an", "and", "agreed", "each", "easy", "ey", "eye", "e", "go",
        "ghp", "gist", "g", "sig", "sv", "so", "s", "sharedaccesskey", "accountkey", "accountname",
        "abcdefabcdefabcdefabcdefabcdefab", "abcdefghijklmnopq", "deadbeef", "face", "x", "fe", "abcd",
        "The", "Finance", "Please", "AKIA", "API", "DE", "Ajax", "Sig", "AccountKey", "Eye", "ABCDEFabcdefABCDEFabcdefABCDEFab",
    };
    const char *rare[] = {
        "eyJ", "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "a@example.com", "4111 1111 1111 1111", "123-45-6789",
        "+1 (425) 555-0100", "(425) 555-0100", "10.1.2.3", "fe80::1", "abcd:", "AKIAIOSFODNN7EXAMPLE",
        "DE89370400440532013000", "0123456789abcdef0123456789abcdef", storage, "AccountKey=abc", "=",
        "&sig=AbCdEf", "?sig=x", "Jam", "eyJump", "eyJhbGciOiIifQ.e30.c2ln", "42", "3.14", "x_", "g_", "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
    };
    /* the separators a run may hold, and bytes that end a word but not a run */
    const char *seps[] = { " ", " ", " ", " ", ", ", ". ", "\n", "'", ".", ":", "_", "-", "(", "+", "@", "&", "?", "\t", "/" };
    const size_t nprose = sizeof prose / sizeof prose[0], nrare = sizeof rare / sizeof rare[0];
    const size_t nseps = sizeof seps / sizeof seps[0];
    static check_text text;
    int diffs = 0, hits_seen = 0;
    for (int iter = 0; iter < 20000; iter++) {
        text.len = 0;
        while (text.len < 1500) {
            bool odd = check_rnd(12) == 0;
            check_put(&text, odd ? rare[check_rnd((unsigned)nrare)] : prose[check_rnd((unsigned)nprose)]);
            check_put(&text, seps[check_rnd(8) ? check_rnd(9) : check_rnd((unsigned)nseps)]);
            if (check_rnd(60) == 0)
                break;
        }
        diffs += scans_differ(text.buf, text.len, &hits_seen);
    }
    CHECK_INT(diffs, 0);
    CHECK(hits_seen > 20000); /* the texts do hold secrets */
}

int main(void)
{
    test_validators();
    test_fast_path();
    test_prose_runs();
    test_email();
    test_phone();
    test_card();
    test_ssn();
    test_iban();
    test_ip();
    test_azure();
    test_other_secrets();
    test_mask_and_all();
    return CHECK_DONE();
}
