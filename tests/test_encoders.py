"""Every registered encoder, as timm tests its registry: forward, backward, and weights that
survive a save and reload through the store's safetensors path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clt.models.heads import build_encoder
from clt.registry import ENCODERS
from clt.stages.weights import load_weights, save_module

# the smallest input each encoder is used with; ResNets run at CIFAR size with the CIFAR stem
INPUTS = {"resnet18": ((3, 32, 32), {"cifar_stem": True}), "resnet50": ((3, 32, 32), {"cifar_stem": True}),
          "cifar_resnet": ((3, 32, 32), {}), "pair_cnn": ((1, 28, 28), {}), "cosine_cnn": ((1, 28, 28), {})}


@pytest.mark.parametrize("name", ENCODERS.names())
def test_registered_encoder_forward_backward_and_reload(name: str, tmp_path: Path):
    in_shape, params = INPUTS.get(name, ((1, 8, 8), {}))
    torch.manual_seed(0)
    encoder = build_encoder(name, params, in_shape)
    x = torch.randn(4, *in_shape)
    out = encoder(x)
    assert out.shape == (4, encoder.out_dim) and torch.isfinite(out).all()
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    if trainable:  # `pixels` has no weights
        out.square().mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    encoder.eval()
    with torch.no_grad():
        before = encoder(x)
    save_module(encoder, tmp_path / "encoder.safetensors")
    from safetensors.torch import load_file

    torch.manual_seed(1)  # another initialisation: the reload must overwrite every weight
    fresh = build_encoder(name, params, in_shape)
    load_weights(fresh, load_file(str(tmp_path / "encoder.safetensors")), "test")
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), before, atol=1e-6, rtol=0)


def test_the_registry_test_covers_every_encoder_it_sizes():
    assert set(INPUTS) <= set(ENCODERS.names())
