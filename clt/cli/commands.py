"""The `clt` command line: one thin function per command (parse, call clt.api, print).

stdout carries only what a script needs (the new artifact's id, or one JSON object with
--json); progress, logs and tables go to stderr. torch is imported only by the stages, and
the library (clt.api) is loaded only once a command runs, so `clt --help` starts fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer

from clt.errors import INTERRUPTED, CltError, write_error

app = typer.Typer(
    name="clt",
    help="Contrastive learning for images: download, pretrain, probe, evaluate, embed, tsne.\n\n"
         "Example: clt pretrain recipes/digits_pair.yaml && clt probe && clt evaluate --confusion",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class State:
    artifacts: Optional[str] = None
    json: bool = False
    debug: bool = False
    quiet: bool = False


STATE = State()


@app.callback()
def _global(
    artifacts: Optional[str] = typer.Option(None, "--artifacts", help="Artifact store root "
                                            "(default $CLT_ARTIFACTS or ./artifacts)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of the id."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or logs on stderr."),
) -> None:
    STATE.artifacts, STATE.json, STATE.debug, STATE.quiet = artifacts, json_out, debug, quiet


# ---------------------------------------------------------------------------- plumbing


def _api():
    from clt import api

    return api


def _store():
    return _api().open_store(STATE.artifacts)


def _console():
    from rich.console import Console

    return Console(stderr=True, quiet=STATE.quiet)


def _progress():
    from clt.cli.progress import RichProgress

    return RichProgress(_console())


def _opts(device: Optional[str] = None) -> dict[str, Any]:
    """The keyword arguments every API call takes from the command line: store, progress (and device)."""
    opts: dict[str, Any] = {"store": _store(), "progress": _progress()}
    if device is not None:
        opts["device"] = device
    return opts


def _run(fn: Callable[[], Any]) -> Any:
    """Run a stage: user errors become one short message, Ctrl-C one line, no tracebacks."""
    try:
        with _warnings_as_lines():
            return fn()
    except CltError as err:
        if STATE.debug:
            raise
        _say(err)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except Exception as err:  # noqa: BLE001 - the last line of defence against tracebacks
        if STATE.debug:
            raise
        # a write failure no stage named (full, read-only, under a file): still its file and the fix
        named = write_error(err, elsewhere="write somewhere else") if isinstance(err, OSError) else None
        if named is not None:
            _say(named)
        print(f"error: internal error {type(err).__name__}: {err}\n  fix: run again with --debug for the "
              f"traceback and report it", file=sys.stderr)
        raise typer.Exit(1) from None


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Python warnings (clt's own and its libraries') as one 'warning: ...' line on stderr, like the
    stages' warnings, instead of Python's 'FILE:LINE: UserWarning: ...' and the source line."""
    import warnings

    from rich.markup import escape

    from clt.rows import one_line

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001 - Python's signature
        _console().print(f"[bold yellow]warning:[/] {escape(one_line(str(message)))}", highlight=False,
                         soft_wrap=True)

    with warnings.catch_warnings():  # puts Python's own back afterwards (the API and tests stay as they were)
        warnings.showwarning = show
        yield


def _say(err: CltError) -> None:
    """Print a user error as its two lines (error, fix) and end with its exit code."""
    console = _console()
    console.quiet = False
    from rich.markup import escape  # messages quote user input: "[/x]" is not markup

    console.print(f"[bold red]error:[/] {escape(err.message)}", highlight=False, markup=True, soft_wrap=True)
    if err.hint:
        console.print(f"  [bold]fix:[/] {escape(err.hint)}", highlight=False, soft_wrap=True)
    raise typer.Exit(err.exit_code) from None


def _emit(result, json_out: bool = False) -> None:
    if STATE.json or json_out:
        print(json.dumps(result.as_json(), default=str))
    else:
        print(result.id)
    if result.cached and not STATE.quiet:
        print(f"(cached: {result.kind} {result.short} already in the store)", file=sys.stderr)


def _without_option(argv: list[str], name: str) -> list[str]:
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == name:
            skip = True
        elif not item.startswith(name + "="):
            out.append(item)
    return out


def _emit_many(outcomes: list, json_out: bool = False) -> None:
    """One id per line (one run per seed); with --json one object holding every run."""
    outcomes = [o for o in outcomes if o is not None]  # ranks other than 0 print nothing
    if not outcomes:
        return
    if len(outcomes) == 1:
        _emit(outcomes[0], json_out)
        return
    if STATE.json or json_out:
        print(json.dumps({"ids": [o.id for o in outcomes], "runs": [o.as_json() for o in outcomes]}, default=str))
    else:
        for outcome in outcomes:
            print(outcome.id)


def _renamed(old: str, new: str, why: str) -> None:
    """Refuse an option's old spelling, naming the new one (exit 2, as every usage error)."""
    raise CltError(f"{old} has been renamed {new} ({why})", f"write {new} instead")


def _parse_seeds(seeds: Optional[str], seed: Optional[int]) -> list[Optional[int]]:
    if seeds is None:
        return [seed]
    try:
        parsed = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise CltError(f"--seeds '{seeds}' is not a comma-separated list of integers", "write e.g. --seeds 0,1,2") \
            from None
    if not parsed:
        raise CltError("--seeds is empty", "write e.g. --seeds 0,1,2")
    return parsed


JSON_OPT = typer.Option(False, "--json", help="Print one JSON object instead of the id.")
SEED_OPT = typer.Option(None, "--seed", help="Override the recipe's seed.")
SEEDS_OPT = typer.Option(None, "--seeds", help="Run once per seed, e.g. 0,1,2: one artifact (and id line) each.")
DEVICE_OPT = typer.Option("auto", "--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps.")
SET_OPT = typer.Option([], "--set", help="Override a recipe key, e.g. --set pretrain.epochs=2 (repeatable).")
# the labelled subset and length of a probe: clt probe and clt baseline scratch train on the same labels
LABELS_PER_CLASS_OPT = typer.Option(None, "--labels-per-class", help="Train on N labels per class (seeded, balanced).")
LABELS_OPT = typer.Option(None, "--labels", help="Train on N labels in all, balanced.")
PROBE_EPOCHS_OPT = typer.Option(None, "--epochs", help="Passes over the labelled images (sets probe.epochs).")


# ---------------------------------------------------------------------------- stages


@app.command()
def download(
    name: str = typer.Argument(..., help="digits, mnist, fashion-mnist, cifar10, or a name for your own folder."),
    source: Optional[str] = typer.Option(None, "--from", help="Import a local copy: IDX folder, CIFAR-10 "
                                         "tarball, image folder or .tar.gz of split/class/image files."),
    size: Optional[str] = typer.Option(None, "--size", help="Resize images to HxW (for folders of mixed sizes)."),
    mirror: list[str] = typer.Option([], "--mirror", help="Base URL to download from instead of the official "
                                     "mirrors (repeatable)."),
    json_out: bool = JSON_OPT,
) -> None:
    """Get a dataset into the store (downloads with checksums, or imports a local copy).

    An image folder or tarball keeps each image's path relative to its root (train.paths.jsonl and
    test.paths.jsonl in the dataset), so embed, index, search and predict --knn name the files; the
    built-in datasets and IDX or CIFAR-10 batch files have none, and their images are named by row.

    Example: clt download mnist --from PATH/TO/mnist
    """
    def go():
        return _api().download(name, source, size=_parse_size(size), mirrors=list(mirror) or None, **_opts())

    _emit(_run(go), json_out)


def _parse_size(size: Optional[str]) -> Optional[tuple[int, int]]:
    if not size:
        return None
    try:
        h, w = (int(v) for v in size.lower().split("x"))
        if h < 1 or w < 1:
            raise ValueError
        return h, w
    except ValueError:
        raise CltError(f"--size '{size}' is not HxW", "write e.g. --size 32x32") from None


@app.command()
def init(
    recipe: str = typer.Argument(..., help="The recipe file to write, e.g. my_recipe.yaml (its name is the "
                                 "recipe's name)."),
    dataset: str = typer.Option(..., "--dataset", help="A stored dataset: digits, or one brought in with clt "
                                "download."),
    objective: str = typer.Option(..., "--objective", help="A registered objective, e.g. simclr, byol, moco, "
                                  "vicreg, supcon, triplet (an unknown name lists them)."),
    force: bool = typer.Option(False, "--force", help="Replace the file if it exists."),
) -> None:
    """Write a commented recipe for a stored dataset, from the objective's shipped, tested recipe.

    The dataset decides what fits it: the digits recipe for grayscale images, the CIFAR-10 one for
    colour, ResNet-18 from 64 pixels a side, a smaller batch for few images, and no probe or
    evaluate section without labels (objectives that need labels are refused). Each key's comment
    says what it does; prints the file's path.

    Example: clt init my_recipe.yaml --dataset digits --objective simclr && clt pretrain my_recipe.yaml
    """
    print(_run(lambda: _api().init(recipe, dataset=dataset, objective=objective, force=force, store=_store())))


@app.command()
def pretrain(
    recipe: str = typer.Argument(..., help="A YAML recipe, e.g. recipes/mnist_pair.yaml."),
    set_: list[str] = SET_OPT,
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the recipe's seed."),
    seeds: Optional[str] = SEEDS_OPT,
    device: str = DEVICE_OPT,
    precision: Optional[str] = typer.Option(None, "--precision", help="auto, fp32, bf16 or fp16 (overrides the "
                                            "recipe)."),
    fresh: bool = typer.Option(False, "--fresh", help="Ignore checkpoints of an interrupted run of this recipe."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue an interrupted run (default)."),
    nproc: int = typer.Option(1, "--nproc", help="Train in N processes (GPUs) with torch.distributed; same as "
                              "torchrun --nproc_per_node N -m clt pretrain ..."),
    minutes: Optional[float] = typer.Option(
        None, "--minutes", help="Train for about N minutes: the whole epochs that fit are planned from a short "
        "timed trial (sets pretrain.epochs; the encoder's recipe holds both, so the same --minutes can give other "
        "epochs, and another encoder, on another machine). 0 = the recipe's epochs."),
    tensorboard: Optional[str] = typer.Option(
        None, "--tensorboard", help="Also write TensorBoard event files (scalars, augmented views, confusion "
        "heatmap) to this folder; needs the tensorboard extra. Same as --set pretrain.tensorboard=DIR."),
    json_out: bool = JSON_OPT,
) -> None:
    """Train an encoder with the recipe's contrastive objective; prints the encoder's id.

    Re-running an unchanged recipe returns the stored encoder at once; an interrupted run
    continues from its last checkpoint. Every run says its planned duration: with --minutes
    before the first step, otherwise from its own first steps.

    Example: clt pretrain recipes/digits_pair.yaml --set pretrain.epochs=2
    """
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        argv = _without_option(sys.argv[1:], "--nproc")
        _run(lambda: _api().launch_distributed(nproc, argv))
        return
    _emit_many(_run(lambda: [_api().pretrain(recipe, overrides=list(set_), seed=one, resume=resume and not fresh,
                                             precision=precision, minutes=minutes, tensorboard=tensorboard,
                                             **_opts(device))
                             for one in _parse_seeds(seeds, seed)]), json_out)


@app.command()
def probe(
    encoder: Optional[str] = typer.Argument(None, help="Encoder id, prefix, ref or recipe name (default: latest)."),
    head: Optional[str] = typer.Option(None, "--head", help="linear or mlp."),
    epochs: Optional[int] = PROBE_EPOCHS_OPT,
    labels_per_class: Optional[int] = LABELS_PER_CLASS_OPT,
    labels: Optional[int] = LABELS_OPT,
    finetune: bool = typer.Option(False, "--finetune", help="Unfreeze the encoder (smaller learning rate)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Probe on another stored dataset."),
    set_: list[str] = SET_OPT,
    seed: Optional[int] = SEED_OPT,
    seeds: Optional[str] = SEEDS_OPT,
    device: str = DEVICE_OPT,
    json_out: bool = JSON_OPT,
) -> None:
    """Train a linear or MLP head on the frozen encoder; prints the probe's id.

    Example: clt probe --labels-per-class 10 --head mlp
    """
    overrides = list(set_)
    for key, value in (("head", head), ("epochs", epochs), ("labels_per_class", labels_per_class),
                       ("labels", labels)):
        if value is not None:
            overrides.append(f"probe.{key}={value}")
    if finetune:
        overrides.append("probe.finetune=true")
    _emit_many(_run(lambda: [_api().probe(encoder, overrides=overrides, seed=one, dataset=dataset, **_opts(device))
                             for one in _parse_seeds(seeds, seed)]), json_out)


@app.command()
def evaluate(
    refs: Optional[list[str]] = typer.Argument(None, help="Probes (or encoders, with --knn) to evaluate "
                                               "(default: latest probe); several give mean ± std."),
    confusion: bool = typer.Option(False, "--confusion", help="Also write a confusion heatmap PNG."),
    knn: Optional[int] = typer.Option(None, "--knn", help="Also classify by the K nearest train embeddings."),
    knn_metric: Optional[str] = typer.Option(None, "--metric", help="kNN metric: cosine or euclidean."),
    knn_vote: Optional[str] = typer.Option(None, "--vote", help="kNN vote: majority or distance."),
    quality: Optional[bool] = typer.Option(None, "--quality/--no-quality", help="Label-free measures (view "
                                           "retrieval, rank, alignment, uniformity) beside the untrained encoder "
                                           "and raw pixels; on by default for a dataset without labels."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="CSV of file name,tag (header optional): "
                                          "cross-validated kNN accuracy of your own tags, beside untrained and "
                                          "pixels; ten tagged images per tag are enough."),
    device: str = DEVICE_OPT,
    json_out: bool = JSON_OPT,
) -> None:
    """Accuracy, per-class accuracy, confusion matrix; pair accuracy for pair-trained encoders.

    Given several artifacts (one per seed), also prints mean ± std (sample std). On a dataset
    without labels (an imported folder of photos) it measures the encoder without them: how often
    an augmented view of a held-out image finds its own source (view retrieval), beside the same
    for the untrained encoder and raw pixels, with a verdict. Embeddings that are the zero vector
    are warned about; cosine kNN takes their similarity to everything as 0, ties to the lower row.

    Example: clt evaluate --confusion; clt evaluate ENCODER --labels tags.csv
    """
    from clt.cli import render

    def go():
        opts = _opts(device)
        results = [_api().evaluate(ref, confusion=confusion, knn=knn, metric=knn_metric, vote=knn_vote,
                                   quality=quality, labels=labels, **opts)
                   for ref in (refs or [None])]
        console = _console()
        for result in results:
            for table in render.evaluation_tables(result.manifest, result.short):
                console.print(table)
            if "label_free_verdict" in result.manifest["results"]:
                console.print(result.manifest["results"]["label_free_verdict"], highlight=False, markup=False,
                              soft_wrap=True)  # one line, whatever the terminal's width
            if "confusion.png" in result.manifest.get("files", {}):
                console.print(f"confusion heatmap: {result.file('confusion.png')}", highlight=False, markup=False)
        if len(results) > 1:
            console.print(render.compare_table(_api().compare([r.id for r in results], store=opts["store"])))
        return results

    results = _run(go)
    if len(results) > 1 and (STATE.json or json_out):
        rows = _run(lambda: _api().compare([r.id for r in results], store=_store()))
        print(json.dumps({"ids": [r.id for r in results], "runs": [r.as_json() for r in results],
                          "summary": rows}, default=str))
    else:
        _emit_many(results, json_out)


@app.command()
def embed(
    encoder: Optional[str] = typer.Argument(None, help="Encoder (default: latest)."),
    more: Optional[list[str]] = typer.Argument(None, metavar="[IMAGES]...", help="More images, after --images."),
    split: Optional[str] = typer.Option(None, "--split", help="train or test (default: test when the dataset "
                                        "has test images, else train: all images of an unlabeled folder)."),
    images: list[str] = typer.Option([], "--images", help="Embed new images instead of a split: files, folders "
                                     "(recursive), glob patterns or a .tar.gz (repeatable, or list them after it)."),
    out: Optional[str] = typer.Option(None, "--out", help="With --images: write a plain FILE.npy (plus "
                                      "FILE.paths.jsonl, one JSON string per row) or FILE.csv instead of an "
                                      "artifact."),
    tensorboard_projector: bool = typer.Option(False, "--tensorboard-projector", help="Also write vectors.tsv + "
                                               "metadata.tsv for the TensorBoard Embedding Projector."),
    old_projector: bool = typer.Option(False, "--projector", hidden=True),
    device: str = DEVICE_OPT,
    json_out: bool = JSON_OPT,
) -> None:
    """Write an encoder's embeddings of a split, or of new images, as .npy; prints the embeddings' id.

    Example: clt embed ENCODER --images PATH/TO/photos/
    """
    if old_projector:
        _run(lambda: _renamed("--projector", "--tensorboard-projector", "it writes the TensorBoard Embedding "
                              "Projector's files, not the projection head"))

    def go():
        ref, paths = _split_images(encoder, list(more or []), list(images))
        if not paths:
            if more or out:
                raise CltError("image paths or --out without --images", "write e.g. clt embed ENCODER --images DIR")
            return _api().embed(ref, split=split, projector=tensorboard_projector, **_opts(device))
        return _api().embed(ref, images=paths, out=out, **_opts(device))

    made = _run(go)
    if isinstance(made, Path):
        print(made)
    else:
        _emit(made, json_out)


def _split_images(encoder: Optional[str], more: list[str], images: list[str]) -> tuple[Optional[str], list[str]]:
    """(encoder ref, images): the shell expands `--images photos/*.jpg` into one flag value and loose
    paths, so with --images a first positional that is an image file or folder is an image too."""
    if not images:
        return encoder, images
    paths = images + more
    if encoder is not None and _is_image_input(encoder):
        return None, [encoder] + paths
    return encoder, paths


def _is_image_input(value: str) -> bool:
    path = Path(value)
    return path.is_file() or (path.is_dir() and not (path / "manifest.json").exists())


@app.command()
def tsne(
    embeddings: Optional[str] = typer.Argument(None, help="Embeddings artifact (default: latest)."),
    pca: bool = typer.Option(False, "--pca", help="PCA instead of t-SNE (fast)."),
    perplexity: float = typer.Option(30.0, "--perplexity", help="t-SNE perplexity: about how many neighbours "
                                     "each point keeps close."),
    max_points: int = typer.Option(5000, "--max-points", help="Draw a seeded sample of at most this many."),
    thumbnails: bool = typer.Option(False, "--thumbnails", help="Draw small images at up to 200 points "
                                    "(a seeded sample)."),
    color_by: Optional[str] = typer.Option(None, "--color-by", metavar="TAGS.CSV", help="Colour by your own "
                                           "tags: a CSV of file name,tag (header optional; untagged points grey), "
                                           "for embeddings of files: clt embed ENCODER --images FOLDER."),
    json_out: bool = JSON_OPT,
) -> None:
    """Draw embeddings in 2-D (t-SNE or PCA) as a PNG coloured by class (or by your tags).

    t-SNE needs more points than 3 x --perplexity; for fewer, lower it or use --pca.

    Example: clt tsne --pca --thumbnails
    """
    _emit(_run(lambda: _api().tsne(embeddings, pca=pca, perplexity=perplexity, max_points=max_points,
                                   thumbnails=thumbnails, color_by=color_by, **_opts())), json_out)


@app.command()
def predict(
    probe: str = typer.Argument(..., help="Probe (or, with --knn, an encoder): id, prefix, ref or recipe name."),
    images: list[str] = typer.Argument(..., help="Image files, folders, glob patterns or .tar.gz archives."),
    top: int = typer.Option(1, "--top", help="Print the K most likely classes per image."),
    knn: Optional[int] = typer.Option(None, "--knn", help="Vote among the K nearest stored training embeddings "
                                      "instead of the probe's head."),
    device: str = DEVICE_OPT,
    json_out: bool = JSON_OPT,
) -> None:
    """Classify new images: one line per image on stdout, path<TAB>class<TAB>prob (a table on stderr).

    Fields escape tab, CR, LF and backslash as \\t \\r \\n \\\\, other control and line-break
    characters as \\uXXXX and bytes of a name that are not UTF-8 as \\xNN, so one line is one image;
    --json prints each path exactly (a JSON string). With --knn, --json also lists each image's K
    voters as "neighbours" (row, path, class) and the table its nearest: by file name for a
    dataset imported with `clt download NAME --from`, by train row number for a built-in one
    (digits, mnist, fashion-mnist, cifar10; "path" null).

    Example: clt predict latest-probe photos/ --top 3
    """
    from clt.cli import render
    from clt.rows import tsv_field

    rows = _run(lambda: _api().predict(probe, images, top=top, knn=knn, **_opts(device)))
    _console().print(render.predictions_table(rows))
    for row in rows:
        if STATE.json or json_out:
            print(json.dumps(row))
        else:
            fields = [row["path"], *[f for c in row["top"] for f in (c["class"], f"{c['prob']:.4f}")]]
            print("\t".join(map(tsv_field, fields)))


@app.command()
def index(
    source: Optional[str] = typer.Argument(None, help="Encoder (its --split embeddings) or embeddings artifact "
                                           "(default: latest encoder)."),
    split: str = typer.Option("train", "--split", help="train or test."),
    index_type: str = typer.Option("exact", "--type", help="exact, hnsw or ivf (FAISS, approximate, for "
                                   "millions)."),
    old_kind: Optional[str] = typer.Option(None, "--kind", hidden=True),
    metric: str = typer.Option("cosine", "--metric", help="cosine or euclidean."),
    device: str = DEVICE_OPT,
    json_out: bool = JSON_OPT,
) -> None:
    """Build a search index over stored embeddings; prints the index's id.

    The index keeps the embeddings' names: file names for a dataset imported from a folder or
    tarball, or for `embed --images`; for a built-in dataset's split, row numbers.

    Example: clt index latest-encoder --type hnsw
    """
    if old_kind is not None:
        _run(lambda: _renamed("--kind", "--type", "`ls --kind` filters artifact kinds; an index has a type"))
    _emit(_run(lambda: _api().index(source, split=split, kind=index_type, metric=metric, **_opts(device))),
          json_out)


@app.command()
def search(
    index_ref: str = typer.Argument(..., metavar="INDEX", help="Index id, prefix or ref (latest-index)."),
    images: list[str] = typer.Argument(..., help="Query images: files, folders, glob patterns or .tar.gz."),
    k: int = typer.Option(10, "-k", "--k", help="Neighbours per query."),
    grid: Optional[str] = typer.Option(None, "--grid", help="Write a PNG of every query beside its neighbours."),
    device: str = DEVICE_OPT,
    json_out: bool = JSON_OPT,
) -> None:
    """Find the stored images nearest to each query: query<TAB>rank<TAB>name<TAB>class<TAB>distance.

    The name is the stored image's file name: its path inside the folder or archive imported with
    `clt download NAME --from`, or the path given to `embed --images`. Built-in datasets (digits,
    mnist, fashion-mnist, cifar10) have no file names: their images are named by their row number
    in the indexed split (--json: "path" null, "row" the number). The class field is empty where the
    image has no class (--json: "class" and "label" null). Grid captions show the same name.

    Fields escape tab, CR, LF and backslash as \\t \\r \\n \\\\, other control and line-break
    characters as \\uXXXX and bytes of a name that are not UTF-8 as \\xNN, so one line is one
    neighbour; --json prints each path exactly (a JSON string).

    Example: clt search latest-index query.jpg -k 5 --grid neighbours.png
    """
    from clt.rows import tsv_field

    found = _run(lambda: _api().search(index_ref, images, k=k, grid=grid, **_opts(device)))
    for result in found:
        if STATE.json or json_out:
            print(json.dumps(result))
            continue
        for n in result["neighbours"]:
            name = n["path"] if n["path"] is not None else str(n["row"])  # as clt.stages.search.shown_name
            fields = [result["query"], str(n["rank"]), name, n["class"] or "", f"{n['distance']:.6f}"]
            print("\t".join(map(tsv_field, fields)))


@app.command()
def export(
    encoder: Optional[str] = typer.Argument(None, help="Encoder (default: latest)."),
    fmt: str = typer.Option("onnx", "--format", help="onnx or torchscript."),
    out: Optional[str] = typer.Option(None, "--out", help="Also copy the model file (and its .json sidecar) here."),
    json_out: bool = JSON_OPT,
) -> None:
    """Export an encoder as one ONNX or TorchScript file taking uint8 images (normalisation folded in).

    Example: clt export latest-encoder --format onnx --out encoder.onnx
    """
    _emit(_run(lambda: _api().export(encoder, format=fmt, out=out, **_opts())), json_out)


baseline_app = typer.Typer(help="Baselines in the same tool: supervised from scratch, logistic regression on "
                            "pixels.", no_args_is_help=True)
app.add_typer(baseline_app, name="baseline")


@baseline_app.command("scratch")
def baseline_scratch(
    recipe: str = typer.Argument(..., help="The recipe whose encoder and probe settings to train from scratch."),
    labels_per_class: Optional[int] = LABELS_PER_CLASS_OPT,
    labels: Optional[int] = LABELS_OPT,
    epochs: Optional[int] = PROBE_EPOCHS_OPT,
    augment: str = typer.Option("none", "--augment", metavar="PRESET",
                                help="Augment every batch with a named preset (digits, cifar_crop, ...; an "
                                "unknown name lists them all; auto picks by dataset)."),
    set_: list[str] = SET_OPT,
    seed: Optional[int] = SEED_OPT,
    seeds: Optional[str] = SEEDS_OPT,
    device: str = DEVICE_OPT,
    json_out: bool = JSON_OPT,
) -> None:
    """Train the recipe's encoder plus head from scratch, supervised, on the same labels.

    Example: clt baseline scratch recipes/mnist_simclr.yaml --labels 100 --augment digits --seeds 0,1,2
    """
    overrides = list(set_)
    for key, value in (("labels_per_class", labels_per_class), ("labels", labels), ("epochs", epochs)):
        if value is not None:
            overrides.append(f"probe.{key}={value}")
    _emit_many(_run(lambda: [_api().baseline_scratch(recipe, overrides=overrides, seed=one, augment=augment,
                                                     **_opts(device))
                             for one in _parse_seeds(seeds, seed)]), json_out)


@baseline_app.command("logreg")
def baseline_logreg(
    dataset: str = typer.Argument(..., help="A stored dataset name, e.g. cifar10."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Passes over the train images."),
    set_: list[str] = typer.Option([], "--set", help="Override a probe key, e.g. --set lr=0.01."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initialisation and the batch order."),
    device: str = DEVICE_OPT,
    json_out: bool = JSON_OPT,
) -> None:
    """Multi-class logistic regression on the standardised pixels of a dataset.

    Example: clt baseline logreg cifar10 && clt evaluate
    """
    overrides = list(set_) + ([f"epochs={epochs}"] if epochs is not None else [])
    _emit(_run(lambda: _api().baseline_logreg(dataset, overrides=overrides, seed=seed, **_opts(device))), json_out)


@app.command()
def compare(
    refs: list[str] = typer.Argument(..., help="Evaluation artifacts (ids, prefixes or refs)."),
    markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table (for a README)."),
    json_out: bool = JSON_OPT,
) -> None:
    """One table of evaluations: name, objective, protocol, labels, accuracy (mean ± std over seeds).

    Example: clt compare $(clt evaluate $(clt probe --seeds 0,1,2))
    """
    from clt.cli import render

    rows = _run(lambda: _api().compare(refs, store=_store()))
    if STATE.json or json_out:
        print(json.dumps(rows, default=str))
    elif markdown:
        print(render.compare_markdown(rows))
    else:
        _console().print(render.compare_table(rows))


@app.command()
def report(
    refs: list[str] = typer.Argument(..., help="Encoders (or probes, evaluations: their encoder): ids, prefixes, "
                                     "refs such as latest-encoder, or recipe names."),
    out: str = typer.Option("report.html", "--out", "-o", help="The HTML file to write."),
    device: str = DEVICE_OPT,
    json_out: bool = JSON_OPT,
) -> None:
    """Write one self-contained HTML page (opens from disk, no network) for an encoder and its lineage:
    dataset, recipe, curves, views, evaluations, t-SNE, neighbours, timings. Several refs: one page
    comparing them. Prints the page's path.

    Example: clt report latest-encoder --out report.html
    """
    path = _run(lambda: _api().report(refs, out=out, **_opts(device)))
    print(json.dumps({"path": str(path)}) if STATE.json or json_out else path)


@app.command()
def views(
    recipe: str = typer.Argument(..., help="Recipe whose augmentations to show."),
    count: int = typer.Option(8, "--count", help="How many images."),
    n_views: int = typer.Option(4, "--views", help="Augmented views per image."),
    set_: list[str] = SET_OPT,
    json_out: bool = JSON_OPT,
) -> None:
    """Write a PNG grid of original images next to their augmented views.

    Example: clt views recipes/mnist_simclr.yaml
    """
    _emit(_run(lambda: _api().views(recipe, overrides=list(set_), count=count, n_views=n_views, **_opts())),
          json_out)


# ---------------------------------------------------------------------------- store


@app.command("ls")
def ls_(
    kind: Optional[str] = typer.Option(None, "--kind", help="Only this kind (dataset, encoder, probe, ...)."),
    json_out: bool = JSON_OPT,
) -> None:
    """List the artifacts in the store, oldest first.

    Example: clt ls --kind encoder
    """
    def go():
        store = _store()
        rows = _api().list_artifacts(kind, store=store)
        note = KEY_NOTES.get(_api().key_status(store=store)["state"])
        if note and (rows or kind):
            print(note, file=sys.stderr)
        if STATE.json or json_out:
            print(json.dumps(rows))
            return
        from rich.console import Console

        from clt.cli import render

        Console(width=max(140, _terminal_width())).print(render.artifacts_table(rows, str(store.root)))

    _run(go)


# what `clt ls` says of a store whose signatures this user cannot check (it lists what sha256 confirms)
KEY_NOTES = {"unreadable": "store key unreadable: read-only, checked by sha256 only",
             "unkeyed": "store has no key: checked by sha256 only (`clt verify --adopt-key` signs it)"}


def _terminal_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 140


@app.command()
def show(ref: str = typer.Argument(..., help="Artifact id, prefix, ref or path.")) -> None:
    """Print one artifact's manifest (JSON).

    Example: clt show latest
    """
    def go():
        print(json.dumps(_api().show(ref, store=_store()), indent=2, default=str))

    _run(go)


@app.command()
def verify(ref: Optional[str] = typer.Argument(None, help="One artifact (default: every artifact)."),
           adopt_key: bool = typer.Option(False, "--adopt-key", help="On purpose only: make the key in place (a "
                                          "new one if store.key is missing) the store's key, signing every artifact "
                                          "whose files match their sha256.")) -> None:
    """Recheck every file's sha256 and the manifest; exit 1 if anything is damaged or the signatures
    cannot be checked (store.key missing or replaced: that is not damage, and gc --damaged keeps them).

    Example: clt verify
    """
    def go():
        if adopt_key:
            _adopt_key()
            return
        store = _store()
        status = _api().key_status(store=store)
        found = _api().verify(ref, store=store)
        bad = 0
        for artifact_id, problems in found.items():
            for problem in problems:
                print(f"{artifact_id[:12]}: {problem}", file=sys.stderr)
            bad += bool(problems)
        print(f"{len(found) - bad} ok, {bad} damaged", file=sys.stderr)
        uncheckable = status["state"] in ("missing", "replaced")
        if found and status["state"] != "ok":
            print(f"signatures not checked: {status['message']}", file=sys.stderr)
        if uncheckable:
            print(f"  fix: {status['hint']}; `clt gc --damaged` removes only the damaged ones", file=sys.stderr)
        if bad:
            print("  fix: `clt gc --damaged` removes them; run the stages that made them again", file=sys.stderr)
        if bad or uncheckable:
            raise typer.Exit(1)

    _run(go)


def _adopt_key() -> None:
    store = _store()
    done = _api().adopt_key(store=store)
    print(f"signed {len(done['signed'])} artifacts whose files match their sha256 with {store.root}/store.key; "
          "an edit made while the store had no usable key cannot be told from the original", file=sys.stderr)
    for artifact_id in done["skipped"]:
        print(f"skipped {artifact_id[:12]}: damaged (`clt gc --damaged` removes it)", file=sys.stderr)


@app.command()
def gc(damaged: bool = typer.Option(False, "--damaged", help="Also delete artifacts that fail verification."),
       stale: bool = typer.Option(False, "--stale", help="Also delete artifacts made by other clt code (marked "
                                  "'older code' by clt ls); no stage of this code uses them again.")) -> None:
    """Remove partial directories left by killed runs (and, with --damaged, damaged artifacts).

    Example: clt gc --stale
    """
    def go():
        removed = _api().gc(damaged, stale=stale, store=_store())
        for path in removed:
            print(f"removed {path}", file=sys.stderr)
        print(f"{len(removed)} removed", file=sys.stderr)

    _run(go)


def main() -> None:
    import threading

    from clt.cli.torch_import import TorchImportHoldsCtrlC

    if "torch" not in sys.modules and threading.current_thread() is threading.main_thread():
        sys.meta_path.insert(0, TorchImportHoldsCtrlC())
    app()


if __name__ == "__main__":
    main()
