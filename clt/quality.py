"""How good an encoder is without labels, always beside the untrained encoder and raw pixels.

The main measure is **view retrieval**: for N held-out images, one augmented view of each (the
recipe's augmentation) looks for its nearest un-augmented original by cosine similarity; the share
that find their own source is the top-1 accuracy (chance is 1/N). Beside it: the effective rank of
the originals' embeddings, the alignment of two views (mean squared distance of their normalised
embeddings, lower is better) and the uniformity of the originals (log mean exp(-2‖x−y‖²) over
pairs, lower is better; Wang & Isola 2020). A number alone says little, so each is reported for
the encoder, the same architecture untrained (same seed) and flattened mean-centred pixels.

Cosine similarity here, in clt.metrics and in exact search treats a zero vector explicitly: its
similarity to everything is 0 (never NaN), and ties are broken by the lower row index.

Also: the few-label check (cross-validated cosine kNN of a user's own tags) and the zero-norm
row count the embed and evaluate stages warn with.

Example: measures(originals, view_a, view_b)["view_retrieval"]; verdict(scores, n_images=1000)
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

from clt.data.memory import ImageData, Split
from clt.features import extract_features
from clt.metrics import knn_predict
from clt.train import embedding_rank

BASELINES = ("pixels", "untrained")
MEASURES = ("view_retrieval", "effective_rank", "alignment", "uniformity")
# lower is better for these two; for view retrieval higher is; the rank is shown, not judged
LOWER_IS_BETTER = ("alignment", "uniformity")


# ---------------------------------------------------------------- pure measures over embeddings


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length; a zero row stays the zero vector, so its cosine to anything is 0."""
    x = x.float()
    norm = x.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, x / norm.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(x))


def view_retrieval(views: torch.Tensor, originals: torch.Tensor) -> float:
    """Share of views whose most cosine-similar original is their own source (row i of both).

    Ties go to the lower index (torch.argmax returns the first maximum), so a collapsed or all-zero
    embedding scores chance (1/N), never an arbitrary luckier number.
    Example: view_retrieval(torch.eye(3), torch.eye(3)) == 1.0
    """
    if len(views) != len(originals) or len(views) == 0:
        raise ValueError(f"{len(views)} views for {len(originals)} originals")
    similarity = unit_rows(views) @ unit_rows(originals).T
    nearest = similarity.argmax(1)
    return float((nearest == torch.arange(len(views), device=nearest.device)).float().mean())


def alignment(view_a: torch.Tensor, view_b: torch.Tensor) -> float:
    """Mean squared distance between the normalised embeddings of two views of each image (0 to 4)."""
    return float((unit_rows(view_a) - unit_rows(view_b)).pow(2).sum(1).mean())


def uniformity(x: torch.Tensor, t: float = 2.0) -> float:
    """log mean exp(-t‖x_i−x_j‖²) over pairs i<j of normalised embeddings: -4 at best (t=2), 0 collapsed."""
    distances = torch.pdist(unit_rows(x)).pow(2)
    return float(torch.logsumexp(-t * distances, 0) - math.log(len(distances)))


def measures(originals: torch.Tensor, view_a: torch.Tensor, view_b: torch.Tensor) -> dict[str, float]:
    """The four label-free measures of one embedding of the same images and views."""
    return {"view_retrieval": view_retrieval(view_a, originals), "effective_rank": embedding_rank(originals),
            "alignment": alignment(view_a, view_b), "uniformity": uniformity(originals)}


def pixel_embeddings(images: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Flattened pixels in [0, 1] less `centre` (the originals' mean): raw pixels as an embedding."""
    x = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    return x.flatten(1) - centre


def held_out(available: int, n: int, seed: int) -> np.ndarray:
    """A seeded, sorted choice of min(n, available) row indices."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(available, size=min(n, available), replace=False))


# ---------------------------------------------------------------- the verdict


def _difference(name: str, ours: float, theirs: float, n_images: int) -> str:
    """'better than X by D points', 'worse than X by D points', or 'no better than X' when the
    difference is within two standard errors of a difference of two shares of n_images."""
    mean = (ours + theirs) / 2
    noise = 2 * math.sqrt(max(mean * (1 - mean), 1e-12) * 2 / max(n_images, 1))
    points = 100 * (ours - theirs)
    if ours - theirs > noise:
        return f"better than {name} by {points:.1f} points"
    if theirs - ours > noise:
        return f"worse than {name} by {-points:.1f} points"
    return f"no better than {name} ({points:+.1f} points, within noise for {n_images} images)"


def verdict(scores: dict[str, dict[str, float]], n_images: int) -> str:
    """One plain line on view retrieval: the encoder against pixels and against untrained.

    Example: "view retrieval 62.0 % — better than pixels by 21.3 points, better than untrained by 30.1 points"
    """
    ours = scores["encoder"]["view_retrieval"]
    parts = [_difference(name, ours, scores[name]["view_retrieval"], n_images) for name in BASELINES]
    return f"view retrieval {100 * ours:.1f} % (chance {100 / max(n_images, 1):.1f} %) — " + ", ".join(parts)


# ---------------------------------------------------------------- running the three encoders


def untrained_encoder(name: str, params: dict[str, Any], in_shape: tuple[int, ...], seed: int, device):
    """The encoder as pretraining starts it: built right after seeding torch with the recipe's seed
    (the recipe with pretrain.epochs=0), without touching the caller's random state."""
    from clt.models.heads import build_encoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = build_encoder(name, params, tuple(in_shape))
    return encoder.to(device).eval()


def make_views(images: torch.Tensor, augment: Callable | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two augmented views in [0, 1] of uint8 images, drawn from a generator of their own (seeded)."""
    x = images.float().div(255)
    if augment is None:
        return x, x
    generator = torch.Generator().manual_seed(seed)
    return augment(x, generator), augment(x, generator)


def compare_encoders(encoders: dict[str, torch.nn.Module], data: ImageData, images: torch.Tensor,
                     augment: Callable | None, seed: int, device) -> dict[str, dict[str, float]]:
    """The measures of each encoder (e.g. {"encoder": …, "untrained": …}) and of raw pixels, on the
    same uint8 images and the same two augmented views of each."""
    view_a, view_b = make_views(images, augment, seed)
    embed = lambda enc, x: extract_features(enc, data, Split(x, torch.zeros(len(x), dtype=torch.long)),  # noqa: E731
                                            device)
    scores = {name: measures(embed(enc, images), embed(enc, view_a), embed(enc, view_b))
              for name, enc in encoders.items()}
    centre = pixel_embeddings(images, torch.zeros(())).mean(0)
    scores["pixels"] = measures(*(pixel_embeddings(x, centre) for x in (images, view_a, view_b)))
    return scores


# ---------------------------------------------------------------- the few-label check


def cross_validated_knn(features: torch.Tensor, labels: np.ndarray, seed: int = 0,
                        max_k: int = 10) -> dict[str, Any]:
    """Cosine kNN accuracy of `labels` by stratified k-fold cross-validation: folds = min(5, smallest
    class count), neighbours = min(max_k, smallest training fold); majority vote, ties to the nearest.

    Example: cross_validated_knn(feats, np.array([0, 0, 1, 1]))["accuracy"]
    """
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels)
    folds = int(min(5, counts[counts > 0].min()))
    if folds < 2 or (counts > 0).sum() < 2:
        raise ValueError("cross-validation needs two tags with two images each")
    splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)),
                                                                                         labels))
    k = int(min(max_k, min(len(train) for train, _ in splits)))
    correct = 0
    tensor_labels = torch.as_tensor(labels, device=features.device)
    for train, test in splits:
        train_t, test_t = torch.as_tensor(train), torch.as_tensor(test)
        predicted = knn_predict(features[train_t], tensor_labels[train_t], features[test_t], k, len(counts))
        correct += int((predicted.cpu() == torch.as_tensor(labels[test])).sum())
    return {"accuracy": correct / len(labels), "folds": folds, "k": k, "images": int(len(labels))}


# ---------------------------------------------------------------- zero-norm rows


def zero_norm_counts(vectors: Any, labels: Any = None, classes: list[str] | None = None) -> dict[str, int]:
    """How many rows are the exact zero vector, per class name ("unlabeled" for -1): {} when none."""
    vectors = torch.as_tensor(vectors)
    zero = (vectors == 0).all(dim=1).cpu().numpy() if len(vectors) else np.zeros(0, bool)
    if not zero.any():
        return {}
    labels = np.full(len(zero), -1) if labels is None else np.asarray(torch.as_tensor(labels).cpu())
    classes = classes or []
    name = lambda c: classes[c] if 0 <= c < len(classes) else "unlabeled"  # noqa: E731
    found: dict[str, int] = {}
    for c in labels[zero].tolist():
        found[name(int(c))] = found.get(name(int(c)), 0) + 1
    return found


def zero_norm_warning(vectors: Any, labels: Any = None, classes: list[str] | None = None,
                      what: str = "embeddings") -> str | None:
    """The warning to show when some embeddings are the zero vector (e.g. an encoder ending in a
    ReLU), with the count per class; None when there are none."""
    counts = zero_norm_counts(vectors, labels, classes)
    if not counts:
        return None
    per_class = ", ".join(f"{name}: {n}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return (f"{sum(counts.values())} of {len(vectors)} {what} are the zero vector ({per_class}): cosine "
            "similarity takes them as 0 to everything, so kNN and search rank them by row order, not by content "
            "(an encoder whose last layer is a ReLU does this; use one with a linear last layer)")
