"""SimCLR's NT-Xent: each view's positive is the other view of its image, 2N−2 negatives."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clt.registry import register_objective
from clt.typed import knob


@dataclass
class NTXentParams:
    temperature: float = knob(0.5, "softmax temperature of NT-Xent (lower: sharper, harder negatives)",
                              check=lambda v: v > 0, must="> 0")



def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """z: (2N, D), rows [view 1 of images 0..N-1; view 2 of images 0..N-1] -> scalar."""
    two_n = z.shape[0]
    n = two_n // 2
    z = F.normalize(z.float(), dim=1)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(two_n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.arange(two_n, device=z.device).roll(n)
    return F.cross_entropy(logits, targets)


@register_objective("simclr", NTXentParams, views=2, uses_labels=False,
                    known_recipe="recipes/cifar10_simclr_cpu.yaml")
def simclr_loss(embeddings: torch.Tensor, labels: torch.Tensor, params: NTXentParams) -> torch.Tensor:
    """NT-Xent over two augmented views per image (labels unused)."""
    return nt_xent(embeddings, params.temperature)
