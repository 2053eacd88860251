"""The evaluate stage: a probe's accuracy, per class and confused; pair verification and kNN of its encoder."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from clt.errors import CltError, DataError
from clt.stages.context import Context, Outcome, produce
from clt.stages.dataset import dataset_of, load_dataset
from clt.stages.probe import load_probe, stored_recipe
from clt.stages.weights import load_encoder
from clt.store import Artifact, Store

# bumped whenever what `evaluate` measures changes, so stored evaluations are not reused
EVALUATE_PROTOCOL = 3
HEADLINE = ("accuracy", "pair_accuracy", "pair_accuracy_random_partner", "knn_accuracy")


def evaluate(ctx: Context, ref: str | None = None, confusion: bool = False, knn: int | None = None,
             knn_metric: str | None = None, knn_vote: str | None = None, pairs: bool = True) -> Outcome:
    """Accuracy, per-class accuracy and confusion of a probe; pair verification and kNN of its encoder.

    Example: evaluate(ctx, probe_id, confusion=True).metrics["accuracy"]
    """
    target = ctx.store.resolve_named(ref, ("probe", "encoder"),
                                     hint="train a probe first: clt probe, or pass an encoder with --knn")
    if target.kind == "encoder" and not knn and not verifiable(target):
        raise CltError(f"{target.short} is an encoder: without a probe only kNN or pair accuracy can be measured",
                       f"pass --knn 10, or probe it first: clt probe {target.short}")
    encoder_art = encoder_of(ctx.store, target)
    recipe = stored_recipe(encoder_art, [])
    options = {"confusion": confusion, "pairs": pairs and verifiable(encoder_art),
               "n_pairs": recipe.evaluate.pairs, "pair_threshold": "chosen on train pairs", "knn": knn,
               "knn_metric": knn_metric or recipe.evaluate.knn_metric,
               "knn_vote": knn_vote or recipe.evaluate.knn_vote,
               "knn_temperature": recipe.evaluate.knn_temperature}
    spec = {"stage": "evaluate", "protocol_version": EVALUATE_PROTOCOL, "inputs": {"target": target.id},
            "options": options}
    return produce(ctx, spec, "evaluation", lambda tmp, _id: _build(ctx, target, encoder_art, options, tmp),
                   name=target.name)


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

    def __call__(self, split: str):
        from clt.features import extract_features
        from clt.stages.embed import stored_features

        if split not in self.cache:
            if self.encoder_art.kind == "encoder" and self.data_art.id == self.encoder_art.inputs.get("dataset"):
                self.cache[split] = stored_features(self.ctx, self.encoder_art.id, split, self.device)
            else:
                if self.encoder is None:
                    self.encoder = load_encoder(self.encoder_art, self.device)
                self.cache[split] = extract_features(self.encoder, self.data, self.data.split(split), self.device)
        return self.cache[split]


def _build(ctx: Context, target: Artifact, encoder_art: Artifact, options: dict[str, Any],
           tmp: Path) -> dict[str, Any]:
    from clt.devices import describe, pick_device

    device = pick_device(ctx.device)
    data_art = dataset_of(ctx.store, target if target.inputs.get("dataset") else encoder_art)
    data = load_dataset(data_art)
    if not data.labeled or len(data.test) == 0:
        raise DataError(f"dataset '{data.name}' has no labeled test split to evaluate on",
                        "evaluate on a dataset with labeled train/test splits")
    features = _Features(ctx, encoder_art, data_art, data.to(device), device)
    results: dict[str, Any] = {}
    protocol: dict[str, Any] = {"split": "test", "test_images": len(data.test)}
    if target.kind == "probe":
        _probe_accuracy(ctx, target, features, data, options, results, protocol, tmp)
    if options["pairs"]:
        _pair_accuracy(encoder_art, features, data, options["n_pairs"], results, protocol)
    if options["knn"]:
        _knn_accuracy(target, features, data, options, results, protocol, tmp)
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
