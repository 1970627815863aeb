/* Softmax / LogSoftmax and LayerNorm / RMSNorm, one row at a time, rows split over threads.
 * Statistics accumulate in float (rows are short: a hidden size or a sequence length) with
 * two passes for the variance, which is what keeps LayerNorm within fp32 tolerance of numpy.
 */
#include "nk.h"
#include "nk_math.h"

static void softmax_row(int log_out, int64_t n, const float *x, float *y) {
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; j++) mx = nk_maxf(mx, x[j]);
    float sum = 0.0f;
    if (log_out) {
        for (int64_t j = 0; j < n; j++) sum += nk_expf(x[j] - mx);
        float lse = mx + logf(sum);
        for (int64_t j = 0; j < n; j++) y[j] = x[j] - lse;
    } else {
        for (int64_t j = 0; j < n; j++) {
            float e = nk_expf(x[j] - mx);
            y[j] = e;
            sum += e;
        }
        float inv = 1.0f / sum;
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

void nk_softmax(int nt, int log_out, int64_t outer, int64_t n, int64_t inner, const float *x,
                float *y) {
    if (n == 0) return;
    if (inner == 1) {
        int par = nt > 1 && outer > 1 && outer * n > 16384;
#pragma omp parallel for num_threads(nt) schedule(static) if (par)
        for (int64_t o = 0; o < outer; o++) softmax_row(log_out, n, x + o * n, y + o * n);
    } else {
        int par = nt > 1 && outer > 1 && outer * n * inner > 16384;
#pragma omp parallel for num_threads(nt) schedule(static) if (par)
        for (int64_t o = 0; o < outer; o++)
            softmax_strided(log_out, n, inner, x + o * n * inner, y + o * n * inner);
    }
}

static void layernorm_row(int rms, int64_t n, float eps, const float *x, const float *scale,
                          const float *bias, float *y, float *mean_out, float *inv_out) {
    float mean = 0.0f;
    if (!rms) {
        float s = 0.0f;
        for (int64_t j = 0; j < n; j++) s += x[j];
        mean = s / (float)n;
    }
    float ss = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        float d = x[j] - mean;
        ss += d * d;
    }
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

void nk_layernorm(int nt, int rms, int64_t rows, int64_t n, float eps, const float *x,
                  const float *scale, const float *bias, float *y, float *mean_out,
                  float *inv_out) {
    int par = nt > 1 && rows > 1 && rows * n > 16384;
#pragma omp parallel for num_threads(nt) schedule(static) if (par)
    for (int64_t r = 0; r < rows; r++)
        layernorm_row(rms, n, eps, x + r * n, scale, bias, y + r * n,
                      mean_out ? mean_out + r : NULL, inv_out ? inv_out + r : NULL);
}
