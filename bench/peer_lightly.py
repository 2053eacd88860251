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
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

import clt

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def lightly_loop(images: np.ndarray, steps: int, batch: int, workers: int) -> dict:
    import torch
    import torchvision
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform
    from PIL import Image

    class Pictures(torch.utils.data.Dataset):  # what torchvision's CIFAR10 hands a transform: PIL images
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return transform(Image.fromarray(images[i].transpose(1, 2, 0))), 0

    transform = SimCLRTransform(input_size=32, gaussian_blur=0.0)
    resnet = torchvision.models.resnet18()
    resnet.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    resnet.maxpool = torch.nn.Identity()
    resnet.fc = torch.nn.Identity()
    model = torch.nn.Sequential(resnet, SimCLRProjectionHead(512, 512, 128))
    criterion = NTXentLoss(temperature=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-6)
    loader = torch.utils.data.DataLoader(Pictures(), batch_size=batch, shuffle=True, drop_last=True,
                                         num_workers=workers)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", required=True, help="a store holding the cifar10 dataset")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    store = clt.open_store(args.artifacts)
    train = clt.load_dataset("cifar10", store=store).train.images[:args.steps * args.batch * 2].numpy()
    figures = {"lightly": lightly_loop(train, args.steps, args.batch, args.workers)}
    print(json.dumps(figures), flush=True)
    for precision in ("fp32", "auto"):
        figures[f"clt_{precision}"] = clt_run(store, args.steps, args.batch, precision)
        print(json.dumps(figures), flush=True)
    write(figures, args)


def write(figures: dict, args) -> None:
    lightly_vps = figures["lightly"]["views_per_s"]
    rows = [f"| lightly 1.6 loop (SimCLRTransform, DataLoader with {args.workers} workers, NTXentLoss), fp32 | "
            f"{lightly_vps} | 1.00 | {100 * figures['lightly']['data_share']:.0f} % waiting for data | "
            f"{figures['lightly']['peak_mib']} |"]
    for key in ("clt_fp32", "clt_auto"):
        run = figures[key]
        rows.append(f"| clt `pretrain` of cifar10_simclr_r18, {run['precision']} | {run['views_per_s']} | "
                    f"{run['views_per_s'] / lightly_vps:.2f} | batches augmented on the device | {run['peak_mib']} |")
    command = "python bench/peer_lightly.py " + " ".join(sys.argv[1:])
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "cpu")
    text = "\n".join(["| loop | views/s | × lightly | data | process peak MiB after it |", "|---|---|---|---|---|",
                      *rows]) + f"\n\nCommand: `{command}` (ResNet-18 CIFAR stem, batch {args.batch}, "\
        f"{args.steps} steps each, the first one left out of lightly's rate), on {cpu}.\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "peer_lightly.md").write_text(text)
    (RESULTS / "peer_lightly.json").write_text(json.dumps({**figures, "command": command}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
