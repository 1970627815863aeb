/* nerve native kernels: the runtime library every generated segment links against.
 *
 * Generated segment code is small: it computes buffer addresses, runs fused elementwise loops
 * it emits itself, and calls the kernels declared here with compile-time constant shapes.
 * The kernels are compiled once per toolchain into libnervek.so and cached.
 *
 * Conventions: all tensors are dense and row-major (C order); sizes are int64_t; `nt` is the
 * number of threads the caller wants (the program's own count); kernels parallelise with
 * nk_parallel_for, and BLAS always runs single-threaded inside them (see nk_init).
 */
#ifndef NK_H
#define NK_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* An epilogue runs after a GEMM-like kernel produced rows [m0, m1) x columns [n0, n1) of
 * output matrix `b` (an image of a convolution, a batch entry of a MatMul). The output element
 * (b, m, n) lives at flat index (b * M + m) * N + n. `args` carries the pointers the epilogue
 * reads (its side inputs and the output), so one epilogue body serves many call sites. */
typedef void (*nk_epilogue)(const void *const *args, int nt, int64_t b, int64_t m0, int64_t m1,
                            int64_t n0, int64_t n1);

/* An activation a convolution applies as it stores its output, in registers, instead of an
 * epilogue pass: y = min(max(y, lo), hi), NaN kept (Relu: lo 0, hi +inf; Clip: its bounds). */
typedef struct nk_clamp {
    float lo, hi;
} nk_clamp;

/* y clamped to [clamp->lo, clamp->hi] with NaN kept (as the epilogue's Relu and Clip do), or
 * y itself when clamp is NULL. */
static inline float nk_clampf(float y, const nk_clamp *clamp) {
    if (!clamp || y != y) return y;
    return y < clamp->lo ? clamp->lo : (y > clamp->hi ? clamp->hi : y);
}

/* Parallel loop over [0, n) in chunks of `grain` on up to `nt` threads (the caller included).
 * fn(ctx, begin, end) runs on each chunk; the call returns when all chunks are done, without
 * waiting for a pool thread that never got to run (see nk_threads.c). Nested calls run
 * inline. */
typedef void (*nk_range_fn)(void *ctx, int64_t begin, int64_t end);
void nk_parallel_for(int nt, int64_t n, int64_t grain, nk_range_fn fn, void *ctx);

/* The lanes of a 16-wide vector that hold the first `left` of what remains (0 to 16 lanes):
 * the mask of every masked tail load and store. */
static inline uint16_t nk_tail_mask(int64_t left) {
    return left >= 16 ? (uint16_t)0xFFFFu : (left <= 0 ? (uint16_t)0 : (uint16_t)((1u << left) - 1u));
}

#if defined(__AVX512F__)
#include <immintrin.h>

/* r[j] <- column j of the 16x16 matrix whose rows are r[0..15]. */
static inline void nk_transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    /* u[4g + e]: in 128-bit lane L, column 4L + e of rows 4g .. 4g + 3. */
    for (int g = 0; g < 4; g++) {
        __m512d lo0 = _mm512_castps_pd(t[4 * g]), lo1 = _mm512_castps_pd(t[4 * g + 2]);
        __m512d hi0 = _mm512_castps_pd(t[4 * g + 1]), hi1 = _mm512_castps_pd(t[4 * g + 3]);
        u[4 * g + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo0, lo1));
        u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo0, lo1));
        u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(hi0, hi1));
        u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(hi0, hi1));
    }
    /* A 4x4 transpose of 128-bit lanes for each e: column 4L + e gathers lane L of u[4g + e]. */
    for (int e = 0; e < 4; e++) {
        __m512 a = _mm512_shuffle_f32x4(u[e], u[4 + e], 0x44);
        __m512 b = _mm512_shuffle_f32x4(u[e], u[4 + e], 0xEE);
        __m512 c = _mm512_shuffle_f32x4(u[8 + e], u[12 + e], 0x44);
        __m512 d = _mm512_shuffle_f32x4(u[8 + e], u[12 + e], 0xEE);
        r[e] = _mm512_shuffle_f32x4(a, c, 0x88);
        r[4 + e] = _mm512_shuffle_f32x4(a, c, 0xDD);
        r[8 + e] = _mm512_shuffle_f32x4(b, d, 0x88);
        r[12 + e] = _mm512_shuffle_f32x4(b, d, 0xDD);
    }
}
#endif

/* Columns [*lo, *hi) of a stride-phase plane row (PWh columns, stride SW, input column
 * c * SW + b0) that read inside an input row of W columns; the rest are padding. */
static inline void nk_phase_columns(int64_t b0, int64_t SW, int64_t W, int64_t PWh, int64_t *lo,
                                    int64_t *hi) {
    int64_t l = b0 >= 0 ? 0 : (-b0 + SW - 1) / SW;
    int64_t r = b0 < W ? (W - 1 - b0) / SW + 1 : 0;
    if (r > PWh) r = PWh;
    if (l > r) l = r;
    *lo = l;
    *hi = r;
}

/* Per-thread scratch buffers, 64-byte aligned, kept and grown across calls (the pool's threads
 * persist, so each is allocated once per thread). One slot per use, so a kernel never hands
 * out memory another kernel on the same thread still holds. NULL when out of memory. */
enum {
    NK_BUF_TILE,        /* fp32 packed kernels: a unit's own block */
    NK_BUF_SHARED,      /* fp32 packed kernels: what a call shares with its workers */
    NK_BUF_BF16_ROWS,   /* bf16: a unit's packed activations */
    NK_BUF_BF16_SHARED, /* bf16: what a call shares with its workers */
    NK_BUF_BF16_STAGE,  /* bf16: output staging */
    NK_BUF_INT8,        /* int8 kernels */
    NK_BUF_DEPTHWISE,   /* channel-blocked depthwise: a unit's tile and outputs */
    NK_BUF_SLOTS
};
void *nk_thread_buffer(int slot, size_t bytes);

/* Set BLAS to one thread (we parallelise ourselves; two thread pools oversubscribe). */
void nk_init(void);
/* 1 when the library was built against OpenBLAS, 0 when it uses its own reference GEMM. */
int nk_has_blas(void);

/* ---- GEMM ------------------------------------------------------------------------------- */

/* Y[b] (M x N) = alpha * op(A[b]) op(B[b]) for b in [0, batch), then ep on every block.
 * op(A) is M x K (A stored K x M when ta), op(B) is K x N (B stored N x K when tb).
 * aoff/boff give each batch entry's element offset into A/B (NULL: 0 for every entry);
 * Y entries are consecutive (stride M * N). */
void nk_matmul(int nt, int64_t batch, const int64_t *aoff, const int64_t *boff, int ta, int tb,
               int64_t M, int64_t N, int64_t K, float alpha, const float *A, const float *B,
               float *Y, nk_epilogue ep, const void *const *ep_args);

/* Single-threaded strided GEMM (gemv for one row or column): C = alpha * op(A) op(B),
 * C is m x n with row stride ldc. Used by the other kernels for their per-thread blocks. */
void nk_sgemm_st(int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                 int64_t lda, const float *b, int64_t ldb, float *c, int64_t ldc);

/* ---- convolution (NCHW; 1-D convolutions use H = KH = 1) -------------------------------- */

typedef struct nk_conv {
    int64_t N, C, H, W;       /* input */
    int64_t O, OH, OW;        /* output channels and spatial size */
    int64_t KH, KW, SH, SW;   /* kernel and strides */
    int64_t PT, PL;           /* top/left padding (bottom/right follow from OH/OW) */
    int64_t DH, DW, G;        /* dilations, groups */
} nk_conv;

/* Floats of workspace nk_conv2d needs (0 for 1x1/stride-1/unpadded and depthwise convs). */
int64_t nk_conv2d_workspace(const nk_conv *d);
/* y = conv(x, w) + bias (bias may be NULL); ep (may be NULL) runs on each finished block with
 * b = image, m = output channel, n = output pixel. */
void nk_conv2d(int nt, const nk_conv *d, const float *x, const float *w, const float *bias,
               float *y, float *work, nk_epilogue ep, const void *const *ep_args,
               const nk_clamp *clamp);

/* Depthwise convolution (G == C == O) over blocks of 16 channels (nk_depthwise.c); returns 0,
 * having done nothing, where it does not apply (other shapes, no AVX-512). */
int nk_depthwise_blocked(int nt, const nk_conv *d, const float *x, const float *w,
                         const float *bias, float *y, nk_epilogue ep, const void *const *ep_args,
                         const nk_clamp *clamp);

/* Copy an H x W plane into a PH x PW buffer at offset (pt, pl), `fill` everywhere else. */
void nk_pad_plane(const float *x, int64_t H, int64_t W, int64_t pt, int64_t pl, int64_t PH,
                  int64_t PW, float fill, float *buf);

/* ---- packed-panel GEMM (nk_packed.c) ------------------------------------------------------ */

/* Register tile of the micro-kernel: NK_MR rows (broadcast from A panels) x NK_NR columns
 * (vectors of B tiles). The engine's weight packing (packing.py) uses the same numbers. */
#define NK_MR 8
#define NK_NR 48

/* 512 when the kernels use AVX-512, 0 for the portable loop. */
int nk_packed_isa(void);
/* Floats of a convolution's packed weights: per group, ceil(O/G / NK_MR) panels [K][NK_MR]
 * with K = C/G * KH * KW (the last panel zero-padded). */
int64_t nk_conv_packed_floats(const nk_conv *d);
/* nk_conv2d over packed weights (any group count). No im2col: B rows are read in place from
 * the input, or from per-channel stride-phase planes of its padded copy. */
void nk_conv2d_packed(int nt, const nk_conv *d, const float *x, const float *wpack,
                      const float *bias, float *y, nk_epilogue ep, const void *const *ep_args,
                      const nk_clamp *clamp);
/* The same convolution (G = 1) with output channels in the vector lanes, for small maps:
 * weights packed as [ceil(O / NK_CV_NB)][K][NK_CV_NB] (zero-padded channels), tiles of
 * NK_CV_MT pixels of one output row x NK_CV_NB channels. */
#define NK_CV_NB 64
#define NK_CV_MT 7
int64_t nk_conv_cvec_floats(const nk_conv *d);
void nk_conv2d_cvec(int nt, const nk_conv *d, const float *x, const float *wcv,
                    const float *bias, float *y, nk_epilogue ep, const void *const *ep_args,
                    const nk_clamp *clamp);
/* Weight packers (the layouts above), writing only valid entries: used to re-pack in place. */
void nk_pack_matmul(int nt, int64_t K, int64_t N, const float *b, float *out);
void nk_pack_conv(int nt, int64_t G, int64_t Og, int64_t K, const float *w, float *out);
void nk_pack_conv_cvec(int nt, int64_t O, int64_t K, const float *w, float *out);

/* Y (M x N) = A (M x K, row-major) . B for a constant B packed once as [ceil(N / NK_NR)][K][NK_NR]
 * column tiles (zero-padded); ep runs on each finished block (b = 0, m = row, n = column). */
void nk_matmul_packed(int nt, int64_t M, int64_t N, int64_t K, const float *A, const float *B,
                      float *Y, nk_epilogue ep, const void *const *ep_args);

/* ---- bfloat16 operands, float32 accumulation (nk_bf16.c) ------------------------------------ */

/* Packed bf16 weights (packing_bf16.py): a product's B as [ceil(N / NK_BF16_NR)][KP / 2]
 * [NK_BF16_NR][2] bf16 with K zero-padded to KP, a multiple of NK_BF16_KALIGN (the VNNI pair
 * layout of AMX's B tiles); a convolution's W as per-group [panels][CP * KH * KW][NK_MR][2]
 * (CP = ceil(C/G / 2) channel pairs, K pairs ordered (pair, ky, kx)). */
#define NK_BF16_NR 32
#define NK_BF16_KALIGN 32
enum { NK_BF16_HAVE_AVX512F = 1, NK_BF16_HAVE_AVX512BF16 = 2, NK_BF16_HAVE_AMX = 4 };

/* NK_BF16_HAVE_* bits this process can execute (AMX: the tile permission was granted, which
 * the library asks for once, when it is loaded). */
int nk_bf16_support(void);
/* Use only the detected features in `mask` (-1: all); for tests of the fallback paths. */
int nk_bf16_limit(int mask);
int64_t nk_bf16_kpad(int64_t K);
int64_t nk_conv_bf16_packed_elems(const nk_conv *d);
/* Y (M x N) = bf16(A) (M x K, row-major float32, rounded here) . B (packed bf16), float32
 * accumulation; ep runs on each finished block (b = 0, m = row, n = column). */
void nk_matmul_bf16_avx512(int nt, int64_t M, int64_t N, int64_t K, const float *A,
                           const uint16_t *B, float *Y, nk_epilogue ep,
                           const void *const *ep_args);
void nk_matmul_bf16_amx(int nt, int64_t M, int64_t N, int64_t K, const float *A,
                        const uint16_t *B, float *Y, nk_epilogue ep, const void *const *ep_args);
/* Run one AMX instruction on every pool thread (the first one per thread is slow). */
void nk_bf16_amx_warm(int nt);
/* nk_conv2d_packed with bf16 operands: wpack packed as above, x rounded while it is split into
 * channel-pair planes. */
void nk_conv2d_bf16_avx512(int nt, const nk_conv *d, const float *x, const uint16_t *wpack,
                           const float *bias, float *y, nk_epilogue ep,
                           const void *const *ep_args);
/* The same with output channels in the vector lanes, for small maps (groups must be 1):
 * wpack as a product's B, [ceil(O / 32)][KP / 2][32][2] with K = 2 * CP * KH * KW ordered
 * (pair, ky, kx, channel in pair). */
int64_t nk_conv_bf16_cvec_elems(const nk_conv *d);
void nk_conv2d_bf16_cvec(int nt, const nk_conv *d, const float *x, const uint16_t *wpack,
                         const float *bias, float *y, nk_epilogue ep, const void *const *ep_args);
/* y = x rounded to bf16 (as float32): the operands of the fp32 fallback. */
void nk_bf16_round(int nt, int64_t n, const float *x, float *y);

/* ---- pooling (NCHW; NC = N * C planes) ---------------------------------------------------- */

enum { NK_POOL_MAX = 0, NK_POOL_AVG_EXCLUDE_PAD = 1, NK_POOL_AVG_INCLUDE_PAD = 2 };

typedef struct nk_pool {
    int64_t NC, H, W, OH, OW, KH, KW, SH, SW, PT, PL, PB, PR, DH, DW;
} nk_pool;

void nk_pool2d(int nt, int kind, const nk_pool *d, const float *x, float *y);

/* ---- normalisation ------------------------------------------------------------------------ */

/* Softmax (or log-softmax) over the middle axis of x viewed as [outer, n, inner]. */
void nk_softmax(int nt, int log, int64_t outer, int64_t n, int64_t inner, const float *x,
                float *y);
/* Per row of x viewed as [rows, n]: y = (x - mean) * rsqrt(var + eps) * scale + bias.
 * rms != 0: y = x * rsqrt(mean(x^2) + eps) * scale + bias (no centring).
 * bias, mean_out and inv_out may be NULL; scale may be NULL (1). */
void nk_layernorm(int nt, int rms, int64_t rows, int64_t n, float eps, const float *x,
                  const float *scale, const float *bias, float *y, float *mean_out,
                  float *inv_out);

/* ---- reductions --------------------------------------------------------------------------- */

enum {
    NK_RED_SUM = 0, NK_RED_MEAN, NK_RED_MAX, NK_RED_MIN, NK_RED_PROD, NK_RED_SUMSQ, NK_RED_L1,
    NK_RED_L2, NK_RED_LOGSUM, NK_RED_LOGSUMEXP
};

/* y[o, i] = reduce_k x[o, k, i] for x viewed as [outer, r, inner]. */
void nk_reduce(int nt, int kind, int64_t outer, int64_t r, int64_t inner, const float *x,
               float *y);

/* ---- data movement ------------------------------------------------------------------------ */

/* Copy an ndim-dimensional box: dst[i] = src[i] with per-dimension strides in elements
 * (src strides may be 0 to broadcast, or negative). elem is the element size in bytes. */
void nk_copy(int nt, int ndim, const int64_t *shape, const int64_t *dst_strides,
             const int64_t *src_strides, int64_t elem, char *dst, const char *src);

/* out[o, j, :] = data[o, idx[j], :] for data viewed as [outer, axis_len, inner_bytes].
 * Negative indices count from the end. Returns 0, or 1 + the position of the first index
 * that is out of range (nothing is written past the bad index). */
int64_t nk_gather(int nt, int64_t outer, int64_t axis_len, int64_t inner_bytes, int64_t nidx,
                  const void *idx, int idx_is_64, const char *data, char *out);

/* ---- int8 products (nk_int8.c) ------------------------------------------------------------ */

/* Variants of the u8 x s8 -> int32 product, best last. A call runs the best variant this
 * machine has that does not exceed the one asked for (the lowering asks by the target's
 * features); every variant computes the same int32 values. */
enum { NK_I8_PORTABLE = 0, NK_I8_VNNI = 1, NK_I8_AMX = 2 };
/* Element types of the int8 kernels' tensors. */
enum { NK_T_U8 = 0, NK_T_S8 = 1, NK_T_F32 = 2, NK_T_I32 = 3 };

/* The variant an int8 kernel runs when `requested` is asked for on this machine. */
int nk_int8_isa(int requested);

/* Quad-packed signed right operand (the AMX B-tile layout), per group: ceil(N/16) panels of
 * [KQ][16][4] bytes, KQ = ceil(K/64)*16 quads (byte (q, j, i) of panel p holds row k = 4q + i of
 * column 16p + j; zero-padded), then int32 column sums [ceil(N/16)*16]. uint8 sources are
 * stored minus 128. A convolution's weights [O, C/G, KH, KW] pack per group as N = O/G columns
 * with k ordered (ky, kx, c): the order of the kernel's NHWC patches. */
int64_t nk_quad_bytes(int64_t G, int64_t K, int64_t N);

/* One int8 product: y = (A - a_zero) (B - b_zero) in int32, or, with y_scale, float32
 * y = float(that) * y_scale (DequantizeLinear fused); then ep on each finished block. */
typedef struct nk_i8 {
    int isa;                      /* NK_I8_*: the variant asked for */
    int64_t M, N, K;              /* matmul: rows (batches folded), columns, depth */
    int64_t a_rows;               /* rows of one A matrix (a per-row zero point repeats) */
    const void *a;                /* A: M x K row-major (conv: the NCHW input) */
    int a_type;                   /* NK_T_U8 / NK_T_S8, or NK_T_F32: quantized on the fly */
    const float *a_scale;         /* NK_T_F32: the QuantizeLinear scale (one value) */
    int a_qtype;                  /* NK_T_F32: the type x quantizes to (NK_T_U8 / NK_T_S8) */
    const void *a_zero;           /* NULL, or 1 or a_rows values of A's (quantized) type */
    int64_t a_zero_n;
    const void *b;                /* B: K x N row-major (conv: [O, C/G, KH, KW]), or packed */
    int b_type;                   /* NK_T_U8 / NK_T_S8 */
    int b_packed;                 /* 1: b is nk_quad layout (a weight packed at bind time) */
    const void *b_zero;           /* NULL, or 1 or N (conv: O) values of b_type */
    int64_t b_zero_n;
    void *y;                      /* int32, or float32 when y_scale */
    const float *y_scale;         /* NULL, or 1 or N (conv: O) float32 values */
    int64_t y_scale_n;
    nk_epilogue ep;               /* float32 output only; may be NULL */
    const void *const *ep_args;
    void *work;                   /* workspace, see nerve/engines/native/lower_int8.py */
} nk_i8;

/* Y (M x N) = A . B (MatMulInteger); blocks: b = 0, m = row, n = column. */
void nk_matmul_i8(int nt, const nk_i8 *g);
/* ConvInteger (NCHW; 1-D as H = KH = 1); blocks: b = image, m = channel, n = pixel. */
void nk_conv2d_i8(int nt, const nk_conv *d, const nk_i8 *g);
/* Bytes of g->work the two products need. */
int64_t nk_matmul_i8_workspace(const nk_i8 *g);
int64_t nk_conv2d_i8_workspace(const nk_conv *d, const nk_i8 *g);
/* y = saturate(round_half_even(x / scale) + zero) for x viewed as [outer, axis, inner];
 * scale and zero hold 1 or `axis` values (zero may be NULL: 0); y_type NK_T_U8 or NK_T_S8. */
void nk_quantize(int nt, int64_t outer, int64_t axis, int64_t inner, const float *x,
                 const float *scale, int64_t scale_n, const void *zero, int y_type, void *y);
/* y = float(x - zero) * scale, x of x_type (NK_T_U8 / S8 / I32), zero of the same type. */
void nk_dequantize(int nt, int64_t outer, int64_t axis, int64_t inner, const void *x,
                   int x_type, const float *scale, int64_t scale_n, const void *zero, float *y);

/* ---- AMX ----------------------------------------------------------------------------------- */

/* 1 when this process may use the AMX tile registers: the CPU has AMX-TILE and Linux granted
 * the XTILEDATA permission (arch_prctl ARCH_REQ_XCOMP_PERM), asked once per process, when the
 * kernel library loads; 0 otherwise. Tile kernels check it and fall back to their AVX-512
 * variant. Thread-safe; after the first call one atomic load. */
int nk_amx_request(void);

#ifdef __cplusplus
}
#endif
#endif /* NK_H */
