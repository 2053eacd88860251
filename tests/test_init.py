"""`clt init` (issue 32): a commented recipe for a stored dataset, from the shipped recipes' tested
settings, that `clt pretrain` trains; and the renamed keys and options, refused by their old names."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import FAST_PRETRAIN, RECIPES, Trained, assert_user_error, cli

import clt
from clt.errors import RecipeError
from clt.recipe import RENAMED, SHIPPED_RECIPES, load_recipe, params_of, recipe_from_dict
from clt.registry import OBJECTIVES
from clt.stages.init import LARGE_SIDE, SOURCES, Dataset, _fitted, shipped_settings


@dataclass
class Stores:
    root: Path  # digits and 'pics' (unlabelled 16×16 colour photos) imported


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Stores:
    from PIL import Image

    root = tmp_path_factory.mktemp("init")
    folder = root / "pics"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"photo_{i:02d}.png")
    cli(root / "store", "download", "pics", "--from", folder).ok()
    cli(root / "store", "download", "digits").ok()
    return Stores(root / "store")


# ---------------------------------------------------------------- the tested settings


def test_the_recipes_folder_of_a_checkout_is_the_packaged_one():
    assert RECIPES.resolve() == SHIPPED_RECIPES.resolve()


def test_every_shipped_recipe_is_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 on

    root = SHIPPED_RECIPES.parent.parent
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["clt"]
    packaged = {path for pattern in globs for path in (root / "clt").glob(pattern)}
    assert packaged == set(SHIPPED_RECIPES.rglob("*.yaml"))


def test_every_registered_objective_has_a_shipped_recipe_of_its_own():
    assert set(SOURCES) == set(OBJECTIVES.names())
    for objective, sources in SOURCES.items():
        for source in sources:
            assert shipped_settings(source).get("objective", {"name": "pair"})["name"] == objective, source


def test_init_takes_the_shipped_recipe_with_its_base_merged_in():
    settings = shipped_settings("cifar10_byol_cpu")
    assert settings["model"]["encoder"] == "cifar_resnet"  # from bases/cifar10_cpu.yaml
    assert settings["objective"]["name"] == "byol" and settings["pretrain"]["optimizer"] == "lars"  # the file's own
    assert not {"base", "name", "seed", "data"} & set(settings)  # the new recipe's own, or resolved


def test_a_missing_recipe_file_names_where_the_shipped_ones_are(tmp_path: Path):
    with pytest.raises(RecipeError) as err:
        load_recipe(tmp_path / "cifar10_byol_cpu.yaml")
    assert str(SHIPPED_RECIPES / "cifar10_byol_cpu.yaml") in str(err.value.hint)
    with pytest.raises(RecipeError) as err:
        load_recipe(tmp_path / "no_such_recipe.yaml")
    assert str(SHIPPED_RECIPES) in str(err.value.hint)


# ---------------------------------------------------------------- clt init, then clt pretrain


def test_init_on_digits_writes_a_commented_recipe_that_pretrains(stores: Stores, tmp_path: Path):
    path = tmp_path / "mine.yaml"
    ran = cli(stores.root, "init", path, "--dataset", "digits", "--objective", "simclr").ok()
    assert ran.stdout.strip() == str(path)
    text = path.read_text(encoding="utf-8")
    assert "recipes/digits_simclr.yaml" in text and "1×8×8 images" in text
    # every key is preceded by its comment, taken from the field's metadata
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#") and not line.endswith(":"):
            assert lines[i - 1].lstrip().startswith("#"), f"no comment above {line!r}"
    lr_doc = next(f.metadata["doc"] for f in dataclasses.fields(clt.recipe.PretrainConfig) if f.name == "lr")
    assert f"# {lr_doc}" in text
    temperature_doc = dataclasses.fields(OBJECTIVES["simclr"].params)[0].metadata["doc"]
    assert temperature_doc.split("(")[0] in text
    recipe = load_recipe(path)
    assert (recipe.name, recipe.objective.params, recipe.model.projection) == ("mine", {"temperature": 0.5}, [64, 32])
    assert (recipe.probe.labels_per_class, recipe.pretrain.augment.preset) == (10, "digits")
    encoder = cli(stores.root, "pretrain", path, *FAST_PRETRAIN).ok().id
    assert clt.open_store(stores.root).get(encoder).recipe["objective"]["name"] == "simclr"


def test_init_on_an_unlabelled_colour_folder_fits_it_and_pretrains(stores: Stores, tmp_path: Path):
    path = tmp_path / "photos.yaml"
    cli(stores.root, "init", path, "--dataset", "pics", "--objective", "byol").ok()
    text = path.read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    assert "probe" not in raw and "evaluate" not in raw and "No probe: or evaluate: sections" in text
    assert raw["model"]["encoder"] == "cifar_resnet" and raw["pretrain"]["augment"]["preset"] == "simclr_cifar"
    # 40 images cannot fill the shipped batch of 256: a batch that can, said where it is set
    assert raw["pretrain"]["batch_size"] == 8 and "not the shipped 256" in text
    shipped = shipped_settings("cifar10_byol_cpu")["pretrain"]
    assert raw["pretrain"]["optimizer"] == shipped["optimizer"]  # LARS: its rate scales with the batch as SGD's
    assert raw["pretrain"]["lr"] == pytest.approx(shipped["lr"] * 8 / 256)
    assert raw["objective"]["target_momentum_schedule"] == "cosine"  # cifar10_byol_cpu's, not the default
    cli(stores.root, "pretrain", path, *FAST_PRETRAIN).ok()


def test_init_refuses_an_objective_that_needs_labels_for_an_unlabelled_dataset(stores: Stores, tmp_path: Path):
    for objective in ("supcon", "triplet", "pair"):
        text = assert_user_error(cli(stores.root, "init", tmp_path / "x.yaml", "--dataset", "pics", "--objective",
                                 objective), "labels", "simclr")
        assert objective in text
    assert not (tmp_path / "x.yaml").exists()


def test_init_keeps_an_existing_file_unless_forced(stores: Stores, tmp_path: Path):
    path = tmp_path / "mine.yaml"
    path.write_text("# my own\n", encoding="utf-8")
    assert_user_error(cli(stores.root, "init", path, "--dataset", "digits", "--objective", "vicreg"), "already exists",
                      "--force")
    assert path.read_text(encoding="utf-8") == "# my own\n"
    cli(stores.root, "init", path, "--dataset", "digits", "--objective", "vicreg", "--force").ok()
    assert load_recipe(path).objective.name == "vicreg"


def test_init_names_unknown_objectives_and_datasets(stores: Stores, tmp_path: Path):
    assert_user_error(cli(stores.root, "init", tmp_path / "x.yaml", "--dataset", "digits", "--objective", "simclrr"),
                      "simclrr", "simclr")
    assert_user_error(cli(stores.root, "init", tmp_path / "x.yaml", "--dataset", "nope", "--objective", "simclr"),
                      "nope")


@pytest.mark.parametrize("objective", sorted(SOURCES))
def test_init_writes_a_loadable_recipe_for_every_objective(stores: Stores, tmp_path: Path, objective: str):
    path = clt.init(tmp_path / f"{objective}.yaml", dataset="digits", objective=objective, store=stores.root)
    assert load_recipe(path).objective.name == objective


def _data(side: int, channels: int = 3, train: int = 50000) -> Dataset:
    return Dataset("mine", channels, side, side, train, 10000, 10)


def test_large_images_get_resnet18_and_small_ones_the_shipped_encoder():
    raw, notes = _fitted(shipped_settings("cifar10_simclr_cpu"), _data(LARGE_SIDE))
    assert raw["model"] == {"encoder": "resnet18", "projection": [64, 64]} and "model.encoder" in notes
    assert raw["pretrain"]["augment"]["preset"] == "imagenet_like"
    raw, notes = _fitted(shipped_settings("cifar10_simclr_cpu"), _data(32))
    assert raw["model"]["encoder"] == "cifar_resnet" and not notes


def test_progressive_resize_is_kept_only_below_the_image_side():
    assert _fitted(shipped_settings("cifar10_triplet"), _data(32))[0]["pretrain"]["progressive_resize"]
    raw, notes = _fitted(shipped_settings("cifar10_triplet"), _data(24))
    assert "progressive_resize" not in raw["pretrain"] and "progressive_resize" in notes["pretrain.epochs"]
    recipe_from_dict({"data": {"dataset": "mine"}, **raw})  # still a valid recipe


# ---------------------------------------------------------------- renamed keys and options


@pytest.mark.parametrize("old, new", sorted(RENAMED.items()))
def test_an_old_key_is_refused_naming_the_new_one(old, new, tmp_path: Path):
    section, key = old.split(".")
    value = 0.99 if key == "momentum" else "cosine"
    with pytest.raises(RecipeError, match=f"{old} has been renamed {new}"):
        recipe_from_dict({section: {"name": "byol", key: value}}, "mine.yaml")
    ran = cli(tmp_path, "pretrain", RECIPES / "digits_byol.yaml", "--set", f"{old}={value}")
    assert_user_error(ran, old, new)


def test_a_stored_recipe_with_an_old_key_still_loads():
    """Encoders stored before the rename: probe reads their recipe, evaluate their params."""
    stored = {"objective": {"name": "moco", "params": {"temperature": 0.2, "queue_size": 8, "momentum": 0.9,
                                                       "momentum_schedule": "cosine"}}}
    recipe = recipe_from_dict(stored, "recipe of abc", stored=True)
    assert recipe.objective.params["target_momentum"] == 0.9
    assert recipe.objective.params["target_momentum_schedule"] == "cosine"
    params = params_of(OBJECTIVES["moco"].params, stored["objective"]["params"])
    assert (params.target_momentum, params.target_momentum_schedule) == (0.9, "cosine")


def test_pretrain_momentum_is_still_the_optimisers():
    recipe = recipe_from_dict({"pretrain": {"optimizer": "sgd", "momentum": 0.8}})
    assert recipe.pretrain.momentum == 0.8


@pytest.mark.parametrize("argv, new", [(["embed", "--projector"], "--tensorboard-projector"),
                                       (["index", "--kind", "hnsw"], "--type")])
def test_an_old_option_is_refused_naming_the_new_one(argv, new, tmp_path: Path):
    text = assert_user_error(cli(tmp_path, *argv), argv[1], new)
    assert "renamed" in text


def test_index_type_is_checked_by_its_new_name(tmp_path: Path):
    assert_user_error(cli(tmp_path, "index", "--type", "bogus"), "--type bogus", "exact")


def test_embed_writes_tensorboard_projector_files(store_copy: Trained):
    ran = cli(store_copy.root, "embed", store_copy.encoder, "--split", "test", "--tensorboard-projector").ok()
    files = clt.open_store(store_copy.root).get(ran.id).manifest["files"]
    assert {"vectors.tsv", "metadata.tsv"} <= set(files)
