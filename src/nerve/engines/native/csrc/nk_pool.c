/* 2-D max and average pooling in NCHW (1-D pooling uses H = KH = 1).
 *
 * Window positions outside the input are skipped. For average pooling the divisor is the
 * number of positions inside the input (count_include_pad = 0) or inside the padded input
 * (count_include_pad = 1); positions that only exist because of ceil_mode never count.
 */
#include <math.h>

#include "nk.h"

static void pool_plane(int kind, const nk_pool *d, const float *x, float *y) {
    for (int64_t oy = 0; oy < d->OH; oy++) {
        int64_t y0 = oy * d->SH - d->PT;
        for (int64_t ox = 0; ox < d->OW; ox++) {
            int64_t x0 = ox * d->SW - d->PL;
            float acc = kind == NK_POOL_MAX ? -INFINITY : 0.0f;
            int64_t inside = 0, padded = 0;
            for (int64_t ky = 0; ky < d->KH; ky++) {
                int64_t iy = y0 + ky * d->DH;
                int in_pad_y = iy >= -d->PT && iy < d->H + d->PB;
                for (int64_t kx = 0; kx < d->KW; kx++) {
                    int64_t ix = x0 + kx * d->DW;
                    if (in_pad_y && ix >= -d->PL && ix < d->W + d->PR) padded++;
                    if (iy < 0 || iy >= d->H || ix < 0 || ix >= d->W) continue;
                    float v = x[iy * d->W + ix];
                    inside++;
                    if (kind == NK_POOL_MAX) {
                        /* NaN wins, like numpy's max. */
                        acc = (v > acc || v != v) ? v : acc;
                    } else {
                        acc += v;
                    }
                }
            }
            if (kind == NK_POOL_AVG_EXCLUDE_PAD)
                acc = inside ? acc / (float)inside : 0.0f;
            else if (kind == NK_POOL_AVG_INCLUDE_PAD)
                acc = padded ? acc / (float)padded : 0.0f;
            y[oy * d->OW + ox] = acc;
        }
    }
}

/* Planes are independent: threads take whole planes. */
void nk_pool2d(int nt, int kind, const nk_pool *d, const float *x, float *y) {
    const int64_t in_plane = d->H * d->W, out_plane = d->OH * d->OW;
    int par = nt > 1 && d->NC > 1 && d->NC * out_plane * d->KH * d->KW > 32768;
#pragma omp parallel for num_threads(nt) schedule(static) if (par)
    for (int64_t i = 0; i < d->NC; i++) pool_plane(kind, d, x + i * in_plane, y + i * out_plane);
}
