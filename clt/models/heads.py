"""Heads described as data: a list of layer widths becomes Linear/BN/ReLU stacks."""

from __future__ import annotations

from typing import Any

from torch import nn

from clt.errors import CltError
from clt.registry import ENCODERS
from clt.typed import from_dict


def mlp(in_dim: int, widths: list[int], batch_norm: bool = False, output_norm: bool = False) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between (none after the last); `batch_norm` puts
    BatchNorm before each ReLU, `output_norm` a BatchNorm without learned scale and shift after the
    last layer (SimSiam's projector: it keeps every output dimension at unit variance)."""
    layers: list[nn.Module] = []
    dim = in_dim
    for i, width in enumerate(widths):
        layers.append(nn.Linear(dim, width))
        if i < len(widths) - 1:
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU(inplace=True))
        elif output_norm:
            layers.append(nn.BatchNorm1d(width, affine=False))
        dim = width
    head = nn.Sequential(*layers)
    head.out_dim = dim
    return head


def build_encoder(name: str, params: dict[str, Any], in_shape: tuple[int, int, int]) -> nn.Module:
    entry = ENCODERS[name]
    typed = from_dict(entry.params, params, "recipe", "model")
    try:
        return entry.build(typed, tuple(in_shape))
    except RuntimeError as err:
        raise CltError(f"encoder '{name}' cannot take inputs of shape {tuple(in_shape)}: {err}",
                       "pick an encoder that fits the dataset's image size") from None
