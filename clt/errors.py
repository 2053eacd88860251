"""The errors a user sees. Each names the bad input and says how to fix it.

Utilities import nothing local, so every module may raise these.
"""

from __future__ import annotations

import errno
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class CltError(Exception):
    """A failure the user can fix: printed as one short message, no traceback."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  fix: {self.hint}"


class RecipeError(CltError):
    """A recipe file or override is malformed, has an unknown key, a wrong type or a bad value."""


class StoreError(CltError):
    """An artifact is missing, ambiguous, or fails verification."""


class DataError(CltError):
    """A dataset is missing, or a file given to import it is corrupt or unsupported."""


class TrainingError(CltError):
    """Training diverged (NaN/inf loss) or cannot proceed."""


class DivergenceError(TrainingError):
    """The loss turned NaN or infinite: a result of the run, where the other TrainingErrors are set-up faults."""


class WriteError(CltError):
    """A file could not be written: no space left, a read-only or forbidden place, a rename across
    file systems, or a folder in the path that is a regular file. Names the path and the fix."""


# what writing elsewhere means, for the hints of WriteError
STORE_ELSEWHERE = "point --artifacts / $CLT_ARTIFACTS elsewhere"

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_READ_ONLY = {errno.EROFS}
_FORBIDDEN = {errno.EACCES, errno.EPERM}  # also said by sockets: only counted for a file named inside `place`


def write_error(err: BaseException, place: str | Path | None = None, elsewhere: str = "write somewhere else",
                within: str | Path | None = None) -> WriteError | None:
    """The WriteError that `err`, raised while writing under `place`, stands for; None when it is
    no write failure of a file there (then it is a bug, or another error, and is left alone).

    `place` is what the message names and the fix treats (the store, an --out file; default: the
    file of `err`); `elsewhere` ends the fix ("name another --out path"); `within` is the folder
    whose files count (default: `place`).

    Example: write_error(OSError(errno.ENOSPC, "No space left on device"), store_root, STORE_ELSEWHERE)
    """
    err = _os_error(err)
    if err is None:
        return None
    files = [f for f in (err.filename, getattr(err, "filename2", None)) if f is not None]
    cleaned = place is not None  # the writers that name their place remove what they began
    place = place if place is not None else (files[0] if files else None)
    if place is None or err.errno not in _NO_SPACE | _READ_ONLY | _FORBIDDEN | {errno.EXDEV, errno.ENOTDIR}:
        return None
    folder = Path(os.fsdecode(within if within is not None else place))
    if files and not any(_inside(os.fsdecode(f), os.path.abspath(folder)) for f in files):
        return None  # e.g. an input that cannot be read: not this place's failure
    if not files and err.errno in _FORBIDDEN:
        return None
    failure = _described(err.errno, Path(os.fsdecode(place)), folder, [os.fsdecode(f) for f in files], elsewhere)
    if cleaned and err.errno in _NO_SPACE:
        failure.message += "; nothing half-written was kept"
    return failure


def _os_error(err: BaseException) -> OSError | None:
    """`err` as an OSError: itself, or the error of a native writer that quotes the system's, as
    safetensors does on a full disk ("I/O error: No space left on device (os error 28)").
    A short write that numpy reports without an errno ("5120 requested and 3040 written") is a full disk."""
    if isinstance(err, OSError):
        short = err.errno is None and re.fullmatch(r"\d+ requested and \d+ written", str(err))
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) if short else err
    if isinstance(err, CltError):
        return None
    found = re.search(r"\(os error (\d+)\)", str(err)[-200:])
    return OSError(int(found.group(1)), os.strerror(int(found.group(1)))) if found else None


def _inside(path: str, scope: str) -> bool:
    """`path` is in `scope`, or is a folder above it (creating the folders of `scope` failed there)."""
    path = os.path.abspath(path)
    return os.path.commonpath([path, scope]) in (scope, path)


def _described(code: int, place: Path, folder: Path, files: list[str], elsewhere: str) -> WriteError:
    """The message for a failure writing `place` (a file or folder) in `folder`, and its fix."""
    what = f" (writing {files[0]})" if files and files[0] != str(place) else ""
    if code in _NO_SPACE:
        quota = " (the disk quota is used up)" if code == errno.EDQUOT else ""
        return WriteError(f"no space left on the file system of {place}{quota}{what}",
                          f"free space on the file system of {folder} or {elsewhere}, then run the command again")
    if code == errno.EXDEV:
        moved = f"{files[0]} cannot be moved to {files[1]}" if len(files) == 2 else f"a rename in {place} failed"
        return WriteError(f"{moved}: they are on different file systems",
                          f"keep objects/ and tmp/ of {place} on one file system (do not mount or link either "
                          f"elsewhere), or {elsewhere}")
    if code == errno.ENOTDIR:
        blocker = _file_in_the_way(Path(files[0]) if files else place)
        return WriteError(f"{place} cannot be written: {blocker} is a file, not a folder",
                          f"move the file {blocker} away, or {elsewhere}")
    cause = "is on a read-only file system" if code in _READ_ONLY else "is not writable (permission denied)"
    return WriteError(f"{place} {cause}{what}",
                      f"make {folder} writable (its permissions, or mount it read-write) or {elsewhere}")


def _file_in_the_way(path: Path) -> Path:
    """The nearest of `path` and the folders above it that exists but is no folder."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate if not candidate.is_dir() else path
    return path


@contextmanager
def writing(place: str | Path, elsewhere: str, within: str | Path | None = None) -> Iterator[None]:
    """Turn a write failure under `place` in the block into a WriteError (see write_error).

    Example: with writing(store_root, STORE_ELSEWHERE): write_files(...)
    """
    try:
        yield
    except Exception as err:  # an OSError, or a native writer's error quoting one
        failure = write_error(err, place, elsewhere, within)
        if failure is None:
            raise
        raise failure from err


# what a Ctrl-C prints, at any moment (the console script prints it even while the CLI loads)
INTERRUPTED = ("interrupted: finished artifacts are intact and nothing half-written was kept; "
               "run the same command again to continue")


def did_you_mean(word: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    """A ' did you mean X?' suffix, or a list of valid choices when nothing is close."""
    import difflib

    choices = sorted(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    if close:
        return f"did you mean '{close[0]}'? (valid: {', '.join(choices)})"
    return f"valid: {', '.join(choices)}"
