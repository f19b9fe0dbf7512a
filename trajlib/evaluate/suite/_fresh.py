"""The fresh held-out families: a second set, written after the shipped controllers were chosen.

Every design choice of the shipped controllers (features, data, labels, the do-no-harm rule, the
raise guard, the lookahead's settings) was compared on the eleven families of
:data:`~trajlib.evaluate.suite.FAMILIES`, pass after pass, so their figures carry some selection.
These eight families were defined, and committed, before any controller ran on them; they are
never used to choose anything. ``trajlib suite CHECKPOINT --set fresh`` runs them.

They are user-style loops as well, again with architectures and optimizers absent from the
training distribution: a GRU regressor under RMSprop, a 1-D CNN with GroupNorm under SGD with
Nesterov momentum and weight decay, a LeNet-style CNN with BatchNorm and dropout under AdamW with
two param groups (no decay on biases and norms), a pre-norm causal transformer language model on
generated text, logistic regression under ASGD, an MLP with dropout under Adadelta, a residual MLP
with LayerNorm under Adam with L2, and a metric-learning embedding trained with a triplet loss.
Data are generated from the suite's data seed or come from scikit-learn's bundled sets and
mnist1d's generator (another draw than the suite's), no downloads.
"""

from __future__ import annotations

import functools
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
    _digits_images,
    _digits_split,
    _fam,
    _gen,
    _mnist1d_draw,
    _mse,
    _split,
    _split_arrays,
)

__all__ = ["FRESH_FAMILIES"]


# ------------------------------------------------------------------------------------ data
@functools.cache
def _signal_products() -> Splits:
    """Two noisy channels of length 24; the target is their lagged product summed over time
    (``sum_t a[t] * b[t-2]``), standardised: a recurrent net must multiply and accumulate."""
    g = _gen()
    n = 4000
    x = torch.rand(n, 24, 2, generator=g) * 2 - 1
    y = (x[:, 2:, 0] * x[:, :-2, 1]).sum(1)
    y = (y - y.mean()) / y.std()
    return _split(x, y[:, None], n_val=500, n_test=1000)


@functools.cache
def _mnist1d_other() -> Splits:
    return _mnist1d_draw(11)  # neither the training distribution's draw nor the first suite's


def _digits_fresh() -> Splits:
    return _digits_split(1)


_WORDS = {
    "det": ["the", "a", "every", "no"],
    "adj": ["small", "red", "quiet", "old", "bright", "heavy"],
    "noun": ["cat", "river", "engine", "garden", "letter", "tower", "lamp"],
    "verb": ["sees", "moves", "follows", "holds", "opens", "finds"],
    "adv": ["slowly", "twice", "again", "today"],
}


@functools.cache
def _grammar_text() -> tuple[Splits, int]:
    """Sentences of a small probabilistic grammar (``det [adj] noun verb det [adj] noun
    [adv].``), as characters; windows of 33 characters (input 32, next-character targets)."""
    rng = np.random.default_rng(_DATA_SEED)

    def pick(kind: str) -> str:
        words = _WORDS[kind]
        return words[int(rng.integers(len(words)))]

    def phrase() -> str:
        adj = f"{pick('adj')} " if rng.random() < 0.5 else ""
        return f"{pick('det')} {adj}{pick('noun')}"

    parts = []
    for _ in range(6000):
        adv = f" {pick('adv')}" if rng.random() < 0.3 else ""
        parts.append(f"{phrase()} {pick('verb')} {phrase()}{adv}. ")
    text = "".join(parts)
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text], dtype=torch.int64)
    n = 4000
    starts = torch.randint(0, len(ids) - 33, (n,), generator=_gen())
    windows = torch.stack([ids[s : s + 33] for s in starts.tolist()])
    return _split(windows[:, :-1], windows[:, 1:], n_val=500, n_test=1000), len(chars)


@functools.cache
def _cancer() -> Splits:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    return _split_arrays((x - x.mean(0)) / x.std(0), y, n_val=100, n_test=150)


@functools.cache
def _clusters() -> Splits:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=4000, n_features=20, n_informative=10, n_redundant=4, n_classes=4,
        n_clusters_per_class=2, class_sep=1.0, flip_y=0.02, random_state=_DATA_SEED,
    )  # fmt: skip
    return _split_arrays(x, y, n_val=500, n_test=1000)


@functools.cache
def _friedman2() -> Splits:
    from sklearn.datasets import make_friedman2

    x, y = make_friedman2(n_samples=3000, noise=50.0, random_state=_DATA_SEED)
    x = (x - x.mean(0)) / x.std(0)
    return _split_arrays(x, (y - y.mean()) / y.std(), n_val=500, n_test=1000)


@functools.cache
def _digit_triplets() -> Splits:
    """Fixed triplets of flattened digits: (anchor, another of its class, one of another class)."""
    x, y = _digits_images()
    x = x.flatten(1)
    g = _gen()
    n = 4000
    anchor = torch.randint(0, len(x), (n,), generator=g)
    by_class = [torch.nonzero(y == c).flatten() for c in range(10)]
    pos = torch.empty(n, dtype=torch.int64)
    neg = torch.empty(n, dtype=torch.int64)
    shift = torch.randint(1, 10, (n,), generator=g)
    for i, a in enumerate(anchor.tolist()):
        c = int(y[a])
        same, other = by_class[c], by_class[(c + int(shift[i])) % 10]
        pos[i] = same[torch.randint(0, len(same), (1,), generator=g)]
        neg[i] = other[torch.randint(0, len(other), (1,), generator=g)]
    return _split(x[anchor], x[pos], x[neg], n_val=500, n_test=1000)


# ---------------------------------------------------------------------------------- models
class GRURegressor(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.gru = nn.GRU(2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(x)
        return self.head(h[-1])


class GroupNormCNN1d(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(1, 16, 5, padding=2), nn.GroupNorm(4, 16), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(16, 32, 5, padding=2), nn.GroupNorm(8, 32), nn.ReLU(),
            nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(32, classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LeNetBN(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2), nn.Dropout(0.25),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class CharLM(nn.Module):
    """A pre-norm causal transformer (``norm_first=True``) over characters."""

    mask: torch.Tensor

    def __init__(self, d: int = 48, length: int = 32) -> None:
        super().__init__()
        vocab = _grammar_text()[1]
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(1, length, d))
        layer = nn.TransformerEncoderLayer(
            d, nhead=4, dim_feedforward=2 * d, dropout=0.1, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(length))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        h = self.blocks(self.emb(x) + self.pos[:, :n], mask=self.mask[:n, :n], is_causal=True)
        return self.head(self.norm(h))


def _lm_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


class DropoutMLP(nn.Module):
    def __init__(self, d_in: int = 20, h: int = 64, classes: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, h), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(h, h), nn.ReLU(), nn.Dropout(0.2), nn.Linear(h, classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResMLPBlock(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.ff = nn.Sequential(
            nn.Linear(d, 2 * d), nn.GELU(), nn.Dropout(0.1), nn.Linear(2 * d, d)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ff(self.norm(x))


class ResMLP(nn.Module):
    def __init__(self, d_in: int = 4, d: int = 64) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, d)
        self.blocks = nn.Sequential(*(ResMLPBlock(d) for _ in range(3)))
        self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.inp(x)))


class Embedder(nn.Module):
    """An MLP embedding onto the unit sphere (metric learning)."""

    def __init__(self, d_in: int = 64, h: int = 128, d_out: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, h), nn.ReLU(), nn.Linear(h, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=-1)


def _triplet_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    a, p, n = batch
    return F.triplet_margin_loss(model(a), model(p), model(n), margin=0.5)


def _adamw_groups(params: Any, lr: float) -> torch.optim.Optimizer:
    """AdamW as many scripts build it: weight decay on the weight matrices and kernels only."""
    ps = list(params)
    return torch.optim.AdamW(
        [
            {"params": [p for p in ps if p.ndim >= 2], "weight_decay": 0.05},
            {"params": [p for p in ps if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=lr,
    )


def _lenet_family() -> Family:
    fam = _fam(
        "lenet-bn-digits",
        "LeNet-style CNN, BatchNorm + dropout, digits; AdamW, no decay on biases / norms",
        "AdamW",
        1e-3,
        _digits_fresh,
        LeNetBN,
        _ce,
        budget=300,
        batch_size=32,
        weight_decay=0.05,
    )
    return replace(
        fam, optimizer="AdamW(2 groups: weight_decay=0.05 / 0)", make_optimizer=_adamw_groups
    )


FRESH_FAMILIES: dict[str, Family] = {
    f.name: replace(f, group="fresh")
    for f in (
        _fam(
            "gru-products",
            "GRU regression: lagged products of two noisy channels, summed",
            "RMSprop",
            1e-2,
            _signal_products,
            GRURegressor,
            _mse,
            budget=500,
            batch_size=32,
        ),
        _fam(
            "gncnn-mnist1d",
            "1-D CNN with GroupNorm, mnist1d (another draw)",
            "SGD",
            0.1,
            _mnist1d_other,
            GroupNormCNN1d,
            _ce,
            budget=400,
            momentum=0.9,
            weight_decay=1e-4,
            options={"nesterov": True},
        ),
        _lenet_family(),
        _fam(
            "charlm-grammar",
            "pre-norm causal transformer language model, characters of a generated grammar",
            "Adam",
            1e-3,
            lambda: _grammar_text()[0],
            CharLM,
            _lm_loss,
            budget=400,
            batch_size=32,
            options={"betas": (0.9, 0.98)},
        ),
        _fam(
            "logreg-cancer",
            "logistic regression, breast cancer (standardised)",
            "ASGD",
            0.1,
            _cancer,
            lambda: nn.Linear(30, 2),
            _ce,
            budget=300,
            batch_size=32,
        ),
        _fam(
            "mlp-clusters",
            "MLP with dropout, 4 classes of Gaussian clusters (make_classification)",
            "Adadelta",
            1.0,
            _clusters,
            DropoutMLP,
            _ce,
            budget=400,
        ),
        _fam(
            "resmlp-friedman2",
            "residual MLP with LayerNorm + dropout, Friedman #2 regression; Adam with L2",
            "Adam",
            1e-3,
            _friedman2,
            ResMLP,
            _mse,
            budget=400,
            weight_decay=1e-4,
        ),
        _fam(
            "triplet-digits",
            "metric learning: MLP embedding of digits, triplet margin loss",
            "SGD",
            0.05,
            _digit_triplets,
            Embedder,
            _triplet_loss,
            budget=300,
            momentum=0.9,
        ),
    )
}
