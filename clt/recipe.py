"""Recipes: YAML parsed once into typed dataclasses, validated before any work starts.

A recipe has sections `data`, `model`, `objective`, `pretrain`, `probe`, `evaluate`.
`model` and `objective` carry a registered name plus that entry's own parameters, which are
checked against the entry's parameter dataclass, so an unknown key is caught there too.
`to_dict()` gives the canonical resolved form stored with every artifact and hashed for its id.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from clt.errors import RecipeError, did_you_mean
from clt.typed import OMIT_IF_DEFAULT, check_fields, from_dict, knob, short, to_plain  # noqa: F401  (recipe readers use them)
from clt.typed import params_of as _typed_params_of

Precision = Literal["auto", "fp32", "bf16", "fp16"]


def _at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: v >= low


def _positive(v: Any) -> bool:
    return v > 0


def _probability(v: Any) -> bool:
    return 0 <= v <= 1


# Every field is a knob: its doc, default and allowed range in one place. The generated recipe
# reference (docs/reference/recipe.md), `clt init`'s comments and the range check all read them.


@dataclass
class DataConfig:
    dataset: str = knob("digits", "name of a stored dataset: a built-in one (digits, mnist, fashion-mnist, "
                        "cifar10) or one imported with `clt download NAME --from PATH`")
    train_limit: int = knob(0, "pretrain on a seeded, class-balanced subset of this many train images (0 = all): "
                            "smoke runs of big recipes on a small machine; probes and evaluations still see the "
                            "full splits", check=_at_least(0), must=">= 0 (0 = every train image)")


@dataclass
class AugmentConfig:
    """Batched view augmentations; `preset` picks per-dataset defaults, other keys override them."""

    preset: str = knob("auto", "named set of augmentations (simclr_cifar, imagenet_like, digits, cifar_light, "
                       "cifar_crop, none); auto picks by dataset: digits for grayscale, simclr_cifar for colour")
    crop_scale: tuple[float, float] | None = knob(
        None, "random resized crop: range of the crop's area as a fraction of the image, [lo, hi]",
        check=lambda v: 0 < v[0] <= v[1] <= 1, must="[lo, hi] with 0 < lo <= hi <= 1")
    flip: float | None = knob(None, "probability of a horizontal flip", check=_probability, must="in [0, 1]")
    jitter: float | None = knob(None, "colour jitter strength s (brightness, contrast, saturation 0.8·s, hue 0.2·s)",
                                check=_at_least(0), must=">= 0")
    jitter_prob: float | None = knob(None, "probability that an image gets colour jitter at all",
                                     check=_probability, must="in [0, 1]")
    grayscale: float | None = knob(None, "probability of turning a colour image grey", check=_probability,
                                   must="in [0, 1]")
    blur: float | None = knob(None, "probability of a Gaussian blur (sigma drawn from [0.1, 2.0])",
                              check=_probability, must="in [0, 1]")
    rotate: float | None = knob(None, "largest rotation, in degrees either way", check=_at_least(0), must=">= 0")
    translate: float | None = knob(None, "largest shift, as a fraction of the image side", check=_probability,
                                   must="a fraction of the side in [0, 1]")


@dataclass
class ModelConfig:
    encoder: str = knob("pair_cnn", "registered encoder (the recipe reference lists each with its "
                        "parameters); its parameters are further keys of this section")
    params: dict[str, Any] = knob(doc="the encoder's parameters; usually written as keys of `model:` itself",
                                  factory=dict)
    projection: list[int] | None = knob(
        None, "projection head used only while pretraining, then dropped: its layer widths after the encoder "
        "(none: the loss reads the encoder's features)", check=lambda v: all(1 <= w <= 65536 for w in v),
        must="a list of widths between 1 and 65536")
    projection_norm: Literal["none", "hidden", "all"] = knob(
        "none", "batch norm in the projection head: hidden after each hidden layer (SimCLR v2, BYOL, MoCo v2, "
        "NNCLR, Barlow Twins and VICReg heads), all also on the output without a learned scale (SimSiam)",
        omit_if_default=True)


@dataclass
class ObjectiveConfig:
    name: str = knob("pair", "registered objective (the recipe reference lists each with its "
                     "parameters); its parameters are further keys of this section")
    params: dict[str, Any] = knob(doc="the objective's parameters; usually written as keys of `objective:` itself",
                                  factory=dict)


@dataclass
class MonitorConfig:
    """kNN accuracy of the encoder on fixed, seeded, class-balanced subsets, every N epochs."""

    knn: int = knob(200, "neighbours that vote", check=_at_least(1), must=">= 1")
    every: int = knob(1, "epochs between measurements", check=_at_least(1), must=">= 1")
    train: int = knob(10000, "train images embedded as the neighbours", check=_at_least(1), must=">= 1")
    test: int = knob(2000, "test images classified", check=_at_least(1), must=">= 1")


@dataclass
class PretrainConfig:
    epochs: int = knob(10, "passes over the train images", check=_at_least(0), must=">= 0")
    batch_size: int = knob(64, "images per step (each gives the objective's views)", check=_at_least(2),
                           must=">= 2 (contrastive losses compare samples in a batch)")
    optimizer: Literal["adam", "adamw", "sgd", "lars"] = knob("adam", "optimiser of the encoder and head")
    lr: float = knob(1e-3, "learning rate (after warm-up, before the scheduler)", check=_positive, must="> 0")
    weight_decay: float = knob(0.0, "L2 weight decay (decoupled for adamw)", check=_at_least(0), must=">= 0")
    momentum: float = knob(0.9, "SGD's and LARS's momentum (not the momentum target's EMA rate: that is "
                           "objective.target_momentum)", check=lambda v: 0 <= v < 1, must="in [0, 1)")
    lars_eta: float = knob(0.001, "LARS trust coefficient", check=_positive, must="> 0", omit_if_default=True)
    scheduler: Literal["none", "step", "cosine"] = knob("none", "learning-rate schedule over the epochs: none, "
                                                        "step (times gamma every step_size epochs) or cosine to 0")
    step_size: int = knob(7, "epochs between decays of the step scheduler", check=_at_least(1), must=">= 1")
    gamma: float = knob(0.1, "factor of each decay of the step scheduler", check=_positive, must="> 0")
    warmup_epochs: int = knob(0, "epochs of linear learning-rate warm-up from 0", check=_at_least(0), must=">= 0")
    precision: Precision = knob("auto", "arithmetic: auto (bf16 where the device has it, fp16 on CUDA without "
                                "it, else fp32), fp32, bf16 or fp16")
    channels_last: bool = knob(False, "store images and activations channels-last (faster convolutions on GPUs)")
    compile: bool = knob(False, "compile the model with torch.compile")
    sync_batchnorm: bool = knob(False, "with several processes: batch-norm statistics over the global batch")
    augment: AugmentConfig | None = knob(None, "view augmentations (objectives of two views; none: the dataset's "
                                         "auto preset)")
    checkpoint_every: int = knob(0, "steps between resumable checkpoints; 0 = once per epoch", check=_at_least(0),
                                 must=">= 0")
    snapshot_every: int = knob(0, "epochs between encoder snapshots kept in the artifact (accuracy vs time); "
                               "0 = none", check=_at_least(0), must=">= 0")
    progressive_resize: list[tuple[int, int]] = knob(
        doc="progressive resizing: [[16, 10], [24, 8]] trains the first 10 epochs on images downscaled to 16×16, "
        "the next 8 at 24×24, the rest at full size (sides >= 8 and growing, the last epoch at full size)",
        factory=list, omit_if_default=True)
    monitor: MonitorConfig | None = knob(None, "online kNN monitor of the encoder every few epochs (no projection "
                                         "head, no gradient, no augmentation); none: off", omit_if_default=True)
    minutes: float = knob(0.0, "a time budget in minutes of training (0 = off): epochs is then planned from a "
                          "short timed trial as the whole epochs that fit", check=lambda v: 0 <= v <= 525_600,
                          must="in [0, 525600] (0 = no budget; at most a year)", omit_if_default=True)
    tensorboard: str = knob("", "a folder for TensorBoard event files of the run (a side output: never part of "
                            "the encoder's address; needs the tensorboard extra)", omit_if_default=True)


@dataclass
class ProbeConfig:
    head: Literal["linear", "mlp"] = knob("linear", "classifier trained on the frozen encoder's features")
    hidden: list[int] = knob(doc="hidden widths of the mlp head", factory=lambda: [256],
                             check=lambda v: all(w >= 1 for w in v), must="a list of positive widths")
    epochs: int = knob(1, "passes over the labelled train images", check=_at_least(0), must=">= 0")
    batch_size: int = knob(64, "images per step", check=_at_least(1), must=">= 1")
    optimizer: Literal["adam", "sgd"] = knob("adam", "optimiser of the head")
    lr: float = knob(1e-3, "learning rate of the head", check=_positive, must="> 0")
    weight_decay: float = knob(0.0, "L2 weight decay", check=_at_least(0), must=">= 0")
    labels_per_class: int | None = knob(None, "train on this many labels per class (seeded, balanced); none: all",
                                        check=_at_least(1), must=">= 1")
    labels: int | None = knob(None, "train on this many labels in all (seeded, balanced); none: all",
                              check=_at_least(1), must=">= 1")
    finetune: bool = knob(False, "also train the encoder (at lr × finetune_lr_scale) instead of freezing it")
    finetune_lr_scale: float = knob(0.1, "the encoder's learning rate as a fraction of lr when fine-tuning",
                                    check=_positive, must="> 0")


@dataclass
class EvaluateConfig:
    pairs: int = knob(10048, "test pairs of pair verification (objectives with a verify rule)", check=_at_least(2),
                      must=">= 2")
    knn_k: int = knob(10, "neighbours of the kNN classifier (clt evaluate --knn overrides it)", check=_at_least(1),
                      must=">= 1")
    knn_metric: Literal["cosine", "euclidean"] = knob("cosine", "distance of the kNN classifier")
    knn_vote: Literal["majority", "distance"] = knob("majority", "kNN vote: one vote each, or weighted by "
                                                     "exp(similarity / knn_temperature)")
    knn_temperature: float = knob(0.07, "temperature of the distance-weighted vote", check=_positive, must="> 0")


@dataclass
class Recipe:
    name: str = knob("recipe", "the recipe's name: later commands take it to mean its latest artifact, e.g. "
                     "`clt probe NAME` (default: the file name)")
    seed: int = knob(0, "seed of every random choice (init, batches, views, subsets)",
                     check=lambda v: 0 <= v < 2**32, must="in [0, 2**32)")
    data: DataConfig = knob(doc="what to train on", factory=DataConfig)
    model: ModelConfig = knob(doc="the encoder, and the projection head used while pretraining",
                              factory=ModelConfig)
    objective: ObjectiveConfig = knob(doc="the contrastive loss", factory=ObjectiveConfig)
    pretrain: PretrainConfig = knob(doc="training the encoder (clt pretrain)", factory=PretrainConfig)
    probe: ProbeConfig = knob(doc="the classifier on the frozen encoder (clt probe)", factory=ProbeConfig)
    evaluate: EvaluateConfig = knob(doc="measuring probes and encoders (clt evaluate)", factory=EvaluateConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


SECTIONS = ("data", "model", "objective", "pretrain", "probe", "evaluate")
# Sections whose registered name selects a parameter dataclass: section -> (name key).
_NAMED_SECTIONS = {"model": "encoder", "objective": "name"}
# Keys renamed for clarity: old dotted key -> new one. A recipe or --set that uses the old one is
# refused with the new name; a stored artifact's recipe (written before) is read with it renamed.
RENAMED = {
    "objective.momentum": "objective.target_momentum",
    "objective.momentum_schedule": "objective.target_momentum_schedule",
}
WHY_RENAMED = {"objective.momentum": "the momentum target's EMA rate; pretrain.momentum is the optimiser's"}


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
        raise RecipeError(f"recipe file '{file}' does not exist", _where_recipes_are(file)) from None
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


def recipe_from_dict(raw: dict[str, Any], where: str = "recipe", overrides: typing.Iterable[str] = (),
                     stored: bool = False) -> Recipe:
    """A validated Recipe. `stored`: `raw` is a stored artifact's recipe, which may hold keys of
    RENAMED under their old names (written before the rename): those are read under the new ones."""
    import copy

    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: a recipe must be a mapping of sections, got {type(raw).__name__}",
                          "start the recipe with keys such as 'data:', 'model:', 'objective:'")
    raw = copy.deepcopy(raw)
    for item in overrides:
        apply_override(raw, item, where)
    raw = _fold_named_sections(raw, where)
    _renamed_keys(raw, where, stored)
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


def _renamed_keys(raw: dict[str, Any], where: str, stored: bool) -> None:
    """Refuse a key of RENAMED under its old name, naming the new one; for a stored recipe, rename it."""
    for old, new in RENAMED.items():
        section, key = old.split(".")
        params = raw.get(section, {}).get("params", {}) if isinstance(raw.get(section), dict) else {}
        if not isinstance(params, dict) or key not in params:
            continue
        if stored:
            params.setdefault(new.split(".")[1], params.pop(key))
            continue
        why = f" ({WHY_RENAMED[old]})" if old in WHY_RENAMED else ""
        raise RecipeError(f"{where}: {old} has been renamed {new}{why}",
                          f"write {new} instead, in the recipe or with --set {new}=...")


def params_of(cls: type, plain: dict[str, Any]) -> Any:
    """Rebuild a registry parameter dataclass from its stored plain form (old names of RENAMED read
    under the new ones: artifacts stored before a rename keep loading)."""
    plain = dict(plain)
    for old, new in RENAMED.items():
        if old.split(".")[1] in plain:
            plain.setdefault(new.split(".")[1], plain.pop(old.split(".")[1]))
    return _typed_params_of(cls, plain)


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
    check_fields(typed, where, section)
    check = getattr(typed, "check", None)
    problem = check() if check is not None else None
    if problem:
        raise RecipeError(f"{where}: {section}: {problem}", "change the value in the recipe or with --set")
    return to_plain(typed)


# the shipped recipes: package data, so an installed clt has them too (recipes/ in a checkout links here)
SHIPPED_RECIPES = Path(__file__).parent / "recipes"


def shipped_recipe(name: str) -> Path:
    """The shipped recipe file called `name` (without .yaml), e.g. shipped_recipe("digits_pair")."""
    return SHIPPED_RECIPES / f"{name}.yaml"


def _where_recipes_are(missing: Path) -> str:
    if missing.suffix in (".yaml", ".yml") and shipped_recipe(missing.stem).is_file():
        return f"a shipped recipe of that name is {shipped_recipe(missing.stem)}"
    return f"check the path; the shipped recipes are in {SHIPPED_RECIPES}"


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
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", recipe.data.dataset):
        raise RecipeError(f"{where}: data.dataset {short(recipe.data.dataset)} is not a dataset name",
                          "use the name given to `clt download` (letters, digits, '.', '_', '-')")
    check_fields(recipe, where, "")  # every knob's range, from its field metadata
    _check_progressive_resize(recipe.pretrain, where)


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
