"""The report stage: one self-contained HTML page for an encoder and its lineage, or comparing several.

An encoder's lineage is what the store holds around it: the dataset it was trained on (its input)
and what was made from it (each manifest records its inputs): probes, their evaluations, kNN
evaluations, embeddings and their t-SNE pictures. A probe or evaluation given as the ref is walked
up to its encoder. A part not made yet is named with the command that makes it; nothing is built.
The page is written where asked, not into the store: it is a view of artifacts, not one.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from clt import htmlpage as html
from clt.errors import CltError, DataError
from clt.runlog import METRICS_FILE, read_metrics
from clt.stages.context import Context
from clt.stages.dataset import dataset_of, load_dataset
from clt.stages.views import views_grid
from clt.store import SHORT, Artifact, Store
from clt.version import __version__

NEIGHBOUR_QUERIES = 6
NEIGHBOURS = 5
NEIGHBOUR_BANK = 5000  # train images searched for neighbours (a seeded subset of bigger splits)
SAMPLES_PER_CLASS = 8
EVALUATION_METRICS = ("accuracy", "knn_accuracy", "pair_accuracy", "pair_accuracy_random_partner",
                      "view_retrieval", "tags_knn_accuracy")


@dataclass
class Lineage:
    """An encoder and what the store holds around it, newest first."""

    encoder: Artifact
    dataset: Artifact | None
    probes: list[Artifact] = field(default_factory=list)
    evaluations: dict[str, list[Artifact]] = field(default_factory=dict)  # by target id (probe or encoder)
    tsne: list[Artifact] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.encoder.name or 'encoder'} {self.encoder.short}"

    def latest_evaluation(self) -> Artifact | None:
        found = [e for p in self.probes for e in self.evaluations.get(p.id, [])]
        found = found or self.evaluations.get(self.encoder.id, [])
        return max(found, key=_created) if found else None


def report(ctx: Context, refs: list[str], out: str = "report.html") -> Path:
    """Write the report of one encoder's lineage, or a comparison of several, to `out`; returns its path.

    Example: report(ctx, ["latest-encoder"], "report.html").read_text().startswith("<!DOCTYPE html>")
    """
    if not refs:
        raise CltError("clt report needs at least one artifact", "pass an encoder, probe or evaluation: "
                       "clt report latest-encoder")
    ctx.store.check_readable()
    everything = ctx.store.all()
    lineages = [lineage(ctx.store, _encoder_of(ctx.store, ref), everything) for ref in refs]
    ids = [lin.encoder.id for lin in lineages]
    if len(set(ids)) < len(ids):
        raise CltError("the refs name the same encoder more than once (a probe or evaluation counts as its encoder)",
                       "pass each encoder once")
    with tempfile.TemporaryDirectory() as scratch:
        pictures = Pictures(Path(scratch))
        text = _single(ctx, lineages[0], pictures) if len(lineages) == 1 else _comparison(ctx, lineages, pictures)
    path = Path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise CltError(f"--out {out}: cannot write the report ({err.strerror or err})",
                       "pass a writable path, e.g. --out report.html") from None
    ctx.report.info(f"report: {path} ({len(text) / 1e6:.1f} MB, {len(lineages)} encoder"
                    f"{'s' if len(lineages) > 1 else ''})")
    return path


# ---------------------------------------------------------------------------- lineage


def _encoder_of(store: Store, ref: str) -> Artifact:
    """The encoder behind `ref`: an encoder, a recipe name, or a probe / evaluation walked up."""
    named = store.read_ref(f"{ref}/encoder")
    artifact = store.get(named) if named and store.exists(named) else store.resolve(ref)
    seen = artifact
    while artifact.kind != "encoder":
        parent = artifact.inputs.get("target") or artifact.inputs.get("encoder") or artifact.inputs.get("embeddings")
        if not parent or not store.exists(parent):
            raise CltError(f"'{ref}' is a {seen.kind} ({seen.short}) with no encoder behind it in the store",
                           "pass an encoder, or a probe or evaluation of one (see `clt ls`)")
        artifact = store.get(parent)
    return artifact


def _created(artifact: Artifact) -> float:
    return float(artifact.manifest.get("created", 0))


def lineage(store: Store, encoder: Artifact, everything: list[Artifact]) -> Lineage:
    """What the store holds around `encoder`, from the inputs each manifest records."""
    try:
        dataset = dataset_of(store, encoder)
    except DataError:
        dataset = None
    made_from: dict[str, list[Artifact]] = {}
    for artifact in everything:
        for parent in set(artifact.inputs.values()):
            if isinstance(parent, str):
                made_from.setdefault(parent, []).append(artifact)
    children = lambda parent, kind: sorted((a for a in made_from.get(parent, []) if a.kind == kind),  # noqa: E731
                                           key=_created, reverse=True)
    found = Lineage(encoder, dataset, probes=children(encoder.id, "probe"))
    for target in [encoder, *found.probes]:
        evaluations = children(target.id, "evaluation")
        if evaluations:
            found.evaluations[target.id] = evaluations
    found.tsne = [f for e in children(encoder.id, "embeddings") for f in children(e.id, "figure")]
    return found


# ---------------------------------------------------------------------------- pictures


class Pictures:
    """clt's own PNGs, drawn into a scratch folder and inlined."""

    def __init__(self, folder: Path):
        self.folder, self.count = folder, 0

    def draw(self, make: Callable[[Path], Any], alt: str, caption: str = "", width: int | None = None) -> str:
        self.count += 1
        path = self.folder / f"picture{self.count}.png"
        make(path)
        return html.png(path.read_bytes(), alt, caption, width)


def _stored_png(artifact: Artifact, name: str, alt: str, caption: str = "", width: int | None = None) -> str:
    return html.png(artifact.file(name).read_bytes(), alt, caption, width)


# ---------------------------------------------------------------------------- one encoder


def _single(ctx: Context, lin: Lineage, pictures: Pictures) -> str:
    encoder = lin.encoder
    metrics = encoder.metrics
    subtitle = [f"encoder {encoder.id}", f"{encoder.manifest.get('objective', '-')} on "
                f"{lin.dataset.name if lin.dataset else 'a dataset no longer in the store'}, "
                f"{metrics.get('epochs', '?')} epochs; report by clt {__version__}"]
    data = _data(lin)
    sections = [
        _summary(lin),
        _dataset_card(lin, data, pictures),
        html.section("Recipe", html.paragraph("The resolved recipe the encoder was trained with (defaults filled "
                                              "in), as stored in its manifest."),
                     html.preformatted(_yaml(encoder.recipe)), anchor="recipe"),
        _training(lin),
        _views(lin, data, pictures),
        _evaluations(lin, pictures),
        _tsne(lin),
        _neighbours(ctx, lin, data, pictures),
        _timings([lin]),
    ]
    return html.page(f"clt report: {encoder.name or 'encoder'} {encoder.short}", subtitle, sections)


def _data(lin: Lineage):
    if lin.dataset is None:
        return None
    try:
        return load_dataset(lin.dataset)
    except (CltError, OSError):
        return None


def _yaml(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, sort_keys=False, default_flow_style=None, width=100) if value else "-"


def _pct(value: Any) -> str:
    return f"{value:.2%}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _summary(lin: Lineage) -> str:
    encoder, metrics = lin.encoder, lin.encoder.metrics
    info = encoder.manifest.get("encoder", {})
    latest = lin.latest_evaluation()
    pairs = [("name", encoder.name), ("encoder id", encoder.id), ("objective", encoder.manifest.get("objective")),
             ("architecture", f"{info.get('name', '-')} -> {info.get('out_dim', '?')} dimensions"),
             ("epochs", metrics.get("epochs")), ("final loss", metrics.get("final_loss")),
             ("embedding spread / rank", f"{html.fmt(metrics.get('embedding_spread'))} / "
                                         f"{html.fmt(metrics.get('embedding_rank'))}")]
    if latest is not None:
        pairs += [(f"{name.replace('_', ' ')} (evaluation {latest.short})", _pct(latest.metrics[name]))
                  for name in EVALUATION_METRICS if name in latest.metrics]
    pairs += [("trained on", encoder.manifest.get("device")), ("precision", encoder.manifest.get("precision")),
              ("created", _date(encoder)),
              ("clt version that trained it", encoder.manifest.get("versions", {}).get("clt"))]
    return html.section("Summary", html.key_values(pairs), anchor="summary")


def _date(artifact: Artifact) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.localtime(_created(artifact)))


def _dataset_card(lin: Lineage, data, pictures: Pictures) -> str:
    if lin.dataset is None:
        return html.section("Dataset", html.missing("the dataset this encoder was trained on is no longer in the "
                                                    "store", "clt download NAME"), anchor="dataset")
    info = lin.dataset.manifest.get("dataset", {})
    classes = info.get("classes") or []
    pairs = [("name", lin.dataset.name or info.get("name")), ("dataset id", lin.dataset.id),
             ("train images", info.get("train")), ("test images", info.get("test")),
             ("image shape (C, H, W)", info.get("in_shape") or (list(data.in_shape) if data else "-")),
             ("classes", f"{len(classes)}: {', '.join(map(str, classes[:20]))}{' ...' if len(classes) > 20 else ''}"
              if classes else "none (unlabeled)")]
    parts = [html.key_values(pairs)]
    if data is not None and len(data.train):
        parts.append(pictures.draw(lambda path: _sample_grid(data, path), "sample images",
                                   "train images, one row per class (up to 10 classes)", 360))
    return html.section("Dataset", html.row(*parts), anchor="dataset")


def _sample_grid(data, path: Path) -> None:
    import torch

    from clt import plots

    generator = torch.Generator().manual_seed(0)
    labels = data.train.labels
    rows, titles = [], []
    if data.labeled:
        for index, name in list(enumerate(data.classes))[:10]:
            members = torch.nonzero(labels == index).flatten()
            chosen = members[torch.randperm(len(members), generator=generator)[:SAMPLES_PER_CLASS]]
            if len(chosen):
                rows.append((data.train.images[chosen].float() / 255).numpy())
                titles.append(str(name))
    else:
        order = torch.randperm(len(labels), generator=generator)[:4 * SAMPLES_PER_CLASS]
        rows = [(data.train.images[order[i:i + SAMPLES_PER_CLASS]].float() / 255).numpy()
                for i in range(0, len(order), SAMPLES_PER_CLASS)]
    plots.image_grid(rows, path, titles)


def metrics_of(artifact: Artifact) -> list[dict[str, Any]]:
    """An artifact's metrics stream, or its history's epochs for one made before the stream."""
    files = artifact.manifest.get("files", {})
    if METRICS_FILE in files:
        return read_metrics(artifact.file(METRICS_FILE))
    if "history.json" in files:
        return [{"event": "epoch", **h} for h in json.loads(artifact.file("history.json").read_text())]
    return []


def _series(records: list[dict[str, Any]], event: str, key: str, x: str = "epoch") -> tuple[list, list]:
    chosen = [r for r in records if r.get("event") == event and isinstance(r.get(key), (int, float))
              and not isinstance(r.get(key), bool)]
    return [r.get(x) for r in chosen], [float(r[key]) for r in chosen]


TRAINING_CHARTS = (  # (title, event, key, y label)
    ("loss per logged step", "step", "loss", "loss"),
    ("mean loss per epoch", "epoch", "loss", "loss"),
    ("learning rate", "step", "lr", "lr"),
    ("online kNN accuracy (monitor)", "epoch", "knn_accuracy", "accuracy"),
    ("view retrieval (monitor, no labels)", "epoch", "view_retrieval", "top-1 retrieval"),
    ("effective rank of the embeddings", "epoch", "embedding_rank", "effective rank"),
    ("embedding spread (~1 spread, 0 collapsed)", "epoch", "embedding_spread", "spread"),
    ("throughput", "step", "images_per_second", "images / s"),
)


def _training(lin: Lineage) -> str:
    records = metrics_of(lin.encoder)
    if not records:
        return html.section("Training curves", html.missing("this encoder keeps no history", "clt pretrain RECIPE"),
                            anchor="training")
    charts = []
    for title, event, key, y_label in TRAINING_CHARTS:
        xs, ys = _series(records, event, key)
        if ys:
            charts.append(html.line_chart([(lin.label, xs, ys)], title, "epoch", y_label, width=420, height=260))
    notes = []
    if not any(key in r for r in records for key in ("knn_accuracy", "view_retrieval")):
        notes.append(html.paragraph("No online kNN curve: the recipe had no monitor. Add `pretrain: monitor: "
                                    "{every: 1}` to the recipe to score the encoder after every epoch."))
    source = ("from metrics.jsonl" if METRICS_FILE in lin.encoder.manifest.get("files", {})
              else "from history.json (made before metrics.jsonl)")
    return html.section("Training curves", html.paragraph(f"{len(records)} records {source}."), html.row(*charts),
                        *notes, anchor="training")


def _views(lin: Lineage, data, pictures: Pictures) -> str:
    from clt.registry import OBJECTIVES
    from clt.stages.pretrain import augmenter
    from clt.stages.probe import stored_recipe

    if data is None:
        return html.section("Augmented views", html.missing("no dataset to draw views of", "clt download NAME"))
    try:
        recipe = stored_recipe(lin.encoder, [])
        views = OBJECTIVES[recipe.objective.name].views
        augment = augmenter(recipe, data, views)
    except (CltError, KeyError) as err:
        return html.section("Augmented views", html.paragraph(f"The stored recipe cannot be read again: {err}"))
    if augment is None:
        return html.section("Augmented views", html.paragraph(
            f"{recipe.objective.name} trains on the images as they are: its recipe has no augmentation."),
            anchor="views")
    draw = lambda path: views_grid(data, augment, recipe.seed, path, count=6, n_views=5)  # noqa: E731
    return html.section("Augmented views", pictures.draw(draw,
                                                          "augmented views", f"originals, then views as "
                                                          f"{recipe.objective.name} trains on them "
                                                          f"({views} per image per step)", 640), anchor="views")


def _evaluations(lin: Lineage, pictures: Pictures) -> str:
    encoder = lin.encoder
    parts = []
    if not lin.probes:
        parts.append(html.missing("no probe of this encoder yet", f"clt probe {encoder.short}"))
    for probe in lin.probes[:3]:
        parts.append(_probe_part(lin, probe, pictures))
    for evaluation in lin.evaluations.get(encoder.id, [])[:2]:
        parts.append(html.heading(f"evaluation {evaluation.short} of the encoder itself"))
        parts.append(_evaluation_part(evaluation, pictures))
    if len(lin.probes) > 3:
        parts.append(html.paragraph(f"{len(lin.probes) - 3} older probes are not shown (see `clt ls probe`)."))
    return html.section("Probes and evaluations", *parts, anchor="evaluation")


def _probe_part(lin: Lineage, probe: Artifact, pictures: Pictures) -> str:
    protocol = probe.manifest.get("protocol", {})
    head = probe.manifest.get("head", {})
    pairs = [("probe id", probe.id), ("protocol", protocol.get("protocol")), ("head", head.get("kind")),
             ("probe epochs", protocol.get("epochs")), ("labels used", probe.metrics.get("labels_used")),
             ("train accuracy", _pct(probe.metrics.get("train_accuracy")))]
    records = metrics_of(probe)
    chart = ""
    if records:
        xs, ys = _series(records, "epoch", "loss")
        chart = html.line_chart([(f"probe {probe.short}", xs, ys)], "probe loss per epoch", "epoch", "loss",
                                width=380, height=240)
    parts = [html.heading(f"probe {probe.short}"), html.row(html.key_values(pairs), chart)]
    evaluations = lin.evaluations.get(probe.id, [])
    if not evaluations:
        parts.append(html.missing("no evaluation of this probe yet", f"clt evaluate {probe.short} --confusion"))
    for evaluation in evaluations[:2]:
        parts.append(_evaluation_part(evaluation, pictures))
    return "".join(parts)


def _evaluation_part(evaluation: Artifact, pictures: Pictures) -> str:
    results = evaluation.manifest.get("results", {})
    shown = [(name.replace("_", " "), _pct(results[name])) for name in EVALUATION_METRICS if name in results]
    protocol = evaluation.manifest.get("protocol", {})
    shown += [("test images", protocol.get("test_images")), ("evaluation id", evaluation.id)]
    parts = [html.key_values(shown)]
    classes = evaluation.manifest.get("classes") or []
    confusion = results.get("confusion")
    per_class = results.get("per_class_accuracy") or {}
    side = []
    if per_class:
        counts = [sum(r) for r in confusion] if confusion else [None] * len(per_class)
        side.append(html.table(["class", "accuracy %", "test images"],
                               [(name, round(100 * acc, 2), n) for (name, acc), n in zip(per_class.items(), counts)]))
    if "confusion.png" in evaluation.manifest.get("files", {}):
        side.append(_stored_png(evaluation, "confusion.png", "confusion heatmap", "confusion heatmap", 520))
    elif confusion and classes:
        import numpy as np

        from clt import plots

        side.append(pictures.draw(lambda path: plots.confusion_heatmap(np.array(confusion), classes, path,
                                                                       f"evaluation {evaluation.short}"),
                                  "confusion heatmap", "confusion heatmap (drawn from the stored matrix)", 520))
    return f"<h3>evaluation {html.esc(evaluation.short)}</h3>" + html.row(*parts, *side)


def _tsne(lin: Lineage) -> str:
    shown = []
    for figure in lin.tsne[:2]:
        for name in ("tsne.png", "pca.png"):
            if name in figure.manifest.get("files", {}):
                shown.append(_stored_png(figure, name, name[:-4], f"{name[:-4]} of embeddings "
                                         f"{figure.inputs.get('embeddings', '')[:SHORT]} ({figure.short})", 560))
    if not shown:
        return html.section("t-SNE", html.missing("no t-SNE of this encoder's embeddings yet",
                                                  f"clt tsne $(clt embed {lin.encoder.short})"), anchor="tsne")
    return html.section("t-SNE", html.row(*shown), anchor="tsne")


def _neighbours(ctx: Context, lin: Lineage, data, pictures: Pictures) -> str:
    if data is None or not len(data.train):
        return html.section("Nearest neighbours", html.missing("no dataset to search", "clt download NAME"))
    return html.section("Nearest neighbours", html.paragraph(
        f"{NEIGHBOUR_QUERIES} test images (left) and their {NEIGHBOURS} nearest train images by cosine similarity "
        "of the encoder's embeddings, captioned with class and similarity."),
        pictures.draw(lambda path: _neighbour_grid(ctx, lin.encoder, data, path), "nearest neighbours", width=480),
        anchor="neighbours")


def _neighbour_grid(ctx: Context, encoder_art: Artifact, data, path: Path) -> None:
    import torch

    from clt import plots
    from clt.data.memory import Split
    from clt.devices import pick_device
    from clt.features import extract_features
    from clt.stages.weights import load_encoder

    device = pick_device(ctx.device)
    generator = torch.Generator().manual_seed(0)
    queries_from = data.test if len(data.test) else data.train
    bank_rows = torch.randperm(len(data.train), generator=generator)[:NEIGHBOUR_BANK]
    query_rows = _one_per_class(queries_from.labels, generator)
    bank = Split(data.train.images[bank_rows], data.train.labels[bank_rows])
    queries = Split(queries_from.images[query_rows], queries_from.labels[query_rows])
    encoder = load_encoder(encoder_art, device)
    placed = data.to(device)
    unit = lambda split: torch.nn.functional.normalize(  # noqa: E731
        extract_features(encoder, placed, Split(split.images.to(device), split.labels.to(device)), device), dim=1)
    similarity = unit(queries) @ unit(bank).T
    if queries_from is data.train:  # a query is not its own neighbour
        similarity[bank_rows.to(device)[None, :] == query_rows.to(device)[:, None]] = -2
    best = similarity.topk(min(NEIGHBOURS, len(bank)), dim=1)
    name = lambda label: data.classes[int(label)] if data.labeled and int(label) >= 0 else ""  # noqa: E731
    rows, captions = [], []
    for q in range(len(query_rows)):
        picked = best.indices[q].cpu()
        rows.append(torch.cat([queries.images[q:q + 1], bank.images[picked]]).float().div(255).numpy())
        captions.append([f"query {name(queries.labels[q])}"] +
                        [f"{name(bank.labels[i])} {float(s):.2f}" for i, s in zip(picked, best.values[q].cpu())])
    plots.image_grid(rows, path, [], cell_titles=captions)


def _one_per_class(labels, generator):
    """NEIGHBOUR_QUERIES rows: one of each class in turn where there are labels, else seeded ones."""
    import torch

    order = torch.randperm(len(labels), generator=generator)
    chosen, seen = [], set()
    for row in order.tolist():
        label = int(labels[row])
        if label not in seen or len(seen) >= NEIGHBOUR_QUERIES:
            chosen.append(row)
            seen.add(label)
        if len(chosen) == NEIGHBOUR_QUERIES:
            break
    return torch.tensor(chosen, dtype=torch.long)


def _timings(lineages: list[Lineage]) -> str:
    rows = []
    for lin in lineages:
        made = [lin.encoder, *lin.probes, *[e for found in lin.evaluations.values() for e in found], *lin.tsne]
        for artifact in made:
            rows.append((artifact.kind, artifact.name, artifact.short, _date(artifact),
                         float(artifact.manifest.get("wall_time_s", 0.0)), artifact.manifest.get("device", "-"),
                         artifact.manifest.get("versions", {}).get("clt", "-")))
    encoders = [(lin.label, lin.encoder.metrics.get("train_seconds"), lin.encoder.metrics.get("images_per_second"),
                 lin.encoder.metrics.get("train_images")) for lin in lineages]
    versions = lineages[0].encoder.manifest.get("versions", {})
    return html.section(
        "Timings, machine and versions",
        html.table(["encoder", "training seconds", "images / s", "train images"], encoders),
        html.table(["kind", "name", "id", "created", "build seconds", "device", "clt"], rows),
        html.paragraph("Libraries that trained the first encoder: " + ", ".join(f"{k} {v}" for k, v in versions.items())
                       + f". Report written by clt {__version__}."), anchor="timings")


# ---------------------------------------------------------------------------- several encoders


def _comparison(ctx: Context, lineages: list[Lineage], pictures: Pictures) -> str:
    subtitle = [f"{len(lineages)} encoders: " + ", ".join(lin.label for lin in lineages),
                f"report by clt {__version__}"]
    sections = [_runs_table(lineages), _compare_table(ctx, lineages), _recipe_differences(lineages),
                _overlaid_curves(lineages), _side_by_side(lineages, pictures), _timings(lineages)]
    return html.page(f"clt report: {len(lineages)} encoders compared", subtitle, sections)


def _runs_table(lineages: list[Lineage]) -> str:
    rows = []
    for lin in lineages:
        metrics, latest = lin.encoder.metrics, lin.latest_evaluation()
        scored = latest.metrics if latest is not None else {}
        rows.append((lin.encoder.name, lin.encoder.short, lin.encoder.manifest.get("objective", "-"),
                     lin.dataset.name if lin.dataset else "-", metrics.get("epochs"), metrics.get("final_loss"),
                     *(round(100 * scored[m], 2) if m in scored else None for m in EVALUATION_METRICS[:3]),
                     metrics.get("train_seconds")))
    return html.section("Runs", html.table(["name", "id", "objective", "dataset", "epochs", "final loss",
                                            "accuracy %", "kNN accuracy %", "pair accuracy %", "training s"], rows),
                        html.paragraph("Accuracies are from each encoder's latest evaluation (of its probes first)."),
                        anchor="runs")


def _compare_table(ctx: Context, lineages: list[Lineage]) -> str:
    """The `clt compare` table of the encoders' latest evaluations."""
    from clt.stages.compare import summarize

    latest = [lin.latest_evaluation() for lin in lineages]
    if any(e is None for e in latest):
        lacking = [lin.encoder.short for lin, e in zip(lineages, latest) if e is None]
        return html.section("clt compare", html.missing(f"no evaluation of {', '.join(lacking)}",
                                                        f"clt evaluate $(clt probe {lacking[0]}) --confusion"))
    rows = summarize(ctx.store, [e.id for e in latest])
    cell = lambda value: (f"{100 * value['mean']:.2f} ± {100 * value['std']:.2f}" if isinstance(value, dict)  # noqa: E731
                          else "-")
    table = html.table(["name", "objective", "protocol", "labels", "accuracy %", "kNN accuracy %", "pair accuracy %",
                        "n", "seeds", "ids", "differs"],
                       [(r["name"], r["objective"], r["protocol"], r["labels"], cell(r.get("accuracy")),
                         cell(r.get("knn_accuracy")), cell(r.get("pair_accuracy")), r["n"],
                         ", ".join(map(str, r["seeds"])), ", ".join(r["ids"]), r["differs"]) for r in rows])
    return html.section("clt compare", table, anchor="compare")


def _flat(value: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        flat = {}
        for key, inner in value.items():
            flat.update(_flat(inner, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): json.dumps(value)}


def _recipe_differences(lineages: list[Lineage]) -> str:
    flats = [_flat(lin.encoder.recipe or {}) for lin in lineages]
    names = sorted({n for f in flats for n in f})
    differing = [n for n in names if len({f.get(n, "-") for f in flats}) > 1]
    if not differing:
        return html.section("Recipe differences", html.paragraph("The recipes are the same."))
    return html.section("Recipe differences", html.table(["setting", *[lin.label for lin in lineages]],
                                                         [(n, *[f.get(n, "-") for f in flats]) for n in differing]),
                        anchor="recipes")


def _overlaid_curves(lineages: list[Lineage]) -> str:
    records = {lin.label: metrics_of(lin.encoder) for lin in lineages}
    charts = []
    for title, event, key, y_label in TRAINING_CHARTS:
        series = [(label, *_series(found, event, key)) for label, found in records.items()]
        if any(ys for _, _, ys in series):
            ident = f"compare-{event}-{key}".replace("_", "-")
            charts.append(html.line_chart(series, title, "epoch", y_label, width=520, height=300, chart_id=ident))
    return html.section("Training curves, overlaid", html.paragraph("Each chart puts every run on the same axes."),
                        html.row(*charts), anchor="curves")


def _side_by_side(lineages: list[Lineage], pictures: Pictures) -> str:
    columns = []
    for lin in lineages:
        latest = lin.latest_evaluation()
        parts = [html.heading(lin.label)]
        if latest is not None:
            parts.append(_evaluation_part(latest, pictures))
        else:
            parts.append(html.missing("no evaluation", f"clt evaluate $(clt probe {lin.encoder.short}) --confusion"))
        parts.append(_tsne(lin).replace("<section", "<div").replace("</section>", "</div>"))
        columns.append("".join(parts))
    return html.section("Side by side", html.columns(columns), anchor="side-by-side")

