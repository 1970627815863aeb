/* Reductions over the middle axis of x viewed as [outer, r, inner].
 *
 * The caller merges adjacent reduced axes into r and the kept axes around them into outer and
 * inner. With inner == 1 each output is a contiguous row reduction; otherwise whole rows of
 * length inner are combined, which keeps the inner loop contiguous and vectorisable.
 */
#include "nk.h"
#include "nk_math.h"

static float init_of(int kind) {
    switch (kind) {
    case NK_RED_MAX: return -INFINITY;
    case NK_RED_MIN: return INFINITY;
    case NK_RED_PROD: return 1.0f;
    default: return 0.0f;
    }
}

static inline float step(int kind, float acc, float v) {
    switch (kind) {
    case NK_RED_MAX: return nk_maxf(acc, v);
    case NK_RED_MIN: return nk_minf(acc, v);
    case NK_RED_PROD: return acc * v;
    case NK_RED_SUMSQ:
    case NK_RED_L2: return acc + v * v;
    case NK_RED_L1: return acc + fabsf(v);
    default: return acc + v;
    }
}

static inline float finish(int kind, float acc, int64_t r) {
    switch (kind) {
    case NK_RED_MEAN: return acc / (float)r;
    case NK_RED_L2: return sqrtf(acc);
    case NK_RED_LOGSUM: return logf(acc);
    default: return acc;
    }
}

/* log-sum-exp needs the max first, so it has its own loops. */
static void logsumexp(int64_t r, int64_t inner, const float *x, float *y) {
    for (int64_t i = 0; i < inner; i++) {
        float mx = -INFINITY;
        for (int64_t k = 0; k < r; k++) mx = nk_maxf(mx, x[k * inner + i]);
        if (mx == -INFINITY || mx == INFINITY || mx != mx) {
            /* all -inf: log(0) = -inf; an inf or NaN element decides the result itself. */
            y[i] = mx;
            continue;
        }
        float s = 0.0f;
        for (int64_t k = 0; k < r; k++) s += nk_expf(x[k * inner + i] - mx);
        y[i] = mx + logf(s);
    }
}

static void reduce_block(int kind, int64_t r, int64_t inner, const float *x, float *y) {
    if (kind == NK_RED_LOGSUMEXP) {
        logsumexp(r, inner, x, y);
        return;
    }
    float init = init_of(kind);
    if (inner == 1 && (kind == NK_RED_SUM || kind == NK_RED_MEAN)) {
        y[0] = finish(kind, nk_sum(x, r), r);
        return;
    }
    if (inner == 1 && kind == NK_RED_MAX) {
        y[0] = nk_max(x, r);
        return;
    }
    if (inner == 1) {
        float acc = init;
        for (int64_t k = 0; k < r; k++) acc = step(kind, acc, x[k]);
        y[0] = finish(kind, acc, r);
        return;
    }
    for (int64_t i = 0; i < inner; i++) y[i] = init;
    for (int64_t k = 0; k < r; k++) {
        const float *row = x + k * inner;
        for (int64_t i = 0; i < inner; i++) y[i] = step(kind, y[i], row[i]);
    }
    for (int64_t i = 0; i < inner; i++) y[i] = finish(kind, y[i], r);
}

typedef struct {
    int kind;
    int64_t r, inner;
    const float *x;
    float *y;
} reduce_job;

static void reduce_task(void *ctx, int64_t o0, int64_t o1) {
    const reduce_job *j = (const reduce_job *)ctx;
    for (int64_t o = o0; o < o1; o++)
        reduce_block(j->kind, j->r, j->inner, j->x + o * j->r * j->inner, j->y + o * j->inner);
}

void nk_reduce(int nt, int kind, int64_t outer, int64_t r, int64_t inner, const float *x,
               float *y) {
    reduce_job j = {kind, r, inner, x, y};
    int64_t size = r * inner > 0 ? r * inner : 1;
    int64_t grain = 32768 / size;
    nk_parallel_for(nt, outer, grain < 1 ? 1 : grain, reduce_task, &j);
}
