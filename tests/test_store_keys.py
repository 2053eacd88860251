"""The store's key and what it promises (issue 29: findings 1, 4, 5 for store files, and 8).

A key that cannot be used (missing, replaced, unreadable) is never content damage: `gc --damaged`
removes only artifacts whose bytes do not match their sha256. A signed store never re-signs by
itself; every read checks that a manifest names its own address; checkpoints are signed; store
files are read with a bound and only when they are regular files.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator
from unittest import mock

import pytest
from conftest import DIGITS, ROOT, cli, flip_byte, python_proc, write_files
from hypothesis import given, settings
from hypothesis import strategies as st

from clt.errors import StoreError
from clt.store import KEY_FILE, MANIFEST, MANIFEST_MAC, MANIFEST_SUM, Store

KEY_STATES = ("present", "missing", "replaced", "unreadable")


def make_store(root: Path, count: int = 3) -> tuple[Store, list[str]]:
    store = Store(root)
    ids = []
    for n in range(count):
        spec = {"stage": "keys-test", "n": n}
        files = {"weights.bin": bytes([n]) * 512, "notes.json": json.dumps({"n": n}).encode()}
        ids.append(store.produce(spec, "thing", write_files(files))[0].id)
    return store, ids


@contextlib.contextmanager
def key_unreadable(root: Path) -> Iterator[None]:
    """As for another user of a shared store whose key is 0600: every open of store.key fails.
    (The tests run as root, for whom chmod 000 would not stop a read.)"""
    key = os.path.abspath(root / KEY_FILE)
    real_os_open, real_open = os.open, builtins.open

    def refuse(path) -> None:
        if isinstance(path, (str, os.PathLike)) and os.path.abspath(os.fspath(path)) == key:
            raise PermissionError(13, "Permission denied", str(path))

    def os_open(path, *args, **kwargs):
        refuse(path)
        return real_os_open(path, *args, **kwargs)

    def any_open(file, *args, **kwargs):
        refuse(file)
        return real_open(file, *args, **kwargs)

    with mock.patch("os.open", os_open), mock.patch("builtins.open", any_open), mock.patch("io.open", any_open):
        yield


def set_key_state(root: Path, state: str) -> contextlib.AbstractContextManager:
    """Put the store's key in `state`; the context is where the state holds (for 'unreadable')."""
    if state == "missing":
        (root / KEY_FILE).unlink()
    elif state == "replaced":
        (root / KEY_FILE).write_text(os.urandom(32).hex() + "\n")
    return key_unreadable(root) if state == "unreadable" else contextlib.nullcontext()


# ---------------------------------------------------------------- 1. a key that cannot be used is not damage


@settings(max_examples=30, deadline=None)
@given(state=st.sampled_from(KEY_STATES), damaged=st.sets(st.integers(0, 3), max_size=4),
       how=st.sampled_from(["flip", "truncate", "delete"]))
def test_gc_damaged_never_removes_an_artifact_whose_files_match(tmp_path_factory, state: str, damaged: set[int],
                                                                how: str):
    root = tmp_path_factory.mktemp("keys") / "store"
    store, ids = make_store(root, 4)
    for n in damaged:
        target = store.object_path(ids[n]) / "weights.bin"
        if how == "flip":
            flip_byte(target)
        elif how == "truncate":
            target.write_bytes(target.read_bytes()[:-3])
        else:
            target.unlink()
    with set_key_state(root, state):
        ran = cli(root, "gc", "--damaged")
        assert ran.exit_code == 0, ran.stderr
        assert "internal error" not in ran.stderr
    survivors = set(Store(root).ids())
    assert survivors == {ids[n] for n in range(4) if n not in damaged}, (state, ran.stderr)


@pytest.mark.parametrize("state", ["missing", "replaced"])
def test_verify_tells_an_uncheckable_signature_from_damage(tmp_path: Path, state: str):
    store, ids = make_store(tmp_path / "store")
    flip_byte(store.object_path(ids[0]) / "weights.bin")
    set_key_state(store.root, state)
    ran = cli(store.root, "verify")
    assert ran.exit_code == 1
    assert "2 ok, 1 damaged" in ran.stderr  # before: "0 ok, 3 damaged"
    assert "signatures not checked" in ran.stderr and KEY_FILE in ran.stderr and "--adopt-key" in ran.stderr
    assert sum(line.startswith(ids[0][:12]) for line in ran.stderr.splitlines()) == 1


def test_a_store_whose_key_is_unreadable_is_listed_read_only(tmp_path: Path):
    store, ids = make_store(tmp_path / "store")
    with key_unreadable(store.root):
        listed = cli(store.root, "ls", "--json")
        verified = cli(store.root, "verify")
        with pytest.raises(StoreError, match="read-only"):
            Store(store.root).produce({"stage": "keys-test", "n": 99}, "thing", write_files({"a": b"a"}))
        assert Store(store.root).get(ids[0]).file("weights.bin").is_file()  # read, checked by sha256
    assert listed.exit_code == 0 and sorted(row["id"] for row in listed.json()) == sorted(ids)
    assert "store key unreadable: read-only, checked by sha256 only" in listed.stderr
    assert verified.exit_code == 0 and "3 ok, 0 damaged" in verified.stderr
    assert "store key unreadable" in verified.stderr


def test_a_replaced_key_refuses_reads_and_writes_by_name(tmp_path: Path):
    store, ids = make_store(tmp_path / "store")
    set_key_state(store.root, "replaced")
    with pytest.raises(StoreError, match="not the key that signed"):
        Store(store.root).get(ids[0])
    with pytest.raises(StoreError, match="not the key that signed"):
        make_store(store.root, 4)
    ran = cli(store.root, "ls")
    assert ran.exit_code == 2 and "not the key that signed" in ran.stderr and "fix:" in ran.stderr


def test_a_signed_store_without_its_key_never_signs_again_by_itself(tmp_path: Path):
    store, ids = make_store(tmp_path / "store")
    (store.root / KEY_FILE).unlink()
    for artifact_id in ids:  # every trace of a signature gone, as in issue 29 finding 4
        (store.object_path(artifact_id) / MANIFEST_MAC).unlink()
    forged = store.object_path(ids[0])
    manifest = json.loads((forged / MANIFEST).read_text())
    manifest["metrics"]["files"] = 99
    raw = json.dumps(manifest).encode()
    (forged / MANIFEST).write_bytes(raw)
    import hashlib

    (forged / MANIFEST_SUM).write_text(hashlib.sha256(raw).hexdigest() + "\n")
    with pytest.raises(StoreError, match="store.key") as info:
        make_store(store.root, 4)
    assert "--adopt-key" in (info.value.hint or "")
    assert not (store.root / KEY_FILE).exists()
    assert not any((store.object_path(i) / MANIFEST_MAC).exists() for i in ids)  # the edit was not signed
    with pytest.raises(StoreError, match="store.key is missing"):
        Store(store.root).get(ids[0])


def test_adopting_a_new_key_signs_only_what_matches_its_sha256(tmp_path: Path):
    store, ids = make_store(tmp_path / "store")
    (store.root / KEY_FILE).unlink()
    flip_byte(store.object_path(ids[2]) / "weights.bin")
    adopted = cli(store.root, "verify", "--adopt-key")
    assert adopted.exit_code == 0, adopted.stderr
    assert "signed 2" in adopted.stderr and ids[2][:12] in adopted.stderr
    assert (store.root / KEY_FILE).stat().st_mode & 0o777 == 0o600
    fresh = Store(store.root)
    assert fresh.get(ids[0]).file("weights.bin").is_file()
    fresh.produce({"stage": "keys-test", "n": 99}, "thing", write_files({"a": b"a"}))  # writable again
    assert cli(store.root, "verify").exit_code == 1  # the damaged one is still damage
    cli(store.root, "gc", "--damaged").ok()
    cli(store.root, "verify").ok()
    assert ids[2] not in Store(store.root).ids() and ids[0] in Store(store.root).ids()


def test_adopting_is_refused_while_the_key_is_in_place(tmp_path: Path):
    store, _ = make_store(tmp_path / "store")
    ran = cli(store.root, "verify", "--adopt-key")
    assert ran.exit_code == 2 and "nothing to adopt" in ran.stderr


# ---------------------------------------------------------------- 4. addresses and checkpoints


def test_an_artifact_copied_over_another_address_is_refused_on_every_read(tmp_path: Path):
    store, ids = make_store(tmp_path / "store")
    victim = store.object_path(ids[1])
    shutil.rmtree(victim)
    shutil.copytree(store.object_path(ids[0]), victim)  # signed, intact, but at the wrong address
    for read in (lambda: Store(store.root).get(ids[1]), lambda: Store(store.root).resolve(ids[1][:10]),
                 lambda: Store(store.root).load(victim)):
        with pytest.raises(StoreError, match="names id") as info:
            read()
        assert info.value.hint
    ran = cli(store.root, "show", ids[1])
    assert ran.exit_code == 2 and "names id" in ran.stderr
    assert ids[1] not in [a.id for a in Store(store.root).all()]
    assert any("names id" in p for p in Store(store.root).verify(ids[1]))


def _checkpointer(store: Store, warnings: list[str]):
    from clt.checkpoint import FileCheckpointer

    store._ensure()
    return FileCheckpointer(store.work_dir("ab" * 32), {"id": "x"}, sign=store.sign, warn=warnings.append)


def _small_state() -> dict:
    import torch

    return {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 1, "step": 3}


@pytest.mark.parametrize("edit", ["json", "tensors", "signature", "unsigned"])
def test_an_edited_checkpoint_is_discarded_with_a_warning(tmp_path: Path, edit: str):
    import torch
    from safetensors.torch import save_file

    from clt.checkpoint import STATE

    store = Store(tmp_path / "store")
    warnings: list[str] = []
    checkpointer = _checkpointer(store, warnings)
    checkpointer.save(_small_state())
    assert checkpointer.load()["step"] == 3 and warnings == []
    doc_path = checkpointer.folder / STATE
    doc = json.loads(doc_path.read_text())
    if edit == "json":
        doc["state"]["__dict__"][2][1] = 0  # step 3 -> 0: a consistent, well-formed edit
    elif edit == "tensors":
        save_file({"t.0.0": torch.zeros(2, 3)}, str(checkpointer.folder / "1.checkpoint.safetensors"),
                  metadata={"generation": "1"})
    elif edit == "signature":
        doc["hmac"] = "0" * 64
    else:
        doc.pop("hmac")
    doc_path.write_text(json.dumps(doc))
    assert checkpointer.load() is None
    assert len(warnings) == 1 and "checkpoint" in warnings[0] and "starts over" in warnings[0]


def test_pretrain_does_not_resume_from_an_edited_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from clt.checkpoint import STATE, FileCheckpointer

    root = tmp_path / "store"
    args = ["pretrain", DIGITS, "--set", "pretrain.epochs=1", "--set", "pretrain.checkpoint_every=5"]
    with monkeypatch.context() as patched:
        patched.setattr(FileCheckpointer, "clear", lambda self: None)  # keep the last checkpoint
        first = cli(root, *args).ok().id
    shutil.rmtree(Store(root).object_path(first))
    doc_path = root / "tmp" / f"{first}.work" / STATE
    doc = json.loads(doc_path.read_text())
    doc["state"]["__dict__"].append(["note", "edited by hand"])  # well-formed, and resumable before
    doc_path.write_text(json.dumps(doc))
    again = cli(root, *args).ok()
    assert again.id == first
    assert "resumed from" not in again.stderr and "checkpoint" in again.stderr and "starts over" in again.stderr


# ---------------------------------------------------------------- 5. store files are read with a bound

_READ_ONE = """
import os, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
sys.path.insert(0, {tests!r})
from pathlib import Path
from clt.errors import StoreError
from clt.store import Store
from conftest import write_files
root = Path({root!r})
store = Store(root)
art = store.produce({{"stage": "keys-test", "n": 0}}, "thing", write_files({{"a.bin": b"a"}}))[0]
target = {target!r}.replace("OBJECT", str(art.path))
os.unlink(target)
os.symlink({device!r}, target)
try:
    Store(root).resolve({ref!r})
except StoreError as err:
    print("REFUSED", err.message)
"""


@pytest.mark.parametrize("name", [KEY_FILE, "store.keyed", "OBJECT/" + MANIFEST, "OBJECT/" + MANIFEST_SUM,
                                  "OBJECT/" + MANIFEST_MAC, "refs/latest"])
def test_a_store_file_linked_to_an_endless_device_is_refused_by_name(tmp_path: Path, name: str):
    root = tmp_path / "store"
    target = name if name.startswith("OBJECT") else str(root / name)
    ran = python_proc(_READ_ONE.format(tests=str(ROOT / "tests"), root=str(root), target=target, device="/dev/zero",
                                       ref="latest"), timeout=60)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "REFUSED" in ran.stdout and "not a regular file" in ran.stdout, ran.stdout
    assert name.rsplit("/", 1)[-1] in ran.stdout


def test_an_oversized_store_file_is_refused_with_its_limit(tmp_path: Path):
    store, ids = make_store(tmp_path / "store", 1)
    with open(store.ref_path("big"), "wb") as fh:
        fh.truncate(64 << 20)  # sparse: costs no disk, but must not be read
    with pytest.raises(StoreError, match="larger than") as info:
        store.read_ref("big")
    assert "big" in info.value.message and info.value.hint
    manifest = store.object_path(ids[0]) / MANIFEST
    manifest.unlink()
    with open(manifest, "wb") as fh:
        fh.truncate(1 << 30)
    with pytest.raises(StoreError, match="larger than"):
        Store(store.root).get(ids[0])


def test_a_checkpoint_linked_to_a_device_is_discarded(tmp_path: Path):
    from clt.checkpoint import STATE

    store = Store(tmp_path / "store")
    warnings: list[str] = []
    checkpointer = _checkpointer(store, warnings)
    checkpointer.save(_small_state())
    tensors = checkpointer.folder / "1.checkpoint.safetensors"
    tensors.unlink()
    os.symlink("/dev/zero", tensors)
    assert checkpointer.load() is None and "not a regular file" in warnings[0]
    (checkpointer.folder / STATE).unlink()
    os.symlink("/dev/zero", checkpointer.folder / STATE)
    assert checkpointer.load() is None and "not a regular file" in warnings[1]
    checkpointer.save(_small_state())  # replaces the link, never writes through it
    assert checkpointer.load()["step"] == 3


# ---------------------------------------------------------------- 8. what the docs promise


def test_the_store_page_says_what_the_keyed_checksum_does_and_does_not_protect_against():
    text = (ROOT / "docs" / "store.md").read_text()
    section = text[text.index("**Tamper-evident manifests.**"):]
    section = section[:section.index("\n- **")]
    for phrase in ("do not hold the key", "anyone who can read `store.key`", "--adopt-key", "sha256 only",
                   "never counted as damaged"):
        assert phrase in section, phrase


if sys.platform != "linux":  # /dev/zero links and the key-state simulation assume Linux
    pytestmark = pytest.mark.skip("Linux only")
