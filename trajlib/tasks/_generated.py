"""A generated task distribution: tasks sampled deterministically from an integer.

``generated_task(i)`` (also ``get_task("gen-<i>")``) draws, from a generator seeded by ``i`` alone,
an architecture kind, its width / depth, normalisation, dropout, a data source, the loss, an
optimizer, batch size, weight decay, a budget and a default LR; the same ``i`` gives the same task
on every machine. Nothing is downloaded: data come from mnist1d's generator, scikit-learn's bundled
sets and generators, synthetic sequences and images, and Python's standard-library source text.

**Versions.** Version 1 (``gen-<i>``, the distribution every store so far was collected from) is
pinned. Version 2 (``gen2-<i>``) draws from a separate stream and widens the optimizers to what
user loops run: SGD without momentum, RMSprop at torch's default momentum 0, Adagrad and NAdam
besides v1's SGD / Nesterov / Adam / AdamW / RMSprop with momentum. Same families, same models and
data builders, same budgets. Version 3 (``gen3-<i>``) is version 2 with the budgets of longer loops:
log-uniform in 400 .. 5,000 steps (200 .. 2,500 for the slowest kinds) instead of 200 .. 1,500
(200 .. 750), from its own stream — a controller fitted on 1,500-step runs only had never seen the
late phase of a loop that trains for thousands of steps.

Every task carries a **family**, ``<architecture>/<domain>`` (:data:`GENERATED_FAMILIES`): splits
for fitting and evaluation are by family, never by task. Models are small (a few thousand to ~100k
parameters) so a population of runs trains at thousands of model-steps per second on a CPU.
"""

from __future__ import annotations

import functools
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trajlib.errors import ConfigError
from trajlib.tasks._base import GENERATED_VERSIONS, Task, TaskData, _generated_index
from trajlib.tasks._builtin import _split, char_text, digits_data, mnist1d_data

_T = typing.TypeVar("_T")

__all__ = [
    "GENERATED_FAMILIES",
    "GENERATED_PREFIX",
    "generated_task",
    "generated_tasks",
    "is_generated",
]

GENERATED_PREFIX = GENERATED_VERSIONS[1]

# (architecture, domain) -> sampling weight. Families are the unit of held-out splits.
_FAMILY_WEIGHTS: dict[str, float] = {
    "linear/tabular": 0.6,
    "mlp/tabular": 1.0,
    "resmlp/tabular": 1.0,
    "autoencoder/tabular": 0.6,
    "mlp/image": 0.8,
    "cnn2d/image": 1.0,
    "autoencoder/image": 0.7,
    "mlp/signal": 0.8,
    "cnn1d/signal": 1.0,
    "gru/sequence": 0.9,
    "transformer/sequence": 0.8,
    "gru/text": 0.7,
    "transformer/text": 0.8,
}
GENERATED_FAMILIES: tuple[str, ...] = tuple(_FAMILY_WEIGHTS)

# Default LR centres per optimizer (a user's usual first try); each task spreads them x/÷ 3.
_LR_CENTER = {
    "sgd": 0.05,
    "nesterov": 0.05,
    "adam": 1e-3,
    "adamw": 1e-3,
    "rmsprop": 1e-3,
    "adagrad": 1e-2,  # torch's default
    "nadam": 2e-3,  # torch's default
}
_OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw", "rmsprop")
_OPTIMIZERS_V2 = _OPTIMIZERS + ("adagrad", "nadam")
_SEQ_LEN = 16
_SEQ_VOCAB = 8


def is_generated(name: str) -> bool:
    """Whether ``name`` names a generated task (``gen-<i>`` or ``gen2-<i>``)."""
    return _generated_index(name) is not None


def generated_tasks(
    n: int, start: int = 0, families: tuple[str, ...] | None = None, version: int = 1
) -> list[Task]:
    """The first ``n`` generated tasks of generator ``version`` from index ``start`` whose family
    is in ``families`` (all families when None), in index order."""
    if not isinstance(n, int) or n < 0:
        raise ConfigError("n", "a non-negative integer", n)
    _check_version(version)
    if families is not None:
        unknown = sorted(set(families) - set(GENERATED_FAMILIES))
        if unknown:
            raise ConfigError("families", f"families among {GENERATED_FAMILIES}", unknown)
    out: list[Task] = []
    i = start
    while len(out) < n:
        task = generated_task(i, version)
        if families is None or task.family in families:
            out.append(task)
        i += 1
        if i - start > 100 * (n + 1):  # a family list that never matches
            break
    return out


def generated_task(index: int, version: int = 1) -> Task:
    """Generated task number ``index`` of generator ``version`` (a pure function of both)."""
    if not isinstance(index, int) or index < 0:
        raise ConfigError("generated task index", "a non-negative integer", index)
    _check_version(version)
    return _generated(index, version)


def _check_version(version: int) -> None:
    if version not in GENERATED_VERSIONS:
        raise ConfigError("generated version", f"one of {sorted(GENERATED_VERSIONS)}", version)


#: generator version -> the log-uniform range of the budgets (halved for the slowest kinds)
_BUDGETS = {1: (200, 1500), 2: (200, 1500), 3: (400, 5000)}


@functools.cache
def _generated(index: int, version: int = 1) -> Task:
    # version 1's stream is pinned (tests/tasks/test_generated.py); later versions draw their own
    rng = np.random.default_rng([index, 0x7A5C] if version == 1 else [index, 0x7A5C, version])
    fams = list(_FAMILY_WEIGHTS)
    w = np.array([_FAMILY_WEIGHTS[f] for f in fams])
    family = fams[int(rng.choice(len(fams), p=w / w.sum()))]
    arch, domain = family.split("/")
    g = _Draw(rng)
    spec = _DATA_BUILDERS[domain](g, arch)
    model_fn, desc = _MODEL_BUILDERS[arch](g, spec)
    optimizer = g.pick(_OPTIMIZERS if version == 1 else _OPTIMIZERS_V2)
    lr_center = _LR_CENTER[optimizer] * (
        0.3 if arch == "transformer" and optimizer in ("sgd", "nesterov") else 1.0
    )
    default_lr = float(lr_center * math.exp(rng.uniform(-math.log(3), math.log(3))))
    momentum = float(g.pick((0.9, 0.9, 0.95, 0.8)))
    if version >= 2:  # what user loops run: plain SGD, RMSprop's default 0, Adagrad has none
        if optimizer == "adagrad":
            momentum = 0.0
        elif optimizer in ("sgd", "rmsprop"):
            momentum = float(g.pick((0.0, momentum)))
    weight_decay = float(g.pick((0.0, 0.0, 1e-4, 1e-3, 1e-2 if optimizer == "adamw" else 5e-4)))
    lo, hi = _BUDGETS[version]
    budget = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi))) / 50) * 50)
    if arch in ("gru", "transformer", "cnn2d"):  # the slowest kinds: shorter budgets
        budget = max(200, budget // 2 // 50 * 50)
    batch_size = int(
        g.pick((16, 32) if arch in ("gru", "transformer", "cnn2d") else (32, 64, 64, 128))
    )
    name = f"{GENERATED_VERSIONS[version]}{index}"
    return Task(
        name,
        family,
        model_fn,
        spec.data,
        loss=spec.loss,
        optimizer=optimizer,
        default_lr=round(default_lr, 6),
        momentum=momentum,
        weight_decay=weight_decay,
        budget=budget,
        batch_size=batch_size,
        val_every=50,
        description=f"{desc} on {spec.desc}, {optimizer}",
        extra={"generated": index, "version": version, "arch": arch, "domain": domain},
    )


class _Draw:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def pick(self, options: tuple[_T, ...]) -> _T:
        return options[int(self.rng.integers(len(options)))]

    def integer(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi + 1))

    def seed(self) -> int:
        return int(self.rng.integers(2**31))


@dataclass(frozen=True)
class _DataSpec:
    data: Callable[[], TaskData]
    loss: str
    desc: str
    d_in: int  # flat input size (tabular / image / signal), or vocabulary (sequence / text)
    d_out: int  # classes, regression targets, or reconstruction size
    shape: tuple[int, ...] = ()  # image (H, W) or signal (L,) or sequence (T,)
    tokens: bool = False  # int64 token inputs
    per_position: bool = False  # one output per position (language modelling)
    reconstruct: bool = False  # autoencoder: the target is the input


# ----------------------------------------------------------------------------------- data
def _standardise(x: np.ndarray) -> np.ndarray:
    return ((x - x.mean(0)) / (x.std(0) + 1e-8)).astype(np.float32)


@functools.cache
def _sk_bundled(name: str) -> tuple[np.ndarray, np.ndarray, bool]:
    from sklearn import datasets

    loader = {
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
        "iris": datasets.load_iris,
        "diabetes": datasets.load_diabetes,
    }[name]
    d = loader()
    regression = name == "diabetes"
    y = d.target.astype(np.float32)[:, None] if regression else d.target.astype(np.int64)
    if regression:
        y = (y - y.mean()) / y.std()
    return _standardise(d.data), y, regression


@functools.cache
def _sk_generated(
    kind: str, seed: int, n_features: int, n_classes: int
) -> tuple[np.ndarray, np.ndarray, bool]:
    from sklearn import datasets

    n = 3000
    if kind == "classification":
        x, y = datasets.make_classification(
            n_samples=n,
            n_features=n_features,
            n_informative=max(4, n_features // 2),
            n_redundant=n_features // 4,
            n_classes=n_classes,
            n_clusters_per_class=2,
            flip_y=0.03,
            random_state=seed,
        )
    elif kind == "moons":
        x, y = datasets.make_moons(n_samples=n, noise=0.25, random_state=seed)
        x = np.hstack([x, np.random.default_rng(seed).normal(size=(n, n_features - 2))])
    elif kind == "quantiles":
        x, y = datasets.make_gaussian_quantiles(
            n_samples=n, n_features=n_features, n_classes=n_classes, random_state=seed
        )
    elif kind == "regression":
        x, yr = datasets.make_regression(
            n_samples=n,
            n_features=n_features,
            n_informative=max(2, n_features // 2),
            noise=10.0,
            random_state=seed,
        )
        return _standardise(x), _standardise(yr[:, None]), True
    else:  # friedman
        x, yr = datasets.make_friedman1(
            n_samples=n, n_features=max(5, n_features), noise=0.5, random_state=seed
        )
        return _standardise(x), _standardise(yr[:, None]), True
    return _standardise(x), y.astype(np.int64), False


@functools.cache
def _tabular_data(source: str, seed: int, nf: int, nc: int, reconstruct: bool) -> TaskData:
    if source in ("wine", "breast_cancer", "diabetes"):
        x, y, regression = _sk_bundled(source)
    else:
        x, y, regression = _sk_generated(source, seed, nf, nc)
    n_hold = max(40, len(x) // 6)
    if reconstruct:
        return _split(x, x, n_val=n_hold, n_test=n_hold, y_float=True)
    return _split(x, y, n_val=n_hold, n_test=n_hold, y_float=regression)


def _tabular(g: _Draw, arch: str) -> _DataSpec:
    source = str(
        g.pick(
            (
                "wine",
                "breast_cancer",
                "diabetes",
                "classification",
                "classification",
                "moons",
                "quantiles",
                "regression",
                "friedman",
            )
        )
    )
    nf, nc, seed = g.integer(6, 30), g.integer(2, 6), g.seed() % 10_000
    if source in ("wine", "breast_cancer", "diabetes"):
        nf, nc, seed = 0, 0, 0
        x, y, regression = _sk_bundled(source)
        desc = f"scikit-learn {source}"
    else:
        x, y, regression = _sk_generated(source, seed, nf, nc)
        desc = f"make_{source}(seed={seed})"
    d_in = x.shape[1]
    reconstruct = arch == "autoencoder"
    data = functools.partial(_tabular_data, source, seed, nf, nc, reconstruct)
    if reconstruct:
        return _DataSpec(data, "mse", desc + " (reconstruction)", d_in, d_in, reconstruct=True)
    d_out = 1 if regression else int(y.max()) + 1
    return _DataSpec(data, "mse" if regression else "cross_entropy", desc, d_in, d_out)


@functools.cache
def _shapes_data(seed: int, size: int, n_classes: int) -> TaskData:
    """Synthetic images: noisy bars, blobs, rings and crosses of random position and scale."""
    rng = np.random.default_rng(seed)
    n = 3000
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    labels = rng.integers(0, n_classes, n)
    imgs = np.empty((n, size, size), np.float32)
    for i, c in enumerate(labels):
        cx, cy = rng.uniform(size * 0.25, size * 0.75, 2)
        r = rng.uniform(size * 0.15, size * 0.35)
        d = np.hypot(xx - cx, yy - cy)
        if c == 0:
            img = (d < r).astype(np.float32)
        elif c == 1:
            img = (np.abs(d - r) < 1.0).astype(np.float32)
        elif c == 2:
            img = ((np.abs(xx - cx) < 1.0) | (np.abs(yy - cy) < 1.0)).astype(np.float32) * (
                d < r + 2
            )
        elif c == 3:
            img = (np.abs(xx - cx) < r * 0.4).astype(np.float32) * (np.abs(yy - cy) < r)
        else:
            img = np.sin((xx * np.cos(c) + yy * np.sin(c)) * (0.8 + 0.2 * c)) > 0.3
            img = img.astype(np.float32) * (d < r * 1.5)
        imgs[i] = img + rng.normal(0, 0.3, (size, size))
    x = imgs.reshape(n, -1)
    return _split(_standardise(x), labels.astype(np.int64), n_val=400, n_test=400)


@functools.cache
def _image_data(seed: int, side: int, classes: int, reconstruct: bool) -> TaskData:
    d = digits_data() if seed < 0 else _shapes_data(seed, side, classes)
    if reconstruct:
        return TaskData(d.x_train, d.x_train, d.x_val, d.x_val, d.x_test, d.x_test)
    return d


def _image(g: _Draw, arch: str) -> _DataSpec:
    if g.pick((True, False)):
        seed, side, classes, desc = -1, 8, 10, "scikit-learn digits 8x8"
    else:
        side, classes, seed = int(g.pick((10, 12))), g.integer(3, 5), g.seed() % 1000
        desc = f"synthetic shapes {side}x{side} ({classes} classes)"
    reconstruct = arch == "autoencoder"
    data = functools.partial(_image_data, seed, side, classes, reconstruct)
    if reconstruct:
        return _DataSpec(
            data,
            "mse",
            desc + " (reconstruction)",
            side * side,
            side * side,
            shape=(side, side),
            reconstruct=True,
        )
    return _DataSpec(data, "cross_entropy", desc, side * side, classes, shape=(side, side))


@functools.cache
def _waves_data(seed: int, length: int, n_classes: int) -> TaskData:
    """Synthetic signals: a class-specific mix of frequencies, random phase, noise and a trend."""
    rng = np.random.default_rng(seed)
    n = 3000
    t = np.linspace(0, 1, length, dtype=np.float32)
    freqs = rng.uniform(1, 8, (n_classes, 2))
    labels = rng.integers(0, n_classes, n)
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    f = freqs[labels]
    x = np.sin(2 * np.pi * f[:, :1] * t + phase) + 0.5 * np.sin(
        2 * np.pi * f[:, 1:] * t + 2 * phase
    )
    x = x + rng.normal(0, 0.6, x.shape) + rng.normal(0, 0.5, (n, 1)) * t
    return _split(x.astype(np.float32), labels.astype(np.int64), n_val=400, n_test=400)


def _signal(g: _Draw, arch: str) -> _DataSpec:
    if g.pick((True, False)):
        return _DataSpec(mnist1d_data, "cross_entropy", "mnist1d", 40, 10, shape=(40,))
    length, classes, seed = int(g.pick((32, 48))), g.integer(3, 6), g.seed() % 1000
    return _DataSpec(
        functools.partial(_waves_data, seed, length, classes),
        "cross_entropy",
        f"synthetic waves L={length} ({classes} classes)",
        length,
        classes,
        shape=(length,),
    )


@functools.cache
def _sequence_data(kind: str, seed: int) -> TaskData:
    """Synthetic token sequences (vocabulary 8, length 24) with a class label."""
    rng = np.random.default_rng(seed)
    n = 4000
    x = rng.integers(0, _SEQ_VOCAB, (n, _SEQ_LEN))
    if kind == "majority":  # the most frequent token
        y = np.array([np.bincount(r, minlength=_SEQ_VOCAB).argmax() for r in x])
    elif kind == "first-last":  # is the first token equal to the last one (mod 2 tokens)
        y = ((x[:, 0] % 4) == (x[:, -1] % 4)).astype(np.int64)
    elif kind == "count":  # how many 0 tokens, capped
        y = np.minimum((x == 0).sum(1), 5)
    else:  # "sum-mod": sum of the tokens mod 4
        y = x.sum(1) % 4
    d = _split(x.astype(np.float32), y.astype(np.int64), n_val=500, n_test=500)
    return TaskData(d.x_train.long(), d.y_train, d.x_val.long(), d.y_val, d.x_test.long(), d.y_test)


def _sequence(g: _Draw, arch: str) -> _DataSpec:
    kind = str(g.pick(("majority", "first-last", "count", "sum-mod")))
    seed = g.seed() % 1000
    classes = {"majority": _SEQ_VOCAB, "first-last": 2, "count": 6, "sum-mod": 4}[kind]
    return _DataSpec(
        functools.partial(_sequence_data, kind, seed),
        "cross_entropy",
        f"synthetic sequences ({kind})",
        _SEQ_VOCAB,
        classes,
        shape=(_SEQ_LEN,),
        tokens=True,
    )


@functools.cache
def _text_data(context: int, offset: int) -> TaskData:
    """Next-character windows over ``char_text()`` starting at ``offset``."""
    text = char_text()
    ids = np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int64)
    ids = np.where(ids == 10, 0, ids - 31)
    ids = np.roll(ids, -offset)
    n = min((len(ids) - 1) // context, 6000)
    x = ids[: n * context].reshape(n, context)
    y = ids[1 : n * context + 1].reshape(n, context)
    rng = np.random.default_rng(offset)
    idx = rng.permutation(n)
    nv = max(200, n // 10)
    te, va, tr = idx[:nv], idx[nv : 2 * nv], idx[2 * nv :]
    T = torch.as_tensor
    return TaskData(T(x[tr]), T(y[tr]), T(x[va]), T(y[va]), T(x[te]), T(y[te]))


def _text(g: _Draw, arch: str) -> _DataSpec:
    context, offset = int(g.pick((12, 16))), g.integer(0, 50_000)
    return _DataSpec(
        functools.partial(_text_data, context, offset),
        "cross_entropy",
        f"stdlib-source characters (context {context})",
        96,
        96,
        shape=(context,),
        tokens=True,
        per_position=True,
    )


_DATA_BUILDERS: dict[str, Callable[[_Draw, str], _DataSpec]] = {
    "tabular": _tabular,
    "image": _image,
    "signal": _signal,
    "sequence": _sequence,
    "text": _text,
}


# ----------------------------------------------------------------------------------- models
def _act(name: str) -> nn.Module:
    return {"relu": nn.ReLU(), "gelu": nn.GELU(), "tanh": nn.Tanh()}[name]


def _norm1d(kind: str, d: int) -> list[nn.Module]:
    if kind == "batch":
        return [nn.BatchNorm1d(d)]
    if kind == "layer":
        return [nn.LayerNorm(d)]
    return []


class _Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def _mlp_layers(
    d_in: int, widths: list[int], norm: str, act: str, dropout: float
) -> list[nn.Module]:
    layers: list[nn.Module] = []
    d = d_in
    for w in widths:
        layers += [nn.Linear(d, w), *_norm1d(norm, w), _act(act)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d = w
    return layers


def _mlp(g: _Draw, s: _DataSpec) -> tuple[Callable[[], nn.Module], str]:
    depth, width = g.integer(1, 3), int(g.pick((32, 64, 128, 256)))
    norm, act = (
        str(g.pick(("none", "none", "batch", "layer"))),
        str(g.pick(("relu", "gelu", "tanh"))),
    )
    dropout = float(g.pick((0.0, 0.0, 0.0, 0.1, 0.2)))
    widths = [width] * depth

    def make() -> nn.Module:
        return nn.Sequential(
            _Flatten(),
            *_mlp_layers(s.d_in, widths, norm, act, dropout),
            nn.Linear(widths[-1], s.d_out),
        )

    return make, f"MLP {depth}x{width} {act} norm={norm} dropout={dropout}"


class _ResBlock(nn.Module):
    def __init__(self, d: int, norm: str, act: str, dropout: float) -> None:
        super().__init__()
        self.norm = nn.Sequential(*_norm1d(norm, d)) if norm != "none" else nn.Identity()
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.act = _act(act)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.drop(self.act(self.fc1(self.norm(x)))))


def _resmlp(g: _Draw, s: _DataSpec) -> tuple[Callable[[], nn.Module], str]:
    blocks, width = g.integer(1, 3), int(g.pick((32, 64, 96)))
    norm, act = str(g.pick(("none", "batch", "layer"))), str(g.pick(("relu", "gelu")))
    dropout = float(g.pick((0.0, 0.0, 0.1)))

    def make() -> nn.Module:
        return nn.Sequential(
            _Flatten(),
            nn.Linear(s.d_in, width),
            *[_ResBlock(width, norm, act, dropout) for _ in range(blocks)],
            nn.Linear(width, s.d_out),
        )

    return make, f"residual MLP {blocks} blocks x{width} norm={norm} dropout={dropout}"


def _linear(g: _Draw, s: _DataSpec) -> tuple[Callable[[], nn.Module], str]:
    def make() -> nn.Module:
        return nn.Sequential(_Flatten(), nn.Linear(s.d_in, s.d_out))

    return make, "linear model" if s.loss == "mse" else "logistic regression"


def _autoencoder(g: _Draw, s: _DataSpec) -> tuple[Callable[[], nn.Module], str]:
    width = int(g.pick((32, 64, 128)))
    code = max(2, min(s.d_in // 2, int(g.pick((4, 8, 16)))))
    act = str(g.pick(("relu", "tanh", "gelu")))

    def make() -> nn.Module:
        return nn.Sequential(
            _Flatten(),
            nn.Linear(s.d_in, width),
            _act(act),
            nn.Linear(width, code),
            _act(act),
            nn.Linear(code, width),
            _act(act),
            nn.Linear(width, s.d_out),
        )

    return make, f"MLP autoencoder {width}-{code}-{width} {act}"


class _Conv(nn.Module):
    def __init__(
        self, dims: int, shape: tuple[int, ...], channels: int, layers: int, bn: bool, n_out: int
    ) -> None:
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        norm = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        self.shape = shape
        mods: list[nn.Module] = []
        c_in = 1
        for i in range(layers):
            mods.append(conv(c_in, channels, 3, stride=2 if i > 0 else 1, padding=1))
            if bn:
                mods.append(norm(channels))
            mods.append(nn.ReLU())
            c_in = channels
        self.body = nn.Sequential(*mods)
        self.head = nn.Linear(channels, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x.reshape(x.shape[0], 1, *self.shape))
        return self.head(h.flatten(2).mean(-1))


def _cnn(dims: int) -> Callable[[_Draw, _DataSpec], tuple[Callable[[], nn.Module], str]]:
    def build(g: _Draw, s: _DataSpec) -> tuple[Callable[[], nn.Module], str]:
        channels, layers = int(g.pick((8, 12, 16))), 2
        bn = bool(g.pick((False, True)))

        def make() -> nn.Module:
            return _Conv(dims, s.shape, channels, layers, bn, s.d_out)

        return make, f"{dims}-D CNN {layers}x{channels} batchnorm={bn}"

    return build


class _GRUNet(nn.Module):
    def __init__(self, vocab: int, d: int, hidden: int, n_out: int, per_position: bool) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.gru = nn.GRU(d, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_out)
        self.per_position = per_position

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(self.emb(x))
        return self.head(h if self.per_position else h[:, -1])


def _gru(g: _Draw, s: _DataSpec) -> tuple[Callable[[], nn.Module], str]:
    d, hidden = 16, int(g.pick((16, 24, 32)))

    def make() -> nn.Module:
        return _GRUNet(s.d_in, d, hidden, s.d_out, s.per_position)

    return make, f"GRU emb{d}-h{hidden}"


class _Transformer(nn.Module):
    """A small pre-norm transformer (plain ops), causal for per-position outputs."""

    mask: torch.Tensor

    def __init__(
        self,
        vocab: int,
        d: int,
        heads: int,
        blocks: int,
        context: int,
        n_out: int,
        per_position: bool,
    ) -> None:
        super().__init__()
        self.heads, self.per_position = heads, per_position
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(context, d) * 0.02)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "ln1": nn.LayerNorm(d),
                    "qkv": nn.Linear(d, 3 * d),
                    "proj": nn.Linear(d, d),
                    "ln2": nn.LayerNorm(d),
                    "ff1": nn.Linear(d, 2 * d),
                    "ff2": nn.Linear(2 * d, d),
                }
            )
            for _ in range(blocks)
        )
        self.ln = nn.LayerNorm(d)
        self.out = nn.Linear(d, n_out)
        causal = torch.tril(torch.ones(context, context, dtype=torch.bool))
        self.register_buffer(
            "mask", causal if per_position else torch.ones_like(causal), persistent=False
        )

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[-1]
        h = self.tok(idx) + self.pos[:T]
        for block in self.blocks:
            b = typing.cast(nn.ModuleDict, block)
            q, k, v = b["qkv"](b["ln1"](h)).chunk(3, dim=-1)
            dh = q.shape[-1] // self.heads
            q, k, v = (z.unflatten(-1, (self.heads, dh)).transpose(-3, -2) for z in (q, k, v))
            att = (q @ k.transpose(-1, -2)) / math.sqrt(dh)
            att = att.masked_fill(~self.mask[:T, :T], float("-inf")).softmax(-1)
            h = h + b["proj"]((att @ v).transpose(-3, -2).flatten(-2))
            h = h + b["ff2"](torch.relu(b["ff1"](b["ln2"](h))))
        h = self.ln(h)
        return self.out(h if self.per_position else h.mean(-2))


def _transformer(g: _Draw, s: _DataSpec) -> tuple[Callable[[], nn.Module], str]:
    d, heads, blocks = int(g.pick((16, 24))), 2, g.integer(1, 2)

    def make() -> nn.Module:
        return _Transformer(s.d_in, d, heads, blocks, s.shape[0], s.d_out, s.per_position)

    return make, f"transformer d{d} h{heads} x{blocks}"


_MODEL_BUILDERS: dict[str, Callable[[_Draw, _DataSpec], tuple[Callable[[], nn.Module], str]]] = {
    "linear": _linear,
    "mlp": _mlp,
    "resmlp": _resmlp,
    "autoencoder": _autoencoder,
    "cnn1d": _cnn(1),
    "cnn2d": _cnn(2),
    "gru": _gru,
    "transformer": _transformer,
}
