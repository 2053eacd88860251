"""Encoders, each registered by name: build(params, in_shape) -> nn.Module with `.out_dim`.

No encoder names a device; shapes are derived from the input shape so one architecture fits
8×8 digits, 28×28 MNIST and 3-channel 32×32 CIFAR images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from clt.registry import register_encoder
from clt.typed import knob


def _out_dim(module: nn.Module, in_shape: tuple[int, int, int]) -> int:
    with torch.no_grad():
        return int(module(torch.zeros(1, *in_shape)).flatten(1).shape[1])


class Encoder(nn.Module):
    """A feature extractor followed by optional fully connected layers; `out_dim` is its width."""

    def __init__(self, features: nn.Module, in_shape: tuple[int, int, int], fc: list[nn.Module]):
        super().__init__()
        self.features = features
        flat = _out_dim(features, in_shape)
        self.fc = nn.Sequential(*[m(flat) if callable(m) and not isinstance(m, nn.Module) else m for m in fc])
        self.out_dim = _out_dim(nn.Sequential(features, nn.Flatten(), self.fc), in_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


@dataclass
class PairCNNParams:
    features: int = knob(128, "width of the output features (the last Linear layer)", check=lambda v: v >= 1,
                         must=">= 1")


@register_encoder("pair_cnn", PairCNNParams)
def pair_cnn(params: PairCNNParams, in_shape: tuple[int, int, int]) -> nn.Module:
    """The Siamese MNIST CNN: four 3×3 convolutions, then Linear(…, 128) + ReLU."""
    channels, height, _ = in_shape
    # 28×28 → 14 → 7 → 7 → 5 as published; on inputs too small for the unpadded last
    # convolution (8×8 digits reach it at 2×2) it is padded instead, keeping the layer count.
    after3 = (((height + 1) // 2) + 1) // 2
    last_pad = 0 if after3 >= 3 else 1
    features = nn.Sequential(
        nn.Conv2d(channels, 16, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(32, 64, 3, stride=1, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(64, 64, 3, stride=1, padding=last_pad), nn.ReLU(inplace=True),
    )
    return Encoder(features, in_shape, [lambda flat: nn.Linear(flat, params.features), nn.ReLU(inplace=True)])


@dataclass
class CosineCNNParams:
    features: int = knob(64, "width of the output features", check=lambda v: v >= 1, must=">= 1")
    hidden: int = knob(512, "width of the hidden Linear layer", check=lambda v: v >= 1, must=">= 1")
    dropout: float = knob(0.3, "dropout probability after each convolution block", check=lambda v: 0 <= v < 1,
                          must="in [0, 1)")


@register_encoder("cosine_cnn", CosineCNNParams)
def cosine_cnn(params: CosineCNNParams, in_shape: tuple[int, int, int]) -> nn.Module:
    """The cosine-pair MNIST CNN: two 5×5 conv+BN+ReLU+pool+dropout blocks, 512, 64."""
    channels, height, _ = in_shape
    pad = 0 if height >= 16 else 2  # 8×8 digits would shrink to nothing unpadded
    block = lambda cin, cout: [  # noqa: E731
        nn.Conv2d(cin, cout, 5, padding=pad), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.MaxPool2d(2), nn.Dropout(params.dropout),
    ]
    features = nn.Sequential(*block(channels, 32), *block(32, 64))
    return Encoder(features, in_shape, [
        lambda flat: nn.Linear(flat, params.hidden), nn.ReLU(inplace=True), nn.Dropout(params.dropout),
        nn.Linear(params.hidden, params.features),
    ])


@dataclass
class ResNetParams:
    cifar_stem: bool = knob(False, "SimCLR's CIFAR stem: a 3×3 stride-1 first convolution and no max-pool "
                            "(for 32×32 images)")
    zero_init_residual: bool = knob(False, "start each residual block's last batch-norm scale at 0")


def _torchvision_resnet(arch: str, params: ResNetParams, in_shape: tuple[int, int, int]) -> nn.Module:
    import torchvision

    net = getattr(torchvision.models, arch)(weights=None, zero_init_residual=params.zero_init_residual)
    channels = in_shape[0]
    if params.cifar_stem:
        # SimCLR's CIFAR variant: 3×3 stride-1 first convolution and no max-pool
        net.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif channels != 3:
        net.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()
    net.out_dim = _out_dim(net, in_shape)
    return net


@register_encoder("resnet18", ResNetParams)
def resnet18(params: ResNetParams, in_shape: tuple[int, int, int]) -> nn.Module:
    """torchvision ResNet-18 without its classifier (512 features); cifar_stem for 32×32."""
    return _torchvision_resnet("resnet18", params, in_shape)


@register_encoder("resnet50", ResNetParams)
def resnet50(params: ResNetParams, in_shape: tuple[int, int, int]) -> nn.Module:
    """torchvision ResNet-50 without its classifier (2048 features); cifar_stem for 32×32."""
    return _torchvision_resnet("resnet50", params, in_shape)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


@dataclass
class CifarResNetParams:
    depth: int = knob(20, "layers: 6n + 2 (20, 32, 44, 56, ...)", check=lambda v: v >= 8 and (v - 2) % 6 == 0,
                      must="6n + 2 with n >= 1 (20, 32, 44, 56, ...)")
    width: int = knob(16, "channels of the first stage; the stages use width, 2·width, 4·width (4·width features)",
                      check=lambda v: v >= 1, must=">= 1")


@register_encoder("cifar_resnet", CifarResNetParams)
def cifar_resnet(params: CifarResNetParams, in_shape: tuple[int, int, int]) -> nn.Module:
    """He et al.'s CIFAR ResNet (ResNet-20: ~41 MFLOPs per 32×32 image); 4·width features."""
    n = (params.depth - 2) // 6
    w = params.width
    layers: list[nn.Module] = [nn.Conv2d(in_shape[0], w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
    cin = w
    for stage, cout in enumerate((w, 2 * w, 4 * w)):
        for i in range(n):
            layers.append(_BasicBlock(cin, cout, 2 if (i == 0 and stage > 0) else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1)]
    return Encoder(nn.Sequential(*layers), in_shape, [])


class _Pixels(nn.Module):
    def __init__(self, in_shape: tuple[int, int, int]):
        super().__init__()
        self.out_dim = in_shape[0] * in_shape[1] * in_shape[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


@register_encoder("pixels")
def pixels(params, in_shape: tuple[int, int, int]) -> nn.Module:
    """No encoder: the standardised pixels themselves (for the logistic-regression baseline)."""
    return _Pixels(in_shape)
