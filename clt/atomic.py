"""Files that appear whole or not at all: written under a temporary name beside their place, then
renamed over it (a rename within one folder is atomic), so a killed run leaves no half file."""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def written_aside(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`, with the same suffix (writers such as savefig and np.save go
    by it); renamed over `path` when the block ends without error, removed when it fails.

    Example: with written_aside(Path("grid.png")) as tmp: plt.savefig(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.partial{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
