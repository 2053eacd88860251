"""A trained encoder on new images: embed any folder, classify, search by similarity, export."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import Trained, cli
from PIL import Image

import clt
from clt.errors import CltError, StoreError


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory, trained: Trained) -> tuple[Path, np.ndarray, np.ndarray]:
    """The digits test split as one 8x8 grayscale PNG per image (name: index_label.png)."""
    folder = tmp_path_factory.mktemp("digit_pngs")
    test = clt.load_dataset("digits", store=trained.root).test
    images, labels = test.images.numpy(), test.labels.numpy()
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image[0]).save(folder / f"{i:04d}_{label}.png")
    return folder, images, labels


def test_embed_images_of_a_folder_matches_the_dataset_rows(store_copy: Trained, digit_files, capfd):
    folder, images, _ = digit_files
    (folder.parent / "mixed").mkdir(exist_ok=True)
    (folder.parent / "mixed" / "broken.png").write_bytes(b"not an image")
    ran = cli(store_copy.root, "embed", store_copy.encoder, "--images", str(folder), str(folder.parent / "mixed")).ok()
    assert "skipped 1 file(s)" in ran.stderr and "broken.png" in ran.stderr
    artifact = clt.open_store(store_copy.root).get(ran.id)
    paths = [json.loads(line) for line in artifact.file("paths.jsonl").read_text().splitlines()]
    assert paths == sorted(str(p) for p in folder.glob("*.png"))  # row order is the paths' order
    expected = clt.load_encoder(store_copy.encoder, store=store_copy.root).embed(images)
    np.testing.assert_allclose(np.load(artifact.file("embeddings.npy")), expected, atol=1e-5)


def test_images_of_any_mode_and_size_are_converted_as_download_converts_them(trained: Trained, tmp_path: Path):
    encoder = clt.load_encoder(trained.encoder, store=trained.root)
    base = clt.load_dataset("digits", store=trained.root).test.images[0, 0].numpy()
    gray = Image.fromarray(base)
    variants = {"rgb.png": gray.convert("RGB"), "rgba.png": gray.convert("RGBA"), "palette.png": gray.convert("P"),
                "big.png": gray.resize((32, 32), Image.NEAREST)}
    for name, picture in variants.items():
        picture.save(tmp_path / name)
    vectors = encoder.embed([str(tmp_path / n) for n in ("rgb.png", "rgba.png", "palette.png")])
    np.testing.assert_allclose(vectors, np.repeat(encoder.embed(base[None]), 3, 0), atol=1e-5)
    colour = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)  # an RGB array, 1-channel encoder
    as_files = [Image.fromarray(c.transpose(1, 2, 0)) for c in colour]  # PIL's convert("L") is the reference
    np.testing.assert_allclose(encoder.embed(colour), encoder.embed(as_files), atol=1e-6)
    assert encoder.embed([str(tmp_path / "big.png")]).shape == (1, encoder.out_dim)  # resized to 8x8


def test_exif_orientation_is_applied(tmp_path: Path):
    from clt.data.sources import decode_image

    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180 degrees
    Image.fromarray(pixels).save(tmp_path / "turned.png", exif=exif)
    np.testing.assert_array_equal(decode_image((tmp_path / "turned.png").read_bytes()), pixels[::-1, ::-1])


def test_embed_images_from_a_glob_and_a_tarball_and_to_plain_files(trained: Trained, digit_files, tmp_path: Path):
    folder, images, _ = digit_files
    archive = tmp_path / "digits.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(folder.glob("000*.png")):
            tar.add(path, arcname=f"d/{path.name}")
    encoder = trained.encoder
    out = tmp_path / "vectors.npy"
    ran = cli(trained.root, "embed", encoder, "--images", str(folder / "000*.png"), "--out", str(out)).ok()
    assert Path(ran.stdout.strip()) == out
    np.testing.assert_allclose(np.load(out), clt.load_encoder(encoder, store=trained.root).embed(images[:10]),
                               atol=1e-5)
    assert len(out.with_suffix(".paths.jsonl").read_text().splitlines()) == 10
    csv_out = tmp_path / "vectors.csv"
    cli(trained.root, "embed", encoder, "--images", str(archive), "--out", str(csv_out)).ok()
    lines = csv_out.read_text().splitlines()
    assert len(lines) == 11 and lines[1].startswith(f"{archive}:d/0000_")
    assert len(lines[1].split(",")) == 1 + 128


def test_an_empty_selection_is_an_error(trained: Trained, tmp_path: Path):
    (tmp_path / "notes.txt").write_text("no images here")
    ran = cli(trained.root, "embed", trained.encoder, "--images", str(tmp_path))
    assert ran.exit_code == 2 and "no image files" in ran.stderr
    ran = cli(trained.root, "embed", trained.encoder, "--images", str(tmp_path / "*.jpg"))
    assert ran.exit_code == 2 and "matches any file" in ran.stderr


def test_predict_prints_one_line_per_image_and_agrees_with_evaluate(store_copy: Trained, digit_files):
    folder, _, labels = digit_files
    root = store_copy.root
    ran = cli(root, "predict", store_copy.probe, str(folder), "--top", "2").ok()
    lines = [line.split("\t") for line in ran.stdout.strip().splitlines()]
    assert len(lines) == len(labels) and all(len(line) == 5 for line in lines)
    assert all(float(line[2]) >= float(line[4]) for line in lines)
    accuracy = np.mean([line[1] == line[0].rsplit("_", 1)[1][:-4] for line in lines])
    assert accuracy == pytest.approx(clt.evaluate(store_copy.probe, store=root).metrics["accuracy"], abs=1e-9)
    first = json.loads(cli(root, "predict", store_copy.probe, str(folder / "0000_*.png"), "--json").ok().stdout)
    assert first["path"].endswith(".png") and 0 <= first["top"][0]["prob"] <= 1


def test_predict_knn_gives_the_accuracy_of_evaluate_knn(store_copy: Trained, digit_files):
    folder, _, labels = digit_files
    root = store_copy.root
    rows = clt.predict(store_copy.encoder, [folder], knn=10, store=root)
    truth = {str(folder / f"{i:04d}_{label}.png"): str(label) for i, label in enumerate(labels)}
    accuracy = np.mean([row["top"][0]["class"] == truth[row["path"]] for row in rows])
    assert accuracy == pytest.approx(clt.evaluate(store_copy.encoder, knn=10, store=root).metrics["knn_accuracy"],
                                     abs=1e-9)
    assert all(0 < row["top"][0]["prob"] <= 1 for row in rows)


def test_exact_search_finds_each_stored_image_first(store_copy: Trained, digit_files, tmp_path: Path):
    folder, _, _ = digit_files
    root = store_copy.root
    index_id = cli(root, "index", store_copy.encoder, "--split", "test").ok().id
    grid = tmp_path / "grid.png"
    ran = cli(root, "search", index_id, str(folder / "0005_*.png"), str(folder / "0042_*.png"), "-k", "3",
              "--grid", str(grid)).ok()
    lines = [line.split("\t") for line in ran.stdout.strip().splitlines()]
    assert [line[1] for line in lines] == ["1", "2", "3"] * 2
    assert (lines[0][2], lines[3][2]) == ("5", "42") and float(lines[0][4]) < 1e-5  # itself, at distance 0
    assert grid.read_bytes()[:4] == b"\x89PNG"


def test_approximate_indexes_recall_the_exact_neighbours(store_copy: Trained):
    root, k = store_copy.root, 10
    queries = clt.load_encoder(store_copy.encoder, store=root).embed(clt.load_dataset("digits", store=root).test.images)
    exact = clt.load_index(clt.index(store_copy.encoder, store=root).id, store=root).search(queries, k)[1]
    for kind in ("hnsw", "ivf"):
        index_id = clt.index(store_copy.encoder, kind=kind, store=root).id
        found = clt.load_index(index_id, store=root).search(queries, k)[1]
        recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(exact, found)])
        assert recall >= 0.9, (kind, recall)


def test_an_index_refuses_queries_of_another_encoder_and_a_damaged_file(store_copy: Trained):
    root = store_copy.root
    index_id = clt.index(store_copy.encoder, kind="hnsw", store=root).id
    index = clt.load_index(index_id, store=root)
    with pytest.raises(CltError, match="holds embeddings of encoder"):
        index.search(np.zeros((1, 128), np.float32), 3, encoder_id="f" * 64)
    with pytest.raises(CltError, match="do not fit"):
        index.search(np.zeros((1, 7), np.float32), 3)
    faiss_file = clt.open_store(root).get(index_id).file("index.faiss")
    faiss_file.chmod(0o644)
    faiss_file.write_bytes(faiss_file.read_bytes()[:100])  # truncated
    assert cli(root, "verify", index_id).exit_code == 1
    from clt.stages.search import SearchIndex

    with pytest.raises(StoreError, match="index.faiss"):
        SearchIndex(clt.open_store(root).get(index_id))


def test_export_onnx_and_torchscript_reproduce_encoder_embed(store_copy: Trained, tmp_path: Path):
    pytest.importorskip("onnxruntime")
    from clt.exporters import run_onnx, run_torchscript

    root = store_copy.root
    images = clt.load_dataset("digits", store=root).test.images[:16].numpy()
    expected = clt.load_encoder(store_copy.encoder, store=root).embed(images)
    for fmt, runner, name in (("onnx", run_onnx, "enc.onnx"), ("torchscript", run_torchscript, "enc.pt")):
        ran = cli(root, "export", store_copy.encoder, "--format", fmt, "--out", str(tmp_path / name)).ok()
        np.testing.assert_allclose(runner(tmp_path / name, images), expected, atol=1e-4)
        sidecar = json.loads((tmp_path / name).with_suffix(".json").read_text())
        assert sidecar["artifact"] == store_copy.encoder and sidecar["input"]["dtype"] == "uint8"
        assert sidecar["classes"] == [str(d) for d in range(10)] and sidecar["clt_version"]
        assert clt.open_store(root).get(ran.id).kind == "export"
    assert cli(root, "export", store_copy.encoder, "--format", "tflite").exit_code == 2
