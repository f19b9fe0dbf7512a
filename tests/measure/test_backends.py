"""Conformance of every measurement backend (:data:`trajlib.measure.BACKENDS`) to the contract:
each step's ``[5, L]`` sums equal a float64 computation from the step's own tensors (a missing
gradient as zero, the dot products with the previous step, NaN without one), whether the gradient
comes with ``pre`` or later (a closure); ``previous`` / ``restore`` carry the previous step across
instances; ``forget`` drops it; moved parameters are followed or refused."""

from __future__ import annotations

import math

import pytest
import torch

from tests.measure._require import require_native
from trajlib.measure import BACKENDS, RAW_LAYER_SUMS, LayerSums, layer_sums
from trajlib.measure._torch import TorchSums

SHAPES = [(7, 5), (5,), (300,), (3, 129), (1,)]  # block boundaries (128) crossed


def _backend(name: str, params: list[torch.Tensor], dots: bool = True) -> LayerSums:
    if name == "native":
        require_native()
    sums = layer_sums(params, dots=dots, backend=name)
    assert sums.name == name and isinstance(sums, LayerSums)
    return sums


def _expected(g, w, u, g_prev, u_prev) -> torch.Tensor:
    rows = []
    for i in range(len(w)):
        gi = torch.zeros_like(w[i]) if g[i] is None else g[i]
        gi, wi, ui = gi.double(), w[i].double(), u[i].double()
        dg = math.nan if g_prev is None else float((gi * g_prev[i].double()).sum())
        du = math.nan if u_prev is None else float((ui * u_prev[i].double()).sum())
        rows.append(
            [float((gi * gi).sum()), float((wi * wi).sum()), float((ui * ui).sum()), dg, du]
        )
    return torch.tensor(rows, dtype=torch.float64).T


@pytest.mark.parametrize("name", list(BACKENDS))
@pytest.mark.parametrize("closure", [False, True])
def test_each_step_equals_a_direct_computation(name: str, closure: bool) -> None:
    assert len(RAW_LAYER_SUMS) == 5
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen) for s in SHAPES]
    sums = _backend(name, params)
    g_prev = u_prev = None
    for t in range(4):
        grads = [torch.randn(s, generator=gen) for s in SHAPES]
        if t == 2:
            grads[1] = None  # a layer without a gradient
        if t == 3:
            grads[2] = torch.randn(SHAPES[2][::-1], generator=gen).t()  # a non-contiguous one
        w = [p.clone() for p in params]
        if closure:
            sums.pre(params, None)
            sums.grads(grads)
        else:
            sums.pre(params, grads)
        for p in params:  # the optimizer's update, in place
            p.add_(torch.randn(p.shape, generator=gen) * 1e-2)
        u = [p - wi for p, wi in zip(params, w)]
        got = sums.post(params)
        assert got.shape == (5, len(SHAPES)) and got.dtype == torch.float32
        want = _expected(grads, w, u, g_prev, u_prev)
        torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=1e-6, equal_nan=True)
        g_prev = [torch.zeros_like(wi) if gi is None else gi for gi, wi in zip(grads, w)]
        u_prev = u


@pytest.mark.parametrize("name", list(BACKENDS))
def test_previous_restore_forget_and_dots(name: str) -> None:
    gen = torch.Generator().manual_seed(1)
    params = [torch.randn(s, generator=gen) for s in SHAPES]
    a = _backend(name, params)
    assert a.previous() is None
    g1 = [torch.randn(s, generator=gen) for s in SHAPES]
    a.pre(params, g1)
    for p in params:
        p.mul_(0.9)
    a.post(params)
    kept = a.previous()
    assert kept is not None
    flat_g = torch.cat([g.reshape(-1) for g in g1])
    torch.testing.assert_close(kept[0], flat_g)
    # another instance (either backend) restored from it gives the same next step
    g2 = [torch.randn(s, generator=gen) for s in SHAPES]
    outs = []
    for other in (a, TorchSums(params)):
        if other is not a:
            other.restore(*kept)
        snapshot = [p.clone() for p in params]
        other.pre(params, g2)
        for p in params:
            p.mul_(0.9)
        outs.append(other.post(params))
        for p, s in zip(params, snapshot):
            p.copy_(s)
    torch.testing.assert_close(outs[0], outs[1], rtol=2e-5, atol=1e-6)
    assert torch.isfinite(outs[0]).all()
    a.forget()
    a.pre(params, g2)
    assert torch.isnan(a.post(params)[3:]).all() and a.previous() is not None
    no_dots = _backend(name, params, dots=False)
    for _ in range(2):
        no_dots.pre(params, g2)
        out = no_dots.post(params)
        assert torch.isnan(out[3:]).all() and torch.isfinite(out[:3]).all()
    assert no_dots.previous() is None


def test_native_follows_moved_parameters_and_refuses_other_dtypes() -> None:
    require_native()
    params = [torch.randn(s) for s in SHAPES]
    sums = _backend("native", params)
    params[0].data = params[0].data.clone()  # new storage
    assert sums.usable(params)
    sums.pre(params, [torch.ones(s) for s in SHAPES])
    out = sums.post(params)
    assert float(out[1, 0]) == pytest.approx(float((params[0].double() ** 2).sum()), rel=1e-5)
    params[1].data = params[1].data.double()
    assert not sums.usable(params)
    assert layer_sums(params).name == "torch"  # auto: the native backend cannot read float64
