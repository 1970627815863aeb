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

typedef struct {
    int ndim, inner_dims;
    const int64_t *shape, *dst_strides, *src_strides;
    int64_t elem;
    char *dst;
    const char *src;
} copy_job;

static void copy_task(void *ctx, int64_t o0, int64_t o1) {
    const copy_job *j = (const copy_job *)ctx;
    const int nd = j->ndim;
    for (int64_t o = o0; o < o1; o++) {
        int64_t rem = o, doff = 0, soff = 0;
        for (int d = nd - j->inner_dims - 1; d >= 0; d--) {
            int64_t i = rem % j->shape[d];
            rem /= j->shape[d];
            doff += i * j->dst_strides[d];
            soff += i * j->src_strides[d];
        }
        if (j->inner_dims == 2) {
            copy_tile2d(j->shape[nd - 2], j->shape[nd - 1], j->dst_strides[nd - 2],
                        j->dst_strides[nd - 1], j->src_strides[nd - 2], j->src_strides[nd - 1],
                        j->elem, j->dst + doff * j->elem, j->src + soff * j->elem);
        } else {
            copy_row(j->shape[nd - 1], j->dst_strides[nd - 1], j->src_strides[nd - 1], j->elem,
                     j->dst + doff * j->elem, j->src + soff * j->elem);
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
    copy_job j = {ndim, inner_dims, shape, dst_strides, src_strides, elem, dst, src};
    int64_t row_bytes = shape[ndim - 1] * (tiled ? shape[ndim - 2] : 1) * elem;
    int64_t grain = 262144 / (row_bytes > 0 ? row_bytes : 1);
    nk_parallel_for(nt, outer, grain < 1 ? 1 : grain, copy_task, &j);
}

typedef struct {
    int64_t nidx, axis_len, inner_bytes;
    const void *idx;
    int idx_is_64;
    const char *data;
    char *out;
} gather_job;

static void gather_task(void *ctx, int64_t t0, int64_t t1) {
    const gather_job *j = (const gather_job *)ctx;
    for (int64_t t = t0; t < t1; t++) {
        int64_t o = t / j->nidx, i = t % j->nidx;
        int64_t k = j->idx_is_64 ? ((const int64_t *)j->idx)[i] : ((const int32_t *)j->idx)[i];
        if (k < 0) k += j->axis_len;
        memcpy(j->out + t * j->inner_bytes, j->data + (o * j->axis_len + k) * j->inner_bytes,
               (size_t)j->inner_bytes);
    }
}

int64_t nk_gather(int nt, int64_t outer, int64_t axis_len, int64_t inner_bytes, int64_t nidx,
                  const void *idx, int idx_is_64, const char *data, char *out) {
    /* Validate every index first so that a bad one writes nothing. */
    for (int64_t j = 0; j < nidx; j++) {
        int64_t k = idx_is_64 ? ((const int64_t *)idx)[j] : ((const int32_t *)idx)[j];
        if (k < -axis_len || k >= axis_len) return j + 1;
    }
    gather_job j = {nidx, axis_len, inner_bytes, idx, idx_is_64, data, out};
    int64_t grain = 262144 / (inner_bytes > 0 ? inner_bytes : 1);
    nk_parallel_for(nt, outer * nidx, grain < 1 ? 1 : grain, gather_task, &j);
    return 0;
}
