/* Fused per-layer sums for trajlib's step statistics (see trajlib/_native/__init__.py).
 *
 * One pass over each layer's float32 values accumulates what trajlib.measure needs, instead
 * of a chain of whole-model tensor operations. Sums are taken in float32 over chunks of CHUNK
 * elements (vectorised) and added up in float64. A segment is one layer (of one member).
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

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
 * |w|^2, |d|^2, g . gp, d . dp (float32 [5, S]); and the K member losses copied to loss_out. */
void tl_record(int64_t S, const int64_t *n, const float *const *g, const float *const *w,
               const float *const *d, const float *const *gp, const float *const *dp,
               float *out, int64_t K, const float *loss, float *loss_out) {
    for (int64_t k = 0; k < K; k++) loss_out[k] = loss[k];
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

/* ------------------------------------------------------------------ step statistics
 * trajlib.measure.step_stats from the per-layer sums, in float64 (same definitions as the
 * NumPy reference there):
 *   sums [n, 5, B, L] float32 (|g|^2, |w|^2, |u|^2, g . g_prev, u . u_prev per layer),
 *   prev [2, B] float64 (gradient and update norm of the step before, or NULL: NaN),
 *   present [n, L] uint8 (layers in the ratio aggregates, or NULL: all),
 *   out [n, B, 9] float64: grad, weight and update norm, grad and update cosine, mean / max /
 *   min / lower median over layers of |u_l| / |w_l| (NaN in any kept layer's ratio, or no layer
 *   kept: all four NaN); last [2, B]: the norms of the last step.
 * scratch: L doubles. */
#define EPS 1e-30

static double floor_eps(double x) { return isnan(x) ? x : (x > EPS ? x : EPS); }

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void tl_step_stats(int64_t n, int64_t B, int64_t L, const float *sums, const double *prev,
                   const uint8_t *present, double *out, double *last, double *scratch) {
    for (int64_t b = 0; b < B; b++) {
        double pg = prev ? prev[b] : NAN, pu = prev ? prev[B + b] : NAN;
        for (int64_t t = 0; t < n; t++) {
            const float *row = sums + t * 5 * B * L;
            double tot[5];
            for (int r = 0; r < 5; r++) {
                const float *s = row + (r * B + b) * L;
                double acc = 0.0;
                for (int64_t l = 0; l < L; l++) acc += (double)s[l];
                tot[r] = acc;
            }
            double gn = sqrt(tot[0]), wn = sqrt(tot[1]), un = sqrt(tot[2]);
            double *o = out + (t * B + b) * 9;
            o[0] = gn;
            o[1] = wn;
            o[2] = un;
            o[3] = tot[3] / floor_eps(gn * pg);
            o[4] = tot[4] / floor_eps(un * pu);
            pg = gn;
            pu = un;
            const float *sw = row + (1 * B + b) * L, *su = row + (2 * B + b) * L;
            const uint8_t *keep = present ? present + t * L : NULL;
            int64_t k = 0;
            int bad = 0;
            double total = 0.0;
            for (int64_t l = 0; l < L; l++) {
                if (keep && !keep[l]) continue;
                double r = sqrt((double)su[l]) / floor_eps(sqrt((double)sw[l]));
                if (isnan(r)) bad = 1;
                scratch[k++] = r;
                total += r;
            }
            if (bad || k == 0) {
                o[5] = o[6] = o[7] = o[8] = NAN;
                continue;
            }
            qsort(scratch, (size_t)k, sizeof(double), cmp_double);
            o[5] = total / (double)k;
            o[6] = scratch[k - 1];
            o[7] = scratch[0];
            o[8] = scratch[(k - 1) / 2];
        }
        last[b] = pg;
        last[B + b] = pu;
    }
}
