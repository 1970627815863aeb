/* Branch-free float maths that the compiler can vectorise (libm's expf/tanhf/erff are calls
 * that stop a loop from vectorising). Accuracy, checked against float64 by the unit tests:
 * nk_expf <= 2 ulp, nk_tanhf and nk_erff <= 3e-7 relative or 1e-7 absolute. NaN propagates;
 * overflow gives inf and underflow 0 or a denormal, as libm does.
 */
#ifndef NK_MATH_H
#define NK_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float nk_bits_to_float(int32_t i) {
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}

/* e^x: x = k ln2 + r with |r| <= ln2/2, e^r by a degree-6 polynomial (Cephes expf
 * coefficients), then 2^k applied as two halves so that k in [-150, 128] never overflows the
 * exponent field before the final multiply. */
static inline float nk_expf(float x) {
    float xc = x < -104.0f ? -104.0f : (x > 89.0f ? 89.0f : x);
    float k = floorf(xc * 1.44269504088896341f + 0.5f);
    float r = xc - k * 0.693359375f;
    r = r + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t ki = (int32_t)k;
    int32_t k1 = ki / 2, k2 = ki - k1;
    float s1 = nk_bits_to_float((k1 + 127) << 23), s2 = nk_bits_to_float((k2 + 127) << 23);
    float res = p * s1 * s2;
    return x != x ? x : res;
}

static inline float nk_sigmoidf(float x) { return 1.0f / (1.0f + nk_expf(-x)); }

/* tanh: odd polynomial for |x| < 0.625 (Cephes tanhf), 1 - 2 / (e^{2|x|} + 1) beyond. */
static inline float nk_tanhf(float x) {
    float a = fabsf(x);
    float z = x * x;
    float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z +
                    1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
    float e = nk_expf(2.0f * (a < 20.0f ? a : 20.0f));
    float big = 1.0f - 2.0f / (e + 1.0f);
    big = x < 0.0f ? -big : big;
    return a < 0.625f ? small : big;
}

/* erf: x P(x^2) for |x| < 1; 1 - e^{-x^2} Q(x) on [1, 4) (Q fitted to erfcx in t = (x - 2.5)
 * / 1.5); 1 beyond 4 where erfc is below half an ulp of 1. Coefficients fitted by nerve
 * (relative least squares on Chebyshev nodes against float64 erf). */
static inline float nk_erff(float x) {
    float a = fabsf(x);
    float z = x * x;
    float p = 7.89745004655135e-05f;
    p = p * z - 8.024113094709517e-04f;
    p = p * z + 5.190024246772243e-03f;
    p = p * z - 2.6854791467454314e-02f;
    p = p * z + 1.12836119486909e-01f;
    p = p * z - 3.7612628786492797e-01f;
    p = p * z + 1.1283791664917295f;
    float small = x * p;
    float t = (a - 2.5f) * (1.0f / 1.5f);
    float q = 8.639155224328232e-05f;
    q = q * t - 2.4351201712978499e-04f;
    q = q * t + 3.925597818729039e-04f;
    q = q * t - 9.199903184185024e-04f;
    q = q * t + 2.4046569543268535e-03f;
    q = q * t - 5.608494407406276e-03f;
    q = q * t + 1.2491442743230613e-02f;
    q = q * t - 2.6998679721613975e-02f;
    q = q * t + 5.611006180694242e-02f;
    q = q * t - 1.1152133686647311e-01f;
    q = q * t + 2.108063746397007e-01f;
    float big = 1.0f - q * nk_expf(-(a < 4.0f ? z : 16.0f));
    big = a >= 4.0f ? 1.0f : big;
    big = x < 0.0f ? -big : big;
    return a < 1.0f ? small : (x != x ? x : big);
}

/* NaN-propagating max/min (numpy semantics; fmaxf would drop the NaN). Written as two
 * selects, not `a > b || a != a`: the short-circuit stops gcc from vectorising a loop that
 * nests them (as Clip does). */
static inline float nk_maxf(float a, float b) {
    float m = a > b ? a : b;
    return a != a ? a : m;
}
static inline float nk_minf(float a, float b) {
    float m = a < b ? a : b;
    return a != a ? a : m;
}

/* Row reductions with 16 independent partial results: without -ffast-math the compiler may
 * not reorder a float sum, so a plain `s += x[j]` loop runs one add per 4 cycles; sixteen
 * lanes vectorise (and round no worse). */
static inline float nk_sum(const float *x, int64_t n) {
    float acc[16] = {0};
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
        for (int k = 0; k < 16; k++) acc[k] += x[j + k];
    float s = 0.0f;
    for (int k = 0; k < 16; k++) s += acc[k];
    for (; j < n; j++) s += x[j];
    return s;
}

/* sum((x - c)^2) */
static inline float nk_sum_sq_dev(const float *x, int64_t n, float c) {
    float acc[16] = {0};
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
        for (int k = 0; k < 16; k++) {
            float d = x[j + k] - c;
            acc[k] += d * d;
        }
    float s = 0.0f;
    for (int k = 0; k < 16; k++) s += acc[k];
    for (; j < n; j++) s += (x[j] - c) * (x[j] - c);
    return s;
}

static inline float nk_max(const float *x, int64_t n) {
    float acc[16];
    for (int k = 0; k < 16; k++) acc[k] = -INFINITY;
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
        for (int k = 0; k < 16; k++) acc[k] = nk_maxf(x[j + k], acc[k]);
    float m = -INFINITY;
    for (int k = 0; k < 16; k++) m = nk_maxf(acc[k], m);
    for (; j < n; j++) m = nk_maxf(x[j], m);
    return m;
}

/* sum(exp(x - c)) */
static inline float nk_sum_exp(const float *x, int64_t n, float c) {
    float acc[16] = {0};
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
        for (int k = 0; k < 16; k++) acc[k] += nk_expf(x[j + k] - c);
    float s = 0.0f;
    for (int k = 0; k < 16; k++) s += acc[k];
    for (; j < n; j++) s += nk_expf(x[j] - c);
    return s;
}

/* y = exp(x - c); returns sum(y). y may be x. */
static inline float nk_exp_sum(const float *x, float *y, int64_t n, float c) {
    float acc[16] = {0};
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
        for (int k = 0; k < 16; k++) {
            float e = nk_expf(x[j + k] - c);
            y[j + k] = e;
            acc[k] += e;
        }
    float s = 0.0f;
    for (int k = 0; k < 16; k++) s += acc[k];
    for (; j < n; j++) {
        float e = nk_expf(x[j] - c);
        y[j] = e;
        s += e;
    }
    return s;
}

#endif /* NK_MATH_H */
