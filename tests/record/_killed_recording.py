"""A real training process for the crash tests: records 30 steps into STORE with chunks every 5
steps and a checkpoint (model, optimizer, RNG, recorder) at step 10.

    python -m tests.record._killed_recording STORE CKPT kill-at-17   # SIGKILLs itself at step 17
    python -m tests.record._killed_recording STORE CKPT resume       # resumes from CKPT, to the end
    python -m tests.record._killed_recording STORE CKPT full         # no kill, no checkpoint
"""

from __future__ import annotations

import os
import signal
import sys

import torch
from torch import nn

from trajlib.collect import Recorder
from trajlib.store import create_store

STEPS, EVERY, CHUNK, CKPT_AT = 30, 4, 5, 10


def main(store_path: str, ckpt: str, mode: str) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(
        nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2)
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    xs, ys = torch.randn(STEPS, 8, 6, generator=g), torch.randn(STEPS, 8, 2, generator=g)
    rec = Recorder(
        create_store(store_path), opt, total_steps=STEPS, every=EVERY, model=model,
        behaviour="reduce-on-plateau", chunk_every=CHUNK, task_meta={"task": "crash"},
    )  # fmt: skip
    start = 0
    if mode == "resume":
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        rec.load_state_dict(state["recorder"])
        start = state["step"]
    kill_at = int(mode.split("-")[-1]) if mode.startswith("kill-at-") else None
    for t in range(start, STEPS):
        if t == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(xs[t]), ys[t])
        loss.backward()
        opt.step()
        rec.observe(loss)
        rec.step()
        if t + 1 == CKPT_AT and mode != "full":
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "rng": torch.get_rng_state(),
                    "recorder": rec.state_dict(),
                    "step": t + 1,
                },
                ckpt,
            )
    rec.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
