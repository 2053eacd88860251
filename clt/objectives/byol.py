"""BYOL (Grill et al. 2020): the online prediction of one view regresses the target's projection of the other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from clt.objectives.moco import TARGET_MOMENTUM_DOC, TARGET_SCHEDULE_DOC
from clt.objectives.simsiam import predictor_lr_scale_knob
from clt.registry import register_objective
from clt.typed import knob


@dataclass
class BYOLParams:
    predictor_hidden: int = knob(512, "hidden width of the predictor on the online projections (0: none)",
                                 check=lambda v: v >= 0, must=">= 0")
    target_momentum: float = knob(0.99, TARGET_MOMENTUM_DOC, check=lambda v: 0 <= v < 1, must="in [0, 1)")
    target_momentum_schedule: Literal["constant", "cosine"] = knob("cosine", TARGET_SCHEDULE_DOC)
    predictor_lr_scale: float = predictor_lr_scale_knob()


def normalized_mse(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """‖p/‖p‖ − z/‖z‖‖² = 2 − 2·cos(p, z), averaged over rows."""
    return (2 - 2 * F.cosine_similarity(p.float(), z.float(), dim=1)).mean()


@register_objective("byol", BYOLParams, views=2, uses_labels=False, reads_views=True, predictor=True,
                    target=True, gather=False, head_norm="hidden",
                    known_recipe="recipes/cifar10_byol_cpu.yaml")
def byol_loss(out, params: BYOLParams) -> torch.Tensor:
    """Symmetrised BYOL: the mean over both directions of the normalised MSE."""
    p1, p2 = out.halves("p")
    t1, t2 = out.halves("target")
    return (normalized_mse(p1, t2.detach()) + normalized_mse(p2, t1.detach())) / 2
