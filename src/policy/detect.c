/* Built-in PII and secret detectors, one pass over normalised text (see detect.h). */
#include "aoai_guard/detect.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <openssl/evp.h>
#include <string.h>
#include <strings.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

static const char *const det_names[AG_DET_COUNT] = {
    [AG_DET_EMAIL] = "email",
    [AG_DET_PHONE] = "phone",
    [AG_DET_CREDIT_CARD] = "credit_card",
    [AG_DET_US_SSN] = "us_ssn",
    [AG_DET_IBAN] = "iban",
    [AG_DET_IPV4] = "ipv4",
    [AG_DET_IPV6] = "ipv6",
    [AG_DET_AZURE_STORAGE_KEY] = "azure_storage_key",
    [AG_DET_AZURE_CONNECTION_STRING] = "azure_connection_string",
    [AG_DET_AZURE_KEY] = "azure_openai_key",
    [AG_DET_AZURE_SAS_TOKEN] = "azure_sas_token",
    [AG_DET_AWS_ACCESS_KEY] = "aws_access_key",
    [AG_DET_GITHUB_TOKEN] = "github_token",
    [AG_DET_PRIVATE_KEY] = "private_key",
    [AG_DET_JWT] = "jwt",
    [AG_DET_PROMPT_INJECTION] = "prompt_injection",
};

const char *ag_detector_name(ag_detector d)
{
    return (d >= 0 && d < AG_DET_COUNT) ? det_names[d] : "unknown";
}

int ag_detector_lookup(const char *name)
{
    for (int d = 0; d < AG_DET_COUNT; d++)
        if (strcmp(det_names[d], name) == 0)
            return d;
    return -1;
}

/* ---- character classes ---- */

#define C_ALNUM 1u
#define C_PLAIN 2u /* a lower-case letter no per-letter check below starts with: not a, e, g, s */

/* bytes [0-9A-Za-z]: C_ALNUM, and C_PLAIN */
static const unsigned char cclass[256] = {
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 3, ['c'] = 3, ['d'] = 3, ['e'] = 1, ['f'] = 3, ['g'] = 1, ['h'] = 3,
    ['i'] = 3, ['j'] = 3, ['k'] = 3, ['l'] = 3, ['m'] = 3, ['n'] = 3, ['o'] = 3, ['p'] = 3,
    ['q'] = 3, ['r'] = 3, ['s'] = 1, ['t'] = 3, ['u'] = 3, ['v'] = 3, ['w'] = 3, ['x'] = 3,
    ['y'] = 3, ['z'] = 3,
};

static inline bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static inline bool is_upper(unsigned char c) { return c >= 'A' && c <= 'Z'; }
static inline bool is_lower(unsigned char c) { return c >= 'a' && c <= 'z'; }
static inline bool is_alpha(unsigned char c) { return is_upper(c) || is_lower(c); }
static inline bool is_alnum(unsigned char c) { return cclass[c] & C_ALNUM; }
static inline bool is_hex(unsigned char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
static inline bool is_b64(unsigned char c) { return is_alnum(c) || c == '+' || c == '/'; }
static inline bool is_b64url(unsigned char c) { return is_alnum(c) || c == '-' || c == '_'; }

/* ---- validators ---- */

bool ag_luhn_valid(const char *digits, size_t n)
{
    if (n == 0)
        return false;
    unsigned sum = 0;
    bool dbl = false;
    for (size_t i = n; i-- > 0;) {
        if (!is_digit((unsigned char)digits[i]))
            return false;
        unsigned d = (unsigned)(digits[i] - '0');
        if (dbl) {
            d *= 2;
            if (d > 9)
                d -= 9;
        }
        sum += d;
        dbl = !dbl;
    }
    return sum % 10 == 0;
}

typedef struct iban_len {
    char cc[3];
    unsigned char len;
} iban_len;

/* IBAN lengths per country (SWIFT IBAN registry). */
static const iban_len iban_lengths[] = {
    {"AD", 24}, {"AE", 23}, {"AL", 28}, {"AT", 20}, {"AZ", 28}, {"BA", 20}, {"BE", 16},
    {"BG", 22}, {"BH", 22}, {"BI", 27}, {"BR", 29}, {"BY", 28}, {"CH", 21}, {"CR", 22},
    {"CY", 28}, {"CZ", 24}, {"DE", 22}, {"DJ", 27}, {"DK", 18}, {"DO", 28}, {"EE", 20},
    {"EG", 29}, {"ES", 24}, {"FI", 18}, {"FK", 18}, {"FO", 18}, {"FR", 27}, {"GB", 22},
    {"GE", 22}, {"GI", 23}, {"GL", 18}, {"GR", 27}, {"GT", 28}, {"HR", 21}, {"HU", 28},
    {"IE", 22}, {"IL", 23}, {"IQ", 23}, {"IS", 26}, {"IT", 27}, {"JO", 30}, {"KW", 30},
    {"KZ", 20}, {"LB", 28}, {"LC", 32}, {"LI", 21}, {"LT", 20}, {"LU", 20}, {"LV", 21},
    {"LY", 25}, {"MC", 27}, {"MD", 24}, {"ME", 22}, {"MK", 19}, {"MN", 20}, {"MR", 27},
    {"MT", 31}, {"MU", 30}, {"NI", 28}, {"NL", 18}, {"NO", 15}, {"OM", 23}, {"PK", 24},
    {"PL", 28}, {"PS", 29}, {"PT", 25}, {"QA", 29}, {"RO", 24}, {"RS", 22}, {"RU", 33},
    {"SA", 24}, {"SC", 31}, {"SD", 18}, {"SE", 24}, {"SI", 19}, {"SK", 24}, {"SM", 27},
    {"SO", 23}, {"ST", 25}, {"SV", 28}, {"TL", 23}, {"TN", 24}, {"TR", 26}, {"UA", 29},
    {"VA", 22}, {"VG", 24}, {"XK", 20}, {"YE", 30},
};

int ag_iban_country_length(const char *cc)
{
    for (size_t i = 0; i < sizeof iban_lengths / sizeof iban_lengths[0]; i++)
        if (iban_lengths[i].cc[0] == cc[0] && iban_lengths[i].cc[1] == cc[1])
            return iban_lengths[i].len;
    return 0;
}

bool ag_iban_valid(const char *iban, size_t len)
{
    if (len < 15 || len > 34)
        return false;
    const unsigned char *s = (const unsigned char *)iban;
    if (!is_upper(s[0]) || !is_upper(s[1]) || !is_digit(s[2]) || !is_digit(s[3]))
        return false;
    if ((size_t)ag_iban_country_length(iban) != len)
        return false;
    /* move the first four characters to the end, letters become 10..35, then mod 97 */
    unsigned rem = 0;
    for (size_t k = 0; k < len; k++) {
        unsigned char c = s[(k + 4) % len];
        if (is_digit(c))
            rem = (rem * 10 + (unsigned)(c - '0')) % 97;
        else if (is_upper(c))
            rem = (rem * 100 + (unsigned)(c - 'A' + 10)) % 97;
        else
            return false;
    }
    return rem == 1;
}

bool ag_ssn_valid(unsigned area, unsigned group, unsigned serial)
{
    if (area == 0 || area == 666 || area >= 900 || area > 999)
        return false;
    if (group == 0 || group > 99)
        return false;
    return serial != 0 && serial <= 9999;
}

/* ---- scanner ---- */

typedef struct scan {
    const unsigned char *t;
    size_t len;
    uint32_t mask;
    ag_detect_cb cb;
    void *arg;
    bool stop;
    size_t until[AG_DET_SCAN_COUNT]; /* no new hit of detector d may start before until[d] */
} scan;

static void hit(scan *s, ag_detector d, size_t start, size_t end, bool open)
{
    if (s->stop || start < s->until[d])
        return;
    s->until[d] = end;
    ag_detect_hit h = {d, start, end, open};
    if (s->cb(s->arg, &h))
        s->stop = true;
}

static inline bool want(const scan *s, ag_detector d)
{
    return (s->mask & AG_DET_BIT(d)) != 0;
}

static bool has_prefix(const scan *s, size_t i, const char *p)
{
    size_t n = strlen(p);
    return i + n <= s->len && memcmp(s->t + i, p, n) == 0;
}

static bool has_prefix_ci(const scan *s, size_t i, const char *p)
{
    size_t n = strlen(p);
    return i + n <= s->len && strncasecmp((const char *)s->t + i, p, n) == 0;
}

/* email: local@domain.tld, triggered at '@' */
static void det_email(scan *s, size_t at)
{
    const unsigned char *t = s->t;
    size_t ls = at;
    while (ls > 0 && at - ls < 64) {
        unsigned char c = t[ls - 1];
        if (is_alnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-')
            ls--;
        else
            break;
    }
    if (ls > 0 && at - ls >= 64) {
        unsigned char c = t[ls - 1];
        if (is_alnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-')
            return; /* local part too long */
    }
    while (ls < at && (t[ls] == '.' || t[ls] == '-' || t[ls] == '+'))
        ls++;
    if (ls == at || t[at - 1] == '.')
        return;
    size_t p = at + 1, labels = 0, last_label = p, de = p;
    while (p < s->len && p - at <= 254) {
        size_t lb = p;
        while (p < s->len && (is_alnum(t[p]) || t[p] == '-'))
            p++;
        if (p == lb || t[lb] == '-' || t[p - 1] == '-' || p - lb > 63)
            break;
        labels++;
        last_label = lb;
        de = p;
        if (p + 1 < s->len && t[p] == '.' && is_alnum(t[p + 1]))
            p++;
        else
            break;
    }
    if (labels < 2)
        return;
    size_t tld = de - last_label;
    if (tld < 2)
        return;
    for (size_t k = last_label; k < de; k++)
        if (!is_alpha(t[k]))
            return;
    hit(s, AG_DET_EMAIL, ls, de, false);
}

/* ---- numbers: phone, card, SSN, IPv4 ---- */

#define MAX_GROUPS 12

typedef struct numgroups {
    size_t gs[MAX_GROUPS], ge[MAX_GROUPS]; /* digit runs */
    size_t ss[MAX_GROUPS];                  /* separator before group k starts at ss[k] (k >= 1) */
    int n;
    bool plus;       /* '+' right before group 0 */
    bool lparen;     /* '(' right before group 0 */
    size_t start;    /* region start (the '+' or '(' when present) */
} numgroups;

static bool sep_has(const scan *s, const numgroups *g, int k, char c)
{
    for (size_t p = g->ss[k]; p < g->gs[k]; p++)
        if (s->t[p] == (unsigned char)c)
            return true;
    return false;
}

static size_t sep_len(const numgroups *g, int k)
{
    return g->gs[k] - g->ss[k];
}

/* A window may start at group a when nothing glued precedes it. */
static bool can_start(const scan *s, const numgroups *g, int a)
{
    return a == 0 || sep_has(s, g, a, ' ');
}

/* A window may end at group b when the text after it does not continue the number. */
static bool can_end(const scan *s, const numgroups *g, int b)
{
    if (b + 1 < g->n)
        return sep_has(s, g, b + 1, ' ');
    size_t e = g->ge[b];
    if (e < s->len && is_alnum(s->t[e]))
        return false;
    return true;
}

static size_t digits_of(const scan *s, const numgroups *g, int a, int b, char *out, size_t cap)
{
    size_t n = 0;
    for (int k = a; k <= b; k++)
        for (size_t p = g->gs[k]; p < g->ge[k]; p++) {
            if (n + 1 >= cap)
                return 0;
            out[n++] = (char)s->t[p];
        }
    out[n] = '\0';
    return n;
}

static unsigned group_val(const scan *s, const numgroups *g, int k)
{
    unsigned v = 0;
    for (size_t p = g->gs[k]; p < g->ge[k] && v < 100000; p++)
        v = v * 10 + (unsigned)(s->t[p] - '0');
    return v;
}

static size_t glen(const numgroups *g, int k)
{
    return g->ge[k] - g->gs[k];
}

/* True when every separator in groups (a, b] is exactly the single character c. */
static bool seps_are(const scan *s, const numgroups *g, int a, int b, char c)
{
    for (int k = a + 1; k <= b; k++)
        if (sep_len(g, k) != 1 || s->t[g->ss[k]] != (unsigned char)c)
            return false;
    return true;
}

static bool try_ipv4(scan *s, const numgroups *g, int a)
{
    int b = a + 3;
    if (b >= g->n || (a == 0 && (g->plus || g->lparen)) || !seps_are(s, g, a, b, '.'))
        return false;
    if (a > 0 && sep_has(s, g, a, '.'))
        return false;
    if (b + 1 < g->n && sep_has(s, g, b + 1, '.'))
        return false;
    if (b + 1 == g->n && g->ge[b] < s->len && (is_alnum(s->t[g->ge[b]])))
        return false;
    for (int k = a; k <= b; k++) {
        if (glen(g, k) > 3 || (glen(g, k) > 1 && s->t[g->gs[k]] == '0') || group_val(s, g, k) > 255)
            return false;
    }
    char buf[20];
    size_t n = g->ge[b] - g->gs[a];
    memcpy(buf, s->t + g->gs[a], n);
    buf[n] = '\0';
    struct in_addr addr;
    if (inet_pton(AF_INET, buf, &addr) != 1)
        return false;
    hit(s, AG_DET_IPV4, g->gs[a], g->ge[b], false);
    return true;
}

static bool try_ssn(scan *s, const numgroups *g, int a)
{
    int b = a + 2;
    if (b >= g->n || (a == 0 && (g->plus || g->lparen)))
        return false;
    if (glen(g, a) != 3 || glen(g, a + 1) != 2 || glen(g, b) != 4)
        return false;
    if (!seps_are(s, g, a, b, '-') && !seps_are(s, g, a, b, ' '))
        return false;
    if (!can_end(s, g, b))
        return false;
    if (!ag_ssn_valid(group_val(s, g, a), group_val(s, g, a + 1), group_val(s, g, b)))
        return false;
    hit(s, AG_DET_US_SSN, g->gs[a], g->ge[b], false);
    return true;
}

static bool card_grouping_ok(const numgroups *g, int a, int b)
{
    int n = b - a + 1;
    if (n == 1)
        return true;
    if (n == 3 && glen(g, a) == 4 && glen(g, a + 1) == 6 && (glen(g, b) == 5 || glen(g, b) == 4))
        return true;
    for (int k = a; k < b; k++)
        if (glen(g, k) != 4)
            return false;
    return glen(g, b) >= 1 && glen(g, b) <= 4;
}

static bool try_card(scan *s, const numgroups *g, int a)
{
    if (a == 0 && (g->plus || g->lparen))
        return false;
    for (int b = g->n - 1; b >= a; b--) {
        if (!can_end(s, g, b))
            continue;
        if (b > a && !seps_are(s, g, a, b, ' ') && !seps_are(s, g, a, b, '-'))
            continue;
        if (!card_grouping_ok(g, a, b))
            continue;
        char d[32];
        size_t n = digits_of(s, g, a, b, d, sizeof d);
        if (n < 13 || n > 19)
            continue;
        if (d[0] < '2' || d[0] > '6')
            continue;
        if (!ag_luhn_valid(d, n))
            continue;
        hit(s, AG_DET_CREDIT_CARD, g->gs[a], g->ge[b], false);
        return true;
    }
    return false;
}

/* separators allowed inside a phone number */
static bool phone_seps_ok(const scan *s, const numgroups *g, int a, int b)
{
    for (int k = a + 1; k <= b; k++) {
        size_t l = sep_len(g, k);
        if (l == 0 || l > 2)
            return false;
    }
    return true;
}

static bool try_phone(scan *s, const numgroups *g, int a)
{
    char d[32];
    /* E.164 with '+': 8 to 15 digits, first digit not 0 */
    if (a == 0 && g->plus) {
        for (int b = g->n - 1; b >= a; b--) {
            if (!can_end(s, g, b) || !phone_seps_ok(s, g, a, b))
                continue;
            size_t n = digits_of(s, g, a, b, d, sizeof d);
            if (n >= 8 && n <= 15 && d[0] != '0') {
                hit(s, AG_DET_PHONE, g->start, g->ge[b], false);
                return true;
            }
        }
        return false;
    }
    /* NANP: [1] (NXX) NXX-XXXX */
    int na = a;
    if (glen(g, a) == 1 && s->t[g->gs[a]] == '1' && a + 3 < g->n)
        na = a + 1;
    for (int pass = 0; pass < 2; pass++) {
        int x = pass == 0 ? na : a;
        if (pass == 1 && na == a)
            break;
        int b = x + 2;
        if (b >= g->n || glen(g, x) != 3 || glen(g, x + 1) != 3 || glen(g, b) != 4)
            continue;
        if (s->t[g->gs[x]] < '2' || s->t[g->gs[x + 1]] < '2')
            continue;
        if (!can_end(s, g, b) || !phone_seps_ok(s, g, a, b))
            continue;
        bool paren = (x == 0 && g->lparen) || (x > 0 && sep_has(s, g, x, '('));
        if (paren) {
            if (!sep_has(s, g, x + 1, ')'))
                continue;
        } else if (!seps_are(s, g, x, b, '-') && !seps_are(s, g, x, b, '.') &&
                   !seps_are(s, g, x, b, ' ')) {
            continue;
        }
        size_t st = (a == 0 && g->lparen) ? g->start : g->gs[a];
        hit(s, AG_DET_PHONE, st, g->ge[b], false);
        return true;
    }
    /* national format with trunk prefix 0: "020 7946 0958", "06 12 34 56 78", "(030) 1234567" */
    if (s->t[g->gs[a]] == '0' && glen(g, a) >= 2 && glen(g, a) <= 5) {
        for (int b = g->n - 1; b > a; b--) {
            if (!can_end(s, g, b) || !phone_seps_ok(s, g, a, b))
                continue;
            bool ok = true;
            for (int k = a; k <= b; k++)
                if (glen(g, k) < 2)
                    ok = false;
            if (!ok)
                continue;
            size_t n = digits_of(s, g, a, b, d, sizeof d);
            if (n < 9 || n > 12 || d[1] == '0')
                continue;
            size_t st = (a == 0 && g->lparen) ? g->start : g->gs[a];
            hit(s, AG_DET_PHONE, st, g->ge[b], false);
            return true;
        }
    }
    return false;
}

static bool is_numsep(unsigned char c)
{
    return c == ' ' || c == '-' || c == '.' || c == '(' || c == ')';
}

/* Collects the digit groups starting at i and runs the numeric detectors; returns the region end. */
static size_t det_numbers(scan *s, size_t i)
{
    const unsigned char *t = s->t;
    numgroups g;
    memset(&g, 0, sizeof g);
    g.start = i;
    size_t p = i;
    if (t[p] == '+') {
        g.plus = true;
        p++;
    } else if (t[p] == '(') {
        g.lparen = true;
        p++;
    }
    while (g.n < MAX_GROUPS && p < s->len && is_digit(t[p])) {
        size_t b = p;
        while (p < s->len && is_digit(t[p]) && p - b < 24)
            p++;
        g.gs[g.n] = b;
        g.ge[g.n] = p;
        g.n++;
        if (p < s->len && is_digit(t[p])) /* absurdly long digit run: not a detector's number */
            break;
        size_t q = p;
        while (q < s->len && q - p < 3 && is_numsep(t[q]))
            q++;
        if (q == p || q >= s->len || !is_digit(t[q]) || q - p > 2 || g.n == MAX_GROUPS)
            break;
        g.ss[g.n] = p;
        p = q;
    }
    if (g.n == 0)
        return i + 1;
    size_t end = g.ge[g.n - 1];
    /* a digit run glued to letters ("12ab") is an identifier, not a number */
    if (end < s->len && is_alpha(t[end]) && g.n == 1)
        return end;
    for (int a = 0; a < g.n && !s->stop; a++) {
        if (!can_start(s, &g, a))
            continue;
        if (want(s, AG_DET_IPV4) && g.gs[a] >= s->until[AG_DET_IPV4])
            try_ipv4(s, &g, a);
        if (want(s, AG_DET_US_SSN) && g.gs[a] >= s->until[AG_DET_US_SSN])
            try_ssn(s, &g, a);
        if (want(s, AG_DET_CREDIT_CARD) && g.gs[a] >= s->until[AG_DET_CREDIT_CARD])
            try_card(s, &g, a);
        if (want(s, AG_DET_PHONE) && g.gs[a] >= s->until[AG_DET_PHONE])
            try_phone(s, &g, a);
    }
    return end;
}

/* ---- IPv6 ---- */

static void det_ipv6(scan *s, size_t i)
{
    const unsigned char *t = s->t;
    if (i > 0 && (is_hex(t[i - 1]) || t[i - 1] == ':' || t[i - 1] == '.' || is_alnum(t[i - 1])))
        return;
    size_t p = i, colons = 0, hexd = 0;
    while (p < s->len && p - i <= 45 && (is_hex(t[p]) || t[p] == ':' || t[p] == '.')) {
        if (t[p] == ':')
            colons++;
        else if (t[p] != '.')
            hexd++;
        p++;
    }
    if (p - i > 45 || colons < 2 || hexd == 0)
        return;
    if (p < s->len && is_alnum(t[p]))
        return;
    size_t e = p;
    while (e > i && t[e - 1] == '.')
        e--;
    char buf[48];
    memcpy(buf, t + i, e - i);
    buf[e - i] = '\0';
    struct in6_addr a6;
    if (inet_pton(AF_INET6, buf, &a6) != 1)
        return;
    hit(s, AG_DET_IPV6, i, e, false);
}

/* ---- secrets ---- */

static void det_azure_key(scan *s, size_t i)
{
    const unsigned char *t = s->t;
    if (i > 0 && (t[i - 1] == '-' || t[i - 1] == '_' || t[i - 1] == '+' || t[i - 1] == '/'))
        return;
    size_t p = i;
    bool letter = false, digit = false;
    while (p < s->len && p - i <= 32 && is_hex(t[p])) {
        if (is_digit(t[p]))
            digit = true;
        else
            letter = true;
        p++;
    }
    if (p - i != 32 || !letter || !digit)
        return;
    if (p < s->len && (is_alnum(t[p]) || t[p] == '-' || t[p] == '_'))
        return;
    hit(s, AG_DET_AZURE_KEY, i, p, false);
}

static void det_storage_key(scan *s, size_t i)
{
    const unsigned char *t = s->t;
    if (i > 0 && is_b64(t[i - 1]))
        return;
    size_t p = i;
    while (p < s->len && p - i <= 86 && is_b64(t[p]))
        p++;
    if (p - i != 86 || p + 2 > s->len || t[p] != '=' || t[p + 1] != '=')
        return;
    if (p + 2 < s->len && (is_b64(t[p + 2]) || t[p + 2] == '='))
        return;
    hit(s, AG_DET_AZURE_STORAGE_KEY, i, p + 2, false);
}

static bool conn_value_char(unsigned char c)
{
    return c > 0x20 && c != ';' && c != '"' && c != '\'' && c != '<' && c != '>' && c != '`';
}

static void det_conn_string(scan *s, size_t i)
{
    static const char *const anchors[] = {"AccountKey=", "SharedAccessSignature=",
                                          "SharedAccessKey="};
    for (size_t k = 0; k < sizeof anchors / sizeof anchors[0]; k++) {
        if (!has_prefix_ci(s, i, anchors[k]))
            continue;
        size_t v = i + strlen(anchors[k]), p = v;
        while (p < s->len && conn_value_char(s->t[p]))
            p++;
        if (p - v >= 20)
            hit(s, AG_DET_AZURE_CONNECTION_STRING, i, p, false);
        return;
    }
}

static bool query_char(unsigned char c)
{
    return is_alnum(c) || c == '%' || c == '&' || c == '=' || c == '_' || c == '.' || c == '-' ||
           c == '+' || c == '/' || c == ':' || c == '~';
}

/* SAS token: a query string holding sv= and sig=; triggered at "sig=" after '&' or '?' */
static void det_sas(scan *s, size_t i)
{
    const unsigned char *t = s->t;
    size_t qs = i;
    while (qs > 0 && i - qs < 2048 && query_char(t[qs - 1]))
        qs--;
    /* sv= must start the query, follow '&', or follow '=' (SharedAccessSignature=sv=...) */
    bool sv = false;
    for (size_t p = qs; p + 3 <= i; p++)
        if ((p == qs || t[p - 1] == '&' || t[p - 1] == '=') && memcmp(t + p, "sv=", 3) == 0)
            sv = true;
    if (!sv)
        return;
    /* the query string proper starts after the last '?' or at the first "sv=" parameter */
    size_t v = i + 4, p = v;
    while (p < s->len && (is_alnum(t[p]) || t[p] == '%' || t[p] == '+' || t[p] == '/' ||
                          t[p] == '=' || t[p] == '-' || t[p] == '_'))
        p++;
    if (p - v < 20)
        return;
    while (p < s->len && query_char(t[p]))
        p++;
    /* drop a URL path / host before the query: start after the last '/' or ':' that comes before
     * the first '=' (a '/' after it belongs to a value) */
    size_t start = qs;
    for (size_t k = qs; k < i && t[k] != '='; k++)
        if (t[k] == '/' || t[k] == ':')
            start = k + 1;
    hit(s, AG_DET_AZURE_SAS_TOKEN, start, p, false);
}

static void det_aws(scan *s, size_t i)
{
    if (!has_prefix(s, i, "AKIA") && !has_prefix(s, i, "ASIA"))
        return;
    size_t p = i + 4;
    while (p < s->len && p - i < 21 && (is_upper(s->t[p]) || is_digit(s->t[p])))
        p++;
    if (p - i != 20 || (p < s->len && is_alnum(s->t[p])))
        return;
    hit(s, AG_DET_AWS_ACCESS_KEY, i, p, false);
}

static void det_github(scan *s, size_t i)
{
    const unsigned char *t = s->t;
    if (has_prefix(s, i, "github_pat_")) {
        size_t v = i + 11, p = v;
        while (p < s->len && p - v <= 255 && (is_alnum(t[p]) || t[p] == '_'))
            p++;
        if (p - v >= 22 && p - v <= 255)
            hit(s, AG_DET_GITHUB_TOKEN, i, p, false);
        return;
    }
    if (i + 4 > s->len || t[i] != 'g' || t[i + 1] != 'h' || t[i + 3] != '_')
        return;
    unsigned char k = t[i + 2];
    if (k != 'p' && k != 'o' && k != 'u' && k != 's' && k != 'r')
        return;
    size_t v = i + 4, p = v;
    while (p < s->len && p - v <= 255 && is_alnum(t[p]))
        p++;
    if (p - v < 36 || p - v > 255 || (p < s->len && t[p] == '_'))
        return;
    hit(s, AG_DET_GITHUB_TOKEN, i, p, false);
}

static void det_pem(scan *s, size_t i)
{
    if (!has_prefix(s, i, "-----BEGIN "))
        return;
    const unsigned char *t = s->t;
    size_t p = i + 11, lb = p;
    while (p < s->len && p - lb < 48 && (is_upper(t[p]) || t[p] == ' '))
        p++;
    if (!has_prefix(s, p, "-----"))
        return;
    size_t ll = p - lb;
    const char *label = (const char *)t + lb;
    bool priv = (ll >= 11 && memcmp(label + ll - 11, "PRIVATE KEY", 11) == 0) ||
                (ll >= 17 && memcmp(label + ll - 17, "PRIVATE KEY BLOCK", 17) == 0);
    if (!priv)
        return;
    size_t body = p + 5;
    size_t limit = s->len - body < 65536 ? s->len - body : 65536;
    const unsigned char *e = memmem(t + body, limit, "-----END ", 9);
    if (!e) {
        hit(s, AG_DET_PRIVATE_KEY, i, s->len, true);
        return;
    }
    size_t q = (size_t)(e - t) + 9;
    while (q < s->len && q - (size_t)(e - t) < 64 && (is_upper(t[q]) || t[q] == ' '))
        q++;
    if (has_prefix(s, q, "-----"))
        q += 5;
    hit(s, AG_DET_PRIVATE_KEY, i, q, false);
}

/* JWT: header.payload.signature in base64url; the header must decode to a JSON object with alg */
static void det_jwt(scan *s, size_t i)
{
    const unsigned char *t = s->t;
    if (!has_prefix(s, i, "eyJ"))
        return;
    size_t p = i;
    while (p < s->len && p - i <= 2048 && is_b64url(t[p]))
        p++;
    size_t h_end = p;
    if (h_end - i > 2048 || p >= s->len || t[p] != '.')
        return;
    size_t q = ++p;
    while (p < s->len && is_b64url(t[p]))
        p++;
    if (p == q || p >= s->len || t[p] != '.')
        return;
    p++;
    while (p < s->len && is_b64url(t[p]))
        p++;
    if (p < s->len && t[p] == '.' && p + 1 < s->len && is_b64url(t[p + 1]))
        return; /* more than three segments: JWE or something else */
    /* decode the header */
    size_t hl = h_end - i;
    if (hl % 4 == 1)
        return;
    unsigned char in[2052], out[1540];
    for (size_t k = 0; k < hl; k++) {
        unsigned char c = t[i + k];
        in[k] = c == '-' ? '+' : c == '_' ? '/' : c;
    }
    size_t padded = hl;
    while (padded % 4)
        in[padded++] = '=';
    int n = EVP_DecodeBlock(out, in, (int)padded);
    if (n < 0)
        return;
    n -= (int)(padded - hl);
    if (n < 2 || out[0] != '{')
        return;
    cJSON *h = cJSON_ParseWithLength((const char *)out, (size_t)n);
    bool ok = h && cJSON_IsObject(h) && cJSON_IsString(cJSON_GetObjectItemCaseSensitive(h, "alg"));
    cJSON_Delete(h);
    if (ok)
        hit(s, AG_DET_JWT, i, p, false);
}

static void det_iban(scan *s, size_t i)
{
    const unsigned char *t = s->t;
    if (i + 4 > s->len || !is_upper(t[i]) || !is_upper(t[i + 1]) || !is_digit(t[i + 2]) ||
        !is_digit(t[i + 3]))
        return;
    int want_len = ag_iban_country_length((const char *)t + i);
    if (want_len == 0)
        return;
    char buf[40];
    size_t n = 0, p = i;
    while (p < s->len && n < (size_t)want_len) {
        unsigned char c = t[p];
        if (is_upper(c) || is_digit(c)) {
            buf[n++] = (char)c;
            p++;
        } else if (c == ' ' && n % 4 == 0 && p + 1 < s->len && is_alnum(t[p + 1])) {
            p++;
        } else {
            break;
        }
    }
    if (n != (size_t)want_len || (p < s->len && is_alnum(t[p])))
        return;
    if (!ag_iban_valid(buf, n))
        return;
    hit(s, AG_DET_IBAN, i, p, false);
}

#define SECRET_MASK                                                                           \
    (AG_DET_BIT(AG_DET_AZURE_KEY) | AG_DET_BIT(AG_DET_AZURE_STORAGE_KEY) |                    \
     AG_DET_BIT(AG_DET_AZURE_CONNECTION_STRING) | AG_DET_BIT(AG_DET_AWS_ACCESS_KEY) |         \
     AG_DET_BIT(AG_DET_GITHUB_TOKEN) | AG_DET_BIT(AG_DET_JWT) | AG_DET_BIT(AG_DET_IBAN))

#define NUMBER_MASK                                                                           \
    (AG_DET_BIT(AG_DET_PHONE) | AG_DET_BIT(AG_DET_CREDIT_CARD) | AG_DET_BIT(AG_DET_US_SSN) | \
     AG_DET_BIT(AG_DET_IPV4))

#if defined(__SSE2__)
/* Prose the scan can step over: how many of the sixteen bytes at t form a run of words of letters
 * other than 'J', each ended by ' ', '\n', ',', '.' or '\'' (the run ends just after its last such
 * separator). No check in detect_scan finds anything in such a run. A word in it is shorter than
 * 16, and each check a word reaches needs it to hold a digit (numbers, IBAN), to be 20 or 32 long
 * (AWS and Azure OpenAI keys), to be followed by ':', '_' or '=' (IPv6, GitHub tokens, the
 * connection string anchors, "sig="), to run on into 86 base64 bytes (storage key) or to start
 * with "eyJ" (JWT). The separators are none of the bytes a check starts at ('@', '+', '(', ':',
 * '-'). Returns 0 when there is no run; *stop is then the offset of the first byte that is neither
 * a letter nor a separator (16 when there is none), before which no run can start either. */
static inline size_t prose_run(const unsigned char *t, size_t *stop)
{
    __m128i v = _mm_loadu_si128((const __m128i *)(const void *)t);
    /* 'a'..'z' (and 'A'..'Z') moved to -128..-103: one signed comparison each */
    const __m128i letters = _mm_set1_epi8((char)(-128 + 26));
    __m128i lower = _mm_cmplt_epi8(_mm_add_epi8(v, _mm_set1_epi8((char)(0x80 - 'a'))), letters);
    __m128i upper = _mm_cmplt_epi8(_mm_add_epi8(v, _mm_set1_epi8((char)(0x80 - 'A'))), letters);
    upper = _mm_andnot_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('J')), upper);
    __m128i sep = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8(' ')), _mm_cmpeq_epi8(v, _mm_set1_epi8(','))),
                               _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('.')), _mm_cmpeq_epi8(v, _mm_set1_epi8('\n'))));
    sep = _mm_or_si128(sep, _mm_cmpeq_epi8(v, _mm_set1_epi8('\'')));
    unsigned in = (unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(lower, upper), sep));
    unsigned f = (unsigned)__builtin_ctz(~in | 0x10000u); /* the first byte of neither kind */
    unsigned seps = (unsigned)_mm_movemask_epi8(sep) & ((1u << f) - 1u);
    *stop = f;
    return seps ? 32u - (unsigned)__builtin_clz(seps) : 0;
}
#endif

static void detect_scan(const char *text, size_t len, uint32_t mask, ag_detect_cb cb, void *arg, bool fast)
{
    scan s;
    memset(&s, 0, sizeof s);
    s.t = (const unsigned char *)text;
    s.len = len;
    s.mask = mask;
    s.cb = cb;
    s.arg = arg;
    if (!mask)
        return;
    const unsigned char *t = s.t;
    size_t num_until = 0;
    bool any_word = (mask & (SECRET_MASK | NUMBER_MASK | AG_DET_BIT(AG_DET_IPV6) |
                             AG_DET_BIT(AG_DET_PRIVATE_KEY) |
                             AG_DET_BIT(AG_DET_AZURE_SAS_TOKEN))) != 0;
    bool want_email = want(&s, AG_DET_EMAIL), want_v6 = want(&s, AG_DET_IPV6);
    bool want_key = want(&s, AG_DET_AZURE_KEY), want_skey = want(&s, AG_DET_AZURE_STORAGE_KEY);
    bool want_iban = want(&s, AG_DET_IBAN), want_conn = want(&s, AG_DET_AZURE_CONNECTION_STRING);
    size_t i = 0;
#if defined(__SSE2__)
    size_t try_at = 0; /* no prose run starts before this */
#endif
    while (i < len && !s.stop) {
#if defined(__SSE2__)
        if (fast && i >= try_at && i + 16 <= len) {
            size_t stop, run = prose_run(t + i, &stop);
            if (run) {
                i += run;
                continue;
            }
            try_at = i + stop + (stop < 16); /* a run starting up to that byte would end there too */
        }
#endif
        unsigned char c = t[i];
        if (!is_alnum(c)) {
            if (c == '@') {
                if (want_email)
                    det_email(&s, i);
            } else if (any_word && c != ' ' && c != '\n' && (i == 0 || !is_alnum(t[i - 1]))) {
                if ((mask & NUMBER_MASK) && i >= num_until && (c == '+' || c == '(') &&
                    i + 1 < len && is_digit(t[i + 1]))
                    num_until = det_numbers(&s, i);
                if (c == ':' && want_v6)
                    det_ipv6(&s, i);
                if (c == '-' && want(&s, AG_DET_PRIVATE_KEY))
                    det_pem(&s, i);
            }
            i++;
            continue;
        }
        /* a word start (we never stop inside an alphanumeric run) */
        size_t w = i + 1;
        while (w < len && is_alnum(t[w]))
            w++;
        if (!any_word) {
            i = w;
            continue;
        }
        /* The usual prose word: a C_PLAIN start, not 32 long, not before ':'. Of the checks below
         * only the storage key's can apply to it. */
        if (fast && (cclass[c] & C_PLAIN) && w - i != 32 && (w >= len || t[w] != ':')) {
            if (want_skey && i + 88 <= len && t[i + 86] == '=' && t[i + 87] == '=')
                det_storage_key(&s, i);
            i = w;
            continue;
        }
        if ((mask & NUMBER_MASK) && is_digit(c) && i >= num_until &&
            !(i >= 2 && t[i - 1] == '.' && is_alnum(t[i - 2])))
            num_until = det_numbers(&s, i);
        /* IPv6: a ':' right after the first group (at most 4 hex digits) */
        if (want_v6 && w - i <= 4 && w < len && t[w] == ':' && is_hex(c))
            det_ipv6(&s, i);
        /* 32 hex characters: the word is exactly 32 long */
        if (want_key && w - i == 32 && is_hex(c))
            det_azure_key(&s, i);
        /* storage key: "==" right after 86 base64 characters */
        if (want_skey && i + 88 <= len && t[i + 86] == '=' && t[i + 87] == '=')
            det_storage_key(&s, i);
        if (want_iban && is_upper(c) && i + 4 <= len && is_upper(t[i + 1]) && is_digit(t[i + 2]))
            det_iban(&s, i);
        switch (c) {
        case 'A':
        case 'a':
            if (c == 'A' && want(&s, AG_DET_AWS_ACCESS_KEY) && w - i == 20)
                det_aws(&s, i);
            if (want_conn && i + 11 <= len && t[i + 10] == '=')
                det_conn_string(&s, i);
            break;
        case 'S':
        case 's':
            if (want_conn && ((i + 16 <= len && t[i + 15] == '=') || (i + 22 <= len && t[i + 21] == '=')))
                det_conn_string(&s, i);
            if (c == 's' && want(&s, AG_DET_AZURE_SAS_TOKEN) && i > 0 &&
                (t[i - 1] == '&' || t[i - 1] == '?') && has_prefix(&s, i, "sig="))
                det_sas(&s, i);
            break;
        case 'g':
            if (want(&s, AG_DET_GITHUB_TOKEN) && w < len && t[w] == '_')
                det_github(&s, i);
            break;
        case 'e':
            if (want(&s, AG_DET_JWT) && i + 3 <= len && t[i + 1] == 'y' && t[i + 2] == 'J')
                det_jwt(&s, i);
            break;
        default:
            break;
        }
        i = w;
    }
}

void ag_detect_scan(const char *text, size_t len, uint32_t mask, ag_detect_cb cb, void *arg)
{
    detect_scan(text, len, mask, cb, arg, true);
}

void ag_detect_scan_general(const char *text, size_t len, uint32_t mask, ag_detect_cb cb, void *arg)
{
    detect_scan(text, len, mask, cb, arg, false);
}
