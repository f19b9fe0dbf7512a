"""The native kernels: each one equals a float64 NumPy computation of the same sums (NaN and a
missing gradient included), and without a compiler (or with TRAJLIB_NATIVE=0) the library is
simply not used, with the reason in ``status()``."""

from __future__ import annotations

import numpy as np
import pytest

from tests.measure._require import require_native
from trajlib.measure import _native

SIZES = [1, 7, 256, 257, 1000, 40]  # chunk boundaries (256) included


def _arrays(rng, scale=1.0):
    return [(rng.standard_normal(n) * scale).astype(np.float32) for n in SIZES]


def _addr(arrs):
    return _native.ptrs([a.ctypes.data for a in arrs])


def _sums(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float((a * a).sum()), float((a * b).sum())


def test_record_kernel_equals_numpy_sums():
    lib = require_native()
    rng = np.random.default_rng(0)
    g, w, d, gp, dp = (_arrays(rng) for _ in range(5))
    g[2][5] = np.nan  # NaN in one layer propagates to that layer's sums only
    S = len(SIZES)
    out = np.full((5, S), -1.0, dtype=np.float32)
    n = _native.ptrs(SIZES)
    ptrs = [_addr(x) for x in (g, w, d, gp, dp)]
    loss, loss_out = np.array([0.5, -2.0], dtype=np.float32), np.zeros(2, dtype=np.float32)
    lib.tl_record(
        S, n.ctypes.data, *(p.ctypes.data for p in ptrs), out.ctypes.data,
        2, loss.ctypes.data, loss_out.ctypes.data,
    )  # fmt: skip
    assert loss_out.tolist() == [0.5, -2.0]  # the members' losses are copied along
    for i in range(S):
        gg, ggp = _sums(g[i], gp[i])
        dd, ddp = _sums(d[i], dp[i])
        ww, _ = _sums(w[i], w[i])
        np.testing.assert_allclose(out[:, i], [gg, ww, dd, ggp, ddp], rtol=1e-5, atol=1e-6)
    assert np.isnan(out[[0, 3], 2]).all() and np.isfinite(out[[1, 2, 4], 2]).all()


@pytest.mark.parametrize("has_prev", [True, False])
def test_probe_kernels_equal_numpy_and_keep_the_step(has_prev):
    lib = require_native()
    rng = np.random.default_rng(1)
    g, w, w_new = _arrays(rng), _arrays(rng), _arrays(rng)
    g_prev, u_prev = _arrays(rng), _arrays(rng, 1e-3)
    gbuf, wbuf, ubuf = (
        [x.copy() for x in g_prev],
        [np.zeros_like(x) for x in w],
        [x.copy() for x in u_prev],
    )
    L = len(SIZES)
    n = _native.ptrs(SIZES)
    g_ptrs = [a.ctypes.data for a in g]
    g_ptrs[1] = 0  # a parameter without a gradient this step
    gp = _native.ptrs(g_ptrs)
    keep = [_addr(x) for x in (w, w_new, gbuf, wbuf, ubuf)]
    a_w, a_wn, a_gb, a_wb, a_ub = (k.ctypes.data for k in keep)
    out = np.full((5, L), -1.0, dtype=np.float32)
    lib.tl_pre(L, n.ctypes.data, a_w, gp.ctypes.data, a_wb, a_gb, int(has_prev), out.ctypes.data)
    lib.tl_update(L, n.ctypes.data, a_wn, a_wb, a_ub, int(has_prev), out.ctypes.data)
    for i in range(L):
        gi = np.zeros_like(g[i]) if i == 1 else g[i]
        u = w_new[i] - w[i]  # float32, as the kernel subtracts
        gg, ggp = _sums(gi, g_prev[i])
        uu, uup = _sums(u, u_prev[i])
        ww, _ = _sums(w[i], w[i])
        np.testing.assert_allclose(out[:3, i], [gg, ww, uu], rtol=1e-5, atol=1e-6)
        if has_prev:
            np.testing.assert_allclose(out[3:, i], [ggp, uup], rtol=1e-4, atol=1e-6)
        else:
            assert np.isnan(out[3:, i]).all()
        # the buffers now hold this step: g (zeros where missing), theta before, u
        np.testing.assert_array_equal(gbuf[i], gi)
        np.testing.assert_array_equal(wbuf[i], w[i])
        np.testing.assert_array_equal(ubuf[i], u)
    # tl_weights + tl_grad (a step with a closure) give what tl_pre gave
    out2 = np.full((5, L), -1.0, dtype=np.float32)
    gb2, wb2 = [x.copy() for x in g_prev], [np.zeros_like(x) for x in w]  # alive for the calls
    gbuf2, wbuf2 = _addr(gb2), _addr(wb2)
    lib.tl_weights(L, n.ctypes.data, a_w, wbuf2.ctypes.data, out2.ctypes.data)
    lib.tl_grad(
        L, n.ctypes.data, gp.ctypes.data, gbuf2.ctypes.data, int(has_prev), out2.ctypes.data
    )
    np.testing.assert_array_equal(out2[[0, 1, 3]], out[[0, 1, 3]])


def test_without_a_compiler_the_kernels_are_not_used(monkeypatch, tmp_path):
    monkeypatch.setattr(_native, "_STATUS", _native._STATUS)  # restored afterwards
    monkeypatch.setenv("TRAJLIB_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(_native.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    assert _native._load() is None
    assert "failed" in _native.status()
    assert not list(tmp_path.rglob("*.so"))
    monkeypatch.setenv("TRAJLIB_NATIVE", "0")
    assert _native._load() is None
    assert "TRAJLIB_NATIVE=0" in _native.status()


def test_a_fresh_cache_compiles_and_loads(monkeypatch, tmp_path):
    require_native()
    monkeypatch.setattr(_native, "_STATUS", _native._STATUS)
    monkeypatch.setenv("TRAJLIB_CACHE", str(tmp_path))
    lib = _native._load()
    assert lib is not None and str(tmp_path) in _native.status()
    (so,) = tmp_path.glob("layer_sums-*.so")
    out = np.zeros((5, 1), dtype=np.float32)
    a = np.array([3.0, 4.0], dtype=np.float32)
    p, n = _addr([a]), _native.ptrs([2])
    lib.tl_record(1, n.ctypes.data, *([p.ctypes.data] * 5), out.ctypes.data, 0, None, None)
    assert out[:, 0].tolist() == [25.0, 25.0, 25.0, 25.0, 25.0]
    assert so.stat().st_size > 0
