"""Reproduce the published results on real data and write the comparison tables.

Each experiment runs clt's stages (the same code the CLI calls) at a budget that fits the
machine, then writes `bench/results/<experiment>.md` and `.json`: the `clt compare` table plus
epochs and wall time. Real copies of the datasets are read from ../shared/datasets.

    python bench/published.py mnist_pair                  # 10 epochs, linear probe 1 epoch
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clt import stages  # noqa: E402
from clt.store import Store  # noqa: E402

SHARED = ROOT.parent / "shared" / "datasets"
RESULTS = ROOT / "bench" / "results"


class Log(stages.Reporter):
    def info(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        print("warning:", message, file=sys.stderr, flush=True)


def ensure(ctx: stages.Context, name: str) -> None:
    if ctx.store.read_ref(f"dataset/{name}"):
        return
    source = {"mnist": SHARED / "mnist", "cifar10": SHARED / "cifar10-jpeg.tar.gz"}[name]
    stages.download(ctx, name, str(source))


def recipe(name: str) -> str:
    return str(ROOT / "recipes" / f"{name}.yaml")


def _epochs(args, default: int | None = None) -> list[str]:
    """--epochs overrides the recipe's epochs, all at full size (a progressive-resizing schedule is
    written for the recipe's own epochs); without it the recipe's own (or `default`) stands."""
    epochs = args.epochs or default
    return [f"pretrain.epochs={epochs}", "pretrain.progressive_resize=[]"] if epochs else []


def mnist_pair(ctx, args) -> list[str]:
    ensure(ctx, "mnist")
    enc = stages.pretrain(ctx, recipe("mnist_pair"), _epochs(args, 10) + args.set)
    probe = stages.probe(ctx, enc.artifact.id)
    return [stages.evaluate(ctx, probe.artifact.id, confusion=True).artifact.id]


def mnist_cosine_knn(ctx, args) -> list[str]:
    ensure(ctx, "mnist")
    enc = stages.pretrain(ctx, recipe("mnist_cosine_knn"), _epochs(args, 50) + args.set)
    return [stages.evaluate(ctx, enc.artifact.id, knn=10, knn_metric="cosine", knn_vote="majority").artifact.id]


def mnist_simclr_100(ctx, args) -> list[str]:
    ensure(ctx, "mnist")
    ids = []
    for seed in args.seeds:
        enc = stages.pretrain(ctx, recipe("mnist_simclr"), _epochs(args) + args.set, seed=seed)
        probe = stages.probe(ctx, enc.artifact.id, ["probe.labels=100"], seed=seed)
        ids.append(stages.evaluate(ctx, probe.artifact.id).artifact.id)
    # the same CNN from scratch on the same labels: without augmentation, and with the digits
    # preset the SimCLR views use (both at lr 1e-3 without weight decay: the probe's 1e-2 and
    # weight decay, tuned for a linear head on fixed features, made scratch training diverge)
    scratch_settings = ["probe.labels=100", "probe.lr=0.001", "probe.weight_decay=0"]
    for augment in ("none", "digits"):
        for seed in args.seeds:
            scratch = stages.baseline_scratch(ctx, recipe("mnist_simclr"), scratch_settings, seed=seed,
                                              augment=augment)
            ids.append(stages.evaluate(ctx, scratch.artifact.id).artifact.id)
    return ids


def cifar10_triplet(ctx, args) -> list[str]:
    ensure(ctx, "cifar10")
    enc = stages.pretrain(ctx, recipe(args.recipe or "cifar10_triplet"), _epochs(args) + args.set)
    probe = stages.probe(ctx, enc.artifact.id)
    ids = [stages.evaluate(ctx, probe.artifact.id, confusion=True, knn=200).artifact.id]
    if not args.skip_baselines:
        cnn = stages.baseline_scratch(ctx, recipe("cifar10_plain_cnn"), [f"probe.epochs={args.baseline_epochs}"])
        ids.append(stages.evaluate(ctx, cnn.artifact.id).artifact.id)
        logreg = stages.baseline_logreg(ctx, "cifar10", [f"epochs={args.baseline_epochs}"])
        ids.append(stages.evaluate(ctx, logreg.artifact.id).artifact.id)
    return ids


def cifar10_contrastive(name: str):
    def run(ctx, args) -> list[str]:
        ensure(ctx, "cifar10")
        enc = stages.pretrain(ctx, recipe(name), _epochs(args, 20) + args.set)
        probe = stages.probe(ctx, enc.artifact.id)
        return [stages.evaluate(ctx, probe.artifact.id, knn=200).artifact.id]

    return run


EXPERIMENTS = {
    "mnist_pair": mnist_pair,
    "mnist_cosine_knn": mnist_cosine_knn,
    "mnist_simclr_100": mnist_simclr_100,
    "cifar10_triplet": cifar10_triplet,
    "cifar10_simclr_cpu": cifar10_contrastive("cifar10_simclr_cpu"),
    "cifar10_supcon": cifar10_contrastive("cifar10_supcon"),
}


def write(name: str, store: Store, ids: list[str], seconds: float, args) -> None:
    rows = stages.summarize(store, ids)
    RESULTS.mkdir(parents=True, exist_ok=True)
    header = ["name", "objective", "protocol", "labels", "seeds", "accuracy %", "kNN %", "pair %", "wall s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join([
            str(r["name"]), str(r["objective"]), r["protocol"], str(r["labels"]), str(r["n"]),
            stages.format_mean_std(r.get("accuracy")), stages.format_mean_std(r.get("knn_accuracy")),
            stages.format_mean_std(r.get("pair_accuracy")), f"{r['wall_time_s']:.0f}"]) + " |")
    command = "python bench/published.py " + " ".join(sys.argv[1:])
    machine = f"{platform.machine()}, {platform.processor() or 'cpu'}, device {args.device}"
    text = "\n".join(lines) + f"\n\nCommand: `{command}` — total {seconds:.0f} s on {machine}.\n"
    (RESULTS / f"{name}.md").write_text(text)
    (RESULTS / f"{name}.json").write_text(json.dumps({"rows": rows, "command": command, "seconds": seconds,
                                                      "ids": ids}, indent=1, default=str))
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
    ctx = stages.Context(Store(args.artifacts), device=args.device, report=Log())
    names = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    for name in names:
        started = time.time()
        ids = EXPERIMENTS[name](ctx, args)
        write(name, ctx.store, ids, time.time() - started, args)


if __name__ == "__main__":
    main()
