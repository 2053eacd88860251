"""Short, controlled experiments that tell a bug from a recipe: each named variant is one objective's
recipe plus overrides, trained for a few epochs on a class-balanced subset of CIFAR-10 train, and
every epoch's loss, spread, effective rank and online 200-NN accuracy (2,000 test images against
the 10,000 train images of the monitor) is written side by side, so two variants differ in one
thing and the table shows what that thing does.

    python bench/diagnose.py byol byol:model.projection_norm=hidden --epochs 2 --limit 10000
    python bench/diagnose.py simsiam 'simsiam:model.projection_norm=all' --out bench/results/diagnose/simsiam.json

A variant is `OBJECTIVE[:KEY=VALUE[;KEY=VALUE...]]`; keys are recipe overrides as `--set` takes them
(`model.projection_norm=hidden`), on top of the objective's equal-budget recipe and shared setup.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from equal_budget import OBJECTIVES, SHARED_SETUP
from images import cpu_model
from published import Run, ensure
from records import command_line, git_commit, write_record

import clt

ROOT = Path(__file__).resolve().parent.parent


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, rest = text.partition(":")
    if name not in OBJECTIVES:
        raise SystemExit(f"unknown objective {name!r}; pick from {', '.join(OBJECTIVES)}")
    return name, [item for item in rest.split(";") if item]


def run_variant(run: Run, text: str, args) -> dict:
    name, extra = parse_variant(text)
    recipe_name, shared_extra = OBJECTIVES[name]
    overrides = [*SHARED_SETUP, *shared_extra, *extra, *args.set, f"seed={args.seed}",
                 f"pretrain.epochs={args.epochs}", f"data.train_limit={args.limit}",
                 "pretrain.monitor={knn: 200, every: 1, train: 10000, test: 2000}"]
    started = time.time()
    try:
        encoder = clt.pretrain(ROOT / "recipes" / f"{recipe_name}.yaml", overrides=overrides, **run.opts())
    except clt.DivergenceError as error:
        return {"variant": text, "overrides": overrides, "diverged": error.message, "epochs": []}
    history = json.loads(encoder.file("history.json").read_text())
    keep = ("epoch", "loss", "lr", "embedding_spread", "embedding_rank", "embedding_dim", "knn_accuracy", "seconds")
    return {"variant": text, "overrides": overrides, "encoder": encoder.id, "wall_s": round(time.time() - started, 1),
            "epochs": [{k: h.get(k) for k in keep} for h in history]}


def table(rows: list[dict]) -> str:
    lines = ["| variant | epoch | loss | spread | rank | online 200-NN % |", "|---|---|---|---|---|---|"]
    for row in rows:
        if row.get("diverged"):
            lines.append(f"| {row['variant']} | – | diverged: {row['diverged'][:80]} | | | |")
        for h in row["epochs"]:
            knn = h.get("knn_accuracy")
            lines.append(f"| {row['variant']} | {h['epoch']} | {h['loss']:.4f} | {h['embedding_spread']:.3f} | "
                         f"{h['embedding_rank']:.1f} of {h['embedding_dim']} | "
                         f"{'' if knn is None else f'{100 * knn:.2f}'} |")
    return "\n".join(lines)


def write_markdown(record: dict, path: Path) -> None:
    """The record as a page: its provenance, then the table."""
    head = (f"# {path.stem}\n\n{record['date']}, commit {record['commit']}, {record['machine']}.\n"
            f"`{record['command']}`: {record['epochs']} epochs on a class-balanced subset of "
            f"{record['train_limit']:,} CIFAR-10 train images; online 200-NN: 2,000 test images against the "
            "monitor's 10,000 train images.\n\n")
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(head + table(record["rows"]) + "\n")
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--limit", type=int, default=10000, help="train images (class-balanced subset)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="an override for every variant")
    parser.add_argument("--store", default=str(ROOT / "artifacts"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, help="JSON file for the rows (appended to if it exists)")
    args = parser.parse_args()
    run = Run(args.store, args.device)
    ensure(run, "cifar10")
    rows = json.loads(args.out.read_text())["rows"] if args.out and args.out.exists() else []
    for text in args.variants:
        rows = [r for r in rows if r["variant"] != text] + [run_variant(run, text, args)]
        print(table(rows[-1:]), file=sys.stderr, flush=True)
        if args.out:
            save(rows, args)
    print(table(rows))


def save(rows: list[dict], args) -> None:
    """The rows so far as a record at --out (after every variant, so a stopped run keeps the finished
    ones), and as a page beside it."""
    command = command_line("diagnose.py", STORE=args.store)
    data = {"date": time.strftime("%Y-%m-%d"), "commit": git_commit(), "machine": cpu_model(), "command": command,
            "epochs": args.epochs, "train_limit": args.limit, "rows": rows}
    record = write_record(
        args.out, data, study="diagnose", command=command,
        title=f"{args.out.stem}: {args.epochs} epochs on {args.limit:,} CIFAR-10 images, one change at a time",
        protocol="ResNet-20 w16, batch 256, simclr_cifar augmentation; online 200-NN of 2,000 test images "
                 "against 10,000 train images",
        figures=figures(rows))
    write_markdown(record, args.out.with_suffix(".md"))


def figures(rows: list[dict]) -> dict:
    """Each variant's online 200-NN after its last epoch, or what stopped it."""
    out: dict = {}
    for i, row in enumerate(rows):
        if row.get("diverged"):
            out[f"{row['variant']}: diverged"] = row["diverged"]
        elif row["epochs"]:
            last = len(row["epochs"])
            out[f"{row['variant']}: online 200-NN % after epoch {last}"] = {
                "path": f"rows.{i}.epochs.{last - 1}.knn_accuracy", "format": "pct", "digits": 2}
    return out


if __name__ == "__main__":
    main()
