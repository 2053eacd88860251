"""Defaults that fit an unlabeled folder (issue 31): embed takes the split that exists, an empty
selection and a t-SNE of too few points are refused by name, t-SNE thumbnails and the user's own
tags, and compare groups only runs that differ in nothing but the seed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import DIGITS, FAST_PRETRAIN, PNG_SIGNATURE, RECIPES, Trained, assert_user_error, cli

import clt

N_IMAGES = 40  # fewer than t-SNE's default perplexity needs (3 x 30 = 90), enough for a lower one


@dataclass
class Unlabeled:
    store: Path
    folder: Path
    encoder: str


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory) -> Unlabeled:
    """A flat folder of 40 noisy 8x8 grey photos imported as 'pics', and a 1-epoch SimCLR encoder of it."""
    from PIL import Image

    root = tmp_path_factory.mktemp("unlabeled")
    folder = root / "pics"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8) // (1 + i % 4)  # four brightness levels
        Image.fromarray(pixels, mode="L").save(folder / f"photo_{i:02d}.png")
    store = root / "store"
    cli(store, "download", "pics", "--from", folder).ok()
    encoder = cli(store, "pretrain", RECIPES / "digits_simclr.yaml", "--set", "data.dataset=pics",
                  "--set", "pretrain.batch_size=16", *FAST_PRETRAIN).ok().id
    return Unlabeled(store, folder, encoder)


def manifest(store: Path, artifact_id: str) -> dict:
    return clt.open_store(store).get(artifact_id).manifest


# ---------------------------------------------------------------- embed


def test_embed_of_an_unlabeled_folder_takes_the_split_that_exists(unlabeled: Unlabeled):
    made = manifest(unlabeled.store, cli(unlabeled.store, "embed", unlabeled.encoder).ok().id)
    assert made["split"] == "train" and made["spec"]["split"] == "train"
    assert made["metrics"]["count"] == N_IMAGES
    # the library's default is the same
    assert clt.embed(unlabeled.encoder, store=unlabeled.store).metrics["count"] == N_IMAGES


def test_an_empty_selection_is_refused_by_name(unlabeled: Unlabeled):
    before = {row["id"] for row in clt.list_artifacts("embeddings", store=unlabeled.store)}
    text = assert_user_error(cli(unlabeled.store, "embed", unlabeled.encoder, "--split", "test"), "pics", "test",
                             "--split train")
    assert "0" in text
    assert {row["id"] for row in clt.list_artifacts("embeddings", store=unlabeled.store)} == before


def test_a_labelled_dataset_still_embeds_its_test_split_by_default(store_copy: Trained):
    plain = cli(store_copy.root, "embed", store_copy.encoder).ok().id
    assert plain == cli(store_copy.root, "embed", store_copy.encoder, "--split", "test").ok().id
    assert manifest(store_copy.root, plain)["spec"]["split"] == "test"


# ---------------------------------------------------------------- tsne


def test_tsne_of_too_few_points_is_refused_by_name(unlabeled: Unlabeled):
    embeddings = cli(unlabeled.store, "embed", unlabeled.encoder).ok().id
    assert_user_error(cli(unlabeled.store, "tsne", embeddings), f"{N_IMAGES} points", "--perplexity", "--pca")
    assert_user_error(cli(unlabeled.store, "tsne", embeddings, "--perplexity", "14"), f"{N_IMAGES} points", "13")
    drawn = cli(unlabeled.store, "tsne", embeddings, "--perplexity", "13").ok().id  # 40 > 3 x 13
    assert manifest(unlabeled.store, drawn)["metrics"]["points"] == N_IMAGES


def test_thumbnails_are_drawn_and_recorded(unlabeled: Unlabeled):
    embeddings = cli(unlabeled.store, "embed", unlabeled.encoder).ok().id
    plain = cli(unlabeled.store, "tsne", embeddings, "--pca").ok().id
    pictured = cli(unlabeled.store, "tsne", embeddings, "--pca", "--thumbnails").ok().id
    assert pictured != plain
    store = clt.open_store(unlabeled.store)
    picture = store.get(pictured).file("pca.png").read_bytes()
    assert picture[:8] == PNG_SIGNATURE and picture != store.get(plain).file("pca.png").read_bytes()
    assert store.get(pictured).manifest["thumbnails"] == N_IMAGES
    assert "thumbnails" not in store.get(plain).manifest
    # the library takes the same option
    assert clt.tsne(embeddings, pca=True, thumbnails=True, store=unlabeled.store).id == pictured
    # embeddings of files: the thumbnails are read again from the files they name
    of_files = cli(unlabeled.store, "embed", unlabeled.encoder, "--images", unlabeled.folder).ok().id
    assert manifest(unlabeled.store, cli(unlabeled.store, "tsne", of_files, "--pca", "--thumbnails").ok().id
                    )["thumbnails"] == N_IMAGES


def test_color_by_tags_colours_named_points_and_hashes_the_csv(unlabeled: Unlabeled, tmp_path: Path):
    embeddings = cli(unlabeled.store, "embed", unlabeled.encoder, "--images", unlabeled.folder).ok().id
    tags = tmp_path / "tags.csv"
    # a header, bare file names, 30 of the 40 photos tagged
    tags.write_text("file,tag\n" + "".join(f"photo_{i:02d}.png,{'dark' if i % 2 else 'bright'}\n" for i in range(30)))
    coloured = cli(unlabeled.store, "tsne", embeddings, "--pca", "--color-by", tags).ok().id
    made = manifest(unlabeled.store, coloured)
    assert made["color_by"]["tags"] == {"bright": 15, "dark": 15}
    assert made["color_by"]["untagged"] == N_IMAGES - 30
    plain = cli(unlabeled.store, "tsne", embeddings, "--pca").ok().id
    store = clt.open_store(unlabeled.store)
    assert store.get(coloured).file("pca.png").read_bytes() != store.get(plain).file("pca.png").read_bytes()
    # no header, another CSV at the same path: another artifact (the content is hashed, not the path)
    tags.write_text("".join(f"photo_{i:02d}.png,odd\n" for i in range(1, N_IMAGES, 2)))
    recoloured = cli(unlabeled.store, "tsne", embeddings, "--pca", "--color-by", tags).ok().id
    assert recoloured != coloured
    assert manifest(unlabeled.store, recoloured)["color_by"]["tags"] == {"odd": N_IMAGES // 2}
    assert clt.tsne(embeddings, pca=True, color_by=tags, store=unlabeled.store).id == recoloured


def test_color_by_is_refused_for_embeddings_without_file_names(store_copy: Trained, tmp_path: Path):
    embeddings = cli(store_copy.root, "embed", store_copy.encoder).ok().id  # digits: rows have no file names
    tags = tmp_path / "tags.csv"
    tags.write_text("a.png,x\n")
    assert_user_error(cli(store_copy.root, "tsne", embeddings, "--pca", "--color-by", tags), "--color-by", "file names",
                      "--images")


def test_color_by_tags_matching_no_point_is_refused(unlabeled: Unlabeled, tmp_path: Path):
    embeddings = cli(unlabeled.store, "embed", unlabeled.encoder, "--images", unlabeled.folder).ok().id
    tags = tmp_path / "elsewhere.csv"
    tags.write_text("holiday.jpg,beach\n")
    assert_user_error(cli(unlabeled.store, "tsne", embeddings, "--pca", "--color-by", tags), "elsewhere.csv", "none")


# ---------------------------------------------------------------- compare


def test_compare_groups_only_runs_that_differ_in_nothing_but_the_seed(store_copy: Trained):
    root = store_copy.root
    other_seed = cli(root, "pretrain", DIGITS, *FAST_PRETRAIN, "--seed", "1").ok().id
    longer = cli(root, "pretrain", DIGITS, "--set", "pretrain.epochs=2").ok().id
    evaluations = [cli(root, "evaluate", encoder, "--knn", "5").ok().id
                   for encoder in (store_copy.encoder, other_seed, longer)]
    rows = clt.compare(evaluations, store=root)
    assert sorted(row["n"] for row in rows) == [1, 2]
    seeds = next(row for row in rows if row["n"] == 2)
    assert sorted(seeds["seeds"]) == [0, 1]
    alone = next(row for row in rows if row["n"] == 1)
    assert alone["knn_accuracy"]["values"] == [manifest(root, evaluations[2])["metrics"]["knn_accuracy"]]
    assert "pretrain.epochs=2" in alone["differs"]  # the table says what tells the rows apart
