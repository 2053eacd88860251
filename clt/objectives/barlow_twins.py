"""Barlow Twins (Zbontar et al. 2021): the two views' cross-correlation matrix pushed to the identity."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clt.registry import register_objective
from clt.typed import knob


@dataclass
class BarlowTwinsParams:
    lambda_offdiag: float = knob(0.0051, "weight λ of the off-diagonal (redundancy) terms against the diagonal "
                                 "(invariance) ones; the paper's 0.0051", check=lambda v: v >= 0, must=">= 0")


def batch_standardize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per dimension over the batch: mean 0, biased variance 1, as the paper's affine-free BatchNorm."""
    z = z.float()
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lambda_offdiag: float) -> torch.Tensor:
    """z1, z2: (N, D) -> Σ(1 − C_ii)² + λ Σ_{i≠j} C_ij², C the (D, D) cross-correlation."""
    c = batch_standardize(z1).T @ batch_standardize(z2) / z1.shape[0]
    on_diagonal = (torch.diagonal(c) - 1).pow(2).sum()
    off_diagonal = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diagonal + lambda_offdiag * off_diagonal


@register_objective("barlow_twins", BarlowTwinsParams, views=2, uses_labels=False, reads_views=True,
                    offset_invariant=True, head_norm="hidden",
                    known_recipe="recipes/cifar10_barlow_twins_cpu.yaml")
def barlow_twins_loss(out, params: BarlowTwinsParams) -> torch.Tensor:
    """Over the global batch (the paper all-reduces C), so several processes see every rank's rows."""
    z1, z2 = out.halves("z")
    return barlow_twins(z1, z2, params.lambda_offdiag)
