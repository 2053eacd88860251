"""New images given on the command line or to the API: files, folders, globs and tarballs.

Images are decoded and converted by the same function `clt download` uses (`decode_image`), so a
new image reaches an encoder exactly as its training images did: EXIF orientation applied,
converted to the encoder's channels and resized bilinearly to its input size.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Callable

import numpy as np

from clt.data.sources import Tree, decode_image, dir_tree, read_file, tar_tree
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
        else:
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise DataError(f"'{item}' is neither a file, a folder nor a pattern that matches any file",
                                "check the path; quote glob patterns such as 'photos/*.jpg'")
            found.update(collect_images([m for m in matches if Path(m).is_file()]))
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
