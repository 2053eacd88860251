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
from typing import Any, Callable, Protocol

import torch
from torch import nn

from clt.data.memory import ImageData
from clt.devices import autocast
from clt.errors import TrainingError
from clt.recipe import PretrainConfig
from clt.registry import ObjectiveEntry

COLLAPSE_STD = 0.1  # fraction of the std that uniformly spread unit vectors have (1/sqrt(D))


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


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    images_seen: int = 0
    seconds: float = 0.0
    resumed_from: int | None = None


def make_optimizer(cfg: PretrainConfig | Any, params, lr: float | None = None) -> torch.optim.Optimizer:
    lr = cfg.lr if lr is None else lr
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer in ("sgd", "lars"):
        # LARS's layer-wise scaling matters at batch sizes in the thousands; SGD+momentum stands in
        return torch.optim.SGD(params, lr=lr, momentum=getattr(cfg, "momentum", 0.9),
                               weight_decay=cfg.weight_decay, nesterov=False)
    raise ValueError(cfg.optimizer)


def make_scheduler(cfg: PretrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Per-step schedule: none, step (StepLR in epochs), cosine; optional linear warm-up."""
    total = max(cfg.epochs * steps_per_epoch, 1)
    warmup = cfg.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cfg.scheduler == "step":
            return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size)
        if cfg.scheduler == "cosine":
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def epoch_order(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
    return torch.randperm(n, generator=generator).to(device)


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 7_919 + step * 104_729) % (2**63))


def embedding_spread(z: torch.Tensor) -> float:
    """Std of L2-normalised embeddings per dimension, times sqrt(D): ~1 when spread, 0 when collapsed."""
    z = torch.nn.functional.normalize(z.float(), dim=1)
    return float(z.std(dim=0).mean() * math.sqrt(z.shape[1]))


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
    train = data.train
    if objective.uses_labels and not data.labeled:
        raise TrainingError(f"objective '{objective.name}' needs class labels, but dataset '{data.name}' is unlabeled",
                            "use objective simclr for an unlabeled image folder")
    world = distributed.world_size if distributed else 1
    rank = distributed.rank if distributed else 0
    per_rank = cfg.batch_size // world
    steps_per_epoch = len(train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise TrainingError(f"pretrain.batch_size = {cfg.batch_size} is larger than the {len(train)} training images",
                            f"set --set pretrain.batch_size={max(2, len(train) // 4)}")
    height = data.in_shape[1]
    for side, _ in cfg.progressive_resize:
        if side >= height:
            raise TrainingError(f"pretrain.progressive_resize side {side} is not below the {height}-pixel "
                                f"images of dataset '{data.name}'",
                                f"use sides from 8 to {height - 1}" if height > 8 else
                                "these images are too small to downscale: remove pretrain.progressive_resize")
    optimizer = make_optimizer(cfg, model.parameters())
    scheduler = make_scheduler(cfg, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    result = TrainResult()
    start_epoch, start_step = 0, 0
    resumed_losses: list[float] = []
    state = checkpointer.load() if checkpointer else None
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, start_step = state["epoch"], state["step"]
        result.history = state["history"]
        result.images_seen = int(state.get("images_seen", 0))
        resumed_losses = [float(v) for v in state.get("epoch_losses", [])]
        result.resumed_from = start_epoch * steps_per_epoch + start_step
    started = time.perf_counter() - (state["seconds"] if state else 0.0)
    forward = distributed.wrap(model) if distributed else model

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        order = epoch_order(len(train), seed, epoch, device)
        # an epoch cut by a kill keeps the losses of its steps before the checkpoint
        losses: list[torch.Tensor] = [torch.tensor(v) for v in resumed_losses] if epoch == start_epoch else []
        spread_sample: torch.Tensor | None = None
        first = start_step if epoch == start_epoch else 0
        side = epoch_side(cfg, epoch, height)
        for step in range(first, steps_per_epoch):
            global_step = epoch * steps_per_epoch + step
            batch = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            batch = batch[rank * per_rank:(rank + 1) * per_rank]  # this rank's disjoint shard
            generator = step_generator(seed, global_step * world + rank)
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))  # dropout, per step
            x, y = _views(data, train.images[batch], train.labels[batch], objective.views, augment, generator)
            if side != height:
                x = downscale(x, side)
            with autocast(device, precision):
                z = forward(x)
            if distributed:
                z, y = distributed.gather(z.float(), objective.views), distributed.gather_labels(y, objective.views)
            loss = objective.loss(z.float(), y, params)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} "
                    f"(global step {global_step + 1}); the last good checkpoint is kept",
                    f"lower pretrain.lr (now {cfg.lr:g}) or use --precision fp32 (now {precision})")
            optimizer.zero_grad(set_to_none=True)
            if scaler:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            scheduler.step()
            losses.append(loss.detach())
            spread_sample = z.detach()  # the epoch's last batch: the state the epoch ended in
            result.images_seen += len(x) * world
            if on_step:
                on_step(StepReport(epoch, cfg.epochs, step + 1, steps_per_epoch, float(loss.detach())))
            every = cfg.checkpoint_every
            if checkpointer and every and (global_step + 1) % every == 0 and step + 1 < steps_per_epoch:
                checkpointer.save(_state(model, optimizer, scheduler, epoch, step + 1, result.history,
                                         time.perf_counter() - started, losses, result.images_seen))
        record = {
            "epoch": epoch + 1,
            "loss": float(torch.stack(losses).mean()) if losses else float("nan"),
            "lr": optimizer.param_groups[0]["lr"],
            "embedding_spread": embedding_spread(spread_sample) if spread_sample is not None else float("nan"),
            "image_height": side,
            "seconds": round(time.perf_counter() - started, 3),
        }
        record["collapse_warning"] = record["embedding_spread"] < COLLAPSE_STD
        result.history.append(record)
        if on_epoch:
            on_epoch(record)
        if checkpointer:
            checkpointer.save(_state(model, optimizer, scheduler, epoch + 1, 0, result.history,
                                     time.perf_counter() - started, [], result.images_seen))
    result.seconds = time.perf_counter() - started
    return result


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
