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
from clt.errors import CltError, DataError, StoreError
from clt.stages import Context, ProgressEvent, Reporter
from clt.stages.context import ProgressCallback
from clt.store import Artifact, Store, default_root

StoreLike = Store | str | Path | None

__all__ = ["Classifier", "CltError", "Encoder", "ProgressEvent", "Result", "baseline_logreg", "baseline_scratch",
           "compare", "download", "embed", "evaluate", "gc", "launch_distributed", "list_artifacts",
           "load_classifier", "load_dataset", "load_encoder", "open_store", "pretrain", "probe", "show", "tsne",
           "verify", "views"]


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

    Example: clt.download("mnist", "../shared/datasets/mnist").metrics == {"train": 60000, "test": 10000}
    """
    ctx = _context(store, progress=progress)
    return _result(stages.download(ctx, name, str(source) if source is not None else None, size, mirrors))


def pretrain(recipe: str | Path, *, overrides: Sequence[str] = (), seed: int | None = None, resume: bool = True,
             device: str = "auto", precision: str | None = None, store: StoreLike = None,
             progress: ProgressCallback | None = None) -> Result | None:
    """Train an encoder with a recipe's objective (None on ranks other than 0 of a distributed run).

    Example: clt.pretrain("recipes/digits_pair.yaml", overrides=["pretrain.epochs=1"]).kind == "encoder"
    """
    overrides = list(overrides) + ([f"pretrain.precision={precision}"] if precision else [])
    outcome = stages.pretrain(_context(store, device, progress=progress), str(recipe), overrides, seed, resume)
    return _result(outcome) if outcome is not None else None


def probe(encoder: str | None = None, *, overrides: Sequence[str] = (), seed: int | None = None,
          dataset: str | None = None, device: str = "auto", store: StoreLike = None,
          progress: ProgressCallback | None = None) -> Result:
    """Train a linear or MLP head on a frozen encoder (default: the latest).

    Example: clt.probe(encoder_id, overrides=["probe.labels_per_class=10"]).metrics["labels_used"] == 100
    """
    return _result(stages.probe(_context(store, device, progress=progress), encoder, list(overrides), seed, dataset))


def evaluate(ref: str | None = None, *, confusion: bool = False, knn: int | None = None, metric: str | None = None,
             vote: str | None = None, pairs: bool = True, device: str = "auto", store: StoreLike = None,
             progress: ProgressCallback | None = None) -> Result:
    """Accuracy and confusion of a probe; pair accuracy (balanced test pairs first, then one random
    partner per image) and kNN accuracy of its encoder. pairs=False skips pair verification.

    Example: clt.evaluate(probe_id, knn=10).metrics["knn_accuracy"]
    """
    for flag, value, allowed in (("--metric", metric, ("cosine", "euclidean")),
                                 ("--vote", vote, ("majority", "distance"))):
        if value is not None and value not in allowed:
            raise CltError(f"{flag} {value} is not allowed", f"use one of: {', '.join(allowed)}")
    if knn is not None and knn < 1:
        raise CltError(f"--knn {knn} must be >= 1", "use e.g. --knn 10")
    ctx = _context(store, device, progress=progress)
    return _result(stages.evaluate(ctx, ref, confusion, knn, metric, vote, pairs))


def embed(encoder: str | None = None, *, split: str = "test", projector: bool = False, device: str = "auto",
          store: StoreLike = None, progress: ProgressCallback | None = None) -> Result:
    """Store an encoder's embeddings of a dataset split as embeddings.npy and labels.npy.

    Example: np.load(clt.embed(encoder_id).file("embeddings.npy")).shape
    """
    return _result(stages.embed(_context(store, device, progress=progress), encoder, split, projector))


def tsne(embeddings: str | None = None, *, pca: bool = False, perplexity: float = 30.0, max_points: int = 5000,
         seed: int = 0, store: StoreLike = None, progress: ProgressCallback | None = None) -> Result:
    """A 2-D t-SNE (or PCA) picture of stored embeddings, coloured by class.

    Example: clt.tsne(clt.embed(encoder_id).id, pca=True).file("pca.png")
    """
    return _result(stages.tsne(_context(store, progress=progress), embeddings, pca, perplexity, max_points, seed))


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


def compare(refs: Sequence[str], *, store: StoreLike = None) -> list[dict[str, Any]]:
    """Evaluations grouped by everything but the seed: one row each, metrics as mean, std and values.

    Example: clt.compare([e.id for e in evaluations])[0]["accuracy"]["mean"]
    """
    return stages.summarize(open_store(store), list(refs))


# ---------------------------------------------------------------------------- the store


def list_artifacts(kind: str | None = None, *, store: StoreLike = None) -> list[dict[str, Any]]:
    """One row per stored artifact, oldest first (id, kind, name, created, metrics, files).

    Example: [row["id"] for row in clt.list_artifacts("encoder")]
    """
    return [row for row in stages.iter_rows(open_store(store)) if kind is None or row["kind"] == kind]


def show(ref: str, *, store: StoreLike = None) -> dict[str, Any]:
    """An artifact's manifest: what made it, from what, with which results.

    Example: clt.show("latest-evaluation")["results"]["confusion"]
    """
    return open_store(store).resolve(ref).manifest


def verify(ref: str | None = None, *, store: StoreLike = None) -> dict[str, list[str]]:
    """Problems found per artifact id (an empty list: intact), for one artifact or the whole store.

    Example: damaged = [i for i, problems in clt.verify().items() if problems]
    """
    opened = open_store(store)
    ids = [opened.resolve(ref).id] if ref else opened.ids()
    return {artifact_id: opened.verify(artifact_id) for artifact_id in sorted(ids)}


def gc(damaged: bool = False, *, store: StoreLike = None) -> list[str]:
    """Remove what killed runs left behind (and, with damaged=True, artifacts that fail verification).

    Example: removed = clt.gc()
    """
    return open_store(store).gc(damaged)


def launch_distributed(nproc: int, argv: list[str]) -> int:
    """Run `clt ARGV` in `nproc` processes with torch.distributed (torchrun's launcher)."""
    from clt.distributed import launch

    return launch(nproc, argv)


# ---------------------------------------------------------------------------- using what was trained


def _artifact(ref: str | None, kinds: tuple[str, ...], store: StoreLike, hint: str) -> tuple[Store, Artifact]:
    opened = open_store(store)
    return opened, opened.resolve_named(ref, kinds, hint=hint)


def _dataset_of(store: Store, artifact: Artifact) -> Artifact:
    dataset_id = artifact.inputs.get("dataset")
    if not dataset_id or not store.exists(dataset_id):
        name = (artifact.recipe or {}).get("data", {}).get("dataset", "its dataset")
        raise DataError(f"{artifact.short}: the dataset it was trained on ({str(dataset_id)[:12]}) is not in the "
                        f"store, and its normalisation is stored there", f"run `clt download {name}` again")
    return store.get(dataset_id)


class Encoder:
    """A trained encoder with everything needed to embed new images: weights, input shape, normalisation.

    Example: clt.load_encoder("latest-encoder").embed(np.zeros((2, 8, 8), np.uint8)).shape == (2, 128)
    """

    def __init__(self, artifact: Artifact, module: Any, dataset: Artifact, device: Any):
        info = dataset.manifest["dataset"]
        self.id, self.name, self.device = artifact.id, artifact.name, device
        self.in_shape: tuple[int, int, int] = tuple(artifact.manifest["encoder"]["in_shape"])
        self.channels = self.in_shape[0]
        self.mean, self.std = list(info["mean"]), list(info["std"])
        self.classes: list[str] = list(info["classes"])
        self.module = module
        self.out_dim = int(module.out_dim)

    def __repr__(self) -> str:
        return f"Encoder({self.id[:12]} {self.name!r}, input {self.in_shape}, {self.out_dim}-d)"

    def embed(self, images: Any, batch_size: int = 1024) -> Any:
        """(N, D) float32 embeddings of uint8 or [0, 1] float images (N, C, H, W) or (N, H, W), numpy
        or torch, or of a list of PIL images or image file paths (converted and resized as
        `clt download` converts imported images)."""
        from clt.features import extract_features

        split, data = self._as_split(images)
        return extract_features(self.module, data, split, self.device, batch_size=batch_size).cpu().numpy()

    def _as_split(self, images: Any):
        import torch

        from clt.data.memory import ImageData, Split

        pixels = as_image_batch(images, self.in_shape).to(self.device)
        split = Split(pixels, torch.full((len(pixels),), -1, dtype=torch.long, device=self.device))
        data = ImageData(self.name, self.classes, split, split, torch.tensor(self.mean, device=self.device),
                         torch.tensor(self.std, device=self.device))
        return split, data


class Classifier:
    """An encoder with a trained probe head: class predictions for new images.

    Example: names = [c.classes[i] for i in c.predict(images)] where c = clt.load_classifier("latest-probe")
    """

    def __init__(self, encoder: Encoder, head: Any, probe_id: str):
        self.encoder, self.head, self.id = encoder, head, probe_id
        self.classes = encoder.classes

    def __repr__(self) -> str:
        return f"Classifier({self.id[:12]}, {len(self.classes)} classes, on {self.encoder!r})"

    def predict_proba(self, images: Any, batch_size: int = 1024) -> Any:
        """(N, classes) softmax probabilities."""
        import torch

        features = torch.from_numpy(self.encoder.embed(images, batch_size)).to(self.encoder.device)
        with torch.no_grad():
            return torch.softmax(self.head(features).float(), dim=1).cpu().numpy()

    def predict(self, images: Any, batch_size: int = 1024) -> Any:
        """(N,) class indices; `classes[i]` names them."""
        return self.predict_proba(images, batch_size).argmax(axis=1)


def load_encoder(ref: str | None = None, store: StoreLike = None, device: str = "auto",
                 weights: str = "encoder.safetensors") -> Encoder:
    """A stored encoder (id, prefix, ref such as latest-encoder, or recipe name) ready to embed images.

    Example: clt.load_encoder("mnist_pair").embed(["digit.png"])
    """
    from clt.devices import pick_device

    opened, artifact = _artifact(ref, ("encoder",), store, "train one first: clt pretrain RECIPE.yaml")
    torch_device = pick_device(device)
    module = stages.load_encoder(artifact, torch_device, weights)
    return Encoder(artifact, module, _dataset_of(opened, artifact), torch_device)


def load_classifier(probe_ref: str | None = None, store: StoreLike = None, device: str = "auto") -> Classifier:
    """A stored probe (or supervised baseline) as a classifier of new images.

    Example: clt.load_classifier("latest-probe").predict(images)
    """
    from clt.devices import pick_device

    opened, artifact = _artifact(probe_ref, ("probe",), store, "train one first: clt probe")
    torch_device = pick_device(device)
    module, head = stages.load_probe(opened, artifact, torch_device)
    weights_from = stages.encoder_of(opened, artifact)
    encoder = Encoder(weights_from, module, _dataset_of(opened, artifact), torch_device)
    return Classifier(encoder, head, artifact.id)


def load_dataset(ref_or_name: str, store: StoreLike = None) -> Any:
    """A stored dataset by name (mnist, digits, ...) or artifact id, as uint8 tensors (ImageData).

    Example: clt.load_dataset("digits").test.images.shape == (360, 1, 8, 8)
    """
    opened = open_store(store)
    found = opened.read_ref(f"dataset/{ref_or_name}")
    if found and opened.exists(found):
        return stages.load_dataset(opened.get(found))
    if ref_or_name == "digits":
        return stages.load_dataset(stages.dataset_artifact(Context(opened), "digits"))
    try:
        return stages.load_dataset(opened.resolve(ref_or_name, ("dataset",)))
    except StoreError:
        return stages.load_dataset(stages.dataset_artifact(Context(opened), ref_or_name))


def as_image_batch(images: Any, in_shape: tuple[int, int, int]) -> Any:
    """Images as one tensor (N, C, H, W): uint8 as given, floats taken to be in [0, 1].

    Arrays and tensors must already have the encoder's size; (N, H, W) means one channel. PIL
    images and file paths are converted to the encoder's channels and size.
    Example: as_image_batch(np.zeros((4, 8, 8), np.uint8), (1, 8, 8)).shape == (4, 1, 8, 8)
    """
    import numpy as np
    import torch

    if isinstance(images, (list, tuple)):
        return _from_pictures(list(images), in_shape)
    tensor = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images.detach()
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(1)
    if tensor.dim() != 4 or tuple(tensor.shape[1:]) != tuple(in_shape):
        raise DataError(f"images of shape {tuple(tensor.shape)} do not fit the encoder's input (N, "
                        f"{', '.join(map(str, in_shape))})", "resize them to the encoder's input, or pass PIL "
                        "images or file paths, which are converted")
    if tensor.dtype == torch.uint8:
        return tensor.cpu()
    if tensor.is_floating_point():
        return tensor.float().cpu()
    if int(tensor.min()) < 0 or int(tensor.max()) > 255:
        raise DataError(f"integer images with values {int(tensor.min())}..{int(tensor.max())} are not 8-bit",
                        "pass uint8 values 0-255 or floats in [0, 1]")
    return tensor.to(torch.uint8).cpu()


def _from_pictures(items: list[Any], in_shape: tuple[int, int, int]) -> Any:
    import numpy as np
    import torch
    from PIL import Image

    from clt.data.sources import image_array

    channels, height, width = in_shape
    arrays = []
    for item in items:
        if isinstance(item, Image.Image):
            arrays.append(image_array(item, channels, (height, width)))
            continue
        try:
            with Image.open(item) as im:
                arrays.append(image_array(im, channels, (height, width)))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise DataError(f"cannot read image '{item}': {err}", "pass readable image files") from None
    if not arrays:
        raise DataError("no images given", "pass at least one image")
    stacked = np.stack(arrays)
    stacked = stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(stacked))
