/* Fused per-layer sums for trajlib's step statistics (see trajlib/_native/__init__.py).
 *
 * One pass over each layer's float32 values accumulates what trajlib.stepstats needs, instead
 * of a chain of whole-model tensor operations. Sums are taken in float32 over chunks of CHUNK
 * elements (vectorised) and added up in float64. A segment is one layer (of one member).
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define CHUNK 256

/* sum of a[j]^2 and a[j] * b[j] (b may be NULL: the dot is skipped) */
static void sq_dot(const float *restrict a, const float *restrict b, int64_t n, double *sq, double *dot) {
    double s = 0.0, d = 0.0;
    for (int64_t c = 0; c < n; c += CHUNK) {
        int64_t e = c + CHUNK < n ? c + CHUNK : n;
        float fs = 0.0f, fd = 0.0f;
        if (b) {
            for (int64_t j = c; j < e; j++) {
                fs += a[j] * a[j];
                fd += a[j] * b[j];
            }
        } else {
            for (int64_t j = c; j < e; j++) fs += a[j] * a[j];
        }
        s += fs;
        d += fd;
    }
    *sq = s;
    *dot = d;
}

/* Collector record of one step, read-only: for each of S segments, out[0..4][i] = |g|^2,
 * |w|^2, |d|^2, g . gp, d . dp (float32 [5, S]). */
void tl_record(int64_t S, const int64_t *n, const float *const *g, const float *const *w,
               const float *const *d, const float *const *gp, const float *const *dp,
               float *out) {
    for (int64_t i = 0; i < S; i++) {
        double a, b, c, e, unused;
        sq_dot(g[i], gp[i], n[i], &a, &b);
        sq_dot(w[i], NULL, n[i], &c, &unused);
        out[0 * S + i] = (float)a;
        out[1 * S + i] = (float)c;
        out[3 * S + i] = (float)b;
        sq_dot(d[i], dp[i], n[i], &a, &e);
        out[2 * S + i] = (float)a;
        out[4 * S + i] = (float)e;
    }
}

/* Deployed probe, one layer's gradient: |g|^2 and g . gbuf, then gbuf = g (g NULL: a zero
 * gradient). */
static void grad_layer(const float *restrict a, float *restrict b, int64_t m, double *sq,
                       double *dot) {
    double s = 0.0, d = 0.0;
    if (!a) {
        for (int64_t j = 0; j < m; j++) b[j] = 0.0f;
    } else {
        for (int64_t c = 0; c < m; c += CHUNK) {
            int64_t e = c + CHUNK < m ? c + CHUNK : m;
            float fs = 0.0f, fd = 0.0f;
            for (int64_t j = c; j < e; j++) {
                float v = a[j];
                fs += v * v;
                fd += v * b[j];
                b[j] = v;
            }
            s += fs;
            d += fd;
        }
    }
    *sq = s;
    *dot = d;
}

/* Deployed probe, one layer's weights before the step: |w|^2, then wbuf = w. */
static double weights_layer(const float *restrict a, float *restrict b, int64_t m) {
    double s = 0.0;
    for (int64_t c = 0; c < m; c += CHUNK) {
        int64_t e = c + CHUNK < m ? c + CHUNK : m;
        float fs = 0.0f;
        for (int64_t j = c; j < e; j++) {
            fs += a[j] * a[j];
            b[j] = a[j];
        }
        s += fs;
    }
    return s;
}

/* Deployed probe, gradients: rows 0 (|g|^2) and 3 (g . g_prev, NaN without has_prev) of out
 * (float32 [5, L]); gbuf keeps g. */
void tl_grad(int64_t L, const int64_t *n, const float *const *g, float *const *gbuf,
             int has_prev, float *out) {
    for (int64_t i = 0; i < L; i++) {
        double s, d;
        grad_layer(g[i], gbuf[i], n[i], &s, &d);
        out[i] = (float)s;
        out[3 * L + i] = has_prev ? (float)d : NAN;
    }
}

/* Deployed probe, weights before the step: row 1 of out; wbuf keeps them. */
void tl_weights(int64_t L, const int64_t *n, const float *const *w, float *const *wbuf,
                float *out) {
    for (int64_t i = 0; i < L; i++) out[L + i] = (float)weights_layer(w[i], wbuf[i], n[i]);
}

/* tl_weights and tl_grad in one call (a step without a closure). */
void tl_pre(int64_t L, const int64_t *n, const float *const *w, const float *const *g,
            float *const *wbuf, float *const *gbuf, int has_prev, float *out) {
    for (int64_t i = 0; i < L; i++) {
        double s, d;
        out[L + i] = (float)weights_layer(w[i], wbuf[i], n[i]);
        grad_layer(g[i], gbuf[i], n[i], &s, &d);
        out[i] = (float)s;
        out[3 * L + i] = has_prev ? (float)d : NAN;
    }
}

/* Deployed probe, after the step: u = w - wbuf (float32), rows 2 (|u|^2) and 4 (u . u_prev, NaN
 * without has_prev) of out; ubuf keeps u. */
void tl_update(int64_t L, const int64_t *n, const float *const *w, const float *const *wbuf,
               float *const *ubuf, int has_prev, float *out) {
    for (int64_t i = 0; i < L; i++) {
        const float *restrict a = w[i];
        const float *restrict b = wbuf[i];
        float *restrict u = ubuf[i];
        int64_t m = n[i];
        double s = 0.0, d = 0.0;
        for (int64_t c = 0; c < m; c += CHUNK) {
            int64_t e = c + CHUNK < m ? c + CHUNK : m;
            float fs = 0.0f, fd = 0.0f;
            for (int64_t j = c; j < e; j++) {
                float v = a[j] - b[j];
                fs += v * v;
                fd += v * u[j];
                u[j] = v;
            }
            s += fs;
            d += fd;
        }
        out[2 * L + i] = (float)s;
        out[4 * L + i] = has_prev ? (float)d : NAN;
    }
}
