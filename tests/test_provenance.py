"""File names from import to answer: an imported folder or tarball keeps each image's path, and
embed, index, search (TSV, --json, --grid) and predict --knn name the files, labelled or not.

The folders are generated here: small grayscale PNGs of distinct random patterns (so each image's
nearest stored image is itself), under distinctive names and a wrapping folder whose name must
survive too (names are paths relative to the root given to --from).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from conftest import cli
from PIL import Image

import clt

RECIPE = """name: {name}_simclr
data: {{dataset: {name}}}
model: {{encoder: pair_cnn, features: 32, projection: [32, 16]}}
objective: {{name: simclr, temperature: 0.5}}
pretrain: {{epochs: 1, batch_size: 8, lr: 0.001, augment: {{preset: digits}}}}
probe: {{epochs: 1, lr: 0.003}}
"""


def png_bytes(rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(buffer, format="PNG")
    return buffer.getvalue()


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def make_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def tsv_rows(stdout: str) -> list[list[str]]:
    return [line.split("\t") for line in stdout.splitlines()]


def pretrain(root: Path, tmp_path: Path, name: str) -> str:
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(RECIPE.format(name=name))
    return cli(root, "pretrain", recipe).ok().id


def embeddings_names(root: Path, embeddings_id: str) -> list[str]:
    artifact = clt.open_store(root).get(embeddings_id)
    lines = artifact.file("paths.jsonl").read_text(encoding="ascii").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory) -> tuple[Path, list[str]]:
    """A folder of 30 photos in one wrapping folder (no classes): the folder and the names, sorted."""
    rng = np.random.default_rng(31)
    names = sorted(f"holiday/sea_{i:03d}_{word}.png" for i, word in
                   enumerate(["dune", "gull", "wave", "kelp", "pier", "sail"] * 5))
    root = write_tree(tmp_path_factory.mktemp("photos"), {n: png_bytes(rng) for n in names})
    return root, names


def test_an_unlabeled_folder_is_named_from_import_to_the_grid(unlabeled, tmp_path: Path, monkeypatch):
    folder, names = unlabeled
    root = tmp_path / "store"
    dataset = cli(root, "download", "seaside", "--from", folder).ok().id
    assert clt.open_store(root).get(dataset).file("train.paths.jsonl")  # kept in the dataset artifact
    encoder = pretrain(root, tmp_path, "seaside")
    embeddings = cli(root, "embed", encoder, "--split", "train").ok().id
    assert embeddings_names(root, embeddings) == names  # one name per row, in row order

    index = cli(root, "index", encoder).ok().id
    queries = [str(folder / n) for n in names[:4]]
    rows = tsv_rows(cli(root, "search", index, *queries, "-k", "2").ok().stdout)
    assert len(rows) == 8
    assert [r[2] for r in rows[::2]] == names[:4]  # each photo finds itself first, by its file name
    assert all(r[2] in names and r[3] == "" for r in rows)  # no class: an empty field, never -1
    found = [json.loads(line) for line in cli(root, "search", index, *queries, "-k", "2", "--json").ok()
             .stdout.splitlines()]
    assert [f["neighbours"][0]["path"] for f in found] == names[:4]
    assert all(n["class"] is None and n["label"] is None for f in found for n in f["neighbours"])

    drawn: list = []
    from clt import plots

    real = plots.image_grid
    monkeypatch.setattr(plots, "image_grid", lambda *a, **kw: (drawn.append(kw["cell_titles"]), real(*a, **kw)))
    grid = tmp_path / "grid.png"
    cli(root, "search", index, *queries, "-k", "2", "--grid", grid).ok()
    assert grid.read_bytes()[:4] == b"\x89PNG" and len(drawn) == 1
    captions = [row[1:] for row in drawn[0]]  # the first cell of a row is the query
    for name, row in zip(names, captions):
        assert PurePosixPath(name).name in row[0].splitlines()[0]  # named by its file, not its row number
    assert all(name.splitlines()[0].lstrip("…") in " ".join(names) for row in captions for name in row)


def test_a_labelled_tarball_answers_with_names_and_classes(tmp_path: Path):
    rng = np.random.default_rng(7)
    files = {f"pets/{cls}/{cls}_{i:02d}_{tag}.png": png_bytes(rng)
             for cls, tag in (("cat", "tabby"), ("dog", "collie")) for i in range(15)}
    tarball = make_tar(tmp_path / "pets.tar.gz", files)
    root = tmp_path / "store"
    cli(root, "download", "pets", "--from", tarball).ok()
    encoder = pretrain(root, tmp_path, "pets")
    test_names = embeddings_names(root, cli(root, "embed", encoder, "--split", "test").ok().id)
    assert len(test_names) == 6 and set(test_names) < set(files)  # the held-out 20 %, by name

    index = cli(root, "index", encoder).ok().id
    queries = [tmp_path / "q" / PurePosixPath(n).name for n in test_names]
    write_tree(tmp_path / "q", {q.name: files[n] for q, n in zip(queries, test_names)})
    rows = tsv_rows(cli(root, "search", index, *map(str, queries), "-k", "3").ok().stdout)
    assert len(rows) == 18
    for row in rows:
        assert row[2] in files and row[2] not in test_names  # a train image, by its path in the archive
        assert row[3] == PurePosixPath(row[2]).parent.name  # its class, from its folder
    found = [json.loads(line) for line in cli(root, "predict", encoder, *map(str, queries), "--knn", "3",
                                                    "--json").ok().stdout.splitlines()]
    assert [f["path"] for f in found] == sorted(map(str, queries))
    voters = [n for f in found for n in f["neighbours"]]
    assert len(voters) == 18
    assert all(n["path"] in files and n["class"] == PurePosixPath(n["path"]).parent.name for n in voters)


def test_names_are_part_of_a_dataset_and_built_in_rows_have_none(tmp_path: Path):
    rng = np.random.default_rng(3)
    pixels = [png_bytes(rng) for _ in range(5)]
    first = write_tree(tmp_path / "a", {f"x_{i}.png": p for i, p in enumerate(pixels)})
    second = write_tree(tmp_path / "b", {f"y_{i}.png": p for i, p in enumerate(pixels)})  # same images, renamed
    root = tmp_path / "store"
    ids = [cli(root, "download", "same", "--from", folder).ok().id for folder in (first, second)]
    assert ids[0] != ids[1]
    from clt.stages.dataset import split_names

    store = clt.open_store(root)
    assert split_names(store.get(ids[1]), "train") == [f"y_{i}.png" for i in range(5)]
    digits = cli(root, "download", "digits").ok().id
    assert split_names(store.get(digits), "train") is None  # row numbers name digits' images
