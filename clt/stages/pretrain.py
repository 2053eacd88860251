"""The pretrain stage: recipe -> encoder artifact (weights, history, loss curve, snapshots)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clt.errors import CltError, RecipeError
from clt.runlog import METRICS_FILE, FlushingCheckpointer
from clt.stages.context import Context, Outcome, Reporter, produce
from clt.stages.dataset import dataset_artifact, load_dataset
from clt.stages.monitor import monitor_for
from clt.stages.weights import save_module, save_module_atomic
from clt.store import Artifact, address


def read_recipe_raw(path: str, overrides: list[str], seed: int | None) -> dict[str, Any]:
    """A recipe file's mapping with overrides and seed applied (validated later)."""
    from clt.recipe import read_raw

    return read_raw(path, overrides, seed)


def pretrain(ctx: Context, recipe_path: str, overrides: list[str] = (), seed: int | None = None,
             resume: bool = True, tensorboard: str | None = None) -> Outcome | None:
    """Train an encoder with the recipe's objective; returns the encoder artifact (None on ranks > 0).
    Every run streams its metrics to metrics.jsonl (kept in the encoder); `tensorboard` (or the recipe's
    pretrain.tensorboard) names a folder that also gets TensorBoard event files, a side output that
    changes no address: a stored encoder answering the run has its stream replayed there.

    Example: pretrain(ctx, "recipes/digits_pair.yaml", ["pretrain.epochs=1"]).artifact.kind == "encoder"
    """
    raw = read_recipe_raw(recipe_path, list(overrides), seed)
    section = raw.get("pretrain")
    tensorboard = tensorboard or (section.get("tensorboard") if isinstance(section, dict) else None) or None
    if tensorboard:
        from clt.runlog import tensorboard_writer

        tensorboard_writer()  # refused before any work when the extra is missing
    hit = _memo_hit(ctx, raw)
    if hit:
        return _replayed(hit, tensorboard)
    from clt.recipe import recipe_from_dict

    recipe = recipe_from_dict(raw, recipe_path)
    recipe.pretrain.tensorboard = ""  # out of the spec: where events go does not change the encoder
    from clt.distributed import from_environment

    group = from_environment(ctx.device, recipe.pretrain.sync_batchnorm)
    if group and not group.is_main:
        ctx.report = Reporter()  # only rank 0 logs and draws progress
    data_art = dataset_artifact(ctx, recipe.data.dataset)
    plan = _plan(ctx, recipe, raw, data_art, resume, group) if recipe.pretrain.minutes else None
    if plan:
        recipe.pretrain.epochs = plan.epochs  # the epochs trained are what the stored recipe holds
    spec = _spec(recipe, data_art)
    if group and (recipe.pretrain.batch_size % group.world_size):
        raise RecipeError(f"pretrain.batch_size = {recipe.pretrain.batch_size} does not split over "
                          f"{group.world_size} processes", "make the global batch size a multiple of --nproc")
    if group and not group.is_main:
        _train_beside_rank0(ctx, recipe, data_art, address(spec), resume, group)
        return None
    outcome = produce(ctx, spec, "encoder",
                      lambda tmp, art_id: {**_build(ctx, recipe, data_art, tmp, art_id, resume, group, tensorboard),
                                           **({"budget": plan.manifest()} if plan else {})}, name=recipe.name)
    if outcome.cached:
        _replayed(outcome, tensorboard)
    if group:
        group.barrier()
    key = _memo_key(raw, data_art.id, ctx.device)
    ctx.store.set_ref(f"memo/{key}", outcome.artifact.id)
    if plan:  # answered by the memo from now on
        shutil.rmtree(_plan_file(ctx, key).parent, ignore_errors=True)
    return outcome


def _spec(recipe, data_art: Artifact) -> dict[str, Any]:
    """What an encoder's address hashes: the resolved recipe, the dataset, the seed."""
    return {"stage": "pretrain", "recipe": recipe.to_dict(), "inputs": {"dataset": data_art.id},
            "seed": recipe.seed,
            # "lars" ran plain SGD before LARS was written: such encoders must not be reused as LARS ones
            **({"optimizer": "layer-wise LARS"} if recipe.pretrain.optimizer == "lars" else {})}


def _memo_key(raw: dict[str, Any], dataset_id: str, device: str = "auto") -> str:
    section = raw.get("pretrain")
    if isinstance(section, dict) and "tensorboard" in section:  # a side output, as in the spec
        section = {k: v for k, v in section.items() if k != "tensorboard"}
        raw = {**raw, "pretrain": section}
    lars = isinstance(section, dict) and section.get("optimizer") == "lars"
    # A budgeted run's epochs were planned from a trial timed on one machine and device: its memo
    # answers that machine only. Another plans afresh, and gets the stored encoder by its address
    # when it plans the same epochs, or trains the epochs its own budget buys.
    budget = isinstance(section, dict) and section.get("minutes") not in (None, 0)
    from clt.stages.budget import machine

    # as in the spec: runs of "lars" from before LARS was written (plain SGD) must not answer for it
    return address({"memo": "pretrain", "raw": raw, "dataset": dataset_id,
                    **({"optimizer": "layer-wise LARS"} if lars else {}),
                    **({"machine": machine(), "device": device} if budget else {})})


def _plan_file(ctx: Context, memo_key: str) -> Path:
    # beside the checkpoints (tmp/<key>.work survives a crash and `clt gc` while unfinished)
    return ctx.store.root / "tmp" / f"{memo_key}.work" / "plan.json"


def _plan(ctx: Context, recipe, raw: dict[str, Any], data_art: Artifact, resume: bool, group):
    """The epochs `pretrain.minutes` buys: the plan an interrupted run of this command saved, or one
    made from a timed trial (and saved before the first step)."""
    from clt.errors import STORE_ELSEWHERE, writing
    from clt.stages.budget import TRIAL_STEPS, plan_epochs, read_plan
    from clt.store import write_atomic

    if group:  # each process would time its own trial and could plan other epochs than the rest
        raise RecipeError(f"pretrain.minutes = {recipe.pretrain.minutes:g} cannot plan a run of several processes",
                          "time one process's run with --minutes, then pass its epochs with "
                          "--set pretrain.epochs=N and --set pretrain.minutes=0")
    saved = _plan_file(ctx, _memo_key(raw, data_art.id, ctx.device))
    plan = read_plan(saved) if resume else None
    if plan is None:
        steps = _train_steps(recipe, data_art)
        ctx.report.info(f"timing a {TRIAL_STEPS}-step trial to plan {recipe.pretrain.minutes:g} minutes")
        plan = plan_epochs(recipe.pretrain.minutes, trial_step_seconds(ctx, recipe, data_art), steps)
        with writing(ctx.store.root, STORE_ELSEWHERE):
            saved.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(saved, json.dumps(plan.manifest()))
    ctx.report.info(plan.line())
    return plan


def _train_steps(recipe, data_art: Artifact) -> int:
    """Steps per epoch of the real run: its train images (after data.train_limit) // the batch."""
    total = int(data_art.manifest["dataset"]["train"])
    limit = recipe.data.train_limit
    if limit and limit < total:
        from clt.probing import few_label_subset

        # the subset is class-balanced and can hold fewer than the limit: counted as _setup draws it
        total = len(few_label_subset(load_dataset(data_art).train.labels, recipe.seed, total=limit))
    return total // recipe.pretrain.batch_size


def trial_step_seconds(ctx: Context, recipe, data_art: Artifact) -> float:
    """Seconds per step of `recipe` here, from the second of two short epochs on a subset of the
    train images (the first warms up: allocation, autotuning, compilation), as bench/published.py
    times its trials. Nothing is stored; the real run seeds itself afresh after it."""
    import copy

    from clt.stages.budget import TRIAL_STEPS
    from clt.train import pretrain as run_pretrain

    trial = copy.deepcopy(recipe)
    limit = TRIAL_STEPS * recipe.pretrain.batch_size
    trial.data.train_limit = min(recipe.data.train_limit or limit, limit)
    trial.pretrain.epochs, trial.pretrain.monitor, trial.pretrain.progressive_resize = 2, None, []
    run = _setup(ctx, trial, data_art, None)
    ends: list[float] = []  # an epoch ends on reading its mean loss, so queued device work is done
    run_pretrain(_forward_model(trial, run), run.objective, run.params, run.data, trial.pretrain,
                 device=run.device, precision=run.precision, seed=trial.seed,
                 augment=augmenter(trial, run.data, run.objective.views),
                 on_epoch=lambda record: ends.append(time.perf_counter()))
    return (ends[1] - ends[0]) / (len(run.data.train) // trial.pretrain.batch_size)


def _memo_hit(ctx: Context, raw: dict[str, Any]) -> Outcome | None:
    """The same recipe text, overrides and dataset as a finished run: answered from a memo ref
    without importing torch, so an unchanged re-run prints its id at once."""
    data = raw.get("data")
    dataset_name = (data or {}).get("dataset", "digits") if isinstance(data, dict) else None
    found = ctx.store.read_ref(f"dataset/{dataset_name}") if isinstance(dataset_name, str) else None
    # every rank of a multi-process run must join the process group, so no early answers there
    if not found or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return None
    hit = ctx.store.read_ref(f"memo/{_memo_key(raw, found, ctx.device)}")
    if not (hit and ctx.store.exists(hit)):
        return None
    artifact = ctx.store.get(hit)
    ctx.store._set_refs(artifact, ())
    return Outcome(artifact, True, artifact.metrics)


def _train_beside_rank0(ctx: Context, recipe, data_art: Artifact, artifact_id: str, resume: bool, group) -> None:
    """Ranks other than 0 train alongside rank 0 but write nothing; all agree on the artifact id."""
    if not ctx.store.exists(artifact_id):
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            _build(ctx, recipe, data_art, Path(scratch), artifact_id, resume, group)
    group.barrier()


@dataclass
class _Setup:
    device: Any
    precision: str
    data: Any
    objective: Any
    params: Any
    encoder: Any
    model: Any
    monitor: Any = None


def _setup(ctx: Context, recipe, data_art: Artifact, group) -> _Setup:
    """Device, data on it, objective and model, as the recipe says."""
    from clt.devices import pick_device, resolve_precision, seed_everything
    from clt.recipe import params_of
    from clt.registry import OBJECTIVES

    device = group.device if group else pick_device(ctx.device)
    precision = resolve_precision(ctx.precision or recipe.pretrain.precision, device)
    seed_everything(recipe.seed)
    data = load_dataset(data_art)
    limit = recipe.data.train_limit
    if limit and limit < len(data.train):
        from clt.probing import few_label_subset

        data.train = data.train.subset(few_label_subset(data.train.labels, recipe.seed, total=limit))
    data = data.to(device)
    objective = OBJECTIVES[recipe.objective.name]
    params = params_of(objective.params, recipe.objective.params)
    encoder, model = _model(recipe, data.in_shape, group)
    return _Setup(device, precision, data, objective, params, encoder, model.to(device))


def _model(recipe, in_shape, group):
    """(encoder, trained model): the encoder, with the projection head after it if the recipe has one."""
    import torch

    from clt.models.heads import build_encoder, mlp

    encoder = build_encoder(recipe.model.encoder, recipe.model.params, in_shape)
    if group and group.sync_bn:
        # converted in place of the encoder we save: SyncBatchNorm keeps BatchNorm's state-dict keys
        out_dim = encoder.out_dim
        encoder = torch.nn.SyncBatchNorm.convert_sync_batchnorm(encoder)
        encoder.out_dim = out_dim
    if not recipe.model.projection:
        return encoder, encoder
    try:
        norm = recipe.model.projection_norm
        head = mlp(encoder.out_dim, recipe.model.projection, batch_norm=norm != "none", output_norm=norm == "all")
        return encoder, torch.nn.Sequential(encoder, head)
    except (RuntimeError, MemoryError) as err:
        raise CltError(f"model.projection {recipe.model.projection} cannot be built: {err}",
                       "use smaller projection widths, e.g. [128, 64]") from None


def _replayed(outcome: Outcome, tensorboard: str | None) -> Outcome:
    """A stored encoder's metrics stream written as TensorBoard events, when a folder is asked for."""
    if tensorboard and METRICS_FILE in outcome.artifact.manifest.get("files", {}):
        from clt.runlog import TensorBoardSink, read_metrics

        sink = TensorBoardSink(tensorboard)
        for i, record in enumerate(read_metrics(outcome.artifact.file(METRICS_FILE))):
            sink.scalars(record, i == 0)
        sink.close()
    return outcome


def _build(ctx: Context, recipe, data_art: Artifact, tmp: Path, artifact_id: str, resume: bool,
           group=None, tensorboard: str | None = None) -> dict[str, Any]:
    from clt.checkpoint import FileCheckpointer
    from clt.devices import describe

    run = _setup(ctx, recipe, data_art, group)
    main = group is None or group.is_main
    work = ctx.store.work_dir(artifact_id)
    # signed with the store's key: an edited checkpoint is discarded, never resumed into a signed encoder
    checkpointer = FileCheckpointer(work, {"id": artifact_id}, writable=main, sign=ctx.store.sign,
                                    warn=ctx.report.warn)
    if not resume and main:
        checkpointer.clear()
    elif main and checkpointer.load() is None:
        _start_from_shorter_run(ctx, recipe, run, data_art, checkpointer)
    if group:
        group.barrier()  # every rank sees the same checkpoint (or none) before it starts
    steps = len(run.data.train) // recipe.pretrain.batch_size
    ranks = f" × {group.world_size} processes" if group else ""
    ctx.report.info(f"pretrain {recipe.name}: {recipe.model.encoder} + {recipe.objective.name} on "
                    f"{run.data.name} ({len(run.data.train)} images), {recipe.pretrain.epochs} epochs × {steps} "
                    f"steps, {describe(run.device)}{ranks}, {run.precision}")
    stream = _stream(work, tensorboard) if main else None
    try:
        result = _train(ctx, recipe, run, steps, FlushingCheckpointer(checkpointer, stream) if stream else checkpointer,
                        work if main else None, group, stream)
        if stream and stream.sinks:
            _tensorboard_images(recipe, run, stream.sinks[0], steps * recipe.pretrain.epochs)
    finally:
        if stream:
            stream.close()
    if result.resumed_from:
        ctx.report.info(f"resumed from step {result.resumed_from}")
    _write_encoder(tmp, recipe, run.encoder, result.history, work if main else None)
    if main and _length_dependence(recipe, run) is None:
        _keep_resume_point(work, tmp / RESUME, artifact_id)
    if group:
        group.barrier()  # nobody may still be reading the checkpoint when rank 0 removes it
    if main:
        checkpointer.clear()
    return _manifest(recipe, run, result, describe(run.device) + ranks)


def _stream(work: Path, tensorboard: str | None):
    from clt.runlog import MetricsStream, TensorBoardSink

    return MetricsStream(work / METRICS_FILE, [TensorBoardSink(tensorboard)] if tensorboard else [])


def _step_logger(stream, steps: int):
    """An on_step part that logs about ten step records per epoch (and each epoch's last step): loss,
    lr and the throughput since the previous record."""
    every = max(1, steps // 10)
    last = {"images": None, "seconds": 0.0}

    def log(r) -> None:
        if r.step % every and r.step != r.steps:
            return
        done = r.epoch * r.steps + r.step
        images, seconds = r.images_seen - (last["images"] or 0), r.seconds - last["seconds"]
        record = {"event": "step", "step": done, "epoch": round(done / r.steps, 4), "loss": r.loss, "lr": r.lr,
                  "seconds": round(r.seconds, 3)}
        if last["images"] is not None and seconds > 0:  # the first after a (re)start has no interval to time
            record["images_per_second"] = round(images / seconds, 1)
        last["images"], last["seconds"] = r.images_seen, r.seconds
        stream.log(record)

    return log


def _tensorboard_images(recipe, run: _Setup, sink, step: int) -> None:
    """The augmented views the run trained on, and the confusion heatmap of a kNN evaluation of the
    trained encoder (the online monitor's subsets) where the data has labels to score."""
    import tempfile

    from clt import plots
    from clt.runlog import png_pixels

    with tempfile.TemporaryDirectory() as scratch:
        grid = _views_grid(recipe, run, Path(scratch) / "views.png")
        if grid:
            sink.image("views", png_pixels(grid), 0)
        monitor = _confusion_monitor(recipe, run)
        if monitor is not None:
            from clt.metrics import confusion_matrix

            run.encoder.eval()
            true, pred = monitor.test.labels.cpu().numpy(), monitor.predict(run.encoder).cpu().numpy()
            matrix = confusion_matrix(true, pred, len(run.data.classes))
            accuracy = float((true == pred).mean())
            plots.confusion_heatmap(matrix, run.data.classes, Path(scratch) / "confusion.png",
                                    f"{recipe.name}: {monitor.label} accuracy {accuracy:.2%} ({len(true)} test images)")
            sink.image("confusion", png_pixels(Path(scratch) / "confusion.png"), step)


def _views_grid(recipe, run: _Setup, path: Path, count: int = 8, n_views: int = 4) -> Path | None:
    """The views stage's picture of the data on the device: originals, then augmented views."""
    from clt.stages.views import views_grid

    augment = augmenter(recipe, run.data, run.objective.views)
    if augment is None:
        return None
    views_grid(run.data, augment, recipe.seed, path, count, n_views, f"{recipe.name}: original, then {n_views} views")
    return path


def _confusion_monitor(recipe, run: _Setup):
    """The run's kNN monitor, or one with the default subsets when the run had none."""
    import copy

    from clt.stages.monitor import KnnMonitor

    if type(run.monitor) is KnnMonitor:
        return run.monitor
    if not run.data.labeled or len(run.data.test) == 0:
        return None
    from clt.recipe import MonitorConfig

    scored = copy.deepcopy(recipe)
    scored.pretrain.monitor = MonitorConfig()
    return KnnMonitor(scored, run.data, run.device)


def _train(ctx: Context, recipe, run: _Setup, steps: int, checkpointer, snapshot_dir: Path | None, group,
           stream=None):
    """The training loop with the stage's progress bar, epoch log, metrics stream, snapshots and
    collapse warnings."""
    from clt.train import pretrain as run_pretrain

    forward_model = _forward_model(recipe, run)
    run.monitor = monitor_for(ctx, recipe, run.data, run.device)
    # a budgeted run said its plan before the first step; any other times its own first steps
    clock = None if recipe.pretrain.minutes else _clock(ctx, recipe, run, steps)
    log_step = _step_logger(stream, steps) if stream else None
    with ctx.report.progress("pretrain", recipe.pretrain.epochs * steps) as task:
        def on_step(r):
            task.update(r.epoch * r.steps + r.step, description=f"pretrain epoch {r.epoch + 1}/{r.epochs}",
                        loss=r.loss)
            if clock:
                clock.tick(r.epoch, r.epoch * r.steps + r.step)
            if log_step:
                log_step(r)

        return run_pretrain(forward_model, run.objective, run.params, run.data, recipe.pretrain, device=run.device,
                            precision=run.precision, seed=recipe.seed,
                            augment=augmenter(recipe, run.data, run.objective.views), on_step=on_step,
                            on_epoch=lambda record: _on_epoch(ctx, recipe, run, record, snapshot_dir, stream,
                                                              steps),
                            checkpointer=checkpointer, distributed=group)


def _forward_model(recipe, run: _Setup):
    """The model the steps call: in channels-last memory and compiled where the recipe asks."""
    import torch

    if recipe.pretrain.channels_last:
        run.model = run.model.to(memory_format=torch.channels_last)
    return torch.compile(run.model) if recipe.pretrain.compile else run.model


def _clock(ctx: Context, recipe, run: _Setup, steps: int):
    from clt.stages.budget import StepClock
    from clt.train import epoch_side

    full = run.data.in_shape[1]
    # an epoch at side s costs about (s / size)² of a full-size one (see pretrain.progressive_resize)
    return StepClock(ctx.report.info, recipe.pretrain.epochs, steps,
                     lambda epoch: (epoch_side(recipe.pretrain, epoch, full) / full) ** 2)


def _on_epoch(ctx: Context, recipe, run: _Setup, record: dict[str, Any], snapshot_dir: Path | None,
              stream=None, steps: int = 0) -> None:
    encoder = run.encoder
    at = f" at {record['image_height']}px" if recipe.pretrain.progressive_resize else ""
    scored = ""
    if run.monitor is not None and run.monitor.due(record["epoch"]):
        # kept in the epoch's record, so the checkpoint (and a resumed run's history) holds the curve
        record[run.monitor.key], record["monitor_seconds"] = run.monitor.score(encoder)
        scored = f", {run.monitor.label} {record[run.monitor.key]:.2%} ({record['monitor_seconds']:.1f} s)"
    if stream is not None:
        stream.log({"event": "epoch", "step": record["epoch"] * steps, **record})
        stream.flush()
    ctx.report.info(f"epoch {record['epoch']}{at}: loss {record['loss']:.4f}, "
                    f"embedding spread {record['embedding_spread']:.3f}, "
                    f"rank {record['embedding_rank']:.1f} of {record['embedding_dim']}{scored}")
    every = recipe.pretrain.snapshot_every
    if snapshot_dir is not None and every and record["epoch"] % every == 0:
        # kept beside the checkpoint, so a killed and resumed run keeps its earlier snapshots
        save_module_atomic(encoder, snapshot_dir / f"snapshot-epoch{record['epoch']:04d}.safetensors")
    if record["collapse_warning"]:
        from clt.train import collapse_advice

        ctx.report.warn(f"epoch {record['epoch']}: the embeddings are collapsing (spread "
                        f"{record['embedding_spread']:.3f}, ~1 is healthy; rank {record['embedding_rank']:.1f} "
                        f"of {record['embedding_dim']}, under 2 is one direction): "
                        + collapse_advice(run.params, recipe.pretrain.lr, run.objective, recipe.model.projection_norm))


# ---------------------------------------------------------------- extending a finished run
# A run whose schedule does not depend on its length (no cosine lr, no rising target momentum)
# keeps its last training state in the artifact (resume/): the same recipe with more epochs then
# continues from it and ends exactly where a run of that length from scratch would.
RESUME = "resume"


def _length_dependence(recipe, run: _Setup) -> str | None:
    from clt.train import length_dependence

    if recipe.pretrain.minutes:
        return "its epochs were planned from a time budget"
    return length_dependence(recipe.pretrain, run.objective, run.params)


def _keep_resume_point(work: Path, into: Path, artifact_id: str) -> None:
    """Copy the last checkpoint (the state after the last epoch) into the artifact's resume/ folder."""
    from clt.checkpoint import STATE, TENSORS

    try:
        generation = int(json.loads((work / STATE).read_text())["generation"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # no checkpoint was written (a checkpointer-less run): nothing to extend from
    into.mkdir()
    shutil.copyfile(work / STATE, into / STATE)
    shutil.copyfile(work / f"{generation % 2}.{TENSORS}", into / f"{generation % 2}.{TENSORS}")


def _shorter_runs(ctx: Context, recipe, data_art: Artifact) -> list[Artifact]:
    """Finished encoders of this very recipe and dataset with fewer epochs, longest first."""
    def without_epochs(spec: dict[str, Any]) -> str:
        spec = json.loads(json.dumps(spec))
        epochs = spec.get("recipe", {}).get("pretrain", {}).pop("epochs", None)
        return json.dumps(spec, sort_keys=True) if isinstance(epochs, int) else ""

    wanted = without_epochs(_spec(recipe, data_art))
    found = [a for a in ctx.store.all() if a.kind == "encoder" and not ctx.store.is_stale(a)
             and without_epochs(a.manifest.get("spec", {})) == wanted
             and a.manifest["spec"]["recipe"]["pretrain"]["epochs"] < recipe.pretrain.epochs]
    return sorted(found, key=lambda a: -a.manifest["spec"]["recipe"]["pretrain"]["epochs"])


def _start_from_shorter_run(ctx: Context, recipe, run: _Setup, data_art: Artifact, checkpointer) -> None:
    """Seed the work folder with a shorter finished run's last state when the schedule allows it."""
    from clt.checkpoint import FileCheckpointer

    shorter = _shorter_runs(ctx, recipe, data_art)
    if not shorter:
        return
    done = shorter[0].manifest["spec"]["recipe"]["pretrain"]["epochs"]
    why_not = _length_dependence(recipe, run)
    if why_not:
        ctx.report.info(f"a finished {done}-epoch run of {recipe.name} ({shorter[0].short}) is stored, but "
                        f"{why_not}, so a {recipe.pretrain.epochs}-epoch run starts over (scheduler: none or "
                        "step, and a constant target momentum, can be extended)")
        return
    state = FileCheckpointer(shorter[0].path / RESUME, {"id": shorter[0].id}, writable=False,
                             sign=ctx.store.sign, warn=ctx.report.warn).load()
    if state is not None:
        checkpointer.save(state)
        if (shorter[0].path / METRICS_FILE).is_file():  # the stream goes on from the shorter run's lines
            shutil.copyfile(shorter[0].path / METRICS_FILE, checkpointer.folder / METRICS_FILE)
        ctx.report.info(f"extending the finished {done}-epoch run {shorter[0].short} to "
                        f"{recipe.pretrain.epochs} epochs")


def _write_encoder(tmp: Path, recipe, encoder, history: list[dict[str, Any]], snapshot_dir: Path | None) -> None:
    from clt import plots

    save_module(encoder, tmp / "encoder.safetensors")
    (tmp / "history.json").write_text(json.dumps(history, indent=1))
    if snapshot_dir is not None and (snapshot_dir / METRICS_FILE).is_file():
        shutil.copyfile(snapshot_dir / METRICS_FILE, tmp / METRICS_FILE)
    if history:
        plots.loss_curve(history, tmp / "loss_curve.png", f"{recipe.name}: pretrain loss")
    found = sorted(snapshot_dir.glob("snapshot-*.safetensors")) if snapshot_dir is not None else []
    if found:
        (tmp / "snapshots").mkdir()
        for path in found:
            shutil.copyfile(path, tmp / "snapshots" / path.name)


def _manifest(recipe, run: _Setup, result, device: str) -> dict[str, Any]:
    last = result.history[-1] if result.history else {}
    return {
        "device": device,
        "precision": run.precision,
        "encoder": {"name": recipe.model.encoder, "params": recipe.model.params,
                    "in_shape": list(run.data.in_shape), "out_dim": run.encoder.out_dim},
        "metrics": {"final_loss": last.get("loss"), "epochs": recipe.pretrain.epochs,
                    "embedding_spread": last.get("embedding_spread"),
                    "embedding_rank": last.get("embedding_rank"),
                    "train_seconds": round(result.seconds, 2), "train_images": len(run.data.train),
                    "images_per_second": round(result.images_seen / max(result.seconds, 1e-9), 1),
                    **({f"monitor_{run.monitor.key}": last[run.monitor.key]}
                       if run.monitor and run.monitor.key in last else {})},
        "objective": recipe.objective.name,
        **({"monitor": run.monitor.summary(result.history, result.seconds)} if run.monitor else {}),
    }


def augmenter(recipe, data, views: int):
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
