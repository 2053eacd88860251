"""Export an encoder to a portable file that takes raw uint8 images: ONNX or TorchScript.

    meta = {"artifact": enc.id, "name": enc.name, "classes": enc.classes}
    export_encoder(enc.module, enc.in_shape, enc.mean, enc.std, "encoder.onnx", "onnx", meta)
    vectors = run_onnx("encoder.onnx", images)          # (N, D) float32, same as enc.embed(images)

The exported graph includes the /255 scaling and the per-channel standardisation, so whoever
runs it needs nothing from clt: only the file and, for provenance, the JSON sidecar written
beside it (encoder.onnx -> encoder.json). Both land atomically: a reader sees the old pair or
the new one, never a half-written file. Imported on demand only (it imports torch and onnx).
"""

from __future__ import annotations

import copy
import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from clt.atomic import written_aside
from clt.errors import CltError
from clt.version import __version__

FORMATS = ("onnx", "torchscript")
OPSET = 18  # >= 17 for LayerNormalization and friends; 18 is what the dynamo exporter targets natively
INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
# an example batch of 2, not 1: the exporters specialise a size-1 dimension to a constant
_EXAMPLE_BATCH = 2

__all__ = ["FORMATS", "NormalizedEncoder", "export_encoder", "run_onnx", "run_torchscript", "sidecar_path"]


class NormalizedEncoder(nn.Module):
    """An encoder behind the same standardisation `Encoder.embed` applies: uint8 (N, C, H, W) in,
    (N, D) float32 out. mean/std are buffers so they travel inside the exported file."""

    def __init__(self, encoder: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.encoder = encoder
        self.register_buffer("mean", torch.tensor([float(m) for m in mean], dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(s) for s in std], dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # the same arithmetic, in the same order, as ImageData.normalize, so outputs match to float rounding
        x = images.to(torch.float32) / 255.0
        return self.encoder((x - self.mean) / self.std)


def sidecar_path(path: str | Path) -> Path:
    """Where the JSON sidecar of a model file lives: encoder.onnx -> encoder.json."""
    return Path(path).with_suffix(".json")


def _check_inputs(in_shape: Sequence[int], mean: Sequence[float], std: Sequence[float], path: Path,
                  fmt: str) -> tuple[int, int, int]:
    if fmt not in FORMATS:
        raise CltError(f"export format '{fmt}' is not supported", f"use one of: {', '.join(FORMATS)}")
    if len(in_shape) != 3 or any(int(d) < 1 for d in in_shape):
        raise CltError(f"input shape {tuple(in_shape)} is not (channels, height, width)",
                       "pass the encoder's in_shape, e.g. (1, 28, 28)")
    channels = int(in_shape[0])
    for label, values in (("mean", mean), ("std", std)):
        if len(values) != channels:
            raise CltError(f"{label} has {len(values)} values but the input has {channels} channels",
                           f"pass one {label} per channel (the encoder's `{label}`)")
    if any(float(s) <= 0 for s in std):
        raise CltError(f"std {list(std)} has a value <= 0", "pass the training images' per-channel std")
    if path.suffix == ".json":
        raise CltError(f"export path {path} ends in .json, the sidecar's name",
                       "name the model file e.g. encoder.onnx or encoder.pt")
    if not path.parent.is_dir():
        raise CltError(f"folder {path.parent} does not exist", f"create it first: mkdir -p {path.parent}")
    return channels, int(in_shape[1]), int(in_shape[2])


@contextmanager
def _quiet_jit() -> Iterator[None]:
    # torch >= 2.10 marks torch.jit deprecated; a user who asked for TorchScript needs no such warning
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*deprecated")
        yield


def _export_onnx(wrapped: NormalizedEncoder, example: torch.Tensor, out: Path) -> None:
    try:
        import onnx
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        raise CltError("ONNX export needs the onnx and onnxscript packages, which are not installed",
                       "pip install 'clt[export]' (onnx, onnxscript), or use --format torchscript") from None

    # The default (dynamo, torch.export-based) exporter of torch 2.9+ handles every registered
    # encoder with a symbolic batch dimension; the legacy TorchScript exporter is deprecated.
    # external_data=False keeps the weights inside the one file (ResNet-50 is ~95 MB, far below
    # protobuf's 2 GB limit), so the file can be renamed into place on its own.
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        wrapped, (example,), dynamo=True, external_data=False, opset_version=OPSET,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes={"images": {0: batch}},
        verbose=False)
    program.save(str(out), external_data=False)
    onnx.checker.check_model(str(out), full_check=True)


def _export_torchscript(wrapped: NormalizedEncoder, example: torch.Tensor, out: Path) -> None:
    # trace, not script: registered encoders include torchvision models and lambdas-built stacks that
    # trace cleanly; none branches on the input, and tests run the file at two batch sizes
    with _quiet_jit():
        traced = torch.jit.trace(wrapped, (example,), check_trace=False)
        torch.jit.save(traced, str(out))


def export_encoder(module: nn.Module, in_shape: Sequence[int], mean: Sequence[float], std: Sequence[float],
                   path: str | Path, fmt: str, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `module` (behind uint8 -> standardised input) to `path` as ONNX or TorchScript, plus a
    JSON sidecar beside it; returns the sidecar's contents. The caller's module is not changed:
    a CPU copy in eval mode is exported.

    Example: export_encoder(enc.module, enc.in_shape, enc.mean, enc.std, "enc.onnx", "onnx",
                            {"artifact": enc.id, "name": enc.name, "classes": enc.classes})
    """
    path = Path(path)
    channels, height, width = _check_inputs(in_shape, mean, std, path, fmt)
    # a copy, so the caller's module keeps its device and train/eval mode
    wrapped = NormalizedEncoder(copy.deepcopy(module).cpu(), mean, std).eval()
    example = torch.randint(0, 256, (_EXAMPLE_BATCH, channels, height, width), dtype=torch.uint8)
    with torch.no_grad():
        out_dim = int(wrapped(example).flatten(1).shape[1])
    sidecar = {**(meta or {}),  # the computed fields below win over any same-named meta key
               "format": fmt, "file": path.name,
               "input": {"name": INPUT_NAME, "shape": ["N", channels, height, width], "dtype": "uint8"},
               "output": {"name": OUTPUT_NAME, "dim": out_dim, "dtype": "float32"},
               "channels": channels, "mean": [float(m) for m in mean], "std": [float(s) for s in std],
               "clt_version": __version__}
    side = sidecar_path(path)
    # the inner block is renamed into place first: the model, so a sidecar never describes a file
    # that is not there yet
    with written_aside(side) as side_tmp, written_aside(path) as model_tmp:
        with torch.no_grad():
            (_export_onnx if fmt == "onnx" else _export_torchscript)(wrapped, example, model_tmp)
        side_tmp.write_text(json.dumps(sidecar, indent=2) + "\n")
    return sidecar


def _as_uint8_batch(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise CltError(f"images are {images.dtype} of shape {images.shape}, not uint8 (N, C, H, W)",
                       "pass raw uint8 images, e.g. images.astype(np.uint8), with a batch axis")
    return np.ascontiguousarray(images)


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CltError(f"exported model {path} does not exist", "export it first, or check the path")
    return path


def run_onnx(path: str | Path, images_uint8: np.ndarray) -> np.ndarray:
    """Run an exported ONNX encoder on uint8 (N, C, H, W) images with onnxruntime on CPU: (N, D) float32."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(_existing(path)), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: _as_uint8_batch(images_uint8)}
    return np.asarray(session.run(None, feed)[0], dtype=np.float32)


def run_torchscript(path: str | Path, images_uint8: np.ndarray) -> np.ndarray:
    """Run an exported TorchScript encoder on uint8 (N, C, H, W) images on CPU: (N, D) float32."""
    with _quiet_jit():
        model = torch.jit.load(str(_existing(path)), map_location="cpu").eval()
    with torch.no_grad():
        out = model(torch.from_numpy(_as_uint8_batch(images_uint8)))
    return out.float().numpy()
