"""The population engine: members equal separate runs, the fast path equals the generic path and
a plain torch.optim reference, the derived record equals a direct computation, per-layer LR
multipliers scale per-layer updates, and a step never reads back to the host."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.measure._require import require_native
from trajlib.collect._engine import Population
from trajlib.measure import _native, _population
from trajlib.tasks import Task, get_task

STEPS = 25


def _train(pop: Population, lrs: np.ndarray, steps: int = STEPS) -> np.ndarray:
    lr = torch.as_tensor(lrs, dtype=torch.float32)
    for _ in range(steps):
        pop.step(lr)
    return pop.columns()["loss"]  # [steps, K]


@pytest.mark.parametrize(
    "task_name, extra",
    [
        ("digits-mlp", {"l2": [0.0, 1e-3, 0.0], "input_noise": [0.0, 0.0, 0.3]}),  # SGD, MLP path
        ("teacher-student", {"weight_decay": [0.0, 1e-3, 5e-4]}),  # SGD, regression
        ("digits-cnn", {}),  # AdamW, generic vmap path
    ],
)
def test_population_of_k_equals_k_separate_runs(task_name, extra):
    task = get_task(task_name)
    data = task.make_data()
    seeds = [3, 7, 11]
    lrs = np.array([0.5, 1.0, 2.0]) * task.default_lr
    mom = np.array([0.8, 0.9, 0.95])
    hps = {"lr": lrs, "momentum": mom, **extra}
    together = _train(Population(task, data, seeds, hps, capacity=STEPS), lrs)
    for k, seed in enumerate(seeds):
        one = {name: np.asarray(v)[k : k + 1] for name, v in hps.items()}
        alone = _train(Population(task, data, [seed], one, capacity=STEPS), lrs[k : k + 1])
        np.testing.assert_allclose(together[:, k], alone[:, 0], rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_single_member_matches_plain_torch_optim(optimizer):
    """A slow, obviously-correct reference: nn.Module + torch.optim on the engine's batches."""
    task = get_task("digits-mlp")
    if optimizer == "adamw":
        from dataclasses import replace

        task = replace(task, optimizer="adamw", default_lr=3e-3, weight_decay=1e-2)
    data = task.make_data()
    pop = Population(task, data, [5], {"lr": [task.default_lr]}, capacity=STEPS)
    torch.manual_seed(5)
    model = task.make_model()
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=task.default_lr, momentum=task.momentum)
    else:
        opt = torch.optim.AdamW(
            model.parameters(),
            lr=task.default_lr,
            betas=(task.momentum, 0.999),
            weight_decay=task.weight_decay,
        )
    ref = []
    for t in range(STEPS):
        x, y = pop._batch(t)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[0]), y[0])
        loss.backward()
        opt.step()
        ref.append(loss.item())
        pop.step(torch.tensor([task.default_lr]))
    np.testing.assert_allclose(pop.columns()["loss"][:, 0], ref, rtol=1e-4, atol=1e-5)


def test_fast_mlp_path_equals_generic_vmap_path():
    task = get_task("mnist1d-mlp")
    data = task.make_data()
    lrs = np.array([0.02, 0.05, 0.1])
    fast = Population(task, data, [0, 1, 2], {"lr": lrs}, capacity=STEPS)
    slow = Population(task, data, [0, 1, 2], {"lr": lrs}, capacity=STEPS, fast=False)
    assert fast._mlp is not None and slow._mlp is None
    a, b = _train(fast, lrs), _train(slow, lrs)
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    va, vb = fast.evaluate("val"), slow.evaluate("val")
    np.testing.assert_allclose(va[0].numpy(), vb[0].numpy(), rtol=1e-4)
    np.testing.assert_allclose(va[1].numpy(), vb[1].numpy())


@pytest.mark.parametrize(
    "make_model, loss",
    [
        (lambda: nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)), "cross_entropy"),
        (lambda: nn.Sequential(nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 10)), "cross_entropy"),
        (  # an activation after the output layer, an Identity, MSE on one-hot targets
            lambda: nn.Sequential(
                nn.Linear(64, 16), nn.Identity(), nn.ReLU(), nn.Linear(16, 10), nn.Tanh()
            ),
            "mse",
        ),
    ],
)
def test_hand_written_mlp_backward_equals_autograd(make_model, loss):
    base = get_task("digits-mlp")
    data = base.make_data()
    if loss == "mse":
        data = type(data)(
            *(
                nn.functional.one_hot(t, 10).float() if t.dtype == torch.int64 else t
                for t in data.tensors()
            )
        )
    task = Task("custom-mlp", "custom", make_model, lambda: data, loss=loss, default_lr=0.05)
    lrs = np.array([0.02, 0.05])
    hps = {"lr": lrs, "l2": [0.0, 1e-2]}
    fast = Population(task, data, [0, 1], hps, capacity=STEPS)
    slow = Population(task, data, [0, 1], hps, capacity=STEPS, fast=False)
    assert fast._mlp is not None and slow._mlp is None
    np.testing.assert_allclose(_train(fast, lrs), _train(slow, lrs), rtol=2e-4, atol=2e-5)
    g_fast, _ = fast._grad(*fast._batch(fast.t))
    g_slow, _ = slow._grad(*slow._batch(slow.t))
    np.testing.assert_allclose(g_fast.numpy(), g_slow.numpy(), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("seeds, fast", [([1, 2], True), ([1, 2], False), ([1], False)])
@pytest.mark.parametrize("record", ["native", "small", "large"])
def test_derived_record_equals_direct_computation(seeds, fast, record, monkeypatch):
    """Every way of recording (the native one-pass kernel, the PyTorch product-buffer and
    block-norm paths) gives the statistics computed directly from the step's tensors."""
    if record == "native":
        require_native()
    else:
        monkeypatch.setattr(_native, "lib", lambda: None)
        if record == "large":
            monkeypatch.setattr(_population, "_SMALL_LIMIT", 0)
    task = get_task("digits-mlp")
    data = task.make_data()
    lrs = [0.02, 0.05][: len(seeds)]
    pop = Population(task, data, seeds, {"lr": lrs}, capacity=10, fast=fast)
    assert pop._sums.mode == record
    thetas, grads = [pop.theta.clone()], []
    lr = torch.tensor(lrs)
    for _ in range(6):
        x, y = pop._batch(pop.t)
        g, _ = pop._grad(x, y)
        grads.append(g.clone())
        pop.step(lr)
        thetas.append(pop.theta.clone())
    cols = pop.columns()
    spec = pop.spec
    for t in range(6):
        g, w, u = grads[t], thetas[t], thetas[t + 1] - thetas[t]
        np.testing.assert_allclose(cols["grad_norm"][t], g.norm(dim=1).numpy(), rtol=1e-4)
        np.testing.assert_allclose(cols["weight_norm"][t], w.norm(dim=1).numpy(), rtol=1e-4)
        np.testing.assert_allclose(cols["update_norm"][t], u.norm(dim=1).numpy(), rtol=1e-3)
        if t == 0:
            assert np.isnan(cols["grad_cos"][0]).all()
        else:
            u_prev = thetas[t] - thetas[t - 1]
            gc = nn.functional.cosine_similarity(g, grads[t - 1], dim=1).numpy()
            uc = nn.functional.cosine_similarity(u, u_prev, dim=1).numpy()
            np.testing.assert_allclose(cols["grad_cos"][t], gc, atol=1e-4)
            np.testing.assert_allclose(cols["update_cos"][t], uc, atol=1e-3)
        ratios = np.stack(
            [
                (u[:, o : o + n].norm(dim=1) / w[:, o : o + n].norm(dim=1)).numpy()
                for o, n in zip(spec.offsets, spec.numels)
            ],
            1,
        )
        np.testing.assert_allclose(cols["upd_ratio_mean"][t], ratios.mean(1), rtol=1e-3)
        np.testing.assert_allclose(cols["upd_ratio_max"][t], ratios.max(1), rtol=1e-3)
        per_layer_g = np.stack(
            [g[:, o : o + n].norm(dim=1).numpy() for o, n in zip(spec.offsets, spec.numels)], 1
        )
        np.testing.assert_allclose(cols["layers"][t, :, :, 0], per_layer_g, rtol=1e-4)
    assert cols["finite"].all()


def test_per_layer_lr_multipliers_scale_per_layer_update_ratios():
    """At step 0, SGD's update of layer l is -lr * mult_l * g_l, so the per-layer update norms
    (and update/weight ratios) of a run with multipliers are exactly mult_l times those without."""
    task = get_task("mnist1d-mlp")
    data = task.make_data()
    L = 6
    mult = np.array([0.1, 0.5, 1.0, 2.0, 4.0, 10.0])
    plain = Population(task, data, [4], {"lr": [0.05]}, capacity=3)
    scaled = Population(task, data, [4], {"lr": [0.05]}, capacity=3)
    scaled.set_hparams(layer_lr=mult[None, :])
    for pop in (plain, scaled):
        pop.step(torch.tensor([0.05]))
    a = plain.columns()["layers"][0, 0, :, 2]  # per-layer update norm
    b = scaled.columns()["layers"][0, 0, :, 2]
    assert a.shape == (L,)
    np.testing.assert_allclose(b / a, mult, rtol=1e-5)
    w = plain.columns()["layers"][0, 0, :, 1]
    np.testing.assert_allclose((b / w) / (a / w), mult, rtol=1e-5)


def test_a_step_never_reads_back_to_the_host(monkeypatch):
    """Device-clean: no .item()/.cpu()/.tolist()/.numpy()/bool(tensor) in the per-step path
    (a sync per step on CUDA); host reads belong to decision points and chunk ends."""
    task = get_task("digits-mlp")
    data = task.make_data()
    pop = Population(
        task,
        data,
        [0, 1],
        {"lr": [0.02, 0.05], "l2": [1e-4, 0.0], "input_noise": [0.1, 0.0]},
        capacity=20,
    )
    pop.set_hparams(layer_lr=np.array([[1.0, 2.0, 1.0, 0.5], [1.0, 1.0, 1.0, 1.0]]))
    lr = torch.tensor([0.02, 0.05])
    pop.step(lr)  # first step: builds caches

    def boom(*a, **k):
        raise AssertionError("host read in the per-step path")

    for name in ("item", "cpu", "tolist", "numpy", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, boom)
    for _ in range(5):
        pop.step(lr)
    pop.record_validation()
    monkeypatch.undo()
    assert np.isfinite(pop.columns()["loss"]).all()


def test_fork_copies_state_and_sees_the_same_batches():
    task = get_task("digits-mlp")
    data = task.make_data()
    pop = Population(task, data, [1, 2], {"lr": [0.02, 0.05]}, capacity=20)
    lr = torch.tensor([0.02, 0.05])
    for _ in range(5):
        pop.step(lr)
    child = pop.fork(3)
    assert child.K == 6 and child.seeds == [1, 1, 1, 2, 2, 2]
    for _ in range(4):
        pop.step(lr)
        child.step(lr.repeat_interleave(3))
    np.testing.assert_allclose(
        child.theta.view(2, 3, -1).numpy(),
        pop.theta[:, None].expand(2, 3, -1).numpy(),
        rtol=1e-4,
        atol=1e-6,
    )


def test_mlp_members_in_chunks_give_the_same_gradients_as_one_chunk(monkeypatch):
    import trajlib.collect._mlp as mlp

    task = get_task("mnist1d-mlp")
    data = task.make_data()
    pop = Population(task, data, list(range(7)), {"lr": np.full(7, 0.05)}, record=False)
    x, y = pop._batch(0)
    one, parts = torch.zeros_like(pop.theta), torch.zeros_like(pop.theta)
    monkeypatch.setattr(mlp, "CHUNK_BYTES", 1 << 40)
    loss_one = pop._mlp.loss_and_grad(pop.theta, x, y, one)
    monkeypatch.setattr(mlp, "CHUNK_BYTES", 1 << 19)  # 3 chunks (3, 3, 1 members)
    loss_parts = pop._mlp.loss_and_grad(pop.theta, x, y, parts)
    assert len(pop._mlp._bufs) >= 2  # really ran in chunks of different shapes
    torch.testing.assert_close(loss_parts, loss_one, rtol=0, atol=0)
    torch.testing.assert_close(parts, one, rtol=0, atol=0)


def test_input_noise_is_standard_normal_and_a_function_of_member_seed_and_step():
    task = get_task("digits-mlp")
    data = task.make_data()
    hps = {"lr": [0.05, 0.05, 0.05], "input_noise": [1.0, 1.0, 1.0]}
    pop = Population(task, data, [4, 5, 4], hps, record=False)  # members 0 and 2 share a seed
    clean = Population(task, data, [4, 5, 4], {"lr": [0.05] * 3}, record=False)
    z = pop._batch(3)[0] - clean._batch(3)[0]  # [K, B, 64] noise of step 3
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1.0) < 0.02
    torch.testing.assert_close(z[0], z[2])  # same seed, same step: same noise
    assert not torch.allclose(z[0], z[1])  # another seed
    z4 = pop._batch(4)[0] - clean._batch(4)[0]
    assert not torch.allclose(z4[0], z[0])  # another step
    alone = Population(task, data, [5], {"lr": [0.05], "input_noise": [1.0]}, record=False)
    torch.testing.assert_close(alone._batch(3)[0][0] - clean._batch(3)[0][1], z[1])
