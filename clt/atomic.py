"""Files that appear whole or not at all: written under a temporary name beside their place, then
renamed over it (a rename within one folder is atomic), so a killed run leaves no half file."""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

from clt.errors import writing


@contextmanager
def written_aside(path: Path, option: str | None = None) -> Iterator[Path]:
    """A temporary path beside `path`, with the same suffix (writers such as savefig and np.save go
    by it); renamed over `path` when the block ends without error, removed when it fails.

    `option` names the flag that chose `path` (e.g. "--out"): a failure to write there (full, read-only,
    under a file) is then a WriteError naming `path` and the fix. Without it (files inside the store)
    the store says which fix applies.

    Example: with written_aside(Path("grid.png"), "--grid") as tmp: plt.savefig(tmp)
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.partial{path.suffix}")
    with _named(path, option):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            os.replace(tmp, path)
        finally:
            with suppress(FileNotFoundError, NotADirectoryError):  # never made: the folder could not be
                tmp.unlink()


@contextmanager
def _named(path: Path, option: str | None) -> Iterator[None]:
    if option is None:
        yield
        return
    # only failures of files in its folder: a source that cannot be read is not this path's fault
    with writing(path, f"name another {option} path", within=path.parent):
        yield
