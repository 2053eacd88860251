"""The embed and tsne stages: an encoder's embeddings of a split as .npy, and their 2-D picture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clt.errors import CltError, DataError
from clt.stages.context import Context, Outcome, produce
from clt.stages.dataset import dataset_of, load_dataset, split_names
from clt.stages.weights import load_encoder
from clt.store import Artifact


def stored_features(ctx: Context, encoder_id: str, split: str, device) -> Any:
    """An encoder's features of a split as a tensor on `device`, from its embeddings artifact
    (built on first use, then reloaded: DINO-style features dumped once)."""
    import numpy as np
    import torch

    stored = embed(ctx, encoder_id, split).artifact
    return torch.from_numpy(np.load(stored.file("embeddings.npy"), allow_pickle=False)).to(device)


def embed(ctx: Context, encoder_ref: str | None = None, split: str | None = None, projector: bool = False) -> Outcome:
    """Write an encoder's embeddings of a split as .npy (and the Embedding Projector's TSVs). Without
    a split: the test split when the dataset has one, else train (all of an unlabeled folder's images).

    Example: np.load(embed(ctx, "latest-encoder").artifact.file("embeddings.npy")).shape == (N, D)
    """
    if split not in (None, "train", "test"):
        raise CltError(f"--split {split} is not a split", "use --split train or --split test")
    encoder_art = ctx.store.resolve_named(encoder_ref, ("encoder",), hint="train one first: clt pretrain RECIPE")
    split = _chosen_split(ctx, encoder_art, split)
    spec = {"stage": "embed", "inputs": {"encoder": encoder_art.id}, "split": split, "projector": projector}

    def build(tmp: Path, _id: str) -> dict[str, Any]:
        import numpy as np

        from clt.devices import describe, pick_device
        from clt.features import extract_features

        device = pick_device(ctx.device)
        data = load_dataset(dataset_of(ctx.store, encoder_art)).to(device)
        encoder = load_encoder(encoder_art, device)
        part = data.split(split)
        with ctx.report.progress(f"embedding {split}", len(part)) as task:
            features = extract_features(encoder, data, part, device, on_batch=lambda d, t: task.update(d, t))
        vectors = features.cpu().numpy().astype(np.float32)
        labels = part.labels.cpu().numpy().astype(np.int64)
        _warn_zero_rows(ctx, vectors, labels, data.classes)
        np.save(tmp / "embeddings.npy", vectors)
        np.save(tmp / "labels.npy", labels)
        _carry_names(ctx, encoder_art, split, tmp)
        if projector:
            _projector_files(tmp, vectors, labels, data.classes)
        return {"device": describe(device), "classes": data.classes, "split": split,
                "metrics": {"count": int(len(vectors)), "dim": int(vectors.shape[1])}}

    return produce(ctx, spec, "embeddings", build, name=encoder_art.name)


def _carry_names(ctx: Context, encoder_art, split: str, tmp: Path) -> None:
    """An imported folder's file names, one per row, beside the embeddings (paths.jsonl), so that an
    index and search over them answer with file names; built-in datasets have none (row numbers)."""
    from clt.rows import NAMES_FILE, names_text

    names = split_names(dataset_of(ctx.store, encoder_art), split)
    if names is not None:
        (tmp / NAMES_FILE).write_text(names_text(names), encoding="ascii")


def _chosen_split(ctx: Context, encoder_art: Artifact, split: str | None) -> str:
    """The split asked for, or the default one; a split without rows is refused before anything is
    written (an artifact of 0 rows only fails later, in t-SNE or search, far from its cause)."""
    info = _dataset_info(ctx, encoder_art)
    if info is None:  # the dataset is gone: a cached artifact may still answer, else the build names it
        return split or "test"
    chosen = split or ("test" if info.get("test") else "train")
    if not info.get(chosen):
        other = "train" if chosen == "test" else "test"
        fix = f"embed its {other} split: --split {other}" if info.get(other) else \
            "import the images again: clt download NAME --from FOLDER"
        raise DataError(f"dataset '{info.get('name', '?')}' has 0 images in its {chosen} split: nothing to embed",
                        f"{fix}, or embed other images: clt embed {encoder_art.short} --images FOLDER")
    return chosen


def _dataset_info(ctx: Context, encoder_art: Artifact) -> dict[str, Any] | None:
    """The manifest's summary (name, train and test counts) of the dataset an encoder was trained on."""
    dataset_id = encoder_art.inputs.get("dataset")
    if not isinstance(dataset_id, str) or not ctx.store.exists(dataset_id):
        return None
    return ctx.store.get(dataset_id).manifest.get("dataset")


def _warn_zero_rows(ctx: Context, vectors, labels, classes: list[str]) -> None:
    """Warn, with the count per class, when embeddings are the zero vector (cosine cannot rank them)."""
    from clt.quality import zero_norm_warning

    warning = zero_norm_warning(vectors, labels, classes)
    if warning:
        ctx.report.warn(warning)


def _projector_files(tmp: Path, vectors, labels, classes: list[str]) -> None:
    """vectors.tsv and metadata.tsv, as TensorBoard's Embedding Projector reads them."""
    import numpy as np

    np.savetxt(tmp / "vectors.tsv", vectors, delimiter="\t", fmt="%.6g")
    names = [classes[i] if 0 <= i < len(classes) else "unlabeled" for i in labels]
    (tmp / "metadata.tsv").write_text("label\tclass\n" + "".join(f"{i}\t{n}\n" for i, n in zip(labels, names)))


THUMBNAILS = 200  # at most this many images drawn at their points: more hide the picture they annotate
# a first row whose file-name cell is one of these is the CSV's header
TAG_HEADERS = {"file", "filename", "file_name", "name", "path", "image", "images"}


def embedding_names(artifact: Artifact) -> list[str] | None:
    """The file names of an embeddings artifact's rows, or None when it does not know them: the one
    place that looks, so names stored by any stage (paths.jsonl, or an older paths.txt) are found."""
    from clt.rows import NAMES_FILE, OLD_NAMES_FILE, read_names

    files = artifact.manifest.get("files", {})
    found = next((name for name in (NAMES_FILE, OLD_NAMES_FILE) if name in files), None)
    if found is None:
        return None
    return read_names(artifact.file(found), rows=artifact.metrics.get("count"))


def tsne(ctx: Context, embeddings_ref: str | None = None, pca: bool = False, perplexity: float = 30.0,
         max_points: int = 5000, seed: int = 0, thumbnails: bool = False, color_by: str | None = None) -> Outcome:
    """A 2-D t-SNE (or PCA) picture of an embeddings artifact, coloured by class, or by the user's
    own tags (`color_by`: a CSV of file name, tag), with image thumbnails at up to 200 points.

    Example: tsne(ctx, pca=True, thumbnails=True).artifact.file("pca.png")
    """
    emb_art = ctx.store.resolve_named(embeddings_ref, ("embeddings",),
                                      hint="write embeddings first: clt embed")
    method = "pca" if pca else "tsne"
    count = _row_count(emb_art)
    _check_points(emb_art, min(count, max_points), count, max_points, pca, perplexity)
    tagging = _tagging(emb_art, color_by, count) if color_by is not None else None
    spec = {"stage": "tsne", "inputs": {"embeddings": emb_art.id}, "method": method, "perplexity": perplexity,
            "max_points": max_points, "seed": seed,
            # only when asked for: a plain picture keeps the address it always had
            **({"thumbnails": THUMBNAILS} if thumbnails else {}),
            **({"color_by": tagging["sha256"]} if tagging else {})}

    def build(tmp: Path, _id: str) -> dict[str, Any]:
        import numpy as np

        from clt import plots

        vectors = np.load(emb_art.file("embeddings.npy"), allow_pickle=False)
        labels = np.load(emb_art.file("labels.npy"), allow_pickle=False)
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(vectors), size=max_points, replace=False)) if len(vectors) > max_points \
            else np.arange(len(vectors))
        vectors, labels = vectors[keep], labels[keep]
        ctx.report.info(f"{method}: {len(vectors)} points of dimension {vectors.shape[1]}")
        coords = _coordinates(ctx, vectors, pca, perplexity, seed)
        np.save(tmp / "coords.npy", coords.astype(np.float32))
        np.save(tmp / "index.npy", keep)
        shown = "t-SNE" if method == "tsne" else "PCA"
        title = f"{emb_art.name}: {shown} of {emb_art.manifest.get('split')} embeddings"
        classes, legend, fields = emb_art.manifest.get("classes", []), "class", {}
        if tagging:
            labels, classes, fields["color_by"] = _tag_labels(tagging, keep)
            legend, title = "tag", f"{title}, coloured by {tagging['file']}"
        pictures = None
        if thumbnails:
            shown_rows = np.sort(np.random.default_rng([seed, 1]).permutation(len(keep))[:THUMBNAILS])
            pictures = (shown_rows, _images_of_rows(ctx, emb_art, keep[shown_rows]))
            fields["thumbnails"] = int(len(shown_rows))
        plots.scatter(coords, labels, classes, tmp / f"{method}.png", title, legend_title=legend,
                      thumbnails=pictures)
        return {"method": method, **fields, "metrics": {"points": int(len(vectors))}}

    outcome = produce(ctx, spec, "figure", build, name=emb_art.name)
    ctx.report.info(f"picture: {outcome.artifact.path / (method + '.png')}")
    return outcome


def _row_count(artifact: Artifact) -> int:
    count = artifact.metrics.get("count")
    if isinstance(count, int):
        return count
    import numpy as np

    return int(np.load(artifact.file("embeddings.npy"), mmap_mode="r", allow_pickle=False).shape[0])


def _check_points(artifact: Artifact, points: int, count: int, max_points: int, pca: bool, perplexity: float) -> None:
    """Refuse a picture of fewer points than its method needs, saying how many there are: sklearn's
    t-SNE needs perplexity < points, and its neighbourhoods mean little below 3 x perplexity."""
    if max_points < 1:
        raise CltError(f"--max-points {max_points} draws nothing", "use --max-points 1000 or more")
    if not pca and perplexity <= 0:
        raise CltError(f"--perplexity {perplexity:g} must be positive", "use e.g. --perplexity 30 (the default)")
    more = f"raise --max-points (it keeps {max_points} of {count}), " if count > max_points else ""
    more += "or embed more images"
    if pca and points < 2:
        raise DataError(f"embeddings {artifact.short} ({artifact.name}) have {points} points: PCA needs at least 2",
                        more[0].upper() + more[1:])
    if not pca and points <= 3 * perplexity:
        lower = (points - 1) // 3
        fix = f"lower --perplexity to {lower} or less, " if lower >= 1 else ""
        raise DataError(f"embeddings {artifact.short} ({artifact.name}) have {points} points: t-SNE with "
                        f"perplexity {perplexity:g} needs more than {3 * perplexity:g}",
                        f"{fix}use --pca, {more}")


def _coordinates(ctx: Context, vectors, pca: bool, perplexity: float, seed: int):
    if pca:
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(vectors)
    from sklearn.manifold import TSNE

    with ctx.report.progress("t-SNE", None):  # _check_points made perplexity fit the number of points
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(vectors)


# ---------------------------------------------------------------- the user's own tags


def _tagging(artifact: Artifact, color_by: str, count: int) -> dict[str, Any]:
    """Each row's tag from a CSV of file name, tag (None where untagged), with the CSV's sha256 and name."""
    import hashlib

    names = embedding_names(artifact)
    if names is None:
        raise CltError(f"--color-by: embeddings {artifact.short} ({artifact.name}) do not know their images' "
                       "file names", "embed the images by file, then colour that: clt embed ENCODER --images "
                       f"FOLDER; clt tsne EMBEDDINGS --color-by {Path(color_by).name}")
    raw = _read_bytes(color_by)
    tags = _parse_tags(color_by, raw)
    row_tags = _match_tags(names, tags)
    if not any(tag is not None for tag in row_tags):
        raise DataError(f"--color-by {color_by}: none of its {len(tags)} file name(s) is among the {count} "
                        f"images of embeddings {artifact.short}",
                        f"name them as the embeddings do (e.g. {names[0] if names else 'photo.jpg'}) or by "
                        "their base name, one 'file,tag' per line")
    return {"sha256": hashlib.sha256(raw).hexdigest(), "file": Path(color_by).name, "rows": row_tags}


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CltError(f"--color-by {path}: no such file", "give a CSV of file name, tag (one per line)") from None
    except OSError as err:
        raise CltError(f"--color-by {path}: cannot be read ({err.strerror})", "give a readable CSV file") from None


def _parse_tags(path: str, raw: bytes) -> dict[str, str]:
    """file name -> tag from CSV text: a header row (file,tag) is optional, blank lines and blank tags
    are skipped, and a file given two different tags is refused."""
    import csv
    import io

    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"--color-by {path}: not UTF-8 text", "save the CSV as UTF-8") from None
    tags: dict[str, str] = {}
    for number, row in enumerate(csv.reader(io.StringIO(text)), 1):
        cells = [cell.strip() for cell in row]
        if not any(cells) or (number == 1 and cells[0].lower() in TAG_HEADERS):
            continue
        if len(cells) < 2:
            raise DataError(f"--color-by {path}: line {number} has no tag: {row!r}", "write 'file,tag' on each line")
        name, tag = cells[0], cells[1]
        if tag and tags.setdefault(name, tag) != tag:
            raise DataError(f"--color-by {path}: '{name}' has two tags, '{tags[name]}' and '{tag}'",
                            "give each file one tag")
    return tags


def _base(name: str) -> str:
    """A row's file name without its folders (or its archive, ARCHIVE:MEMBER)."""
    return name.rsplit("/", 1)[-1].rsplit(":", 1)[-1]


def _match_tags(names: list[str], tags: dict[str, str]) -> list[str | None]:
    """Each name's tag: by the whole name, else by the base name when that names one tag only."""
    by_base: dict[str, str | None] = {}
    for name, tag in tags.items():
        base = _base(name)
        by_base[base] = tag if by_base.get(base, tag) == tag else None  # a base name with two tags: neither
    return [tags.get(name) or by_base.get(_base(name)) for name in names]


def _tag_labels(tagging: dict[str, Any], keep) -> tuple[Any, list[str], dict[str, Any]]:
    """(labels of the drawn rows as tag indices, -1 untagged; the tag names; what the manifest records)."""
    import numpy as np

    drawn = [tagging["rows"][i] for i in keep]
    names = sorted({tag for tag in drawn if tag is not None})
    index = {tag: i for i, tag in enumerate(names)}
    labels = np.array([index[tag] if tag is not None else -1 for tag in drawn], dtype=np.int64)
    counts = {tag: int((labels == i).sum()) for tag, i in index.items()}
    return labels, names, {"file": tagging["file"], "sha256": tagging["sha256"], "tags": counts,
                           "untagged": int((labels < 0).sum())}


# ---------------------------------------------------------------- thumbnails


def _images_of_rows(ctx: Context, artifact: Artifact, rows) -> Any:
    """uint8 (K, C, H, W) images of some rows: from the dataset split they were embedded from, or
    read again from the files an `embed --images` artifact names."""
    if artifact.manifest.get("source") != "images":
        encoder_art = ctx.store.get(artifact.inputs["encoder"])
        part = load_dataset(dataset_of(ctx.store, encoder_art)).split(artifact.manifest.get("split", "test"))
        return part.images[rows].numpy()
    names = embedding_names(artifact) or []
    return _read_named(artifact, [names[i] for i in rows])


def _read_named(artifact: Artifact, names: list[str]) -> Any:
    from clt.data.files import collect_images, decode_for

    sources = sorted({_source_of(name) for name in names})
    tree = collect_images(sources) if all(Path(s).exists() for s in sources) else {}
    missing = [name for name in names if name not in tree]
    shape = tuple(artifact.manifest.get("encoder", {}).get("in_shape", ()))
    if not missing:
        images, decoded, _skipped = decode_for({name: tree[name] for name in names}, shape)
        missing = [name for name in names if name not in set(decoded)]
    if missing:
        raise DataError(f"--thumbnails: {len(missing)} of the images embedded in {artifact.short} can no longer be "
                        f"read where they were, e.g. {missing[0]}",
                        "embed them again from where they are now, or leave out --thumbnails")
    return images


def _source_of(name: str) -> str:
    """What to collect a row's image from: the file itself, or the tarball of ARCHIVE:MEMBER."""
    if Path(name).is_file() or ":" not in name:
        return name
    return name.split(":", 1)[0]
