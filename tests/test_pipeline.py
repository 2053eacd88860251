"""End to end: every stage chained through the ids on stdout in a bash script; lineage; a frozen probe."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
from conftest import (
    DIGITS,
    FAST_PROBE,
    PNG_SIGNATURE,
    ROOT,
    Trained,
    cli,
    clt_command,
    sha256_of,
    subprocess_env,
)
from PIL import Image

from clt.store import Store

SCRIPT = """\
set -euo pipefail
CLT=({clt})
enc=$("${{CLT[@]}}" pretrain recipes/digits_pair.yaml --set pretrain.epochs=1)
probe=$("${{CLT[@]}}" probe "$enc" --epochs 1)
evaluation=$("${{CLT[@]}}" evaluate "$probe" --confusion)
emb=$("${{CLT[@]}}" embed "$enc")
fig=$("${{CLT[@]}}" tsne "$emb" --pca)
printf 'enc=%s\\nprobe=%s\\nevaluation=%s\\nemb=%s\\nfig=%s\\n' "$enc" "$probe" "$evaluation" "$emb" "$fig"
"""

KINDS = {"enc": "encoder", "probe": "probe", "evaluation": "evaluation", "emb": "embeddings", "fig": "figure"}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> tuple[Store, dict[str, str], subprocess.CompletedProcess]:
    """Run the whole chain once, in bash, against a fresh store."""
    base = tmp_path_factory.mktemp("pipeline")
    store = Store(base / "store")
    script = base / "pipeline.sh"
    script.write_text(SCRIPT.format(clt=shlex.join([*clt_command(), "--artifacts", str(store.root)])))
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=ROOT, env=subprocess_env(),
                          timeout=600)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    ids = dict(line.split("=", 1) for line in proc.stdout.strip().splitlines())
    return store, ids, proc


def test_every_stage_prints_one_id(pipeline):
    store, ids, _ = pipeline
    assert set(ids) == set(KINDS)
    for name, artifact_id in ids.items():
        assert re.fullmatch(r"[0-9a-f]{64}", artifact_id), (name, artifact_id)
    assert len(set(ids.values())) == len(ids)


def test_each_id_resolves_to_its_kind(pipeline):
    store, ids, _ = pipeline
    for name, kind in KINDS.items():
        artifact = store.resolve(ids[name])
        assert artifact.kind == kind, name
        assert store.verify(ids[name]) == []
    assert store.read_ref("latest-encoder") == ids["enc"]
    assert store.read_ref("digits_pair/encoder") == ids["enc"]


def test_logs_go_to_stderr(pipeline):
    _, ids, proc = pipeline
    # progress and tables went to stderr (stdout held only the ids, or the parse above would fail)
    assert "epoch 1" in proc.stderr
    assert "pair verification" in proc.stderr and "accuracy" in proc.stderr


def _png(path: Path) -> tuple[int, int]:
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def test_figures_are_pngs(pipeline):
    store, ids, _ = pipeline
    figure = store.get(ids["fig"])
    assert figure.manifest["method"] == "pca"
    assert min(_png(figure.file("pca.png"))) > 50
    assert min(_png(store.get(ids["evaluation"]).file("confusion.png"))) > 50
    import numpy as np

    coords = np.load(figure.file("coords.npy"))
    embeddings = np.load(store.get(ids["emb"]).file("embeddings.npy"))
    assert coords.shape == (min(len(embeddings), 5000), 2)


def test_lineage_chains_back_to_the_dataset(pipeline):
    store, ids, _ = pipeline
    evaluation = store.get(ids["evaluation"])
    probe = store.get(evaluation.inputs["target"])
    assert probe.id == ids["probe"] and probe.kind == "probe"
    encoder = store.get(probe.inputs["encoder"])
    assert encoder.id == ids["enc"] and encoder.kind == "encoder"
    dataset = store.get(encoder.inputs["dataset"])
    assert dataset.kind == "dataset" and dataset.name == "digits"
    assert probe.inputs["dataset"] == dataset.id
    embeddings = store.get(ids["emb"])
    assert embeddings.inputs == {"encoder": encoder.id}
    assert embeddings.metrics["count"] == dataset.manifest["dataset"]["test"]  # default split: test
    assert store.get(ids["fig"]).inputs == {"embeddings": embeddings.id}
    assert encoder.recipe["pretrain"]["epochs"] == 1 and probe.manifest["spec"]["probe"]["epochs"] == 1
    # evaluate stores the encoder's features it computed as embeddings artifacts (reused later)
    extra = {a.id for a in store.all()} - {*ids.values(), dataset.id}
    assert all(store.get(i).kind == "embeddings" and store.get(i).inputs == {"encoder": encoder.id} for i in extra)
    assert {*ids.values(), dataset.id} <= {a.id for a in store.all()}


def test_rerunning_the_chain_is_all_cached(pipeline):
    store, ids, _ = pipeline
    again = cli(store.root, "pretrain", DIGITS, "--set", "pretrain.epochs=1").ok()
    assert again.id == ids["enc"] and "cached" in again.stderr
    assert cli(store.root, "probe", ids["enc"], *FAST_PROBE).ok().id == ids["probe"]
    assert cli(store.root, "evaluate", ids["probe"], "--confusion").ok().id == ids["evaluation"]
    assert cli(store.root, "embed", ids["enc"]).ok().id == ids["emb"]
    assert cli(store.root, "tsne", ids["emb"], "--pca").ok().id == ids["fig"]
    assert len(store.all()) == len(ids) + 2  # + the dataset, and the train-split features evaluate stored


# ---------------------------------------------------------------- the probe leaves the encoder alone


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_frozen_probe_does_not_change_the_encoder(store_copy: Trained):
    store = Store(store_copy.root)
    weights_file = store.get(store_copy.encoder).path / "encoder.safetensors"
    before_sha, before = sha256_of(weights_file), _weights(weights_file)
    probe_id = cli(store_copy.root, "probe", store_copy.encoder, *FAST_PROBE, "--head", "mlp",
                   "--labels-per-class", "3").ok().id
    probe = store.get(probe_id)
    assert probe.kind == "probe" and probe_id != store_copy.probe
    assert probe.inputs["encoder"] == store_copy.encoder
    assert "encoder.safetensors" not in probe.manifest["files"]  # frozen: no weights of its own
    assert sha256_of(weights_file) == before_sha
    after = _weights(weights_file)
    assert after.keys() == before.keys()
    assert all((after[k] == before[k]).all() for k in before)
    assert store.verify(store_copy.encoder) == []


def test_finetune_writes_its_own_encoder_and_keeps_the_original(store_copy: Trained):
    store = Store(store_copy.root)
    weights_file = store.get(store_copy.encoder).path / "encoder.safetensors"
    before_sha = sha256_of(weights_file)
    probe = store.get(cli(store_copy.root, "probe", store_copy.encoder, *FAST_PROBE, "--finetune",
                            "--labels-per-class", "3").ok().id)
    tuned = probe.file("encoder.safetensors")
    assert sha256_of(tuned) != before_sha  # fine-tuning did train the encoder: the check above can fail
    assert sha256_of(weights_file) == before_sha
    assert store.verify(store_copy.encoder) == [] and store.verify(probe.id) == []
