"""The dataset stage: fetch or import a dataset once, store it as uint8 arrays; find stored ones."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from clt.errors import DataError, did_you_mean
from clt.rows import NAMES_FILE, names_text, read_names
from clt.stages.context import Context, Outcome
from clt.store import Artifact, Store

KNOWN_DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")


def download(ctx: Context, name: str, source: str | None = None, size: tuple[int, int] | None = None,
             mirrors: list[str] | None = None) -> Outcome:
    """Fetch or import a dataset and store it once as uint8 arrays.

    Example: download(ctx, "mnist", "PATH/TO/mnist").artifact.manifest["dataset"]["train"] == 60000
    """
    from clt.data.sources import fetch

    if source is not None and not Path(source).exists():
        raise DataError(f"--from '{source}' does not exist", "give the path of a local copy of the dataset")
    with ctx.report.progress(f"fetching {name}", None) as task:
        arrays = fetch(name, source=Path(source) if source else None, cache_dir=ctx.store.downloads,
                       mirrors=mirrors, size=size,
                       progress=lambda desc, done, total: task.update(done, total, description=desc))
    spec = {"stage": "dataset", "name": name, "content": _content_digest(arrays), "classes": arrays.classes}
    artifact, cached = ctx.store.produce(spec, "dataset", lambda tmp: _write_dataset(tmp, name, arrays),
                                         refs=(f"dataset/{name}",), name=name)
    info = artifact.manifest["dataset"]
    ctx.report.info(f"dataset {name}: {info['train']} train + {info['test']} test images of shape "
                    f"{tuple(info['shape'])}, {len(info['classes'])} classes")
    if "converted" in str(info.get("source", "")):
        ctx.report.info(str(info["source"]))  # how many images came from which other mode
    return Outcome(artifact, cached, {"train": info["train"], "test": info["test"]})


def _content_digest(arrays) -> str:
    digest = hashlib.sha256()
    for array in (arrays.train_images, arrays.train_labels, arrays.test_images, arrays.test_labels):
        digest.update(str(array.shape).encode())
        digest.update(memoryview(array.tobytes()))
    # names are content too (two imports differing only in names are two datasets); a dataset without
    # names digests as before, so the built-in datasets keep their ids
    for split in ("train", "test"):
        names = getattr(arrays, f"{split}_paths", None)
        if names is not None:
            digest.update(f"{split} names\n".encode())
            digest.update(names_text(names).encode("ascii"))
    return digest.hexdigest()


def names_file(split: str) -> str:
    """The dataset artifact's file of a split's row names: train.paths.jsonl, test.paths.jsonl."""
    return f"{split}.{NAMES_FILE}"


def split_names(artifact: Artifact, split: str) -> list[str] | None:
    """Each row's source path (relative to the imported folder or archive) of a dataset split, checked
    to be one per row; None for a dataset without file names (digits, mnist, cifar10 ...), whose
    rows are named by their row number."""
    name = names_file(split)
    if name not in artifact.manifest.get("files", {}):
        return None
    return read_names(artifact.file(name), int(artifact.manifest["dataset"][split]))


def _write_dataset(tmp: Path, name: str, arrays) -> dict[str, Any]:
    from clt.data.memory import channel_stats, save_arrays

    mean, std = channel_stats(arrays.train_images)
    save_arrays(tmp / "data.safetensors", {
        "train_images": arrays.train_images, "train_labels": arrays.train_labels,
        "test_images": arrays.test_images, "test_labels": arrays.test_labels})
    for split in ("train", "test"):
        names = getattr(arrays, f"{split}_paths", None)
        if names is not None:
            (tmp / names_file(split)).write_text(names_text(names), encoding="ascii")
    info = {"name": name, "classes": arrays.classes, "shape": list(arrays.train_images.shape[1:]),
            "train": int(len(arrays.train_images)), "test": int(len(arrays.test_images)),
            "mean": mean, "std": std, "source": arrays.source}
    return {"dataset": info, "metrics": {"train": info["train"], "test": info["test"]}}


def dataset_artifact(ctx: Context, name: str) -> Artifact:
    """The stored dataset `name`; digits (shipped with scikit-learn) is imported on first use."""
    found = ctx.store.read_ref(f"dataset/{name}")
    if found and ctx.store.exists(found):
        return ctx.store.get(found)
    if name == "digits":
        return download(ctx, "digits").artifact
    if name in KNOWN_DATASETS:
        raise DataError(f"dataset '{name}' is not downloaded yet (store: {ctx.store.root})",
                        f"run `clt download {name}`, or `clt download {name} --from PATH` for a local copy")
    stored = [ref.split("/", 1)[1] for ref in ctx.store.refs() if ref.startswith("dataset/")]
    raise DataError(f"unknown dataset '{name}'",
                    did_you_mean(name, sorted(set(KNOWN_DATASETS) | set(stored)))
                    + "; import your own with `clt download NAME --from FOLDER`")


def dataset_of(store: Store, artifact: Artifact) -> Artifact:
    """The dataset an artifact was trained on; when it has been deleted, a fix naming the download."""
    dataset_id = artifact.inputs.get("dataset")
    if isinstance(dataset_id, str) and store.exists(dataset_id):
        return store.get(dataset_id)
    recipe = artifact.recipe or {}
    name = (recipe.get("data") or {}).get("dataset") if isinstance(recipe.get("data"), dict) else None
    raise DataError(f"{artifact.short}: the dataset it was trained on ({str(dataset_id)[:12]}) is no longer in "
                    f"the store at '{store.root}'", f"run `clt download {name or 'NAME'}` again (the same source "
                    "gives the same dataset id)")


def load_dataset(artifact: Artifact):
    """A dataset artifact's images and labels as uint8/int64 tensors (an ImageData)."""
    from clt.data.memory import load_image_data

    return load_image_data(artifact.file("data.safetensors"), artifact.manifest["dataset"])
