"""Spread and effective rank of the features of stored equal-budget encoders on CIFAR-10 test images.

The epoch line of `clt pretrain` gives both for the projection head's outputs on one training batch;
this reads them off the encoder's features (what the linear probe and the 200-NN vote read, in eval
mode, before any projection head) on 2,560 test images, for the encoders bench/equal_budget.py kept:

    python bench/feature_rank.py bench/results/equal_budget/*-fp32.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import clt

ROOT = Path(__file__).resolve().parents[1]
IMAGES = 2560


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="equal-budget result JSON files")
    parser.add_argument("--artifacts", default=str(ROOT / "artifacts"))
    args = parser.parse_args()
    print("| encoder | spread of the features | spread after centring | effective rank | 200-NN % |")
    print("|---|---|---|---|---|")
    for path in args.results:
        result = json.loads(path.read_text())
        if not result["epochs"]:
            continue  # the untrained row's features are the floor, not a trained encoder's
        embedded = clt.embed(result["ids"]["encoder"], split="test", store=args.artifacts)
        shape = clt.embedding_geometry(np.load(embedded.file("embeddings.npy"))[:IMAGES])
        print(f"| {result['objective']} | {shape['spread']:.2f} | {shape['centred_spread']:.2f} | "
              f"{shape['effective_rank']:.1f} of {shape['dim']} | {100 * result['knn200']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
