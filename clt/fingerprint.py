"""The code part of an artifact's address: a digest of the clt source a stage runs.

An artifact's id hashes what determines it (stage, recipe, inputs, seed) and, through this
module, the code that computed it, as Bazel and dvc key their caches: fix a loss, an augmentation
or the probe, and the next run computes a new artifact instead of serving the one the old code
made. The digest covers every clt module the stage's module imports, directly or through others
(imports inside functions and the module names a registry imports by string included), each as
its syntax tree without docstrings, so comments, docstrings and formatting do not count; it is
computed once per process and stage.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
# the module under clt that computes each stage's artifacts ("memo": the pretrain stage's recipe-text
# shortcut); written without the package prefix, as the import scan reads "clt.…" strings as imports
STAGE_MODULES = {
    "pretrain": "stages.pretrain", "memo": "stages.pretrain", "probe": "stages.probe",
    "evaluate": "stages.evaluate", "embed": "stages.embed", "tsne": "stages.embed",
    "embed-images": "stages.images", "index": "stages.search", "export": "stages.export",
    "views": "stages.views", "baseline-scratch": "stages.baselines",
    "baseline-logreg": "stages.baselines",
}
# packages whose __init__ only re-exports their modules for the public API: importing one module of
# theirs runs the __init__, but what it re-exports is not code the module computes with
FACADES = ("clt", "clt.stages")
# addressed by the digest of the arrays they hold, which already changes when the import code does
CONTENT_ADDRESSED = ("dataset",)


def stage_fingerprint(stage: str, root: Path = PACKAGE_ROOT) -> str | None:
    """The digest of the code behind `stage`; None for a stage addressed by its content.
    A stage this table does not name is keyed by the whole package (never by too little code)."""
    if stage in CONTENT_ADDRESSED:
        return None
    module = STAGE_MODULES.get(stage)
    return _fingerprint(f"clt.{module}", root.resolve()) if module else package_fingerprint(root)


def forget() -> None:
    """Drop what was computed: for a process that edits clt's source and asks again (tests)."""
    for cached in (_fingerprint, _parse, _module_digest):
        cached.cache_clear()


def package_fingerprint(root: Path = PACKAGE_ROOT) -> str:
    modules = sorted(_name_of(path, root.resolve()) for path in root.resolve().rglob("*.py"))
    return _digest(modules, root.resolve())


@functools.cache
def _fingerprint(module: str, root: Path) -> str:
    return _digest(sorted(module_closure(module, root)), root)


def _digest(modules: list[str], root: Path) -> str:
    digest = hashlib.sha256()
    for name in modules:
        digest.update(f"{name}\0{_module_digest(_file_of(name, root))}\0".encode())
    return digest.hexdigest()


def module_closure(module: str, root: Path = PACKAGE_ROOT) -> set[str]:
    """`module` and every clt module it imports, directly or not, with their packages' __init__."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or _file_of(name, root) is None:
            continue
        seen.add(name)
        todo.extend(_parents(name))
        todo.extend(_imports(_file_of(name, root), root))
    return seen


def _parents(name: str) -> list[str]:
    """Packages a module's import runs first (clt.objectives' __init__ registers every objective),
    less the facades."""
    parts = name.split(".")
    return [p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p not in FACADES]


def _imports(path: Path, root: Path) -> list[str]:
    found = []
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names]  # submodules imported by name
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("clt."):
            found.append(node.value)  # a registry's importlib.import_module("clt.objectives")
    return [name for name in found if name.startswith("clt.") and name not in FACADES
            and _file_of(name, root) is not None]


def _file_of(name: str, root: Path) -> Path | None:
    if name.split(".")[0] != "clt" or not all(part.isidentifier() for part in name.split(".")):
        return None
    base = root.joinpath(*name.split(".")[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _name_of(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(["clt", *(parts[:-1] if parts[-1] == "__init__" else parts)])


@functools.cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


@functools.cache
def _module_digest(path: Path) -> str:
    """The syntax tree without docstrings: what runs, not how it is written or explained."""
    tree = _parse(path)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree, annotate_fields=False).encode()).hexdigest()
