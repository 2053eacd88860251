"""NNCLR (Dwibedi et al. 2021): a view's nearest neighbour in a support set is the positive."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from clt.objectives.moco import info_nce
from clt.objectives.ntxent import nt_xent
from clt.registry import register_objective
from clt.typed import knob


@dataclass
class NNCLRParams:
    temperature: float = knob(0.1, "softmax temperature", check=lambda v: v > 0, must="> 0")
    queue_size: int = knob(4096, "rows of the support set the nearest neighbours are drawn from",
                           check=lambda v: v >= 1, must=">= 1")
    predictor_hidden: int = knob(512, "hidden width of the predictor on the online projections (0: none)",
                                 check=lambda v: v >= 0, must=">= 0")
    loss_form: Literal["one_way", "two_way", "ntxent"] = knob(
        "one_way", "`one_way`: each neighbour against the batch's predictions (the paper's Eq. 2); `two_way`: and each "
        "prediction against the batch's neighbours (its symmetrised Eq. 3); `ntxent`: SimCLR's NT-Xent over the "
        "neighbours and predictions together, so each side's other rows are negatives too (lightly's NNCLR loop)",
        omit_if_default=True)


def nearest_neighbour(z: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Row by row, the support row of highest cosine similarity (no gradient flows through it)."""
    similarity = F.normalize(z.detach().float(), dim=1) @ F.normalize(support.float(), dim=1).T
    return support[similarity.argmax(1)].detach()


def nn_info_nce(neighbours: torch.Tensor, p: torch.Tensor, params: NNCLRParams) -> torch.Tensor:
    """Neighbour i and prediction i (of the other view) are a positive pair; `loss_form` says which rows
    are anchors and which are their negatives."""
    t = params.temperature
    if params.loss_form == "ntxent":
        return nt_xent(torch.cat([neighbours, p]), t)
    one_way = info_nce(neighbours, p, p[:0], t)  # MoCo's InfoNCE with the batch's keys as the only negatives
    if params.loss_form == "two_way":
        return (one_way + info_nce(p, neighbours, p[:0], t)) / 2
    return one_way


@register_objective("nnclr", NNCLRParams, views=2, uses_labels=False, reads_views=True, predictor=True,
                    queue="online", head_norm="all", known_recipe="recipes/cifar10_nnclr_cpu.yaml")
def nnclr_loss(out, params: NNCLRParams) -> torch.Tensor:
    """Symmetrised: NN(z1) against the predictions of view 2, and NN(z2) against those of view 1.
    Until the support set holds rows, each view is its own neighbour."""
    z1, z2 = out.halves("z")
    p1, p2 = out.halves("p")
    if out.queue is None or len(out.queue) == 0:
        return (nn_info_nce(z1.detach(), p2, params) + nn_info_nce(z2.detach(), p1, params)) / 2
    return (nn_info_nce(nearest_neighbour(z1, out.queue), p2, params)
            + nn_info_nce(nearest_neighbour(z2, out.queue), p1, params)) / 2
