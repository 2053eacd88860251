"""New images given on the command line or to the API: files, folders, globs and tarballs.

Images are decoded and converted by the same function `clt download` uses (`decode_image`), so a
new image reaches an encoder exactly as its training images did: EXIF orientation applied,
converted to the encoder's channels and resized bilinearly to its input size.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Callable

import numpy as np

from clt.data.sources import Tree, decode_image, dir_tree, read_file, real_folders, tar_tree
from clt.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def collect_images(items: list[str | Path]) -> Tree:
    """Image files named by paths, folders (recursive), glob patterns or tarballs, by display name
    (a tarball's members as ARCHIVE:MEMBER), in a stable order.

    Example: collect_images(["photos/", "extra/*.jpg", "more.tar.gz"])
    """
    found: Tree = {}
    for item in map(str, items):
        path = Path(item)
        if path.is_dir():
            found.update({str(path / name): value for name, value in sorted(dir_tree(path).items())
                          if name.lower().endswith(IMAGE_SUFFIXES)})
        elif path.is_file() and item.lower().endswith(TAR_SUFFIXES):
            found.update({f"{item}:{name}": raw for name, raw in sorted(tar_tree(path).items())
                          if name.lower().endswith(IMAGE_SUFFIXES)})
        elif path.is_file():
            found[item] = path
        elif path.exists():
            raise _not_regular(item)
        else:
            matches = sorted(_glob(item))
            if not matches:
                raise DataError(f"'{item}' is neither a file, a folder nor a pattern that matches any file",
                                "check the path; quote glob patterns such as 'photos/*.jpg'")
            # a pattern's folders are not walked, and its broken links are not files
            found.update(collect_images([m for m in matches if Path(m).exists() and not Path(m).is_dir()]))
    return found


def _not_regular(item: str) -> DataError:
    """A FIFO, device or socket named on the command line: refused by name, as one inside a folder
    is (reading a FIFO or /dev/zero would never end, and dropping it would go unnoticed)."""
    import stat

    mode = Path(item).stat().st_mode
    kind = next((k for test, k in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                                   (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")) if test(mode)),
                "not a file")
    return DataError(f"'{item}' is not a regular file ({kind})",
                     "pass image files, folders of them, glob patterns or a .tar.gz")


def _glob(pattern: str) -> list[str]:
    """glob.glob(pattern, recursive=True), except that `**` walks each real folder once. glob follows
    linked folders without remembering them: through DIR/loop -> DIR it went on until the kernel's
    limit on links in a path, and through two such links it never ends."""
    parts = pattern.split("/")
    if "**" not in parts:
        return glob.glob(pattern)
    at = parts.index("**")
    head, rest = "/".join(parts[:at]) or ("/" if at else ""), "/".join(parts[at + 1:])
    if glob.has_magic(head):
        bases = [b for b in glob.glob(head) if Path(b).is_dir()]
    else:
        bases = [head] if head == "" or Path(head).is_dir() else []
    found: list[str] = []
    for base in bases:
        for folder in real_folders(base):
            # the folder's own name is matched literally: it may hold [, * or ?
            below = os.path.join(glob.escape(folder), rest or "*")
            found.extend(_glob(below) if "**" in rest.split("/") else glob.glob(below))
    return found


def decode_for(tree: Tree, in_shape: tuple[int, int, int],
               progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, list[str], list[str]]:
    """(uint8 (N, C, H, W) images in the encoder's shape, names decoded, names skipped as unreadable)."""
    channels, height, width = in_shape
    pixels, kept, skipped = [], [], []
    for i, (name, value) in enumerate(tree.items()):
        arr = decode_image(value if isinstance(value, bytes) else read_file(value), channels, (height, width), name)
        if arr is None:
            skipped.append(name)
        else:
            pixels.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            kept.append(name)
        if progress and (i % 256 == 0 or i == len(tree) - 1):
            progress(i + 1, len(tree))
    images = np.ascontiguousarray(np.stack(pixels)) if pixels else np.zeros((0, *in_shape), np.uint8)
    return images, kept, skipped
