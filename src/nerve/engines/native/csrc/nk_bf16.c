/* bfloat16 GEMM and convolution: bf16 operands, float32 accumulation.
 *
 * The precision pass marks a MatMul/Gemm/Conv whose operands are read rounded to bfloat16
 * (round to nearest even, as nerve.ir.dtypes.float32_to_bfloat16 does); these kernels run it
 * on the CPU's bf16 dot-product units. Two variants, chosen by the lowering from the target's
 * ISA features (visible in the generated C and the CompileReport):
 *
 * - avx512_bf16: VDPBF16PS (_mm512_dpbf16_ps) on a register tile, like nk_packed.c's fp32
 *   micro-kernel, with each step multiplying pairs of consecutive K;
 * - amx_bf16: TDPBF16PS (_tile_dpbf16ps) on AMX tiles, 2 x 2 accumulator tiles (32 x 32).
 *
 * Weights are packed once, at bind time, by the engine (packing_bf16.py) into the VNNI pair
 * layout, the layout of AMX's B tiles: pairs of consecutive K interleaved, [K/2][cols][2]
 * bf16. A product's right operand becomes NK_BF16_NR-column tiles [tiles][KP/2][NR][2] with
 * K zero-padded to KP (a multiple of NK_BF16_KALIGN, an AMX tile's depth), so one packed
 * weight serves both variants. A convolution's weights become NK_MR-channel panels
 * [G][panels][KP2][NK_MR][2] with K ordered (channel pair, ky, kx), so each step broadcasts
 * one (channel 2c, channel 2c+1) pair per output channel; for small maps (output channels in
 * the vector lanes) they are packed as a product's B instead.
 *
 * Activations are rounded to bf16 as they are laid out, once per call: a product's A into
 * rows of K pairs (the layout of AMX's A tiles too, read in place by both variants), a
 * convolution's input into channel-pair planes (two channels interleaved per pixel), read in
 * place through per-tap offsets as the fp32 packed convolution does (no im2col).
 *
 * Every entry point runs whatever the CPU offers: the AMX variant falls back to AVX512-BF16
 * when the tile permission was refused (or the CPU lacks AMX), and that to a scalar loop that
 * computes the same products (bf16 x bf16 products are exact in float32). The lowering only
 * picks a variant the machine has, so the fallbacks are a guard against crashes, not a path.
 * Denormal bf16 operands are flushed to zero by the hardware (DAZ); the host emulation keeps
 * them, so results can differ below ~1e-38.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "nk.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define NK_BF16_X86 1
#include <cpuid.h>
#include <immintrin.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#define NK_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define NK_TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define NK_TARGET_AMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512bf16")))
#else
#define NK_BF16_X86 0
#endif

/* ---- feature detection and the AMX permission (once, when the library loads) -------------- */

static int support; /* NK_BF16_HAVE_* bits that this process can execute */

#if NK_BF16_X86
static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static int detect(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return 0; /* no OSXSAVE */
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    const uint64_t xcr0 = xgetbv0();
    int bits = 0;
    __cpuid_count(7, 0, a, b, c, d);
    const int avx512f = (b >> 16) & 1, amx_bf16 = (d >> 22) & 1, amx_tile = (d >> 24) & 1;
    const int zmm_state = (xcr0 & 0xE6) == 0xE6; /* SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM */
    unsigned a1, b1, c1, d1;
    __cpuid_count(7, 1, a1, b1, c1, d1);
    if (avx512f && zmm_state) bits |= NK_BF16_HAVE_AVX512F;
    if (avx512f && zmm_state && ((a1 >> 5) & 1)) bits |= NK_BF16_HAVE_AVX512BF16;
#if defined(__linux__) && defined(SYS_arch_prctl)
    if (amx_tile && amx_bf16 && ((xcr0 >> 17) & 3) == 3) { /* the OS saves XTILECFG/DATA */
        /* Linux hands out the 8 KiB tile state only on request (ARCH_REQ_XCOMP_PERM for
         * XFEATURE_XTILEDATA); threads created afterwards inherit the permission. */
        if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0)
            bits |= NK_BF16_HAVE_AMX;
    }
#else
    (void)amx_tile;
    (void)amx_bf16;
#endif
    return bits;
}
#else
static int detect(void) { return 0; }
#endif

static int detected; /* what detect() found */

__attribute__((constructor)) static void nk_bf16_setup(void) { support = detected = detect(); }

int nk_bf16_support(void) { return support; }

/* Use only the detected features in `mask` (-1: all of them again); returns what is used.
 * For tests of the fallback paths; not safe while a kernel runs. */
int nk_bf16_limit(int mask) {
    support = detected & mask;
    return support;
}

/* ---- rounding ------------------------------------------------------------------------------ */

/* float32 -> bfloat16 bits, round to nearest even; every NaN becomes the quiet NaN 0x7FC0. */
static inline uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

static inline float from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

#if NK_BF16_X86
/* 16 floats -> 16 bf16 bit patterns in the low halves of 32-bit lanes. */
NK_TARGET_AVX512 static inline __m512i round16(__m512 x) {
    const __m512i v = _mm512_castps_si512(x);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(v, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(v, _mm512_add_epi32(lsb,
                                                   _mm512_set1_epi32(0x7FFF))), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    return _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7FC0));
}

/* out[0, n) = bf16(x[0, n)); out[n, padded) = 0. */
NK_TARGET_AVX512 static void round_row_avx512(const float *x, int64_t n, int64_t padded,
                                              uint16_t *out) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(out + i),
                            _mm512_cvtepi32_epi16(round16(_mm512_loadu_ps(x + i))));
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        _mm256_mask_storeu_epi16(out + i, m,
                                 _mm512_cvtepi32_epi16(round16(_mm512_maskz_loadu_ps(m, x + i))));
        i = n;
    }
    for (; i < padded; i++) out[i] = 0;
}
#endif

static void round_row(const float *x, int64_t n, int64_t padded, uint16_t *out) {
#if NK_BF16_X86
    if (support & NK_BF16_HAVE_AVX512F) {
        round_row_avx512(x, n, padded, out);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++) out[i] = to_bf16(x[i]);
    for (int64_t i = n; i < padded; i++) out[i] = 0;
}

typedef struct {
    const float *x;
    float *y;
} round_job;

static void round_task(void *ctx, int64_t i0, int64_t i1) {
    const round_job *j = (const round_job *)ctx;
    for (int64_t i = i0; i < i1; i++) j->y[i] = from_bf16(to_bf16(j->x[i]));
}

void nk_bf16_round(int nt, int64_t n, const float *x, float *y) {
    round_job j = {x, y};
    nk_parallel_for(nt, n, 1 << 16, round_task, &j);
}

/* ---- per-thread workspace ------------------------------------------------------------------ */

/* which: 0 = a unit's packed activations, 1 = what a call shares with its workers, 2 = output
 * staging (slots of nk_thread_buffer). */
static void *thread_buffer(int which, size_t bytes) {
    return nk_thread_buffer(NK_BUF_BF16_ROWS + which, bytes);
}

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* ---- packed matrix product: Y = A . B, B packed as [tiles][KP/2][NR][2] --------------------- */

#ifndef NK_BF16_MR
#define NK_BF16_MR 12     /* rows of the AVX512-BF16 register tile (12 x 2 vectors) */
#endif
/* Blocking (measured on a Zen 5 core, 128x768x{768,3072} and 2048^3; within a few percent of
 * each other for the small shapes, fewer K blocks pay at 2048^3 where C is re-read per block). */
#ifndef NK_BF16_KCP
#define NK_BF16_KCP 512   /* K pairs per block: an A panel block (MR x 1024 bf16) stays in L1 */
#endif
#ifndef NK_BF16_TILES
#define NK_BF16_TILES 4   /* B tiles per column chunk: KCP x 4 x NR pairs (256 KiB) in L2 */
#endif
#ifndef NK_BF16_MC
#define NK_BF16_MC 96     /* rows per sub-block, over which one B tile block is reused */
#endif
#define NK_BF16_GEMV 4    /* fewer rows than this: one streaming pass over B per row */
#define NK_BF16_AMX_ROWS 32

int64_t nk_bf16_kpad(int64_t K) {
    return (K + NK_BF16_KALIGN - 1) / NK_BF16_KALIGN * NK_BF16_KALIGN;
}

/* A is rounded once per call into `ab`: rows of `lda` bf16 pairs (K zero-padded to KP, plus
 * one cache line so that rows a power of two apart do not share L1 sets), rows past M zero up
 * to the row block of the variant. Both variants read their A operand from there in place. */
typedef struct {
    int64_t M, N, K, KP2;           /* KP2: K pairs in the packed weights (KP / 2) */
    const float *A;
    const uint16_t *B;
    float *Y;
    nk_epilogue ep;
    const void *const *ep_args;
    const uint32_t *ab;             /* A rounded: rows of lda pairs */
    int64_t lda, arows;             /* pairs per row; rows (M rounded up) */
    int64_t tiles, ctiles, cchunks; /* B tiles; per column chunk; column chunks */
    int64_t rblock, rchunks;        /* rows per row chunk; row chunks */
} bmm_job;

static void run_epilogue(const bmm_job *j, int64_t m0, int64_t m1, int64_t t0, int64_t t1) {
    if (j->ep && m1 > m0)
        j->ep(j->ep_args, 1, 0, m0, m1, t0 * NK_BF16_NR, min64(t1 * NK_BF16_NR, j->N));
}

static void round_a_task(void *ctx, int64_t r0, int64_t r1) {
    const bmm_job *j = (const bmm_job *)ctx;
    for (int64_t m = r0; m < r1; m++) {
        uint16_t *dst = (uint16_t *)(j->ab + m * j->lda);
        if (m < j->M)
            round_row(j->A + m * j->K, j->K, 2 * j->lda, dst);
        else
            memset(dst, 0, (size_t)j->lda * sizeof(uint32_t));
    }
}

/* Round A into the caller's buffer (in parallel); 0 when out of memory. */
static int bmm_round_a(bmm_job *j, int nt, int64_t row_align) {
    j->lda = j->KP2 + 16;
    j->arows = (j->M + row_align - 1) / row_align * row_align;
    uint32_t *ab = (uint32_t *)thread_buffer(1, (size_t)(j->arows * j->lda) * sizeof(uint32_t));
    if (!ab) return 0;
    j->ab = ab;
    const int64_t grain = (int64_t)(65536 / (j->lda + 1)) + 1;
    nk_parallel_for(nt, j->arows, grain, round_a_task, j);
    return 1;
}

/* The scalar product of the same packed operands (a guard: never chosen by the lowering). */
static void scalar_block(int64_t kcp, const uint32_t *a, int64_t lda, const uint16_t *b,
                         float *c, int64_t ldc, int mr, int nr, int accumulate) {
    for (int i = 0; i < mr; i++) {
        for (int n = 0; n < nr; n++) {
            float acc = accumulate ? c[i * ldc + n] : 0.0f;
            for (int64_t p = 0; p < kcp; p++) {
                const uint32_t x = a[i * lda + p];
                const uint16_t *bp = b + (p * NK_BF16_NR + n) * 2;
                acc += from_bf16((uint16_t)(x >> 16)) * from_bf16(bp[1]);
                acc += from_bf16((uint16_t)x) * from_bf16(bp[0]);
            }
            c[i * ldc + n] = acc;
        }
    }
}

#if NK_BF16_X86
/* C[mr x nr] (+)= A . B over kcp pairs: A rows of bf16 pairs (row stride lda pairs), B one
 * packed tile [kcp][NR][2] at its K block. MR x NV accumulators (NV vectors of 16 columns). */
/* Rows [0, mr) of an MR x NV-vector accumulator tile into c (row stride ldc), through the
 * column masks, adding what c holds when `accumulate`. Uses the kernel's own names (acc, mask,
 * mr, c, ldc, accumulate). */
#define NK_BF16_STORE(MR, NV)                                                                     \
    do {                                                                                          \
        _Pragma("GCC unroll 12") for (int i = 0; i < MR; i++) {                                   \
            if (i >= mr) break;                                                                   \
            float *row = c + i * ldc;                                                             \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) {                                \
                __m512 r = acc[i][v];                                                             \
                if (accumulate)                                                                   \
                    r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(mask[v], row + 16 * v));           \
                _mm512_mask_storeu_ps(row + 16 * v, mask[v], r);                                  \
            }                                                                                     \
        }                                                                                         \
    } while (0)

#define NK_BF16_UKERNEL(NV)                                                                       \
    NK_TARGET_BF16 static void ukernel_bf16_##NV(int64_t kcp, const uint32_t *a, int64_t lda,    \
                                                 const uint16_t *b, float *c, int64_t ldc,       \
                                                 int mr, int nr, int accumulate) {               \
        __m512 acc[NK_BF16_MR][NV];                                                               \
        _Pragma("GCC unroll 12") for (int i = 0; i < NK_BF16_MR; i++)                             \
            _Pragma("GCC unroll 2") for (int v = 0; v < NV; v++) acc[i][v] = _mm512_setzero_ps(); \
        for (int64_t p = 0; p < kcp; p++) {                                                       \
            __m512bh bv[NV];                                                                      \
            _Pragma("GCC unroll 2") for (int v = 0; v < NV; v++)                                  \
                bv[v] = (__m512bh)_mm512_loadu_si512(b + p * 2 * NK_BF16_NR + 32 * v);            \
            _Pragma("GCC unroll 12") for (int i = 0; i < NK_BF16_MR; i++) {                       \
                const __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[i * lda + p]);             \
                _Pragma("GCC unroll 2") for (int v = 0; v < NV; v++)                              \
                    acc[i][v] = _mm512_dpbf16_ps(acc[i][v], av, bv[v]);                           \
            }                                                                                     \
        }                                                                                         \
        __mmask16 mask[NV];                                                                       \
        _Pragma("GCC unroll 2") for (int v = 0; v < NV; v++) {                                    \
            int left = nr - 16 * v;                                                               \
            mask[v] = (__mmask16)nk_tail_mask(left);                                              \
        }                                                                                         \
        NK_BF16_STORE(NK_BF16_MR, NV);                                                      \
    }

NK_BF16_UKERNEL(1)
NK_BF16_UKERNEL(2)

/* One row of the product against one packed tile over all of K: four independent chains per
 * vector hide the dot product's latency; bound by the stream of B. */
NK_TARGET_BF16 static void gemv_tile_bf16(int64_t kp2, const uint32_t *x, const uint16_t *b,
                                          float *y, int nr) {
    __m512 acc[4][2];
    for (int u = 0; u < 4; u++) acc[u][0] = acc[u][1] = _mm512_setzero_ps();
    int64_t p = 0;
    for (; p + 4 <= kp2; p += 4) {
        _Pragma("GCC unroll 4") for (int u = 0; u < 4; u++) {
            const uint16_t *r = b + (p + u) * 2 * NK_BF16_NR;
            const __m512bh xv = (__m512bh)_mm512_set1_epi32((int)x[p + u]);
            acc[u][0] = _mm512_dpbf16_ps(acc[u][0], xv, (__m512bh)_mm512_loadu_si512(r));
            acc[u][1] = _mm512_dpbf16_ps(acc[u][1], xv, (__m512bh)_mm512_loadu_si512(r + 32));
        }
    }
    for (; p < kp2; p++) {
        const uint16_t *r = b + p * 2 * NK_BF16_NR;
        const __m512bh xv = (__m512bh)_mm512_set1_epi32((int)x[p]);
        acc[0][0] = _mm512_dpbf16_ps(acc[0][0], xv, (__m512bh)_mm512_loadu_si512(r));
        acc[0][1] = _mm512_dpbf16_ps(acc[0][1], xv, (__m512bh)_mm512_loadu_si512(r + 32));
    }
    for (int v = 0; v < 2; v++) {
        int left = nr - 16 * v;
        __mmask16 mask = (__mmask16)nk_tail_mask(left);
        __m512 s = _mm512_add_ps(_mm512_add_ps(acc[0][v], acc[1][v]),
                                 _mm512_add_ps(acc[2][v], acc[3][v]));
        _mm512_mask_storeu_ps(y + 16 * v, mask, s);
    }
}
#endif

static void block_bf16(int64_t kcp, const uint32_t *a, int64_t lda, const uint16_t *b, float *c,
                       int64_t ldc, int mr, int nr, int accumulate) {
#if NK_BF16_X86
    if (support & NK_BF16_HAVE_AVX512BF16) {
        if (nr > 16)
            ukernel_bf16_2(kcp, a, lda, b, c, ldc, mr, nr, accumulate);
        else
            ukernel_bf16_1(kcp, a, lda, b, c, ldc, mr, nr, accumulate);
        return;
    }
#endif
    scalar_block(kcp, a, lda, b, c, ldc, mr, nr, accumulate);
}

/* Units are (row chunk, column chunk): a column chunk's B block (KCP pairs x TILES tiles)
 * stays in L2 while the chunk's row panels stream over it; the epilogue runs on the unit. */
static void bmm_task(void *ctx, int64_t u0, int64_t u1) {
    const bmm_job *j = (const bmm_job *)ctx;
    const int64_t kp2_used = (j->K + 1) / 2; /* pairs that hold data (the rest is padding) */
    for (int64_t u = u0; u < u1; u++) {
        const int64_t cc = u % j->cchunks, rc = u / j->cchunks;
        const int64_t t0 = cc * j->ctiles, t1 = min64(t0 + j->ctiles, j->tiles);
        const int64_t m0 = rc * j->rblock, m1 = min64(m0 + j->rblock, j->M);
        if (t0 >= t1 || m0 >= m1) continue;
        for (int64_t p0 = 0; p0 < kp2_used; p0 += NK_BF16_KCP) {
            const int64_t kcp = min64(NK_BF16_KCP, kp2_used - p0);
            for (int64_t rs = m0; rs < m1; rs += NK_BF16_MC) {
                const int64_t re = min64(rs + NK_BF16_MC, m1);
                for (int64_t t = t0; t < t1; t++) {
                    const int64_t n0 = t * NK_BF16_NR;
                    const int nr = (int)min64(NK_BF16_NR, j->N - n0);
                    const uint16_t *b = j->B + (t * j->KP2 + p0) * 2 * NK_BF16_NR;
                    for (int64_t r = rs; r < re; r += NK_BF16_MR)
                        block_bf16(kcp, j->ab + r * j->lda + p0, j->lda, b, j->Y + r * j->N + n0,
                                   j->N, (int)min64(NK_BF16_MR, re - r), nr, p0 > 0);
                }
            }
        }
        run_epilogue(j, m0, m1, t0, t1);
    }
}

/* Few rows: tiles [t0, t1) of every row, then the epilogue on them. */
static void gemv_task(void *ctx, int64_t t0, int64_t t1) {
    const bmm_job *j = (const bmm_job *)ctx;
    const int64_t kp2 = (j->K + 1) / 2;
    for (int64_t t = t0; t < t1; t++) {
        const int64_t n0 = t * NK_BF16_NR;
        const int nr = (int)min64(NK_BF16_NR, j->N - n0);
        const uint16_t *b = j->B + t * j->KP2 * 2 * NK_BF16_NR;
        for (int64_t m = 0; m < j->M; m++) {
            const uint32_t *x = j->ab + m * j->lda;
#if NK_BF16_X86
            if (support & NK_BF16_HAVE_AVX512BF16) {
                gemv_tile_bf16(kp2, x, b, j->Y + m * j->N + n0, nr);
                continue;
            }
#endif
            scalar_block(kp2, x, j->lda, b, j->Y + m * j->N + n0, j->N, 1, nr, 0);
        }
    }
    run_epilogue(j, 0, j->M, t0, t1);
}

/* Shapes, chunks and the rounded A; returns the thread count to use, 0 when there is nothing
 * to do (or no memory). */
static int bmm_prepare(bmm_job *j, int nt, int64_t M, int64_t N, int64_t K, const float *A,
                       const uint16_t *B, float *Y, nk_epilogue ep, const void *const *ep_args,
                       int64_t row_align) {
    if (M <= 0 || N <= 0) return 0;
    if (K == 0) {
        memset(Y, 0, (size_t)(M * N) * sizeof(float));
        if (ep) ep(ep_args, 1, 0, 0, M, 0, N);
        return 0;
    }
    memset(j, 0, sizeof *j);
    j->M = M, j->N = N, j->K = K, j->A = A, j->B = B, j->Y = Y, j->ep = ep, j->ep_args = ep_args;
    j->KP2 = nk_bf16_kpad(K) / 2;
    j->tiles = (N + NK_BF16_NR - 1) / NK_BF16_NR;
    j->ctiles = min64(j->tiles, NK_BF16_TILES);
    j->cchunks = (j->tiles + j->ctiles - 1) / j->ctiles;
    if (nt < 1 || 2.0 * (double)M * (double)N * (double)K < 262144.0) nt = 1;
    if (!bmm_round_a(j, nt, row_align)) return 0; /* out of memory */
    /* Split rows into blocks of row_align rows so that every thread gets a few units. */
    const int64_t blocks = j->arows / row_align;
    int64_t want = 4 * (int64_t)nt, rchunks = 1;
    if (nt > 1 && j->cchunks < want) {
        rchunks = (want + j->cchunks - 1) / j->cchunks;
        if (rchunks > blocks) rchunks = blocks;
    }
    j->rblock = (blocks + rchunks - 1) / rchunks * row_align;
    j->rchunks = (M + j->rblock - 1) / j->rblock;
    return nt;
}

void nk_matmul_bf16_avx512(int nt, int64_t M, int64_t N, int64_t K, const float *A,
                           const uint16_t *B, float *Y, nk_epilogue ep,
                           const void *const *ep_args) {
    bmm_job j;
    nt = bmm_prepare(&j, nt, M, N, K, A, B, Y, ep, ep_args, NK_BF16_MR);
    if (!nt) return;
    if (M < NK_BF16_GEMV) {
        const int64_t grain = j.tiles / (4 * (int64_t)nt);
        nk_parallel_for(nt, j.tiles, grain > 0 ? grain : 1, gemv_task, &j);
        return;
    }
    nk_parallel_for(nt, j.rchunks * j.cchunks, 1, bmm_task, &j);
}

/* ---- AMX ----------------------------------------------------------------------------------- */

#if NK_BF16_X86
/* The 64-byte tile configuration (palette 1): every tile 16 rows x 64 bytes. */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_config;

NK_TARGET_AMX static void amx_configure(void) {
    amx_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
}

/* Blocks of 32 rows x 32 columns: tmm0-3 accumulate the block (2 x 2 tiles of 16 x 16
 * floats), tmm4-5 hold two 16-row A tiles (16 rows x 32 bf16, read in place from the rounded
 * A), tmm6-7 two B tiles (16 pairs x 16 columns, row stride NR pairs). Each thread configures
 * its tiles once per call and releases them at the end (the tile state is then cheap to
 * context-switch again). */
NK_TARGET_AMX static void amx_task(void *ctx, int64_t u0, int64_t u1) {
    const bmm_job *j = (const bmm_job *)ctx;
    const int64_t KP = 2 * j->KP2, astride = j->lda * 4;
    float *cb = (float *)thread_buffer(2, 32 * 32 * sizeof(float));
    if (!cb) return; /* out of memory */
    amx_configure();
    for (int64_t u = u0; u < u1; u++) {
        const int64_t cc = u % j->cchunks, rc = u / j->cchunks;
        const int64_t t0 = cc * j->ctiles, t1 = min64(t0 + j->ctiles, j->tiles);
        const int64_t m0 = rc * j->rblock, m1 = min64(m0 + j->rblock, j->M);
        if (t0 >= t1 || m0 >= m1) continue;
        for (int64_t r = m0; r < m1; r += NK_BF16_AMX_ROWS) {
            const int64_t mr = min64(NK_BF16_AMX_ROWS, m1 - r);
            const uint16_t *a = (const uint16_t *)(j->ab + r * j->lda);
            for (int64_t t = t0; t < t1; t++) {
                const uint16_t *bt = j->B + t * j->KP2 * 2 * NK_BF16_NR;
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
                for (int64_t kb = 0; kb < KP; kb += NK_BF16_KALIGN) {
                    const uint16_t *b = bt + (kb / 2) * 2 * NK_BF16_NR;
                    _tile_loadd(4, a + kb, astride);
                    _tile_loadd(5, a + 16 * 2 * j->lda + kb, astride);
                    _tile_loadd(6, b, 4 * NK_BF16_NR);
                    _tile_loadd(7, b + 32, 4 * NK_BF16_NR);
                    _tile_dpbf16ps(0, 4, 6);
                    _tile_dpbf16ps(1, 4, 7);
                    _tile_dpbf16ps(2, 5, 6);
                    _tile_dpbf16ps(3, 5, 7);
                }
                _tile_stored(0, cb, 32 * sizeof(float));
                _tile_stored(1, cb + 16, 32 * sizeof(float));
                _tile_stored(2, cb + 16 * 32, 32 * sizeof(float));
                _tile_stored(3, cb + 16 * 32 + 16, 32 * sizeof(float));
                const int64_t n0 = t * NK_BF16_NR, nr = min64(NK_BF16_NR, j->N - n0);
                for (int64_t i = 0; i < mr; i++)
                    memcpy(j->Y + (r + i) * j->N + n0, cb + i * 32, (size_t)nr * sizeof(float));
            }
        }
        run_epilogue(j, m0, m1, t0, t1);
    }
    _tile_release();
}

/* The first AMX instruction of a thread is slow (the kernel allocates its tile state): run
 * one on every pool thread now. Each chunk waits, briefly, for the others to start, so that
 * the chunks land on distinct threads. */
typedef struct {
    atomic_int arrived;
    int want;
} warm_job;

NK_TARGET_AMX static void amx_warm_task(void *ctx, int64_t i0, int64_t i1) {
    warm_job *w = (warm_job *)ctx;
    for (int64_t i = i0; i < i1; i++) {
        amx_configure();
        _tile_zero(0);
        _tile_release();
        atomic_fetch_add(&w->arrived, 1);
        for (int spin = 0; spin < 200000 && atomic_load(&w->arrived) < w->want; spin++)
            __builtin_ia32_pause();
    }
}
#endif

void nk_matmul_bf16_amx(int nt, int64_t M, int64_t N, int64_t K, const float *A,
                        const uint16_t *B, float *Y, nk_epilogue ep, const void *const *ep_args) {
#if NK_BF16_X86
    if ((support & NK_BF16_HAVE_AMX) && M >= NK_BF16_GEMV) {
        bmm_job j;
        nt = bmm_prepare(&j, nt, M, N, K, A, B, Y, ep, ep_args, NK_BF16_AMX_ROWS);
        if (nt) nk_parallel_for(nt, j.rchunks * j.cchunks, 1, amx_task, &j);
        return;
    }
#endif
    /* No tile permission (or a few rows, which are bound by the stream of B anyway). */
    nk_matmul_bf16_avx512(nt, M, N, K, A, B, Y, ep, ep_args);
}

void nk_bf16_amx_warm(int nt) {
#if NK_BF16_X86
    if (!(support & NK_BF16_HAVE_AMX) || nt < 1) return;
    warm_job w;
    atomic_init(&w.arrived, 0);
    w.want = nt;
    nk_parallel_for(nt, nt, 1, amx_warm_task, &w);
#else
    (void)nt;
#endif
}

/* ---- convolution over packed weights and channel-pair planes ------------------------------ */

/* Like nk_conv2d_packed (see there for the phase planes and the padded pixel space), with each
 * plane holding a channel pair: element q of pair plane cp is the uint32 (bf16(x[2cp][q]),
 * bf16(x[2cp + 1][q])) (the second zero when the group has an odd channel count). A tap's B
 * row pair is then the contiguous run src[offs[kp] + q], 16 pixels per vector. */

#define NK_BF16_CNR 48   /* pixels per register tile: 3 vectors */
#define NK_BF16_CTILES 8 /* pixel tiles per unit */
#ifndef NK_BF16_CKCP
#define NK_BF16_CKCP 128 /* K pairs per block: a pixel tile's B rows (24 KiB) stay in L1 */
#endif

int64_t nk_conv_bf16_packed_elems(const nk_conv *d) {
    const int64_t G = d->G, Og = d->O / G, CP = (d->C / G + 1) / 2;
    return G * ((Og + NK_MR - 1) / NK_MR) * CP * d->KH * d->KW * NK_MR * 2;
}

typedef struct {
    const nk_conv *d;
    const float *x, *bias;
    const uint16_t *w;
    float *y;
    nk_epilogue ep;
    const void *const *ep_args;
    uint32_t *src;       /* the pair planes */
    const int64_t *offs; /* per K pair of one group: offset into the group's planes */
    int64_t CP, KP2;     /* channel pairs per group; K pairs per group */
    int64_t PHh, PWh, plane, PP;
    int64_t panels, ochunks, opanels, pchunks, ptiles;
} bconv_job;

/* Pair planes [n][g][cp][phase][PHh][PWh] for planes i in [i0, i1) (numbered over N*G*CP). */
/* out[i] = (bf16(x0[i]), bf16(x1[i])) for i < n, a contiguous run (x1 NULL: zero). */
#if NK_BF16_X86
NK_TARGET_AVX512 static void pair_run_avx512(const float *x0, const float *x1, int64_t n,
                                             uint32_t *out) {
    int64_t i = 0;
    for (; i < n; i += 16) {
        const __mmask16 m = (__mmask16)nk_tail_mask(n - i);
        __m512i v = round16(_mm512_maskz_loadu_ps(m, x0 + i));
        if (x1) v = _mm512_or_si512(v, _mm512_slli_epi32(round16(_mm512_maskz_loadu_ps(m, x1 + i)),
                                                         16));
        _mm512_mask_storeu_epi32(out + i, m, v);
    }
}
#endif

static void pair_run(const float *x0, const float *x1, int64_t n, uint32_t *out) {
#if NK_BF16_X86
    if (support & NK_BF16_HAVE_AVX512F) {
        pair_run_avx512(x0, x1, n, out);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++)
        out[i] = (uint32_t)to_bf16(x0[i]) | (x1 ? (uint32_t)to_bf16(x1[i]) << 16 : 0u);
}

/* Pair planes [n][g][cp][phase][PHh][PWh] for planes i in [i0, i1) (numbered over N*G*CP). */
static void bconv_pairs_task(void *ctx, int64_t i0, int64_t i1) {
    const bconv_job *j = (const bconv_job *)ctx;
    const nk_conv *d = j->d;
    const int64_t H = d->H, W = d->W, SH = d->SH, SW = d->SW, PHh = j->PHh, PWh = j->PWh;
    const int64_t Cg = d->C / d->G;
    const int whole = SH == 1 && SW == 1 && d->PT == 0 && d->PL == 0 && PHh == H && PWh == W;
    uint16_t *r0 = (uint16_t *)thread_buffer(0, (size_t)(2 * (W + 16)) * sizeof(uint16_t));
    if (!r0) return;
    uint16_t *r1 = r0 + W + 16;
    for (int64_t i = i0; i < i1; i++) {
        const int64_t cp = i % j->CP, ng = i / j->CP;
        const int64_t c0 = 2 * cp, has1 = c0 + 1 < Cg;
        const float *x0 = j->x + (ng * Cg + c0) * H * W; /* ng * Cg: (n * G + g) * Cg */
        const float *x1 = has1 ? x0 + H * W : NULL;
        uint32_t *dst = j->src + i * j->plane;
        if (whole) { /* the plane is the input's, unpadded: one run */
            pair_run(x0, x1, H * W, dst);
            continue;
        }
        for (int64_t ry = 0; ry < SH; ry++) {
            for (int64_t rx = 0; rx < SW; rx++) {
                uint32_t *ph = dst + (ry * SW + rx) * PHh * PWh;
                const int64_t b0 = rx - d->PL;
                int64_t lo, hi;
                nk_phase_columns(b0, SW, W, PWh, &lo, &hi);
                for (int64_t r = 0; r < PHh; r++) {
                    uint32_t *out = ph + r * PWh;
                    const int64_t iy = r * SH + ry - d->PT;
                    if (iy < 0 || iy >= H) {
                        memset(out, 0, (size_t)PWh * sizeof(uint32_t));
                        continue;
                    }
                    for (int64_t c = 0; c < lo; c++) out[c] = 0;
                    if (SW == 1) {
                        pair_run(x0 + iy * W + lo + b0, x1 ? x1 + iy * W + lo + b0 : NULL,
                                 hi - lo, out + lo);
                    } else {
                        round_row(x0 + iy * W, W, W, r0);
                        if (x1)
                            round_row(x1 + iy * W, W, W, r1);
                        else
                            memset(r1, 0, (size_t)W * sizeof(uint16_t));
                        for (int64_t c = lo; c < hi; c++) {
                            const int64_t ix = c * SW + b0;
                            out[c] = (uint32_t)r0[ix] | ((uint32_t)r1[ix] << 16);
                        }
                    }
                    for (int64_t c = hi; c < PWh; c++) out[c] = 0;
                }
            }
        }
    }
}

static int64_t bconv_valid_before(const bconv_job *j, int64_t q) {
    int64_t col = q % j->PWh;
    return (q / j->PWh) * j->d->OW + (col < j->d->OW ? col : j->d->OW);
}

static void bconv_scalar(int64_t kcp, const uint32_t *a, const uint32_t *b, const int64_t *offs,
                         float *c, int64_t ldc, int mr, int nr, int accumulate,
                         const float *bias) {
    for (int i = 0; i < mr; i++) {
        for (int q = 0; q < nr; q++) {
            float acc = accumulate ? c[i * ldc + q] : (bias ? bias[i] : 0.0f);
            for (int64_t p = 0; p < kcp; p++) {
                const uint32_t w = a[p * NK_MR + i], v = b[offs[p] + q];
                acc += from_bf16((uint16_t)(w >> 16)) * from_bf16((uint16_t)(v >> 16));
                acc += from_bf16((uint16_t)w) * from_bf16((uint16_t)v);
            }
            c[i * ldc + q] = acc;
        }
    }
}

#if NK_BF16_X86
/* C[mr x nr] (+)= W panel . B over kcp pairs; B pair rows read in place at b + offs[p]. */
#define NK_BF16_CKERNEL(NV)                                                                       \
    NK_TARGET_BF16 static void ckernel_bf16_##NV(int64_t kcp, const uint32_t *a,                  \
                                                 const uint32_t *b, const int64_t *offs,          \
                                                 float *c, int64_t ldc, int mr, int nr,           \
                                                 int accumulate, const float *bias) {             \
        __m512 acc[NK_MR][NV];                                                                    \
        __mmask16 mask[NV];                                                                       \
        _Pragma("GCC unroll 3") for (int v = 0; v < NV; v++) {                                    \
            int left = nr - 16 * v;                                                               \
            mask[v] = (__mmask16)nk_tail_mask(left);                                              \
        }                                                                                         \
        _Pragma("GCC unroll 8") for (int i = 0; i < NK_MR; i++) {                                 \
            __m512 init = _mm512_set1_ps(bias && i < mr ? bias[i] : 0.0f);                        \
            _Pragma("GCC unroll 3") for (int v = 0; v < NV; v++) acc[i][v] = init;                \
        }                                                                                         \
        for (int64_t p = 0; p < kcp; p++) {                                                       \
            const uint32_t *bp = b + offs[p];                                                     \
            __m512bh bv[NV];                                                                      \
            _Pragma("GCC unroll 3") for (int v = 0; v < NV; v++)                                  \
                bv[v] = (__m512bh)_mm512_maskz_loadu_epi32(mask[v], bp + 16 * v);                 \
            _Pragma("GCC unroll 8") for (int i = 0; i < NK_MR; i++) {                             \
                const __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[p * NK_MR + i]);           \
                _Pragma("GCC unroll 3") for (int v = 0; v < NV; v++)                              \
                    acc[i][v] = _mm512_dpbf16_ps(acc[i][v], av, bv[v]);                           \
            }                                                                                     \
        }                                                                                         \
        NK_BF16_STORE(NK_MR, NV);                                                           \
    }

NK_BF16_CKERNEL(1)
NK_BF16_CKERNEL(2)
NK_BF16_CKERNEL(3)
#endif

static void cblock_bf16(int64_t kcp, const uint32_t *a, const uint32_t *b, const int64_t *offs,
                        float *c, int64_t ldc, int mr, int nr, int accumulate,
                        const float *bias) {
#if NK_BF16_X86
    if (support & NK_BF16_HAVE_AVX512BF16) {
        const int nv = (nr + 15) / 16;
        if (nv >= 3)
            ckernel_bf16_3(kcp, a, b, offs, c, ldc, mr, nr, accumulate, bias);
        else if (nv == 2)
            ckernel_bf16_2(kcp, a, b, offs, c, ldc, mr, nr, accumulate, bias);
        else
            ckernel_bf16_1(kcp, a, b, offs, c, ldc, mr, nr, accumulate, bias);
        return;
    }
#endif
    bconv_scalar(kcp, a, b, offs, c, ldc, mr, nr, accumulate, bias);
}

static void bconv_task(void *ctx, int64_t u0, int64_t u1) {
    const bconv_job *j = (const bconv_job *)ctx;
    const nk_conv *d = j->d;
    const int64_t G = d->G, Og = d->O / G, P = d->OH * d->OW, OW = d->OW, PWh = j->PWh;
    const int64_t KP2 = j->KP2, kcp_max = NK_BF16_CKCP;
    const int staged = PWh != OW;
    const int64_t ldt = j->ptiles * NK_BF16_CNR;
    float *tmp = staged ? (float *)thread_buffer(2, (size_t)(j->opanels * NK_MR * ldt) *
                                                        sizeof(float))
                        : NULL;
    if (staged && !tmp) return; /* out of memory */
    for (int64_t u = u0; u < u1; u++) {
        const int64_t pc = u % j->pchunks, rest = u / j->pchunks;
        const int64_t oc = rest % j->ochunks, ng = rest / j->ochunks;
        const int64_t g = ng % G, n = ng / G;
        const int64_t pp0 = pc * ldt, pp1 = min64(pp0 + ldt, j->PP);
        const int64_t op0 = oc * j->opanels, op1 = min64(op0 + j->opanels, j->panels);
        if (pp0 >= pp1 || op0 >= op1) continue;
        const uint32_t *sg = j->src + ng * j->CP * j->plane;
        const uint32_t *wg = (const uint32_t *)j->w + g * j->panels * KP2 * NK_MR;
        float *yg = j->y + (n * d->O + g * Og) * P;
        for (int64_t k0 = 0; k0 < KP2; k0 += kcp_max) {
            const int64_t kcp = min64(kcp_max, KP2 - k0);
            /* One pixel tile's B rows (KCP pairs x 48 pixels) stay in L1 while the output
             * channel panels stream over them. */
            for (int64_t q0 = pp0; q0 < pp1; q0 += NK_BF16_CNR) {
                const int nr = (int)min64(NK_BF16_CNR, pp1 - q0);
                for (int64_t op = op0; op < op1; op++) {
                    const int64_t m0 = op * NK_MR;
                    const int mr = (int)min64(NK_MR, Og - m0);
                    const uint32_t *a = wg + (op * KP2 + k0) * NK_MR;
                    const float *bias = (k0 == 0 && j->bias) ? j->bias + g * Og + m0 : NULL;
                    float *c = staged ? tmp + (op - op0) * NK_MR * ldt + (q0 - pp0)
                                      : yg + m0 * P + q0;
                    cblock_bf16(kcp, a, sg + q0, j->offs + k0, c, staged ? ldt : P, mr, nr,
                                k0 > 0, bias);
                }
            }
        }
        const int64_t m1 = min64(op1 * NK_MR, Og);
        if (staged) {
            for (int64_t m = op0 * NK_MR; m < m1; m++) {
                const float *tr = tmp + (m - op0 * NK_MR) * ldt;
                for (int64_t oy = pp0 / PWh; oy <= (pp1 - 1) / PWh; oy++) {
                    int64_t c0 = pp0 - oy * PWh > 0 ? pp0 - oy * PWh : 0;
                    int64_t c1 = min64(pp1 - oy * PWh, OW);
                    if (c1 > c0)
                        memcpy(yg + m * P + oy * OW + c0, tr + oy * PWh + c0 - pp0,
                               (size_t)(c1 - c0) * sizeof(float));
                }
            }
        }
        if (j->ep) {
            const int64_t o0 = bconv_valid_before(j, pp0), o1 = bconv_valid_before(j, pp1);
            if (o1 > o0) j->ep(j->ep_args, 1, n, g * Og + op0 * NK_MR, g * Og + m1, o0, o1);
        }
    }
}

/* Geometry, tap offsets and the pair planes, shared by both convolution kernels; returns the
 * thread count to use, 0 when there is nothing left to do (or no memory). */
static int bconv_setup(bconv_job *j, int nt, const nk_conv *d, const float *x,
                       const uint16_t *wpack, const float *bias, float *y, nk_epilogue ep,
                       const void *const *ep_args) {
    const int64_t G = d->G, Cg = d->C / G, Og = d->O / G;
    const int64_t P = d->OH * d->OW, SH = d->SH, SW = d->SW;
    if (P <= 0 || Og <= 0 || d->N <= 0) return 0;
    if (Cg * d->KH * d->KW == 0) { /* no input channels: the output is the bias */
        for (int64_t n = 0; n < d->N; n++)
            for (int64_t o = 0; o < d->O; o++)
                for (int64_t p = 0; p < P; p++) y[(n * d->O + o) * P + p] = bias ? bias[o] : 0.0f;
        if (ep)
            for (int64_t n = 0; n < d->N; n++) ep(ep_args, 1, n, 0, d->O, 0, P);
        return 0;
    }
    memset(j, 0, sizeof *j);
    j->d = d, j->x = x, j->w = wpack, j->bias = bias, j->y = y, j->ep = ep, j->ep_args = ep_args;
    j->CP = (Cg + 1) / 2;
    j->KP2 = j->CP * d->KH * d->KW;
    j->PHh = d->OH + ((d->KH - 1) * d->DH) / SH;
    j->PWh = d->OW + ((d->KW - 1) * d->DW) / SW;
    j->PP = (d->OH - 1) * j->PWh + d->OW;
    j->plane = SH * SW * j->PHh * j->PWh;
    /* One buffer: the pair planes (plus a vector of slack: kernels may read a few pixels past
     * the last one and drop them), then the tap offsets (64-bit aligned). */
    const int64_t planes = d->N * G * j->CP, src_elems = (planes * j->plane + 31) / 16 * 16;
    uint32_t *buf = (uint32_t *)thread_buffer(1, (size_t)(src_elems * 4 + j->KP2 * 8 + 64));
    if (!buf) return 0; /* out of memory */
    memset(buf + planes * j->plane, 0, (size_t)(src_elems - planes * j->plane) * 4);
    int64_t *offs = (int64_t *)(buf + src_elems);
    for (int64_t p = 0; p < j->KP2; p++) {
        const int64_t kx = p % d->KW, ky = (p / d->KW) % d->KH, cp = p / (d->KW * d->KH);
        const int64_t a = ky * d->DH, b = kx * d->DW;
        offs[p] = cp * j->plane + ((a % SH) * SW + b % SW) * j->PHh * j->PWh +
                  (a / SH) * j->PWh + b / SW;
    }
    j->offs = offs;
    j->src = buf;
    if (nt < 1 || 2.0 * (double)d->O * (double)P * (double)Cg * d->KH * d->KW * d->N < 262144.0)
        nt = 1;
    const int64_t grain = planes / (4 * (int64_t)nt);
    nk_parallel_for(nt, planes, grain > 0 ? grain : 1, bconv_pairs_task, j);
    return nt;
}

void nk_conv2d_bf16_avx512(int nt, const nk_conv *d, const float *x, const uint16_t *wpack,
                           const float *bias, float *y, nk_epilogue ep,
                           const void *const *ep_args) {
    bconv_job j;
    nt = bconv_setup(&j, nt, d, x, wpack, bias, y, ep, ep_args);
    if (!nt) return;
    const int64_t G = d->G, Og = d->O / G;
    j.panels = (Og + NK_MR - 1) / NK_MR;
    const int64_t tiles = (j.PP + NK_BF16_CNR - 1) / NK_BF16_CNR;
    j.ptiles = min64(tiles, NK_BF16_CTILES);
    j.pchunks = (tiles + j.ptiles - 1) / j.ptiles;
    int64_t units = d->N * G * j.pchunks, want = 4 * (int64_t)nt;
    j.ochunks = 1;
    if (nt > 1 && units < want) {
        int64_t split = (want + units - 1) / units;
        j.ochunks = split < j.panels ? split : j.panels;
    }
    j.opanels = (j.panels + j.ochunks - 1) / j.ochunks;
    j.ochunks = (j.panels + j.opanels - 1) / j.opanels;
    nk_parallel_for(nt, d->N * G * j.ochunks * j.pchunks, 1, bconv_task, &j);
}

/* ---- convolution with output channels in the vector lanes (small maps) ---------------------- */

/* A 7x7 map fills 49 of the 96 lanes of two 48-pixel tiles; channel blocks of 32 are full in
 * every usual layer. Here a block is NK_BF16_CVP pixels (broadcast from the pair planes, one
 * (channel 2c, 2c + 1) pair per step) x 32 output channels (two vectors of the weights,
 * packed as a product's B: [ceil(O / 32)][KP / 2][32][2] with K pairs ordered (pair, ky, kx)),
 * over all of K; the block is stored transposed into the NCHW output. Groups must be 1. */

#define NK_BF16_CVP 12

static void cvec_scalar(int64_t kp2, const uint32_t *src, const int64_t *offs,
                        const uint16_t *b, const float *bias, int nc, float *out) {
    for (int i = 0; i < NK_BF16_CVP; i++) {
        for (int c = 0; c < NK_BF16_NR; c++) {
            float acc = bias && c < nc ? bias[c] : 0.0f;
            for (int64_t p = 0; p < kp2; p++) {
                const uint32_t v = src[offs[p] + i];
                const uint16_t *bp = b + (p * NK_BF16_NR + c) * 2;
                acc += from_bf16((uint16_t)(v >> 16)) * from_bf16(bp[1]);
                acc += from_bf16((uint16_t)v) * from_bf16(bp[0]);
            }
            out[i * NK_BF16_NR + c] = acc;
        }
    }
}

#if NK_BF16_X86
NK_TARGET_BF16 static void cvec_kernel(int64_t kp2, const uint32_t *src, const int64_t *offs,
                                       const uint16_t *b, const float *bias, int nc,
                                       float *out) {
    const __mmask16 m0 = (__mmask16)nk_tail_mask(nc);
    const __mmask16 m1 = (__mmask16)nk_tail_mask(nc - 16);
    const __m512 init0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
    const __m512 init1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
    __m512 acc[NK_BF16_CVP][2];
    _Pragma("GCC unroll 12") for (int i = 0; i < NK_BF16_CVP; i++) {
        acc[i][0] = init0;
        acc[i][1] = init1;
    }
    for (int64_t p = 0; p < kp2; p++) {
        const uint32_t *s = src + offs[p];
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + p * 2 * NK_BF16_NR);
        const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + p * 2 * NK_BF16_NR + 32);
        _Pragma("GCC unroll 12") for (int i = 0; i < NK_BF16_CVP; i++) {
            const __m512bh av = (__m512bh)_mm512_set1_epi32((int)s[i]);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], av, b0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], av, b1);
        }
    }
    _Pragma("GCC unroll 12") for (int i = 0; i < NK_BF16_CVP; i++) {
        _mm512_storeu_ps(out + i * NK_BF16_NR, acc[i][0]);
        _mm512_storeu_ps(out + i * NK_BF16_NR + 16, acc[i][1]);
    }
}
#endif

typedef struct {
    bconv_job c;
    int64_t kp2pad;           /* K pairs of a packed weight tile (padded) */
    int64_t otiles, pchunks;  /* 32-channel tiles; pixel chunks per image */
    int64_t pblock;           /* padded pixels per chunk (a multiple of NK_BF16_CVP) */
} bcvec_job;

static void bcvec_task(void *ctx, int64_t u0, int64_t u1) {
    const bcvec_job *jv = (const bcvec_job *)ctx;
    const bconv_job *j = &jv->c;
    const nk_conv *d = j->d;
    const int64_t O = d->O, P = d->OH * d->OW, OW = d->OW, PWh = j->PWh;
    float out[NK_BF16_CVP * NK_BF16_NR] __attribute__((aligned(64)));
    for (int64_t u = u0; u < u1; u++) {
        const int64_t pc = u % jv->pchunks, rest = u / jv->pchunks;
        const int64_t t = rest % jv->otiles, n = rest / jv->otiles;
        const int64_t q0 = pc * jv->pblock, q1 = min64(q0 + jv->pblock, j->PP);
        const int64_t o0 = t * NK_BF16_NR;
        const int nc = (int)min64(NK_BF16_NR, O - o0);
        if (q0 >= q1) continue;
        const uint32_t *src = j->src + n * j->CP * j->plane;
        const uint16_t *b = j->w + t * jv->kp2pad * 2 * NK_BF16_NR;
        const float *bias = j->bias ? j->bias + o0 : NULL;
        float *yn = j->y + (n * O + o0) * P;
        for (int64_t qb = q0; qb < q1; qb += NK_BF16_CVP) {
#if NK_BF16_X86
            if (support & NK_BF16_HAVE_AVX512BF16)
                cvec_kernel(j->KP2, src + qb, j->offs, b, bias, nc, out);
            else
#endif
                cvec_scalar(j->KP2, src + qb, j->offs, b, bias, nc, out);
            for (int64_t i = 0; i < NK_BF16_CVP && qb + i < q1; i++) {
                const int64_t q = qb + i, ox = q % PWh;
                if (ox >= OW) continue; /* a dropped column of the padded pixel space */
                float *yp = yn + (q / PWh) * OW + ox;
                for (int c = 0; c < nc; c++) yp[c * P] = out[i * NK_BF16_NR + c];
            }
        }
        if (j->ep) {
            const int64_t p0 = bconv_valid_before(j, q0), p1 = bconv_valid_before(j, q1);
            if (p1 > p0) j->ep(j->ep_args, 1, n, o0, o0 + nc, p0, p1);
        }
    }
}

int64_t nk_conv_bf16_cvec_elems(const nk_conv *d) {
    const int64_t CP = (d->C + 1) / 2;
    return (d->O + NK_BF16_NR - 1) / NK_BF16_NR * nk_bf16_kpad(2 * CP * d->KH * d->KW) *
           NK_BF16_NR;
}

void nk_conv2d_bf16_cvec(int nt, const nk_conv *d, const float *x, const uint16_t *wpack,
                         const float *bias, float *y, nk_epilogue ep, const void *const *ep_args) {
    bcvec_job jv;
    nt = bconv_setup(&jv.c, nt, d, x, wpack, bias, y, ep, ep_args);
    if (!nt) return;
    jv.kp2pad = nk_bf16_kpad(2 * jv.c.KP2) / 2;
    jv.otiles = (d->O + NK_BF16_NR - 1) / NK_BF16_NR;
    const int64_t blocks = (jv.c.PP + NK_BF16_CVP - 1) / NK_BF16_CVP;
    int64_t chunks = 1;
    const int64_t units = d->N * jv.otiles, want = 4 * (int64_t)nt;
    if (nt > 1 && units < want) chunks = min64((want + units - 1) / units, blocks);
    jv.pblock = (blocks + chunks - 1) / chunks * NK_BF16_CVP;
    jv.pchunks = (jv.c.PP + jv.pblock - 1) / jv.pblock;
    nk_parallel_for(nt, d->N * jv.otiles * jv.pchunks, 1, bcvec_task, &jv);
}
