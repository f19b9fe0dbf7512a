"""The held-out families: small training problems written as a user would write them.

None of them is collected from: the architectures (LSTM, residual CNN with BatchNorm + dropout,
dilated temporal conv net, MLP-Mixer, EmbeddingBag text classifier, VAE, torch's
``nn.TransformerEncoderLayer``, gated MLP, bidirectional LSTM tagger, Deep Sets, convolutional
denoising autoencoder) and most optimizers (NAdam, RAdam, Adamax, Adagrad, plain SGD, Adam with
AMSGrad) are absent from the training distribution. Data are generated from a fixed data seed or
come from scikit-learn's bundled sets / mnist1d's generator (no downloads), split train / val /
test once per family.

A :class:`Family` holds what a user's script holds: the data sets (``torch.utils.data.Dataset``),
a model factory, the loss of one batch, an optimizer factory with its default LR, the batch size,
the budget in optimizer steps and how often validation is measured. The loop itself is
:func:`trajlib.evaluate.suite.run_one`.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset

from trajlib.errors import ConfigError

__all__ = [
    "FAMILIES",
    "FAMILY_SETS",
    "Family",
    "Splits",
    "families_markdown",
    "family_names",
    "get_family",
]

_DATA_SEED = 20240516


@dataclass(frozen=True)
class Splits:
    train: Dataset[Any]
    val: Dataset[Any]
    test: Dataset[Any]


@dataclass(frozen=True)
class Family:
    """One held-out family: a user's script, without the loop.

    ``optimizer``: the ``torch.optim`` class name; ``make_optimizer(params, lr)`` builds it with the
    user's other settings; ``kind``: ``sgd`` or ``adaptive`` (which schedule-free variant is its
    reference). ``loss(model, batch)`` is the mean loss of a batch (train and eval).
    ``collate``: the DataLoader's ``collate_fn`` (None: torch's default).
    """

    name: str
    description: str
    optimizer: str
    kind: str
    default_lr: float
    budget: int
    batch_size: int
    val_every: int
    data: Callable[[], Splits]
    model: Callable[[], nn.Module]
    loss: Callable[[nn.Module, Any], torch.Tensor]
    make_optimizer: Callable[[Any, float], torch.optim.Optimizer]
    momentum: float = 0.0
    weight_decay: float = 0.0
    collate: Callable[[list[Any]], Any] | None = None
    group: str = "suite"

    def fingerprint(self) -> str:
        """A short hash of the settings that change results (part of the result cache's key)."""
        d = {
            "name": self.name,
            "optimizer": self.optimizer,
            "lr": self.default_lr,
            "budget": self.budget,
            "batch": self.batch_size,
            "val_every": self.val_every,
            "momentum": self.momentum,
            "wd": self.weight_decay,
            "version": _FAMILY_VERSIONS.get(self.name, 1),
        }
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


# bump a family's version when its data, model or loss change (invalidates cached results)
_FAMILY_VERSIONS: dict[str, int] = {}


def _split(*tensors: torch.Tensor, n_val: int, n_test: int) -> Splits:
    n = len(tensors[0])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_DATA_SEED))
    te, va, tr = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
    return Splits(*(TensorDataset(*(t[i] for t in tensors)) for i in (tr, va, te)))


def _split_arrays(x: np.ndarray, y: np.ndarray, *, n_val: int, n_test: int) -> Splits:
    """:func:`_split` of numpy inputs (float32) and targets: integer labels as int64, anything
    else as float32 ``[n, 1]`` regression targets."""
    if np.issubdtype(y.dtype, np.integer):
        target = torch.tensor(y, dtype=torch.int64)
    else:
        target = torch.tensor(y, dtype=torch.float32)[:, None]
    return _split(torch.tensor(x, dtype=torch.float32), target, n_val=n_val, n_test=n_test)


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(_DATA_SEED)


def _ce(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def _mse(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return F.mse_loss(model(x), y)


# ------------------------------------------------------------------------------------ data
@functools.cache
def _digits_images() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    return x, torch.tensor(d.target, dtype=torch.int64)


@functools.cache
def _digits_split(offset: int, flat: bool = False) -> Splits:
    """The 8x8 digits split with a permutation of their own (the data seed + ``offset``; 300
    validation and 300 test images); ``flat``: as 64-vectors."""
    x, y = _digits_images()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(_DATA_SEED + offset))
    return _split(x[perm].flatten(1) if flat else x[perm], y[perm], n_val=300, n_test=300)


@functools.cache
def _digits() -> Splits:
    x, y = _digits_images()
    return _split(x, y, n_val=300, n_test=300)


@functools.cache
def _digits_autoencode() -> Splits:
    x, _ = _digits_images()
    return _split(x, n_val=300, n_test=300)


@functools.cache
def _mnist1d() -> Splits:
    return _mnist1d_draw(7)  # not the training distribution's draw


def _mnist1d_draw(seed: int) -> Splits:
    """mnist1d's generator with this seed, standardised, split once."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    d = make_dataset(args)
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float32)
    y = np.concatenate([d["y"], d["y_test"]]).astype(np.int64)
    x = (x - x.mean()) / x.std()
    return _split(torch.tensor(x)[:, None, :], torch.tensor(y), n_val=500, n_test=1000)


@functools.cache
def _count_sequences() -> Splits:
    """Token sequences (length 16, vocabulary 8); the label is which of tokens 0-3 occurs most
    often (ties: the smallest): counting over time."""
    g = _gen()
    n = 4000
    x = torch.randint(0, 8, (n, 16), generator=g)
    counts = torch.stack([(x == k).sum(1) for k in range(4)], 1)
    return _split(x, counts.argmax(1), n_val=500, n_test=1000)


@functools.cache
def _max_sequences() -> Splits:
    """Token sequences (length 12, vocabulary 16); the label is the largest token minus 8 where it
    is >= 8, else a 9th class 'none' — a set-level question attention answers."""
    g = _gen()
    n = 4000
    x = torch.randint(0, 16, (n, 12), generator=g)
    x = torch.where(torch.rand(n, 12, generator=g) < 0.5, x % 8, x)
    m = x.max(1).values
    y = torch.where(m >= 8, m - 8, torch.full_like(m, 8))
    return _split(x, y, n_val=500, n_test=1000)


@functools.cache
def _tagging_sequences() -> Splits:
    """Token sequences (length 16, vocabulary 12); each token's tag (3 classes) depends on its
    neighbours on both sides: ``sign(x[t-1] - x[t+1]) + 1`` (zero padding at the ends)."""
    g = _gen()
    n = 4000
    x = torch.randint(0, 12, (n, 16), generator=g)
    pad = F.pad(x, (1, 1))
    y = torch.sign(pad[:, :-2] - pad[:, 2:]) + 1
    return _split(x, y, n_val=500, n_test=1000)


@functools.cache
def _topic_documents() -> Splits:
    """Bag-of-words documents over 400 words from 5 topics (each a Dirichlet word distribution
    mixed with a shared background), 8-40 tokens each; the label is the topic."""
    rng = np.random.default_rng(_DATA_SEED)
    n, vocab, topics = 4000, 400, 5
    background = rng.dirichlet(np.full(vocab, 0.5))
    dists = [0.6 * background + 0.4 * rng.dirichlet(np.full(vocab, 0.05)) for _ in range(topics)]
    labels = rng.integers(0, topics, n)
    docs = [
        torch.tensor(rng.choice(vocab, size=int(rng.integers(8, 41)), p=dists[c])) for c in labels
    ]
    perm = torch.randperm(n, generator=_gen()).tolist()

    class Docs(Dataset[tuple[torch.Tensor, int]]):
        def __init__(self, idx: list[int]) -> None:
            self.idx = idx

        def __len__(self) -> int:
            return len(self.idx)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            j = self.idx[i]
            return docs[j], int(labels[j])

    return Splits(Docs(perm[1500:]), Docs(perm[1000:1500]), Docs(perm[:1000]))


def _collate_bags(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, ...]:
    """The EmbeddingBag collate of torch's text tutorial: concatenated tokens, offsets, labels."""
    lengths = torch.tensor([len(t) for t, _ in batch])
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]])
    return torch.cat([t for t, _ in batch]), offsets, torch.tensor([c for _, c in batch])


@functools.cache
def _friedman() -> Splits:
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_samples=3000, n_features=10, noise=1.0, random_state=_DATA_SEED)
    return _split_arrays(x, (y - y.mean()) / y.std(), n_val=500, n_test=1000)


@functools.cache
def _point_sets() -> Splits:
    """Sets of 2-D points (random size 4-16, padded to 16 with a mask); the target is the log of
    the set's spread (mean distance to its centroid)."""
    g = _gen()
    n, k = 4000, 16
    sizes = torch.randint(4, k + 1, (n,), generator=g)
    mask = (torch.arange(k)[None, :] < sizes[:, None]).float()
    scale = torch.exp(torch.randn(n, 1, 1, generator=g) * 0.5)
    pts = (torch.randn(n, k, 2, generator=g) * scale + torch.randn(n, 1, 2, generator=g)) * mask[
        ..., None
    ]
    centroid = pts.sum(1) / sizes[:, None]
    spread = ((pts - centroid[:, None]).norm(dim=-1) * mask).sum(1) / sizes
    y = torch.log(spread)
    y = (y - y.mean()) / y.std()
    return _split(torch.cat([pts, mask[..., None]], -1), y[:, None], n_val=500, n_test=1000)


# ---------------------------------------------------------------------------------- models
class LSTMClassifier(nn.Module):
    def __init__(self, vocab: int = 8, emb: int = 16, hidden: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(self.emb(x))
        return self.head(h[-1])


class ResBlock(nn.Module):
    def __init__(self, c: int, p: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.drop = nn.Dropout2d(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(self.drop(h)))
        return F.relu(x + h)


class ResCNN(nn.Module):
    def __init__(self, c: int = 12, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.blocks = nn.Sequential(ResBlock(c, 0.1), ResBlock(c, 0.1))
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(F.relu(self.stem(x)))
        return self.head(self.drop(h.mean((2, 3))))


class TemporalBlock(nn.Module):
    def __init__(self, c: int, dilation: int, p: float) -> None:
        super().__init__()
        self.pad = 2 * dilation
        self.conv = nn.Conv1d(c, c, 3, dilation=dilation)
        self.drop = nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(F.pad(x, (self.pad, 0)))  # causal: pad on the left only
        return x + self.drop(F.relu(h))


class TCN(nn.Module):
    def __init__(self, c: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.inp = nn.Conv1d(1, c, 1)
        self.blocks = nn.Sequential(*(TemporalBlock(c, d, 0.1) for d in (1, 2, 4, 8)))
        self.head = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.inp(x))
        return self.head(h[:, :, -1])


class MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(
            nn.Linear(tokens, 2 * tokens), nn.GELU(), nn.Linear(2 * tokens, tokens)
        )
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class Mixer(nn.Module):
    """MLP-Mixer (Tolstikhin et al. 2021) on 8x8 images cut into 16 patches of 2x2."""

    def __init__(self, dim: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.blocks = nn.Sequential(MixerBlock(16, dim), MixerBlock(16, dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        patches = x.reshape(b, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(b, 16, 4)
        h = self.norm(self.blocks(self.embed(patches)))
        return self.head(h.mean(1))


class BagClassifier(nn.Module):
    def __init__(self, vocab: int = 400, dim: int = 32, classes: int = 5) -> None:
        super().__init__()
        self.emb = nn.EmbeddingBag(vocab, dim, mode="mean")
        self.fc = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(tokens, offsets))


def _bag_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    tokens, offsets, y = batch
    return F.cross_entropy(model(tokens, offsets), y)


class VAE(nn.Module):
    """MLP VAE on 8x8 digits (Bernoulli likelihood on pixel intensities)."""

    def __init__(self, z: int = 8, h: int = 64) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(64, h), nn.ReLU())
        self.mu = nn.Linear(h, z)
        self.logvar = nn.Linear(h, z)
        self.dec = nn.Sequential(nn.Linear(z, h), nn.ReLU(), nn.Linear(h, 64))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.enc(x)
        mu, logvar = self.mu(h), self.logvar(h).clamp(-10, 10)
        # training samples z; evaluation decodes the mean (a deterministic loss to compare)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return self.dec(z), mu, logvar


def _vae_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    (x,) = batch
    logits, mu, logvar = model(x)
    rec = F.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="sum")
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return (rec + kl) / x.shape[0] / 64  # per pixel


class EncoderClassifier(nn.Module):
    """torch's own nn.TransformerEncoderLayer, learned positions, mean pooling."""

    def __init__(self, vocab: int = 16, d: int = 32, length: int = 12, classes: int = 9) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(1, length, d))
        layer = nn.TransformerEncoderLayer(
            d, nhead=2, dim_feedforward=64, dropout=0.1, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.emb(x) + self.pos).mean(1))


class GatedMLP(nn.Module):
    def __init__(self, d_in: int = 10, h: int = 64) -> None:
        super().__init__()
        self.l1 = nn.Linear(d_in, 2 * h)
        self.l2 = nn.Linear(h, 2 * h)
        self.out = nn.Linear(h, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.glu(self.l2(F.glu(self.l1(x)))))


class BiLSTMTagger(nn.Module):
    def __init__(self, vocab: int = 12, emb: int = 16, hidden: int = 24, tags: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, tags)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.emb(x))
        return self.head(h)


def _tag_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


class DeepSets(nn.Module):
    """Deep Sets (Zaheer et al. 2017): rho(sum of phi(x_i)) over the set's masked elements."""

    def __init__(self, h: int = 48) -> None:
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(2, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU())
        self.rho = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pts, mask = x[..., :2], x[..., 2:]
        pooled = (self.phi(pts) * mask).sum(1) / mask.sum(1)
        return self.rho(pooled)


class ConvDenoiser(nn.Module):
    """Convolutional denoising autoencoder (strided conv down, transposed conv up)."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.enc = nn.Sequential(
            nn.Conv2d(1, c, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.dec = nn.Sequential(
            nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(c, 1, 4, stride=2, padding=1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:  # corrupt the input while training only
            x = x + 0.3 * torch.randn_like(x)
        return self.dec(self.enc(x))


def _recon_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    (x,) = batch
    return F.mse_loss(model(x), x)


# -------------------------------------------------------------------------------- families
def _fam(
    name: str,
    description: str,
    optimizer: str,
    default_lr: float,
    data: Callable[[], Splits],
    model: Callable[[], nn.Module],
    loss: Callable[[nn.Module, Any], torch.Tensor],
    *,
    budget: int,
    batch_size: int = 64,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    options: dict[str, Any] | None = None,
    collate: Callable[[list[Any]], Any] | None = None,
) -> Family:
    cls = getattr(torch.optim, optimizer)
    opts = dict(options or {})
    if momentum:
        opts["momentum"] = momentum
    if weight_decay:
        opts["weight_decay"] = weight_decay

    def make(params: Any, lr: float) -> torch.optim.Optimizer:
        opt: torch.optim.Optimizer = cls(params, lr=lr, **opts)
        return opt

    return Family(
        name=name,
        description=description,
        optimizer=optimizer
        + ("(" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")" if opts else ""),
        kind="sgd" if optimizer == "SGD" else "adaptive",
        default_lr=default_lr,
        budget=budget,
        batch_size=batch_size,
        val_every=max(1, budget // 8),
        data=data,
        model=model,
        loss=loss,
        make_optimizer=make,
        momentum=momentum,
        weight_decay=weight_decay,
        collate=collate,
    )


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        _fam(
            "lstm-count",
            "LSTM classifier counting tokens in sequences",
            "NAdam",
            2e-3,
            _count_sequences,
            LSTMClassifier,
            _ce,
            budget=400,
            batch_size=32,
        ),
        _fam(
            "rescnn-bn-digits",
            "residual CNN, BatchNorm + dropout, digits",
            "SGD",
            0.05,
            _digits,
            ResCNN,
            _ce,
            budget=300,
            batch_size=32,
            momentum=0.9,
            weight_decay=5e-4,
        ),
        _fam(
            "tcn-mnist1d",
            "dilated causal temporal conv net with dropout, mnist1d",
            "RAdam",
            3e-3,
            _mnist1d,
            TCN,
            _ce,
            budget=500,
            batch_size=32,
        ),
        _fam(
            "mixer-digits",
            "MLP-Mixer on 2x2 patches, digits",
            "Adamax",
            2e-3,
            _digits,
            Mixer,
            _ce,
            budget=300,
        ),
        _fam(
            "embbag-topics",
            "EmbeddingBag text classifier on generated topic documents",
            "Adagrad",
            0.05,
            _topic_documents,
            BagClassifier,
            _bag_loss,
            budget=300,
            batch_size=32,
            collate=_collate_bags,
        ),
        _fam(
            "vae-digits",
            "MLP VAE on digits (ELBO per pixel)",
            "Adam",
            1e-3,
            _digits_autoencode,
            VAE,
            _vae_loss,
            budget=500,
        ),
        _fam(
            "encoder-max",
            "torch TransformerEncoderLayer x2 on a max-token task",
            "AdamW",
            1e-3,
            _max_sequences,
            EncoderClassifier,
            _ce,
            budget=300,
            batch_size=32,
            weight_decay=0.01,
        ),
        _fam(
            "glu-friedman",
            "gated (GLU) MLP regression on Friedman #1, plain SGD",
            "SGD",
            0.05,
            _friedman,
            GatedMLP,
            _mse,
            budget=600,
            batch_size=32,
        ),
        _fam(
            "bilstm-tagger",
            "bidirectional LSTM tagger (per-token labels)",
            "Adam",
            3e-3,
            _tagging_sequences,
            BiLSTMTagger,
            _tag_loss,
            budget=400,
            batch_size=32,
        ),
        _fam(
            "deepsets-spread",
            "Deep Sets regression on point sets, Adam with AMSGrad",
            "Adam",
            1e-3,
            _point_sets,
            DeepSets,
            _mse,
            budget=500,
            options={"amsgrad": True},
        ),
        _fam(
            "convdae-digits",
            "convolutional denoising autoencoder, digits, SGD Nesterov",
            "SGD",
            0.05,
            _digits_autoencode,
            ConvDenoiser,
            _recon_loss,
            budget=400,
            batch_size=32,
            momentum=0.9,
            options={"nesterov": True},
        ),
    )
}


#: The named sets of held-out families: ``suite`` (the headline's eleven), ``fresh`` (eight
#: more, defined after the shipped controllers were chosen; :mod:`._fresh`) and ``outside`` (eight
#: more, written from the README alone after trajlib-lr-v8 was shipped; :mod:`._outside`).
FAMILY_SETS = ("suite", "fresh", "outside")


def _families_of(family_set: str) -> dict[str, Family]:
    if family_set == "suite":
        return FAMILIES
    if family_set == "fresh":
        from trajlib.evaluate.suite._fresh import FRESH_FAMILIES

        return FRESH_FAMILIES
    if family_set == "outside":
        from trajlib.evaluate.suite._outside import OUTSIDE_FAMILIES

        return OUTSIDE_FAMILIES
    raise ConfigError("family_set", f"one of {', '.join(FAMILY_SETS)}", family_set)


def family_names(family_set: str = "suite") -> list[str]:
    return list(_families_of(family_set))


def get_family(name: str) -> Family:
    """A family of any set, by name."""
    every = {k: v for s in FAMILY_SETS for k, v in _families_of(s).items()}
    if name not in every:
        raise ConfigError("family", f"one of {', '.join(every)}", name)
    return every[name]


def select_families(names: Sequence[str] | None, family_set: str = "suite") -> list[Family]:
    """The families named (of any set), or when ``names`` is None every family of
    ``family_set``, in its order; an unknown name is a ConfigError."""
    if names is None:
        return list(_families_of(family_set).values())
    return [get_family(n) for n in names]


def families_markdown(names: Sequence[str] | None = None, family_set: str = "suite") -> str:
    """A table of the families (``names``, or every family of ``family_set``): what each trains,
    its optimizer, default LR, budget, batch."""
    rows = [
        "| family | what | optimizer | default LR | steps | batch | val every |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in select_families(names, family_set):
        rows.append(
            f"| {f.name} | {f.description} | {f.optimizer} | {f.default_lr:g} | {f.budget} "
            f"| {f.batch_size} | {f.val_every} |"
        )
    return "\n".join(rows) + "\n"
