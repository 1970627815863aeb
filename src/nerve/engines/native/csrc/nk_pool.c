/* 2-D max and average pooling in NCHW (1-D pooling uses H = KH = 1).
 *
 * Window positions outside the input are skipped. For average pooling the divisor is the
 * number of positions inside the input (count_include_pad = 0) or inside the padded input
 * (count_include_pad = 1); positions that only exist because of ceil_mode never count.
 */
#include <math.h>

#include "nk.h"
#include "nk_math.h"

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

/* Max pooling through a (-inf)-padded copy of the plane: the window taps need no bounds
 * checks and each output row is a vectorisable max over shifted input rows. */
static int maxpool_padded(const nk_pool *d, const float *x, float *y) {
    const int64_t PH = (d->OH - 1) * d->SH + (d->KH - 1) * d->DH + 1;
    const int64_t PW = (d->OW - 1) * d->SW + (d->KW - 1) * d->DW + 1;
    float buf[16384];
    if (PH * PW > 16384) return 0;
    nk_pad_plane(x, d->H, d->W, d->PT, d->PL, PH, PW, -INFINITY, buf);
    for (int64_t oy = 0; oy < d->OH; oy++) {
        float *o = y + oy * d->OW;
        for (int64_t ox = 0; ox < d->OW; ox++) o[ox] = -INFINITY;
        for (int64_t ky = 0; ky < d->KH; ky++) {
            const float *r = buf + (oy * d->SH + ky * d->DH) * PW;
            for (int64_t kx = 0; kx < d->KW; kx++) {
                const float *src = r + kx * d->DW;
                if (d->SW == 1) {
                    for (int64_t ox = 0; ox < d->OW; ox++) o[ox] = nk_maxf(src[ox], o[ox]);
                } else if (d->SW == 2) {
                    for (int64_t ox = 0; ox < d->OW; ox++) o[ox] = nk_maxf(src[2 * ox], o[ox]);
                } else {
                    for (int64_t ox = 0; ox < d->OW; ox++)
                        o[ox] = nk_maxf(src[ox * d->SW], o[ox]);
                }
            }
        }
    }
    return 1;
}

/* Planes are independent: threads take whole planes. */
typedef struct {
    int kind;
    const nk_pool *d;
    const float *x;
    float *y;
} pool_job;

static void pool_task(void *ctx, int64_t i0, int64_t i1) {
    const pool_job *j = (const pool_job *)ctx;
    const nk_pool *d = j->d;
    const int64_t in_plane = d->H * d->W, out_plane = d->OH * d->OW;
    for (int64_t i = i0; i < i1; i++) {
        const float *x = j->x + i * in_plane;
        float *y = j->y + i * out_plane;
        if (j->kind == NK_POOL_MAX && maxpool_padded(d, x, y)) continue;
        pool_plane(j->kind, d, x, y);
    }
}

void nk_pool2d(int nt, int kind, const nk_pool *d, const float *x, float *y) {
    pool_job j = {kind, d, x, y};
    if (d->NC * d->OH * d->OW * d->KH * d->KW < 32768) nt = 1;
    int64_t grain = d->NC / (4 * (int64_t)(nt > 0 ? nt : 1));
    nk_parallel_for(nt, d->NC, grain > 0 ? grain : 1, pool_task, &j);
}
