"""Similarity search: an index artifact over stored embeddings, and the nearest stored images of new ones.

`exact` is a chunked matrix-product scan (clt.metrics); `hnsw` and `ivf` are FAISS's approximate
indexes (faiss-cpu, installed on demand), for millions of vectors. Every index records the
encoder whose embeddings it holds, and refuses queries embedded by another.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from clt.atomic import written_aside
from clt.errors import CltError, StoreError
from clt.rows import NAMES_FILE, OLD_NAMES_FILE, read_names, tsv_field
from clt.stages.context import Context, Outcome, produce
from clt.stages.embed import embed
from clt.store import Artifact

INDEX_KINDS = ("exact", "hnsw", "ivf")
METRICS = ("cosine", "euclidean")
# Chosen with bench/index.py on 1,000,000 128-d vectors from a real encoder (bench/results/index.md):
# HNSW M=16, efSearch=64 finds 97.7 % of the exact top-10 at 66x the exact scan's queries/s (efSearch
# 32: 96.5 % at 122x, too little margin); IVF with 4·sqrt(n) lists needs nprobe 16 for 99.4 % (8.6x).
# On i.i.d. Gaussian vectors, the worst case, no setting tried came near 95 %.
HNSW = {"M": 16, "efConstruction": 80, "efSearch": 64}
IVF = {"nlist_per_sqrt_n": 4, "nprobe": 16}


def build_index(ctx: Context, ref: str | None, split: str = "train", kind: str = "exact",
                metric: str = "cosine") -> Outcome:
    """An index artifact over an encoder's embeddings of a split (or over an embeddings artifact).

    Example: build_index(ctx, encoder_id, kind="hnsw").artifact.manifest["index"]["count"]
    """
    if kind not in INDEX_KINDS:
        raise CltError(f"--type {kind} is not an index type", f"use one of: {', '.join(INDEX_KINDS)}")
    if metric not in METRICS:
        raise CltError(f"--metric {metric} is not allowed", f"use one of: {', '.join(METRICS)}")
    target = ctx.store.resolve_named(ref, ("encoder", "embeddings"), hint="train an encoder first: clt pretrain")
    source = embed(ctx, target.id, split).artifact if target.kind == "encoder" else target
    params = {"exact": {}, "hnsw": HNSW, "ivf": IVF}[kind]
    spec = {"stage": "index", "inputs": {"embeddings": source.id}, "kind": kind, "metric": metric, "params": params}
    return produce(ctx, spec, "index", lambda tmp, _id: _build(ctx, source, kind, metric, params, tmp),
                   name=source.name)


def _build(ctx: Context, source: Artifact, kind: str, metric: str, params: dict, tmp: Path) -> dict[str, Any]:
    import shutil

    import numpy as np

    vectors = np.load(source.file("embeddings.npy"), allow_pickle=False).astype(np.float32)
    if metric == "cosine":
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    with ctx.report.progress(f"building {kind} index", None):
        if kind == "exact":
            np.save(tmp / "vectors.npy", vectors)
        else:
            _faiss_build(vectors, kind, metric, params, tmp / "index.faiss")
    for name in ("labels.npy", NAMES_FILE, OLD_NAMES_FILE):  # paths.txt: embeddings of an older clt
        if name in source.manifest.get("files", {}):
            shutil.copyfile(source.file(name), tmp / name)
    info = {"kind": kind, "metric": metric, "params": params, "dim": int(vectors.shape[1]), "count": len(vectors),
            "encoder": source.inputs["encoder"], "embeddings": source.id, "split": source.manifest.get("split")}
    return {"index": info, "classes": source.manifest.get("classes", []),
            "metrics": {"count": info["count"], "dim": info["dim"]}}


def faiss_module():
    try:
        import faiss
    except ImportError:
        raise CltError("approximate indexes need FAISS, which is not installed",
                       "pip install 'clt[index]' (faiss-cpu), or use --type exact") from None
    return faiss


def _faiss_build(vectors, kind: str, metric: str, params: dict, path: Path) -> None:
    faiss = faiss_module()
    dim, space = vectors.shape[1], faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["M"], space)
        index.hnsw.efConstruction = params["efConstruction"]
    else:
        nlist = max(1, min(len(vectors) // 39, int(params["nlist_per_sqrt_n"] * math.sqrt(len(vectors)))))
        index = faiss.IndexIVFFlat(faiss.IndexFlat(dim, space), dim, nlist, space)
        index.train(vectors)  # k-means on the vectors themselves (FAISS samples 256 per list)
    index.add(vectors)
    faiss.write_index(index, str(path))  # FAISS's own binary format: no pickle


class SearchIndex:
    """A stored index, loaded for queries: `search(vectors, k)` -> (distances, rows), best first.

    Example: SearchIndex(store.get(index_id)).search(encoder.embed(images), 10)
    """

    def __init__(self, artifact: Artifact):
        import numpy as np

        self.artifact, self.info = artifact, artifact.manifest["index"]
        self.encoder_id = self.info["encoder"]
        self.labels = np.load(artifact.file("labels.npy")) if "labels.npy" in artifact.manifest["files"] else None
        self.paths = _row_names(artifact)
        self.vectors, self.faiss_index = None, None
        if self.info["kind"] == "exact":
            self.vectors = np.load(artifact.file("vectors.npy"), allow_pickle=False)
        else:
            self.faiss_index = _faiss_read(artifact)

    def search(self, vectors, k: int, encoder_id: str | None = None):
        import numpy as np

        if encoder_id is not None and encoder_id != self.encoder_id:
            raise CltError(f"index {self.artifact.short} holds embeddings of encoder {self.encoder_id[:12]}, not of "
                           f"{encoder_id[:12]}", "search with the encoder the index was built from, or build an "
                           f"index for this one: clt index {encoder_id[:12]}")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.info["dim"]:
            raise CltError(f"queries of shape {vectors.shape} do not fit the index's {self.info['dim']}-d vectors",
                           "embed the queries with the index's encoder")
        if self.info["metric"] == "cosine":
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        k = min(k, self.info["count"])
        return self._exact(vectors, k) if self.faiss_index is None else self._approximate(vectors, k)

    def _exact(self, vectors, k: int):
        import numpy as np
        import torch

        from clt.metrics import nearest_neighbours

        sims, rows = [], []
        for q, sim, idx in nearest_neighbours(torch.from_numpy(self.vectors), torch.from_numpy(vectors), k,
                                              self.info["metric"], normalized=True):
            if self.info["metric"] == "euclidean":
                sim = (q * q).sum(1, keepdim=True) - sim  # squared distance
            sims.append(sim.numpy())
            rows.append(idx.numpy())
        found = np.concatenate(sims)
        distance = 1 - found if self.info["metric"] == "cosine" else np.sqrt(np.maximum(found, 0))
        return distance, np.concatenate(rows)

    def _approximate(self, vectors, k: int):
        import numpy as np

        params = self.info["params"]
        if self.info["kind"] == "hnsw":
            self.faiss_index.hnsw.efSearch = max(params["efSearch"], k)
        else:
            self.faiss_index.nprobe = params["nprobe"]
        found, rows = self.faiss_index.search(vectors, k)
        distance = 1 - found if self.info["metric"] == "cosine" else np.sqrt(np.maximum(found, 0))
        return distance, rows


def _row_names(artifact: Artifact) -> list[str] | None:
    """The index's row names (None for a dataset split's rows), one per row or refused."""
    files = artifact.manifest["files"]
    stored = next((name for name in (NAMES_FILE, OLD_NAMES_FILE) if name in files), None)
    return read_names(artifact.file(stored), artifact.manifest["index"]["count"]) if stored else None


def _faiss_read(artifact: Artifact):
    faiss = faiss_module()
    try:
        return faiss.read_index(str(artifact.file("index.faiss")))
    except RuntimeError as err:
        raise StoreError(f"{artifact.short}: index.faiss cannot be read ({str(err).splitlines()[0]})",
                         "rebuild it: clt gc --damaged, then clt index again") from None


def search(ctx: Context, index_ref: str | None, items: list[str], k: int = 10, grid: str | None = None
           ) -> list[dict[str, Any]]:
    """Each query image's k nearest stored images: rank, row, label, class, path, distance; with `grid`
    a PNG of every query beside its neighbours, each captioned with its name (see `shown_name`).

    `path` is the stored image's file name: its path in the imported folder or archive (or as given
    to `embed --images`); None for the rows of a built-in dataset (digits, mnist, fashion-mnist,
    cifar10), which have no file names and are named by their row number. `label` and `class` are
    None where the stored image has no class (an unlabeled dataset, or new images).

    Example: search(ctx, index_id, ["cat.jpg"], k=5)[0]["neighbours"][0]["class"]
    """
    from clt.devices import pick_device
    from clt.stages.images import read_images
    from clt.stages.inference import encoder_for

    if k < 1:
        raise CltError(f"-k {k} must be >= 1", "use e.g. -k 10")
    artifact = ctx.store.resolve_named(index_ref, ("index",), hint="build one first: clt index ENCODER")
    index = SearchIndex(artifact)
    if not ctx.store.exists(index.encoder_id):
        raise StoreError(f"index {artifact.short}: its encoder {index.encoder_id[:12]} is not in the store",
                         "train it again (the same clt pretrain command), or build an index of another encoder")
    encoder = encoder_for(ctx.store, ctx.store.get(index.encoder_id), pick_device(ctx.device))
    images, names, _ = read_images(ctx, items, encoder)
    distances, rows = index.search(encoder.embed(images), k, encoder_id=encoder.id)
    classes = artifact.manifest.get("classes", [])
    # an approximate index pads with row -1 when it finds fewer than k candidates: not neighbours
    found = [{"query": name, "neighbours": [_neighbour(index, classes, rank, int(row), float(d))
                                            for rank, (row, d) in enumerate((r, d) for r, d in zip(row_ids, dists)
                                                                            if r >= 0)]}
             for name, row_ids, dists in zip(names, rows, distances)]
    if grid:
        _draw_grid(ctx, index, images, found, Path(grid))
    return found


def _neighbour(index: SearchIndex, classes: list[str], rank: int, row: int, distance: float) -> dict[str, Any]:
    label = int(index.labels[row]) if index.labels is not None else -1
    known = 0 <= label < len(classes)  # -1 (unlabeled) is no class: null in JSON, never a number to print
    return {"rank": rank + 1, "row": row, "label": label if known else None, "class": classes[label] if known else None,
            "path": index.paths[row] if index.paths else None, "distance": distance}


def shown_name(neighbour: dict[str, Any]) -> str:
    """How a neighbour is named in the TSV and in grid captions: its file name, or for a built-in
    dataset's row (no file name) its row number in the indexed split.

    Example: shown_name({"row": 7, "path": None}) == "7"; shown_name({"row": 7, "path": "a/b.png"}) == "a/b.png"
    """
    return neighbour["path"] if neighbour["path"] is not None else str(neighbour["row"])


def caption(neighbour: dict[str, Any], width: int = 18) -> str:
    """A grid cell's caption: the end of its name (escaped: matplotlib draws no line break), then its
    class where it has one and its distance."""
    name = tsv_field(shown_name(neighbour))
    name = name if len(name) <= width else "…" + name[-(width - 1):]
    kind = f"{tsv_field(neighbour['class'])} " if neighbour["class"] is not None else ""
    return f"{name}\n{kind}{neighbour['distance']:.2g}"


def _draw_grid(ctx: Context, index: SearchIndex, queries, found: list[dict[str, Any]], path: Path) -> None:
    """Each query (first column) beside its neighbours' images, captioned with name, class and distance."""
    import numpy as np

    from clt import plots

    pictures = _neighbour_pictures(ctx, index, [n["row"] for f in found for n in f["neighbours"]], queries.shape[1:])
    rows, captions, at = [], [], 0
    for query, result in zip(queries.numpy(), found):
        count = len(result["neighbours"])
        rows.append(np.concatenate([query[None], pictures[at:at + count]]).astype(np.float32) / 255)
        captions.append(["query"] + [caption(n) for n in result["neighbours"]])
        at += count
    # names escaped as the TSV output escapes them: matplotlib draws no line break, tab or non-UTF-8 byte
    titles = [tsv_field(f["query"])[-40:] for f in found]
    with written_aside(path if path.suffix else path.with_suffix(".png"), "--grid") as partial:
        plots.image_grid(rows, partial, titles, f"nearest of {len(found)} queries", cell_titles=captions)
    ctx.report.info(f"picture: {path}")


def _neighbour_pictures(ctx: Context, index: SearchIndex, rows: list[int], shape):
    """uint8 images of index rows: from the dataset split the index was built on (whose names are
    paths inside the imported folder, not files to open), or decoded from the recorded paths of
    `embed --images` (blank where a file is gone)."""
    import numpy as np

    from clt.stages.dataset import dataset_of, load_dataset

    if index.info.get("split") in ("train", "test"):
        encoder = ctx.store.get(index.encoder_id)
        data = load_dataset(dataset_of(ctx.store, encoder))
        return data.split(index.info["split"]).images[rows].numpy()
    from clt.data.sources import decode_image, read_file

    out = np.zeros((len(rows), *shape), np.uint8)
    for i, row in enumerate(rows):
        name = index.paths[row] if index.paths else None
        if name and Path(name).is_file():  # members of a tarball stay blank: no archive is reread per cell
            try:
                arr = decode_image(read_file(Path(name)), shape[0], tuple(shape[1:]), name)
            except CltError:
                continue
            if arr is not None:
                out[i] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return out
