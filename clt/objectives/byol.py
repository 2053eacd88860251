"""BYOL (Grill et al. 2020): the online prediction of one view regresses the target's projection of the other."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clt.objectives.moco import momentum_error
from clt.registry import register_objective


@dataclass
class BYOLParams:
    predictor_hidden: int = 512
    momentum: float = 0.99
    momentum_schedule: str = "cosine"

    def check(self) -> str | None:
        return momentum_error(self.momentum, self.momentum_schedule)


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
