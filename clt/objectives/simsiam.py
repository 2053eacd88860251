"""SimSiam (Chen & He 2021): BYOL without a momentum target; the stop-gradient prevents collapse."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from clt.registry import register_objective
from clt.typed import knob


def predictor_lr_scale_knob():
    """The predictor's lr as a multiple of the encoder's, for every objective with a predictor."""
    return knob(1.0, "the predictor's learning rate as a multiple of pretrain.lr",
                check=lambda v: v > 0, must="> 0", omit_if_default=True)


@dataclass
class SimSiamParams:
    predictor_hidden: int = knob(128, "hidden width of the predictor (the paper's bottleneck: a quarter of the "
                                 "projection width); 0: none, which collapses", check=lambda v: v >= 0, must=">= 0")
    # the paper and solo-learn keep the predictor's lr fixed; Tian et al. (2021, DirectPred)
    # find a predictor that adapts faster than the encoder helps non-contrastive methods learn early
    predictor_lr_scale: float = predictor_lr_scale_knob()
    predictor_lr_schedule: Literal["follow", "fixed"] = knob(
        "follow", "`follow`: the predictor's lr is warmed up and decayed with the encoder's; `fixed`: it stays at "
        "pretrain.lr times predictor_lr_scale throughout, as the SimSiam paper's", omit_if_default=True)


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = −cos(p, stopgrad(z)), averaged over rows."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=1).mean()


@register_objective("simsiam", SimSiamParams, views=2, uses_labels=False, reads_views=True, predictor=True,
                    gather=False, head_norm="all", known_recipe="recipes/cifar10_simsiam_cpu.yaml")
def simsiam_loss(out, params: SimSiamParams) -> torch.Tensor:
    """D(p1, z2)/2 + D(p2, z1)/2; without a predictor (predictor_hidden 0) p is z, which collapses."""
    z1, z2 = out.halves("z")
    p1, p2 = out.halves("p")
    return negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2
