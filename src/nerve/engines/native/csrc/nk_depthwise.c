/* Depthwise convolution (one input and one output channel per group) over blocks of 16
 * channels, as in an NCHWc kernel, for an NCHW graph.
 *
 * Why: a plane-at-a-time kernel puts pixels in the vector lanes, so a 7x7 or 14x14 plane
 * fills its vectors badly (a 7-pixel row is 7 of 16 lanes), every plane pays its own edge
 * masks and set-up, and a stride-2 tap needs a lane permute. Here the lanes hold 16 channels
 * of one pixel: every tap of every output pixel is one full-width multiply-add, for any map
 * size, stride or dilation, with no masks inside the loop.
 *
 * A unit is one image, one block of 16 channels and a band of output rows:
 *   1. the band's input rows are transposed into a zero-padded pixel-major tile,
 *      tile[row][col][16] (16x16 register transposes over runs of the flattened plane);
 *   2. the taps run over the tile (3x3 stride 1 and 2 keep the nine weight vectors in
 *      registers and compute four neighbouring outputs at a time, sharing their loads);
 *   3. the band's outputs, out[pixel][16], are clamped and transposed back into the 16 NCHW
 *      planes, and the fused epilogue runs on them while they are in cache.
 * Both transposes stay in L1/L2: bands are sized so the tile and the outputs fit
 * DW_BUDGET floats.
 */
#include "nk.h"

#if defined(__AVX512F__)
#include <immintrin.h>

#define DW_CB 16          /* channels per block: one vector */
#define DW_BUDGET 49152   /* floats of tile + outputs per unit (192 KiB, within L2) */

typedef struct {
    const nk_conv *d;
    const float *x, *w, *bias;
    float *y;
    nk_epilogue ep;
    const void *const *ep_args;
    const nk_clamp *clamp;
    int64_t cblocks, bands, band_rows;
    int64_t TW; /* tile columns: input columns -PL .. TW - 1 - PL */
} dw_job;

/* Step 1: tile rows for input rows iy0 + r (r < TH), channels c[0..cn) of planes `x`
 * (plane stride HW). Rows and columns outside the plane are zeros. */
static void fill_tile(const nk_conv *d, const float *x, int cn, int64_t iy0, int64_t TH,
                      int64_t TW, float *tile) {
    const int64_t H = d->H, W = d->W, HW = H * W, PL = d->PL;
    const __m512 zero = _mm512_setzero_ps();
    const int64_t ya = iy0 < 0 ? 0 : iy0, yb = iy0 + TH < H ? iy0 + TH : H;
    const int64_t cols = W < TW - PL ? W : TW - PL; /* plane columns the tile holds */
    for (int64_t r = 0; r < TH; r++) {
        float *row = tile + r * TW * DW_CB;
        const int64_t iy = iy0 + r;
        if (iy < ya || iy >= yb) {
            for (int64_t c = 0; c < TW; c++) _mm512_store_ps(row + c * DW_CB, zero);
            continue;
        }
        for (int64_t c = 0; c < PL && c < TW; c++) _mm512_store_ps(row + c * DW_CB, zero);
        for (int64_t c = PL + (cols > 0 ? cols : 0); c < TW; c++)
            _mm512_store_ps(row + c * DW_CB, zero);
    }
    if (yb <= ya || cols <= 0) return;
    __m512 v[16];
    if (cols >= 16) {
        /* Rows of at least a vector: runs of 16 pixels within a row, the last run of each row
         * overlapping its neighbour (no masks, no per-pixel checks). */
        for (int64_t iy = ya; iy < yb; iy++) {
            float *dst = tile + ((iy - iy0) * TW + PL) * DW_CB;
            const float *src = x + iy * W;
            for (int64_t x0 = 0; x0 < cols; x0 += 16) {
                if (x0 + 16 > cols) x0 = cols - 16;
                for (int c = 0; c < 16; c++) /* a last, partial block: no reads past it */
                    v[c] = c < cn ? _mm512_loadu_ps(src + c * HW + x0) : zero;
                nk_transpose16(v);
                for (int i = 0; i < 16; i++) _mm512_store_ps(dst + (x0 + i) * DW_CB, v[i]);
            }
        }
        return;
    }
    /* Narrow rows (7x7, 14x14 planes): runs of 16 pixels of the flattened rows [ya, yb), each
     * pixel stored at its tile position (a run spans rows, so no transpose lane is wasted). */
    const int64_t p0 = ya * W, p1 = yb * W;
    for (int64_t p = p0; p < p1; p += 16) {
        const int64_t n = p1 - p < 16 ? p1 - p : 16;
        const __mmask16 m = (__mmask16)nk_tail_mask(n);
        for (int c = 0; c < 16; c++)
            v[c] = c < cn ? _mm512_maskz_loadu_ps(m, x + c * HW + p) : zero;
        nk_transpose16(v);
        int64_t iy = p / W, ix = p % W;
        for (int64_t i = 0; i < n; i++) {
            if (ix < cols) _mm512_store_ps(tile + ((iy - iy0) * TW + PL + ix) * DW_CB, v[i]);
            if (++ix == W) {
                ix = 0;
                iy++;
            }
        }
    }
}

/* Step 2 for 3x3 taps, dilation 1, stride S: output rows [0, rows) of the band from the tile. */
#define DW3X3(S)                                                                                  \
    static void taps3x3_s##S(const float *tile, int64_t TW, int64_t rows, int64_t OW,           \
                             const __m512 wv[9], __m512 bv, float *out) {                         \
        for (int64_t oy = 0; oy < rows; oy++) {                                                   \
            const float *t0 = tile + oy * S * TW * DW_CB;                                         \
            float *o = out + oy * OW * DW_CB;                                                     \
            int64_t ox = 0;                                                                       \
            for (; ox + 4 <= OW; ox += 4) {                                                       \
                __m512 a0 = bv, a1 = bv, a2 = bv, a3 = bv;                                        \
                _Pragma("GCC unroll 3") for (int ky = 0; ky < 3; ky++) {                          \
                    const float *s = t0 + (ky * TW + ox * S) * DW_CB;                             \
                    _Pragma("GCC unroll 3") for (int kx = 0; kx < 3; kx++) {                      \
                        a0 = _mm512_fmadd_ps(wv[ky * 3 + kx],                                     \
                                             _mm512_load_ps(s + (0 * S + kx) * DW_CB), a0);       \
                        a1 = _mm512_fmadd_ps(wv[ky * 3 + kx],                                     \
                                             _mm512_load_ps(s + (1 * S + kx) * DW_CB), a1);       \
                        a2 = _mm512_fmadd_ps(wv[ky * 3 + kx],                                     \
                                             _mm512_load_ps(s + (2 * S + kx) * DW_CB), a2);       \
                        a3 = _mm512_fmadd_ps(wv[ky * 3 + kx],                                     \
                                             _mm512_load_ps(s + (3 * S + kx) * DW_CB), a3);       \
                    }                                                                             \
                }                                                                                 \
                _mm512_store_ps(o + (ox + 0) * DW_CB, a0);                                        \
                _mm512_store_ps(o + (ox + 1) * DW_CB, a1);                                        \
                _mm512_store_ps(o + (ox + 2) * DW_CB, a2);                                        \
                _mm512_store_ps(o + (ox + 3) * DW_CB, a3);                                        \
            }                                                                                     \
            for (; ox < OW; ox++) {                                                               \
                __m512 a = bv;                                                                    \
                for (int ky = 0; ky < 3; ky++)                                                    \
                    for (int kx = 0; kx < 3; kx++)                                                \
                        a = _mm512_fmadd_ps(                                                      \
                            wv[ky * 3 + kx],                                                      \
                            _mm512_load_ps(t0 + (ky * TW + ox * S + kx) * DW_CB), a);             \
                _mm512_store_ps(o + ox * DW_CB, a);                                               \
            }                                                                                     \
        }                                                                                         \
    }
DW3X3(1)
DW3X3(2)

/* Step 2 for any kernel, stride and dilation: weight vectors read per tap. */
static void taps_general(const nk_conv *d, const float *tile, int64_t TW, int64_t rows,
                         const float *wt, __m512 bv, float *out) {
    const int64_t OW = d->OW, KH = d->KH, KW = d->KW;
    for (int64_t oy = 0; oy < rows; oy++) {
        for (int64_t ox = 0; ox < OW; ox++) {
            __m512 a = bv;
            for (int64_t ky = 0; ky < KH; ky++) {
                const float *s = tile + ((oy * d->SH + ky * d->DH) * TW + ox * d->SW) * DW_CB;
                for (int64_t kx = 0; kx < KW; kx++)
                    a = _mm512_fmadd_ps(_mm512_load_ps(wt + (ky * KW + kx) * DW_CB),
                                        _mm512_load_ps(s + kx * d->DW * DW_CB), a);
            }
            _mm512_store_ps(out + (oy * OW + ox) * DW_CB, a);
        }
    }
}

/* Step 3: outputs out[pixel][16] of flat pixels [p0, p1) (clamped) into planes y (stride P). */
static void drain_out(const float *out, int64_t p0, int64_t p1, int cn, int64_t P, float *y,
                      const nk_clamp *clamp) {
    const __m512 lo = _mm512_set1_ps(clamp ? clamp->lo : 0.0f);
    const __m512 hi = _mm512_set1_ps(clamp ? clamp->hi : 0.0f);
    __m512 v[16];
    for (int64_t p = p0; p < p1; p += 16) {
        const int64_t n = p1 - p < 16 ? p1 - p : 16;
        for (int64_t i = 0; i < 16; i++) {
            v[i] = i < n ? _mm512_load_ps(out + (p - p0 + i) * DW_CB) : _mm512_setzero_ps();
            if (clamp) v[i] = _mm512_min_ps(hi, _mm512_max_ps(lo, v[i])); /* NaN kept */
        }
        nk_transpose16(v);
        const __mmask16 m = (__mmask16)nk_tail_mask(n);
        for (int c = 0; c < cn; c++) _mm512_mask_storeu_ps(y + c * P + p, m, v[c]);
    }
}

static void dw_task(void *ctx, int64_t u0, int64_t u1) {
    const dw_job *j = (const dw_job *)ctx;
    const nk_conv *d = j->d;
    const int64_t C = d->C, HW = d->H * d->W, OW = d->OW, P = d->OH * OW, TW = j->TW;
    const int64_t KH = d->KH, KW = d->KW, taps = KH * KW;
    const int64_t TH_max = (j->band_rows - 1) * d->SH + (KH - 1) * d->DH + 1;
    float *tile = (float *)nk_thread_buffer(
        NK_BUF_DEPTHWISE, (size_t)(TH_max * TW + j->band_rows * OW + taps) * DW_CB * sizeof(float));
    if (!tile) return; /* out of memory */
    float *out = tile + TH_max * TW * DW_CB, *wt = out + j->band_rows * OW * DW_CB;
    const int fast = KH == 3 && KW == 3 && d->DH == 1 && d->DW == 1 && d->SH == d->SW &&
                     (d->SH == 1 || d->SH == 2);
    int64_t loaded = -1; /* channel block whose weights are in wt */
    for (int64_t u = u0; u < u1; u++) {
        /* Channel blocks innermost: a thread's contiguous share of units is a band of rows
         * of every channel, the pixels the convs before and after give it (nk_threads.c). */
        const int64_t cb = u % j->cblocks, band = (u / j->cblocks) % j->bands;
        const int64_t n = u / (j->bands * j->cblocks), c0 = cb * DW_CB;
        const int cn = (int)(C - c0 < DW_CB ? C - c0 : DW_CB);
        const int64_t oy0 = band * j->band_rows;
        const int64_t oy1 = oy0 + j->band_rows < d->OH ? oy0 + j->band_rows : d->OH;
        if (oy0 >= oy1) continue;
        if (loaded != cb) { /* weights as one 16-channel vector per tap */
            for (int64_t t = 0; t < taps; t++)
                for (int c = 0; c < DW_CB; c++)
                    wt[t * DW_CB + c] = c < cn ? j->w[(c0 + c) * taps + t] : 0.0f;
            loaded = cb;
        }
        __m512 bv = _mm512_setzero_ps();
        if (j->bias) bv = _mm512_maskz_loadu_ps((__mmask16)nk_tail_mask(cn), j->bias + c0);
        const int64_t rows = oy1 - oy0, TH = (rows - 1) * d->SH + (KH - 1) * d->DH + 1;
        fill_tile(d, j->x + (n * C + c0) * HW, cn, oy0 * d->SH - d->PT, TH, TW, tile);
        if (fast) {
            __m512 wv[9];
            for (int t = 0; t < 9; t++) wv[t] = _mm512_load_ps(wt + t * DW_CB);
            if (d->SH == 1)
                taps3x3_s1(tile, TW, rows, OW, wv, bv, out);
            else
                taps3x3_s2(tile, TW, rows, OW, wv, bv, out);
        } else {
            taps_general(d, tile, TW, rows, wt, bv, out);
        }
        drain_out(out, oy0 * OW, oy1 * OW, cn, P, j->y + (n * C + c0) * P, j->clamp);
        if (j->ep) j->ep(j->ep_args, 1, n, c0, c0 + cn, oy0 * OW, oy1 * OW);
    }
}

int nk_depthwise_blocked(int nt, const nk_conv *d, const float *x, const float *w,
                         const float *bias, float *y, nk_epilogue ep, const void *const *ep_args,
                         const nk_clamp *clamp) {
    if (d->G != d->C || d->O != d->C || d->OH <= 0 || d->OW <= 0 || d->C <= 0) return 0;
    const int64_t TW = (d->OW - 1) * d->SW + (d->KW - 1) * d->DW + 1;
    /* Floats a band of r output rows needs: its tile rows and its outputs. */
    const int64_t per_row = (d->SH * TW + d->OW) * DW_CB;
    const int64_t fixed = ((d->KH - 1) * d->DH + 1 - d->SH) * TW * DW_CB;
    int64_t band_rows = (DW_BUDGET - fixed) / per_row;
    if (band_rows < 1) band_rows = 1;
    if (fixed + band_rows * per_row > 16 * DW_BUDGET) return 0; /* rows too wide: planes */
    if (nt < 1 || d->N * d->C * d->OH * d->OW * d->KH * d->KW < 32768) nt = 1;
    /* Bands: a multiple of the thread count where the rows allow, so each thread's share is
     * whole bands (a spatial split, like the pixel-split convs around it). */
    int64_t bands = (d->OH + band_rows - 1) / band_rows;
    if (nt > 1 && d->OH >= nt) bands = (bands + nt - 1) / nt * nt;
    band_rows = (d->OH + bands - 1) / bands;
    bands = (d->OH + band_rows - 1) / band_rows;
    dw_job j = {d, x, w, bias, y, ep, ep_args, clamp, (d->C + DW_CB - 1) / DW_CB, bands,
                band_rows, TW};
    const int64_t units = d->N * j.cblocks * bands;
    nk_parallel_for(nt, units, 1, dw_task, &j);
    return 1;
}
#else
int nk_depthwise_blocked(int nt, const nk_conv *d, const float *x, const float *w,
                         const float *bias, float *y, nk_epilogue ep, const void *const *ep_args,
                         const nk_clamp *clamp) {
    (void)nt, (void)d, (void)x, (void)w, (void)bias, (void)y, (void)ep, (void)ep_args,
        (void)clamp;
    return 0; /* the plane-at-a-time kernel in nk_conv.c runs instead */
}
#endif
