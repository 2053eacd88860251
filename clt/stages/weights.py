"""Loading and saving module weights as safetensors (never pickle), refusing any that do not fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clt.atomic import written_aside
from clt.errors import StoreError
from clt.store import Artifact


def save_module(module, path: Path) -> None:
    """A module's state dict as one safetensors file (tensors on the CPU, contiguous)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path))


def save_trained_head(tmp: Path, head, history: list[dict[str, Any]], title: str, encoder=None) -> None:
    """A trained head's files: head.safetensors (and encoder.safetensors when the encoder was
    trained too), history.json and the loss curve."""
    import json

    from clt import plots

    if encoder is not None:
        save_module(encoder, tmp / "encoder.safetensors")
    save_module(head, tmp / "head.safetensors")
    (tmp / "history.json").write_text(json.dumps(history, indent=1))
    if history:
        plots.loss_curve(history, tmp / "loss_curve.png", title)


def save_module_atomic(module, path: Path) -> None:
    """As save_module, but a reader never sees a half-written file: written aside, then renamed."""
    with written_aside(path) as partial:
        save_module(module, partial)


def load_encoder(artifact: Artifact, device, weights_file: str = "encoder.safetensors") -> Any:
    """Rebuild an encoder from its manifest and load its safetensors weights (or a snapshot's), strictly.

    Example: load_encoder(store.get(encoder_id), "cpu")(images).shape == (N, out_dim)
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from clt.models.heads import build_encoder

    info = artifact.manifest["encoder"]
    encoder = build_encoder(info["name"], info["params"], tuple(info["in_shape"]))
    try:
        weights = load_file(str(artifact.file(weights_file)))
    except SafetensorError as err:
        raise StoreError(f"{artifact.short}: {weights_file} is not a valid safetensors file ({err})",
                         "rebuild the artifact with the stage that made it") from None
    load_weights(encoder, weights, f"{artifact.short}/{weights_file}")
    return encoder.to(device).eval()


def load_weights(module, weights: dict, where: str, what: str = "the recipe's encoder") -> None:
    """Load a state dict, refusing one whose names or shapes do not fit, and naming them."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(expected) & set(weights) if tuple(expected[k].shape) != tuple(weights[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch: " + ", ".join(
                f"{k} {tuple(weights[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:5]))
        if missing:
            parts.append("missing: " + ", ".join(missing[:5]))
        if unexpected:
            parts.append("unexpected: " + ", ".join(unexpected[:5]))
        raise StoreError(f"{where} does not fit {what} ({'; '.join(parts)})",
                         "use weights trained with the same architecture and input shape, or rebuild the artifact")
    module.load_state_dict(weights)
