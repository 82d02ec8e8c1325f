/* Sharded Prometheus registry and its text exposition (format 0.0.4); see metrics.h.
 *
 * Layout. A family owns its series; a series owns one block of nshards cells, each cell on its own
 * cache line(s) so two workers never write the same line. A cell is `words` 64-bit atomics: a counter
 * (1 word, uint64), a gauge (1 word, double bits) or a histogram (nbuckets + 1 per-bucket counts, the
 * last for +Inf, then the sum as double bits). Buckets are stored per bucket, not cumulatively, so an
 * observation writes two words; the renderer accumulates.
 *
 * Lookup. Label sets live in an open-addressing table sized to at least twice max_series, insert-only
 * (series are never freed before the registry), so readers probe it with acquire loads and no lock.
 * Inserts happen under the family mutex, publish the series with a release store, and append it to
 * by_id (published by a release store of nseries) for the renderer. */
#include "aoai_guard/metrics.h"

#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "aoai_guard/json_strict.h"

#define AG_CACHE_LINE 64
#define AG_OTHER_LEN (sizeof AG_METRICS_OTHER - 1)

typedef _Atomic uint64_t ag_word;

typedef struct ag_series {
    uint64_t hash;
    bool is_other;
    size_t nvalues;
    const char *values[AG_METRICS_MAX_LABELS]; /* point into text */
    size_t lens[AG_METRICS_MAX_LABELS];
    char *text;                                /* the values, NUL-terminated, back to back */
    unsigned char *cells;                      /* nshards * family->stride bytes, aligned */
} ag_series;

struct ag_metric_family {
    ag_metrics *reg;
    char *name;
    char *help;
    ag_metric_type type;
    size_t nlabels;
    char *labels[AG_METRICS_MAX_LABELS];
    size_t nbuckets;
    double buckets[AG_METRICS_MAX_BUCKETS];
    size_t words;                /* 64-bit words per cell */
    size_t stride;               /* bytes per shard cell: words * 8 rounded up to a cache line */
    pthread_mutex_t lock;        /* interning and fn/fn_ctx */
    ag_metric_value_fn fn;
    void *fn_ctx;
    size_t mask;                 /* table size - 1 (a power of two) */
    _Atomic(ag_series *) *table;
    ag_series **by_id;           /* max_series slots, in interning order */
    _Atomic size_t nseries;
    _Atomic(ag_series *) other;
    atomic_bool full;            /* max_series reached: unseen sets go to other without the mutex */
};

struct ag_metrics {
    unsigned nshards;
    unsigned max_series;
    pthread_mutex_t lock;        /* serialises declarations */
    _Atomic size_t nfamilies;
    ag_metric_family *families[AG_METRICS_MAX_FAMILIES];
};

/* ---- small helpers ---- */

static uint64_t dbl_bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static double bits_dbl(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

/* Single-writer update: the owning thread is the only writer of w, so load + store is exact and
 * compiles to a plain add (no lock prefix); readers see either value. */
static void word_add(ag_word *w, uint64_t n)
{
    atomic_store_explicit(w, atomic_load_explicit(w, memory_order_relaxed) + n, memory_order_relaxed);
}

static void word_add_double(ag_word *w, double d)
{
    double cur = bits_dbl(atomic_load_explicit(w, memory_order_relaxed));
    atomic_store_explicit(w, dbl_bits(cur + d), memory_order_relaxed);
}

static uint64_t word_load(const ag_word *w)
{
    return atomic_load_explicit((ag_word *)w, memory_order_relaxed);
}

__attribute__((format(printf, 3, 4)))
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static bool valid_metric_name(const char *s)
{
    if (!s || !*s)
        return false;
    for (size_t i = 0; s[i]; i++) {
        char c = s[i];
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
        if (!alpha && !(i > 0 && c >= '0' && c <= '9'))
            return false;
    }
    return true;
}

static bool valid_label_name(const char *s)
{
    if (!s || !*s || (s[0] == '_' && s[1] == '_'))
        return false;
    for (size_t i = 0; s[i]; i++) {
        char c = s[i];
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
        if (!alpha && !(i > 0 && c >= '0' && c <= '9'))
            return false;
    }
    return true;
}

/* True when the exposition of a family named a (type ta) would contain a sample name equal to b's. */
static bool names_clash(const char *a, ag_metric_type ta, const char *b)
{
    if (strcmp(a, b) == 0)
        return true;
    if (ta != AG_METRIC_HISTOGRAM)
        return false;
    size_t al = strlen(a);
    if (strncmp(a, b, al) != 0)
        return false;
    const char *suffix = b + al;
    return strcmp(suffix, "_bucket") == 0 || strcmp(suffix, "_sum") == 0 || strcmp(suffix, "_count") == 0;
}

static uint64_t hash_values(const char *const *vals, const size_t *lens, size_t n)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a 64 */
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < lens[i]; j++) {
            h ^= (unsigned char)vals[i][j];
            h *= 1099511628211ULL;
        }
        h ^= 0xffu; /* separator: never a byte of valid UTF-8 */
        h *= 1099511628211ULL;
    }
    return h;
}

static bool series_equal(const ag_series *s, const char *const *vals, const size_t *lens)
{
    for (size_t i = 0; i < s->nvalues; i++)
        if (s->lens[i] != lens[i] || memcmp(s->values[i], vals[i], lens[i]) != 0)
            return false;
    return true;
}

static void series_free(ag_series *s)
{
    if (!s)
        return;
    free(s->text);
    free(s->cells);
    free(s);
}

static ag_series *series_new(const ag_metric_family *f, const char *const *vals, const size_t *lens,
                             uint64_t hash, bool is_other)
{
    ag_series *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    size_t total = 1;
    for (size_t i = 0; i < f->nlabels; i++)
        total += lens[i] + 1;
    size_t cell_bytes = f->stride * f->reg->nshards;
    s->text = malloc(total);
    s->cells = aligned_alloc(AG_CACHE_LINE, cell_bytes);
    if (!s->text || !s->cells) {
        series_free(s);
        return NULL;
    }
    for (size_t off = 0; off < cell_bytes; off += sizeof(ag_word))
        atomic_init((ag_word *)(s->cells + off), 0);
    char *p = s->text;
    for (size_t i = 0; i < f->nlabels; i++) {
        memcpy(p, vals[i], lens[i]);
        p[lens[i]] = '\0';
        s->values[i] = p;
        s->lens[i] = lens[i];
        p += lens[i] + 1;
    }
    s->nvalues = f->nlabels;
    s->hash = hash;
    s->is_other = is_other;
    return s;
}

/* Lock-free search of the insert-only table. */
static ag_series *probe(const ag_metric_family *f, uint64_t hash, const char *const *vals,
                        const size_t *lens)
{
    size_t i = (size_t)hash & f->mask;
    for (size_t n = 0; n <= f->mask; n++, i = (i + 1) & f->mask) {
        ag_series *s = atomic_load_explicit(&f->table[i], memory_order_acquire);
        if (!s)
            return NULL;
        if (s->hash == hash && series_equal(s, vals, lens))
            return s;
    }
    return NULL;
}

/* Called with f->lock held; the table always has a free slot (it is at least twice max_series). */
static void table_insert(ag_metric_family *f, ag_series *s)
{
    size_t i = (size_t)s->hash & f->mask;
    while (atomic_load_explicit(&f->table[i], memory_order_relaxed))
        i = (i + 1) & f->mask;
    atomic_store_explicit(&f->table[i], s, memory_order_release);
}

static ag_series *get_other(ag_metric_family *f)
{
    ag_series *o = atomic_load_explicit(&f->other, memory_order_acquire);
    if (o)
        return o;
    pthread_mutex_lock(&f->lock);
    o = atomic_load_explicit(&f->other, memory_order_relaxed);
    if (!o) {
        const char *vals[AG_METRICS_MAX_LABELS];
        size_t lens[AG_METRICS_MAX_LABELS];
        for (size_t i = 0; i < f->nlabels; i++) {
            vals[i] = AG_METRICS_OTHER;
            lens[i] = AG_OTHER_LEN;
        }
        o = series_new(f, vals, lens, 0, true);
        if (o)
            atomic_store_explicit(&f->other, o, memory_order_release);
    }
    pthread_mutex_unlock(&f->lock);
    return o;
}

/* Validates the values of one label set. Returns true when the set may be interned as itself, false
 * when it belongs in "other" (over-long or invalid UTF-8 value, or every value literally "other"). */
static bool normalize(const ag_metric_family *f, const char *const *values, const char **vals,
                      size_t *lens)
{
    bool all_other = f->nlabels > 0;
    for (size_t i = 0; i < f->nlabels; i++) {
        const char *v = (values && values[i]) ? values[i] : "";
        size_t len = strnlen(v, AG_METRICS_MAX_VALUE_LEN + 1);
        if (len > AG_METRICS_MAX_VALUE_LEN)
            return false;
        if (ag_utf8_valid_prefix((const unsigned char *)v, len) != len)
            return false;
        if (len != AG_OTHER_LEN || memcmp(v, AG_METRICS_OTHER, AG_OTHER_LEN) != 0)
            all_other = false;
        vals[i] = v;
        lens[i] = len;
    }
    return !all_other;
}

static ag_series *intern(ag_metric_family *f, const char *const *vals, const size_t *lens)
{
    uint64_t hash = hash_values(vals, lens, f->nlabels);
    ag_series *s = probe(f, hash, vals, lens);
    if (s)
        return s;
    if (atomic_load_explicit(&f->full, memory_order_acquire))
        return get_other(f);
    bool overflow = false;
    pthread_mutex_lock(&f->lock);
    s = probe(f, hash, vals, lens);
    if (!s) {
        size_t n = atomic_load_explicit(&f->nseries, memory_order_relaxed);
        if (n < f->reg->max_series) {
            s = series_new(f, vals, lens, hash, false);
            if (s) {
                table_insert(f, s);
                f->by_id[n] = s;
                atomic_store_explicit(&f->nseries, n + 1, memory_order_release);
            }
        } else {
            atomic_store_explicit(&f->full, true, memory_order_release);
            overflow = true;
        }
    }
    pthread_mutex_unlock(&f->lock);
    return overflow ? get_other(f) : s;
}

/* ---- registry ---- */

ag_metrics *ag_metrics_new(unsigned nshards, unsigned max_series)
{
    if (nshards == 0 || nshards > AG_METRICS_MAX_SHARDS || max_series > AG_METRICS_MAX_SERIES_LIMIT)
        return NULL;
    ag_metrics *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->nshards = nshards;
    m->max_series = max_series ? max_series : AG_METRICS_DEFAULT_MAX_SERIES;
    pthread_mutex_init(&m->lock, NULL);
    atomic_init(&m->nfamilies, 0);
    return m;
}

static void family_free(ag_metric_family *f)
{
    if (!f)
        return;
    size_t n = atomic_load_explicit(&f->nseries, memory_order_acquire);
    for (size_t i = 0; i < n; i++)
        series_free(f->by_id[i]);
    series_free(atomic_load_explicit(&f->other, memory_order_acquire));
    free(f->by_id);
    free((void *)f->table);
    for (size_t i = 0; i < f->nlabels; i++)
        free(f->labels[i]);
    free(f->name);
    free(f->help);
    pthread_mutex_destroy(&f->lock);
    free(f);
}

void ag_metrics_free(ag_metrics *m)
{
    if (!m)
        return;
    size_t n = atomic_load_explicit(&m->nfamilies, memory_order_acquire);
    for (size_t i = 0; i < n; i++)
        family_free(m->families[i]);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

unsigned ag_metrics_nshards(const ag_metrics *m)
{
    return m ? m->nshards : 0;
}

unsigned ag_metrics_control_shard(const ag_metrics *m)
{
    return m ? m->nshards - 1 : 0;
}

ag_metric_family *ag_metrics_find(const ag_metrics *m, const char *name)
{
    if (!m || !name)
        return NULL;
    size_t n = atomic_load_explicit(&m->nfamilies, memory_order_acquire);
    for (size_t i = 0; i < n; i++)
        if (strcmp(m->families[i]->name, name) == 0)
            return m->families[i];
    return NULL;
}

/* Checks a declaration against the rules in metrics.h; 0 or -1 with err. Called with m->lock held. */
static int check_desc(const ag_metrics *m, const ag_metric_desc *d, size_t *nlabels, char *err,
                      size_t errlen)
{
    if (!d->name || !valid_metric_name(d->name)) {
        set_err(err, errlen, "metric name \"%s\" is not [a-zA-Z_:][a-zA-Z0-9_:]*",
                d->name ? d->name : "(null)");
        return -1;
    }
    if (d->type != AG_METRIC_COUNTER && d->type != AG_METRIC_GAUGE && d->type != AG_METRIC_HISTOGRAM) {
        set_err(err, errlen, "%s: unknown metric type %d", d->name, (int)d->type);
        return -1;
    }
    if (!d->help || ag_utf8_valid_prefix((const unsigned char *)d->help, strlen(d->help)) !=
                        strlen(d->help)) {
        set_err(err, errlen, "%s: help text missing or not valid UTF-8", d->name);
        return -1;
    }
    size_t nl = 0;
    for (; d->labels && d->labels[nl]; nl++) {
        if (nl == AG_METRICS_MAX_LABELS) {
            set_err(err, errlen, "%s: more than %d labels", d->name, AG_METRICS_MAX_LABELS);
            return -1;
        }
        const char *l = d->labels[nl];
        if (!valid_label_name(l) || (d->type == AG_METRIC_HISTOGRAM && strcmp(l, "le") == 0)) {
            set_err(err, errlen, "%s: invalid or reserved label name \"%s\"", d->name, l);
            return -1;
        }
        for (size_t j = 0; j < nl; j++)
            if (strcmp(d->labels[j], l) == 0) {
                set_err(err, errlen, "%s: duplicate label name \"%s\"", d->name, l);
                return -1;
            }
    }
    if (d->type == AG_METRIC_HISTOGRAM) {
        if (!d->buckets || d->nbuckets == 0 || d->nbuckets > AG_METRICS_MAX_BUCKETS) {
            set_err(err, errlen, "%s: a histogram needs 1..%d buckets", d->name, AG_METRICS_MAX_BUCKETS);
            return -1;
        }
        for (size_t i = 0; i < d->nbuckets; i++)
            if (!isfinite(d->buckets[i]) || (i > 0 && !(d->buckets[i] > d->buckets[i - 1]))) {
                set_err(err, errlen, "%s: bucket bounds must be finite and strictly increasing",
                        d->name);
                return -1;
            }
    } else if (d->buckets || d->nbuckets) {
        set_err(err, errlen, "%s: only histograms have buckets", d->name);
        return -1;
    }
    size_t n = atomic_load_explicit(&m->nfamilies, memory_order_relaxed);
    for (size_t i = 0; i < n; i++) {
        const ag_metric_family *o = m->families[i];
        if (names_clash(o->name, o->type, d->name) || names_clash(d->name, d->type, o->name)) {
            set_err(err, errlen, "%s: clashes with the metric family %s", d->name, o->name);
            return -1;
        }
    }
    if (n == AG_METRICS_MAX_FAMILIES) {
        set_err(err, errlen, "%s: more than %d metric families", d->name, AG_METRICS_MAX_FAMILIES);
        return -1;
    }
    *nlabels = nl;
    return 0;
}

static ag_metric_family *family_new(ag_metrics *m, const ag_metric_desc *d, size_t nlabels)
{
    ag_metric_family *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->reg = m;
    f->type = d->type;
    f->nlabels = nlabels;
    pthread_mutex_init(&f->lock, NULL);
    atomic_init(&f->nseries, 0);
    atomic_init(&f->other, NULL);
    atomic_init(&f->full, false);
    f->name = strdup(d->name);
    f->help = strdup(d->help);
    bool ok = f->name && f->help;
    for (size_t i = 0; i < nlabels; i++)
        ok = (f->labels[i] = strdup(d->labels[i])) != NULL && ok;
    if (d->type == AG_METRIC_HISTOGRAM) {
        f->nbuckets = d->nbuckets;
        memcpy(f->buckets, d->buckets, d->nbuckets * sizeof *d->buckets);
        f->words = d->nbuckets + 2;
    } else {
        f->words = 1;
    }
    size_t bytes = f->words * sizeof(ag_word);
    f->stride = (bytes + AG_CACHE_LINE - 1) / AG_CACHE_LINE * AG_CACHE_LINE;
    size_t cap = 4;
    while (cap < 2 * (size_t)m->max_series)
        cap *= 2;
    f->mask = cap - 1;
    f->table = calloc(cap, sizeof *f->table);
    f->by_id = calloc(m->max_series, sizeof *f->by_id);
    if (!ok || !f->table || !f->by_id) {
        family_free(f);
        return NULL;
    }
    for (size_t i = 0; i < cap; i++)
        atomic_init(&f->table[i], NULL);
    return f;
}

ag_metric_family *ag_metrics_declare(ag_metrics *m, const ag_metric_desc *desc, char *err, size_t errlen)
{
    if (!m || !desc) {
        set_err(err, errlen, "no registry or no description");
        return NULL;
    }
    pthread_mutex_lock(&m->lock);
    size_t nlabels = 0;
    ag_metric_family *f = NULL;
    if (check_desc(m, desc, &nlabels, err, errlen) == 0) {
        f = family_new(m, desc, nlabels);
        if (f && nlabels == 0 && !intern(f, NULL, NULL)) {
            family_free(f);
            f = NULL;
        }
        if (f) {
            size_t n = atomic_load_explicit(&m->nfamilies, memory_order_relaxed);
            m->families[n] = f;
            atomic_store_explicit(&m->nfamilies, n + 1, memory_order_release);
        } else {
            set_err(err, errlen, "%s: out of memory", desc->name);
        }
    }
    pthread_mutex_unlock(&m->lock);
    return f;
}

int ag_metric_family_set_fn(ag_metric_family *f, ag_metric_value_fn fn, void *ctx)
{
    if (!f || f->nlabels != 0 || f->type == AG_METRIC_HISTOGRAM)
        return -1;
    pthread_mutex_lock(&f->lock);
    f->fn = fn;
    f->fn_ctx = ctx;
    pthread_mutex_unlock(&f->lock);
    return 0;
}

size_t ag_metric_family_nseries(const ag_metric_family *f)
{
    return f ? atomic_load_explicit(&((ag_metric_family *)f)->nseries, memory_order_acquire) : 0;
}

/* ---- hot path ---- */

ag_metric_handle ag_metric_series(ag_metric_family *f, unsigned shard, const char *const *values)
{
    ag_metric_handle h = { f, NULL };
    if (!f || shard >= f->reg->nshards)
        return h;
    const char *vals[AG_METRICS_MAX_LABELS];
    size_t lens[AG_METRICS_MAX_LABELS];
    ag_series *s = normalize(f, values, vals, lens) ? intern(f, vals, lens) : get_other(f);
    if (s)
        h.cell = s->cells + (size_t)shard * f->stride;
    return h;
}

ag_metric_handle ag_metric_series_memo(ag_metric_memo *m, ag_metric_family *f, unsigned shard,
                                       const char *const *values)
{
    if (!f || f->nlabels > AG_METRIC_MEMO_LABELS)
        return ag_metric_series(f, shard, values);
    bool hit = m->family == f && m->shard == shard;
    for (size_t i = 0; hit && i < f->nlabels; i++)
        hit = strcmp(m->vals[i], values && values[i] ? values[i] : "") == 0;
    if (hit)
        return m->h;
    ag_metric_handle h = ag_metric_series(f, shard, values);
    m->family = NULL;
    for (size_t i = 0; i < f->nlabels; i++) {
        const char *v = values && values[i] ? values[i] : "";
        size_t n = strnlen(v, AG_METRIC_MEMO_VALUE + 1);
        if (n > AG_METRIC_MEMO_VALUE)
            return h; /* too long to remember */
        memcpy(m->vals[i], v, n + 1);
    }
    m->family = f;
    m->shard = shard;
    m->h = h;
    return h;
}

void ag_metric_inc(ag_metric_handle h)
{
    ag_metric_add(h, 1);
}

void ag_metric_add(ag_metric_handle h, uint64_t n)
{
    if (!h.cell || h.family->type != AG_METRIC_COUNTER)
        return;
    word_add((ag_word *)h.cell, n);
}

void ag_metric_set(ag_metric_handle h, double v)
{
    if (!h.cell || h.family->type != AG_METRIC_GAUGE)
        return;
    atomic_store_explicit((ag_word *)h.cell, dbl_bits(v), memory_order_relaxed);
}

void ag_metric_gauge_add(ag_metric_handle h, double d)
{
    if (!h.cell || h.family->type != AG_METRIC_GAUGE)
        return;
    word_add_double((ag_word *)h.cell, d);
}

void ag_metric_observe(ag_metric_handle h, double v)
{
    if (!h.cell || h.family->type != AG_METRIC_HISTOGRAM || isnan(v))
        return;
    const ag_metric_family *f = h.family;
    ag_word *w = h.cell;
    size_t i = 0;
    while (i < f->nbuckets && v > f->buckets[i])
        i++;
    word_add(&w[i], 1);
    word_add_double(&w[f->nbuckets + 1], v);
}

/* ---- reading ---- */

static const ag_word *cell_at(const ag_metric_family *f, const ag_series *s, unsigned shard)
{
    return (const ag_word *)(s->cells + (size_t)shard * f->stride);
}

static uint64_t sum_u64(const ag_metric_family *f, const ag_series *s, size_t word)
{
    uint64_t t = 0;
    for (unsigned sh = 0; sh < f->reg->nshards; sh++)
        t += word_load(&cell_at(f, s, sh)[word]);
    return t;
}

static double sum_double(const ag_metric_family *f, const ag_series *s, size_t word)
{
    double t = 0;
    for (unsigned sh = 0; sh < f->reg->nshards; sh++)
        t += bits_dbl(word_load(&cell_at(f, s, sh)[word]));
    return t;
}

bool ag_metric_read(const ag_metric_family *f, const char *const *values, double *value, uint64_t *count)
{
    if (!f)
        return false;
    const char *vals[AG_METRICS_MAX_LABELS];
    size_t lens[AG_METRICS_MAX_LABELS];
    const ag_series *s;
    if (normalize(f, values, vals, lens))
        s = probe(f, hash_values(vals, lens, f->nlabels), vals, lens);
    else
        s = atomic_load_explicit(&((ag_metric_family *)f)->other, memory_order_acquire);
    if (!s)
        return false;
    double v = 0;
    uint64_t c = 0;
    switch (f->type) {
    case AG_METRIC_COUNTER:
        c = sum_u64(f, s, 0);
        v = (double)c;
        break;
    case AG_METRIC_GAUGE:
        v = sum_double(f, s, 0);
        break;
    case AG_METRIC_HISTOGRAM:
        for (size_t i = 0; i <= f->nbuckets; i++)
            c += sum_u64(f, s, i);
        v = sum_double(f, s, f->nbuckets + 1);
        break;
    }
    if (value)
        *value = v;
    if (count)
        *count = c;
    return true;
}

/* ---- rendering ---- */

/* Shortest of %.15g / %.17g that reads back as v; "NaN", "+Inf", "-Inf" as the format wants. */
static void fmt_double(char *buf, size_t len, double v)
{
    if (isnan(v)) {
        snprintf(buf, len, "%s", "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(buf, len, "%s", v > 0 ? "+Inf" : "-Inf");
        return;
    }
    snprintf(buf, len, "%.15g", v);
    if (strtod(buf, NULL) != v)
        snprintf(buf, len, "%.17g", v);
}

/* Appends the NULL-terminated list of strings in order; 0 or -1. */
__attribute__((sentinel))
static int put(struct evbuffer *out, ...)
{
    va_list ap;
    va_start(ap, out);
    int rc = 0;
    for (const char *s = va_arg(ap, const char *); s && rc == 0; s = va_arg(ap, const char *))
        rc = evbuffer_add(out, s, strlen(s));
    va_end(ap);
    return rc;
}

/* Appends s[0..len) escaping \ and newline, and " too when in_quotes. */
static int put_escaped(struct evbuffer *out, const char *s, size_t len, bool in_quotes)
{
    size_t run = 0;
    for (size_t i = 0; i < len; i++) {
        const char *esc = NULL;
        if (s[i] == '\\')
            esc = "\\\\";
        else if (s[i] == '\n')
            esc = "\\n";
        else if (s[i] == '"' && in_quotes)
            esc = "\\\"";
        if (!esc)
            continue;
        if (evbuffer_add(out, s + run, i - run) != 0 || evbuffer_add(out, esc, 2) != 0)
            return -1;
        run = i + 1;
    }
    return evbuffer_add(out, s + run, len - run);
}

/* name{l1="v1",...[,le="x"]} followed by a space. */
static int put_sample_head(struct evbuffer *out, const ag_metric_family *f, const char *suffix,
                           const ag_series *s, const char *le)
{
    if (put(out, f->name, suffix, (const char *)NULL) != 0)
        return -1;
    if (f->nlabels > 0 || le) {
        for (size_t i = 0; i < f->nlabels; i++) {
            if (put(out, i ? "," : "{", f->labels[i], "=\"", (const char *)NULL) != 0 ||
                put_escaped(out, s->values[i], s->lens[i], true) != 0 ||
                put(out, "\"", (const char *)NULL) != 0)
                return -1;
        }
        if (le && put(out, f->nlabels ? ",le=\"" : "{le=\"", le, "\"", (const char *)NULL) != 0)
            return -1;
        if (put(out, "}", (const char *)NULL) != 0)
            return -1;
    }
    return put(out, " ", (const char *)NULL);
}

static int render_series(struct evbuffer *out, const ag_metric_family *f, const ag_series *s)
{
    char num[64];
    switch (f->type) {
    case AG_METRIC_COUNTER:
        snprintf(num, sizeof num, "%llu\n", (unsigned long long)sum_u64(f, s, 0));
        return put_sample_head(out, f, "", s, NULL) ? -1 : put(out, num, (const char *)NULL);
    case AG_METRIC_GAUGE:
        fmt_double(num, sizeof num, sum_double(f, s, 0));
        return put_sample_head(out, f, "", s, NULL) ? -1 : put(out, num, "\n", (const char *)NULL);
    case AG_METRIC_HISTOGRAM: {
        uint64_t cumulative = 0;
        char le[64];
        for (size_t i = 0; i <= f->nbuckets; i++) {
            cumulative += sum_u64(f, s, i);
            if (i < f->nbuckets)
                fmt_double(le, sizeof le, f->buckets[i]);
            else
                snprintf(le, sizeof le, "%s", "+Inf");
            snprintf(num, sizeof num, "%llu\n", (unsigned long long)cumulative);
            if (put_sample_head(out, f, "_bucket", s, le) != 0 || put(out, num, (const char *)NULL) != 0)
                return -1;
        }
        fmt_double(num, sizeof num, sum_double(f, s, f->nbuckets + 1));
        if (put_sample_head(out, f, "_sum", s, NULL) != 0 || put(out, num, "\n", (const char *)NULL) != 0)
            return -1;
        snprintf(num, sizeof num, "%llu\n", (unsigned long long)cumulative);
        return put_sample_head(out, f, "_count", s, NULL) ? -1 : put(out, num, (const char *)NULL);
    }
    }
    return -1;
}

static int cmp_series(const void *a, const void *b)
{
    const ag_series *x = *(ag_series *const *)a, *y = *(ag_series *const *)b;
    if (x->is_other != y->is_other)
        return x->is_other ? 1 : -1;
    for (size_t i = 0; i < x->nvalues; i++) {
        int c = strcmp(x->values[i], y->values[i]);
        if (c)
            return c;
    }
    return 0;
}

static const char *type_name(ag_metric_type t)
{
    switch (t) {
    case AG_METRIC_COUNTER: return "counter";
    case AG_METRIC_GAUGE: return "gauge";
    case AG_METRIC_HISTOGRAM: return "histogram";
    }
    return "untyped";
}

static int render_family(struct evbuffer *out, ag_metric_family *f)
{
    if (put(out, "# HELP ", f->name, " ", (const char *)NULL) != 0 ||
        put_escaped(out, f->help, strlen(f->help), false) != 0 ||
        put(out, "\n# TYPE ", f->name, " ", type_name(f->type), "\n", (const char *)NULL) != 0)
        return -1;
    pthread_mutex_lock(&f->lock);
    ag_metric_value_fn fn = f->fn;
    void *ctx = f->fn_ctx;
    pthread_mutex_unlock(&f->lock);
    if (fn) {
        char num[64];
        fmt_double(num, sizeof num, fn(ctx));
        return put(out, f->name, " ", num, "\n", (const char *)NULL);
    }
    size_t n = atomic_load_explicit(&f->nseries, memory_order_acquire);
    ag_series *other = atomic_load_explicit(&f->other, memory_order_acquire);
    ag_series **list = malloc((n + 1) * sizeof *list);
    if (!list)
        return -1;
    memcpy(list, f->by_id, n * sizeof *list);
    if (other)
        list[n++] = other;
    qsort(list, n, sizeof *list, cmp_series);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = render_series(out, f, list[i]);
    free(list);
    return rc;
}

int ag_metrics_render(ag_metrics *m, struct evbuffer *out)
{
    if (!m || !out)
        return -1;
    size_t n = atomic_load_explicit(&m->nfamilies, memory_order_acquire);
    for (size_t i = 0; i < n; i++)
        if (render_family(out, m->families[i]) != 0)
            return -1;
    return 0;
}

/* ---- helpers for the pipeline ---- */

double ag_metrics_process_rss_bytes(void *ctx)
{
    (void)ctx;
    int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NAN;
    char buf[256];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return NAN;
    buf[n] = '\0';
    /* "size resident shared text lib data dt", in pages */
    char *end;
    strtoull(buf, &end, 10);
    if (end == buf || *end != ' ')
        return NAN;
    const char *p = end + 1;
    unsigned long long resident = strtoull(p, &end, 10);
    long page = sysconf(_SC_PAGESIZE);
    if (end == p || page <= 0)
        return NAN;
    return (double)resident * (double)page;
}

const char *ag_metrics_code_class(int status)
{
    static const char *const classes[] = { "1xx", "2xx", "3xx", "4xx", "5xx" };
    if (status < 100 || status > 599)
        return AG_METRICS_OTHER;
    return classes[status / 100 - 1];
}

void ag_metrics_conf_default(ag_metrics_conf *c)
{
    c->max_series = AG_METRICS_DEFAULT_MAX_SERIES;
    c->app_label = AG_METRICS_APP_LABEL_APP_ID;
}

int ag_metrics_conf_parse(const cJSON *obj, const char *path, ag_metrics_conf *out, ag_conf_err *err)
{
    static const char *const keys[] = { "max_series_per_family", "app_label", NULL };
    static const char *const modes[] = { "app_id", "off", NULL };
    if (!obj)
        return 0;
    if (ag_conf_object(obj, path, keys, err) != 0)
        return -1;
    long long max_series = out->max_series;
    int mode = (int)out->app_label;
    if (ag_conf_int(obj, path, "max_series_per_family", 1, AG_METRICS_MAX_SERIES_LIMIT, &max_series,
                    err) != 0 ||
        ag_conf_enum(obj, path, "app_label", modes, &mode, err) != 0)
        return -1;
    out->max_series = (unsigned)max_series;
    out->app_label = (ag_metrics_app_label)mode;
    return 0;
}

static const double latency_buckets[] = { 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                          0.5, 1, 2.5, 5, 10, 30, 60, 120 };

const double *ag_metrics_latency_buckets(size_t *n)
{
    if (n)
        *n = sizeof latency_buckets / sizeof latency_buckets[0];
    return latency_buckets;
}

int ag_metrics_std_init(ag_metrics *m, const ag_metrics_conf *conf, const char *version,
                        ag_metrics_std *out, char *err, size_t errlen)
{
    static const char *const l_req[] = { "deployment", "operation", "code_class", NULL };
    static const char *const l_op[] = { "operation", NULL };
    static const char *const l_up[] = { "upstream", NULL };
    static const char *const l_tok[] = { "deployment", "kind", NULL };
    static const char *const l_app[] = { "app", "kind", NULL };
    static const char *const l_pol[] = { "policy", NULL };
    static const char *const l_rule[] = { "rule", "action", NULL };
    static const char *const l_upr[] = { "upstream", "reason", NULL };
    static const char *const l_reason[] = { "reason", NULL };
    static const char *const l_scope[] = { "scope", NULL };
    static const char *const l_ver[] = { "version", NULL };
    if (!m || !out) {
        set_err(err, errlen, "no registry or no output");
        return -1;
    }
    memset(out, 0, sizeof *out);
    const ag_metric_type C = AG_METRIC_COUNTER, G = AG_METRIC_GAUGE, H = AG_METRIC_HISTOGRAM;
    size_t nb = sizeof latency_buckets / sizeof latency_buckets[0];
    bool per_app = !conf || conf->app_label == AG_METRICS_APP_LABEL_APP_ID;
    struct {
        ag_metric_family **slot;
        ag_metric_desc d;
    } decl[] = {
        { &out->requests_total, { "aoai_guard_requests_total",
            "Requests answered, by deployment, operation and status class.", C, l_req, NULL, 0 } },
        { &out->request_duration_seconds, { "aoai_guard_request_duration_seconds",
            "Time from the first request byte to the last response byte.", H, l_op,
            latency_buckets, nb } },
        { &out->upstream_ttfb_seconds, { "aoai_guard_upstream_ttfb_seconds",
            "Time from sending a request upstream to its first response byte.", H, l_up,
            latency_buckets, nb } },
        { &out->tokens_total, { "aoai_guard_tokens_total",
            "Tokens reported by Azure OpenAI usage, by deployment and kind (prompt, completion).", C,
            l_tok, NULL, 0 } },
        { per_app ? &out->app_tokens_total : NULL, { "aoai_guard_app_tokens_total",
            "Tokens by calling application id (capped; excess apps count as other).", C, l_app,
            NULL, 0 } },
        { &out->ratelimit_rejections_total, { "aoai_guard_ratelimit_rejections_total",
            "Requests rejected by a rate-limit policy.", C, l_pol, NULL, 0 } },
        { &out->policy_decisions_total, { "aoai_guard_policy_decisions_total",
            "Prompt policy decisions, by rule and action.", C, l_rule, NULL, 0 } },
        { &out->upstream_up, { "aoai_guard_upstream_up",
            "1 when the upstream is considered healthy, else 0.", G, l_up, NULL, 0 } },
        { &out->upstream_circuit_open, { "aoai_guard_upstream_circuit_open",
            "1 while the upstream's circuit breaker is open, else 0.", G, l_up, NULL, 0 } },
        { &out->upstream_failures_total, { "aoai_guard_upstream_failures_total",
            "Failed upstream attempts, by upstream and reason.", C, l_upr, NULL, 0 } },
        { &out->auth_failures_total, { "aoai_guard_auth_failures_total",
            "Requests refused by authentication, by reason.", C, l_reason, NULL, 0 } },
        { &out->jwks_age_seconds, { "aoai_guard_jwks_age_seconds",
            "Seconds since the signing keys were last refreshed successfully.", G, NULL, NULL, 0 } },
        { &out->jwks_refresh_failures_total, { "aoai_guard_jwks_refresh_failures_total",
            "Failed signing-key (JWKS) refreshes.", C, NULL, NULL, 0 } },
        { &out->credential_refresh_failures_total, { "aoai_guard_credential_refresh_failures_total",
            "Failed refreshes of the proxy's own access tokens, by scope.", C, l_scope, NULL, 0 } },
        { &out->audit_queue_depth, { "aoai_guard_audit_queue_depth",
            "Audit records waiting in memory to be spooled or sent.", G, NULL, NULL, 0 } },
        { &out->audit_spool_bytes, { "aoai_guard_audit_spool_bytes",
            "Bytes of audit records in the durable spool, not yet acknowledged.", G, NULL, NULL, 0 } },
        { &out->audit_records_sent_total, { "aoai_guard_audit_records_sent_total",
            "Audit records acknowledged by their sink.", C, NULL, NULL, 0 } },
        { &out->audit_retries_total, { "aoai_guard_audit_retries_total",
            "Audit upload attempts retried.", C, NULL, NULL, 0 } },
        { &out->audit_dropped_total, { "aoai_guard_audit_dropped_total",
            "Audit records dropped (rejected by the sink or by policy).", C, NULL, NULL, 0 } },
        { &out->open_connections, { "aoai_guard_open_connections",
            "Client connections open, over all workers.", G, NULL, NULL, 0 } },
        { &out->process_resident_memory_bytes, { "aoai_guard_process_resident_memory_bytes",
            "Resident set size of the process in bytes.", G, NULL, NULL, 0 } },
        { &out->build_info, { "aoai_guard_build_info",
            "Always 1; the version label names the running build.", G, l_ver, NULL, 0 } },
    };
    for (size_t i = 0; i < sizeof decl / sizeof decl[0]; i++) {
        if (!decl[i].slot)
            continue;
        *decl[i].slot = ag_metrics_declare(m, &decl[i].d, err, errlen);
        if (!*decl[i].slot)
            return -1;
    }
    ag_metric_family_set_fn(out->process_resident_memory_bytes, ag_metrics_process_rss_bytes, NULL);
    const char *ver[] = { version ? version : AG_VERSION, NULL };
    ag_metric_handle bi = ag_metric_series(out->build_info, ag_metrics_control_shard(m), ver);
    if (!bi.cell) {
        set_err(err, errlen, "aoai_guard_build_info: out of memory");
        return -1;
    }
    ag_metric_set(bi, 1);
    return 0;
}
