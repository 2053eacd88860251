"""Recipes: YAML parsed once into typed dataclasses, validated before any work starts.

A recipe has sections `data`, `model`, `objective`, `pretrain`, `probe`, `evaluate`.
`model` and `objective` carry a registered name plus that entry's own parameters, which are
checked against the entry's parameter dataclass, so an unknown key is caught there too.
`to_dict()` gives the canonical resolved form stored with every artifact and hashed for its id.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from clt.errors import RecipeError, did_you_mean
from clt.typed import OMIT_IF_DEFAULT, from_dict, params_of, short, to_plain  # noqa: F401  (recipe readers use them)

Precision = Literal["auto", "fp32", "bf16", "fp16"]




@dataclass
class DataConfig:
    dataset: str = "digits"
    # pretrain on a seeded, class-balanced subset of this many train images (0 = all): smoke
    # runs of big recipes on a small machine; probes and evaluations still see the full splits
    train_limit: int = 0


@dataclass
class AugmentConfig:
    """Batched view augmentations; `preset` picks per-dataset defaults, other keys override them."""

    preset: str = "auto"
    crop_scale: tuple[float, float] | None = None
    flip: float | None = None
    jitter: float | None = None
    jitter_prob: float | None = None
    grayscale: float | None = None
    blur: float | None = None
    rotate: float | None = None
    translate: float | None = None


@dataclass
class ModelConfig:
    encoder: str = "pair_cnn"
    params: dict[str, Any] = field(default_factory=dict)
    # projection head used only while pretraining, then dropped: layer widths after the encoder
    projection: list[int] | None = None
    # batch norm in the projection head: "hidden" after each hidden layer (SimCLR v2, BYOL, MoCo v2,
    # NNCLR, Barlow Twins and VICReg heads), "all" also on the output without a learned scale (SimSiam)
    projection_norm: Literal["none", "hidden", "all"] = field(default="none", metadata=OMIT_IF_DEFAULT)


@dataclass
class ObjectiveConfig:
    name: str = "pair"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class MonitorConfig:
    """kNN accuracy of the encoder on fixed, seeded, class-balanced subsets, every N epochs."""

    knn: int = 200
    every: int = 1
    train: int = 10000
    test: int = 2000


@dataclass
class PretrainConfig:
    epochs: int = 10
    batch_size: int = 64
    optimizer: Literal["adam", "adamw", "sgd", "lars"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    lars_eta: float = field(default=0.001, metadata=OMIT_IF_DEFAULT)  # LARS trust coefficient
    scheduler: Literal["none", "step", "cosine"] = "none"
    step_size: int = 7
    gamma: float = 0.1
    warmup_epochs: int = 0
    precision: Precision = "auto"
    channels_last: bool = False
    compile: bool = False
    sync_batchnorm: bool = False  # with several processes: batch-norm statistics over the global batch
    augment: AugmentConfig | None = None
    checkpoint_every: int = 0  # steps between resumable checkpoints; 0 = once per epoch
    snapshot_every: int = 0  # epochs between encoder snapshots kept in the artifact (accuracy vs time); 0 = none
    # progressive resizing: [[16, 10], [24, 8]] trains the first 10 epochs on images downscaled
    # to 16×16, the next 8 at 24×24, the rest at full size; an epoch at side s costs about
    # (s / size)² of a full one, and the early epochs learn coarse features as well at low size
    progressive_resize: list[tuple[int, int]] = field(default_factory=list, metadata=OMIT_IF_DEFAULT)
    # online kNN monitor (no projection head, no gradient, no augmentation); absent while unset
    monitor: MonitorConfig | None = field(default=None, metadata=OMIT_IF_DEFAULT)
    # a time budget in minutes of training (0 = off): `epochs` is then planned from a short timed
    # trial, as the whole epochs that fit, and the stored recipe holds the epochs planned beside
    # the minutes asked for, so one budget may give other epochs (other encoders) on other machines
    minutes: float = field(default=0.0, metadata=OMIT_IF_DEFAULT)
    # a folder for TensorBoard event files (a side output: never part of the encoder's address)
    tensorboard: str = field(default="", metadata=OMIT_IF_DEFAULT)


@dataclass
class ProbeConfig:
    head: Literal["linear", "mlp"] = "linear"
    hidden: list[int] = field(default_factory=lambda: [256])
    epochs: int = 1
    batch_size: int = 64
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    labels_per_class: int | None = None
    labels: int | None = None
    finetune: bool = False
    finetune_lr_scale: float = 0.1


@dataclass
class EvaluateConfig:
    pairs: int = 10048
    knn_k: int = 10
    knn_metric: Literal["cosine", "euclidean"] = "cosine"
    knn_vote: Literal["majority", "distance"] = "majority"
    knn_temperature: float = 0.07


@dataclass
class Recipe:
    name: str = "recipe"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


# Sections whose registered name selects a parameter dataclass: section -> (name key).
_NAMED_SECTIONS = {"model": "encoder", "objective": "name"}
# Range checks: (section, key) -> (predicate, what it must be).
_RANGES: dict[tuple[str, str], tuple[typing.Callable[[Any], bool], str]] = {
    ("pretrain", "epochs"): (lambda v: v >= 0, ">= 0"),
    ("pretrain", "minutes"): (lambda v: 0 <= v <= 525_600, "in [0, 525600] (0 = no budget; at most a year)"),
    ("pretrain", "momentum"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("pretrain", "lars_eta"): (lambda v: v > 0, "> 0"),
    ("pretrain", "monitor"): (lambda v: v is None or (v.knn >= 1 and v.every >= 1 and v.train >= 1 and v.test >= 1),
                              "a mapping of knn, every, train and test, each >= 1"),
    ("pretrain", "batch_size"): (lambda v: v >= 2, ">= 2 (contrastive losses compare samples in a batch)"),
    ("pretrain", "lr"): (lambda v: v > 0, "> 0"),
    ("pretrain", "weight_decay"): (lambda v: v >= 0, ">= 0"),
    ("pretrain", "gamma"): (lambda v: v > 0, "> 0"),
    ("pretrain", "step_size"): (lambda v: v >= 1, ">= 1"),
    ("pretrain", "warmup_epochs"): (lambda v: v >= 0, ">= 0"),
    ("pretrain", "checkpoint_every"): (lambda v: v >= 0, ">= 0"),
    ("pretrain", "snapshot_every"): (lambda v: v >= 0, ">= 0"),
    ("data", "train_limit"): (lambda v: v >= 0, ">= 0 (0 = every train image)"),
    ("probe", "epochs"): (lambda v: v >= 0, ">= 0"),
    ("probe", "batch_size"): (lambda v: v >= 1, ">= 1"),
    ("probe", "lr"): (lambda v: v > 0, "> 0"),
    ("probe", "labels_per_class"): (lambda v: v is None or v >= 1, ">= 1"),
    ("probe", "labels"): (lambda v: v is None or v >= 1, ">= 1"),
    ("probe", "hidden"): (lambda v: all(w >= 1 for w in v), "a list of positive widths"),
    ("evaluate", "pairs"): (lambda v: v >= 2, ">= 2"),
    ("evaluate", "knn_k"): (lambda v: v >= 1, ">= 1"),
    ("evaluate", "knn_temperature"): (lambda v: v > 0, "> 0"),
    ("model", "projection"): (lambda v: v is None or all(1 <= w <= 65536 for w in v),
                              "a list of widths between 1 and 65536"),
}


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a YAML recipe, apply `section.key=value` overrides, validate everything."""
    return recipe_from_dict(read_raw(path, overrides), str(path))


def read_raw(path: str | Path, overrides: list[str] | tuple[str, ...] = (), seed: int | None = None,
             _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe file's mapping with its base merged in and overrides (and seed) applied, not yet
    validated: what the pretrain memo hashes before anything heavy is imported."""
    file = Path(path)
    raw = with_base(parse_yaml(read_recipe_text(file), str(path)), file, _chain)
    raw.setdefault("name", file.stem)
    for item in overrides:
        apply_override(raw, item, str(path))
    if seed is not None:
        raw["seed"] = seed
    return raw


def read_recipe_text(file: Path) -> str:
    """A recipe file's text: a regular UTF-8 file of at most MAX_RECIPE_BYTES, refused by name
    otherwise (a FIFO or a link to /dev/zero never ends; a huge one costs minutes to parse)."""
    import stat

    try:
        info = file.stat()
        if not stat.S_ISREG(info.st_mode):
            raise RecipeError(f"recipe file '{file}' is not a regular file", "pass a YAML file")
        if info.st_size > MAX_RECIPE_BYTES:
            raise _too_big(file, info.st_size)
        with open(file, "rb") as fh:
            raw = fh.read(MAX_RECIPE_BYTES + 1)  # the file may have grown since stat()
    except FileNotFoundError:
        raise RecipeError(f"recipe file '{file}' does not exist", "check the path; recipes live in recipes/") from None
    except OSError as err:
        raise RecipeError(f"cannot read recipe '{file}': {err.strerror}", "pass a readable YAML file") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise _too_big(file, len(raw))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RecipeError(f"recipe file '{file}' is not UTF-8 text ({err.reason} at byte {err.start})",
                          "save the recipe as UTF-8 YAML") from None


def _too_big(file: Path, size: int) -> RecipeError:
    return RecipeError(f"recipe file '{file}' is {size:,} bytes, over clt's limit of {MAX_RECIPE_BYTES:,} bytes "
                       "for a recipe", "a recipe is a few hundred lines: check that this is the recipe meant")


MAX_BASE_DEPTH = 8


def with_base(raw: dict[str, Any], file: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """`base: FILE` (a path relative to the recipe) names a recipe this one starts from: the base's
    sections are merged under this file's, key by key, so a recipe holds only what it changes. The
    base's name is not inherited, and an `objective` of another name replaces the base's whole."""
    if "base" not in raw:
        return raw
    base = raw.pop("base")
    if not isinstance(base, str) or not base:
        raise RecipeError(f"{file}: base must be the path of a recipe file, got {base!r:.80}",
                          "write e.g. base: bases/cifar10_cpu.yaml (relative to this recipe)")
    chain = (*chain, file.resolve())
    base_file = file.parent / base
    if base_file.resolve() in chain or len(chain) > MAX_BASE_DEPTH:
        raise RecipeError(f"{file}: base '{base}' leads back to itself or is nested more than {MAX_BASE_DEPTH} deep "
                          f"({' -> '.join(p.name for p in chain)} -> {base_file.name})",
                          "make the chain of base: files end in a recipe without base:")
    if not base_file.is_file():
        raise RecipeError(f"{file}: base recipe '{base}' does not exist (looked for {base_file})",
                          "give the base's path relative to the recipe file")
    inherited = read_raw(base_file, _chain=chain)
    inherited.pop("name", None)
    return merge_recipes(inherited, raw)


def merge_recipes(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """`own` over `base`: mappings merged key by key, anything else replaced."""
    merged = dict(base)
    for key, value in own.items():
        same_objective = not (key == "objective" and isinstance(value, dict) and isinstance(base.get(key), dict)
                              and value.get("name", base[key].get("name")) != base[key].get("name"))
        if isinstance(value, dict) and isinstance(base.get(key), dict) and same_objective:
            merged[key] = merge_recipes(base[key], value)
        else:
            merged[key] = value
    return merged


def parse_yaml(text: str, where: str) -> dict[str, Any]:
    import yaml

    try:
        # safe loading only: a tag such as !!python/object must never construct anything; and
        # no anchors/aliases, which let a few hundred bytes expand into gigabytes
        raw = yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass
    except _AliasFound as err:
        raise RecipeError(f"{where}: YAML aliases (*{short(str(err))}) are not allowed in recipes",
                          "write the values out instead of using &anchors and *aliases") from None
    except _TooLarge as err:
        raise RecipeError(f"{where}: {err}", "a recipe is a few sections of a few keys: check that this is the "
                          "recipe meant") from None
    except _DuplicateKey as err:
        raise RecipeError(f"{where}: key {short(err.key)} appears twice, at {err.lines()}",
                          "keep one of them (a second one would silently replace the first)") from None
    except RecursionError:
        raise RecipeError(f"{where}: the YAML is nested too deeply", "flatten the recipe") from None
    except ValueError as err:  # e.g. an integer of more than 4,300 digits, which Python refuses to read
        raise RecipeError(f"{where}: a value cannot be read ({err})", "write a smaller number") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
        if context and start is not None and mark is not None and start.line != mark.line:
            # an unclosed bracket or quote is only noticed later (often at the end of the file)
            problem += f" ({context} that starts at line {start.line + 1})"
        raise RecipeError(
            f"{where}: malformed YAML{at}: {problem}", "fix the YAML syntax (indentation, colons, quotes)"
        ) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: a recipe must be a mapping of sections, got {type(raw).__name__}",
                          "start the file with keys such as 'data:', 'model:', 'objective:'")
    return raw


class _AliasFound(Exception):
    pass


class _TooLarge(Exception):
    """More nodes or deeper nesting than any recipe needs: refused while composing, before the rest
    of the document is read (a million keys took 80 s and 1.6 GB before they were refused)."""


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first, second):  # yaml Marks of the two keys
        super().__init__(key)
        self.key, self.first, self.second = key, first, second

    def lines(self) -> str:
        if self.first.line != self.second.line:
            return f"lines {self.first.line + 1} and {self.second.line + 1}"
        return f"line {self.first.line + 1}, columns {self.first.column + 1} and {self.second.column + 1}"


MERGE_TAG = "tag:yaml.org,2002:merge"


def _recipe_loader():
    import yaml

    class RecipeLoader(yaml.SafeLoader):
        def __init__(self, stream):
            super().__init__(stream)
            self.nodes, self.depth = 0, 0

        def compose_node(self, parent, index):  # type: ignore[override]
            if self.check_event(yaml.AliasEvent):
                raise _AliasFound(self.peek_event().anchor)
            self.nodes += 1
            if self.nodes > MAX_RECIPE_NODES:
                raise _TooLarge(f"more than {MAX_RECIPE_NODES:,} keys and values")
            if self.depth >= MAX_RECIPE_DEPTH:
                raise _TooLarge(f"nested more than {MAX_RECIPE_DEPTH} levels deep")
            self.depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def construct_mapping(self, node, deep=False):  # type: ignore[override]
            _check_unique_keys(self, node)
            return super().construct_mapping(node, deep)

    return RecipeLoader


def _check_unique_keys(loader, node) -> None:
    """Refuse a key given twice in one mapping (YAML loaders keep the last one without a word).
    Keys merged in with `<<:` are meant to be overridden and are left out."""
    seen: dict[Any, Any] = {}
    for key_node, _ in getattr(node, "value", []):
        if key_node.tag == MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node)
        except TypeError:  # an unhashable key: the constructor refuses it with its own message
            continue
        if first is not key_node:
            raise _DuplicateKey(key, first.start_mark, key_node.start_mark)


class _LazyLoader:
    """Built on first use so that importing clt.recipe does not import yaml."""

    def __call__(self, stream):
        return _recipe_loader()(stream)


_RecipeLoader = _LazyLoader()


def recipe_from_dict(raw: dict[str, Any], where: str = "recipe", overrides: typing.Iterable[str] = ()) -> Recipe:
    import copy

    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: a recipe must be a mapping of sections, got {type(raw).__name__}",
                          "start the recipe with keys such as 'data:', 'model:', 'objective:'")
    raw = copy.deepcopy(raw)
    for item in overrides:
        apply_override(raw, item, where)
    raw = _fold_named_sections(raw, where)
    recipe = from_dict(Recipe, raw, where, "")
    _check_ranges(recipe, where)
    _check_registered(recipe, where)
    return recipe


def apply_override(raw: dict[str, Any], item: str, where: str) -> None:
    """`pretrain.epochs=2` sets raw['pretrain']['epochs'] = 2 (value parsed as YAML)."""
    import yaml

    if len(item) > MAX_SET_CHARS:  # no value of it is quoted, so it is refused before anything is read
        raise RecipeError(f"--set value of {len(item):,} characters is longer than the limit of {MAX_SET_CHARS:,}",
                          "put long values in the recipe file instead")
    if "=" not in item:
        raise RecipeError(f"--set {short(item)} is not KEY=VALUE", "write e.g. --set pretrain.epochs=2")
    key, _, text = item.partition("=")
    try:
        # the recipe files' loader: no anchors and aliases, which let a few bytes expand into gigabytes
        value = yaml.load(text, Loader=_RecipeLoader) if text.strip() else None  # noqa: S506
    except _AliasFound as err:
        raise RecipeError(f"--set {short(key)}: YAML aliases (*{short(str(err))}) are not allowed",
                          "write the value out") from None
    except _TooLarge as err:
        raise RecipeError(f"--set {short(key)}: the value has {err}", "put large values in the recipe file") from None
    except _DuplicateKey as err:
        raise RecipeError(f"--set {short(key)}: key {short(err.key)} appears twice, at {err.lines()} of the value",
                          "keep one of them") from None
    except ValueError as err:
        raise RecipeError(f"--set {short(key)}: the value cannot be read ({err})", "write a smaller number") from None
    except RecursionError:
        raise RecipeError(f"--set {short(key)}: the value is nested too deeply", "flatten the value") from None
    except yaml.YAMLError:
        value = text
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise RecipeError(f"--set {short(item)} has an empty key", "write e.g. --set pretrain.epochs=2")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"--set {short(item)}: {short(part)} is not a section", "override a key inside a section")
        node = child
    node[parts[-1]] = value


def _fold_named_sections(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """Move registry-specific keys of `model` and `objective` into their `params` mapping."""
    for section in _NAMED_SECTIONS:
        body = raw.get(section)
        if body is None:
            continue
        if not isinstance(body, dict):
            raise RecipeError(f"{where}: '{section}' must be a mapping, got {type(body).__name__}",
                              f"write '{section}:' followed by indented keys")
        own = {f.name for f in dataclasses.fields(ModelConfig if section == "model" else ObjectiveConfig)}
        params = body.get("params")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise RecipeError(f"{where}: '{section}.params' must be a mapping, got {type(params).__name__}",
                              f"write the parameters as keys of '{section}:' (or of '{section}.params:')")
        params = dict(params)
        folded = {}
        for key, value in body.items():
            if key in own:
                folded[key] = value
            else:
                params[key] = value
        folded["params"] = params
        raw[section] = folded
    return raw


def _check_registered(recipe: Recipe, where: str) -> None:
    """Names must be registered; registry parameters are validated against their dataclasses."""
    from clt.registry import ENCODERS, OBJECTIVES

    # the dataset name is checked against the store when a stage runs: users import their own
    recipe.model.params = _registered_params(ENCODERS, recipe.model.encoder, recipe.model.params, where,
                                             "model", "encoder")
    recipe.objective.params = _registered_params(OBJECTIVES, recipe.objective.name, recipe.objective.params,
                                                 where, "objective", "name")


def _registered_params(registry, name: str, params: dict[str, Any], where: str, section: str,
                       key: str) -> dict[str, Any]:
    """Check a registry entry's name and its parameters (types, then the dataclass's check())."""
    entry = registry.get(name)
    if entry is None:
        raise RecipeError(f"{where}: {section}.{key} {short(name)} is not a registered {registry.kind}",
                          did_you_mean(name, registry.names()))
    typed = from_dict(entry.params, params, where, section)
    check = getattr(typed, "check", None)
    problem = check() if check is not None else None
    if problem:
        raise RecipeError(f"{where}: {section}: {problem}", "change the value in the recipe or with --set")
    return to_plain(typed)


MAX_SET_CHARS = 10_000  # one --set item
# A recipe is a few sections of a few keys (the largest shipped one: under 100 nodes, 4 deep):
# these bound what reading a hostile or mistaken file costs, checked before and while it is parsed.
MAX_RECIPE_BYTES = 2**20
MAX_RECIPE_NODES = 10_000
MAX_RECIPE_DEPTH = 32
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
RESERVED_NAMES = ("latest", "dataset", "memo")


def _check_ranges(recipe: Recipe, where: str) -> None:
    import re

    if not re.fullmatch(NAME_PATTERN, recipe.name) or ".." in recipe.name or \
            recipe.name.split("-")[0] in RESERVED_NAMES:
        raise RecipeError(f"{where}: name {short(recipe.name)} is not a usable recipe name",
                          "use 1-100 letters, digits, '.', '_' or '-' (not 'latest', 'dataset' or 'memo')")
    if not 0 <= recipe.seed < 2**32:
        raise RecipeError(f"{where}: seed = {recipe.seed} is out of range: it must be in [0, 2**32)",
                          "pick a smaller seed")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", recipe.data.dataset):
        raise RecipeError(f"{where}: data.dataset {short(recipe.data.dataset)} is not a dataset name",
                          "use the name given to `clt download` (letters, digits, '.', '_', '-')")
    _check_progressive_resize(recipe.pretrain, where)
    for (section, key), (ok, must) in _RANGES.items():
        value = getattr(getattr(recipe, section), key)
        if not ok(value):
            raise RecipeError(f"{where}: {section}.{key} = {short(value)} is out of range: it must be {must}",
                              f"change {section}.{key} in the recipe or with --set {section}.{key}=...")


def _check_progressive_resize(cfg: PretrainConfig, where: str) -> None:
    """Sides at least 8 and growing, each stage at least one epoch, the last epoch at full size."""
    stages = cfg.progressive_resize
    key = "pretrain.progressive_resize"
    fix = f"write {key} as [[side, epochs], ...] with growing sides, e.g. [[16, 10], [24, 8]]"
    for i, (side, epochs) in enumerate(stages):
        if side < 8 or epochs < 1:
            raise RecipeError(f"{where}: {key}[{i}] = {[side, epochs]} is out of range: the side must be "
                              ">= 8 pixels and the epochs >= 1", fix)
        if i and side <= stages[i - 1][0]:
            raise RecipeError(f"{where}: {key}[{i}] side {side} is not larger than the stage before "
                              f"({stages[i - 1][0]})", fix)
    if stages and cfg.minutes:
        raise RecipeError(f"{where}: pretrain.minutes cannot plan a recipe with {key}: its low-resolution stages "
                          "are counted in epochs, and their steps take other times than the full-size trial "
                          "measures", f"drop one: --set {key}=[] to plan by minutes, or set pretrain.epochs and "
                          "leave pretrain.minutes at 0")
    low = sum(epochs for _, epochs in stages)
    if stages and low >= cfg.epochs:
        raise RecipeError(f"{where}: {key} covers {low} epochs but pretrain.epochs is {cfg.epochs}: the "
                          "last epochs must be at full size (the encoder is evaluated at full size)",
                          f"raise pretrain.epochs above {low} or shorten the low-resolution stages")
