/* Packed-panel GEMM: an AVX-512 register-tile micro-kernel over panels packed for it.
 *
 * Why our own: a convolution's GEMM is many small products against the same weights, and
 * OpenBLAS re-packs both operands on every call (for a 64-channel 3x3 conv tile, packing the
 * weights costs as much as the product). Here the weights are packed once, when the engine
 * binds them (see nerve/engines/native/packing.py), and im2col writes the input straight into
 * the panel layout the micro-kernel streams, so nothing is copied twice.
 *
 * Layouts (MR = NK_MR rows, NR = NK_NR columns):
 * - A panels: rows [i*MR, i*MR + MR) of an M x K matrix stored k-major, [K][MR]; the last
 *   panel is zero-padded to MR rows.
 * - B tiles: columns [j*NR, j*NR + NR) of a K x N matrix stored [K][NR], zero-padded.
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

/* acc[i][v] = A[:, i] . B[:, v*16 .. v*16+16) over kc steps, NV vectors wide. */
#define NK_UKERNEL(NV)                                                                            \
    static void ukernel_##NV(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, \
                             int mr, int nr, int accumulate, const float *bias) {                 \
        __m512 acc[NK_MR][NV];                                                                    \
        _Pragma("GCC unroll 8") for (int i = 0; i < NK_MR; i++) {                                 \
            __m512 init = _mm512_set1_ps(bias && i < mr ? bias[i] : 0.0f);                        \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) acc[i][v] = init;                \
        }                                                                                         \
        for (int64_t k = 0; k < kc; k++) {                                                        \
            __m512 bv[NV];                                                                        \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                                  \
                bv[v] = _mm512_load_ps(b + k * NK_NR + 16 * v);                                   \
            _Pragma("GCC unroll 8") for (int i = 0; i < NK_MR; i++) {                             \
                __m512 av = _mm512_set1_ps(a[k * NK_MR + i]);                                     \
                _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                              \
                    acc[i][v] = _mm512_fmadd_ps(av, bv[v], acc[i][v]);                            \
            }                                                                                     \
        }                                                                                         \
        __mmask16 mask[NV];                                                                       \
        _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) {                                    \
            int left = nr - 16 * v;                                                               \
            mask[v] = left >= 16 ? (__mmask16)0xFFFF                                              \
                                 : (left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1u));   \
        }                                                                                         \
        _Pragma("GCC unroll 8") for (int i = 0; i < NK_MR; i++) {                                 \
            if (i >= mr) break;                                                                   \
            float *row = c + i * ldc;                                                             \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) {                                \
                __m512 r = acc[i][v];                                                             \
                if (accumulate)                                                                   \
                    r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(mask[v], row + 16 * v));          \
                _mm512_mask_storeu_ps(row + 16 * v, mask[v], r);                                  \
            }                                                                                     \
        }                                                                                         \
    }

NK_UKERNEL(1)
NK_UKERNEL(2)
NK_UKERNEL(3)

int nk_packed_isa(void) { return 512; }

void nk_ukernel(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int mr,
                int nr, int accumulate, const float *bias) {
    int nv = (nr + 15) / 16;
    if (nv >= 3)
        ukernel_3(kc, a, b, c, ldc, mr, nr, accumulate, bias);
    else if (nv == 2)
        ukernel_2(kc, a, b, c, ldc, mr, nr, accumulate, bias);
    else
        ukernel_1(kc, a, b, c, ldc, mr, nr, accumulate, bias);
}

#else /* portable: the same layouts, a plain loop */

int nk_packed_isa(void) { return 0; }

void nk_ukernel(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int mr,
                int nr, int accumulate, const float *bias) {
    float acc[NK_MR][NK_NR];
    for (int i = 0; i < NK_MR; i++) {
        float init = bias && i < mr ? bias[i] : 0.0f;
        for (int j = 0; j < NK_NR; j++) acc[i][j] = init;
    }
    for (int64_t k = 0; k < kc; k++) {
        const float *bk = b + k * NK_NR;
        for (int i = 0; i < NK_MR; i++) {
            float av = a[k * NK_MR + i];
            for (int j = 0; j < NK_NR; j++) acc[i][j] += av * bk[j];
        }
    }
    for (int i = 0; i < mr; i++) {
        float *row = c + i * ldc;
        for (int j = 0; j < nr; j++) row[j] = accumulate ? row[j] + acc[i][j] : acc[i][j];
    }
}
#endif

/* ---- per-thread workspace ------------------------------------------------------------------ */

/* Packed B blocks live in a per-thread buffer: the pool's threads persist, so it is allocated
 * once per thread and grown when a larger block comes along. */
typedef struct {
    float *data;
    size_t floats;
} tls_buffer;

/* which: 0 = a unit's own B block, 1 = the B matrix a call shares with its workers. */
static _Thread_local tls_buffer tls_bufs[2];

static float *thread_buffer(int which, size_t floats) {
    tls_buffer *b = &tls_bufs[which];
    if (floats > b->floats) {
        free(b->data);
        b->data = NULL;
        b->floats = 0;
        void *p = NULL;
        if (posix_memalign(&p, 64, floats * sizeof(float)) != 0) return NULL;
        b->data = (float *)p;
        b->floats = floats;
    }
    return b->data;
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

/* Rows [k0, k1) x output pixels [p0, p1) of one group's im2col matrix into dst[k - k0][ld]
 * (columns [p1 - p0, ld) zeroed). */
static void im2col_tile(const nk_conv *d, const float *x, int64_t k0, int64_t k1, int64_t p0,
                        int64_t p1, float *dst, int64_t ld) {
    const int64_t H = d->H, W = d->W, OW = d->OW, pn = p1 - p0;
    const int pointwise = d->KH == 1 && d->KW == 1 && d->SH == 1 && d->SW == 1 && d->PT == 0 &&
                          d->PL == 0 && d->OW == W && d->OH == H;
    for (int64_t k = k0; k < k1; k++) {
        float *row = dst + (k - k0) * ld;
        if (pn < ld) memset(row + pn, 0, (size_t)(ld - pn) * sizeof(float));
        if (pointwise) {
            memcpy(row, x + k * H * W + p0, (size_t)pn * sizeof(float));
            continue;
        }
        int64_t kx = k % d->KW, ky = (k / d->KW) % d->KH, c = k / (d->KW * d->KH);
        const float *plane = x + c * H * W;
        int64_t p = p0;
        while (p < p1) {
            int64_t oy = p / OW, ox = p % OW;
            int64_t run = OW - ox;
            if (run > p1 - p) run = p1 - p;
            int64_t iy = oy * d->SH - d->PT + ky * d->DH;
            float *out = row + (p - p0);
            if (iy < 0 || iy >= H) {
                memset(out, 0, (size_t)run * sizeof(float));
            } else {
                /* Output columns j in [lo, hi) read inside the row; zeros around them. */
                const float *src = plane + iy * W;
                const int64_t SW = d->SW, ix0 = ox * SW - d->PL + kx * d->DW;
                int64_t lo = ix0 >= 0 ? 0 : (-ix0 + SW - 1) / SW;
                int64_t hi = ix0 < W ? (W - 1 - ix0) / SW + 1 : 0;
                if (hi > run) hi = run;
                if (lo > hi) lo = hi;
                for (int64_t j = 0; j < lo; j++) out[j] = 0.0f;
                if (SW == 1) {
                    memcpy(out + lo, src + ix0 + lo, (size_t)(hi - lo) * sizeof(float));
                } else if (SW == 2) {
                    for (int64_t j = lo; j < hi; j++) out[j] = src[ix0 + 2 * j];
                } else {
                    for (int64_t j = lo; j < hi; j++) out[j] = src[ix0 + j * SW];
                }
                for (int64_t j = hi; j < run; j++) out[j] = 0.0f;
            }
            p += run;
        }
    }
}

typedef struct {
    const nk_conv *d;
    const float *x, *w, *bias;
    float *y;
    nk_epilogue ep;
    const void *const *ep_args;
    int64_t panels;   /* A panels per group */
    int64_t ochunks;  /* panel chunks per group */
    int64_t opanels;  /* panels per chunk */
    int64_t pchunks;  /* pixel chunks per image */
    int64_t ptiles;   /* B tiles per pixel chunk */
    /* Shared B (channel chunks > 1): every tile of image n0's group g0 packed once, tile t at
     * shared + t * K * NR as [K][NR], before the units run. */
    float *shared;
    int64_t n0, g0;
} convp_job;

/* Pack tiles [t0, t1) of the shared B matrix. */
static void convp_pack_task(void *ctx, int64_t t0, int64_t t1) {
    const convp_job *j = (const convp_job *)ctx;
    const nk_conv *d = j->d;
    const int64_t Cg = d->C / d->G, K = Cg * d->KH * d->KW, P = d->OH * d->OW;
    const float *xg = j->x + (j->n0 * d->C + j->g0 * Cg) * d->H * d->W;
    for (int64_t t = t0; t < t1; t++) {
        int64_t q0 = t * NK_NR, q1 = q0 + NK_NR < P ? q0 + NK_NR : P;
        im2col_tile(d, xg, 0, K, q0, q1, j->shared + t * K * NK_NR, NK_NR);
    }
}

/* One unit: image n, group g, a chunk of output channels, a chunk of output pixels. */
static void convp_task(void *ctx, int64_t u0, int64_t u1) {
    const convp_job *j = (const convp_job *)ctx;
    const nk_conv *d = j->d;
    const int64_t G = d->G, Cg = d->C / G, Og = d->O / G, K = Cg * d->KH * d->KW;
    const int64_t P = d->OH * d->OW, kc_max = k_block(K);
    float *buf = j->shared ? NULL : thread_buffer(0, (size_t)(kc_max * j->ptiles * NK_NR));
    if (!j->shared && !buf) return; /* out of memory (the caller checked its own buffer) */
    for (int64_t u = u0; u < u1; u++) {
        int64_t pc = u % j->pchunks, rest = u / j->pchunks;
        int64_t oc = rest % j->ochunks, ng = rest / j->ochunks;
        int64_t g = ng % G, n = ng / G;
        int64_t pp0 = pc * j->ptiles * NK_NR, pp1 = pp0 + j->ptiles * NK_NR;
        if (pp1 > P) pp1 = P;
        int64_t op0 = oc * j->opanels, op1 = op0 + j->opanels;
        if (op1 > j->panels) op1 = j->panels;
        if (pp0 >= pp1 || op0 >= op1) continue;
        const int64_t tiles = (pp1 - pp0 + NK_NR - 1) / NK_NR;
        const float *xg = j->x + (n * d->C + g * Cg) * d->H * d->W;
        const float *wg = j->w + g * j->panels * K * NK_MR;
        float *yg = j->y + (n * d->O + g * Og) * P;
        for (int64_t k0 = 0; k0 < K; k0 += kc_max) {
            int64_t k1 = k0 + kc_max < K ? k0 + kc_max : K, kc = k1 - k0;
            /* B tile t of this K block: bt + t * bstride, [kc][NR]. */
            const float *bt;
            int64_t bstride;
            if (j->shared) {
                bt = j->shared + (pp0 / NK_NR) * K * NK_NR + k0 * NK_NR;
                bstride = K * NK_NR;
            } else {
                for (int64_t t = 0; t < tiles; t++) {
                    int64_t q0 = pp0 + t * NK_NR, q1 = q0 + NK_NR < pp1 ? q0 + NK_NR : pp1;
                    im2col_tile(d, xg, k0, k1, q0, q1, buf + t * kc * NK_NR, NK_NR);
                }
                bt = buf;
                bstride = kc * NK_NR;
            }
            for (int64_t op = op0; op < op1; op++) {
                int64_t m0 = op * NK_MR;
                int mr = (int)(Og - m0 < NK_MR ? Og - m0 : NK_MR);
                const float *a = wg + op * K * NK_MR + k0 * NK_MR;
                const float *bias = (k0 == 0 && j->bias) ? j->bias + g * Og + m0 : NULL;
                for (int64_t t = 0; t < tiles; t++) {
                    int64_t q0 = pp0 + t * NK_NR, q1 = q0 + NK_NR < pp1 ? q0 + NK_NR : pp1;
                    nk_ukernel(kc, a, bt + t * bstride, yg + m0 * P + q0, P, mr,
                               (int)(q1 - q0), k0 > 0, bias);
                }
            }
        }
        if (j->ep) {
            int64_t m0 = g * Og + op0 * NK_MR, m1 = g * Og + op1 * NK_MR;
            if (m1 > (g + 1) * Og) m1 = (g + 1) * Og;
            j->ep(j->ep_args, 1, n, m0, m1, pp0, pp1);
        }
    }
}

/* Units of image n0, group g0 only (the shared-B mode), numbered like convp_task's. */
static void convp_one_task(void *ctx, int64_t u0, int64_t u1) {
    const convp_job *j = (const convp_job *)ctx;
    int64_t base = (j->n0 * j->d->G + j->g0) * j->ochunks * j->pchunks;
    convp_task(ctx, base + u0, base + u1);
}

void nk_conv2d_packed(int nt, const nk_conv *d, const float *x, const float *wpack,
                      const float *bias, float *y, nk_epilogue ep, const void *const *ep_args) {
    const int64_t G = d->G, Og = d->O / G, K = (d->C / G) * d->KH * d->KW;
    const int64_t P = d->OH * d->OW;
    if (P <= 0 || Og <= 0) return;
    if (K == 0) { /* no input channels: the output is the bias */
        for (int64_t n = 0; n < d->N; n++)
            for (int64_t o = 0; o < d->O; o++)
                for (int64_t p = 0; p < P; p++) y[(n * d->O + o) * P + p] = bias ? bias[o] : 0.0f;
        if (ep)
            for (int64_t n = 0; n < d->N; n++) ep(ep_args, 1, n, 0, d->O, 0, P);
        return;
    }
    convp_job j = {d, x, wpack, bias, y, ep, ep_args, (Og + NK_MR - 1) / NK_MR, 1, 0, 0, 0,
                   NULL, 0, 0};
    const int64_t tiles = (P + NK_NR - 1) / NK_NR;
    j.ptiles = tiles < NK_TILES ? tiles : NK_TILES;
    j.pchunks = (tiles + j.ptiles - 1) / j.ptiles;
    if (nt < 1 || 2.0 * (double)d->O * (double)P * (double)K * (double)d->N < 262144.0) nt = 1;
    /* Enough units for every thread to get a few (the machine is shared; small units let a
     * thread that runs take over the work of one that does not). Split output channels when
     * the image has few pixel chunks: each channel chunk re-packs the (small) input block. */
    int64_t units = d->N * G * j.pchunks, want = 4 * (int64_t)nt;
    if (nt > 1 && units < want) {
        int64_t split = (want + units - 1) / units;
        j.ochunks = split < j.panels ? split : j.panels;
    }
    j.opanels = (j.panels + j.ochunks - 1) / j.ochunks;
    j.ochunks = (j.panels + j.opanels - 1) / j.opanels;
    if (j.ochunks == 1) {
        nk_parallel_for(nt, d->N * G * j.pchunks, 1, convp_task, &j);
        return;
    }
    /* Channel chunks share one packing of B per (image, group): pack it in parallel, then run
     * the units over it (one image and group at a time). */
    j.shared = thread_buffer(1, (size_t)(tiles * K * NK_NR));
    if (!j.shared) return;
    convp_job one = j;
    for (int64_t n = 0; n < d->N; n++) {
        for (int64_t g = 0; g < G; g++) {
            one.n0 = n;
            one.g0 = g;
            nk_parallel_for(nt, tiles, 1, convp_pack_task, &one);
            nk_parallel_for(nt, j.ochunks * j.pchunks, 1, convp_one_task, &one);
        }
    }
}
