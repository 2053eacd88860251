"""Recipes: shipped files load, defaults and overrides apply, every bad input is a RecipeError naming it."""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

import pytest
import yaml
from conftest import DIGITS, RECIPES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clt.errors import RecipeError
from clt.recipe import (
    EvaluateConfig,
    PretrainConfig,
    ProbeConfig,
    Recipe,
    load_recipe,
    recipe_from_dict,
    to_plain,
)
from clt.registry import ENCODERS, OBJECTIVES

SHIPPED = sorted(RECIPES.glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path, overrides: tuple[str, ...] = ()) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, list(overrides))
    return info.value


# ---------------------------------------------------------------- shipped recipes


def _agrees(loaded, written) -> bool:
    """The loaded (plain) value says what the file wrote; keys the file left out may be defaults."""
    if isinstance(written, dict):
        return isinstance(loaded, dict) and all(_agrees(loaded.get(k), v) for k, v in written.items())
    if isinstance(written, list):
        return isinstance(loaded, list) and len(loaded) == len(written) and all(map(_agrees, loaded, written))
    return loaded == written


def test_there_are_shipped_recipes():
    assert DIGITS in SHIPPED and len(SHIPPED) >= 2


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_recipe_loads(path: Path):
    raw = yaml.safe_load(path.read_text())
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert recipe.name == raw.get("name", path.stem)
    assert ENCODERS.get(recipe.model.encoder) is not None
    assert OBJECTIVES.get(recipe.objective.name) is not None
    # what the file says is what was loaded
    for section in ("pretrain", "probe", "evaluate", "data"):
        for key, value in (raw.get(section) or {}).items():
            assert _agrees(to_plain(getattr(getattr(recipe, section), key)), value), f"{section}.{key}"
    # registry parameters are complete (defaults filled, but for options added after artifacts were
    # first stored, left out while at their default) and keep the file's values
    entry = OBJECTIVES.get(recipe.objective.name)
    fields = dataclasses.fields(entry.params)
    written = raw.get("objective") or {}
    left_out = {f.name for f in fields if f.metadata.get("omit_if_default") and f.name not in written}
    assert set(recipe.objective.params) == {f.name for f in fields} - left_out
    for key, value in (raw.get("objective") or {}).items():  # baseline-only recipes have none
        if key != "name":
            assert recipe.objective.params[key] == value
    assert recipe_from_dict(recipe.to_dict(), str(path)) == recipe


# ---------------------------------------------------------------- defaults


def test_defaults_filled(tmp_path: Path):
    recipe = load_recipe(write(tmp_path, "objective:\n  name: pair\n", "tiny.yaml"))
    assert recipe.name == "tiny"  # the file's stem when the recipe has no name
    assert recipe.pretrain == PretrainConfig()
    assert recipe.probe == ProbeConfig()
    assert recipe.evaluate == EvaluateConfig()
    assert recipe.objective.params == to_plain(OBJECTIVES.get("pair").params())
    assert recipe.model.params == to_plain(ENCODERS.get(recipe.model.encoder).params())


def test_empty_file_is_the_default_recipe(tmp_path: Path):
    recipe = load_recipe(write(tmp_path, "", "empty.yaml"))
    assert dataclasses.replace(recipe, name=Recipe().name) == recipe_from_dict({})


# ---------------------------------------------------------------- overrides


def test_override_changes_only_that_key():
    base = load_recipe(DIGITS)
    changed = load_recipe(DIGITS, ["pretrain.epochs=2"])
    assert changed.pretrain.epochs == 2 != base.pretrain.epochs
    assert dataclasses.replace(changed.pretrain, epochs=base.pretrain.epochs) == base.pretrain
    assert changed.probe == base.probe and changed.model == base.model


def test_override_new_key_in_named_section():
    recipe = load_recipe(DIGITS, ["objective.margin=2"])
    assert recipe.objective.params["margin"] == 2.0
    assert isinstance(recipe.objective.params["margin"], float)


def test_override_creates_nested_section_and_parses_yaml_values():
    recipe = load_recipe(DIGITS, ["pretrain.augment.flip=0.25", "probe.hidden=[32, 16]", "probe.head=mlp",
                                  "pretrain.augment.crop_scale=[0.5, 1]"])
    assert recipe.pretrain.augment is not None
    assert recipe.pretrain.augment.flip == 0.25
    assert recipe.pretrain.augment.crop_scale == (0.5, 1.0)
    assert recipe.probe.hidden == [32, 16]
    assert recipe.probe.head == "mlp"


def test_later_override_wins():
    assert load_recipe(DIGITS, ["pretrain.epochs=3", "pretrain.epochs=4"]).pretrain.epochs == 4


def test_numeric_string_is_a_float():
    # YAML 1.1 reads 1e-3 as a string; it must still become the number
    assert load_recipe(DIGITS, ["pretrain.lr=1e-3"]).pretrain.lr == pytest.approx(1e-3)


@pytest.mark.parametrize("item, words", [
    ("pretrain.epochs", ["pretrain.epochs", "KEY=VALUE"]),
    ("=3", ["empty key"]),
    ("name.x=1", ["name", "not a section"]),
    ("pretrain.epoch=2", ["pretrain.epoch", "did you mean 'epochs'"]),
    ("objective.marginn=2", ["objective.marginn", "did you mean 'margin'"]),
])
def test_bad_override(item: str, words: list[str]):
    err = error_of(DIGITS, (item,))
    for word in words:
        assert word in str(err)
    assert err.hint


# ---------------------------------------------------------------- errors in files


def test_malformed_yaml_names_file_and_line(tmp_path: Path):
    path = write(tmp_path, "name: x\npretrain:\n  epochs: 2: 3\n  lr: 0.1\n")
    err = error_of(path)
    assert str(path) in err.message
    assert "malformed YAML" in err.message
    assert "line 3" in err.message
    assert err.hint


@pytest.mark.parametrize("text, start", [
    ("name: x\npretrain: [1, 2\nprobe:\n  epochs: 1\n", "starts at line 2"),
    ("name: x\nseed: 1\npretrain: {epochs: 1\n", "starts at line 3"),
    ('name: x\nseed: 1\ndata:\n  dataset: "digits\n', "starts at line 4"),
])
def test_unclosed_bracket_or_quote_names_where_it_starts(tmp_path: Path, text: str, start: str):
    # the parser notices the problem later; the message must still point at the opening line
    err = error_of(write(tmp_path, text))
    assert "malformed YAML at line" in err.message and start in err.message


def test_missing_file(tmp_path: Path):
    err = error_of(tmp_path / "nope.yaml")
    assert "nope.yaml" in err.message and err.hint


@pytest.mark.parametrize("text", ["- a\n- b\n", "3\n", "just text\n"])
def test_recipe_must_be_a_mapping(tmp_path: Path, text: str):
    err = error_of(write(tmp_path, text))
    assert "mapping" in err.message and err.hint


@pytest.mark.parametrize("text, key, suggestion", [
    ("pretrain:\n  epoch: 2\n", "pretrain.epoch", "epochs"),
    ("pretrian:\n  epochs: 2\n", "pretrian", "pretrain"),
    ("probe:\n  hed: mlp\n", "probe.hed", "head"),
    ("objective:\n  name: pair\n  margn: 1.0\n", "objective.margn", "margin"),
    ("model:\n  encoder: pair_cnn\n  featurs: 64\n", "model.featurs", "features"),
])
def test_unknown_key_did_you_mean(tmp_path: Path, text: str, key: str, suggestion: str):
    path = write(tmp_path, text)
    err = error_of(path)
    assert str(path) in err.message
    assert f"'{key}'" in err.message
    assert f"did you mean '{suggestion}'" in err.hint


@pytest.mark.parametrize("text, key, expected", [
    ("pretrain:\n  epochs: two\n", "pretrain.epochs", "integer"),
    ("pretrain:\n  epochs: 1.5\n", "pretrain.epochs", "integer"),
    ("pretrain:\n  lr: fast\n", "pretrain.lr", "number"),
    ("pretrain:\n  compile: 3\n", "pretrain.compile", "true or false"),
    ("probe:\n  hidden: 64\n", "probe.hidden", "list"),
    ("probe:\n  hidden: [64, x]\n", "probe.hidden[1]", "integer"),
    ("seed: true\n", "seed", "integer"),
    ("name: [a]\n", "name", "string"),
    ("pretrain: 3\n", "pretrain", "mapping"),
    ("model: 3\n", "model", "mapping"),
    ("model:\n  params: 5\n", "model.params", "mapping"),
    ("objective:\n  params: [1]\n", "objective.params", "mapping"),
    ("pretrain:\n  augment:\n    crop_scale: [0.5]\n", "pretrain.augment.crop_scale", "2 values"),
    ("pretrain:\n  optimizer: adamm\n", "pretrain.optimizer", "adam"),
    ("objective:\n  name: pair\n  margin: yes\n", "objective.margin", "number"),
])
def test_wrong_type_names_key(tmp_path: Path, text: str, key: str, expected: str):
    path = write(tmp_path, text)
    err = error_of(path)
    assert str(path) in err.message
    assert key in err.message
    assert expected in str(err)


@pytest.mark.parametrize("text, bad, suggestion", [
    ("model:\n  encoder: pair_cn\n", "pair_cn", "pair_cnn"),
    ("model:\n  encoder: resnet19\n", "resnet19", "resnet18"),
    ("objective:\n  name: simclrr\n", "simclrr", "simclr"),
    ("objective:\n  name: suppcon\n", "suppcon", "supcon"),
])
def test_unknown_registered_name_did_you_mean(tmp_path: Path, text: str, bad: str, suggestion: str):
    path = write(tmp_path, text)
    err = error_of(path)
    assert str(path) in err.message and f"'{bad}'" in err.message
    assert f"did you mean '{suggestion}'" in err.hint


@pytest.mark.parametrize("text, key", [
    ("pretrain:\n  lr: -0.1\n", "pretrain.lr"),
    ("pretrain:\n  lr: 0\n", "pretrain.lr"),
    ("pretrain:\n  batch_size: 0\n", "pretrain.batch_size"),
    ("pretrain:\n  epochs: -1\n", "pretrain.epochs"),
    ("probe:\n  batch_size: 0\n", "probe.batch_size"),
    ("probe:\n  hidden: [64, 0]\n", "probe.hidden"),
    ("probe:\n  labels_per_class: 0\n", "probe.labels_per_class"),
    ("evaluate:\n  pairs: 1\n", "evaluate.pairs"),
    ("data:\n  train_limit: -5\n", "data.train_limit"),
    ("pretrain:\n  snapshot_every: -1\n", "pretrain.snapshot_every"),
    ("objective:\n  name: simclr\n  temperature: 0\n", "temperature"),
    ("objective:\n  name: pair\n  margin: -1\n", "margin"),
    ("model:\n  encoder: cifar_resnet\n  depth: 7\n", "depth"),
])
def test_out_of_range(tmp_path: Path, text: str, key: str):
    path = write(tmp_path, text)
    err = error_of(path)
    assert str(path) in err.message and key in err.message
    assert err.hint


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", ".nan", ".inf", "1e400"])
def test_non_finite_numbers_refused(value: str):
    for key in ("pretrain.lr", "pretrain.momentum"):
        err = error_of(DIGITS, (f"{key}={value}",))
        assert key in err.message and "finite" in str(err)


def test_python_tag_is_refused_and_not_executed(tmp_path: Path):
    marker = tmp_path / "PWNED"
    path = write(tmp_path, f'name: x\nseed: !!python/object/apply:os.system ["touch {marker}"]\n')
    err = error_of(path)
    assert str(path) in err.message
    assert not marker.exists()


def test_python_tag_in_override_is_not_executed(tmp_path: Path):
    marker = tmp_path / "PWNED"
    try:
        load_recipe(DIGITS, [f"name=!!python/object/apply:os.system ['touch {marker}']"])
    except RecipeError:
        pass
    assert not marker.exists()


# ---------------------------------------------------------------- round trip


def test_to_dict_round_trip_with_every_section():
    recipe = load_recipe(DIGITS, ["pretrain.augment.crop_scale=[0.4, 1.0]", "pretrain.augment.flip=0.5",
                                  "model.projection=[64, 32]", "probe.labels_per_class=5", "seed=7"])
    plain = recipe.to_dict()
    again = recipe_from_dict(plain)
    assert again == recipe
    assert again.to_dict() == plain
    # the plain form is pure JSON data: lists, not tuples
    assert plain["pretrain"]["augment"]["crop_scale"] == [0.4, 1.0]


# ---------------------------------------------------------------- property: any mutation is a RecipeError or a Recipe

BASE = yaml.safe_load(DIGITS.read_text())
BASE["pretrain"]["augment"] = {"preset": "auto", "crop_scale": [0.5, 1.0], "flip": 0.5}
BASE["model"]["projection"] = [64]
BASE["probe"]["hidden"] = [32]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8), st.sampled_from(["adam", "mlp", "pair", "simclr", "1e-3", "inf", "linear", "digits"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), inner, max_size=3),
                      max_leaves=8)
keys = st.one_of(st.text(max_size=8), st.integers(), st.sampled_from(["params", "name", "encoder", "augment"]))


def _slots(node, out):
    """Every (mapping, key) pair in a nested recipe dict, mappings inside lists included."""
    if isinstance(node, dict):
        for key, value in list(node.items()):
            out.append((node, key))
            _slots(value, out)
    elif isinstance(node, list):
        for value in node:
            _slots(value, out)
    return out


def _mappings(node, out):
    if isinstance(node, dict):
        out.append(node)
        for value in node.values():
            _mappings(value, out)
    return out


# CLT_HYPOTHESIS_EXAMPLES=5000 for a thorough run
@settings(max_examples=int(os.environ.get("CLT_HYPOTHESIS_EXAMPLES", 300)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_recipe_is_recipe_or_recipe_error(data):
    raw = copy.deepcopy(BASE)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        op = data.draw(st.sampled_from(["drop", "replace", "add"]), label="op")
        slots = _slots(raw, [])
        if op == "add" or not slots:
            target = data.draw(st.sampled_from(_mappings(raw, [])), label="mapping")
            target[data.draw(keys, label="key")] = data.draw(values, label="value")
            continue
        parent, key = data.draw(st.sampled_from(slots), label="slot")
        if op == "drop":
            del parent[key]
        else:
            parent[key] = data.draw(values, label="value")
    try:
        recipe = recipe_from_dict(raw, "mutant.yaml")
    except RecipeError as err:
        assert err.message.startswith(("mutant.yaml", "--set")), err.message
        return
    assert isinstance(recipe, Recipe)
    assert recipe_from_dict(recipe.to_dict()) == recipe


# ---------------------------------------------------------------- options added later keep old addresses


def test_progressive_resize_is_left_out_of_the_address_until_set():
    from clt.store import address

    plain = Recipe().to_dict()
    assert "progressive_resize" not in plain["pretrain"]  # so recipes written before it keep their addresses
    resized = load_recipe(DIGITS, ["pretrain.epochs=3", "pretrain.progressive_resize=[[8, 1]]"])
    assert resized.to_dict()["pretrain"]["progressive_resize"] == [[8, 1]]
    unresized = load_recipe(DIGITS, ["pretrain.epochs=3"])
    assert address({"recipe": resized.to_dict()}) != address({"recipe": unresized.to_dict()})
    # the stored form reads back to the same recipe, with or without the key
    for recipe in (resized, unresized):
        assert recipe_from_dict(recipe.to_dict()).to_dict() == recipe.to_dict()


@pytest.mark.parametrize("value, says", [
    ("[[16, 2], [16, 1]]", "is not larger than the stage before"),
    ("[[4, 1]]", ">= 8 pixels"),
    ("[[16, 0]]", "the epochs >= 1"),
    ("[[16, 2], [24, 1]]", "the last epochs must be at full size"),
    ("[[16]]", "a list of 2 values"),
])
def test_bad_progressive_resize_is_refused_by_key(value, says):
    err = error_of(DIGITS, ("pretrain.epochs=3", f"pretrain.progressive_resize={value}"))
    assert "pretrain.progressive_resize" in str(err) and says in str(err)


def test_a_recipe_says_only_what_differs_from_its_base(tmp_path: Path):
    (tmp_path / "bases").mkdir()
    write(tmp_path, "model: {encoder: cifar_resnet, depth: 20, width: 16}\n"
          "objective: {name: simclr, temperature: 0.5}\n"
          "pretrain: {epochs: 10, batch_size: 256, lr: 0.3, optimizer: sgd}\n", "bases/shared.yaml")
    own = write(tmp_path, "base: bases/shared.yaml\nmodel: {projection: [64, 32]}\n"
                "objective: {name: byol, target_momentum: 0.996}\npretrain: {lr: 0.1}\n", "mine.yaml")
    recipe = load_recipe(own)
    assert recipe.name == "mine"  # its own file's name, not the base's
    assert (recipe.model.params["depth"], recipe.model.projection) == (20, [64, 32])
    assert (recipe.pretrain.epochs, recipe.pretrain.lr) == (10, 0.1)
    # an objective of another name replaces the base's: simclr's temperature must not reach byol
    assert recipe.objective.name == "byol" and "temperature" not in recipe.objective.params
    assert load_recipe(own, ["pretrain.lr=0.2"]).pretrain.lr == 0.2  # overrides still come last


def test_a_base_that_is_missing_or_leads_back_to_itself_is_refused_by_name(tmp_path: Path):
    assert "does not exist" in str(error_of(write(tmp_path, "base: nowhere.yaml\n", "a.yaml")))
    write(tmp_path, "base: c.yaml\n", "b.yaml")
    write(tmp_path, "base: b.yaml\n", "c.yaml")
    message = str(error_of(tmp_path / "b.yaml"))
    assert "leads back to itself" in message and "b.yaml -> c.yaml -> b.yaml" in message
    assert "path of a recipe file" in str(error_of(write(tmp_path, "base: [1, 2]\n", "d.yaml")))


@pytest.mark.parametrize("path", sorted(RECIPES.glob("cifar10_*_cpu.yaml")), ids=lambda p: p.name)
def test_cifar10_cpu_recipes_share_one_base(path: Path):
    raw = yaml.safe_load(path.read_text())
    assert raw["base"] == "bases/cifar10_cpu.yaml"
    recipe = load_recipe(path)
    assert (recipe.model.encoder, recipe.pretrain.batch_size, recipe.evaluate.knn_k) == ("cifar_resnet", 256, 200)
