"""The pretraining loop on generated images: progressive resizing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clt.data.memory import ImageData, Split
from clt.errors import DivergenceError, TrainingError
from clt.recipe import PretrainConfig
from clt.registry import OBJECTIVES
from clt.train import downscale, epoch_side, pretrain


def _images(n: int = 64, side: int = 16) -> ImageData:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=generator)
    split = Split(images, torch.arange(n) % 4)
    return ImageData("generated", ["a", "b", "c", "d"], split, split, torch.full((3,), 0.5), torch.full((3,), 0.25))


class _Recorder(nn.Module):
    """A tiny encoder that records the height of every batch it sees."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.heights: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.heights.append(x.shape[-1])
        return self.conv(x).mean((2, 3))


def _pretrain(model: nn.Module, cfg: PretrainConfig):
    entry = OBJECTIVES["triplet"]
    return pretrain(model, entry, entry.params(), _images(), cfg, device=torch.device("cpu"),
                    precision="fp32", seed=0)


def test_progressive_resize_trains_each_epoch_at_its_size():
    model = _Recorder()
    cfg = PretrainConfig(epochs=4, batch_size=16, progressive_resize=[(8, 1), (12, 2)])
    result = _pretrain(model, cfg)
    steps = 64 // 16
    assert model.heights == [8] * steps + [12] * 2 * steps + [16] * steps
    assert [h["image_height"] for h in result.history] == [8, 12, 12, 16]
    assert [epoch_side(cfg, e, 16) for e in range(4)] == [8, 12, 12, 16]


def test_progressive_resize_side_not_below_the_images_is_refused():
    cfg = PretrainConfig(epochs=3, batch_size=16, progressive_resize=[(16, 1)])
    with pytest.raises(TrainingError, match="progressive_resize side 16 is not below the 16-pixel"):
        _pretrain(_Recorder(), cfg)


class _Diverged(nn.Module):
    """An encoder whose outputs are NaN: the first loss is NaN."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3)) * float("nan")


@pytest.mark.parametrize("optimizer, precision", [("sgd", "fp32"), ("adam", "fp32"), ("sgd", "bf16")])
def test_a_diverged_loss_stops_training_with_advice_that_names_only_untried_fixes(optimizer, precision):
    entry = OBJECTIVES["triplet"]
    cfg = PretrainConfig(epochs=2, batch_size=16, optimizer=optimizer, lr=0.5)
    with pytest.raises(TrainingError, match="the loss became nan at epoch 1, step 1") as caught:
        pretrain(_Diverged(), entry, entry.params(), _images(), cfg, device=torch.device("cpu"),
                 precision=precision, seed=0)
    assert isinstance(caught.value, DivergenceError)  # what bench/equal_budget.py records as a diverged row
    hint = caught.value.hint
    assert "lower pretrain.lr (now 0.5)" in hint
    assert ("optimizer: lars" in hint) == (optimizer == "sgd")
    assert ("--precision fp32" in hint) == (precision != "fp32")


def test_downscale_keeps_the_aspect_ratio_and_averages_without_aliasing():
    stripes = torch.zeros(2, 3, 16, 32)
    stripes[..., ::2] = 1.0  # one-pixel stripes: point sampling would give all 0 or all 1
    small = downscale(stripes, 8)
    assert small.shape == (2, 3, 8, 16)
    inner = small[..., 1:-1]  # the border columns are renormalised over the pixels inside the image
    assert torch.allclose(inner, torch.full_like(inner, 0.5), atol=1e-5)
    assert ((small > 0.4) & (small < 0.6)).all()
