"""The online kNN monitor of pretraining (pretrain.monitor)."""

from __future__ import annotations

import json

import pytest
from conftest import DIGITS, PNG_SIGNATURE

import clt

MONITOR = ["pretrain.monitor.knn=5", "pretrain.monitor.train=500", "pretrain.monitor.test=200"]


def test_the_monitor_scores_every_epoch_and_stores_the_curve(tmp_path):
    events = []
    watched = clt.pretrain(DIGITS, overrides=["pretrain.epochs=3", "pretrain.monitor.every=2", *MONITOR],
                           store=tmp_path, progress=events.append)
    store = clt.open_store(tmp_path)
    artifact = store.get(watched.id)
    history = json.loads(artifact.file("history.json").read_text())
    assert [("knn_accuracy" in h) for h in history] == [False, True, True]  # every 2nd epoch, and the last
    monitor = artifact.manifest["monitor"]
    assert [p["epoch"] for p in monitor["curve"]] == [2, 3]
    assert (monitor["train"], monitor["test"], monitor["k"]) == (500, 200, 5)
    assert 0 < monitor["share_of_training"] and monitor["seconds"] > 0
    assert 0.1 < watched.metrics["monitor_knn_accuracy"] == history[-1]["knn_accuracy"] <= 1
    assert any("5-NN" in e.message for e in events if e.kind == "info")
    assert artifact.file("loss_curve.png").read_bytes()[:8] == PNG_SIGNATURE


def test_monitoring_does_not_change_training(tmp_path):
    plain = clt.pretrain(DIGITS, overrides=["pretrain.epochs=2"], store=tmp_path)
    watched = clt.pretrain(DIGITS, overrides=["pretrain.epochs=2", *MONITOR], store=tmp_path)
    assert plain.id != watched.id  # its own address: the recipe differs
    store = clt.open_store(tmp_path)
    losses = [[h["loss"] for h in json.loads(store.get(r.id).file("history.json").read_text())]
              for r in (plain, watched)]
    assert losses[0] == losses[1]
    assert store.get(plain.id).manifest["files"]["encoder.safetensors"] == \
        store.get(watched.id).manifest["files"]["encoder.safetensors"]


def test_an_unset_monitor_leaves_every_address_alone():
    from clt.recipe import load_recipe

    assert "monitor" not in load_recipe(DIGITS).to_dict()["pretrain"]


@pytest.mark.parametrize("bad", ["pretrain.monitor.knn=0", "pretrain.monitor.every=0", "pretrain.monitor=5"])
def test_bad_monitor_settings_are_refused_by_key(bad, tmp_path):
    with pytest.raises(clt.CltError, match="monitor"):
        clt.pretrain(DIGITS, overrides=[bad], store=tmp_path)


def test_an_unlabeled_dataset_is_monitored_by_view_retrieval(tmp_path):
    from PIL import Image

    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(40):
        Image.new("L", (8, 8), color=i * 6).save(folder / f"{i}.png")
    store = tmp_path / "store"
    clt.download("pics", folder, store=store)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {dataset: pics}\nmodel: {encoder: pair_cnn, features: 16}\nobjective: {name: simclr}\n"
                      "pretrain: {epochs: 1, batch_size: 16, monitor: {knn: 3}}\n")
    events = []
    result = clt.pretrain(recipe, store=store, progress=events.append)
    monitor = result.manifest["monitor"]  # no labels: view retrieval beside untrained and pixels, not kNN
    assert monitor["measure"] == "view retrieval" and set(monitor["baselines"]) == {"untrained", "pixels"}
    assert [p["epoch"] for p in monitor["curve"]] == [1] and 0 <= result.metrics["monitor_view_retrieval"] <= 1
    assert any("instead of kNN" in e.message for e in events)
    assert any(e.message.startswith("monitor: view retrieval") for e in events)
