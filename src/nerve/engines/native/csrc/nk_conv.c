/* 2-D convolution in NCHW.
 *
 * - 1x1, stride 1, no padding: the input plane *is* the GEMM's B matrix (no copy).
 * - general: im2col into the workspace, then GEMM (W[O/G, C/G*KH*KW] x col[.., pixels]).
 * - one input channel per group (depthwise and its multiplier variants): a direct loop, because
 *   its GEMM would have K = KH*KW (tiny) and be bound by the im2col copy.
 * Each thread owns a slab of output pixels (or of output channels when the image is small),
 * so the bias add and the fused epilogue run on data still in that thread's cache.
 */
#include "nk.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static int is_pointwise(const nk_conv *d) {
    return d->KH == 1 && d->KW == 1 && d->SH == 1 && d->SW == 1 && d->PT == 0 && d->PL == 0 &&
           d->OH == d->H && d->OW == d->W;
}

static int is_per_channel(const nk_conv *d) { return d->C == d->G; }

int64_t nk_conv2d_workspace(const nk_conv *d) {
    if (is_pointwise(d) || is_per_channel(d)) return 0;
    return (d->C / d->G) * d->KH * d->KW * d->OH * d->OW;
}

/* col[k, p - p0] for output pixels p in [p0, p1) of one group's input planes x (Cg planes). */
static void im2col(const nk_conv *d, const float *x, int64_t k0, int64_t k1, int64_t p0,
                   int64_t p1, float *col) {
    const int64_t H = d->H, W = d->W, OW = d->OW, pn = p1 - p0;
    for (int64_t k = k0; k < k1; k++) {
        int64_t kx = k % d->KW, ky = (k / d->KW) % d->KH, c = k / (d->KW * d->KH);
        const float *plane = x + c * H * W;
        float *row = col + k * pn;
        int64_t p = p0;
        while (p < p1) {
            int64_t oy = p / OW, ox = p % OW;
            int64_t run = OW - ox;
            if (run > p1 - p) run = p1 - p;
            int64_t iy = oy * d->SH - d->PT + ky * d->DH;
            float *dst = row + (p - p0);
            if (iy < 0 || iy >= H) {
                memset(dst, 0, (size_t)run * sizeof(float));
            } else {
                const float *src = plane + iy * W;
                int64_t ix0 = ox * d->SW - d->PL + kx * d->DW;
                if (d->SW == 1 && ix0 >= 0 && ix0 + run <= W) {
                    memcpy(dst, src + ix0, (size_t)run * sizeof(float));
                } else {
                    for (int64_t j = 0; j < run; j++) {
                        int64_t ix = ix0 + j * d->SW;
                        dst[j] = (ix >= 0 && ix < W) ? src[ix] : 0.0f;
                    }
                }
            }
            p += run;
        }
    }
}

static void add_bias(const float *bias, float *y, int64_t P, int64_t m0, int64_t m1,
                     int64_t p0, int64_t p1) {
    if (!bias) return;
    for (int64_t m = m0; m < m1; m++) {
        float b = bias[m], *row = y + m * P;
        for (int64_t p = p0; p < p1; p++) row[p] += b;
    }
}

/* Direct convolution of one output channel plane from its single input plane. */
static void conv_plane(const nk_conv *d, const float *x, const float *w, float b, float *y) {
    const int64_t H = d->H, W = d->W, OH = d->OH, OW = d->OW;
    for (int64_t i = 0; i < OH * OW; i++) y[i] = b;
    for (int64_t ky = 0; ky < d->KH; ky++) {
        for (int64_t kx = 0; kx < d->KW; kx++) {
            float wv = w[ky * d->KW + kx];
            int64_t xoff = kx * d->DW - d->PL;
            /* Output columns whose input column lies inside the row. */
            int64_t lo = xoff >= 0 ? 0 : (-xoff + d->SW - 1) / d->SW;
            int64_t hi = (W - 1 - xoff) >= 0 ? (W - 1 - xoff) / d->SW + 1 : 0;
            if (hi > OW) hi = OW;
            if (lo >= hi) continue;
            for (int64_t oy = 0; oy < OH; oy++) {
                int64_t iy = oy * d->SH - d->PT + ky * d->DH;
                if (iy < 0 || iy >= H) continue;
                const float *src = x + iy * W + xoff;
                float *dst = y + oy * OW;
                if (d->SW == 1) {
                    for (int64_t ox = lo; ox < hi; ox++) dst[ox] += wv * src[ox];
                } else if (d->SW == 2) {
                    for (int64_t ox = lo; ox < hi; ox++) dst[ox] += wv * src[2 * ox];
                } else {
                    for (int64_t ox = lo; ox < hi; ox++) dst[ox] += wv * src[ox * d->SW];
                }
            }
        }
    }
}

static void conv_per_channel(int nt, const nk_conv *d, const float *x, const float *w,
                             const float *bias, float *y, nk_epilogue ep,
                             const void *const *ep_args) {
    const int64_t P = d->OH * d->OW, mult = d->O / d->G, planes = d->N * d->O;
    const int64_t ksz = d->KH * d->KW;
    int par = nt > 1 && planes > 1 && planes * P * ksz > 32768;
#pragma omp parallel for num_threads(nt) schedule(static) if (par)
    for (int64_t i = 0; i < planes; i++) {
        int64_t n = i / d->O, o = i % d->O, c = o / mult;
        conv_plane(d, x + (n * d->C + c) * d->H * d->W, w + o * ksz, bias ? bias[o] : 0.0f,
                   y + i * P);
        if (ep) ep(ep_args, 1, n, o, o + 1, 0, P);
    }
}

/* One group of one image through im2col + GEMM, threads splitting pixels or channels. */
static void conv_group(int nt, const nk_conv *d, const float *xg, const float *wg,
                       const float *bias, float *y, float *work, int64_t n, int64_t mbase,
                       nk_epilogue ep, const void *const *ep_args) {
    const int64_t Og = d->O / d->G, K = (d->C / d->G) * d->KH * d->KW, P = d->OH * d->OW;
    const int pointwise = is_pointwise(d);
    float *yg = y + (n * d->O + mbase) * P;
    const int split_p = P >= 64 * (int64_t)nt || Og < 8 * (int64_t)nt;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int64_t t = 0, T = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        T = omp_get_num_threads();
#endif
        if (split_p) {
            /* This thread's pixels [p0, p1), im2col'd into its own slice of the workspace. */
            int64_t chunk = (P + T - 1) / T;
            if (T > 1) chunk = (chunk + 15) / 16 * 16;
            int64_t p0 = t * chunk < P ? t * chunk : P;
            int64_t p1 = p0 + chunk < P ? p0 + chunk : P;
            if (p1 > p0) {
                const float *bm = xg + p0;
                int64_t ldb = P;
                if (!pointwise) {
                    float *col = work + K * p0;
                    im2col(d, xg, 0, K, p0, p1, col);
                    bm = col;
                    ldb = p1 - p0;
                }
                nk_sgemm_st(0, 0, Og, p1 - p0, K, 1.0f, wg, K, bm, ldb, yg + p0, P);
                add_bias(bias, y + n * d->O * P, P, mbase, mbase + Og, p0, p1);
                if (ep) ep(ep_args, 1, n, mbase, mbase + Og, p0, p1);
            }
        } else {
            /* Few pixels: build the whole col matrix together, then split output channels. */
            const float *bm = xg;
            if (!pointwise) {
                int64_t k0 = K * t / T, k1 = K * (t + 1) / T;
                im2col(d, xg, k0, k1, 0, P, work);
                bm = work;
#pragma omp barrier
            }
            int64_t chunk = (Og + T - 1) / T;
            int64_t m0 = t * chunk < Og ? t * chunk : Og;
            int64_t m1 = m0 + chunk < Og ? m0 + chunk : Og;
            if (m1 > m0) {
                nk_sgemm_st(0, 0, m1 - m0, P, K, 1.0f, wg + m0 * K, K, bm, P, yg + m0 * P, P);
                add_bias(bias, y + n * d->O * P, P, mbase + m0, mbase + m1, 0, P);
                if (ep) ep(ep_args, 1, n, mbase + m0, mbase + m1, 0, P);
            }
        }
    }
}

void nk_conv2d(int nt, const nk_conv *d, const float *x, const float *w, const float *bias,
               float *y, float *work, nk_epilogue ep, const void *const *ep_args) {
    if (is_per_channel(d)) {
        conv_per_channel(nt, d, x, w, bias, y, ep, ep_args);
        return;
    }
    const int64_t G = d->G, Cg = d->C / G, Og = d->O / G, K = Cg * d->KH * d->KW;
    const int64_t P = d->OH * d->OW, HW = d->H * d->W;
    if (nt < 1 || 2.0 * (double)Og * (double)P * (double)K < 131072.0) nt = 1;
    for (int64_t n = 0; n < d->N; n++)
        for (int64_t g = 0; g < G; g++)
            conv_group(nt, d, x + (n * d->C + g * Cg) * HW, w + g * Og * K, bias, y, work, n,
                       g * Og, ep, ep_args);
}
