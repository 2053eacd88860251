"""Generated references (issue 32): docs/reference/cli.md and recipe.md are what the code generates,
name every command and every recipe, encoder and objective field, and every field carries its doc
and range in its metadata, which the range check reads."""

from __future__ import annotations

import dataclasses
import re

import pytest
import typer.main
from conftest import ROOT

from clt import reference
from clt.cli import app
from clt.errors import RecipeError
from clt.recipe import Recipe, recipe_from_dict
from clt.registry import ENCODERS, OBJECTIVES


def _fields(cls: type, prefix: str = ""):
    """(dotted name, field, owner) of every field of a recipe dataclass, nested sections included."""
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        yield dotted, f, cls
        nested = reference._dataclass_of(cls, f.name)
        if nested is not None:
            yield from _fields(nested, dotted)


def _commands():
    return [path for path, _ in reference._commands(typer.main.get_command(app), ())]


def _entry_text(markdown: str, name: str) -> str:
    """The part of recipe.md about one encoder or objective: from its heading to the next."""
    start = markdown.index(f"\n### {name}\n")
    following = [m.start() for m in re.finditer(r"\n##+ ", markdown) if m.start() > start]
    return markdown[start:following[0] if following else len(markdown)]


@pytest.mark.parametrize("name", sorted(reference.FILES))
def test_checked_in_reference_is_what_the_code_generates(name):
    path = ROOT / reference.REFERENCE_DIR / name
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing: run {reference.REGENERATE}"
    assert path.read_text(encoding="utf-8") == reference.FILES[name](), \
        f"{path.relative_to(ROOT)} is out of date: run {reference.REGENERATE}"


def test_every_command_and_visible_option_is_in_the_cli_reference():
    text = reference.cli_markdown()
    root = typer.main.get_command(app)
    for path in _commands():
        assert f"\n## clt {' '.join(path)}\n" in text, f"clt {' '.join(path)} is not in the CLI reference"
        command = root
        for part in path:
            command = command.commands[part]
        section = text.split(f"\n## clt {' '.join(path)}\n", 1)[1].split("\n## ", 1)[0]
        for param in command.params:
            shown = f"`{param.opts[0]}`" if param.param_type_name == "option" else \
                f"`{(param.metavar or param.name.upper()).removesuffix('...')}"
            assert (shown in section) != bool(param.hidden), f"{shown} of clt {' '.join(path)}"
    assert {("init",), ("index",), ("embed",)} <= set(_commands())


def test_renamed_options_are_documented_under_their_new_names_only():
    text = reference.cli_markdown()
    assert "`--tensorboard-projector`" in text and "`--projector`" not in text
    index = text.split("\n## clt index\n", 1)[1].split("\n## ", 1)[0]
    assert "`--type`" in index and "`--kind`" not in index


def test_every_recipe_field_is_in_the_recipe_reference():
    text = reference.recipe_markdown()
    for dotted, _, _ in _fields(Recipe):
        assert f"`{dotted}`" in text, f"recipe field {dotted} is not in the recipe reference"


@pytest.mark.parametrize("kind, registry, section", [("encoder", ENCODERS, "model"),
                                                     ("objective", OBJECTIVES, "objective")])
def test_every_encoder_and_objective_parameter_is_in_the_recipe_reference(kind, registry, section):
    text = reference.recipe_markdown()
    for name in registry.names():
        params = registry[name].params
        part = _entry_text(text, name)
        for f in dataclasses.fields(params):
            row = f"| `{section}.{f.name}` |"
            assert row in part, f"{kind} {name}'s {f.name} is not under its heading"
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert f" {reference._yaml(default)} |" in part.split(row, 1)[1].split("\n", 1)[0]


def test_every_field_carries_a_doc():
    missing = [dotted for dotted, f, _ in _fields(Recipe) if not f.metadata.get("doc")]
    for registry in (ENCODERS, OBJECTIVES):
        for name in registry.names():
            missing += [f"{name}.{f.name}" for f in dataclasses.fields(registry[name].params)
                        if not f.metadata.get("doc")]
    assert not missing, f"fields without a doc (write them with clt.typed.knob): {missing}"


@pytest.mark.parametrize("raw, dotted", [
    ({"pretrain": {"lr": 0}}, "pretrain.lr"),
    ({"pretrain": {"monitor": {"knn": 0}}}, "pretrain.monitor.knn"),
    ({"pretrain": {"augment": {"flip": 1.5}}}, "pretrain.augment.flip"),
    ({"probe": {"hidden": [64, 0]}}, "probe.hidden"),
    ({"seed": -1}, "seed"),
    ({"objective": {"name": "simclr", "temperature": 0}}, "objective.temperature"),
    ({"objective": {"name": "moco", "target_momentum": 1.0}}, "objective.target_momentum"),
    ({"model": {"encoder": "cifar_resnet", "depth": 21}}, "model.depth"),
])
def test_the_range_check_says_what_the_field_metadata_says(raw, dotted):
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(raw, "mine.yaml")
    section, _, key = dotted.rpartition(".")
    owner = {"objective": OBJECTIVES[raw.get("objective", {}).get("name", "pair")].params,
             "model": ENCODERS[raw.get("model", {}).get("encoder", "pair_cnn")].params}.get(section)
    if owner is None:
        owner = {d: reference._dataclass_of(o, f.name) for d, f, o in _fields(Recipe)}.get(section, Recipe)
    must = next(f.metadata["must"] for f in dataclasses.fields(owner) if f.name == key)
    assert f"{dotted} = " in str(err.value) and f"it must be {must}" in str(err.value)


def test_values_in_range_pass_the_same_checks():
    recipe = recipe_from_dict({"pretrain": {"lr": 0.5, "monitor": {"knn": 1}, "augment": {"flip": 1.0}},
                               "objective": {"name": "moco", "target_momentum": 0.0}, "seed": 2**32 - 1})
    assert (recipe.pretrain.monitor.knn, recipe.objective.params["target_momentum"]) == (1, 0.0)


def test_references_depend_on_nothing_but_the_code(monkeypatch):
    first = {name: make() for name, make in reference.FILES.items()}
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("TERMINAL_WIDTH", "40")
    assert {name: make() for name, make in reference.FILES.items()} == first
    for text in first.values():
        assert not re.search(r"/(work|home|tmp|Users)/|shared/datasets|\d{4}-\d\d-\d\d", text)


def test_help_and_docstrings_name_placeholder_paths_not_a_development_folder():
    text = reference.cli_markdown()
    assert "PATH/TO/mnist" in text and "../" not in text
    for path in (ROOT / "clt").rglob("*.py"):
        assert "shared/datasets" not in path.read_text(encoding="utf-8"), path


def test_stale_files_are_found_and_rewritten(tmp_path):
    (tmp_path / reference.REFERENCE_DIR).mkdir(parents=True)
    (tmp_path / reference.REFERENCE_DIR / "cli.md").write_text("old\n", encoding="utf-8")
    assert reference.stale(tmp_path) == ["cli.md", "recipe.md"]
    reference.write(tmp_path)
    assert reference.stale(tmp_path) == []
