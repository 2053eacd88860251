"""Bounds that could be walked around (issue 29, finding 5) and duplicate recipe keys (finding 7):
each case ran without end, grew memory far past its input, echoed megabytes back, or was accepted
silently before it was fixed."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DIGITS
from PIL import Image
from test_sources import make_tar, write_files

from clt.data import sources
from clt.data.files import collect_images
from clt.data.sources import dir_tree, fetch
from clt.errors import DataError, RecipeError
from clt.recipe import MAX_RECIPE_BYTES, MAX_RECIPE_DEPTH, MAX_RECIPE_NODES, apply_override, load_recipe


def encoded(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def png() -> bytes:
    return encoded(4, 4)


def recipe_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------- folders and globs through links


def test_a_recursive_glob_through_a_symlink_loop_finds_each_image_once(tmp_path: Path):
    photos = write_files(tmp_path / "photos", {"a.png": png(), "sub/b.png": png()})
    os.symlink(photos, photos / "loop")  # photos/loop/loop/... went on until the kernel's ELOOP
    found = collect_images([f"{photos}/**/*.png"])
    assert sorted(found) == [f"{photos}/a.png", f"{photos}/sub/b.png"]


def test_a_folder_walk_follows_a_linked_folder_once_and_stops_at_a_loop(tmp_path: Path):
    data = write_files(tmp_path / "data", {"cat/0.png": png()})
    elsewhere = write_files(tmp_path / "elsewhere", {"1.png": png()})
    os.symlink(elsewhere, data / "dog")  # a class folder kept elsewhere was dropped without a word
    os.symlink(data, data / "cat" / "loop")
    assert sorted(dir_tree(data)) == ["cat/0.png", "dog/1.png"]
    assert sorted(collect_images([data])) == [f"{data}/cat/0.png", f"{data}/dog/1.png"]


# ---------------------------------------------------------------- archives


def test_archive_members_under_the_member_limit_cannot_add_up_past_the_archive_limit(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(sources, "MAX_FILE_BYTES", 100_000)
    # zeros: 40 members of 90 KB (each under the member limit) in a few KB of gzip
    archive = make_tar(tmp_path / "zeros.tar.gz", {f"a/{i}.png": bytes(90_000) for i in range(40)})
    with pytest.raises(DataError) as refused:
        fetch("zeros", source=archive, cache_dir=tmp_path)
    message = str(refused.value)
    assert "zeros.tar.gz" in message and "decompress" in message and "fix: extract" in message, message
    # as many bytes that compress as data does are read
    rng = np.random.default_rng(0)
    noise = {f"a/{i}.bin": rng.integers(0, 256, 90_000, dtype=np.uint8).tobytes() for i in range(40)}
    archive = make_tar(tmp_path / "noise.tar.gz", noise)
    assert sorted(sources.tar_tree(archive)) == sorted(noise)


# ---------------------------------------------------------------- decode budget


def test_a_thin_image_is_charged_for_its_rows_and_columns(monkeypatch):
    monkeypatch.setattr(sources, "MAX_PIXELS", 100_000)
    assert sources.decode_image(encoded(300, 300), 3, (28, 28)).shape == (28, 28, 3)  # 90,000 pixels
    for shape in [(1, 50_000), (50_000, 1)]:  # fewer pixels, many more rows or columns
        with pytest.raises(DataError, match=r"thin\.png: .* is 50,000 pixels, but an image this thin costs"):
            sources.decode_image(encoded(*shape), 3, (28, 28), name="thin.png")


MEASURE = """
import re, sys
from pathlib import Path
from clt.data import sources

sources.MAX_PIXELS = 2_000_000
square, *thin = [path.read_bytes() for path in map(Path, sys.argv[1:])]
# this process's own peak, in KiB (getrusage's ru_maxrss carries the parent's, pytest's, across exec)
peak = lambda: int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))
sources.decode_image(square, 3, (28, 28))
after_square, decoded = peak(), 0
for raw in thin:
    try:
        decoded += sources.decode_image(raw, 3, (28, 28)).shape == (28, 28, 3)
    except sources.DataError:
        pass
print(decoded, peak() - after_square)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak memory from Linux's /proc")
def test_no_image_costs_more_to_decode_than_the_largest_square_one(tmp_path: Path):
    # 1 x 2,000,000 pixels took three times the memory of 1414 x 1414 (PIL's per-row pointers and
    # resize weights); now such an image is refused, and the thin ones decoded cost less than the square.
    # The images are made here: making them in the measuring process would set its peak.
    shapes = [(1414, 1414), (1, 50_000), (1, 200_000), (1, 1_000_000), (1, 2_000_000)]
    files = []
    for width, height in shapes:
        files.append(tmp_path / f"{width}x{height}.png")
        Image.new("RGB", (width, height), 128).save(files[-1])
    ran = subprocess.run([sys.executable, "-c", MEASURE, *map(str, files)], capture_output=True, text=True,
                         timeout=120)
    assert ran.returncode == 0, ran.stderr
    decoded, grown_kib = map(int, ran.stdout.split())
    assert decoded >= 1, "no thin image was decoded at all"
    assert grown_kib < 4 * 1024, f"peak memory grew by {grown_kib:,} KiB past the square image's"


# ---------------------------------------------------------------- recipes: size, shape, quoting


def test_a_recipe_file_over_the_size_limit_is_refused_by_name(tmp_path: Path):
    path = recipe_file(tmp_path, "# padding\n" * (MAX_RECIPE_BYTES // 10 + 1))
    with pytest.raises(RecipeError, match=r"r\.yaml.*limit of 1,048,576 bytes"):
        load_recipe(path)


def test_a_recipe_with_too_many_values_is_refused_while_it_is_read(tmp_path: Path):
    path = recipe_file(tmp_path, "probe:\n  hidden: [" + ", ".join(["1"] * (MAX_RECIPE_NODES + 1)) + "]\n")
    with pytest.raises(RecipeError, match=f"r\\.yaml: more than {MAX_RECIPE_NODES:,} keys and values"):
        load_recipe(path)


def test_a_recipe_nested_too_deeply_is_refused(tmp_path: Path):
    depth = MAX_RECIPE_DEPTH + 5
    path = recipe_file(tmp_path, "seed: " + "[" * depth + "1" + "]" * depth + "\n")
    with pytest.raises(RecipeError, match=f"nested more than {MAX_RECIPE_DEPTH} levels deep"):
        load_recipe(path)
    with pytest.raises(RecipeError, match=f"nested more than {MAX_RECIPE_DEPTH} levels deep"):
        apply_override({}, "seed=" + "[" * depth + "1" + "]" * depth, "r")


LONG = "x" * 200_000


@pytest.mark.parametrize("text", [
    f"name: {LONG}\n",
    f"data:\n  dataset: {LONG}\n",
    f"objective:\n  name: {LONG}\n",
    f"model:\n  encoder: {LONG}\n",
    f"pretrain:\n  optimizer: {LONG}\n",
    f"pretrain:\n  ? {LONG}\n  : 1\n",  # an explicit key: YAML's implicit ones stop at 1024 characters
    f"pretrain:\n  lr: {LONG}\n",
    "probe:\n  hidden: [" + ", ".join(["0"] * 5000) + "]\n",
])
def test_errors_quote_a_short_prefix_of_a_long_value(tmp_path: Path, text: str):
    with pytest.raises(RecipeError) as refused:
        load_recipe(recipe_file(tmp_path, text))
    assert len(str(refused.value)) < 600, str(refused.value)[:300]
    assert "characters)" in str(refused.value)


@pytest.mark.parametrize("item", ["x" * 9000, "x" * 9000 + "=1", "pretrain." + "x" * 9000 + ".lr=1",
                                  "model.encoder=" + "x" * 9000])
def test_set_errors_quote_a_short_prefix(item: str):
    with pytest.raises(RecipeError) as refused:
        load_recipe(DIGITS, [item])
    assert len(str(refused.value)) < 600, str(refused.value)[:300]


# ---------------------------------------------------------------- duplicate keys (finding 7)


def test_a_duplicate_section_is_refused_with_both_lines(tmp_path: Path):
    path = recipe_file(tmp_path, "pretrain:\n  epochs: 1\nprobe:\n  epochs: 1\npretrain:\n  epochs: 2\n")
    with pytest.raises(RecipeError, match=r"r\.yaml: key 'pretrain' appears twice, at lines 1 and 5"):
        load_recipe(path)


def test_a_duplicate_key_inside_a_section_is_refused_with_both_lines(tmp_path: Path):
    path = recipe_file(tmp_path, "pretrain:\n  lr: 0.1\n  epochs: 1\n  lr: 0.2\n")
    with pytest.raises(RecipeError, match=r"key 'lr' appears twice, at lines 2 and 4"):
        load_recipe(path)


def test_a_duplicate_key_in_a_set_value_is_refused():
    with pytest.raises(RecipeError, match=r"--set 'pretrain': key 'epochs' appears twice"):
        apply_override({}, "pretrain={epochs: 1, epochs: 2}", "r")


def test_a_merged_mapping_may_still_be_overridden(tmp_path: Path):
    # YAML's merge key is meant to be overridden: not a duplicate
    path = recipe_file(tmp_path, "pretrain:\n  <<: {epochs: 1, lr: 0.5}\n  epochs: 3\n")
    recipe = load_recipe(path)
    assert (recipe.pretrain.epochs, recipe.pretrain.lr) == (3, 0.5)
