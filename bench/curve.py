"""Accuracy versus training time, from the per-epoch snapshots of one encoder artifact.

A recipe with `pretrain.snapshot_every: N` keeps the encoder's weights every N epochs inside
the artifact (`snapshots/snapshot-epochEEEE-SSSs.safetensors`, SSS = training seconds so
far). This script scores each snapshot by kNN (cosine, distance-weighted vote, the recipe's
protocol) on the full test split against a seeded, class-balanced subset of the train split,
and writes a table and a PNG (accuracy against wall time and epoch):

    python bench/curve.py cifar10_triplet            # the latest encoder of that recipe
    python bench/curve.py ENCODER_ID --train 10000 --k 200

The curve's kNN uses a train subset so each point costs seconds; the final encoder's full
protocol (all 50,000 train embeddings, MLP probe) is in the evaluation artifact. Snapshots of
epochs trained on downscaled images (`pretrain.progressive_resize`) are scored at full size, as
the encoder would be used.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from records import command_line, write_record

from clt import plots, stages
from clt.features import extract_features
from clt.metrics import knn_predict
from clt.probing import few_label_subset
from clt.store import Store

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# the section of docs/results.md a recipe's curve belongs to; others are read as diagnoses
STUDY_OF_RECIPE = {"cifar10_triplet": "cifar10_triplet", "cifar10_simclr_cpu": "simclr_cpu"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("encoder", help="encoder id, prefix or ref (a recipe name means <recipe>/encoder)")
    parser.add_argument("--train", type=int, default=10000, help="train embeddings searched (class-balanced)")
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--artifacts", default=str(ROOT / "artifacts"))
    parser.add_argument("--every", type=int, default=1, help="score every Nth snapshot (and always the last)")
    parser.add_argument("--out", default=None, help="results name (default: <recipe>_curve)")
    args = parser.parse_args()

    store = Store(Path(args.artifacts))
    ref = args.encoder if "/" in args.encoder or not store.read_ref(f"{args.encoder}/encoder") \
        else f"{args.encoder}/encoder"
    artifact = store.resolve(ref, ("encoder",))
    found = stages.snapshots(artifact)
    if not found:
        sys.exit(f"error: {artifact.short} has no snapshots\nfix: pretrain with --set pretrain.snapshot_every=1")
    data = stages.load_dataset(store.get(artifact.manifest["inputs"]["dataset"]))
    subset = few_label_subset(data.train.labels, seed=0, total=args.train)
    train_split = data.train.subset(subset)
    name = args.out or f"{artifact.manifest['recipe']['name']}_curve"
    device = torch.device("cpu")

    rows = []
    history = {h["epoch"]: h for h in json.loads(artifact.file("history.json").read_text())}
    found = [snap for i, snap in enumerate(found) if (i + 1) % args.every == 0 or i == len(found) - 1]
    for epoch, seconds, file in found:
        started = time.perf_counter()
        encoder = stages.load_encoder(artifact, device, file).to(memory_format=torch.channels_last)
        with torch.no_grad():
            train = extract_features(encoder, data, train_split, device)
            test = extract_features(encoder, data, data.test, device)
        predicted = knn_predict(train, train_split.labels, test, args.k, len(data.classes),
                                metric="cosine", vote="distance")
        accuracy = float((predicted.cpu() == data.test.labels.cpu()).float().mean()) * 100
        loss = history.get(epoch, {}).get("loss")
        height = history.get(epoch, {}).get("image_height", data.in_shape[1])
        rows.append({"epoch": epoch, "train_seconds": seconds or 0.0, "knn_accuracy": round(accuracy, 2), "loss": loss,
                     "image_height": height})
        print(f"epoch {epoch:3d}  {seconds or 0:7.0f} s  {args.k}-NN {accuracy:6.2f} %  "
              f"(scored in {time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    write(name, artifact, rows, data, args)


def write(name: str, artifact, rows: list[dict], data, args) -> None:
    """The curve as a table (NAME.md), a record (NAME.json) and a picture (NAME.png) in bench/results."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    recipe = artifact.manifest["recipe"]["name"]
    command = command_line("curve.py", STORE=args.artifacts)
    machine = f"{platform.machine()}, {platform.processor() or 'cpu'}"
    protocol = f"{args.k}-NN accuracy % ({args.train:,} train, {len(data.test):,} test)"
    lines = [f"| epoch | trained at (px) | training time (s) | {protocol} | loss |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['epoch']} | {r['image_height']} | {r['train_seconds']:.0f} | {r['knn_accuracy']:.2f} | "
              + (f"{r['loss']:.4f} |" if r["loss"] is not None else "– |") for r in rows]
    text = "\n".join(lines) + (f"\n\nEncoder {artifact.short} ({recipe}, trained on "
                               f"{artifact.manifest.get('device', '?')}). Command: `{command}` on {machine}.\n")
    (RESULTS / f"{name}.md").write_text(text)
    write_record(RESULTS / f"{name}.json",
                 {"encoder": artifact.id, "rows": rows, "command": command, "k": args.k, "train": args.train},
                 study=STUDY_OF_RECIPE.get(recipe, "diagnose"), command=command,
                 title=f"{args.k}-NN of the {rows[-1]['epoch']}-epoch {recipe} encoder's snapshots against "
                       "training time",
                 protocol=f"each kept snapshot at {data.in_shape[1]} px, {args.k}-NN of {len(data.test):,} test "
                          f"images against {args.train:,} balanced train embeddings",
                 figures={f"epoch {r['epoch']}": {"path": f"rows.{i}.knn_accuracy", "format": "pct_raw", "digits": 2}
                          for i, r in enumerate(rows)})
    plots.accuracy_curve(rows, RESULTS / f"{name}.png", f"{recipe}: {args.k}-NN accuracy while training")
    print(text)


if __name__ == "__main__":
    main()
