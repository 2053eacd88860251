"""Your own unlabeled photos: does the shipped folder recipe beat raw pixels within its time budget?

A flat folder of 6,000 CIFAR-10 train photos (600 per class, seeded, renamed photo_NNNNN.jpg; each
photo's class kept apart, for scoring only) is imported as an unlabeled dataset and trained with
recipes/folder_simclr.yaml, whose `pretrain.minutes` plans the epochs that fit. Then 300 CIFAR-10
test photos (30 per class, never seen in training) each look for their nearest neighbour (cosine)
among the 6,000; the score is the share whose neighbour shows the same class. The same score for
the untrained encoder (the recipe's encoder as initialised, same seed), raw pixels and mean-centred
pixels is printed beside it, with the label-free verdict `clt evaluate` gives the user.

    python bench/folder_photos.py [--artifacts STORE] [--minutes 15] [--write]

Timed work: run it with the cores to yourself, or say what shared them (the budget then buys fewer
epochs, so a shared run can only understate the recipe).
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from images import cpu_model
from records import command_line, git_commit, write_record

import clt

ROOT = Path(__file__).resolve().parent.parent
TARBALL = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
RESULTS = ROOT / "bench" / "results"
RECIPE = ROOT / "recipes" / "folder_simclr.yaml"
PER_CLASS_TRAIN, PER_CLASS_QUERY = 600, 30


def pick_members(names: list[str], split: str, per_class: int, seed: int) -> list[tuple[str, str]]:
    """(member name, class) for a seeded choice of `per_class` JPEGs of every class of `split`."""
    by_class: dict[str, list[str]] = {}
    for name in names:
        parts = name.split("/")
        if len(parts) == 4 and parts[1] == split and parts[3].endswith(".jpg"):
            by_class.setdefault(parts[2], []).append(name)
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in sorted(by_class):
        members = sorted(by_class[cls])
        chosen += [(members[i], cls) for i in sorted(rng.choice(len(members), per_class, replace=False))]
    return chosen


def build_folders(work: Path) -> tuple[list[Path], list[str], list[Path], list[str]]:
    """photos/ (flat, shuffled names) and queries/ from the tarball; (paths, classes) of each."""
    with tarfile.open(TARBALL) as tar:
        names = tar.getnames()
        train = pick_members(names, "train", PER_CLASS_TRAIN, 0)
        query = pick_members(names, "test", PER_CLASS_QUERY, 1)
        order = np.random.default_rng(2).permutation(len(train))  # names say nothing of the class
        out = []
        for folder, items, perm in (("photos", train, order), ("queries", query, np.arange(len(query)))):
            (work / folder).mkdir(parents=True, exist_ok=True)
            paths, classes = [], []
            for number, index in enumerate(perm):
                member, cls = items[index]
                path = work / folder / f"photo_{number:05d}.jpg"
                if not path.exists():
                    path.write_bytes(tar.extractfile(member).read())
                paths.append(path)
                classes.append(cls)
            out += [paths, classes]
    return out[0], out[1], out[2], out[3]


def nearest_same_class(queries: np.ndarray, base: np.ndarray, q_cls: list[str], b_cls: list[str]) -> float:
    """Share of query rows whose most cosine-similar base row has their class."""
    def unit(x: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return np.where(norm > 0, x / np.maximum(norm, 1e-12), 0)

    nearest = (unit(queries) @ unit(base).T).argmax(1)
    return float(np.mean([q_cls[i] == b_cls[j] for i, j in enumerate(nearest)]))


def pixels(paths: list[Path]) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32).ravel() / 255 for p in paths])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", default=None, help="store (default: $CLT_ARTIFACTS or artifacts/)")
    parser.add_argument("--minutes", type=float, default=None, help="override the recipe's time budget")
    parser.add_argument("--recipe", default=str(RECIPE))
    parser.add_argument("--work", default=str(ROOT / "bench" / ".folder_photos"), help="where the photos go")
    parser.add_argument("--write", action="store_true", help="write bench/results/folder_photos.{json,md}")
    args = parser.parse_args()

    work = Path(args.work)
    base_paths, base_cls, query_paths, query_cls = build_folders(work)
    dataset = clt.download("photos6k", work / "photos", store=args.artifacts)
    print(f"imported {len(base_paths)} photos as {dataset.id[:12]}", file=sys.stderr)
    started = time.time()
    encoder_result = clt.pretrain(args.recipe, overrides=["data.dataset=photos6k"], minutes=args.minutes,
                                  store=args.artifacts)
    wall = time.time() - started
    quality = clt.evaluate(encoder_result.id, quality=True, pairs=False, store=args.artifacts)
    quality_results = clt.show(quality.id, store=args.artifacts)["results"]
    encoder = clt.load_encoder(encoder_result.id, store=args.artifacts)
    scores = {"encoder": nearest_same_class(encoder.embed(query_paths), encoder.embed(base_paths),
                                            query_cls, base_cls)}
    recipe = clt.show(encoder_result.id, store=args.artifacts)["recipe"]
    # the floor: the recipe's encoder as pretraining starts it (its seed's weights, no step taken)
    floor = clt.pretrain(args.recipe, overrides=["data.dataset=photos6k", "pretrain.epochs=0"], minutes=0,
                         store=args.artifacts)
    untrained = clt.load_encoder(floor.id, store=args.artifacts)
    scores["untrained"] = nearest_same_class(untrained.embed(query_paths), untrained.embed(base_paths),
                                             query_cls, base_cls)
    base_px, query_px = pixels(base_paths), pixels(query_paths)
    scores["pixels"] = nearest_same_class(query_px, base_px, query_cls, base_cls)
    centre = base_px.mean(0)
    scores["pixels_centred"] = nearest_same_class(query_px - centre, base_px - centre, query_cls, base_cls)
    record = {
        "study": "folder_photos", "title": f"{Path(args.recipe).name} on 6,000 unlabeled photos",
        "date": time.strftime("%Y-%m-%d"), "commit": git_commit(), "commit_is": "run", "machine": cpu_model(),
        "command": command_line("folder_photos.py", STORE=args.artifacts, WORK=args.work),
        "protocol": (f"{len(base_paths)} CIFAR-10 train photos as an unlabeled flat folder; "
                     f"{len(query_paths)} test photos query them by cosine 1-NN; same class = hit"),
        "figures": {"epochs": {"path": "epochs", "format": "num", "digits": 0},
                    "1-NN same class, encoder %": {"path": "one_nn_same_class.encoder", "format": "pct"},
                    "untrained %": {"path": "one_nn_same_class.untrained", "format": "pct"},
                    "raw pixels %": {"path": "one_nn_same_class.pixels", "format": "pct"},
                    "mean-centred pixels %": {"path": "one_nn_same_class.pixels_centred", "format": "pct"}},
        "recipe": Path(args.recipe).name, "minutes": recipe["pretrain"].get("minutes"),
        "epochs": recipe["pretrain"]["epochs"], "pretrain_wall_seconds": round(wall, 1),
        "train_seconds": encoder_result.metrics.get("train_seconds"), "encoder": encoder_result.id[:12],
        "precision": clt.show(encoder_result.id, store=args.artifacts).get("precision"), "one_nn_same_class": scores,
        "label_free": quality_results["label_free"], "label_free_verdict": quality_results["label_free_verdict"],
    }
    print(json.dumps(record, indent=1))
    if args.write:
        write_record(RESULTS / "folder_photos.json", record,
                     **{k: record[k] for k in ("study", "title", "command", "protocol", "figures")})
        (RESULTS / "folder_photos.md").write_text(markdown(record))


def markdown(r: dict) -> str:
    s = r["one_nn_same_class"]
    rows = "\n".join(f"| {name} | {100 * s[key]:.1f} |" for key, name in
                     (("encoder", f"`{r['recipe']}` ({r['epochs']} epochs)"), ("untrained", "untrained encoder"),
                      ("pixels", "raw pixels"), ("pixels_centred", "mean-centred pixels")))
    return (f"# Unlabeled photos: {r['recipe']} against raw pixels\n\n{r['protocol']}.\n\n"
            f"| embedding | 1-NN same class % |\n|---|---|\n{rows}\n\n"
            f"Budget {r['minutes']} min ({r['epochs']} epochs planned, {r['train_seconds']} s of training, "
            f"{r['pretrain_wall_seconds']} s wall with the trial), {r['precision']}. "
            f"What `clt evaluate --quality` told the user: {r['label_free_verdict']}\n\n"
            f"Date {r['date']}, commit {r['commit']}, machine: {r['machine']}. Command: `{r['command']}`.\n")


if __name__ == "__main__":
    main()
