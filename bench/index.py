"""Approximate similarity search against exact: build time, memory, latency, recall@k of clt's FAISS indexes.

    python bench/index.py                                            # 1,000,000 × 128, random and real
    python bench/index.py --real-embeddings emb.npy --data real      # real vectors only
    python bench/index.py --n 20000 --queries 200 --data random --out index_small

Each dataset is searched exactly (clt.metrics.nearest_neighbours, its default chunks, --threads
threads), which gives the queries/s to beat and the true top-k. Then a sweep of approximate
indexes, each built by clt's own builder (clt.stages.search._faiss_build): HNSW with M in
{16, 32} (efConstruction 80, built once per M, efSearch in {32, 64, 128, 256} varied at query
time) and IVF with nlist = 4·√n and nprobe in {8, 16, 32, 64} (--hnsw-m, --ef-search and
--nprobe change the sweep). For every configuration: build time, peak memory
added by the build, index size, single-query latency p50/p99 (one vector per call, 1 thread),
batch queries/s (all queries in one call, --threads threads), recall@k against exact, and the
speed-up over exact. The choice per kind is the fastest configuration with recall@k >= --recall
(0.95), checked against the target speed-up (20× exact) and set beside clt's current defaults
(clt.stages.search.HNSW and IVF).

"random": i.i.d. Gaussian vectors. "real": rows of --real-embeddings (an (N, D) float32 .npy);
where N < n + queries, the n vectors are the real rows plus noisy resampled copies, and the
queries are noisy copies of real rows held out of the index (the report says so). Queries are
never in the index. Cosine (the default metric) L2-normalises everything first, as clt does.
Writes OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from records import command_line, portable, write_record

from clt.metrics import nearest_neighbours
from clt.stages.search import HNSW, IVF, _faiss_build, faiss_module

HNSW_M = (16, 32)
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = (32, 64, 128, 256)
IVF_NLIST_PER_SQRT_N = 4
IVF_NPROBE = (8, 16, 32, 64)
MIN_TIMING_S = 1.0  # batch timings repeat until this long in all
EXACT_LATENCY_QUERIES = 50  # each exact call re-normalises all n stored vectors: slow one at a time
MEMORY_METHOD = ("VmHWM (peak resident set, /proc/self/status) reset before each build via /proc/self/clear_refs, "
                 "minus VmRSS just before the build (after gc and malloc_trim)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors in the index")
    parser.add_argument("--dim", type=int, default=128, help="dimension of the random vectors")
    parser.add_argument("--queries", type=int, default=1000, help="held-out query vectors")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query (recall@k)")
    parser.add_argument("--data", choices=("random", "real", "both"), default="both")
    parser.add_argument("--real-embeddings", type=Path, help="(N, D) float32 .npy of real embeddings")
    parser.add_argument("--noise", type=float, default=0.1,
                        help="std of the noise added to resampled real rows, relative to the rows' per-dim std")
    parser.add_argument("--metric", choices=("cosine", "euclidean"), default="cosine")
    parser.add_argument("--threads", type=int, default=2, help="threads for exact search and batch queries")
    parser.add_argument("--latency-queries", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--repeats", type=int, default=3, help="least batch timings per configuration (fastest kept)")
    parser.add_argument("--recall", type=float, default=0.95, help="recall@k a configuration must reach")
    parser.add_argument("--speedup", type=float, default=20.0, help="target queries/s over exact")
    parser.add_argument("--hnsw-m", type=int, nargs="+", default=list(HNSW_M), help="HNSW M values (one build each)")
    parser.add_argument("--ef-search", type=int, nargs="+", default=list(HNSW_EF_SEARCH), help="HNSW efSearch values")
    parser.add_argument("--nprobe", type=int, nargs="+", default=list(IVF_NPROBE), help="IVF nprobe values")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/index", help="writes OUT.md and OUT.json")
    return parser.parse_args(argv)


# ---------------------------------------------------------------- machine

def machine_info(threads: int, command: str) -> dict:
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    faiss = faiss_module()
    return {"cpu": model, "avx2": "avx2" in flags, "avx512f": "avx512f" in flags, "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "threads": threads, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "faiss": faiss.__version__, "faiss_simd": _faiss_simd(faiss), "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version(),
            "command": command}


def _faiss_simd(faiss) -> str:
    try:
        return faiss.get_compile_options().strip()
    except AttributeError:
        return "unknown"


def set_threads(count: int) -> None:
    torch.set_num_threads(count)
    faiss_module().omp_set_num_threads(count)


# ---------------------------------------------------------------- memory

def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak resident memory added inside the block, in MiB: VmHWM reset on entry (clear_refs "5"),
    minus VmRSS on entry. Without clear_refs, the ru_maxrss rise (a lower bound) is reported."""

    def __enter__(self) -> PeakMemory:
        gc.collect()
        _malloc_trim()  # freed heap goes back to the OS, or a build reusing it would count as free
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "VmHWM"
        except OSError:
            self.method = "ru_maxrss rise (lower bound: peak could not be reset)"
        self.rss_kb = _status_kb("VmRSS")
        self.maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc) -> None:
        if self.method == "VmHWM":
            added = _status_kb("VmHWM") - self.rss_kb
        else:
            added = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.maxrss_kb
        self.mib = max(0, added) / 1024


# ---------------------------------------------------------------- data

def random_dataset(n: int, queries: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    rows = np.random.default_rng(seed).standard_normal((n + queries, dim), dtype=np.float32)
    return rows[:n], rows[n:], f"{n:,} i.i.d. Gaussian vectors, {queries:,} more as queries"


def real_dataset(path: Path, n: int, queries: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    real = np.load(path, allow_pickle=False).astype(np.float32)
    if real.ndim != 2:
        raise SystemExit(f"{path}: expected an (N, D) array, got shape {real.shape}")
    rng = np.random.default_rng(seed)
    real = real[rng.permutation(len(real))]
    if len(real) >= n + queries:
        return real[:n], real[n:n + queries], f"{n:,} + {queries:,} distinct real rows of {path} ({len(real):,})"
    held = max(1, min(queries, len(real) // 10))
    sigma = noise * float(real.std(axis=0).mean())
    base, query_base = real[held:], real[:held]
    extra = _noisy_copies(base, n - len(base), sigma, rng) if n > len(base) else base[:0]
    data = np.concatenate([base[:n], extra])
    picked = query_base[rng.integers(0, held, queries)]
    query = picked + rng.standard_normal(picked.shape, dtype=np.float32) * sigma
    note = (f"{path} has only {len(real):,} rows: the index holds {min(n, len(base)):,} real rows plus "
            f"{len(extra):,} resampled copies with Gaussian noise (std {sigma:.3g} = {noise} × the rows' per-dim "
            f"std); the {queries:,} queries are noisy copies of {held:,} real rows held out of the index")
    return data, query, note


def _noisy_copies(base: np.ndarray, count: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    picked = base[rng.integers(0, len(base), count)]
    picked += rng.standard_normal(picked.shape, dtype=np.float32) * sigma
    return picked


def prepare(vectors: np.ndarray, metric: str) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if metric == "cosine":
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors


def datasets(args: argparse.Namespace):
    """(name, data, queries, note) of each requested dataset; a printed note where "real" is skipped."""
    if args.data in ("random", "both"):
        yield ("random", *random_dataset(args.n, args.queries, args.dim, args.seed))
    if args.data in ("real", "both"):
        if args.real_embeddings is None:
            print("note: no --real-embeddings file given, the 'real' dataset is skipped", flush=True)
            return
        yield ("real", *real_dataset(args.real_embeddings, args.n, args.queries, args.noise, args.seed))


# ---------------------------------------------------------------- exact

def exact_search(data: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    train, query = torch.from_numpy(data), torch.from_numpy(queries)
    return torch.cat([idx for _, _, idx in nearest_neighbours(train, query, k, metric)]).numpy()


def measure_exact(data: np.ndarray, queries: np.ndarray, args: argparse.Namespace) -> tuple[dict, np.ndarray]:
    set_threads(args.threads)
    truth = exact_search(data, queries, args.k, args.metric)
    seconds = best_seconds(lambda: exact_search(data, queries, args.k, args.metric), args.repeats)
    set_threads(1)
    exact_search(data, queries[:1], args.k, args.metric)  # warm-up
    subset = queries[:min(args.latency_queries, EXACT_LATENCY_QUERIES)]
    latency = _latency(lambda q: exact_search(data, q, args.k, args.metric), subset)
    set_threads(args.threads)
    row = {"kind": "exact", "config": "exact (clt.metrics.nearest_neighbours)", "params": {},
           "qps": len(queries) / seconds, "recall": 1.0, "speedup": 1.0, **latency}
    return row, truth


def _latency(search, queries: np.ndarray) -> dict:
    times = []
    for q in queries:
        started = time.perf_counter()
        search(q[None])
        times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "latency_queries": len(times)}


# ---------------------------------------------------------------- approximate

def build(data: np.ndarray, kind: str, params: dict, metric: str, threads: int, folder: Path):
    """The index clt would build (its own builder writes it to disk), read back; build stats."""
    faiss = faiss_module()
    path = folder / f"{kind}.faiss"
    faiss.omp_set_num_threads(threads)
    with PeakMemory() as memory:
        started = time.perf_counter()
        _faiss_build(data, kind, metric, params, path)
        total = time.perf_counter() - started
    index = faiss.read_index(str(path))
    started = time.perf_counter()
    faiss.write_index(index, str(path))  # the same write again: its time comes off the build time
    write = time.perf_counter() - started
    stats = {"build_s": max(0.0, total - write), "write_s": write, "build_peak_mib": memory.mib,
             "memory_method": memory.method, "index_bytes": path.stat().st_size}
    path.unlink()
    return index, stats


def query_stats(index, queries: np.ndarray, truth: np.ndarray, args: argparse.Namespace) -> dict:
    faiss = faiss_module()
    faiss.omp_set_num_threads(1)
    index.search(queries[:1], args.k)  # warm-up
    latency = _latency(lambda q: index.search(q, args.k), queries[:args.latency_queries])
    faiss.omp_set_num_threads(args.threads)
    _, found = index.search(queries, args.k)
    seconds = best_seconds(lambda: index.search(queries, args.k), args.repeats)
    return {**latency, "qps": len(queries) / seconds, "recall": recall(found, truth)}


def best_seconds(search, repeats: int, at_least: float = MIN_TIMING_S) -> float:
    """The fastest of `repeats` calls, more while under `at_least` seconds in all (short calls are noisy)."""
    times: list[float] = []
    while len(times) < repeats or sum(times) < at_least:
        started = time.perf_counter()
        search()
        times.append(time.perf_counter() - started)
    return min(times)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's true top-k that the approximate top-k holds."""
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth))
    return hits / truth.size


def hnsw_rows(data, queries, truth, args, folder: Path) -> list[dict]:
    rows = []
    for m in args.hnsw_m:
        params = {"M": m, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": args.ef_search[0]}
        index, built = build(data, "hnsw", params, args.metric, args.threads, folder)
        for ef in args.ef_search:
            index.hnsw.efSearch = max(ef, args.k)  # as clt.stages.search.SearchIndex sets it
            config = {**params, "efSearch": ef}
            rows.append(_row("hnsw", config, built, query_stats(index, queries, truth, args)))
            _progress(rows[-1])
        del index
        gc.collect()
    return rows


def ivf_rows(data, queries, truth, args, folder: Path) -> list[dict]:
    params = {"nlist_per_sqrt_n": IVF_NLIST_PER_SQRT_N, "nprobe": args.nprobe[0]}
    index, built = build(data, "ivf", params, args.metric, args.threads, folder)
    rows = []
    for nprobe in args.nprobe:
        index.nprobe = nprobe
        config = {**params, "nprobe": nprobe}
        rows.append(_row("ivf", config, {**built, "nlist": int(index.nlist)}, query_stats(index, queries, truth, args)))
        _progress(rows[-1])
    del index
    gc.collect()
    return rows


def _row(kind: str, params: dict, built: dict, queried: dict) -> dict:
    return {"kind": kind, "config": describe(kind, params, built.get("nlist")), "params": params, **built, **queried}


def describe(kind: str, params: dict, nlist: int | None = None) -> str:
    if kind == "hnsw":
        return f"hnsw M={params['M']} efC={params['efConstruction']} efSearch={params['efSearch']}"
    return f"ivf nlist={nlist} ({params['nlist_per_sqrt_n']}·√n) nprobe={params['nprobe']}"


def _progress(row: dict) -> None:
    print(f"  {row['config']}: recall {row['recall']:.4f}, {row['qps']:,.0f} q/s, p50 {row['p50_ms']:.3f} ms, "
          f"build {row['build_s']:.1f} s", flush=True)


# ---------------------------------------------------------------- choice

def is_default(row: dict) -> bool:
    defaults = {"hnsw": HNSW, "ivf": IVF}.get(row["kind"])
    return defaults is not None and all(row["params"].get(key) == value for key, value in defaults.items())


def choose(rows: list[dict], exact_qps: float, args: argparse.Namespace) -> dict:
    """Per kind: the fastest configuration (batch queries/s) with recall@k >= args.recall."""
    choice = {}
    for kind in ("hnsw", "ivf"):
        passing = [r for r in rows if r["kind"] == kind and r["recall"] >= args.recall]
        best = max(passing, key=lambda r: r["qps"], default=None)
        default = next((r for r in rows if r["kind"] == kind and is_default(r)), None)
        choice[kind] = {"chosen": best and best["config"], "chosen_params": best and best["params"],
                        "speedup": best and best["qps"] / exact_qps,
                        "meets_target": bool(best and best["qps"] / exact_qps >= args.speedup),
                        "default": default and default["config"], "default_recall": default and default["recall"],
                        "default_speedup": default and default["qps"] / exact_qps,
                        "default_is_chosen": bool(best and default and best is default)}
    return choice


def overall_choice(results: list[dict], args: argparse.Namespace) -> dict | None:
    """The configuration whose worst speed-up over all datasets is highest, among those reaching
    the recall bar on every dataset."""
    configs = {}
    for result in results:
        for row in result["rows"]:
            configs.setdefault(row["config"], []).append(row)
    passing = [(min(r["speedup"] for r in group), config, group[0]) for config, group in configs.items()
               if len(group) == len(results) and all(r["recall"] >= args.recall for r in group)]
    if not passing:
        return None
    speedup, config, row = max(passing, key=lambda p: p[0])
    return {"config": config, "kind": row["kind"], "params": row["params"], "worst_speedup": speedup,
            "meets_target": speedup >= args.speedup, "is_default": is_default(row)}


# ---------------------------------------------------------------- report

def run_dataset(name: str, data: np.ndarray, queries: np.ndarray, note: str, args: argparse.Namespace) -> dict:
    data, queries = prepare(data, args.metric), prepare(queries, args.metric)
    print(f"{name}: {note}", flush=True)
    exact, truth = measure_exact(data, queries, args)
    print(f"  exact: {exact['qps']:,.1f} q/s, p50 {exact['p50_ms']:.2f} ms", flush=True)
    with tempfile.TemporaryDirectory(prefix="clt-bench-index-") as folder:
        rows = hnsw_rows(data, queries, truth, args, Path(folder)) + ivf_rows(data, queries, truth, args, Path(folder))
    for row in rows:
        row["speedup"] = row["qps"] / exact["qps"]
    return {"dataset": name, "note": note, "n": len(data), "dim": int(data.shape[1]), "queries": len(queries),
            "exact": exact, "rows": rows, "choice": choose(rows, exact["qps"], args)}


def markdown(results: list[dict], machine: dict, overall: dict | None, args: argparse.Namespace) -> str:
    lines = ["# Similarity-search indexes: approximate against exact", "",
             f"Command: `{machine['command']}`", "",
             f"CPU: {machine['cpu']} (avx2 {_yes(machine['avx2'])}, avx512f {_yes(machine['avx512f'])}); "
             f"{machine['cpu_count']} logical CPUs, {machine['affinity']} usable; {args.threads} threads for exact "
             f"search and batch queries, 1 thread for single-query latency (faiss.omp_set_num_threads(1), "
             f"torch.set_num_threads(1)); OMP_NUM_THREADS={machine['OMP_NUM_THREADS']}; faiss {machine['faiss']} "
             f"({machine['faiss_simd']}), torch {machine['torch']}.", "",
             f"Metric {args.metric}; k = {args.k}; recall bar {args.recall}; speed-up target {args.speedup:g}× exact.",
             "", *_legend(args), ""]
    for result in results:
        lines += _dataset_section(result, args)
    lines += _overall_lines(overall, args)
    return "\n".join(lines) + "\n"


def _legend(args: argparse.Namespace) -> list[str]:
    return [
        "Columns: **build s** — clt's `_faiss_build` (train + add; the time to write the file, measured by "
        "writing it again, taken off); **peak MiB** — peak resident memory added by the build: " + MEMORY_METHOD +
        " (the vectors themselves are already resident and not counted); **size** — the serialised index "
        "(FAISS `write_index` bytes, the same as `faiss.serialize_index`); **p50/p99 ms** — one query per "
        f"call, 1 thread, over the first {args.latency_queries} queries (exact: the first "
        f"{min(args.latency_queries, EXACT_LATENCY_QUERIES)}, each call re-normalising all n stored vectors as "
        "clt's exact search does); **q/s** — all queries in one call, "
        f"{args.threads} threads, the fastest of ≥ {args.repeats} calls (more until {MIN_TIMING_S:g} s in all; the "
        "first call, untimed, gives the recall); **recall@{args.k}** — mean fraction of the exact "
        f"top-{args.k} found; **× exact** — q/s over the exact search's q/s. HNSW rows of one M share one build.",
    ]


def _dataset_section(result: dict, args: argparse.Namespace) -> list[str]:
    exact = result["exact"]
    lines = [f"## {result['dataset']}: {result['n']:,} × {result['dim']}, {result['queries']:,} queries", "",
             result["note"], "",
             f"| configuration | build s | peak MiB | size MiB | p50 ms | p99 ms | q/s | recall@{args.k} | × exact |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| exact (clt.metrics.nearest_neighbours) | – | – | {result['n'] * result['dim'] * 4 / 2**20:.1f} | "
             f"{exact['p50_ms']:.3f} | {exact['p99_ms']:.3f} | {exact['qps']:,.1f} | 1.0000 | 1.0 |"]
    for row in result["rows"]:
        mark = " (clt default)" if is_default(row) else ""
        lines.append(f"| {row['config']}{mark} | {row['build_s']:.2f} | {row['build_peak_mib']:.1f} | "
                     f"{row['index_bytes'] / 2**20:.1f} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | "
                     f"{row['qps']:,.0f} | {row['recall']:.4f} | {row['speedup']:.1f} |")
    return lines + [""] + [_choice_line(kind, c, args) for kind, c in result["choice"].items()] + [""]


def _choice_line(kind: str, choice: dict, args: argparse.Namespace) -> str:
    if choice["chosen"] is None:
        head = f"- choice {kind}: no configuration reaches recall@{args.k} ≥ {args.recall}"
    else:
        verdict = "meets" if choice["meets_target"] else "misses"
        head = (f"- choice {kind}: **{choice['chosen']}** — {choice['speedup']:.1f}× exact, {verdict} the "
                f"{args.speedup:g}× target")
    if choice["default"] is None:
        return head + "; clt's default is not in the sweep"
    same = "it is the choice" if choice["default_is_chosen"] else "not the choice"
    return (f"{head}; clt's default ({choice['default']}): recall@{args.k} {choice['default_recall']:.4f}, "
            f"{choice['default_speedup']:.1f}× exact, {same}")


def _overall_lines(overall: dict | None, args: argparse.Namespace) -> list[str]:
    if overall is None:
        return [f"**Overall**: no configuration reaches recall@{args.k} ≥ {args.recall} on every dataset."]
    verdict = "meets" if overall["meets_target"] else "misses"
    default = "the same as" if overall["is_default"] else "differs from"
    return [f"**Overall choice** (recall@{args.k} ≥ {args.recall} on every dataset, highest worst-case speed-up): "
            f"{overall['config']}, {overall['worst_speedup']:.1f}× exact at worst — {verdict} the "
            f"{args.speedup:g}× target; {default} clt's defaults (HNSW {HNSW}, IVF {IVF})."]


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = command_line("index.py", argv, TRAIN_EMBEDDINGS=args.real_embeddings)
    machine = machine_info(args.threads, command)
    print(f"CPU {machine['cpu']} avx2={machine['avx2']} avx512f={machine['avx512f']}, {args.threads} threads; "
          f"peak memory: {MEMORY_METHOD}", flush=True)
    started = time.perf_counter()
    results = [run_dataset(*dataset, args) for dataset in datasets(args)]
    if not results:
        raise SystemExit("no dataset to run: give --real-embeddings or use --data random/both")
    overall = overall_choice(results, args)
    md, js = Path(f"{args.out}.md"), Path(f"{args.out}.json")
    md.parent.mkdir(parents=True, exist_ok=True)
    report = markdown(results, machine, overall, args)
    md.write_text(report, encoding="utf-8")
    named = {"real_embeddings": "TRAIN_EMBEDDINGS" if args.real_embeddings else None, "out": portable(args.out, {})}
    payload = {"machine": machine, "args": {**vars(args), **named},  # no path of this machine in the record
               "memory_method": MEMORY_METHOD, "results": results, "overall": overall,
               "seconds": round(time.perf_counter() - started, 1)}
    write_record(js, payload, study="images", command=command,
                 title=f"Exact against approximate search over {results[0]['n']:,} × {results[0]['dim']} vectors",
                 protocol=f"{args.queries:,} held-out queries, {args.metric}, k = {args.k}; "
                          + "; ".join(f"{r['dataset']}: {r['note']}" for r in results),
                 figures=index_figures(results, args.k))
    print(report)
    print(f"wrote {md} and {js} ({payload['seconds']} s)")


def index_figures(results: list[dict], k: int) -> dict:
    """Recall and speed-up of clt's default HNSW and IVF settings on each dataset, and the wall time."""
    out = {}
    for i, result in enumerate(results):
        for kind in ("hnsw", "ivf"):
            where = f"results.{i}.choice.{kind}"
            out[f"{kind.upper()} default recall@{k} ({result['dataset']})"] = {
                "path": f"{where}.default_recall", "format": "num", "digits": 3}
            out[f"{kind.upper()} default × exact q/s ({result['dataset']})"] = {
                "path": f"{where}.default_speedup", "format": "num", "digits": 1}
    return {**out, "wall time s": {"path": "seconds", "format": "num", "digits": 0}}


if __name__ == "__main__":
    main()
