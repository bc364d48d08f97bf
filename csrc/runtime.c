/* runtime.c: CPU detection and ISA dispatch, thread count, the caching allocator. */
#include "minillm.h"

#include <stdlib.h>
#include <string.h>
#include <omp.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define MLL_X86 1
#endif

static int g_isa = MLL_ISA_GENERIC;
static int g_supported[3] = {1, 0, 0};
static int g_bf16 = 0;
static int g_vnni = 0;             /* the CPU has AVX512-VNNI */
static int g_amd = 0;              /* the vendor string is AuthenticAMD */
static int g_vnni_off = 0;         /* mll_set_vnni(0) */
static int g_bf16x_off = 0;        /* mll_set_bf16_x(0) */
static int g_threads = 1;
static int g_initialized = 0;
static char g_cpu_name[64] = "";

#ifdef MLL_X86
static uint64_t read_xcr0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static void detect_cpu(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return;
    g_amd = b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u;   /* "Auth" "enti" "cAMD" */
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    int has_fma = (c >> 12) & 1, has_osxsave = (c >> 27) & 1, has_avx = (c >> 28) & 1;
    if (!has_osxsave || !has_avx) return;
    uint64_t xcr0 = read_xcr0();
    int os_ymm = (xcr0 & 0x6) == 0x6;          /* SSE and AVX state saved by the OS */
    int os_zmm = (xcr0 & 0xe6) == 0xe6;        /* plus opmask and both ZMM halves */
    if (__get_cpuid_max(0, 0) < 7) return;
    __cpuid_count(7, 0, a, b, c, d);
    int has_avx2 = (b >> 5) & 1, has_vnni = (c >> 11) & 1;
    int has_avx512f = (b >> 16) & 1, has_avx512dq = (b >> 17) & 1;
    int has_avx512bw = (b >> 30) & 1, has_avx512vl = (b >> 31) & 1;
    g_supported[MLL_ISA_AVX2] = os_ymm && has_avx2 && has_fma;
    g_supported[MLL_ISA_AVX512] = g_supported[MLL_ISA_AVX2] && os_zmm && has_avx512f && has_avx512dq &&
                                  has_avx512bw && has_avx512vl;
    g_vnni = g_supported[MLL_ISA_AVX512] && has_vnni;
    __cpuid_count(7, 1, a, b, c, d);
    g_bf16 = g_supported[MLL_ISA_AVX512] && ((a >> 5) & 1);
}

static void detect_name(void) {
    unsigned regs[12];
    if (__get_cpuid_max(0x80000000, 0) < 0x80000004) return;
    for (unsigned i = 0; i < 3; i++)
        __get_cpuid(0x80000002 + i, &regs[4 * i], &regs[4 * i + 1], &regs[4 * i + 2], &regs[4 * i + 3]);
    memcpy(g_cpu_name, regs, 48);
    g_cpu_name[48] = 0;
    /* the brand string is padded with spaces on some CPUs */
    for (int i = 47; i >= 0 && (g_cpu_name[i] == ' ' || g_cpu_name[i] == 0); i--) g_cpu_name[i] = 0;
}
#else
static void detect_cpu(void) {}
static void detect_name(void) {}
#endif

int mll_init(void) {
    int rc = 0;
    if (g_initialized) return 0;
    g_initialized = 1;
    detect_cpu();
    detect_name();
    g_isa = g_supported[MLL_ISA_AVX512] ? MLL_ISA_AVX512 : g_supported[MLL_ISA_AVX2] ? MLL_ISA_AVX2
                                                                                    : MLL_ISA_GENERIC;
    const char *want = getenv("MINILLM_ISA");
    if (want && *want) {
        int isa = -1;
        for (int i = 0; i < 3; i++)
            if (strcmp(want, mll_isa_name(i)) == 0) isa = i;
        if (isa < 0 || mll_set_isa(isa) != 0) rc = -1;
    }
    int n = omp_get_num_procs();
    const char *env = getenv("MINILLM_NUM_THREADS");
    if (env && atoi(env) > 0) n = atoi(env);
    mll_set_num_threads(n < 1 ? 1 : n);
    return rc;
}

int mll_cpu_supports(int isa) { return isa >= 0 && isa < 3 && g_supported[isa]; }
int mll_cpu_has_avx512bf16(void) { return g_bf16; }
int mll_cpu_has_avx512vnni(void) { return g_vnni; }
int mll_cpu_is_amd(void) { return g_amd; }

int mll_set_vnni(int on) {
    if (on && !g_vnni) return -1;
    g_vnni_off = !on;
    return 0;
}

int mll_get_vnni(void) { return g_vnni && !g_vnni_off; }
int mll_vnni_active(void) { return mll_get_vnni() && g_isa == MLL_ISA_AVX512; }

int mll_set_bf16_x(int on) {
    if (on && !g_bf16) return -1;
    g_bf16x_off = !on;
    return 0;
}

int mll_get_bf16_x(void) { return g_bf16 && !g_bf16x_off; }
int mll_bf16_x_active(void) { return mll_get_bf16_x() && g_isa == MLL_ISA_AVX512; }
const char *mll_cpu_name(void) { return g_cpu_name; }
int mll_get_isa(void) { return g_isa; }

int mll_set_isa(int isa) {
    if (!mll_cpu_supports(isa)) return -1;
    g_isa = isa;
    return 0;
}

const char *mll_isa_name(int isa) {
    switch (isa) {
    case MLL_ISA_AVX2: return "avx2";
    case MLL_ISA_AVX512: return "avx512";
    default: return "generic";
    }
}

int mll_get_num_threads(void) { return g_threads; }

void mll_set_num_threads(int n) {
    g_threads = n < 1 ? 1 : n;
    omp_set_num_threads(g_threads);
}

/* ---------------------------------------------------------------------------------------
 * Caching allocator. Sizes are rounded up to a size class: multiples of 64 bytes up to
 * 4 KiB, then four classes per power of two (at most 25% waste). Freed blocks go on a
 * per-class free list; blocks above 1 GiB bypass the cache. One lock guards the lists:
 * tensors are allocated from Python, one at a time, so it is never contended in practice.
 */
#define NUM_CLASSES 256
#define CACHE_LIMIT ((size_t)1 << 30)

typedef struct block { struct block *next; } block;
static block *g_free[NUM_CLASSES];
static int64_t g_in_use, g_cached, g_os_allocs;
static omp_lock_t g_lock;
static int g_lock_ready;

static size_t class_size(size_t n, int *cls) {
    if (n <= 4096) {
        size_t s = (n + 63) & ~(size_t)63;
        if (s == 0) s = 64;
        *cls = (int)(s / 64) - 1;                 /* classes 0..63 */
        return s;
    }
    int lg = 63 - __builtin_clzll((unsigned long long)(n - 1));  /* 2^lg < n <= 2^(lg+1) */
    size_t quarter = (size_t)1 << (lg - 1);                       /* 2^(lg+1) / 4 */
    size_t base = (size_t)1 << lg;
    size_t k = (n - base + quarter - 1) / quarter;                /* 1..4 */
    *cls = 64 + (lg - 12) * 4 + (int)(k - 1);
    if (*cls >= NUM_CLASSES) *cls = -1;
    return base + k * quarter;
}

static void lock(void) {
    if (!g_lock_ready) {                          /* first use happens at import, single-threaded */
        omp_init_lock(&g_lock);
        g_lock_ready = 1;
    }
    omp_set_lock(&g_lock);
}

void *mll_alloc(size_t nbytes) {
    /* more than 2^62 bytes: no machine has it, and refusing here keeps the rounded size and
     * the int64 statistics in range */
    if (nbytes > ((size_t)1 << 62)) return NULL;
    int cls;
    size_t size = class_size(nbytes, &cls);
    if (nbytes > CACHE_LIMIT) cls = -1;
    lock();
    if (cls >= 0 && g_free[cls]) {
        block *b = g_free[cls];
        g_free[cls] = b->next;
        g_cached -= (int64_t)size;
        g_in_use += (int64_t)size;
        omp_unset_lock(&g_lock);
        return b;
    }
    g_os_allocs++;
    g_in_use += (int64_t)size;
    omp_unset_lock(&g_lock);
    void *p = aligned_alloc(64, size);
    if (!p) {
        lock();
        g_in_use -= (int64_t)size;
        omp_unset_lock(&g_lock);
    }
    return p;
}

void mll_free(void *p, size_t nbytes) {
    if (!p) return;
    int cls;
    size_t size = class_size(nbytes, &cls);
    if (nbytes > CACHE_LIMIT) cls = -1;
    lock();
    g_in_use -= (int64_t)size;
    if (cls >= 0) {
        block *b = (block *)p;
        b->next = g_free[cls];
        g_free[cls] = b;
        g_cached += (int64_t)size;
        p = NULL;
    }
    omp_unset_lock(&g_lock);
    free(p);
}

void mll_alloc_stats(int64_t *in_use, int64_t *cached, int64_t *os_allocs) {
    *in_use = g_in_use;
    *cached = g_cached;
    *os_allocs = g_os_allocs;
}
