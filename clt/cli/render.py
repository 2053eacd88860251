"""Everything the command line draws: rich tables on stderr, and Markdown tables for READMEs.

The library returns data (manifests, rows); only this module turns it into tables, so the
CLI and the bench scripts draw the same tables from the same rows.
"""

from __future__ import annotations

from typing import Any

COMPARE_HEADER = ["name", "objective", "protocol", "labels", "seeds", "accuracy %", "kNN %", "pair %", "wall s"]
# the evaluation's headline metrics in the order shown; pair accuracy is the balanced protocol
EVALUATION_ROWS = {"accuracy": "accuracy", "knn_accuracy": "kNN accuracy",
                   "pair_accuracy": "pair accuracy (balanced test pairs, half same-class)",
                   "pair_accuracy_random_partner": "pair accuracy (one random partner per test image)"}


def format_mean_std(cell: dict[str, Any] | None) -> str:
    """A compare cell in percent: '97.10', or '97.10 ± 0.20' over several seeds.

    Example: format_mean_std({"mean": 0.971, "std": 0.002, "values": [0.969, 0.973]}) == "97.10 ± 0.20"
    """
    if not cell:
        return "-"
    if len(cell["values"]) == 1:
        return f"{100 * cell['mean']:.2f}"
    return f"{100 * cell['mean']:.2f} ± {100 * cell['std']:.2f}"


def compare_lines(rows: list[dict[str, Any]]) -> list[list[str]]:
    # rows that differ in more than the seed but would read alike name what tells them apart
    return [[str(r["name"]) + (f" ({r['differs']})" if r.get("differs") else ""), str(r["objective"]),
             r["protocol"], str(r["labels"]), str(r["n"]),
             format_mean_std(r.get("accuracy")), format_mean_std(r.get("knn_accuracy")),
             format_mean_std(r.get("pair_accuracy")), f"{r['wall_time_s']:.0f}"] for r in rows]


def compare_markdown(rows: list[dict[str, Any]]) -> str:
    """The comparison as a Markdown table (what `clt compare --markdown` prints and bench/ writes).

    Example: print(compare_markdown(clt.compare(evaluation_ids)))
    """
    lines = ["| " + " | ".join(COMPARE_HEADER) + " |", "|" + "---|" * len(COMPARE_HEADER)]
    lines += ["| " + " | ".join(line) + " |" for line in compare_lines(rows)]
    return "\n".join(lines)


def compare_table(rows: list[dict[str, Any]]):
    from rich.table import Table

    table = Table(title="comparison")
    for column in COMPARE_HEADER:
        table.add_column(column, justify="right" if column.endswith(("%", "s")) else "left")
    for line in compare_lines(rows):
        table.add_row(*line)
    return table


def evaluation_tables(manifest: dict[str, Any], short: str) -> list[Any]:
    """The summary, confusion and pair-verification tables of an evaluation artifact's manifest."""
    from rich.table import Table

    results, classes = manifest["results"], manifest["classes"]
    summary = Table(title=f"evaluation of {manifest.get('name') or ''} ({short})")
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    for key, label in EVALUATION_ROWS.items():
        if key in results:
            summary.add_row(label, f"{results[key]:.4%}")
    tables = [summary] if summary.row_count else []  # none without labels: the label-free table follows
    if "per_class_accuracy" in results:
        tables.append(_confusion_table(results, classes))
    if "pair_confusion" in results:
        (tn, fp), (fn, tp) = results["pair_confusion"]
        table = Table(title=f"pair verification on {results['pairs']} balanced test pairs (half same-class)")
        table.add_column("")
        table.add_column("said different", justify="right")
        table.add_column("said same", justify="right")
        table.add_row("different", str(tn), str(fp))
        table.add_row("same", str(fn), str(tp))
        tables.append(table)
    return tables + beside_baselines_tables(results, manifest.get("protocol", {}))


def beside_baselines_tables(results: dict[str, Any], protocol: dict[str, Any]) -> list[Any]:
    """The label-free measures and the tags' kNN accuracy: encoder, untrained and pixels side by side."""
    from rich.table import Table

    tables = []
    if "label_free" in results:
        scores, about = results["label_free"], protocol.get("label_free", {})
        table = Table(title=f"without labels: {about.get('images', '?')} held-out images ({about.get('split', '')})",
                      caption="view retrieval: share of augmented views whose nearest original is their own "
                              f"(chance {100 * about.get('chance', 0):.2f} %); alignment and uniformity: lower is "
                              "better")
        for column in ("measure", "encoder", "untrained", "pixels"):
            table.add_column(column, justify="left" if column == "measure" else "right")
        for key, shown in (("view_retrieval", "view retrieval %"), ("effective_rank", "effective rank"),
                           ("alignment", "alignment"), ("uniformity", "uniformity")):
            scale = 100 if key == "view_retrieval" else 1
            table.add_row(shown, *[f"{scale * scores[who][key]:.2f}" for who in ("encoder", "untrained", "pixels")])
        tables.append(table)
    if "tags" in results:
        about = protocol.get("tags", {})
        table = Table(title=f"your tags: {about.get('folds')}-fold cross-validated {about.get('k')}-NN accuracy on "
                            f"{about.get('images')} images ({len(about.get('tags', {}))} tags)",
                      caption=about.get("note"))
        for column in ("encoder %", "untrained %", "pixels %", "majority tag %"):
            table.add_column(column, justify="right")
        table.add_row(*[f"{100 * results['tags'][who]:.2f}" for who in ("encoder", "untrained", "pixels")],
                      f"{100 * about.get('chance', 0):.2f}")
        tables.append(table)
    return tables


def _confusion_table(results: dict[str, Any], classes: list[str]):
    from rich.table import Table

    table = Table(title="confusion (rows: true, columns: predicted)")
    table.add_column("class")
    for name in classes:
        table.add_column(name[:8], justify="right")
    table.add_column("accuracy", justify="right")
    for r, name in enumerate(classes):
        acc = results["per_class_accuracy"][name]
        table.add_row(name, *[str(v) for v in results["confusion"][r]], "-" if acc != acc else f"{acc:.2%}")
    return table


def artifacts_table(rows: list[dict[str, Any]], root: str):
    from rich.table import Table

    stale = sum(bool(row.get("stale")) for row in rows)
    table = Table(title=f"artifacts in {root}",
                  caption=f"{stale} made by older clt code (no stage uses them again): clt gc --stale removes them"
                  if stale else None)
    for column in ("id", "kind", "name", "created", "metrics", "files"):
        table.add_column(column, overflow="fold")
    for row in rows:
        kind = f"{row['kind']} (older code)" if row.get("stale") else row["kind"]
        table.add_row(row["short"], kind, row["name"], row["created"], row["metrics"], row["files"])
    return table


def _voter_name(voter: dict[str, Any]) -> str:
    """A training image by its file name, or its train row number where the dataset has no names."""
    from clt.rows import tsv_field

    return tsv_field(voter["path"]) if voter["path"] is not None else f"train row {voter['row']}"


def predictions_table(rows: list[dict[str, Any]], limit: int = 30):
    """The first `limit` predictions as a table (all of them go to stdout)."""
    from rich.table import Table

    from clt.rows import tsv_field

    table = Table(title=f"predictions for {len(rows)} images" + (f" (first {limit})" if len(rows) > limit else ""))
    voters = any("neighbours" in row for row in rows)  # predict --knn: the nearest voter, by file name
    for column in ("image", "class", "probability", "next", *(["nearest"] if voters else [])):
        table.add_column(column, justify="right" if column == "probability" else "left", overflow="fold")
    for row in rows[:limit]:
        best, rest = row["top"][0], row["top"][1:]
        nearest = [_voter_name(row["neighbours"][0])] if row.get("neighbours") else [""] if voters else []
        table.add_row(tsv_field(row["path"]), tsv_field(best["class"]), f"{best['prob']:.2%}",  # one line each
                      ", ".join(f"{c['class']} {c['prob']:.0%}" for c in rest), *nearest)
    return table
