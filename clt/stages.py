"""One function per command: recipe + store + device -> artifact.

Only this module turns recipe sections into constructor arguments and touches the store.
Heavy libraries (torch, sklearn, matplotlib) are imported inside the stages so that the
CLI starts fast and a cache hit returns before torch is loaded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from clt.errors import CltError, DataError, RecipeError, StoreError, did_you_mean
from clt.store import Artifact, Store, address, canonical_json

KNOWN_DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
# bumped whenever what `evaluate` measures changes, so stored evaluations are not reused
EVALUATE_PROTOCOL = 3


class Reporter:
    """How stages talk to the user; the CLI supplies a rich one, library callers a silent one."""

    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def progress(self, description: str, total: int | None) -> ProgressTask:
        return ProgressTask()

    def table(self, renderable: Any) -> None:
        pass


class ProgressTask:
    def __enter__(self) -> ProgressTask:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def update(self, completed: int, total: int | None = None, **fields: Any) -> None:
        pass


@dataclass
class Context:
    store: Store
    device: str = "auto"
    precision: str | None = None  # overrides the recipe's precision when set
    report: Reporter = field(default_factory=Reporter)


@dataclass
class Outcome:
    artifact: Artifact
    cached: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.artifact.id, "kind": self.artifact.kind, "name": self.artifact.name,
                "cached": self.cached, "path": str(self.artifact.path), **self.metrics, **self.extra}


# ---------------------------------------------------------------------------- datasets


def download(ctx: Context, name: str, source: str | None = None, size: tuple[int, int] | None = None,
             mirrors: list[str] | None = None) -> Outcome:
    """Fetch or import a dataset and store it once as uint8 arrays."""
    from clt.data.memory import channel_stats, save_arrays
    from clt.data.sources import fetch

    if source is not None and not Path(source).exists():
        raise DataError(f"--from '{source}' does not exist", "give the path of a local copy of the dataset")
    with ctx.report.progress(f"fetching {name}", None) as task:
        arrays = fetch(name, source=Path(source) if source else None, cache_dir=ctx.store.downloads,
                       mirrors=mirrors, size=size,
                       progress=lambda desc, done, total: task.update(done, total, description=desc))
    import hashlib

    digest = hashlib.sha256()
    for array in (arrays.train_images, arrays.train_labels, arrays.test_images, arrays.test_labels):
        digest.update(str(array.shape).encode())
        digest.update(memoryview(array.tobytes()))
    spec = {"stage": "dataset", "name": name, "content": digest.hexdigest(), "classes": arrays.classes}

    def build(tmp: Path) -> dict[str, Any]:
        mean, std = channel_stats(arrays.train_images)
        save_arrays(tmp / "data.safetensors", {
            "train_images": arrays.train_images, "train_labels": arrays.train_labels,
            "test_images": arrays.test_images, "test_labels": arrays.test_labels})
        info = {"name": name, "classes": arrays.classes, "shape": list(arrays.train_images.shape[1:]),
                "train": int(len(arrays.train_images)), "test": int(len(arrays.test_images)),
                "mean": mean, "std": std, "source": arrays.source}
        return {"dataset": info, "metrics": {"train": info["train"], "test": info["test"]}}

    artifact, cached = ctx.store.produce(spec, "dataset", build, refs=(f"dataset/{name}",), name=name)
    info = artifact.manifest["dataset"]
    ctx.report.info(f"dataset {name}: {info['train']} train + {info['test']} test images of shape "
                    f"{tuple(info['shape'])}, {len(info['classes'])} classes")
    return Outcome(artifact, cached, {"train": info["train"], "test": info["test"]})


def dataset_artifact(ctx: Context, name: str) -> Artifact:
    """The stored dataset `name`; digits (shipped with scikit-learn) is imported on first use."""
    found = ctx.store.read_ref(f"dataset/{name}")
    if found and ctx.store.exists(found):
        return ctx.store.get(found)
    if name == "digits":
        return download(ctx, "digits").artifact
    if name in KNOWN_DATASETS:
        raise DataError(f"dataset '{name}' is not downloaded yet (store: {ctx.store.root})",
                        f"run `clt download {name}`, or `clt download {name} --from PATH` for a local copy")
    stored = [ref.split("/", 1)[1] for ref in ctx.store.refs() if ref.startswith("dataset/")]
    raise DataError(f"unknown dataset '{name}'",
                    did_you_mean(name, sorted(set(KNOWN_DATASETS) | set(stored)))
                    + "; import your own with `clt download NAME --from FOLDER`")


def load_dataset(artifact: Artifact):
    from clt.data.memory import load_image_data

    return load_image_data(artifact.file("data.safetensors"), artifact.manifest["dataset"])


# ---------------------------------------------------------------------------- pretrain


def _recipe_raw(path: str, overrides: list[str], seed: int | None) -> dict[str, Any]:
    from clt.recipe import read_raw

    return read_raw(path, overrides, seed)


def pretrain(ctx: Context, recipe_path: str, overrides: list[str] = (), seed: int | None = None,
             resume: bool = True) -> Outcome:
    """Train an encoder with the recipe's objective; returns the encoder artifact."""
    raw = _recipe_raw(recipe_path, list(overrides), seed)
    dataset_name = (raw.get("data") or {}).get("dataset", "digits") if isinstance(raw.get("data"), dict) else None
    # Fast path: the same recipe text, overrides and dataset as a finished run. Answered from
    # a memo ref without importing torch, so an unchanged re-run prints its id at once.
    found = ctx.store.read_ref(f"dataset/{dataset_name}") if isinstance(dataset_name, str) else None
    # every rank of a multi-process run must join the process group, so no early answers there
    single = int(os.environ.get("WORLD_SIZE", "1")) <= 1
    memo = address({"memo": "pretrain", "raw": raw, "dataset": found}) if found and single else None
    if memo:
        hit = ctx.store.read_ref(f"memo/{memo}")
        if hit and ctx.store.exists(hit):
            artifact = ctx.store.get(hit)
            ctx.store._set_refs(artifact, ())
            return Outcome(artifact, True, artifact.metrics)

    from clt.recipe import recipe_from_dict

    recipe = recipe_from_dict(raw, recipe_path)
    from clt.distributed import from_environment

    group = from_environment(ctx.device, recipe.pretrain.sync_batchnorm)
    if group and not group.is_main:
        ctx.report = Reporter()  # only rank 0 logs and draws progress
    data_art = dataset_artifact(ctx, recipe.data.dataset)
    spec = {"stage": "pretrain", "recipe": recipe.to_dict(), "inputs": {"dataset": data_art.id},
            "seed": recipe.seed}
    if group and (recipe.pretrain.batch_size % group.world_size):
        raise RecipeError(f"pretrain.batch_size = {recipe.pretrain.batch_size} does not split over "
                          f"{group.world_size} processes", "make the global batch size a multiple of --nproc")
    artifact_id = address(spec)
    if group and not group.is_main:
        # other ranks train alongside rank 0 but write nothing; all agree on the artifact id
        if not ctx.store.exists(artifact_id):
            import tempfile

            with tempfile.TemporaryDirectory() as scratch:
                _pretrain_build(ctx, recipe, data_art, Path(scratch), artifact_id, resume, group)
        group.barrier()
        return None
    outcome = _produce(ctx, spec, "encoder", lambda tmp, art_id: _pretrain_build(ctx, recipe, data_art, tmp,
                                                                               art_id, resume, group),
                       name=recipe.name)
    if group:
        group.barrier()
    memo = address({"memo": "pretrain", "raw": raw, "dataset": data_art.id})
    ctx.store.set_ref(f"memo/{memo}", outcome.artifact.id)
    return outcome


def _produce(ctx: Context, spec: dict[str, Any], kind: str, build: Callable[[Path, str], dict[str, Any]],
             name: str = "", refs: tuple[str, ...] = ()) -> Outcome:
    artifact_id = address(spec)
    artifact, cached = ctx.store.produce(spec, kind, lambda tmp: build(tmp, artifact_id), refs=refs, name=name)
    return Outcome(artifact, cached, artifact.metrics)


def _pretrain_build(ctx: Context, recipe, data_art: Artifact, tmp: Path, artifact_id: str,
                    resume: bool, group=None) -> dict[str, Any]:
    import torch

    from clt import plots
    from clt.checkpoint import FileCheckpointer
    from clt.devices import describe, pick_device, resolve_precision, seed_everything
    from clt.models.heads import build_encoder, mlp
    from clt.recipe import params_of
    from clt.registry import OBJECTIVES
    from clt.train import pretrain as run_pretrain

    device = group.device if group else pick_device(ctx.device)
    precision = resolve_precision(ctx.precision or recipe.pretrain.precision, device)
    seed_everything(recipe.seed)
    data = load_dataset(data_art)
    limit = recipe.data.train_limit
    if limit and limit < len(data.train):
        from clt.probe import few_label_subset

        data.train = data.train.subset(few_label_subset(data.train.labels, recipe.seed, total=limit))
    data = data.to(device)
    objective = OBJECTIVES[recipe.objective.name]
    params = params_of(objective.params, recipe.objective.params)
    encoder = build_encoder(recipe.model.encoder, recipe.model.params, data.in_shape)
    if group and group.sync_bn:
        # converted in place of the encoder we save: SyncBatchNorm keeps BatchNorm's state-dict keys
        out_dim = encoder.out_dim
        encoder = torch.nn.SyncBatchNorm.convert_sync_batchnorm(encoder)
        encoder.out_dim = out_dim
    model = encoder
    if recipe.model.projection:
        try:
            model = torch.nn.Sequential(encoder, mlp(encoder.out_dim, recipe.model.projection))
        except (RuntimeError, MemoryError) as err:
            raise CltError(f"model.projection {recipe.model.projection} cannot be built: {err}",
                           "use smaller projection widths, e.g. [128, 64]") from None
    model = model.to(device)
    if recipe.pretrain.channels_last:
        model = model.to(memory_format=torch.channels_last)
    augment = _augmenter(recipe, data, objective.views)
    forward_model = torch.compile(model) if recipe.pretrain.compile else model
    main = group is None or group.is_main
    checkpointer = FileCheckpointer(ctx.store.work_dir(artifact_id), {"id": artifact_id}, writable=main)
    if not resume and main:
        checkpointer.clear()
    if group:
        group.barrier()  # every rank sees the same checkpoint (or none) before it starts
    steps = len(data.train) // recipe.pretrain.batch_size
    ranks = f" × {group.world_size} processes" if group else ""
    ctx.report.info(f"pretrain {recipe.name}: {recipe.model.encoder} + {recipe.objective.name} on "
                    f"{data.name} ({len(data.train)} images), {recipe.pretrain.epochs} epochs × {steps} steps, "
                    f"{describe(device)}{ranks}, {precision}")
    with ctx.report.progress("pretrain", recipe.pretrain.epochs * steps) as task:
        def on_step(r):
            task.update(r.epoch * r.steps + r.step, description=f"pretrain epoch {r.epoch + 1}/{r.epochs}",
                        loss=r.loss)

        work = ctx.store.work_dir(artifact_id)

        def on_epoch(record):
            at = f" at {record['image_height']}px" if recipe.pretrain.progressive_resize else ""
            message = (f"epoch {record['epoch']}{at}: loss {record['loss']:.4f}, "
                       f"embedding spread {record['embedding_spread']:.3f}")
            ctx.report.info(message)
            every = recipe.pretrain.snapshot_every
            if main and every and record["epoch"] % every == 0:
                # kept beside the checkpoint, so a killed and resumed run keeps its earlier snapshots
                _save_module_atomic(encoder, work / f"snapshot-epoch{record['epoch']:04d}.safetensors")
            if record["collapse_warning"]:
                ctx.report.warn(f"epoch {record['epoch']}: the embeddings are collapsing (spread "
                                f"{record['embedding_spread']:.3f}, ~1 is healthy): lower the learning rate, raise "
                                "the temperature or strengthen augmentation")

        result = run_pretrain(forward_model, objective, params, data, recipe.pretrain, device=device,
                              precision=precision, seed=recipe.seed, augment=augment, on_step=on_step,
                              on_epoch=on_epoch, checkpointer=checkpointer, distributed=group)
    if result.resumed_from:
        ctx.report.info(f"resumed from step {result.resumed_from}")
    _save_module(encoder, tmp / "encoder.safetensors")
    (tmp / "history.json").write_text(json.dumps(result.history, indent=1))
    if result.history:
        plots.loss_curve(result.history, tmp / "loss_curve.png", f"{recipe.name}: pretrain loss")
    snapshots = sorted(work.glob("snapshot-*.safetensors")) if main else []
    if snapshots:
        (tmp / "snapshots").mkdir()
        for path in snapshots:
            shutil.copyfile(path, tmp / "snapshots" / path.name)
    last = result.history[-1] if result.history else {}
    if group:
        group.barrier()  # nobody may still be reading the checkpoint when rank 0 removes it
    if main:
        checkpointer.clear()
    return {
        "device": describe(device) + (f" × {group.world_size} processes" if group else ""),
        "precision": precision,
        "encoder": {"name": recipe.model.encoder, "params": recipe.model.params, "in_shape": list(data.in_shape),
                    "out_dim": encoder.out_dim},
        "metrics": {"final_loss": last.get("loss"), "epochs": recipe.pretrain.epochs,
                    "embedding_spread": last.get("embedding_spread"),
                    "train_seconds": round(result.seconds, 2), "train_images": len(data.train),
                    "images_per_second": round(result.images_seen / max(result.seconds, 1e-9), 1)},
        "objective": recipe.objective.name,
    }


def _augmenter(recipe, data, views: int):
    """Batch augmentation for objectives with views, or when the recipe asks for one."""
    if views == 1 and recipe.pretrain.augment is None:
        return None
    from clt.data.augment import BatchAugment, resolve_spec

    return BatchAugment(resolve_spec(recipe.pretrain.augment, data.name, data.in_shape[0]))


def snapshots(artifact: Artifact) -> list[tuple[int, float | None, str]]:
    """An encoder's snapshots as (epoch, training seconds up to it, file name inside the artifact)."""
    seconds = {}
    if "history.json" in artifact.manifest.get("files", {}):
        seconds = {h["epoch"]: h.get("seconds") for h in json.loads(artifact.file("history.json").read_text())}
    found = []
    for name in artifact.manifest.get("files", {}):
        # (an optional "-NNNs" suffix: the first builds named snapshots with their time)
        match = re.fullmatch(r"snapshots/snapshot-epoch(\d+)(?:-\d+s)?\.safetensors", name)
        if match:
            found.append((int(match[1]), seconds.get(int(match[1])), name))
    return sorted(found)


def _save_module_atomic(module, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    _save_module(module, partial)
    os.replace(partial, path)


def _save_module(module, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path))


def load_encoder(artifact: Artifact, device, weights_file: str = "encoder.safetensors") -> Any:
    """Rebuild an encoder from its manifest and load its safetensors weights (or a snapshot's), strictly."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from clt.models.heads import build_encoder

    info = artifact.manifest["encoder"]
    encoder = build_encoder(info["name"], info["params"], tuple(info["in_shape"]))
    try:
        weights = load_file(str(artifact.file(weights_file)))
    except SafetensorError as err:
        raise StoreError(f"{artifact.short}: {weights_file} is not a valid safetensors file ({err})",
                         "rebuild the artifact with the stage that made it") from None
    load_weights(encoder, weights, f"{artifact.short}/{weights_file}")
    return encoder.to(device).eval()


def load_weights(module, weights: dict, where: str, what: str = "the recipe's encoder") -> None:
    """Load a state dict, refusing one whose names or shapes do not fit, and naming them."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(expected) & set(weights) if tuple(expected[k].shape) != tuple(weights[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch: " + ", ".join(
                f"{k} {tuple(weights[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:5]))
        if missing:
            parts.append("missing: " + ", ".join(missing[:5]))
        if unexpected:
            parts.append("unexpected: " + ", ".join(unexpected[:5]))
        raise StoreError(f"{where} does not fit {what} ({'; '.join(parts)})",
                         "use weights trained with the same architecture and input shape, or rebuild the artifact")
    module.load_state_dict(weights)


# ---------------------------------------------------------------------------- probe


def _stored_recipe(artifact: Artifact, overrides: list[str]):
    from clt.recipe import recipe_from_dict

    return recipe_from_dict(artifact.recipe or {}, f"recipe of {artifact.short}", overrides)


def probe(ctx: Context, encoder_ref: str | None = None, overrides: list[str] = (), seed: int | None = None,
          dataset: str | None = None) -> Outcome:
    """Train a head (linear or MLP) on the frozen encoder, with all labels or a balanced few."""
    encoder_art = ctx.store.resolve_named(encoder_ref, ("encoder",),
                                          hint="train one first: clt pretrain RECIPE.yaml")
    recipe = _stored_recipe(encoder_art, list(overrides))
    cfg = recipe.probe
    seed = recipe.seed if seed is None else seed
    data_art = dataset_artifact(ctx, dataset) if dataset else ctx.store.get(encoder_art.inputs["dataset"])
    spec = {"stage": "probe", "probe": _plain(cfg), "inputs": {"encoder": encoder_art.id, "dataset": data_art.id},
            "seed": seed}
    return _produce(ctx, spec, "probe",
                    lambda tmp, _id: _probe_build(ctx, recipe, cfg, encoder_art, data_art, seed, tmp),
                    name=recipe.name)


def _plain(obj: Any) -> Any:
    from clt.recipe import to_plain

    return to_plain(obj)


def _probe_build(ctx: Context, recipe, cfg, encoder_art: Artifact, data_art: Artifact, seed: int,
                 tmp: Path) -> dict[str, Any]:

    from clt import plots
    from clt.devices import describe, pick_device, resolve_precision, seed_everything
    from clt.probe import build_head, extract_features, few_label_subset, finetune, train_head

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
    labels = data.train.labels[index].to(device)
    ctx.report.info(f"probe: {cfg.head} head on {'fine-tuned' if cfg.finetune else 'frozen'} encoder "
                    f"{encoder_art.short}, {len(index)} labels, {cfg.epochs} epochs")
    on_epoch = lambda r: ctx.report.info(  # noqa: E731
        f"probe epoch {r['epoch']}: loss {r['loss']:.4f}, train accuracy {r['train_accuracy']:.4f}")
    if cfg.finetune:
        history = finetune(encoder, head, data.to(device), index.to(device), cfg, device, precision, seed,
                           on_epoch)
        _save_module(encoder, tmp / "encoder.safetensors")
    elif len(index) == len(data.train) and data_art.id == encoder_art.inputs.get("dataset"):
        # all labels: the train features are the encoder's stored embeddings, written once and
        # reused by every later probe and by `evaluate --knn` (which then only searches)
        features = stored_features(ctx, encoder_art.id, "train", device)
        history = train_head(head, features, labels, cfg, seed, on_epoch)
    else:
        with ctx.report.progress("features", len(index)) as task:
            subset = data.train.subset(index)
            features = extract_features(encoder, data.to(device), subset.__class__(
                subset.images.to(device), subset.labels.to(device)), device, precision,
                on_batch=lambda done, total: task.update(done, total))
        history = train_head(head, features, labels, cfg, seed, on_epoch)
    _save_module(head, tmp / "head.safetensors")
    (tmp / "history.json").write_text(json.dumps(history, indent=1))
    if history:
        plots.loss_curve(history, tmp / "loss_curve.png", f"{recipe.name}: probe loss")
    subset_note = index.tolist() if (cfg.labels_per_class or cfg.labels) else "all"
    return {
        "device": describe(device),
        "precision": precision,
        **({"encoder": encoder_art.manifest["encoder"]} if cfg.finetune else {}),
        "head": {"kind": cfg.head, "in_dim": encoder.out_dim, "classes": len(data.classes), "hidden": cfg.hidden},
        "subset": subset_note,
        "protocol": _probe_protocol(cfg, len(index)),
        "metrics": {"train_accuracy": history[-1]["train_accuracy"] if history else None,
                    "labels_used": int(len(index))},
    }


def _probe_protocol(cfg, labels_used: int) -> dict[str, Any]:
    kind = "fine-tune" if cfg.finetune else f"offline {cfg.head}"
    return {"protocol": kind, "epochs": cfg.epochs, "labels_used": labels_used, "final_epoch": True}


def load_probe(store: Store, artifact: Artifact, device):
    """(encoder, head) of a probe artifact: its own fine-tuned encoder if it has one."""
    from safetensors.torch import load_file

    from clt.probe import build_head
    from clt.recipe import ProbeConfig, from_dict

    finetuned = "encoder.safetensors" in artifact.manifest.get("files", {})
    encoder = load_encoder(artifact if finetuned else store.get(artifact.inputs["encoder"]), device)
    cfg = from_dict(ProbeConfig, artifact.manifest["spec"]["probe"], "stored probe", "probe")
    info = artifact.manifest["head"]
    head = build_head(cfg, info["in_dim"], info["classes"])
    load_weights(head, load_file(str(artifact.file("head.safetensors"))), f"{artifact.short}/head.safetensors",
                 "the probe's head")
    return encoder, head.to(device).eval()


# ---------------------------------------------------------------------------- evaluate


def evaluate(ctx: Context, ref: str | None = None, confusion: bool = False, knn: int | None = None,
             knn_metric: str | None = None, knn_vote: str | None = None, pairs: bool = True) -> Outcome:
    """Accuracy, per-class accuracy and confusion of a probe; pair verification and kNN of its encoder."""
    target = ctx.store.resolve_named(ref, ("probe", "encoder"),
                                     hint="train a probe first: clt probe, or pass an encoder with --knn")
    if target.kind == "encoder" and not knn and not _verifiable(target):
        raise CltError(f"{target.short} is an encoder: without a probe only kNN or pair accuracy can be measured",
                       f"pass --knn 10, or probe it first: clt probe {target.short}")
    encoder_art = _encoder_of(ctx.store, target)
    recipe = _stored_recipe(encoder_art, [])
    options = {"confusion": confusion, "pairs": pairs and _verifiable(encoder_art),
               "n_pairs": recipe.evaluate.pairs, "pair_threshold": "chosen on train pairs", "knn": knn,
               "knn_metric": knn_metric or recipe.evaluate.knn_metric,
               "knn_vote": knn_vote or recipe.evaluate.knn_vote,
               "knn_temperature": recipe.evaluate.knn_temperature}
    spec = {"stage": "evaluate", "protocol_version": EVALUATE_PROTOCOL, "inputs": {"target": target.id},
            "options": options}
    outcome = _produce(ctx, spec, "evaluation",
                       lambda tmp, _id: _evaluate_build(ctx, target, encoder_art, recipe, options, tmp),
                       name=target.name)
    _show_evaluation(ctx, outcome.artifact)
    return outcome


def _encoder_of(store: Store, target: Artifact) -> Artifact:
    """The artifact holding the encoder weights: itself (encoder, fine-tuned or scratch probe)
    or the encoder its probe was trained on."""
    if target.kind == "encoder" or "encoder.safetensors" in target.manifest.get("files", {}):
        return target
    return store.get(target.inputs["encoder"])


def _verifiable(encoder_art: Artifact) -> bool:
    from clt.registry import OBJECTIVES

    if encoder_art.kind != "encoder":
        return False  # supervised baselines have no pair objective to verify with
    name = (encoder_art.recipe or {}).get("objective", {}).get("name")
    entry = OBJECTIVES.get(name) if name else None
    return bool(entry and entry.verify)


def _evaluate_build(ctx: Context, target: Artifact, encoder_art: Artifact, recipe, options: dict[str, Any],
                    tmp: Path) -> dict[str, Any]:
    import torch

    from clt import metrics, plots
    from clt.devices import describe, pick_device
    from clt.probe import extract_features
    from clt.recipe import params_of
    from clt.registry import OBJECTIVES

    device = pick_device(ctx.device)
    data_art = ctx.store.get(target.inputs.get("dataset") or encoder_art.inputs["dataset"])
    data = load_dataset(data_art)
    if not data.labeled or len(data.test) == 0:
        raise DataError(f"dataset '{data.name}' has no labeled test split to evaluate on",
                        "evaluate on a dataset with labeled train/test splits")
    gpu_data = data.to(device)
    results: dict[str, Any] = {}
    protocol: dict[str, Any] = {"split": "test", "test_images": len(data.test)}
    classes = data.classes
    true = data.test.labels.numpy()
    encoder = None
    cache: dict[str, Any] = {}

    def features(split: str):
        """An encoder's features of a split, stored once as an embeddings artifact (DINO-style:
        dumped once, reloaded by every later probe, kNN or pair evaluation of the same encoder)."""
        nonlocal encoder
        if split not in cache:
            if encoder_art.kind == "encoder" and data_art.id == encoder_art.inputs.get("dataset"):
                cache[split] = stored_features(ctx, encoder_art.id, split, device)
            else:
                if encoder is None:
                    encoder = load_encoder(encoder_art, device)
                cache[split] = extract_features(encoder, gpu_data, gpu_data.split(split), device)
        return cache[split]

    if target.kind == "probe":
        encoder, head = load_probe(ctx.store, target, device)  # the weights features() would load
        with torch.no_grad():
            pred = head(features("test")).argmax(1).cpu().numpy()
        matrix = metrics.confusion_matrix(true, pred, len(classes))
        results["accuracy"] = metrics.accuracy(true, pred)
        results["per_class_accuracy"] = dict(zip(classes, metrics.per_class_accuracy(matrix).tolist()))
        results["confusion"] = matrix.tolist()
        protocol.update(target.manifest.get("protocol", {}))
        if options["confusion"]:
            plots.confusion_heatmap(matrix, classes, tmp / "confusion.png",
                                    f"{target.name}: accuracy {results['accuracy']:.2%}")

    test_features = features("test")
    train_features_once = lambda: features("train")  # noqa: E731

    if options["pairs"]:
        objective = OBJECTIVES[encoder_art.recipe["objective"]["name"]]
        params = params_of(objective.params, encoder_art.recipe["objective"]["params"])
        i, j, same = metrics.verification_pairs(true, options["n_pairs"], seed=0)
        at = lambda idx: torch.as_tensor(idx, device=device)  # noqa: E731
        with torch.no_grad():
            said = objective.verify(test_features[at(i)], test_features[at(j)], params).cpu().numpy()
        results["pair_accuracy_fixed_threshold"] = metrics.accuracy(same, said)
        protocol["pairs"] = {"test_pairs": int(len(i)), "same_share": float(same.mean()), "seed": 0}
        if objective.score is not None:
            # the threshold is chosen on training pairs, never on the test pairs it is scored on
            train_features = train_features_once()
            ti, tj, tsame = metrics.verification_pairs(data.train.labels.numpy(), options["n_pairs"], seed=1)
            with torch.no_grad():
                train_scores = objective.score(train_features[at(ti)], train_features[at(tj)], params).cpu().numpy()
                test_scores = objective.score(test_features[at(i)], test_features[at(j)], params).cpu().numpy()
            threshold = metrics.best_threshold(train_scores, tsame)
            said = test_scores > threshold
            protocol["pairs"]["threshold"] = {"value": threshold, "chosen_on": f"{len(ti)} train pairs"}
            # the published protocol: each test image paired with a random other (~1/classes same);
            # its threshold is chosen on train pairs drawn the same way
            train_labels = data.train.labels.numpy()
            ri, rj, rsame = metrics.random_partner_pairs(true, seed=0)
            ti, tj, tsame = metrics.random_partner_pairs(train_labels, seed=1)
            with torch.no_grad():
                random_scores = objective.score(test_features[at(ri)], test_features[at(rj)], params).cpu().numpy()
                train_scores = objective.score(train_features[at(ti)], train_features[at(tj)], params).cpu().numpy()
            random_threshold = metrics.best_threshold(train_scores, tsame)
            results["pair_accuracy_random_partner"] = metrics.accuracy(rsame, random_scores > random_threshold)
            protocol["pairs"]["random_partner"] = {"pairs": int(len(ri)), "same_share": float(rsame.mean()),
                                                   "threshold": random_threshold,
                                                   "chosen_on": f"{len(ti)} random-partner train pairs"}
        results["pair_accuracy"] = metrics.accuracy(same, said)
        results["pair_confusion"] = metrics.confusion_matrix(same.astype(int), said.astype(int), 2).tolist()
        results["pairs"] = int(len(i))
    if options["knn"]:
        started = time.perf_counter()
        train_features = train_features_once()
        pred = metrics.knn_predict(train_features, gpu_data.train.labels, test_features, options["knn"],
                                   len(classes), options["knn_metric"], options["knn_vote"],
                                   options["knn_temperature"]).cpu().numpy()
        results["knn_accuracy"] = metrics.accuracy(true, pred)
        results["knn_seconds"] = round(time.perf_counter() - started, 3)
        protocol["knn"] = {"k": options["knn"], "metric": options["knn_metric"], "vote": options["knn_vote"],
                           "temperature": options["knn_temperature"], "train_images": len(data.train)}
        if "accuracy" not in results:
            matrix = metrics.confusion_matrix(true, pred, len(classes))
            results["confusion"] = matrix.tolist()
            results["per_class_accuracy"] = dict(zip(classes, metrics.per_class_accuracy(matrix).tolist()))
            if options["confusion"]:
                plots.confusion_heatmap(matrix, classes, tmp / "confusion.png",
                                        f"{target.name}: {options['knn']}-NN accuracy {results['knn_accuracy']:.2%}")
    (tmp / "metrics.json").write_text(json.dumps(results, indent=1))
    headline = {k: results[k] for k in ("accuracy", "pair_accuracy", "pair_accuracy_random_partner", "knn_accuracy")
                if k in results}
    return {"device": describe(device), "metrics": headline, "results": results, "protocol": protocol,
            "classes": classes}


def _show_evaluation(ctx: Context, artifact: Artifact) -> None:
    from rich.table import Table

    results = artifact.manifest["results"]
    classes = artifact.manifest["classes"]
    summary = Table(title=f"evaluation of {artifact.name or ''} ({artifact.short})")
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    for key in ("accuracy", "knn_accuracy", "pair_accuracy", "pair_accuracy_random_partner"):
        if key in results:
            summary.add_row(key.replace("_", " "), f"{results[key]:.4%}")
    ctx.report.table(summary)
    if "per_class_accuracy" in results:
        matrix = results["confusion"]
        table = Table(title="confusion (rows: true, columns: predicted)")
        table.add_column("class")
        for name in classes:
            table.add_column(name[:8], justify="right")
        table.add_column("accuracy", justify="right")
        for r, name in enumerate(classes):
            acc = results["per_class_accuracy"][name]
            table.add_row(name, *[str(v) for v in matrix[r]], "-" if acc != acc else f"{acc:.2%}")
        ctx.report.table(table)
    if "pair_confusion" in results:
        (tn, fp), (fn, tp) = results["pair_confusion"]
        table = Table(title=f"pair verification on {results['pairs']} test pairs (half same-class)")
        table.add_column("")
        table.add_column("said different", justify="right")
        table.add_column("said same", justify="right")
        table.add_row("different", str(tn), str(fp))
        table.add_row("same", str(fn), str(tp))
        ctx.report.table(table)
    if "confusion.png" in artifact.manifest.get("files", {}):
        ctx.report.info(f"confusion heatmap: {artifact.path / 'confusion.png'}")


# ---------------------------------------------------------------------------- embed, tsne


def stored_features(ctx: Context, encoder_id: str, split: str, device) -> Any:
    """An encoder's features of a split as a tensor on `device`, from its embeddings artifact
    (built on first use, then reloaded: DINO-style features dumped once)."""
    import numpy as np
    import torch

    stored = embed(ctx, encoder_id, split).artifact
    return torch.from_numpy(np.load(stored.file("embeddings.npy"), allow_pickle=False)).to(device)


def embed(ctx: Context, encoder_ref: str | None = None, split: str = "test", projector: bool = False) -> Outcome:
    """Write an encoder's embeddings of a split as .npy (and the Embedding Projector's TSVs)."""
    if split not in ("train", "test"):
        raise CltError(f"--split {split} is not a split", "use --split train or --split test")
    encoder_art = ctx.store.resolve_named(encoder_ref, ("encoder",), hint="train one first: clt pretrain RECIPE")
    spec = {"stage": "embed", "inputs": {"encoder": encoder_art.id}, "split": split, "projector": projector}

    def build(tmp: Path, _id: str) -> dict[str, Any]:
        import numpy as np

        from clt.devices import describe, pick_device
        from clt.probe import extract_features

        device = pick_device(ctx.device)
        data_art = ctx.store.get(encoder_art.inputs["dataset"])
        data = load_dataset(data_art).to(device)
        encoder = load_encoder(encoder_art, device)
        part = data.split(split)
        with ctx.report.progress(f"embedding {split}", len(part)) as task:
            features = extract_features(encoder, data, part, device, on_batch=lambda d, t: task.update(d, t))
        vectors = features.cpu().numpy().astype(np.float32)
        labels = part.labels.cpu().numpy().astype(np.int64)
        np.save(tmp / "embeddings.npy", vectors)
        np.save(tmp / "labels.npy", labels)
        if projector:
            np.savetxt(tmp / "vectors.tsv", vectors, delimiter="\t", fmt="%.6g")
            names = [data.classes[i] if 0 <= i < len(data.classes) else "unlabeled" for i in labels]
            (tmp / "metadata.tsv").write_text("label\tclass\n" + "".join(
                f"{i}\t{n}\n" for i, n in zip(labels, names)))
        return {"device": describe(device), "classes": data.classes, "split": split,
                "metrics": {"count": int(len(vectors)), "dim": int(vectors.shape[1])}}

    return _produce(ctx, spec, "embeddings", build, name=encoder_art.name)


def tsne(ctx: Context, embeddings_ref: str | None = None, pca: bool = False, perplexity: float = 30.0,
         max_points: int = 5000, seed: int = 0) -> Outcome:
    """A 2-D t-SNE (or PCA) picture of an embeddings artifact, coloured by class."""
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
        if pca:
            from sklearn.decomposition import PCA

            coords = PCA(n_components=2, random_state=seed).fit_transform(vectors)
        else:
            from sklearn.manifold import TSNE

            with ctx.report.progress("t-SNE", None):
                coords = TSNE(n_components=2, perplexity=min(perplexity, max(2.0, (len(vectors) - 1) / 3)),
                              init="pca", random_state=seed).fit_transform(vectors)
        np.save(tmp / "coords.npy", coords.astype(np.float32))
        np.save(tmp / "index.npy", keep)
        shown = "t-SNE" if method == "tsne" else "PCA"
        title = f"{emb_art.name}: {shown} of {emb_art.manifest.get('split')} embeddings"
        plots.scatter(coords, labels, emb_art.manifest.get("classes", []), tmp / f"{method}.png", title)
        return {"method": method, "metrics": {"points": int(len(vectors))}}

    outcome = _produce(ctx, spec, "figure", build, name=emb_art.name)
    ctx.report.info(f"picture: {outcome.artifact.path / (method + '.png')}")
    return outcome


# ---------------------------------------------------------------------------- listing


def iter_rows(store: Store) -> Iterator[dict[str, Any]]:
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


__all__ = ["Context", "Outcome", "Reporter", "download", "pretrain", "probe", "evaluate", "embed", "tsne",
           "canonical_json"]


# ---------------------------------------------------------------------------- baselines


def baseline_scratch(ctx: Context, recipe_path: str, overrides: list[str] = (), seed: int | None = None,
                     augment: str = "none") -> Outcome:
    """The recipe's encoder plus its probe head trained from scratch, supervised, on the probe's
    labels; with an `augment` preset each batch is freshly augmented (a fairer baseline on few labels)."""
    from clt.data.augment import check_preset
    from clt.recipe import recipe_from_dict

    check_preset(augment, "--augment preset")
    raw = _recipe_raw(recipe_path, list(overrides), seed)
    recipe = recipe_from_dict(raw, recipe_path)
    data_art = dataset_artifact(ctx, recipe.data.dataset)
    spec = {"stage": "baseline-scratch", "model": _plain(recipe.model), "probe": _plain(recipe.probe),
            "inputs": {"dataset": data_art.id}, "seed": recipe.seed,
            **({"augment": augment} if augment != "none" else {})}  # unaugmented baselines keep their address
    return _produce(ctx, spec, "probe", lambda tmp, _id: _supervised_build(
        ctx, recipe.model.encoder, recipe.model.params, recipe.probe, data_art, recipe.seed, tmp,
        "scratch supervised", augment), name=f"{recipe.name}-scratch")


def baseline_logreg(ctx: Context, dataset: str, overrides: list[str] = (), seed: int = 0) -> Outcome:
    """Multi-class logistic regression on the standardised pixels."""
    from clt.recipe import ProbeConfig, apply_override, from_dict

    raw = {"head": "linear", "epochs": 20, "batch_size": 256, "lr": 0.001, "weight_decay": 0.0}
    for item in overrides:
        apply_override(raw, item.removeprefix("probe."), "baseline logreg")
    cfg = from_dict(ProbeConfig, raw, "baseline logreg options", "probe")
    data_art = dataset_artifact(ctx, dataset)
    spec = {"stage": "baseline-logreg", "probe": _plain(cfg), "inputs": {"dataset": data_art.id}, "seed": seed}
    return _produce(ctx, spec, "probe", lambda tmp, _id: _supervised_build(
        ctx, "pixels", {}, cfg, data_art, seed, tmp, "logistic regression on pixels"), name=f"{dataset}-logreg")


def _supervised_build(ctx: Context, encoder_name: str, encoder_params: dict[str, Any], cfg, data_art: Artifact,
                      seed: int, tmp: Path, protocol: str, augment: str = "none") -> dict[str, Any]:
    from clt import plots
    from clt.devices import describe, pick_device, seed_everything
    from clt.models.heads import build_encoder
    from clt.probe import build_head, few_label_subset, finetune

    device = pick_device(ctx.device)
    seed_everything(seed)
    data = load_dataset(data_art)
    if not data.labeled:
        raise DataError(f"dataset '{data.name}' has no labels: a supervised baseline needs them",
                        "pick a labeled dataset")
    encoder = build_encoder(encoder_name, encoder_params, data.in_shape).to(device)
    index = few_label_subset(data.train.labels, seed, cfg.labels_per_class, cfg.labels)
    head = build_head(cfg, encoder.out_dim, len(data.classes)).to(device)
    ctx.report.info(f"baseline ({protocol}{', ' + augment + ' augmentation' if augment != 'none' else ''}): "
                    f"{encoder_name} + {cfg.head} head, {len(index)} labels, "
                    f"{cfg.epochs} epochs")
    # one learning rate for both parts: nothing here is pretrained
    cfg = type(cfg)(**{**_plain(cfg), "finetune_lr_scale": 1.0})
    history = finetune(encoder, head, data.to(device), index.to(device), cfg, device, "fp32", seed,
                       lambda r: ctx.report.info(f"epoch {r['epoch']}: loss {r['loss']:.4f}, "
                                                 f"train accuracy {r['train_accuracy']:.4f}"), augment)
    _save_module(encoder, tmp / "encoder.safetensors")
    _save_module(head, tmp / "head.safetensors")
    (tmp / "history.json").write_text(json.dumps(history, indent=1))
    if history:
        plots.loss_curve(history, tmp / "loss_curve.png", f"{protocol}: loss")
    return {
        "device": describe(device),
        "encoder": {"name": encoder_name, "params": encoder_params, "in_shape": list(data.in_shape),
                    "out_dim": encoder.out_dim},
        "head": {"kind": cfg.head, "in_dim": encoder.out_dim, "classes": len(data.classes), "hidden": cfg.hidden},
        "subset": index.tolist() if (cfg.labels_per_class or cfg.labels) else "all",
        "protocol": {"protocol": protocol, "epochs": cfg.epochs, "labels_used": int(len(index)), "final_epoch": True,
                     **({"augment": augment} if augment != "none" else {})},
        "metrics": {"train_accuracy": history[-1]["train_accuracy"] if history else None,
                    "labels_used": int(len(index))},
    }


# ---------------------------------------------------------------------------- compare


def summarize(store: Store, refs: list[str]) -> list[dict[str, Any]]:
    """Rows of a comparison table: evaluations grouped by everything but the seed, mean ± std."""
    from clt.metrics import mean_std

    groups: dict[str, dict[str, Any]] = {}
    for ref in refs:
        art = store.resolve(ref, ("evaluation",))
        target = store.get(art.inputs["target"])
        encoder = _encoder_of(store, target)
        recipe = encoder.recipe or target.recipe or {}
        protocol = dict(art.manifest.get("protocol", {}))
        seed = (target.manifest.get("spec") or {}).get("seed")
        key = canonical_json({"name": target.name, "protocol": protocol.get("protocol"),
                              "augment": protocol.get("augment"), "labels": protocol.get("labels_used"),
                              "knn": protocol.get("knn")})
        group = groups.setdefault(key, {
            "name": target.name, "objective": (recipe.get("objective") or {}).get("name", "-")
            if encoder.kind == "encoder" else "-",
            "protocol": _protocol_text(protocol), "labels": protocol.get("labels_used", "all"),
            "accuracy": [], "knn_accuracy": [], "pair_accuracy": [], "seconds": [], "seeds": [], "ids": []})
        for metric in ("accuracy", "knn_accuracy", "pair_accuracy"):
            if metric in art.metrics:
                group[metric].append(art.metrics[metric])
        group["seconds"].append(_wall_time(store, art))
        group["seeds"].append(seed)
        group["ids"].append(art.short)
    rows = []
    for group in groups.values():
        row = {k: group[k] for k in ("name", "objective", "protocol", "labels", "seeds", "ids")}
        row["n"] = len(group["ids"])
        for metric in ("accuracy", "knn_accuracy", "pair_accuracy"):
            if group[metric]:
                mean, std = mean_std(group[metric])
                row[metric] = {"mean": mean, "std": std, "values": group[metric]}
        row["wall_time_s"] = round(sum(group["seconds"]) / len(group["seconds"]), 1)
        rows.append(row)
    return rows


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


def format_mean_std(cell: dict[str, Any] | None) -> str:
    if not cell:
        return "-"
    if len(cell["values"]) == 1:
        return f"{100 * cell['mean']:.2f}"
    return f"{100 * cell['mean']:.2f} ± {100 * cell['std']:.2f}"


# ---------------------------------------------------------------------------- views


def views(ctx: Context, recipe_path: str, overrides: list[str] = (), count: int = 8, n_views: int = 4) -> Outcome:
    """A PNG grid: original images next to the augmented views the recipe trains on."""
    from clt.recipe import recipe_from_dict

    raw = _recipe_raw(recipe_path, list(overrides), None)
    recipe = recipe_from_dict(raw, recipe_path)
    data_art = dataset_artifact(ctx, recipe.data.dataset)
    spec = {"stage": "views", "augment": _plain(recipe.pretrain.augment), "objective": recipe.objective.name,
            "inputs": {"dataset": data_art.id}, "count": count, "n_views": n_views, "seed": recipe.seed}

    def build(tmp: Path, _id: str) -> dict[str, Any]:
        import torch

        from clt import plots
        from clt.data.augment import BatchAugment, resolve_spec
        from clt.registry import OBJECTIVES

        data = load_dataset(data_art)
        aug_spec = resolve_spec(recipe.pretrain.augment, data.name, data.in_shape[0])
        augment = BatchAugment(aug_spec)
        generator = torch.Generator().manual_seed(recipe.seed)
        index = torch.randperm(len(data.train), generator=generator)[:count]
        originals = data.train.images[index].float() / 255
        columns = [originals] + [augment(originals, generator) for _ in range(n_views)]
        rows = [torch.stack([col[i] for col in columns]).numpy() for i in range(len(index))]
        titles = [data.classes[int(data.train.labels[i])] if data.labeled else "" for i in index]
        plots.image_grid(rows, tmp / "views.png", titles,
                         f"{recipe.name}: original, then {n_views} views ({OBJECTIVES[recipe.objective.name].views} "
                         "per image per step)")
        return {"augment": _plain(aug_spec), "metrics": {"images": int(len(index))}}

    outcome = _produce(ctx, spec, "figure", build, name=recipe.name)
    ctx.report.info(f"picture: {outcome.artifact.path / 'views.png'}")
    return outcome
