"""Dataset sources: bundled digits, IDX and CIFAR imports, downloads from a local server, image folders."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets as tvd
from conftest import serve_folder
from PIL import Image

from clt.data.sources import IDX_FILES, SOURCES, fetch
from clt.errors import DataError

# ---------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_idx(rng: np.random.Generator, n_train: int = 12, n_test: int = 5) -> dict[str, np.ndarray]:
    return {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_idx(folder: Path, arrays: dict[str, np.ndarray], gz: bool) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role, base in IDX_FILES.items():
        raw = idx_bytes(arrays[role])
        path = folder / (base + ".gz" if gz else base)
        path.write_bytes(gzip.compress(raw) if gz else raw)
        paths[role] = path
    return paths


def png(color: int | tuple[int, int, int], size: tuple[int, int] = (4, 4), mode: str = "RGB") -> bytes:
    """A solid PNG; size is (W, H) as PIL takes it."""
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            add_member(tar, name, data)
    return path


def cifar_batch(rng: np.random.Generator, n: int, protocol: int) -> tuple[bytes, np.ndarray, list[int]]:
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(x) for x in rng.integers(0, 10, n)]
    batch = {b"batch_label": b"batch", b"labels": labels, b"data": data, b"filenames": [b"x.png"] * n}
    return pickle.dumps(batch, protocol=protocol), data, labels


def make_cifar_files(rng: np.random.Generator, protocol: int = 2) -> tuple[dict[str, bytes], dict]:
    files, expect = {}, {"train_data": [], "train_labels": []}
    for i in range(1, 6):
        raw, data, labels = cifar_batch(rng, 3, protocol)
        files[f"cifar-10-batches-py/data_batch_{i}"] = raw
        expect["train_data"].append(data)
        expect["train_labels"] += labels
    raw, expect["test_data"], expect["test_labels"] = cifar_batch(rng, 4, protocol)
    files["cifar-10-batches-py/test_batch"] = raw
    names = [f"class{i}".encode() for i in range(10)]
    files["cifar-10-batches-py/batches.meta"] = pickle.dumps({b"label_names": names}, protocol=protocol)
    return files, expect


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, folder it serves) for an HTTP server on 127.0.0.1."""
    root = tmp_path / "www"
    root.mkdir()
    with serve_folder(root) as url:
        yield url, root


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# ---------------------------------------------------------------- digits and names


def test_digits_shapes_dtype_and_stratified_split(tmp_path: Path) -> None:
    d = fetch("digits", cache_dir=tmp_path)
    assert d.train_images.shape == (1797 - 360, 1, 8, 8) and d.test_images.shape == (360, 1, 8, 8)
    assert d.train_images.dtype == np.uint8 and d.train_labels.dtype == np.int64
    assert d.train_images.max() == 255 and d.train_images.min() == 0
    assert d.classes == [str(i) for i in range(10)]
    assert np.bincount(d.test_labels).min() >= 35  # stratified: ~36 of each digit
    again = fetch("digits", cache_dir=tmp_path)
    assert np.array_equal(again.test_images, d.test_images)
    assert np.array_equal(again.train_labels, d.train_labels)
    assert not any(tmp_path.iterdir())  # bundled: nothing cached


def test_sources_registry_names() -> None:
    assert set(SOURCES) == {"digits", "mnist", "fashion-mnist", "cifar10"}


def test_unknown_name_without_source_suggests(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="mnsit") as err:
        fetch("mnsit", cache_dir=tmp_path)
    assert "did you mean 'mnist'" in err.value.message
    assert "--from" in (err.value.hint or "")


def test_missing_source_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope"):
        fetch("mnist", source=tmp_path / "nope", cache_dir=tmp_path)


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path: Path, rng: np.random.Generator, gz: bool) -> None:
    arrays = make_idx(rng)
    write_idx(tmp_path / "idx", arrays, gz)
    d = fetch("mnist", source=tmp_path / "idx", cache_dir=tmp_path / "cache")
    assert d.train_images.shape == (12, 1, 28, 28) and d.test_images.shape == (5, 1, 28, 28)
    assert np.array_equal(d.train_images[:, 0], arrays["train_images"])
    assert np.array_equal(d.test_labels, arrays["test_labels"].astype(np.int64))
    assert d.train_labels.dtype == np.int64 and d.train_images.dtype == np.uint8
    assert d.classes == [str(i) for i in range(10)]
    assert str(tmp_path / "idx") in d.source
    assert not (tmp_path / "cache").exists()  # an import writes nothing


def test_idx_fashion_class_names_and_wrapping_folder(tmp_path: Path, rng: np.random.Generator) -> None:
    write_idx(tmp_path / "FashionMNIST" / "raw", make_idx(rng), gz=True)  # torchvision's own layout
    d = fetch("fashion-mnist", source=tmp_path / "FashionMNIST", cache_dir=tmp_path)
    assert d.classes == list(tvd.FashionMNIST.classes)


def test_idx_truncated_names_file_and_sizes(tmp_path: Path, rng: np.random.Generator) -> None:
    paths = write_idx(tmp_path, make_idx(rng), gz=False)
    raw = paths["train_images"].read_bytes()
    paths["train_images"].write_bytes(raw[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte") as err:
        fetch("mnist", source=tmp_path, cache_dir=tmp_path)
    assert str(len(raw)) in err.value.message and str(len(raw) - 100) in err.value.message


def test_idx_trailing_bytes_rejected(tmp_path: Path, rng: np.random.Generator) -> None:
    paths = write_idx(tmp_path, make_idx(rng), gz=False)
    paths["train_labels"].write_bytes(paths["train_labels"].read_bytes() + b"\0\0")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.*need 20 bytes, file has 22"):
        fetch("mnist", source=tmp_path, cache_dir=tmp_path)


def test_idx_truncated_gzip_names_file(tmp_path: Path, rng: np.random.Generator) -> None:
    paths = write_idx(tmp_path, make_idx(rng), gz=True)
    paths["test_labels"].write_bytes(paths["test_labels"].read_bytes()[:20])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        fetch("mnist", source=tmp_path, cache_dir=tmp_path)


def test_idx_bad_magic_names_file(tmp_path: Path, rng: np.random.Generator) -> None:
    paths = write_idx(tmp_path, make_idx(rng), gz=False)
    raw = bytearray(paths["test_images"].read_bytes())
    raw[3] = 0x01  # claims 1-D
    paths["test_images"].write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.*magic"):
        fetch("mnist", source=tmp_path, cache_dir=tmp_path)


def test_idx_image_label_count_mismatch(tmp_path: Path, rng: np.random.Generator) -> None:
    arrays = make_idx(rng)
    arrays["train_labels"] = arrays["train_labels"][:-1]
    write_idx(tmp_path, arrays, gz=False)
    with pytest.raises(DataError, match="12 images but 11 labels"):
        fetch("mnist", source=tmp_path, cache_dir=tmp_path)


# ---------------------------------------------------------------- downloads


def serve_idx(folder: Path, arrays: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    """Write the gzipped IDX files into a served folder; return torchvision-style (filename, md5)."""
    paths = write_idx(folder, arrays, gz=True)
    return [(paths[role].name, md5(paths[role])) for role in IDX_FILES]


def test_download_mnist_from_local_server(
    server: tuple[str, Path], tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, www = server
    arrays = make_idx(rng)
    monkeypatch.setattr(tvd.MNIST, "resources", serve_idx(www / "good", arrays))
    calls: list[tuple[str, int, int]] = []
    cache = tmp_path / "cache"
    d = fetch("mnist", cache_dir=cache, mirrors=[url + "/good/"], progress=lambda *a: calls.append(a))
    assert np.array_equal(d.train_images[:, 0], arrays["train_images"])
    assert np.array_equal(d.test_labels, arrays["test_labels"])
    assert d.source == f"downloaded from {url}/good/"
    assert any(c[0].startswith("downloading") for c in calls)
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(
        f + ".gz" for f in IDX_FILES.values()
    )
    # A second fetch uses the verified cache and never touches the (now dead) mirror.
    again = fetch("mnist", cache_dir=cache, mirrors=["http://127.0.0.1:9/"])
    assert again.source.startswith("cached download") and np.array_equal(again.train_images, d.train_images)


def test_download_bad_checksum_falls_through_to_next_mirror(
    server: tuple[str, Path], tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, www = server
    arrays = make_idx(rng)
    monkeypatch.setattr(tvd.MNIST, "resources", serve_idx(www / "good", arrays))
    serve_idx(www / "bad", make_idx(np.random.default_rng(99)))  # same names, other bytes
    d = fetch("mnist", cache_dir=tmp_path, mirrors=[url + "/bad/", url + "/missing/", url + "/good/"])
    assert np.array_equal(d.train_images[:, 0], arrays["train_images"])
    assert d.source == f"downloaded from {url}/good/"


def test_download_all_mirrors_bad_leaves_no_file(
    server: tuple[str, Path], tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, www = server
    monkeypatch.setattr(tvd.MNIST, "resources", serve_idx(www / "good", make_idx(rng)))
    serve_idx(www / "bad", make_idx(np.random.default_rng(99)))
    with pytest.raises(DataError) as err:
        fetch("mnist", cache_dir=tmp_path, mirrors=[url + "/bad/", url + "/missing"])
    message = err.value.message
    assert "train-images-idx3-ubyte.gz" in message and "md5 mismatch" in message
    assert f"{url}/bad/" in message and f"{url}/missing/" in message
    assert "--from" in (err.value.hint or "")
    assert list((tmp_path / "mnist").iterdir()) == []  # no half or unverified file is left behind


def test_download_cifar10_from_local_server(
    server: tuple[str, Path], tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, www = server
    files, expect = make_cifar_files(rng)
    tarball = make_tar(www / "cifar-10-python.tar.gz", files)
    monkeypatch.setattr(tvd.CIFAR10, "tgz_md5", md5(tarball))
    d = fetch("cifar10", cache_dir=tmp_path, mirrors=[url])
    assert d.train_images.shape == (15, 3, 32, 32)
    assert (tmp_path / "cifar10" / "cifar-10-python.tar.gz").is_file()
    assert d.test_labels.tolist() == expect["test_labels"]


# ---------------------------------------------------------------- CIFAR python batches


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_tarball_imports(tmp_path: Path, rng: np.random.Generator, protocol: int) -> None:
    files, expect = make_cifar_files(rng, protocol)
    d = fetch("cifar10", source=make_tar(tmp_path / "c.tar.gz", files), cache_dir=tmp_path)
    assert d.train_images.shape == (15, 3, 32, 32) and d.test_images.shape == (4, 3, 32, 32)
    assert np.array_equal(d.train_images.reshape(15, 3072), np.concatenate(expect["train_data"]))
    assert d.train_labels.tolist() == expect["train_labels"] and d.train_labels.dtype == np.int64
    assert np.array_equal(d.test_images.reshape(4, 3072), expect["test_data"])
    assert d.classes == [f"class{i}" for i in range(10)]


def test_cifar_extracted_folder_imports(tmp_path: Path, rng: np.random.Generator) -> None:
    files, expect = make_cifar_files(rng)
    write_files(tmp_path / "x", files)
    d = fetch("cifar10", source=tmp_path / "x" / "cifar-10-batches-py", cache_dir=tmp_path)
    assert d.test_labels.tolist() == expect["test_labels"]


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("member", ["test_batch", "batches.meta"])
def test_malicious_cifar_pickle_is_refused_without_running(
    tmp_path: Path, rng: np.random.Generator, member: str
) -> None:
    files, _ = make_cifar_files(rng)
    marker = tmp_path / "pwned"
    files[f"cifar-10-batches-py/{member}"] = pickle.dumps({b"data": _Evil(marker)}, protocol=2)
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|os|nt)\.system") as err:
        fetch("cifar10", source=make_tar(tmp_path / "c.tar.gz", files), cache_dir=tmp_path)
    assert member in err.value.message
    assert not marker.exists()


def test_cifar_missing_batch(tmp_path: Path, rng: np.random.Generator) -> None:
    files, _ = make_cifar_files(rng)
    del files["cifar-10-batches-py/data_batch_3"]
    with pytest.raises(DataError, match="data_batch_3"):
        fetch("cifar10", source=make_tar(tmp_path / "c.tar.gz", files), cache_dir=tmp_path)


# ---------------------------------------------------------------- image folders

SPLIT_FILES = {
    "train/dog/b.png": png((0, 0, 200)),
    "train/dog/a.png": png((0, 0, 100)),
    "train/cat/z.png": png((10, 0, 0)),
    "test/cat/y.png": png((20, 0, 0)),
    "test/dog/c.png": png((0, 0, 50)),
    "train/empty/notes.txt": b"not an image",  # a class folder with no images is no class
}


def test_image_folder_with_splits(tmp_path: Path) -> None:
    root = write_files(tmp_path / "pics", SPLIT_FILES)
    with pytest.warns(UserWarning, match=r"1 file.*notes\.txt"):
        d = fetch("mypics", source=root, cache_dir=tmp_path)
    assert d.name == "mypics" and d.classes == ["cat", "dog"]
    assert d.train_images.shape == (3, 3, 4, 4) and d.test_images.shape == (2, 3, 4, 4)
    # Classes sorted by name, images by path within a class.
    assert d.train_labels.tolist() == [0, 1, 1]
    assert d.train_images[:, :, 0, 0].tolist() == [[10, 0, 0], [0, 0, 100], [0, 0, 200]]
    assert d.test_labels.tolist() == [0, 1]
    assert d.test_images[:, 2, 0, 0].tolist() == [0, 50]


def test_image_folder_classes_only_holds_out_stratified_20_percent(tmp_path: Path) -> None:
    files = {f"{cls}/{i:02d}.png": png((v, i, 0)) for cls, v in [("b", 1), ("a", 2)] for i in range(10)}
    files["empty/.keep"] = b""
    root = write_files(tmp_path / "pics", files)
    d = fetch("mine", source=root, cache_dir=tmp_path)
    assert d.classes == ["a", "b"]
    assert len(d.train_labels) == 16 and np.bincount(d.test_labels).tolist() == [2, 2]
    again = fetch("mine", source=root, cache_dir=tmp_path)
    assert np.array_equal(again.test_images, d.test_images)  # the holdout is seeded
    seen = sorted(map(tuple, np.concatenate([d.train_images, d.test_images])[:, :2, 0, 0].tolist()))
    assert seen == sorted((v, i) for v in (1, 2) for i in range(10))  # every image exactly once
    held_out = sorted(d.test_images[:, 1, 0, 0].tolist())
    assert held_out != [0, 0, 1, 1]  # a shuffled pick, not the first files by name
    red = d.train_images[:, 0, 0, 0]
    assert np.all(red[d.train_labels == 0] == 2) and np.all(red[d.train_labels == 1] == 1)


def test_unlabeled_image_folder(tmp_path: Path) -> None:
    root = write_files(tmp_path / "pics", {f"{i}.png": png(i, mode="L") for i in range(5)})
    d = fetch("unl", source=root, cache_dir=tmp_path)
    assert d.classes == [] and d.train_labels.tolist() == [-1] * 5
    assert d.train_images.shape == (5, 1, 4, 4)
    assert d.test_images.shape[0] == 0 and d.test_labels.shape == (0,)


def test_image_tarball_with_single_top_folder(tmp_path: Path) -> None:
    files = {f"cifar10/{k}": v for k, v in SPLIT_FILES.items() if k.endswith(".png")}
    d = fetch("cifar10", source=make_tar(tmp_path / "pics.tar.gz", files), cache_dir=tmp_path)
    assert d.classes == ["cat", "dog"] and len(d.train_images) == 3 and len(d.test_images) == 2
    assert str(tmp_path / "pics.tar.gz") in d.source


def test_non_image_file_skipped_with_warning(tmp_path: Path) -> None:
    root = write_files(tmp_path / "p", {"cat/a.png": png(1), "cat/b.jpg": b"garbage", "dog/c.png": png(2)})
    with pytest.warns(UserWarning, match=r"skipped 1 file.*cat/b\.jpg"):
        d = fetch("x", source=root, cache_dir=tmp_path)
    assert len(d.train_images) + len(d.test_images) == 2


def test_mixed_sizes_rejected_then_resized(tmp_path: Path) -> None:
    files = {"a/1.png": png(1, size=(4, 4)), "a/2.png": png(2, size=(6, 5)), "b/3.png": png(3)}
    root = write_files(tmp_path / "p", files)
    with pytest.raises(DataError, match=r"a/1\.png.*a/2\.png") as err:
        fetch("x", source=root, cache_dir=tmp_path)
    assert "--size" in (err.value.hint or "")
    d = fetch("x", source=root, cache_dir=tmp_path, size=(3, 7))
    assert d.train_images.shape[1:] == (3, 3, 7)


def test_size_resizes_array_datasets(tmp_path: Path) -> None:
    d = fetch("digits", cache_dir=tmp_path, size=(16, 16))
    assert d.train_images.shape[1:] == (1, 16, 16) and d.test_images.shape[1:] == (1, 16, 16)


def test_rgb_and_grayscale_mixture_becomes_rgb(tmp_path: Path) -> None:
    files = {"a.png": png(77, mode="L"), "b.png": png((1, 2, 3)), "c.png": png((9, 9, 9, 128), mode="RGBA")}
    d = fetch("x", source=write_files(tmp_path / "p", files), cache_dir=tmp_path)
    assert d.train_images.shape == (3, 3, 4, 4)
    assert d.train_images[:, :, 0, 0].tolist() == [[77, 77, 77], [1, 2, 3], [9, 9, 9]]


def test_tar_unsafe_members_skipped_and_nothing_written(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    outside = tmp_path / "evil.png"
    absolute = tmp_path / "abs.png"
    tarball = work / "p.tar"
    with tarfile.open(tarball, "w") as tar:
        add_member(tar, "root/cat/ok.png", png(5))
        add_member(tar, "root/cat/../../../evil.png", png(6))
        add_member(tar, str(absolute), png(7))
        link = tarfile.TarInfo("root/cat/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        hard = tarfile.TarInfo("root/cat/hard.png")
        hard.type, hard.linkname = tarfile.LNKTYPE, "root/cat/ok.png"
        tar.addfile(hard)
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.warns(UserWarning, match="skipped 4 unsafe"):
        d = fetch("x", source=tarball, cache_dir=work / "cache")
    assert d.classes == ["cat"] and d.train_images[:, 0, 0, 0].tolist() == [5]  # only ok.png survives
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert not outside.exists() and not absolute.exists()


def test_no_images_found_names_path(tmp_path: Path) -> None:
    root = write_files(tmp_path / "p", {"cat/readme.txt": b"hello"})
    with pytest.raises(DataError, match=r"p: no images found"), pytest.warns(UserWarning):
        fetch("x", source=root, cache_dir=tmp_path)


def test_not_a_tarball(tmp_path: Path) -> None:
    (tmp_path / "f.zip").write_bytes(b"PK\x03\x04 nope")
    with pytest.raises(DataError, match=r"f\.zip"):
        fetch("x", source=tmp_path / "f.zip", cache_dir=tmp_path)
