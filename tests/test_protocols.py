"""Evaluation protocols: kNN, few labels, baselines, seeds with mean ± std, compare, exports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clt import metrics, stages
from clt.cli.render import format_mean_std
from clt.probing import few_label_subset
from clt.store import Store

ROOT = Path(__file__).resolve().parent.parent
DIGITS = str(ROOT / "recipes" / "digits_pair.yaml")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> stages.Context:
    return stages.Context(Store(tmp_path_factory.mktemp("protocols")), device="cpu")


@pytest.fixture(scope="module")
def encoder(ctx) -> str:
    return stages.pretrain(ctx, DIGITS, ["pretrain.epochs=2"]).artifact.id


# ------------------------------------------------------------------ pure functions


def brute_force_knn(train, labels, queries, k, n_classes, metric):
    out = []
    for q in queries:
        if metric == "cosine":
            sims = [float(torch.nn.functional.cosine_similarity(q, t, dim=0)) for t in train]
        else:
            sims = [-float(((q - t) ** 2).sum()) for t in train]
        order = np.argsort(sims)[::-1][:k]
        votes = np.zeros(n_classes)
        for i in order:
            votes[int(labels[i])] += 1
        best = np.flatnonzero(votes == votes.max())
        # ties go to the class of the nearest neighbour among the tied classes
        out.append(next(int(labels[i]) for i in order if int(labels[i]) in best))
    return np.array(out)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("k", [1, 5, 20])
def test_knn_matches_brute_force_with_chunking(metric, k):
    generator = torch.Generator().manual_seed(k)
    train = torch.randn(300, 8, generator=generator, dtype=torch.float64).float()
    labels = torch.randint(0, 4, (300,), generator=generator)
    queries = torch.randn(40, 8, generator=generator)
    # tiny chunks force the running top-k merge across many train blocks and query blocks
    pred = metrics.knn_predict(train, labels, queries, k, 4, metric, "majority", query_chunk=7, train_chunk=33)
    expected = brute_force_knn(train, labels, queries, k, 4, metric)
    assert (pred.numpy() == expected).mean() == 1.0


def test_knn_distance_vote_weights_near_neighbours():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    query = torch.tensor([[1.0, 0.05]])
    assert metrics.knn_predict(train, labels, query, 5, 2, "cosine", "majority").item() == 1
    assert metrics.knn_predict(train, labels, query, 5, 2, "cosine", "distance", temperature=0.05).item() == 0


def test_best_threshold_is_optimal_on_its_pairs():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=200)
    same = scores + rng.normal(scale=0.5, size=200) > 0
    threshold = metrics.best_threshold(scores, same)
    best = metrics.accuracy(same, scores > threshold)
    for t in np.linspace(-3, 3, 121):
        assert metrics.accuracy(same, scores > t) <= best + 1e-12


def test_verification_pairs_are_balanced_seeded_and_valid():
    labels = np.repeat(np.arange(10), 30)
    i, j, same = metrics.verification_pairs(labels, 1000, seed=3)
    assert len(i) == 1000 and same.sum() == 500
    assert np.array_equal(labels[i] == labels[j], same)
    assert (i[same] != j[same]).all()
    again = metrics.verification_pairs(labels, 1000, seed=3)
    assert np.array_equal(again[0], i) and np.array_equal(again[1], j)


def test_mean_std_is_sample_std():
    mean, std = metrics.mean_std([0.9, 0.92, 0.94])
    assert mean == pytest.approx(0.92)
    assert std == pytest.approx(0.02)


@pytest.mark.parametrize("per_class,total", [(3, None), (None, 25), (None, 10)])
def test_few_label_subset_is_balanced_and_seeded(per_class, total):
    labels = torch.arange(10).repeat_interleave(20)
    index = few_label_subset(labels, seed=1, per_class=per_class, total=total)
    counts = torch.bincount(labels[index], minlength=10)
    expected_total = per_class * 10 if per_class else total
    assert len(index) == expected_total and len(set(index.tolist())) == expected_total
    assert counts.max() - counts.min() <= (0 if per_class else 1)
    assert torch.equal(index, few_label_subset(labels, seed=1, per_class=per_class, total=total))
    assert not torch.equal(index, few_label_subset(labels, seed=2, per_class=per_class, total=total))


# ------------------------------------------------------------------ stages


def test_few_label_probe_records_its_subset(ctx, encoder):
    probe = stages.probe(ctx, encoder, ["probe.labels_per_class=3", "probe.epochs=2"])
    subset = probe.artifact.manifest["subset"]
    data = stages.load_dataset(ctx.store.get(ctx.store.get(encoder).inputs["dataset"]))
    assert len(subset) == 30
    assert torch.bincount(data.train.labels[torch.tensor(subset)], minlength=10).tolist() == [3] * 10
    assert probe.artifact.manifest["protocol"]["labels_used"] == 30


def test_mlp_head_and_knn_evaluation(ctx, encoder):
    probe = stages.probe(ctx, encoder, ["probe.head=mlp", "probe.hidden=[32]", "probe.epochs=3"])
    evaluation = stages.evaluate(ctx, probe.artifact.id, knn=5)
    assert evaluation.artifact.manifest["protocol"]["protocol"] == "offline mlp"
    assert evaluation.artifact.manifest["protocol"]["knn"]["k"] == 5
    assert 0.5 < evaluation.metrics["knn_accuracy"] <= 1.0


def test_all_label_probe_stores_train_features_that_evaluate_reuses(tmp_path):
    ctx = stages.Context(Store(tmp_path), device="cpu")
    encoder = stages.pretrain(ctx, DIGITS, ["pretrain.epochs=1"]).artifact.id
    probe = stages.probe(ctx, encoder, ["probe.epochs=2"])
    train = stages.embed(ctx, encoder, "train")
    assert train.cached, "the probe did not store the encoder's train features"
    evaluation = stages.evaluate(ctx, probe.artifact.id, knn=5)
    test = stages.embed(ctx, encoder, "test")
    assert test.cached, "evaluate did not store the encoder's test features"
    # the stored features are the encoder's: scoring the head on them gives the evaluation's accuracy
    encoder_module, head = stages.load_probe(ctx.store, probe.artifact, torch.device("cpu"))
    features = torch.from_numpy(np.load(test.artifact.file("embeddings.npy")))
    labels = np.load(test.artifact.file("labels.npy"))
    with torch.no_grad():
        predicted = head(features).argmax(1).numpy()
    assert evaluation.metrics["accuracy"] == pytest.approx(float((predicted == labels).mean()))
    kinds = [ctx.store.get(i).kind for i in ctx.store.ids()]
    assert kinds.count("embeddings") == 2, kinds


def test_train_limit_pretrains_on_a_balanced_subset_and_probes_on_all(ctx):
    limited = stages.pretrain(ctx, DIGITS, ["pretrain.epochs=1", "data.train_limit=200",
                                            "pretrain.batch_size=32"])
    assert limited.metrics["train_images"] == 200
    steps = json.loads(limited.artifact.file("history.json").read_text())
    assert len(steps) == 1
    probe = stages.probe(ctx, limited.artifact.id, ["probe.epochs=1"])
    assert probe.artifact.manifest["protocol"]["labels_used"] > 1000  # the probe sees every train label


def test_baselines_are_probes_that_evaluate(ctx):
    logreg = stages.baseline_logreg(ctx, "digits", ["epochs=5"])
    scratch = stages.baseline_scratch(ctx, DIGITS, ["probe.epochs=3", "probe.labels_per_class=5"])
    for outcome, protocol in ((logreg, "logistic regression on pixels"), (scratch, "scratch supervised")):
        assert outcome.artifact.kind == "probe"
        result = stages.evaluate(ctx, outcome.artifact.id)
        assert result.artifact.manifest["protocol"]["protocol"] == protocol
        assert "pair_accuracy" not in result.metrics  # supervised baselines have no pair objective
        assert 0.1 < result.metrics["accuracy"] <= 1.0
    assert scratch.artifact.manifest["metrics"]["labels_used"] == 50


def test_scratch_baseline_with_augmentation_is_its_own_row(ctx):
    settings = ["probe.epochs=3", "probe.labels_per_class=5"]
    plain = stages.baseline_scratch(ctx, DIGITS, settings)
    augmented = stages.baseline_scratch(ctx, DIGITS, settings, augment="digits")
    assert augmented.artifact.id != plain.artifact.id
    assert augmented.artifact.manifest["protocol"]["augment"] == "digits"
    assert "augment" not in plain.artifact.manifest["protocol"]
    # the same seed, labels and order: only the augmented views make the weights differ
    from safetensors.torch import load_file

    plain_w = load_file(str(plain.artifact.file("encoder.safetensors")))
    augmented_w = load_file(str(augmented.artifact.file("encoder.safetensors")))
    assert any(not torch.equal(plain_w[k], augmented_w[k]) for k in plain_w)
    evaluations = [stages.evaluate(ctx, o.artifact.id).artifact.id for o in (plain, augmented)]
    protocols = [row["protocol"] for row in stages.summarize(ctx.store, evaluations)]
    assert len(protocols) == 2 and any("digits augmentation" in p for p in protocols)


def test_scratch_baseline_refuses_an_unknown_augmentation_preset(ctx):
    from clt.errors import RecipeError

    with pytest.raises(RecipeError, match="unknown --augment preset 'digit'") as err:
        stages.baseline_scratch(ctx, DIGITS, ["probe.epochs=1"], augment="digit")
    assert "digits" in (err.value.hint or "")


def test_seeds_group_into_mean_and_std(ctx, encoder):
    evaluations = [stages.evaluate(ctx, stages.probe(ctx, encoder, ["probe.epochs=2"], seed=seed).artifact.id)
                   for seed in (0, 1, 2)]
    rows = stages.summarize(ctx.store, [e.artifact.id for e in evaluations])
    assert len(rows) == 1 and rows[0]["n"] == 3
    values = [e.metrics["accuracy"] for e in evaluations]
    assert rows[0]["accuracy"]["mean"] == pytest.approx(np.mean(values))
    assert rows[0]["accuracy"]["std"] == pytest.approx(np.std(values, ddof=1))
    assert "±" in format_mean_std(rows[0]["accuracy"]) or len(set(values)) == 1


def test_embed_projector_and_pca_picture(ctx, encoder):
    emb = stages.embed(ctx, encoder, "test", projector=True)
    files = emb.artifact.manifest["files"]
    assert {"embeddings.npy", "labels.npy", "vectors.tsv", "metadata.tsv"} <= set(files)
    vectors = np.loadtxt(emb.artifact.file("vectors.tsv"), delimiter="\t")
    metadata = emb.artifact.file("metadata.tsv").read_text().splitlines()
    assert vectors.shape[0] == len(metadata) - 1 == emb.metrics["count"]
    figure = stages.tsne(ctx, emb.artifact.id, pca=True)
    assert figure.artifact.file("pca.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_views_picture_and_loss_curves(ctx, encoder):
    figure = stages.views(ctx, str(ROOT / "recipes" / "digits_simclr.yaml"), count=3, n_views=2)
    assert figure.artifact.file("views.png").read_bytes()[:4] == b"\x89PNG"
    assert ctx.store.get(encoder).file("loss_curve.png").stat().st_size > 0
    history = json.loads(ctx.store.get(encoder).file("history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]


def test_unlabeled_folder_pretrains_with_simclr(ctx, tmp_path):
    from PIL import Image

    folder = tmp_path / "pics"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for n in range(40):
        Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(folder / f"{n}.png")
    stages.download(ctx, "pics", str(folder))
    recipe = tmp_path / "pics.yaml"
    recipe.write_text("data: {dataset: pics}\nmodel: {encoder: pair_cnn, features: 16, projection: [16, 8]}\n"
                      "objective: {name: simclr}\npretrain: {epochs: 1, batch_size: 16}\n")
    encoder = stages.pretrain(ctx, str(recipe))
    assert encoder.artifact.kind == "encoder"
    with pytest.raises(Exception, match="labels"):
        stages.probe(ctx, encoder.artifact.id)


def test_the_headline_pair_accuracy_is_on_balanced_test_pairs(ctx, encoder):
    """pair_accuracy is the published protocol (half the test pairs share a class, threshold chosen on
    training pairs drawn the same way); the random-partner figure is a second, separately named metric."""
    from clt.recipe import load_recipe

    evaluation = stages.evaluate(ctx, encoder).artifact
    pairs = evaluation.manifest["protocol"]["pairs"]
    results = evaluation.manifest["results"]
    assert pairs["test_pairs"] == results["pairs"] == load_recipe(DIGITS).evaluate.pairs
    assert pairs["same_share"] == pytest.approx(0.5, abs=1e-3)
    assert pairs["threshold"]["chosen_on"].endswith("train pairs")
    (tn, fp), (fn, tp) = results["pair_confusion"]
    assert tn + fp == fn + tp == pairs["test_pairs"] // 2  # the confusion is of the balanced pairs
    assert results["pair_accuracy"] == pytest.approx((tn + tp) / pairs["test_pairs"])
    assert pairs["random_partner"]["same_share"] < 0.2  # ~1/classes: the easier task, reported apart
    assert list(evaluation.manifest["metrics"]) == ["pair_accuracy", "pair_accuracy_random_partner"]
    assert load_recipe(ROOT / "recipes" / "mnist_pair.yaml").evaluate.pairs == 10048  # the published count


def test_the_command_line_shows_the_balanced_pair_accuracy_first():
    from clt.cli.render import EVALUATION_ROWS

    keys = list(EVALUATION_ROWS)
    assert keys.index("pair_accuracy") < keys.index("pair_accuracy_random_partner")
    assert "balanced" in EVALUATION_ROWS["pair_accuracy"]
