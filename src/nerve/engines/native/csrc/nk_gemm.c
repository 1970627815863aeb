/* GEMM for nerve's native engine: OpenBLAS (single-threaded) inside our own OpenMP split.
 *
 * Why split ourselves: OpenBLAS's thread pool and OpenMP's spin against each other on small
 * machines (2-7x slowdowns measured), so BLAS runs one thread per call and we hand each OpenMP
 * thread its own block of the output. Single-row products go to gemv: sgemm with M = 1 is
 * 2-3x slower than gemv in OpenBLAS.
 *
 * Built with -DNK_HAVE_BLAS and -DNK_BLAS_PREFIX=<symbol prefix> when OpenBLAS is available;
 * otherwise a simple reference GEMM (correct, not fast) stands in.
 */
#include "nk.h"

#define NK_CAT2(a, b) a##b
#define NK_CAT(a, b) NK_CAT2(a, b)

#ifdef NK_HAVE_BLAS
#ifndef NK_BLAS_PREFIX
#define NK_BLAS_PREFIX
#endif
#include <cblas.h>
#define NK_BLAS(name) NK_CAT(NK_BLAS_PREFIX, name)
#define NK_ROW CblasRowMajor
#define NK_TR(t) ((t) ? CblasTrans : CblasNoTrans)
/* The threads setter is named after the library ("scipy_openblas_set_num_threads" or
 * "openblas_set_num_threads"); NK_BLAS_SET_THREADS names it explicitly. */
#ifndef NK_BLAS_SET_THREADS
#define NK_BLAS_SET_THREADS NK_BLAS(openblas_set_num_threads)
#endif
void NK_BLAS_SET_THREADS(int);

void nk_init(void) { NK_BLAS_SET_THREADS(1); }
int nk_has_blas(void) { return 1; }

static void sgemm(int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                  int64_t lda, const float *b, int64_t ldb, float *c, int64_t ldc) {
    NK_BLAS(cblas_sgemm)(NK_ROW, NK_TR(ta), NK_TR(tb), (int)m, (int)n, (int)k, alpha, a,
                         (int)lda, b, (int)ldb, 0.0f, c, (int)ldc);
}

/* y[i * incy] = alpha * sum_j op(A)[i, j] * x[j * incx] for op(A) of shape rows x cols. */
static void sgemv(int trans, int64_t rows, int64_t cols, float alpha, const float *a,
                  int64_t lda, const float *x, int64_t incx, float *y, int64_t incy) {
    /* cblas_sgemv takes the *stored* matrix shape. */
    int64_t sr = trans ? cols : rows, sc = trans ? rows : cols;
    NK_BLAS(cblas_sgemv)(NK_ROW, NK_TR(trans), (int)sr, (int)sc, alpha, a, (int)lda, x,
                         (int)incx, 0.0f, y, (int)incy);
}

#else /* reference GEMM: no BLAS on this machine */

void nk_init(void) {}
int nk_has_blas(void) { return 0; }

static void sgemm(int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                  int64_t lda, const float *b, int64_t ldb, float *c, int64_t ldc) {
    for (int64_t i = 0; i < m; i++) {
        float *ci = c + i * ldc;
        for (int64_t j = 0; j < n; j++) ci[j] = 0.0f;
        for (int64_t p = 0; p < k; p++) {
            float av = alpha * (ta ? a[p * lda + i] : a[i * lda + p]);
            if (tb) {
                for (int64_t j = 0; j < n; j++) ci[j] += av * b[j * ldb + p];
            } else {
                const float *bp = b + p * ldb;
                for (int64_t j = 0; j < n; j++) ci[j] += av * bp[j];
            }
        }
    }
}

static void sgemv(int trans, int64_t rows, int64_t cols, float alpha, const float *a,
                  int64_t lda, const float *x, int64_t incx, float *y, int64_t incy) {
    for (int64_t i = 0; i < rows; i++) {
        float s = 0.0f;
        for (int64_t j = 0; j < cols; j++)
            s += (trans ? a[j * lda + i] : a[i * lda + j]) * x[j * incx];
        y[i * incy] = alpha * s;
    }
}
#endif

void nk_sgemm_st(int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                 int64_t lda, const float *b, int64_t ldb, float *c, int64_t ldc) {
    if (m <= 0 || n <= 0) return;
    if (k == 0) {
        for (int64_t i = 0; i < m; i++) memset(c + i * ldc, 0, (size_t)n * sizeof(float));
        return;
    }
    if (m == 1) {
        /* c[0, :] = a_row . op(B): a gemv over op(B)^T. */
        sgemv(!tb, n, k, alpha, b, ldb, a, ta ? lda : 1, c, 1);
    } else if (n == 1) {
        sgemv(ta, m, k, alpha, a, lda, b, tb ? 1 : ldb, c, ldc);
    } else {
        sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, c, ldc);
    }
}

/* One block of one batch entry: rows [m0, m1), columns [n0, n1) of Y[bi]. */
static void gemm_block(int64_t bi, const int64_t *aoff, const int64_t *boff, int ta, int tb,
                       int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                       const float *B, float *Y, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    if (m1 <= m0 || n1 <= n0) return;
    const float *a = A + (aoff ? aoff[bi] : 0);
    const float *b = B + (boff ? boff[bi] : 0);
    int64_t lda = ta ? M : K, ldb = tb ? K : N;
    const float *ab = ta ? a + m0 : a + m0 * lda;  /* first row of op(A) in the block */
    const float *bb = tb ? b + n0 * ldb : b + n0;  /* first column of op(B) in the block */
    nk_sgemm_st(ta, tb, m1 - m0, n1 - n0, K, alpha, ab, lda, bb, ldb,
                Y + bi * M * N + m0 * N + n0, N);
}

#ifndef NK_SLABS_PER_THREAD
#define NK_SLABS_PER_THREAD 1
#endif

typedef struct {
    const int64_t *aoff, *boff;
    int ta, tb, split_n;
    int64_t M, N, K, slabs, slab;
    float alpha;
    const float *A, *B;
    float *Y;
    nk_epilogue ep;
    const void *const *ep_args;
} matmul_job;

/* Units are (batch entry, slab): a slab is a range of columns (split_n) or of rows. */
static void matmul_task(void *ctx, int64_t u0, int64_t u1) {
    const matmul_job *j = (const matmul_job *)ctx;
    for (int64_t u = u0; u < u1; u++) {
        int64_t bi = u / j->slabs, s = u % j->slabs;
        int64_t size = j->split_n ? j->N : j->M;
        int64_t lo = s * j->slab, hi = lo + j->slab < size ? lo + j->slab : size;
        if (lo >= hi) continue;
        if (j->split_n) {
            gemm_block(bi, j->aoff, j->boff, j->ta, j->tb, j->M, j->N, j->K, j->alpha, j->A,
                       j->B, j->Y, 0, j->M, lo, hi);
            if (j->ep) j->ep(j->ep_args, 1, bi, 0, j->M, lo, hi);
        } else {
            gemm_block(bi, j->aoff, j->boff, j->ta, j->tb, j->M, j->N, j->K, j->alpha, j->A,
                       j->B, j->Y, lo, hi, 0, j->N);
            if (j->ep) j->ep(j->ep_args, 1, bi, lo, hi, 0, j->N);
        }
    }
}

void nk_matmul(int nt, int64_t batch, const int64_t *aoff, const int64_t *boff, int ta, int tb,
               int64_t M, int64_t N, int64_t K, float alpha, const float *A, const float *B,
               float *Y, nk_epilogue ep, const void *const *ep_args) {
    double flops = 2.0 * (double)batch * (double)M * (double)N * (double)(K ? K : 1);
    matmul_job j = {aoff, boff, ta, tb, 1, M, N, K, 1, N, alpha, A, B, Y, ep, ep_args};
    if (nt <= 1 || flops < 262144.0) {
        matmul_task(&j, 0, batch);
        return;
    }
    if (batch < 2 * (int64_t)nt) {
        /* Few matrices: cut each into slabs, about two per thread overall, along N when it is
         * wide enough (columns in multiples of 16), else along M. */
        int64_t want = ((int64_t)nt * NK_SLABS_PER_THREAD + batch - 1) / batch;
        j.split_n = M == 1 || (N >= 64 && N >= M);
        int64_t size = j.split_n ? N : M, align = j.split_n ? 16 : 4;
        int64_t most = (size + align - 1) / align;
        j.slabs = want < most ? want : most;
        if (j.slabs < 1) j.slabs = 1;
        j.slab = ((size + j.slabs - 1) / j.slabs + align - 1) / align * align;
        j.slabs = (size + j.slab - 1) / j.slab;
    }
    nk_parallel_for(nt, batch * j.slabs, 1, matmul_task, &j);
}
