"""The statistics stride (``FeatureSet(stats_every=k)``): offline ``derive`` on a dense record ==
online features fed what the deployed probe measures (statistics only at the measured steps,
cosines only where the step before was measured too, ``finite`` unknown elsewhere), and the probe
measures exactly those steps, with the numbers an every-step probe gives."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from tests.features._gen import TrajSpec, close, make_rows, to_frame
from trajlib import schema
from trajlib.deploy._probe import STRIDED, StepProbe
from trajlib.features import FeatureSet, OnlineFeatures, derive, get_feature_set
from trajlib.features._library import default_features
from trajlib.measure import STEP_STATS, is_measured, stride_masks

COS = (schema.GRAD_COS, schema.UPDATE_COS)


def _strided_set(k: int) -> FeatureSet:
    return FeatureSet(f"stride-test-{k}", 1, default_features(), stats_every=k)


def probe_rows(rows: list[dict], k: int, dots: bool) -> list[dict]:
    """The rows as the deployed scheduler builds them under stride ``k``: a step the probe leaves
    out has no statistics and ``finite`` None; a measured step after a left-out one has no cosine
    (the probe forgot the previous step)."""
    out, has_prev = [], False
    for s, row in enumerate(rows):
        r = dict(row)
        if not is_measured(s, k, dots):
            for c in STEP_STATS:
                r[c] = None
            r["finite"] = None
            has_prev = False
        else:
            if not has_prev:
                for c in COS:
                    r[c] = None
            has_prev = dots
        out.append(r)
    return out


specs = st.builds(
    TrajSpec,
    n=st.one_of(st.integers(0, 12), st.sampled_from([60, 200, 250])),
    seed=st.integers(0, 2**31 - 1),
    bad_rate=st.sampled_from([0.0, 0.0, 0.05, 0.3]),
    const_loss=st.booleans(),
    val_every=st.sampled_from([0, 3, 50]),
    lr_changes=st.integers(0, 3),
)


@settings(settings.get_profile("features"), max_examples=40)
@given(specs, st.sampled_from([1, 2, 4]), st.sampled_from([10, 25, 50]))
def test_offline_equals_online_with_a_stride(spec: TrajSpec, k: int, every: int) -> None:
    fs = _strided_set(k)
    assert fs.reads_cosines
    rows = make_rows(spec)
    for c in COS:  # as in a real record: no cosine at the first step
        if rows:
            rows[0][c] = None
    n = spec.n
    steps = list(range(0, n + 1, every)) + ([n] if n % every else [])
    points = pl.DataFrame({"run_id": ["r"] * len(steps), "step": steps})
    off = derive(to_frame({"r": rows}), points, {"r": n + every}, fs)
    on = OnlineFeatures(fs, budget=n + every)
    seen = probe_rows(rows, k, fs.reads_cosines)
    for i, s in enumerate(steps):
        while on.steps_seen < s:
            on.update(seen[on.steps_seen])
        got, want = on.values(), off.row(i)[2:-1]
        bad = [
            (name, float(g), w)
            for name, g, w in zip(fs.names, got, want, strict=True)
            if not close(float(g), w, 1e-6, 1e-9)
        ]
        assert not bad, f"k={k} step {s}: {bad}"


def test_stride_changes_what_the_strided_features_see() -> None:
    """Not a no-op: on a run whose statistics differ on the left-out steps, the stride-4 features
    differ from the every-step ones (and the loss features do not)."""
    rows = make_rows(TrajSpec(200, 7))
    for r in rows:
        if not is_measured(r["step"], 4, True):
            r["grad_norm"] = r["grad_norm"] * 50.0
    points = pl.DataFrame({"run_id": ["r"], "step": [200]})
    a = derive(to_frame({"r": rows}), points, {"r": 200}, "default")
    b = derive(to_frame({"r": rows}), points, {"r": 200}, "default-s4")
    names = get_feature_set("default").names
    differ = {n for n in names if not close(float(a[n][0]), float(b[n][0]))}
    assert any(n.startswith("grad_norm") for n in differ), differ
    assert not any(n.startswith("loss") for n in differ), differ


def test_default_set_hash_is_unchanged_and_the_strided_variant_is_registered() -> None:
    fs = get_feature_set("default")
    assert fs.stats_every == 1 and "stats_every" not in fs.spec()
    # the hash the shipped checkpoint records
    assert fs.hash == "f02f40fe5a7c8f7ed24de4c84c42a59217e94c8a11b217c7e4cb1a0cc2fe7533"
    s4 = get_feature_set("default-s4")
    assert s4.stats_every == 4 and s4.names == fs.names and s4.hash != fs.hash
    with pytest.raises(Exception, match="stats_every"):
        FeatureSet("x", 1, default_features(), stats_every=0)


def test_stride_masks_name_every_kth_step_and_the_one_before_for_cosines() -> None:
    m, c = stride_masks(np.arange(9), 4, True)
    assert m.tolist() == [1, 0, 0, 1, 1, 0, 0, 1, 1]
    assert c.tolist() == [1, 0, 0, 0, 1, 0, 0, 0, 1]
    m, c = stride_masks(np.arange(9), 4, False)
    assert m.tolist() == [1, 0, 0, 0, 1, 0, 0, 0, 1]
    assert stride_masks(np.arange(5), 2, True)[1].all()  # every step measured for k = 2


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("k", [2, 4])
def test_probe_measures_exactly_the_strided_steps(k: int, backend: str) -> None:
    """Each step the probe measures under stride k has the statistics of an every-step probe on
    the same run (cosines NaN where the step before was left out); the others are STRIDED; a step
    the optimizer never ran is None, not STRIDED. The offline masks name the same steps."""
    from tests.measure._require import require_native

    if backend == "native":
        require_native()

    def run(stride: int) -> list:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        probe = StepProbe(opt, stats_every=stride, backend=backend)
        gen = torch.Generator().manual_seed(1)
        out = []
        for _ in range(12):
            x, y = torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            out.append(probe.take())
        assert probe.backend_name == backend and probe.errors == 0
        assert probe.take() is None  # no optimizer step since: not STRIDED
        return out

    dense, strided = run(1), run(k)
    measured, cos_ok = stride_masks(np.arange(12), k, True)
    for s, (d, t) in enumerate(zip(dense, strided, strict=True)):
        if not measured[s]:
            assert t is STRIDED
            continue
        assert isinstance(t, tuple) and t[1] is None
        rows = [0, 1, 2, 3, 4] if cos_ok[s] and s > 0 else [0, 1, 2]
        torch.testing.assert_close(t[0][rows], d[0][rows], rtol=1e-5, atol=1e-7)
        if not cos_ok[s]:
            assert torch.isnan(t[0][3:]).all()
    assert math.isnan(float(strided[0][0][3, 0]))  # the first step has no previous one
