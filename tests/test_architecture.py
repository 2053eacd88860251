"""The shape of the code base, as the README promises it: short functions, a documented public
API, and bench scripts that use clt the way a user would."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from conftest import ROOT

import clt
from clt import api

MAX_FUNCTION_LINES = 60
# bench scripts that time clt's building blocks (losses, augmentation, kNN kernels, FAISS indexes) import them
# directly; every script that runs stages goes through the public API. Besides it, a bench script may use the
# helpers that are not stages: rendering, exporters, atomic writes (clt.atomic) and CPU facts (clt.devices)
COMPONENT_BENCHMARKS = {"speed.py", "knn.py", "curve.py", "index.py", "logging_overhead.py"}
ALLOWED_IN_BENCH = {"clt", "clt.api", "clt.cli.render", "clt.exporters", "clt.atomic", "clt.devices"}


def functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_in_clt_is_longer_than_60_lines():
    long = [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in sorted((ROOT / "clt").rglob("*.py")) for node in functions(path)
            if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, "split these functions:\n" + "\n".join(long)


@pytest.mark.parametrize("name", api.__all__)
def test_every_public_api_name_is_documented_with_an_example(name: str):
    obj = getattr(api, name)
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return
    doc = inspect.getdoc(obj) or ""
    assert doc, f"clt.api.{name} has no docstring"
    if inspect.isfunction(obj) and name != "launch_distributed":
        assert "Example:" in doc, f"clt.api.{name}'s docstring has no example"


def test_import_clt_exposes_the_api_names():
    for name in clt._API:
        assert getattr(clt, name) is getattr(api, name)


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "bench").glob("*.py")))
def test_bench_scripts_use_clt_through_its_api(script: str):
    tree = ast.parse((ROOT / "bench" / script).read_text())
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            used |= {a.name for a in node.names if a.name.split(".")[0] == "clt"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "clt":
            used.add(node.module)
        elif isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", "") == "sys":
            raise AssertionError(f"bench/{script} edits sys.path: run it with the installed package instead")
    if script not in COMPONENT_BENCHMARKS:
        assert used <= ALLOWED_IN_BENCH, f"bench/{script} imports {sorted(used - ALLOWED_IN_BENCH)}"


def test_no_module_of_clt_is_named_like_an_api_function():
    """`import clt.probe` would replace the function clt.probe with the module (it happened twice)."""
    modules = {p.stem for p in (ROOT / "clt").glob("*.py")} | {p.name for p in (ROOT / "clt").iterdir() if p.is_dir()}
    assert not modules & set(clt._API)
