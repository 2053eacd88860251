"""Heads on frozen features (or a fine-tuned encoder), and the balanced few-label subsets they train on."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from clt.data.memory import ImageData
from clt.devices import autocast
from clt.models.heads import mlp
from clt.optim import make_optimizer

if TYPE_CHECKING:  # heads read a parsed probe section; they never parse recipes themselves
    from clt.recipe import ProbeConfig


def few_label_subset(labels: torch.Tensor, seed: int, per_class: int | None = None,
                     total: int | None = None) -> torch.Tensor:
    """Seeded, class-balanced subset of indices (sorted). `total` spreads evenly over classes."""
    labels = labels.cpu()
    classes = torch.unique(labels)
    if per_class is None and total is None:
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    quota = {int(c): per_class or 0 for c in classes}
    if per_class is None:
        base, extra = divmod(total, len(classes))
        order = torch.randperm(len(classes), generator=generator).tolist()
        for rank, ci in enumerate(order):
            quota[int(classes[ci])] = base + (1 if rank < extra else 0)
    picked = []
    for c in classes.tolist():
        members = (labels == c).nonzero().flatten()
        take = min(quota[c], len(members))
        picked.append(members[torch.randperm(len(members), generator=generator)[:take]])
    return torch.cat(picked).sort().values


class Standardize(nn.Module):
    """Fixed per-feature standardisation (train-feature mean and std, stored as buffers).

    A fixed affine map, so a linear head stays linear; it makes one epoch of Adam enough
    whatever scale the encoder's features have (MAE's linear probe does the same with a
    non-affine BatchNorm)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, features: torch.Tensor) -> None:
        self.mean.copy_(features.mean(0))
        self.std.copy_(features.std(0).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def build_head(cfg: ProbeConfig, in_dim: int, n_classes: int) -> nn.Sequential:
    layers = nn.Linear(in_dim, n_classes) if cfg.head == "linear" else mlp(in_dim, [*cfg.hidden, n_classes])
    return nn.Sequential(Standardize(in_dim), layers)


def train_head(head: nn.Module, features: torch.Tensor, labels: torch.Tensor, cfg: ProbeConfig, seed: int,
               on_epoch: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Cross-entropy training of a head on fixed features; the encoder is not involved."""
    if isinstance(head[0], Standardize):
        head[0].fit(features)
    optimizer = make_optimizer(cfg, head.parameters())
    return _fit(head, lambda idx: head(features[idx]), labels, len(features), optimizer, cfg, seed, on_epoch)


def finetune(encoder: nn.Module, head: nn.Module, data: ImageData, index: torch.Tensor, cfg: ProbeConfig,
             device: torch.device, precision: str, seed: int,
             on_epoch: Callable[[dict[str, Any]], None] | None = None,
             augment: str = "none") -> list[dict[str, Any]]:
    """Encoder and head trained together; the encoder at lr × finetune_lr_scale. With an
    `augment` preset every batch is a fresh batched augmentation of its images."""
    from clt.data.augment import BatchAugment, resolve_spec

    params = [{"params": head.parameters(), "lr": cfg.lr},
              {"params": encoder.parameters(), "lr": cfg.lr * cfg.finetune_lr_scale}]
    optimizer = make_optimizer(cfg, params)
    images, labels = data.train.images[index].to(device), data.train.labels[index].to(device)
    model = nn.Sequential(encoder, head)
    views = None if augment == "none" else BatchAugment(
        resolve_spec(augment, data.name, data.in_shape[0]))
    generator = torch.Generator().manual_seed(seed + 1)  # the views' own stream, apart from the order's

    def logits_of(idx: torch.Tensor) -> torch.Tensor:
        x = images[idx]
        if views:
            x = views(x.float().div_(255), generator)
        with autocast(device, precision):
            return model(data.normalize(x)).float()

    return _fit(model, logits_of, labels, len(images), optimizer, cfg, seed, on_epoch)


def _fit(model: nn.Module, logits_of: Callable[[torch.Tensor], torch.Tensor], labels: torch.Tensor, n: int,
         optimizer: torch.optim.Optimizer, cfg: ProbeConfig, seed: int,
         on_epoch: Callable[[dict[str, Any]], None] | None) -> list[dict[str, Any]]:
    """Cross-entropy epochs over a seeded order of n samples; every epoch's record is kept (the
    last one is what counts: no epoch is picked on test data)."""
    generator = torch.Generator().manual_seed(seed)
    history = []
    started = time.perf_counter()
    model.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=generator).to(labels.device)
        total, correct, count = 0.0, 0, 0
        for start in range(0, n, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            logits = logits_of(idx)
            loss = nn.functional.cross_entropy(logits, labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == labels[idx]).sum())
            count += len(idx)
        record = {"epoch": epoch + 1, "loss": total / max(count, 1), "train_accuracy": correct / max(count, 1),
                  "seconds": round(time.perf_counter() - started, 3)}
        history.append(record)
        if on_epoch:
            on_epoch(record)
    model.eval()
    return history
