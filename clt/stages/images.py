"""New images through a trained encoder: the embeddings of any files, folders, globs or tarballs."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from clt.atomic import written_aside
from clt.errors import CltError, DataError
from clt.rows import NAMES_FILE, names_text
from clt.stages.context import Context, Outcome, produce
from clt.stages.inference import Encoder, encoder_for
from clt.store import Artifact

PLAIN_FORMATS = (".npy", ".csv")


def read_images(ctx: Context, items: list[str], encoder: Encoder):
    """(uint8 images in the encoder's input shape, their names): unreadable files skipped with one
    warning naming them; an empty selection is an error."""
    import torch

    from clt.data.files import collect_images, decode_for

    tree = collect_images(items)
    if not tree:
        raise DataError(f"no image files in {', '.join(map(str, items))}",
                        "pass image files (png, jpg, ...), folders holding them, glob patterns or a .tar.gz")
    with ctx.report.progress("decoding images", len(tree)) as task:
        images, names, skipped = decode_for(tree, encoder.in_shape, lambda done, total: task.update(done, total))
    if skipped:
        ctx.report.warn(f"skipped {len(skipped)} file(s) that are not readable images: {', '.join(skipped[:5])}"
                        + (" ..." if len(skipped) > 5 else ""))
    if not names:
        raise DataError(f"none of the {len(tree)} file(s) given is a readable image", "pass readable image files")
    return torch.from_numpy(images), names, tree


def _content(names: list[str], tree) -> str:
    from clt.data.sources import read_file

    digest = hashlib.sha256()
    for name in names:
        value = tree[name]
        digest.update(name.encode("utf-8", "surrogateescape"))
        digest.update(hashlib.sha256(value if isinstance(value, bytes) else read_file(value)).digest())
    return digest.hexdigest()


def embed_images(ctx: Context, encoder_art: Artifact, items: list[str], out: str | None = None,
                 batch_size: int = 256) -> Outcome | Path:
    """Embed new images: an embeddings artifact (embeddings.npy, paths.jsonl: one JSON string per row),
    or with `out` a plain .npy (plus OUT.paths.jsonl) or .csv (path, then the vector) file.

    Example: clt.rows.read_names(embed_images(ctx, store.get(encoder_id), ["photos/"]).artifact.file("paths.jsonl"))
    """
    from clt.devices import pick_device

    if out is not None and (not out.lower().endswith(PLAIN_FORMATS) or Path(out).is_dir()):
        raise CltError(f"--out {out}: not a .npy or .csv file name", "name a .npy or .csv file")
    device = pick_device(ctx.device)
    encoder = encoder_for(ctx.store, encoder_art, device)
    images, names, tree = read_images(ctx, items, encoder)
    with ctx.report.progress("embedding images", len(images)) as task:
        vectors = _embed_batches(encoder, images, batch_size, task)
    if out is not None:
        return write_plain(Path(out), vectors, names)
    # "names" in the address: an artifact from before names were JSON lines is never served from the cache
    spec = {"stage": "embed-images", "inputs": {"encoder": encoder_art.id}, "content": _content(names, tree),
            "names": NAMES_FILE}
    return produce(ctx, spec, "embeddings", lambda tmp, _id: _write_artifact(tmp, vectors, names, encoder),
                   name=encoder_art.name)


def _embed_batches(encoder: Encoder, images, batch_size: int, task) -> Any:
    import numpy as np

    parts = []
    for start in range(0, len(images), batch_size):
        parts.append(encoder.embed(images[start:start + batch_size]))
        task.update(min(start + batch_size, len(images)), len(images))
    return np.concatenate(parts).astype(np.float32)


def _write_artifact(tmp: Path, vectors, names: list[str], encoder: Encoder) -> dict[str, Any]:
    import numpy as np

    np.save(tmp / "embeddings.npy", vectors)
    np.save(tmp / "labels.npy", np.full(len(vectors), -1, dtype=np.int64))  # new images have no labels
    (tmp / NAMES_FILE).write_text(names_text(names), encoding="ascii")
    return {"classes": [], "split": "images", "source": "images", "encoder": {"in_shape": list(encoder.in_shape)},
            "metrics": {"count": int(len(vectors)), "dim": int(vectors.shape[1])}}


def write_plain(path: Path, vectors, names: list[str]) -> Path:
    """Vectors as a plain file, written aside then renamed (a killed run leaves no half file): .npy
    with its row names in FILE.paths.jsonl (one JSON string per row), or .csv with the name first
    on each row (quoted where it holds a comma, a quote or a line break)."""
    import csv

    import numpy as np

    if path.suffix.lower() == ".npy":
        with written_aside(path.with_suffix("." + NAMES_FILE), "--out") as names_file, \
                written_aside(path, "--out") as partial:
            names_file.write_text(names_text(names), encoding="ascii")
            np.save(partial, vectors)
        return path
    with written_aside(path, "--out") as partial, open(partial, "w", newline="", encoding="utf-8",
                                                       errors="surrogateescape") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", *[f"e{i}" for i in range(vectors.shape[1])]])
        writer.writerows([name, *(f"{v:.7g}" for v in row)] for name, row in zip(names, vectors))
    return path
