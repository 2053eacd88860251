"""`clt report`: one self-contained HTML page of an encoder's lineage, or comparing several, checked
as text and, where Chromium is installed, opened in a headless browser as a person would."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from browser import chromium, open_page
from conftest import DIGITS, Trained, cli

import clt
from clt.errors import CltError
from clt.htmlpage import fmt
from clt.store import Store


@pytest.fixture(scope="module")
def lineage(trained: Trained, tmp_path_factory) -> Trained:
    """The trained digits store with the rest of the demo's lineage: an evaluation and a t-SNE."""
    root = tmp_path_factory.mktemp("lineage") / "store"
    shutil.copytree(trained.root, root)
    cli(root, "evaluate", trained.probe, "--confusion").ok()
    embeddings = cli(root, "embed", trained.encoder, "--split", "test").ok().id
    cli(root, "tsne", embeddings, "--pca").ok()
    return Trained(root, trained.dataset, trained.encoder, trained.probe)


def _no_urls(page: str) -> None:
    """Nothing is fetched: no src or href names a network address."""
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<link" not in page and "@import" not in page


def test_the_report_holds_the_runs_figures_as_text(lineage: Trained, tmp_path: Path):
    out = tmp_path / "report.html"
    ran = cli(lineage.root, "report", lineage.encoder, "--out", out).ok()
    assert ran.stdout.strip() == str(out)
    page = out.read_text()
    store = Store(lineage.root)
    (evaluation,) = [a for a in store.all() if a.kind == "evaluation"]
    encoder = store.get(lineage.encoder)
    assert f"{evaluation.metrics['accuracy']:.2%}" in page
    assert f"<td>epochs</td><td class=\"num\">{encoder.metrics['epochs']}</td>" in page
    for shown in (encoder.id, lineage.probe, evaluation.id, "digits", "confusion heatmap", "pca of embeddings",
                  "nearest neighbours", "Timings, machine and versions"):
        assert shown in page, shown
    for name, accuracy in evaluation.manifest["results"]["per_class_accuracy"].items():
        assert f"<td>{name}</td><td class=\"num\">{fmt(round(100 * accuracy, 2))}</td>" in page
    assert page.count("data:image/png;base64,") >= 4 and "<svg" in page
    _no_urls(page)


def test_parts_not_made_yet_are_named_with_their_command(trained: Trained, tmp_path: Path):
    """The fixture store has no evaluation and no t-SNE; a probe's ref stands for its encoder."""
    page = clt.report(trained.probe[:10], out=tmp_path / "r.html", store=trained.root).read_text()
    assert f"clt evaluate {trained.probe[:12]} --confusion" in page
    assert f"clt tsne $(clt embed {trained.encoder[:12]})" in page
    assert f"clt report: digits_pair {trained.encoder[:12]}" in page


def test_a_report_needs_an_encoder_behind_its_ref(trained: Trained, tmp_path: Path):
    with pytest.raises(CltError, match="no encoder behind it"):
        clt.report(trained.dataset, out=tmp_path / "r.html", store=trained.root)
    with pytest.raises(CltError, match="same encoder more than once"):
        clt.report([trained.encoder, trained.probe], out=tmp_path / "r.html", store=trained.root)


def test_a_comparison_puts_both_runs_curves_on_shared_axes(store_copy: Trained, tmp_path: Path):
    root = store_copy.root
    other = cli(root, "pretrain", DIGITS, "--set", "pretrain.epochs=2", "--set", "seed=1",
                "--set", "data.train_limit=384").ok().id
    out = tmp_path / "compare.html"
    cli(root, "report", store_copy.encoder, other, "--out", out).ok()
    page = out.read_text()
    chart = re.search(r'<svg id="compare-epoch-loss".*?</svg>', page, re.S)
    assert chart, "no overlaid loss chart"
    series = re.findall(r'data-series="([^"]+)"', chart[0])
    assert series == [f"digits_pair {store_copy.encoder[:12]}", f"digits_pair {other[:12]}"]
    assert all(re.search(f'class="legend"[^>]*>{re.escape(label)}</text>', chart[0]) for label in series)
    assert "data.train_limit" in page  # the recipe differences name the setting that differs
    assert "2 encoders compared" in page
    _no_urls(page)


def test_the_report_opens_in_a_browser_without_errors(lineage: Trained, tmp_path: Path):
    if chromium() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium): the browser check is skipped")
    pytest.importorskip("websocket", reason="websocket-client (in clt's dev extra) talks to Chromium")
    out = tmp_path / "report.html"
    clt.report(lineage.encoder, out=out, store=lineage.root)
    check = open_page(out, tmp_path / "report.png")
    assert check.errors == []
    assert check.images >= 4 and check.images_loaded
    assert "Nearest neighbours" in check.text and lineage.encoder in check.text
    assert check.screenshot.read_bytes().startswith(b"\x89PNG")
