"""Shared fixtures: one trained digits encoder + probe per session, CLI runners, store helpers.

Training is the slow part, so it happens once (`trained`); a test that writes to a store or
damages it works on its own copy (`store_copy`), which costs a directory copy of ~1 MB.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
DIGITS = RECIPES / "digits_pair.yaml"
VENV_CLT = ROOT / ".venv" / "bin" / "clt"
# the cheapest run of the digits recipe: one epoch of pretraining, one of probing
FAST_PRETRAIN = ["--set", "pretrain.epochs=1"]
FAST_PROBE = ["--epochs", "1"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- a local HTTP server


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        # a client that hangs up mid-file (a download refused for a full disk) is what the tests
        # provoke; the default prints a traceback to the stderr the CLI runner is capturing
        pass


@contextlib.contextmanager
def serve_folder(root: Path) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 serving `root`; yields its base URL (no trailing slash)."""
    httpd = _QuietServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


# ---------------------------------------------------------------- running the CLI


@dataclass
class Ran:
    """What one CLI call did, the same shape for in-process and subprocess runs."""

    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None = None

    def ok(self) -> Ran:
        assert self.exit_code == 0, f"exit {self.exit_code}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        return self

    @property
    def id(self) -> str:
        """The one line a stage prints on stdout: the artifact id."""
        lines = self.stdout.strip().splitlines()
        assert len(lines) == 1, f"expected one id line on stdout, got {self.stdout!r}"
        return lines[0].strip()

    def json(self) -> dict:
        lines = self.stdout.strip().splitlines()
        assert len(lines) == 1, f"expected one JSON line on stdout, got {self.stdout!r}"
        return json.loads(lines[0])


def assert_user_error(ran: Ran, *words: str) -> str:
    """Exit 2, 'error:' and 'fix:' lines on stderr, nothing on stdout, no traceback; returns the two lines."""
    assert ran.exit_code == 2, f"exit {ran.exit_code}\nstdout:\n{ran.stdout}\nstderr:\n{ran.stderr}\n{ran.exception!r}"
    assert ran.stdout.strip() == ""
    assert "Traceback" not in ran.stderr and "internal error" not in ran.stderr, ran.stderr
    # the error is the last thing said, one line each for the message and the fix, never wrapped
    lines = ran.stderr.rstrip("\n").splitlines()
    assert len(lines) >= 2 and lines[-2].startswith("error: ") and lines[-1].startswith("  fix: "), ran.stderr
    text = lines[-2] + " " + lines[-1].strip()
    for word in words:
        assert word in text, f"{word!r} not in {text!r}"
    return text


def cli(store: Path | None, *args: str) -> Ran:
    """Run `clt [--artifacts STORE] ARGS` in this process (fast: torch stays imported)."""
    from clt.cli import app

    argv = (["--artifacts", str(store)] if store is not None else []) + [str(a) for a in args]
    result = CliRunner().invoke(app, argv, catch_exceptions=True)
    exception = result.exception if not isinstance(result.exception, SystemExit) else None
    return Ran(result.exit_code, result.stdout, result.stderr, exception)


def clt_command() -> list[str]:
    """The installed entry point, or `python -m clt` where there is no venv script."""
    return [str(VENV_CLT)] if VENV_CLT.exists() else [sys.executable, "-m", "clt"]


def subprocess_env(store: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CLT_ARTIFACTS", None)
    if store is not None:
        env["CLT_ARTIFACTS"] = str(store)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def clt_proc(store: Path | None, *args: str, timeout: float = 300, cwd: Path = ROOT) -> Ran:
    """Run the real `clt` executable in a subprocess."""
    argv = clt_command() + (["--artifacts", str(store)] if store is not None else []) + [str(a) for a in args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=subprocess_env())
    return Ran(proc.returncode, proc.stdout, proc.stderr)


def python_proc(code: str, *flags: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=subprocess_env())


# ---------------------------------------------------------------- store helpers


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def colliding_specs(prefix_len: int = 4) -> tuple[dict, dict]:
    """Two distinct specs whose addresses share their first `prefix_len` hex characters."""
    from clt.store import address

    seen: dict[str, dict] = {}
    n = 0
    while True:
        spec = {"stage": "collide", "n": n}
        key = address(spec)[:prefix_len]
        if key in seen:
            return seen[key], spec
        seen[key] = spec
        n += 1


def write_files(files: dict[str, bytes]):
    """A build function writing `files` (name -> bytes) into the artifact's folder."""
    def build(tmp: Path) -> dict:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        return {"metrics": {"files": len(files)}}

    return build


# ---------------------------------------------------------------- the trained store


@dataclass
class Trained:
    root: Path
    dataset: str
    encoder: str
    probe: str


@pytest.fixture(autouse=True)
def ctrl_c_reaches_subprocesses():
    """Children inherit an *ignored* SIGINT, and code run in this process by earlier tests can
    leave it ignored (the full suite showed every Ctrl-C of the kill loop ignored, alone it was
    not): each test starts with Python's own handler, as a process started from a terminal."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    """A store with the digits dataset, a 1-epoch digits_pair encoder and a 1-epoch linear probe.

    Built once, through the CLI in this process. Treat it as read-only: use `store_copy` to write.
    """
    root = tmp_path_factory.mktemp("trained") / "store"
    encoder = cli(root, "pretrain", DIGITS, *FAST_PRETRAIN).ok().id
    probe = cli(root, "probe", encoder, *FAST_PROBE).ok().id
    from clt.store import Store

    dataset = Store(root).get(encoder).inputs["dataset"]
    return Trained(root, dataset, encoder, probe)


@pytest.fixture
def store_copy(trained: Trained, tmp_path: Path) -> Trained:
    """A private copy of the trained store, safe to write to and to damage."""
    root = tmp_path / "store"
    shutil.copytree(trained.root, root)
    return Trained(root, trained.dataset, trained.encoder, trained.probe)
