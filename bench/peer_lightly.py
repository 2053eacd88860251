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

import clt
from clt.atomic import written_aside

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent


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


def clt_equal_time(store, data, args) -> tuple[dict, object]:
    """clt's recipe for about args.minutes; returns its figures and a fresh copy of its encoder. The
    store caches both pretrain calls by their inputs, so a rerun of the same command reuses them."""
    import copy

    result, epochs = clt_encoder_run(store, data, args)
    encoder = clt.load_encoder(result.id, store=store, device="cpu")
    fresh = copy.deepcopy(encoder.module)
    for layer in fresh.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
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
    figures[f"lightly {lightly.__version__}"] = lightly_equal_time(fresh, data, figures["clt"]["seconds"], args)
    command = "python bench/peer_lightly.py " + " ".join(sys.argv[1:])
    rows = [f"| {name} | {f['epochs']} | {f['seconds'] / 60:.1f} min | {f['precision']} | {100 * f['knn200']:.2f} | "
            f"{100 * f['linear']:.2f} |" for name, f in figures.items()]
    text = "\n".join(["| loop | epochs | pretrain wall time | precision | 200-NN % | linear % |",
                      "|---|---|---|---|---|---|", *rows])
    text += f"\n\nCommand: `{command}` ({args.minutes:g} minutes each, batch {args.batch}), on {cpu_model()}.\n"
    write_results("peer_lightly_equal_time", text, {**figures, "command": command})
    print(text)



def write_results(name: str, table: str, figures: dict) -> None:
    """bench/results/NAME.md and NAME.json, each written aside and renamed into place."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with written_aside(RESULTS / f"{name}.md") as tmp:
        tmp.write_text(table)
    with written_aside(RESULTS / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(figures, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", required=True, help="a store holding the cifar10 dataset")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="instead: clt and lightly at equal wall time on the CPU recipe's encoder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-limit", type=int, default=0,
                        help="with --minutes, a quick check: pretrain and score with this many train images (0: all)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="with --minutes: one more override of clt's recipe, e.g. pretrain.channels_last=true")
    args = parser.parse_args()
    store = clt.open_store(args.artifacts)
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
    command = "python bench/peer_lightly.py " + " ".join(sys.argv[1:])
    cpu = cpu_name()
    text = "\n".join(["| loop | views/s | × lightly | data | process peak MiB after it |", "|---|---|---|---|---|",
                      *rows]) + f"\n\nCommand: `{command}` (ResNet-18 CIFAR stem, batch {args.batch}, "\
        f"{args.steps} steps each, the first one left out of lightly's rate), on {cpu}.\n"
    write_results("peer_lightly", text, {**figures, "command": command})
    print(text)


if __name__ == "__main__":
    main()
