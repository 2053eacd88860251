"""Datasets held in memory as uint8 tensors; batches are drawn by index and converted on the device.

A dataset artifact stores `data.safetensors` (uint8 images, int64 labels per split); its
manifest carries class names and per-channel mean/std. No per-sample Python in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATA_FILE = "data.safetensors"


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,), -1 when unlabeled

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.images[index], self.labels[index])


@dataclass
class ImageData:
    name: str
    classes: list[str]
    train: Split
    test: Split
    mean: torch.Tensor  # (C,) float, of the train images scaled to [0, 1]
    std: torch.Tensor

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    @property
    def labeled(self) -> bool:
        return bool(len(self.classes)) and bool((self.train.labels >= 0).all())

    def split(self, name: str) -> Split:
        if name not in ("train", "test"):
            raise ValueError(name)
        return self.train if name == "train" else self.test

    def to(self, device: torch.device) -> ImageData:
        """Move all images to the device once: MNIST is 47 MB, CIFAR-10 184 MB as uint8."""
        move = lambda s: Split(s.images.to(device), s.labels.to(device))  # noqa: E731
        return ImageData(self.name, self.classes, move(self.train), move(self.test),
                         self.mean.to(device), self.std.to(device))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float32 standardised; float input is taken as already in [0, 1]."""
        x = images.float().div_(255) if images.dtype == torch.uint8 else images
        return (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 (N, C, H, W) images scaled to [0, 1], in chunks."""
    channels = images.shape[1]
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    count = 0
    for start in range(0, len(images), 512):  # 512 CIFAR images are 12 MB in float64: memory stays flat
        chunk = images[start:start + 512].astype(np.float64) / 255
        total += chunk.sum(axis=(0, 2, 3))
        total_sq += (chunk**2).sum(axis=(0, 2, 3))
        count += chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean**2, 1e-12))
    return mean.tolist(), std.tolist()


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))


def load_image_data(path: Path, info: dict) -> ImageData:
    """Read a dataset artifact's arrays (safetensors: no pickle, no code) into tensors."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    return ImageData(
        name=info["name"],
        classes=list(info["classes"]),
        train=Split(tensors["train_images"], tensors["train_labels"].long()),
        test=Split(tensors["test_images"], tensors["test_labels"].long()),
        mean=torch.tensor(info["mean"], dtype=torch.float32),
        std=torch.tensor(info["std"], dtype=torch.float32),
    )
