"""The evaluate stage: a probe's accuracy, per class and confused; pair verification and kNN of its encoder."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from clt.errors import CltError, DataError
from clt.stages.context import Context, Outcome, produce
from clt.stages.dataset import dataset_of, load_dataset, split_names
from clt.stages.probe import load_probe, stored_recipe
from clt.stages.weights import load_encoder
from clt.store import Artifact, Store

# bumped whenever what `evaluate` measures changes, so stored evaluations are not reused
EVALUATE_PROTOCOL = 3
HEADLINE = ("accuracy", "pair_accuracy", "pair_accuracy_random_partner", "knn_accuracy", "view_retrieval",
            "tags_knn_accuracy")
QUALITY_IMAGES = 1000  # held-out images of the label-free measure (of the test split, else of all images)


def evaluate(ctx: Context, ref: str | None = None, confusion: bool = False, knn: int | None = None,
             knn_metric: str | None = None, knn_vote: str | None = None, pairs: bool = True,
             quality: bool | None = None, labels: str | None = None) -> Outcome:
    """Accuracy, per-class accuracy and confusion of a probe; pair verification and kNN of its encoder.

    `quality` (on by itself for a dataset without a labeled test split): the label-free measures of
    clt.quality (view retrieval, effective rank, alignment, uniformity) beside the untrained encoder
    and raw pixels. `labels`: a CSV of file name -> tag, scored by cross-validated cosine kNN
    beside the same two (the dataset must keep its file names). Zero embeddings are warned about
    with their count per class; kNN takes their cosine to everything as 0, ties to the lower row.

    Example: evaluate(ctx, probe_id, confusion=True).metrics["accuracy"]
    """
    target = ctx.store.resolve_named(ref, ("probe", "encoder"),
                                     hint="train a probe first: clt probe, or pass an encoder with --knn")
    encoder_art = encoder_of(ctx.store, target)
    try:
        has_labels = _labeled(dataset_of(ctx.store, target if target.inputs.get("dataset") else encoder_art))
    except DataError:
        has_labels = True  # its dataset is gone: as before, a stored evaluation is found, a new one refused
    quality = (not has_labels) if quality is None else quality
    if target.kind == "encoder" and not knn and not verifiable(target) and not (quality or labels):
        raise CltError(f"{target.short} is an encoder: without a probe only kNN or pair accuracy can be measured",
                       f"pass --knn 10, --quality (no labels needed), or probe it first: clt probe {target.short}")
    recipe = stored_recipe(encoder_art, [])
    options = {"confusion": confusion, "pairs": pairs and verifiable(encoder_art),
               "n_pairs": recipe.evaluate.pairs, "pair_threshold": "chosen on train pairs", "knn": knn,
               "knn_metric": knn_metric or recipe.evaluate.knn_metric,
               "knn_vote": knn_vote or recipe.evaluate.knn_vote,
               "knn_temperature": recipe.evaluate.knn_temperature}
    if not has_labels:
        options["pairs"] = False  # no classes to pair
    if quality:  # only then in the spec: a labelled evaluation's spec (and id) stays as it was
        options["quality"] = {"images": QUALITY_IMAGES, "seed": 0}
    tags = _read_tags(labels) if labels is not None else None
    if tags is not None:
        options["labels"] = {"sha256": hashlib.sha256(tags).hexdigest(), "folds": "min(5, smallest tag count)",
                             "k": "min(10, smallest training fold)", "seed": 0}
    spec = {"stage": "evaluate", "protocol_version": EVALUATE_PROTOCOL, "inputs": {"target": target.id},
            "options": options}
    return produce(ctx, spec, "evaluation", lambda tmp, _id: _build(ctx, target, encoder_art, options, tmp, tags),
                   name=target.name)


def _labeled(data_art: Artifact) -> bool:
    """Whether a dataset has classes and a test split to score them on (what the labelled measures need)."""
    info = data_art.manifest["dataset"]
    return bool(info.get("classes")) and int(info.get("test", 0)) > 0


def _read_tags(path: str) -> bytes:
    """The tags CSV's bytes, read once: the spec holds their digest, never the path (the same tags
    elsewhere are the same evaluation; other tags at the same path are another)."""
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise DataError(f"--labels {path}: cannot be read ({err.strerror or err})",
                        "give a CSV of file name,tag lines, e.g. tags.csv") from None


def encoder_of(store: Store, target: Artifact) -> Artifact:
    """The artifact holding the encoder weights: itself (encoder, fine-tuned or scratch probe)
    or the encoder its probe was trained on."""
    if target.kind == "encoder" or "encoder.safetensors" in target.manifest.get("files", {}):
        return target
    return store.get(target.inputs["encoder"])


def verifiable(encoder_art: Artifact) -> bool:
    """Whether the encoder's objective can say "same class" of a pair (pair verification)."""
    from clt.registry import OBJECTIVES

    if encoder_art.kind != "encoder":
        return False  # supervised baselines have no pair objective to verify with
    name = (encoder_art.recipe or {}).get("objective", {}).get("name")
    entry = OBJECTIVES.get(name) if name else None
    return bool(entry and entry.verify)


class _Features:
    """An encoder's features of each split, computed once: from its stored embeddings artifact
    when it has one for this dataset (dumped once, reloaded by every later evaluation)."""

    def __init__(self, ctx: Context, encoder_art: Artifact, data_art: Artifact, data, device):
        self.ctx, self.encoder_art, self.data_art, self.data, self.device = ctx, encoder_art, data_art, data, device
        self.encoder = None
        self.cache: dict[str, Any] = {}
        self.zero_rows: dict[str, dict[str, int]] = {}  # split -> class -> embeddings that are the zero vector

    def device_index(self, rows):
        import torch

        return torch.as_tensor(rows, dtype=torch.long, device=self.data.train.images.device)

    def loaded(self):
        """The encoder itself (for images no split holds, e.g. augmented views)."""
        if self.encoder is None:
            self.encoder = load_encoder(self.encoder_art, self.device)
        return self.encoder

    def untrained(self):
        """The same architecture as pretraining starts it (the recipe's seed, no step taken)."""
        from clt.quality import untrained_encoder

        info = self.encoder_art.manifest["encoder"]
        seed = stored_recipe(self.encoder_art, []).seed
        return untrained_encoder(info["name"], info["params"], info["in_shape"], seed, self.device)

    def __call__(self, split: str):
        from clt.features import extract_features
        from clt.stages.embed import stored_features

        if split not in self.cache:
            if self.encoder_art.kind == "encoder" and self.data_art.id == self.encoder_art.inputs.get("dataset"):
                self.cache[split] = stored_features(self.ctx, self.encoder_art.id, split, self.device)
            else:
                self.cache[split] = extract_features(self.loaded(), self.data, self.data.split(split), self.device)
            self._check_zero_rows(split)
        return self.cache[split]

    def _check_zero_rows(self, split: str) -> None:
        from clt.quality import zero_norm_counts, zero_norm_warning

        part = self.data.split(split)
        counts = zero_norm_counts(self.cache[split], part.labels, self.data.classes)
        if counts:
            self.zero_rows[split] = counts
            self.ctx.report.warn(zero_norm_warning(self.cache[split], part.labels, self.data.classes,
                                                   f"{split} embeddings of {self.encoder_art.short}"))


def _build(ctx: Context, target: Artifact, encoder_art: Artifact, options: dict[str, Any],
           tmp: Path, tags: bytes | None = None) -> dict[str, Any]:
    from clt.devices import describe, pick_device

    device = pick_device(ctx.device)
    data_art = dataset_of(ctx.store, target if target.inputs.get("dataset") else encoder_art)
    data = load_dataset(data_art)
    labelled = data.labeled and len(data.test) > 0
    if not labelled and (target.kind == "probe" or options["knn"]):
        raise DataError(f"dataset '{data.name}' has no labeled test split to evaluate on",
                        f"measure {encoder_art.short} without labels: clt evaluate {encoder_art.short} (view "
                        "retrieval beside untrained and pixels), or with your own tags: --labels tags.csv")
    matched = _matched_tags(data_art, data.name, tags) if tags is not None else None  # refused before any work
    features = _Features(ctx, encoder_art, data_art, data.to(device), device)
    results: dict[str, Any] = {}
    protocol: dict[str, Any] = {"split": "test", "test_images": len(data.test)} if labelled else {}
    if target.kind == "probe":
        _probe_accuracy(ctx, target, features, data, options, results, protocol, tmp)
    if options["pairs"]:
        _pair_accuracy(encoder_art, features, data, options["n_pairs"], results, protocol)
    if options["knn"]:
        _knn_accuracy(target, features, data, options, results, protocol, tmp)
    if "quality" in options:
        _label_free(features, options["quality"], results, protocol)
    if matched is not None:
        _tags_accuracy(features, matched, results, protocol)
    if features.zero_rows:
        results["zero_norm_rows"] = features.zero_rows
    (tmp / "metrics.json").write_text(json.dumps(results, indent=1))
    return {"device": describe(device), "metrics": {k: results[k] for k in HEADLINE if k in results},
            "results": results, "protocol": protocol, "classes": data.classes}


def _class_results(results: dict[str, Any], true, pred, classes: list[str], heatmap: Path | None, title: str) -> None:
    from clt import metrics, plots

    matrix = metrics.confusion_matrix(true, pred, len(classes))
    results["per_class_accuracy"] = dict(zip(classes, metrics.per_class_accuracy(matrix).tolist()))
    results["confusion"] = matrix.tolist()
    if heatmap is not None:
        plots.confusion_heatmap(matrix, classes, heatmap, title)


def _probe_accuracy(ctx: Context, target: Artifact, features: _Features, data, options, results, protocol,
                    tmp: Path) -> None:
    import torch

    from clt import metrics

    features.encoder, head = load_probe(ctx.store, target, features.device)  # the weights features() would load
    with torch.no_grad():
        pred = head(features("test")).argmax(1).cpu().numpy()
    true = data.test.labels.numpy()
    results["accuracy"] = metrics.accuracy(true, pred)
    _class_results(results, true, pred, data.classes, tmp / "confusion.png" if options["confusion"] else None,
                   f"{target.name}: accuracy {results['accuracy']:.2%}")
    protocol.update(target.manifest.get("protocol", {}))


def _pair_accuracy(encoder_art: Artifact, features: _Features, data, n_pairs: int, results, protocol) -> None:
    """Pair verification on a fixed set of balanced test pairs (half same-class, the headline), and on
    one random partner per test image (about 1/classes same-class: an easier task, reported apart).
    Thresholds are chosen on training pairs drawn the same way, never on the test pairs."""
    import torch

    from clt import metrics
    from clt.recipe import params_of
    from clt.registry import OBJECTIVES

    objective = OBJECTIVES[encoder_art.recipe["objective"]["name"]]
    params = params_of(objective.params, encoder_art.recipe["objective"]["params"])
    test, true = features("test"), data.test.labels.numpy()
    at = lambda idx: torch.as_tensor(idx, device=features.device)  # noqa: E731

    def scores(feats, i, j):
        with torch.no_grad():
            return objective.score(feats[at(i)], feats[at(j)], params).cpu().numpy()

    i, j, same = metrics.verification_pairs(true, n_pairs, seed=0)
    with torch.no_grad():
        said = objective.verify(test[at(i)], test[at(j)], params).cpu().numpy()
    results["pair_accuracy_fixed_threshold"] = metrics.accuracy(same, said)
    protocol["pairs"] = {"test_pairs": int(len(i)), "same_share": float(same.mean()), "seed": 0}
    if objective.score is not None:
        train, train_labels = features("train"), data.train.labels.numpy()
        ti, tj, tsame = metrics.verification_pairs(train_labels, n_pairs, seed=1)
        threshold = metrics.best_threshold(scores(train, ti, tj), tsame)
        said = scores(test, i, j) > threshold
        protocol["pairs"]["threshold"] = {"value": threshold, "chosen_on": f"{len(ti)} train pairs"}
        ri, rj, rsame = metrics.random_partner_pairs(true, seed=0)
        ti, tj, tsame = metrics.random_partner_pairs(train_labels, seed=1)
        random_threshold = metrics.best_threshold(scores(train, ti, tj), tsame)
        results["pair_accuracy_random_partner"] = metrics.accuracy(rsame, scores(test, ri, rj) > random_threshold)
        protocol["pairs"]["random_partner"] = {"pairs": int(len(ri)), "same_share": float(rsame.mean()),
                                               "threshold": random_threshold,
                                               "chosen_on": f"{len(ti)} random-partner train pairs"}
    results["pair_accuracy"] = metrics.accuracy(same, said)
    results["pair_confusion"] = metrics.confusion_matrix(same.astype(int), said.astype(int), 2).tolist()
    results["pairs"] = int(len(i))


def _knn_accuracy(target: Artifact, features: _Features, data, options, results, protocol, tmp: Path) -> None:
    from clt import metrics

    started = time.perf_counter()
    pred = metrics.knn_predict(features("train"), features.data.train.labels, features("test"), options["knn"],
                               len(data.classes), options["knn_metric"], options["knn_vote"],
                               options["knn_temperature"]).cpu().numpy()
    true = data.test.labels.numpy()
    results["knn_accuracy"] = metrics.accuracy(true, pred)
    results["knn_seconds"] = round(time.perf_counter() - started, 3)
    protocol["knn"] = {"k": options["knn"], "metric": options["knn_metric"], "vote": options["knn_vote"],
                       "temperature": options["knn_temperature"], "train_images": len(data.train)}
    if "accuracy" not in results:
        _class_results(results, true, pred, data.classes, tmp / "confusion.png" if options["confusion"] else None,
                       f"{target.name}: {options['knn']}-NN accuracy {results['knn_accuracy']:.2%}")


def _label_free(features: _Features, option: dict[str, Any], results, protocol) -> None:
    """View retrieval, effective rank, alignment and uniformity of the encoder, its untrained self and
    raw pixels, on up to option["images"] seeded held-out images (the test split's, else all)."""
    from clt.data.augment import BatchAugment, resolve_spec
    from clt.quality import compare_encoders, held_out, verdict

    data = features.data
    split = "test" if len(data.test) else "train"
    rows = held_out(len(data.split(split)), option["images"], option["seed"])
    images = data.split(split).images[features.device_index(rows)]
    recipe = stored_recipe(features.encoder_art, [])
    spec = resolve_spec(recipe.pretrain.augment, data.name, data.in_shape[0])
    scores = compare_encoders({"encoder": features.loaded(), "untrained": features.untrained()}, data, images,
                              BatchAugment(spec), option["seed"], features.device)
    results["label_free"] = scores
    results["view_retrieval"] = scores["encoder"]["view_retrieval"]
    results["label_free_verdict"] = verdict(scores, len(rows))
    protocol["label_free"] = {"split": "test" if split == "test" else "all images", "images": int(len(rows)),
                              "seed": option["seed"], "chance": 1 / len(rows), "augment": str(spec),
                              "untrained": f"{recipe.model.encoder} built with seed {recipe.seed}, not trained",
                              "pixels": "flattened pixels in [0, 1] less their mean over these images"}


def dataset_row_names(data_art: Artifact) -> dict[str, list[str]] | None:
    """Each split's source file names of an imported dataset (as the dataset stage keeps them), or
    None when it keeps none."""
    names = {split: split_names(data_art, split) for split in ("train", "test")}
    if names["train"] is None and names["test"] is None:
        return None
    return {split: found or [] for split, found in names.items()}


def _tags_accuracy(features: _Features, matched, results, protocol) -> None:
    """Cross-validated cosine kNN accuracy of the user's tags (file name -> tag) for the encoder,
    its untrained self and raw pixels, on the tagged images of either split."""
    import numpy as np
    import torch

    from clt.data.memory import Split
    from clt.features import extract_features
    from clt.quality import cross_validated_knn, pixel_embeddings

    data = features.data
    (split_rows, tag_of), note = matched
    names = sorted(set(tag_of))
    labels = np.array([names.index(t) for t in tag_of])
    images = torch.cat([data.split(split).images[features.device_index(np.array(rows))]
                        for split, rows in split_rows.items() if rows])
    encoder_features = torch.cat([features(split)[features.device_index(np.array(rows))]
                                  for split, rows in split_rows.items() if rows])
    untrained = extract_features(features.untrained(), data, Split(images, torch.zeros(len(images))), features.device)
    pixels = pixel_embeddings(images, torch.zeros(()))
    scored = {name: cross_validated_knn(feats, labels, seed=0)
              for name, feats in (("encoder", encoder_features), ("untrained", untrained),
                                  ("pixels", pixels - pixels.mean(0)))}
    results["tags"] = {name: s["accuracy"] for name, s in scored.items()}
    results["tags_knn_accuracy"] = scored["encoder"]["accuracy"]
    counts = np.bincount(labels)
    protocol["tags"] = {"images": int(len(labels)), "tags": dict(zip(names, counts.tolist())),
                        "folds": scored["encoder"]["folds"], "k": scored["encoder"]["k"], "metric": "cosine",
                        "vote": "majority", "chance": float(counts.max() / counts.sum()), "note": note}


def _matched_tags(data_art: Artifact, dataset: str, tags: bytes):
    """((split -> rows, tag of each row in that order), note) of the CSV rows naming a file of the
    dataset by its name as imported or, where unique, by its base name; tags with one image are left out."""
    import csv
    import io
    from collections import Counter

    names = dataset_row_names(data_art)
    if names is None:
        raise DataError(f"--labels: dataset '{dataset}' keeps no file names to match the tags to",
                        "import the folder with this clt (clt download NAME --from FOLDER keeps each image's file "
                        "name), pretrain on it, and evaluate that encoder")
    where: dict[str, tuple[str, int]] = {}
    base_count = Counter(Path(n).name for found in names.values() for n in found)
    for split, found in names.items():
        for row, name in enumerate(found):
            where[name] = (split, row)
            if base_count[Path(name).name] == 1:
                where.setdefault(Path(name).name, (split, row))
    lines = [r for r in csv.reader(io.StringIO(tags.decode("utf-8-sig", errors="replace"))) if len(r) >= 2]
    found = {where[r[0].strip()]: r[1].strip() for r in lines if r[0].strip() in where and r[1].strip()}
    per_tag = Counter(found.values())
    kept = {key: tag for key, tag in found.items() if per_tag[tag] >= 2}
    if len(found) < 2 or len(set(kept.values())) < 2:
        example = next(iter(names["train"] or names["test"]), "")
        raise DataError(f"--labels: {len(found)} of the CSV's {len(lines)} rows name a file of dataset '{dataset}' "
                        f"({len(set(kept.values()))} tags with two images or more); the check needs two such tags",
                        f"write one 'file name,tag' line per image, with names as imported (e.g. {example!r})")
    split_rows: dict[str, list[int]] = {"train": [], "test": []}
    ordered = sorted(kept, key=lambda key: (key[0] != "train", key[1]))
    for split, row in ordered:
        split_rows[split].append(row)
    dropped = sorted(tag for tag, n in per_tag.items() if n < 2)
    note = f"{len(found)} of {len(lines)} rows matched" + (f"; left out (one image): {', '.join(dropped)}"
                                                            if dropped else "")
    return (split_rows, [kept[key] for key in ordered]), note
