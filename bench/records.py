"""Write docs/results.md from the benchmark records in bench/results/.

Every JSON file under bench/results/ is a record: whatever its benchmark script wrote, plus a
`record` header that names the run the way a reader can repeat it:

    "record": {
      "study": "published",                   # the section of docs/results.md it belongs to
      "title": "MNIST pair margin loss, 3 seeds, fp32",
      "date": "2026-12-02",                    # when the run was made
      "commit": "f3ab26f",                     # the code it ran (see commit_is)
      "commit_is": "run",                      # "run": the checkout that ran; "added": the commit
                                               # that added the record (the run used its parent)
      "machine": "2-core AMD EPYC, AVX-512 and native bf16",
      "command": "python bench/published.py mnist_pair --set pretrain.precision=fp32",
      "protocol": "10,048 balanced test pairs; linear probe on 10,000 test images",
      "figures": {"pair accuracy %": {"path": "rows.0.pair_accuracy.values", "format": "pct"},
                  "wall time": "102 s"}
    }

A figure is either a literal string (for a record whose data lives nowhere else) or a pointer
into the record's own data (`path`, dots between keys and list indices) with a format: `pct`
(a fraction shown as a percentage), `pct_raw` (already a percentage), `num` (`digits` decimals,
default 1). A pointer to a list joins its items; to {"mean", "std"}, it shows mean ± std.

A benchmark script writes its record with `write_record` (the header from `restamped`, the file
renamed into place whole) and names its command with `command_line`, which writes the store and
output folders as STORE and OUT instead of this machine's paths.

    python bench/records.py           # rewrite docs/results.md
    python bench/records.py --check   # exit 1 if docs/results.md is not what the records give
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PAGE = ROOT / "docs" / "results.md"
REQUIRED = ("study", "title", "date", "commit", "machine", "command", "protocol", "figures")

# The sections of the page, in order: a title and one sentence on what the study measures.
STUDIES = {
    "published": ("Published results", "clt's recipes against figures published for the same protocol."),
    "cifar10_triplet": ("CIFAR-10 triplets on a CPU", "The triplet recipe within an hour of a 2-core CPU."),
    "simclr_cpu": ("SimCLR on CIFAR-10 on a CPU", "SimCLR with the compact ResNet-20 on a 2-core CPU, and "
                   "against lightly's documented loop."),
    "equal_budget": ("Every objective at equal cost", "Each objective's recipe for 30 minutes of pretraining "
                     "on CIFAR-10 (ResNet-20 w16); rows compare only within one machine class."),
    "methods_10ep": ("Ten epochs of each method", "The fixed protocol: 10 epochs of the shipped CPU recipe."),
    "diagnose": ("Diagnoses", "Short runs that change one thing at a time."),
    "recipes": ("Every recipe at a small budget", "Shows that each recipe runs end to end; not results."),
    "speed": ("Speed", "clt's training step against plain PyTorch loops, and search."),
    "images": ("New images and search", "Encoders put to work on image files, and approximate indexes."),
    "folder_photos": ("Unlabeled photos", "A flat folder of CIFAR-10 photos without labels, trained with the "
                      "shipped folder recipe on its time budget, against raw pixels."),
}


WALL_TIME = {"wall time s": {"path": "seconds", "format": "num", "digits": 0}}


def restamped(path: Path, data: dict, *, study: str, title: str, command: str, protocol: str,
              figures: dict | None = None) -> dict:
    """`data` under the record header of the file it replaces (its title, protocol and figures,
    which point into the same layout), re-stamped with today's date, this checkout's commit, this
    machine and `command`; a first record gets a header from the arguments (`figures`, else its
    wall time)."""
    import datetime

    from images import cpu_model

    try:
        old = json.loads(path.read_text()).get("record") or {}
    except (OSError, ValueError):
        old = {}
    header = {"study": study, "title": title, "protocol": protocol,
              "figures": merged_figures(old.get("figures") or {}, figures or {}, data),
              **{k: old[k] for k in ("study", "title", "protocol") if old.get(k)},
              "date": datetime.date.today().isoformat(), "commit": git_commit(), "commit_is": "run",
              "machine": cpu_model(), "command": command}
    return {"record": header, **{k: v for k, v in data.items() if k != "record"}}


def git_commit() -> str:
    """The short id of the checkout that runs the bench script: the commit a record names."""
    import subprocess

    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def merged_figures(old: dict, given: dict, data: dict) -> dict:
    """The old record's pointers that still point into `data`, then the script's own figures.

    Literal figures are numbers of the old run written by hand: only pointers carry over. A pointer
    the script gives for the same label or path wins: it was made for this layout, while an old
    index may now name another row (a re-run of fewer recipes, a variant run again)."""
    # a pointer into nothing would make records.py refuse the whole record after a long run
    fresh = {label: spec for label, spec in given.items()
             if not isinstance(spec, dict) or points_into(data, spec["path"])}
    claimed = {spec["path"] for spec in fresh.values() if isinstance(spec, dict)}
    kept = {label: spec for label, spec in old.items()
            if isinstance(spec, dict) and label not in fresh and spec["path"] not in claimed
            and points_into(data, spec["path"])}
    return {**kept, **fresh} or WALL_TIME


def points_into(data: dict, path: str) -> bool:
    try:
        lookup(data, path)
    except (KeyError, IndexError, ValueError, TypeError):
        return False
    return True


def write_record(path: Path, data: dict, *, study: str, title: str, command: str, protocol: str,
                 figures: dict | None = None, default: Callable[[Any], Any] | None = None) -> dict:
    """Write `data` to `path` as a record (see `restamped` for the header) and return it.

    The JSON is encoded first and written under a temporary name beside `path`, then renamed over
    it: a run killed mid-write, or data JSON cannot encode, leaves the old record as it was.
    `default` encodes what json cannot; without it, `plain` does (numpy and torch values, paths).

    Example: write_record(RESULTS / "speed_pair.json", results, study="speed", title="...",
                          command=command_line("speed.py"), protocol="...",
                          figures={"clt images/s": {"path": "pair.clt.images_per_s", "format": "num"}})
    """
    from clt.atomic import written_aside

    path = Path(path)
    record = restamped(path, data, study=study, title=title, command=command, protocol=protocol, figures=figures)
    text = json.dumps(record, indent=1, default=default or plain) + "\n"
    with written_aside(path) as tmp:
        tmp.write_text(text)
    return record


def plain(value: Any) -> Any:
    """What json cannot encode by itself: numpy and torch values become Python numbers or lists."""
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "dtype") and callable(getattr(value, "tolist", None)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def command_line(script: str, argv: Sequence[str] | None = None, **folders: str | Path | None) -> str:
    """`python bench/SCRIPT ARGS` as a reader types it, with no path of this machine in it.

    Each folder argument is named by its placeholder, e.g. `command_line("curve.py", STORE=args.artifacts)`
    writes `--artifacts STORE` (files under it as `STORE/...`); any other absolute path inside the
    checkout is written relative to it, and one outside it by its name alone."""
    named = {name: str(folder).rstrip("/") for name, folder in folders.items() if str(folder or "").rstrip("/")}
    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", f"bench/{script}", *(portable(arg, named) for arg in args)])


def portable(arg: str, named: dict[str, str]) -> str:
    """One argument with its machine path replaced, whole (`/x/store`) or after a `=` (`--out=/x/y`)."""
    for name, folder in named.items():
        if arg == folder or arg.startswith(folder + "/"):
            return name + arg[len(folder):]
    if "=" in arg:
        key, value = arg.split("=", 1)
        return f"{key}={portable(value, named)}"
    if arg.startswith("/"):
        return Path(arg).relative_to(ROOT).as_posix() if Path(arg).is_relative_to(ROOT) else Path(arg).name
    return arg


class RecordError(ValueError):
    """A record that does not name its run, or a figure that points at nothing."""


def load_records(results: Path = RESULTS) -> list[tuple[str, dict]]:
    """(path relative to the repository, header) of every record, sorted by study order, date, path."""
    found = []
    for path in sorted(results.rglob("*.json")):
        if path.name.startswith("."):  # a write killed mid-way leaves its hidden partial file behind
            continue
        data = json.loads(path.read_text())
        header = data.get("record")
        name = (path.relative_to(ROOT) if path.is_relative_to(ROOT) else path).as_posix()
        if not isinstance(header, dict):
            raise RecordError(f"{name} has no `record` header (study, date, commit, machine, command ...)")
        missing = [key for key in REQUIRED if not header.get(key)]
        if missing:
            raise RecordError(f"{name}: the record header lacks {', '.join(missing)}")
        if header["study"] not in STUDIES:
            raise RecordError(f"{name}: unknown study {header['study']!r} (known: {', '.join(STUDIES)})")
        found.append((name, {**header, "figures": render_figures(name, data, header["figures"])}))
    order = list(STUDIES)
    return sorted(found, key=lambda item: (order.index(item[1]["study"]), item[1]["date"], item[0]))


def lookup(data, path: str):
    for key in path.split("."):
        data = data[int(key)] if isinstance(data, list) else data[key]
    return data


def formatted(value, fmt: str, digits: int) -> str:
    if isinstance(value, list):
        return ", ".join(formatted(v, fmt, digits) for v in value)
    if isinstance(value, dict) and "mean" in value:
        return f"{formatted(value['mean'], fmt, digits)} ± {formatted(value['std'], fmt, digits)}"
    if value is None:
        return "–"
    scale = 100.0 if fmt == "pct" else 1.0
    return f"{value * scale:,.{digits}f}"


def render_figures(name: str, data: dict, figures: dict) -> list[tuple[str, str]]:
    out = []
    for label, spec in figures.items():
        if isinstance(spec, str):
            out.append((label, spec))
            continue
        try:
            value = lookup(data, spec["path"])
        except (KeyError, IndexError, ValueError) as error:
            raise RecordError(f"{name}: figure {label!r} points at {spec['path']!r}, which is not there") from error
        fmt = spec.get("format", "num")
        digits = spec.get("digits", 2 if fmt.startswith("pct") else 1)
        out.append((label, formatted(value, fmt, digits)))
    return out


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def row(name: str, header: dict) -> str:
    commit = header["commit"] + (" (record added)" if header.get("commit_is") == "added" else "")
    figures = "; ".join(f"{label}: {value}" for label, value in header["figures"])
    cells = [f"{header['title']} (`{name}`)", header["date"], f"`{commit}`", header["machine"],
             f"`{header['command']}`", header["protocol"], figures]
    return "| " + " | ".join(cell(c) for c in cells) + " |"


def page(records: list[tuple[str, dict]]) -> str:
    lines = ["# Results", "",
             "<!-- Generated by `python bench/records.py` from the records in bench/results/; do not edit. -->",
             "",
             "Every figure here is read from a record in `bench/results/`: a JSON file that names the date, the",
             "commit, the machine, the command and the protocol of its run. A commit marked *record added* is the",
             "one that added the record; the run used the code just before it. The studies' pages tell what",
             "each run shows: [published results](studies/published.md), [SimCLR on a CPU](studies/simclr-cpu.md),",
             "[every objective at equal cost](studies/equal-budget.md), [speed and search](studies/speed.md).",
             ""]
    for study, (title, about) in STUDIES.items():
        rows = [row(name, header) for name, header in records if header["study"] == study]
        if not rows:
            continue
        lines += [f"## {title}", "", about, "",
                  "| record | date | commit | machine | command | protocol | figures |",
                  "|---|---|---|---|---|---|---|", *rows, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/results.md differs from the records")
    args = parser.parse_args(argv)
    text = page(load_records())
    if args.check:
        if PAGE.read_text() != text:
            print("docs/results.md is not what bench/results/ gives: run `python bench/records.py`", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
