"""The `clt` command line: one thin function per command (parse, call a stage, print).

stdout carries only what a script needs (the new artifact's id, or one JSON object with
--json); progress, logs and tables go to stderr. torch is imported only by the stages.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from clt.entry import INTERRUPTED
from clt.errors import CltError

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


def _store():
    from clt.store import Store, default_root

    return Store(Path(STATE.artifacts) if STATE.artifacts else default_root())


def _console():
    from rich.console import Console

    return Console(stderr=True, quiet=STATE.quiet)


def _context(device: str = "auto", precision: Optional[str] = None):
    from clt.reporting import RichReporter
    from clt.stages import Context

    return Context(store=_store(), device=device, precision=precision, report=RichReporter(_console()))


def _run(fn: Callable[[], Any]) -> Any:
    """Run a stage: user errors become one short message, Ctrl-C one line, no tracebacks."""
    try:
        return fn()
    except CltError as err:
        if STATE.debug:
            raise
        console = _console()
        console.quiet = False
        from rich.markup import escape  # messages quote user input: "[/x]" is not markup

        console.print(f"[bold red]error:[/] {escape(err.message)}", highlight=False, markup=True, soft_wrap=True)
        if err.hint:
            console.print(f"  [bold]fix:[/] {escape(err.hint)}", highlight=False, soft_wrap=True)
        raise typer.Exit(err.exit_code) from None
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except Exception as err:  # noqa: BLE001 - the last line of defence against tracebacks
        if STATE.debug:
            raise
        print(f"error: internal error {type(err).__name__}: {err}\n  fix: run again with --debug for the "
              f"traceback and report it", file=sys.stderr)
        raise typer.Exit(1) from None


def _emit(outcome, json_out: bool = False) -> None:
    if STATE.json or json_out:
        print(json.dumps(outcome.as_json(), default=str))
    else:
        print(outcome.artifact.id)
    if outcome.cached and not STATE.quiet:
        print(f"(cached: {outcome.artifact.kind} {outcome.artifact.short} already in the store)", file=sys.stderr)


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
        print(json.dumps({"ids": [o.artifact.id for o in outcomes], "runs": [o.as_json() for o in outcomes]},
                         default=str))
    else:
        for outcome in outcomes:
            print(outcome.artifact.id)


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
SEEDS_OPT = typer.Option(None, "--seeds", help="Run once per seed, e.g. 0,1,2: one artifact (and id line) each.")
DEVICE_OPT = typer.Option("auto", "--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps.")
SET_OPT = typer.Option([], "--set", help="Override a recipe key, e.g. --set pretrain.epochs=2 (repeatable).")


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

    Example: clt download mnist --from ../shared/datasets/mnist
    """
    from clt import stages

    def go():
        parsed = _parse_size(size)
        return stages.download(_context(), name, source, parsed, list(mirror) or None)

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
    json_out: bool = JSON_OPT,
) -> None:
    """Train an encoder with the recipe's contrastive objective; prints the encoder's id.

    Re-running an unchanged recipe returns the stored encoder at once; an interrupted run
    continues from its last checkpoint.

    Example: clt pretrain recipes/digits_pair.yaml --set pretrain.epochs=2
    """
    from clt import stages

    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        from clt.distributed import launch

        argv = _without_option(sys.argv[1:], "--nproc")
        _run(lambda: launch(nproc, argv))
        return
    overrides = list(set_)
    if precision:
        overrides.append(f"pretrain.precision={precision}")
    _emit_many(_run(lambda: [stages.pretrain(_context(device), recipe, overrides, one, resume and not fresh)
                             for one in _parse_seeds(seeds, seed)]), json_out)


@app.command()
def probe(
    encoder: Optional[str] = typer.Argument(None, help="Encoder id, prefix, ref or recipe name (default: latest)."),
    head: Optional[str] = typer.Option(None, "--head", help="linear or mlp."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    labels_per_class: Optional[int] = typer.Option(None, "--labels-per-class", help="Train on N labels per "
                                                   "class (seeded, balanced)."),
    labels: Optional[int] = typer.Option(None, "--labels", help="Train on N labels in all, balanced."),
    finetune: bool = typer.Option(False, "--finetune", help="Unfreeze the encoder (smaller learning rate)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Probe on another stored dataset."),
    set_: list[str] = SET_OPT,
    seed: Optional[int] = typer.Option(None, "--seed"),
    seeds: Optional[str] = SEEDS_OPT,
    device: str = DEVICE_OPT,
    json_out: bool = JSON_OPT,
) -> None:
    """Train a linear or MLP head on the frozen encoder; prints the probe's id.

    Example: clt probe --labels-per-class 10 --head mlp
    """
    from clt import stages

    overrides = list(set_)
    for key, value in (("head", head), ("epochs", epochs), ("labels_per_class", labels_per_class),
                       ("labels", labels)):
        if value is not None:
            overrides.append(f"probe.{key}={value}")
    if finetune:
        overrides.append("probe.finetune=true")
    _emit_many(_run(lambda: [stages.probe(_context(device), encoder, overrides, one, dataset)
                             for one in _parse_seeds(seeds, seed)]), json_out)


@app.command()
def evaluate(
    refs: Optional[list[str]] = typer.Argument(None, help="Probes (or encoders, with --knn) to evaluate "
                                               "(default: latest probe); several give mean ± std."),
    confusion: bool = typer.Option(False, "--confusion", help="Also write a confusion heatmap PNG."),
    knn: Optional[int] = typer.Option(None, "--knn", help="Also classify by the K nearest train embeddings."),
    knn_metric: Optional[str] = typer.Option(None, "--metric", help="kNN metric: cosine or euclidean."),
    knn_vote: Optional[str] = typer.Option(None, "--vote", help="kNN vote: majority or distance."),
    device: str = DEVICE_OPT,
    json_out: bool = JSON_OPT,
) -> None:
    """Accuracy, per-class accuracy, confusion matrix; pair accuracy for pair-trained encoders.

    Given several artifacts (one per seed), also prints mean ± std (sample std).

    Example: clt evaluate --confusion
    """
    from clt import stages

    def go():
        for flag, value, allowed in (("--metric", knn_metric, ("cosine", "euclidean")),
                                     ("--vote", knn_vote, ("majority", "distance"))):
            if value is not None and value not in allowed:
                raise CltError(f"{flag} {value} is not allowed", f"use one of: {', '.join(allowed)}")
        if knn is not None and knn < 1:
            raise CltError(f"--knn {knn} must be >= 1", "use e.g. --knn 10")
        context = _context(device)
        outcomes = [stages.evaluate(context, ref, confusion, knn, knn_metric, knn_vote) for ref in (refs or [None])]
        if len(outcomes) > 1:
            _print_compare(stages.summarize(context.store, [o.artifact.id for o in outcomes]), "table")
        return outcomes

    outcomes = _run(go)
    if len(outcomes) > 1 and (STATE.json or json_out):
        from clt import stages as st

        rows = st.summarize(_store(), [o.artifact.id for o in outcomes])
        print(json.dumps({"ids": [o.artifact.id for o in outcomes], "runs": [o.as_json() for o in outcomes],
                          "summary": rows}, default=str))
    else:
        _emit_many(outcomes, json_out)


@app.command()
def embed(
    encoder: Optional[str] = typer.Argument(None, help="Encoder (default: latest)."),
    split: str = typer.Option("test", "--split", help="train or test."),
    projector: bool = typer.Option(False, "--projector", help="Also write vectors.tsv + metadata.tsv for the "
                                   "TensorBoard Embedding Projector."),
    device: str = DEVICE_OPT,
    json_out: bool = JSON_OPT,
) -> None:
    """Write an encoder's embeddings of a split as .npy; prints the embeddings' id.

    Example: clt embed --split test
    """
    from clt import stages

    _emit(_run(lambda: stages.embed(_context(device), encoder, split, projector)), json_out)


@app.command()
def tsne(
    embeddings: Optional[str] = typer.Argument(None, help="Embeddings artifact (default: latest)."),
    pca: bool = typer.Option(False, "--pca", help="PCA instead of t-SNE (fast)."),
    perplexity: float = typer.Option(30.0, "--perplexity"),
    max_points: int = typer.Option(5000, "--max-points", help="Draw a seeded sample of at most this many."),
    json_out: bool = JSON_OPT,
) -> None:
    """Draw embeddings in 2-D (t-SNE or PCA) as a PNG coloured by class.

    Example: clt tsne --pca
    """
    from clt import stages

    _emit(_run(lambda: stages.tsne(_context(), embeddings, pca, perplexity, max_points)), json_out)


baseline_app = typer.Typer(help="Baselines in the same tool: supervised from scratch, logistic regression on "
                            "pixels.", no_args_is_help=True)
app.add_typer(baseline_app, name="baseline")


@baseline_app.command("scratch")
def baseline_scratch(
    recipe: str = typer.Argument(..., help="The recipe whose encoder and probe settings to train from scratch."),
    labels_per_class: Optional[int] = typer.Option(None, "--labels-per-class"),
    labels: Optional[int] = typer.Option(None, "--labels"),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    augment: str = typer.Option("none", "--augment", metavar="PRESET",
                                help="Augment every batch with a named preset (digits, cifar_crop, ...; an "
                                "unknown name lists them all; auto picks by dataset)."),
    set_: list[str] = SET_OPT,
    seed: Optional[int] = typer.Option(None, "--seed"),
    seeds: Optional[str] = SEEDS_OPT,
    device: str = DEVICE_OPT,
    json_out: bool = JSON_OPT,
) -> None:
    """Train the recipe's encoder plus head from scratch, supervised, on the same labels.

    Example: clt baseline scratch recipes/mnist_simclr.yaml --labels 100 --augment digits --seeds 0,1,2
    """
    from clt import stages

    overrides = list(set_)
    for key, value in (("labels_per_class", labels_per_class), ("labels", labels), ("epochs", epochs)):
        if value is not None:
            overrides.append(f"probe.{key}={value}")
    _emit_many(_run(lambda: [stages.baseline_scratch(_context(device), recipe, overrides, one, augment)
                             for one in _parse_seeds(seeds, seed)]), json_out)


@baseline_app.command("logreg")
def baseline_logreg(
    dataset: str = typer.Argument(..., help="A stored dataset name, e.g. cifar10."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    set_: list[str] = typer.Option([], "--set", help="Override a probe key, e.g. --set lr=0.01."),
    seed: int = typer.Option(0, "--seed"),
    device: str = DEVICE_OPT,
    json_out: bool = JSON_OPT,
) -> None:
    """Multi-class logistic regression on the standardised pixels of a dataset.

    Example: clt baseline logreg cifar10 && clt evaluate
    """
    from clt import stages

    overrides = list(set_) + ([f"epochs={epochs}"] if epochs is not None else [])
    _emit(_run(lambda: stages.baseline_logreg(_context(device), dataset, overrides, seed)), json_out)


@app.command()
def compare(
    refs: list[str] = typer.Argument(..., help="Evaluation artifacts (ids, prefixes or refs)."),
    markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table (for a README)."),
    json_out: bool = JSON_OPT,
) -> None:
    """One table of evaluations: name, objective, protocol, labels, accuracy (mean ± std over seeds).

    Example: clt compare $(clt evaluate $(clt probe --seeds 0,1,2))
    """
    from clt import stages

    rows = _run(lambda: stages.summarize(_store(), refs))
    if STATE.json or json_out:
        print(json.dumps(rows, default=str))
    else:
        _print_compare(rows, "markdown" if markdown else "table")


def _print_compare(rows: list[dict[str, Any]], style: str) -> None:
    from clt.stages import format_mean_std

    header = ["name", "objective", "protocol", "labels", "seeds", "accuracy %", "kNN %", "pair %", "wall s"]
    lines = [[str(r["name"]), str(r["objective"]), r["protocol"], str(r["labels"]), str(r["n"]),
              format_mean_std(r.get("accuracy")), format_mean_std(r.get("knn_accuracy")),
              format_mean_std(r.get("pair_accuracy")), f"{r['wall_time_s']:.0f}"] for r in rows]
    if style == "markdown":
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for line in lines:
            print("| " + " | ".join(line) + " |")
        return
    from rich.table import Table

    table = Table(title="comparison")
    for column in header:
        table.add_column(column, justify="right" if column.endswith(("%", "s")) else "left")
    for line in lines:
        table.add_row(*line)
    _console().print(table)


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
    from clt import stages

    _emit(_run(lambda: stages.views(_context(), recipe, list(set_), count, n_views)), json_out)


# ---------------------------------------------------------------------------- store


@app.command("ls")
def ls_(
    kind: Optional[str] = typer.Option(None, "--kind", help="Only this kind (dataset, encoder, probe, ...)."),
    json_out: bool = JSON_OPT,
) -> None:
    """List the artifacts in the store, oldest first.

    Example: clt ls --kind encoder
    """
    from clt.stages import iter_rows

    def go():
        rows = [r for r in iter_rows(_store()) if kind is None or r["kind"] == kind]
        if STATE.json or json_out:
            print(json.dumps(rows))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"artifacts in {_store().root}")
        for column in ("id", "kind", "name", "created", "metrics", "files"):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(row["short"], row["kind"], row["name"], row["created"], row["metrics"], row["files"])
        Console(width=max(140, _terminal_width())).print(table)

    _run(go)


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
        artifact = _store().resolve(ref)
        print(json.dumps(artifact.manifest, indent=2, default=str))

    _run(go)


@app.command()
def verify(ref: Optional[str] = typer.Argument(None, help="One artifact (default: every artifact).")) -> None:
    """Recheck every file's sha256 and the manifest; exit 1 if anything is damaged.

    Example: clt verify
    """
    def go():
        store = _store()
        ids = [store.resolve(ref).id] if ref else store.ids()
        bad = 0
        for artifact_id in sorted(ids):
            problems = store.verify(artifact_id)
            for problem in problems:
                print(f"{artifact_id[:12]}: {problem}", file=sys.stderr)
            bad += bool(problems)
        print(f"{len(ids) - bad} ok, {bad} damaged", file=sys.stderr)
        if bad:
            print("  fix: `clt gc --damaged` removes them; run the stages that made them again", file=sys.stderr)
            raise typer.Exit(1)

    _run(go)


@app.command()
def gc(damaged: bool = typer.Option(False, "--damaged", help="Also delete artifacts that fail verification.")) -> None:
    """Remove partial directories left by killed runs (and, with --damaged, damaged artifacts).

    Example: clt gc
    """
    def go():
        removed = _store().gc(damaged)
        for path in removed:
            print(f"removed {path}", file=sys.stderr)
        print(f"{len(removed)} removed", file=sys.stderr)

    _run(go)


class _TorchImportHoldsCtrlC:
    """A meta-path finder for the one import of the `torch` package.

    Ctrl-C while torch imports lands in its C++ start-up code, which aborts the process
    ("terminate called after throwing an instance of 'pybind11::error_already_set'") or
    swallows the interrupt. A Ctrl-C during that import is noted and acted on the moment it
    ends, as an ordinary KeyboardInterrupt: one "interrupted" line, exit 130.
    """

    def find_spec(self, name: str, path=None, target=None):
        if name != "torch":
            return None
        import importlib.util

        sys.meta_path.remove(self)  # torch is imported once; find it the ordinary way
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _SigintHeldLoader(spec.loader)
        return spec


class _SigintHeldLoader:
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        import signal

        # a handler that only takes note (blocking the signal is not enough: another thread,
        # e.g. a BLAS worker started by numpy, would take it and the interrupt would still land
        # inside torch's import)
        caught: list[int] = []
        previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
        try:
            self.loader.exec_module(module)
        finally:
            signal.signal(signal.SIGINT, previous)
        if caught and callable(previous):
            previous(signal.SIGINT, None)  # Python's default handler: KeyboardInterrupt, now
        elif caught and previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    def __getattr__(self, name: str):
        return getattr(self.loader, name)


def main() -> None:
    import threading

    if "torch" not in sys.modules and threading.current_thread() is threading.main_thread():
        sys.meta_path.insert(0, _TorchImportHoldsCtrlC())
    app()


if __name__ == "__main__":
    main()
