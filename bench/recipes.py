"""Every recipe in recipes/, end to end on its real dataset, at a budget this machine affords.

For each recipe: pretrain (on a seeded, class-balanced subset of the train images for the
real datasets: `data.train_limit`), probe with the recipe's head (on 1,000 balanced labels
unless the recipe already asks for fewer), evaluate on the full test split (plus pair
accuracy for pair objectives, except for the ResNet-18/50 recipes on a CPU); then one table
with accuracy, epochs, images and wall time per stage goes to bench/results/recipes.md.
These are smoke-budget figures showing that each recipe runs; the published comparisons
come from bench/published.py at full budget.

    python bench/recipes.py                        # every recipe
    python bench/recipes.py cifar10_simclr cifar10_supcon --cifar-images 2048
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import yaml
from published import Run, ensure
from records import command_line, write_record

import clt

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "bench" / "results"
BIG_ENCODERS = ("resnet18", "resnet50")


def budget(raw: dict, args) -> tuple[list[str], list[str]]:
    """(pretrain overrides, probe overrides) for one recipe."""
    dataset = raw.get("data", {}).get("dataset", "digits")
    encoder = raw.get("model", {}).get("encoder", "pair_cnn")
    # digits recipes are small; the others run a few epochs at full size (no progressive resizing)
    pretrain = [] if dataset == "digits" else [f"pretrain.epochs={args.epochs}", "pretrain.progressive_resize=[]"]
    if dataset == "mnist":
        pretrain.append(f"data.train_limit={args.mnist_images}")
    elif dataset == "cifar10":
        images = args.gpu_recipe_images if encoder in BIG_ENCODERS else args.cifar_images
        pretrain.append(f"data.train_limit={images}")
        batch = raw.get("pretrain", {}).get("batch_size", 64)
        # a ResNet-50 step of 2 × 512 views needs tens of GB of activations: smaller batches on a CPU
        cap = min(images // 4, args.big_batch if encoder in BIG_ENCODERS else batch)
        if batch > cap:
            pretrain.append(f"pretrain.batch_size={cap}")
    probe = []
    labels = raw.get("probe", {}).get("labels")
    if dataset != "digits" and not (labels and labels <= args.labels):
        probe.append(f"probe.labels={args.labels}")
    return pretrain, probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="*", help="recipe names (default: every file in recipes/)")
    parser.add_argument("--epochs", type=int, default=1, help="pretraining epochs (digits recipes keep theirs)")
    parser.add_argument("--mnist-images", type=int, default=10000)
    parser.add_argument("--cifar-images", type=int, default=5000)
    parser.add_argument("--gpu-recipe-images", type=int, default=1024,
                        help="train images for the ResNet-18/50 recipes (GPU recipes) on a CPU")
    parser.add_argument("--big-batch", type=int, default=128, help="batch size for the ResNet-18/50 recipes")
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--artifacts", default=str(ROOT / "artifacts"))
    parser.add_argument("--out", default="recipes")
    args = parser.parse_args()

    run = Run(args.artifacts, args.device)
    paths = [ROOT / "recipes" / f"{n}.yaml" for n in args.recipes] or sorted((ROOT / "recipes").glob("*.yaml"))
    rows = []
    for path in paths:
        raw = yaml.safe_load(path.read_text())
        if "objective" not in raw:
            continue  # a baseline-only recipe (cifar10_plain_cnn): run by bench/published.py
        dataset = raw.get("data", {}).get("dataset", "digits")
        if dataset in ("mnist", "cifar10"):
            ensure(run, dataset)
        pretrain_set, probe_set = budget(raw, args)
        print(f"== {path.stem}: {' '.join(pretrain_set + probe_set)}", file=sys.stderr, flush=True)
        started = time.time()
        encoder = clt.pretrain(path, overrides=pretrain_set, **run.opts())
        probe = clt.probe(encoder.id, overrides=probe_set, **run.opts())
        # pair accuracy needs the train split's embeddings: 50,000 ResNet-18/50 forwards are
        # a quarter of an hour on a 2-core CPU, so the GPU recipes skip it there
        big = raw["model"]["encoder"] in BIG_ENCODERS and encoder.manifest.get("device", "").startswith("cpu")
        evaluation = clt.evaluate(probe.id, pairs=not big, **run.opts())
        metrics = evaluation.manifest["metrics"]
        rows.append({
            "recipe": path.stem, "dataset": dataset, "encoder": raw["model"]["encoder"],
            "objective": raw["objective"]["name"], "train_images": encoder.metrics.get("train_images"),
            "epochs": encoder.metrics.get("epochs"), "device": encoder.manifest.get("device"),
            "pretrain_s": encoder.manifest.get("wall_time_s"), "probe": probe.manifest["protocol"]["protocol"],
            "labels": probe.manifest["protocol"]["labels_used"], "probe_s": probe.manifest.get("wall_time_s"),
            "evaluate_s": evaluation.manifest.get("wall_time_s"), "accuracy": metrics.get("accuracy"),
            "pair_accuracy": metrics.get("pair_accuracy"), "ids": [encoder.id, probe.id, evaluation.id],
            "seconds": round(time.time() - started, 1)})
        write(rows, args)


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _s(value) -> str:
    return "–" if value is None else f"{value:.0f}"


def write(rows: list[dict], args) -> None:
    header = ["recipe", "dataset", "encoder", "objective", "pretrain images × epochs", "probe (labels)",
              "test accuracy %", "pair accuracy %", "pretrain s", "probe s", "evaluate s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["recipe"], r["dataset"], r["encoder"], r["objective"], f"{r['train_images']:,} × {r['epochs']}",
            f"{r['probe']} ({r['labels']:,})", _pct(r["accuracy"]), _pct(r["pair_accuracy"]),
            _s(r["pretrain_s"]), _s(r["probe_s"]), _s(r["evaluate_s"])]) + " |")
    command = command_line("recipes.py", STORE=args.artifacts)
    machine = f"{platform.machine()}, {platform.processor() or 'cpu'}, device {args.device}"
    text = "\n".join(lines) + f"\n\nCommand: `{command}` on {machine}.\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.md").write_text(text)
    epochs = f"{args.epochs} epoch{'s' if args.epochs != 1 else ''}"
    write_record(RESULTS / f"{args.out}.json", {"rows": rows, "command": command}, study="recipes", command=command,
                 title=f"{', '.join(args.recipes) or 'Every recipe'}: {epochs} on a subset, probe on "
                       f"{args.labels:,} labels",
                 protocol=f"{epochs} on a class-balanced train subset ({args.mnist_images:,} MNIST, "
                          f"{args.cifar_images:,} CIFAR-10, {args.gpu_recipe_images:,} for ResNet-18/50); "
                          "full test split",
                 figures={f"{r['recipe']} %": {"path": f"rows.{i}.accuracy", "format": "pct", "digits": 2}
                          for i, r in enumerate(rows)})
    print(text, flush=True)


if __name__ == "__main__":
    main()
