"""Reading the store's own small files (key, manifests, refs, checkpoints) with a bound.

Anyone who can write to a store can replace one of its files by a link to /dev/zero, a FIFO or
a huge file; read whole, that would hang or exhaust memory. These readers open without
blocking, refuse anything but a regular file, and never read more than a stated limit.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from clt.errors import StoreError

KIB = 1024
MIB = 1024 * KIB


def _open_regular(path: Path, what: str) -> int:
    """A descriptor of `path`, which must be a regular file (O_NONBLOCK: opening a FIFO never waits)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StoreError(f"{what} '{path}' is not a regular file (a link to a device, a FIFO or a folder?)",
                         "remove it: clt writes only regular files there, and rewrites it on its next run")
    return fd


def _too_large(path: Path, what: str, limit: int) -> StoreError:
    return StoreError(f"{what} '{path}' is larger than {_size(limit)}, the most clt ever writes there",
                      "remove it: clt writes only small files there, and rewrites it on its next run")


def read_regular(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; OSError (e.g. FileNotFoundError) as is."""
    fd = _open_regular(path, what)
    try:
        if os.fstat(fd).st_size > limit:
            raise _too_large(path, what, limit)
        chunks, total = [], 0
        while total <= limit:  # the size can change after fstat: stop one byte past the limit
            chunk = os.read(fd, min(1 * MIB, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise _too_large(path, what, limit)
        return b"".join(chunks)
    finally:
        os.close(fd)


def sha256_regular(path: Path, what: str) -> str:
    """The sha256 of a regular file, read in chunks (a device is refused, never hashed forever)."""
    digest = hashlib.sha256()
    fd = _open_regular(path, what)
    try:
        while chunk := os.read(fd, 1 * MIB):
            digest.update(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()


def _size(limit: int) -> str:
    return f"{limit // MIB} MiB" if limit >= MIB else f"{limit // KIB} KiB" if limit >= KIB else f"{limit} bytes"
