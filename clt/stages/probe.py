"""The probe stage: a linear or MLP head trained on a frozen (or fine-tuned) encoder."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any, Callable

from clt.errors import DataError
from clt.runlog import METRICS_FILE, MetricsStream
from clt.stages.context import Context, Outcome, produce
from clt.stages.dataset import dataset_artifact, dataset_of, load_dataset
from clt.stages.weights import load_encoder, load_weights, save_trained_head
from clt.store import Artifact, Store


def stored_recipe(artifact: Artifact, overrides: list[str]):
    """The recipe an artifact was built from, parsed again (with overrides)."""
    from clt.recipe import recipe_from_dict

    return recipe_from_dict(artifact.recipe or {}, f"recipe of {artifact.short}", overrides, stored=True)


def plain(obj: Any) -> Any:
    """A recipe section in its canonical plain form (what addresses hash)."""
    from clt.recipe import to_plain

    return to_plain(obj)


def probe(ctx: Context, encoder_ref: str | None = None, overrides: list[str] = (), seed: int | None = None,
          dataset: str | None = None) -> Outcome:
    """Train a head (linear or MLP) on the frozen encoder, with all labels or a balanced few.

    Example: probe(ctx, "latest-encoder", ["probe.labels=100"]).artifact.kind == "probe"
    """
    encoder_art = ctx.store.resolve_named(encoder_ref, ("encoder",),
                                          hint="train one first: clt pretrain RECIPE.yaml")
    recipe = stored_recipe(encoder_art, list(overrides))
    cfg = recipe.probe
    seed = recipe.seed if seed is None else seed
    data_art = dataset_artifact(ctx, dataset) if dataset else dataset_of(ctx.store, encoder_art)
    spec = {"stage": "probe", "probe": plain(cfg), "inputs": {"encoder": encoder_art.id, "dataset": data_art.id},
            "seed": seed}
    return produce(ctx, spec, "probe", lambda tmp, art_id: _build(ctx, recipe, cfg, encoder_art, data_art, seed, tmp,
                                                                  ctx.store.work_dir(art_id) / METRICS_FILE),
                   name=recipe.name)


def _build(ctx: Context, recipe, cfg, encoder_art: Artifact, data_art: Artifact, seed: int,
           tmp: Path, stream_path: Path) -> dict[str, Any]:
    from clt.devices import describe, pick_device, resolve_precision, seed_everything
    from clt.probing import build_head, few_label_subset

    device = pick_device(ctx.device)
    precision = resolve_precision(ctx.precision or recipe.pretrain.precision, device)
    seed_everything(seed)
    data = load_dataset(data_art)
    if not data.labeled:
        raise DataError(f"dataset '{data.name}' has no labels, so no probe can be trained on it",
                        "probe on a labeled dataset with --dataset NAME")
    encoder = load_encoder(encoder_art, device)
    index = few_label_subset(data.train.labels, seed, cfg.labels_per_class, cfg.labels)
    head = build_head(cfg, encoder.out_dim, len(data.classes)).to(device)
    ctx.report.info(f"probe: {cfg.head} head on {'fine-tuned' if cfg.finetune else 'frozen'} encoder "
                    f"{encoder_art.short}, {len(index)} labels, {cfg.epochs} epochs")
    # written as it goes beside where a checkpoint would be, so a killed probe keeps what it logged
    stream = MetricsStream(stream_path)
    try:
        history = _fit(ctx, cfg, encoder, head, data, index, encoder_art, data_art, device, precision, seed,
                       lambda record: stream.log({"event": "epoch", "step": record["epoch"], **record}))
    finally:
        stream.close()
    save_trained_head(tmp, head, history, f"{recipe.name}: probe loss", encoder if cfg.finetune else None)
    if stream_path.is_file():
        shutil.move(stream_path, tmp / METRICS_FILE)
        with contextlib.suppress(OSError):
            stream_path.parent.rmdir()
    return {
        "device": describe(device),
        "precision": precision,
        **({"encoder": encoder_art.manifest["encoder"]} if cfg.finetune else {}),
        "head": {"kind": cfg.head, "in_dim": encoder.out_dim, "classes": len(data.classes), "hidden": cfg.hidden},
        "subset": index.tolist() if (cfg.labels_per_class or cfg.labels) else "all",
        "protocol": _protocol(cfg, len(index)),
        "metrics": {"train_accuracy": history[-1]["train_accuracy"] if history else None,
                    "labels_used": int(len(index))},
    }


def _fit(ctx: Context, cfg, encoder, head, data, index, encoder_art: Artifact, data_art: Artifact, device,
         precision: str, seed: int, log: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """Fine-tune, or train the head on features: the stored ones when all labels are used."""
    from clt.features import extract_features
    from clt.probing import finetune, train_head
    from clt.stages.embed import stored_features

    def on_epoch(r: dict[str, Any]) -> None:
        log(r)
        ctx.report.info(f"probe epoch {r['epoch']}: loss {r['loss']:.4f}, train accuracy {r['train_accuracy']:.4f}")
    if cfg.finetune:
        return finetune(encoder, head, data.to(device), index.to(device), cfg, device, precision, seed, on_epoch)
    labels = data.train.labels[index].to(device)
    if len(index) == len(data.train) and data_art.id == encoder_art.inputs.get("dataset"):
        # all labels: the train features are the encoder's stored embeddings, written once and
        # reused by every later probe and by `evaluate --knn` (which then only searches)
        features = stored_features(ctx, encoder_art.id, "train", device)
        return train_head(head, features, labels, cfg, seed, on_epoch)
    with ctx.report.progress("features", len(index)) as task:
        subset = data.train.subset(index)
        features = extract_features(encoder, data.to(device), subset.__class__(
            subset.images.to(device), subset.labels.to(device)), device, precision,
            on_batch=lambda done, total: task.update(done, total))
    return train_head(head, features, labels, cfg, seed, on_epoch)


def _protocol(cfg, labels_used: int) -> dict[str, Any]:
    kind = "fine-tune" if cfg.finetune else f"offline {cfg.head}"
    return {"protocol": kind, "epochs": cfg.epochs, "labels_used": labels_used, "final_epoch": True}


def load_probe(store: Store, artifact: Artifact, device):
    """(encoder, head) of a probe artifact: its own fine-tuned encoder if it has one."""
    from safetensors.torch import load_file

    from clt.probing import build_head
    from clt.recipe import ProbeConfig, from_dict

    finetuned = "encoder.safetensors" in artifact.manifest.get("files", {})
    encoder = load_encoder(artifact if finetuned else store.get(artifact.inputs["encoder"]), device)
    cfg = from_dict(ProbeConfig, artifact.manifest["spec"]["probe"], "stored probe", "probe")
    info = artifact.manifest["head"]
    head = build_head(cfg, info["in_dim"], info["classes"])
    load_weights(head, load_file(str(artifact.file("head.safetensors"))), f"{artifact.short}/head.safetensors",
                 "the probe's head")
    return encoder, head.to(device).eval()
