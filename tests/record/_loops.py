"""A user's own training loop, as a new user would write it: a small CNN with BatchNorm and
dropout, Adam, a DataLoader over synthetic images (no download)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * 4 * 4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def data(n: int = 96, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 1).long()
    return TensorDataset(x, y)


def loader(seed: int = 0, batch_size: int = 16) -> DataLoader:
    return DataLoader(
        data(), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )


def validator(model: nn.Module):
    val = data(48, seed=1)

    def validate() -> tuple[float, float]:
        was = model.training
        model.eval()
        with torch.no_grad():
            out = model(val.tensors[0])
            loss = float(nn.functional.cross_entropy(out, val.tensors[1]))
            acc = float((out.argmax(1) == val.tensors[1]).float().mean())
        model.train(was)
        return loss, acc

    return validate


def stepper(model: nn.Module, opt: torch.optim.Optimizer, loss_fn=nn.functional.cross_entropy):
    """``train_step(batch) -> loss``: one whole optimizer step of ``model`` on ``(x, y)``."""

    def train_step(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return train_step
