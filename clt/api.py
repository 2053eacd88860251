"""clt as a library: the same verbs as the command line, returning plain results.

    import clt
    encoder_id = clt.pretrain("recipes/digits_pair.yaml", overrides=["pretrain.epochs=2"]).id
    probe_id = clt.probe(encoder_id).id
    print(clt.evaluate(probe_id).metrics["accuracy"])
    vectors = clt.load_encoder(encoder_id).embed(images)        # (N, D) numpy array
    labels = clt.load_classifier(probe_id).predict(images)      # (N,) class indices

Every function takes `store` (a root path or an open `Store`; default ./artifacts or
$CLT_ARTIFACTS), never prints, and reports progress only through the optional `progress`
callback, which receives `ProgressEvent`s. The `clt` command line calls only this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from clt import stages
from clt.errors import CltError, DataError, DivergenceError, WriteError
from clt.stages import Context, ProgressEvent, Reporter
from clt.stages.context import ProgressCallback
from clt.stages.inference import Classifier, Encoder, classifier_for, encoder_for
from clt.store import Artifact, Store, default_root

StoreLike = Store | str | Path | None

__all__ = ["Classifier", "CltError", "DivergenceError", "Encoder", "ProgressEvent", "Result", "baseline_logreg",
           "baseline_scratch", "WriteError",
           "adopt_key", "compare", "download", "embed", "embedding_geometry", "evaluate", "export", "gc", "index",
           "init", "key_status", "launch_distributed", "list_artifacts",
           "load_classifier", "load_dataset", "load_encoder", "load_index", "open_store", "predict", "pretrain",
           "probe", "report", "search", "show", "tsne", "verify", "views"]


@dataclass(frozen=True)
class Result:
    """What a stage made or found: the artifact's id, kind, name, folder and headline metrics.

    Example: clt.probe("latest-encoder").id  # 64 hex characters
    """

    id: str
    kind: str
    name: str
    cached: bool
    path: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def short(self) -> str:
        return self.id[:12]

    def file(self, name: str) -> Path:
        """A file of the artifact, e.g. result.file("confusion.png")."""
        return self.path / name

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "name": self.name, "cached": self.cached, "path": str(self.path),
                **self.metrics}


def open_store(root: StoreLike = None) -> Store:
    """The artifact store at `root` (default: $CLT_ARTIFACTS, else ./artifacts).

    Example: clt.open_store("artifacts").ids()
    """
    if isinstance(root, Store):
        return root
    return Store(Path(root) if root is not None else default_root())


def _context(store: StoreLike, device: str = "auto", precision: str | None = None,
             progress: ProgressCallback | None = None) -> Context:
    return Context(store=open_store(store), device=device, precision=precision, report=Reporter(progress))


def _result(outcome: stages.Outcome) -> Result:
    art = outcome.artifact
    return Result(art.id, art.kind, art.name, outcome.cached, art.path, dict(outcome.metrics), art.manifest)


# ---------------------------------------------------------------------------- stages


def download(name: str, source: str | Path | None = None, *, size: tuple[int, int] | None = None,
             mirrors: list[str] | None = None, store: StoreLike = None,
             progress: ProgressCallback | None = None) -> Result:
    """Fetch a dataset (checksummed) or import a local copy; stored once as uint8 arrays.

    Example: clt.download("mnist", "PATH/TO/mnist").metrics == {"train": 60000, "test": 10000}
    """
    ctx = _context(store, progress=progress)
    return _result(stages.download(ctx, name, str(source) if source is not None else None, size, mirrors))


def init(recipe: str | Path, *, dataset: str, objective: str, force: bool = False, store: StoreLike = None,
         progress: ProgressCallback | None = None) -> Path:
    """Write a commented recipe for a stored dataset and an objective, from the shipped recipe of that
    objective measured to learn (digits' for grayscale images, CIFAR-10's for colour), fitted to the
    dataset; it loads with clt.pretrain. Objectives that learn from labels are refused for a dataset
    without them; an existing file is kept unless `force`.

    Example: clt.pretrain(clt.init("mine.yaml", dataset="digits", objective="simclr")).kind == "encoder"
    """
    from clt.stages.init import init_recipe

    return init_recipe(_context(store, progress=progress), str(recipe), dataset, objective, force)


def pretrain(recipe: str | Path, *, overrides: Sequence[str] = (), seed: int | None = None, resume: bool = True,
             device: str = "auto", precision: str | None = None, minutes: float | None = None,
             tensorboard: str | Path | None = None, store: StoreLike = None,
             progress: ProgressCallback | None = None) -> Result | None:
    """Train an encoder with a recipe's objective (None on ranks other than 0 of a distributed run).
    Raises clt.DivergenceError when the loss turns NaN or infinite (the last good checkpoint is kept).

    `minutes` (the recipe's pretrain.minutes): a budget of training time. The whole epochs that fit
    are planned from a short timed trial and trained, so the schedule ends on time; the encoder's
    recipe holds the epochs planned and the minutes, so one budget can give other epochs (another
    encoder) on another machine. Refused with progressive resizing and below one epoch.

    Every run streams its metrics to metrics.jsonl (in the encoder). `tensorboard` (or the recipe's
    pretrain.tensorboard): a folder that also gets TensorBoard event files (needs the tensorboard
    extra); a side output, so the encoder's id does not depend on it.

    Example: clt.pretrain("recipes/digits_pair.yaml", overrides=["pretrain.epochs=1"]).kind == "encoder"
    """
    overrides = list(overrides) + ([f"pretrain.precision={precision}"] if precision else []) \
        + ([f"pretrain.minutes={minutes!r}"] if minutes is not None else [])
    outcome = stages.pretrain(_context(store, device, progress=progress), str(recipe), overrides, seed, resume,
                              str(tensorboard) if tensorboard is not None else None)
    return _result(outcome) if outcome is not None else None


def probe(encoder: str | None = None, *, overrides: Sequence[str] = (), seed: int | None = None,
          dataset: str | None = None, device: str = "auto", store: StoreLike = None,
          progress: ProgressCallback | None = None) -> Result:
    """Train a linear or MLP head on a frozen encoder (default: the latest).

    Example: clt.probe(encoder_id, overrides=["probe.labels_per_class=10"]).metrics["labels_used"] == 100
    """
    return _result(stages.probe(_context(store, device, progress=progress), encoder, list(overrides), seed, dataset))


def evaluate(ref: str | None = None, *, confusion: bool = False, knn: int | None = None, metric: str | None = None,
             vote: str | None = None, pairs: bool = True, quality: bool | None = None,
             labels: str | Path | None = None, device: str = "auto", store: StoreLike = None,
             progress: ProgressCallback | None = None) -> Result:
    """Accuracy and confusion of a probe; pair accuracy (balanced test pairs first, then one random
    partner per image) and kNN accuracy of its encoder. pairs=False skips pair verification.

    `quality` (default: on for a dataset without a labeled test split) adds the label-free measures
    (metrics["view_retrieval"]; results["label_free"] holds all four for the encoder, its untrained
    self and raw pixels, results["label_free_verdict"] the verdict line). `labels`: a CSV of file
    name,tag lines, scored by cross-validated cosine kNN (metrics["tags_knn_accuracy"]). kNN takes a
    zero embedding's cosine to everything as 0, ties to the lower row; such rows are warned about.

    Example: clt.evaluate(probe_id, knn=10).metrics["knn_accuracy"]
    """
    for flag, value, allowed in (("--metric", metric, ("cosine", "euclidean")),
                                 ("--vote", vote, ("majority", "distance"))):
        if value is not None and value not in allowed:
            raise CltError(f"{flag} {value} is not allowed", f"use one of: {', '.join(allowed)}")
    if knn is not None and knn < 1:
        raise CltError(f"--knn {knn} must be >= 1", "use e.g. --knn 10")
    ctx = _context(store, device, progress=progress)
    return _result(stages.evaluate(ctx, ref, confusion, knn, metric, vote, pairs, quality,
                                   str(labels) if labels is not None else None))


def embed(encoder: str | None = None, *, split: str | None = None, projector: bool = False,
          images: Sequence[str | Path] | None = None, out: str | Path | None = None, device: str = "auto",
          store: StoreLike = None, progress: ProgressCallback | None = None) -> Result | Path:
    """Store an encoder's embeddings of a dataset split as embeddings.npy and labels.npy (split None:
    test when the dataset has a test split, else train, i.e. all of an unlabeled folder); with
    `images` (files, folders, globs, .tar.gz) embed those instead (embeddings.npy + paths.jsonl), or
    with `out` write them to a plain .npy or .csv file and return its path.

    Example: np.load(clt.embed(encoder_id, images=["photos/"]).file("embeddings.npy")).shape
    """
    ctx = _context(store, device, progress=progress)
    if images is None:
        if out is not None:
            raise CltError("--out is for --images", "write a split's embeddings with clt embed, then np.load them")
        return _result(stages.embed(ctx, encoder, split, projector))
    encoder_art = ctx.store.resolve_named(encoder, ("encoder",), hint="train one first: clt pretrain RECIPE")
    made = stages.embed_images(ctx, encoder_art, [str(i) for i in images], str(out) if out is not None else None)
    return made if isinstance(made, Path) else _result(made)


def embedding_geometry(vectors: Any) -> dict[str, float]:
    """How (N, D) embeddings fill their space: `spread` (~1 when spread, 0 when collapsed), the same
    after centring (for losses blind to a shared offset), and `effective_rank` (how many of the D
    directions they use; low when they narrow to a few, which the spread cannot see).

    Example: clt.embedding_geometry(np.load(clt.embed(encoder_id).file("embeddings.npy")))["effective_rank"]
    """
    import torch

    from clt.train import embedding_rank, embedding_spread

    z = torch.as_tensor(vectors).float()
    if z.ndim != 2 or len(z) < 2:
        raise CltError(f"embeddings of shape {tuple(z.shape)} have no geometry to measure",
                       "pass an (N, D) array with N >= 2, e.g. np.load(...embeddings.npy)")
    return {"spread": embedding_spread(z), "centred_spread": embedding_spread(z, centre=True),
            "effective_rank": embedding_rank(z), "dim": int(z.shape[1])}


def predict(ref: str | None, images: Sequence[str | Path], *, top: int = 1, knn: int | None = None,
            device: str = "auto", store: StoreLike = None, progress: ProgressCallback | None = None
            ) -> list[dict[str, Any]]:
    """Classes of new images: a probe's top classes with probabilities, or (knn=K) the vote of an
    encoder's K nearest training embeddings.

    Example: `clt.predict("latest-probe", ["digit.png"], top=3)[0]["top"][0]["class"]`
    """
    if top < 1 or (knn is not None and knn < 1):
        raise CltError("--top and --knn must be >= 1", "use e.g. --top 3 or --knn 10")
    return stages.predict(_context(store, device, progress=progress), ref, [str(i) for i in images], top, knn)


def index(ref: str | None = None, *, split: str = "train", kind: str = "exact", metric: str = "cosine",
          device: str = "auto", store: StoreLike = None, progress: ProgressCallback | None = None) -> Result:
    """A search index artifact over an encoder's embeddings of a split, or over an embeddings artifact:
    exact, or FAISS's approximate hnsw / ivf.

    Example: clt.index("latest-encoder", kind="hnsw").metrics["count"]
    """
    return _result(stages.build_index(_context(store, device, progress=progress), ref, split, kind, metric))


def search(index_ref: str | None, images: Sequence[str | Path], *, k: int = 10, grid: str | Path | None = None,
           device: str = "auto", store: StoreLike = None, progress: ProgressCallback | None = None
           ) -> list[dict[str, Any]]:
    """The k nearest stored images of each query image (row, label, class, path, distance); with
    `grid` a PNG of every query beside its neighbours.

    Example: `clt.search(index_id, ["query.png"], k=5, grid="neighbours.png")[0]["neighbours"]`
    """
    ctx = _context(store, device, progress=progress)
    return stages.search(ctx, index_ref, [str(i) for i in images], k, str(grid) if grid is not None else None)


def load_index(ref: str | None = None, store: StoreLike = None) -> stages.SearchIndex:
    """A stored index for your own queries: `.search(embeddings, k, encoder_id=...)` -> (distances, rows).

    Example: clt.load_index("latest-index").search(encoder.embed(images), 10, encoder_id=encoder.id)
    """
    opened, artifact = _artifact(ref, ("index",), store, "build one first: clt index ENCODER")
    return stages.SearchIndex(artifact)


def export(encoder: str | None = None, *, format: str = "onnx", out: str | Path | None = None,
           store: StoreLike = None, progress: ProgressCallback | None = None) -> Result:
    """The encoder as one ONNX or TorchScript file taking uint8 (N, C, H, W), normalisation folded in,
    with a JSON sidecar (input shape, channels, classes, artifact id, clt version); `out` copies both.

    Example: clt.export("latest-encoder", format="onnx", out="encoder.onnx")
    """
    ctx = _context(store, progress=progress)
    return _result(stages.export(ctx, encoder, format, str(out) if out is not None else None))


def tsne(embeddings: str | None = None, *, pca: bool = False, perplexity: float = 30.0, max_points: int = 5000,
         seed: int = 0, thumbnails: bool = False, color_by: str | Path | None = None, store: StoreLike = None,
         progress: ProgressCallback | None = None) -> Result:
    """A 2-D t-SNE (or PCA) picture of stored embeddings, coloured by class, or with `color_by` by the
    tags of a CSV of file name, tag (embeddings that know their file names: clt.embed(images=...));
    `thumbnails` draws up to 200 of the images at their points. t-SNE needs more than 3 x perplexity points.

    Example: clt.tsne(clt.embed(encoder_id).id, pca=True, thumbnails=True).file("pca.png")
    """
    return _result(stages.tsne(_context(store, progress=progress), embeddings, pca, perplexity, max_points, seed,
                               thumbnails, str(color_by) if color_by is not None else None))


def views(recipe: str | Path, *, overrides: Sequence[str] = (), count: int = 8, n_views: int = 4,
          store: StoreLike = None, progress: ProgressCallback | None = None) -> Result:
    """A PNG grid of images beside the augmented views a recipe trains on.

    Example: clt.views("recipes/mnist_simclr.yaml").file("views.png")
    """
    return _result(stages.views(_context(store, progress=progress), str(recipe), list(overrides), count, n_views))


def baseline_scratch(recipe: str | Path, *, overrides: Sequence[str] = (), seed: int | None = None,
                     augment: str = "none", device: str = "auto", store: StoreLike = None,
                     progress: ProgressCallback | None = None) -> Result:
    """The recipe's encoder and probe head trained from scratch on the probe's labels.

    Example: clt.baseline_scratch("recipes/mnist_simclr.yaml", overrides=["probe.labels=100"])
    """
    ctx = _context(store, device, progress=progress)
    return _result(stages.baseline_scratch(ctx, str(recipe), list(overrides), seed, augment))


def baseline_logreg(dataset: str, *, overrides: Sequence[str] = (), seed: int = 0, device: str = "auto",
                    store: StoreLike = None, progress: ProgressCallback | None = None) -> Result:
    """Multi-class logistic regression on a dataset's standardised pixels.

    Example: clt.baseline_logreg("digits", overrides=["epochs=5"])
    """
    return _result(stages.baseline_logreg(_context(store, device, progress=progress), dataset, list(overrides), seed))


def report(refs: str | Sequence[str], *, out: str | Path = "report.html", device: str = "auto",
           store: StoreLike = None, progress: ProgressCallback | None = None) -> Path:
    """One self-contained HTML page (no network; opens from disk) for an encoder and its lineage:
    dataset card, recipe, training curves, augmented views, probes and evaluations (per-class table,
    confusion heatmap), t-SNE, nearest neighbours, timings and versions. Several refs: one page
    comparing them (the `clt compare` table, curves overlaid on shared axes). A probe or evaluation
    stands for its encoder; parts not made yet are named with the command that makes them.

    Example: clt.report(["latest-encoder"], out="report.html")
    """
    refs = [refs] if isinstance(refs, str) else list(refs)
    return stages.report(_context(store, device, progress=progress), refs, str(out))


def compare(refs: Sequence[str], *, store: StoreLike = None) -> list[dict[str, Any]]:
    """Evaluations grouped by everything but the seed: one row each, metrics as mean, std and values.

    Example: `clt.compare([e.id for e in evaluations])[0]["accuracy"]["mean"]`
    """
    return stages.summarize(open_store(store), list(refs))


# ---------------------------------------------------------------------------- the store


def list_artifacts(kind: str | None = None, *, store: StoreLike = None) -> list[dict[str, Any]]:
    """One row per stored artifact, oldest first (id, kind, name, created, metrics, files).

    Example: [row["id"] for row in clt.list_artifacts("encoder")]
    """
    opened = open_store(store)
    opened.check_readable()  # a store whose key is gone or replaced is refused by name, not listed empty
    return [row for row in stages.iter_rows(opened) if kind is None or row["kind"] == kind]


def show(ref: str, *, store: StoreLike = None) -> dict[str, Any]:
    """An artifact's manifest: what made it, from what, with which results.

    Example: `clt.show("latest-evaluation")["results"]["confusion"]`
    """
    opened = open_store(store)
    artifact = opened.resolve(ref)
    return {**artifact.manifest, "stale": opened.is_stale(artifact)}


def verify(ref: str | None = None, *, store: StoreLike = None) -> dict[str, list[str]]:
    """Problems found per artifact id (an empty list: intact), for one artifact or the whole store.

    Example: damaged = [i for i, problems in clt.verify().items() if problems]
    """
    opened = open_store(store)
    ids = [opened.resolve(ref).id] if ref else opened.ids()
    return {artifact_id: opened.verify(artifact_id) for artifact_id in sorted(ids)}


def key_status(*, store: StoreLike = None) -> dict[str, str]:
    """Whether the store's signatures can be checked: state ("ok"; "unkeyed" or "unreadable": checked by
    sha256 only; "missing" or "replaced": refused until the key is restored or adopted), message, hint.

    Example: clt.key_status()["state"]  # "ok"
    """
    state = open_store(store).key_state()
    return {"state": state.state, "message": state.message, "hint": state.hint}


def adopt_key(*, store: StoreLike = None) -> dict[str, list[str]]:
    """Make the key in place (a new one where store.key is missing) the store's key, on purpose: every
    artifact whose files match their sha256 is signed with it; damaged ones are skipped. Edits made
    while the key was gone cannot be told from the originals, so run it only after `verify`.

    Example: clt.adopt_key()["signed"]  # ids now signed with the store's key
    """
    signed, skipped = open_store(store).adopt_key()
    return {"signed": signed, "skipped": skipped}


def gc(damaged: bool = False, *, stale: bool = False, store: StoreLike = None) -> list[str]:
    """Remove what killed runs left behind (and, with damaged=True, artifacts that fail verification;
    with stale=True, artifacts that other clt code made, which no stage of this code will use).

    Example: removed = clt.gc()
    """
    opened = open_store(store)
    return opened.gc(damaged) + (opened.gc_stale() if stale else [])


def launch_distributed(nproc: int, argv: list[str]) -> int:
    """Run `clt ARGV` in `nproc` processes with torch.distributed (torchrun's launcher)."""
    from clt.distributed import launch

    return launch(nproc, argv)


# ---------------------------------------------------------------------------- using what was trained


def _artifact(ref: str | None, kinds: tuple[str, ...], store: StoreLike, hint: str) -> tuple[Store, Artifact]:
    opened = open_store(store)
    return opened, opened.resolve_named(ref, kinds, hint=hint)


def load_encoder(ref: str | None = None, store: StoreLike = None, device: str = "auto",
                 weights: str = "encoder.safetensors") -> Encoder:
    """A stored encoder (id, prefix, ref such as latest-encoder, or recipe name) ready to embed images.

    Example: clt.load_encoder("mnist_pair").embed(["digit.png"])
    """
    from clt.devices import pick_device

    opened, artifact = _artifact(ref, ("encoder",), store, "train one first: clt pretrain RECIPE.yaml")
    return encoder_for(opened, artifact, pick_device(device), weights)


def load_classifier(probe_ref: str | None = None, store: StoreLike = None, device: str = "auto") -> Classifier:
    """A stored probe (or supervised baseline) as a classifier of new images.

    Example: clt.load_classifier("latest-probe").predict(images)
    """
    from clt.devices import pick_device

    opened, artifact = _artifact(probe_ref, ("probe",), store, "train one first: clt probe")
    return classifier_for(opened, artifact, pick_device(device))


def load_dataset(ref_or_name: str, store: StoreLike = None) -> Any:
    """A stored dataset by name (mnist, digits, ...) or artifact id, as uint8 tensors (ImageData).

    Example: clt.load_dataset("digits").test.images.shape == (360, 1, 8, 8)
    """
    opened = open_store(store)
    try:
        artifact = stages.dataset_artifact(Context(opened), ref_or_name)  # a name (digits is imported on first use)
    except DataError:
        artifact = opened.resolve(ref_or_name, ("dataset",))  # an id, a prefix or a path
    return stages.load_dataset(artifact)
