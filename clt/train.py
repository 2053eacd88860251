"""The pretraining loop: no file I/O; progress and checkpoints go through callbacks.

Every step draws its batch by index from uint8 tensors already on the device, builds the
views there, and encodes each image once. Randomness is derived from (seed, epoch) for the
order and (seed, step) for augmentation and dropout, so a run resumed from a checkpoint
follows exactly the path of an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

import torch
from torch import nn

from clt.data.memory import ImageData
from clt.devices import autocast
from clt.errors import DivergenceError, TrainingError
from clt.methods import MethodParts, ViewOutputs
from clt.optim import make_optimizer, make_scheduler
from clt.registry import ObjectiveEntry

if TYPE_CHECKING:  # the loop reads a parsed section; it never parses recipes itself
    from clt.recipe import PretrainConfig

COLLAPSE_STD = 0.1  # fraction of the std that uniformly spread unit vectors have (1/sqrt(D))
# embeddings whose effective rank is below this lie along about one direction, however far they
# spread along it: NNCLR with batch norm in its head read a spread of 0.54 at a rank of 1.5 of 64
# (bench/results/diagnose/projection_norm.md)
COLLAPSE_RANK = 2.0


def is_collapsing(spread: float, rank: float) -> bool:
    """Collapsed to a point (spread) or onto about one direction (effective rank); NaN is neither."""
    return bool(spread < COLLAPSE_STD or rank < COLLAPSE_RANK)


def _one_of(knobs: list[str]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    return " or ".join(filter(None, [", ".join(knobs[:-1]), knobs[-1]]))


def divergence_advice(cfg: PretrainConfig, precision: str, objective: ObjectiveEntry | None = None) -> str:
    """What to change when the loss turns NaN or infinite, naming only what is not tried already."""
    knobs = []
    if not cfg.warmup_epochs:  # the first steps of a fresh network take the largest, least reliable updates
        knobs.append("warm up with pretrain.warmup_epochs: 1")
    knobs.append(f"lower pretrain.lr (now {cfg.lr:g})")
    if cfg.optimizer == "sgd":  # LARS's per-layer trust ratio bounds each layer's step, whatever the loss scale
        knobs.append("use pretrain.optimizer: lars")
    if precision != "fp32":
        knobs.append(f"train in fp32 with --precision fp32 (now {precision})")
    return _one_of(knobs) + _known_recipe(objective)


def _known_recipe(objective: ObjectiveEntry | None) -> str:
    return f"; {objective.known_recipe} is measured to learn with {objective.name}" \
        if objective is not None and objective.known_recipe else ""


def collapse_advice(params: Any, lr: float, objective: ObjectiveEntry | None = None,
                    projection_norm: str = "none") -> str:
    """What to change when an objective's embeddings collapse, naming only the knobs it has: the
    predictor first where it was left out (SimSiam and BYOL collapse without one), then the batch
    norm its reference head has (the cause of BYOL's collapse on CIFAR-10, bench/results/diagnose/)."""
    knobs = []
    if getattr(params, "predictor_hidden", None) == 0:
        knobs.append("give it a predictor (objective.predictor_hidden, e.g. 512)")
    if objective is not None and objective.head_norm and projection_norm == "none":
        knobs.append(f"put batch norm in the projection head (model.projection_norm: {objective.head_norm}, "
                     f"as {objective.name}'s reference head has)")
    knobs.append(f"lower pretrain.lr (now {lr:g})")
    if getattr(params, "temperature", None) is not None:
        knobs.append(f"raise objective.temperature (now {params.temperature:g})")
    if getattr(params, "target_momentum", None) is not None:
        knobs.append(f"slow the target with a higher objective.target_momentum (now {params.target_momentum:g})")
    knobs.append("strengthen pretrain.augment")
    return _one_of(knobs) + _known_recipe(objective)


class Checkpointer(Protocol):
    def save(self, state: dict[str, Any]) -> None: ...
    def load(self) -> dict[str, Any] | None: ...


@dataclass
class StepReport:
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    lr: float = float("nan")  # after this step's scheduler update
    images_seen: int = 0  # by every process, since the run began (a resumed run's included)
    seconds: float = 0.0  # of training since the run began, callbacks' time left out


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    images_seen: int = 0
    seconds: float = 0.0
    resumed_from: int | None = None


def epoch_order(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
    return torch.randperm(n, generator=generator).to(device)


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 7_919 + step * 104_729) % (2**63))


def embedding_spread(z: torch.Tensor, centre: bool = False) -> float:
    """Std of L2-normalised embeddings per dimension, times sqrt(D): ~1 when spread, 0 when collapsed.
    With `centre`, of the embeddings less their mean, for losses blind to a shared offset."""
    z = z.float()
    z = torch.nn.functional.normalize(z - z.mean(0) if centre else z, dim=1)
    return float(z.std(dim=0).mean() * math.sqrt(z.shape[1]))


def embedding_rank(z: torch.Tensor) -> float:
    """Effective rank of the centred embeddings: exp of the entropy of their normalised singular values
    (Roy & Vetterli 2007). D when every direction is used alike, 1 when one is, 0 for a constant.
    It sees what the spread cannot: embeddings spread along a few directions (dimensional collapse)."""
    z = z.float()
    if not bool(torch.isfinite(z).all()):
        return float("nan")
    singular = torch.linalg.svdvals(z - z.mean(0))
    # the centring of a constant leaves rounding noise, whose singular values would read as many directions
    if float(singular.sum()) <= 1e-5 * float(torch.linalg.norm(z)):
        return 0.0
    share = singular / singular.sum()
    share = share[share > 0]
    return float(torch.exp(-(share * share.log()).sum()))


def pretrain(
    model: nn.Module,
    objective: ObjectiveEntry,
    params: Any,
    data: ImageData,
    cfg: PretrainConfig,
    *,
    device: torch.device,
    precision: str,
    seed: int,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    on_step: Callable[[StepReport], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    checkpointer: Checkpointer | None = None,
    distributed: Any = None,
) -> TrainResult:
    """Train `model` (encoder plus optional projection) in place with `objective`."""
    _check_fits(objective, data, cfg)
    steps = len(data.train) // cfg.batch_size
    parts = MethodParts(objective, params, model, output_dim(model) if objective.reads_views else 0, seed).to(device)
    optimizer = make_optimizer(cfg, parts.optimizer_groups(model, cfg.lr))
    loop = _Loop(model, distributed.wrap(model) if distributed else model, objective, params, data, cfg, device,
                 precision, seed, augment, distributed, optimizer, make_scheduler(cfg, optimizer, steps),
                 torch.amp.GradScaler(device.type) if precision == "fp16" else None, steps, on_step, checkpointer,
                 parts)
    start_epoch, start_step, resumed_losses = _resume(loop)
    for epoch in range(start_epoch, cfg.epochs):
        first = start_step if epoch == start_epoch else 0
        # an epoch cut by a kill keeps the losses of its steps before the checkpoint
        record = _epoch(loop, epoch, first, resumed_losses if epoch == start_epoch else [])
        loop.result.history.append(record)
        if on_epoch:
            paused = time.perf_counter()
            on_epoch(record)
            # what the callback does (the kNN monitor, snapshots) is not training time
            loop.started += time.perf_counter() - paused
        if checkpointer:
            checkpointer.save(loop.state(epoch + 1, 0, []))
    loop.result.seconds = time.perf_counter() - loop.started
    return loop.result


def length_dependence(cfg: PretrainConfig, objective: ObjectiveEntry, params: Any) -> str | None:
    """What makes the first epochs of a longer run differ from a shorter one's (None: nothing, so a
    finished run can be extended to more epochs and end exactly where the longer run would)."""
    if cfg.scheduler == "cosine":
        return "its cosine learning-rate schedule spans all the epochs"
    if objective.target and str(getattr(params, "target_momentum_schedule", "cosine")) != "constant":
        return "its target momentum rises over all the epochs (target_momentum_schedule cosine)"
    return None


def output_dim(model: nn.Module) -> int:
    """Width of what `model` outputs: an encoder's out_dim, or its projection head's."""
    if hasattr(model, "out_dim"):
        return model.out_dim
    if isinstance(model, nn.Sequential) and hasattr(model[-1], "out_dim"):
        return model[-1].out_dim
    raise TrainingError(f"{type(model).__name__} has no out_dim, which a predictor or queue needs",
                        "give the encoder (or its last module) an out_dim attribute")


def _check_fits(objective: ObjectiveEntry, data: ImageData, cfg: PretrainConfig) -> None:
    """Refuse, before any work, an objective that needs labels the data lacks, or sizes that do not fit."""
    train = data.train
    if objective.uses_labels and not data.labeled:
        raise TrainingError(f"objective '{objective.name}' needs class labels, but dataset '{data.name}' is unlabeled",
                            "use objective simclr for an unlabeled image folder")
    if len(train) // cfg.batch_size == 0:
        raise TrainingError(f"pretrain.batch_size = {cfg.batch_size} is larger than the {len(train)} training images",
                            f"set --set pretrain.batch_size={max(2, len(train) // 4)}")
    height = data.in_shape[1]
    for side, _ in cfg.progressive_resize:
        if side >= height:
            raise TrainingError(f"pretrain.progressive_resize side {side} is not below the {height}-pixel "
                                f"images of dataset '{data.name}'",
                                f"use sides from 8 to {height - 1}" if height > 8 else
                                "these images are too small to downscale: remove pretrain.progressive_resize")


@dataclass
class _Loop:
    """Everything one training run's steps share."""

    model: nn.Module
    forward: nn.Module
    objective: ObjectiveEntry
    params: Any
    data: ImageData
    cfg: Any
    device: torch.device
    precision: str
    seed: int
    augment: Callable | None
    distributed: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    steps: int
    on_step: Callable[[StepReport], None] | None
    checkpointer: Checkpointer | None
    parts: MethodParts
    result: TrainResult = field(default_factory=TrainResult)
    started: float = 0.0

    @property
    def world(self) -> int:
        return self.distributed.world_size if self.distributed else 1

    @property
    def rank(self) -> int:
        return self.distributed.rank if self.distributed else 0

    def state(self, epoch: int, step: int, losses: list) -> dict[str, Any]:
        state = _state(self.model, self.optimizer, self.scheduler, epoch, step, self.result.history,
                       time.perf_counter() - self.started, losses, self.result.images_seen)
        return {**state, "method": self.parts.state_dict()}  # predictor, momentum target, queue


def _resume(loop: _Loop) -> tuple[int, int, list[float]]:
    """(epoch, step, losses so far in that epoch) to start from: a checkpoint's, or the beginning."""
    state = loop.checkpointer.load() if loop.checkpointer else None
    loop.started = time.perf_counter() - (state["seconds"] if state else 0.0)
    if not state:
        return 0, 0, []
    loop.model.load_state_dict(state["model"])
    loop.optimizer.load_state_dict(state["optimizer"])
    loop.scheduler.load_state_dict(state["scheduler"])
    if "method" in state:
        loop.parts.load_state_dict(state["method"])
    loop.result.history = state["history"]
    loop.result.images_seen = int(state.get("images_seen", 0))
    loop.result.resumed_from = state["epoch"] * loop.steps + state["step"]
    return state["epoch"], state["step"], [float(v) for v in state.get("epoch_losses", [])]


def _epoch(loop: _Loop, epoch: int, first: int, resumed_losses: list[float]) -> dict[str, Any]:
    """Steps `first`.. of one epoch; its record (mean loss, spread and rank of the last batch, lr, height, time)."""
    loop.model.train()
    order = epoch_order(len(loop.data.train), loop.seed, epoch, loop.device)
    losses: list[torch.Tensor] = [torch.tensor(v) for v in resumed_losses]
    spread_sample: torch.Tensor | None = None
    side = epoch_side(loop.cfg, epoch, loop.data.in_shape[1])
    for step in range(first, loop.steps):
        loss, spread_sample = _step(loop, order, epoch, step, side)
        losses.append(loss)  # spread_sample: the epoch's last batch, the state the epoch ended in
        if loop.on_step:
            loop.on_step(StepReport(epoch, loop.cfg.epochs, step + 1, loop.steps, float(loss),
                                    loop.optimizer.param_groups[0]["lr"], loop.result.images_seen,
                                    time.perf_counter() - loop.started))
        every = loop.cfg.checkpoint_every
        global_step = epoch * loop.steps + step
        if loop.checkpointer and every and (global_step + 1) % every == 0 and step + 1 < loop.steps:
            loop.checkpointer.save(loop.state(epoch, step + 1, losses))
    record = {
        "epoch": epoch + 1,
        "loss": float(torch.stack(losses).mean()) if losses else float("nan"),
        "lr": loop.optimizer.param_groups[0]["lr"],
        "embedding_spread": (embedding_spread(spread_sample, loop.objective.offset_invariant)
                             if spread_sample is not None else float("nan")),
        "embedding_rank": embedding_rank(spread_sample) if spread_sample is not None else float("nan"),
        "embedding_dim": int(spread_sample.shape[1]) if spread_sample is not None else 0,
        "image_height": side,
        "seconds": round(time.perf_counter() - loop.started, 3),
    }
    record["collapse_warning"] = is_collapsing(record["embedding_spread"], record["embedding_rank"])
    return record


def _step(loop: _Loop, order: torch.Tensor, epoch: int, step: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on this rank's shard of batch `step`: (loss, embeddings), both detached."""
    cfg, train, world, rank = loop.cfg, loop.data.train, loop.world, loop.rank
    per_rank = cfg.batch_size // world
    global_step = epoch * loop.steps + step
    batch = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
    batch = batch[rank * per_rank:(rank + 1) * per_rank]  # this rank's disjoint shard
    generator = step_generator(loop.seed, global_step * world + rank)
    torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))  # dropout, per step
    x, y = _views(loop.data, train.images[batch], train.labels[batch], loop.objective.views, loop.augment, generator)
    if side != loop.data.in_shape[1]:
        x = downscale(x, side)
    with autocast(loop.device, loop.precision):
        out = loop.parts.outputs(loop.forward(x), y, x)
    out = _gathered(loop, out)
    loss = loop.objective.compute(out, loop.params)
    if not torch.isfinite(loss):
        raise DivergenceError(
            f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} "
            f"(global step {global_step + 1}); the last good checkpoint is kept",
            divergence_advice(cfg, loop.precision, loop.objective))
    loop.optimizer.zero_grad(set_to_none=True)
    if loop.scaler:
        loop.scaler.scale(loss).backward()
        loop.scaler.step(loop.optimizer)
        loop.scaler.update()
    else:
        loss.backward()
        loop.optimizer.step()
    loop.scheduler.step()
    loop.parts.after_step(loop.model, out, global_step + 1, loop.cfg.epochs * loop.steps, _queue_gather(loop))
    loop.result.images_seen += len(x) * world
    return loss.detach(), out.z.detach()


def _queue_gather(loop: _Loop):
    """How the queue gets every rank's rows: objectives that gather already hold them (None);
    the others see only this rank's rows, so the queue gathers them, and every rank's queue is equal."""
    return loop.distributed.gather if loop.distributed and not loop.objective.gather else None


def _gathered(loop: _Loop, out: ViewOutputs) -> ViewOutputs:
    """Every rank's rows, view by view, for objectives that compute over the global batch (NT-Xent's
    negatives, SupCon's positives, Barlow Twins' and VICReg's statistics)."""
    if not (loop.distributed and loop.objective.gather):
        return out
    views, gather = loop.objective.views, loop.distributed.gather
    return ViewOutputs(gather(out.z.float(), views), loop.distributed.gather_labels(out.labels, views),
                       p=gather(out.p.float(), views) if out.p is not None else None,
                       target=gather(out.target.float(), views) if out.target is not None else None,
                       queue=out.queue)


def epoch_side(cfg: PretrainConfig, epoch: int, full: int) -> int:
    """The image height that 0-based `epoch` trains at under `cfg.progressive_resize`."""
    end = 0
    for side, epochs in cfg.progressive_resize:
        end += epochs
        if epoch < end:
            return side
    return full


def downscale(x: torch.Tensor, side: int) -> torch.Tensor:
    """(N, C, H, W) -> height `side`, width in proportion; antialiased, so no aliasing of fine detail."""
    height, width = x.shape[-2:]
    size = (side, max(1, round(width * side / height)))
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def _views(data: ImageData, images: torch.Tensor, labels: torch.Tensor, views: int,
           augment: Callable | None, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 batch -> normalised float input: `views` augmented copies stacked along the batch."""
    x = images.float().div_(255)
    if views > 1:
        x = torch.cat([augment(x, generator) if augment else x for _ in range(views)])
        labels = labels.repeat(views)
    elif augment:
        x = augment(x, generator)
    return data.normalize(x), labels


def _state(model, optimizer, scheduler, epoch, step, history, seconds, losses, images_seen) -> dict[str, Any]:
    return {
        "epoch_losses": [float(v) for v in losses],
        "images_seen": images_seen,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "step": step,
        "history": list(history),
        "seconds": seconds,
    }
