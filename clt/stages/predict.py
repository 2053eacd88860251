"""Classes for new images: by a probe's head, or by a vote of the nearest stored training embeddings."""

from __future__ import annotations

from typing import Any

from clt.stages.context import Context
from clt.stages.dataset import dataset_of, load_dataset, split_names
from clt.stages.embed import stored_features
from clt.stages.evaluate import encoder_of
from clt.stages.images import read_images
from clt.stages.inference import classifier_for, encoder_for
from clt.stages.probe import stored_recipe


def predict(ctx: Context, ref: str | None, items: list[str], top: int = 1, knn: int | None = None
            ) -> list[dict[str, Any]]:
    """One row per readable image: its path and its `top` classes with probabilities, best first.

    With `knn` the class is the vote of the K nearest training embeddings of the encoder (the
    protocol `clt evaluate --knn K` scores), and the probability is that class's share of the vote;
    each row then also lists those voters, nearest first, as `neighbours`: row, path (the file name
    in the imported folder, None for a built-in dataset's row) and class.
    Example: predict(ctx, probe_id, ["cat.jpg"], top=3)[0]["top"][0] == {"class": "cat", "index": 3, "prob": 0.91}
    """
    from clt.devices import pick_device

    kinds = ("probe", "encoder") if knn else ("probe",)
    target = ctx.store.resolve_named(ref, kinds, hint="train a probe first: clt probe (or pass an encoder with --knn)")
    device = pick_device(ctx.device)
    voters = None
    if knn:
        names, proba, first, classes, voters = _knn_votes(ctx, encoder_of(ctx.store, target), items, knn, device)
    else:
        classifier = classifier_for(ctx.store, target, device)
        images, names, _ = read_images(ctx, items, classifier.encoder)
        proba = classifier.predict_proba(images)
        first, classes = proba.argmax(1), classifier.classes
    rows = [{"path": name, "top": _top(p, int(best), classes, top)} for name, p, best in zip(names, proba, first)]
    for row, near in zip(rows, voters or []):
        row["neighbours"] = near
    return rows


def _knn_votes(ctx: Context, encoder_art, items: list[str], k: int, device):
    """(names, vote shares, voted class, class names, each query's voters) exactly as `evaluate --knn`
    votes."""
    import torch

    from clt import metrics
    from clt.errors import CltError, DataError

    if encoder_art.kind != "encoder":
        raise CltError(f"{encoder_art.short} is a {encoder_art.kind} with its own trained encoder: --knn votes among "
                       "an encoder's stored train embeddings", "pass the encoder, or predict with the probe's head "
                       "(without --knn)")
    data_art = dataset_of(ctx.store, encoder_art)
    if not data_art.manifest["dataset"]["classes"]:
        raise DataError(f"dataset '{data_art.name}' has no labels, so its neighbours cannot vote on a class",
                        "use an encoder trained on a labeled dataset")
    encoder = encoder_for(ctx.store, encoder_art, device)
    images, names, _ = read_images(ctx, items, encoder)
    queries = torch.from_numpy(encoder.embed(images)).to(device)
    train = stored_features(ctx, encoder_art.id, "train", device)
    labels = load_dataset(data_art).train.labels.to(device)
    cfg = stored_recipe(encoder_art, []).evaluate
    args = (train, labels, queries, k, len(encoder.classes), cfg.knn_metric, cfg.knn_vote, cfg.knn_temperature)
    voted = metrics.knn_predict(*args).cpu().numpy()
    voters = _voters(train, labels, queries, k, cfg.knn_metric, split_names(data_art, "train"), encoder.classes)
    return names, metrics.knn_class_shares(*args).cpu().numpy(), voted, encoder.classes, voters


def _voters(train, labels, queries, k: int, metric: str, paths: list[str] | None,
            classes: list[str]) -> list[list[dict[str, Any]]]:
    """Each query's k nearest training images, nearest first, by file name where the dataset has them."""
    from clt import metrics

    found = []
    for _, _, rows in metrics.nearest_neighbours(train, queries, k, metric):
        for near in rows.cpu().tolist():
            found.append([{"row": r, "path": paths[r] if paths else None, "class": _class(int(labels[r]), classes)}
                          for r in near])
    return found


def _class(label: int, classes: list[str]) -> str | None:
    return classes[label] if 0 <= label < len(classes) else None


def _top(proba, best: int, classes: list[str], top: int) -> list[dict[str, Any]]:
    """The `top` classes by probability, the predicted one first (a kNN vote's tie-break decides it)."""
    order = [best] + [int(i) for i in proba.argsort()[::-1] if int(i) != best]
    return [{"class": classes[i] if i < len(classes) else str(i), "index": i, "prob": float(proba[i])}
            for i in order[:max(1, top)]]
