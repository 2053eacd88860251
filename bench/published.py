"""Reproduce the published results on real data and write the comparison tables.

Each experiment runs clt's stages (the same code the CLI calls) at a budget that fits the
machine, then writes `bench/results/<experiment>.md` and `.json`: the `clt compare` table plus
epochs and wall time. Real copies of the datasets are read from ../shared/datasets.

    python bench/published.py mnist_pair                  # 15 epochs, linear probe 1 epoch, 3 seeds
    python bench/published.py mnist_cosine_knn --epochs 5
    python bench/published.py mnist_simclr_100 --epochs 15
    python bench/published.py cifar10_triplet --epochs 30 --device cuda
    python bench/published.py all
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from records import command_line, write_record

import clt
from clt.cli.render import compare_markdown

ROOT = Path(__file__).resolve().parent.parent

SHARED = ROOT.parent / "shared" / "datasets"
RESULTS = ROOT / "bench" / "results"


def log(event: clt.ProgressEvent) -> None:
    """The stages' log lines and warnings on stderr (progress bars are left out of log files)."""
    if event.kind in ("info", "warn"):
        print(("warning: " if event.kind == "warn" else "") + event.message, file=sys.stderr, flush=True)


class Run:
    """The store, device and logging every call of one bench run shares."""

    def __init__(self, store: str, device: str):
        self.store, self.device = clt.open_store(store), device

    def opts(self, device: bool = True) -> dict:
        return {"store": self.store, "progress": log, **({"device": self.device} if device else {})}


def ensure(run: Run, name: str) -> None:
    if run.store.read_ref(f"dataset/{name}"):
        return
    source = {"mnist": SHARED / "mnist", "cifar10": SHARED / "cifar10-jpeg.tar.gz"}[name]
    clt.download(name, source, **run.opts(device=False))


def trial_step_seconds(recipe: str | Path, overrides: list[str], batch: int, steps: int = 10, **opts) -> float:
    """Seconds per step of `recipe` with `overrides` (which set batch size `batch`), from the second of
    two `steps`-step epochs on a train_limit of steps x batch images: the first one warms up."""
    trial = clt.pretrain(recipe, overrides=[*overrides, f"data.train_limit={steps * batch}", "pretrain.epochs=2"],
                         **opts)
    history = json.loads(trial.file("history.json").read_text())
    return (history[1]["seconds"] - history[0]["seconds"]) / steps


def recipe(name: str) -> str:
    return str(ROOT / "recipes" / f"{name}.yaml")


def _epochs(args, default: int | None = None) -> list[str]:
    """--epochs overrides the recipe's epochs, all at full size (a progressive-resizing schedule is
    written for the recipe's own epochs); without it the recipe's own (or `default`) stands."""
    epochs = args.epochs or default
    return [f"pretrain.epochs={epochs}", "pretrain.progressive_resize=[]"] if epochs else []


def mnist_pair(run, args) -> list[str]:
    ensure(run, "mnist")
    ids = []
    for seed in args.seeds:
        enc = clt.pretrain(recipe("mnist_pair"), overrides=_epochs(args) + args.set, seed=seed, **run.opts())
        probe = clt.probe(enc.id, **run.opts())
        ids.append(clt.evaluate(probe.id, confusion=True, **run.opts()).id)
    return ids


def mnist_cosine_knn(run, args) -> list[str]:
    ensure(run, "mnist")
    enc = clt.pretrain(recipe("mnist_cosine_knn"), overrides=_epochs(args, 50) + args.set, **run.opts())
    return [clt.evaluate(enc.id, knn=10, metric="cosine", vote="majority", **run.opts()).id]


def mnist_simclr_100(run, args) -> list[str]:
    ensure(run, "mnist")
    ids = []
    for seed in args.seeds:
        enc = clt.pretrain(recipe("mnist_simclr"), overrides=_epochs(args) + args.set, seed=seed, **run.opts())
        probe = clt.probe(enc.id, overrides=["probe.labels=100"], seed=seed, **run.opts())
        ids.append(clt.evaluate(probe.id, **run.opts()).id)
    # the same CNN from scratch on the same labels: without augmentation, and with the digits
    # preset the SimCLR views use (both at lr 1e-3 without weight decay: the probe's 1e-2 and
    # weight decay, tuned for a linear head on fixed features, made scratch training diverge)
    scratch_settings = ["probe.labels=100", "probe.lr=0.001", "probe.weight_decay=0"]
    for augment in ("none", "digits"):
        for seed in args.seeds:
            scratch = clt.baseline_scratch(recipe("mnist_simclr"), overrides=scratch_settings, seed=seed,
                                           augment=augment, **run.opts())
            ids.append(clt.evaluate(scratch.id, **run.opts()).id)
    return ids


def cifar10_triplet(run, args) -> list[str]:
    ensure(run, "cifar10")
    enc = clt.pretrain(recipe(args.recipe or "cifar10_triplet"), overrides=_epochs(args) + args.set, **run.opts())
    probe = clt.probe(enc.id, **run.opts())
    ids = [clt.evaluate(probe.id, confusion=True, knn=200, **run.opts()).id]
    if not args.skip_baselines:
        cnn = clt.baseline_scratch(recipe("cifar10_plain_cnn"), overrides=[f"probe.epochs={args.baseline_epochs}"],
                                   **run.opts())
        ids.append(clt.evaluate(cnn.id, **run.opts()).id)
        logreg = clt.baseline_logreg("cifar10", overrides=[f"epochs={args.baseline_epochs}"], **run.opts())
        ids.append(clt.evaluate(logreg.id, **run.opts()).id)
    return ids


def cifar10_contrastive(name: str):
    def run_one(run, args) -> list[str]:
        ensure(run, "cifar10")
        enc = clt.pretrain(recipe(name), overrides=_epochs(args, 20) + args.set, **run.opts())
        probe = clt.probe(enc.id, **run.opts())
        return [clt.evaluate(probe.id, knn=200, **run.opts()).id]

    return run_one


EXPERIMENTS = {
    "mnist_pair": mnist_pair,
    "mnist_cosine_knn": mnist_cosine_knn,
    "mnist_simclr_100": mnist_simclr_100,
    "cifar10_triplet": cifar10_triplet,
    "cifar10_simclr_cpu": cifar10_contrastive("cifar10_simclr_cpu"),
    "cifar10_supcon": cifar10_contrastive("cifar10_supcon"),
}


def write(name: str, run: Run, ids: list[str], seconds: float, args) -> None:
    rows = clt.compare(ids, store=run.store)
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = command_line("published.py", STORE=args.artifacts, OUT=args.results, DATASETS=args.shared)
    machine = f"{platform.machine()}, {platform.processor() or 'cpu'}, device {args.device}"
    text = compare_markdown(rows) + f"\n\nCommand: `{command}` — total {seconds:.0f} s on {machine}.\n"
    (RESULTS / f"{name}.md").write_text(text)
    data = {"rows": rows, "command": command, "seconds": seconds, "ids": ids}
    write_record(RESULTS / f"{name}.json", data, study="published", title=name, command=command,
                 protocol=f"bench/published.py {name}: the `clt compare` table of its runs", default=str)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=[*EXPERIMENTS, "all"])
    parser.add_argument("--epochs", type=int, default=None, help="Pretraining epochs (default: the recipe's).")
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], help="Extra recipe override.")
    parser.add_argument("--recipe", default=None, help="Alternative recipe for cifar10_triplet.")
    parser.add_argument("--baseline-epochs", type=int, default=15)
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--artifacts", default=str(ROOT / "artifacts"))
    parser.add_argument("--results", default=None, help="Folder for the tables (default bench/results).")
    parser.add_argument("--shared", default=None, help="Folder holding the real datasets (default ../shared/datasets).")
    args = parser.parse_args()
    global RESULTS, SHARED
    RESULTS = Path(args.results) if args.results else RESULTS
    SHARED = Path(args.shared) if args.shared else SHARED
    run = Run(args.artifacts, args.device)
    names = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    for name in names:
        started = time.time()
        ids = EXPERIMENTS[name](run, args)
        write(name, run, ids, time.time() - started, args)


if __name__ == "__main__":
    main()
