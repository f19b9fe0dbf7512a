"""The training engine: K runs of one task trained together with ``torch.func``.

All parameters of a member live in one flat vector, so the population state is a ``[K, P]`` tensor.
Each parameter tensor (a *layer*) starts at a multiple of ``ALIGN`` floats; the gaps are zeros that
stay zero (no gradient, no update), which lets per-layer sums be one contiguous block reduction.

Gradients: for plain MLPs, a hand-written batched forward and backward
(:class:`trajlib.collect._mlp.StackedMLP`: batched GEMMs into buffers allocated once, each layer's
gradient written straight into its slice of the flat gradient); for other models one batched
forward (``vmap`` of ``functional_call``) and one backward of the summed member losses: members
are independent, so the gradient of the sum is each member's own gradient. Buffers (BatchNorm's
running statistics) are stacked per member, ``[K, ...]``, and updated in place by the batched
forward. A model whose forward is random (dropout) or that ``vmap`` cannot run trains its members
one at a time (:attr:`Population.engine` ``"loop"``, the reason in :attr:`Population.engine_reason`):
each member's forward draws from the global RNG re-seeded from (member seed, step), so a member's
dropout masks are the same in any population as alone, and a run is deterministic given its seed.
Evaluation runs the model in eval mode (running statistics, no dropout).

The optimizers (:data:`trajlib.tasks.OPTIMIZERS`: SGD with momentum, Nesterov SGD, Adam, AdamW,
RMSprop, Adagrad, NAdam; the same update as ``Task.make_optimizer``'s ``torch.optim`` one) are
written on the stacked tensors with per-member hyperparameters ``[K]`` and per-member, per-layer LR
multipliers ``[K, L]``.

Instrumentation keeps the per-step work minimal: gradient, parameters and update of the last two
steps live in two rotating ``[3, K, P]`` buffers, from which the measurement contract's
population record (:class:`trajlib.measure._population.PopulationSums`) writes the raw per-layer sums
``[|g|^2, |w|^2, |u|^2, g.g_prev, u.u_prev]`` (``[5, K, L]``) and the loss ``[K]`` into
device-side buffers; norms, cosines and update ratios are derived for a whole chunk at once by
:meth:`Population.columns` (at decision points / run end). No host transfer happens per step.

Batches (and input noise) are a deterministic function of (member seed, step), so a branch forked
from a member at step ``s`` sees exactly the batches the member would have seen (common random
numbers), and a member of a population sees what it would see trained alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from trajlib.collect._mlp import StackedMLP, mlp_plan
from trajlib.measure import RAW_LAYER_SUMS, STEP_STATS, step_stats
from trajlib.measure._population import PopulationSums
from trajlib.tasks import Task, TaskData, batch_slot, epoch_order

__all__ = ["ALIGN", "ENGINES", "FlatSpec", "MemberState", "Population", "REC_COLUMNS", "RAW_SUMS"]

ALIGN = 128  # floats; every layer starts at a multiple of this in the flat vector
_KEY_MASK = (1 << 63) - 1  # noise keys are non-negative 63-bit seeds

# Raw per-layer sums kept per step: [step, 5, K, L].
RAW_SUMS = RAW_LAYER_SUMS

# Columns :meth:`Population.columns` derives (names as in trajlib.schema).
REC_COLUMNS = ("loss", *STEP_STATS, "finite", "val_loss", "val_acc")
HP_NAMES = ("lr", "momentum", "weight_decay", "l2", "input_noise")
_EPS = 1e-30
# How a population computes its members' gradients: the hand-written MLP backward, one vmapped
# forward, or a loop over members (random forwards, models vmap cannot run).
ENGINES = ("mlp", "vmap", "loop")
# Optimizer constants (torch.optim's defaults); beta1 of Adam/AdamW is the momentum hyperparameter.
ADAM_BETA2 = 0.999
ADAM_EPS = 1e-8
RMSPROP_ALPHA = 0.99
RMSPROP_EPS = 1e-8
ADAGRAD_EPS = 1e-10
NADAM_MOMENTUM_DECAY = 4e-3
# optimizers with a second-moment buffer (Adagrad: its sum of squared gradients)
_SECOND_MOMENT = ("adam", "adamw", "rmsprop", "nadam", "adagrad")


@dataclass(frozen=True)
class FlatSpec:
    """Where each parameter tensor (layer) lives in the flat vector.

    ``offsets`` are multiples of ``align``; ``n_params`` includes the zero gaps.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    offsets: tuple[int, ...]
    numels: tuple[int, ...]
    align: int = ALIGN

    @property
    def n_params(self) -> int:
        """Length P of the flat vector (with the alignment gaps)."""
        return _ceil(self.offsets[-1] + self.numels[-1], self.align)

    @property
    def n_layers(self) -> int:
        return len(self.names)

    @property
    def spans(self) -> tuple[int, ...]:
        """Padded length of each layer: ``sum(spans) == n_params``."""
        ends = [*self.offsets[1:], self.n_params]
        return tuple(e - o for o, e in zip(self.offsets, ends))

    @classmethod
    def from_module(cls, module: nn.Module, align: int = ALIGN) -> FlatSpec:
        names, shapes, offsets, numels, off = [], [], [], [], 0
        for name, p in module.named_parameters():
            names.append(name)
            shapes.append(p.shape)
            offsets.append(off)
            numels.append(p.numel())
            off = _ceil(off + p.numel(), align)
        return cls(tuple(names), tuple(shapes), tuple(offsets), tuple(numels), align)

    def flatten(self, module: nn.Module) -> torch.Tensor:
        """The module's parameters as one flat vector [P] (zeros in the gaps)."""
        params = list(module.parameters())
        flat = torch.zeros(self.n_params, dtype=params[0].dtype, device=params[0].device)
        for p, o, k in zip(params, self.offsets, self.numels):
            flat[o : o + k] = p.detach().reshape(-1)
        return flat

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Name -> view into ``flat`` (last dim P) with the parameter's shape."""
        return {
            n: flat[..., o : o + k].view(*flat.shape[:-1], *s)
            for n, s, o, k in zip(self.names, self.shapes, self.offsets, self.numels)
        }

    def block_membership(
        self, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """0/1 matrix [P / align, L]: block b belongs to layer l."""
        nb = self.n_params // self.align
        m = torch.zeros(nb, self.n_layers, dtype=dtype, device=device)
        for layer, (o, s) in enumerate(zip(self.offsets, self.spans)):
            m[o // self.align : (o + s) // self.align, layer] = 1.0
        return m

    def expand(self, per_layer: torch.Tensor) -> torch.Tensor:
        """[..., L] per-layer values -> [..., P] (each layer's value over its span)."""
        spans = torch.as_tensor(self.spans, device=per_layer.device)
        return torch.repeat_interleave(per_layer, spans, dim=-1)


def _ceil(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _noise(keys: list[int], shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Standard normal noise [K, *shape], member k's a pure function of ``keys[k]``: each
    member's slice is drawn from ``gen`` re-seeded with its key (so forks and populations see the
    same noise as a run alone). One Philox/Mersenne draw per member: ~10x faster than hashing
    counters with integer tensor ops."""
    out = torch.empty(len(keys), *shape, device=gen.device)
    for k, key in enumerate(keys):
        gen.manual_seed(key)
        torch.randn(shape, generator=gen, device=gen.device, out=out[k])
    return out


def _dropout_key(seed: int, t: int) -> int:
    """The RNG seed of member ``seed``'s forward at step ``t`` (loop engine)."""
    return ((int(seed) * 1_000_003 + int(t)) * 31 + 17) & _KEY_MASK


def _random_modules(module: nn.Module) -> list[str]:
    """Names of the submodules whose training forward is random (dropout of any kind)."""
    return [
        f"{n} ({type(m).__name__})"
        for n, m in module.named_modules()
        if isinstance(m, nn.modules.dropout._DropoutNd)
    ]


@dataclass
class MemberState:
    """The state of K members, each tensor [K, ...] on the device: what a fork copies."""

    seeds: list[int]  # initialisation, data order and input noise of each member
    theta: torch.Tensor  # parameters [K, P]
    m1: torch.Tensor  # momentum buffer (SGD, RMSprop) / first moment (Adam, AdamW) [K, P]
    m2: torch.Tensor | None  # second moment (Adam, AdamW) / square average (RMSprop) [K, P]
    adam_steps: torch.Tensor  # [K]
    mu_prod: torch.Tensor  # NAdam's product of momentum coefficients [K] (1 elsewhere)
    hp: dict[str, torch.Tensor]  # hyperparameter name -> [K]
    on: dict[str, bool]  # hyperparameter name -> non-zero for some member (its work is done)
    layer_lr: np.ndarray  # per-layer LR multipliers [K, L]
    lr_scale: torch.Tensor | None  # layer_lr expanded to [K, P]; None when all ones
    last_loss: torch.Tensor  # training losses of the last step [K]
    buffers: dict[str, torch.Tensor]  # the model's buffers (BatchNorm statistics), each [K, ...]

    @classmethod
    def initial(
        cls,
        theta: torch.Tensor,
        seeds: list[int],
        n_layers: int,
        task: Task,
        buffers: dict[str, torch.Tensor] | None = None,
    ) -> MemberState:
        """Members at step 0 with parameters ``theta`` (hyperparameters still to be set)."""
        K = len(seeds)
        return cls(
            seeds=seeds,
            theta=theta,
            m1=torch.zeros_like(theta),
            m2=torch.zeros_like(theta) if task.optimizer in _SECOND_MOMENT else None,
            adam_steps=torch.zeros(K, device=theta.device),
            mu_prod=torch.ones(K, device=theta.device),
            hp={},
            on={},
            layer_lr=np.ones((K, n_layers)),
            lr_scale=None,
            last_loss=torch.zeros(K, device=theta.device),
            buffers=dict(buffers or {}),
        )

    def take(self, index: np.ndarray) -> MemberState:
        """Copies of the members ``index`` (repeats allowed)."""
        idx = torch.as_tensor(index, device=self.theta.device)
        return MemberState(
            seeds=[self.seeds[i] for i in index],
            theta=self.theta[idx],
            m1=self.m1[idx],
            m2=self.m2[idx] if self.m2 is not None else None,
            adam_steps=self.adam_steps[idx],
            mu_prod=self.mu_prod[idx],
            hp={k: v[idx] for k, v in self.hp.items()},
            on=dict(self.on),
            layer_lr=self.layer_lr[index],
            lr_scale=self.lr_scale[idx] if self.lr_scale is not None else None,
            last_loss=self.last_loss[idx],
            buffers={k: v[idx] for k, v in self.buffers.items()},
        )


class Population:
    """K members of one task, trained in lock step.

    Args:
        task: the task; ``data`` its splits already on ``device``.
        seeds: one seed per member (initialisation, data order, input noise).
        hps: initial hyperparameters, host arrays or tensors [K]: ``lr``, ``momentum``,
            ``weight_decay``, ``l2``, ``input_noise`` (missing ones: the task's value or 0), and
            optionally ``layer_lr`` [K, L] (per-layer LR multipliers, default 1).
        record: keep the per-step record (``False``: the bare training loop, for benchmarks and
            branches).
        capacity: steps the record buffers hold (default: the task's budget).
        fast: use the hand-written backward for plain MLPs (same numbers as the generic autograd
            path up to float rounding).

    ``engine`` says how the members' gradients are computed (:data:`ENGINES`); ``engine_reason``
    why a population runs its members one at a time (empty otherwise).
    """

    def __init__(
        self,
        task: Task,
        data: TaskData,
        seeds: list[int],
        hps: dict[str, object] | None = None,
        *,
        device: str | torch.device = "cpu",
        record: bool = True,
        capacity: int | None = None,
        fast: bool = True,
    ) -> None:
        dev = torch.device(device)
        member_seeds = [int(s) for s in seeds]
        torch.manual_seed(member_seeds[0])
        module = task.make_model().to(dev)
        spec = FlatSpec.from_module(module)
        flats, bufs = [], []
        for s in member_seeds:
            torch.manual_seed(s)
            model = task.make_model().to(dev)
            flats.append(spec.flatten(model))
            bufs.append({n: b.detach() for n, b in model.named_buffers()})
        buffers = {n: torch.stack([b[n] for b in bufs]) for n in bufs[0]}
        members = MemberState.initial(
            torch.stack(flats), member_seeds, spec.n_layers, task, buffers
        )
        self._assemble(
            task, data, module, spec, members, t=0, record=record, capacity=capacity, fast=fast
        )
        defaults = {
            "lr": task.default_lr,
            "momentum": task.momentum,
            "weight_decay": task.weight_decay,
            "l2": 0.0,
            "input_noise": 0.0,
        }
        init = {k: np.full(self.K, v, dtype=np.float64) for k, v in defaults.items()}
        for k, v in (hps or {}).items():
            init[k] = v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v)
        self.set_hparams(**init)

    def _assemble(
        self,
        task: Task,
        data: TaskData,
        module: nn.Module,
        spec: FlatSpec,
        members: MemberState,
        *,
        t: int,
        record: bool,
        capacity: int | None,
        fast: bool,
        engine: tuple[str, str] | None = None,
    ) -> None:
        """Every attribute of a population, set in one place (a new one and a fork alike).
        ``engine``: (engine, reason) known from the parent (a fork); None: find it out."""
        # what the members share: the task, its data, the model's structure
        self.task, self.data, self.device = task, data, members.theta.device
        self.module, self.spec, self.fast = module, spec, fast
        # the members' state (see MemberState)
        self.seeds = members.seeds
        self.K = len(members.seeds)
        self.theta = members.theta
        self.m1, self.m2, self.adam_steps = members.m1, members.m2, members.adam_steps
        self.mu_prod = members.mu_prod
        self.hp: dict[str, torch.Tensor] = members.hp
        self._on: dict[str, bool] = members.on
        self.layer_lr = members.layer_lr
        self._lr_scale: torch.Tensor | None = members.lr_scale
        self._last_loss = members.last_loss
        self.buffers: dict[str, torch.Tensor] = members.buffers
        self.t = t
        # batches: the permutation of the current epoch; input noise; gradient scratch space
        self._perm_epoch = -1
        self._perms: torch.Tensor | None = None
        self._noise_gen: torch.Generator | None = None
        self._gbuf: torch.Tensor | None = None
        self._pad_cache: list[torch.Tensor | None] | None = None
        # the record (record=False: the bare training loop, for benchmarks and branches)
        self.record = record
        self.capacity = capacity or task.budget
        self.step_times: list[float] = []  # host wall time of each recorded step
        self._alloc_record()
        self._build_fns(engine)

    def _members(self) -> MemberState:
        return MemberState(
            seeds=self.seeds,
            theta=self.theta,
            m1=self.m1,
            m2=self.m2,
            adam_steps=self.adam_steps,
            mu_prod=self.mu_prod,
            hp=self.hp,
            on=self._on,
            layer_lr=self.layer_lr,
            lr_scale=self._lr_scale,
            last_loss=self._last_loss,
            buffers=self.buffers,
        )

    # ------------------------------------------------------------------ hyperparameters
    def set_hparams(self, **values: object) -> None:
        """Set hyperparameters from host values: ``lr``/``momentum``/``weight_decay``/``l2``/
        ``input_noise`` as [K] arrays, ``layer_lr`` as [K, L]. One host-to-device copy each;
        call at decision points, not per step."""
        for k, v in values.items():
            arr = np.asarray(v, dtype=np.float64)
            if k == "layer_lr":
                arr = np.broadcast_to(arr, (self.K, self.spec.n_layers)).copy()
                self.layer_lr = arr
                if np.all(arr == 1.0):
                    self._lr_scale = None
                else:
                    per_layer = torch.as_tensor(arr, dtype=torch.float32, device=self.device)
                    self._lr_scale = self.spec.expand(per_layer)
                continue
            if k not in HP_NAMES:
                raise KeyError(f"unknown hyperparameter {k!r}; known: {HP_NAMES + ('layer_lr',)}")
            arr = np.broadcast_to(arr, (self.K,))
            self.hp[k] = torch.tensor(arr, dtype=torch.float32, device=self.device)
            self._on[k] = bool(np.any(arr != 0))

    # ------------------------------------------------------------------ record buffers
    def _alloc_record(self) -> None:
        if not self.record:
            self.rec_loss = self.rec_sums = self.rec_val = None
            return
        n, K, L, dev = self.capacity, self.K, self.spec.n_layers, self.device
        nan = float("nan")
        self.rec_loss = torch.full((n, K), nan, device=dev)  # [step, K]
        self.rec_sums = torch.full((n, 5, K, L), nan, device=dev)  # [step, 5, K, L]
        self.rec_val = torch.full((n, 2, K), nan, device=dev)  # [step, (loss, acc), K]
        P = self.spec.n_params
        # Two rotating [3, K, P] buffers (one [2, 3, K, P] tensor) hold (gradient, parameters,
        # -update) of steps t and t - 1: the optimizer writes them, the record reads them.
        store = torch.zeros(2, 3, K, P, device=dev)
        self._bufs = (store[0], store[1])
        self._bufs[0][1].copy_(self.theta)
        self.theta = self._bufs[0][1]
        # the measurement contract's population record (trajlib.measure)
        self._sums = PopulationSums(
            store,
            self.spec.offsets,
            self.spec.numels,
            self.spec.align,
            self.rec_sums,
            self.rec_loss,
        )
        # outputs of a step, per buffer parity: gradient, -update, next parameters
        self._views = [(store[par][0], store[par][2], store[1 - par][1]) for par in (0, 1)]

    # ------------------------------------------------------------------ functional pieces
    def _build_fns(self, engine: tuple[str, str] | None = None) -> None:
        task, module, spec = self.task, self.module, self.spec

        def out_fn(flat: torch.Tensor, bufs: dict[str, torch.Tensor], x: torch.Tensor):
            return functional_call(module, {**spec.views(flat), **bufs}, (x,))

        def eval_fn(
            flat: torch.Tensor, bufs: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            out = out_fn(flat, bufs, x)
            loss = task.loss_value(out, y)
            if task.is_classification:
                acc = (out.argmax(-1) == y).float().mean()
            else:
                acc = torch.full((), float("nan"), device=out.device)
            return loss, acc

        def loss_fn(
            p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
        ) -> torch.Tensor:
            return task.loss_value(functional_call(module, {**p, **b}, (x,)), y)

        self._out = out_fn
        self._eval_one = eval_fn
        self._loss_one = loss_fn
        self._vloss = vmap(loss_fn)
        self._veval = vmap(eval_fn, in_dims=(0, 0, None, None))
        plan = mlp_plan(module) if self.fast else None
        if task.loss == "mse" and self.data.y_train.dim() != 2:
            plan = None  # the hand-written MSE expects [n, d] targets; autograd handles the rest
        where = {n: (o, sh) for n, o, sh in zip(spec.names, spec.offsets, spec.shapes)}
        self._mlp = StackedMLP(plan, where, task.loss) if plan is not None else None
        if engine is None:
            engine = ("mlp", "") if self._mlp is not None else self._choose_engine()
        self.engine, self.engine_reason = engine

    def _choose_engine(self) -> tuple[str, str]:
        """("vmap", "") when one vmapped forward and backward runs this model; otherwise
        ("loop", why)."""
        random = _random_modules(self.module)
        if random:
            return (
                "loop",
                f"the model's forward is random ({', '.join(random[:4])}): members run one at a "
                "time, each with its own RNG seeded from (seed, step)",
            )
        # Try vmap on two copies of member 0 and one batch, without touching the members' state
        # or the global RNG.
        spec, dev = self.spec, self.device
        try:
            with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
                flat = self.theta[:1].detach().expand(2, -1).clone()
                params = {
                    n: flat[:, o : o + k].view(2, *sh).requires_grad_(True)
                    for n, o, k, sh in zip(spec.names, spec.offsets, spec.numels, spec.shapes)
                }
                bufs = {n: b[:1].expand(2, *b.shape[1:]).clone() for n, b in self.buffers.items()}
                xs, ys = self.data.x_train[: self.task.batch_size], self.data.y_train
                x = xs.unsqueeze(0).expand(2, *xs.shape)
                y = ys[: xs.shape[0]].unsqueeze(0).expand(2, *ys[: xs.shape[0]].shape)
                with torch.enable_grad():
                    loss = self._vloss(params, bufs, x, y)
                    torch.autograd.grad(loss.sum(), list(params.values()), allow_unused=True)
        except Exception as exc:  # whatever vmap cannot run: the members run one at a time
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            return "loop", f"vmap cannot run this model ({type(exc).__name__}: {first})"
        return "vmap", ""

    def _grad(
        self, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-member gradients [K, P] (written into ``out`` when given) and data losses [K].

        On the MLP path without ``out`` the gradient is a buffer the next call overwrites (clone
        it to keep it)."""
        if self._mlp is not None:
            if out is None:
                out = self._grad_buffer()
            loss = self._mlp.loss_and_grad(self.theta, x, y, out)
            if self._on["l2"]:
                out.addcmul_(self.hp["l2"][:, None], self.theta)
            return out, loss
        # Each layer is its own leaf (a view of the flat parameters), so backward never builds
        # [K, P] zero-filled gradients per slice; the flat gradient is assembled with one cat.
        spec, K = self.spec, self.K
        flat = self.theta.detach()
        leaves = [
            flat[:, o : o + k].view(K, *s).requires_grad_(True)
            for o, k, s in zip(spec.offsets, spec.numels, spec.shapes)
        ]
        params = dict(zip(spec.names, leaves))
        self.module.train()
        with torch.enable_grad():
            if self.engine == "loop":
                loss = self._loop_loss(params, x, y)
            elif K == 1:
                one = {n: v[0] for n, v in params.items()}
                bufs = {n: b[0] for n, b in self.buffers.items()}
                loss = self._loss_one(one, bufs, x[0], y[0]).reshape(1)
            else:
                loss = self._vloss(params, self.buffers, x, y)
            total = loss.sum()
            if self._on["l2"]:
                sq = sum((v * v).flatten(1).sum(1) for v in leaves)
                total = total + 0.5 * (self.hp["l2"] * sq).sum()
            grads = torch.autograd.grad(total, leaves)
        pieces: list[torch.Tensor] = []
        for gl, pad in zip(grads, self._pads()):
            pieces.append(gl.reshape(K, -1))
            if pad is not None:
                pieces.append(pad)
        return torch.cat(pieces, dim=1, out=out), loss.detach()

    def _loop_loss(
        self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """Member losses [K], one member at a time; member k's forward draws from the global RNG
        seeded with ``_dropout_key(seed_k, t)`` (the RNG is restored afterwards)."""
        dev = self.device
        losses = []
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            for k, seed in enumerate(self.seeds):
                torch.manual_seed(_dropout_key(seed, self.t))
                one = {n: v[k] for n, v in params.items()}
                bufs = {n: b[k] for n, b in self.buffers.items()}
                losses.append(self._loss_one(one, bufs, x[k], y[k]))
        return torch.stack(losses)

    def _grad_buffer(self) -> torch.Tensor:
        """A persistent [K, P] gradient buffer whose alignment gaps stay zero (populations that
        do not record, e.g. branches)."""
        buf = self._gbuf
        if buf is None or buf.shape[0] != self.K:
            buf = self._gbuf = torch.zeros(self.K, self.spec.n_params, device=self.device)
        return buf

    def _pads(self) -> list[torch.Tensor | None]:
        pads = self._pad_cache
        if (
            pads is None
            or (pads and pads[0] is not None and pads[0].shape[0] != self.K)
            or (len(pads) != self.spec.n_layers)
        ):
            pads = []
            for k, s in zip(self.spec.numels, self.spec.spans):
                pads.append(torch.zeros(self.K, s - k, device=self.device) if s > k else None)
            self._pad_cache = pads
        return pads

    def _batch(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Minibatch [K, B, ...] of step ``t``: a function of (member seed, t) only."""
        n, B = self.data.x_train.shape[0], self.task.batch_size
        epoch, start = batch_slot(t, n, B)
        if epoch != self._perm_epoch:
            self._perms = torch.stack([epoch_order(s, epoch, n) for s in self.seeds]).to(
                self.device
            )
            self._perm_epoch = epoch
        if self._perms is None:
            raise RuntimeError("no batch permutation for this epoch")
        idx = self._perms[:, start : start + B]  # [K, B]
        xs, ys = self.data.x_train, self.data.y_train
        # index_select on the flat indices: ~4x faster than advanced indexing with [K, B]
        flat = idx.reshape(-1)
        x = xs.index_select(0, flat).view(*idx.shape, *xs.shape[1:])
        y = ys.index_select(0, flat).view(*idx.shape, *ys.shape[1:])
        if self._on["input_noise"] and x.is_floating_point():
            gen = self._noise_gen
            if gen is None:
                gen = self._noise_gen = torch.Generator(device=self.device)
            z = _noise(
                [(s * 1_000_003 + t) & _KEY_MASK for s in self.seeds], tuple(x.shape[1:]), gen
            )
            x = x + self.hp["input_noise"].view(-1, *([1] * (x.dim() - 1))) * z
        return x, y

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def step(self, lr: torch.Tensor) -> None:
        """One optimizer step of every member with learning rates ``lr`` [K] (on the device)."""
        t0 = time.perf_counter()
        t = self.t
        self.hp["lr"] = lr
        rec = self.record and t < self.capacity
        views = self._views[t % 2] if rec else None
        x, y = self._batch(t)
        g, loss = self._grad(x, y, out=views[0] if views is not None else None)
        theta = self.theta
        lr_c = lr[:, None] if self._lr_scale is None else lr[:, None] * self._lr_scale
        mom = self.hp["momentum"][:, None]
        d_out = views[1] if views is not None else None  # d = -update = theta_t - theta_{t+1}
        opt = self.task.optimizer
        if opt in ("sgd", "nesterov"):
            dg = g + self.hp["weight_decay"][:, None] * theta if self._on["weight_decay"] else g
            if t == 0:
                self.m1.copy_(dg)
            else:
                torch.addcmul(dg, self.m1, mom, out=self.m1)  # m1 = mom * m1 + dg, one pass
            if opt == "nesterov":  # torch.optim.SGD(nesterov=True): step along dg + mom * m1
                d = torch.mul(torch.addcmul(dg, self.m1, mom), lr_c, out=d_out)
            else:
                d = torch.mul(self.m1, lr_c, out=d_out)
        elif opt == "rmsprop":  # torch.optim.RMSprop(alpha=0.99, eps=1e-8, momentum=mom)
            if self.m2 is None:
                raise RuntimeError("RMSprop state missing its square average")
            dg = g + self.hp["weight_decay"][:, None] * theta if self._on["weight_decay"] else g
            self.m2.mul_(RMSPROP_ALPHA).addcmul_(dg, dg, value=1 - RMSPROP_ALPHA)
            avg = self.m2.sqrt().add_(RMSPROP_EPS)
            self.m1.mul_(mom).addcdiv_(dg, avg)  # momentum 0: m1 = dg / avg
            d = torch.mul(self.m1, lr_c, out=d_out)
        elif opt == "adagrad":  # torch.optim.Adagrad(lr_decay=0, eps=1e-10); no momentum
            if self.m2 is None:
                raise RuntimeError("Adagrad state missing its sum of squares")
            dg = g + self.hp["weight_decay"][:, None] * theta if self._on["weight_decay"] else g
            self.m2.addcmul_(dg, dg)
            d = torch.mul(dg / self.m2.sqrt().add_(ADAGRAD_EPS), lr_c, out=d_out)
        elif opt == "nadam":  # torch.optim.NAdam(momentum_decay=4e-3); beta1 = momentum
            if self.m2 is None:
                raise RuntimeError("NAdam state missing its second moment")
            self.adam_steps += 1
            b2, n = ADAM_BETA2, self.adam_steps[:, None]
            if self._on["weight_decay"]:
                g = g + self.hp["weight_decay"][:, None] * theta
            mu = mom * (1 - 0.5 * 0.96 ** (n * NADAM_MOMENTUM_DECAY))
            mu_next = mom * (1 - 0.5 * 0.96 ** ((n + 1) * NADAM_MOMENTUM_DECAY))
            self.mu_prod = self.mu_prod * mu[:, 0]
            prod = self.mu_prod[:, None]
            self.m1.mul_(mom).add_((1 - mom) * g)
            self.m2.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (self.m2 / (1 - b2**n)).sqrt() + ADAM_EPS
            step = g * ((1 - mu) / (1 - prod)) + self.m1 * (mu_next / (1 - prod * mu_next))
            d = torch.mul(step / denom, lr_c, out=d_out)
        else:  # adam (L2 weight decay) / adamw (decoupled); beta1 = momentum, beta2 = 0.999
            self.adam_steps += 1
            b2 = ADAM_BETA2
            if opt == "adam" and self._on["weight_decay"]:
                g = g + self.hp["weight_decay"][:, None] * theta
            self.m1.mul_(mom).add_((1 - mom) * g)
            if self.m2 is None:
                raise RuntimeError("Adam state missing its second moment")
            self.m2.mul_(b2).addcmul_(g, g, value=1 - b2)
            bc1 = 1 - mom ** self.adam_steps[:, None]
            bc2 = 1 - b2 ** self.adam_steps[:, None]
            direction = (self.m1 / bc1) / ((self.m2 / bc2).sqrt() + ADAM_EPS)
            d = torch.mul(direction, lr_c, out=d_out)
            if opt == "adamw" and self._on["weight_decay"]:
                d.add_((lr_c * self.hp["weight_decay"][:, None]) * theta)
        new = torch.sub(theta, d, out=views[2] if views is not None else None)
        if views is not None:
            self._sums.record(t, loss)  # row t of the record: no host sync
            self.step_times.append(time.perf_counter() - t0)
        self._last_loss = loss
        self.theta = new
        self.t = t + 1

    @torch.no_grad()
    def evaluate(self, split: str = "val") -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and accuracy [K] of every member on ``val`` or ``test`` (accuracy NaN for
        regression)."""
        x, y = (
            (self.data.x_val, self.data.y_val)
            if split == "val"
            else (self.data.x_test, self.data.y_test)
        )
        if self._mlp is not None:
            out = self._mlp.forward(self.theta, x)  # [K, C, B]
            loss = self._mlp.member_losses(out, y)
            if self.task.is_classification:
                acc = (out.argmax(1) == y).float().mean(-1)
            else:
                acc = torch.full_like(loss, float("nan"))
            return loss, acc
        self.module.eval()  # running statistics, no dropout
        try:
            if self.engine == "loop":
                pairs = [
                    self._eval_one(self.theta[k], {n: b[k] for n, b in self.buffers.items()}, x, y)
                    for k in range(self.K)
                ]
                return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
            return self._veval(self.theta, self.buffers, x, y)
        finally:
            self.module.train()

    def record_validation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluate on val and store it in the row of the last completed step."""
        vl, va = self.evaluate("val")
        if self.rec_val is not None and 0 < self.t <= self.capacity:
            self.rec_val[self.t - 1, 0] = vl
            self.rec_val[self.t - 1, 1] = va
        return vl, va

    def last_losses(self) -> torch.Tensor:
        """Training losses [K] of the last step (on the device)."""
        return self._last_loss

    # ------------------------------------------------------------------ derived record
    @torch.no_grad()
    def columns(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """The step columns of rows ``start .. stop - 1``, each a host array [n, K].

        Derived here, vectorized over the chunk: ``grad_norm``/``weight_norm``/``update_norm``
        (global L2 norms), ``grad_cos``/``update_cos`` (cosine with the previous step; NaN at
        step 0), ``upd_ratio_{mean,max,min,median}`` over layers of |u_l| / |w_l|, ``finite``
        (bool), ``loss``, ``val_loss``/``val_acc`` (NaN where not measured). Also ``layers``:
        [n, K, L, 3] per-layer (grad_norm, weight_norm, update_norm).
        """
        if self.rec_sums is None or self.rec_loss is None or self.rec_val is None:
            raise RuntimeError("this population does not record (record=False)")
        stop = min(self.t, self.capacity) if stop is None else stop
        sums = self.rec_sums[start:stop].cpu().numpy()  # [n, 5, K, L], one transfer
        prev = None
        if start > 0:  # the step before the chunk, for the cosines
            t = self.rec_sums[start - 1].sum(-1).cpu().numpy()  # [5, K]
            prev = np.stack([np.sqrt(t[0]), np.sqrt(t[2])])
        stats = step_stats(sums, prev)[0].astype(np.float32)  # [n, K, len(STEP_STATS)]
        loss = self.rec_loss[start:stop].cpu().numpy()
        val = self.rec_val[start:stop].cpu().numpy()
        out = {
            "loss": loss,
            **{name: stats[..., i] for i, name in enumerate(STEP_STATS)},
            "finite": np.isfinite(loss) & np.isfinite(stats[..., 0]),
            "val_loss": val[:, 0],
            "val_acc": val[:, 1],
            "layers": np.sqrt(sums[:, :3]).transpose(0, 2, 3, 1),
        }
        return out

    # ------------------------------------------------------------------ branching
    def take(self, index: torch.Tensor | np.ndarray | list[int]) -> Population:
        """A new, non-recording population of the members ``index`` (repeats allowed), each a
        copy of that member's full state (parameters, optimizer, hyperparameters, seed)."""
        members = self._members().take(np.asarray(index, dtype=np.int64))
        child = Population.__new__(Population)
        child._assemble(
            self.task,
            self.data,
            self.module,
            self.spec,
            members,
            t=self.t,
            record=False,
            capacity=self.capacity,
            fast=self.fast,
            engine=(self.engine, self.engine_reason),
        )
        return child

    def fork(self, repeats: int) -> Population:
        """K * repeats members: member k's state copied ``repeats`` times (order k0, k0, ...,
        k1, k1, ...). Same seeds, so the same future batches."""
        return self.take(np.repeat(np.arange(self.K), repeats))
