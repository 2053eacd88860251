"""Exporting encoders: every registered encoder, in both formats, run from the exported file on raw
uint8 images at two batch sizes, must match the module behind clt's own standardisation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clt.errors import CltError
from clt.exporters import FORMATS, export_encoder, run_onnx, run_torchscript, sidecar_path
from clt.models.heads import build_encoder
from clt.registry import ENCODERS
from clt.version import __version__

# the smallest input each encoder is used with (as in test_encoders.py); ResNets at CIFAR size
INPUTS = {"resnet18": ((3, 32, 32), {"cifar_stem": True}), "resnet50": ((3, 32, 32), {"cifar_stem": True}),
          "cifar_resnet": ((3, 32, 32), {}), "pair_cnn": ((1, 28, 28), {}), "cosine_cnn": ((1, 28, 28), {})}
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


def _runner(fmt: str):
    if fmt == "onnx":
        pytest.importorskip("onnx", reason="ONNX export needs the onnx package (pip install onnx)")
        pytest.importorskip("onnxruntime", reason="running ONNX files needs onnxruntime (pip install onnxruntime)")
        return run_onnx
    return run_torchscript


def _encoder(name: str) -> tuple[torch.nn.Module, tuple[int, int, int], list[float], list[float]]:
    in_shape, params = INPUTS.get(name, ((1, 8, 8), {}))
    torch.manual_seed(0)
    module = build_encoder(name, params, in_shape).eval()
    channels = in_shape[0]
    return module, in_shape, [0.5] * channels, [0.25] * channels


def _reference(module: torch.nn.Module, x: torch.Tensor, mean: list[float], std: list[float]) -> np.ndarray:
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        return module(((x.float() / 255) - m) / s).numpy()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ENCODERS.names())
def test_exported_file_matches_the_module_at_any_batch_size(name: str, fmt: str, tmp_path: Path):
    run = _runner(fmt)
    module, in_shape, mean, std = _encoder(name)
    path = tmp_path / f"encoder{SUFFIX[fmt]}"
    side = export_encoder(module, in_shape, mean, std, path, fmt, {"name": name})
    generator = torch.Generator().manual_seed(1)
    for batch in (3, 5):  # neither is the export's example batch: the batch axis is dynamic
        x = torch.randint(0, 256, (batch, *in_shape), dtype=torch.uint8, generator=generator)
        expected = _reference(module, x, mean, std)
        got = run(path, x.numpy())
        assert got.dtype == np.float32 and got.shape == (batch, side["output"]["dim"]) == expected.shape
        # 1e-4 absolute for outputs of order 1; relative beyond that, since randomly initialised
        # ResNet-50 outputs reach ~500, where float32 spacing is 6e-5 and torch alone differs by
        # ~2e-4 between 1 and 2 threads
        tolerance = 1e-4 * max(1.0, float(np.abs(expected).max()))
        assert np.abs(got - expected).max() <= tolerance, (name, fmt, batch)


@pytest.mark.parametrize("fmt", FORMATS)
def test_sidecar_describes_the_file_and_a_second_export_replaces_it(fmt: str, tmp_path: Path):
    _runner(fmt)
    module, in_shape, mean, std = _encoder("pair_cnn")
    path = tmp_path / f"encoder{SUFFIX[fmt]}"
    meta = {"artifact": "ab" * 32, "name": "digits", "classes": [str(i) for i in range(10)]}
    returned = export_encoder(module, in_shape, mean, std, path, fmt, meta)
    side = json.loads(sidecar_path(path).read_text())
    assert sidecar_path(path) == tmp_path / "encoder.json"
    assert side == returned
    assert side["format"] == fmt and side["clt_version"] == __version__
    assert side["input"]["shape"] == ["N", *in_shape] and side["input"]["dtype"] == "uint8"
    assert side["output"]["dim"] == module.out_dim == 128
    assert side["channels"] == 1 and side["mean"] == mean and side["std"] == std
    assert {k: side[k] for k in meta} == meta

    first = path.read_bytes()
    torch.manual_seed(1)  # other weights, so the second file must differ from the first
    other = build_encoder("pair_cnn", {}, in_shape).eval()
    export_encoder(other, in_shape, mean, std, path, fmt, {**meta, "name": "again"})
    assert path.read_bytes() != first
    assert json.loads(sidecar_path(path).read_text())["name"] == "again"
    # no temporary or external-data file left beside the pair
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, "encoder.json"])
    x = torch.randint(0, 256, (2, *in_shape), dtype=torch.uint8)
    np.testing.assert_allclose(_runner(fmt)(path, x.numpy()), _reference(other, x, mean, std), atol=1e-4, rtol=0)


def test_export_leaves_the_callers_module_as_it_was(tmp_path: Path):
    module, in_shape, mean, std = _encoder("cosine_cnn")
    module.train()
    export_encoder(module, in_shape, mean, std, tmp_path / "encoder.pt", "torchscript")
    assert module.training and all(m.training for m in module.modules())


def test_unknown_format_names_it_and_writes_nothing(tmp_path: Path):
    module, in_shape, mean, std = _encoder("pixels")
    with pytest.raises(CltError) as caught:
        export_encoder(module, in_shape, mean, std, tmp_path / "encoder.tflite", "tflite", {})
    assert "tflite" in caught.value.message
    assert "onnx" in caught.value.hint and "torchscript" in caught.value.hint
    assert list(tmp_path.iterdir()) == []


def test_mean_std_must_have_one_value_per_channel(tmp_path: Path):
    module, in_shape, _, _ = _encoder("cifar_resnet")
    with pytest.raises(CltError, match="mean has 1 values but the input has 3 channels"):
        export_encoder(module, in_shape, [0.5], [0.25] * 3, tmp_path / "encoder.pt", "torchscript")


def test_running_a_file_rejects_images_that_are_not_uint8(tmp_path: Path):
    module, in_shape, mean, std = _encoder("pixels")
    path = tmp_path / "encoder.pt"
    export_encoder(module, in_shape, mean, std, path, "torchscript")
    with pytest.raises(CltError, match="not uint8"):
        run_torchscript(path, np.zeros((2, *in_shape), dtype=np.float32))


def test_a_failed_export_keeps_the_previous_pair_and_leaves_no_temporary(tmp_path: Path, monkeypatch):
    import clt.exporters

    module, in_shape, mean, std = _encoder("pixels")
    path = tmp_path / "encoder.pt"
    export_encoder(module, in_shape, mean, std, path, "torchscript", {"name": "first"})
    before = path.read_bytes(), sidecar_path(path).read_text()

    def half_written(wrapped, example, out: Path) -> None:
        out.write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(clt.exporters, "_export_torchscript", half_written)
    with pytest.raises(RuntimeError, match="disk full"):
        export_encoder(module, in_shape, mean, std, path, "torchscript", {"name": "second"})
    assert (path.read_bytes(), sidecar_path(path).read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.json", "encoder.pt"]
