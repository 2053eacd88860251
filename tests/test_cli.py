"""The command line: help, errors (exit 2, error + fix, no traceback), --debug, --json, caching, store commands."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import typer.main
from conftest import (
    DIGITS,
    FAST_PRETRAIN,
    FAST_PROBE,
    PNG_SIGNATURE,
    Trained,
    assert_user_error,
    cli,
    clt_proc,
    colliding_specs,
    flip_byte,
    python_proc,
    sha256_of,
    write_files,
)
from PIL import Image

from clt.cli import app
from clt.errors import StoreError
from clt.store import Store


def _leaf_commands(group, prefix=()):
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            yield from _leaf_commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


def _groups(group, prefix=()):
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            yield (*prefix, name)
            yield from _groups(command, (*prefix, name))


COMMANDS = list(_leaf_commands(typer.main.get_command(app)))
GROUPS = list(_groups(typer.main.get_command(app)))


# ---------------------------------------------------------------- help


def test_the_app_has_the_documented_commands():
    names = {c[-1] for c in COMMANDS}
    assert {"download", "pretrain", "probe", "evaluate", "embed", "tsne", "ls", "show", "verify", "gc"} <= names


def test_root_help():
    ran = cli(None, "--help").ok()
    assert "Example:" in ran.stdout
    for command in ("pretrain", "probe", "evaluate", "embed", "tsne", "ls"):
        assert command in ran.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_command_help_has_an_example(command):
    ran = cli(None, *command, "--help").ok()
    assert f"clt {' '.join(command)}" in " ".join(ran.stdout.split())
    example = ran.stdout.split("Example:", 1)
    assert len(example) == 2, f"no 'Example:' in the help of {' '.join(command)}"
    assert example[1].split()[0] == "clt", "the example should be a clt command line"


@pytest.mark.parametrize("group", GROUPS, ids=" ".join)
def test_group_help(group):
    ran = cli(None, *group, "--help").ok()
    assert "Commands" in ran.stdout


def test_help_of_the_real_executable():
    ran = clt_proc(None, "--help").ok()
    assert "Example:" in ran.stdout and "pretrain" in ran.stdout


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "import typer.main\n"
        "from clt.cli import app\n"
        "runner = CliRunner()\n"
        "assert runner.invoke(app, ['--help']).exit_code == 0\n"
        "group = typer.main.get_command(app)\n"
        "for name, command in group.commands.items():\n"
        "    assert runner.invoke(app, [name, '--help']).exit_code == 0, name\n"
        "    for sub in getattr(command, 'commands', {}):\n"
        "        assert runner.invoke(app, [name, sub, '--help']).exit_code == 0, sub\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'sklearn', 'matplotlib') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    proc = python_proc(code)
    assert proc.returncode == 0, proc.stderr


def test_help_import_time_has_no_torch():
    proc = python_proc("from clt.cli import app; app(['--help'])", "-X", "importtime")
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "clt.cli" in imported
    assert "torch" not in imported


# ---------------------------------------------------------------- user errors: exit 2, named input, fix


@pytest.fixture
def empty_store(tmp_path: Path) -> Path:
    return tmp_path / "empty-store"


def _recipe(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_malformed_yaml(tmp_path: Path, empty_store: Path):
    path = _recipe(tmp_path, "name: x\ndata:\n  dataset: digits\npretrain:\n  epochs: 2: 3\n")
    assert_user_error(cli(empty_store, "pretrain", path), str(path), "malformed YAML", "line 5")


def test_unknown_key(tmp_path: Path, empty_store: Path):
    path = _recipe(tmp_path, "pretrain:\n  epoch: 2\n")
    assert_user_error(cli(empty_store, "pretrain", path), str(path), "'pretrain.epoch'", "did you mean 'epochs'")


def test_unknown_key_in_override(empty_store: Path):
    assert_user_error(cli(empty_store, "pretrain", DIGITS, "--set", "pretrain.epoch=1"),
                      "'pretrain.epoch'", "did you mean 'epochs'")


def test_wrong_type(empty_store: Path):
    assert_user_error(cli(empty_store, "pretrain", DIGITS, "--set", "pretrain.epochs=two"),
                      "pretrain.epochs", "'two'", "integer")


def test_missing_recipe_file(tmp_path: Path, empty_store: Path):
    assert_user_error(cli(empty_store, "pretrain", tmp_path / "nope.yaml"), "nope.yaml")


def test_unknown_dataset_did_you_mean(tmp_path: Path, empty_store: Path):
    path = _recipe(tmp_path, "data:\n  dataset: mnsit\n")
    assert_user_error(cli(empty_store, "pretrain", path), "'mnsit'", "did you mean 'mnist'")


def test_dataset_not_downloaded(empty_store: Path):
    text = assert_user_error(cli(empty_store, "pretrain", DIGITS, "--set", "data.dataset=mnist"),
                             "mnist", "clt download mnist")
    assert "not downloaded" in text


def test_unknown_encoder_name(empty_store: Path):
    assert_user_error(cli(empty_store, "pretrain", DIGITS, "--set", "model.encoder=pair_cn"),
                      "'pair_cn'", "did you mean 'pair_cnn'")


def test_out_of_range(empty_store: Path):
    assert_user_error(cli(empty_store, "pretrain", DIGITS, "--set", "pretrain.batch_size=0"),
                      "pretrain.batch_size", "out of range")


@pytest.mark.parametrize("command", [("show",), ("probe",), ("embed",), ("evaluate",), ("verify",)])
def test_unknown_artifact_id(trained: Trained, command):
    assert_user_error(cli(trained.root, *command, "deadbeef"), "'deadbeef'")


def test_unknown_artifact_in_empty_store(empty_store: Path):
    assert_user_error(cli(empty_store, "show", "0123abcd"), "'0123abcd'", "empty")


def test_no_encoder_yet(empty_store: Path):
    assert_user_error(cli(empty_store, "probe"), "encoder", "clt pretrain")


def test_markup_in_input_is_shown_literally(empty_store: Path):
    # the message quotes user input; it must not be read as rich markup
    assert_user_error(cli(empty_store, "show", "[/x]"), "'[/x]'")
    assert_user_error(cli(empty_store, "show", "[red]abc"), "'[red]abc'")


def test_ambiguous_prefix(tmp_path: Path):
    store = Store(tmp_path / "store")
    ids = [store.produce(spec, "thing", write_files({"a.txt": b"a"}))[0].id for spec in colliding_specs(4)]
    text = assert_user_error(cli(store.root, "show", ids[0][:4]), "ambiguous", f"'{ids[0][:4]}'")
    assert ids[0][:12] in text and ids[1][:12] in text
    longer = len(os.path.commonprefix(ids)) + 1
    shown = json.loads(cli(store.root, "show", ids[1][:longer]).ok().stdout)
    assert shown["id"] == ids[1]


@pytest.mark.parametrize("args, words", [
    (("evaluate", "--metric", "manhattan"), ["--metric manhattan", "cosine"]),
    (("evaluate", "--knn", "0"), ["--knn 0"]),
    (("embed", "--split", "val"), ["--split val"]),
    (("download", "digits", "--size", "big"), ["--size 'big'"]),
    (("download", "digits", "--from", "/nonexistent/folder"), ["/nonexistent/folder"]),
])
def test_bad_option_values(trained: Trained, args, words):
    assert_user_error(cli(trained.root, *args), *words)


def test_tampered_encoder_is_refused(store_copy: Trained):
    store = Store(store_copy.root)
    flip_byte(store.get(store_copy.encoder).path / "encoder.safetensors")
    # a probe spec not built yet, so the encoder's weights must be read
    text = assert_user_error(cli(store_copy.root, "probe", store_copy.encoder, *FAST_PROBE, "--seed", "11"),
                             "encoder.safetensors", store_copy.encoder[:12], "damaged")
    assert "clt gc --damaged" in text
    assert not any(a.kind == "probe" and a.id != store_copy.probe for a in store.all())


def test_debug_shows_the_exception(store_copy: Trained):
    store = Store(store_copy.root)
    flip_byte(store.get(store_copy.encoder).path / "encoder.safetensors")
    ran = cli(store_copy.root, "--debug", "probe", store_copy.encoder, *FAST_PROBE, "--seed", "11")
    assert ran.exit_code != 0
    assert isinstance(ran.exception, StoreError)
    assert "encoder.safetensors" in str(ran.exception)


def test_debug_prints_a_traceback_in_a_real_process(tmp_path: Path):
    path = _recipe(tmp_path, "pretrain:\n  epoch: 2\n")
    plain = clt_proc(tmp_path / "store", "pretrain", path)
    assert_user_error(plain, "'pretrain.epoch'")
    debug = clt_proc(tmp_path / "store", "--debug", "pretrain", path)
    assert debug.exit_code not in (0, 2)
    assert "Traceback" in debug.stderr
    assert "RecipeError" in debug.stderr and "pretrain.epoch" in debug.stderr


# ---------------------------------------------------------------- --json


@pytest.fixture(scope="module")
def evaluated(trained: Trained, tmp_path_factory) -> tuple[Trained, dict]:
    """A copy of the trained store with one evaluation (--confusion), and its --json output."""
    root = tmp_path_factory.mktemp("evaluated") / "store"
    shutil.copytree(trained.root, root)
    copy = Trained(root, trained.dataset, trained.encoder, trained.probe)
    return copy, cli(root, "--json", "evaluate", trained.probe, "--confusion").ok().json()


def test_evaluate_json(evaluated):
    trained, out = evaluated
    assert out["kind"] == "evaluation"
    artifact = Store(trained.root).get(out["id"])
    assert artifact.kind == "evaluation" and artifact.inputs["target"] == trained.probe
    for key in ("accuracy", "pair_accuracy"):
        assert 0.0 <= out[key] <= 1.0
        assert out[key] == artifact.metrics[key]
    results = json.loads(artifact.file("metrics.json").read_text())
    assert results["accuracy"] == out["accuracy"]
    matrix = results["confusion"]
    assert sum(map(sum, matrix)) == artifact.manifest["protocol"]["test_images"]
    assert out["accuracy"] == pytest.approx(sum(matrix[i][i] for i in range(len(matrix))) / sum(map(sum, matrix)))


def test_evaluate_confusion_png(evaluated):
    trained, out = evaluated
    artifact = Store(trained.root).get(out["id"])
    png = artifact.file("confusion.png")
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and min(image.size) > 50


def test_evaluate_again_is_cached_and_same_id(evaluated):
    trained, out = evaluated
    ran = cli(trained.root, "evaluate", trained.probe, "--confusion").ok()
    assert ran.id == out["id"]
    assert "cached" in ran.stderr


@pytest.mark.parametrize("where", ["global", "command"])
def test_pretrain_and_probe_json(store_copy: Trained, where: str):
    def run(*args):
        if where == "global":
            return cli(store_copy.root, "--json", *args)
        return cli(store_copy.root, *args, "--json")

    enc = run("pretrain", DIGITS, *FAST_PRETRAIN).ok().json()
    assert enc["id"] == store_copy.encoder and enc["kind"] == "encoder" and enc["cached"] is True
    probe = run("probe", store_copy.encoder, *FAST_PROBE).ok().json()
    assert probe["id"] == store_copy.probe and probe["kind"] == "probe" and probe["cached"] is True
    assert Path(probe["path"]) == Store(store_copy.root).object_path(store_copy.probe)
    new = run("probe", store_copy.encoder, *FAST_PROBE, "--seed", "5").ok().json()
    assert new["kind"] == "probe" and new["cached"] is False and new["id"] != store_copy.probe
    assert Store(store_copy.root).get(new["id"]).manifest["spec"]["seed"] == 5


# ---------------------------------------------------------------- caching


def test_rerun_is_cached_with_the_same_id(store_copy: Trained):
    ran = cli(store_copy.root, "pretrain", DIGITS, *FAST_PRETRAIN).ok()
    assert ran.id == store_copy.encoder
    assert "cached" in ran.stderr


def test_cached_rerun_does_not_import_torch(store_copy: Trained):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from clt.cli import app\n"
        f"r = CliRunner().invoke(app, ['--artifacts', {str(store_copy.root)!r}, 'pretrain', {str(DIGITS)!r}, "
        f"{', '.join(repr(a) for a in FAST_PRETRAIN)}])\n"
        "assert r.exit_code == 0, r.output\n"
        f"assert r.stdout.strip() == {store_copy.encoder!r}, r.stdout\n"
        "assert 'torch' not in sys.modules\n"
    )
    proc = python_proc(code)
    assert proc.returncode == 0, proc.stderr


def test_changed_recipe_is_a_new_encoder(store_copy: Trained):
    # zero epochs: a new address (and a new artifact) without the cost of training
    ran = cli(store_copy.root, "pretrain", DIGITS, "--set", "pretrain.epochs=0").ok()
    assert ran.id != store_copy.encoder
    assert "cached" not in ran.stderr
    store = Store(store_copy.root)
    new = store.get(ran.id)
    assert new.kind == "encoder" and new.recipe["pretrain"]["epochs"] == 0
    assert new.inputs["dataset"] == store_copy.dataset  # the dataset is shared, not rebuilt
    assert cli(store_copy.root, "pretrain", DIGITS, "--set", "pretrain.epochs=0").ok().id == ran.id


def test_quiet_keeps_stderr_empty_on_success(store_copy: Trained):
    ran = cli(store_copy.root, "-q", "pretrain", DIGITS, *FAST_PRETRAIN).ok()
    assert ran.id == store_copy.encoder and ran.stderr.strip() == ""


# ---------------------------------------------------------------- ls, show, verify, gc


def test_ls_lists_every_artifact(trained: Trained):
    ran = cli(trained.root, "ls").ok()
    for artifact_id in (trained.dataset, trained.encoder, trained.probe):
        assert artifact_id[:12] in ran.stdout
    rows = cli(trained.root, "ls", "--json").ok().json()
    assert {row["id"] for row in rows} == set(Store(trained.root).ids())
    assert {row["kind"] for row in rows} >= {"dataset", "encoder", "probe"}
    encoders = cli(trained.root, "ls", "--kind", "encoder", "--json").ok().json()
    assert [row["id"] for row in encoders if row["id"] == trained.encoder] == [trained.encoder]
    assert {row["kind"] for row in encoders} == {"encoder"}


def test_ls_empty_store(empty_store: Path):
    assert cli(empty_store, "ls", "--json").ok().json() == []


@pytest.mark.parametrize("how", ["full", "prefix", "ref"])
def test_show_prints_the_manifest(trained: Trained, how: str):
    ref = {"full": trained.encoder, "prefix": trained.encoder[:10], "ref": "latest-encoder"}[how]
    manifest = json.loads(cli(trained.root, "show", ref).ok().stdout)
    artifact = Store(trained.root).get(trained.encoder)
    assert manifest["id"] == trained.encoder and manifest["kind"] == "encoder"
    assert manifest["inputs"] == {"dataset": trained.dataset}
    assert manifest["recipe"]["pretrain"]["epochs"] == 1
    assert manifest["recipe"]["name"] == "digits_pair"
    assert "encoder.safetensors" in manifest["files"]
    for name, info in manifest["files"].items():
        assert info["sha256"] == sha256_of(artifact.path / name)
        assert info["bytes"] == (artifact.path / name).stat().st_size


def test_verify_clean_then_tampered(store_copy: Trained):
    ran = cli(store_copy.root, "verify").ok()
    count = len(Store(store_copy.root).ids())
    assert f"{count} ok, 0 damaged" in ran.stderr
    store = Store(store_copy.root)
    flip_byte(store.get(store_copy.encoder).path / "encoder.safetensors")
    bad = cli(store_copy.root, "verify")
    assert bad.exit_code == 1
    assert f"{store_copy.encoder[:12]}: encoder.safetensors" in bad.stderr
    assert f"{count - 1} ok, 1 damaged" in bad.stderr
    assert cli(store_copy.root, "verify", store_copy.probe).exit_code == 0
    assert cli(store_copy.root, "verify", store_copy.encoder).exit_code == 1


def test_verify_detects_an_edited_manifest(store_copy: Trained):
    path = Store(store_copy.root).get(store_copy.probe).path / "manifest.json"
    path.write_text(path.read_text().replace('"probe"', '"encoder"', 1))
    bad = cli(store_copy.root, "verify")
    assert bad.exit_code == 1 and "manifest.json" in bad.stderr


def test_verify_in_a_real_process(store_copy: Trained):
    assert clt_proc(store_copy.root, "verify").exit_code == 0
    flip_byte(Store(store_copy.root).get(store_copy.probe).path / "head.safetensors")
    ran = clt_proc(store_copy.root, "verify")
    assert ran.exit_code == 1 and "head.safetensors" in ran.stderr and "Traceback" not in ran.stderr


def test_gc_removes_orphans_and_damaged(store_copy: Trained):
    orphan = store_copy.root / "tmp" / f"{'e' * 64}.999.abcdef12"
    orphan.mkdir(parents=True)
    ran = cli(store_copy.root, "gc").ok()
    assert not orphan.exists() and "removed" in ran.stderr
    flip_byte(Store(store_copy.root).get(store_copy.probe).path / "head.safetensors")
    cli(store_copy.root, "gc", "--damaged").ok()
    store = Store(store_copy.root)
    assert not store.exists(store_copy.probe) and store.exists(store_copy.encoder)
    assert cli(store_copy.root, "verify").exit_code == 0


def test_artifacts_env_var(store_copy: Trained, monkeypatch):
    monkeypatch.setenv("CLT_ARTIFACTS", str(store_copy.root))
    rows = cli(None, "ls", "--json").ok().json()
    assert store_copy.encoder in {row["id"] for row in rows}


def test_internal_error_is_one_line_and_debug_raises(trained: Trained, monkeypatch):
    import clt.stages

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in a stage")

    monkeypatch.setattr(clt.stages, "embed", broken)
    ran = cli(trained.root, "embed", trained.encoder)
    assert ran.exit_code == 1 and ran.stdout == ""
    assert "internal error ZeroDivisionError: a bug in a stage" in ran.stderr
    assert "--debug" in ran.stderr and "Traceback" not in ran.stderr
    debug = cli(trained.root, "--debug", "embed", trained.encoder)
    assert isinstance(debug.exception, ZeroDivisionError)
