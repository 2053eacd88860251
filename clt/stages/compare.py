"""Rows for tables: evaluations grouped over seeds (compare), and one row per stored artifact (ls)."""

from __future__ import annotations

import time
from typing import Any, Iterator

from clt.stages.evaluate import encoder_of
from clt.store import Artifact, Store, canonical_json

COMPARED = ("accuracy", "knn_accuracy", "pair_accuracy")


def summarize(store: Store, refs: list[str]) -> list[dict[str, Any]]:
    """Rows of a comparison table: evaluations grouped by everything but the seed, mean ± std.

    Example: summarize(store, [eval_seed0, eval_seed1])[0]["accuracy"] == {"mean": ..., "std": ..., "values": [...]}
    """
    from clt.metrics import mean_std

    groups: dict[str, dict[str, Any]] = {}
    for ref in refs:
        art = store.resolve(ref, ("evaluation",))
        key, group = _group_of(store, art)
        group = groups.setdefault(key, group)
        for metric in COMPARED:
            if metric in art.metrics:
                group[metric].append(art.metrics[metric])
        group["seconds"].append(_wall_time(store, art))
        group["seeds"].append((store.get(art.inputs["target"]).manifest.get("spec") or {}).get("seed"))
        group["ids"].append(art.short)
    rows = []
    for group in groups.values():
        row = {k: group[k] for k in ("name", "objective", "protocol", "labels", "seeds", "ids")}
        row["n"] = len(group["ids"])
        for metric in COMPARED:
            if group[metric]:
                mean, std = mean_std(group[metric])
                row[metric] = {"mean": mean, "std": std, "values": group[metric]}
        row["wall_time_s"] = round(sum(group["seconds"]) / len(group["seconds"]), 1)
        rows.append(row)
    return rows


def _group_of(store: Store, art: Artifact) -> tuple[str, dict[str, Any]]:
    """The grouping key of an evaluation (all but the seed) and an empty group for it."""
    target = store.get(art.inputs["target"])
    encoder = encoder_of(store, target)
    recipe = encoder.recipe or target.recipe or {}
    protocol = dict(art.manifest.get("protocol", {}))
    key = canonical_json({"name": target.name, "protocol": protocol.get("protocol"),
                          "augment": protocol.get("augment"), "labels": protocol.get("labels_used"),
                          "knn": protocol.get("knn")})
    objective = (recipe.get("objective") or {}).get("name", "-") if encoder.kind == "encoder" else "-"
    return key, {"name": target.name, "objective": objective, "protocol": _protocol_text(protocol),
                 "labels": protocol.get("labels_used", "all"), "seconds": [], "seeds": [], "ids": [],
                 **{metric: [] for metric in COMPARED}}


def _protocol_text(protocol: dict[str, Any]) -> str:
    parts = []
    if protocol.get("protocol"):
        parts.append(f"{protocol['protocol']}, {protocol.get('epochs', '?')} ep")
    if protocol.get("augment"):
        parts.append(f"{protocol['augment']} augmentation")
    if protocol.get("knn"):
        knn = protocol["knn"]
        parts.append(f"{knn['k']}-NN {knn['metric']} {knn['vote']}")
    return "; ".join(parts) or "-"


def _wall_time(store: Store, artifact: Artifact) -> float:
    """Training time behind an evaluation: the sum of its lineage's build times."""
    total, seen, todo = 0.0, set(), [artifact.id]
    while todo:
        current = todo.pop()
        if current in seen or not store.exists(current):
            continue
        seen.add(current)
        art = store.get(current)
        if art.kind in ("encoder", "probe"):
            total += float(art.manifest.get("wall_time_s", 0))
        todo.extend(art.inputs.values())
    return total


def iter_rows(store: Store) -> Iterator[dict[str, Any]]:
    """One row per stored artifact, oldest first: id, kind, name, created, headline metrics, files."""
    for artifact in store.all():
        metrics = artifact.metrics
        shown = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in metrics.items() if k in ("accuracy", "pair_accuracy", "knn_accuracy",
                                                               "final_loss", "train", "test", "labels_used",
                                                               "count", "points"))
        yield {"id": artifact.id, "short": artifact.short, "kind": artifact.kind, "name": artifact.name,
               "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(artifact.manifest.get("created", 0))),
               "files": ", ".join(f for f in sorted(artifact.manifest.get("files", {}))
                                  if f.endswith((".png", ".npy", ".tsv"))),
               "metrics": shown}
