"""Several processes (GPUs or nodes) through torch.distributed: DDP, and negatives from every rank.

`clt pretrain RECIPE --nproc N` starts N processes with torch's elastic launcher (what
`torchrun --nproc_per_node N -m clt pretrain RECIPE` does; multi-node through torchrun's
rendezvous arguments). Each rank encodes its shard of the global batch; the embeddings of
all ranks are gathered with a gather that sends gradients back to their owners, so SimCLR and
supervised contrastive see all 2·B−2 negatives of the global batch, exactly as one process would.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns each rank's slice of the summed gradient.

    Every rank computes the same global loss, so summing the gradients over ranks gives
    world × the true gradient; DDP's averaging of parameter gradients then restores it.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        size = grad.shape[0] // dist.get_world_size()
        rank = dist.get_rank()
        return grad[rank * size:(rank + 1) * size]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    return _GatherWithGrad.apply(tensor)


@dataclass
class Distributed:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    sync_bn: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def gather(self, z: torch.Tensor, views: int = 1) -> torch.Tensor:
        """(B/world·views, D) per rank -> (B·views, D) on every rank, gradients flowing back.

        With several views the rows are [view 1 of the shard; view 2 of the shard]; they are
        regrouped so the global tensor is [view 1 of all images; view 2 of all images].
        """
        return _regroup(gather_with_grad(z), self.world_size, views)

    def gather_labels(self, labels: torch.Tensor, views: int = 1) -> torch.Tensor:
        parts = [torch.empty_like(labels) for _ in range(self.world_size)]
        dist.all_gather(parts, labels.contiguous())
        return _regroup(torch.cat(parts), self.world_size, views)

    def barrier(self) -> None:
        dist.barrier()

    def broadcast_text(self, text: str) -> str:
        holder = [text]
        dist.broadcast_object_list(holder, src=0)  # rank 0's own string: no untrusted data
        return holder[0]


def _regroup(gathered: torch.Tensor, world: int, views: int) -> torch.Tensor:
    """[rank0: v1, v2 | rank1: v1, v2] -> [v1 of rank0, rank1 | v2 of rank0, rank1]."""
    if views == 1 or world == 1:
        return gathered
    per_rank = gathered.shape[0] // world
    per_view = per_rank // views
    blocks = gathered.reshape(world, views, per_view, *gathered.shape[1:])
    return blocks.transpose(0, 1).reshape(gathered.shape)


def from_environment(device_name: str = "auto", sync_bn: bool = False) -> Distributed | None:
    """Join the process group torchrun set up (WORLD_SIZE > 1), or None for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device_name == "auto" or device_name.startswith("cuda"))
    if use_cuda and local_rank >= torch.cuda.device_count():
        from clt.errors import CltError

        local, visible = os.environ.get("LOCAL_WORLD_SIZE", str(local_rank + 1)), torch.cuda.device_count()
        raise CltError(f"{local} processes on this machine need {local} GPUs, but {visible} visible",
                       f"use --nproc {visible} (one process per GPU), or --device cpu")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Distributed(rank, world, local_rank, device, sync_bn)


def launch(nproc: int, argv: list[str]) -> int:
    """Run `python -m clt ARGV` in nproc processes with torch's elastic launcher."""
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        ["--nproc_per_node", str(nproc), "--standalone", "-m", "clt", *argv])
    try:
        run(args)
    except Exception as err:  # noqa: BLE001 - the children already printed their own errors
        from torch.distributed.elastic.multiprocessing.api import SignalException

        from clt.errors import TrainingError

        if isinstance(err, SignalException) and err.sigval == signal.SIGINT:
            # Ctrl-C: the ranks printed "interrupted" and kept their checkpoint; exit as they did
            raise SystemExit(130) from None

        raise TrainingError(f"{nproc}-process run failed: {type(err).__name__}",
                            "see the first error the ranks printed above") from None
    return 0
