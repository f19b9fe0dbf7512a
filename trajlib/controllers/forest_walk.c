/* One row through many LightGBM regression trees: the native path of trajlib/controllers/_treewalk.py.
 *
 * Plain buffers only (node tables, a row, an output vector); nothing here knows a Python object.
 * The node layout is _treewalk.Forests': split nodes take ids [0, n_split), leaves
 * [n_split, n_split + n_leaf); value[] holds the leaves' values at their ids. The split rule is
 * LightGBM's NumericalDecision, as in the numpy path:
 *   - a NaN becomes 0 unless the node's missing type is NaN (2);
 *   - "missing" (type Zero (1): |x| <= 1e-35 after that; type NaN: x is NaN) goes to default_left;
 *   - otherwise x <= threshold goes left.
 * Each tree's leaf value is added to out[owner[tree]] in tree order: the same double sums, in the
 * same order, as numpy's bincount over the trees, so the two paths agree bit for bit (tested).
 */
#include <math.h>
#include <stdint.h>

/* One split node, packed so that a visit reads one cache line (numpy: _treewalk._NODE). */
typedef struct {
    double thr;
    int32_t feat, left, right;
    uint8_t mtype, default_left;
} tl_node;

void tl_forest_walk(int64_t n_trees, int64_t n_split, const int64_t *roots, const int64_t *owner,
                    const tl_node *node, const double *value, const double *x, int64_t n_out,
                    double *out) {
    for (int64_t k = 0; k < n_out; k++) out[k] = 0.0;
    for (int64_t t = 0; t < n_trees; t++) {
        int64_t cur = roots[t];
        while (cur < n_split) {
            const tl_node *nd = node + cur;
            double v = x[nd->feat];
            int is_nan = isnan(v);
            int go_left;
            if (is_nan && nd->mtype != 2) v = 0.0;
            if ((nd->mtype == 1 && fabs(v) <= 1e-35) || (nd->mtype == 2 && is_nan))
                go_left = nd->default_left;
            else
                go_left = v <= nd->thr;
            cur = go_left ? nd->left : nd->right;
        }
        out[owner[t]] += value[cur];
    }
}
