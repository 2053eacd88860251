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
    return [[str(r["name"]), str(r["objective"]), r["protocol"], str(r["labels"]), str(r["n"]),
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
    tables = [summary]
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

    table = Table(title=f"artifacts in {root}")
    for column in ("id", "kind", "name", "created", "metrics", "files"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["short"], row["kind"], row["name"], row["created"], row["metrics"], row["files"])
    return table


def predictions_table(rows: list[dict[str, Any]], limit: int = 30):
    """The first `limit` predictions as a table (all of them go to stdout)."""
    from rich.table import Table

    table = Table(title=f"predictions for {len(rows)} images" + (f" (first {limit})" if len(rows) > limit else ""))
    for column in ("image", "class", "probability", "next"):
        table.add_column(column, justify="right" if column == "probability" else "left", overflow="fold")
    for row in rows[:limit]:
        best, rest = row["top"][0], row["top"][1:]
        table.add_row(row["path"], best["class"], f"{best['prob']:.2%}",
                      ", ".join(f"{c['class']} {c['prob']:.0%}" for c in rest))
    return table
