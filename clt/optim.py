"""Optimisers and learning-rate schedules, built from a recipe section (pretrain or probe)."""

from __future__ import annotations

import math
from typing import Any

import torch


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling as the SimCLR paper's implementation applies it (You et al.
    2017; Chen et al. 2020), for each parameter tensor w with gradient g:

        g <- g + weight_decay * w                      (not for excluded tensors)
        trust = eta * ||w|| / ||g||  (1 when either norm is 0, or for excluded tensors)
        v <- momentum * v + lr * trust * g
        w <- w - v

    (SimCLR's "classic momentum" branch: the trust ratio scales each step's gradient, not the
    momentum history.)

    Biases and batch-norm parameters (every tensor with one dimension) are excluded from both
    the weight decay and the adaptation, as in SimCLR. Example: LARS(model.parameters(), lr=0.3)
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        if lr <= 0 or eta <= 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(f"LARS: lr {lr}, eta {eta} must be > 0, momentum {momentum} in [0, 1), "
                             f"weight decay {weight_decay} >= 0")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for w in group["params"]:
                if w.grad is not None:
                    self._update(w, group)
        return loss

    def _update(self, w: torch.Tensor, group: dict[str, Any]) -> None:
        adapted = w.ndim > 1  # biases and batch-norm scales/shifts keep the plain update
        g = w.grad.add(w, alpha=group["weight_decay"]) if adapted and group["weight_decay"] else w.grad
        trust = 1.0
        if adapted:
            w_norm, g_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(g)
            ratio = group["eta"] * w_norm / g_norm
            trust = torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))
        step = g * (group["lr"] * trust)
        state = self.state[w]
        velocity = state.get("momentum_buffer")
        velocity = step.clone() if velocity is None else velocity.mul_(group["momentum"]).add_(step)
        state["momentum_buffer"] = velocity
        w.sub_(velocity)


def make_optimizer(cfg: Any, params, lr: float | None = None) -> torch.optim.Optimizer:
    """The optimiser a recipe section names (adam, adamw, sgd, lars), at `lr` or the section's own."""
    lr = cfg.lr if lr is None else lr
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=getattr(cfg, "momentum", 0.9),
                               weight_decay=cfg.weight_decay, nesterov=False)
    if cfg.optimizer == "lars":
        return LARS(params, lr=lr, momentum=getattr(cfg, "momentum", 0.9), weight_decay=cfg.weight_decay,
                    eta=getattr(cfg, "lars_eta", 0.001))
    raise ValueError(cfg.optimizer)


def make_scheduler(cfg: Any, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Per-step schedule: none, step (StepLR in epochs), cosine; optional linear warm-up. A parameter
    group marked `fixed_lr` keeps its own lr throughout (SimSiam's predictor)."""
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

    factors = [(lambda step: 1.0) if group.get("fixed_lr") else factor for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
