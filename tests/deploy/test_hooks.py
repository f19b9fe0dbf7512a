"""The statistics come from optimizer step hooks, so they are right however the loop is written:
gradient accumulation, zero_grad anywhere, GradScaler (skipped steps), torch.compile, unused params."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from tests.deploy._helpers import batch, make_model, two_groups
from tests.measure._require import require_native
from trajlib.deploy import ControllerScheduler
from trajlib.deploy._probe import PROBE_COLUMNS, StepProbe, summarise
from trajlib.measure import _native


def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def _stats(probe: StepProbe, prev=None):
    taken = probe.take()
    assert taken is not None
    s, present = taken
    row, norms = summarise(s[None], None if present is None else present[None], prev)
    return dict(zip(PROBE_COLUMNS, row[0].tolist())), norms


def test_gradient_accumulation_measures_the_accumulated_gradient(tiny_checkpoint):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = ControllerScheduler(opt, tiny_checkpoint, total_steps=50)
    opt.zero_grad()
    micro = []
    for k in range(4):
        x, y = batch(k, 8)
        loss = nn.functional.cross_entropy(model(x), y) / 4
        loss.backward()
        sched.observe(loss * 4)
        micro.append(float(loss.detach()) * 4)
    acc = _flat([p.grad for p in model.parameters()]).clone()
    before = _flat([p.detach() for p in model.parameters()]).clone()
    opt.step()
    assert sched.state_dict()["trajlib"]["rows"]["loss"] == []  # the step is still open
    sched.step()
    rows = sched.state_dict()["trajlib"]["rows"]
    # the gradient the hooks saw is the accumulated one; the step's loss is the micro-batch mean
    st = rows["stats"][0]  # [5, L]: squared norms of grad, weight, update; dots
    assert float(st[0].sum().sqrt()) == pytest.approx(float(acc.norm()), rel=1e-5)
    assert float(st[1].sum().sqrt()) == pytest.approx(float(before.norm()), rel=1e-5)
    assert rows["loss"][0] == pytest.approx(sum(micro) / 4, rel=1e-6)


@pytest.mark.parametrize("where", ["before_backward", "after_step", "set_to_none_false"])
def test_zero_grad_anywhere_gives_the_same_statistics(where):
    ref = None
    for variant in ("before_backward", where):
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        probe = StepProbe(opt)
        prev, rows = None, []
        for t in range(4):
            x, y = batch(t)
            if variant == "before_backward":
                opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if variant == "after_step":
                opt.zero_grad()
            elif variant == "set_to_none_false":
                opt.zero_grad(set_to_none=False)
            st, prev = _stats(probe, prev)
            rows.append(st)
        if ref is None:
            ref = rows
        else:
            for a, b in zip(ref, rows):
                for k in PROBE_COLUMNS:
                    assert a[k] == pytest.approx(b[k], rel=1e-6, nan_ok=True), k
    assert not math.isnan(ref[-1]["grad_cos"])


def test_grad_scaler_skipped_steps_are_recorded_as_not_finite(tiny_checkpoint):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu")
    sched = ControllerScheduler(opt, tiny_checkpoint, total_steps=60, every=20)
    skipped = {3, 4, 11}
    for t in range(30):
        x, y = batch(t)
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        if t in skipped:
            model[0].weight.grad[0, 0] = float("inf")  # the scaler skips this optimizer step
        elif t == 5:
            scaler.unscale_(opt)
            g = _flat([p.grad for p in model.parameters()]).clone()
            scaler.step(opt)
            scaler.update()
            sched.observe(loss)
            sched.step()
            # the hooks saw the unscaled gradient (row 0 of the per-layer stats: squared norms)
            last = sched.state_dict()["trajlib"]["rows"]["stats"][-1]
            assert float(last[0].sum().sqrt()) == pytest.approx(float(g.norm()), rel=1e-5)
            continue
        scaler.step(opt)
        scaler.update()
        sched.observe(loss)
        sched.step()
    assert sched.events["skipped_steps"] == len(skipped)
    assert sched.events["errors"] == 0
    assert sched.state_dict()["trajlib"]["rows"]["measured"] == [
        t not in skipped for t in range(20, 30)
    ]
    feats = sched.units[0].features.values_dict()
    assert feats["nonfinite_frac"] == pytest.approx(len(skipped) / 20)


def test_torch_compile_eager_model(tiny_checkpoint):
    model = make_model()
    compiled = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = ControllerScheduler(opt, tiny_checkpoint, total_steps=60, every=20)
    for t in range(45):
        x, y = batch(t)
        loss = nn.functional.cross_entropy(compiled(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.observe(loss)
        if t % 10 == 9:
            with torch.no_grad():
                sched.observe_validation(nn.functional.cross_entropy(compiled(x), y))
        sched.step()
    assert sched.events["decisions"] == 2, sched.events
    assert sched.events["errors"] == 0
    feats = sched.units[0].features.values_dict()
    assert math.isfinite(feats["grad_cos_ema_50"]) and math.isfinite(feats["log_upd_ratio_max"])


def test_params_without_gradients_count_as_zero_and_leave_the_ratios():
    torch.manual_seed(0)
    used, unused = nn.Linear(4, 3), nn.Linear(4, 3)
    opt = torch.optim.SGD(list(used.parameters()) + list(unused.parameters()), lr=0.1)
    probe = StepProbe(opt)
    prev = None
    for _ in range(3):
        x = torch.randn(8, 4)
        opt.zero_grad()
        before = [p.detach().clone() for p in used.parameters()]
        allw = _flat([p.detach() for p in opt.param_groups[0]["params"]]).clone()
        used(x).pow(2).mean().backward()
        g = _flat([p.grad for p in used.parameters()]).clone()
        opt.step()
        taken = probe.take()
        assert taken[1] is not None and taken[1].tolist() == [True, True, False, False]
        row, prev = summarise(taken[0][None], taken[1][None], prev)
        st = dict(zip(PROBE_COLUMNS, row[0].tolist()))
        ratios = [
            float((p.detach() - b).norm() / b.norm()) for p, b in zip(used.parameters(), before)
        ]
        assert st["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-5)
        assert st["weight_norm"] == pytest.approx(float(allw.norm()), rel=1e-5)
        assert st["upd_ratio_max"] == pytest.approx(max(ratios), rel=1e-5)
        assert st["upd_ratio_min"] == pytest.approx(min(ratios), rel=1e-5)
        assert st["finite"] == 1.0


def test_step_with_a_closure_measures_the_gradient_the_closure_computed():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    probe = StepProbe(opt)
    for t in range(3):
        x, y = batch(t)
        seen = {}

        def closure(x=x, y=y, seen=seen):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            seen["g"] = _flat([p.grad for p in model.parameters()]).clone()
            seen["w"] = _flat([p.detach() for p in model.parameters()]).clone()
            return loss

        opt.step(closure) if t % 2 else opt.step(closure=closure)
        stats, _ = _stats(probe)
        assert stats["grad_norm"] == pytest.approx(float(seen["g"].norm()), rel=1e-5)
        assert stats["weight_norm"] == pytest.approx(float(seen["w"].norm()), rel=1e-5)
    assert probe.errors == 0


@pytest.mark.parametrize("path", ["native", "torch-cumsum"])
def test_every_probe_path_gives_the_same_statistics(path, monkeypatch):
    """CPU float32 models take the native one-pass kernels where they load; otherwise the torch
    backend (block sums and a block -> layer membership product, or, for models where that matrix
    would be large, a cumulative sum over blocks). Same numbers as the torch backend with the
    membership product, for the whole model and for each param group (layer-wise units), with a
    layer left without grad."""
    import trajlib.measure._torch as torch_mod

    def run(backend: str) -> tuple[list[tuple[list, list]], str]:
        model = make_model()
        opt = two_groups(model)
        probe = StepProbe(opt, backend=backend)
        out, prev_all, prev_grp = [], None, [None, None]
        for t in range(4):
            x, y = batch(t)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            if t == 2:
                model[2].bias.grad = None  # a layer without a gradient this step
            opt.step()
            stats, present = probe.take()
            p = None if present is None else present[None]
            row, prev_all = summarise(stats[None], p, prev_all)
            groups = []
            for g in (0, 1):
                idx = torch.tensor([i for i, lg in enumerate(probe.layer_groups) if lg == g])
                pg = None if present is None else present[idx][None]
                r, prev_grp[g] = summarise(stats[None][:, :, idx], pg, prev_grp[g])
                groups.append(r[0].tolist())
            out.append((row[0].tolist(), groups))
        name = probe.backend_name
        if name == "torch" and probe._sums._membership is None:  # type: ignore[union-attr]
            name = "torch-cumsum"
        return out, name

    ref, ref_path = run("torch")
    assert ref_path == "torch"  # this model is small: the membership product
    if path == "native":
        require_native()
        got, got_path = run("native")
    else:
        monkeypatch.setattr(torch_mod, "_MEMBERSHIP_LIMIT", 0)
        got, got_path = run("torch")
    assert got_path == path
    for (a, ga), (b, gb) in zip(ref, got):
        np.testing.assert_allclose(b, a, rtol=2e-5, equal_nan=True)
        np.testing.assert_allclose(gb, ga, rtol=2e-5, equal_nan=True)
    assert not math.isnan(ref[-1][0][PROBE_COLUMNS.index("grad_cos")])


def test_probe_follows_parameters_that_move_or_change_type():
    """``p.data = ...`` (new storage) and ``model.double()`` between steps: the probe reads the
    parameters where they are now (the native path re-points, or hands over to the PyTorch path
    for float64), and its statistics stay those of the step."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    probe = StepProbe(opt)
    prev = None
    for t in range(4):
        if t == 1:
            for p in model.parameters():
                p.data = p.data.clone()
        if t == 3:
            model.double()
            for s in opt.state.values():
                s["momentum_buffer"] = s["momentum_buffer"].double()
        x, y = batch(t)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x.to(next(model.parameters()).dtype)), y).backward()
        g = _flat([p.grad for p in model.parameters()]).clone()
        w = _flat([p.detach() for p in model.parameters()]).clone()
        opt.step()
        u = _flat([p.detach() for p in model.parameters()]) - w
        stats, prev = _stats(probe, prev)
        assert stats["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-5)
        assert stats["weight_norm"] == pytest.approx(float(w.norm()), rel=1e-5)
        assert stats["update_norm"] == pytest.approx(float(u.norm()), rel=1e-4)
    assert probe.errors == 0
    assert probe.backend_name == "torch"  # float64 parameters: the torch backend


def test_sparse_gradients_are_measured_as_their_dense_equivalent():
    emb = nn.Embedding(10, 4, sparse=True)
    opt = torch.optim.SGD(emb.parameters(), lr=0.1)
    probe = StepProbe(opt)
    prev = None
    for t in range(3):
        opt.zero_grad()
        emb(torch.tensor([1, 2, 2, t])).sum().backward()
        g = emb.weight.grad.to_dense().clone()
        w = emb.weight.detach().clone()
        opt.step()
        stats, prev = _stats(probe, prev)
        assert stats["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-6)
        assert stats["weight_norm"] == pytest.approx(float(w.norm()), rel=1e-6)
        assert stats["update_norm"] == pytest.approx(
            float((emb.weight.detach() - w).norm()), rel=1e-5
        )
    assert probe.errors == 0


def test_a_non_contiguous_gradient_is_read_in_its_own_layout():
    """A gradient assigned as a transposed view (non-contiguous) is measured as the tensor it is,
    not as its memory read in order (the C hook hands such a step to Python, which copies it)."""
    lin = nn.Linear(3, 5, bias=False)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    probe = StepProbe(opt)
    prev = None
    for t in range(4):
        # alternately contiguous and a transposed view: read in memory order, the dot product
        # with the previous gradient (other layout) would be wrong
        g = torch.randn(5, 3) if t % 2 == 0 else torch.randn(3, 5).t()
        assert g.is_contiguous() == (t % 2 == 0)
        prev_g = None if t == 0 else lin.weight.grad.contiguous().clone()
        lin.weight.grad = g
        w = lin.weight.detach().clone()
        opt.step()
        stats, prev = _stats(probe, prev)
        assert stats["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-6)
        assert stats["update_norm"] == pytest.approx(
            float((lin.weight.detach() - w).norm()), rel=1e-5
        )
        if prev_g is not None:
            cos = float((g * prev_g).sum() / (g.norm() * prev_g.norm()))
            assert stats["grad_cos"] == pytest.approx(cos, rel=1e-5, abs=1e-6)
    assert probe.errors == 0


@pytest.mark.parametrize("path", ["native", "torch"])
def test_without_dots_the_cosines_are_nan_and_the_norms_unchanged(path, monkeypatch):
    """``dots=False`` (a feature set that reads no cosine) skips the dot products: NaN rows,
    every other statistic as with them."""
    if path == "native":
        require_native()
    else:
        monkeypatch.setattr(_native, "lib", lambda: None)
    got = {}
    for dots in (True, False):
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        probe = StepProbe(opt, dots=dots)
        rows = []
        for t in range(3):
            x, y = batch(t)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            stats, _ = probe.take()
            rows.append(stats.clone())
        got[dots] = torch.stack(rows)
    assert probe.backend_name == path
    assert torch.isnan(got[False][:, 3:]).all()
    assert torch.isfinite(got[True][1:, 3:]).all()
    torch.testing.assert_close(got[False][:, :3], got[True][:, :3])


_COMPILED_STEP = """
import json, torch
from torch import nn
from trajlib.deploy import ControllerScheduler
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 1))
opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(1e-3))
sched = ControllerScheduler(opt, "trajlib-lr-v6", total_steps=60)
step = torch.compile(opt.step)
x = torch.randn(256, 20); y = x[:, :1].sin()
for t in range(55):
    loss = nn.functional.mse_loss(model(x[:32]), y[:32])
    opt.zero_grad(); loss.backward(); step()
    sched.observe(loss); sched.step()
probe = sched._probe
print(json.dumps({"events": sched.events, "measured": probe.steps_seen}))
"""


@pytest.mark.slow
def test_a_compiled_optimizer_step_is_measured_eagerly():
    """torch.compile(opt.step) traces the step's hooks with fake tensors: the hooks must run
    outside the graph (the native kernels segfaulted on the fake storage under inductor; the
    eager backend never did). In a child process, so a crash fails the test, not the run."""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _COMPILED_STEP],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["events"]["decisions"] == 2 and res["events"]["errors"] == 0, res
    assert res["measured"] == 55, res


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_a_complex_parameter_is_measured_by_its_real_view(backend):
    """Real and imaginary parts both count (norms of |z|), and nothing casts complex to real
    (torch warns when it discards the imaginary part)."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(20, dtype=torch.cfloat))
    b = nn.Parameter(torch.randn(3))
    opt = torch.optim.SGD([w, b], lr=0.1)
    probe = StepProbe(opt, backend=backend)
    x = torch.randn(8, 20, dtype=torch.cfloat)
    loss = (x @ w).abs().pow(2).mean() + b.pow(2).sum()
    loss.backward()
    grad, before = w.grad.clone(), w.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()
    s, _ = probe.take()
    assert float(s[0, 0].sqrt()) == pytest.approx(float(torch.linalg.vector_norm(grad)), rel=1e-5)
    assert float(s[1, 0].sqrt()) == pytest.approx(float(torch.linalg.vector_norm(before)), rel=1e-5)
    upd = torch.linalg.vector_norm(w.detach() - before)
    assert float(s[2, 0].sqrt()) == pytest.approx(float(upd), rel=1e-4)
