"""Rows for tables: evaluations grouped over seeds (compare), and one row per stored artifact (ls)."""

from __future__ import annotations

import time
from typing import Any, Iterator

from clt.stages.evaluate import encoder_of
from clt.store import Artifact, Store, canonical_json

COMPARED = ("accuracy", "knn_accuracy", "pair_accuracy")


def summarize(store: Store, refs: list[str]) -> list[dict[str, Any]]:
    """Rows of a comparison table, mean ± std over the evaluations whose whole lineage (evaluation,
    probe, encoder, recipe, dataset) differs in nothing but the seed; `differs` names the settings
    that tell apart rows that would otherwise read alike.

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
    differs = _differences(list(groups.values()))
    rows = []
    for key, group in groups.items():
        row = {k: group[k] for k in ("name", "objective", "protocol", "labels", "seeds", "ids")}
        row["differs"] = differs.get(key, "")
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
    lineage = _lineage(store, art.id)
    objective = (recipe.get("objective") or {}).get("name", "-") if encoder.kind == "encoder" else "-"
    return canonical_json(lineage), {
        "key": canonical_json(lineage), "settings": _settings(lineage), "name": target.name,
        "objective": objective, "protocol": _protocol_text(protocol), "labels": protocol.get("labels_used", "all"),
        "seconds": [], "seeds": [], "ids": [], **{metric: [] for metric in COMPARED}}


def _lineage(store: Store, artifact_id: str) -> Any:
    """An artifact's spec with every seed taken out and each input replaced by its own lineage: two
    evaluations share it exactly when nothing but seeds differs anywhere behind them (a 3-epoch and a
    10-epoch encoder of one recipe do not)."""
    if not store.exists(artifact_id):
        return artifact_id  # deleted: only the same id is known to be the same run
    spec = store.get(artifact_id).manifest.get("spec")
    if not isinstance(spec, dict):
        return artifact_id  # from before specs were kept: grouped with nothing else
    lineage = _without_seeds(spec)
    inputs = spec.get("inputs")
    if isinstance(inputs, dict):
        lineage["inputs"] = {role: _lineage(store, value) if isinstance(value, str) else value
                             for role, value in inputs.items()}
    return lineage


def _without_seeds(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_seeds(v) for k, v in value.items() if k != "seed"}
    if isinstance(value, list):
        return [_without_seeds(v) for v in value]
    return value


def _settings(lineage: Any, prefix: str = "") -> dict[str, str]:
    """A lineage as dotted settings (pretrain.epochs, probe.lr, ...): an input's settings under their
    own names, the nearest stage's value first (the probe's probe.epochs, not its recipe's)."""
    flat: dict[str, str] = {}
    if not isinstance(lineage, dict):
        return {prefix or "id": str(lineage)}
    nested = []
    for key, value in lineage.items():
        if key == "inputs" and isinstance(value, dict):
            nested.extend(value.values())
        elif key == "recipe" and isinstance(value, dict):
            nested.append(value)
        elif isinstance(value, dict):
            flat.update(_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, str) else canonical_json(value)
    for inner in nested:
        for name, value in _settings(inner, prefix).items():
            flat.setdefault(name, value)
    return flat


def _differences(groups: list[dict[str, Any]], most: int = 4) -> dict[str, str]:
    """For groups whose table cells would read alike, the settings (up to `most`) that tell them apart."""
    alike: dict[tuple, list[dict[str, Any]]] = {}
    for group in groups:
        alike.setdefault((group["name"], group["objective"], group["protocol"], str(group["labels"])), []).append(group)
    found = {}
    for members in alike.values():
        if len(members) < 2:
            continue
        names = sorted({name for g in members for name in g["settings"]})
        differing = [n for n in names if len({g["settings"].get(n) for g in members}) > 1]
        for group in members:
            shown = [f"{n}={group['settings'].get(n, '-')}" for n in differing[:most]]
            found[group["key"]] = ", ".join(shown) + (", ..." if len(differing) > most else "")
    return found


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
               "metrics": shown, "stale": store.is_stale(artifact)}
