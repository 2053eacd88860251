"""An artifact's address covers the code that computes it (clt/fingerprint.py): changed code never
answers from an old result, comments and docstrings do not count, and other code's artifacts are
marked in `clt ls` and `clt show` and removed only by `clt gc --stale`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import DIGITS, FAST_PRETRAIN, Trained, cli

from clt.fingerprint import PACKAGE_ROOT, forget, module_closure, stage_fingerprint


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """A copy of clt's source to edit (the fingerprint reads source files, never imports them)."""
    root = tmp_path / "clt"
    shutil.copytree(PACKAGE_ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))
    forget()  # one process computes a fingerprint once; this one edits the source in between


def test_a_change_to_an_objectives_code_changes_the_pretrain_address(package_copy: Path):
    before = stage_fingerprint("pretrain", package_copy)
    _edit(package_copy / "objectives" / "byol.py", "(2 - 2 * F.cosine_similarity", "(2.0 - 2 * F.cosine_similarity")
    assert stage_fingerprint("pretrain", package_copy) != before


def test_comments_docstrings_and_formatting_do_not_change_an_address(package_copy: Path):
    before = stage_fingerprint("pretrain", package_copy)
    path = package_copy / "objectives" / "byol.py"
    _edit(path, '"""Symmetrised BYOL', '"""Symmetrised BYOL (reworded docstring)')
    _edit(path, "    p1, p2 = out.halves(\"p\")", "    # a new comment\n    p1, p2 = out.halves( \"p\" )")
    _edit(package_copy / "train.py", '"""The pretraining loop', '"""The pretraining loop, described anew.')
    assert stage_fingerprint("pretrain", package_copy) == before


def test_only_the_code_a_stage_imports_counts(package_copy: Path):
    """A change to the search index moves index addresses, not encoders; data is addressed by content."""
    assert "clt.stages.search" not in module_closure("clt.stages.pretrain", package_copy)
    # reached only through the registry's importlib string, which the scan must follow
    assert "clt.objectives.vicreg" in module_closure("clt.stages.pretrain", package_copy)
    pretrain, index = stage_fingerprint("pretrain", package_copy), stage_fingerprint("index", package_copy)
    _edit(package_copy / "stages" / "search.py", "def ", "def _unused_helper():\n    return 1\n\n\ndef ")
    assert stage_fingerprint("pretrain", package_copy) == pretrain
    assert stage_fingerprint("index", package_copy) != index
    assert stage_fingerprint("dataset", package_copy) is None


def test_new_code_retrains_instead_of_answering_from_the_store_and_gc_stale_removes_the_old(
        store_copy: Trained, monkeypatch):
    import clt.store

    root = store_copy.root
    real = clt.store.code_of
    monkeypatch.setattr(clt.store, "code_of", lambda spec: None if real(spec) is None else "0" * 64)
    fresh = cli(root, "pretrain", DIGITS, *FAST_PRETRAIN).ok()
    assert fresh.id != store_copy.encoder and "cached" not in fresh.stderr.lower()
    stale = {row["id"] for row in clt.list_artifacts(store=root) if row["stale"]}
    assert {store_copy.encoder, store_copy.probe} <= stale and fresh.id not in stale
    assert store_copy.dataset not in stale  # the data it holds did not change
    assert clt.show(store_copy.encoder, store=root)["stale"] and not clt.show(fresh.id, store=root)["stale"]
    assert "older code" in cli(root, "ls").ok().stdout
    assert cli(root, "gc").ok() and clt.open_store(root).exists(store_copy.encoder)  # never implicit
    removed = cli(root, "gc", "--stale").ok().stderr
    assert store_copy.encoder[2:] in removed and store_copy.probe[2:] in removed
    store = clt.open_store(root)
    assert not store.exists(store_copy.encoder) and store.exists(fresh.id) and store.exists(store_copy.dataset)
    assert store_copy.encoder not in store.refs().values()
