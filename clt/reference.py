"""The command-line and recipe references, generated from the code so that they cannot drift.

docs/reference/cli.md comes from the Typer app (every command, its help, arguments and options
with defaults); docs/reference/recipe.md from the recipe dataclasses' field metadata (clt.typed.knob:
type, default, allowed range, doc) and from the parameter dataclasses of every registered encoder
and objective. tests/test_reference.py regenerates both and fails when the checked-in files differ.

    python -m clt.reference --write     # regenerate docs/reference/*.md
    python -m clt.reference --check     # exit 1, naming the files, when they differ

The output depends on nothing but the code: no terminal width, no paths, no dates.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any, Callable

REFERENCE_DIR = Path("docs") / "reference"
REGENERATE = "python -m clt.reference --write"
GENERATED = f"Generated from the code by `{REGENERATE}`: edit the code, not this file."


# ---------------------------------------------------------------------------- command line


def cli_markdown() -> str:
    """Every command and subcommand of the `clt` app: usage, help, arguments and options."""
    import typer.main

    from clt.cli import app

    root = typer.main.get_command(app)
    out = ["# Command-line reference", "", GENERATED, "", *_help_blocks(root.help or ""), "",
           "Global options come before the command: `clt [GLOBAL OPTIONS] COMMAND ...`.", "",
           *_params_table(root.params, ()), "", "Commands:", ""]
    commands = list(_commands(root, ()))
    out += [f"- [`clt {' '.join(path)}`](#{_anchor(path)}): {_first_line(cmd.help)}" for path, cmd in commands]
    for path, cmd in commands:
        out += ["", f"## clt {' '.join(path)}", "", *_command_body(path, cmd)]
    return "\n".join(out).rstrip() + "\n"


def _commands(group: Any, prefix: tuple[str, ...]):
    """(path, command) of every command and group below `group`, sorted by name, depth first."""
    for name, cmd in sorted(group.commands.items()):
        if getattr(cmd, "hidden", False):
            continue
        yield (*prefix, name), cmd
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*prefix, name))


def _anchor(path: tuple[str, ...]) -> str:
    return "-".join(("clt", *path))


def _command_body(path: tuple[str, ...], cmd: Any) -> list[str]:
    visible = [p for p in cmd.params if not getattr(p, "hidden", False)]
    args = " ".join(_usage_name(p) for p in visible if p.param_type_name == "argument")
    usage = " ".join(["clt", *path, "[OPTIONS]" if any(p.param_type_name == "option" for p in visible) else "",
                      "COMMAND ..." if hasattr(cmd, "commands") else args])
    out = ["```", " ".join(usage.split()), "```", ""]
    out += _help_blocks(cmd.help or "")
    if visible:
        out += ["", *_params_table(visible, path)]
    if hasattr(cmd, "commands"):
        out += ["", "Subcommands: " + ", ".join(f"[`{name}`](#{_anchor((*path, name))})"
                                                for name in sorted(cmd.commands))]
    return out


def _usage_name(param: Any) -> str:
    name = _param_names(param).strip("`")
    return name if param.required else f"[{name}]"


def _help_blocks(text: str) -> list[str]:
    """A docstring as Markdown: its paragraphs as text, an `Example:` line as a code block."""
    out: list[str] = []
    for paragraph in _paragraphs(text):
        if paragraph.startswith("Example:"):
            out += ["Example:", "", "```", paragraph.removeprefix("Example:").strip(), "```", ""]
        else:
            out += [_text(paragraph), ""]
    return out[:-1] if out else out


def _paragraphs(text: str) -> list[str]:
    import inspect

    blocks = inspect.cleandoc(text).split("\n\n")
    return [" ".join(block.split()) for block in blocks if block.strip()]


def _params_table(params: list, path: tuple[str, ...]) -> list[str]:
    rows = ["| Argument or option | Type | Default | Description |", "|---|---|---|---|"]
    for param in params:
        if getattr(param, "hidden", False):
            continue
        rows.append("| " + " | ".join(_cell(c) for c in (_param_names(param), _param_type(param),
                                                           _param_default(param),
                                                           getattr(param, "help", None) or "")) + " |")
    return rows


def _param_names(param: Any) -> str:
    if param.param_type_name == "argument":
        suffix = " ..." if param.nargs == -1 else ""
        return f"`{(param.metavar or param.name.upper()).removesuffix('...')}{suffix}`"
    names = ", ".join(f"`{o}`" for o in param.opts)
    return names + "".join(f" / `{o}`" for o in param.secondary_opts)


def _param_type(param: Any) -> str:
    if getattr(param, "is_flag", False):
        return "flag"
    hint = param.type_descriptor.annotation
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    repeatable = typing.get_origin(hint) is list or any(typing.get_origin(a) is list for a in args)
    while typing.get_args(hint):  # Optional[X], list[X] -> X
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    name = {int: "integer", float: "number", str: "text", bool: "true or false", Path: "path"}.get(hint, "text")
    return name + (", repeatable" if repeatable and param.param_type_name == "option" else "")


def _param_default(param: Any) -> str:
    if param.required:
        return "required"
    default = param.default
    if default is None or default == [] or default == ():
        return ""
    if isinstance(default, bool):
        if param.secondary_opts:
            return f"`{(param.opts if default else param.secondary_opts)[0]}`"
        return "" if default is False else "`true`"
    return f"`{default}`"


# ---------------------------------------------------------------------------- recipe


def recipe_markdown() -> str:
    """Every recipe section and field (type, default, allowed range, doc), then every encoder and
    objective with its parameters, all read from the dataclasses' field metadata."""
    from clt.recipe import RENAMED, Recipe
    from clt.registry import ENCODERS, OBJECTIVES

    out = ["# Recipe reference", "", GENERATED, "",
           "A recipe is a YAML file of the sections below (all optional: a missing key takes its default). "
           "`base: FILE` (relative to the recipe) starts from another recipe and says only what differs; "
           "`--set section.key=value` changes one key for one run. `model:` and `objective:` take their "
           "registered entry's parameters as further keys ([encoders](#encoders), [objectives](#objectives)). "
           "`clt init FILE --dataset NAME --objective NAME` writes a commented recipe to start from.", "",
           "## Top level", "", *_fields_table(Recipe, "", top_level=True)]
    for f in dataclasses.fields(Recipe):
        cls = _dataclass_of(Recipe, f.name)
        if cls is not None:
            out += _section(cls, f.name, f.metadata.get("doc", ""))
    out += ["", "## Renamed keys", "", "The old spellings are refused with a message naming the new one.", "",
            "| Old key | New key |", "|---|---|", *[f"| `{old}` | `{new}` |" for old, new in RENAMED.items()]]
    out += ["", "## Encoders", "", "`model.encoder` picks one; its parameters are keys of `model:`.", ""]
    for name in ENCODERS.names():
        out += _entry(ENCODERS[name], "model", [])
    out += ["## Objectives", "", "`objective.name` picks one; its parameters are keys of `objective:`.", ""]
    for name in OBJECTIVES.names():
        entry = OBJECTIVES[name]
        out += _entry(entry, "objective", _objective_facts(entry))
    return "\n".join(out).rstrip() + "\n"


def _section(cls: type, dotted: str, doc: str) -> list[str]:
    heading = f"## `{dotted}`" if "." not in dotted else f"### `{dotted}`"
    out = ["", heading, "", _text(_sentence(doc, capital=True)), "", *_fields_table(cls, dotted)]
    for f in dataclasses.fields(cls):
        nested = _dataclass_of(cls, f.name)
        if nested is not None:
            out += _section(nested, f"{dotted}.{f.name}", f.metadata.get("doc", ""))
    return out


def _fields_table(cls: type, prefix: str, top_level: bool = False) -> list[str]:
    hints = typing.get_type_hints(cls)
    rows = ["| Key | Type | Default | Allowed | Description |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if top_level and _dataclass_of(cls, f.name) is not None:
            continue  # a section: it has its own table
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        nested = _dataclass_of(cls, f.name)
        default = "see below" if nested is not None and _default(f) is not None else _yaml(_default(f))
        rows.append("| " + " | ".join([f"`{dotted}`", _cell(_type_name(hints[f.name])), _cell(default),
                                       _cell(f.metadata.get("must", "")), _cell(f.metadata.get("doc", ""))]) + " |")
    return rows


def _entry(entry: Any, section: str, facts: list[str]) -> list[str]:
    from clt.registry import NoParams, summary

    out = [f"### {entry.name}", "", _text(_sentence(summary(entry))), ""]
    if facts:
        out += [_text("; ".join(facts) + "."), ""]
    if entry.params is NoParams or not dataclasses.fields(entry.params):
        return out + ["No parameters.", ""]
    return out + [*_fields_table(entry.params, section), ""]


def _objective_facts(entry: Any) -> list[str]:
    facts = [f"{entry.views} view{'s' if entry.views > 1 else ''} per image",
             "uses class labels (a dataset without them is refused)" if entry.uses_labels else "no labels needed"]
    if entry.predictor:
        facts.append("a predictor head (`objective.predictor_hidden`)")
    if entry.target:
        facts.append("a momentum target (`objective.target_momentum`, `objective.target_momentum_schedule`)")
    if entry.queue:
        facts.append(f"a queue of earlier {entry.queue} rows (`objective.queue_size`)")
    if entry.verify is not None:
        facts.append("pair verification in `clt evaluate`")
    if entry.head_norm:
        facts.append(f"its reference head has `model.projection_norm: {entry.head_norm}`")
    if entry.known_recipe:
        facts.append(f"measured recipe: `{entry.known_recipe}`")
    return facts


def _dataclass_of(cls: type, name: str) -> type | None:
    """The dataclass a field holds (`AugmentConfig | None` -> AugmentConfig), else None."""
    hint = typing.get_type_hints(cls)[name]
    found = [a for a in (typing.get_args(hint) or (hint,)) if dataclasses.is_dataclass(a)]
    return found[0] if found else None


def _type_name(hint: Any) -> str:
    """A type in words (Markdown tables take no bare '|')."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is tuple:
        if args and args[-1] is not Ellipsis:
            return f"[{', '.join(_type_name(a) for a in args)}]"
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(hint):
        return "mapping"
    return {int: "integer", float: "number", bool: "true or false", str: "string"}.get(hint, str(hint))


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return None if dataclasses.is_dataclass(value) else value
    return f.default


def _yaml(value: Any) -> str:
    import yaml

    if value is None:
        return "`null`"
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True)
    return f"`{text.removesuffix(chr(10)).removesuffix(chr(10) + '...').strip()}`"


# ---------------------------------------------------------------------------- Markdown


def _first_line(text: str | None) -> str:
    paragraphs = _paragraphs(text or "")
    return _text(paragraphs[0]) if paragraphs else ""


def _sentence(text: str, capital: bool = False) -> str:
    text = text.strip()
    text = text[:1].upper() + text[1:] if capital else text
    return text + ("" if not text or text.endswith(".") else ".")


def _text(text: str) -> str:
    """Plain text for Markdown: backquoted spans kept as code, elsewhere the characters Markdown
    would read as markup escaped (a help text's `path<TAB>class` is no HTML tag, `\\t` no escape)."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unpaired backquote: treat it as a character
        parts = [text.replace("`", "\\`")]
    return "`".join(part if i % 2 else _escape(part) for i, part in enumerate(parts))


def _escape(text: str) -> str:
    for char in "\\*_[]#|":
        text = text.replace(char, "\\" + char)
    return text.replace("<", "&lt;")  # not every renderer takes \< as an escape


def _cell(text: str) -> str:
    """A table cell: `text` as Markdown, with no bare '|' (it would end the cell), on one line."""
    if text.startswith("`") and text.endswith("`") and text.count("`") == 2:
        return text.replace("|", "\\|")
    return _text(" ".join(text.split())).replace("`|`", "`\\|`")


# ---------------------------------------------------------------------------- files


FILES: dict[str, Callable[[], str]] = {"cli.md": cli_markdown, "recipe.md": recipe_markdown}


def stale(root: Path) -> list[str]:
    """The reference files under `root` that differ from what the code generates now."""
    return [name for name, make in FILES.items()
            if not (root / REFERENCE_DIR / name).is_file()
            or (root / REFERENCE_DIR / name).read_text(encoding="utf-8") != make()]


def write(root: Path) -> list[Path]:
    folder = root / REFERENCE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in FILES.items():
        (folder / name).write_text(make(), encoding="utf-8")
        written.append(folder / name)
    return written


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parents[1]
    if argv == ["--write"]:
        for path in write(root):
            print(f"wrote {path.relative_to(root)}")
        return 0
    if argv == ["--check"]:
        differ = stale(root)
        for name in differ:
            print(f"{REFERENCE_DIR / name} is out of date: run {REGENERATE}", file=sys.stderr)
        return 1 if differ else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
