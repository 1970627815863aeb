/* int8 products: MatMulInteger / ConvInteger on VNNI (vpdpbusd) or AMX (tdpbusd) tiles, plus
 * QuantizeLinear and DequantizeLinear.
 *
 * The hardware multiplies unsigned bytes by signed bytes and sums groups of four into int32.
 * Every product here is brought to that form (u8 activations A', s8 weights B') and the zero
 * points are applied afterwards, exactly, in int32 (wrapping, like the hardware and ONNX):
 *
 *   sum_k (a - za)(b - zb) = sum_k a'b' - za' colsum(b') + cb (rowsum(a') - K za')
 *
 * with a' = a (uint8 A) or a + 128 (int8 A), za' = za + that shift; b' = b (int8 B) or b - 128
 * (uint8 B), cb = that shift - zb. colsum(b') is computed when B is packed (at bind time for a
 * weight), rowsum(a') when A is packed. So the inner loops are the bare u8 x s8 dot products.
 *
 * Layouts. B is packed once into panels of 16 columns, [KQ][16][4] bytes per panel (nk.h):
 * one 64-byte row per quad of k, which is a VNNI vector and a row of an AMX B tile. A is packed
 * per call into rows of Kp = ceil(K/64)*64 bytes (zero-padded), 32-row padded, quantizing a
 * float32 A on the way (QuantizeLinear fused as the operand packing step). A convolution packs
 * its input once into NHWC bytes, so each pixel's patch is KH*KW runs of C/G bytes (im2col by
 * memcpy) and the product is pixels x channels; the tile is transposed when stored.
 *
 * Each finished register/tile block is corrected, converted to float32 and scaled (the fused
 * DequantizeLinear: float(acc) * scale, the same two roundings as the host), stored, and the
 * segment's epilogue (bias, activation...) runs on the unit's output block while it is in cache.
 *
 * Variants: AMX (2x2 tiles of 16x16 int32, 32 rows x 32 columns per block), AVX512-VNNI
 * (8 rows x 48 columns in 24 zmm accumulators) and a portable loop. Each is compiled with a
 * function-level target attribute, so the library builds with the engine's normal flags, and
 * runs only where the CPU has it (nk_int8_isa); all compute the same int32 values.
 */
#include <math.h>
#include <stdlib.h>

#include "nk.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>
#if defined(__clang__) ? (__clang_major__ >= 8) : (__GNUC__ >= 9)
#define NK_VNNI 1
#endif
#if defined(__clang__) ? (__clang_major__ >= 12) : (__GNUC__ >= 11)
#define NK_AMX 1
#endif
#endif

#define QP 16        /* columns per packed panel */
#define QK 64        /* k padding: one AMX A-tile row */
#define ROWPAD 32    /* A rows are padded to two AMX tiles */
#define VMR 8        /* VNNI register tile: rows */
#define VNV 3        /* VNNI register tile: panels (16 columns each) */
#define NK_I8_TILES 8 /* VNNI blocks (48 columns) per column chunk of a unit */
#define NK_I8_L2_ROWS 262144 /* bytes of packed A rows a unit keeps in L2 */

static int64_t up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
static int64_t cdiv(int64_t x, int64_t m) { return (x + m - 1) / m; }

/* ---- which variant runs -------------------------------------------------------------------- */

static int cpu_int8_level(void) {
    static int level = -1;
    if (level >= 0) return level;
    int found = NK_I8_PORTABLE;
#if defined(NK_VNNI)
    unsigned int a, b, c, d;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
        int avx512 = (b & (1u << 16)) && (b & (1u << 30)); /* AVX512F, AVX512BW */
        int vnni = (c >> 11) & 1;                          /* AVX512_VNNI */
        unsigned int a1, b1, c1, d1;
        int osxsave = __get_cpuid(1, &a1, &b1, &c1, &d1) && ((c1 >> 27) & 1);
        unsigned int xcr0 = 0;
        if (osxsave) {
            unsigned int hi;
            __asm__ volatile("xgetbv" : "=a"(xcr0), "=d"(hi) : "c"(0));
        }
        int zmm_state = (xcr0 & 0xE6u) == 0xE6u; /* SSE, AVX, opmask and ZMM state enabled */
        if (avx512 && vnni && zmm_state) found = NK_I8_VNNI;
#if defined(NK_AMX)
        int amx = ((d >> 24) & 1) && ((d >> 25) & 1); /* AMX-TILE, AMX-INT8 */
        if (found == NK_I8_VNNI && amx && nk_amx_request()) found = NK_I8_AMX;
#endif
    }
#endif
    level = found;
    return level;
}

int nk_int8_isa(int requested) {
    int have = cpu_int8_level();
    return requested < have ? requested : have;
}

/* ---- values -------------------------------------------------------------------------------- */

static inline int32_t zero_at(const void *z, int type, int64_t i) {
    switch (type) {
    case NK_T_U8: return ((const uint8_t *)z)[i];
    case NK_T_S8: return ((const int8_t *)z)[i];
    default: return ((const int32_t *)z)[i];
    }
}

/* QuantizeLinear of one value to [lo, hi] (zero point included), as the host computes it:
 * x / s in float32, rounded half to even, + zero, saturated; NaN gives 0. */
static inline int32_t quantize1(float x, float s, int32_t zero, int32_t lo, int32_t hi) {
    float r = rintf(x / s);
    float c = fminf(fmaxf(r, (float)(lo - zero)), (float)(hi - zero));
    return r == r ? (int32_t)c + zero : 0;
}

/* quantize1 over n values, each result's low byte xor `shift` (0x80 turns int8 into the
 * unsigned a' form) stored at dst. */
static void quantize_bytes(const float *x, int64_t n, float s, int32_t zero, int32_t lo,
                           int32_t hi, uint8_t shift, uint8_t *dst) {
    int64_t k = 0;
#if defined(__AVX512F__)
    /* The same operations, 16 at a time: an exact division, round to nearest even, clamp,
     * NaN -> 0, and a truncating narrow to bytes. */
    const __m512 vs = _mm512_set1_ps(s), vlo = _mm512_set1_ps((float)(lo - zero));
    const __m512 vhi = _mm512_set1_ps((float)(hi - zero)), vnan = _mm512_set1_ps((float)-zero);
    const __m512i vz = _mm512_set1_epi32(zero), vsh = _mm512_set1_epi32(shift);
    for (; k < n; k += 16) {
        __mmask16 m = (__mmask16)nk_tail_mask(n - k);
        __m512 r = _mm512_roundscale_ps(_mm512_div_ps(_mm512_maskz_loadu_ps(m, x + k), vs),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __mmask16 nan = _mm512_cmp_ps_mask(r, r, _CMP_UNORD_Q);
        r = _mm512_mask_mov_ps(_mm512_min_ps(_mm512_max_ps(r, vlo), vhi), nan, vnan);
        __m512i v = _mm512_xor_si512(_mm512_add_epi32(_mm512_cvtps_epi32(r), vz), vsh);
        _mm512_mask_cvtepi32_storeu_epi8(dst + k, m, v);
    }
#endif
    for (; k < n; k++) dst[k] = (uint8_t)((uint8_t)quantize1(x[k], s, zero, lo, hi) ^ shift);
}

/* ---- packing -------------------------------------------------------------------------------- */

static int64_t quad_group_bytes(int64_t K, int64_t N) {
    int64_t panels = cdiv(N, QP), kq = up(K, QK) / 4;
    return panels * kq * 64 + panels * QP * 4;
}

int64_t nk_quad_bytes(int64_t G, int64_t K, int64_t N) { return G * quad_group_bytes(K, N); }

typedef struct {
    const void *b;
    int8_t *dst;
    int64_t G, K, N, kh_kw; /* kh_kw > 0: convolution weights [G][N][C][KH*KW] */
    int unsigned_src;
} pack_job;

/* Panels [p0, p1) numbered over groups: fills the panel and its column sums. */
static void pack_task(void *ctx, int64_t p0, int64_t p1) {
    const pack_job *j = (const pack_job *)ctx;
    const int64_t K = j->K, N = j->N, panels = cdiv(N, QP), kq = up(K, QK) / 4;
    const int64_t gbytes = quad_group_bytes(K, N);
    for (int64_t pi = p0; pi < p1; pi++) {
        int64_t g = pi / panels, p = pi % panels;
        int8_t *panel = j->dst + g * gbytes + p * kq * 64;
        int32_t *sums = (int32_t *)(j->dst + g * gbytes + panels * kq * 64) + p * QP;
        memset(panel, 0, (size_t)(kq * 64));
        for (int c = 0; c < QP; c++) {
            int64_t n = p * QP + c;
            int32_t sum = 0;
            if (n < N) {
                for (int64_t k = 0; k < K; k++) {
                    int64_t src;
                    if (j->kh_kw) { /* k = (tap, c) over [G][N][C][taps] */
                        int64_t C = K / j->kh_kw, tap = k / C, ch = k % C;
                        src = ((g * N + n) * C + ch) * j->kh_kw + tap;
                    } else {
                        src = k * N + n;
                    }
                    int8_t v = j->unsigned_src
                                   ? (int8_t)(((const uint8_t *)j->b)[src] ^ 0x80u)
                                   : ((const int8_t *)j->b)[src];
                    panel[(k / 4) * 64 + c * 4 + k % 4] = v;
                    sum += v;
                }
            }
            sums[c] = sum;
        }
    }
}

static void pack_b(int nt, const void *b, int b_type, int64_t G, int64_t K, int64_t N,
                   int64_t kh_kw, int8_t *dst) {
    pack_job j = {b, dst, G, K, N, kh_kw, b_type == NK_T_U8};
    nk_parallel_for(nt, G * cdiv(N, QP), 1, pack_task, &j);
}

/* ---- per-thread buffers ---------------------------------------------------------------------- */

static void *thread_buffer(size_t bytes) { return nk_thread_buffer(NK_BUF_INT8, bytes); }

/* ---- micro-kernels: c[i][j] = sum_k a'[i][k] b'[k][j] over kq quads ------------------------- */

/* Portable: the same layouts, plain loops. c is [mr][ldc] (NV * 16 columns written). */
static void uk_portable(int64_t kq, const uint8_t *a, int64_t lda, const int8_t *b, int64_t ldp,
                        int np, int mr, int32_t *c, int64_t ldc) {
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < np * QP; j++) c[i * ldc + j] = 0;
    for (int p = 0; p < np; p++) {
        const int8_t *panel = b + p * ldp;
        for (int i = 0; i < mr; i++) {
            const uint8_t *ar = a + i * lda;
            int32_t *cr = c + i * ldc + p * QP;
            for (int64_t q = 0; q < kq; q++) {
                const uint8_t *aq = ar + 4 * q;
                const int8_t *bq = panel + q * 64;
                for (int j = 0; j < QP; j++)
                    cr[j] += aq[0] * bq[4 * j] + aq[1] * bq[4 * j + 1] + aq[2] * bq[4 * j + 2] +
                             aq[3] * bq[4 * j + 3];
            }
        }
    }
}

#if defined(NK_VNNI)
#define NK_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni")))

/* MR_ rows x NV panels in zmm accumulators: per quad, NV panel rows are loaded and each row's
 * 4 A bytes broadcast; vpdpbusd adds the four u8 x s8 products into each int32 lane. */
#define NK_VNNI_UK(MR_, NV)                                                                     \
    NK_VNNI_TARGET static void uk_vnni_##MR_##_##NV(int64_t kq, const uint8_t *a, int64_t lda, \
                                                    const int8_t *b, int64_t ldp, int32_t *c,  \
                                                    int64_t ldc) {                             \
        __m512i acc[MR_][NV];                                                                   \
        _Pragma("GCC unroll 8") for (int i = 0; i < MR_; i++)                                   \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) acc[i][v] =                     \
                _mm512_setzero_si512();                                                         \
        for (int64_t q = 0; q < kq; q++) {                                                      \
            __m512i bv[NV];                                                                     \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) bv[v] =                        \
                _mm512_loadu_si512((const void *)(b + v * ldp + q * 64));                       \
            _Pragma("GCC unroll 8") for (int i = 0; i < MR_; i++) {                             \
                int32_t quad;                                                                   \
                memcpy(&quad, a + i * lda + 4 * q, 4);                                          \
                __m512i av = _mm512_set1_epi32(quad);                                           \
                _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) acc[i][v] =                 \
                    _mm512_dpbusd_epi32(acc[i][v], av, bv[v]);                                  \
            }                                                                                   \
        }                                                                                       \
        _Pragma("GCC unroll 8") for (int i = 0; i < MR_; i++)                                   \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                                \
                _mm512_storeu_si512((void *)(c + i * ldc + v * 16), acc[i][v]);                 \
    }

NK_VNNI_UK(8, 3)
NK_VNNI_UK(8, 2)
NK_VNNI_UK(8, 1)
NK_VNNI_UK(4, 3)
NK_VNNI_UK(4, 2)
NK_VNNI_UK(4, 1)
NK_VNNI_UK(2, 3)
NK_VNNI_UK(2, 2)
NK_VNNI_UK(2, 1)
NK_VNNI_UK(1, 3)
NK_VNNI_UK(1, 2)
NK_VNNI_UK(1, 1)

typedef void (*vnni_uk)(int64_t, const uint8_t *, int64_t, const int8_t *, int64_t, int32_t *,
                        int64_t);
static const vnni_uk vnni_kernels[4][3] = {
    {uk_vnni_1_1, uk_vnni_1_2, uk_vnni_1_3},
    {uk_vnni_2_1, uk_vnni_2_2, uk_vnni_2_3},
    {uk_vnni_4_1, uk_vnni_4_2, uk_vnni_4_3},
    {uk_vnni_8_1, uk_vnni_8_2, uk_vnni_8_3},
};

static void uk_vnni(int64_t kq, const uint8_t *a, int64_t lda, const int8_t *b, int64_t ldp,
                    int np, int mr, int32_t *c, int64_t ldc) {
    int r = mr <= 1 ? 0 : (mr <= 2 ? 1 : (mr <= 4 ? 2 : 3));
    vnni_kernels[r][np - 1](kq, a, lda, b, ldp, c, ldc);
}
#endif

#if defined(NK_AMX)
#define NK_AMX_TARGET __attribute__((target("amx-tile,amx-int8")))

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed, aligned(64))) amx_config;

/* Tiles 0-3: C (int32, 2x2 blocks of 16x16); 4-5: A (16 rows x 64 bytes); 6-7: B (16 quads x
 * 16 columns). Loaded at the start of each unit of work on the thread running it (another
 * kernel may have configured the tiles differently in between). */
NK_AMX_TARGET static void amx_begin(void) {
    amx_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
}

NK_AMX_TARGET static void amx_end(void) { _tile_release(); }

/* c[32][32] = A rows [32][Kp] . panels (np = 1 or 2) over kt 64-byte k steps. */
NK_AMX_TARGET static void uk_amx(int64_t kt, const uint8_t *a, int64_t lda, const int8_t *b,
                                 int64_t ldp, int np, int32_t *c) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t t = 0; t < kt; t++) {
        _tile_loadd(4, a + t * 64, lda);
        _tile_loadd(5, a + 16 * lda + t * 64, lda);
        _tile_loadd(6, b + t * 1024, 64);
        _tile_dpbusd(0, 4, 6);
        _tile_dpbusd(2, 5, 6);
        if (np > 1) {
            _tile_loadd(7, b + ldp + t * 1024, 64);
            _tile_dpbusd(1, 4, 7);
            _tile_dpbusd(3, 5, 7);
        }
    }
    _tile_stored(0, c, 128);
    _tile_stored(2, c + 16 * 32, 128);
    if (np > 1) {
        _tile_stored(1, c + 16, 128);
        _tile_stored(3, c + 16 * 32 + 16, 128);
    }
}
#endif

/* ---- the finishing step: zero points, dequantization, store ----------------------------------- */

typedef struct {
    int64_t K;
    const int32_t *rowsum, *za; /* per packed A row (rowsum of a', za') */
    const int32_t *colsum, *cb; /* per column of the block's panel set / global columns */
    int has_cb;
    const float *scale; /* NULL: int32 output */
    int64_t scale_n;
} finish_args;

#define NK_I8_FCOLS (VNV * QP) /* widest block a variant finishes (AMX: 32 columns) */

#if defined(__AVX__)
/* dst[j * ldd + i] = src[i * lds + j] for an 8 x 8 block of 32-bit words (AVX shuffles). */
static inline void transpose8x8(const int32_t *src, int64_t lds, int32_t *dst, int64_t ldd) {
    __m256 r[8], u[8], v[8];
    for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps((const float *)(src + i * lds));
    for (int i = 0; i < 8; i += 2) {
        u[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        u[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        v[i] = _mm256_shuffle_ps(u[i], u[i + 2], 0x44);
        v[i + 1] = _mm256_shuffle_ps(u[i], u[i + 2], 0xEE);
        v[i + 2] = _mm256_shuffle_ps(u[i + 1], u[i + 3], 0x44);
        v[i + 3] = _mm256_shuffle_ps(u[i + 1], u[i + 3], 0xEE);
    }
    for (int j = 0; j < 4; j++) {
        _mm256_storeu_ps((float *)(dst + j * ldd), _mm256_permute2f128_ps(v[j], v[j + 4], 0x20));
        _mm256_storeu_ps((float *)(dst + (j + 4) * ldd),
                         _mm256_permute2f128_ps(v[j], v[j + 4], 0x31));
    }
}
#endif

/* Rows [m0, m0 + mr) x columns [n0, n0 + nr) of the accumulator block acc (row stride lda,
 * column 0 = column n0) into y: row-major (transposed == 0, element (m, n) at y[m * ldy + n])
 * or column-major (element at y[n * ldy + m]: a convolution's pixels x channels block, stored
 * channel by channel so that each store run is contiguous). */
static void finish(const finish_args *f, const int32_t *acc, int64_t lda, int64_t m0, int mr,
                   int64_t n0, int nr, void *y, int64_t ldy, int transposed) {
    int32_t t[ROWPAD * NK_I8_FCOLS];
    const int32_t *cs = f->colsum + n0, *cb = f->cb + n0;
    for (int i = 0; i < mr; i++) {
        const uint32_t za = (uint32_t)f->za[m0 + i];
        const uint32_t zk = (uint32_t)f->rowsum[m0 + i] - (uint32_t)f->K * za;
        const int32_t *ar = acc + i * lda;
        int32_t *tr = t + i * NK_I8_FCOLS;
        for (int j = 0; j < nr; j++) {
            uint32_t v = (uint32_t)ar[j] - za * (uint32_t)cs[j];
            if (f->has_cb) v += (uint32_t)cb[j] * zk;
            tr[j] = (int32_t)v;
        }
    }
    const float *s = f->scale && f->scale_n > 1 ? f->scale + n0 : NULL;
    const float s0 = f->scale ? f->scale[0] : 0.0f;
    if (transposed) {
        /* Scale in place (float bits in t), then store 8 x 8 blocks transposed. */
        if (f->scale)
            for (int i = 0; i < mr; i++) {
                float *tf = (float *)(t + i * NK_I8_FCOLS);
                const int32_t *ti = t + i * NK_I8_FCOLS;
                for (int j = 0; j < nr; j++) tf[j] = (float)ti[j] * (s ? s[j] : s0);
            }
        int32_t *yt = (int32_t *)y; /* float and int32 results move as 32-bit words */
        int i0 = 0;
#if defined(__AVX__)
        for (; i0 + 8 <= mr; i0 += 8) {
            int j0 = 0;
            for (; j0 + 8 <= nr; j0 += 8)
                transpose8x8(t + i0 * NK_I8_FCOLS + j0, NK_I8_FCOLS,
                             yt + (n0 + j0) * ldy + m0 + i0, ldy);
            for (int j = j0; j < nr; j++)
                for (int i = i0; i < i0 + 8; i++)
                    yt[(n0 + j) * ldy + m0 + i] = t[i * NK_I8_FCOLS + j];
        }
#endif
        for (int j = 0; j < nr && i0 < mr; j++)
            for (int i = i0; i < mr; i++) yt[(n0 + j) * ldy + m0 + i] = t[i * NK_I8_FCOLS + j];
        return;
    }
    for (int i = 0; i < mr; i++) {
        const int32_t *tr = t + i * NK_I8_FCOLS;
        if (f->scale) {
            float *dst = (float *)y + (m0 + i) * ldy + n0;
            if (s)
                for (int j = 0; j < nr; j++) dst[j] = (float)tr[j] * s[j];
            else
                for (int j = 0; j < nr; j++) dst[j] = (float)tr[j] * s0;
        } else {
            memcpy((int32_t *)y + (m0 + i) * ldy + n0, tr, (size_t)nr * sizeof(int32_t));
        }
    }
}

/* ---- the block loop shared by both products ----------------------------------------------------- */

/* Output rows [r0, r1) (packed A rows from `a`, stride lda, r0 a multiple of 32) x panels
 * [p0, p1) of `panels` (panel stride ldp), at the variant `isa`. */
typedef struct {
    int isa;
    int64_t kq, kt, lda, ldp;
    const uint8_t *a;
    const int8_t *panels;
    finish_args f;
    void *y; /* element (row m, column n) at y[m * ldy + n], or y[n * ldy + m] transposed */
    int64_t ldy;
    int transposed;
    int64_t rows, cols; /* valid rows / columns */
} block_job;

static void run_blocks(const block_job *j, int64_t r0, int64_t r1, int64_t p0, int64_t p1) {
    int32_t acc[ROWPAD * ROWPAD > VMR * VNV * QP ? ROWPAD * ROWPAD : VMR * VNV * QP]
        __attribute__((aligned(64)));
    if (r1 > j->rows) r1 = j->rows;
    const int step = j->isa == NK_I8_AMX ? 2 : VNV;
    for (int64_t p = p0; p < p1; p += step) {
        int np = (int)(p1 - p < step ? p1 - p : step);
        int64_t n0 = p * QP;
        int nr = (int)(j->cols - n0 < np * QP ? j->cols - n0 : np * QP);
        const int8_t *b = j->panels + p * j->ldp;
        const finish_args *f = &j->f;
        if (j->isa == NK_I8_AMX) {
#if defined(NK_AMX)
            for (int64_t m = r0; m < r1; m += ROWPAD) {
                int mr = (int)(r1 - m < ROWPAD ? r1 - m : ROWPAD);
                uk_amx(j->kt, j->a + m * j->lda, j->lda, b, j->ldp, np, acc);
                finish(f, acc, ROWPAD, m, mr, n0, nr, j->y, j->ldy, j->transposed);
            }
#endif
            continue;
        }
        for (int64_t m = r0; m < r1; m += VMR) {
            int mr = (int)(r1 - m < VMR ? r1 - m : VMR);
            const uint8_t *a = j->a + m * j->lda;
#if defined(NK_VNNI)
            if (j->isa == NK_I8_VNNI)
                uk_vnni(j->kq, a, j->lda, b, j->ldp, np, mr, acc, VNV * QP);
            else
#endif
                uk_portable(j->kq, a, j->lda, b, j->ldp, np, mr, acc, VNV * QP);
            finish(f, acc, VNV * QP, m, mr, n0, nr, j->y, j->ldy, j->transposed);
        }
    }
}

/* ---- packing A ------------------------------------------------------------------------------- */

/* The zero point's type and the shift that makes A's values unsigned (int8 -> +128). */
static int a_value_type(const nk_i8 *g) { return g->a_type == NK_T_F32 ? g->a_qtype : g->a_type; }

/* One row of A as a' bytes (K of them, then zeros to Kp); returns the row sum. */
static uint32_t a_row(const nk_i8 *g, const void *src, int32_t zero, uint8_t *dst, int64_t K,
                      int64_t Kp) {
    const int vt = a_value_type(g);
    const uint8_t shift = vt == NK_T_S8 ? 0x80u : 0u;
    if (g->a_type == NK_T_F32) {
        const int32_t lo = vt == NK_T_S8 ? -128 : 0, hi = vt == NK_T_S8 ? 127 : 255;
        quantize_bytes((const float *)src, K, g->a_scale[0], zero, lo, hi, shift, dst);
    } else if (shift) {
        const uint8_t *x = (const uint8_t *)src;
        for (int64_t k = 0; k < K; k++) dst[k] = x[k] ^ shift;
    } else {
        memcpy(dst, src, (size_t)K);
    }
    memset(dst + K, 0, (size_t)(Kp - K));
    uint32_t sum = 0;
    for (int64_t k = 0; k < K; k++) sum += dst[k];
    return sum;
}

static int32_t a_zero_of(const nk_i8 *g, int64_t row) {
    if (!g->a_zero) return 0;
    return zero_at(g->a_zero, a_value_type(g), g->a_zero_n > 1 ? row % g->a_rows : 0);
}

static int32_t a_shift(const nk_i8 *g) { return a_value_type(g) == NK_T_S8 ? 128 : 0; }

/* cb[n] = (128 for uint8 B) - b_zero[n] for n < N, 0 beyond; returns whether any is nonzero. */
static int column_shifts(const nk_i8 *g, int64_t N, int64_t Npad, int32_t *cb) {
    const int32_t sb = g->b_type == NK_T_U8 ? 128 : 0;
    int any = 0;
    for (int64_t n = 0; n < Npad; n++) {
        int32_t z = n < N && g->b_zero ? zero_at(g->b_zero, g->b_type, g->b_zero_n > 1 ? n : 0)
                                       : 0;
        cb[n] = n < N ? sb - z : 0;
        any |= cb[n] != 0;
    }
    return any;
}

/* ---- MatMulInteger ------------------------------------------------------------------------------ */

/* The workspace (nk_matmul_i8_workspace; lower_int8.py computes the same): 64 bytes of
 * alignment slack, packed A [Mp][Kp], its row sums and zero points [Mp] int32 each, the column
 * shifts [Npad] int32, and, when B is not a packed weight, B packed (64-byte aligned parts). */
typedef struct {
    const nk_i8 *g;
    int64_t Mp, Kp, Npad;
    uint8_t *apack;
    int32_t *rowsum, *za;
    block_job blk;
    int64_t panels, cpanels, cchunks, rrows;
} mm_job;

static void mm_pack_task(void *ctx, int64_t b0, int64_t b1) {
    const mm_job *j = (const mm_job *)ctx;
    const nk_i8 *g = j->g;
    for (int64_t m = b0 * ROWPAD; m < b1 * ROWPAD; m++) {
        uint8_t *dst = j->apack + m * j->Kp;
        if (m >= g->M) {
            memset(dst, 0, (size_t)j->Kp);
            j->rowsum[m] = 0;
            j->za[m] = 0;
            continue;
        }
        const size_t esize = g->a_type == NK_T_F32 ? 4 : 1;
        const char *src = (const char *)g->a + (size_t)(m * g->K) * esize;
        int32_t zero = a_zero_of(g, m);
        j->rowsum[m] = (int32_t)a_row(g, src, zero, dst, g->K, j->Kp);
        j->za[m] = zero + a_shift(g);
    }
}

static void mm_task(void *ctx, int64_t u0, int64_t u1) {
    const mm_job *j = (const mm_job *)ctx;
    const nk_i8 *g = j->g;
#if defined(NK_AMX)
    if (j->blk.isa == NK_I8_AMX) amx_begin();
#endif
    for (int64_t u = u0; u < u1; u++) {
        int64_t cc = u % j->cchunks, rc = u / j->cchunks;
        int64_t p0 = cc * j->cpanels, p1 = p0 + j->cpanels < j->panels ? p0 + j->cpanels
                                                                       : j->panels;
        int64_t r0 = rc * j->rrows, r1 = r0 + j->rrows < g->M ? r0 + j->rrows : g->M;
        if (p0 >= p1 || r0 >= r1) continue;
        run_blocks(&j->blk, r0, r1, p0, p1);
        if (g->ep && g->y_scale) {
            int64_t n1 = p1 * QP < g->N ? p1 * QP : g->N;
            g->ep(g->ep_args, 1, 0, r0, r1, p0 * QP, n1);
        }
    }
#if defined(NK_AMX)
    if (j->blk.isa == NK_I8_AMX) amx_end();
#endif
}

/* Lay the workspace out from `work` (NULL: only measure it); returns its size in bytes. */
static int64_t mm_layout(const nk_i8 *g, char *work, mm_job *j, int32_t **cb, int8_t **bpack) {
    j->g = g;
    j->Mp = up(g->M, ROWPAD);
    j->Kp = up(g->K, QK);
    j->Npad = up(g->N, QP);
    int64_t off = 64; /* alignment slack */
    char *base = work ? work + (64 - (uintptr_t)work % 64) % 64 : NULL;
    int64_t apack = 0, rowsum = up(j->Mp * j->Kp, 64);
    int64_t za = rowsum + up(4 * j->Mp, 64), shifts = za + up(4 * j->Mp, 64);
    int64_t packed = shifts + up(4 * j->Npad, 64);
    off += packed + (g->b_packed ? 0 : nk_quad_bytes(1, g->K, g->N));
    if (base) {
        j->apack = (uint8_t *)(base + apack);
        j->rowsum = (int32_t *)(base + rowsum);
        j->za = (int32_t *)(base + za);
        *cb = (int32_t *)(base + shifts);
        *bpack = (int8_t *)(base + packed);
    }
    return off;
}

int64_t nk_matmul_i8_workspace(const nk_i8 *g) {
    mm_job j;
    return mm_layout(g, NULL, &j, NULL, NULL);
}

void nk_matmul_i8(int nt, const nk_i8 *g) {
    const int64_t M = g->M, N = g->N, K = g->K;
    if (M <= 0 || N <= 0) return;
    mm_job j;
    memset(&j, 0, sizeof j);
    int32_t *cb = NULL;
    int8_t *bwork = NULL;
    mm_layout(g, (char *)g->work, &j, &cb, &bwork);
    if (nt < 1 || 2.0 * (double)M * (double)N * (double)K < 262144.0) nt = 1;
    const int8_t *bpack = (const int8_t *)g->b;
    if (!g->b_packed) {
        pack_b(nt, g->b, g->b_type, 1, K, N, 0, bwork);
        bpack = bwork;
    }
    int has_cb = column_shifts(g, N, j.Npad, cb);
    nk_parallel_for(nt, j.Mp / ROWPAD, 1, mm_pack_task, &j);

    j.panels = j.Npad / QP;
    const int64_t kqpad = j.Kp / 4;
    block_job *b = &j.blk;
    b->isa = nk_int8_isa(g->isa);
    b->kq = cdiv(K, 4);
    b->kt = j.Kp / QK;
    b->lda = j.Kp;
    b->ldp = kqpad * 64;
    b->a = j.apack;
    b->panels = bpack;
    b->f.K = K;
    b->f.rowsum = j.rowsum;
    b->f.za = j.za;
    b->f.colsum = (const int32_t *)(bpack + j.panels * kqpad * 64);
    b->f.cb = cb;
    b->f.has_cb = has_cb;
    b->f.scale = g->y_scale;
    b->f.scale_n = g->y_scale_n;
    b->y = g->y;
    b->ldy = N;
    b->transposed = 0;
    b->rows = M;
    b->cols = N;

    /* Units: (row chunk, column chunk); a column chunk's panels stay in L2 while the chunk's
     * row tiles stream over them. Split rows when there are few column chunks. */
    j.cpanels = NK_I8_TILES * VNV;
    j.cchunks = cdiv(j.panels, j.cpanels);
    int64_t tiles = j.Mp / ROWPAD, want = 4 * (int64_t)nt, rchunks = 1;
    if (nt > 1 && j.cchunks < want) {
        rchunks = cdiv(want, j.cchunks);
        if (rchunks > tiles) rchunks = tiles;
    }
    j.rrows = cdiv(tiles, rchunks) * ROWPAD;
    /* A unit's packed rows (rrows x Kp bytes) stay in L2 while its column blocks pass. */
    int64_t fit = NK_I8_L2_ROWS / j.Kp / ROWPAD * ROWPAD;
    if (fit < ROWPAD) fit = ROWPAD;
    if (j.rrows > fit) j.rrows = fit;
    rchunks = cdiv(j.Mp, j.rrows);
    nk_parallel_for(nt, rchunks * j.cchunks, 1, mm_task, &j);
}

/* ---- ConvInteger -------------------------------------------------------------------------------- */

/* Workspace (nk_conv2d_i8_workspace): 64 bytes of slack, the input as NHWC a' bytes
 * [N][H][W][C], the column shifts [ceil(O/16)*16] int32, and, when the weights are not
 * packed, their packing. */
typedef struct {
    const nk_conv *d;
    const nk_i8 *g;
    uint8_t *img;
    uint8_t pad;
    int32_t za;
    int64_t K, Kp, P, PC, pchunks, opanels, ochunks, panels, gbytes;
    const int8_t *bpack;
    const int32_t *cb;
    int has_cb, isa;
} cv_job;

/* dst[i * dst_stride + j] = src[j * src_stride + i] for a 16 x 16 byte tile: four rounds of
 * SSE2 unpacks (8-, 16-, 32-, 64-bit), each doubling the run of one column's bytes. */
static void transpose16(const uint8_t *src, int64_t src_stride, uint8_t *dst, int64_t dst_stride) {
#if defined(__SSE2__)
    __m128i r[16], s[16];
    for (int i = 0; i < 16; i++) r[i] = _mm_loadu_si128((const __m128i *)(src + i * src_stride));
    for (int i = 0; i < 8; i++) { /* s[i]: columns 0-7, s[i + 8]: 8-15; rows 2i, 2i+1 */
        s[i] = _mm_unpacklo_epi8(r[2 * i], r[2 * i + 1]);
        s[i + 8] = _mm_unpackhi_epi8(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) { /* r[4q + i]: columns 4q..4q+3, rows 4i..4i+3 */
        r[i] = _mm_unpacklo_epi16(s[2 * i], s[2 * i + 1]);
        r[i + 4] = _mm_unpackhi_epi16(s[2 * i], s[2 * i + 1]);
        r[i + 8] = _mm_unpacklo_epi16(s[2 * i + 8], s[2 * i + 9]);
        r[i + 12] = _mm_unpackhi_epi16(s[2 * i + 8], s[2 * i + 9]);
    }
    for (int q = 0; q < 4; q++) { /* rows 0-7 of columns (4q, 4q+1), (4q+2, 4q+3); rows 8-15 */
        s[4 * q] = _mm_unpacklo_epi32(r[4 * q], r[4 * q + 1]);
        s[4 * q + 2] = _mm_unpackhi_epi32(r[4 * q], r[4 * q + 1]);
        s[4 * q + 1] = _mm_unpacklo_epi32(r[4 * q + 2], r[4 * q + 3]);
        s[4 * q + 3] = _mm_unpackhi_epi32(r[4 * q + 2], r[4 * q + 3]);
    }
    for (int q = 0; q < 4; q++) { /* column c: rows 0-7 then 8-15 */
        r[4 * q] = _mm_unpacklo_epi64(s[4 * q], s[4 * q + 1]);
        r[4 * q + 1] = _mm_unpackhi_epi64(s[4 * q], s[4 * q + 1]);
        r[4 * q + 2] = _mm_unpacklo_epi64(s[4 * q + 2], s[4 * q + 3]);
        r[4 * q + 3] = _mm_unpackhi_epi64(s[4 * q + 2], s[4 * q + 3]);
    }
    for (int i = 0; i < 16; i++) _mm_storeu_si128((__m128i *)(dst + i * dst_stride), r[i]);
#else
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) dst[i * dst_stride + j] = src[j * src_stride + i];
#endif
}

#define NK_I8_WCHUNK 512

/* Input rows (n, h) [r0, r1) to NHWC a' bytes: per block of 16 channels, the rows are
 * converted (quantized, or shifted) into a staging tile, then transposed 16 x 16 at a time. */
static void cv_image_task(void *ctx, int64_t r0, int64_t r1) {
    const cv_job *j = (const cv_job *)ctx;
    const nk_conv *d = j->d;
    const nk_i8 *g = j->g;
    const int64_t C = d->C, H = d->H, W = d->W;
    const int vt = a_value_type(g);
    const uint8_t shift = vt == NK_T_S8 ? 0x80u : 0u;
    const int32_t lo = vt == NK_T_S8 ? -128 : 0, hi = vt == NK_T_S8 ? 127 : 255;
    const int32_t zero = j->za - a_shift(g);
    uint8_t tile[16 * NK_I8_WCHUNK];
    for (int64_t r = r0; r < r1; r++) {
        int64_t n = r / H, h = r % H;
        uint8_t *dst = j->img + r * W * C;
        for (int64_t c0 = 0; c0 < C; c0 += 16) {
            const int cb = (int)(C - c0 < 16 ? C - c0 : 16);
            for (int64_t w0 = 0; w0 < W; w0 += NK_I8_WCHUNK) {
                const int64_t wn = W - w0 < NK_I8_WCHUNK ? W - w0 : NK_I8_WCHUNK;
                for (int c = 0; c < cb; c++) {
                    int64_t src = ((n * C + c0 + c) * H + h) * W + w0;
                    uint8_t *row = tile + c * NK_I8_WCHUNK;
                    if (g->a_type == NK_T_F32) {
                        quantize_bytes((const float *)g->a + src, wn, g->a_scale[0], zero, lo, hi,
                                       shift, row);
                    } else {
                        const uint8_t *x = (const uint8_t *)g->a + src;
                        for (int64_t w = 0; w < wn; w++) row[w] = x[w] ^ shift;
                    }
                }
                int64_t w = 0;
                if (cb == 16)
                    for (; w + 16 <= wn; w += 16)
                        transpose16(tile + w, NK_I8_WCHUNK, dst + (w0 + w) * C + c0, C);
                for (; w < wn; w++)
                    for (int c = 0; c < cb; c++)
                        dst[(w0 + w) * C + c0 + c] = tile[c * NK_I8_WCHUNK + w];
            }
        }
    }
}

/* One unit: image n, group g, a chunk of output channel panels, a chunk of pixels. The chunk's
 * patches are gathered into a per-thread buffer (KH*KW runs of C/G bytes per pixel), then the
 * product runs over the group's packed weights and is stored transposed into NCHW. */
static void cv_task(void *ctx, int64_t u0, int64_t u1) {
    const cv_job *j = (const cv_job *)ctx;
    const nk_conv *d = j->d;
    const nk_i8 *g8 = j->g;
    const int64_t G = d->G, Cg = d->C / G, Og = d->O / G, K = j->K, Kp = j->Kp;
    uint8_t *a = (uint8_t *)thread_buffer((size_t)(up(j->PC, ROWPAD) * (Kp + 8)));
    if (!a) return; /* out of memory */
    int32_t *rowsum = (int32_t *)(a + up(j->PC, ROWPAD) * Kp), *za = rowsum + up(j->PC, ROWPAD);
#if defined(NK_AMX)
    if (j->isa == NK_I8_AMX) amx_begin();
#endif
    for (int64_t u = u0; u < u1; u++) {
        int64_t pc = u % j->pchunks, rest = u / j->pchunks;
        int64_t oc = rest % j->ochunks, ng = rest / j->ochunks;
        int64_t g = ng % G, n = ng / G;
        int64_t p0 = pc * j->PC, p1 = p0 + j->PC < j->P ? p0 + j->PC : j->P, pn = p1 - p0;
        int64_t o0 = oc * j->opanels, o1 = o0 + j->opanels < j->panels ? o0 + j->opanels
                                                                       : j->panels;
        if (pn <= 0 || o0 >= o1) continue;
        for (int64_t i = 0; i < up(pn, ROWPAD); i++) {
            uint8_t *row = a + i * Kp;
            if (i >= pn) {
                memset(row, 0, (size_t)Kp);
                rowsum[i] = za[i] = 0;
                continue;
            }
            int64_t p = p0 + i, oy = p / d->OW, ox = p % d->OW, ix0 = ox * d->SW - d->PL;
            for (int64_t ky = 0; ky < d->KH; ky++) {
                int64_t iy = oy * d->SH - d->PT + ky * d->DH;
                uint8_t *dst = row + ky * d->KW * Cg;
                if (iy < 0 || iy >= d->H) {
                    memset(dst, j->pad, (size_t)(d->KW * Cg));
                    continue;
                }
                const uint8_t *line = j->img + (n * d->H + iy) * d->W * d->C + g * Cg;
                if (G == 1 && d->DW == 1) {
                    /* The row's taps are one run of NHWC bytes: copy the part inside. */
                    int64_t k0 = ix0 < 0 ? -ix0 : 0, k1 = d->W - ix0 < d->KW ? d->W - ix0 : d->KW;
                    if (k0 > d->KW) k0 = d->KW; /* padding wider than the kernel */
                    if (k1 < k0) k1 = k0;
                    memset(dst, j->pad, (size_t)(k0 * Cg));
                    if (k1 > k0)
                        memcpy(dst + k0 * Cg, line + (ix0 + k0) * d->C, (size_t)((k1 - k0) * Cg));
                    memset(dst + k1 * Cg, j->pad, (size_t)((d->KW - k1) * Cg));
                    continue;
                }
                for (int64_t kx = 0; kx < d->KW; kx++) {
                    int64_t ix = ix0 + kx * d->DW;
                    if (ix < 0 || ix >= d->W)
                        memset(dst + kx * Cg, j->pad, (size_t)Cg);
                    else
                        memcpy(dst + kx * Cg, line + ix * d->C, (size_t)Cg);
                }
            }
            memset(row + K, 0, (size_t)(Kp - K));
            uint32_t sum = 0;
            for (int64_t k = 0; k < K; k++) sum += row[k];
            rowsum[i] = (int32_t)sum;
            za[i] = j->za;
        }
        const int64_t kqpad = Kp / 4;
        const int8_t *gw = j->bpack + g * j->gbytes;
        block_job b;
        memset(&b, 0, sizeof b);
        b.isa = j->isa;
        b.kq = cdiv(K, 4);
        b.kt = Kp / QK;
        b.lda = Kp;
        b.ldp = kqpad * 64;
        b.a = a;
        b.panels = gw;
        b.f.K = K;
        b.f.rowsum = rowsum;
        b.f.za = za;
        b.f.colsum = (const int32_t *)(gw + j->panels * kqpad * 64);
        b.f.cb = j->cb + g * Og;
        b.f.has_cb = j->has_cb;
        b.f.scale = g8->y_scale;
        b.f.scale_n = g8->y_scale_n;
        if (g8->y_scale && g8->y_scale_n > 1) b.f.scale += g * Og;
        b.y = (char *)g8->y + 4 * ((n * d->O + g * Og) * j->P + p0);
        b.ldy = j->P;
        b.transposed = 1;
        b.rows = pn;
        b.cols = Og;
        run_blocks(&b, 0, pn, o0, o1);
        if (g8->ep && g8->y_scale) {
            int64_t c1 = o1 * QP < Og ? o1 * QP : Og;
            g8->ep(g8->ep_args, 1, n, g * Og + o0 * QP, g * Og + c1, p0, p1);
        }
    }
#if defined(NK_AMX)
    if (j->isa == NK_I8_AMX) amx_end();
#endif
}

/* ---- depthwise ConvInteger (one input channel per group): a direct loop ----------------------- */

/* Its GEMM would have K = KH*KW and one valid column per 16-column panel. Here each output plane
 * accumulates (x - zx) (w - zw) tap by tap in int32 vectors; the weights stay unpacked. */
#define NK_DW_MAX_TAPS 1024 /* kernel taps of the direct loop (larger kernels take the GEMM) */

static int cv_is_direct(const nk_conv *d, const nk_i8 *g) {
    return d->C == d->G && !g->b_packed && d->KH * d->KW <= NK_DW_MAX_TAPS;
}

typedef struct {
    const nk_conv *d;
    const nk_i8 *g;
    int32_t zx;
} dw_job;

/* The plane x[n, c] minus the zero point, as int32 (quantizing a float32 input first). */
static void dw_plane(const nk_i8 *g, int64_t offset, int64_t size, int32_t zx, int32_t *xs) {
    const int vt = a_value_type(g);
    if (g->a_type == NK_T_F32) {
        const int32_t lo = vt == NK_T_S8 ? -128 : 0, hi = vt == NK_T_S8 ? 127 : 255;
        uint8_t q[256];
        for (int64_t i0 = 0; i0 < size; i0 += 256) {
            int64_t n = size - i0 < 256 ? size - i0 : 256;
            quantize_bytes((const float *)g->a + offset + i0, n, g->a_scale[0], zx, lo, hi, 0, q);
            if (vt == NK_T_S8)
                for (int64_t i = 0; i < n; i++) xs[i0 + i] = (int32_t)(int8_t)q[i] - zx;
            else
                for (int64_t i = 0; i < n; i++) xs[i0 + i] = (int32_t)q[i] - zx;
        }
    } else if (vt == NK_T_S8) {
        const int8_t *x = (const int8_t *)g->a + offset;
        for (int64_t i = 0; i < size; i++) xs[i] = (int32_t)x[i] - zx;
    } else {
        const uint8_t *x = (const uint8_t *)g->a + offset;
        for (int64_t i = 0; i < size; i++) xs[i] = (int32_t)x[i] - zx;
    }
}

/* One tap's geometry: input plane phase r (column % SW), column offset in phase units, and
 * the output columns [lo, hi) whose input column lies inside the row (padding adds 0). */
typedef struct {
    int64_t ky, r, base, lo, hi;
} dw_tap;

static void dw_task(void *ctx, int64_t u0, int64_t u1) {
    const dw_job *j = (const dw_job *)ctx;
    const nk_conv *d = j->d;
    const nk_i8 *g = j->g;
    const int64_t H = d->H, W = d->W, OH = d->OH, OW = d->OW, P = OH * OW, G = d->G;
    const int64_t Og = d->O / G, KK = d->KH * d->KW, SW = d->SW, PW = cdiv(W, SW);
    /* The plane minus its zero point, then (stride > 1) split into SW column phases, so every
     * tap reads a contiguous run: phase r holds columns r, r + SW, ... of each row. */
    int32_t *lin = (int32_t *)thread_buffer((size_t)(H * W + (SW > 1 ? SW * H * PW : 0)) * 4);
    if (!lin) return; /* out of memory */
    int32_t *ph = SW > 1 ? lin + H * W : lin;
    const int64_t ld = SW > 1 ? PW : W, plane = H * ld;
    dw_tap taps[NK_DW_MAX_TAPS];
    int32_t wt[NK_DW_MAX_TAPS];
#if defined(__AVX512F__)
    uint16_t mask[NK_DW_MAX_TAPS];
    int64_t offs[NK_DW_MAX_TAPS];
#endif
    for (int64_t t = 0; t < KK; t++) {
        int64_t kx = t % d->KW, xoff = kx * d->DW - d->PL;
        int64_t r = ((xoff % SW) + SW) % SW;
        int64_t lo = xoff >= 0 ? 0 : (-xoff + SW - 1) / SW;
        int64_t hi = W - 1 - xoff >= 0 ? (W - 1 - xoff) / SW + 1 : 0;
        taps[t] = (dw_tap){t / d->KW, r, (xoff - r) / SW, lo, hi < OW ? hi : OW};
    }
    for (int64_t u = u0; u < u1; u++) {
        int64_t n = u / G, c = u % G;
        dw_plane(g, (n * d->C + c) * H * W, H * W, j->zx, lin);
        if (SW > 1)
            for (int64_t r = 0; r < SW; r++)
                for (int64_t y = 0; y < H; y++)
                    for (int64_t x = 0; x < PW; x++)
                        ph[r * plane + y * PW + x] = x * SW + r < W ? lin[y * W + x * SW + r] : 0;
        for (int64_t oc = c * Og; oc < (c + 1) * Og; oc++) {
            int32_t zw = g->b_zero ? zero_at(g->b_zero, g->b_type, g->b_zero_n > 1 ? oc : 0) : 0;
            for (int64_t t = 0; t < KK; t++) wt[t] = zero_at(g->b, g->b_type, oc * KK + t) - zw;
            const float s = g->y_scale ? g->y_scale[g->y_scale_n > 1 ? oc : 0] : 0.0f;
            float *yf = (float *)g->y + (n * d->O + oc) * P;
            int32_t *yi = (int32_t *)g->y + (n * d->O + oc) * P;
#if defined(__AVX512F__)
            /* Per block of 16 output columns: each tap's lane mask (fixed down the plane), then
             * row by row one register accumulates every tap, and one store finishes it. */
            for (int64_t ox0 = 0; ox0 < OW; ox0 += 16) {
                for (int64_t t = 0; t < KK; t++) {
                    int64_t a = taps[t].lo > ox0 ? taps[t].lo - ox0 : 0;
                    int64_t b = taps[t].hi - ox0 < 16 ? taps[t].hi - ox0 : 16;
                    mask[t] = wt[t] == 0 || b <= a ? 0
                                                   : (uint16_t)(((1u << b) - 1u) & ~((1u << a) - 1u));
                    offs[t] = taps[t].r * plane + ox0 + taps[t].base;
                }
                int64_t left = OW - ox0;
                __mmask16 out = (__mmask16)nk_tail_mask(left);
                for (int64_t oy = 0; oy < OH; oy++) {
                    __m512i acc = _mm512_setzero_si512();
                    for (int64_t ky = 0, t = 0; ky < d->KH; ky++, t += d->KW) {
                        int64_t iy = oy * d->SH - d->PT + ky * d->DH;
                        if (iy < 0 || iy >= H) continue;
                        const int32_t *row = ph + iy * ld;
                        for (int64_t kx = 0; kx < d->KW; kx++) {
                            if (!mask[t + kx]) continue;
                            __m512i v = _mm512_maskz_loadu_epi32(mask[t + kx], row + offs[t + kx]);
                            acc = _mm512_add_epi32(
                                acc, _mm512_mullo_epi32(v, _mm512_set1_epi32(wt[t + kx])));
                        }
                    }
                    if (g->y_scale)
                        _mm512_mask_storeu_ps(yf + oy * OW + ox0, out,
                                              _mm512_mul_ps(_mm512_cvtepi32_ps(acc),
                                                            _mm512_set1_ps(s)));
                    else
                        _mm512_mask_storeu_epi32(yi + oy * OW + ox0, out, acc);
                }
            }
#else
            for (int64_t oy = 0; oy < OH; oy++) {
                for (int64_t ox = 0; ox < OW; ox++) {
                    int32_t acc = 0;
                    for (int64_t t = 0; t < KK; t++) {
                        const dw_tap *tp = &taps[t];
                        int64_t iy = oy * d->SH - d->PT + tp->ky * d->DH;
                        if (iy < 0 || iy >= H || ox < tp->lo || ox >= tp->hi) continue;
                        acc += ph[tp->r * plane + iy * ld + ox + tp->base] * wt[t];
                    }
                    if (g->y_scale)
                        yf[oy * OW + ox] = (float)acc * s;
                    else
                        yi[oy * OW + ox] = acc;
                }
            }
#endif
        }
        if (g->ep && g->y_scale) g->ep(g->ep_args, 1, n, c * Og, (c + 1) * Og, 0, P);
    }
}

/* Lay the workspace out from `work` (NULL: only measure it); returns its size in bytes (0 for
 * the direct depthwise loop). */
static int64_t cv_layout(const nk_conv *d, const nk_i8 *g, char *work, cv_job *j, int32_t **cb,
                         int8_t **bpack) {
    const int64_t G = d->G, Og = d->O / G;
    j->d = d;
    j->g = g;
    j->K = d->KH * d->KW * (d->C / G);
    j->Kp = up(j->K, QK);
    j->P = d->OH * d->OW;
    if (cv_is_direct(d, g)) return 0;
    char *base = work ? work + (64 - (uintptr_t)work % 64) % 64 : NULL;
    int64_t shifts = up(d->N * d->H * d->W * d->C, 64), packed = shifts + up(4 * up(d->O, QP), 64);
    if (base) {
        j->img = (uint8_t *)base;
        *cb = (int32_t *)(base + shifts);
        *bpack = (int8_t *)(base + packed);
    }
    return 64 + packed + (g->b_packed ? 0 : nk_quad_bytes(G, j->K, Og));
}

int64_t nk_conv2d_i8_workspace(const nk_conv *d, const nk_i8 *g) {
    cv_job j;
    return cv_layout(d, g, NULL, &j, NULL, NULL);
}

void nk_conv2d_i8(int nt, const nk_conv *d, const nk_i8 *g) {
    const int64_t G = d->G, Og = d->O / G, P = d->OH * d->OW;
    if (P <= 0 || Og <= 0 || d->N <= 0) return;
    if (cv_is_direct(d, g)) {
        dw_job dj = {d, g, a_zero_of(g, 0)};
        double ops = 2.0 * (double)d->O * (double)P * (double)(d->KH * d->KW) * (double)d->N;
        nk_parallel_for(nt < 1 || ops < 262144.0 ? 1 : nt, d->N * G, 1, dw_task, &dj);
        return;
    }
    cv_job j;
    memset(&j, 0, sizeof j);
    int32_t *cb = NULL;
    int8_t *bwork = NULL;
    cv_layout(d, g, (char *)g->work, &j, &cb, &bwork);
    j.isa = nk_int8_isa(g->isa);
    j.za = a_zero_of(g, 0) + a_shift(g);
    j.pad = (uint8_t)j.za; /* a padded position holds the zero point: it adds nothing */
    if (nt < 1 || 2.0 * (double)d->O * (double)P * (double)j.K * (double)d->N < 262144.0) nt = 1;
    j.bpack = (const int8_t *)g->b;
    if (!g->b_packed) {
        pack_b(nt, g->b, g->b_type, G, j.K, Og, d->KH * d->KW, bwork);
        j.bpack = bwork;
    }
    j.has_cb = column_shifts(g, d->O, up(d->O, QP), cb);
    j.cb = cb;
    j.gbytes = quad_group_bytes(j.K, Og);
    j.panels = cdiv(Og, QP);
    nk_parallel_for(nt, d->N * d->H, 1, cv_image_task, &j);

    /* Pixel chunks: a multiple of 32 rows whose patches (PC x Kp bytes) stay in L2. */
    int64_t pc = 196608 / j.Kp / ROWPAD * ROWPAD;
    j.PC = pc < ROWPAD ? ROWPAD : (pc > 256 ? 256 : pc);
    j.pchunks = cdiv(P, j.PC);
    int64_t units = d->N * G * j.pchunks, want = 4 * (int64_t)nt;
    j.ochunks = 1;
    if (nt > 1 && units < want) {
        int64_t split = cdiv(want, units);
        j.ochunks = split < j.panels ? split : j.panels;
    }
    j.opanels = cdiv(j.panels, j.ochunks);
    j.ochunks = cdiv(j.panels, j.opanels);
    nk_parallel_for(nt, units * j.ochunks, 1, cv_task, &j);
}

/* ---- QuantizeLinear / DequantizeLinear ---------------------------------------------------------- */

typedef struct {
    int64_t axis, inner, total;
    const void *x;
    int x_type, y_type;
    const float *scale;
    int64_t scale_n;
    const void *zero;
    void *y;
} qdq_job;

#define NK_QDQ_GRAIN 16384

/* Elements [c0 * GRAIN, c1 * GRAIN) in runs that share one scale and zero point. */
static void quantize_task(void *ctx, int64_t c0, int64_t c1) {
    const qdq_job *j = (const qdq_job *)ctx;
    const int32_t lo = j->y_type == NK_T_S8 ? -128 : 0, hi = j->y_type == NK_T_S8 ? 127 : 255;
    int64_t i = c0 * NK_QDQ_GRAIN, end = c1 * NK_QDQ_GRAIN < j->total ? c1 * NK_QDQ_GRAIN
                                                                      : j->total;
    const float *x = (const float *)j->x;
    while (i < end) {
        int64_t row = i / j->inner, stop = (row + 1) * j->inner < end ? (row + 1) * j->inner
                                                                      : end;
        int64_t c = j->scale_n > 1 ? row % j->axis : 0;
        float s = j->scale[c];
        int32_t z = j->zero ? zero_at(j->zero, j->y_type, c) : 0;
        /* int8 and uint8 results are the same low bytes of the int32 value. */
        quantize_bytes(x + i, stop - i, s, z, lo, hi, 0, (uint8_t *)j->y + i);
        i = stop;
    }
}

void nk_quantize(int nt, int64_t outer, int64_t axis, int64_t inner, const float *x,
                 const float *scale, int64_t scale_n, const void *zero, int y_type, void *y) {
    qdq_job j = {axis, inner, outer * axis * inner, x, NK_T_F32, y_type, scale, scale_n, zero, y};
    if (j.total <= 0 || inner <= 0) return;
    nk_parallel_for(nt, cdiv(j.total, NK_QDQ_GRAIN), 1, quantize_task, &j);
}

static void dequantize_task(void *ctx, int64_t c0, int64_t c1) {
    const qdq_job *j = (const qdq_job *)ctx;
    int64_t i = c0 * NK_QDQ_GRAIN, end = c1 * NK_QDQ_GRAIN < j->total ? c1 * NK_QDQ_GRAIN
                                                                      : j->total;
    float *y = (float *)j->y;
    while (i < end) {
        int64_t row = i / j->inner, stop = (row + 1) * j->inner < end ? (row + 1) * j->inner
                                                                      : end;
        int64_t c = j->scale_n > 1 ? row % j->axis : 0;
        float s = j->scale[c];
        int64_t z = j->zero ? zero_at(j->zero, j->x_type, c) : 0;
        /* The difference is exact in int64; one rounding to float32, one by the multiply. */
        if (j->x_type == NK_T_U8) {
            const uint8_t *x = (const uint8_t *)j->x;
            for (int64_t k = i; k < stop; k++) y[k] = (float)((int32_t)x[k] - (int32_t)z) * s;
        } else if (j->x_type == NK_T_S8) {
            const int8_t *x = (const int8_t *)j->x;
            for (int64_t k = i; k < stop; k++) y[k] = (float)((int32_t)x[k] - (int32_t)z) * s;
        } else {
            const int32_t *x = (const int32_t *)j->x;
            for (int64_t k = i; k < stop; k++) y[k] = (float)((int64_t)x[k] - z) * s;
        }
        i = stop;
    }
}

void nk_dequantize(int nt, int64_t outer, int64_t axis, int64_t inner, const void *x,
                   int x_type, const float *scale, int64_t scale_n, const void *zero, float *y) {
    qdq_job j = {axis, inner, outer * axis * inner, x, x_type, NK_T_F32, scale, scale_n, zero, y};
    if (j.total <= 0 || inner <= 0) return;
    nk_parallel_for(nt, cdiv(j.total, NK_QDQ_GRAIN), 1, dequantize_task, &j);
}
