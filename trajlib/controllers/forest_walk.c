/* One row through flattened LightGBM regression forests (trajlib.controllers._treewalk.Forests).
 *
 * Plain arrays only. `nodes` holds the split nodes, 24 bytes each (one cache line at most per
 * node visited); a child >= 0 is a split node, a child < 0 the leaf ~child, whose value is
 * leaf_value[~child]. Tree t starts at roots[t] (encoded the same way: a stump is a leaf) and its
 * leaf value is added to out[owner[t]], trees in order, so every output is the same float64 sum,
 * in the same order, as the NumPy walk (np.bincount over the trees): the results are bit for bit
 * equal. Trees are walked GROUP at a time, interleaved, so their memory reads overlap.
 *
 * The split rule is LightGBM's NumericalDecision: NaN becomes 0 unless the node's missing type is
 * NaN; a missing value (NaN on NaN nodes; NaN or |x| <= 1e-35 on Zero nodes) goes to
 * default_left; otherwise x <= threshold goes left. flags: bit 0 default_left, bits 1-2 the
 * missing type (0 None, 1 Zero, 2 NaN).
 */
#include <math.h>
#include <stdint.h>

#define K_ZERO 1e-35
#define GROUP 16

typedef struct {
    double thr;
    int32_t feat, left, right, flags;
} tl_node;

static inline int32_t next_node(const tl_node *n, const double *x) {
    double v = x[n->feat];
    int nan = isnan(v);
    double v0 = nan ? 0.0 : v;
    int m = (n->flags >> 1) & 3;
    int miss = m == 2 ? nan : (m == 1 ? (nan || fabs(v0) <= K_ZERO) : 0);
    int go_left = miss ? (n->flags & 1) : v0 <= n->thr;
    return go_left ? n->left : n->right;
}

void tl_forest(int64_t n_trees, const int32_t *roots, const int64_t *owner, const tl_node *nodes,
               const double *leaf_value, const double *x, int64_t n_out, double *out) {
    for (int64_t k = 0; k < n_out; k++) out[k] = 0.0;
    for (int64_t t0 = 0; t0 < n_trees; t0 += GROUP) {
        int g = n_trees - t0 < GROUP ? (int)(n_trees - t0) : GROUP;
        int32_t cur[GROUP];
        for (int i = 0; i < g; i++) cur[i] = roots[t0 + i];
        int active = 1;
        while (active) {
            active = 0;
            for (int i = 0; i < g; i++) {
                if (cur[i] >= 0) {
                    cur[i] = next_node(nodes + cur[i], x);
                    active |= cur[i] >= 0;
                }
            }
        }
        for (int i = 0; i < g; i++) out[owner[t0 + i]] += leaf_value[~cur[i]];
    }
}
