/* Softmax / LogSoftmax and LayerNorm / RMSNorm, one row at a time, rows split over threads.
 * Statistics accumulate in float (rows are short: a hidden size or a sequence length) with
 * two passes for the variance, which is what keeps LayerNorm within fp32 tolerance of numpy.
 */
#include "nk.h"
#include "nk_math.h"

static void softmax_row(int log_out, int64_t n, const float *x, float *y) {
    float mx = nk_max(x, n);
    if (log_out) {
        float lse = mx + logf(nk_sum_exp(x, n, mx));
        for (int64_t j = 0; j < n; j++) y[j] = x[j] - lse;
    } else {
        float inv = 1.0f / nk_exp_sum(x, y, n, mx);
        for (int64_t j = 0; j < n; j++) y[j] *= inv;
    }
}

/* Softmax over a strided axis: x[j, i] for j in [0, n), the inner index i in blocks of 256
 * so that the running max and sum stay in two small stack arrays. */
static void softmax_strided(int log_out, int64_t n, int64_t inner, const float *x, float *y) {
    float mx[256], sum[256];
    for (int64_t i0 = 0; i0 < inner; i0 += 256) {
        int64_t w = inner - i0 < 256 ? inner - i0 : 256;
        for (int64_t i = 0; i < w; i++) {
            mx[i] = -INFINITY;
            sum[i] = 0.0f;
        }
        for (int64_t j = 0; j < n; j++)
            for (int64_t i = 0; i < w; i++) mx[i] = nk_maxf(mx[i], x[j * inner + i0 + i]);
        for (int64_t j = 0; j < n; j++)
            for (int64_t i = 0; i < w; i++) sum[i] += nk_expf(x[j * inner + i0 + i] - mx[i]);
        for (int64_t j = 0; j < n; j++)
            for (int64_t i = 0; i < w; i++) {
                float v = x[j * inner + i0 + i] - mx[i];
                y[j * inner + i0 + i] = log_out ? v - logf(sum[i]) : nk_expf(v) / sum[i];
            }
    }
}

typedef struct {
    int log_out, rms;
    int64_t n, inner;
    float eps;
    const float *x, *scale, *bias;
    float *y, *mean, *inv;
} norm_job;

static void softmax_task(void *ctx, int64_t o0, int64_t o1) {
    const norm_job *j = (const norm_job *)ctx;
    const int64_t size = j->n * j->inner;
    for (int64_t o = o0; o < o1; o++) {
        if (j->inner == 1)
            softmax_row(j->log_out, j->n, j->x + o * size, j->y + o * size);
        else
            softmax_strided(j->log_out, j->n, j->inner, j->x + o * size, j->y + o * size);
    }
}

/* Chunks of about 16K elements, so threads only join work worth waking them for. */
static int64_t grain_for(int64_t rows, int64_t row_size) {
    int64_t g = 16384 / (row_size > 0 ? row_size : 1);
    return g < 1 ? 1 : (g > rows ? rows : g);
}

void nk_softmax(int nt, int log_out, int64_t outer, int64_t n, int64_t inner, const float *x,
                float *y) {
    if (n == 0) return;
    norm_job j = {log_out, 0, n, inner, 0.0f, x, NULL, NULL, y, NULL, NULL};
    nk_parallel_for(nt, outer, grain_for(outer, n * inner), softmax_task, &j);
}

static void layernorm_row(int rms, int64_t n, float eps, const float *x, const float *scale,
                          const float *bias, float *y, float *mean_out, float *inv_out) {
    float mean = rms ? 0.0f : nk_sum(x, n) / (float)n;
    float ss = nk_sum_sq_dev(x, n, mean);
    float inv = 1.0f / sqrtf(ss / (float)n + eps);
    if (mean_out) *mean_out = mean;
    if (inv_out) *inv_out = inv;
    if (scale && bias) {
        for (int64_t j = 0; j < n; j++) y[j] = (x[j] - mean) * inv * scale[j] + bias[j];
    } else if (scale) {
        for (int64_t j = 0; j < n; j++) y[j] = (x[j] - mean) * inv * scale[j];
    } else {
        for (int64_t j = 0; j < n; j++) y[j] = (x[j] - mean) * inv;
    }
}

static void layernorm_task(void *ctx, int64_t r0, int64_t r1) {
    const norm_job *j = (const norm_job *)ctx;
    for (int64_t r = r0; r < r1; r++)
        layernorm_row(j->rms, j->n, j->eps, j->x + r * j->n, j->scale, j->bias, j->y + r * j->n,
                      j->mean ? j->mean + r : NULL, j->inv ? j->inv + r : NULL);
}

void nk_layernorm(int nt, int rms, int64_t rows, int64_t n, float eps, const float *x,
                  const float *scale, const float *bias, float *y, float *mean_out,
                  float *inv_out) {
    norm_job j = {0, rms, n, 1, eps, x, scale, bias, y, mean_out, inv_out};
    nk_parallel_for(nt, rows, grain_for(rows, n), layernorm_task, &j);
}
