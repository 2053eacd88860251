"""Trained artifacts put to work on new images: an encoder that embeds, a probe that classifies.

Both carry the normalisation of the dataset they were trained on, and take images as arrays,
tensors, PIL images or files, converted as `clt download` converts imported images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clt.errors import DataError
from clt.stages.dataset import dataset_of
from clt.stages.evaluate import encoder_of
from clt.stages.probe import load_probe
from clt.stages.weights import load_encoder as load_encoder_module
from clt.store import Artifact, Store


class Encoder:
    """A trained encoder with everything needed to embed new images: weights, input shape, normalisation.

    Example: clt.load_encoder("latest-encoder").embed(np.zeros((2, 8, 8), np.uint8)).shape == (2, 128)
    """

    def __init__(self, artifact: Artifact, module: Any, dataset: Artifact, device: Any):
        info = dataset.manifest["dataset"]
        self.id, self.name, self.device = artifact.id, artifact.name, device
        self.in_shape: tuple[int, int, int] = tuple(artifact.manifest["encoder"]["in_shape"])
        self.channels = self.in_shape[0]
        self.mean, self.std = list(info["mean"]), list(info["std"])
        self.classes: list[str] = list(info["classes"])
        self.module = module
        self.out_dim = int(module.out_dim)

    def __repr__(self) -> str:
        return f"Encoder({self.id[:12]} {self.name!r}, input {self.in_shape}, {self.out_dim}-d)"

    def embed(self, images: Any, batch_size: int = 1024) -> Any:
        """(N, D) float32 embeddings of uint8 or [0, 1] float images (N, C, H, W) or (N, H, W), numpy
        or torch, or of a list of PIL images or image file paths (converted and resized as
        `clt download` converts imported images)."""
        from clt.features import extract_features

        split, data = self._as_split(images)
        return extract_features(self.module, data, split, self.device, batch_size=batch_size).cpu().numpy()

    def _as_split(self, images: Any):
        import torch

        from clt.data.memory import ImageData, Split

        pixels = as_image_batch(images, self.in_shape).to(self.device)
        split = Split(pixels, torch.full((len(pixels),), -1, dtype=torch.long, device=self.device))
        data = ImageData(self.name, self.classes, split, split, torch.tensor(self.mean, device=self.device),
                         torch.tensor(self.std, device=self.device))
        return split, data


class Classifier:
    """An encoder with a trained probe head: class predictions for new images.

    Example: names = [c.classes[i] for i in c.predict(images)] where c = clt.load_classifier("latest-probe")
    """

    def __init__(self, encoder: Encoder, head: Any, probe_id: str):
        self.encoder, self.head, self.id = encoder, head, probe_id
        self.classes = encoder.classes

    def __repr__(self) -> str:
        return f"Classifier({self.id[:12]}, {len(self.classes)} classes, on {self.encoder!r})"

    def predict_proba(self, images: Any, batch_size: int = 1024) -> Any:
        """(N, classes) softmax probabilities."""
        import torch

        features = torch.from_numpy(self.encoder.embed(images, batch_size)).to(self.encoder.device)
        with torch.no_grad():
            return torch.softmax(self.head(features).float(), dim=1).cpu().numpy()

    def predict(self, images: Any, batch_size: int = 1024) -> Any:
        """(N,) class indices; `classes[i]` names them."""
        return self.predict_proba(images, batch_size).argmax(axis=1)


def encoder_for(store: Store, artifact: Artifact, device: Any, weights: str = "encoder.safetensors") -> Encoder:
    """The encoder artifact's weights with its dataset's normalisation, on `device`."""
    return Encoder(artifact, load_encoder_module(artifact, device, weights), dataset_of(store, artifact), device)


def classifier_for(store: Store, artifact: Artifact, device: Any) -> Classifier:
    """A probe artifact (or supervised baseline) as a classifier: its encoder and head, on `device`."""
    module, head = load_probe(store, artifact, device)
    encoder = Encoder(encoder_of(store, artifact), module, dataset_of(store, artifact), device)
    return Classifier(encoder, head, artifact.id)


def as_image_batch(images: Any, in_shape: tuple[int, int, int]) -> Any:
    """Images as one tensor (N, C, H, W): uint8 as given, floats taken to be in [0, 1].

    Arrays and tensors must already have the encoder's height and width; (N, H, W) means one channel,
    and 1 or 3 channels are converted to the encoder's. PIL images and file paths are converted to
    the encoder's channels and size.
    Example: as_image_batch(np.zeros((4, 8, 8), np.uint8), (1, 8, 8)).shape == (4, 1, 8, 8)
    """
    import numpy as np
    import torch

    if isinstance(images, (list, tuple)) and images and all(isinstance(i, (np.ndarray, torch.Tensor)) for i in images):
        images = np.stack([np.asarray(i.detach().cpu() if isinstance(i, torch.Tensor) else i) for i in images])
    if isinstance(images, (list, tuple)):
        return _from_pictures(list(images), in_shape)
    tensor = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images.detach()
    if tensor.dim() == 3 and tuple(tensor.shape) == tuple(in_shape) and in_shape[0] != 1:
        tensor = tensor.unsqueeze(0)  # one (C, H, W) image
    elif tensor.dim() == 3:
        tensor = tensor.unsqueeze(1)  # (N, H, W): one channel
    if tensor.dim() == 4 and tuple(tensor.shape[2:]) == tuple(in_shape[1:]):
        tensor = _to_channels(tensor, in_shape[0])
    if tensor.dim() != 4 or tuple(tensor.shape[1:]) != tuple(in_shape):
        raise DataError(f"images of shape {tuple(tensor.shape)} do not fit the encoder's input (N, "
                        f"{', '.join(map(str, in_shape))})", "resize them to the encoder's input, or pass PIL "
                        "images or file paths, which are converted")
    if tensor.dtype == torch.uint8:
        return tensor.cpu()
    if tensor.is_floating_point():
        if tensor.numel() and (float(tensor.min()) < 0 or float(tensor.max()) > 1):
            raise DataError(f"float images with values {float(tensor.min()):g}..{float(tensor.max()):g} are not in "
                            "[0, 1]", "divide 8-bit values by 255, or pass them as uint8")
        return tensor.float().cpu()
    if int(tensor.min()) < 0 or int(tensor.max()) > 255:
        raise DataError(f"integer images with values {int(tensor.min())}..{int(tensor.max())} are not 8-bit",
                        "pass uint8 values 0-255 or floats in [0, 1]")
    return tensor.to(torch.uint8).cpu()


def _to_channels(tensor: Any, channels: int) -> Any:
    """Grayscale to RGB by repeating the plane; RGB to grayscale by PIL's luma weights (in integer
    arithmetic for uint8, as PIL's convert("L") rounds), so arrays convert as files do."""
    import torch

    have = tensor.shape[1]
    if have == channels or {have, channels} != {1, 3}:
        return tensor
    if channels == 3:
        return tensor.expand(-1, 3, -1, -1).contiguous()
    if tensor.dtype == torch.uint8:
        r, g, b = (tensor[:, i:i + 1].to(torch.int32) for i in range(3))
        return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8)
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=tensor.dtype, device=tensor.device).view(1, 3, 1, 1)
    return (tensor * weights).sum(1, keepdim=True)


def _from_pictures(items: list[Any], in_shape: tuple[int, int, int]) -> Any:
    import numpy as np
    import torch
    from PIL import Image

    from clt.data.sources import decode_image, image_array, read_file

    channels, height, width = in_shape
    arrays = []
    for item in items:
        if isinstance(item, Image.Image):
            arrays.append(image_array(item, channels, (height, width)))
            continue
        if not isinstance(item, (str, Path)):
            raise DataError(f"cannot take a {type(item).__name__} as an image", "pass arrays, PIL images or paths")
        arr = decode_image(read_file(Path(item)), channels, (height, width), str(item))  # clt's pixel limit too
        if arr is None:
            raise DataError(f"cannot read image '{item}'", "pass readable image files")
        arrays.append(arr)
    if not arrays:
        raise DataError("no images given", "pass at least one image")
    stacked = np.stack(arrays)
    stacked = stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(stacked))
