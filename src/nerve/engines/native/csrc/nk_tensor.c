/* Data movement: strided box copies (Transpose, Slice, Concat, Split, Expand) and Gather.
 *
 * The caller collapses dimensions that are contiguous in both source and destination, so the
 * innermost dimension here is as long as it can be; a contiguous innermost row becomes one
 * memcpy, other rows an element loop specialised by element size.
 */
#include "nk.h"

static void copy_row(int64_t n, int64_t ds, int64_t ss, int64_t elem, char *dst,
                     const char *src) {
    if (ds == 1 && ss == 1) {
        memcpy(dst, src, (size_t)(n * elem));
        return;
    }
    switch (elem) {
    case 4: {
        float *d = (float *)dst;
        const float *s = (const float *)src;
        for (int64_t i = 0; i < n; i++) d[i * ds] = s[i * ss];
        break;
    }
    case 8: {
        int64_t *d = (int64_t *)dst;
        const int64_t *s = (const int64_t *)src;
        for (int64_t i = 0; i < n; i++) d[i * ds] = s[i * ss];
        break;
    }
    case 2: {
        int16_t *d = (int16_t *)dst;
        const int16_t *s = (const int16_t *)src;
        for (int64_t i = 0; i < n; i++) d[i * ds] = s[i * ss];
        break;
    }
    case 1:
        for (int64_t i = 0; i < n; i++) dst[i * ds] = src[i * ss];
        break;
    default:
        for (int64_t i = 0; i < n; i++)
            memcpy(dst + i * ds * elem, src + i * ss * elem, (size_t)elem);
    }
}

/* 2-D tile copy for transposes: both inner dimensions are walked in 32 x 32 blocks so that
 * the strided side stays within a few cache lines. */
static void copy_tile2d(int64_t n0, int64_t n1, int64_t ds0, int64_t ds1, int64_t ss0,
                        int64_t ss1, int64_t elem, char *dst, const char *src) {
    const int64_t B = 32;
    for (int64_t a0 = 0; a0 < n0; a0 += B) {
        int64_t e0 = a0 + B < n0 ? a0 + B : n0;
        for (int64_t a1 = 0; a1 < n1; a1 += B) {
            int64_t e1 = a1 + B < n1 ? a1 + B : n1;
            for (int64_t i = a0; i < e0; i++)
                copy_row(e1 - a1, ds1, ss1, elem, dst + (i * ds0 + a1 * ds1) * elem,
                         src + (i * ss0 + a1 * ss1) * elem);
        }
    }
}

void nk_copy(int nt, int ndim, const int64_t *shape, const int64_t *dst_strides,
             const int64_t *src_strides, int64_t elem, char *dst, const char *src) {
    if (ndim == 0) {
        memcpy(dst, src, (size_t)elem);
        return;
    }
    for (int d = 0; d < ndim; d++)
        if (shape[d] == 0) return;
    /* The last two dimensions form the tile; everything before is the outer index. */
    int tiled = ndim >= 2 && src_strides[ndim - 1] != 1 && dst_strides[ndim - 1] == 1 &&
                shape[ndim - 2] > 1;
    int inner_dims = tiled ? 2 : 1;
    int64_t outer = 1;
    for (int d = 0; d < ndim - inner_dims; d++) outer *= shape[d];
    int64_t total = outer * shape[ndim - 1] * (tiled ? shape[ndim - 2] : 1);
    int par = nt > 1 && outer > 1 && total * elem > 262144;
#pragma omp parallel for num_threads(nt) schedule(static) if (par)
    for (int64_t o = 0; o < outer; o++) {
        int64_t rem = o, doff = 0, soff = 0;
        for (int d = ndim - inner_dims - 1; d >= 0; d--) {
            int64_t i = rem % shape[d];
            rem /= shape[d];
            doff += i * dst_strides[d];
            soff += i * src_strides[d];
        }
        if (tiled) {
            copy_tile2d(shape[ndim - 2], shape[ndim - 1], dst_strides[ndim - 2],
                        dst_strides[ndim - 1], src_strides[ndim - 2], src_strides[ndim - 1], elem,
                        dst + doff * elem, src + soff * elem);
        } else {
            copy_row(shape[ndim - 1], dst_strides[ndim - 1], src_strides[ndim - 1], elem,
                     dst + doff * elem, src + soff * elem);
        }
    }
}

int64_t nk_gather(int nt, int64_t outer, int64_t axis_len, int64_t inner_bytes, int64_t nidx,
                  const void *idx, int idx_is_64, const char *data, char *out) {
    /* Validate every index first so that a bad one writes nothing. */
    for (int64_t j = 0; j < nidx; j++) {
        int64_t k = idx_is_64 ? ((const int64_t *)idx)[j] : ((const int32_t *)idx)[j];
        if (k < -axis_len || k >= axis_len) return j + 1;
    }
    int par = nt > 1 && outer * nidx > 1 && outer * nidx * inner_bytes > 262144;
#pragma omp parallel for num_threads(nt) schedule(static) if (par)
    for (int64_t t = 0; t < outer * nidx; t++) {
        int64_t o = t / nidx, j = t % nidx;
        int64_t k = idx_is_64 ? ((const int64_t *)idx)[j] : ((const int32_t *)idx)[j];
        if (k < 0) k += axis_len;
        memcpy(out + t * inner_bytes, data + (o * axis_len + k) * inner_bytes,
               (size_t)inner_bytes);
    }
    return 0;
}
