"""What the metrics stream costs: pretraining steps timed with no logging, with metrics.jsonl, and with
metrics.jsonl plus TensorBoard events, side by side in one process (modes interleaved, repeated).

Each mode runs the same recipe from the same seed through the training loop, logging as the pretrain
stage does (its step logger: about ten step records per epoch, one record per epoch); the table gives
the median seconds per step and the overhead against no logging. The issue's bar: under 1 %.
Timings on shared or busy cores are noise: time on quiet ones.

    python bench/logging_overhead.py                       # digits SimCLR, 3 epochs, 3 repeats
    python bench/logging_overhead.py --recipe recipes/cifar10_simclr_cpu.yaml --set data.train_limit=5000
    python bench/logging_overhead.py --write               # also bench/results/logging_overhead_<recipe>.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from records import command_line, write_record

from clt.runlog import METRICS_FILE, MetricsStream, TensorBoardSink
from clt.stages.context import Context
from clt.stages.dataset import dataset_artifact
from clt.stages.pretrain import _setup, _step_logger, augmenter
from clt.store import Store
from clt.train import pretrain

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MODES = ("none", "metrics.jsonl", "metrics.jsonl + tensorboard")


def time_mode(ctx: Context, recipe, data_art, mode: str, folder: Path) -> tuple[float, int]:
    """(wall seconds, steps) of one training run logging as `mode` says."""
    run = _setup(ctx, recipe, data_art, None)
    steps = len(run.data.train) // recipe.pretrain.batch_size
    stream = None
    if mode != "none":
        sinks = [TensorBoardSink(folder / "tb")] if "tensorboard" in mode else []
        stream = MetricsStream(folder / METRICS_FILE, sinks)
    log_step = _step_logger(stream, steps) if stream else None
    on_epoch = (lambda record: stream.log({"event": "epoch", "step": record["epoch"] * steps, **record})) \
        if stream else None
    started = time.perf_counter()
    pretrain(run.model, run.objective, run.params, run.data, recipe.pretrain, device=run.device,
             precision=run.precision, seed=recipe.seed, augment=augmenter(recipe, run.data, run.objective.views),
             on_step=log_step, on_epoch=on_epoch)
    if stream:
        stream.close()
    return time.perf_counter() - started, steps * recipe.pretrain.epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/digits_simclr.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--write", action="store_true", help="write a JSON record to bench/results/")
    parser.add_argument("--artifacts", default=None,
                        help="read the dataset from this store (CIFAR-10 must be imported there); default: a scratch "
                             "store, where only digits is available")
    args = parser.parse_args()
    from clt.recipe import load_recipe

    recipe = load_recipe(args.recipe, [*args.overrides, f"pretrain.epochs={args.epochs}"])
    with tempfile.TemporaryDirectory() as scratch:
        ctx = Context(Store(Path(args.artifacts) if args.artifacts else Path(scratch) / "store"), device=args.device)
        data_art = dataset_artifact(ctx, recipe.data.dataset)
        per_step: dict[str, list[float]] = {mode: [] for mode in MODES}
        for repeat in range(args.repeats):
            for mode in MODES:  # interleaved, so a slow spell of the machine hits every mode alike
                seconds, steps = time_mode(ctx, recipe, data_art, mode, Path(scratch) / f"{repeat}-{len(mode)}")
                per_step[mode].append(seconds / steps)
    median = {mode: statistics.median(values) for mode, values in per_step.items()}
    print(f"{'logging':<30} {'ms / step':>10} {'overhead':>9}")
    for mode in MODES:
        print(f"{mode:<30} {1000 * median[mode]:>10.3f} {100 * (median[mode] / median['none'] - 1):>8.2f}%")
    if args.write:
        save_record(args, steps, per_step, median)


def save_record(args, steps: int, per_step: dict[str, list[float]], median: dict[str, float]) -> None:
    stem = Path(args.recipe).stem
    overhead = {mode: median[mode] / median["none"] - 1 for mode in MODES if mode != "none"}
    data = {"recipe": args.recipe, "overrides": args.overrides, "epochs": args.epochs,
            "steps_per_run": steps, "repeats": args.repeats, "seconds_per_step": per_step,
            "median_ms_per_step": {k.split(" ")[0] if k == "none" else k: 1000 * v for k, v in median.items()},
            "overhead": overhead, "overhead_metrics_jsonl": overhead["metrics.jsonl"],
            "overhead_tensorboard": overhead["metrics.jsonl + tensorboard"]}
    path = RESULTS / f"logging_overhead_{stem}.json"
    write_record(
        path, data, study="speed",
        title=f"what logging costs a training step ({stem})",
        command=command_line("logging_overhead.py", STORE=args.artifacts),
        protocol=f"{args.repeats} interleaved repeats of {args.epochs} epochs × {steps} steps per mode, "
                 "median seconds per step, the cores to itself",
        figures={"ms per step, no logging": {"path": "median_ms_per_step.none", "format": "num", "digits": 2},
                 "metrics.jsonl overhead %": {"path": "overhead_metrics_jsonl", "format": "pct"},
                 "with TensorBoard overhead %": {"path": "overhead_tensorboard", "format": "pct"}})
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
