"""The online kNN monitor: the encoder's kNN accuracy on fixed subsets while it trains.

As lightly and solo-learn watch pretraining, but inside the stage: a seeded, class-balanced subset
of the train split is the memory bank and one of the test split the queries; features come from
the encoder alone (no projection head), in eval mode, without augmentation or gradients, with the
recipe's kNN protocol (`evaluate.knn_metric`, `knn_vote`). Randomness is untouched, so a monitored
run trains exactly as an unmonitored one.
"""

from __future__ import annotations

import time
from typing import Any


class KnnMonitor:
    """Scores an encoder after every `every` epochs (and after the last): accuracy and seconds.

    Example: KnnMonitor(recipe, data, device).score(encoder) -> (0.93, 0.4)
    """

    key = "knn_accuracy"  # the epoch record's field, and the manifest's monitor_<key>

    def __init__(self, recipe, data, device):
        from clt.probing import few_label_subset

        self.cfg, self.protocol, self.data, self.device = recipe.pretrain.monitor, recipe.evaluate, data, device
        self.epochs = recipe.pretrain.epochs
        train, test = data.train, data.test
        self.train = train.subset(few_label_subset(train.labels, recipe.seed, total=min(self.cfg.train, len(train))))
        self.test = test.subset(few_label_subset(test.labels, recipe.seed + 1, total=min(self.cfg.test, len(test))))

    @property
    def label(self) -> str:
        return f"{self.cfg.knn}-NN"

    def due(self, epoch: int) -> bool:
        return epoch % self.cfg.every == 0 or epoch == self.epochs

    def score(self, encoder) -> tuple[float, float]:
        started = time.perf_counter()
        accuracy = float((self.predict(encoder) == self.test.labels).float().mean())
        return accuracy, time.perf_counter() - started

    def predict(self, encoder):
        """The kNN class of each query image (the test subset), as a tensor on the data's device."""
        import torch

        from clt.features import extract_features
        from clt.metrics import knn_predict

        with torch.no_grad():
            bank = extract_features(encoder, self.data, self.train, self.device)
            queries = extract_features(encoder, self.data, self.test, self.device)
        return knn_predict(bank, self.train.labels, queries, self.cfg.knn, len(self.data.classes),
                           self.protocol.knn_metric, self.protocol.knn_vote, self.protocol.knn_temperature)

    def summary(self, history: list[dict[str, Any]], train_seconds: float) -> dict[str, Any]:
        """The curve and its cost, for the encoder's manifest."""
        curve = [{"epoch": h["epoch"], "seconds": h.get("seconds"), "knn_accuracy": h["knn_accuracy"]}
                 for h in history if "knn_accuracy" in h]
        spent = sum(h.get("monitor_seconds", 0.0) for h in history)
        return {"k": self.cfg.knn, "every": self.cfg.every, "train": len(self.train), "test": len(self.test),
                "metric": self.protocol.knn_metric, "vote": self.protocol.knn_vote, "curve": curve,
                "seconds": round(spent, 2), "share_of_training": round(spent / max(train_seconds, 1e-9), 4)}


class ViewRetrievalMonitor(KnnMonitor):
    """Without labels: view retrieval (clt.quality) on `monitor.test` seeded held-out images (of the
    test split, else of all), beside the untrained encoder and raw pixels, measured once at the start.

    Example: ViewRetrievalMonitor(recipe, data, device, report).score(encoder) -> (0.62, 0.3)
    """

    key = "view_retrieval"

    def __init__(self, recipe, data, device, report):
        from clt.data.augment import BatchAugment, resolve_spec
        from clt.quality import held_out

        self.cfg, self.data, self.device, self.report = recipe.pretrain.monitor, data, device, report
        self.epochs, self.seed, self.recipe = recipe.pretrain.epochs, recipe.seed, recipe
        part = data.test if len(data.test) else data.train
        self.images = part.images[held_out(len(part), self.cfg.test, recipe.seed + 1)]
        self.augment = BatchAugment(resolve_spec(recipe.pretrain.augment, data.name, data.in_shape[0]))
        self.baselines: dict[str, dict[str, float]] | None = None

    @property
    def label(self) -> str:
        return "view retrieval"

    def score(self, encoder) -> tuple[float, float]:
        from clt.quality import compare_encoders, untrained_encoder, verdict

        started = time.perf_counter()
        if self.baselines is None:  # the same views every time (seeded), so the baselines hold for every epoch
            model = self.recipe.model
            untrained = untrained_encoder(model.encoder, model.params, self.data.in_shape, self.seed, self.device)
            self.baselines = compare_encoders({"untrained": untrained}, self.data, self.images, self.augment,
                                              self.seed, self.device)
        scores = {**compare_encoders({"encoder": encoder}, self.data, self.images, self.augment, self.seed,
                                     self.device), "untrained": self.baselines["untrained"]}
        self.report.info("monitor: " + verdict(scores, len(self.images)))
        return scores["encoder"]["view_retrieval"], time.perf_counter() - started

    def summary(self, history: list[dict[str, Any]], train_seconds: float) -> dict[str, Any]:
        spent = sum(h.get("monitor_seconds", 0.0) for h in history)
        curve = [{"epoch": h["epoch"], "seconds": h.get("seconds"), "view_retrieval": h["view_retrieval"]}
                 for h in history if "view_retrieval" in h]
        return {"measure": "view retrieval", "images": len(self.images), "curve": curve,
                "baselines": {k: v["view_retrieval"] for k, v in (self.baselines or {}).items()},
                "seconds": round(spent, 2), "share_of_training": round(spent / max(train_seconds, 1e-9), 4)}


def monitor_for(ctx, recipe, data, device) -> KnnMonitor | None:
    """A monitor when the recipe asks for one: kNN accuracy when the data has labels, else view retrieval."""
    if recipe.pretrain.monitor is None:
        return None
    if not data.labeled or len(data.test) == 0:
        ctx.report.info(f"pretrain.monitor: dataset '{data.name}' has no labeled test split, so the monitor "
                        "measures view retrieval (beside the untrained encoder and raw pixels) instead of kNN")
        return ViewRetrievalMonitor(recipe, data, device, ctx.report)
    return KnnMonitor(recipe, data, device)
