"""The metrics stream (metrics.jsonl in every encoder and probe, continued by a resumed run) and
the TensorBoard side output of `clt pretrain --tensorboard DIR`."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import DIGITS, RECIPES, Trained, cli

import clt
from clt.errors import CltError
from clt.runlog import METRICS_FILE, MetricsStream, read_metrics
from clt.store import Store

# 6 steps of 64 per epoch, a checkpoint every 4 steps: each run trains in seconds
SMALL = ["data.train_limit=384", "pretrain.epochs=3", "pretrain.checkpoint_every=4"]
STEPS = 6


def test_every_encoder_and_probe_holds_its_metrics_stream(trained: Trained):
    store = Store(trained.root)
    encoder, probe = store.get(trained.encoder), store.get(trained.probe)
    records = read_metrics(encoder.file(METRICS_FILE))  # listed in the manifest: checked by sha256
    epochs = [r for r in records if r["event"] == "epoch"]
    history = json.loads(encoder.file("history.json").read_text())
    assert [r["epoch"] for r in epochs] == [h["epoch"] for h in history]
    assert [r["loss"] for r in epochs] == [h["loss"] for h in history]
    steps = [r for r in records if r["event"] == "step"]
    assert steps and all({"loss", "lr", "seconds"} <= set(r) for r in steps)
    assert any("images_per_second" in r for r in steps) and all(r.get("images_per_second", 1) > 0 for r in steps)
    assert {"embedding_spread", "embedding_rank"} <= set(epochs[-1])
    numbers = [r["step"] for r in records]
    assert numbers == sorted(numbers)
    probe_records = read_metrics(probe.file(METRICS_FILE))
    probe_history = json.loads(probe.file("history.json").read_text())
    assert [r["epoch"] for r in probe_records] == [h["epoch"] for h in probe_history]
    assert all("train_accuracy" in r for r in probe_records)
    assert not list((trained.root / "tmp").glob(f"*.work/{METRICS_FILE}"))  # moved into the artifacts


def test_a_resumed_run_continues_the_stream_without_duplicates(tmp_path: Path):
    reference = clt.pretrain(DIGITS, overrides=SMALL, store=tmp_path / "reference")

    def interrupt(event):
        if event.kind == "update" and event.completed == 11:  # the last checkpoint was after step 8
            raise KeyboardInterrupt

    root = tmp_path / "store"
    with pytest.raises(KeyboardInterrupt):
        clt.pretrain(DIGITS, overrides=SMALL, store=root, progress=interrupt)
    (killed,) = root.glob(f"tmp/*.work/{METRICS_FILE}")
    assert max(r["step"] for r in read_metrics(killed)) == 10  # logged past the checkpoint the run resumes from
    resumed = clt.pretrain(DIGITS, overrides=SMALL, store=root)
    assert resumed.id == reference.id
    ours, theirs = read_metrics(resumed.file(METRICS_FILE)), read_metrics(reference.file(METRICS_FILE))
    assert [(r["event"], r["step"]) for r in ours] == [(r["event"], r["step"]) for r in theirs]
    assert len({(r["event"], r["step"]) for r in ours}) == len(ours)
    assert [r["step"] for r in ours if r["event"] == "epoch"] == [STEPS, 2 * STEPS, 3 * STEPS]
    # the same steps on the same path (seeded order and augmentation, the checkpoint's state)
    assert [r["loss"] for r in ours] == [r["loss"] for r in theirs]


def test_a_stream_drops_the_lines_past_where_a_run_starts_again(tmp_path: Path):
    path = tmp_path / METRICS_FILE
    path.write_text("".join(json.dumps({"event": "step", "step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3, 4))
                    + '{"event": "step", "st')  # a line cut by a kill
    stream = MetricsStream(path)
    stream.log({"event": "step", "step": 3, "loss": float("nan")})
    stream.close()
    records = read_metrics(path)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[-1]["loss"] is None  # NaN is not JSON


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_events_are_readable_and_change_no_address(tmp_path: Path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    recipe = RECIPES / "digits_simclr.yaml"  # augmented views, labels for the confusion heatmap
    overrides = ["data.train_limit=384", "pretrain.epochs=2"]
    root = tmp_path / "store"
    ran = cli(root, "pretrain", recipe, *[a for o in overrides for a in ("--set", o)],
              "--tensorboard", tmp_path / "tb").ok()
    events = _events(tmp_path / "tb")
    tags = events.Tags()
    assert {"step/loss", "step/lr", "epoch/loss", "epoch/embedding_rank", "epoch/embedding_spread"} <= set(
        tags["scalars"])
    assert {"views", "confusion"} <= set(tags["images"])
    stream = read_metrics(Store(root).get(ran.id).file(METRICS_FILE))
    assert [e.value for e in events.Scalars("epoch/loss")] == pytest.approx(
        [r["loss"] for r in stream if r["event"] == "epoch"])
    assert "tensorboard" not in json.dumps(Store(root).get(ran.id).manifest["spec"])
    # the address without the option: the same encoder, found by its address (the memo put aside)
    shutil.rmtree(root / "refs" / "memo")
    again = clt.pretrain(recipe, overrides=overrides, store=root)
    assert again.id == ran.id and again.cached
    # a stored encoder asked for events has its stream replayed into the folder
    cli(root, "pretrain", recipe, *[a for o in overrides for a in ("--set", o)],
        "--tensorboard", tmp_path / "replayed").ok()
    assert [e.step for e in _events(tmp_path / "replayed").Scalars("step/loss")] == \
        [e.step for e in events.Scalars("step/loss")]


def test_tensorboard_without_the_extra_is_refused_by_name(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard raises ImportError
    with pytest.raises(CltError, match="tensorboard") as raised:
        clt.pretrain(DIGITS, overrides=SMALL, tensorboard=tmp_path / "tb", store=tmp_path / "store")
    assert "clt[tensorboard]" in raised.value.hint
    assert not (tmp_path / "store" / "objects").exists()  # refused before any work
