"""The content-addressed store: addresses, build-once, atomic builds, verification, resolving, gc, locking."""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest
from conftest import colliding_specs, flip_byte, write_files
from hypothesis import given, settings
from hypothesis import strategies as st

import clt.store as store_module
from clt.errors import StoreError
from clt.store import MANIFEST, MANIFEST_SUM, Store, address, file_sha256

SPEC = {"stage": "pretrain", "recipe": {"pretrain": {"epochs": 2, "lr": 0.001}, "name": "r"},
        "inputs": {"dataset": "ab" * 32}, "seed": 0}
FILES = {"weights.bin": bytes(range(256)) * 4, "notes/history.json": b'{"loss": [1, 0.5]}'}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def make(store: Store, spec=None, kind="thing", files=None, name="", refs=()):
    artifact, cached = store.produce(spec or SPEC, kind, write_files(files or FILES), refs=refs, name=name)
    return artifact


# ---------------------------------------------------------------- addresses


def test_address_is_deterministic_and_ignores_key_order():
    reordered = {k: SPEC[k] for k in reversed(list(SPEC))}
    reordered["recipe"] = {"name": "r", "pretrain": {"lr": 0.001, "epochs": 2}}
    assert address(SPEC) == address(copy.deepcopy(SPEC)) == address(reordered)
    assert len(address(SPEC)) == 64 and all(c in "0123456789abcdef" for c in address(SPEC))


def _leaf_paths(node, prefix=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaf_paths(value, (*prefix, key))
    else:
        yield prefix


@pytest.mark.parametrize("path", list(_leaf_paths(SPEC)), ids=lambda p: ".".join(p))
def test_address_changes_with_every_input(path):
    changed = copy.deepcopy(SPEC)
    node = changed
    for key in path[:-1]:
        node = node[key]
    value = node[path[-1]]
    node[path[-1]] = value + 1 if isinstance(value, (int, float)) else str(value) + "x"
    assert address(changed) != address(SPEC)


def test_address_changes_with_added_key_and_version(monkeypatch):
    assert address({**SPEC, "extra": None}) != address(SPEC)
    before = address(SPEC)
    monkeypatch.setattr(store_module, "__version__", "999.0")
    assert address(SPEC) != before


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                        max_size=3), max_leaves=6)


@settings(max_examples=int(os.environ.get("CLT_HYPOTHESIS_EXAMPLES", 200)), deadline=None)
@given(st.dictionaries(st.text(max_size=4), json_values, max_size=4),
       st.dictionaries(st.text(max_size=4), json_values, max_size=4))
def test_different_specs_have_different_addresses(a, b):
    same = json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert (address(a) == address(b)) == same


# ---------------------------------------------------------------- produce


def test_produce_builds_once_then_returns_cached(store: Store, tmp_path: Path):
    calls = []

    def build(tmp: Path):
        calls.append(tmp)
        (tmp / "x.txt").write_text("hello")
        return {"metrics": {"n": 1}}

    first, cached1 = store.produce(SPEC, "thing", build, name="recipe-a")
    second, cached2 = store.produce(SPEC, "thing", build, name="recipe-a")
    assert (cached1, cached2) == (False, True)
    assert len(calls) == 1
    assert first.id == second.id == address(SPEC)
    assert first.path == store.object_path(first.id) and first.path.is_dir()
    assert second.file("x.txt").read_text() == "hello"
    assert second.metrics == {"n": 1}
    assert first.manifest["files"]["x.txt"]["sha256"] == file_sha256(first.path / "x.txt")
    assert not list((store.root / "tmp").iterdir())  # the build folder became the artifact
    other, cached3 = store.produce({**SPEC, "seed": 1}, "thing", build)
    assert not cached3 and other.id != first.id and len(calls) == 2


def test_produce_sets_refs(store: Store):
    art = make(store, kind="encoder", name="digits_pair", refs=("extra/ref",))
    for ref in ("latest", "latest-encoder", "digits_pair/encoder", "extra/ref"):
        assert store.read_ref(ref) == art.id
    newer = make(store, spec={**SPEC, "seed": 9}, kind="probe", name="digits_pair")
    assert store.read_ref("latest") == newer.id
    assert store.read_ref("latest-encoder") == art.id


def test_failed_build_leaves_nothing(store: Store):
    def build(tmp: Path):
        (tmp / "half.bin").write_bytes(b"half written")
        (tmp / "sub").mkdir()
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        store.produce(SPEC, "thing", build)
    assert not store.exists(address(SPEC))
    assert list(store.objects.rglob("*")) == []
    assert list((store.root / "tmp").iterdir()) == []
    assert store.refs() == {}
    # and a later successful build still works
    assert make(store).id == address(SPEC)


def test_build_may_write_subfolders(store: Store):
    art = make(store)
    assert set(art.manifest["files"]) == set(FILES)
    assert art.file("notes/history.json").read_bytes() == FILES["notes/history.json"]


# ---------------------------------------------------------------- verification on read


def _damage(path: Path, how: str) -> None:
    if how == "flip":
        flip_byte(path)
    elif how == "truncate":
        path.write_bytes(path.read_bytes()[:-7])
    elif how == "delete":
        path.unlink()
    elif how == "append":
        path.write_bytes(path.read_bytes() + b"\0")
    elif how == "flip-first":
        flip_byte(path, 0)


@pytest.mark.parametrize("how", ["flip", "truncate", "delete", "append", "flip-first"])
@pytest.mark.parametrize("name", sorted(FILES))
def test_damaged_file_is_refused_on_read_and_reported(store: Store, how: str, name: str):
    art = make(store)
    other = sorted(set(FILES) - {name})[0]
    _damage(art.path / name, how)
    fresh = store.get(art.id)
    with pytest.raises(StoreError) as info:
        fresh.file(name)
    assert name in info.value.message and art.short in info.value.message
    assert info.value.hint
    assert fresh.file(other).is_file()  # the undamaged file still reads
    problems = store.verify(art.id)
    assert len(problems) == 1 and problems[0].startswith(name)


def test_clean_artifact_verifies(store: Store):
    assert store.verify(make(store).id) == []


def test_edited_manifest_is_detected(store: Store):
    art = make(store)
    manifest = json.loads((art.path / MANIFEST).read_text())
    manifest["metrics"]["files"] = 99
    (art.path / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    with pytest.raises(StoreError) as info:
        store.get(art.id)
    assert MANIFEST in info.value.message
    problems = store.verify(art.id)
    assert problems and MANIFEST in problems[0]
    assert art.id not in [a.id for a in store.all()]  # listing skips it; verify reports it


def test_manifest_naming_another_id_is_detected(store: Store):
    art = make(store)
    manifest = json.loads((art.path / MANIFEST).read_text())
    manifest["id"] = "0" * 64
    raw = json.dumps(manifest).encode()
    (art.path / MANIFEST).write_bytes(raw)
    import hashlib

    (art.path / MANIFEST_SUM).write_text(hashlib.sha256(raw).hexdigest())
    (art.path / "manifest.hmac").write_text(store._sign(raw))  # a consistent, signed, but misnamed manifest
    assert any("names id" in p for p in store.verify(art.id))


def test_missing_manifest_checksum_is_detected(store: Store):
    art = make(store)
    (art.path / MANIFEST_SUM).unlink()
    with pytest.raises(StoreError):
        store.get(art.id)
    assert store.verify(art.id)


def test_unlisted_extra_file_is_reported(store: Store):
    art = make(store)
    (art.path / "sneaky.bin").write_bytes(b"x")
    problems = store.verify(art.id)
    assert problems == ["sneaky.bin is not listed in the manifest"]


def test_unknown_file_name(store: Store):
    art = make(store)
    with pytest.raises(StoreError) as info:
        art.file("nope.bin")
    assert "nope.bin" in info.value.message and "weights.bin" in info.value.hint


# ---------------------------------------------------------------- resolving


def test_resolve_full_id_prefix_and_uppercase(store: Store):
    art = make(store)
    assert store.resolve(art.id).id == art.id
    assert store.resolve(art.id[:8]).id == art.id
    assert store.resolve(art.id[:4]).id == art.id
    assert store.resolve(art.id[:10].upper()).id == art.id


def test_resolve_ambiguous_prefix(store: Store):
    spec_a, spec_b = colliding_specs(4)
    a, b = make(store, spec_a), make(store, spec_b)
    assert a.id[:4] == b.id[:4] and a.id != b.id
    with pytest.raises(StoreError) as info:
        store.resolve(a.id[:4])
    message = info.value.message
    assert "ambiguous" in message and a.id[:4] in message
    assert a.short in message and b.short in message
    assert info.value.hint
    # one character past the shared prefix is enough
    common = os.path.commonprefix([a.id, b.id])
    assert store.resolve(a.id[:len(common) + 1]).id == a.id
    assert store.resolve(b.id[:len(common) + 1]).id == b.id


def test_resolve_refs_names_and_paths(store: Store):
    enc = make(store, kind="encoder", name="digits_pair")
    probe = make(store, spec={**SPEC, "seed": 5}, kind="probe", name="digits_pair")
    assert store.resolve("latest").id == probe.id
    assert store.resolve("latest-encoder").id == enc.id
    assert store.resolve("encoder").id == enc.id  # 'encoder' means latest-encoder
    assert store.resolve("digits_pair/encoder").id == enc.id
    assert store.resolve_named("digits_pair", ("encoder",)).id == enc.id
    assert store.resolve_named("digits_pair", ("probe",)).id == probe.id
    assert store.resolve(str(enc.path)).id == enc.id
    assert store.resolve(str(enc.path) + "/").id == enc.id
    assert store.resolve(None, ("probe", "encoder")).id == probe.id
    assert store.resolve(None, ("encoder",)).id == enc.id


def test_resolve_wrong_kind(store: Store):
    enc = make(store, kind="encoder")
    with pytest.raises(StoreError) as info:
        store.resolve(enc.id, ("probe",))
    assert "encoder" in info.value.message and "probe" in info.value.message


@pytest.mark.parametrize("ref", ["deadbeef", "0" * 64, "nonexistent-name", "zzzz"])
def test_resolve_unknown(store: Store, ref: str):
    make(store, name="digits_pair")
    with pytest.raises(StoreError) as info:
        store.resolve(ref)
    assert f"'{ref}'" in info.value.message and info.value.hint


def test_resolve_in_empty_store(store: Store):
    with pytest.raises(StoreError) as info:
        store.resolve("abcd1234")
    assert "empty" in info.value.hint
    with pytest.raises(StoreError) as info:
        store.resolve(None, ("encoder",))
    assert "encoder" in info.value.message


def test_dangling_ref_is_reported(store: Store):
    art = make(store, kind="encoder")
    import shutil

    shutil.rmtree(art.path)
    with pytest.raises(StoreError) as info:
        store.resolve("latest")
    assert "no longer" in info.value.message


def test_ref_names_cannot_escape_the_store(store: Store, tmp_path: Path):
    (tmp_path / "outside").write_text(address(SPEC))
    make(store)
    assert store.read_ref("../../outside") is None
    assert store.read_ref(str(tmp_path / "outside")) is None


def test_stray_files_do_not_break_listing(store: Store):
    art = make(store)
    (store.objects / ".DS_Store").write_bytes(b"junk")
    assert [a.id for a in store.all()] == [art.id]
    assert store.ids() == [art.id]


# ---------------------------------------------------------------- gc


def test_gc_removes_orphans_but_not_locked_or_resumable(store: Store):
    done = make(store)
    orphan = store.root / "tmp" / f"{'1' * 64}.1234.deadbeef"
    orphan.mkdir(parents=True)
    (orphan / "partial.bin").write_bytes(b"x")
    busy_id = "2" * 64
    busy = store.root / "tmp" / f"{busy_id}.5678.cafef00d"
    busy.mkdir()
    resumable = store.work_dir("3" * 64)  # checkpoints of an unfinished run
    finished_work = store.work_dir(done.id)  # checkpoints of a run that finished: stale
    with store.lock(busy_id) as held:
        assert held
        removed = store.gc()
    assert not orphan.exists() and busy.exists() and resumable.exists() and not finished_work.exists()
    assert sorted(removed) == sorted([str(orphan.relative_to(store.root)), str(finished_work.relative_to(store.root))])
    assert store.exists(done.id)
    # once the lock is released the folder is an orphan too
    assert store.gc() == [str(busy.relative_to(store.root))]


def test_gc_damaged_removes_only_damaged(store: Store):
    good = make(store)
    bad = make(store, spec={**SPEC, "seed": 3})
    flip_byte(bad.path / "weights.bin")
    assert store.gc(damaged=False) == []
    assert store.exists(bad.id)
    removed = store.gc(damaged=True)
    assert removed == [f"objects/{bad.id[:2]}/{bad.id[2:]}"]
    assert store.exists(good.id) and not store.exists(bad.id)


def test_lock_is_exclusive(store: Store):
    with store.lock("a" * 64) as first:
        assert first
        with store.lock("a" * 64, blocking=False) as second:
            assert not second
        with store.lock("b" * 64, blocking=False) as other:
            assert other
    with store.lock("a" * 64, blocking=False) as again:
        assert again


# ---------------------------------------------------------------- two processes, one spec


def _produce_in_process(root: str, log: str, barrier) -> None:
    store = Store(root)

    def build(tmp: Path):
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # long enough for the other process to arrive and wait on the lock
        (tmp / "result.txt").write_text("built")
        return {}

    barrier.wait(timeout=60)
    artifact, cached = store.produce(SPEC, "thing", build)
    with open(log + ".out", "a") as fh:
        fh.write(f"{artifact.id} {cached}\n")


def test_two_processes_build_once(store: Store, tmp_path: Path):
    ctx = multiprocessing.get_context("spawn")
    log = str(tmp_path / "builds.log")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_produce_in_process, args=(str(store.root), log, barrier)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0, 0]
    assert len(Path(log).read_text().splitlines()) == 1
    outs = [line.split() for line in Path(log + ".out").read_text().splitlines()]
    assert len(outs) == 2
    assert outs[0][0] == outs[1][0] == address(SPEC)
    assert sorted(cached for _, cached in outs) == ["False", "True"]
    assert store.verify(address(SPEC)) == []
    assert list((store.root / "tmp").iterdir()) == []
