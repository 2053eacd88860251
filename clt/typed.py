"""Mappings to typed dataclasses and back: every bad key or value is refused with its dotted name.

Used for recipes and for the parameter dataclasses of registered encoders and objectives; it
knows nothing of recipes, so the models and objectives can use it without importing them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable, Literal

from clt.errors import RecipeError, did_you_mean

# Field metadata for options added after artifacts were first stored: such a field is left out of
# the canonical form (and so of every address) while it holds its default, so adding an option
# does not change the address of every recipe written before it.
OMIT_IF_DEFAULT = {"omit_if_default": True}


def knob(default: Any = dataclasses.MISSING, doc: str = "", *, factory: Callable[[], Any] | None = None,
         check: Callable[[Any], bool] | None = None, must: str = "", omit_if_default: bool = False) -> Any:
    """A dataclass field that carries its own documentation and allowed range: `doc` is what the
    generated reference and `clt init`'s comments say of it, and `check(value)` (skipped for None)
    is the range check, refused as "it must be {must}". One place for all three, so they cannot drift.

    Example: lr: float = knob(1e-3, "learning rate", check=lambda v: v > 0, must="> 0")
    """
    metadata: dict[str, Any] = {"doc": doc}
    if check is not None:
        metadata.update(check=check, must=must)
    if omit_if_default:
        metadata.update(OMIT_IF_DEFAULT)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def check_fields(obj: Any, where: str, path: str) -> None:
    """Refuse the first field of dataclass `obj` (or of a dataclass inside it) whose value fails its
    knob's range check, naming its dotted key, its value and what it must be."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        dotted = f"{path}.{f.name}" if path else f.name
        check = f.metadata.get("check")
        if check is not None and value is not None and not check(value):
            raise RecipeError(f"{where}: {dotted} = {short(value)} is out of range: it must be {f.metadata['must']}",
                              f"change {dotted} in the recipe or with --set {dotted}=...")
        if dataclasses.is_dataclass(value):
            check_fields(value, where, dotted)


def from_dict(cls: type, data: Any, where: str, path: str) -> Any:
    """Build dataclass `cls` from a mapping, naming the file and dotted key of any problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: '{path or 'recipe'}' must be a mapping, got {type(data).__name__}",
                          f"write '{path}:' followed by indented keys")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise RecipeError(f"{where}: unknown key {short(dotted)}", did_you_mean(str(key), list(fields)))
        kwargs[key] = _coerce(hints[key], value, where, dotted)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str, dotted: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(args, value, where, dotted)
    if origin is Literal:
        if value not in args:
            raise RecipeError(f"{where}: {dotted} = {short(value)} is not allowed",
                              did_you_mean(str(value), [str(a) for a in args]))
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, dotted)
    if origin in (list, tuple):
        return _coerce_sequence(origin, args, value, where, dotted)
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(where, dotted, value, "a mapping")
        return dict(value)
    if tp is Any:
        return value
    return _coerce_scalar(tp, value, where, dotted)


def _coerce_union(args: tuple, value: Any, where: str, dotted: str) -> Any:
    """The first member of a union (Optional included) that takes the value; else the first refusal."""
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(arg, value, where, dotted)
        except RecipeError as err:
            errors.append(err)
    raise errors[0]


def _coerce_sequence(origin: Any, args: tuple, value: Any, where: str, dotted: str) -> Any:
    if not isinstance(value, (list, tuple)):
        raise _type_error(where, dotted, value, "a list")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise _type_error(where, dotted, value, f"a list of {len(args)} values")
        return tuple(_coerce(a, v, where, f"{dotted}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    item = args[0] if args else Any
    out = [_coerce(item, v, where, f"{dotted}[{i}]") for i, v in enumerate(value)]
    return tuple(out) if origin is tuple else out


def _coerce_scalar(tp: Any, value: Any, where: str, dotted: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise _type_error(where, dotted, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(where, dotted, value, "an integer")
        if not -2**63 <= value < 2**63:  # torch and numpy take 64-bit integers at most
            raise RecipeError(f"{where}: {dotted} = {short(value)} is out of range: it must fit in 64 bits",
                              f"write a smaller {dotted}")
        return value
    if tp is float:
        return _coerce_float(value, where, dotted)
    if tp is str:
        if not isinstance(value, str):
            raise _type_error(where, dotted, value, "a string")
        return value
    raise RecipeError(f"{where}: {dotted}: unsupported type {tp}")  # a bug in a params dataclass


def _coerce_float(value: Any, where: str, dotted: str) -> float:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 1e308:
        raise RecipeError(f"{where}: {dotted} = {short(value)} is out of range: it is too large for a number",
                          f"write a smaller {dotted}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        # YAML reads 1e-3 (no dot) as a string: accept a numeric string here
        number = None
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise _type_error(where, dotted, value, "a number")
        value = number
    if value != value or value in (float("inf"), float("-inf")):
        raise _type_error(where, dotted, value, "a finite number")
    return float(value)


QUOTE_CHARS = 80  # the most of one value an error message quotes


def short(value: Any) -> str:
    """A value for an error message, quoted (repr) and cut to its first QUOTE_CHARS characters:
    a recipe value can be a megabyte, and messages are printed whole.

    Example: short("x" * 1000) == "'" + "x" * 80 + "'… (1,000 characters)"
    """
    if isinstance(value, str):
        return repr(value) if len(value) <= QUOTE_CHARS else f"{value[:QUOTE_CHARS]!r}… ({len(value):,} characters)"
    try:
        text = repr(value) if not isinstance(value, int) else str(value)
    except ValueError:  # an integer beyond Python's digit limit for str()
        return "an integer of more than 4,300 digits"
    except RecursionError:  # a list nested past Python's limit (yaml builds them without recursion)
        return f"a {type(value).__name__} nested too deeply to show"
    return text if len(text) <= QUOTE_CHARS else f"{text[:QUOTE_CHARS]}… ({len(text):,} characters)"


def _type_error(where: str, dotted: str, value: Any, expected: str) -> RecipeError:
    return RecipeError(f"{where}: {dotted} = {short(value)} has the wrong type: expected {expected}",
                       f"write {dotted} as {expected}")


def to_plain(obj: Any) -> Any:
    """Dataclasses → dicts, tuples → lists: the canonical JSON form of a recipe."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("omit_if_default") and getattr(obj, f.name) == _default_of(f))}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def _default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def params_of(cls: type, plain: dict[str, Any]) -> Any:
    """Rebuild a registry parameter dataclass from its stored plain form."""
    return from_dict(cls, plain, "stored recipe", "")
