"""Cosine-similarity pair loss: MSE between cos(f(a), f(b)) and 1 (same class) or 0."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clt.objectives.mining import all_pairs
from clt.objectives.pair import balanced_mean
from clt.registry import register_objective
from clt.typed import knob


@dataclass
class CosinePairParams:
    balance: bool = knob(True, "weigh same-class and different-class pairs equally, as published")


def verify_cosine(fa: torch.Tensor, fb: torch.Tensor, params: CosinePairParams) -> torch.Tensor:
    return F.cosine_similarity(fa.float(), fb.float(), dim=1) > 0.5


def score_cosine(fa: torch.Tensor, fb: torch.Tensor, params: CosinePairParams) -> torch.Tensor:
    return F.cosine_similarity(fa.float(), fb.float(), dim=1)


@register_objective("cosine_pair", CosinePairParams, verify=verify_cosine, score=score_cosine)
def cosine_pair_loss(embeddings: torch.Tensor, labels: torch.Tensor, params: CosinePairParams) -> torch.Tensor:
    """(B, D), (B,) -> scalar: squared error of every in-batch pair's cosine against its target."""
    i, j, same = all_pairs(labels)
    z = F.normalize(embeddings.float(), dim=1)
    cosine = (z @ z.T)[i, j]  # one matrix product, no (P, D) gathers (see pair_loss)
    per_pair = (cosine - same.float()) ** 2
    return balanced_mean(per_pair, same, params.balance)
