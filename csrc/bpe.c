/* bpe.c: byte-pair encoding (Sennrich et al. 2016) as GPT-2 (Radford et al. 2019) and the
 * HF `tokenizers` files of Llama 2/3, Qwen2, Mistral and SmolLM2 use it: pre-tokenization,
 * training and encoding/decoding, side by side.
 *
 *   pre-tokenize   text (n bytes) -> pre-tokens ("words"): a chain of splitting steps, each a
 *                  regular expression hand-compiled into a scanner over the classes of
 *                  unicode_tables.h (GPT-2's, Llama 3's, Qwen2's), digits, or the metaspace
 *   train          unique words with counts -> merges (pair counts updated incrementally
 *                  through a pair -> words index and a max-heap with lazy deletion)
 *   encode         each word: its first symbols (bytes, or characters with byte fallback),
 *                  then merge the adjacent pair of lowest rank until none is left, with a
 *                  per-thread cache of recent words; texts/chunks split over threads
 *   decode         ids -> concatenated token bytes
 */
#include "minillm.h"
#include "unicode_tables.h"

#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* ================================================================ pre-tokenization */

static int uc_class_of(uint32_t cp)
{
    int lo = 0, hi = MLL_UC_NRANGES - 1;
    while (lo <= hi) {
        int mid = (lo + hi) >> 1;
        if (cp < mll_uc_ranges[mid][0]) hi = mid - 1;
        else if (cp > mll_uc_ranges[mid][1]) lo = mid + 1;
        else return (int)mll_uc_ranges[mid][2];
    }
    return MLL_UC_OTHER;
}

static inline int is_cont(uint8_t b) { return (b & 0xC0) == 0x80; }

/* Class of the character at s[i] and its length in bytes; an invalid UTF-8 sequence is one
 * OTHER character per byte (never read past n). */
static inline int uc_class_at(const uint8_t *s, int64_t i, int64_t n, int *len)
{
    uint32_t c = s[i], cp;
    if (c < 0x80) { *len = 1; return mll_uc_ascii[c]; }
    if ((c & 0xE0) == 0xC0 && i + 1 < n && is_cont(s[i + 1])) {
        cp = ((c & 0x1F) << 6) | (s[i + 1] & 0x3F);
        if (cp >= 0x80) { *len = 2; return uc_class_of(cp); }
    } else if ((c & 0xF0) == 0xE0 && i + 2 < n && is_cont(s[i + 1]) && is_cont(s[i + 2])) {
        cp = ((c & 0x0F) << 12) | ((uint32_t)(s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F);
        if (cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF)) { *len = 3; return uc_class_of(cp); }
    } else if ((c & 0xF8) == 0xF0 && i + 3 < n && is_cont(s[i + 1]) && is_cont(s[i + 2]) &&
               is_cont(s[i + 3])) {
        cp = ((c & 0x07) << 18) | ((uint32_t)(s[i + 1] & 0x3F) << 12) |
             ((uint32_t)(s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F);
        if (cp >= 0x10000 && cp <= 0x10FFFF) { *len = 4; return uc_class_of(cp); }
    }
    *len = 1;
    return MLL_UC_OTHER;
}

/* End of the run of characters of class cls starting at i. */
static inline int64_t run_end(const uint8_t *s, int64_t i, int64_t n, int cls)
{
    for (;;) {
        while (i < n && s[i] < 0x80 && mll_uc_ascii[s[i]] == cls) i++;
        if (i >= n || s[i] < 0x80) return i;
        int len;
        if (uc_class_at(s, i, n, &len) != cls) return i;
        i += len;
    }
}

/* The alternatives of the pattern are tried in order at i; each is greedy, and only
 * \s+(?!\S) backtracks: a whitespace run followed by a non-space gives back its last
 * character (which then starts " word" or is a run of one on its own). */
int64_t mll_bpe_pretoken_end(const uint8_t *s, int64_t i, int64_t n)
{
    uint8_t c = s[i];
    if (c == '\'' && i + 1 < n) {                          /* 's 't 'm 'd 're 've 'll */
        uint8_t c1 = s[i + 1];
        if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return i + 2;
        if (i + 2 < n) {
            uint8_t c2 = s[i + 2];
            if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
                return i + 3;
        }
    }
    if (c == ' ' && i + 1 < n) {                           /* " ?" before L+, N+, other+ */
        int len1, cls1 = uc_class_at(s, i + 1, n, &len1);
        if (cls1 != MLL_UC_SPACE) return run_end(s, i + 1 + len1, n, cls1);
    }
    int len0, cls = uc_class_at(s, i, n, &len0);
    if (cls != MLL_UC_SPACE) return run_end(s, i + len0, n, cls);
    int64_t j = i + len0, last = i;                        /* \s+(?!\S) | \s+ */
    while (j < n) {
        int len;
        if (uc_class_at(s, j, n, &len) != MLL_UC_SPACE) break;
        last = j;
        j += len;
    }
    if (j == n || last == i) return j;
    return last;
}

int64_t mll_bpe_pretokenize(const uint8_t *s, int64_t n, int64_t *ends)
{
    int64_t k = 0;
    for (int64_t i = 0; i < n; i = ends[k++]) ends[k] = mll_bpe_pretoken_end(s, i, n);
    return k;
}

/* Llama 3's pattern (GPT-4's cl100k with the contractions case-insensitive), and Qwen2's,
 * which differs only in taking digits one at a time (digit_max 1 instead of 3):
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*
 *   |\s*[\r\n]+|\s+(?!\S)|\s+
 * The alternatives are tried in order at i, as a backtracking engine (Oniguruma) does. */
static inline int lower_ascii(uint8_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

static inline int is_newline(uint8_t c) { return c == '\r' || c == '\n'; }

/* Length of the contraction at s[i] ('s 't 're 've 'm 'll 'd, any case), 0 if none. Case
 * folding maps U+017F LATIN SMALL LETTER LONG S (C5 BF) to 's', so "'ſ" matches too. */
static int contraction_len(const uint8_t *s, int64_t i, int64_t n)
{
    if (s[i] != '\'' || i + 1 >= n) return 0;
    int c1 = lower_ascii(s[i + 1]);
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
    if (s[i + 1] == 0xC5 && i + 2 < n && s[i + 2] == 0xBF) return 3;
    if (i + 2 >= n) return 0;
    int c2 = lower_ascii(s[i + 2]);
    if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
    return 0;
}

static int64_t gpt4_pretoken_end(const uint8_t *s, int64_t i, int64_t n, int digit_max)
{
    int k = contraction_len(s, i, n);
    if (k) return i + k;
    int len0, cls = uc_class_at(s, i, n, &len0);
    if (cls == MLL_UC_LETTER) return run_end(s, i + len0, n, MLL_UC_LETTER);
    if (cls != MLL_UC_NUMBER && !is_newline(s[i]) && i + len0 < n) {   /* [^\r\n\p{L}\p{N}]?\p{L}+ */
        int len1;
        if (uc_class_at(s, i + len0, n, &len1) == MLL_UC_LETTER)
            return run_end(s, i + len0 + len1, n, MLL_UC_LETTER);
    }
    if (cls == MLL_UC_NUMBER) {                                        /* \p{N}{1,digit_max} */
        int64_t j = i + len0;
        for (int d = 1; d < digit_max && j < n; d++) {
            int len;
            if (uc_class_at(s, j, n, &len) != MLL_UC_NUMBER) break;
            j += len;
        }
        return j;
    }
    int64_t j = -1;                                          /*  ?[^\s\p{L}\p{N}]+[\r\n]* */
    if (cls == MLL_UC_OTHER) {
        j = run_end(s, i + len0, n, MLL_UC_OTHER);
    } else if (s[i] == ' ' && i + 1 < n) {
        int len1;
        if (uc_class_at(s, i + 1, n, &len1) == MLL_UC_OTHER) j = run_end(s, i + 1 + len1, n, MLL_UC_OTHER);
    }
    if (j >= 0) {
        while (j < n && is_newline(s[j])) j++;
        return j;
    }
    /* s[i] is white space: the run [i, j) */
    int64_t last_nl = -1, last = i;
    j = i;
    while (j < n) {
        int len;
        if (uc_class_at(s, j, n, &len) != MLL_UC_SPACE) break;
        if (is_newline(s[j])) last_nl = j;
        last = j;
        j += len;
    }
    if (last_nl >= 0) return last_nl + 1;                    /* \s*[\r\n]+ */
    if (j == n || last == i) return j;                       /* \s+(?!\S) at the end | \s+ */
    return last;                                             /* \s+(?!\S): give one back */
}

/* Digits pre-tokenizer: each number character (N*) on its own, or runs of them; the other
 * characters in runs between. */
static int64_t digits_pretoken_end(const uint8_t *s, int64_t i, int64_t n, int individual)
{
    int len, cls = uc_class_at(s, i, n, &len);
    if (cls == MLL_UC_NUMBER && individual) return i + len;
    int want_number = cls == MLL_UC_NUMBER;
    int64_t j = i + len;
    while (j < n && (uc_class_at(s, j, n, &len) == MLL_UC_NUMBER) == want_number) j += len;
    return j;
}

/* Metaspace split: a piece starts at every U+2581 (E2 96 81) and runs to the next one. */
static int64_t metaspace_pretoken_end(const uint8_t *s, int64_t i, int64_t n)
{
    int64_t j = i + 1;
    while (j < n && !(s[j] == 0xE2 && j + 2 < n && s[j + 1] == 0x96 && s[j + 2] == 0x81)) j++;
    return j;
}

/* End of the piece of one step (MLL_SPLIT_*) that starts at byte i of s[0, n); n if unknown. */
static int64_t split_end(int step, const uint8_t *s, int64_t i, int64_t n)
{
    switch (step) {
    case MLL_SPLIT_GPT2: return mll_bpe_pretoken_end(s, i, n);
    case MLL_SPLIT_LLAMA3: return gpt4_pretoken_end(s, i, n, 3);
    case MLL_SPLIT_QWEN2: return gpt4_pretoken_end(s, i, n, 1);
    case MLL_SPLIT_DIGITS: return digits_pretoken_end(s, i, n, 1);
    case MLL_SPLIT_DIGIT_RUNS: return digits_pretoken_end(s, i, n, 0);
    case MLL_SPLIT_METASPACE: return metaspace_pretoken_end(s, i, n);
    default: return n;
    }
}

/* Pieces of s[start, stop) after steps[0..nsteps): ends written to ends (one per piece, at
 * most stop - start); each step splits the pieces of the one before, with its look-ahead
 * confined to the piece (as HF applies each pre-tokenizer to each piece). */
static int64_t split_chain(const int *steps, int nsteps, const uint8_t *s, int64_t start,
                           int64_t stop, int64_t *ends)
{
    if (nsteps == 0) {
        if (stop > start) ends[0] = stop;
        return stop > start;
    }
    int64_t k = 0;
    for (int64_t i = start; i < stop;) {
        int64_t e = split_end(steps[0], s, i, stop);
        k += split_chain(steps + 1, nsteps - 1, s, i, e, ends + k);
        i = e;
    }
    return k;
}

int64_t mll_bpe_split(const int *steps, int nsteps, const uint8_t *s, int64_t n, int64_t *ends)
{
    return split_chain(steps, nsteps, s, 0, n, ends);
}

/* A pre-token always starts at p when s[p - 1] is '\n' or '\r' (GPT-2: or '\t') and s[p] is
 * an ASCII non-space: the whitespace run before p ends at p, only whitespace tokens hold
 * s[p - 1] (Llama 3's " ?[^\s\p{L}\p{N}]+[\r\n]*" ends at the newlines; its
 * "[^\r\n\p{L}\p{N}]?\p{L}+" takes a tab, not a newline, before a word), and " ?X" needs a
 * space. Splitting there gives the same pre-tokens as the whole text, provided each piece
 * still looks ahead into the next (we pass the full length n). */
static int64_t next_safe_split(const uint8_t *s, int64_t p, int64_t stop, int tab_ok)
{
    for (; p < stop; p++) {
        uint8_t a = s[p - 1], b = s[p];
        if ((a == '\n' || a == '\r' || (tab_ok && a == '\t')) && b < 0x80 &&
            mll_uc_ascii[b] != MLL_UC_SPACE)
            return p;
    }
    return stop;
}

/* bounds (nparts + 1,) <- pieces of s[0, n) for nparts threads; returns the pieces made. */
static int split_text(const uint8_t *s, int64_t n, int nparts, int64_t *bounds, int tab_ok)
{
    int k = 0;
    bounds[0] = 0;
    for (int t = 1; t < nparts; t++) {
        int64_t p = next_safe_split(s, n * t / nparts > bounds[k] ? n * t / nparts : bounds[k] + 1,
                                    n, tab_ok);
        if (p >= n || p <= bounds[k]) continue;
        bounds[++k] = p;
    }
    bounds[++k] = n;
    return k;
}

static inline uint64_t hash_bytes(const uint8_t *p, int64_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)n, v;
    while (n >= 8) {
        memcpy(&v, p, 8);
        h = (h ^ v) * 0xBF58476D1CE4E5B9ull;
        h ^= h >> 31;
        p += 8;
        n -= 8;
    }
    /* the last 0..7 bytes: two overlapping 4-byte loads, or first/middle/last byte */
    if (n >= 4) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + n - 4, 4);
        v = (uint64_t)lo | (uint64_t)hi << 32;
    } else if (n > 0) {
        v = (uint64_t)p[0] | (uint64_t)p[n >> 1] << 8 | (uint64_t)p[n - 1] << 16;
    } else {
        v = 0;
    }
    h = (h ^ v) * 0x94D049BB133111EBull;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    return h ^ (h >> 32);
}

static inline uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xFF51AFD7ED558CCDull;
    x ^= x >> 33;
    x *= 0xC4CEB9FE1A85EC53ull;
    return x ^ (x >> 33);
}

static int max_threads(int nthreads)
{
    if (nthreads < 1) nthreads = 1;
#ifndef _OPENMP
    nthreads = 1;
#endif
    return nthreads;
}

/* ================================================================ training: word counts */

typedef struct {
    uint64_t hash;
    int64_t off;      /* into arena, -1 = empty slot */
    int64_t count;
    int64_t len;
} word_slot;

struct mll_bpe_counter {
    word_slot *slots;
    int64_t cap, size, total;
    uint8_t *arena;
    int64_t arena_len, arena_cap;
};

static int counter_init(mll_bpe_counter *c, int64_t cap)
{
    memset(c, 0, sizeof(*c));
    c->slots = malloc(sizeof(word_slot) * (size_t)cap);
    c->arena_cap = 1 << 16;
    c->arena = malloc((size_t)c->arena_cap);
    if (!c->slots || !c->arena) return -1;
    for (int64_t i = 0; i < cap; i++) c->slots[i].off = -1;
    c->cap = cap;
    return 0;
}

static void counter_release(mll_bpe_counter *c)
{
    free(c->slots);
    free(c->arena);
}

static int counter_grow(mll_bpe_counter *c)
{
    int64_t cap = c->cap * 2;
    word_slot *slots = malloc(sizeof(word_slot) * (size_t)cap);
    if (!slots) return -1;
    for (int64_t i = 0; i < cap; i++) slots[i].off = -1;
    for (int64_t i = 0; i < c->cap; i++) {
        if (c->slots[i].off < 0) continue;
        int64_t j = (int64_t)(c->slots[i].hash & (uint64_t)(cap - 1));
        while (slots[j].off >= 0) j = (j + 1) & (cap - 1);
        slots[j] = c->slots[i];
    }
    free(c->slots);
    c->slots = slots;
    c->cap = cap;
    return 0;
}

static int counter_insert(mll_bpe_counter *c, const uint8_t *w, int64_t len, uint64_t h,
                          int64_t count)
{
    int64_t j = (int64_t)(h & (uint64_t)(c->cap - 1));
    for (;;) {
        word_slot *e = &c->slots[j];
        if (e->off < 0) break;
        if (e->hash == h && e->len == len && memcmp(c->arena + e->off, w, (size_t)len) == 0) {
            e->count += count;
            return 0;
        }
        j = (j + 1) & (c->cap - 1);
    }
    if (c->arena_len + len > c->arena_cap) {
        int64_t cap = c->arena_cap * 2;
        while (cap < c->arena_len + len) cap *= 2;
        uint8_t *a = realloc(c->arena, (size_t)cap);
        if (!a) return -1;
        c->arena = a;
        c->arena_cap = cap;
    }
    memcpy(c->arena + c->arena_len, w, (size_t)len);
    c->slots[j] = (word_slot){h, c->arena_len, count, len};
    c->arena_len += len;
    c->size++;
    if (2 * c->size > c->cap) return counter_grow(c);
    return 0;
}

mll_bpe_counter *mll_bpe_counter_new(void)
{
    mll_bpe_counter *c = malloc(sizeof(*c));
    if (!c) return NULL;
    if (counter_init(c, 1 << 12) < 0) {
        counter_release(c);
        free(c);
        return NULL;
    }
    return c;
}

void mll_bpe_counter_free(mll_bpe_counter *c)
{
    if (!c) return;
    counter_release(c);
    free(c);
}

int64_t mll_bpe_counter_size(const mll_bpe_counter *c) { return c->size; }
int64_t mll_bpe_counter_total(const mll_bpe_counter *c) { return c->total; }

static int count_words(mll_bpe_counter *c, const uint8_t *s, int64_t start, int64_t stop,
                       int64_t n)
{
    for (int64_t i = start; i < stop;) {
        int64_t e = mll_bpe_pretoken_end(s, i, n);
        if (counter_insert(c, s + i, e - i, hash_bytes(s + i, e - i), 1) < 0) return -1;
        c->total++;
        i = e;
    }
    return 0;
}

/* Each thread counts its piece into its own table; the tables are then added into c in piece
 * order, so the result (and the trained merges) do not depend on the thread count. */
int mll_bpe_counter_add(mll_bpe_counter *c, const uint8_t *text, int64_t n, int nthreads)
{
    nthreads = max_threads(nthreads);
    if (n < (1 << 20)) nthreads = 1;
    if (nthreads == 1) return count_words(c, text, 0, n, n);
    int64_t bounds[65];
    if (nthreads > 64) nthreads = 64;
    int nparts = split_text(text, n, nthreads, bounds, 1);
    mll_bpe_counter local[64];
    int err = 0;
    for (int p = 0; p < nparts; p++) err |= counter_init(&local[p], 1 << 14);
    if (!err) {
#pragma omp parallel for num_threads(nparts) schedule(static, 1) reduction(| : err)
        for (int p = 0; p < nparts; p++)
            err |= count_words(&local[p], text, bounds[p], bounds[p + 1], n);
    }
    for (int p = 0; p < nparts && !err; p++) {
        for (int64_t i = 0; i < local[p].cap && !err; i++) {
            word_slot *e = &local[p].slots[i];
            if (e->off < 0) continue;
            err |= counter_insert(c, local[p].arena + e->off, e->len, e->hash, e->count);
        }
        c->total += local[p].total;
    }
    for (int p = 0; p < nparts; p++) counter_release(&local[p]);
    return err ? -1 : 0;
}

/* ================================================================ training: merges */

/* One entry of the max-heap: a pair and its count when pushed. An entry is live only while
 * the pair still has that count; every change of a count pushes a fresh entry (lazy deletion). */
typedef struct {
    int64_t count;
    uint32_t pair;
} heap_entry;

struct mll_bpe_trainer {
    /* words: symbols of word w are sym[word_off[w], word_off[w] + word_len[w]) */
    int64_t nwords;
    uint32_t *sym;
    int64_t *word_off, *word_count;
    int32_t *word_len;
    /* pairs, indexed 0..npairs-1; map: open addressing (left << 32 | right) -> index + 1 */
    int64_t npairs, pair_cap, map_cap;
    uint64_t *map_key;
    uint32_t *map_val;
    uint32_t *left, *right;
    int64_t *count, *pushed;           /* current count, count of the newest heap entry */
    uint32_t **words;                  /* pair -> words that contain (or contained) it */
    int32_t *nw, *cw;                  /* their length and capacity */
    int64_t *stamp;                    /* merge step that last touched the pair */
    uint32_t *touched;
    int64_t ntouched, touched_cap;
    heap_entry *heap;
    int64_t heap_len, heap_cap;
    uint32_t next_id;
    int64_t step;
};

/* Heap order: larger count first; equal counts: smaller left id, then smaller right id. */
static inline int heap_before(const mll_bpe_trainer *t, heap_entry x, heap_entry y)
{
    if (x.count != y.count) return x.count > y.count;
    if (t->left[x.pair] != t->left[y.pair]) return t->left[x.pair] < t->left[y.pair];
    return t->right[x.pair] < t->right[y.pair];
}

static void heap_sift_down(mll_bpe_trainer *t, int64_t i)
{
    heap_entry *h = t->heap;
    heap_entry x = h[i];
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= t->heap_len) break;
        if (c + 1 < t->heap_len && heap_before(t, h[c + 1], h[c])) c++;
        if (!heap_before(t, h[c], x)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
}

static int heap_push(mll_bpe_trainer *t, heap_entry x)
{
    if (t->heap_len == t->heap_cap) {
        int64_t cap = t->heap_cap ? 2 * t->heap_cap : 1024;
        heap_entry *h = realloc(t->heap, sizeof(heap_entry) * (size_t)cap);
        if (!h) return -1;
        t->heap = h;
        t->heap_cap = cap;
    }
    int64_t i = t->heap_len++;
    while (i > 0) {
        int64_t p = (i - 1) / 2;
        if (!heap_before(t, x, t->heap[p])) break;
        t->heap[i] = t->heap[p];
        i = p;
    }
    t->heap[i] = x;
    return 0;
}

static heap_entry heap_pop(mll_bpe_trainer *t)
{
    heap_entry top = t->heap[0];
    t->heap[0] = t->heap[--t->heap_len];
    if (t->heap_len > 0) heap_sift_down(t, 0);
    return top;
}

static int pair_map_grow(mll_bpe_trainer *t)
{
    int64_t cap = t->map_cap ? 2 * t->map_cap : 1 << 16;
    uint64_t *keys = malloc(sizeof(uint64_t) * (size_t)cap);
    uint32_t *vals = calloc((size_t)cap, sizeof(uint32_t));
    if (!keys || !vals) {
        free(keys);
        free(vals);
        return -1;
    }
    for (int64_t i = 0; i < t->map_cap; i++) {
        if (!t->map_val[i]) continue;
        int64_t j = (int64_t)(hash_u64(t->map_key[i]) & (uint64_t)(cap - 1));
        while (vals[j]) j = (j + 1) & (cap - 1);
        keys[j] = t->map_key[i];
        vals[j] = t->map_val[i];
    }
    free(t->map_key);
    free(t->map_val);
    t->map_key = keys;
    t->map_val = vals;
    t->map_cap = cap;
    return 0;
}

static int pair_arrays_grow(mll_bpe_trainer *t)
{
    int64_t cap = t->pair_cap ? 2 * t->pair_cap : 1 << 15;
#define GROW(field)                                                                \
    do {                                                                           \
        void *p_ = realloc(t->field, sizeof(*t->field) * (size_t)cap);            \
        if (!p_) return -1;                                                        \
        t->field = p_;                                                             \
    } while (0)
    GROW(left); GROW(right); GROW(count); GROW(pushed); GROW(words); GROW(nw); GROW(cw);
    GROW(stamp);
#undef GROW
    t->pair_cap = cap;
    return 0;
}

/* Index of pair (a, b), created with count 0 when absent; -1 if out of memory. */
static int64_t pair_index(mll_bpe_trainer *t, uint32_t a, uint32_t b)
{
    uint64_t key = (uint64_t)a << 32 | b;
    int64_t j = (int64_t)(hash_u64(key) & (uint64_t)(t->map_cap - 1));
    while (t->map_val[j]) {
        if (t->map_key[j] == key) return t->map_val[j] - 1;
        j = (j + 1) & (t->map_cap - 1);
    }
    if (t->npairs == t->pair_cap && pair_arrays_grow(t) < 0) return -1;
    int64_t p = t->npairs++;
    t->map_key[j] = key;
    t->map_val[j] = (uint32_t)(p + 1);
    t->left[p] = a;
    t->right[p] = b;
    t->count[p] = 0;
    t->pushed[p] = 0;
    t->words[p] = NULL;
    t->nw[p] = t->cw[p] = 0;
    t->stamp[p] = -1;
    if (2 * t->npairs > t->map_cap && pair_map_grow(t) < 0) return -1;
    return p;
}

/* count(a, b) += delta; records word w under the pair when delta > 0. */
static int pair_add(mll_bpe_trainer *t, uint32_t a, uint32_t b, int64_t delta, uint32_t w)
{
    int64_t p = pair_index(t, a, b);
    if (p < 0) return -1;
    t->count[p] += delta;
    if (delta > 0 && (t->nw[p] == 0 || t->words[p][t->nw[p] - 1] != w)) {
        if (t->nw[p] == t->cw[p]) {
            int32_t cap = t->cw[p] ? 2 * t->cw[p] : 4;
            uint32_t *ws = realloc(t->words[p], sizeof(uint32_t) * (size_t)cap);
            if (!ws) return -1;
            t->words[p] = ws;
            t->cw[p] = cap;
        }
        t->words[p][t->nw[p]++] = w;
    }
    if (t->stamp[p] != t->step) {
        t->stamp[p] = t->step;
        if (t->ntouched == t->touched_cap) {
            int64_t cap = t->touched_cap ? 2 * t->touched_cap : 1024;
            uint32_t *tt = realloc(t->touched, sizeof(uint32_t) * (size_t)cap);
            if (!tt) return -1;
            t->touched = tt;
            t->touched_cap = cap;
        }
        t->touched[t->ntouched++] = (uint32_t)p;
    }
    return 0;
}

void mll_bpe_trainer_free(mll_bpe_trainer *t)
{
    if (!t) return;
    for (int64_t p = 0; p < t->npairs; p++) free(t->words[p]);
    free(t->sym); free(t->word_off); free(t->word_count); free(t->word_len);
    free(t->map_key); free(t->map_val);
    free(t->left); free(t->right); free(t->count); free(t->pushed); free(t->words);
    free(t->nw); free(t->cw); free(t->stamp); free(t->touched); free(t->heap);
    free(t);
}

/* Pushes a heap entry for every pair touched in this step whose count changed. */
static int push_touched(mll_bpe_trainer *t)
{
    for (int64_t k = 0; k < t->ntouched; k++) {
        uint32_t p = t->touched[k];
        if (t->count[p] != t->pushed[p]) {
            t->pushed[p] = t->count[p];
            if (t->count[p] > 0 && heap_push(t, (heap_entry){t->count[p], p}) < 0) return -1;
        }
    }
    t->ntouched = 0;
    return 0;
}

/* Words are taken in the counter's slot order; the merges depend only on the counts. */
mll_bpe_trainer *mll_bpe_trainer_new(const mll_bpe_counter *c, uint32_t first_id)
{
    mll_bpe_trainer *t = calloc(1, sizeof(*t));
    if (!t) return NULL;
    t->next_id = first_id;
    t->nwords = c->size;
    t->sym = malloc(sizeof(uint32_t) * (size_t)(c->arena_len + 1));
    t->word_off = malloc(sizeof(int64_t) * (size_t)(c->size + 1));
    t->word_count = malloc(sizeof(int64_t) * (size_t)(c->size + 1));
    t->word_len = malloc(sizeof(int32_t) * (size_t)(c->size + 1));
    if (!t->sym || !t->word_off || !t->word_count || !t->word_len || pair_map_grow(t) < 0 ||
        pair_arrays_grow(t) < 0)
        goto fail;
    int64_t w = 0, off = 0;
    for (int64_t i = 0; i < c->cap; i++) {
        const word_slot *e = &c->slots[i];
        if (e->off < 0) continue;
        const uint8_t *b = c->arena + e->off;
        if (e->len > INT32_MAX) goto fail;     /* word lengths are int32 */
        t->word_off[w] = off;
        t->word_len[w] = (int32_t)e->len;
        t->word_count[w] = e->count;
        for (int64_t k = 0; k < e->len; k++) t->sym[off + k] = b[k];
        for (int64_t k = 0; k + 1 < e->len; k++)
            if (pair_add(t, b[k], b[k + 1], e->count, (uint32_t)w) < 0) goto fail;
        off += e->len;
        w++;
    }
    if (push_touched(t) < 0) goto fail;
    return t;
fail:
    mll_bpe_trainer_free(t);
    return NULL;
}

/* Replaces every (a, b) in word w by m, left to right, and moves the counts of the
 * neighbouring pairs: x a b y -> x m y takes c_w from (x, a) and (b, y) and gives it to
 * (x, m) and (m, y). x is the current left symbol (already m after "a b a b"), so runs of
 * the pair come out right: a b a b -> m m moves (b, a) to (m, m). */
static int merge_word(mll_bpe_trainer *t, uint32_t w, uint32_t a, uint32_t b, uint32_t m)
{
    uint32_t *s = t->sym + t->word_off[w];
    int32_t len = t->word_len[w], out = 0;
    int64_t c = t->word_count[w];
    for (int32_t i = 0; i < len;) {
        if (i + 1 < len && s[i] == a && s[i + 1] == b) {
            if (out > 0) {
                if (pair_add(t, s[out - 1], a, -c, w) < 0) return -1;
                if (pair_add(t, s[out - 1], m, c, w) < 0) return -1;
            }
            if (i + 2 < len) {
                if (pair_add(t, b, s[i + 2], -c, w) < 0) return -1;
                if (pair_add(t, m, s[i + 2], c, w) < 0) return -1;
            }
            s[out++] = m;
            i += 2;
        } else {
            s[out++] = s[i++];
        }
    }
    t->word_len[w] = out;
    return 0;
}

int64_t mll_bpe_trainer_step(mll_bpe_trainer *t, int64_t max_merges, uint32_t *pairs_out,
                             int64_t *counts_out)
{
    int64_t done = 0;
    while (done < max_merges && t->heap_len > 0) {
        heap_entry top = heap_pop(t);
        uint32_t p = top.pair;
        if (top.count != t->count[p] || top.count <= 0) continue;   /* stale entry */
        uint32_t a = t->left[p], b = t->right[p], m = t->next_id++;
        t->step++;
        for (int32_t k = 0; k < t->nw[p]; k++)
            if (merge_word(t, t->words[p][k], a, b, m) < 0) return -1;
        t->count[p] = 0;     /* every occurrence is gone (the deltas above touched it too) */
        t->pushed[p] = 0;
        free(t->words[p]);
        t->words[p] = NULL;
        t->nw[p] = t->cw[p] = 0;
        if (push_touched(t) < 0) return -1;
        pairs_out[2 * done] = a;
        pairs_out[2 * done + 1] = b;
        counts_out[done] = top.count;
        done++;
    }
    return done;
}

/* ================================================================ encoding */

typedef struct {
    uint32_t rank, id;
} merge_val;

#define NO_RANK UINT32_MAX
#define NO_ID UINT32_MAX

struct mll_bpe {
    int64_t n_merges, map_cap;       /* map: open addressing, key (left << 32 | right) */
    uint64_t *map_key;
    merge_val *map_val;              /* rank NO_RANK = empty */
    uint32_t byte_ids[256];          /* bytes: id of each byte; characters: of <0xXX> */
    int all_bytes;                   /* every byte has an id (the fast path of byte-level BPE) */
    mll_bpe_options opt;
    int64_t vocab_size;
    int64_t *vocab_off;
    uint8_t *vocab_bytes;
    /* tokens of the model by their bytes (characters and whole words), open addressing */
    int64_t tok_cap;
    uint64_t *tok_hash;
    uint32_t *tok_id;                /* NO_ID = empty */
};

static inline merge_val merge_lookup(const mll_bpe *t, uint32_t a, uint32_t b)
{
    uint64_t key = (uint64_t)a << 32 | b;
    int64_t j = (int64_t)(hash_u64(key) & (uint64_t)(t->map_cap - 1));
    for (;;) {
        merge_val v = t->map_val[j];
        if (v.rank == NO_RANK || t->map_key[j] == key) return v;
        j = (j + 1) & (t->map_cap - 1);
    }
}

/* Id of the model token whose bytes are w[0, n), NO_ID if none. */
static uint32_t token_lookup(const mll_bpe *t, const uint8_t *w, int64_t n)
{
    if (!t->tok_cap) return NO_ID;
    uint64_t h = hash_bytes(w, n);
    for (int64_t j = (int64_t)(h & (uint64_t)(t->tok_cap - 1));; j = (j + 1) & (t->tok_cap - 1)) {
        uint32_t id = t->tok_id[j];
        if (id == NO_ID) return NO_ID;
        if (t->tok_hash[j] == h && t->vocab_off[id + 1] - t->vocab_off[id] == n &&
            memcmp(t->vocab_bytes + t->vocab_off[id], w, (size_t)n) == 0)
            return id;
    }
}

static int build_token_index(mll_bpe *t, const uint8_t *in_model)
{
    int64_t cap = 16;
    while (cap < 2 * t->vocab_size + 2) cap *= 2;
    t->tok_hash = malloc(sizeof(uint64_t) * (size_t)cap);
    t->tok_id = malloc(sizeof(uint32_t) * (size_t)cap);
    if (!t->tok_hash || !t->tok_id) return -1;
    t->tok_cap = cap;
    for (int64_t j = 0; j < cap; j++) t->tok_id[j] = NO_ID;
    for (int64_t i = 0; i < t->vocab_size; i++) {
        int64_t a = t->vocab_off[i], n = t->vocab_off[i + 1] - a;
        if (n == 0 || (in_model && !in_model[i])) continue;
        if (token_lookup(t, t->vocab_bytes + a, n) != NO_ID) continue;  /* first id wins */
        uint64_t h = hash_bytes(t->vocab_bytes + a, n);
        int64_t j = (int64_t)(h & (uint64_t)(cap - 1));
        while (t->tok_id[j] != NO_ID) j = (j + 1) & (cap - 1);
        t->tok_hash[j] = h;
        t->tok_id[j] = (uint32_t)i;
    }
    return 0;
}

void mll_bpe_free(mll_bpe *t)
{
    if (!t) return;
    free(t->map_key);
    free(t->map_val);
    free(t->vocab_off);
    free(t->vocab_bytes);
    free(t->tok_hash);
    free(t->tok_id);
    free(t);
}

static const mll_bpe_options gpt2_options = {0, 0, 0, 0, -1, 1, {MLL_SPLIT_GPT2}};

mll_bpe *mll_bpe_new(const uint32_t *merges, int64_t n_merges, const uint32_t *byte_ids,
                     const uint8_t *vocab_bytes, const int64_t *vocab_offsets, int64_t vocab_size,
                     const uint8_t *in_model, const mll_bpe_options *opt)
{
    if (!opt) opt = &gpt2_options;
    if (opt->nsteps < 0 || opt->nsteps > MLL_BPE_MAX_STEPS || opt->unk_id >= vocab_size ||
        vocab_size >= (int64_t)NO_ID)
        return NULL;
    for (int k = 0; k < opt->nsteps; k++)
        if (opt->steps[k] < MLL_SPLIT_GPT2 || opt->steps[k] > MLL_SPLIT_METASPACE) return NULL;
    mll_bpe *t = calloc(1, sizeof(*t));
    if (!t) return NULL;
    t->opt = *opt;
    int64_t cap = 16;
    while (cap < 2 * n_merges + 2) cap *= 2;
    t->n_merges = n_merges;
    t->map_cap = cap;
    t->map_key = malloc(sizeof(uint64_t) * (size_t)cap);
    t->map_val = malloc(sizeof(merge_val) * (size_t)cap);
    t->vocab_size = vocab_size;
    t->vocab_off = malloc(sizeof(int64_t) * (size_t)(vocab_size + 1));
    t->vocab_bytes = malloc((size_t)vocab_offsets[vocab_size] + 1);
    if (!t->map_key || !t->map_val || !t->vocab_off || !t->vocab_bytes) goto fail;
    for (int64_t j = 0; j < cap; j++) t->map_val[j].rank = NO_RANK;
    for (int64_t r = 0; r < n_merges; r++) {
        uint32_t a = merges[3 * r], b = merges[3 * r + 1], m = merges[3 * r + 2];
        if (a >= vocab_size || b >= vocab_size || m >= vocab_size) goto fail;
        uint64_t key = (uint64_t)a << 32 | b;
        int64_t j = (int64_t)(hash_u64(key) & (uint64_t)(cap - 1));
        while (t->map_val[j].rank != NO_RANK && t->map_key[j] != key) j = (j + 1) & (cap - 1);
        if (t->map_val[j].rank != NO_RANK) continue;   /* a repeated pair keeps its first rank */
        t->map_key[j] = key;
        t->map_val[j] = (merge_val){(uint32_t)r, m};
    }
    t->all_bytes = 1;
    for (int b = 0; b < 256; b++) {
        if (byte_ids[b] != NO_ID && byte_ids[b] >= vocab_size) goto fail;
        t->byte_ids[b] = byte_ids[b];
        if (byte_ids[b] == NO_ID) t->all_bytes = 0;
    }
    memcpy(t->vocab_off, vocab_offsets, sizeof(int64_t) * (size_t)(vocab_size + 1));
    memcpy(t->vocab_bytes, vocab_bytes, (size_t)vocab_offsets[vocab_size]);
    if ((opt->chars || opt->ignore_merges) && build_token_index(t, in_model) < 0) goto fail;
    return t;
fail:
    mll_bpe_free(t);
    return NULL;
}

/* Per-thread state of an encode call: a direct-mapped cache of recent words (words of up to
 * CACHE_BYTES bytes that become up to CACHE_IDS ids) and scratch for long words. */
#define CACHE_BYTES 22
#define CACHE_IDS 8
typedef struct {
    uint64_t hash;
    uint8_t len, nids;
    uint8_t bytes[CACHE_BYTES];
    uint32_t ids[CACHE_IDS];
} cache_slot;                        /* 64 bytes */

typedef struct {
    cache_slot *cache;
    int64_t cache_mask;
    /* scratch for long words: ids, links (cap,) each, heap (2 cap,) */
    int64_t cap;
    uint32_t *ids;
    int32_t *next, *prev;
    uint64_t *heap;
} encoder_state;

static int state_init(encoder_state *st, int64_t text_len)
{
    memset(st, 0, sizeof(*st));
    int64_t slots = 256;
    while (slots < (1 << 16) && slots * 16 < text_len) slots *= 2;
    st->cache = calloc((size_t)slots, sizeof(cache_slot));
    st->cache_mask = slots - 1;
    return st->cache ? 0 : -1;
}

static void state_release(encoder_state *st)
{
    free(st->cache);
    free(st->ids);
    free(st->next);
    free(st->prev);
    free(st->heap);
}

static int state_reserve(encoder_state *st, int64_t n)
{
    if (n <= st->cap) return 0;
    int64_t cap = st->cap ? st->cap : 256;
    while (cap < n) cap *= 2;
    free(st->ids); free(st->next); free(st->prev); free(st->heap);
    st->ids = malloc(sizeof(uint32_t) * (size_t)cap);
    st->next = malloc(sizeof(int32_t) * (size_t)cap);
    st->prev = malloc(sizeof(int32_t) * (size_t)cap);
    st->heap = malloc(sizeof(uint64_t) * (size_t)cap * 2);
    st->cap = cap;
    if (!st->ids || !st->next || !st->prev || !st->heap) {
        st->cap = 0;
        return -1;
    }
    return 0;
}

/* Bytes of the UTF-8 character at w[i] (an invalid sequence: 1, one character per byte). */
static inline int utf8_char_len(const uint8_t *w, int64_t i, int64_t n)
{
    uint8_t c = w[i];
    int len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
    if (i + len > n) return 1;
    for (int k = 1; k < len; k++)
        if (!is_cont(w[i + k])) return 1;
    return len;
}

/* out <- the first symbols of word w (n bytes): its bytes (byte-level BPE) or its characters
 * (SentencePiece-style), returns their count (<= n). A character without a token becomes its
 * <0xXX> byte tokens (byte fallback, when all of them exist), else the unknown token (runs
 * fused into one with fuse_unk), else nothing, as HF's BPE model does. */
static int64_t first_symbols(const mll_bpe *t, const uint8_t *w, int64_t n, uint32_t *out)
{
    if (!t->opt.chars && t->all_bytes) {
        for (int64_t i = 0; i < n; i++) out[i] = t->byte_ids[w[i]];
        return n;
    }
    int64_t k = 0;
    int prev_unk = 0;
    for (int64_t i = 0; i < n;) {
        int len = t->opt.chars ? utf8_char_len(w, i, n) : 1;
        uint32_t id = t->opt.chars ? token_lookup(t, w + i, len) : t->byte_ids[w[i]];
        if (id != NO_ID) {
            out[k++] = id;
            prev_unk = 0;
        } else {
            int fallback = t->opt.chars && t->opt.byte_fallback;
            for (int b = 0; fallback && b < len; b++) fallback = t->byte_ids[w[i + b]] != NO_ID;
            if (fallback) {
                for (int b = 0; b < len; b++) out[k++] = t->byte_ids[w[i + b]];
                prev_unk = 0;
            } else if (t->opt.unk_id >= 0 && !(prev_unk && t->opt.fuse_unk)) {
                out[k++] = (uint32_t)t->opt.unk_id;
                prev_unk = 1;
            }
        }
        i += len;
    }
    return k;
}

/* Short words: ids (n,) shrinks in place; pair[i] = merge of (ids[i], ids[i + 1]). Each
 * round merges the pair of lowest rank, the leftmost one on a tie (as tiktoken and HF do). */
static int64_t merge_short(const mll_bpe *t, uint32_t *ids, merge_val *pair, int64_t n)
{
    for (int64_t i = 0; i + 1 < n; i++) pair[i] = merge_lookup(t, ids[i], ids[i + 1]);
    while (n > 1) {
        int64_t best = -1;
        uint32_t best_rank = NO_RANK;
        for (int64_t i = 0; i + 1 < n; i++)
            if (pair[i].rank < best_rank) { best_rank = pair[i].rank; best = i; }
        if (best < 0) break;
        ids[best] = pair[best].id;
        for (int64_t i = best + 1; i + 1 < n; i++) { ids[i] = ids[i + 1]; pair[i] = pair[i + 1]; }
        n--;
        if (best > 0) pair[best - 1] = merge_lookup(t, ids[best - 1], ids[best]);
        if (best + 1 < n) pair[best] = merge_lookup(t, ids[best], ids[best + 1]);
    }
    return n;
}

/* Long words: the same rule in O(n log n): a doubly linked list of symbols and a min-heap of
 * (rank << 32 | position); positions keep their order, so the leftmost pair wins ties. An
 * entry is stale when its left symbol is gone or now forms another pair. */
static inline void minheap_push(uint64_t *h, int64_t *len, uint64_t x)
{
    int64_t i = (*len)++;
    while (i > 0 && h[(i - 1) / 2] > x) { h[i] = h[(i - 1) / 2]; i = (i - 1) / 2; }
    h[i] = x;
}

static inline uint64_t minheap_pop(uint64_t *h, int64_t *len)
{
    uint64_t top = h[0], x = h[--*len];
    int64_t i = 0;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= *len) break;
        if (c + 1 < *len && h[c + 1] < h[c]) c++;
        if (h[c] >= x) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
    return top;
}

#define DEAD UINT32_MAX

static int64_t merge_long(const mll_bpe *t, encoder_state *st, int64_t n)
{
    uint32_t *ids = st->ids;
    int32_t *next = st->next, *prev = st->prev;
    uint64_t *heap = st->heap;
    int64_t hlen = 0;
    for (int64_t i = 0; i < n; i++) {
        next[i] = (int32_t)(i + 1 < n ? i + 1 : -1);
        prev[i] = (int32_t)(i - 1);
    }
    for (int64_t i = 0; i + 1 < n; i++) {
        merge_val v = merge_lookup(t, ids[i], ids[i + 1]);
        if (v.rank != NO_RANK) minheap_push(heap, &hlen, (uint64_t)v.rank << 32 | (uint64_t)i);
    }
    while (hlen > 0) {
        uint64_t top = minheap_pop(heap, &hlen);
        uint32_t rank = (uint32_t)(top >> 32);
        int32_t i = (int32_t)(top & 0xFFFFFFFFu), j;
        if (ids[i] == DEAD || (j = next[i]) < 0) continue;
        merge_val v = merge_lookup(t, ids[i], ids[j]);
        if (v.rank != rank) continue;
        ids[i] = v.id;
        ids[j] = DEAD;
        next[i] = next[j];
        if (next[j] >= 0) prev[next[j]] = i;
        /* the heap holds at most one live entry per position, plus stale ones: 2n fits */
        if (prev[i] >= 0) {
            merge_val l = merge_lookup(t, ids[prev[i]], ids[i]);
            if (l.rank != NO_RANK)
                minheap_push(heap, &hlen, (uint64_t)l.rank << 32 | (uint64_t)prev[i]);
        }
        if (next[i] >= 0) {
            merge_val r = merge_lookup(t, ids[i], ids[next[i]]);
            if (r.rank != NO_RANK) minheap_push(heap, &hlen, (uint64_t)r.rank << 32 | (uint64_t)i);
        }
    }
    int64_t k = 0;
    for (int64_t i = 0; i >= 0 && i < n; i = next[i]) ids[k++] = ids[i];
    return k;
}

#define SHORT_WORD 64

/* out <- ids of the word w (n >= 1 bytes); returns their count, -1 if out of memory. With
 * ignore_merges a word that is itself a token (Llama 3) is that token. */
static int64_t encode_word(const mll_bpe *t, encoder_state *st, const uint8_t *w, int64_t n,
                           uint32_t *out)
{
    if (n == 1 && !t->opt.chars && t->all_bytes) {
        out[0] = t->byte_ids[w[0]];
        return 1;
    }
    cache_slot *slot = NULL;
    uint64_t h = 0;
    if (n <= CACHE_BYTES) {
        h = hash_bytes(w, n);
        slot = &st->cache[h & (uint64_t)st->cache_mask];
        if (slot->hash == h && slot->len == n && memcmp(slot->bytes, w, (size_t)n) == 0) {
            memcpy(out, slot->ids, sizeof(uint32_t) * slot->nids);
            return slot->nids;
        }
    }
    int64_t k;
    uint32_t whole = t->opt.ignore_merges ? token_lookup(t, w, n) : NO_ID;
    if (whole != NO_ID) {
        out[0] = whole;
        k = 1;
    } else if (n <= SHORT_WORD) {
        merge_val pair[SHORT_WORD];
        k = merge_short(t, out, pair, first_symbols(t, w, n, out));
    } else {
        /* positions are int32 in the links and the heap keys */
        if (n > INT32_MAX || state_reserve(st, n) < 0) return -1;
        k = merge_long(t, st, first_symbols(t, w, n, st->ids));
        memcpy(out, st->ids, sizeof(uint32_t) * (size_t)k);
    }
    if (slot && k <= CACHE_IDS) {
        slot->hash = h;
        slot->len = (uint8_t)n;
        slot->nids = (uint8_t)k;
        memcpy(slot->bytes, w, (size_t)n);
        memcpy(slot->ids, out, sizeof(uint32_t) * (size_t)k);
    }
    return k;
}

/* ids of s[start, stop) split by steps[0..nsteps): the first step may look ahead to `limit`
 * (>= stop), each later one no further than the piece it splits; returns the count or -1. */
static int64_t encode_pieces(const mll_bpe *t, encoder_state *st, const uint8_t *s, int64_t start,
                             int64_t stop, int64_t limit, const int *steps, int nsteps, uint32_t *out)
{
    if (nsteps == 0) return stop > start ? encode_word(t, st, s + start, stop - start, out) : 0;
    int64_t k = 0;
    for (int64_t i = start; i < stop;) {
        int64_t e = split_end(steps[0], s, i, limit);
        int64_t m = encode_pieces(t, st, s, i, e, e, steps + 1, nsteps - 1, out + k);
        if (m < 0) return -1;
        k += m;
        i = e;
    }
    return k;
}

/* ids of the pre-tokens starting in [start, stop) of s[0, n); the first step looks ahead up
 * to n (a thread's piece ends where the whole text has a pre-token boundary). */
static int64_t encode_span(const mll_bpe *t, encoder_state *st, const uint8_t *s, int64_t start,
                           int64_t stop, int64_t n, uint32_t *out)
{
    return encode_pieces(t, st, s, start, stop, n, t->opt.steps, t->opt.nsteps, out);
}

/* Piece p writes its ids at out + bounds[p] (a piece of b bytes gives at most b ids); the
 * pieces are then packed in order, so the ids do not depend on the thread count. Only a
 * chain that starts with a regular expression is split (the safe points are its boundaries). */
int64_t mll_bpe_encode(const mll_bpe *t, const uint8_t *text, int64_t n, uint32_t *out,
                       int nthreads)
{
    nthreads = max_threads(nthreads);
    if (nthreads > 64) nthreads = 64;
    int first = t->opt.nsteps ? t->opt.steps[0] : 0;
    if (n < (1 << 16) || !(first == MLL_SPLIT_GPT2 || first == MLL_SPLIT_LLAMA3 ||
                           first == MLL_SPLIT_QWEN2))
        nthreads = 1;
    int64_t bounds[65], counts[64];
    int nparts = split_text(text, n, nthreads, bounds, first == MLL_SPLIT_GPT2);
    int err = 0;
#pragma omp parallel for num_threads(nparts) schedule(static, 1) reduction(| : err) if (nparts > 1)
    for (int p = 0; p < nparts; p++) {
        encoder_state st;
        if (state_init(&st, bounds[p + 1] - bounds[p]) < 0) {
            err = 1;
            counts[p] = 0;
        } else {
            counts[p] = encode_span(t, &st, text, bounds[p], bounds[p + 1], n, out + bounds[p]);
            if (counts[p] < 0) err = 1;
        }
        state_release(&st);
    }
    if (err) return -1;
    int64_t total = 0;
    for (int p = 0; p < nparts; p++) {
        memmove(out + total, out + bounds[p], sizeof(uint32_t) * (size_t)counts[p]);
        total += counts[p];
    }
    return total;
}

int64_t mll_bpe_encode_batch(const mll_bpe *t, const uint8_t *text, const int64_t *offsets,
                             int64_t n_texts, uint32_t *out, int64_t *out_offsets, int nthreads)
{
    nthreads = max_threads(nthreads);
    if (n_texts < 2 * nthreads) nthreads = 1;
    int err = 0;
    /* out_offsets[i + 1] holds the count of text i until the packing below */
#pragma omp parallel num_threads(nthreads) reduction(| : err)
    {
        encoder_state st;
        int ok = state_init(&st, (offsets[n_texts] - offsets[0]) / nthreads) == 0;
        if (!ok) err = 1;
#pragma omp for schedule(dynamic, 256)
        for (int64_t i = 0; i < n_texts; i++) {
            if (!ok) continue;
            const uint8_t *s = text + offsets[i];
            int64_t n = offsets[i + 1] - offsets[i];
            int64_t k = encode_span(t, &st, s, 0, n, n, out + offsets[i]);
            if (k < 0) err = 1;
            out_offsets[i + 1] = k < 0 ? 0 : k;
        }
        state_release(&st);
    }
    if (err) return -1;
    int64_t total = 0;
    out_offsets[0] = 0;
    for (int64_t i = 0; i < n_texts; i++) {
        int64_t k = out_offsets[i + 1];
        memmove(out + total, out + offsets[i], sizeof(uint32_t) * (size_t)k);
        total += k;
        out_offsets[i + 1] = total;
    }
    return total;
}

/* ================================================================ decoding */

int64_t mll_bpe_decoded_length(const mll_bpe *t, const uint32_t *ids, int64_t n)
{
    int64_t len = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t id = ids[i];
        if (id >= t->vocab_size || t->vocab_off[id + 1] == t->vocab_off[id]) return -(i + 1);
        len += t->vocab_off[id + 1] - t->vocab_off[id];
    }
    return len;
}

int64_t mll_bpe_decode(const mll_bpe *t, const uint32_t *ids, int64_t n, uint8_t *out)
{
    int64_t len = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t a = t->vocab_off[ids[i]], b = t->vocab_off[ids[i] + 1];
        memcpy(out + len, t->vocab_bytes + a, (size_t)(b - a));
        len += b - a;
    }
    return len;
}
