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

    def __init__(self, recipe, data, device):
        from clt.probing import few_label_subset

        self.cfg, self.protocol, self.data, self.device = recipe.pretrain.monitor, recipe.evaluate, data, device
        self.epochs = recipe.pretrain.epochs
        train, test = data.train, data.test
        self.train = train.subset(few_label_subset(train.labels, recipe.seed, total=min(self.cfg.train, len(train))))
        self.test = test.subset(few_label_subset(test.labels, recipe.seed + 1, total=min(self.cfg.test, len(test))))

    def due(self, epoch: int) -> bool:
        return epoch % self.cfg.every == 0 or epoch == self.epochs

    def score(self, encoder) -> tuple[float, float]:
        import torch

        from clt.features import extract_features
        from clt.metrics import knn_predict

        started = time.perf_counter()
        with torch.no_grad():
            bank = extract_features(encoder, self.data, self.train, self.device)
            queries = extract_features(encoder, self.data, self.test, self.device)
        predicted = knn_predict(bank, self.train.labels, queries, self.cfg.knn, len(self.data.classes),
                                self.protocol.knn_metric, self.protocol.knn_vote, self.protocol.knn_temperature)
        accuracy = float((predicted == self.test.labels).float().mean())
        return accuracy, time.perf_counter() - started

    def summary(self, history: list[dict[str, Any]], train_seconds: float) -> dict[str, Any]:
        """The curve and its cost, for the encoder's manifest."""
        curve = [{"epoch": h["epoch"], "seconds": h.get("seconds"), "knn_accuracy": h["knn_accuracy"]}
                 for h in history if "knn_accuracy" in h]
        spent = sum(h.get("monitor_seconds", 0.0) for h in history)
        return {"k": self.cfg.knn, "every": self.cfg.every, "train": len(self.train), "test": len(self.test),
                "metric": self.protocol.knn_metric, "vote": self.protocol.knn_vote, "curve": curve,
                "seconds": round(spent, 2), "share_of_training": round(spent / max(train_seconds, 1e-9), 4)}


def monitor_for(ctx, recipe, data, device) -> KnnMonitor | None:
    """A monitor when the recipe asks for one and the data has labels (else a note, and none)."""
    if recipe.pretrain.monitor is None:
        return None
    if not data.labeled or len(data.test) == 0:
        ctx.report.info(f"pretrain.monitor: dataset '{data.name}' has no labeled test split, so no kNN monitor")
        return None
    return KnnMonitor(recipe, data, device)
