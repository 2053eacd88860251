"""Supervised contrastive loss (Khosla et al. 2020, L_out): every same-class sample is a positive."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clt.registry import register_objective
from clt.typed import knob


@dataclass
class SupConParams:
    temperature: float = knob(0.1, "softmax temperature", check=lambda v: v > 0, must="> 0")



def supervised_contrastive(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """z: (M, D), labels: (M,) -> scalar. Anchors with no positive in the batch are left out
    (they would divide by zero and give NaN)."""
    m = z.shape[0]
    z = F.normalize(z.float(), dim=1)
    eye = torch.eye(m, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~eye
    counts = positives.sum(1)
    has = counts > 0
    if not has.any():
        return z.sum() * 0
    summed = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(1)
    return -(summed[has] / counts[has]).mean()


@register_objective("supcon", SupConParams, views=2, known_recipe="recipes/cifar10_supcon.yaml")
def supcon_loss(embeddings: torch.Tensor, labels: torch.Tensor, params: SupConParams) -> torch.Tensor:
    """Supervised contrastive over two augmented views per image, labels repeated per view."""
    return supervised_contrastive(embeddings, labels, params.temperature)
