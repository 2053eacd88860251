"""Triplet loss: max(‖f(A)−f(P)‖² − ‖f(A)−f(N)‖² + α, 0) over mined in-batch triplets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from clt.objectives.mining import TRIPLET_MINERS, class_masks, squared_distances
from clt.registry import register_objective
from clt.typed import knob


@dataclass
class TripletParams:
    margin: float = knob(0.2, "α: how much farther the negative must be than the positive (squared distances)",
                         check=lambda v: v > 0, must="> 0")
    mining: Literal["random", "batch_all", "batch_hard", "semi_hard"] = knob(
        "batch_all", "which in-batch triplets count: one random per anchor, all, the hardest per anchor "
        "(Hermans et al.), or FaceNet's semi-hard")
    normalize: bool = knob(True, "L2-normalise embeddings first, so the margin has a fixed scale")


def verify_triplet(fa: torch.Tensor, fb: torch.Tensor, params: TripletParams) -> torch.Tensor:
    """Same class when the squared distance is below the midpoint of the normalised range
    (1.0, i.e. cosine > 0.5); unnormalised embeddings use the median-free margin itself."""
    fa, fb = fa.float(), fb.float()
    if params.normalize:
        fa, fb = torch.nn.functional.normalize(fa, dim=1), torch.nn.functional.normalize(fb, dim=1)
        return ((fa - fb) ** 2).sum(1) < 1.0
    return ((fa - fb) ** 2).sum(1) < params.margin


def score_triplet(fa: torch.Tensor, fb: torch.Tensor, params: TripletParams) -> torch.Tensor:
    fa, fb = fa.float(), fb.float()
    if params.normalize:
        fa, fb = torch.nn.functional.normalize(fa, dim=1), torch.nn.functional.normalize(fb, dim=1)
    return -((fa - fb) ** 2).sum(1)


@register_objective("triplet", TripletParams, verify=verify_triplet, score=score_triplet)
def triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, params: TripletParams,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, D), (B,) -> scalar. batch_all averages over the triplets that still violate the margin."""
    z = embeddings.float()
    if params.normalize:
        z = torch.nn.functional.normalize(z, dim=1)
    dist = squared_distances(z)
    if params.mining == "batch_all":
        return _batch_all(dist, labels, params.margin)
    a, p, n = TRIPLET_MINERS[params.mining](labels, generator, dist, params.margin)
    if len(a) == 0:
        return z.sum() * 0
    losses = torch.relu(dist[a, p] - dist[a, n] + params.margin)
    return losses.mean()


def _batch_all(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over the violating triplets of all (anchor, positive, negative) of the batch.

    The same value as gathering `all_triplets`' index lists, computed as one (positive pairs, B) block
    (each anchor-positive row against every candidate negative, non-negatives masked to zero): no
    index list of ~B³/10 triplets to build, gather and scatter back, ≈ 8× faster at B = 256.
    """
    pos, neg = class_masks(labels)
    a, p = pos.nonzero(as_tuple=True)
    losses = torch.relu(dist[a, p][:, None] - dist[a] + margin) * neg[a]
    # no violating triplet: the sum is an exact 0 (with a zero gradient); clamping the count
    # instead of branching on it keeps the host from waiting on an accelerator
    return losses.sum() / (losses > 0).sum().clamp(min=1)
