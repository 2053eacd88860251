"""Pairwise margin loss (Siamese), as in the MNIST pairwise contrastive write-up."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clt.objectives.mining import all_pairs, squared_distances
from clt.registry import register_objective
from clt.typed import knob


@dataclass
class PairParams:
    margin: float = knob(1.0, "distance beyond which different-class pairs are no longer pushed apart",
                         check=lambda v: v > 0, must="> 0")
    # in a 10-class batch only ~10 % of pairs share a class, and an unbalanced mean mostly learns to push apart
    balance: bool = knob(True, "weigh same-class and different-class pairs equally")



def pair_distance(fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """Mean squared difference per pair: (P, D), (P, D) -> (P,)."""
    return ((fa - fb) ** 2).mean(dim=1)


def pair_margin_loss(predicted: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Per-pair loss: target 0 (same class) pulls the distance to 0, 1 pushes it past the margin."""
    return (1 - target) * predicted + target * torch.clamp(margin - predicted, min=0)


def balanced_mean(per_pair: torch.Tensor, same: torch.Tensor, balance: bool) -> torch.Tensor:
    """Mean over pairs; with balance, the average of the same-class and different-class means."""
    if not balance:
        return per_pair.mean()
    parts = [per_pair[group].mean() for group in (same, ~same) if group.any()]
    return torch.stack(parts).mean() if parts else per_pair.sum() * 0


def verify_pair(fa: torch.Tensor, fb: torch.Tensor, params: PairParams) -> torch.Tensor:
    """Same class when the distance is below half the margin."""
    return pair_distance(fa.float(), fb.float()) < params.margin / 2


def score_pair(fa: torch.Tensor, fb: torch.Tensor, params: PairParams) -> torch.Tensor:
    return -pair_distance(fa.float(), fb.float())


@register_objective("pair", PairParams, verify=verify_pair, score=score_pair, offset_invariant=True)
def pair_loss(embeddings: torch.Tensor, labels: torch.Tensor, params: PairParams) -> torch.Tensor:
    """Pairwise margin loss over every pair in the batch: (B, D), (B,) -> scalar."""
    i, j, same = all_pairs(labels)
    # from the (B, B) distance matrix (one matrix product) rather than gathering a (P, D) copy per
    # side: at batch 256 those copies and their scatter-add backward cost more than the encoder
    predicted = squared_distances(embeddings.float())[i, j] / embeddings.shape[1]
    per_pair = pair_margin_loss(predicted, (~same).float(), params.margin)
    return balanced_mean(per_pair, same, params.balance)
