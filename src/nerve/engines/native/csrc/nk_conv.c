/* 2-D convolution in NCHW.
 *
 * - 1x1, stride 1, no padding: the input plane *is* the GEMM's B matrix (no copy).
 * - general: im2col into the workspace, then GEMM (W[O/G, C/G*KH*KW] x col[.., pixels]).
 * - one input channel per group (depthwise and its multiplier variants): a direct loop, because
 *   its GEMM would have K = KH*KW (tiny) and be bound by the im2col copy. With AVX-512 a plain
 *   depthwise conv (O == C) runs on 16-channel blocks instead (nk_depthwise.c); the
 *   plane-at-a-time loop here serves depth multipliers and builds without AVX-512.
 * Each thread owns a slab of output pixels (or of output channels when the image is small),
 * so the bias add and the fused epilogue run on data still in that thread's cache.
 */
#include "nk.h"

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

/* The activation over n stored values (the paths that do not clamp in registers). */
static void clamp_plane(float *y, int64_t n, const nk_clamp *clamp) {
    if (clamp)
        for (int64_t i = 0; i < n; i++) y[i] = nk_clampf(y[i], clamp);
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

/* Copy a plane into `buf` with `pad` on each side already zeroed (or filled by the caller):
 * rows of width PW, the plane's pixel (y, x) at buf[(y + pt) * PW + x + pl]. */
void nk_pad_plane(const float *x, int64_t H, int64_t W, int64_t pt, int64_t pl, int64_t PH,
                  int64_t PW, float fill, float *buf) {
    for (int64_t row = 0; row < PH; row++) {
        float *dst = buf + row * PW;
        int64_t y = row - pt;
        if (y < 0 || y >= H) {
            for (int64_t j = 0; j < PW; j++) dst[j] = fill;
            continue;
        }
        /* Columns [pl, pl + W) hold the row (clipped to the buffer); fill the rest. */
        int64_t c0 = pl < 0 ? 0 : (pl > PW ? PW : pl);
        int64_t c1 = pl + W < PW ? pl + W : PW;
        for (int64_t j = 0; j < c0; j++) dst[j] = fill;
        if (c1 > c0) memcpy(dst + c0, x + y * W + (c0 - pl), (size_t)(c1 - c0) * sizeof(float));
        for (int64_t j = c1 > c0 ? c1 : c0; j < PW; j++) dst[j] = fill;
    }
}

/* 3x3 undilated depthwise plane through a zero-padded copy: no bounds checks in the taps, and
 * the output row loop vectorises (stride 1: plain loads; stride 2: even lanes). */
static int conv3x3_plane(const nk_conv *d, const float *x, const float *w, float b, float *y,
                         const nk_clamp *clamp) {
    const int64_t OH = d->OH, OW = d->OW, SH = d->SH, SW = d->SW;
    const int64_t PH = (OH - 1) * SH + 3, PW = (OW - 1) * SW + 3;
    float buf[16384 + 64];
    if (PH * PW > 16384) return 0;
    nk_pad_plane(x, d->H, d->W, d->PT, d->PL, PH, PW, 0.0f, buf);
    const float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4], w5 = w[5], w6 = w[6],
                w7 = w[7], w8 = w[8];
    for (int64_t oy = 0; oy < OH; oy++) {
        const float *r0 = buf + oy * SH * PW, *r1 = r0 + PW, *r2 = r1 + PW;
        float *o = y + oy * OW;
        if (SW == 1) {
            for (int64_t ox = 0; ox < OW; ox++)
                o[ox] = b + w0 * r0[ox] + w1 * r0[ox + 1] + w2 * r0[ox + 2] + w3 * r1[ox] +
                        w4 * r1[ox + 1] + w5 * r1[ox + 2] + w6 * r2[ox] + w7 * r2[ox + 1] +
                        w8 * r2[ox + 2];
        } else if (SW == 2) {
            /* Split each padded row into even and odd columns so every tap is a unit-stride
             * load: tap kx reads column 2*ox + kx = even[ox + kx/2] or odd[ox]. */
            float e0[1024], o0[1024], e1[1024], o1[1024], e2[1024], o2[1024];
            const int64_t half = (PW + 1) / 2;
            if (half > 1024) return 0;
            for (int64_t j = 0; j < half; j++) {
                e0[j] = r0[2 * j];
                e1[j] = r1[2 * j];
                e2[j] = r2[2 * j];
                o0[j] = 2 * j + 1 < PW ? r0[2 * j + 1] : 0.0f;
                o1[j] = 2 * j + 1 < PW ? r1[2 * j + 1] : 0.0f;
                o2[j] = 2 * j + 1 < PW ? r2[2 * j + 1] : 0.0f;
            }
            for (int64_t ox = 0; ox < OW; ox++)
                o[ox] = b + w0 * e0[ox] + w1 * o0[ox] + w2 * e0[ox + 1] + w3 * e1[ox] +
                        w4 * o1[ox] + w5 * e1[ox + 1] + w6 * e2[ox] + w7 * o2[ox] + w8 * e2[ox + 1];
        } else {
            for (int64_t ox = 0; ox < OW; ox++) {
                int64_t i = ox * SW;
                o[ox] = b + w0 * r0[i] + w1 * r0[i + 1] + w2 * r0[i + 2] + w3 * r1[i] +
                        w4 * r1[i + 1] + w5 * r1[i + 2] + w6 * r2[i] + w7 * r2[i + 1] +
                        w8 * r2[i + 2];
            }
        }
    }
    clamp_plane(y, OH * OW, clamp);
    return 1;
}

typedef struct {
    const nk_conv *d;
    const float *x, *w, *bias;
    float *y, *work;
    nk_epilogue ep;
    const void *const *ep_args;
    const nk_clamp *clamp;
    /* per group */
    const float *xg, *wg;
    int64_t n, mbase, tile, mblock;
} conv_job;

static void per_channel_task(void *ctx, int64_t i0, int64_t i1) {
    const conv_job *j = (const conv_job *)ctx;
    const nk_conv *d = j->d;
    const int64_t P = d->OH * d->OW, mult = d->O / d->G, ksz = d->KH * d->KW;
    const int fast3x3 = d->KH == 3 && d->KW == 3 && d->DH == 1 && d->DW == 1;
    /* The epilogue runs once per run of planes of one image, up to ~64 KiB of output (still
     * in cache): small planes (7x7, 14x14) would otherwise pay a call per plane. */
    const int64_t batch = P >= 16384 ? 1 : 16384 / P;
    int64_t pending = i0; /* first plane whose epilogue has not run */
    for (int64_t i = i0; i < i1; i++) {
        int64_t n = i / d->O, o = i % d->O, c = o / mult;
        const float *plane = j->x + (n * d->C + c) * d->H * d->W;
        float b = j->bias ? j->bias[o] : 0.0f;
        if (!(fast3x3 && conv3x3_plane(d, plane, j->w + o * ksz, b, j->y + i * P, j->clamp))) {
            conv_plane(d, plane, j->w + o * ksz, b, j->y + i * P);
            clamp_plane(j->y + i * P, P, j->clamp);
        }
        if (j->ep && (i + 1 == i1 || (i + 1) % d->O == 0 || i + 1 - pending >= batch)) {
            j->ep(j->ep_args, 1, n, pending - n * d->O, o + 1, 0, P);
            pending = i + 1;
        }
    }
}

static void conv_per_channel(int nt, conv_job *j) {
    const nk_conv *d = j->d;
    const int64_t planes = d->N * d->O, work = d->OH * d->OW * d->KH * d->KW;
    if (planes * work < 32768) nt = 1;
    int64_t grain = planes / (4 * (int64_t)(nt > 0 ? nt : 1));
    nk_parallel_for(nt, planes, grain > 0 ? grain : 1, per_channel_task, j);
}

/* Pixel tiles [q0, q1) of one group: im2col into the tile's own part of the workspace, GEMM,
 * bias and epilogue while the tile is still in cache. */
static void pixel_tile_task(void *ctx, int64_t t0, int64_t t1) {
    const conv_job *j = (const conv_job *)ctx;
    const nk_conv *d = j->d;
    const int64_t Og = d->O / d->G, K = (d->C / d->G) * d->KH * d->KW, P = d->OH * d->OW;
    float *yg = j->y + (j->n * d->O + j->mbase) * P;
    for (int64_t t = t0; t < t1; t++) {
        int64_t q0 = t * j->tile, q1 = q0 + j->tile < P ? q0 + j->tile : P;
        const float *bm = j->xg + q0;
        int64_t ldb = P;
        if (!is_pointwise(d)) {
            float *col = j->work + K * q0;
            im2col(d, j->xg, 0, K, q0, q1, col);
            bm = col;
            ldb = q1 - q0;
        }
        nk_sgemm_st(0, 0, Og, q1 - q0, K, 1.0f, j->wg, K, bm, ldb, yg + q0, P);
        add_bias(j->bias, j->y + j->n * d->O * P, P, j->mbase, j->mbase + Og, q0, q1);
        if (j->clamp)
            for (int64_t m = 0; m < Og; m++) clamp_plane(yg + m * P + q0, q1 - q0, j->clamp);
        if (j->ep) j->ep(j->ep_args, 1, j->n, j->mbase, j->mbase + Og, q0, q1);
    }
}

/* Rows [k0, k1) of the whole group's im2col matrix (few pixels: channels split instead). */
static void im2col_task(void *ctx, int64_t k0, int64_t k1) {
    const conv_job *j = (const conv_job *)ctx;
    im2col(j->d, j->xg, k0, k1, 0, j->d->OH * j->d->OW, j->work);
}

/* Output-channel blocks of one group over all its pixels. */
static void channel_block_task(void *ctx, int64_t b0, int64_t b1) {
    const conv_job *j = (const conv_job *)ctx;
    const nk_conv *d = j->d;
    const int64_t Og = d->O / d->G, K = (d->C / d->G) * d->KH * d->KW, P = d->OH * d->OW;
    const float *bm = is_pointwise(d) ? j->xg : j->work;
    float *yg = j->y + (j->n * d->O + j->mbase) * P;
    int64_t m0 = b0 * j->mblock, m1 = b1 * j->mblock < Og ? b1 * j->mblock : Og;
    if (m1 <= m0) return;
    nk_sgemm_st(0, 0, m1 - m0, P, K, 1.0f, j->wg + m0 * K, K, bm, P, yg + m0 * P, P);
    add_bias(j->bias, j->y + j->n * d->O * P, P, j->mbase + m0, j->mbase + m1, 0, P);
    clamp_plane(yg + m0 * P, (m1 - m0) * P, j->clamp);
    if (j->ep) j->ep(j->ep_args, 1, j->n, j->mbase + m0, j->mbase + m1, 0, P);
}

void nk_conv2d(int nt, const nk_conv *d, const float *x, const float *w, const float *bias,
               float *y, float *work, nk_epilogue ep, const void *const *ep_args,
               const nk_clamp *clamp) {
    conv_job j = {d, x, w, bias, y, work, ep, ep_args, clamp, NULL, NULL, 0, 0, 0, 0};
    if (is_per_channel(d)) {
        if (nk_depthwise_blocked(nt, d, x, w, bias, y, ep, ep_args, clamp)) return;
        conv_per_channel(nt, &j);
        return;
    }
    const int64_t G = d->G, Cg = d->C / G, Og = d->O / G, K = Cg * d->KH * d->KW;
    const int64_t P = d->OH * d->OW, HW = d->H * d->W;
    if (nt < 1 || 2.0 * (double)Og * (double)P * (double)K < 262144.0) nt = 1;
    /* Tiles: small enough for the tile's output and columns to stay in cache, and at least
     * two per thread when the image allows. */
    int64_t tile = (64 * 1024) / (Og > K ? Og : K);
    int64_t per_thread = (P + 2 * nt - 1) / (2 * nt);
    if (nt > 1 && tile > per_thread) tile = per_thread;
    tile = tile < 64 ? 64 : (tile + 15) / 16 * 16;
    const int split_pixels = nt == 1 || P >= 2 * 64 * (int64_t)nt || Og < 16 * (int64_t)nt;
    for (int64_t n = 0; n < d->N; n++) {
        for (int64_t g = 0; g < G; g++) {
            j.xg = x + (n * d->C + g * Cg) * HW;
            j.wg = w + g * Og * K;
            j.n = n;
            j.mbase = g * Og;
            if (split_pixels) {
                j.tile = tile;
                nk_parallel_for(nt, (P + tile - 1) / tile, 1, pixel_tile_task, &j);
            } else {
                if (!is_pointwise(d))
                    nk_parallel_for(nt, K, (K + 4 * nt - 1) / (4 * nt), im2col_task, &j);
                int64_t blocks = 2 * (int64_t)nt;
                j.mblock = ((Og + blocks - 1) / blocks + 3) / 4 * 4;
                nk_parallel_for(nt, (Og + j.mblock - 1) / j.mblock, 1, channel_block_task, &j);
            }
        }
    }
}
