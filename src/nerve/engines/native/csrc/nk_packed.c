/* Packed-panel GEMM: an AVX-512 register-tile micro-kernel over panels packed for it.
 *
 * Why our own: a convolution's GEMM is many small products against the same weights, and
 * OpenBLAS re-packs both operands on every call (for a 64-channel 3x3 conv tile, packing the
 * weights costs as much as the product). Here the weights are packed once, when the engine
 * binds them (see nerve/engines/native/packing.py), and the input is not packed at all: the
 * convolution micro-kernel reads each B row in place from the input (or from a phase-split,
 * padded copy of it) through a per-tap offset table, so there is no im2col.
 *
 * Layouts (MR = NK_MR rows, NR = NK_NR columns):
 * - A panels (a convolution's weights): rows [i*MR, i*MR + MR) of an M x K matrix stored
 *   k-major, [K][MR]; the last panel is zero-padded to MR rows. A product's A (activations)
 *   is read in place from its rows instead (ukernel_rows).
 * - B tiles: columns [j*NR, j*NR + NR) of a K x N matrix stored [K][NR], zero-padded (a
 *   product's weights), or rows read in place at b + offs[k] (the convolution's input).
 * The micro-kernel computes one MR x NR block: C (+)= A_panel . B_tile over a K block, keeping
 * MR x NR/16 accumulators in zmm registers (8 x 3 = 24 of the 32), broadcasting A and loading
 * B. It stores only the valid rows and columns (masked stores), so the padding never leaks.
 *
 * Without AVX-512 the same layouts run through a portable loop the compiler vectorises.
 */
#include <stdlib.h>

#include "nk.h"

#if defined(__AVX512F__)
#include <immintrin.h>

/* Pieces every tile kernel shares; they use the kernel's own names (acc, mask, bias, mr, nr,
 * c, ldc, accumulate). INIT seeds the accumulators with the bias, MASKS selects the nr valid
 * columns of each vector, STORE writes (or adds) the mr valid rows through those masks. */
#define NK_TILE_INIT(NV)                                                                          \
    do {                                                                                          \
        _Pragma("GCC unroll 8") for (int i = 0; i < NK_MR; i++) {                                 \
            __m512 init = _mm512_set1_ps(bias && i < mr ? bias[i] : 0.0f);                        \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) acc[i][v] = init;                \
        }                                                                                         \
    } while (0)

#define NK_TILE_MASKS(NV)                                                                         \
    __mmask16 mask[NV];                                                                           \
    do {                                                                                          \
        _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) {                                    \
            int left = nr - 16 * v;                                                               \
            mask[v] = (__mmask16)nk_tail_mask(left);                                              \
        }                                                                                         \
    } while (0)

#define NK_TILE_STORE(NV)                                                                         \
    do {                                                                                          \
        _Pragma("GCC unroll 8") for (int i = 0; i < NK_MR; i++) {                                 \
            if (i >= mr) break;                                                                   \
            float *row = c + i * ldc;                                                             \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) {                                \
                __m512 r = acc[i][v];                                                             \
                if (accumulate)                                                                   \
                    r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(mask[v], row + 16 * v));           \
                if (clamp) /* max(lo, r), min(hi, r): r when r is NaN */                          \
                    r = _mm512_min_ps(_mm512_set1_ps(clamp->hi),                                  \
                                      _mm512_max_ps(_mm512_set1_ps(clamp->lo), r));               \
                _mm512_mask_storeu_ps(row + 16 * v, mask[v], r);                                  \
            }                                                                                     \
        }                                                                                         \
    } while (0)


/* The same tile with A read in place from mr rows of a row-major matrix (row stride lda): a
 * product's A is used once per column tile, so packing it (a transposing copy per K block and
 * column chunk) cost as much as 10% of the product. Rows past mr repeat the last row (their
 * results are never stored), so nothing past the matrix is read. */
#define NK_UKERNEL_ROWS(NV)                                                                       \
    static void ukrows_##NV(int64_t kc, const float *a, int64_t lda, const float *b, float *c,  \
                            int64_t ldc, int mr, int nr, int accumulate) {                        \
        const float *const bias = NULL;                                                           \
        const nk_clamp *const clamp = NULL;                                                       \
        const float *ar[NK_MR];                                                                   \
        for (int i = 0; i < NK_MR; i++) ar[i] = a + (i < mr ? i : mr - 1) * lda;                  \
        __m512 acc[NK_MR][NV];                                                                    \
        NK_TILE_INIT(NV);                                                                         \
        for (int64_t k = 0; k < kc; k++) {                                                        \
            __m512 bv[NV];                                                                        \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                                  \
                bv[v] = _mm512_loadu_ps(b + k * NK_NR + 16 * v);                                  \
            _Pragma("GCC unroll 8") for (int i = 0; i < NK_MR; i++) {                             \
                __m512 av = _mm512_set1_ps(ar[i][k]);                                             \
                _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                              \
                    acc[i][v] = _mm512_fmadd_ps(av, bv[v], acc[i][v]);                            \
            }                                                                                     \
        }                                                                                         \
        NK_TILE_MASKS(NV);                                                                        \
        NK_TILE_STORE(NV);                                                                        \
    }

NK_UKERNEL_ROWS(1)
NK_UKERNEL_ROWS(2)
NK_UKERNEL_ROWS(3)

static void ukernel_rows(int64_t kc, const float *a, int64_t lda, const float *b, float *c,
                         int64_t ldc, int mr, int nr, int accumulate) {
    int nv = (nr + 15) / 16;
    if (nv >= 3)
        ukrows_3(kc, a, lda, b, c, ldc, mr, nr, accumulate);
    else if (nv == 2)
        ukrows_2(kc, a, lda, b, c, ldc, mr, nr, accumulate);
    else
        ukrows_1(kc, a, lda, b, c, ldc, mr, nr, accumulate);
}

/* The same tile with B read in place: row k of the B tile is b + offs[k] (unaligned, masked to
 * the nr valid columns so a tile at the end of a buffer never reads past it). */
#define NK_UKERNEL_DIRECT(NV)                                                                     \
    static void ukdirect_##NV(int64_t kc, const float *a, const float *b, const int64_t *offs,   \
                              float *c, int64_t ldc, int mr, int nr, int accumulate,              \
                              const float *bias, const nk_clamp *clamp) {                         \
        __m512 acc[NK_MR][NV];                                                                    \
        NK_TILE_MASKS(NV);                                                                        \
        NK_TILE_INIT(NV);                                                                         \
        for (int64_t k = 0; k < kc; k++) {                                                        \
            const float *bk = b + offs[k];                                                        \
            __m512 bv[NV];                                                                        \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                                  \
                bv[v] = _mm512_maskz_loadu_ps(mask[v], bk + 16 * v);                              \
            _Pragma("GCC unroll 8") for (int i = 0; i < NK_MR; i++) {                             \
                __m512 av = _mm512_set1_ps(a[k * NK_MR + i]);                                     \
                _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                              \
                    acc[i][v] = _mm512_fmadd_ps(av, bv[v], acc[i][v]);                            \
            }                                                                                     \
        }                                                                                         \
        NK_TILE_STORE(NV);                                                                        \
    }

NK_UKERNEL_DIRECT(1)
NK_UKERNEL_DIRECT(2)
NK_UKERNEL_DIRECT(3)

/* A one-column tile (a pixel count one past a multiple of NR, e.g. 49 = 48 + 1 on a 7x7
 * map): the 8 rows of an A panel step are one ymm vector, so each k is one FMA against the
 * broadcast B element, where the 16-wide tile spent 8 broadcasts and 8 FMAs on one useful
 * lane. Four accumulators over k mod 4 hide the FMA latency. */
static void ukdirect_col(int64_t kc, const float *a, const float *b, const int64_t *offs,
                         float *c, int64_t ldc, int mr, int accumulate, const float *bias,
                         const nk_clamp *clamp) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    int64_t k = 0;
    for (; k + 4 <= kc; k += 4) {
        _Pragma("GCC unroll 4") for (int u = 0; u < 4; u++) acc[u] = _mm256_fmadd_ps(
            _mm256_loadu_ps(a + (k + u) * NK_MR), _mm256_set1_ps(b[offs[k + u]]), acc[u]);
    }
    for (; k < kc; k++)
        acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(a + k * NK_MR), _mm256_set1_ps(b[offs[k]]),
                                 acc[0]);
    __m256 sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    float out[NK_MR];
    _mm256_storeu_ps(out, sum);
    for (int i = 0; i < mr; i++) {
        float r = out[i] + (bias ? bias[i] : 0.0f);
        c[i * ldc] = nk_clampf(accumulate ? c[i * ldc] + r : r, clamp);
    }
}

static void ukernel_direct(int64_t kc, const float *a, const float *b, const int64_t *offs,
                           float *c, int64_t ldc, int mr, int nr, int accumulate,
                           const float *bias, const nk_clamp *clamp) {
    int nv = (nr + 15) / 16;
    if (nr == 1)
        ukdirect_col(kc, a, b, offs, c, ldc, mr, accumulate, bias, clamp);
    else if (nv >= 3)
        ukdirect_3(kc, a, b, offs, c, ldc, mr, nr, accumulate, bias, clamp);
    else if (nv == 2)
        ukdirect_2(kc, a, b, offs, c, ldc, mr, nr, accumulate, bias, clamp);
    else
        ukdirect_1(kc, a, b, offs, c, ldc, mr, nr, accumulate, bias, clamp);
}

int nk_packed_isa(void) { return 512; }


#else /* portable: the same layouts, a plain loop */

int nk_packed_isa(void) { return 0; }

static void ukernel_rows(int64_t kc, const float *a, int64_t lda, const float *b, float *c,
                         int64_t ldc, int mr, int nr, int accumulate) {
    float acc[NK_MR][NK_NR] = {{0}};
    for (int64_t k = 0; k < kc; k++) {
        const float *bk = b + k * NK_NR;
        for (int i = 0; i < mr; i++) {
            float av = a[i * lda + k];
            for (int j = 0; j < NK_NR; j++) acc[i][j] += av * bk[j];
        }
    }
    for (int i = 0; i < mr; i++) {
        float *row = c + i * ldc;
        for (int j = 0; j < nr; j++) row[j] = accumulate ? row[j] + acc[i][j] : acc[i][j];
    }
}

static void ukernel_direct(int64_t kc, const float *a, const float *b, const int64_t *offs,
                           float *c, int64_t ldc, int mr, int nr, int accumulate,
                           const float *bias, const nk_clamp *clamp) {
    float acc[NK_MR][NK_NR];
    for (int i = 0; i < NK_MR; i++) {
        float init = bias && i < mr ? bias[i] : 0.0f;
        for (int j = 0; j < NK_NR; j++) acc[i][j] = init;
    }
    for (int64_t k = 0; k < kc; k++) {
        const float *bk = b + offs[k];
        for (int i = 0; i < NK_MR; i++) {
            float av = a[k * NK_MR + i];
            for (int j = 0; j < nr; j++) acc[i][j] += av * bk[j];
        }
    }
    for (int i = 0; i < mr; i++) {
        float *row = c + i * ldc;
        for (int j = 0; j < nr; j++)
            row[j] = nk_clampf(accumulate ? row[j] + acc[i][j] : acc[i][j], clamp);
    }
}
#endif

/* ---- weight packing (the layouts of nerve/engines/native/packing.py) ------------------------ *
 *
 * The engine re-packs a weight in place after a weight update (weights_changed); numpy's
 * strided copies ran at about a seventh of memcpy's speed there, these at one half to one
 * third. They write only the valid entries, so the zero padding of a previous pack stays. */

#define NK_PACK_KB 16 /* source rows per block: each block's tile rows stay in L1 */

typedef struct {
    int64_t K, N, rows, width;
    const float *src;
    float *out;
} pack_job;

/* K blocks [b0, b1) of b (K x N, row-major) -> [ceil(N / NR)][K][NR] column tiles. */
static void pack_matmul_task(void *ctx, int64_t b0, int64_t b1) {
    const pack_job *j = (const pack_job *)ctx;
    const int64_t K = j->K, N = j->N, full = N / NK_NR, rest = N - full * NK_NR;
    for (int64_t k0 = b0 * NK_PACK_KB; k0 < b1 * NK_PACK_KB && k0 < K; k0 += NK_PACK_KB) {
        const int64_t k1 = k0 + NK_PACK_KB < K ? k0 + NK_PACK_KB : K;
        for (int64_t t = 0; t < full; t++) {
            for (int64_t k = k0; k < k1; k++) {
                float *dst = j->out + (t * K + k) * NK_NR;
                const float *src = j->src + k * N + t * NK_NR;
#if defined(__AVX512F__)
                _mm512_storeu_ps(dst, _mm512_loadu_ps(src));
                _mm512_storeu_ps(dst + 16, _mm512_loadu_ps(src + 16));
                _mm512_storeu_ps(dst + 32, _mm512_loadu_ps(src + 32));
#else
                memcpy(dst, src, NK_NR * sizeof(float));
#endif
            }
        }
        if (rest)
            for (int64_t k = k0; k < k1; k++)
                memcpy(j->out + (full * K + k) * NK_NR, j->src + k * N + full * NK_NR,
                       (size_t)rest * sizeof(float));
    }
}

void nk_pack_matmul(int nt, int64_t K, int64_t N, const float *b, float *out) {
    pack_job j = {K, N, 0, 0, b, out};
    const int64_t blocks = (K + NK_PACK_KB - 1) / NK_PACK_KB;
    nk_parallel_for(nt, blocks, (blocks + 4 * nt - 1) / (4 * nt), pack_matmul_task, &j);
}

/* Blocks [b0, b1) of `width` rows of w (row stride K) into out[block][k * width + i], 16
 * columns at a time: each source cache line is read once and the destination block stays in
 * L1. Rows past `rows` (the last block's padding) are left as they are. */
static void pack_transposed_task(void *ctx, int64_t b0, int64_t b1) {
    const pack_job *j = (const pack_job *)ctx;
    const int64_t K = j->K, W = j->width;
    for (int64_t blk = b0; blk < b1; blk++) {
        const int64_t r0 = blk * W, rows = j->rows - r0 < W ? j->rows - r0 : W;
        const float *w = j->src + r0 * K;
        float *out = j->out + blk * K * W;
        for (int64_t k0 = 0; k0 < K; k0 += 16) {
            const int64_t k1 = k0 + 16 < K ? k0 + 16 : K;
            for (int64_t i = 0; i < rows; i++) {
                const float *src = w + i * K;
                for (int64_t k = k0; k < k1; k++) out[k * W + i] = src[k];
            }
        }
    }
}

static void pack_transposed(int nt, const float *w, int64_t rows, int64_t K, int64_t width,
                            float *out) {
    pack_job j = {K, 0, rows, width, w, out};
    const int64_t blocks = (rows + width - 1) / width;
    nk_parallel_for(nt, blocks, (blocks + 4 * nt - 1) / (4 * nt), pack_transposed_task, &j);
}

/* w (G x Og x K) -> per group [ceil(Og / MR)][K][MR] row panels. */
void nk_pack_conv(int nt, int64_t G, int64_t Og, int64_t K, const float *w, float *out) {
    const int64_t panels = (Og + NK_MR - 1) / NK_MR;
    for (int64_t g = 0; g < G; g++)
        pack_transposed(nt, w + g * Og * K, Og, K, NK_MR, out + g * panels * K * NK_MR);
}

/* w (O x K) -> [ceil(O / CV_NB)][K][CV_NB] channel blocks. */
void nk_pack_conv_cvec(int nt, int64_t O, int64_t K, const float *w, float *out) {
    pack_transposed(nt, w, O, K, NK_CV_NB, out);
}

/* ---- per-thread workspace ------------------------------------------------------------------ */

/* which: 0 = a unit's own block, 1 = what a call shares with its workers (nk_thread_buffer). */
static float *thread_buffer(int which, size_t floats) {
    return (float *)nk_thread_buffer(which ? NK_BUF_SHARED : NK_BUF_TILE, floats * sizeof(float));
}

/* ---- blocking ------------------------------------------------------------------------------ */

#define NK_KC 256        /* K block: an A panel block (KC x MR) stays in L1 */
#define NK_TILES 8       /* B tiles per block: KC x 8 x NR floats (384 KiB) stay in L2 */

static int64_t k_block(int64_t K) {
    int64_t blocks = (K + NK_KC - 1) / NK_KC;
    int64_t kc = (K + blocks - 1) / blocks;
    return kc < 1 ? 1 : kc;
}

/* ---- convolution over packed weights --------------------------------------------------------- */

int64_t nk_conv_packed_floats(const nk_conv *d) {
    const int64_t G = d->G, Og = d->O / G, K = (d->C / G) * d->KH * d->KW;
    return G * ((Og + NK_MR - 1) / NK_MR) * NK_MR * K;
}

/* The convolution reads its B tiles in place, never through an im2col copy.
 *
 * The input is rearranged once per call into per-channel *phase planes*: for strides SH x SW,
 * plane (ry, rx) of channel c holds the zero-padded input at rows i*SH + ry - PT and columns
 * j*SW + rx - PL, for i < PHh, j < PWh. In that layout the tap (c, ky, kx) of output pixel
 * (oy, ox) sits at offs[k] + oy*PWh + ox, with offs[k] depending on the tap only. So over the
 * "padded pixel space" q = oy*PWh + ox, row k of the GEMM's B matrix is the contiguous run
 * src[offs[k] + q]: the micro-kernel loads it directly (columns ox >= OW are computed and
 * dropped). A stride-1 unpadded convolution (every 1x1 stride-1 conv) uses the input itself.
 * The copy costs about one pass over the input, where im2col wrote KH*KW of them. */

typedef struct {
    const nk_conv *d;
    const float *x, *w, *bias;
    float *y;
    nk_epilogue ep;
    const void *const *ep_args;
    const nk_clamp *clamp; /* applied as the last K block is stored (or NULL) */
    float *phases;         /* the phase planes (NULL: the input is read in place) */
    const float *src;      /* phases, or x */
    const int64_t *offs;   /* per tap k of one group: offset into the group's src */
    int64_t PHh, PWh;      /* phase plane size */
    int64_t plane;         /* floats per channel in src */
    int64_t PP;            /* padded pixel space of one image: (OH - 1) * PWh + OW */
    int64_t panels;        /* A panels per group */
    int64_t ochunks;       /* panel chunks per group */
    int64_t opanels;       /* panels per chunk */
    int64_t pchunks;       /* pixel chunks per image */
    int64_t ptiles;        /* B tiles per pixel chunk */
} convp_job;

/* Whether some tap reads stride phase r along an axis (kernel taps, dilation, stride): a 1x1
 * stride-2 conv reads only phase 0, so the other three planes are never written. */
static int phase_used(int64_t taps, int64_t dilation, int64_t stride, int64_t r) {
    for (int64_t t = 0; t < taps; t++)
        if ((t * dilation) % stride == r) return 1;
    return 0;
}

/* Phase planes of input channels [i0, i1) (numbered over N * C). */
static void convp_phase_task(void *ctx, int64_t i0, int64_t i1) {
    const convp_job *j = (const convp_job *)ctx;
    const nk_conv *d = j->d;
    const int64_t H = d->H, W = d->W, SH = d->SH, SW = d->SW, PHh = j->PHh, PWh = j->PWh;
    for (int64_t i = i0; i < i1; i++) {
        const float *xp = j->x + i * H * W;
        float *dst = j->phases + i * j->plane;
        for (int64_t ry = 0; ry < SH; ry++) {
            if (!phase_used(d->KH, d->DH, SH, ry)) continue;
            for (int64_t rx = 0; rx < SW; rx++) {
                if (!phase_used(d->KW, d->DW, SW, rx)) continue;
                float *ph = dst + (ry * SW + rx) * PHh * PWh;
                /* Columns j in [lo, hi) read input column j*SW + b0 inside the row. */
                const int64_t b0 = rx - d->PL;
                int64_t lo, hi;
                nk_phase_columns(b0, SW, W, PWh, &lo, &hi);
                for (int64_t r = 0; r < PHh; r++) {
                    float *out = ph + r * PWh;
                    const int64_t iy = r * SH + ry - d->PT;
                    if (iy < 0 || iy >= H) {
                        memset(out, 0, (size_t)PWh * sizeof(float));
                        continue;
                    }
                    const float *row = xp + iy * W + b0;
                    for (int64_t c = 0; c < lo; c++) out[c] = 0.0f;
                    if (SW == 1) {
                        memcpy(out + lo, row + lo, (size_t)(hi - lo) * sizeof(float));
                    } else {
                        for (int64_t c = lo; c < hi; c++) out[c] = row[c * SW];
                    }
                    for (int64_t c = hi; c < PWh; c++) out[c] = 0.0f;
                }
            }
        }
    }
}

/* Output pixels whose padded index is below q. */
static int64_t convp_valid_before(const convp_job *j, int64_t q) {
    int64_t col = q % j->PWh;
    return (q / j->PWh) * j->d->OW + (col < j->d->OW ? col : j->d->OW);
}

/* One unit: image n, group g, a chunk of output channels, a chunk of padded pixels. When the
 * padded space has dropped columns (PWh > OW) the tiles go to a per-thread buffer first and
 * only the valid pixels are copied out. */
static void convp_task(void *ctx, int64_t u0, int64_t u1) {
    const convp_job *j = (const convp_job *)ctx;
    const nk_conv *d = j->d;
    const int64_t G = d->G, Cg = d->C / G, Og = d->O / G, K = Cg * d->KH * d->KW;
    const int64_t P = d->OH * d->OW, OW = d->OW, PWh = j->PWh, kc_max = k_block(K);
    const int staged = PWh != OW;
    const int64_t ldt = j->ptiles * NK_NR;
    float *tmp = staged ? thread_buffer(0, (size_t)(j->opanels * NK_MR * ldt)) : NULL;
    if (staged && !tmp) return; /* out of memory */
    for (int64_t u = u0; u < u1; u++) {
        /* Channel chunks innermost: a thread's contiguous share of units is a run of pixel
         * chunks (a spatial split, so it reads what it wrote in the kernel before, see
         * nk_threads.c). */
        int64_t oc = u % j->ochunks, rest = u / j->ochunks;
        int64_t pc = rest % j->pchunks, ng = rest / j->pchunks;
        int64_t g = ng % G, n = ng / G;
        int64_t pp0 = pc * ldt, pp1 = pp0 + ldt;
        if (pp1 > j->PP) pp1 = j->PP;
        int64_t op0 = oc * j->opanels, op1 = op0 + j->opanels;
        if (op1 > j->panels) op1 = j->panels;
        if (pp0 >= pp1 || op0 >= op1) continue;
        const float *sg = j->src + (n * d->C + g * Cg) * j->plane;
        const float *wg = j->w + g * j->panels * K * NK_MR;
        float *yg = j->y + (n * d->O + g * Og) * P;
        for (int64_t k0 = 0; k0 < K; k0 += kc_max) {
            int64_t k1 = k0 + kc_max < K ? k0 + kc_max : K, kc = k1 - k0;
            for (int64_t op = op0; op < op1; op++) {
                int64_t m0 = op * NK_MR;
                int mr = (int)(Og - m0 < NK_MR ? Og - m0 : NK_MR);
                const float *a = wg + op * K * NK_MR + k0 * NK_MR;
                const float *bias = (k0 == 0 && j->bias) ? j->bias + g * Og + m0 : NULL;
                for (int64_t q0 = pp0; q0 < pp1; q0 += NK_NR) {
                    int nr = (int)(pp1 - q0 < NK_NR ? pp1 - q0 : NK_NR);
                    float *c = staged ? tmp + (op - op0) * NK_MR * ldt + (q0 - pp0)
                                      : yg + m0 * P + q0;
                    ukernel_direct(kc, a, sg + q0, j->offs + k0, c, staged ? ldt : P, mr, nr,
                                   k0 > 0, bias, k1 == K ? j->clamp : NULL);
                }
            }
        }
        int64_t m1 = op1 * NK_MR < Og ? op1 * NK_MR : Og;
        if (staged) {
            for (int64_t m = op0 * NK_MR; m < m1; m++) {
                const float *tr = tmp + (m - op0 * NK_MR) * ldt;
                for (int64_t oy = pp0 / PWh; oy <= (pp1 - 1) / PWh; oy++) {
                    int64_t c0 = pp0 - oy * PWh > 0 ? pp0 - oy * PWh : 0;
                    int64_t c1 = pp1 - oy * PWh < OW ? pp1 - oy * PWh : OW;
                    if (c1 > c0)
                        memcpy(yg + m * P + oy * OW + c0, tr + oy * PWh + c0 - pp0,
                               (size_t)(c1 - c0) * sizeof(float));
                }
            }
        }
        if (j->ep) {
            int64_t o0 = convp_valid_before(j, pp0), o1 = convp_valid_before(j, pp1);
            if (o1 > o0) j->ep(j->ep_args, 1, n, g * Og + op0 * NK_MR, g * Og + m1, o0, o1);
        }
    }
}

/* Geometry shared by both convolution kernels: the phase planes (when the input cannot be
 * read in place) and the per-tap offsets, built in thread buffer 1. Returns 0 when out of
 * memory. */
static int convp_setup(int nt, const nk_conv *d, const float *x, convp_job *j) {
    const int64_t G = d->G, Cg = d->C / G, K = Cg * d->KH * d->KW, SH = d->SH, SW = d->SW;
    j->d = d;
    j->x = x;
    j->PHh = d->OH + ((d->KH - 1) * d->DH) / SH;
    j->PWh = d->OW + ((d->KW - 1) * d->DW) / SW;
    j->PP = (d->OH - 1) * j->PWh + d->OW;
    const int in_place = SH == 1 && SW == 1 && d->PT == 0 && d->PL == 0 && j->PHh == d->H &&
                         j->PWh == d->W;
    j->plane = in_place ? d->H * d->W : SH * SW * j->PHh * j->PWh;
    /* One buffer: the phase planes (when needed; padded so that a tile reading a few floats
     * past the last plane stays inside it), then the tap offsets. */
    const int64_t src_floats = in_place ? 0 : (d->N * d->C * j->plane + 16 + 15) / 16 * 16;
    float *buf = thread_buffer(1, (size_t)(src_floats + 2 * K + 16));
    if (!buf) return 0;
    int64_t *offs = (int64_t *)(buf + src_floats);
    for (int64_t k = 0; k < K; k++) {
        int64_t kx = k % d->KW, ky = (k / d->KW) % d->KH, c = k / (d->KW * d->KH);
        int64_t a = ky * d->DH, b = kx * d->DW;
        offs[k] = c * j->plane + ((a % SH) * SW + b % SW) * j->PHh * j->PWh +
                  (a / SH) * j->PWh + b / SW;
    }
    j->offs = offs;
    j->phases = in_place ? NULL : buf;
    j->src = in_place ? x : buf;
    if (!in_place) {
        int64_t planes = d->N * d->C, grain = planes / (4 * (int64_t)nt);
        nk_parallel_for(nt, planes, grain > 0 ? grain : 1, convp_phase_task, j);
    }
    return 1;
}

/* No input channels: the output is the bias. */
static void conv_bias_only(const nk_conv *d, const float *bias, float *y, nk_epilogue ep,
                           const void *const *ep_args, const nk_clamp *clamp) {
    const int64_t P = d->OH * d->OW;
    for (int64_t n = 0; n < d->N; n++)
        for (int64_t o = 0; o < d->O; o++)
            for (int64_t p = 0; p < P; p++)
                y[(n * d->O + o) * P + p] = nk_clampf(bias ? bias[o] : 0.0f, clamp);
    if (ep)
        for (int64_t n = 0; n < d->N; n++) ep(ep_args, 1, n, 0, d->O, 0, P);
}

void nk_conv2d_packed(int nt, const nk_conv *d, const float *x, const float *wpack,
                      const float *bias, float *y, nk_epilogue ep, const void *const *ep_args,
                      const nk_clamp *clamp) {
    const int64_t G = d->G, Cg = d->C / G, Og = d->O / G, K = Cg * d->KH * d->KW;
    const int64_t P = d->OH * d->OW;
    if (P <= 0 || Og <= 0) return;
    if (K == 0) {
        conv_bias_only(d, bias, y, ep, ep_args, clamp);
        return;
    }
    convp_job j;
    memset(&j, 0, sizeof j);
    j.w = wpack;
    j.bias = bias;
    j.y = y;
    j.ep = ep;
    j.ep_args = ep_args;
    j.clamp = clamp;
    if (nt < 1 || 2.0 * (double)d->O * (double)P * (double)K * (double)d->N < 262144.0) nt = 1;
    if (!convp_setup(nt, d, x, &j)) return;
    j.panels = (Og + NK_MR - 1) / NK_MR;
    const int64_t tiles = (j.PP + NK_NR - 1) / NK_NR;
    j.ptiles = tiles < NK_TILES ? tiles : NK_TILES;
    j.pchunks = (tiles + j.ptiles - 1) / j.ptiles;
    /* Enough units for every thread to get a few (the machine is shared; small units let a
     * thread that runs take over the work of one that does not): split output channels when
     * the image has few pixel chunks (reading B in place, a split costs no extra packing). */
    int64_t units = d->N * G * j.pchunks, want = 4 * (int64_t)nt;
    j.ochunks = 1;
    if (nt > 1 && units < want) {
        int64_t split = (want + units - 1) / units;
        j.ochunks = split < j.panels ? split : j.panels;
    }
    j.opanels = (j.panels + j.ochunks - 1) / j.ochunks;
    j.ochunks = (j.panels + j.opanels - 1) / j.opanels;
    /* A few equal units that do not divide among the threads leave one thread a unit behind
     * (9 units on 2 threads: the run takes 5 units' time for 4.5 units' work); split the
     * channels into more chunks of equal panels until the units divide. */
    for (int64_t c = j.ochunks + 1; nt > 1 && (units * j.ochunks) % nt != 0 &&
                                    units * j.ochunks < 16 * (int64_t)nt && c <= j.panels;
         c++) {
        const int64_t op = (j.panels + c - 1) / c; /* c chunks of (nearly) equal panels */
        if ((j.panels + op - 1) / op == c && (units * c) % nt == 0) {
            j.opanels = op;
            j.ochunks = c;
        }
    }
    nk_parallel_for(nt, d->N * G * j.ochunks * j.pchunks, 1, convp_task, &j);
}

/* ---- convolution with output channels in the vector lanes (small feature maps) ------------- *
 *
 * On a 7x7 or 14x14 map the pixel-vector kernel above wastes lanes: 49 pixels fill three
 * 16-lane vectors and one lane of a fourth, and a row of padded pixels is short. Here the
 * roles swap, as in an NCHWc kernel: a tile is NK_CV_MT pixels of one output row (their input
 * values broadcast from the phase planes) times NK_CV_NB output channels (four vectors of
 * weights, packed [O blocks][K][NB]), 7 x 4 = 28 accumulators. Every map width ResNet and
 * MobileNet use (7, 14, 28, 56) is a multiple of 7, so no lane is wasted. Partial sums over
 * K blocks live in a per-thread [tiles][MT][NB] buffer; the last block transposes the tiles
 * into the NCHW output (adding the bias) and the epilogue runs on the unit's block. */

#define NK_CV_KC 512 /* K block: its NB-wide weight rows (128 KiB) stay in L2 */

int64_t nk_conv_cvec_floats(const nk_conv *d) {
    const int64_t K = d->C * d->KH * d->KW;
    return (d->O + NK_CV_NB - 1) / NK_CV_NB * NK_CV_NB * K;
}

#if defined(__AVX512F__)
/* acc[MT][NV] (+)= pixels (src + offs[k] + i, i < MT) x the first 16 * NV channels of the
 * weights [kc][NB]. NV = 4 is the full block; NV = 2 serves a last block of at most 32
 * channels, whose other half would only multiply zeros. */
#define NK_CV_TILE(NAME, MT, NV)                                                                  \
    static void NAME(int64_t kc, const float *w, const float *s, const int64_t *offs, float *io, \
                     int first) {                                                                 \
        __m512 acc[MT][NV];                                                                       \
        _Pragma("GCC unroll 8") for (int i = 0; i < MT; i++)                                      \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                                  \
                acc[i][v] = first ? _mm512_setzero_ps()                                           \
                                  : _mm512_load_ps(io + i * NK_CV_NB + 16 * v);                   \
        for (int64_t k = 0; k < kc; k++) {                                                        \
            const float *wk = w + k * NK_CV_NB, *sk = s + offs[k];                                \
            __m512 wv[NV];                                                                        \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) wv[v] =                          \
                _mm512_loadu_ps(wk + 16 * v);                                                     \
            _Pragma("GCC unroll 8") for (int i = 0; i < MT; i++) {                                \
                __m512 b = _mm512_set1_ps(sk[i]);                                                 \
                _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) acc[i][v] =                  \
                    _mm512_fmadd_ps(b, wv[v], acc[i][v]);                                         \
            }                                                                                     \
        }                                                                                         \
        _Pragma("GCC unroll 8") for (int i = 0; i < MT; i++)                                      \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                                  \
                _mm512_store_ps(io + i * NK_CV_NB + 16 * v, acc[i][v]);                           \
    }
#else
#define NK_CV_TILE(NAME, MT, NV)                                                                  \
    static void NAME(int64_t kc, const float *w, const float *s, const int64_t *offs, float *io, \
                     int first) {                                                                 \
        float acc[MT][16 * NV];                                                                   \
        for (int i = 0; i < MT; i++)                                                              \
            for (int v = 0; v < 16 * NV; v++) acc[i][v] = first ? 0.0f : io[i * NK_CV_NB + v];   \
        for (int64_t k = 0; k < kc; k++) {                                                        \
            const float *wk = w + k * NK_CV_NB, *sk = s + offs[k];                                \
            for (int i = 0; i < MT; i++)                                                          \
                for (int v = 0; v < 16 * NV; v++) acc[i][v] += sk[i] * wk[v];                    \
        }                                                                                         \
        for (int i = 0; i < MT; i++)                                                              \
            for (int v = 0; v < 16 * NV; v++) io[i * NK_CV_NB + v] = acc[i][v];                   \
    }
#endif

NK_CV_TILE(cv_tile_1, 1, 4)
NK_CV_TILE(cv_tile_2, 2, 4)
NK_CV_TILE(cv_tile_3, 3, 4)
NK_CV_TILE(cv_tile_4, 4, 4)
NK_CV_TILE(cv_tile_5, 5, 4)
NK_CV_TILE(cv_tile_6, 6, 4)
NK_CV_TILE(cv_tile_7, 7, 4)
NK_CV_TILE(cv_half_1, 1, 2)
NK_CV_TILE(cv_half_2, 2, 2)
NK_CV_TILE(cv_half_3, 3, 2)
NK_CV_TILE(cv_half_4, 4, 2)
NK_CV_TILE(cv_half_5, 5, 2)
NK_CV_TILE(cv_half_6, 6, 2)
NK_CV_TILE(cv_half_7, 7, 2)

typedef void (*cv_tile_fn)(int64_t, const float *, const float *, const int64_t *, float *, int);
static const cv_tile_fn cv_tiles[2][NK_CV_MT + 1] = {
    {NULL, cv_tile_1, cv_tile_2, cv_tile_3, cv_tile_4, cv_tile_5, cv_tile_6, cv_tile_7},
    {NULL, cv_half_1, cv_half_2, cv_half_3, cv_half_4, cv_half_5, cv_half_6, cv_half_7}};

typedef struct {
    convp_job c;        /* geometry (src, offs, PWh, ...) and the output */
    int64_t oblocks;    /* NB-channel weight blocks */
    int64_t rtiles;     /* tiles per output row */
    int64_t rchunks;    /* row chunks per image */
    int64_t rows;       /* output rows per chunk */
} cvec_job;

/* Pixels [0, np) of io (pixel p's NB channels at io + p * NB) for channels [o0, o1) into
 * their NCHW planes (y: channel o0's plane at the first pixel; plane stride P), with the bias
 * and the clamp. AVX-512: 16 pixels x 16 channels per register transpose. */
static void cv_store(const float *io, int64_t np, int64_t o0, int64_t o1, const float *bias,
                     const nk_clamp *clamp, float *y, int64_t P) {
#if defined(__AVX512F__)
    const __m512 lo = _mm512_set1_ps(clamp ? clamp->lo : 0.0f);
    const __m512 hi = _mm512_set1_ps(clamp ? clamp->hi : 0.0f);
    __m512 v[16];
    for (int64_t g = 0; g < o1 - o0; g += 16) {
        const int cn = (int)(o1 - o0 - g < 16 ? o1 - o0 - g : 16);
        for (int64_t p = 0; p < np; p += 16) {
            const int64_t n = np - p < 16 ? np - p : 16;
            for (int64_t i = 0; i < 16; i++)
                v[i] = i < n ? _mm512_load_ps(io + (p + i) * NK_CV_NB + g) : _mm512_setzero_ps();
            nk_transpose16(v);
            const __mmask16 m = (__mmask16)nk_tail_mask(n);
            for (int k = 0; k < cn; k++) {
                __m512 r = _mm512_add_ps(v[k], _mm512_set1_ps(bias ? bias[o0 + g + k] : 0.0f));
                if (clamp) r = _mm512_min_ps(hi, _mm512_max_ps(lo, r)); /* NaN kept */
                _mm512_mask_storeu_ps(y + (g + k) * P + p, m, r);
            }
        }
    }
#else
    for (int64_t o = o0; o < o1; o++) {
        const float b = bias ? bias[o] : 0.0f;
        for (int64_t p = 0; p < np; p++)
            y[(o - o0) * P + p] = nk_clampf(io[p * NK_CV_NB + (o - o0)] + b, clamp);
    }
#endif
}

static void cvec_task(void *ctx, int64_t u0, int64_t u1) {
    const cvec_job *j = (const cvec_job *)ctx;
    const convp_job *c = &j->c;
    const nk_conv *d = c->d;
    const int64_t O = d->O, OW = d->OW, P = d->OH * d->OW, K = d->C * d->KH * d->KW;
    const int64_t PWh = c->PWh, rt = j->rtiles;
    float *io = thread_buffer(0, (size_t)(j->rows * rt * NK_CV_MT * NK_CV_NB));
    if (!io) return; /* out of memory */
    for (int64_t u = u0; u < u1; u++) {
        int64_t rc = u % j->rchunks, rest = u / j->rchunks;
        int64_t ob = rest % j->oblocks, n = rest / j->oblocks;
        int64_t r0 = rc * j->rows, r1 = r0 + j->rows < d->OH ? r0 + j->rows : d->OH;
        if (r0 >= r1) continue;
        const float *sn = c->src + n * d->C * c->plane;
        const float *wb = c->w + ob * K * NK_CV_NB;
        const cv_tile_fn *tiles = cv_tiles[O - ob * NK_CV_NB <= NK_CV_NB / 2];
        for (int64_t k0 = 0; k0 < K; k0 += NK_CV_KC) {
            int64_t kc = K - k0 < NK_CV_KC ? K - k0 : NK_CV_KC;
            for (int64_t r = r0; r < r1; r++) {
                for (int64_t t = 0; t < rt; t++) {
                    int64_t ox = t * NK_CV_MT;
                    int mt = (int)(OW - ox < NK_CV_MT ? OW - ox : NK_CV_MT);
                    float *tile = io + ((r - r0) * rt + t) * NK_CV_MT * NK_CV_NB;
                    tiles[mt](kc, wb + k0 * NK_CV_NB, sn + r * PWh + ox, c->offs + k0, tile,
                                 k0 == 0);
                }
            }
        }
        /* The tiles into NCHW, adding the bias. */
        int64_t o0 = ob * NK_CV_NB, o1 = o0 + NK_CV_NB < O ? o0 + NK_CV_NB : O;
        float *yn = c->y + n * O * P + r0 * OW;
        if (OW == rt * NK_CV_MT) /* whole tiles: the unit's pixels are consecutive in io */
            cv_store(io, (r1 - r0) * OW, o0, o1, c->bias, c->clamp, yn + o0 * P, P);
        else
            for (int64_t r = r0; r < r1; r++)
                cv_store(io + (r - r0) * rt * NK_CV_MT * NK_CV_NB, OW, o0, o1, c->bias, c->clamp,
                         yn + o0 * P + (r - r0) * OW, P);
        if (c->ep) c->ep(c->ep_args, 1, n, o0, o1, r0 * OW, r1 * OW);
    }
}

void nk_conv2d_cvec(int nt, const nk_conv *d, const float *x, const float *wcv,
                    const float *bias, float *y, nk_epilogue ep, const void *const *ep_args,
                    const nk_clamp *clamp) {
    const int64_t K = d->C * d->KH * d->KW, P = d->OH * d->OW;
    if (P <= 0 || d->O <= 0) return;
    if (K == 0) {
        conv_bias_only(d, bias, y, ep, ep_args, clamp);
        return;
    }
    cvec_job j;
    memset(&j, 0, sizeof j);
    j.c.w = wcv;
    j.c.bias = bias;
    j.c.y = y;
    j.c.ep = ep;
    j.c.ep_args = ep_args;
    j.c.clamp = clamp;
    if (nt < 1 || 2.0 * (double)d->O * (double)P * (double)K * (double)d->N < 262144.0) nt = 1;
    if (!convp_setup(nt, d, x, &j.c)) return;
    j.oblocks = (d->O + NK_CV_NB - 1) / NK_CV_NB;
    j.rtiles = (d->OW + NK_CV_MT - 1) / NK_CV_MT;
    /* Split rows when there are few channel blocks (a few units per thread), and keep a
     * unit's partial sums (rows x tiles x MT x NB floats) near L2's size. */
    int64_t units = d->N * j.oblocks, want = 4 * (int64_t)nt, rchunks = 1;
    if (nt > 1 && units < want) rchunks = (want + units - 1) / units;
    int64_t cap = 2048 / (j.rtiles * NK_CV_MT) > 0 ? 2048 / (j.rtiles * NK_CV_MT) : 1;
    if ((d->OH + rchunks - 1) / rchunks > cap) rchunks = (d->OH + cap - 1) / cap;
    if (rchunks > d->OH) rchunks = d->OH;
    j.rows = (d->OH + rchunks - 1) / rchunks;
    j.rchunks = (d->OH + j.rows - 1) / j.rows;
    nk_parallel_for(nt, d->N * j.oblocks * j.rchunks, 1, cvec_task, &j);
}

/* ---- matrix product over packed weights ----------------------------------------------------- */

#define NK_GEMV_ROWS 4 /* fewer rows than this: one streaming pass over B per row */

/* Y (M x N, row stride N) = A (M x K, row-major) . B, with B (K x N, a constant weight) packed
 * once as NR-column tiles [tiles][K][NR]. OpenBLAS would re-pack B on every call; here only A's
 * small row panels are packed, per K block, into a per-thread buffer. Units are (row chunk,
 * column chunk); a column chunk's B block (KC x NK_TILES tiles) stays in L2 while every row
 * panel of the chunk streams over it, and the epilogue runs on the unit's block. */
typedef struct {
    int64_t M, N, K;
    const float *A, *B;
    float *Y;
    nk_epilogue ep;
    const void *const *ep_args;
    int64_t tiles, ctiles, cchunks; /* B tiles; per column chunk; column chunks */
    int64_t panels, rpanels;        /* A row panels; per row chunk */
} mmp_job;

static void mmp_task(void *ctx, int64_t u0, int64_t u1) {
    const mmp_job *j = (const mmp_job *)ctx;
    const int64_t M = j->M, N = j->N, K = j->K, kc_max = k_block(K);
    for (int64_t u = u0; u < u1; u++) {
        int64_t cc = u % j->cchunks, rc = u / j->cchunks;
        int64_t t0 = cc * j->ctiles, t1 = t0 + j->ctiles < j->tiles ? t0 + j->ctiles : j->tiles;
        int64_t p0 = rc * j->rpanels, p1 = p0 + j->rpanels < j->panels ? p0 + j->rpanels
                                                                       : j->panels;
        if (t0 >= t1 || p0 >= p1) continue;
        for (int64_t k0 = 0; k0 < K; k0 += kc_max) {
            int64_t kc = k0 + kc_max < K ? kc_max : K - k0;
            for (int64_t p = p0; p < p1; p++) {
                int64_t m0 = p * NK_MR;
                int mr = (int)(M - m0 < NK_MR ? M - m0 : NK_MR);
                for (int64_t t = t0; t < t1; t++) {
                    int64_t n0 = t * NK_NR;
                    int nr = (int)(N - n0 < NK_NR ? N - n0 : NK_NR);
                    ukernel_rows(kc, j->A + m0 * K + k0, K, j->B + (t * K + k0) * NK_NR,
                                 j->Y + m0 * N + n0, N, mr, nr, k0 > 0);
                }
            }
        }
        if (j->ep) {
            int64_t m1 = p1 * NK_MR < M ? p1 * NK_MR : M, n1 = t1 * NK_NR < N ? t1 * NK_NR : N;
            j->ep(j->ep_args, 1, 0, p0 * NK_MR, m1, t0 * NK_NR, n1);
        }
    }
}

/* y[0, :nr) = x . tile for one packed [K][NR] tile: a single row of a product. Bound by the
 * tile stream, which is contiguous here (OpenBLAS's gemv walks rows of B with stride N). */
static void gemv_tile(int64_t K, const float *x, const float *b, float *y, int nr) {
#if defined(__AVX512F__)
    __m512 acc[6];
    for (int v = 0; v < 6; v++) acc[v] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 1 < K; k += 2) { /* two k per step: six independent FMA chains */
        const float *r = b + k * NK_NR;
        __m512 x0 = _mm512_set1_ps(x[k]), x1 = _mm512_set1_ps(x[k + 1]);
        acc[0] = _mm512_fmadd_ps(x0, _mm512_loadu_ps(r), acc[0]);
        acc[1] = _mm512_fmadd_ps(x0, _mm512_loadu_ps(r + 16), acc[1]);
        acc[2] = _mm512_fmadd_ps(x0, _mm512_loadu_ps(r + 32), acc[2]);
        acc[3] = _mm512_fmadd_ps(x1, _mm512_loadu_ps(r + NK_NR), acc[3]);
        acc[4] = _mm512_fmadd_ps(x1, _mm512_loadu_ps(r + NK_NR + 16), acc[4]);
        acc[5] = _mm512_fmadd_ps(x1, _mm512_loadu_ps(r + NK_NR + 32), acc[5]);
    }
    if (k < K) {
        const float *r = b + k * NK_NR;
        __m512 x0 = _mm512_set1_ps(x[k]);
        acc[0] = _mm512_fmadd_ps(x0, _mm512_loadu_ps(r), acc[0]);
        acc[1] = _mm512_fmadd_ps(x0, _mm512_loadu_ps(r + 16), acc[1]);
        acc[2] = _mm512_fmadd_ps(x0, _mm512_loadu_ps(r + 32), acc[2]);
    }
    for (int v = 0; v < 3; v++) {
        int left = nr - 16 * v;
        __mmask16 mask = (__mmask16)nk_tail_mask(left);
        _mm512_mask_storeu_ps(y + 16 * v, mask, _mm512_add_ps(acc[v], acc[v + 3]));
    }
#else
    float acc[NK_NR] = {0};
    for (int64_t k = 0; k < K; k++) {
        const float *r = b + k * NK_NR;
        for (int j = 0; j < NK_NR; j++) acc[j] += x[k] * r[j];
    }
    for (int j = 0; j < nr; j++) y[j] = acc[j];
#endif
}

/* Tiles [t0, t1) of every row (a product with very few rows), then the epilogue. */
static void mmp_gemv_task(void *ctx, int64_t t0, int64_t t1) {
    const mmp_job *j = (const mmp_job *)ctx;
    const int64_t N = j->N, K = j->K;
    for (int64_t t = t0; t < t1; t++) {
        int64_t n0 = t * NK_NR;
        int nr = (int)(N - n0 < NK_NR ? N - n0 : NK_NR);
        for (int64_t m = 0; m < j->M; m++)
            gemv_tile(K, j->A + m * K, j->B + t * K * NK_NR, j->Y + m * N + n0, nr);
    }
    if (j->ep) j->ep(j->ep_args, 1, 0, 0, j->M, t0 * NK_NR, t1 * NK_NR < N ? t1 * NK_NR : N);
}

void nk_matmul_packed(int nt, int64_t M, int64_t N, int64_t K, const float *A, const float *B,
                      float *Y, nk_epilogue ep, const void *const *ep_args) {
    if (M <= 0 || N <= 0) return;
    if (K == 0) {
        memset(Y, 0, (size_t)(M * N) * sizeof(float));
        if (ep) ep(ep_args, 1, 0, 0, M, 0, N);
        return;
    }
    mmp_job j = {M, N, K, A, B, Y, ep, ep_args, 0, 0, 0, 0, 0};
    j.tiles = (N + NK_NR - 1) / NK_NR;
    j.ctiles = j.tiles < NK_TILES ? j.tiles : NK_TILES;
    j.cchunks = (j.tiles + j.ctiles - 1) / j.ctiles;
    j.panels = (M + NK_MR - 1) / NK_MR;
    if (nt < 1 || 2.0 * (double)M * (double)N * (double)K < 262144.0) nt = 1;
    if (M < NK_GEMV_ROWS) {
        int64_t grain = j.tiles / (4 * (int64_t)nt);
        nk_parallel_for(nt, j.tiles, grain > 0 ? grain : 1, mmp_gemv_task, &j);
        return;
    }
    /* Split rows too when there are few column chunks (a few units per thread). */
    int64_t want = 4 * (int64_t)nt, rchunks = 1;
    if (nt > 1 && j.cchunks < want) {
        rchunks = (want + j.cchunks - 1) / j.cchunks;
        if (rchunks > j.panels) rchunks = j.panels;
    }
    j.rpanels = (j.panels + rchunks - 1) / rchunks;
    rchunks = (j.panels + j.rpanels - 1) / j.rpanels;
    nk_parallel_for(nt, rchunks * j.cchunks, 1, mmp_task, &j);
}
