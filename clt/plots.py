"""Pictures people would rather look at than read: PNGs via matplotlib's Agg backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_heatmap(matrix: np.ndarray, classes: Sequence[str], path: Path, title: str = "") -> None:
    plt = _pyplot()
    n = len(classes)
    size = max(4.0, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    rows = matrix.sum(1, keepdims=True)
    share = np.divide(matrix, np.maximum(rows, 1))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels=classes, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for r in range(n):
            for c in range(n):
                ax.text(c, r, str(matrix[r, c]), ha="center", va="center", fontsize=7,
                        color="white" if share[r, c] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ax.set_title(title)
    _save(plt, fig, path, 120)


def scatter(coords: np.ndarray, labels: np.ndarray, classes: Sequence[str], path: Path, title: str = "",
            legend_title: str = "class", thumbnails: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Points coloured by label (-1: grey), with optional thumbnails: (point indices, uint8 (K, C, H, W))."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 7))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    unlabeled = labels < 0
    if len(classes) == 0 or unlabeled.all():
        ax.scatter(coords[:, 0], coords[:, 1], s=3, alpha=0.6, color="tab:gray")
    elif unlabeled.any():  # e.g. photos the user's tags do not name
        ax.scatter(coords[unlabeled, 0], coords[unlabeled, 1], s=3, alpha=0.5, color="tab:gray",
                   label=f"no {legend_title}")
    for ci, name in enumerate(classes):
        mask = labels == ci
        if mask.any():
            ax.scatter(coords[mask, 0], coords[mask, 1], s=4, alpha=0.7, color=cmap(ci % cmap.N), label=name)
    if thumbnails is not None:  # framed in their point's colour, which the image hides
        rows, images = thumbnails
        frames = [cmap(labels[r] % cmap.N) if labels[r] >= 0 and len(classes) else "tab:gray" for r in rows]
        _thumbnails(ax, coords, rows, images, frames)
    if len(classes):
        ax.legend(markerscale=4, fontsize=8, loc="best", title=legend_title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    _save(plt, fig, path, 120)


def _thumbnails(ax, coords: np.ndarray, rows: np.ndarray, images: np.ndarray, frames: Sequence[Any],
                pixels: float = 22.0) -> None:
    """Small images at their points, each about `pixels` wide whatever the images' size, framed in `frames`."""
    from matplotlib.colors import Normalize
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    zoom = pixels / max(images.shape[2:])
    for row, image, frame in zip(rows, images, frames):
        grey = image.shape[0] == 1
        picture = OffsetImage(image[0] if grey else image.transpose(1, 2, 0), zoom=zoom,
                              cmap="gray" if grey else None, norm=Normalize(0, 255) if grey else None)
        ax.add_artist(AnnotationBbox(picture, tuple(coords[row]), frameon=True, pad=0.1,
                                     bboxprops={"edgecolor": frame, "linewidth": 1.5}))


def loss_curve(history: list[dict[str, Any]], path: Path, title: str = "", key: str = "loss") -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h[key] for h in history], marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    scored = [h for h in history if "knn_accuracy" in h]
    if scored:  # the online kNN monitor's curve, on its own axis
        right = ax.twinx()
        right.plot([h["epoch"] for h in scored], [100 * h["knn_accuracy"] for h in scored], marker="s",
                   color="tab:orange", label="kNN accuracy")
        right.set_ylabel("monitor kNN accuracy (%)", color="tab:orange")
    _save(plt, fig, path, 100)


def image_grid(rows: list[np.ndarray], path: Path, row_titles: Sequence[str] = (), title: str = "",
               cell_titles: Sequence[Sequence[str]] = ()) -> None:
    """rows: each (K, C, H, W) floats in [0, 1]; drawn as a grid, one row per list entry, with an
    optional caption under each cell (`cell_titles[r][c]`)."""
    plt = _pyplot()
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.2 * n_cols, 1.25 * n_rows), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row):
                img = np.clip(row[c], 0, 1)
                if img.shape[0] == 1:
                    ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(img.transpose(1, 2, 0))
                if r < len(cell_titles) and c < len(cell_titles[r]) and cell_titles[r][c]:
                    ax.text(0.5, -0.04, cell_titles[r][c], fontsize=6, ha="center", va="top", transform=ax.transAxes)
        if r < len(row_titles):
            axes[r][0].set_title(row_titles[r], fontsize=7, loc="left")
    if title:
        fig.suptitle(title)
    _save(plt, fig, path, 100)


def accuracy_curve(rows: list[dict[str, Any]], path: Path, title: str = "", key: str = "knn_accuracy") -> None:
    """Accuracy against training wall time, each point labelled with its epoch."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    minutes = [r["train_seconds"] / 60 for r in rows]
    values = [r[key] for r in rows]
    ax.plot(minutes, values, marker="o")
    for m, v, r in zip(minutes, values, rows):
        ax.annotate(str(r["epoch"]), (m, v), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7)
    ax.set_xlabel("training time (minutes); points labelled with their epoch")
    ax.set_ylabel("test accuracy %")
    ax.grid(alpha=0.3)
    ax.set_title(title)
    _save(plt, fig, path, 100)


def _save(plt, fig, path: Path, dpi: int) -> None:
    """Lay out, write the PNG and free the figure (pyplot keeps every open figure alive)."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
