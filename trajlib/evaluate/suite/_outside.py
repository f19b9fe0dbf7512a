"""The outside held-out families: a third set, written from the README alone.

These eight families were written after ``trajlib-lr-v8`` was shipped, by a session that had read
the README only and never saw the controllers (their code, checkpoints, docs or any evaluation
report): small training problems as a user would write them for their own work, not shaped by how
the controller works. They are never used to choose anything. ``trajlib suite CHECKPOINT --set
outside`` runs them.

An MLP with BatchNorm + dropout on flattened digits under SGD with momentum, a 1-D CNN classifying
generated waveforms under AdamW, a small pre-norm transformer with a [CLS] token on generated
sentences with negation under Adam (eps 1e-6, betas 0.9 / 0.95), a Tanh MLP on Friedman #1 with
noise features under Adam, a wide one-hidden-layer net with class-weighted cross-entropy on an
imbalanced ``make_classification`` under plain SGD, a CNN with depthwise-separable convolutions on
digits under RMSprop with momentum, an LSTM on the adding problem under RAdam with decoupled weight
decay, and a multi-output MLP regression under Adamax. Data are generated from the suite's data
seed (offset, so no draw is another set's) or come from scikit-learn's bundled sets and
generators, no downloads.
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from trajlib.evaluate.suite._families import (
    _DATA_SEED,
    Family,
    Splits,
    _ce,
    _digits_split,
    _fam,
    _gen,
    _mse,
    _split,
    _split_arrays,
)

__all__ = ["OUTSIDE_FAMILIES"]


# ------------------------------------------------------------------------------------ data
def _digits_outside() -> Splits:
    """The 8x8 digits (pixels / 16), split with a permutation of their own."""
    return _digits_split(2)


def _digits_flat() -> Splits:
    return _digits_split(2, flat=True)


@functools.cache
def _waveforms() -> Splits:
    """Noisy waveforms of length 64 (1-4 cycles, random phase, amplitude and offset); the label is
    the shape: sine, square, sawtooth or triangle."""
    g = _gen()
    n, length = 4000, 64
    label = torch.randint(0, 4, (n,), generator=g)
    cycles = 1 + 3 * torch.rand(n, 1, generator=g)
    phase = torch.rand(n, 1, generator=g)
    amp = 0.5 + torch.rand(n, 1, generator=g)
    offset = 0.5 * torch.randn(n, 1, generator=g)
    t = torch.linspace(0, 1, length)[None, :]
    u = (cycles * t + phase) % 1.0  # position within the cycle, in [0, 1)
    shapes = torch.stack(
        [
            torch.sin(2 * math.pi * u),
            torch.where(u < 0.5, 1.0, -1.0),
            2 * u - 1,
            1 - 4 * (u - 0.5).abs(),
        ]
    )
    x = shapes[label, torch.arange(n)] * amp + offset + 0.4 * torch.randn(n, length, generator=g)
    return _split(x[:, None, :], label, n_val=500, n_test=1000)


_NOT, _SENT_VOCAB, _SENT_LEN = 23, 24, 16


@functools.cache
def _negation_sentences() -> Splits:
    """Token sentences (length 16, vocabulary 24: words 0-7 positive, 8-15 negative, 16-22
    neutral, 23 'not'): one sentiment word (two thirds of them) or three among neutral ones, each
    negated by a 'not' just before it with probability 0.2 (and a few stray 'not's before neutral
    words); the label is the sentence's polarity (negative / positive) after negation: the
    majority of its sentiment words."""
    rng = np.random.default_rng(_DATA_SEED + 3)
    n = 4000
    x = rng.integers(16, 23, (n, _SENT_LEN))
    y = np.zeros(n, dtype=np.int64)
    for i in range(n):
        k = 1 if rng.random() < 2 / 3 else 3
        slots = rng.choice(np.arange(1, _SENT_LEN, 2), size=k, replace=False)
        score = 0
        for s in slots:
            positive = rng.random() < 0.5
            x[i, s] = rng.integers(0, 8) + (0 if positive else 8)
            negated = rng.random() < 0.2
            if negated:
                x[i, s - 1] = _NOT
            score += (1 if positive else -1) * (-1 if negated else 1)
        stray = [t for t in range(0, _SENT_LEN, 2) if x[i, t] != _NOT and t + 1 not in slots]
        for t in stray:
            if rng.random() < 0.05:
                x[i, t] = _NOT
        y[i] = int(score > 0)
    return _split(torch.tensor(x), torch.tensor(y), n_val=500, n_test=1000)


@functools.cache
def _friedman1_noisy() -> Splits:
    """Friedman #1 with 20 inputs (10 of them pure noise), inputs and target standardised."""
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_samples=3000, n_features=20, noise=0.5, random_state=_DATA_SEED + 4)
    x = (x - x.mean(0)) / x.std(0)
    return _split_arrays(x, (y - y.mean()) / y.std(), n_val=500, n_test=1000)


@functools.cache
def _imbalanced() -> tuple[Splits, torch.Tensor]:
    """3 classes in proportions 80 / 15 / 5 % (make_classification), with the inverse-frequency
    class weights of the training split (``n / (classes * count)``, as sklearn's 'balanced')."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=4000, n_features=12, n_informative=6, n_redundant=2, n_classes=3,
        weights=[0.8, 0.15, 0.05], class_sep=0.8, flip_y=0.01, random_state=_DATA_SEED + 5,
    )  # fmt: skip
    splits = _split_arrays(x, y, n_val=500, n_test=1000)
    y_train = splits.train.tensors[1]  # type: ignore[attr-defined]
    counts = torch.bincount(y_train, minlength=3).float()
    return splits, len(y_train) / (3 * counts)


@functools.cache
def _adding_problem() -> Splits:
    """The adding problem (Hochreiter & Schmidhuber 1997), length 20: channel 0 random values in
    [0, 1], channel 1 marks two positions (one in each half); the target is the sum of the two
    marked values, centred (its mean is 1)."""
    g = _gen()
    n, length = 4000, 20
    values = torch.rand(n, length, generator=g)
    first = torch.randint(0, length // 2, (n,), generator=g)
    second = torch.randint(length // 2, length, (n,), generator=g)
    marks = torch.zeros(n, length)
    rows = torch.arange(n)
    marks[rows, first] = 1.0
    marks[rows, second] = 1.0
    y = values[rows, first] + values[rows, second] - 1.0
    return _split(torch.stack([values, marks], -1), y[:, None], n_val=500, n_test=1000)


@functools.cache
def _multi_targets() -> Splits:
    """make_regression with 3 targets from 16 inputs (8 informative), noise; every target
    standardised."""
    from sklearn.datasets import make_regression

    x, y = make_regression(
        n_samples=3000, n_features=16, n_informative=8, n_targets=3, noise=20.0,
        random_state=_DATA_SEED + 6,
    )  # fmt: skip
    x = (x - x.mean(0)) / x.std(0)
    y = (y - y.mean(0)) / y.std(0)
    return _split(
        torch.tensor(x, dtype=torch.float32),
        torch.tensor(np.asarray(y), dtype=torch.float32),
        n_val=500,
        n_test=1000,
    )


# ---------------------------------------------------------------------------------- models
class BNMLP(nn.Module):
    def __init__(self, d_in: int = 64, h: int = 128, classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(0.3),
            nn.Linear(h, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(0.3),
            nn.Linear(h, classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class WaveCNN(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 16, 7, padding=3), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(32, 32, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(-1))


class PreNormBlock(nn.Module):
    def __init__(self, d: int, heads: int, p: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=p, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Dropout(p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class CLSTransformer(nn.Module):
    """A small pre-norm transformer written by hand: a learned [CLS] token, learned positions,
    the [CLS] output classifies."""

    def __init__(self, d: int = 32, heads: int = 2, layers: int = 2, classes: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(_SENT_VOCAB, d)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(0.02 * torch.randn(1, _SENT_LEN + 1, d))
        self.blocks = nn.Sequential(*(PreNormBlock(d, heads, 0.1) for _ in range(layers)))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.emb(x)], 1)
        h = self.blocks(h + self.pos[:, : h.shape[1]])
        return self.head(self.norm(h[:, 0]))


class TanhMLP(nn.Module):
    def __init__(self, d_in: int = 20, h: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class WideNet(nn.Module):
    """Wide and shallow: one hidden layer of 512 units."""

    def __init__(self, d_in: int = 12, h: int = 512, classes: int = 3) -> None:
        super().__init__()
        self.hidden = nn.Linear(d_in, h)
        self.out = nn.Linear(h, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.hidden(x)))


def _weighted_ce(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y, weight=_imbalanced()[1])


class SeparableConv(nn.Module):
    """Depthwise 3x3 then pointwise 1x1, each with BatchNorm and ReLU (MobileNet's block)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.pointwise = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.depthwise(x)))
        return F.relu(self.bn2(self.pointwise(x)))


class SeparableCNN(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.blocks = nn.Sequential(SeparableConv(16, 32), nn.MaxPool2d(2), SeparableConv(32, 64))
        self.head = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class LSTMRegressor(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.lstm = nn.LSTM(2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class MultiOutputMLP(nn.Module):
    def __init__(self, d_in: int = 16, h: int = 64, d_out: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, d_out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# -------------------------------------------------------------------------------- families
OUTSIDE_FAMILIES: dict[str, Family] = {
    f.name: replace(f, group="outside")
    for f in (
        _fam(
            "bnmlp-digits",
            "MLP with BatchNorm + dropout on flattened digits, SGD with momentum",
            "SGD",
            0.05,
            _digits_flat,
            BNMLP,
            _ce,
            budget=400,
            batch_size=64,
            momentum=0.9,
        ),
        _fam(
            "cnn1d-waves",
            "1-D CNN classifying noisy generated waveforms (sine, square, sawtooth, triangle)",
            "AdamW",
            1e-3,
            _waveforms,
            WaveCNN,
            _ce,
            budget=400,
            batch_size=32,
            weight_decay=1e-2,
        ),
        _fam(
            "clsformer-negation",
            "pre-norm transformer with a [CLS] token, sentence polarity with negation",
            "Adam",
            1e-3,
            _negation_sentences,
            CLSTransformer,
            _ce,
            budget=400,
            batch_size=32,
            options={"betas": (0.9, 0.95), "eps": 1e-6},
        ),
        _fam(
            "tanh-friedman1",
            "Tanh MLP regression, Friedman #1 with 10 noise inputs",
            "Adam",
            1e-3,
            _friedman1_noisy,
            TanhMLP,
            _mse,
            budget=500,
            batch_size=32,
        ),
        _fam(
            "wide-imbalanced",
            "wide one-hidden-layer net, class-weighted cross-entropy, imbalanced 3 classes",
            "SGD",
            0.1,
            lambda: _imbalanced()[0],
            WideNet,
            _weighted_ce,
            budget=300,
            batch_size=64,
        ),
        _fam(
            "sepcnn-digits",
            "CNN with depthwise-separable convs + BatchNorm, digits, RMSprop with momentum",
            "RMSprop",
            1e-3,
            _digits_outside,
            SeparableCNN,
            _ce,
            budget=300,
            batch_size=32,
            momentum=0.9,
        ),
        _fam(
            "lstm-adding",
            "LSTM regression on the adding problem (length 20), RAdam with decoupled decay",
            "RAdam",
            1e-3,
            _adding_problem,
            LSTMRegressor,
            _mse,
            budget=600,
            batch_size=64,
            weight_decay=1e-2,
            options={"decoupled_weight_decay": True},
        ),
        _fam(
            "multiout-regression",
            "MLP regression of 3 targets at once (make_regression), Adamax",
            "Adamax",
            2e-3,
            _multi_targets,
            MultiOutputMLP,
            _mse,
            budget=300,
            batch_size=128,
        ),
    )
}
