"""The export stage: an encoder as one ONNX or TorchScript file taking uint8 images, with a JSON sidecar."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from clt.atomic import written_aside
from clt.errors import CltError
from clt.stages.context import Context, Outcome, produce
from clt.stages.inference import encoder_for
from clt.store import Artifact

SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


def export(ctx: Context, encoder_ref: str | None, fmt: str = "onnx", out: str | None = None) -> Outcome:
    """Store the encoder as encoder.onnx (or encoder.pt) + encoder.json, normalisation folded in;
    with `out`, also copy both there (OUT and OUT's .json sidecar).

    Example: export(ctx, encoder_id, "onnx").artifact.file("encoder.onnx")
    """
    if fmt not in SUFFIX:
        raise CltError(f"--format {fmt} is not an export format", f"use one of: {', '.join(SUFFIX)}")
    if out is not None and Path(out).is_dir():
        raise CltError(f"--out {out} is a folder", f"name the model file, e.g. {Path(out) / ('encoder' + SUFFIX[fmt])}")
    encoder_art = ctx.store.resolve_named(encoder_ref, ("encoder",), hint="train one first: clt pretrain RECIPE")
    spec = {"stage": "export", "inputs": {"encoder": encoder_art.id}, "format": fmt}
    outcome = produce(ctx, spec, "export", lambda tmp, _id: _build(ctx, encoder_art, fmt, tmp), name=encoder_art.name)
    if out is not None:
        _copy_out(outcome.artifact, fmt, Path(out))
    return outcome


def _build(ctx: Context, encoder_art: Artifact, fmt: str, tmp: Path) -> dict[str, Any]:
    import torch

    from clt.exporters import export_encoder

    encoder = encoder_for(ctx.store, encoder_art, torch.device("cpu"))
    with ctx.report.progress(f"exporting to {fmt}", None):
        sidecar = export_encoder(encoder.module, encoder.in_shape, encoder.mean, encoder.std,
                                 tmp / f"encoder{SUFFIX[fmt]}", fmt,
                                 {"artifact": encoder_art.id, "name": encoder_art.name, "classes": encoder.classes})
    return {"export": sidecar, "metrics": {"format": fmt, "dim": encoder.out_dim}}


def _copy_out(artifact: Artifact, fmt: str, out: Path) -> None:
    from clt.exporters import sidecar_path

    if out.suffix.lower() == ".json":
        raise CltError(f"--out {out} is the sidecar's name", f"name the model file, e.g. encoder{SUFFIX[fmt]}")
    for source, target in ((artifact.file(f"encoder{SUFFIX[fmt]}"), out),
                           (artifact.file("encoder.json"), sidecar_path(out))):
        with written_aside(target, "--out") as partial:
            shutil.copyfile(source, partial)
