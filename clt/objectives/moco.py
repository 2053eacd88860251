"""MoCo v2 (Chen et al. 2020): InfoNCE of online queries against momentum-target keys and a queue."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from clt.registry import register_objective
from clt.typed import knob

# the momentum target's knobs, shared by MoCo and BYOL (pretrain.momentum is the optimiser's)
TARGET_MOMENTUM_DOC = ("EMA rate of the momentum target: after each step target = m·target + (1 − m)·online "
                       "(higher: a slower target)")
TARGET_SCHEDULE_DOC = "constant, or cosine: BYOL's rise of the EMA rate from target_momentum to 1 over training"


@dataclass
class MoCoParams:
    temperature: float = knob(0.2, "softmax temperature of InfoNCE", check=lambda v: v > 0, must="> 0")
    queue_size: int = knob(4096, "earlier keys kept as negatives", check=lambda v: v >= 1, must=">= 1")
    # the paper's 0.999 suits its 800 epochs; short runs need a faster target
    target_momentum: float = knob(0.99, TARGET_MOMENTUM_DOC, check=lambda v: 0 <= v < 1, must="in [0, 1)")
    target_momentum_schedule: Literal["constant", "cosine"] = knob("constant", TARGET_SCHEDULE_DOC)


def info_nce(q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor, temperature: float) -> torch.Tensor:
    """q, k: (N, D), row i of k the positive of row i of q; negatives: (K, D), K >= 0 -> scalar.

    The batch's other keys are negatives too (as in MoCo v3), so the loss has negatives before
    the queue holds any; the queue then adds K more, as in MoCo v2."""
    q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
    negatives = F.normalize(negatives.float(), dim=1)
    logits = torch.cat([q @ k.T, q @ negatives.T], dim=1) / temperature
    return F.cross_entropy(logits, torch.arange(len(q), device=q.device))


@register_objective("moco", MoCoParams, views=2, uses_labels=False, reads_views=True, target=True,
                    queue="target", gather=False, known_recipe="recipes/cifar10_moco_cpu.yaml")
def moco_loss(out, params: MoCoParams) -> torch.Tensor:
    """MoCo v2, symmetrised: each view's query against the other view's key, the batch's keys and the queue."""
    q1, q2 = out.halves("z")
    k1, k2 = out.halves("target")
    return (info_nce(q1, k2, out.queue, params.temperature) + info_nce(q2, k1, out.queue, params.temperature)) / 2
