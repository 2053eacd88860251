"""Rows and their names stay together: no file name can shift a row of a result.

Names hold every character Python's str.splitlines() breaks a line at, a tab, backslashes and
bytes that are not UTF-8; they go through embed (artifact and --out), index, search and predict,
and every row must come back beside its own name, exactly.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import Trained, cli, clt_proc
from PIL import Image

import clt

# every character str.splitlines() ends a line at (and the CR LF pair)
BREAKS = ["\n", "\r", "\r\n", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
# plus the TSV delimiter, backslashes that look like escapes, and bytes that are not UTF-8
ODD = [*BREAKS, "\t", "\\", "\\n", "\\t\\", os.fsdecode(b"\xff\x85")]


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory, trained: Trained) -> tuple[Path, dict[str, np.ndarray]]:
    """One distinct digit PNG per odd name (and two plain ones around them): name -> its pixels."""
    assert all(len(f"a{c}b".splitlines()) == 2 for c in BREAKS)  # each is a line break to Python
    folder = tmp_path_factory.mktemp("odd_names")
    images = clt.load_dataset("digits", store=trained.root).test.images.numpy()
    _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
    pieces = ["plain", *ODD, "zplain"]
    files = {}
    for k, (piece, at) in enumerate(zip(pieces, sorted(first))):
        path = folder / f"{k:02d}{piece}x.png"
        buffer = io.BytesIO()
        Image.fromarray(images[at][0]).save(buffer, format="PNG")
        path.write_bytes(buffer.getvalue())
        files[str(path)] = images[at]
    return folder, files


def stored_names(folder: Path, stem: str) -> list[str]:
    """Row names as clt stored them: JSON lines (STEM.jsonl), or the old one-per-line STEM.txt."""
    jsonl = folder / f"{stem}.jsonl"
    if jsonl.exists():
        return [json.loads(line) for line in jsonl.read_text(encoding="ascii").split("\n")[:-1]]
    return (folder / f"{stem}.txt").read_text(encoding="utf-8", errors="surrogateescape").splitlines()


def untsv(field: str) -> str:
    """A TSV field as the help text documents it: \\t \\r \\n \\\\, other controls and line breaks as
    \\uXXXX, bytes of a name that are not UTF-8 as \\xNN (back to Python's surrogateescape)."""
    simple = {"t": "\t", "r": "\r", "n": "\n", "\\": "\\"}

    def one(match: re.Match) -> str:
        code = match.group(1)
        if code in simple:
            return simple[code]
        return chr(0xDC00 + int(code[1:], 16)) if code[0] == "x" else chr(int(code[1:], 16))

    escape = r"\\([tnr\\]|x[0-9a-f]{2}|u[0-9a-f]{4})"
    assert re.fullmatch(rf"(?:[^\\]|{escape})*", field), f"a backslash that starts no escape in {field!r}"
    return re.sub(escape, one, field)


def tsv_records(stdout: str, columns: int) -> list[list[str]]:
    """stdout's records, each exactly one line of `columns` unescaped fields."""
    assert stdout.endswith("\n")
    records = [line.split("\t") for line in stdout[:-1].split("\n")]
    assert all(len(r) == columns for r in records), records
    assert len(stdout.splitlines()) == stdout.count("\n")  # no other line break anywhere
    return [[untsv(f) for f in r] for r in records]


def assert_rows_line_up(names: list[str], vectors: np.ndarray, files: dict[str, np.ndarray], encoder) -> None:
    assert names == sorted(files)  # every name, once, exactly, in the order of the rows
    expected = encoder.embed(np.stack([files[n] for n in names]))
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_an_embeddings_artifact_keeps_each_row_beside_its_name(store_copy: Trained, odd_files):
    folder, files = odd_files
    root = store_copy.root
    made = clt.open_store(root).get(cli(root, "embed", store_copy.encoder, "--images", str(folder)).ok().id)
    names = stored_names(made.path, "paths")
    encoder = clt.load_encoder(store_copy.encoder, store=root)
    assert_rows_line_up(names, np.load(made.file("embeddings.npy")), files, encoder)


def test_plain_npy_and_csv_files_keep_each_row_beside_its_name(trained: Trained, odd_files, tmp_path: Path):
    folder, files = odd_files
    encoder = clt.load_encoder(trained.encoder, store=trained.root)
    npy = tmp_path / "vectors.npy"
    cli(trained.root, "embed", trained.encoder, "--images", str(folder), "--out", str(npy)).ok()
    vectors = np.load(npy)
    assert len(vectors) == len(files)
    assert_rows_line_up(stored_names(tmp_path, "vectors.paths"), vectors, files, encoder)
    table = tmp_path / "vectors.csv"
    cli(trained.root, "embed", trained.encoder, "--images", str(folder), "--out", str(table)).ok()
    with open(table, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        header, *rows = list(csv.reader(fh))
    assert header[0] == "path" and len(rows) == len(files)
    assert_rows_line_up([r[0] for r in rows], np.array([r[1:] for r in rows], np.float32), files, encoder)


def test_search_finds_each_odd_name_at_distance_zero_in_tsv_and_json(store_copy: Trained, odd_files, tmp_path: Path):
    folder, files = odd_files
    root = store_copy.root
    embeddings = cli(root, "embed", store_copy.encoder, "--images", str(folder)).ok().id
    index = cli(root, "index", embeddings).ok().id
    tsv = tsv_records(cli(root, "search", index, str(folder), "-k", "1").ok().stdout, 5)
    assert [r[0] for r in tsv] == sorted(files)  # one record per query, in order
    assert all(r[2] == r[0] and r[1] == "1" and float(r[4]) < 1e-5 for r in tsv)  # itself, first
    lines = cli(root, "search", index, str(folder), "-k", "2", "--json").ok().stdout.splitlines()
    found = [json.loads(line) for line in lines]
    assert [f["query"] for f in found] == sorted(files)
    assert all(f["neighbours"][0]["path"] == f["query"] and f["neighbours"][0]["distance"] < 1e-5 for f in found)
    assert all(f["neighbours"][1]["path"] in files and f["neighbours"][1]["path"] != f["query"] for f in found)
    grid = tmp_path / "grid.png"  # the names as titles: escaped too (matplotlib cannot draw every character)
    cli(root, "search", index, str(folder), "-k", "1", "--grid", str(grid)).ok()
    assert grid.read_bytes()[:4] == b"\x89PNG"


def test_names_stored_by_an_older_clt_are_read_only_where_they_line_up(tmp_path: Path):
    from clt.errors import StoreError
    from clt.rows import read_names

    old = tmp_path / "paths.txt"
    old.write_text("a.png\nb.png\n")
    assert read_names(old, 2) == ["a.png", "b.png"]
    old.write_text("a\u2028.png\nb.png\n")  # two rows, three lines: the rows would shift
    with pytest.raises(StoreError, match="3 names for 2 rows"):
        read_names(old, 2)


def test_predict_prints_one_record_per_odd_name_in_tsv_and_json(store_copy: Trained, odd_files):
    folder, files = odd_files
    root = store_copy.root
    expected = clt.predict(store_copy.probe, [folder], top=2, store=root)
    tsv = tsv_records(cli(root, "predict", store_copy.probe, str(folder), "--top", "2").ok().stdout, 5)
    assert [r[0] for r in tsv] == [e["path"] for e in expected] == sorted(files)
    assert [[r[1], r[3]] for r in tsv] == [[c["class"] for c in e["top"]] for e in expected]
    probs = [c["prob"] for e in expected for c in e["top"]]
    assert [float(p) for r in tsv for p in (r[2], r[4])] == pytest.approx(probs, abs=1e-4)
    lines = cli(root, "predict", store_copy.probe, str(folder), "--top", "2", "--json").ok().stdout.splitlines()
    assert [json.loads(line) for line in lines] == expected  # the exact form


def test_a_non_regular_file_named_after_images_is_refused_by_name(trained: Trained, odd_files, tmp_path: Path):
    folder, files = odd_files
    picture = next(iter(files))
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    for item in (str(fifo), "/dev/null", str(tmp_path / "pipe*")):
        for args in (["embed", trained.encoder, "--images", picture, item], ["predict", trained.probe, picture, item]):
            ran = cli(trained.root, *args)
            assert ran.exit_code == 2 and "not a regular file" in ran.stderr, (args, ran.stderr)
            assert (item if "*" not in item else str(fifo)) in ran.stderr


def test_warnings_print_as_one_clean_line(trained: Trained, odd_files, tmp_path: Path):
    _, files = odd_files
    archive = tmp_path / "photos.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(next(iter(files)), arcname="d/ok.png")
        link = tarfile.TarInfo("d/a\nlink.png")  # a name with a line break, in the warning
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    ran = clt_proc(trained.root, "embed", trained.encoder, "--images", str(archive), "--out", str(tmp_path / "v.npy"))
    ran.ok()
    lines = [line for line in ran.stderr.splitlines() if "skipped 1 unsafe" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "a\\nlink.png" in lines[0], ran.stderr
    assert "UserWarning" not in ran.stderr and "warnings.warn" not in ran.stderr, ran.stderr
