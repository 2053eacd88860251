"""MoCo v2 (Chen et al. 2020): InfoNCE of online queries against momentum-target keys and a queue."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clt.registry import register_objective


@dataclass
class MoCoParams:
    temperature: float = 0.2
    queue_size: int = 4096
    momentum: float = 0.99  # the paper's 0.999 suits its 800 epochs; short runs need a faster target
    momentum_schedule: str = "constant"

    def check(self) -> str | None:
        if self.temperature <= 0:
            return f"temperature = {self.temperature} must be > 0"
        if self.queue_size < 1:
            return f"queue_size = {self.queue_size} must be >= 1"
        return momentum_error(self.momentum, self.momentum_schedule)


def momentum_error(momentum: float, schedule: str) -> str | None:
    """What is wrong with a momentum target's parameters (MoCo's, BYOL's), or None."""
    if not 0 <= momentum < 1:
        return f"momentum = {momentum} must be in [0, 1)"
    return None if schedule in ("constant", "cosine") else f"momentum_schedule '{schedule}' is not constant or cosine"


def info_nce(q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor, temperature: float) -> torch.Tensor:
    """q, k: (N, D), row i of k the positive of row i of q; negatives: (K, D), K >= 0 -> scalar.

    The batch's other keys are negatives too (as in MoCo v3), so the loss has negatives before
    the queue holds any; the queue then adds K more, as in MoCo v2."""
    q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
    negatives = F.normalize(negatives.float(), dim=1)
    logits = torch.cat([q @ k.T, q @ negatives.T], dim=1) / temperature
    return F.cross_entropy(logits, torch.arange(len(q), device=q.device))


@register_objective("moco", MoCoParams, views=2, uses_labels=False, reads_views=True, target=True,
                    queue="target", gather=False)
def moco_loss(out, params: MoCoParams) -> torch.Tensor:
    """MoCo v2, symmetrised: each view's query against the other view's key, the batch's keys and the queue."""
    q1, q2 = out.halves("z")
    k1, k2 = out.halves("target")
    return (info_nce(q1, k2, out.queue, params.temperature) + info_nce(q2, k1, out.queue, params.temperature)) / 2
