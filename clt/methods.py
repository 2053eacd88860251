"""Training pieces that several objectives share: a predictor head, a momentum (EMA) target of
the online network, and a queue of earlier embeddings.

An objective asks for them when it registers (`predictor=`, `target=`, `queue=`); the loop
builds one `MethodParts` per run, gives the loss a `ViewOutputs`, and calls `after_step` once the
optimiser has stepped. Everything that changes during training is in `state_dict`, so a resumed
run continues exactly (the queue's rows and pointer, the target's weights).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from clt.models.heads import mlp


@dataclass
class ViewOutputs:
    """What a view-based loss reads. Rows of every (2N, D) tensor: [view 1 of images 0..N-1; view 2]."""

    z: torch.Tensor  # online projections, with gradient
    labels: torch.Tensor
    p: torch.Tensor | None = None  # predictor outputs on z, with gradient
    target: torch.Tensor | None = None  # momentum-target projections, no gradient
    queue: torch.Tensor | None = None  # (K, D) rows of earlier steps (K = 0 at first), no gradient

    def halves(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(view 1, view 2) rows of one field; "p" falls back to z where there is no predictor."""
        tensor = self.z if name == "p" and self.p is None else getattr(self, name)
        n = tensor.shape[0] // 2
        return tensor[:n], tensor[n:]


def momentum_at(base: float, step: int, total: int, schedule: str) -> float:
    """EMA momentum at `step` of `total`: constant, or BYOL's cosine rise from `base` to 1."""
    if schedule == "constant" or total <= 0:
        return base
    return 1 - (1 - base) * (math.cos(math.pi * min(step, total) / total) + 1) / 2


class FeatureQueue(nn.Module):
    """A ring buffer of the last `size` rows (MoCo's negatives, NNCLR's support set).

    Only rows pushed so far are handed out. MoCo's reference code starts from random unit
    vectors instead, but against random negatives a collapsed encoder scores well, and on a small
    dataset (digits) it collapsed before the queue filled; the batch's own keys are negatives from
    the first step (see clt/objectives/moco.py)."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("rows", torch.zeros(size, dim))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def valid(self) -> torch.Tensor:
        return self.rows[: int(self.filled)]

    @torch.no_grad()
    def push(self, rows: torch.Tensor) -> None:
        rows = rows.detach().float()[: len(self.rows)]
        start = int(self.pointer)
        index = (start + torch.arange(len(rows), device=self.rows.device)) % len(self.rows)
        self.rows[index] = rows.to(self.rows.device)
        self.pointer.fill_((start + len(rows)) % len(self.rows))
        self.filled.fill_(min(len(self.rows), int(self.filled) + len(rows)))


class MomentumTarget(nn.Module):
    """A copy of the online network, never trained by gradients, moved towards it after each step."""

    def __init__(self, online: nn.Module):
        super().__init__()
        self.network = copy.deepcopy(online)
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, online: nn.Module, momentum: float) -> None:
        for mine, theirs in zip(self.network.parameters(), online.parameters()):
            mine.mul_(momentum).add_(theirs.detach(), alpha=1 - momentum)
        for mine, theirs in zip(self.network.buffers(), online.buffers()):
            mine.copy_(theirs)  # batch-norm running statistics follow the online network

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


class MethodParts(nn.Module):
    """The predictor, target and queue one run's objective asked for (each may be None)."""

    def __init__(self, objective: Any, params: Any, model: nn.Module, dim: int, seed: int):
        super().__init__()
        hidden = int(getattr(params, "predictor_hidden", 0)) if objective.predictor else 0
        # BYOL's and SimSiam's predictor: Linear, BatchNorm, ReLU, Linear back to the projection size
        self.predictor = mlp(dim, [hidden, dim], batch_norm=True) if hidden else None
        self.predictor_lr_scale = float(getattr(params, "predictor_lr_scale", 1.0))
        self.predictor_lr_fixed = getattr(params, "predictor_lr_schedule", "follow") == "fixed"
        self.target = MomentumTarget(model) if objective.target else None
        size = int(getattr(params, "queue_size", 0)) if objective.queue else 0
        self.queue = FeatureQueue(size, dim) if size else None
        self.queue_from = objective.queue
        self.momentum = float(getattr(params, "target_momentum", 0.99))
        self.schedule = str(getattr(params, "target_momentum_schedule", "cosine"))

    def trained_parameters(self) -> list[nn.Parameter]:
        return list(self.predictor.parameters()) if self.predictor is not None else []

    def optimizer_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        """The optimiser's parameter groups: the model's, then the predictor's at its own lr (an
        objective's `predictor_lr_scale`) and marked `fixed_lr` where its schedule is `fixed`."""
        groups: list[dict[str, Any]] = [{"params": list(model.parameters())}]
        if self.predictor is not None:
            groups.append({"params": self.trained_parameters(), "lr": lr * self.predictor_lr_scale,
                           "fixed_lr": self.predictor_lr_fixed})
        return groups

    def outputs(self, z: torch.Tensor, labels: torch.Tensor, x: torch.Tensor) -> ViewOutputs:
        """The loss's inputs for online projections `z` of inputs `x` (call under autocast)."""
        return ViewOutputs(z, labels,
                           p=self.predictor(z) if self.predictor is not None else None,
                           target=self.target(x).detach() if self.target is not None else None,
                           queue=self.queue.valid().clone() if self.queue is not None else None)

    def after_step(self, online: nn.Module, out: ViewOutputs, step: int, total: int, gather=None) -> None:
        """Move the target towards `online` and push this step's rows (all ranks' rows) to the queue."""
        if self.target is not None:
            self.target.update(online, momentum_at(self.momentum, step, total, self.schedule))
        if self.queue is not None:
            # MoCo enqueues the target's keys, NNCLR the online projections; view 1's rows, once each
            rows = (out.target if self.queue_from == "target" else out.z).detach().float()
            rows = rows[: rows.shape[0] // 2]
            self.queue.push(gather(rows) if gather else rows)
