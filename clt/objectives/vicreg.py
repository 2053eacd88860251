"""VICReg (Bardes et al. 2022): invariance, a variance hinge per dimension, and decorrelation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clt.registry import register_objective
from clt.typed import knob


@dataclass
class VICRegParams:
    invariance: float = knob(25.0, "λ: weight of the mean squared distance between the two views' embeddings",
                             check=lambda v: v >= 0, must=">= 0")
    variance: float = knob(25.0, "μ: weight of the hinge that keeps each dimension's standard deviation at 1",
                           check=lambda v: v >= 0, must=">= 0")
    covariance: float = knob(1.0, "ν: weight of the squared off-diagonal covariances (decorrelation)",
                             check=lambda v: v >= 0, must=">= 0")
    eps: float = knob(1e-4, "added to the variance before its square root", check=lambda v: v >= 0, must=">= 0")


def variance_hinge(z: torch.Tensor, eps: float) -> torch.Tensor:
    return F.relu(1 - torch.sqrt(z.var(0) + eps)).mean()


def covariance_penalty(z: torch.Tensor) -> torch.Tensor:
    """Σ of squared off-diagonal covariances, divided by D."""
    z = z - z.mean(0)
    cov = z.T @ z / (z.shape[0] - 1)
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / z.shape[1]


def vicreg(z1: torch.Tensor, z2: torch.Tensor, params: VICRegParams) -> torch.Tensor:
    z1, z2 = z1.float(), z2.float()
    return (params.invariance * F.mse_loss(z1, z2)
            + params.variance * (variance_hinge(z1, params.eps) + variance_hinge(z2, params.eps)) / 2
            + params.covariance * (covariance_penalty(z1) + covariance_penalty(z2)))


@register_objective("vicreg", VICRegParams, views=2, uses_labels=False, reads_views=True,
                    offset_invariant=True, head_norm="hidden", known_recipe="recipes/cifar10_vicreg_cpu.yaml")
def vicreg_loss(out, params: VICRegParams) -> torch.Tensor:
    """The paper's weights 25 / 25 / 1; statistics over the global batch with several processes."""
    z1, z2 = out.halves("z")
    return vicreg(z1, z2, params)
