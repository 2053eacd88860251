"""Benchmark records as the bench scripts write them: `write_record` heads the data with the run's
date, commit, machine and a command free of this machine's paths, keeps a replaced record's title,
protocol and figure pointers, and renames the file into place whole. Nothing here trains."""

from __future__ import annotations

import ast
import datetime
import importlib
import json
import re
from pathlib import Path
from types import ModuleType

import pytest
from conftest import ROOT

BENCH = ROOT / "bench"
# every bench script that writes a record; each goes through write_record
WRITERS = ("curve.py", "diagnose.py", "equal_budget.py", "folder_photos.py", "images.py", "index.py",
           "logging_overhead.py", "peer_lightly.py", "published.py", "recipes.py", "speed.py")
ACCURACY = {"accuracy %": {"path": "rows.0.accuracy", "format": "pct", "digits": 2}}


@pytest.fixture
def records(monkeypatch) -> ModuleType:
    """bench/records.py, imported as the scripts import it (it reads the machine through bench/images.py)."""
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("records")


def write(records: ModuleType, path: Path, data: dict, **header) -> dict:
    fields = {"study": "speed", "title": "a run", "command": "python bench/speed.py pair",
              "protocol": "one step", **header}
    return records.write_record(path, data, **fields)


def test_a_first_record_names_its_date_commit_machine_and_figures(records, tmp_path: Path):
    from images import cpu_model

    written = write(records, tmp_path / "run.json", {"rows": [{"accuracy": 0.5}], "seconds": 2.0}, figures=ACCURACY)
    header = json.loads((tmp_path / "run.json").read_text())["record"]
    assert header == written["record"]
    assert all(header.get(key) for key in records.REQUIRED), header
    assert header["date"] == datetime.date.today().isoformat()
    assert re.fullmatch(r"[0-9a-f]{7,40}", header["commit"]) and header["commit_is"] == "run"
    assert header["machine"] == cpu_model()
    assert header["figures"] == ACCURACY and header["title"] == "a run" and header["protocol"] == "one step"
    [(_, loaded)] = records.load_records(tmp_path)  # a record docs/results.md takes as it is
    assert loaded["figures"] == [("accuracy %", "50.00")]


def test_a_rewrite_keeps_the_old_title_protocol_and_figure_pointers(records, tmp_path: Path):
    path = tmp_path / "run.json"
    old = {"study": "speed", "title": "curated title", "protocol": "curated protocol", "date": "2020-01-01",
           "commit": "abcdef0", "commit_is": "added", "machine": "old box", "command": "old",
           "figures": {"curated %": {"path": "rows.0.accuracy", "format": "pct", "digits": 1},
                       "by hand": "2 of 3"}}
    path.write_text(json.dumps({"record": old, "rows": [{"accuracy": 0.25}]}))
    header = write(records, path, {"rows": [{"accuracy": 0.75}], "seconds": 9.0}, title="new", protocol="new",
                   figures={"wall time s": {"path": "seconds", "format": "num"}})["record"]
    assert header["title"] == "curated title" and header["protocol"] == "curated protocol"
    # the pointer carries over; the hand-written number was the old run's; the script's own figure joins them
    assert header["figures"] == {"curated %": old["figures"]["curated %"],
                                 "wall time s": {"path": "seconds", "format": "num"}}
    assert (header["date"], header["commit_is"]) == (datetime.date.today().isoformat(), "run")
    assert header["commit"] != "abcdef0" and header["machine"] != "old box"
    [(_, loaded)] = records.load_records(tmp_path)  # the rewritten record still loads, with this run's numbers
    assert dict(loaded["figures"])["wall time s"] == "9.0"


def test_an_old_pointer_gives_way_where_the_new_layout_moved_its_rows(records, tmp_path: Path):
    """A re-run of fewer rows: the old label of rows.0 no longer names that row, and rows.1 is gone."""
    path = tmp_path / "recipes.json"
    old = {"study": "recipes", "title": "t", "protocol": "p", "date": "2020-01-01", "commit": "abcdef0",
           "machine": "m", "command": "c",
           "figures": {"a %": {"path": "rows.0.accuracy", "format": "pct"},
                       "b %": {"path": "rows.1.accuracy", "format": "pct"}}}
    path.write_text(json.dumps({"record": old, "rows": [{"accuracy": 0.1}, {"accuracy": 0.2}]}))
    header = write(records, path, {"rows": [{"accuracy": 0.3}]}, study="recipes",
                   figures={"b %": {"path": "rows.0.accuracy", "format": "pct"}})["record"]
    assert header["figures"] == {"b %": {"path": "rows.0.accuracy", "format": "pct"}}


def test_a_command_names_the_store_and_output_folders_instead_of_this_machines_paths(records, tmp_path: Path):
    store, out = tmp_path / "store", tmp_path / "out"
    argv = ["enc", "--artifacts", str(store), f"--results={out}", "--set", f"data.path={store}/photos",
            "--recipe", str(ROOT / "recipes" / "digits_pair.yaml"), "--shared", "/elsewhere/datasets"]
    command = records.command_line("curve.py", argv, STORE=store, OUT=out)
    assert command == ("python bench/curve.py enc --artifacts STORE --results=OUT --set data.path=STORE/photos "
                       "--recipe recipes/digits_pair.yaml --shared datasets")
    # a relative store is named too, and the option that names it is left alone
    assert records.command_line("peer_lightly.py", ["--artifacts", "artifacts"], STORE="artifacts") == \
        "python bench/peer_lightly.py --artifacts STORE"
    header = write(records, tmp_path / "run.json", {"seconds": 1.0}, command=command)["record"]
    assert "STORE" in header["command"] and str(tmp_path) not in header["command"]
    assert str(ROOT.parent) not in header["command"]


def test_a_record_is_replaced_whole_or_not_at_all(records, tmp_path: Path):
    path = tmp_path / "run.json"
    write(records, path, {"seconds": 1.0})
    before = path.read_bytes()
    with pytest.raises(TypeError, match="not JSON serialisable"):
        write(records, path, {"seconds": 2.0, "model": object()})  # fails while encoding, after hours of work
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temporary file left beside it


def test_numbers_of_numpy_are_written_as_plain_numbers(records, tmp_path: Path):
    np = pytest.importorskip("numpy")
    write(records, tmp_path / "run.json", {"seconds": np.float32(1.5), "counts": np.arange(3)})
    data = json.loads((tmp_path / "run.json").read_text())
    assert (data["seconds"], data["counts"]) == (1.5, [0, 1, 2])


def json_written_by_hand(tree: ast.AST) -> list[int]:
    """Lines that write JSON without write_record: `x.write_text(json.dumps(...))` and `json.dump(...)`."""
    def is_json(node: ast.AST, name: str) -> bool:
        return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name
                and getattr(node.func.value, "id", "") == "json")

    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call) and (
        is_json(node, "dump") or (isinstance(node.func, ast.Attribute) and node.func.attr == "write_text"
                                  and any(is_json(part, "dumps") for arg in node.args for part in ast.walk(arg))))]


def calls_write_record(tree: ast.AST) -> bool:
    """records.write_record imported and called (a function of the script's own by that name does not count)."""
    imported = any(isinstance(node, ast.ImportFrom) and node.module == "records"
                   and any(alias.name == "write_record" for alias in node.names) for node in ast.walk(tree))
    return imported and any(isinstance(node, ast.Call) and getattr(node.func, "id", "") == "write_record"
                            for node in ast.walk(tree))


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py") if p.name != "records.py"))
def test_no_bench_script_writes_json_by_hand(script: str):
    tree = ast.parse((BENCH / script).read_text())
    assert not json_written_by_hand(tree), (
        f"bench/{script} writes JSON itself at lines {json_written_by_hand(tree)}: write records with "
        "records.write_record, which heads them and renames them into place whole")
    if script in WRITERS:
        assert calls_write_record(tree), f"bench/{script} writes a record without records.write_record"


def test_a_partial_file_left_by_a_killed_write_is_not_read_as_a_record(records, tmp_path: Path):
    write(records, tmp_path / "run.json", {"seconds": 1.0})
    (tmp_path / ".run.json.partial.json").write_text('{"seconds": 2')  # cut off by the kill
    assert [name for name, _ in records.load_records(tmp_path)] == [(tmp_path / "run.json").as_posix()]
