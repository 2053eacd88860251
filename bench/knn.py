"""Exact kNN at scale: seconds for Q queries against N train embeddings of dimension D.

    python bench/knn.py                      # 10,000 × 60,000 × 128 and 10,000 × 1,000,000 × 128
    python bench/knn.py --train 200000 --dim 64

Train embeddings are scanned in chunks with a running top-k (clt.metrics.knn_predict), so
memory stays bounded whatever N is; the result is checked against a brute-force top-k on a
sample of queries.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from clt.metrics import knn_predict


def run(n_train: int, n_query: int, dim: int, k: int, vote: str) -> dict:
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(n_train, dim, generator=generator)
    labels = torch.randint(0, 10, (n_train,), generator=generator)
    queries = torch.randn(n_query, dim, generator=generator)
    started = time.perf_counter()
    pred = knn_predict(train, labels, queries, k, 10, "cosine", vote)
    seconds = time.perf_counter() - started
    # brute-force check on 64 queries
    q = torch.nn.functional.normalize(queries[:64], dim=1)
    t = torch.nn.functional.normalize(train, dim=1)
    top = (q @ t.T).topk(k, dim=1).indices
    expected = torch.zeros(64, 10).scatter_add_(1, labels[top], torch.ones(64, k)).argmax(1)
    agree = float((expected == pred[:64]).float().mean())
    peak = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"train": n_train, "queries": n_query, "dim": dim, "k": k, "vote": vote, "seconds": round(seconds, 2),
            "agree_with_brute_force": agree, "peak_rss_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, nargs="*", default=[60_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=200)
    args = parser.parse_args()
    for n in args.train:
        print(run(n, args.queries, args.dim, args.k, "majority"), flush=True)


if __name__ == "__main__":
    main()
