/* Heuristic token estimates of request bodies (see token_estimate.h). Weights are in hundredths of
 * a token and were fitted to o200k_base counts of the corpus in tests/unit/limit/corpus. */
#include "aoai_guard/token_estimate.h"

#include <math.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

typedef enum cp_class {
    CC_END = 0,
    CC_LOWER,   /* ASCII a-z */
    CC_UPPER,   /* ASCII A-Z */
    CC_XLATIN,  /* accented Latin letters, combining marks */
    CC_SCRIPT,  /* letters of other alphabets: Greek, Cyrillic, Hebrew, Arabic, Indic, Thai... */
    CC_DIGIT,
    CC_SPACE,   /* ' ' and tab */
    CC_NEWLINE, /* \n \r and other vertical whitespace */
    CC_PUNCT,   /* ASCII punctuation, general punctuation */
    CC_CJK,     /* Han, kana, Hangul, CJK punctuation, fullwidth forms */
    CC_SYMBOL,  /* emoji and other symbols */
    CC_INVALID, /* a byte that is not valid UTF-8 */
} cp_class;

/* Weights, hundredths of a token. */
#define W_WORD_SHORT 100 /* letter piece of <= 4 letters */
#define W_WORD_MID 100   /* 5..7 letters */
#define W_WORD_LONG 130  /* 8..10 letters */
#define W_WORD_EXTRA 28  /* per letter beyond 10 */
#define W_XLATIN 45      /* per accented letter inside a Latin word */
#define W_SCRIPT 30      /* per letter of another alphabet */
#define W_DIGITS 100     /* per group of up to 3 digits */
#define W_SPACE_RUN 100  /* a run of spaces that does not attach to the next piece */
#define W_NEWLINE 100    /* a run of line breaks not absorbed by punctuation */
#define W_PUNCT_FIRST 100
#define W_PUNCT_MORE 50  /* each further punctuation mark of a run */
#define W_CJK 100
#define W_SYMBOL 200
#define W_INVALID 100

static int decode(const unsigned char *s, size_t len, size_t i, long *cp)
{
    unsigned char c = s[i];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    int n = (c >= 0xF0 && c <= 0xF4) ? 4 : (c >= 0xE0) ? 3 : (c >= 0xC2 && c <= 0xDF) ? 2 : 0;
    if (n == 0 || i + (size_t)n > len || c > 0xF4) {
        *cp = -1;
        return 1;
    }
    long v = c & (0xFF >> (n + 1));
    for (int k = 1; k < n; k++) {
        if ((s[i + (size_t)k] & 0xC0) != 0x80) {
            *cp = -1;
            return 1;
        }
        v = (v << 6) | (s[i + (size_t)k] & 0x3F);
    }
    *cp = v;
    return n;
}

static cp_class classify(long cp)
{
    if (cp < 0)
        return CC_INVALID;
    if (cp < 0x80) {
        if (cp >= 'a' && cp <= 'z')
            return CC_LOWER;
        if (cp >= 'A' && cp <= 'Z')
            return CC_UPPER;
        if (cp >= '0' && cp <= '9')
            return CC_DIGIT;
        if (cp == ' ' || cp == '\t')
            return CC_SPACE;
        if (cp == '\n' || cp == '\r' || cp == '\v' || cp == '\f')
            return CC_NEWLINE;
        if (cp < 0x20 || cp == 0x7F)
            return CC_SYMBOL;
        return CC_PUNCT;
    }
    if (cp == 0xA0)
        return CC_SPACE;
    if ((cp >= 0xC0 && cp <= 0x24F && cp != 0xD7 && cp != 0xF7) || (cp >= 0x250 && cp <= 0x2AF) ||
        (cp >= 0x300 && cp <= 0x36F) || (cp >= 0x1E00 && cp <= 0x1EFF))
        return CC_XLATIN;
    if ((cp >= 0x370 && cp <= 0x3FF) || (cp >= 0x400 && cp <= 0x52F) || (cp >= 0x530 && cp <= 0x58F) ||
        (cp >= 0x590 && cp <= 0x5FF) || (cp >= 0x600 && cp <= 0x6FF) || (cp >= 0x750 && cp <= 0x77F) ||
        (cp >= 0x900 && cp <= 0xDFF) || (cp >= 0xE00 && cp <= 0xEFF) || (cp >= 0x10A0 && cp <= 0x10FF))
        return CC_SCRIPT;
    if ((cp >= 0x2E80 && cp <= 0x2FDF) || (cp >= 0x3000 && cp <= 0x31FF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
        (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0xA960 && cp <= 0xA97F) || (cp >= 0xAC00 && cp <= 0xD7AF) ||
        (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0xFE30 && cp <= 0xFE4F) || (cp >= 0xFF00 && cp <= 0xFFEF) ||
        (cp >= 0x20000 && cp <= 0x3FFFF))
        return CC_CJK;
    if (cp == 0x2028 || cp == 0x2029 || cp == 0x85)
        return CC_NEWLINE;
    if ((cp >= 0x2000 && cp <= 0x200A) || cp == 0x3000)
        return CC_SPACE;
    if ((cp >= 0x80 && cp <= 0xBF) || (cp >= 0x2010 && cp <= 0x206F))
        return CC_PUNCT;
    return CC_SYMBOL;
}

/* classify() of every ASCII code point, looked up instead of computed on the hot path. */
#define Y_ CC_SYMBOL
#define S_ CC_SPACE
#define N_ CC_NEWLINE
#define P_ CC_PUNCT
#define D_ CC_DIGIT
#define U_ CC_UPPER
#define L_ CC_LOWER
static const unsigned char ascii_class[128] = {
    Y_, Y_, Y_, Y_, Y_, Y_, Y_, Y_, Y_, S_, N_, N_, N_, N_, Y_, Y_, /* 0x00: \t \n \v \f \r */
    Y_, Y_, Y_, Y_, Y_, Y_, Y_, Y_, Y_, Y_, Y_, Y_, Y_, Y_, Y_, Y_, /* 0x10 */
    S_, P_, P_, P_, P_, P_, P_, P_, P_, P_, P_, P_, P_, P_, P_, P_, /* 0x20: space, !"#$%&'()*+,-./ */
    D_, D_, D_, D_, D_, D_, D_, D_, D_, D_, P_, P_, P_, P_, P_, P_, /* 0x30: 0-9 :;<=>? */
    P_, U_, U_, U_, U_, U_, U_, U_, U_, U_, U_, U_, U_, U_, U_, U_, /* 0x40: @ A-O */
    U_, U_, U_, U_, U_, U_, U_, U_, U_, U_, U_, P_, P_, P_, P_, P_, /* 0x50: P-Z [\]^_ */
    P_, L_, L_, L_, L_, L_, L_, L_, L_, L_, L_, L_, L_, L_, L_, L_, /* 0x60: ` a-o */
    L_, L_, L_, L_, L_, L_, L_, L_, L_, L_, L_, P_, P_, P_, P_, Y_, /* 0x70: p-z {|}~ DEL */
};
#undef Y_
#undef S_
#undef N_
#undef P_
#undef D_
#undef U_
#undef L_

static bool is_letter(cp_class c)
{
    return c == CC_LOWER || c == CC_UPPER || c == CC_XLATIN || c == CC_SCRIPT;
}

/* Cost of one letter piece of len ASCII letters. */
static long long piece_cost(size_t len)
{
    if (len <= 4)
        return W_WORD_SHORT;
    if (len <= 7)
        return W_WORD_MID;
    if (len <= 10)
        return W_WORD_LONG;
    return W_WORD_LONG + (long long)(len - 10) * W_WORD_EXTRA;
}

typedef struct scan {
    const unsigned char *s;
    size_t len;
    size_t i;
} scan;

/* The class of the code point at the cursor and its length in bytes, packed in one word so the
 * scanning loops keep both in registers: class in the low 4 bits, length above. */
#define PK(c, n) ((unsigned)(c) | ((unsigned)(n) << 4))
#define PK_CLASS(p) ((cp_class)((p) & 15u))
#define PK_LEN(p) ((size_t)((p) >> 4))

static inline unsigned peek(const scan *sc)
{
    if (sc->i >= sc->len)
        return PK(CC_END, 0);
    unsigned char b = sc->s[sc->i];
    if (b < 0x80) /* ASCII: no decoding, a table lookup */
        return PK(ascii_class[b], 1);
    long cp;
    int n = decode(sc->s, sc->len, sc->i, &cp);
    return PK(classify(cp), n);
}

/* Prices a run of letters: ASCII letters split at case changes (camelCase, HTTPServer). */
static long long word_cost(scan *sc)
{
    long long cost = 0;
    size_t piece = 0, script = 0, xlatin = 0;
    cp_class prev = CC_END;
    for (;;) {
        unsigned pk = peek(sc);
        cp_class c = PK_CLASS(pk);
        if (!is_letter(c))
            break;
        if (c == CC_SCRIPT) {
            script++;
        } else {
            if (c == CC_XLATIN)
                xlatin++;
            bool split = false;
            if (piece > 0 && c == CC_UPPER && prev == CC_LOWER)
                split = true;
            if (piece > 1 && c == CC_LOWER && prev == CC_UPPER) {
                /* "HTTPServer": the last capital starts the next piece */
                cost += piece_cost(piece - 1);
                piece = 1;
            } else if (split) {
                cost += piece_cost(piece);
                piece = 0;
            }
            piece++;
        }
        prev = c;
        sc->i += PK_LEN(pk);
        if (c == CC_LOWER) {
            /* More lower-case ASCII letters only lengthen the piece: take the run at once. */
            size_t i = sc->i;
            while (i < sc->len && sc->s[i] >= 'a' && sc->s[i] <= 'z')
                i++;
            piece += i - sc->i;
            sc->i = i;
        }
    }
    if (piece)
        cost += piece_cost(piece);
    cost += (long long)xlatin * W_XLATIN;
    long long sc_cost = (long long)script * W_SCRIPT;
    if (script && sc_cost < 100)
        sc_cost = 100;
    return cost + sc_cost;
}

static inline bool ascii_lower(unsigned char b) { return b >= 'a' && b <= 'z'; }
static inline bool ascii_letter(unsigned char b) { return (unsigned char)((b | 0x20) - 'a') < 26; }

/* The common word, [A-Z]?[a-z]* ended by an ASCII byte that is not a letter (or the end): one piece
 * of its length, as word_cost prices it. Returns the word's end, or start when the word is another
 * kind (more capitals, a letter beyond ASCII) and word_cost must price it. */
static inline size_t plain_word_end(const unsigned char *s, size_t len, size_t start)
{
    size_t j = start + (s[start] >= 'A' && s[start] <= 'Z');
    while (j < len && ascii_lower(s[j]))
        j++;
    if (j < len && (s[j] >= 0x80 || ascii_letter(s[j])))
        return start;
    return j;
}

#if defined(__SSE2__)
/* Plain words and the single spaces between them among the sixteen bytes at s (s[0] a letter), as
 * the loop below takes them one by one: the bytes up to and including the last space that ends a
 * plain word ([A-Z]?[a-z]*, upper case only at its start) and is followed by a letter. Adds those
 * words' prices to *cost and returns how many bytes they and their spaces take; 0 when there is no
 * such space. */
static inline size_t plain_words16(const unsigned char *s, long long *cost)
{
    __m128i v = _mm_loadu_si128((const __m128i *)(const void *)s);
    /* 'a'..'z' (and 'A'..'Z') moved to -128..-103: one signed comparison each */
    const __m128i n26 = _mm_set1_epi8((char)(-128 + 26));
    unsigned lower = (unsigned)_mm_movemask_epi8(_mm_cmplt_epi8(_mm_add_epi8(v, _mm_set1_epi8((char)(0x80 - 'a'))), n26));
    unsigned upper = (unsigned)_mm_movemask_epi8(_mm_cmplt_epi8(_mm_add_epi8(v, _mm_set1_epi8((char)(0x80 - 'A'))), n26));
    unsigned space = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(' ')));
    unsigned letter = lower | upper;
    unsigned joins = space & (letter >> 1); /* a space with a letter right after it */
    /* where the words stop being plain: a space not before a letter, a capital inside a word, any
     * other byte */
    unsigned stop = (space & ~joins) | (upper & ~((space << 1) | 1u)) | (~(letter | space) & 0xFFFFu) | 0x10000u;
    unsigned ends = joins & ((1u << __builtin_ctz(stop)) - 1u);
    size_t start = 0;
    for (; ends; ends &= ends - 1) {
        size_t at = (size_t)__builtin_ctz(ends);
        *cost += piece_cost(at - start);
        start = at + 1;
    }
    return start;
}
#endif

static long long tokens_text(const char *text, size_t len, bool fast)
{
    scan sc = { (const unsigned char *)text, len, 0 };
    long long cost = 0; /* hundredths */
    bool after_punct = false;
    while (sc.i < sc.len) {
        if (fast && ascii_letter(sc.s[sc.i])) {
            /* plain words, and the single spaces between them (each attaches to the next word) */
            size_t start = sc.i;
            for (;;) { /* sc.i is at a letter */
#if defined(__SSE2__)
                if (sc.i + 16 <= sc.len) {
                    size_t n = plain_words16(sc.s + sc.i, &cost);
                    if (n) {
                        sc.i += n;
                        continue;
                    }
                }
#endif
                size_t end = plain_word_end(sc.s, sc.len, sc.i);
                if (end == sc.i)
                    break;
                cost += piece_cost(end - sc.i);
                sc.i = end;
                if (end + 1 < sc.len && sc.s[end] == ' ' && ascii_letter(sc.s[end + 1]))
                    sc.i++;
                else
                    break;
            }
            if (sc.i != start) {
                after_punct = false;
                continue;
            }
        }
        unsigned pk = peek(&sc);
        cp_class c = PK_CLASS(pk);
        if (is_letter(c)) {
            cost += word_cost(&sc);
            after_punct = false;
            continue;
        }
        switch (c) {
        case CC_DIGIT: {
            size_t run = 0;
            while (PK_CLASS(pk = peek(&sc)) == CC_DIGIT) {
                run++;
                sc.i += PK_LEN(pk);
            }
            cost += (long long)((run + 2) / 3) * W_DIGITS;
            after_punct = false;
            break;
        }
        case CC_SPACE:
        case CC_NEWLINE: {
            if (sc.s[sc.i] == ' ' && sc.i + 1 < sc.len && sc.s[sc.i + 1] < 0x80 &&
                (ascii_class[sc.s[sc.i + 1]] == CC_LOWER || ascii_class[sc.s[sc.i + 1]] == CC_UPPER)) {
                /* The common case, one space before an ASCII word: it attaches to the word. */
                sc.i++;
                after_punct = false;
                break;
            }
            /* A whitespace run: line breaks cost one token unless punctuation just absorbed them;
             * spaces after the last line break cost one token when there are two or more, and a
             * single space in front of a word or punctuation attaches to it. */
            size_t spaces = 0;
            bool newline = false;
            cp_class k;
            while ((k = PK_CLASS(pk = peek(&sc))) == CC_SPACE || k == CC_NEWLINE) {
                if (k == CC_NEWLINE) {
                    newline = true;
                    spaces = 0;
                } else {
                    spaces++;
                }
                sc.i += PK_LEN(pk);
            }
            if (newline && !after_punct)
                cost += W_NEWLINE;
            bool attaches = is_letter(k) || k == CC_PUNCT || k == CC_CJK;
            if (spaces >= 2 || (spaces == 1 && !attaches))
                cost += W_SPACE_RUN;
            after_punct = false;
            break;
        }
        case CC_PUNCT: {
            size_t run = 0;
            cp_class k;
            while ((k = PK_CLASS(pk = peek(&sc))) == CC_PUNCT) {
                run++;
                sc.i += PK_LEN(pk);
            }
            if (is_letter(k))
                run--; /* the mark right before a word is part of the word's piece */
            if (run > 0)
                cost += W_PUNCT_FIRST + (long long)(run - 1) * W_PUNCT_MORE;
            after_punct = run > 0;
            break;
        }
        case CC_CJK:
            cost += W_CJK;
            sc.i += PK_LEN(pk);
            after_punct = false;
            break;
        case CC_INVALID:
            cost += W_INVALID;
            sc.i += PK_LEN(pk);
            after_punct = false;
            break;
        default:
            cost += W_SYMBOL;
            sc.i += PK_LEN(pk);
            after_punct = false;
            break;
        }
    }
    return (cost + 99) / 100;
}

long long ag_tokens_text(const char *text, size_t len)
{
    return tokens_text(text, len, true);
}

long long ag_tokens_text_general(const char *text, size_t len)
{
    return tokens_text(text, len, false);
}

/* ---- request bodies ---- */

#define MSG_OVERHEAD 3    /* cookbook: <|start|>{role/name}\n{content}<|end|>\n */
#define NAME_OVERHEAD 1
#define REPLY_PRIMING 3
#define IMAGE_LOW 85      /* detail "low": one 512px tile-free image */
#define IMAGE_HIGH 765    /* detail "high"/"auto": a 1024x1024 image, 4 tiles x 170 + 85 */
#define TOOL_FUNC 7       /* cookbook num_tokens_for_tools, gpt-4o constants */
#define TOOL_PROPS 3
#define TOOL_PROP 3
#define TOOL_ENUM_ITEM 3
#define TOOL_ENUM_INIT (-3)
#define TOOL_END 12
#define MAX_CHOICES 128
#define MAX_BUDGET 1000000000LL

static long long str_tokens(const cJSON *v)
{
    if (!cJSON_IsString(v) || !v->valuestring)
        return 0;
    return ag_tokens_text(v->valuestring, strlen(v->valuestring));
}

static const cJSON *get(const cJSON *obj, const char *key)
{
    return cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
}

/* Tokens of every string (keys included) of a JSON value: for shapes without a specific rule. */
static long long walk_tokens(const cJSON *v)
{
    long long n = 0;
    if (cJSON_IsString(v))
        return str_tokens(v);
    if (cJSON_IsNumber(v) || cJSON_IsBool(v))
        return 1;
    for (const cJSON *c = (cJSON_IsArray(v) || cJSON_IsObject(v)) ? v->child : NULL; c; c = c->next) {
        if (c->string)
            n += ag_tokens_text(c->string, strlen(c->string)) + 1;
        n += walk_tokens(c);
    }
    return n;
}

static long long image_tokens(const cJSON *detail_holder)
{
    const cJSON *d = get(detail_holder, "detail");
    if (cJSON_IsString(d) && strcmp(d->valuestring, "low") == 0)
        return IMAGE_LOW;
    return IMAGE_HIGH;
}

/* A message content: a string, or an array of parts (chat and Responses part types). */
static long long content_tokens(const cJSON *content)
{
    if (cJSON_IsString(content))
        return str_tokens(content);
    if (!cJSON_IsArray(content))
        return 0;
    long long n = 0;
    for (const cJSON *p = content->child; p; p = p->next) {
        if (cJSON_IsString(p)) {
            n += str_tokens(p);
            continue;
        }
        const cJSON *type = get(p, "type");
        const char *t = cJSON_IsString(type) ? type->valuestring : "";
        if (strcmp(t, "text") == 0 || strcmp(t, "input_text") == 0 || strcmp(t, "output_text") == 0)
            n += str_tokens(get(p, "text"));
        else if (strcmp(t, "refusal") == 0)
            n += str_tokens(get(p, "refusal"));
        else if (strcmp(t, "image_url") == 0)
            n += image_tokens(get(p, "image_url"));
        else if (strcmp(t, "input_image") == 0)
            n += image_tokens(p);
        /* input_audio, input_file, file: not estimated; usage reconciles them */
    }
    return n;
}

static long long tool_calls_tokens(const cJSON *calls)
{
    long long n = 0;
    if (!cJSON_IsArray(calls))
        return 0;
    for (const cJSON *c = calls->child; c; c = c->next) {
        const cJSON *f = get(c, "function");
        n += MSG_OVERHEAD + str_tokens(get(f, "name")) + str_tokens(get(f, "arguments"));
    }
    return n;
}

static long long messages_tokens(const cJSON *messages)
{
    long long n = 0;
    if (!cJSON_IsArray(messages))
        return 0;
    for (const cJSON *m = messages->child; m; m = m->next) {
        n += MSG_OVERHEAD + str_tokens(get(m, "role")) + content_tokens(get(m, "content"));
        const cJSON *name = get(m, "name");
        if (cJSON_IsString(name))
            n += NAME_OVERHEAD + str_tokens(name);
        n += tool_calls_tokens(get(m, "tool_calls"));
        const cJSON *fc = get(m, "function_call");
        if (cJSON_IsObject(fc))
            n += MSG_OVERHEAD + str_tokens(get(fc, "name")) + str_tokens(get(fc, "arguments"));
        n += str_tokens(get(m, "tool_call_id"));
    }
    return n;
}

/* Text without a trailing '.', as the cookbook counts descriptions. */
static long long desc_tokens(const char *prefix, const cJSON *desc)
{
    long long n = prefix ? ag_tokens_text(prefix, strlen(prefix)) : 0;
    if (cJSON_IsString(desc)) {
        size_t l = strlen(desc->valuestring);
        if (l > 0 && desc->valuestring[l - 1] == '.')
            l--;
        n += ag_tokens_text(desc->valuestring, l);
    }
    return n;
}

/* One function definition ({name, description, parameters}) by the cookbook rule. */
static long long function_tokens(const cJSON *f)
{
    long long n = TOOL_FUNC + str_tokens(get(f, "name")) + 1 + desc_tokens(NULL, get(f, "description"));
    const cJSON *props = get(get(f, "parameters"), "properties");
    if (cJSON_IsObject(props) && props->child) {
        n += TOOL_PROPS;
        for (const cJSON *p = props->child; p; p = p->next) {
            n += TOOL_PROP + ag_tokens_text(p->string, strlen(p->string)) + 1;
            const cJSON *type = get(p, "type");
            n += str_tokens(type) + 1;
            n += desc_tokens(NULL, get(p, "description"));
            const cJSON *en = get(p, "enum");
            if (cJSON_IsArray(en)) {
                n += TOOL_ENUM_INIT;
                for (const cJSON *e = en->child; e; e = e->next)
                    n += TOOL_ENUM_ITEM + (cJSON_IsString(e) ? str_tokens(e) : 1);
            }
            /* nested objects and arrays: price their strings */
            n += walk_tokens(get(p, "properties")) + walk_tokens(get(p, "items"));
        }
    }
    return n;
}

static long long tools_tokens(const cJSON *tools)
{
    if (!cJSON_IsArray(tools) || !tools->child)
        return 0;
    long long n = TOOL_END;
    for (const cJSON *t = tools->child; t; t = t->next) {
        const cJSON *f = get(t, "function"); /* chat shape */
        if (cJSON_IsObject(f))
            n += function_tokens(f);
        else if (cJSON_IsString(get(t, "name"))) /* Responses shape: flat */
            n += function_tokens(t);
        else
            n += walk_tokens(t); /* built-in tools (file_search, ...) */
    }
    return n;
}

static long long strings_or_ids(const cJSON *v)
{
    if (cJSON_IsString(v))
        return str_tokens(v);
    if (!cJSON_IsArray(v))
        return 0;
    long long n = 0;
    for (const cJSON *c = v->child; c; c = c->next) {
        if (cJSON_IsString(c))
            n += str_tokens(c);
        else if (cJSON_IsNumber(c))
            n += 1; /* a token id */
        else if (cJSON_IsArray(c))
            n += cJSON_GetArraySize(c); /* an array of token ids */
    }
    return n;
}

static long long responses_input_tokens(const cJSON *input)
{
    if (cJSON_IsString(input))
        return MSG_OVERHEAD + 1 + str_tokens(input);
    if (!cJSON_IsArray(input))
        return 0;
    long long n = 0;
    for (const cJSON *it = input->child; it; it = it->next) {
        const cJSON *type = get(it, "type");
        const char *t = cJSON_IsString(type) ? type->valuestring : "message";
        if (strcmp(t, "message") == 0)
            n += MSG_OVERHEAD + str_tokens(get(it, "role")) + content_tokens(get(it, "content"));
        else if (strcmp(t, "function_call") == 0)
            n += MSG_OVERHEAD + str_tokens(get(it, "name")) + str_tokens(get(it, "arguments"));
        else if (strcmp(t, "function_call_output") == 0)
            n += MSG_OVERHEAD + str_tokens(get(it, "output"));
        else
            n += walk_tokens(it);
    }
    return n;
}

static long long budget(const cJSON *v)
{
    if (!cJSON_IsNumber(v))
        return -1;
    double d = v->valuedouble;
    if (!(d >= 0))
        return 0;
    if (d > (double)MAX_BUDGET)
        return MAX_BUDGET;
    return (long long)ceil(d);
}

static long long count_choices(const cJSON *v)
{
    if (!cJSON_IsNumber(v))
        return 1;
    double d = v->valuedouble;
    if (!(d >= 1))
        return 1;
    if (d > MAX_CHOICES)
        return MAX_CHOICES;
    return (long long)d;
}

void ag_tokens_estimate_request(const cJSON *body, const char *operation, ag_token_estimate *out)
{
    out->prompt = 0;
    out->completion_max = -1;
    out->choices = 1;
    out->completes = true;
    const char *op = operation ? operation : "";
    if (strcmp(op, "chat/completions") == 0) {
        out->prompt = REPLY_PRIMING + messages_tokens(get(body, "messages")) +
                      tools_tokens(get(body, "tools"));
        const cJSON *fns = get(body, "functions"); /* deprecated shape: a list of bare functions */
        if (cJSON_IsArray(fns) && fns->child) {
            out->prompt += TOOL_END;
            for (const cJSON *f = fns->child; f; f = f->next)
                out->prompt += function_tokens(f);
        }
        const cJSON *rf = get(get(body, "response_format"), "json_schema");
        if (rf)
            out->prompt += walk_tokens(rf);
        out->completion_max = budget(get(body, "max_completion_tokens"));
        if (out->completion_max < 0)
            out->completion_max = budget(get(body, "max_tokens"));
        out->choices = count_choices(get(body, "n"));
    } else if (strcmp(op, "completions") == 0) {
        out->prompt = strings_or_ids(get(body, "prompt"));
        out->completion_max = budget(get(body, "max_tokens"));
        if (out->completion_max < 0)
            out->completion_max = 16; /* the API's default for completions */
        long long n = count_choices(get(body, "n")), best = count_choices(get(body, "best_of"));
        out->choices = best > n ? best : n;
    } else if (strcmp(op, "embeddings") == 0) {
        out->prompt = strings_or_ids(get(body, "input"));
        out->completes = false;
        out->completion_max = 0;
    } else if (strcmp(op, "responses") == 0) {
        const cJSON *ins = get(body, "instructions");
        if (cJSON_IsString(ins))
            out->prompt += MSG_OVERHEAD + 1 + str_tokens(ins);
        out->prompt += REPLY_PRIMING + responses_input_tokens(get(body, "input")) +
                       tools_tokens(get(body, "tools"));
        out->completion_max = budget(get(body, "max_output_tokens"));
    } else {
        out->prompt = str_tokens(get(body, "prompt"));
        out->completes = false;
        out->completion_max = 0;
    }
}

long long ag_tokens_estimate_cost(const ag_token_estimate *e, long long default_completion)
{
    long long completion = 0;
    if (e->completes) {
        completion = e->completion_max >= 0 ? e->completion_max : default_completion;
        if (completion < 0)
            completion = 0;
        if (completion > MAX_BUDGET)
            completion = MAX_BUDGET;
    }
    long long choices = e->choices < 1 ? 1 : (e->choices > MAX_CHOICES ? MAX_CHOICES : e->choices);
    long long total = e->prompt + choices * completion;
    if (total < 0)
        total = 0;
    if (total > 1000000000000LL)
        total = 1000000000000LL;
    return total;
}
