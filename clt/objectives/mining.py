"""Which pairs and triplets a batch offers: index tensors, no loss arithmetic.

Every image of a batch is encoded once and takes part in many pairs or triplets.
"""

from __future__ import annotations

import torch


def all_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every unordered pair i < j of the batch: (i, j, same_class)."""
    i, j = torch.triu_indices(len(labels), len(labels), offset=1, device=labels.device)
    return i, j, labels[i] == labels[j]


def squared_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B) squared Euclidean distances, exact zeros on the diagonal."""
    sq = (embeddings * embeddings).sum(1)
    dist = sq[:, None] + sq[None, :] - 2 * embeddings @ embeddings.T
    # rounding can make the distance of two nearly equal embeddings negative: clamp the value but
    # keep the formula's gradient, 2(a − b), which a plain clamp would zero for exactly those pairs
    dist = dist + (dist.clamp_min(0) - dist).detach()
    return dist * (1 - torch.eye(len(embeddings), device=embeddings.device, dtype=dist.dtype))


def class_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, B) masks: same class but not the image itself (positives), other class (negatives)."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def random_triplets(labels: torch.Tensor, generator: torch.Generator | None = None,
                    dist: torch.Tensor | None = None, margin: float = 0.0):
    """For each anchor with a positive and a negative in the batch: one of each, at random."""
    pos, neg = class_masks(labels)
    valid = pos.any(1) & neg.any(1)
    anchors = valid.nonzero().flatten()
    noise = torch.rand(labels.shape[0], labels.shape[0], generator=generator).to(labels.device)
    p = torch.where(pos, noise, -1.0).argmax(1)
    n = torch.where(neg, noise, -1.0).argmax(1)
    return anchors, p[anchors], n[anchors]


def all_triplets(labels: torch.Tensor, generator=None, dist=None, margin: float = 0.0):
    """Every valid (anchor, positive, negative) of the batch."""
    pos, neg = class_masks(labels)
    valid = pos[:, :, None] & neg[:, None, :]
    a, p, n = valid.nonzero(as_tuple=True)
    return a, p, n


def hardest_triplets(labels: torch.Tensor, generator=None, dist: torch.Tensor | None = None, margin: float = 0.0):
    """Batch-hard (Hermans et al.): per anchor the farthest positive and the closest negative."""
    pos, neg = class_masks(labels)
    valid = pos.any(1) & neg.any(1)
    d = dist.detach()
    p = torch.where(pos, d, float("-inf")).argmax(1)
    n = torch.where(neg, d, float("inf")).argmin(1)
    anchors = valid.nonzero().flatten()
    return anchors, p[anchors], n[anchors]


def semi_hard_triplets(labels: torch.Tensor, generator=None, dist: torch.Tensor | None = None,
                       margin: float = 0.0):
    """FaceNet: for each (anchor, positive) the closest negative farther than the positive but
    within the margin; pairs with no such negative are left out."""
    pos, neg = class_masks(labels)
    d = dist.detach()
    a, p = pos.nonzero(as_tuple=True)
    dap = d[a, p][:, None]
    dan = d[a]
    semi = neg[a] & (dan > dap) & (dan < dap + margin)
    has = semi.any(1)
    n = torch.where(semi, dan, float("inf")).argmin(1)
    return a[has], p[has], n[has]


TRIPLET_MINERS = {
    "random": random_triplets,
    "batch_all": all_triplets,
    "batch_hard": hardest_triplets,
    "semi_hard": semi_hard_triplets,
}
