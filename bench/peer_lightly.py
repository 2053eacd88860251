"""clt's SimCLR step against lightly's loop as its docs write it, on this machine, in one process.

lightly (not a dependency of clt) goes into a bench-only folder, for example:

    pip install --no-deps --target ../lightly_env lightly hydra-core omegaconf \\
        antlr4-python3-runtime tqdm pytorch_lightning lightning_utilities torchmetrics
    PYTHONPATH=../lightly_env python bench/peer_lightly.py --artifacts STORE --steps 6

Both train torchvision's ResNet-18 with the CIFAR stem (3x3 stride-1 first convolution, no
max-pool) and a 512-512-128 projection head (lightly's with batch norm) with NT-Xent at temperature 0.5, SGD (lr 0.3,
momentum 0.9, weight decay 1e-6, as the clt recipe), batch 256 (two views each) on CIFAR-10 train images from clt's
store. lightly: its SimCLRTransform (input 32, no blur, as its CIFAR-10 benchmark) on PIL images
through a DataLoader with --workers processes, NTXentLoss. clt: `clt.pretrain` of
recipes/cifar10_simclr_r18.yaml on a train_limit of steps x batch images for one epoch, at fp32
and at the recipe's precision. Reported: views/s after the first (warm-up) step, the share of
lightly's step spent waiting for data, the process's peak resident memory after each part.

With --minutes M, instead: both SimCLR loops at equal wall time on clt's CPU recipe's encoder
(recipes/cifar10_simclr_cpu.yaml: ResNet-20 width 16, projection 64-64, NT-Xent 0.5, SGD lr 0.3
cosine, weight decay 1e-4, batch 256). clt goes first through `clt.pretrain`, for the whole epochs
(its cosine schedule is per epoch) that a timed 10-step trial says fit M minutes; then lightly
trains for the steps that a 10-step trial of its own says fill clt's measured wall time (its
schedule is per step, so it ends there), with its SimCLRTransform through a DataLoader, its
SimCLRProjectionHead(64, 64, 64) and NTXentLoss on a fresh copy of the same encoder. Both are then
scored by the same code here: features of all 50,000 train and 10,000 test images (each with the
normalisation it trained with), a 200-NN vote (cosine, weights exp(s / 0.1)) and a linear probe (30
epochs of Adam, lr 1e-3, batch 256) on all labels.

With --epochs N, instead: equal epochs, method by method (--method, default simclr; the issue #30
protocol is ResNet-20 w16 on CIFAR-10, batch 256, N = 10, the same precision on both sides):

    PYTHONPATH=../lightly_env python bench/peer_lightly.py --artifacts STORE --method byol --epochs 10

clt: `clt.pretrain` of recipes/cifar10_<method>_cpu.yaml with pretrain.epochs=N, batch --batch,
the precision --precision resolves to (auto: bf16 where the CPU has native bf16 kernels, as clt's
`auto`) and the online monitor that `bench/equal_budget.py --monitor-points 10` sets: at batch 256
and N = 10 that is the recipe of the methods_10ep row, so a store holding that row's encoder,
trained by the same clt code (an artifact's address includes the code's fingerprint), answers clt's
side from the store. lightly: the training loop its docs and CIFAR-10 benchmark write for that method
(docs/source/getting_started/benchmarks/cifar10_benchmark.py, examples/pytorch/<method>.py), on a
fresh copy of the same encoder (the clt run's encoder, every layer re-initialised, 64-d features):
its transforms on PIL images through a DataLoader (SimCLRTransform with cj_strength 0.5 for SimCLR,
MoCo and NNCLR; BYOLTransform's two views for BYOL and Barlow Twins; SimSiamTransform for SimSiam;
VICRegTransform for VICReg; input_size 32 and no blur, as the benchmark), its heads and losses, SGD
with lr 0.06 x batch/128 (SimSiam: 0.06, unscaled, as the benchmark), momentum 0.9, weight decay
5e-4 and a per-epoch cosine schedule (CosineAnnealingLR over N epochs, as the benchmark's
Lightning modules step it). Per method:
  simclr        SimCLRProjectionHead, NTXentLoss(0.5)
  moco          MoCoProjectionHead (v2: no batch norm), NTXentLoss(0.1) with a 4,096 memory bank,
                momentum encoder and head (update_momentum, m 0.99 fixed, as the benchmark),
                batch_shuffle / batch_unshuffle of the keys, the symmetric loss
  byol          BYOLProjectionHead, BYOLPredictionHead, NegativeCosineSimilarity (symmetric),
                momentum m = cosine_schedule(step, steps, 0.99, 1.0) per step (the ImageNet
                benchmark's schedule from the CIFAR-10 benchmark's 0.99)
  simsiam       the benchmark's 2-layer projection head (linear-BN-ReLU, linear-BN: lightly's
                ProjectionHead), SimSiamPredictionHead, NegativeCosineSimilarity, stop-gradient
  barlow_twins  the benchmark's 2-layer projection head (linear-BN-ReLU, linear), BarlowTwinsLoss
  nnclr         the benchmark's 2-layer projection head (linear-BN-ReLU, linear-BN),
                NNCLRPredictionHead, NNMemoryBankModule of 4,096, NTXentLoss(0.5)
  vicreg        (not in lightly's CIFAR-10 benchmark: its example's head and the benchmark's
                optimiser) VICRegProjectionHead with 2 layers, VICRegLoss
--paper-heads uses lightly's named 3-layer classes instead of the benchmark's 2-layer CIFAR heads
(SimSiamProjectionHead, BarlowTwinsProjectionHead, NNCLRProjectionHead; VICRegProjectionHead, 3 layers).
What was scaled: the benchmark's heads take ResNet-18's 512-d features; here the encoder gives 64,
so every head width is divided by --head-divisor (512 / 64 = 8): SimCLR and MoCo 64-64-16 (from
512-512-128), BYOL 64-128-32 and predictor 32-128-32 (512-1024-256, 256-1024-256), SimSiam 64-256-256
and predictor 256-64-256 (512-2048-2048, 2048-512-2048), Barlow Twins 64-256-256 (512-2048-2048),
NNCLR 64-256-32 and predictor 32-512-32 (512-2048-256, 256-4096-256), VICReg 64-256-256 (the
example's 512-2048-2048). The memory banks keep 4,096 entries (a count, not a width). What was not
kept: the benchmark's ResNet-18 (both sides train clt's encoder) and, for MoCo, its split batch norm
(num_splits 8), which belongs to that backbone. In bf16 both sides run the forward passes under
torch.autocast and the loss in fp32 (clt's loop does the same). Both encoders are scored by the
same 200-NN and linear probe as above; bench/results/peer_lightly/<method>_<N>ep_<precision>.json
(_limitL appended with --train-limit L) gets date, commit, machine, command, both sides' figures
and their pretrain wall times. These are long runs: their wall times are not throughput (measure
that with the steps mode on quiet cores).
--train-limit with --no-score is a smoke run of the code paths (e.g. --epochs 1 --train-limit 512).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
from images import cpu_model, cpu_name
from published import trial_step_seconds
from records import command_line, git_commit, write_record

import clt
from clt.atomic import written_aside

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
PCT = {"format": "pct", "digits": 2}  # a record figure's format: a fraction shown as a percentage
VIEWS = {"format": "num", "digits": 1}


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Pictures:
    """What torchvision's CIFAR10 hands a transform: PIL images (a map-style dataset, picklable for workers)."""

    def __init__(self, images: np.ndarray, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i].transpose(1, 2, 0))), 0


def lightly_loop(images: np.ndarray, steps: int, batch: int, workers: int) -> dict:
    import torch
    import torchvision
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform

    transform = SimCLRTransform(input_size=32, gaussian_blur=0.0)
    resnet = torchvision.models.resnet18()
    resnet.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    resnet.maxpool = torch.nn.Identity()
    resnet.fc = torch.nn.Identity()
    model = torch.nn.Sequential(resnet, SimCLRProjectionHead(512, 512, 128))
    criterion = NTXentLoss(temperature=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-6)
    loader = torch.utils.data.DataLoader(Pictures(images, transform), batch_size=batch, shuffle=True,
                                         drop_last=True, num_workers=workers)
    waits, steps_s = [], []
    it = iter(loader)
    for _ in range(steps):
        started = time.perf_counter()
        (x0, x1), _ = next(it)
        loaded = time.perf_counter()
        loss = criterion(model(x0), model(x1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        waits.append(loaded - started)
        steps_s.append(time.perf_counter() - started)
    warm = steps_s[1:] or steps_s
    return {"views_per_s": round(2 * batch * len(warm) / sum(warm), 1),
            "data_share": round(sum(waits[1:] or waits) / sum(warm), 3), "peak_mib": round(peak_mib())}


def clt_run(store, steps: int, batch: int, precision: str) -> dict:
    recipe = ROOT / "recipes" / "cifar10_simclr_r18.yaml"
    result = clt.pretrain(recipe, store=store, overrides=[
        "pretrain.epochs=1", "pretrain.warmup_epochs=0", f"data.train_limit={steps * batch}",
        f"pretrain.batch_size={batch}", f"pretrain.precision={precision}"])
    metrics = result.metrics
    return {"views_per_s": metrics["images_per_second"], "train_seconds": metrics["train_seconds"],
            "precision": result.manifest["precision"], "peak_mib": round(peak_mib()), "id": result.id}

CPU_RECIPE = ROOT / "recipes" / "cifar10_simclr_cpu.yaml"
TRIAL_STEPS = 10


def lightly_simclr(encoder, images: np.ndarray, batch: int, workers: int):
    """lightly's documented SimCLR pieces around `encoder`: its transform on PIL images through a
    DataLoader, its projection head and NT-Xent; the step returns the loss."""
    import torch
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform

    transform = SimCLRTransform(input_size=32, gaussian_blur=0.0)
    model = torch.nn.Sequential(encoder, SimCLRProjectionHead(encoder.out_dim, 64, 64))
    loader = torch.utils.data.DataLoader(Pictures(images, transform), batch_size=batch, shuffle=True,
                                         drop_last=True, num_workers=workers, persistent_workers=workers > 0)
    return model, loader, NTXentLoss(temperature=0.5)


def lightly_train(encoder, images: np.ndarray, steps: int, args) -> dict:
    """Trains for `steps` with SGD and a per-step cosine schedule that ends with the last step."""
    import torch

    model, loader, criterion = lightly_simclr(encoder, images, args.batch, args.workers)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    started, done, seconds = time.perf_counter(), 0, []
    while done < steps:
        for (x0, x1), _ in loader:
            loss = criterion(model(x0), model(x1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            done += 1
            seconds.append(time.perf_counter() - started)
            if done == steps:
                break
    return {"steps": steps, "seconds": seconds[-1], "loss": float(loss.detach()),
            "per_step_s": (seconds[-1] - seconds[0]) / max(1, len(seconds) - 1)}


def features(module, images, mean, std):
    """L2-normalised features of uint8 images (N, 3, H, W), no augmentation, no gradient."""
    import torch

    module.eval()
    mean, std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        out = [module((images[i:i + 1024].float() / 255 - mean) / std) for i in range(0, len(images), 1024)]
    return torch.nn.functional.normalize(torch.cat(out), dim=1)


def knn_accuracy(train_f, train_y, test_f, test_y, k: int = 200, temperature: float = 0.1) -> float:
    import torch

    correct = 0
    for i in range(0, len(test_f), 1000):
        sims, idx = (test_f[i:i + 1000] @ train_f.T).topk(k, dim=1)
        votes = torch.zeros(len(idx), int(train_y.max()) + 1).scatter_add_(1, train_y[idx], (sims / temperature).exp())
        correct += int((votes.argmax(1) == test_y[i:i + 1000]).sum())
    return correct / len(test_f)


def linear_accuracy(train_f, train_y, test_f, test_y, epochs: int = 30, seed: int = 0) -> float:
    import torch

    torch.manual_seed(seed)
    mean, std = train_f.mean(0), train_f.std(0).clamp_min(1e-6)  # standardised, as clt's probe does
    train_f, test_f = (train_f - mean) / std, (test_f - mean) / std
    head = torch.nn.Linear(train_f.shape[1], int(train_y.max()) + 1)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(train_f)).split(256):
            loss = torch.nn.functional.cross_entropy(head(train_f[idx]), train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return float((head(test_f).argmax(1) == test_y).float().mean())


def scores(module, data, mean, std) -> dict:
    """200-NN and linear accuracy on the test images; the train images are the neighbours and the probe's data."""
    train = data.train
    train_f, test_f = features(module, train.images, mean, std), features(module, data.test.images, mean, std)
    return {"knn200": knn_accuracy(train_f, train.labels, test_f, data.test.labels),
            "linear": linear_accuracy(train_f, train.labels, test_f, data.test.labels)}


def fresh_copy(module):
    """A copy of `module` with every layer re-initialised: the same encoder, untrained."""
    import copy

    fresh = copy.deepcopy(module)
    for layer in fresh.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    return fresh


def clt_equal_time(store, data, args) -> tuple[dict, object]:
    """clt's recipe for about args.minutes; returns its figures and a fresh copy of its encoder. The
    store caches both pretrain calls by their inputs, so a rerun of the same command reuses them."""
    result, epochs = clt_encoder_run(store, data, args)
    encoder = clt.load_encoder(result.id, store=store, device="cpu")
    fresh = fresh_copy(encoder.module)
    figures = {"epochs": epochs, "seconds": result.manifest.get("wall_time_s"),
               "id": result.id, "precision": result.manifest.get("precision"),
               **scores(encoder.module, data, encoder.mean, encoder.std)}
    return figures, fresh


def clt_encoder_run(store, data, args):
    """Whole epochs, since the recipe's cosine schedule is per epoch: as many as fit args.minutes."""
    per_step = trial_step_seconds(CPU_RECIPE, [f"pretrain.batch_size={args.batch}", *args.set], args.batch,
                                  TRIAL_STEPS, store=store)
    epochs = max(1, round(args.minutes * 60 / (per_step * (len(data.train) // args.batch))))
    print(f"== clt: {per_step:.2f} s per step -> {epochs} epochs", file=sys.stderr, flush=True)
    return clt.pretrain(CPU_RECIPE, store=store, overrides=[
        f"pretrain.batch_size={args.batch}", *args.set, f"pretrain.epochs={epochs}",
        f"data.train_limit={args.train_limit}"]), epochs


def lightly_equal_time(fresh, data, seconds: float, args) -> dict:
    """lightly's loop for the steps that fill `seconds`, clt's measured wall time: its schedule is per
    step, so it need not stop at a whole epoch (whole epochs would miss by up to half of one)."""
    import copy

    from lightly.transforms.utils import IMAGENET_NORMALIZE

    images = data.train.images.numpy()
    per_step = lightly_train(copy.deepcopy(fresh), images, TRIAL_STEPS, args)["per_step_s"]
    steps = max(1, round(seconds / per_step))
    epochs = steps / (len(images) // args.batch)
    print(f"== lightly: {per_step:.2f} s per step -> {steps} steps ({epochs:.2f} epochs)", file=sys.stderr, flush=True)
    run = lightly_train(fresh, images, steps, args)
    return {"epochs": round(epochs, 2), "seconds": round(run["seconds"], 1), "precision": "fp32",
            **scores(fresh, data, IMAGENET_NORMALIZE["mean"], IMAGENET_NORMALIZE["std"])}


def equal_time(store, args) -> None:
    import lightly
    import torch

    torch.manual_seed(args.seed)
    data = clt.load_dataset("cifar10", store=store)
    if args.train_limit:  # a seeded random subset: the stored train images are sorted by class
        keep = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(args.seed))
        data.train = data.train.subset(keep[:args.train_limit])
    figures = {}
    figures["clt"], fresh = clt_equal_time(store, data, args)
    print(json.dumps(figures), flush=True)
    lightly_side = lightly_equal_time(fresh, data, figures["clt"]["seconds"], args)
    figures[f"lightly {lightly.__version__}"] = lightly_side
    command = command_line("peer_lightly.py", STORE=args.artifacts)
    rows = [f"| {name} | {f['epochs']} | {f['seconds'] / 60:.1f} min | {f['precision']} | {100 * f['knn200']:.2f} | "
            f"{100 * f['linear']:.2f} |" for name, f in figures.items()]
    text = "\n".join(["| loop | epochs | pretrain wall time | precision | 200-NN % | linear % |",
                      "|---|---|---|---|---|---|", *rows])
    text += f"\n\nCommand: `{command}` ({args.minutes:g} minutes each, batch {args.batch}), on {cpu_model()}.\n"
    clt_side = figures["clt"]
    write_results(
        "peer_lightly_equal_time", text, {**figures, "command": command}, command=command,
        title=f"SimCLR at equal wall time: clt against lightly {lightly.__version__}, ResNet-20 w16, "
              f"{clt_side['precision']}",
        protocol=f"{args.minutes:g} minutes of pretraining each, then 200-NN over all {len(data.train):,} train "
                 "images and a 30-epoch linear probe; one seed",
        figures={"clt 200-NN %": {"path": "clt.knn200", **PCT}, "clt linear %": {"path": "clt.linear", **PCT},
                 "clt epochs": {"path": "clt.epochs", "format": "num", "digits": 0},
                 # "lightly 1.6.0" holds dots, which a figure's path cannot name: its numbers are written out
                 **lightly_figures(lightly_side)})
    print(text)


METHODS = ("simclr", "moco", "byol", "simsiam", "barlow_twins", "nnclr", "vicreg")
MEMORY_BANK = 4096  # lightly's CIFAR-10 benchmark, MoCo and NNCLR


def benchmark_head(dims: tuple[int, int, int], last_norm: bool):
    """The CIFAR-10 benchmark's 2-layer projection head from lightly's ProjectionHead: linear-BN-ReLU,
    then linear (with batch norm after it where `last_norm`)."""
    from lightly.models.modules.heads import ProjectionHead
    from torch import nn

    d_in, hidden, out = dims
    return ProjectionHead([(d_in, hidden, nn.BatchNorm1d(hidden), nn.ReLU()),
                           (hidden, out, nn.BatchNorm1d(out) if last_norm else None, None)])


def momentum_copy(module):
    """A frozen copy for the momentum (teacher / key) branch, as lightly's examples make it."""
    import copy

    from lightly.models.utils import deactivate_requires_grad

    twin = copy.deepcopy(module)
    deactivate_requires_grad(twin)
    return twin


def lightly_method(method: str, encoder, args):
    """lightly's pieces for `method` around `encoder`: (model, transform, base lr, loss) where
    loss(x0, x1, step, steps, amp) is one training step's loss, its forward passes inside the
    context `amp` returns and the loss itself in fp32. Widths: the benchmark's, over args.head_divisor."""
    import torch
    from lightly import loss as losses
    from lightly.models.modules import heads
    from lightly.models.modules.nn_memory_bank import NNMemoryBankModule
    from lightly.models.utils import batch_shuffle, batch_unshuffle, update_momentum
    from lightly.transforms import (
        BYOLTransform,
        BYOLView1Transform,
        BYOLView2Transform,
        SimCLRTransform,
        SimSiamTransform,
        VICRegTransform,
    )
    from lightly.utils.scheduler import cosine_schedule

    d, k = encoder.out_dim, args.head_divisor
    scaled_lr = 0.06 * args.batch / 128
    simclr_views = SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)
    byol_views = BYOLTransform(view_1_transform=BYOLView1Transform(input_size=32, gaussian_blur=0.0),
                               view_2_transform=BYOLView2Transform(input_size=32, gaussian_blur=0.0))
    model = torch.nn.ModuleDict({"backbone": encoder})
    enc = encoder

    if method in ("simclr", "barlow_twins", "vicreg"):  # one projection head, a loss on the two views
        if method == "simclr":
            head, transform, criterion = (heads.SimCLRProjectionHead(d, 512 // k, 128 // k), simclr_views,
                                          losses.NTXentLoss(temperature=0.5))
        elif method == "barlow_twins":
            head = (heads.BarlowTwinsProjectionHead(d, 2048 // k, 2048 // k) if args.paper_heads
                    else benchmark_head((d, 2048 // k, 2048 // k), last_norm=False))
            transform, criterion = byol_views, losses.BarlowTwinsLoss()
        else:
            head = heads.VICRegProjectionHead(d, 2048 // k, 2048 // k, num_layers=3 if args.paper_heads else 2)
            transform, criterion = VICRegTransform(input_size=32, gaussian_blur=0.0), losses.VICRegLoss()
        model["head"] = head

        def loss(x0, x1, step, steps, amp):
            with amp():
                z0, z1 = head(enc(x0)), head(enc(x1))
            return criterion(z0.float(), z1.float())

        return model, transform, scaled_lr, loss

    if method == "moco":
        head = heads.MoCoProjectionHead(d, 512 // k, 128 // k)
        enc_m, head_m = momentum_copy(enc), momentum_copy(head)
        criterion = losses.NTXentLoss(temperature=0.1, memory_bank_size=(MEMORY_BANK, 128 // k))
        model.update({"head": head, "backbone_momentum": enc_m, "head_momentum": head_m, "criterion": criterion})

        def half(queries, keys, amp):
            keys, shuffle = batch_shuffle(keys)
            with amp():
                q, key = head(enc(queries)), head_m(enc_m(keys))
            return q.float(), batch_unshuffle(key.float(), shuffle).detach()

        def loss(x0, x1, step, steps, amp):
            update_momentum(enc, enc_m, m=0.99)
            update_momentum(head, head_m, m=0.99)
            return 0.5 * (criterion(*half(x0, x1, amp)) + criterion(*half(x1, x0, amp)))

        return model, simclr_views, scaled_lr, loss

    if method == "byol":
        head = heads.BYOLProjectionHead(d, 1024 // k, 256 // k)
        predictor = heads.BYOLPredictionHead(256 // k, 1024 // k, 256 // k)
        enc_m, head_m = momentum_copy(enc), momentum_copy(head)
        model.update({"head": head, "predictor": predictor, "backbone_momentum": enc_m, "head_momentum": head_m})
        criterion = losses.NegativeCosineSimilarity()

        def loss(x0, x1, step, steps, amp):
            m = cosine_schedule(step, steps, 0.99, 1.0)
            update_momentum(enc, enc_m, m=m)
            update_momentum(head, head_m, m=m)
            with amp():
                p0, p1 = predictor(head(enc(x0))), predictor(head(enc(x1)))
                z0, z1 = head_m(enc_m(x0)).detach(), head_m(enc_m(x1)).detach()
            return 0.5 * (criterion(p0.float(), z1.float()) + criterion(p1.float(), z0.float()))

        return model, byol_views, scaled_lr, loss

    if method == "simsiam":
        head = (heads.SimSiamProjectionHead(d, 2048 // k, 2048 // k) if args.paper_heads
                else benchmark_head((d, 2048 // k, 2048 // k), last_norm=True))
        predictor = heads.SimSiamPredictionHead(2048 // k, 512 // k, 2048 // k)
        model.update({"head": head, "predictor": predictor})
        criterion = losses.NegativeCosineSimilarity()

        def loss(x0, x1, step, steps, amp):
            with amp():
                z0, z1 = head(enc(x0)), head(enc(x1))
                p0, p1 = predictor(z0), predictor(z1)
            z0, z1 = z0.detach().float(), z1.detach().float()
            return 0.5 * (criterion(z0, p1.float()) + criterion(z1, p0.float()))

        return model, SimSiamTransform(input_size=32, gaussian_blur=0.0), 0.06, loss  # lr not scaled

    if method == "nnclr":
        head = (heads.NNCLRProjectionHead(d, 2048 // k, 256 // k) if args.paper_heads
                else benchmark_head((d, 2048 // k, 256 // k), last_norm=True))
        predictor = heads.NNCLRPredictionHead(256 // k, 4096 // k, 256 // k)
        bank = NNMemoryBankModule(size=(MEMORY_BANK, 256 // k))
        model.update({"head": head, "predictor": predictor, "bank": bank})
        criterion = losses.NTXentLoss(temperature=0.5)

        def loss(x0, x1, step, steps, amp):
            with amp():
                z0, z1 = head(enc(x0)), head(enc(x1))
                p0, p1 = predictor(z0), predictor(z1)
            z0 = bank(z0.detach().float(), update=False)
            z1 = bank(z1.detach().float(), update=True)
            return 0.5 * (criterion(z0, p1.float()) + criterion(z1, p0.float()))

        return model, simclr_views, scaled_lr, loss
    raise ValueError(f"no lightly loop for {method!r}: one of {', '.join(METHODS)}")


def lightly_epochs(encoder, images: np.ndarray, precision: str, args) -> dict:
    """lightly's loop for args.method, args.epochs whole epochs: SGD (momentum 0.9, weight decay
    5e-4) with the benchmark's per-epoch cosine schedule. Stops at a loss that is not finite."""
    import contextlib
    import math

    import torch

    model, transform, lr, step_loss = lightly_method(args.method, encoder, args)
    loader = torch.utils.data.DataLoader(Pictures(images, transform), batch_size=args.batch, shuffle=True,
                                         drop_last=True, num_workers=args.workers,
                                         persistent_workers=args.workers > 0)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trained, lr=lr, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs)
    if precision == "fp32":
        amp = contextlib.nullcontext
    else:
        def amp():
            return torch.autocast("cpu", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    steps, step, epoch_losses, diverged = args.epochs * len(loader), 0, [], None
    started = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        total = 0.0
        for (x0, x1), _ in loader:
            loss = step_loss(x0, x1, step, steps, amp)
            value = float(loss.detach())
            if not math.isfinite(value):
                diverged = f"the loss became {value} at epoch {epoch + 1}, step {step + 1}"
                break
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += value
            step += 1
        if diverged:
            break
        schedule.step()
        epoch_losses.append(round(total / len(loader), 4))
        print(f"== lightly {args.method} epoch {epoch + 1}/{args.epochs}: loss {epoch_losses[-1]} "
              f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    return {"seconds": round(time.perf_counter() - started, 1), "steps": step, "lr": lr,
            "epoch_losses": epoch_losses, "diverged": diverged}


def provenance(started: float, args) -> dict:
    import subprocess

    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    return {"date": time.strftime("%Y-%m-%d"), "commit": git_commit(), "dirty": bool(status), "machine": cpu_model(),
            "total_s": round(time.time() - started, 1),
            "command": command_line("peer_lightly.py", STORE=args.artifacts)}


def equal_epochs(store, args) -> None:
    """clt's recipe for args.method and lightly's loop for it, args.epochs each, the same precision."""
    import lightly
    import torch
    from lightly.transforms.utils import IMAGENET_NORMALIZE

    from clt.devices import resolve_precision

    started = time.time()
    precision = resolve_precision(args.precision, torch.device("cpu"))
    torch.manual_seed(args.seed)
    data = clt.load_dataset("cifar10", store=store)
    if args.train_limit:  # a seeded random subset for lightly and the read-out; clt takes its own
        keep = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(args.seed))
        data.train = data.train.subset(keep[:args.train_limit])
    recipe = ROOT / "recipes" / f"cifar10_{args.method}_cpu.yaml"
    # precision as given (clt resolves `auto` as above) and the online monitor of
    # `bench/equal_budget.py --monitor-points 10`: the recipe is then the methods_10ep row's, so a
    # store that holds that row's encoder from the same code answers clt's side without training it
    every = max(1, args.epochs // 10)
    result = clt.pretrain(recipe, store=store, overrides=[
        f"pretrain.batch_size={args.batch}", f"pretrain.epochs={args.epochs}", f"pretrain.precision={args.precision}",
        f"pretrain.monitor={{knn: 200, every: {every}, train: 10000, test: 2000}}",
        f"data.train_limit={args.train_limit}", *args.set])
    encoder = clt.load_encoder(result.id, store=store, device="cpu")
    clt_side = {"recipe": recipe.name, "id": result.id, "epochs": args.epochs,
                "precision": result.manifest.get("precision"), "seconds": result.manifest.get("wall_time_s"),
                "train_seconds": result.metrics.get("train_seconds")}
    torch.manual_seed(args.seed)  # the same initial weights whether clt's run was cached or not
    fresh = fresh_copy(encoder.module)
    if not args.no_score:
        clt_side.update(scores(encoder.module, data, encoder.mean, encoder.std))
    print(json.dumps({"clt": clt_side}), flush=True)
    run = lightly_epochs(fresh, data.train.images.numpy(), precision, args)
    lightly_side = {"epochs": args.epochs, "precision": precision, **run}
    if not args.no_score and not run["diverged"]:
        lightly_side.update(scores(fresh, data, IMAGENET_NORMALIZE["mean"], IMAGENET_NORMALIZE["std"]))
    figures = {"method": args.method, "epochs": args.epochs, "batch": args.batch, "precision": precision,
               "train_images": len(data.train), "head_divisor": args.head_divisor, "paper_heads": args.paper_heads,
               "clt": clt_side, f"lightly {lightly.__version__}": lightly_side, **provenance(started, args)}
    limited = f"_limit{args.train_limit}" if args.train_limit else ""
    out = RESULTS / "peer_lightly" / f"{args.method}_{args.epochs}ep_{precision}{limited}.json"
    write_record(out, figures, **equal_epochs_header(figures, lightly_side, args))
    for name, side in (("clt", clt_side), (f"lightly {lightly.__version__}", lightly_side)):
        read_out = (f"200-NN {100 * side['knn200']:.2f} %, linear {100 * side['linear']:.2f} %" if "knn200" in side
                    else "not scored")
        print(f"{args.method} {name}: {args.epochs} epochs, {precision}, {side['seconds']} s, {read_out}")
    print(f"-> {out}")



def write_results(name: str, table: str, data: dict, *, title: str, command: str, protocol: str,
                  figures: dict) -> None:
    """bench/results/NAME.md and the record NAME.json, each written aside and renamed into place."""
    with written_aside(RESULTS / f"{name}.md") as tmp:
        tmp.write_text(table)
    write_record(RESULTS / f"{name}.json", data, study="simclr_cpu", title=title, command=command,
                 protocol=protocol, figures=figures)


def lightly_figures(side: dict) -> dict:
    """lightly's side of a comparison as written-out figures (what it has: an unscored run has no read-out)."""
    shown = {"200-NN %": ("knn200", lambda v: f"{100 * v:.2f}"), "linear %": ("linear", lambda v: f"{100 * v:.2f}"),
             "epochs": ("epochs", str), "pretrain s": ("seconds", lambda v: f"{v:,.0f}")}
    out = {f"lightly {label}": show(side[key]) for label, (key, show) in shown.items() if side.get(key) is not None}
    if side.get("diverged"):
        out["lightly diverged"] = str(side["diverged"])
    return out


def equal_epochs_header(figures: dict, lightly_side: dict, args) -> dict:
    """The record header of an equal-epochs run: under the fixed 10-epoch protocol of each method when it
    is one, with the diagnoses otherwise (fewer epochs, a train limit, a smoke run)."""
    scored = "" if args.no_score else "; 200-NN and a 30-epoch linear probe on all labels, the same code for both"
    heads = "lightly's named 3-layer heads" if args.paper_heads else "lightly's CIFAR-10 benchmark heads"
    clt_figures = {"clt pretrain s": {"path": "clt.seconds", "format": "num", "digits": 0}}
    if "knn200" in figures["clt"]:
        clt_figures |= {"clt 200-NN %": {"path": "clt.knn200", **PCT}, "clt linear %": {"path": "clt.linear", **PCT}}
    return {"study": "methods_10ep" if args.epochs == 10 and not args.train_limit else "diagnose",
            "title": f"{args.method}, {args.epochs} epochs: clt against lightly's loop, ResNet-20 w16, "
                     f"{figures['precision']}",
            "command": figures["command"],
            "protocol": f"CIFAR-10, {figures['train_images']:,} train images, batch {args.batch}, both sides in "
                        f"{figures['precision']}; {heads} with widths over {args.head_divisor}{scored}",
            "figures": {**clt_figures, **lightly_figures(lightly_side)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", required=True, help="a store holding the cifar10 dataset")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="instead: clt and lightly at equal wall time on the CPU recipe's encoder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-limit", "--limit", type=int, default=0,
                        help="with --minutes or --epochs, a quick check: pretrain and score with this many "
                             "train images (0: all)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="with --minutes or --epochs: one more override of clt's recipe, e.g. "
                             "pretrain.channels_last=true")
    parser.add_argument("--epochs", type=int, default=0,
                        help="instead: clt's recipe and lightly's loop for --method at this many epochs each")
    parser.add_argument("--method", choices=METHODS, default="simclr", help="with --epochs: which method")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="with --epochs: both sides' precision (auto: as clt resolves it on this CPU)")
    parser.add_argument("--head-divisor", type=int, default=8,
                        help="with --epochs: lightly's head widths are its CIFAR-10 benchmark's over this "
                             "(512-d ResNet-18 features / 64-d encoder = 8)")
    parser.add_argument("--paper-heads", action="store_true",
                        help="with --epochs: lightly's named 3-layer heads for SimSiam, Barlow Twins, NNCLR "
                             "and VICReg instead of the CIFAR-10 benchmark's 2-layer ones")
    parser.add_argument("--no-score", action="store_true",
                        help="with --epochs: skip the 200-NN and linear read-outs (a smoke run of the loops)")
    args = parser.parse_args()
    store = clt.open_store(args.artifacts)
    if args.epochs:
        equal_epochs(store, args)
        return
    if args.minutes:
        equal_time(store, args)
        return
    train = clt.load_dataset("cifar10", store=store).train.images[:args.steps * args.batch * 2].numpy()
    figures = {"lightly": lightly_loop(train, args.steps, args.batch, args.workers)}
    print(json.dumps(figures), flush=True)
    for precision in ("fp32", "auto"):
        figures[f"clt_{precision}"] = clt_run(store, args.steps, args.batch, precision)
        print(json.dumps(figures), flush=True)
    write(figures, args)


def write(figures: dict, args) -> None:
    lightly_vps = figures["lightly"]["views_per_s"]
    import lightly

    rows = [f"| lightly {lightly.__version__} loop (SimCLRTransform, DataLoader with {args.workers} workers, "
            f"NTXentLoss), fp32 | "
            f"{lightly_vps} | 1.00 | {100 * figures['lightly']['data_share']:.0f} % waiting for data | "
            f"{figures['lightly']['peak_mib']} |"]
    for key in ("clt_fp32", "clt_auto"):
        run = figures[key]
        rows.append(f"| clt `pretrain` of cifar10_simclr_r18, {run['precision']} | {run['views_per_s']} | "
                    f"{run['views_per_s'] / lightly_vps:.2f} | batches augmented on the device | {run['peak_mib']} |")
    command = command_line("peer_lightly.py", STORE=args.artifacts)
    cpu = cpu_name()
    text = "\n".join(["| loop | views/s | × lightly | data | process peak MiB after it |", "|---|---|---|---|---|",
                      *rows]) + f"\n\nCommand: `{command}` (ResNet-18 CIFAR stem, batch {args.batch}, "\
        f"{args.steps} steps each, the first one left out of lightly's rate), on {cpu}.\n"
    auto = figures["clt_auto"]["precision"]
    write_results(
        "peer_lightly", text, {**figures, "command": command}, command=command,
        title=f"SimCLR step speed: clt against lightly {lightly.__version__}'s documented loop, ResNet-18",
        protocol=f"same torchvision ResNet-18 (CIFAR stem), projection 512-512-128, NT-Xent 0.5, SGD, batch "
                 f"{args.batch} of two views, {args.steps} steps each in one process",
        figures={"lightly views/s": {"path": "lightly.views_per_s", **VIEWS},
                 "clt fp32 views/s": {"path": "clt_fp32.views_per_s", **VIEWS},
                 f"clt {'auto (fp32)' if auto == 'fp32' else auto} views/s": {"path": "clt_auto.views_per_s", **VIEWS}})
    print(text)


if __name__ == "__main__":
    main()
