"""The public Python API (clt.api, re-exported by `import clt`): what a user's own code relies on."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DIGITS, ROOT, Trained, cli, subprocess_env

import clt
from clt.errors import DataError

# The digits pipeline's ids as main gave them before the library split (the stages moved into
# clt/stages/, the CLI onto clt.api), when an id hashed the spec alone. Since then an id also hashes
# the code behind its stage (clt/fingerprint.py): with that part taken out, the ids must be these,
# so moving code changed no spec; with it in, they differ, and exactly when the code does.
PINNED_IDS = {
    "dataset": "3e340c0e61a3581dd2956251f86d404910b76905c53fb38a0db2b67c37a415b2",
    "encoder": "336b6eb07bb94c224781aa1bbff9c0d2850f45711feea13854cde10800bc41ea",
    "probe": "b6f3dca1693732733f0a7fe15971fd3f19f90ded38f00f96aad6dbbefdf72123",
    "evaluation": "ded1c2c9d6bde496c6d30f8df3b7dfbab70a0f441ddedf72145b8ee0da2db0fb",
    "knn": "8d08ea57e255509e4cbc1d86d88ac845633679cee2c6e9a9f494b170151eca83",
    "embed": "79eb1a94fb424a473808bc157d081849c1f215ff1cdf9933730158851e0d0faf",
    "tsne": "b96afbd09c84db58e657691fead61d273d1e0b3d881ce8979e1e04efe0b2cba5",
}


def _digits_pipeline_ids(root: Path) -> dict[str, str]:
    encoder = clt.pretrain(str(ROOT / "recipes" / "digits_pair.yaml"), overrides=["pretrain.epochs=1"], store=root)
    probe = clt.probe(encoder.id, overrides=["probe.epochs=1"], store=root)
    embeddings = clt.embed(encoder.id, store=root)
    return {"dataset": clt.open_store(root).get(encoder.id).inputs["dataset"], "encoder": encoder.id,
            "probe": probe.id, "evaluation": clt.evaluate(probe.id, store=root).id,
            "knn": clt.evaluate(encoder.id, knn=5, store=root).id, "embed": embeddings.id,
            "tsne": clt.tsne(embeddings.id, pca=True, store=root).id}


def test_ids_change_exactly_when_the_code_they_depend_on_changes(trained: Trained, tmp_path: Path, monkeypatch):
    """Without the code part every digits address is the pinned one; with it, every stage's but the
    dataset's (addressed by its content) moves, and the CLI's fixture store agrees with the library."""
    import clt.store

    monkeypatch.setattr(clt.store, "code_of", lambda spec: None)
    assert _digits_pipeline_ids(tmp_path / "spec_only") == PINNED_IDS
    monkeypatch.undo()
    with_code = _digits_pipeline_ids(tmp_path / "with_code")
    assert (with_code["encoder"], with_code["probe"]) == (trained.encoder, trained.probe)
    assert with_code["dataset"] == PINNED_IDS["dataset"]
    assert all(with_code[k] != PINNED_IDS[k] for k in PINNED_IDS if k != "dataset")


def test_clt_embed_equals_encoder_embed(store_copy: Trained):
    root = store_copy.root
    stored_id = cli(root, "embed", store_copy.encoder, "--split", "test").ok().id
    stored = np.load(clt.open_store(root).get(stored_id).file("embeddings.npy"))
    encoder = clt.load_encoder(store_copy.encoder, store=root)
    images = clt.load_dataset("digits", store=root).test.images
    live = encoder.embed(images, batch_size=100)  # other batch boundaries than the stage's
    assert live.dtype == np.float32 and live.shape == stored.shape == (len(images), encoder.out_dim)
    np.testing.assert_allclose(live, stored, atol=1e-5, rtol=0)


def test_embed_takes_arrays_tensors_floats_pil_images_and_files(trained: Trained, tmp_path: Path):
    import torch
    from PIL import Image

    encoder = clt.load_encoder(trained.encoder, store=trained.root)
    images = clt.load_dataset("digits", store=trained.root).test.images[:6]  # uint8 (6, 1, 8, 8)
    expected = encoder.embed(images)
    as_numpy = images.numpy()
    np.testing.assert_allclose(encoder.embed(as_numpy[:, 0]), expected, atol=1e-6)  # (N, H, W)
    np.testing.assert_allclose(encoder.embed(torch.as_tensor(as_numpy).float() / 255), expected, atol=1e-5)
    pictures = [Image.fromarray(a[0]) for a in as_numpy]
    np.testing.assert_allclose(encoder.embed(pictures), expected, atol=1e-6)
    paths = []
    for i, picture in enumerate(pictures):
        paths.append(tmp_path / f"{i}.png")
        picture.convert("RGB").save(paths[-1])  # saved as RGB: converted back to the encoder's one channel
    np.testing.assert_allclose(encoder.embed([str(p) for p in paths]), expected, atol=1e-6)


def test_embed_refuses_images_of_the_wrong_shape_naming_both(trained: Trained):
    encoder = clt.load_encoder(trained.encoder, store=trained.root)
    with pytest.raises(DataError, match=r"\(4, 1, 9, 9\).*\(N, 1, 8, 8\)"):
        encoder.embed(np.zeros((4, 1, 9, 9), np.uint8))
    with pytest.raises(DataError, match="not 8-bit"):
        encoder.embed(np.full((2, 8, 8), 300, np.int64))


def test_classifier_agrees_with_evaluate(store_copy: Trained):
    root = store_copy.root
    classifier = clt.load_classifier(store_copy.probe, store=root)
    test = clt.load_dataset("digits", store=root).test
    proba = classifier.predict_proba(test.images)
    assert proba.shape == (len(test), len(classifier.classes))
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-5)
    accuracy = float((classifier.predict(test.images) == test.labels.numpy()).mean())
    assert accuracy == pytest.approx(clt.evaluate(store_copy.probe, store=root).metrics["accuracy"], abs=1e-9)
    assert classifier.classes == [str(d) for d in range(10)]


def test_load_dataset_by_name_and_by_id(trained: Trained):
    by_name = clt.load_dataset("digits", store=trained.root)
    by_id = clt.load_dataset(trained.dataset[:10], store=trained.root)
    assert by_name.in_shape == by_id.in_shape == (1, 8, 8)
    assert (by_name.test.images == by_id.test.images).all()


def test_the_library_never_prints_and_reports_through_the_callback(trained: Trained, tmp_path: Path, capfd):
    events = []
    root = tmp_path / "store"
    encoder = clt.pretrain(DIGITS, overrides=["pretrain.epochs=1"], seed=3, store=root, progress=events.append)
    assert capfd.readouterr() == ("", "")
    kinds = {e.kind for e in events}
    assert {"info", "start", "update", "end"} <= kinds
    assert any(e.message.startswith("epoch 1:") for e in events if e.kind == "info")
    updates = [e for e in events if e.kind == "update"]
    assert updates[-1].completed == updates[-1].total > 0
    again = clt.pretrain(DIGITS, overrides=["pretrain.epochs=1"], seed=3, store=root)
    assert again.cached and again.id == encoder.id


def test_a_missing_dataset_under_an_encoder_says_to_download_it_again(store_copy: Trained):
    import shutil

    shutil.rmtree(clt.open_store(store_copy.root).get(store_copy.dataset).path)
    with pytest.raises(DataError) as caught:
        clt.load_encoder(store_copy.encoder, store=store_copy.root)
    assert "clt download digits" in caught.value.hint


def test_import_clt_loads_neither_torch_nor_the_command_line():
    code = ("import sys, clt; f = clt.load_encoder; "
            "print(sorted(m for m in ('torch', 'rich', 'typer') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def readme_python_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use it from Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_example_runs(tmp_path: Path):
    code = readme_python_example()
    assert 8 <= len(code.strip().splitlines()) <= 14
    env = subprocess_env(tmp_path / "store")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    accuracy_line, shape_line = proc.stdout.strip().splitlines()
    assert 0.1 < float(accuracy_line.split()[-1]) <= 1
    assert shape_line.startswith("(5, 128) ['")


def test_embedding_geometry_tells_few_directions_from_many_and_refuses_a_single_row():
    generator = np.random.default_rng(0)
    many = generator.normal(size=(512, 32))
    few = generator.normal(size=(512, 3)) @ generator.normal(size=(3, 32))
    wide, narrow = clt.embedding_geometry(many), clt.embedding_geometry(few)
    assert wide["dim"] == narrow["dim"] == 32
    assert narrow["effective_rank"] <= 3.0 + 1e-4 < 20 < wide["effective_rank"]
    with pytest.raises(clt.CltError, match="shape"):
        clt.embedding_geometry(many[:1])
