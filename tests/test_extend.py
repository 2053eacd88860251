"""A finished run extended to more epochs: it continues where the schedule allows, and ends exactly
where a run of that length from scratch does; where the schedule spans all epochs it says why not."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import DIGITS, cli
from safetensors.torch import load_file


def weights(store: Path, encoder: str) -> dict:
    from clt.store import Store

    return load_file(str(Store(store).get(encoder).path / "encoder.safetensors"))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def test_a_longer_run_continues_the_finished_one_and_ends_as_a_fresh_run_would(tmp_path: Path):
    store = tmp_path / "store"
    short = cli(store, "pretrain", DIGITS, "--set", "pretrain.epochs=1").ok()
    longer = cli(store, "pretrain", DIGITS, "--set", "pretrain.epochs=2").ok()
    assert "extending the finished 1-epoch run" in longer.stderr, longer.stderr
    assert "resumed from step" in longer.stderr
    fresh_store = tmp_path / "fresh"
    fresh = cli(fresh_store, "pretrain", DIGITS, "--set", "pretrain.epochs=2").ok()
    assert "extending" not in fresh.stderr
    assert longer.id == fresh.id  # one recipe, one address, however it was reached
    assert same_weights(weights(store, longer.id), weights(fresh_store, fresh.id))
    assert not same_weights(weights(store, short.id), weights(store, longer.id))
    assert cli(store, "verify", longer.id).exit_code == 0
    from clt.store import Store

    lines = Store(store).get(longer.id).file("metrics.jsonl").read_text().splitlines()
    epochs = [json.loads(line)["epoch"] for line in lines if json.loads(line).get("event") == "epoch"]
    assert epochs == [1, 2]  # the stream goes on from the finished run's, without repeats


def test_a_cosine_schedule_is_not_extended_and_the_user_is_told_why(tmp_path: Path):
    store = tmp_path / "store"
    cosine = ["--set", "pretrain.scheduler=cosine"]
    cli(store, "pretrain", DIGITS, *cosine, "--set", "pretrain.epochs=1").ok()
    longer = cli(store, "pretrain", DIGITS, *cosine, "--set", "pretrain.epochs=2").ok()
    assert "extending" not in longer.stderr and "resumed from step" not in longer.stderr
    assert "cosine learning-rate schedule" in longer.stderr and "starts over" in longer.stderr


def test_another_recipe_never_extends_from_a_run_it_only_resembles(tmp_path: Path):
    store = tmp_path / "store"
    cli(store, "pretrain", DIGITS, "--set", "pretrain.epochs=1").ok()
    other = cli(store, "pretrain", DIGITS, "--set", "pretrain.epochs=2", "--set", "pretrain.lr=0.002").ok()
    assert "extending" not in other.stderr and "resumed from step" not in other.stderr
