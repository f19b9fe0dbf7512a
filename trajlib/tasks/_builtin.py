"""Built-in tasks. None downloads anything: data come from mnist1d's generator, scikit-learn's
bundled data sets, synthetic generators, and Python's own standard-library source text.

Default LRs are deliberately *not* all tuned: the suite holds tasks whose default LR is too high
(>= 3x the best constant LR) and too low (<= 1/3 of it), because a controller must learn corrections
in both directions. ``best_lr`` is the best constant LR of an 8-LR x 2-seed sweep at the task's budget
(``scripts/sweep_tasks.py``; table in docs/tasks.md); recipes can center start LRs on it.
"""

from __future__ import annotations

import functools
import inspect
import math

import numpy as np
import torch
from torch import nn

from trajlib.tasks._base import Task, TaskData, register_task

_DATA_SEED = 12345  # data splits are fixed per task; runs vary by the run seed only


def _split(
    x: np.ndarray, y: np.ndarray, n_val: int, n_test: int, y_float: bool = False
) -> TaskData:
    rng = np.random.default_rng(_DATA_SEED)
    idx = rng.permutation(len(x))
    te, va, tr = idx[:n_test], idx[n_test : n_test + n_val], idx[n_test + n_val :]

    def t(a: np.ndarray, i: np.ndarray, is_y: bool) -> torch.Tensor:
        arr = a[i]
        if is_y and not y_float:
            return torch.as_tensor(arr, dtype=torch.int64)
        return torch.as_tensor(arr, dtype=torch.float32)

    return TaskData(
        t(x, tr, False),
        t(y, tr, True),
        t(x, va, False),
        t(y, va, True),
        t(x, te, False),
        t(y, te, True),
    )


# ----------------------------------------------------------------------------------- data sets
@functools.cache
def mnist1d_data() -> TaskData:
    """mnist1d (Greydanus 2020) from its procedural generator: 5,000 length-40 signals, 10 classes."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = 42
    d = make_dataset(args)
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float32)
    y = np.concatenate([d["y"], d["y_test"]]).astype(np.int64)
    x = (x - x.mean()) / x.std()
    return _split(x, y, n_val=500, n_test=1000)


@functools.cache
def digits_data() -> TaskData:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return _split(
        d.data.astype(np.float32) / 16.0, d.target.astype(np.int64), n_val=300, n_test=300
    )


@functools.cache
def teacher_student_data() -> TaskData:
    """Regression targets from a random 2-layer tanh teacher on Gaussian inputs (+ 10 % noise)."""
    g = torch.Generator().manual_seed(_DATA_SEED)
    n, d_in, d_h = 6000, 20, 32
    x = torch.randn(n, d_in, generator=g)
    w1 = torch.randn(d_in, d_h, generator=g) / math.sqrt(d_in)
    w2 = torch.randn(d_h, 1, generator=g) / math.sqrt(d_h)
    y = torch.tanh(x @ w1 * 2.0) @ w2
    y = y + 0.1 * y.std() * torch.randn(y.shape, generator=g)
    y = (y - y.mean()) / y.std()
    return _split(x.numpy(), y.numpy(), n_val=1000, n_test=1000, y_float=True)


@functools.cache
def synth_classification_data() -> TaskData:
    """scikit-learn's make_classification: 6,000 points, 30 features (12 informative), 6 classes."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=6000,
        n_features=30,
        n_informative=12,
        n_redundant=6,
        n_classes=6,
        n_clusters_per_class=2,
        class_sep=1.0,
        flip_y=0.03,
        random_state=_DATA_SEED,
    )
    x = (x - x.mean(0)) / x.std(0)
    return _split(x.astype(np.float32), y.astype(np.int64), n_val=1000, n_test=1000)


CHAR_CONTEXT = 32


@functools.cache
def char_text() -> str:
    """Text present on every Python install: the source of a few standard-library modules."""
    import argparse
    import collections
    import json.decoder
    import textwrap

    parts = [inspect.getsource(m) for m in (textwrap, argparse, collections, json.decoder)]
    return "".join(ch for ch in "\n".join(parts) if 32 <= ord(ch) < 127 or ch == "\n")


@functools.cache
def char_data() -> TaskData:
    """Next-character prediction windows of 32 chars over ``char_text()``; 96-symbol vocabulary."""
    text = char_text()
    ids = np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int64)
    ids = np.where(ids == 10, 0, ids - 31)  # '\n' -> 0, ' '..'~' -> 1..95
    n = (len(ids) - 1) // CHAR_CONTEXT
    x = ids[: n * CHAR_CONTEXT].reshape(n, CHAR_CONTEXT)
    y = ids[1 : n * CHAR_CONTEXT + 1].reshape(n, CHAR_CONTEXT)
    n_val = n_test = max(200, n // 10)
    rng = np.random.default_rng(_DATA_SEED)
    idx = rng.permutation(n)
    te, va, tr = idx[:n_test], idx[n_test : n_test + n_val], idx[n_test + n_val :]
    T = torch.as_tensor
    return TaskData(T(x[tr]), T(y[tr]), T(x[va]), T(y[va]), T(x[te]), T(y[te]))


# ----------------------------------------------------------------------------------- models
def mlp(d_in: int, hidden: tuple[int, ...], d_out: int) -> nn.Module:
    layers: list[nn.Module] = []
    d = d_in
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


class CNN1d(nn.Module):
    """Small 1-D CNN for length-40 signals (mnist1d)."""

    def __init__(self, channels: int = 16, n_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=2)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.head = nn.Linear(channels * 10, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x.unsqueeze(-2)))
        h = torch.relu(self.conv2(h))
        return self.head(h.flatten(-2))


class CNN2d(nn.Module):
    """Small 2-D CNN for 8x8 digits."""

    def __init__(self, channels: int = 16, n_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.head = nn.Linear(channels * 16, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x.unflatten(-1, (1, 8, 8))))
        h = torch.relu(self.conv2(h))
        return self.head(h.flatten(-3))


class TinyTransformerLM(nn.Module):
    """One-block causal transformer over characters (plain ops, so torch.func.vmap batches it)."""

    mask: torch.Tensor  # causal mask (a non-persistent buffer)

    def __init__(
        self, vocab: int = 96, d: int = 48, heads: int = 4, context: int = CHAR_CONTEXT
    ) -> None:
        super().__init__()
        self.heads = heads
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(context, d) * 0.02)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ff1 = nn.Linear(d, 4 * d)
        self.ff2 = nn.Linear(4 * d, d)
        self.ln1 = nn.LayerNorm(d)
        self.ln2 = nn.LayerNorm(d)
        self.out = nn.Linear(d, vocab)
        self.register_buffer(
            "mask", torch.tril(torch.ones(context, context, dtype=torch.bool)), persistent=False
        )

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[-1]
        h = self.tok(idx) + self.pos[:T]
        q, k, v = self.qkv(self.ln1(h)).chunk(3, dim=-1)
        dh = q.shape[-1] // self.heads
        q, k, v = (z.unflatten(-1, (self.heads, dh)).transpose(-3, -2) for z in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(dh)
        att = att.masked_fill(~self.mask[:T, :T], float("-inf")).softmax(-1)
        h = h + self.proj((att @ v).transpose(-3, -2).flatten(-2))
        h = h + self.ff2(torch.relu(self.ff1(self.ln2(h))))
        return self.out(h)


# ----------------------------------------------------------------------------------- tasks
@register_task("mnist1d-mlp")
def _mnist1d_mlp() -> Task:
    return Task(
        "mnist1d-mlp",
        "mnist1d",
        lambda: mlp(40, (100, 100), 10),
        mnist1d_data,
        optimizer="sgd",
        default_lr=0.05,
        momentum=0.9,
        budget=2000,
        batch_size=128,
        best_lr=0.0116,  # scripts/sweep_tasks.py, docs/tasks.md
        description="MLP 40-100-100-10 on mnist1d, SGD+momentum",
    )


@register_task("mnist1d-cnn")
def _mnist1d_cnn() -> Task:
    return Task(
        "mnist1d-cnn",
        "mnist1d",
        lambda: CNN1d(16),
        mnist1d_data,
        optimizer="adamw",
        default_lr=3e-3,
        momentum=0.9,
        weight_decay=1e-2,
        budget=1000,
        batch_size=128,
        best_lr=0.0341,  # scripts/sweep_tasks.py, docs/tasks.md
        description="1-D CNN (2 conv layers) on mnist1d, AdamW",
    )


@register_task("digits-mlp")
def _digits_mlp() -> Task:
    return Task(
        "digits-mlp",
        "digits",
        lambda: mlp(64, (64,), 10),
        digits_data,
        optimizer="sgd",
        default_lr=0.02,
        momentum=0.9,
        budget=1500,
        batch_size=64,
        best_lr=0.227,  # scripts/sweep_tasks.py, docs/tasks.md
        description="MLP 64-64-10 on scikit-learn digits, SGD+momentum",
    )


@register_task("digits-cnn")
def _digits_cnn() -> Task:
    return Task(
        "digits-cnn",
        "digits",
        lambda: CNN2d(12),
        digits_data,
        optimizer="adamw",
        default_lr=1e-2,
        momentum=0.9,
        weight_decay=1e-2,
        budget=1000,
        batch_size=64,
        best_lr=0.00615,  # scripts/sweep_tasks.py, docs/tasks.md
        description="2-D CNN on 8x8 digits, AdamW",
    )


@register_task("teacher-student")
def _teacher_student() -> Task:
    return Task(
        "teacher-student",
        "teacher-student",
        lambda: mlp(20, (64, 64), 1),
        teacher_student_data,
        loss="mse",
        optimizer="sgd",
        default_lr=0.01,
        momentum=0.9,
        budget=2000,
        batch_size=128,
        best_lr=0.0163,  # scripts/sweep_tasks.py, docs/tasks.md
        description="MLP student 20-64-64-1 regressing a random tanh teacher, SGD+momentum",
    )


@register_task("synth-classification")
def _synth_cls() -> Task:
    return Task(
        "synth-classification",
        "synthetic",
        lambda: mlp(30, (128, 64), 6),
        synth_classification_data,
        optimizer="sgd",
        default_lr=0.1,
        momentum=0.9,
        budget=1500,
        batch_size=128,
        best_lr=0.00881,  # scripts/sweep_tasks.py, docs/tasks.md
        description="MLP 30-128-64-6 on make_classification, SGD+momentum",
    )


@register_task("char-lm")
def _char_lm() -> Task:
    return Task(
        "char-lm",
        "language",
        lambda: TinyTransformerLM(d=32, heads=2),
        char_data,
        optimizer="adamw",
        default_lr=3e-3,
        momentum=0.9,
        weight_decay=0.01,
        budget=500,
        batch_size=32,
        val_every=25,
        best_lr=0.0129,  # scripts/sweep_tasks.py, docs/tasks.md
        description="1-block causal transformer, next char over stdlib source, AdamW",
    )
