"""Metrics as pure functions over arrays and tensors: accuracy, confusion, pairs, kNN."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch


def confusion_matrix(true: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts: row = true class, column = predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return matrix


def accuracy(true: np.ndarray, pred: np.ndarray) -> float:
    true, pred = np.asarray(true), np.asarray(pred)
    return float((true == pred).mean()) if len(true) else float("nan")


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    totals = matrix.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(matrix) / np.maximum(totals, 1), np.nan)


def verification_pairs(labels: np.ndarray, n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fixed, seeded set of pairs, half same-class and half different: (i, j, same)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    usable = [c for c, members in by_class.items() if len(members) >= 2]
    n_same = n_pairs // 2
    n_diff = n_pairs - n_same
    if not usable or len(by_class) < 2:
        raise ValueError("pair verification needs at least two classes, one with two images")
    cls = rng.choice(usable, size=n_same)
    first, second = [], []
    for c in cls:
        a, b = rng.choice(by_class[c], size=2, replace=False)
        first.append(a)
        second.append(b)
    i_diff = rng.integers(0, len(labels), size=n_diff * 3)
    j_diff = rng.integers(0, len(labels), size=n_diff * 3)
    keep = labels[i_diff] != labels[j_diff]
    i_diff, j_diff = i_diff[keep][:n_diff], j_diff[keep][:n_diff]
    i = np.concatenate([np.array(first, dtype=np.int64), i_diff])
    j = np.concatenate([np.array(second, dtype=np.int64), j_diff])
    same = np.concatenate([np.ones(len(first), bool), np.zeros(len(i_diff), bool)])
    return i, j, same


def random_partner_pairs(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pair per image with a random other image, as per-sample pair loaders draw them
    (about 1/classes of the pairs share a class): (i, j, same)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    i = np.arange(len(labels))
    j = (i + rng.integers(1, len(labels), size=len(labels))) % len(labels)
    return i, j, labels[i] == labels[j]


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The score threshold (same if score > t) with the highest accuracy on these pairs."""
    order = np.argsort(scores)
    sorted_scores, sorted_same = scores[order], same[order].astype(np.int64)
    # threshold below position k: pairs [0, k) said different, [k, n) said same
    different_right = np.concatenate([[0], np.cumsum(1 - sorted_same)])
    same_right = sorted_same.sum() - np.concatenate([[0], np.cumsum(sorted_same)])
    correct = different_right + same_right
    k = int(np.argmax(correct))
    if k == 0:
        return float(sorted_scores[0] - 1e-6)
    if k == len(scores):
        return float(sorted_scores[-1] + 1e-6)
    return float((sorted_scores[k - 1] + sorted_scores[k]) / 2)


def knn_predict(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    queries: torch.Tensor,
    k: int,
    n_classes: int,
    metric: Literal["cosine", "euclidean"] = "cosine",
    vote: Literal["majority", "distance"] = "majority",
    temperature: float = 0.07,
    query_chunk: int = 1024,
    train_chunk: int = 65536,
) -> torch.Tensor:
    """Exact kNN: class of each query by its k nearest training embeddings.

    Batched matrix products on the inputs' device. Queries are processed in chunks and the
    train set is scanned in chunks with a running top-k, so memory stays at
    query_chunk × (train_chunk + k) similarities whatever the train set's size.
    `distance` voting weighs each neighbour by exp(similarity / temperature) (the kNN
    monitor of InstDisc/MoCo); for euclidean the similarity is the negative distance.
    """
    out = [_vote(q, sim, train_labels[idx], n_classes, metric, vote, temperature)[0]
           for q, sim, idx in nearest_neighbours(train, queries, k, metric, query_chunk, train_chunk)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def knn_class_shares(train: torch.Tensor, train_labels: torch.Tensor, queries: torch.Tensor, k: int,
                     n_classes: int, metric: str = "cosine", vote: str = "majority", temperature: float = 0.07,
                     query_chunk: int = 1024) -> torch.Tensor:
    """(N, classes): each class's share of a query's k-nearest-neighbour vote (rows sum to 1), the
    votes knn_predict counts. Example: knn_class_shares(train, labels, q, 10, 10)[0].max() == 0.7"""
    out = [_vote(q, sim, train_labels[idx], n_classes, metric, vote, temperature)[1]
           for q, sim, idx in nearest_neighbours(train, queries, k, metric, query_chunk)]
    return torch.cat(out) if out else torch.zeros(0, n_classes)


def nearest_neighbours(train: torch.Tensor, queries: torch.Tensor, k: int, metric: str = "cosine",
                       query_chunk: int = 1024, train_chunk: int = 65536, normalized: bool = False):
    """Exact search: yields (query chunk, similarities, train indices) of each query's k nearest train
    rows, best first. Cosine similarity, or for euclidean -‖q−t‖² + ‖q‖² (the ranking of distances).
    `normalized`: the train rows are unit vectors already (a stored index), so they are not copied.
    A zero vector (query or train row) has cosine similarity 0 to everything, never NaN, and equal
    similarities rank the lower train row first, so such rows get the same neighbours on every run."""
    k = min(k, len(train))
    if metric == "cosine":
        train = train.float() if normalized else torch.nn.functional.normalize(train.float(), dim=1)
        queries = torch.nn.functional.normalize(queries.float(), dim=1)
        train_sq = None
    else:
        train, queries = train.float(), queries.float()
        train_sq = (train * train).sum(1)
    for qs in range(0, len(queries), query_chunk):
        q = queries[qs:qs + query_chunk]
        yield (q, *_nearest(q, train, train_sq, k, train_chunk))


def _nearest(q: torch.Tensor, train: torch.Tensor, train_sq: torch.Tensor | None, k: int,
             train_chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, indices) of each query's k most similar train rows, scanning the train set in
    chunks with a running top-k; with `train_sq` (euclidean) the similarity is -‖q−t‖² + ‖q‖²."""
    best_sim = torch.full((len(q), 0), float("-inf"), device=q.device)
    best_idx = torch.zeros((len(q), 0), dtype=torch.long, device=q.device)
    for ts in range(0, len(train), train_chunk):
        sim = q @ train[ts:ts + train_chunk].T
        if train_sq is not None:
            # -‖q−t‖² up to a per-query constant (‖q‖²), which does not change the ranking
            sim = 2 * sim - train_sq[ts:ts + train_chunk][None, :]
        # top-k of this block alone, then merge with the running top-k: only 2k candidates
        # per query are ever concatenated, never a block-sized index matrix. The running top-k
        # holds lower rows than the block and both list tied rows in row order, so a tie-stable
        # top-k of the concatenation keeps the lower row first across blocks too
        block_sim, block_pos = stable_topk(sim, min(k, sim.shape[1]))
        merged_sim = torch.cat([best_sim, block_sim], 1)
        merged_idx = torch.cat([best_idx, block_pos + ts], 1)
        best_sim, pos = stable_topk(merged_sim, min(k, merged_sim.shape[1]))
        best_idx = merged_idx.gather(1, pos)
    return best_sim, best_idx


def stable_topk(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, columns) of each row's k largest, best first, equal values in column order.

    torch.topk leaves the order of equal values unspecified, and which of them make the cut: a zero
    embedding (cosine 0 to every row) would get arbitrary neighbours. Rows whose k-th value is tied
    beyond the cut are redone with a stable sort (rare but for such rows; cheap otherwise).
    Example: stable_topk(torch.zeros(1, 5), 2)[1].tolist() == [[0, 1]]
    """
    top, cols = values.topk(k, dim=1)
    cols, by_column = cols.sort(1)
    top = top.gather(1, by_column)
    top, by_value = top.sort(dim=1, descending=True, stable=True)
    cols = cols.gather(1, by_value)
    if k == 0:
        return top, cols
    kth = top[:, -1:]
    cut_tie = (values == kth).sum(1) > (top == kth).sum(1)
    if bool(cut_tie.any()):
        rows = cut_tie.nonzero().squeeze(1)
        redone, redone_cols = values[rows].sort(dim=1, descending=True, stable=True)
        top[rows], cols[rows] = redone[:, :k], redone_cols[:, :k]
    return top, cols


def _vote(q: torch.Tensor, best_sim: torch.Tensor, neighbours: torch.Tensor, n_classes: int, metric: str,
          vote: str, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(class, vote shares) of each query from its neighbours' labels: majority (ties go to the
    nearest) or distance-weighted."""
    if vote == "majority":
        weights = torch.ones_like(best_sim)
    else:
        sims = best_sim if metric == "cosine" else -(q * q).sum(1, keepdim=True) + best_sim
        if metric == "euclidean":
            sims = -torch.sqrt((-sims).clamp_min(0))
        weights = torch.exp((sims - sims.max(1, keepdim=True).values) / temperature)
    scores = torch.zeros(len(q), n_classes, device=q.device)
    scores.scatter_add_(1, neighbours, weights)
    shares = scores / scores.sum(1, keepdim=True).clamp_min(1e-12)
    if vote == "majority":
        # ties go to the tied class whose nearest member is nearest: rank of each class's
        # first neighbour, as a tie-break below one vote
        ranks = torch.arange(neighbours.shape[1], device=q.device).expand_as(neighbours)
        first = torch.full((len(q), n_classes), neighbours.shape[1], device=q.device, dtype=torch.long)
        first.scatter_reduce_(1, neighbours, ranks, reduce="amin")
        scores = scores * (neighbours.shape[1] + 1) - first
    return scores.argmax(1), shares


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
