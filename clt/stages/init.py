"""`clt init`: a commented recipe for a stored dataset and an objective, to start from.

Its settings are a shipped recipe's (package data, clt/recipes/): for grayscale images
the digits recipe of the objective, for colour ones its CIFAR-10 recipe. The dataset then decides
what must change to fit it (the encoder for large images, the batch for few images, no probe
without labels), and each such change is said in a comment where it is made. Every key's comment
is its field's doc (clt.typed.knob), so the file, the reference and the range checks agree.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

from clt.atomic import written_aside
from clt.errors import CltError, DataError, RecipeError, did_you_mean
from clt.stages.context import Context
from clt.stages.dataset import dataset_artifact

# objective -> (shipped recipe for grayscale images, for colour images), names in clt/recipes/.
# cosine_pair has no colour recipe of its own: its digits recipe takes any channels.
SOURCES = {
    "barlow_twins": ("digits_barlow_twins", "cifar10_barlow_twins_cpu"),
    "byol": ("digits_byol", "cifar10_byol_cpu"),
    "cosine_pair": ("digits_cosine", "digits_cosine"),
    "moco": ("digits_moco", "cifar10_moco_cpu"),
    "nnclr": ("digits_nnclr", "cifar10_nnclr_cpu"),
    "pair": ("digits_pair", "cifar10_pair_cpu"),
    "simclr": ("digits_simclr", "cifar10_simclr_cpu"),
    "simsiam": ("digits_simsiam", "cifar10_simsiam_cpu"),
    "supcon": ("digits_supcon", "cifar10_supcon"),
    "triplet": ("digits_triplet", "cifar10_triplet"),
    "vicreg": ("digits_vicreg", "cifar10_vicreg_cpu"),
}
# from this side on, the small CNNs of the shipped recipes (flattened to a Linear layer, or at
# full resolution through every stage) cost too much: ResNet-18's strided stem downsamples first
LARGE_SIDE = 64
WIDTH = 100  # columns of the written comments


@dataclasses.dataclass
class Dataset:
    """What init needs to know of a stored dataset."""

    name: str
    channels: int
    height: int
    width: int
    train: int
    test: int
    classes: int

    @property
    def labelled(self) -> bool:
        return self.classes > 0

    def describe(self) -> str:
        labels = f"{self.classes} classes" if self.labelled else "no labels"
        return (f"{self.channels}×{self.height}×{self.width} images, {self.train} train and {self.test} test, "
                f"{labels}")


def init_recipe(ctx: Context, path: str, dataset: str, objective: str, force: bool = False) -> Path:
    """Write a commented recipe for `dataset` and `objective` to `path`; it loads with clt pretrain.

    Example: init_recipe(ctx, "mine.yaml", "digits", "simclr").read_text().startswith("# A recipe")
    """
    out = Path(path)
    if out.exists() and not force:
        raise CltError(f"'{out}' already exists", "pass --force to replace it, or name another file")
    entry = _objective(objective)
    data = _dataset(ctx, dataset)
    if entry.uses_labels and not data.labelled:
        raise DataError(f"objective '{objective}' learns from class labels, and dataset '{dataset}' has none",
                        f"pick a self-supervised objective: {', '.join(_self_supervised())}")
    source = SOURCES[objective][data.channels != 1]
    raw, notes = _fitted(shipped_settings(source), data)
    raw = {"name": out.stem, "seed": 0, "data": {"dataset": dataset}, **raw}
    if not (data.labelled and data.test):
        raw.pop("probe", None)
        raw.pop("evaluate", None)
    from clt.recipe import recipe_from_dict

    recipe = recipe_from_dict(raw, str(out))  # refused here, before anything is written, if it would not load
    text = _render(raw, recipe, _header(data, objective, entry, source), notes)
    with written_aside(out, "RECIPE") as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out


def shipped_settings(source: str) -> dict[str, Any]:
    """A shipped recipe's sections, base merged in; its name, seed and data are the new recipe's own."""
    from clt.recipe import read_raw, shipped_recipe

    raw = read_raw(shipped_recipe(source))
    return {key: raw[key] for key in ("model", "objective", "pretrain", "probe", "evaluate") if key in raw}


def _objective(name: str) -> Any:
    from clt.registry import OBJECTIVES

    entry = OBJECTIVES.get(name)
    if entry is None:
        raise RecipeError(f"objective {name!r} is not a registered objective", did_you_mean(name, OBJECTIVES.names()))
    if name not in SOURCES:
        raise RecipeError(f"objective {name!r} has no shipped recipe for clt init to start from",
                          f"start from one of: {', '.join(sorted(SOURCES))}, and set objective.name={name}")
    return entry


def _self_supervised() -> list[str]:
    from clt.registry import OBJECTIVES

    return [name for name in sorted(SOURCES) if not OBJECTIVES[name].uses_labels]


def _dataset(ctx: Context, name: str) -> Dataset:
    info = dataset_artifact(ctx, name).manifest["dataset"]
    channels, height, width = (int(v) for v in info["shape"])
    return Dataset(name, channels, height, width, int(info["train"]), int(info["test"]), len(info.get("classes") or []))


def _fitted(raw: dict[str, Any], data: Dataset) -> tuple[dict[str, Any], dict[str, str]]:
    """The shipped settings changed where this dataset needs it, and a note for each change by dotted key."""
    notes: dict[str, str] = {}
    side = min(data.height, data.width)
    model, pretrain = raw["model"], raw["pretrain"]
    if side >= LARGE_SIDE and model["encoder"] != "resnet18":
        notes["model.encoder"] = (f"clt init: resnet18, not the shipped {model['encoder']}: at {side} pixels a side "
                                  "its strided stem downsamples first")
        raw["model"] = {"encoder": "resnet18", **{k: v for k, v in model.items() if k.startswith("projection")}}
        if data.channels == 3 and pretrain.get("augment", {}).get("preset") == "simclr_cifar":
            pretrain["augment"]["preset"] = "imagenet_like"
            notes["pretrain.augment.preset"] = "clt init: imagenet_like (SimCLR's with blur) for images this large"
    stages = pretrain.get("progressive_resize") or []
    if stages and max(s for s, _ in stages) >= side:
        pretrain.pop("progressive_resize")
        notes["pretrain.epochs"] = (f"clt init: the shipped progressive_resize {stages} is left out, as its sides "
                                    f"are not below this dataset's {side} pixels: every epoch is at full size")
    batch = int(pretrain.get("batch_size", 64))
    if data.train // 4 < batch:
        fitted = max(2, 1 << max(1, (data.train // 4).bit_length() - 1))
        pretrain["batch_size"] = fitted
        notes["pretrain.batch_size"] = (f"clt init: {fitted}, not the shipped {batch}: the dataset has "
                                        f"{data.train} train images")
        if pretrain.get("optimizer") in ("sgd", "lars"):  # SimCLR's linear scaling rule; Adam's is left
            shipped_lr = pretrain["lr"]
            pretrain["lr"] = round(shipped_lr * fitted / batch, 6)
            notes["pretrain.lr"] = f"clt init: the shipped {shipped_lr:g} × {fitted}/{batch}, as the batch is smaller"
    return raw, notes


def _header(data: Dataset, objective: str, entry: Any, source: str) -> list[str]:
    from clt.registry import summary

    lines = [f"A recipe written by `clt init` for dataset '{data.name}' ({data.describe()}) and objective "
             f"'{objective}': {summary(entry)}",
             f"Its settings are those of the shipped recipe recipes/{source}.yaml, measured to learn; what was "
             "changed to fit this dataset says so where it is.",
             "Train it with: clt pretrain THIS_FILE (or change a key for one run with --set section.key=value)."]
    if not (data.labelled and data.test):
        lines.append("No probe: or evaluate: sections: the dataset has no labelled test split, so `clt evaluate "
                     "ENCODER` measures the encoder without labels (view retrieval against untrained and pixels).")
    lines.append("Every key is described in docs/reference/recipe.md.")
    return lines


def _render(raw: dict[str, Any], recipe: Any, header: list[str], notes: dict[str, str]) -> str:
    from clt.recipe import Recipe
    from clt.registry import ENCODERS, OBJECTIVES

    out = _comment(header, "") + "\n"
    for key, value in raw.items():
        if not isinstance(value, dict):
            out += _field(Recipe, key, value, "", notes, key)
            continue
        out += "\n" + _comment([_doc(Recipe, key)], "") + f"{key}:\n"
        section = getattr(recipe, key)
        cls = type(section)
        if key == "model":  # every parameter of the encoder, the shipped values or the defaults
            value = _with_params(value, recipe.model.params, "encoder")
            params = ENCODERS[recipe.model.encoder].params
        elif key == "objective":
            value = _with_params(value, recipe.objective.params, "name")
            params = OBJECTIVES[recipe.objective.name].params
        else:
            params = None
        for name, item in value.items():
            owner = cls if name in {f.name for f in dataclasses.fields(cls)} else params
            out += _field(owner, name, item, "  ", notes, f"{key}.{name}")
    return out


def _with_params(shipped: dict[str, Any], resolved: dict[str, Any], name_key: str) -> dict[str, Any]:
    """The section's name first, then every registered parameter, then the section's own keys."""
    own = {k: v for k, v in shipped.items() if k not in resolved and k != name_key}
    return {name_key: shipped[name_key], **{k: shipped.get(k, v) for k, v in resolved.items()}, **own}


def _field(owner: Any, name: str, value: Any, indent: str, notes: dict[str, str], dotted: str) -> str:
    lines = [_doc(owner, name)] + ([notes[dotted]] if dotted in notes else [])
    if isinstance(value, dict) and dataclasses.is_dataclass(owner):
        nested = _typing_hint(owner, name)
        body = "".join(_field(nested, k, v, indent + "  ", notes, f"{dotted}.{k}") for k, v in value.items())
        return _comment(lines, indent) + f"{indent}{name}:\n" + body
    return _comment(lines, indent) + f"{indent}{name}: {_yaml(value)}\n"


def _typing_hint(owner: type, name: str) -> Any:
    """The dataclass a field holds (`AugmentConfig | None` -> AugmentConfig)."""
    import typing

    hint = typing.get_type_hints(owner)[name]
    found = [a for a in (typing.get_args(hint) or (hint,)) if dataclasses.is_dataclass(a)]
    return found[0] if found else None


def _doc(owner: Any, name: str) -> str:
    if owner is None or not dataclasses.is_dataclass(owner):
        return ""
    return next((f.metadata.get("doc", "") for f in dataclasses.fields(owner) if f.name == name), "")


def _comment(lines: list[str], indent: str) -> str:
    wrapped = [w for line in lines if line
               for w in textwrap.wrap(line, WIDTH - len(indent) - 2, break_on_hyphens=False)]
    return "".join(f"{indent}# {w}\n" for w in wrapped)


def _yaml(value: Any) -> str:
    """One value in YAML's flow style, as the recipe reader reads it back."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True)
    return text.removesuffix("\n").removesuffix("\n...").strip()  # a scalar document ends with "..."
