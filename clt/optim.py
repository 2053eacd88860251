"""Optimisers and learning-rate schedules, built from a recipe section (pretrain or probe)."""

from __future__ import annotations

import math
from typing import Any

import torch


def make_optimizer(cfg: Any, params, lr: float | None = None) -> torch.optim.Optimizer:
    lr = cfg.lr if lr is None else lr
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer in ("sgd", "lars"):
        # LARS's layer-wise scaling matters at batch sizes in the thousands; SGD+momentum stands in
        return torch.optim.SGD(params, lr=lr, momentum=getattr(cfg, "momentum", 0.9),
                               weight_decay=cfg.weight_decay, nesterov=False)
    raise ValueError(cfg.optimizer)


def make_scheduler(cfg: Any, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Per-step schedule: none, step (StepLR in epochs), cosine; optional linear warm-up."""
    total = max(cfg.epochs * steps_per_epoch, 1)
    warmup = cfg.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cfg.scheduler == "step":
            return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size)
        if cfg.scheduler == "cosine":
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
