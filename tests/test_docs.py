"""The docs: the site builds in strict mode, the results page is what the records give, every record
names its run, the README stays short and its links resolve, and the getting-started page's commands
run as written on generated folders of images."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, subprocess_env

import clt

DOCS = ROOT / "docs"


def build_docs(root: Path, site: Path) -> subprocess.CompletedProcess:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.fail("mkdocs is not installed: pip install -e '.[docs]' (make install does)")
    env = {**subprocess_env(), "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_docs_build_in_strict_mode(tmp_path: Path):
    built = build_docs(ROOT, tmp_path / "site")
    assert built.returncode == 0, built.stdout + built.stderr
    assert (tmp_path / "site" / "getting-started" / "index.html").exists()
    assert "clt.api.pretrain" in (tmp_path / "site" / "api" / "index.html").read_text()  # the API page is rendered


@pytest.mark.parametrize("damage", ["broken link", "page left out of the nav"])
def test_a_broken_link_or_a_stray_page_fails_the_build(tmp_path: Path, damage: str):
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in ("docs", "clt"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    if damage == "broken link":
        with open(copy / "docs" / "index.md", "a") as page:
            page.write("\nSee [the missing page](no-such-page.md).\n")
    else:
        (copy / "docs" / "stray.md").write_text("# Stray\n")
    built = build_docs(copy, tmp_path / "site")
    assert built.returncode != 0
    assert ("no-such-page.md" if damage == "broken link" else "stray.md") in built.stdout + built.stderr


def records_module():
    spec = importlib.util.spec_from_file_location("bench_records", ROOT / "bench" / "records.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_results_page_is_what_the_records_give():
    records = records_module()
    expected = records.page(records.load_records())
    assert (DOCS / "results.md").read_text() == expected, (
        "docs/results.md differs from bench/results/: run `python bench/records.py`")


def test_every_record_names_its_date_commit_machine_and_command():
    records = records_module()
    found = records.load_records()  # raises on a record without a header or a field
    assert len(found) == len(list((ROOT / "bench" / "results").rglob("*.json")))
    for name, header in found:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", header["date"]), name
        assert re.fullmatch(r"[0-9a-f]{7,40}", header["commit"]), name
        assert str(ROOT.parent) not in header["command"], name  # STORE, never this checkout's folder


def test_a_record_without_a_machine_is_refused(tmp_path: Path):
    records = records_module()
    (tmp_path / "run.json").write_text('{"record": {"study": "speed", "title": "t", "date": "2026-01-01", '
                                       '"commit": "abcdef0", "command": "c", "protocol": "p", "figures": {}}}')
    with pytest.raises(records.RecordError, match="machine"):
        records.load_records(tmp_path)


def test_the_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text) + re.findall(r'<img src="([^"]+)"', text)
    assert targets
    for target in targets:
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"


SESSION = "sess" + "ion"  # spelled in two parts, so this file does not match its own test
ORDINALS = ("first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth|thirteenth|"
            "fourteenth|fifteenth|sixteenth|\\d+(?:st|nd|rd|th)")
PERIOD_WORDS = re.compile(rf"\b({ORDINALS})\s+(?:working\s+)?{SESSION}s?\b|\b(this|that|earlier|previous|later|"
                          rf"several|a|the)\s+{SESSION}s?\b|\b{SESSION}s\b|\b{SESSION}'s\b", re.I)


def test_no_run_is_named_by_the_working_period_that_made_it():
    """Runs are named by date, commit and machine, never by an ordinal or a deictic of the working
    period that made them."""
    hits = []
    paths = [ROOT / "README.md", *[p for folder in ("docs", "bench", "recipes", "clt", "tests", "scripts")
                                   for p in (ROOT / folder).rglob("*")
                                   if p.suffix in (".md", ".py", ".yaml", ".txt", ".json", ".sh")]]
    for path in paths:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if PERIOD_WORDS.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)


def getting_started_script() -> str:
    """The page's bash blocks, in order, as one script."""
    text = (DOCS / "getting-started.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert len(blocks) >= 3
    return "\n".join(blocks)


def write_images(folder: Path, labelled: bool) -> None:
    """60 small RGB pictures of circles, squares and triangles, in class folders or one flat folder."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    for kind in ("circle", "square", "triangle"):
        target = folder / kind if labelled else folder
        target.mkdir(parents=True, exist_ok=True)
        for i in range(20):
            image = Image.new("RGB", (40, 36), tuple(int(v) for v in rng.integers(0, 80, 3)))
            draw, colour = ImageDraw.Draw(image), tuple(int(v) for v in rng.integers(120, 256, 3))
            x, y, r = int(rng.integers(10, 26)), int(rng.integers(10, 26)), int(rng.integers(4, 9))
            if kind == "circle":
                draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
            elif kind == "square":
                draw.rectangle([x - r, y - r, x + r, y + r], fill=colour)
            else:
                draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=colour)
            image.save(target / f"{kind}_{i:02d}.png")


def test_the_getting_started_commands_run_on_folders_of_images(tmp_path: Path):
    write_images(tmp_path / "my_photos", labelled=False)
    write_images(tmp_path / "my_labelled", labelled=True)
    store = tmp_path / "store"
    script = f'set -euo pipefail\nclt() {{ "{sys.executable}" -m clt "$@"; }}\n' + getting_started_script()
    env = {**subprocess_env(store), "PYTHONPATH": str(ROOT)}
    ran = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    photos, shapes = (clt.load_dataset(name, store=store) for name in ("photos", "shapes"))
    assert photos.classes == [] and len(photos.train.images) == 60
    assert sorted(shapes.classes) == ["circle", "square", "triangle"]
    lines = ran.stdout.splitlines()
    assert "my_photos/circle_00.png\t1\tcircle_00.png\t\t" in "\n".join(lines)  # an image is its own nearest
    predictions = [line.split("\t") for line in lines if line.startswith("my_labelled/circle/")]
    assert len(predictions) == 20 and all(p[1] in shapes.classes for p in predictions)
    assert (tmp_path / "neighbours.png").exists()
