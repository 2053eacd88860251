"""The label-free quality measure, the few-label check with the user's tags, and zero-norm embeddings."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Trained, cli

import clt

SIMCLR = "model: {encoder: pair_cnn, features: 16}\nobjective: {name: simclr}\n"


def _folder(root: Path, n: int = 24) -> Path:
    """n distinct 8x8 greyscale pictures: the first half dark, the second half bright."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n):
        base = 40 if i < n // 2 else 200
        pixels = np.clip(base + rng.integers(-40, 40, size=(8, 8)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(root / f"img{i:02d}.png")
    return root


def _recipe(tmp_path: Path, dataset: str, epochs: int) -> Path:
    recipe = tmp_path / f"{dataset}_{epochs}.yaml"
    recipe.write_text(f"data: {{dataset: {dataset}}}\n{SIMCLR}pretrain: {{epochs: {epochs}, batch_size: 8}}\n")
    return recipe


def _named_dataset(store: Path, name: str, folder: Path) -> list[str]:
    """Import `folder` as dataset `name` with `clt download`, which keeps each image's file name;
    returns the names, train rows then test rows."""
    from clt.stages.dataset import split_names

    artifact = clt.open_store(store).get(clt.download(name, folder, store=store).id)
    return [n for split in ("train", "test") for n in (split_names(artifact, split) or [])]


# ---------------------------------------------------------------- the measures, exactly


def test_view_retrieval_alignment_and_uniformity_on_known_embeddings():
    from clt.quality import alignment, uniformity, view_retrieval

    originals = torch.eye(4)
    # view 0 finds 0; view 1 is nearer original 2; view 2 finds 2; view 3 is zero: cosine 0 to all,
    # so its nearest is the first original, by index (not its own)
    views = torch.tensor([[2.0, 0.1, 0, 0], [0, 0.5, 1.0, 0], [0, 0, 3.0, 0], [0, 0, 0, 0]])
    assert view_retrieval(views, originals) == 0.5
    assert view_retrieval(originals * 7, originals) == 1.0
    assert alignment(originals, originals * 3) == 0.0
    assert alignment(torch.eye(2), torch.eye(2).flip(0)) == pytest.approx(2.0)  # orthogonal: ‖a−b‖² = 2
    assert uniformity(originals) == pytest.approx(-4.0)  # every pair at squared distance 2: log exp(-2·2)
    assert math.isfinite(uniformity(torch.zeros(3, 4)))


def test_the_verdict_line():
    from clt.quality import verdict

    better = {"encoder": {"view_retrieval": 0.62}, "pixels": {"view_retrieval": 0.407},
              "untrained": {"view_retrieval": 0.319}}
    line = verdict(better, 1000)
    assert line.startswith("view retrieval 62.0 %")
    assert "better than pixels by 21.3 points" in line and "better than untrained by 30.1 points" in line
    same = {"encoder": {"view_retrieval": 0.3}, "pixels": {"view_retrieval": 0.5},
            "untrained": {"view_retrieval": 0.3}}
    line = verdict(same, 1000)
    assert "worse than pixels by 20.0 points" in line and "no better than untrained" in line


# ---------------------------------------------------------------- evaluate without labels


def test_evaluate_on_an_unlabeled_folder_reports_view_retrieval_beside_untrained_and_pixels(tmp_path):
    store = tmp_path / "store"
    clt.download("pics", _folder(tmp_path / "pics"), store=store)
    untrained = clt.pretrain(_recipe(tmp_path, "pics", 0), store=store)
    ran = cli(store, "evaluate", untrained.id).ok()
    assert "view retrieval" in ran.stderr and "no better than untrained (+0.0 points" in ran.stderr
    result = clt.open_store(store).get(ran.id)
    scores = result.manifest["results"]["label_free"]
    assert scores["encoder"] == scores["untrained"]  # the encoder IS the untrained one: the same numbers
    assert set(scores) == {"encoder", "untrained", "pixels"} and scores["pixels"] != scores["untrained"]
    assert result.metrics["view_retrieval"] == scores["encoder"]["view_retrieval"]
    assert result.manifest["protocol"]["label_free"]["images"] == 24

    trained = clt.pretrain(_recipe(tmp_path, "pics", 2), store=store)
    evaluation = clt.evaluate(trained.id, store=store)
    assert evaluation.manifest["results"]["label_free"]["untrained"] == scores["untrained"]  # the same baseline
    with pytest.raises(clt.CltError, match="no labeled test split") as err:
        clt.evaluate(trained.id, knn=3, store=store)
    assert "--labels" in err.value.hint


def test_a_trained_digits_encoder_retrieves_its_views_far_above_chance(trained: Trained, store_copy: Trained):
    result = clt.evaluate(trained.encoder, quality=True, store=store_copy.root)
    images = result.manifest["protocol"]["label_free"]["images"]
    assert images == 360  # the digits test split: fewer than 1,000
    assert result.metrics["view_retrieval"] > 10 / images
    # the labelled measures of the same encoder are not changed by asking for the label-free ones
    plain = clt.evaluate(trained.encoder, knn=5, store=store_copy.root)
    assert "quality" not in plain.manifest["spec"]["options"] and "label_free" not in plain.manifest["results"]


# ---------------------------------------------------------------- your own tags


def _cosine_knn_cv(features: np.ndarray, labels: np.ndarray) -> float:
    """The few-label check computed directly: stratified folds, cosine, majority, ties to the nearest."""
    from sklearn.model_selection import StratifiedKFold

    folds = min(5, np.bincount(labels).min())
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=0).split(features, labels))
    k = min(10, min(len(train) for train, _ in splits))
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-30)
    correct = 0
    for train, test in splits:
        for q in test:
            sims = unit[train] @ unit[q]
            order = np.argsort(-sims, kind="stable")[:k]
            votes = np.bincount(labels[train][order], minlength=2)
            best = np.flatnonzero(votes == votes.max())
            first = {c: next(i for i, o in enumerate(order) if labels[train][o] == c) for c in best}
            correct += min(best, key=lambda c: first[c]) == labels[q]
    return correct / len(labels)


def test_labels_csv_scores_cross_validated_knn_as_computed_directly(tmp_path):
    store = tmp_path / "store"
    folder = _folder(tmp_path / "pics")
    names = _named_dataset(store, "mine", folder)
    encoder = clt.pretrain(_recipe(tmp_path, "mine", 1), store=store)
    tags = tmp_path / "tags.csv"
    tag_of = {name: "dark" if i < 12 else "bright" for i, name in enumerate(names)}
    tags.write_text("file,tag\n" + "".join(f"{n},{t}\n" for n, t in tag_of.items() if n != names[5]))
    ran = cli(store, "evaluate", encoder.id, "--labels", tags).ok()
    assert "your tags" in ran.stderr
    result = clt.open_store(store).get(ran.id)
    kept = [n for n in names if n != names[5]]
    labels = np.array([0 if tag_of[n] == "bright" else 1 for n in kept])  # tags sorted: bright, dark
    data = clt.load_dataset("mine", store=store)
    rows = [names.index(n) for n in kept]
    images = data.train.images[rows]
    features = clt.load_encoder(encoder.id, store=store).embed(images)
    pixels = images.reshape(len(images), -1).numpy() / 255
    assert result.manifest["results"]["tags"]["encoder"] == pytest.approx(_cosine_knn_cv(features, labels))
    assert result.manifest["results"]["tags"]["pixels"] == pytest.approx(_cosine_knn_cv(pixels - pixels.mean(0),
                                                                                        labels))
    assert result.manifest["protocol"]["tags"]["images"] == 23
    # the spec holds the CSV's content digest, not its path: the same tags elsewhere are the same evaluation
    moved = tmp_path / "elsewhere.csv"
    moved.write_bytes(tags.read_bytes())
    assert clt.evaluate(encoder.id, labels=moved, store=store).id == ran.id
    assert str(tags) not in str(result.manifest["spec"])


def test_labels_csv_naming_no_file_or_a_dataset_without_names_is_refused(tmp_path, store_copy: Trained):
    store = tmp_path / "store"
    names = _named_dataset(store, "mine", _folder(tmp_path / "pics"))
    encoder = clt.pretrain(_recipe(tmp_path, "mine", 1), store=store)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("".join(f"other{i}.png,a\n" for i in range(10)) + f"{names[0]},b\n")
    ran = cli(store, "evaluate", encoder.id, "--labels", wrong)
    assert ran.exit_code != 0 and "1 of the CSV's 11 rows name a file of dataset 'mine'" in ran.stderr
    before = clt.list_artifacts(store=store_copy.root)
    with pytest.raises(clt.CltError, match="dataset 'digits' keeps no file names"):
        clt.evaluate(store_copy.encoder, labels=wrong, store=store_copy.root)
    assert clt.list_artifacts(store=store_copy.root) == before  # refused before anything was made


# ---------------------------------------------------------------- zero-norm embeddings


def test_zero_rows_are_warned_per_class_and_knn_ranks_them_by_index():
    from clt.metrics import knn_predict, nearest_neighbours
    from clt.quality import zero_norm_warning

    vectors = np.array([[0, 0], [1, 0], [0, 0], [0, 0], [0, 1]], dtype=np.float32)
    warning = zero_norm_warning(vectors, np.array([0, 0, 1, 1, 1]), ["cat", "dog"])
    assert warning.startswith("3 of 5 embeddings are the zero vector (dog: 2, cat: 1)")
    assert zero_norm_warning(vectors[[1, 4]]) is None
    train = torch.tensor([[0.0, 0], [1, 0], [0, 0], [1, 0], [0, 1], [0, 0]])
    labels = torch.tensor([1, 0, 1, 0, 2, 2])
    queries = torch.tensor([[0.0, 0], [2, 0]])
    for chunk in (2, 4, 6):  # the same neighbours whatever the train blocks
        (_, sims, idx), = nearest_neighbours(train, queries, 4, train_chunk=chunk)
        assert not torch.isnan(sims).any()
        assert idx.tolist() == [[0, 1, 2, 3], [1, 3, 0, 2]]  # zero query: every row ties at 0, by index
    assert knn_predict(train, labels, queries, 3, 3).tolist() == [1, 0]


def test_embed_and_evaluate_warn_of_zero_embeddings_with_counts(store_copy: Trained, monkeypatch):
    import clt.features

    real = clt.features.extract_features

    def relu_like(encoder, data, split, device, **kw):  # an encoder mapping class 0 to the zero vector
        out = real(encoder, data, split, device, **kw)
        out[split.labels == 0] = 0
        return out

    monkeypatch.setattr(clt.features, "extract_features", relu_like)
    zeros = int((clt.load_dataset("digits", store=store_copy.root).test.labels == 0).sum())
    events = []
    made = clt.embed(store_copy.encoder, store=store_copy.root, progress=events.append)
    assert not made.cached, [e.message for e in events]
    assert any(e.kind == "warn" and f"{zeros} of 360 embeddings are the zero vector (0: {zeros})" in e.message
               for e in events)
    events.clear()
    result = clt.evaluate(store_copy.encoder, knn=5, store=store_copy.root, progress=events.append)
    assert any(e.kind == "warn" and f"zero vector (0: {zeros})" in e.message for e in events)
    assert result.manifest["results"]["zero_norm_rows"]["test"] == {"0": zeros}
    assert math.isfinite(result.metrics["knn_accuracy"])
