"""The embed and tsne stages: an encoder's embeddings of a split as .npy, and their 2-D picture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clt.errors import CltError
from clt.stages.context import Context, Outcome, produce
from clt.stages.dataset import dataset_of, load_dataset
from clt.stages.weights import load_encoder


def stored_features(ctx: Context, encoder_id: str, split: str, device) -> Any:
    """An encoder's features of a split as a tensor on `device`, from its embeddings artifact
    (built on first use, then reloaded: DINO-style features dumped once)."""
    import numpy as np
    import torch

    stored = embed(ctx, encoder_id, split).artifact
    return torch.from_numpy(np.load(stored.file("embeddings.npy"), allow_pickle=False)).to(device)


def embed(ctx: Context, encoder_ref: str | None = None, split: str = "test", projector: bool = False) -> Outcome:
    """Write an encoder's embeddings of a split as .npy (and the Embedding Projector's TSVs).

    Example: np.load(embed(ctx, "latest-encoder").artifact.file("embeddings.npy")).shape == (N, D)
    """
    if split not in ("train", "test"):
        raise CltError(f"--split {split} is not a split", "use --split train or --split test")
    encoder_art = ctx.store.resolve_named(encoder_ref, ("encoder",), hint="train one first: clt pretrain RECIPE")
    spec = {"stage": "embed", "inputs": {"encoder": encoder_art.id}, "split": split, "projector": projector}

    def build(tmp: Path, _id: str) -> dict[str, Any]:
        import numpy as np

        from clt.devices import describe, pick_device
        from clt.features import extract_features

        device = pick_device(ctx.device)
        data = load_dataset(dataset_of(ctx.store, encoder_art)).to(device)
        encoder = load_encoder(encoder_art, device)
        part = data.split(split)
        with ctx.report.progress(f"embedding {split}", len(part)) as task:
            features = extract_features(encoder, data, part, device, on_batch=lambda d, t: task.update(d, t))
        vectors = features.cpu().numpy().astype(np.float32)
        labels = part.labels.cpu().numpy().astype(np.int64)
        np.save(tmp / "embeddings.npy", vectors)
        np.save(tmp / "labels.npy", labels)
        if projector:
            _projector_files(tmp, vectors, labels, data.classes)
        return {"device": describe(device), "classes": data.classes, "split": split,
                "metrics": {"count": int(len(vectors)), "dim": int(vectors.shape[1])}}

    return produce(ctx, spec, "embeddings", build, name=encoder_art.name)


def _projector_files(tmp: Path, vectors, labels, classes: list[str]) -> None:
    """vectors.tsv and metadata.tsv, as TensorBoard's Embedding Projector reads them."""
    import numpy as np

    np.savetxt(tmp / "vectors.tsv", vectors, delimiter="\t", fmt="%.6g")
    names = [classes[i] if 0 <= i < len(classes) else "unlabeled" for i in labels]
    (tmp / "metadata.tsv").write_text("label\tclass\n" + "".join(f"{i}\t{n}\n" for i, n in zip(labels, names)))


def tsne(ctx: Context, embeddings_ref: str | None = None, pca: bool = False, perplexity: float = 30.0,
         max_points: int = 5000, seed: int = 0) -> Outcome:
    """A 2-D t-SNE (or PCA) picture of an embeddings artifact, coloured by class.

    Example: tsne(ctx, pca=True).artifact.file("pca.png")
    """
    emb_art = ctx.store.resolve_named(embeddings_ref, ("embeddings",),
                                      hint="write embeddings first: clt embed")
    method = "pca" if pca else "tsne"
    spec = {"stage": "tsne", "inputs": {"embeddings": emb_art.id}, "method": method, "perplexity": perplexity,
            "max_points": max_points, "seed": seed}

    def build(tmp: Path, _id: str) -> dict[str, Any]:
        import numpy as np

        from clt import plots

        vectors = np.load(emb_art.file("embeddings.npy"), allow_pickle=False)
        labels = np.load(emb_art.file("labels.npy"), allow_pickle=False)
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(vectors), size=max_points, replace=False)) if len(vectors) > max_points \
            else np.arange(len(vectors))
        vectors, labels = vectors[keep], labels[keep]
        ctx.report.info(f"{method}: {len(vectors)} points of dimension {vectors.shape[1]}")
        coords = _coordinates(ctx, vectors, pca, perplexity, seed)
        np.save(tmp / "coords.npy", coords.astype(np.float32))
        np.save(tmp / "index.npy", keep)
        shown = "t-SNE" if method == "tsne" else "PCA"
        title = f"{emb_art.name}: {shown} of {emb_art.manifest.get('split')} embeddings"
        plots.scatter(coords, labels, emb_art.manifest.get("classes", []), tmp / f"{method}.png", title)
        return {"method": method, "metrics": {"points": int(len(vectors))}}

    outcome = produce(ctx, spec, "figure", build, name=emb_art.name)
    ctx.report.info(f"picture: {outcome.artifact.path / (method + '.png')}")
    return outcome


def _coordinates(ctx: Context, vectors, pca: bool, perplexity: float, seed: int):
    if pca:
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(vectors)
    from sklearn.manifold import TSNE

    with ctx.report.progress("t-SNE", None):
        return TSNE(n_components=2, perplexity=min(perplexity, max(2.0, (len(vectors) - 1) / 3)),
                    init="pca", random_state=seed).fit_transform(vectors)
