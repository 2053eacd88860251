"""Write failures are one named error, never "internal error": a full file system, a read-only one,
objects/ on another file system than tmp/, a path under a regular file. Each stage that writes to
the store, and each --out / --grid writer, is run through the command line with the failure
simulated where the operating system would report it; the message names the path and the fix,
and no half-written file is left at the destination or in the store.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
from conftest import DIGITS, FAST_PRETRAIN, Ran, Trained, cli, serve_folder
from PIL import Image

from clt.store import Store

HALF = b"half a file"  # what a simulated full disk leaves behind: the writer must remove it


# ---------------------------------------------------------------- simulated file systems


def _under(path: object, folder: Path) -> bool:
    if not isinstance(path, (str, bytes, os.PathLike)):
        return False  # a file descriptor (os.fdopen): its file was created through os.open
    return Path(os.path.abspath(os.fsdecode(path))).is_relative_to(folder)


def break_writes(monkeypatch: pytest.MonkeyPatch, folder: Path, code: int) -> None:
    """Writes under `folder` fail with `code`, as the operating system reports them.

    ENOSPC: a file opened for writing gets a few bytes, then the write fails (the half file stays
    for the writer to remove); lock files, folders and renames, which need no data blocks, work.
    EROFS / EACCES: nothing can be created, written or renamed there.
    """
    folder = Path(os.path.abspath(folder))
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir
    real_replace, real_rename = os.replace, os.rename
    full = code == errno.ENOSPC

    def fail(path: object) -> None:
        raise OSError(code, os.strerror(code), os.fsdecode(path))

    def open_(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wxa+") and _under(file, folder):
            if not full:
                fail(file)
            if "a" not in mode:
                with real_open(file, "wb") as fh:
                    fh.write(HALF)
                fail(file)
        return real_open(file, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if not full and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and _under(path, folder):
            fail(path)
        return real_os_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if not full and _under(path, folder) and not os.path.lexists(path):
            fail(path)
        return real_mkdir(path, *args, **kwargs)

    def renamer(real):
        def rename(src, dst, *args, **kwargs):
            if not full and _under(dst, folder):
                fail(dst)
            return real(src, dst, *args, **kwargs)
        return rename

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)  # pathlib's write_text and os.fdopen open through io
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "replace", renamer(real_replace))
    monkeypatch.setattr(os, "rename", renamer(real_rename))


def objects_on_another_file_system(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """A rename from the store's tmp/ into its objects/ fails as it does across file systems."""
    tmp, objects = Path(os.path.abspath(root / "tmp")), Path(os.path.abspath(root / "objects"))

    def renamer(real):
        def rename(src, dst, *args, **kwargs):
            if _under(src, tmp) and _under(dst, objects):
                # as os.rename raises it: both names (the fourth argument is Windows' error code)
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), os.fsdecode(src), None, os.fsdecode(dst))
            return real(src, dst, *args, **kwargs)
        return rename

    monkeypatch.setattr(os, "replace", renamer(os.replace))
    monkeypatch.setattr(os, "rename", renamer(os.rename))


# ---------------------------------------------------------------- what a failed write may leave


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else set()


# files a failed stage may leave, all complete: a lock, the store's key, the last resumable checkpoint
# (whose writers, as every atomic writer here, begin a file under a hidden name: a dot file is a partial one)
COMPLETE = re.compile(r"locks/[^/]+\.lock|store\.key(ed)?|tmp/[0-9a-f]{64}\.work/[^./][^/]*")


def assert_write_error(ran: Ran, *words: str) -> None:
    assert ran.exit_code == 2, f"exit {ran.exit_code}\nstdout:\n{ran.stdout}\nstderr:\n{ran.stderr}\n{ran.exception!r}"
    assert "internal error" not in ran.stderr and "Traceback" not in ran.stderr, ran.stderr
    assert "error: " in ran.stderr and "fix: " in ran.stderr, ran.stderr
    for word in words:
        assert word in ran.stderr, f"{word!r} not in {ran.stderr!r}"


def assert_nothing_half_written(folder: Path, before: set[str]) -> None:
    """No file the failed command began is left: only complete ones (a lock, the key, a checkpoint)."""
    new = sorted(files_under(folder) - before)
    assert all(COMPLETE.fullmatch(name) for name in new), new
    assert not [name for name in files_under(folder) if (folder / name).read_bytes() == HALF]


def assert_store_unchanged(root: Path, ids: set[str], before: set[str]) -> None:
    assert set(Store(root).ids()) == ids, "a failed stage must not add an artifact"
    assert_nothing_half_written(root, before)
    if ids:
        assert cli(root, "verify").exit_code == 0


# ---------------------------------------------------------------- the commands that write


@dataclass
class Stage:
    """A command that writes into the store: `args(store, workdir, request)` prepares what it needs
    (unbroken) and returns its arguments; `fresh` stages start from an empty store, not the trained one."""

    args: Callable[[Trained, Path, pytest.FixtureRequest], list[str]]
    fresh: bool = False


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Iterator[str]:
    """An HTTP mirror on 127.0.0.1 serving a first MNIST file, so a download starts writing."""
    import torchvision.datasets as tvd

    www = tmp_path_factory.mktemp("www")
    (www / tvd.MNIST.resources[0][0]).write_bytes(b"\x1f\x8b" + bytes(64 * 1024))
    with serve_folder(www) as url:
        yield url + "/"


def _index_args(store: Trained, work: Path, request) -> list[str]:
    cli(store.root, "embed", store.encoder, "--split", "test").ok()  # so the index's own files are written
    return ["index", store.encoder, "--split", "test"]


STAGES = {
    "download": Stage(lambda store, work, request: ["download", "digits"], fresh=True),
    "download-mirror": Stage(lambda store, work, request: ["download", "mnist", "--mirror",
                                                           request.getfixturevalue("mirror")], fresh=True),
    "pretrain": Stage(lambda store, work, request: ["pretrain", str(DIGITS), *FAST_PRETRAIN, "--seed", "5"]),
    "probe": Stage(lambda store, work, request: ["probe", store.encoder, "--epochs", "2"]),
    "index": Stage(_index_args),
    "embed": Stage(lambda store, work, request: ["embed", store.encoder, "--split", "test"]),
    "evaluate --confusion": Stage(lambda store, work, request: ["evaluate", store.probe, "--confusion"]),
}
RENAMED = [name for name in STAGES if name != "download-mirror"]  # a download renames within its folder


def _pngs(work: Path) -> Path:
    folder = work / "pngs"
    folder.mkdir(exist_ok=True)
    for i in range(3):
        Image.new("L", (8, 8), 40 * i).save(folder / f"{i}.png")
    return folder


def _grid_args(store: Trained, work: Path, out: Path) -> list[str]:
    index = cli(store.root, "index", store.encoder, "--split", "test").ok().id
    return ["search", index, str(_pngs(work) / "0.png"), "-k", "2", "--grid", str(out / "grid.png")]


# writers of a file the user names: (arguments given the output folder, the file named)
OUTPUTS: dict[str, Callable[[Trained, Path, Path], list[str]]] = {
    "embed --out": lambda store, work, out: ["embed", store.encoder, "--images", str(_pngs(work)),
                                             "--out", str(out / "vectors.npy")],
    "search --grid": _grid_args,
    "export --out": lambda store, work, out: ["export", store.encoder, "--format", "torchscript",
                                              "--out", str(out / "encoder.pt")],
}


def _store_for(stage: Stage, store_copy: Trained, tmp_path: Path) -> Trained:
    if stage.fresh:
        return Trained(tmp_path / "fresh-store", "", "", "")
    return store_copy


def run_broken_stage(name: str, store_copy: Trained, tmp_path: Path, monkeypatch, breaker,
                     request: pytest.FixtureRequest) -> tuple[Ran, Path]:
    """Run stage `name` with `breaker(monkeypatch, store root)` in force; check the store afterwards."""
    stage = STAGES[name]
    store = _store_for(stage, store_copy, tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    args = stage.args(store, work, request)
    ids, before = set(Store(store.root).ids()), files_under(store.root)
    with monkeypatch.context() as patch:
        breaker(patch, store.root)
        ran = cli(store.root, *args)
    assert_store_unchanged(store.root, ids, before)
    return ran, store.root


def run_broken_output(name: str, store_copy: Trained, tmp_path: Path, monkeypatch, code: int) -> tuple[Ran, Path]:
    """Run writer `name` with its output folder failing writes with `code`; nothing may be left there."""
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    args = OUTPUTS[name](store_copy, work, out)
    with monkeypatch.context() as patch:
        break_writes(patch, out, code)
        ran = cli(store_copy.root, *args)
    assert files_under(out) == set(), "a failed --out / --grid must leave no file there"
    return ran, out


# ---------------------------------------------------------------- 1. no space left


@pytest.mark.parametrize("name", list(STAGES))
def test_a_full_store_is_a_named_error_in_every_stage(name: str, store_copy: Trained, tmp_path: Path, monkeypatch,
                                                      request):
    ran, root = run_broken_stage(name, store_copy, tmp_path, monkeypatch,
                                 lambda patch, root: break_writes(patch, root, errno.ENOSPC), request)
    assert_write_error(ran, "no space left", str(root), "free space", "--artifacts")


@pytest.mark.parametrize("name", list(OUTPUTS))
def test_a_full_disk_under_out_or_grid_is_a_named_error(name: str, store_copy: Trained, tmp_path: Path,
                                                         monkeypatch):
    ran, out = run_broken_output(name, store_copy, tmp_path, monkeypatch, errno.ENOSPC)
    assert_write_error(ran, "no space left", str(out), "free space")


# what writers that bypass Python's file objects say on a full disk (seen on a 300 kB tmpfs)
SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"
NUMPY_SHORT_WRITE = "5120 requested and 3040 written"  # an OSError with no errno


def native_writers_fill_up(patch: pytest.MonkeyPatch, folder: Path) -> None:
    """safetensors and numpy.save fail under `folder` as they do on a full disk: numpy after a part of
    the file, safetensors with its own error type quoting the system's."""
    import numpy as np
    import safetensors.numpy
    import safetensors.torch
    from safetensors import SafetensorError

    real_save = np.save

    def save(file, arr, *args, **kwargs):
        if _under(file, folder):
            Path(file).write_bytes(HALF)
            raise OSError(NUMPY_SHORT_WRITE)
        return real_save(file, arr, *args, **kwargs)

    def full(real):
        def save_file(tensors, filename, *args, **kwargs):
            if _under(filename, folder):
                raise SafetensorError(SAFETENSORS_FULL)
            return real(tensors, filename, *args, **kwargs)
        return save_file

    patch.setattr(np, "save", save)
    for module in (safetensors.numpy, safetensors.torch):
        patch.setattr(module, "save_file", full(module.save_file))


@pytest.mark.parametrize("name", ["download", "pretrain", "probe", "embed"])
def test_a_full_disk_said_by_safetensors_or_numpy_is_a_named_error(name: str, store_copy: Trained, tmp_path: Path,
                                                                    monkeypatch, request):
    ran, root = run_broken_stage(name, store_copy, tmp_path, monkeypatch, native_writers_fill_up, request)
    assert_write_error(ran, "no space left", str(root), "free space", "--artifacts")


def test_a_short_numpy_write_under_out_is_a_named_error(store_copy: Trained, tmp_path: Path, monkeypatch):
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    with monkeypatch.context() as patch:
        native_writers_fill_up(patch, out)
        ran = cli(store_copy.root, *OUTPUTS["embed --out"](store_copy, work, out))
    assert_write_error(ran, "no space left", str(out / "vectors.npy"), "free space", "--out")
    assert files_under(out) == set()


# ---------------------------------------------------------------- 2. read-only


@pytest.mark.parametrize("name", list(STAGES))
def test_a_read_only_store_is_a_named_error_in_every_writing_stage(name: str, store_copy: Trained, tmp_path: Path,
                                                                    monkeypatch, request):
    ran, root = run_broken_stage(name, store_copy, tmp_path, monkeypatch,
                                 lambda patch, root: break_writes(patch, root, errno.EROFS), request)
    assert_write_error(ran, "read-only", str(root), "writable", "--artifacts")


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES], ids=["read-only", "no-permission"])
@pytest.mark.parametrize("name", list(OUTPUTS))
def test_a_read_only_out_or_grid_is_a_named_error(name: str, code: int, store_copy: Trained, tmp_path: Path,
                                                   monkeypatch):
    ran, out = run_broken_output(name, store_copy, tmp_path, monkeypatch, code)
    assert_write_error(ran, str(out), "writable")


# ---------------------------------------------------------------- 3. objects/ on another file system


@pytest.mark.parametrize("name", RENAMED)
def test_objects_on_another_file_system_is_a_named_error(name: str, store_copy: Trained, tmp_path: Path,
                                                         monkeypatch, request):
    ran, root = run_broken_stage(name, store_copy, tmp_path, monkeypatch, objects_on_another_file_system, request)
    assert_write_error(ran, str(root / "objects"), str(root / "tmp"), "one file system")


# ---------------------------------------------------------------- 4. a path under a regular file


@pytest.mark.parametrize("args", [["download", "digits"], ["pretrain", str(DIGITS), *FAST_PRETRAIN]],
                         ids=["download", "pretrain"])
def test_a_store_under_a_regular_file_is_a_named_error(args: list[str], tmp_path: Path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file, where a folder is needed\n")
    ran = cli(blocker / "store", *args)
    assert_write_error(ran, "not a folder", str(blocker), "--artifacts")
    assert blocker.read_text() == "a file, where a folder is needed\n"


@pytest.mark.parametrize("name", list(OUTPUTS))
def test_an_out_or_grid_under_a_regular_file_is_a_named_error(name: str, store_copy: Trained, tmp_path: Path):
    blocker, work = tmp_path / "not-a-folder", tmp_path / "work"
    blocker.write_text("x\n")
    work.mkdir()
    ran = cli(store_copy.root, *OUTPUTS[name](store_copy, work, blocker / "sub"))
    assert_write_error(ran, "not a folder", str(blocker))
    assert blocker.read_text() == "x\n"


# ---------------------------------------------------------------- the last resort


def test_a_write_failure_no_stage_names_is_still_a_named_error(monkeypatch, tmp_path: Path):
    """An OSError of a write failure that escapes every stage still names its file and the fix."""
    import clt.api

    def listing(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "somewhere"))

    monkeypatch.setattr(clt.api, "list_artifacts", listing)
    ran = cli(tmp_path / "store", "ls")
    assert_write_error(ran, "no space left", str(tmp_path / "somewhere"), "free space")
