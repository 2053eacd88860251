"""Does the label-free measure rank encoders as labelled kNN accuracy does?

    python bench/label_free.py ENCODER_ID ENCODER_ID ... [--knn 200] [--artifacts STORE]

For each stored encoder (e.g. the equal-budget CIFAR-10 encoders): view retrieval (clt evaluate
--quality: an augmented view of each of up to 1,000 held-out test images looks for its own source
among the originals, beside the untrained encoder and raw pixels) and the labelled K-NN accuracy
(clt evaluate --knn K); then the Spearman rank correlation of the two over the encoders.
Both evaluations are stored artifacts, so a second run only reads them.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import clt


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) > 1 else float("nan")


def row(encoder: str, knn: int, store: str | None) -> dict:
    quality = clt.evaluate(encoder, quality=True, pairs=False, store=store)
    labelled = clt.evaluate(encoder, knn=knn, pairs=False, store=store)
    scores = quality.manifest["results"]["label_free"]
    return {"encoder": encoder[:12], "name": quality.name, "view_retrieval": scores["encoder"]["view_retrieval"],
            "untrained": scores["untrained"]["view_retrieval"], "pixels": scores["pixels"]["view_retrieval"],
            "knn_accuracy": labelled.metrics["knn_accuracy"],
            "verdict": quality.manifest["results"]["label_free_verdict"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("encoders", nargs="+", help="stored encoder ids (or names)")
    parser.add_argument("--knn", type=int, default=200, help="K of the labelled kNN accuracy (default 200)")
    parser.add_argument("--artifacts", default=None, help="artifact store (default $CLT_ARTIFACTS or ./artifacts)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    rows = [row(encoder, args.knn, args.artifacts) for encoder in args.encoders]
    rho = spearman([r["view_retrieval"] for r in rows], [r["knn_accuracy"] for r in rows])
    if args.json:
        print(json.dumps({"rows": rows, "spearman": rho, "knn": args.knn}))
        return
    print(f"| encoder | name | view retrieval % | untrained % | pixels % | {args.knn}-NN % |")
    print("|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: -r["knn_accuracy"]):
        print(f"| {r['encoder']} | {r['name']} | {100 * r['view_retrieval']:.1f} | {100 * r['untrained']:.1f} | "
              f"{100 * r['pixels']:.1f} | {100 * r['knn_accuracy']:.2f} |")
    print(f"\nSpearman rank correlation of view retrieval with {args.knn}-NN accuracy over {len(rows)} encoders: "
          f"{rho:.3f}" + ("" if np.isfinite(rho) else " (undefined: fewer than two encoders or constant scores)"))


if __name__ == "__main__":
    main()
