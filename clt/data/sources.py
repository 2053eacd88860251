"""Where datasets come from: bundled (digits), downloaded (MNIST, Fashion-MNIST, CIFAR-10), or imported.

Everything ends up as a `DatasetArrays`: uint8 images (N, C, H, W) plus int64 labels. Imports never write
to disk: tarballs are read member by member, and pickles go through a restricted unpickler so that a
hostile file cannot run code.
"""

from __future__ import annotations

import codecs
import io
import math
import os
import pickle
import tarfile
import urllib.error
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from clt.errors import STORE_ELSEWHERE, DataError, did_you_mean, write_error, writing

Progress = Callable[[str, int, int], None]

FROM_HINT = "pass --from PATH to import a local copy (IDX folder, CIFAR-10 tarball, or image folder)"


@dataclass
class DatasetArrays:
    name: str
    train_images: np.ndarray  # uint8, (N, C, H, W)
    train_labels: np.ndarray  # int64, (N,); -1 everywhere for an unlabeled dataset
    test_images: np.ndarray  # uint8, (M, C, H, W); M may be 0
    test_labels: np.ndarray  # int64, (M,)
    classes: list[str]  # index = label; [] when unlabeled
    source: str  # human description of where the data came from
    # each row's source path relative to the folder or archive given (an image import); None where the
    # rows have no file of their own (digits, IDX, CIFAR batches): their name is their row number
    train_paths: list[str] | None = None
    test_paths: list[str] | None = None


@dataclass(frozen=True)
class SourceInfo:
    title: str
    kind: str  # "sklearn" | "idx" | "cifar"
    # The torchvision dataset class whose mirrors, file names and md5 sums we download with. Read at
    # call time (see `_remote_files`) so tests can monkeypatch the class attributes.
    torchvision_class: str | None = None


SOURCES: dict[str, SourceInfo] = {
    "digits": SourceInfo("scikit-learn digits (8x8, bundled)", "sklearn"),
    "mnist": SourceInfo("MNIST (28x28 handwritten digits)", "idx", "MNIST"),
    "fashion-mnist": SourceInfo("Fashion-MNIST (28x28 clothing)", "idx", "FashionMNIST"),
    "cifar10": SourceInfo("CIFAR-10 (32x32 colour, 10 classes)", "cifar", "CIFAR10"),
}

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
HOLDOUT_FRACTION = 0.2
HOLDOUT_SEED = 0
DIGITS_TEST_SIZE = 360
PROGRESS_EVERY = 2000
# Limits against inputs that are small on disk and huge in memory (decompression bombs): a file
# or archive member read whole, and the pixels of one decoded image.
MAX_FILE_BYTES = 256 * 2**20  # MNIST's largest file is 47 MB uncompressed, a CIFAR-10 batch 31 MB
MAX_ARCHIVE_BYTES = 8 * 2**30  # all members of one archive, held in memory while it is read
# ...and at most this many times the archive's own size once past MAX_FILE_BYTES: datasets compress
# 1-10x (MNIST's gzip 5x, CIFAR-10's 1.1x, PNGs not at all) where a bomb of zeros reaches 1000x
# (8 MB of tar.gz held 2.6 GB, each member under the one-file limit)
MAX_ARCHIVE_RATIO = 100
MAX_PIXELS = 40_000_000  # a 40-megapixel photo; PIL itself only warns below 89 million
# What an image costs to decode, convert and resize besides its pixels, in pixels of the converted
# (RGB, 4-byte) image: PIL keeps a pointer per row in each image (source and converted) and bilinear
# resizing a weight per input row and column (measured, Pillow 13: 16 bytes a row for the pointers,
# 16 a row and 16 a column for the weights). Counted against MAX_PIXELS, so that no image costs more
# than the largest square one: decoded to 28x28, a 1 x 10,000,000 RGB image took 386 MB of peak
# memory and 10,000,000 x 1 233 MB, where 3163 x 3163 (as many pixels) takes 119 MB.
ROW_COST = 8
COLUMN_COST = 4


def fetch(
    name: str,
    *,
    source: Path | None = None,
    cache_dir: Path,
    mirrors: list[str] | None = None,
    size: tuple[int, int] | None = None,
    progress: Progress | None = None,
) -> DatasetArrays:
    """Load dataset `name`: from `source` when given, else bundled or downloaded into `cache_dir`.

    `mirrors` replaces the download base URLs; `size` is (H, W) to resize images to; `progress` is called
    as progress(description, done, total) during long work.
    """
    report = progress or _no_progress
    if source is not None:
        data = import_local(name, Path(source), size=size, progress=report)
    elif name not in SOURCES:
        raise DataError(
            f"unknown dataset '{name}': {did_you_mean(name, list(SOURCES))}",
            f"use a known name, or {FROM_HINT}",
        )
    elif SOURCES[name].kind == "sklearn":
        data = _load_digits()
    else:
        data = _download(name, Path(cache_dir) / name, mirrors, report)
    if size is not None:
        _resize_dataset(data, size, report)
    return data


def _no_progress(description: str, done: int, total: int) -> None:
    pass


# ---------------------------------------------------------------- bundled


def _load_digits() -> DatasetArrays:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Pixel values are 0..16; stretch to the 0..255 range every other source uses.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_SIZE, random_state=0, stratify=labels
    )
    return DatasetArrays(
        "digits",
        images[train_idx],
        labels[train_idx],
        images[test_idx],
        labels[test_idx],
        [str(i) for i in range(10)],
        "scikit-learn digits",
    )


# ---------------------------------------------------------------- downloads


def _remote_files(name: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(mirror base URLs, [(filename, md5)]) for a downloadable dataset, from torchvision's tables."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, SOURCES[name].torchvision_class or "")
    if SOURCES[name].kind == "cifar":
        return [cls.url.rsplit("/", 1)[0] + "/"], [(cls.filename, cls.tgz_md5)]
    return list(cls.mirrors), [(filename, md5) for filename, md5 in cls.resources]


def _download(name: str, folder: Path, mirrors: list[str] | None, progress: Progress) -> DatasetArrays:
    default_mirrors, files = _remote_files(name)
    mirrors = list(mirrors) if mirrors is not None else default_mirrors
    with writing(folder, DOWNLOADS_ELSEWHERE):
        folder.mkdir(parents=True, exist_ok=True)
    origins = set()
    for i, (filename, md5) in enumerate(files):
        progress(f"downloading {filename}", i, len(files))
        origins.add(_download_file(filename, md5, mirrors, folder))
    progress("downloaded", len(files), len(files))
    origin = ", ".join(sorted(origins - {"cache"}))
    if SOURCES[name].kind == "cifar":
        data = import_local(name, folder / files[0][0], size=None, progress=progress)
    else:
        data = _import_idx(name, dir_tree(folder), folder)
    data.source = f"downloaded from {origin}" if origin else f"cached download in {folder}"
    return data


# downloads are kept in the store: writing elsewhere means another store
DOWNLOADS_ELSEWHERE = STORE_ELSEWHERE + " (downloads are kept in the store)"


def _raise_write_failure(err: Exception, folder: Path) -> None:
    """A full or read-only disk is no mirror's fault: trying the next one cannot help, say what can."""
    failure = write_error(err, folder, DOWNLOADS_ELSEWHERE) if isinstance(err, OSError) else None
    if failure is not None:
        raise failure from err


def _download_file(filename: str, md5: str, mirrors: list[str], folder: Path) -> str:
    """Ensure folder/filename exists with the right md5; return the mirror it came from or "cache"."""
    from torchvision.datasets.utils import check_integrity, download_url

    dest = folder / filename
    if check_integrity(dest, md5):
        return "cache"
    tried = []
    for base in mirrors:
        url = (base if base.endswith("/") else base + "/") + filename
        # Download under a temporary name and rename only once verified: an interrupted download
        # never leaves a half file under the real name.
        tmp = folder / f".{filename}.{os.getpid()}.part"
        try:
            tmp.unlink(missing_ok=True)
            download_url(url, str(folder), tmp.name, md5=None)
            if check_integrity(tmp, md5):
                os.replace(tmp, dest)
                return base
            tried.append(f"{url} (md5 mismatch)")
        except (OSError, urllib.error.URLError, RuntimeError, ValueError) as e:
            _raise_write_failure(e, folder)
            tried.append(f"{url} ({e})")
        finally:
            tmp.unlink(missing_ok=True)
    tried_text = "; ".join(tried) if tried else "no mirrors given"
    raise DataError(f"could not download {filename} (md5 {md5}); tried: {tried_text}", FROM_HINT)


# ---------------------------------------------------------------- local imports

# A file tree: relative POSIX path -> contents (tar members, read eagerly) or a Path (read lazily).
Tree = dict[str, bytes | Path]


def import_local(name: str, path: Path, *, size: tuple[int, int] | None, progress: Progress) -> DatasetArrays:
    """Import an IDX folder, a CIFAR-10 python tarball/folder, or an image folder/tarball."""
    if path.is_dir():
        tree = dir_tree(path)
    elif path.is_file():
        tree = tar_tree(path)
    else:
        raise DataError(f"dataset path not found: {path}", "check the path given to --from")
    whole, tree = tree, _strip_single_top(tree)
    names = {PurePosixPath(k).name for k in tree if "/" not in k}
    if all(f in names or f + ".gz" in names for f in IDX_FILES.values()):
        return _import_idx(name, tree, path)
    if "data_batch_1" in names or "test_batch" in names:
        return _import_cifar(name, tree, path)
    return _import_images(name, tree, path, size, progress, _stripped_prefix(whole, tree))


def _stripped_prefix(whole: Tree, stripped: Tree) -> str:
    """The wrapping folders _strip_single_top removed ("" or e.g. "photos/"): an image's name is its
    path from the root the user gave, not from the folder clt looked into."""
    if not whole:
        return ""
    # the stripped tree is built in the whole one's order, so their first keys are the same file
    first, inner = next(iter(whole)), next(iter(stripped))
    return first[:len(first) - len(inner)]


def _read(value: bytes | Path) -> bytes:
    return value if isinstance(value, bytes) else read_file(value)


def read_file(path: Path) -> bytes:
    """A regular file's bytes, at most MAX_FILE_BYTES (a FIFO or a link to /dev/zero never ends)."""
    import stat

    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{path} is not a regular file", "pass image files, folders of them or archives")
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise DataError(f"cannot read {path} ({err.strerror})", "check the path and its permissions") from None
    if len(raw) > MAX_FILE_BYTES:
        raise DataError(f"{path}: more than clt's limit of {MAX_FILE_BYTES:,} bytes for one file",
                        "remove the file, or split it")
    return raw


def _gunzip(raw: bytes, label: str) -> bytes:
    """gzip-decompressed bytes, refusing more than MAX_FILE_BYTES (a few KB can inflate to gigabytes)."""
    parts, size = [], 0
    while raw:  # a gzip file may hold several members, one after another (as gzip.decompress reads them)
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            part = inflater.decompress(raw, MAX_FILE_BYTES + 1 - size)
        except zlib.error as e:
            raise DataError(f"{label}: truncated or corrupt gzip file ({e})", FROM_HINT) from e
        size += len(part)
        parts.append(part)
        if size > MAX_FILE_BYTES or (inflater.unconsumed_tail and not inflater.eof):
            raise DataError(f"{label}: decompresses to more than clt's limit of {MAX_FILE_BYTES:,} bytes", FROM_HINT)
        if not inflater.eof:
            raise DataError(f"{label}: truncated or corrupt gzip file (it ends early)", FROM_HINT)
        raw = inflater.unused_data.lstrip(b"\0")  # zero padding after the last member, as gzip allows
    return b"".join(parts)


def dir_tree(root: Path) -> Tree:
    """Every visible file below `root`, by its relative POSIX name (read lazily: the values are paths).
    Linked folders are followed, each real folder once (see `real_folders`)."""
    tree: Tree = {}
    for folder in real_folders(str(root)):
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue  # unreadable: as os.walk, which this replaced, skips it
        for entry in entries:
            # Hidden entries (.DS_Store, .git, half downloads) are OS or tool debris, not data.
            if not entry.name.startswith(".") and not _is_dir(entry):
                p = Path(entry.path)
                tree[p.relative_to(root).as_posix()] = p
    return tree


def real_folders(root: str) -> list[str]:
    """`root` and every visible folder below it, links followed, each real folder (device, inode)
    once, in sorted depth-first order: a link back up (DIR/loop -> DIR) would otherwise be walked
    forever, and two links to each other grow the walk exponentially."""
    seen: set[tuple[int, int]] = set()
    found: list[str] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            info = os.stat(folder or os.curdir)
            entries = sorted(os.scandir(folder or os.curdir), key=lambda e: e.name)
        except OSError:
            continue
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        found.append(folder)
        below = [os.path.join(folder, e.name) for e in entries if not e.name.startswith(".") and _is_dir(e)]
        stack.extend(reversed(below))
    return found


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links; a dangling link is a file, refused when it is read
    except OSError:
        return False


def tar_tree(path: Path) -> Tree:
    """Read the regular members of a tarball into memory, skipping anything that could escape a folder."""
    try:
        limit = archive_limit(path.stat().st_size)
        with tarfile.open(path, "r:*") as tar:
            tree, skipped = _tar_members(tar, path, limit)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{path}: not a folder, a readable tarball, or a complete one ({e})",
            f"check the path; {FROM_HINT}",
        ) from e
    if skipped:
        warnings.warn(
            f"{path}: skipped {len(skipped)} unsafe or non-regular tar member(s): {', '.join(skipped[:5])}",
            stacklevel=3,
        )
    return tree


def archive_limit(archive_bytes: int) -> int:
    """The most bytes clt decompresses from one archive of this size (see MAX_ARCHIVE_RATIO)."""
    return min(MAX_ARCHIVE_BYTES, max(MAX_FILE_BYTES, MAX_ARCHIVE_RATIO * archive_bytes))


def _tar_members(tar: tarfile.TarFile, path: Path, limit: int) -> tuple[Tree, list[str]]:
    tree: Tree = {}
    skipped = []
    total = 0
    # next() keeps reads sequential, which matters for .gz; TarFile also keeps every member's
    # TarInfo in `members` (~1 KB each, 60 MB for CIFAR-10's 60,000 images): dropped as read
    while (member := tar.next()) is not None:
        tar.members.clear()
        parts = [p for p in PurePosixPath(member.name).parts if p != "."]
        # Links, devices, absolute names and .. could point outside the dataset: never follow them.
        safe = member.isfile() and not member.name.startswith(("/", "\\")) and ".." not in parts
        if safe and member.size > MAX_FILE_BYTES:
            raise DataError(f"{path}: tar member {member.name}: {member.size:,} bytes is over clt's limit of "
                            f"{MAX_FILE_BYTES:,} bytes for one file", "remove it from the archive")
        # every member is decompressed, whether read or skipped, and so is its header (a million
        # empty members cost as much as their bytes would)
        total += member.size + tarfile.BLOCKSIZE
        if total > limit:
            raise _archive_too_big(path, limit)
        if member.isdir():
            continue
        if not safe:
            skipped.append(member.name)
        elif not any(p.startswith(".") for p in parts):  # hidden files are debris (._AppleDouble)
            fileobj = tar.extractfile(member)
            if fileobj is not None:
                tree["/".join(parts)] = fileobj.read()
    return tree, skipped


def _archive_too_big(path: Path, limit: int) -> DataError:
    return DataError(f"{path}: decompresses to more than clt's limit of {limit:,} bytes for this archive (the "
                     f"larger of {MAX_FILE_BYTES:,} bytes and {MAX_ARCHIVE_RATIO} times its size, at most "
                     f"{MAX_ARCHIVE_BYTES:,})",
                     "extract it yourself and pass the folder (clt reads folders file by file), or split it")


def _strip_single_top(tree: Tree) -> Tree:
    """Skip a single wrapping folder (cifar10/, cifar-10-batches-py/ ...) transparently.

    train/ and test/ are never stripped: they carry the split. torchvision's MNIST/raw/ nests twice.
    """
    for _ in range(2):
        tops = {k.split("/", 1)[0] for k in tree}
        if len(tops) != 1 or not all("/" in k for k in tree) or tops & {"train", "test"}:
            break
        tree = {k.split("/", 1)[1]: v for k, v in tree.items()}
        if not all(k.startswith("raw/") for k in tree):
            break
    return tree


# ---------------------------------------------------------------- IDX (MNIST format)


def _idx_member(tree: Tree, base: str, where: Path) -> tuple[str, bytes]:
    for key in (base, base + ".gz"):
        if key in tree:
            raw = _read(tree[key])
            if key.endswith(".gz"):
                raw = _gunzip(raw, str(where / key))
            return key, raw
    raise DataError(f"{where}: missing {base} (or {base}.gz)", FROM_HINT)


def parse_idx(raw: bytes, label: str, ndim: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file, checking magic, dimensions and that the byte count matches."""
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{label}: truncated IDX file: {len(raw)} bytes, shorter than its header", FROM_HINT)
    expected_magic = 0x0800 + ndim  # 0x08 = unsigned byte, then the number of dimensions
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DataError(
            f"{label}: not an IDX file of {ndim}-D unsigned bytes (magic number 0x{magic:08x}, "
            f"expected 0x{expected_magic:08x})",
            FROM_HINT,
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    header = 4 + 4 * ndim
    expected = header + math.prod(dims)  # Python integers: dimensions near 2**32 must not wrap around
    if len(raw) != expected:
        raise DataError(
            f"{label}: truncated or corrupt IDX file: dimensions {dims} need {expected} bytes, "
            f"file has {len(raw)}",
            FROM_HINT,
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _import_idx(name: str, tree: Tree, where: Path) -> DatasetArrays:
    arrays = {}
    for role, base in IDX_FILES.items():
        key, raw = _idx_member(tree, base, where)
        arrays[role] = parse_idx(raw, str(where / key), 3 if role.endswith("images") else 1)
    for split in ("train", "test"):
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_img != n_lab:
            raise DataError(f"{where}: {split} split has {n_img} images but {n_lab} labels", FROM_HINT)
    labels = [arrays["train_labels"], arrays["test_labels"]]
    n_classes = max(int(a.max()) + 1 if a.size else 0 for a in labels)
    if name == "fashion-mnist":
        import torchvision.datasets as tvd

        classes = list(tvd.FashionMNIST.classes)
    else:
        classes = [str(i) for i in range(max(n_classes, 10 if name == "mnist" else 0))]
    return DatasetArrays(
        name,
        arrays["train_images"][:, None],
        labels[0].astype(np.int64),
        arrays["test_images"][:, None],
        labels[1].astype(np.int64),
        classes,
        f"imported from {where}",
    )


# ---------------------------------------------------------------- CIFAR-10 python batches


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles store bytes as _codecs.encode(str, "latin1"); allow nothing but that.
    if encoding not in ("latin1", "latin-1"):
        raise DataError(f"pickle asks for codec {encoding!r}", "only CIFAR-10 python batches are supported")
    return codecs.encode(text, "latin1")


def _pickle_allowlist() -> dict[tuple[str, str], object]:
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("builtins", "bytearray"): bytearray,
    }
    for package in ("numpy.core", "numpy._core"):  # old pickles name numpy.core, numpy 2 names numpy._core
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches only: any global other than numpy array rebuilding is refused."""

    def __init__(self, file: io.BytesIO, label: str):
        super().__init__(file, encoding="latin1")  # the batches were written by Python 2
        self.label = label
        self.allowed = _pickle_allowlist()

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.allowed:
            raise DataError(
                f"{self.label}: refusing to unpickle {module}.{name}: not a CIFAR-10 batch (the file may be "
                "malicious)",
                "import only the official cifar-10-python.tar.gz, or an image folder",
            )
        return self.allowed[(module, name)]


def _unpickle(raw: bytes, label: str) -> dict[str, object]:
    try:
        obj = _CifarUnpickler(io.BytesIO(raw), label).load()
    except DataError:
        raise
    except Exception as e:  # a corrupt pickle can fail in many ways; all mean the same to the user
        raise DataError(f"{label}: corrupt CIFAR-10 batch ({type(e).__name__}: {e})", FROM_HINT) from e
    if not isinstance(obj, dict):
        raise DataError(f"{label}: not a CIFAR-10 batch (holds {type(obj).__name__}, not a dict)", FROM_HINT)
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _cifar_batch(tree: Tree, key: str, where: Path) -> tuple[np.ndarray, np.ndarray]:
    if key not in tree:
        raise DataError(f"{where}: missing CIFAR-10 batch {key}", "the tarball or folder is incomplete")
    label = f"{where}:{key}"
    batch = _unpickle(_read(tree[key]), label)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{label}: 'data' is not an (N, 3072) uint8 array", FROM_HINT)
    try:
        labels = np.asarray(labels) if labels is not None else None
    except (ValueError, TypeError, OverflowError):
        labels = None
    if labels is None or labels.shape != (len(data),):
        raise DataError(f"{label}: 'labels' missing or not one per image", FROM_HINT)
    if labels.size and labels.dtype.kind not in "iu":
        raise DataError(f"{label}: 'labels' are not integers (they are {labels.dtype})", FROM_HINT)
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > 2**31):
        raise DataError(f"{label}: 'labels' outside 0..2**31", FROM_HINT)
    labels = labels.astype(np.int64)
    return data.reshape(-1, 3, 32, 32), labels


def _import_cifar(name: str, tree: Tree, where: Path) -> DatasetArrays:
    train = [_cifar_batch(tree, key, where) for key in CIFAR_BATCHES]
    test_images, test_labels = _cifar_batch(tree, "test_batch", where)
    classes = CIFAR10_CLASSES
    if "batches.meta" in tree:
        names = _unpickle(_read(tree["batches.meta"]), f"{where}:batches.meta").get("label_names")
        if isinstance(names, list) and names:
            classes = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]
    train_labels = np.concatenate([lab for _, lab in train])
    for labels in (train_labels, test_labels):
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DataError(f"{where}: labels outside 0..{len(classes) - 1}", FROM_HINT)
    return DatasetArrays(
        name,
        np.concatenate([img for img, _ in train]),
        train_labels,
        test_images,
        test_labels,
        classes,
        f"imported from {where}",
    )


# ---------------------------------------------------------------- image folders

GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def _import_images(
    name: str, tree: Tree, where: Path, size: tuple[int, int] | None, progress: Progress, prefix: str = ""
) -> DatasetArrays:
    splits, labeled, stray = _layout(tree)
    if stray:
        warnings.warn(
            f"{where}: skipped {len(stray)} file(s) outside the image layout: {', '.join(stray[:5])}",
            stacklevel=3,
        )
    keys = [k for items in splits.values() for _, k in items]
    modes: dict[str, int] = {}
    images, decoded_keys = _decode_all(tree, keys, where, size, progress, modes)
    index = {k: i for i, k in enumerate(decoded_keys)}
    # A class is a folder that holds at least one decodable image, in either split.
    folders = sorted({cls for items in splits.values() for cls, k in items if k in index}) if labeled else []
    names = _printable_names(folders, where)
    classes = [names[f] for f in folders]
    class_id = {c: i for i, c in enumerate(folders)}

    def arrays(items: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        kept = [(cls, k) for cls, k in items if k in index]
        idx = np.array([index[k] for _, k in kept], dtype=np.int64)
        labels = np.array([class_id[c] if labeled else -1 for c, _ in kept], dtype=np.int64)
        paths = [prefix + k for _, k in kept]
        if len(idx) and (idx == np.arange(idx[0], idx[0] + len(idx))).all():
            return images[idx[0]:idx[0] + len(idx)], labels, paths  # a split decoded in order: a view, no copy
        return images[idx], labels, paths

    if "all" in splits:
        all_images, all_labels, all_paths = arrays(splits["all"])
        test_mask = _holdout_mask(all_labels)
        train_images, train_labels = all_images[~test_mask], all_labels[~test_mask]
        test_images, test_labels = all_images[test_mask], all_labels[test_mask]
        train_paths = [p for p, held in zip(all_paths, test_mask) if not held]
        test_paths = [p for p, held in zip(all_paths, test_mask) if held]
    else:
        train_images, train_labels, train_paths = arrays(splits.get("train", []))
        test_images, test_labels, test_paths = arrays(splits.get("test", []))
    converted = ", ".join(f"{count} from {mode}" for mode, count in sorted(modes.items()))
    source = f"imported from {where}" + (f"; images converted: {converted}" if converted else "")
    return DatasetArrays(name, train_images, train_labels, test_images, test_labels, classes, source,
                         train_paths, test_paths)


def _printable_names(folders: list[str], where: Path) -> dict[str, str]:
    """Class names from folder names; bytes that are not UTF-8 (kept by Python as surrogates, which
    JSON and fonts cannot show) become U+FFFD, with a suffix where two names would then collide."""
    names: dict[str, str] = {}
    for folder in folders:
        shown = folder.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        base, n = shown, 2
        while shown in names.values():
            shown, n = f"{base}-{n}", n + 1
        names[folder] = shown
    changed = [f"{v!r}" for k, v in names.items() if k != v]
    if changed:
        warnings.warn(f"{where}: class folder names that are not UTF-8 were shown as {', '.join(changed[:5])}",
                      stacklevel=4)
    return names


def _layout(tree: Tree) -> tuple[dict[str, list[tuple[str, str]]], bool, list[str]]:
    """Sort files into splits of (class, key), sorted by class then path.

    Layouts: train|test/<class>/<img>, <class>/<img> (split "all": hold out a test set later), or
    <img> (unlabeled). Returns (splits, labeled, stray files that fit none of these).
    """
    keys = sorted(tree)
    if any(k.startswith(("train/", "test/")) for k in keys):
        groups = {s: [k.split("/", 1)[1] for k in keys if k.startswith(s + "/")] for s in ("train", "test")}
        stray = [k for k in keys if not k.startswith(("train/", "test/"))]
    else:
        groups, stray = {"all": keys}, []
    labeled = any("/" in k for members in groups.values() for k in members)
    splits: dict[str, list[tuple[str, str]]] = {}
    for split, members in groups.items():
        prefix = "" if split == "all" else split + "/"
        items = []
        for k in members:
            if labeled and "/" not in k:
                stray.append(prefix + k)  # a loose file next to class folders has no class
            else:
                items.append((k.split("/", 1)[0] if labeled else "", prefix + k))
        splits[split] = sorted(items)
    if not labeled and "all" in splits:
        splits = {"train": splits["all"]}  # unlabeled: everything is training data
    return splits, labeled, sorted(stray)


def _holdout_mask(labels: np.ndarray) -> np.ndarray:
    """Seeded, stratified: HOLDOUT_FRACTION of each class (rounded) goes to test."""
    rng = np.random.default_rng(HOLDOUT_SEED)
    mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n_test = round(len(members) * HOLDOUT_FRACTION)
        mask[rng.permutation(members)[:n_test]] = True
    return mask


def _decode_all(
    tree: Tree, keys: list[str], where: Path, size: tuple[int, int] | None, progress: Progress,
    modes: dict[str, int] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Decode images to (N, C, H, W) uint8; skip what PIL cannot read; enforce one size unless `size`.

    Pixels go straight into one array sized for every key (trimmed to the images read), so an
    import's memory is its output plus a constant, not a list of images and then their stack."""
    out: np.ndarray | None = None
    decoded: list[str] = []
    bad: list[str] = []
    for i, key in enumerate(keys):
        if i % PROGRESS_EVERY == 0:
            progress("decoding images", i, len(keys))
        # grayscale stays L and everything else becomes RGB; L is widened once if any is RGB
        arr = decode_image(_read(tree[key]), size=size, name=f"{where}:{key}", modes=modes)
        if arr is None:
            bad.append(key)
            continue
        if out is None:
            out = _allocate(len(keys), 1 if arr.ndim == 2 else 3, arr.shape[:2], where, key, size)
            first = key
        elif arr.shape[:2] != out.shape[2:]:
            raise DataError(
                f"{where}: images differ in size: {first} is {out.shape[2]}x{out.shape[3]}, "
                f"{key} is {arr.shape[0]}x{arr.shape[1]} (HxW)",
                "pass --size HxW to resize every image to one size",
            )
        if arr.ndim == 3 and out.shape[1] == 1:
            out = np.repeat(out, 3, axis=1)  # broadcasting L to RGB is exactly PIL's convert
        out[len(decoded)] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (1, H, W) broadcasts to RGB
        decoded.append(key)
    progress("decoding images", len(keys), len(keys))
    if bad:
        warnings.warn(
            f"{where}: skipped {len(bad)} file(s) that are not readable images: {', '.join(bad[:5])}",
            stacklevel=4,
        )
    if out is None:
        raise DataError(f"{where}: no images found", f"{FROM_HINT}; images go in ROOT/<class>/ or ROOT/")
    return out[:len(decoded)], decoded


def _allocate(count: int, channels: int, shape: tuple[int, int], where: Path, key: str,
              size: tuple[int, int] | None) -> np.ndarray:
    """The array every image of an import is decoded into; one too large for memory is refused
    with the fix (large photos of mixed sizes, most often)."""
    try:
        return np.empty((count, channels, *shape), dtype=np.uint8)
    except MemoryError:
        need = count * channels * shape[0] * shape[1]
        raise DataError(f"{where}: {count:,} images the size of {key} ({shape[0]}x{shape[1]}) need "
                        f"{need / 2**30:.1f} GiB", "pass --size HxW to resize every image to a smaller size"
                        if size is None else "pass a smaller --size") from None


def decode_image(raw: bytes, channels: int | None = None, size: tuple[int, int] | None = None,
                 name: str = "image", modes: dict[str, int] | None = None) -> np.ndarray | None:
    """An encoded image file's pixels as image_array gives them, or None when PIL cannot read it.
    Refused, naming `name`: more than MAX_PIXELS pixels, or a mode whose values cannot be mapped to
    8 bits. `modes` counts the images converted from modes other than L and RGB."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # PIL only warns between its limit and twice it; clt refuses past its own, lower limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(raw))
        with opened as im:
            _check_budget(im.width, im.height, name)
            if modes is not None and im.mode not in ("L", "RGB"):
                modes[im.mode] = modes.get(im.mode, 0) + 1
            return image_array(im, channels, size, name)
    except Image.DecompressionBombError:
        raise DataError(f"{name}: over PIL's decompression-bomb limit (far over clt's {MAX_PIXELS:,} pixels per "
                        "image)", "downscale or remove it") from None
    except (OSError, SyntaxError, ValueError):
        return None


def _check_budget(width: int, height: int, name: str) -> None:
    """Refuse, before decoding, an image over MAX_PIXELS, counting what its rows and columns cost
    beyond those of a square image (see ROW_COST)."""
    pixels = width * height
    if pixels > MAX_PIXELS:
        raise DataError(f"{name}: {width}x{height} = {pixels:,} pixels is over clt's limit of {MAX_PIXELS:,} "
                        "pixels per image", "downscale or remove it")
    # only what the shape costs beyond a square image of as many pixels: squares count as before
    side = math.isqrt(pixels)
    counted = pixels + max(0, ROW_COST * (height - side) + COLUMN_COST * (width - side))
    if counted > MAX_PIXELS:
        raise DataError(f"{name}: {width}x{height} is {pixels:,} pixels, but an image this thin costs as much "
                        f"to decode and resize as {counted:,} (each row and column costs {ROW_COST} and "
                        f"{COLUMN_COST} pixels' worth), over clt's limit of {MAX_PIXELS:,}",
                        "crop it, or split it into pieces closer to square")


def image_array(im, channels: int | None = None, size: tuple[int, int] | None = None,
                name: str = "image") -> np.ndarray:
    """One PIL image as clt stores images: uint8 (H, W) for L or (H, W, 3) for RGB, resized
    bilinearly to `size` (H, W) when given. `channels` 1 or 3 forces L or RGB; None keeps
    grayscale modes as L and turns every other mode into RGB. 16-bit and 32-bit integer images are
    read as 0-65535 and float images as 0-1 (PIL's own convert clips them). Shared by `clt download` and
    `Encoder.embed`, so an image reaches an encoder exactly as its training images did.

    Example: image_array(Image.new("RGB", (40, 30)), channels=1, size=(28, 28)).shape == (28, 28)
    """
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im)  # a phone photo's pixels are stored sideways; EXIF says how to turn them
    if im.mode in WIDE_MODES:
        im = Image.fromarray(_to_eight_bits(np.asarray(im), im.mode, name), "L")
    if channels is None:
        mode = "L" if im.mode in GRAYSCALE_MODES else "RGB"
    else:
        mode = "L" if channels == 1 else "RGB"
    im = im.convert(mode)
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(im)


WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _to_eight_bits(values: np.ndarray, mode: str, name: str) -> np.ndarray:
    """Wide grayscale values mapped to 0-255 by their mode's range: 16- and 32-bit integers are read
    as 0-65535, floats as 0-1. Values outside it are refused by name."""
    values = values.astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    # one scale per mode, never per image: a dataset's brightness must not depend on each image's maximum
    top = 1.0 if mode == "F" else 65535.0
    if not np.isfinite(values).all() or low < 0 or high > top:
        raise DataError(f"{name}: a {mode} image with values {low:g}..{high:g} has no 8-bit reading (clt reads "
                        f"{mode} as 0..{top:g})", "convert it to 8-bit grayscale or RGB first")
    return np.clip(np.rint(values * (255 / top)), 0, 255).astype(np.uint8)


def _resize_dataset(data: DatasetArrays, size: tuple[int, int], progress: Progress) -> None:
    """Resize array datasets (digits, IDX, CIFAR) whose native size differs from `size`."""
    for split in ("train", "test"):
        images = getattr(data, f"{split}_images")
        if images.shape[2:] != tuple(size) and len(images):
            setattr(data, f"{split}_images", _resize_images(images, size, progress))


def _resize_images(images: np.ndarray, size: tuple[int, int], progress: Progress) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(images), images.shape[1], size[0], size[1]), dtype=np.uint8)
    for i, img in enumerate(images):
        if i % PROGRESS_EVERY == 0:
            progress("resizing images", i, len(images))
        planes = [Image.fromarray(c).resize((size[1], size[0]), Image.BILINEAR) for c in img]
        out[i] = np.stack([np.asarray(p) for p in planes])
    return out
