"""Batched view augmentations: whole (B, C, H, W) batches on the batch's own device, per-image parameters.

Every image draws its own crop, flip, colour and blur parameters. All random numbers come from one
`torch.rand` call on the generator's device (CPU normally) with a fixed column layout, so the draws do not
depend on which transforms are enabled or on the device the batch lives on: a CPU run and a CUDA run with
the same seed see the same parameters.

Geometry (random resized crop, flip, rotation, translation) is folded into one affine matrix per image and
applied with a single sampling grid and one `grid_sample`. Colour jitter (fixed order: brightness, contrast,
saturation, hue), grayscale and Gaussian blur follow, as in SimCLR.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from clt.errors import RecipeError, did_you_mean


@dataclass
class AugmentSpec:
    """Resolved augmentation parameters, all plain numbers."""

    crop_scale: tuple[float, float] | None  # RandomResizedCrop area fraction range; None = no crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range, sampled log-uniformly
    flip: float = 0.0  # probability of a horizontal flip
    jitter: float = 0.0  # colour jitter strength s (brightness/contrast/saturation 0.8s, hue 0.2s)
    jitter_prob: float = 0.8  # probability that an image gets colour jitter at all
    grayscale: float = 0.0  # probability
    blur: float = 0.0  # probability of Gaussian blur, sigma ~ U[0.1, 2.0]
    rotate: float = 0.0  # max degrees of rotation
    translate: float = 0.0  # max fraction of the side for translation
    # RandomCrop(size, padding=p): a whole-pixel shift of up to p in each axis, zero fill, no resampling
    # blur (bilinear sampling at whole-pixel offsets returns the pixels themselves)
    pad_crop: int = 0


PRESETS: dict[str, AugmentSpec] = {
    # SimCLR (Chen et al. 2020), CIFAR-10 appendix: colour strength 0.5, no blur at 32x32.
    "simclr_cifar": AugmentSpec(crop_scale=(0.08, 1.0), flip=0.5, jitter=0.5, jitter_prob=0.8, grayscale=0.2),
    # SimCLR ImageNet: full colour strength and blur with p=0.5.
    "imagenet_like": AugmentSpec(crop_scale=(0.08, 1.0), flip=0.5, jitter=1.0, jitter_prob=0.8, grayscale=0.2,
                                 blur=0.5),
    # Digits must stay readable: mild crop, small affine, no flip (a flipped 2 is not a 2), no colour.
    "digits": AugmentSpec(crop_scale=(0.7, 1.0), rotate=15.0, translate=0.1),
    # Supervised-style light augmentation for label-driven objectives (triplet, pairs) on CIFAR:
    # a mild crop and a flip, no colour distortion.
    "cifar_light": AugmentSpec(crop_scale=(0.6, 1.0), flip=0.5),
    # The standard supervised CIFAR augmentation (He et al. 2016): pad 4, random 32x32 crop, flip.
    "cifar_crop": AugmentSpec(crop_scale=None, pad_crop=4, flip=0.5),
    "none": AugmentSpec(crop_scale=None),
}
DIGIT_DATASETS = ("digits", "mnist", "fashion-mnist")
_PROBABILITIES = ("flip", "jitter_prob", "grayscale", "blur")

# Columns of the per-image uniform draw; fixed so enabling one transform never shifts another's numbers.
(_CX, _CY, _FLIP, _ANGLE, _TX, _TY,
 _JIT, _BRIGHT, _CONTRAST, _SAT, _HUE, _GRAY, _BLUR, _SIGMA) = range(14)
_CROP_TRIES = 10  # candidate crop boxes per image, as torchvision's RandomResizedCrop
_AREA = slice(14, 14 + _CROP_TRIES)
_RATIO = slice(14 + _CROP_TRIES, 14 + 2 * _CROP_TRIES)
_N_DRAWS = 14 + 2 * _CROP_TRIES

_LUMA = (0.299, 0.587, 0.114)
# RGB -> YIQ; hue is a rotation of the (I, Q) chroma plane, which keeps luma fixed.
_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                       dtype=torch.float64)
_FROM_YIQ = torch.linalg.inv(_TO_YIQ)


def check_preset(name: str, where: str = "pretrain.augment.preset") -> None:
    """Refuse a name that is neither a preset nor "auto", naming the key or flag it came from."""
    if name not in PRESETS and name != "auto":
        raise RecipeError(f"unknown {where} '{name}'", did_you_mean(name, [*PRESETS, "auto"]))


def resolve_spec(cfg: Any, dataset: str, channels: int) -> AugmentSpec:
    """Pick the preset ("auto" by dataset / channel count), then apply every key of `cfg` that is set.

    `cfg` is a recipe's augment section (a dataclass with `preset` and optional overrides), a
    preset name, or None for "auto". Example: resolve_spec("digits", "mnist", 1).rotate == 15.0
    """
    if cfg is None or isinstance(cfg, str):
        name, overrides = cfg or "auto", {}
    else:
        name = cfg.preset
        overrides = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                     if f.name != "preset" and getattr(cfg, f.name) is not None}
    check_preset(name)
    if name == "auto":
        name = "digits" if dataset in DIGIT_DATASETS or channels == 1 else "simclr_cifar"
    if "crop_scale" in overrides:
        overrides["crop_scale"] = tuple(float(v) for v in overrides["crop_scale"])
    spec = dataclasses.replace(PRESETS[name], **overrides)
    _check_spec(spec)
    return spec


def _check_spec(spec: AugmentSpec) -> None:
    def bad(key: str, value: object, must: str) -> RecipeError:
        return RecipeError(f"pretrain.augment.{key} = {value} is out of range", f"it must be {must}")

    for key in _PROBABILITIES:
        if not 0.0 <= getattr(spec, key) <= 1.0:
            raise bad(key, getattr(spec, key), "a probability in [0, 1]")
    if spec.crop_scale is not None:
        lo, hi = spec.crop_scale if len(spec.crop_scale) == 2 else (-1.0, -1.0)
        if not 0.0 < lo <= hi <= 1.0:
            raise bad("crop_scale", list(spec.crop_scale), "[lo, hi] with 0 < lo <= hi <= 1")
    for key in ("jitter", "rotate", "translate"):
        if getattr(spec, key) < 0:
            raise bad(key, getattr(spec, key), ">= 0")
    if spec.translate > 1:
        raise bad("translate", spec.translate, "a fraction of the side in [0, 1]")
    if spec.pad_crop < 0:
        raise bad("pad_crop", spec.pad_crop, ">= 0 pixels")
    if spec.pad_crop and spec.translate:
        # both draw their shift from the same columns; one shift rule per preset
        raise bad("pad_crop", spec.pad_crop, "0 when translate is set (use one or the other)")


class BatchAugment:
    """Callable `(x, generator) -> augmented x`, each image with its own random parameters."""

    def __init__(self, spec: AugmentSpec):
        self.spec = spec

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if x.dim() != 4 or not x.is_floating_point():
            raise ValueError(f"expected a float (B, C, H, W) batch, got {tuple(x.shape)} {x.dtype}")
        s = self.spec
        # Draw on the generator's device, then move: the same seed gives the same numbers everywhere.
        u = torch.rand(x.shape[0], _N_DRAWS, generator=generator, device=generator.device)
        u = u.to(device=x.device, dtype=x.dtype)
        out = self._geometry(x, u)
        if out is x:
            out = x.clone()  # the steps below write in place; the caller's batch must stay untouched
        if s.jitter > 0 and s.jitter_prob > 0:
            out = _apply_some(out, u[:, _JIT] < s.jitter_prob, lambda y, i: _jitter(y, u[i], s.jitter))
        if s.grayscale > 0 and x.shape[1] == 3:
            out = _apply_some(out, u[:, _GRAY] < s.grayscale, lambda y, i: _gray(y).expand_as(y))
        if s.blur > 0:
            sigma = 0.1 + 1.9 * u[:, _SIGMA]
            out = _apply_some(out, u[:, _BLUR] < s.blur, lambda y, i: _gaussian_blur(y, sigma[i]))
        return out.clamp_(0.0, 1.0)

    def _geometry(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        s = self.spec
        if s.crop_scale is None and s.rotate == 0 and s.translate == 0 and s.pad_crop == 0:
            if s.flip == 0:
                return x
            # Flip alone needs no resampling: index exactly instead of interpolating.
            return torch.where(_mask(u[:, _FLIP], s.flip), x.flip(-1), x)
        grid = _sampling_grid(_affine(u, s, x.shape[-2], x.shape[-1]), x.shape[-2], x.shape[-1])
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def __repr__(self) -> str:
        return f"BatchAugment({self.spec})"


def views(x: torch.Tensor, augment: BatchAugment, generator: torch.Generator, n: int = 2) -> torch.Tensor:
    """n augmented views, concatenated as [view 1 of all images; view 2 of all images; ...]."""
    # One call over the repeated batch: the same per-image randomness, one pass of each kernel.
    return augment(x.repeat(n, 1, 1, 1), generator)


def _apply_some(x: torch.Tensor, selected: torch.Tensor,
                fn: Callable[[torch.Tensor, torch.Tensor | slice], torch.Tensor]) -> torch.Tensor:
    """x with `fn(images, rows)` applied to the selected images only; `rows` indexes per-image parameters.

    On CPU only the selected images are computed and written back in place (x must be ours). Elsewhere
    every image is computed and the result picked with `where`, because finding the selected indices
    (`nonzero`) would make the host wait for the accelerator.
    """
    if x.device.type != "cpu":
        return torch.where(selected.view(-1, 1, 1, 1), fn(x, slice(None)), x)
    idx = selected.nonzero().squeeze(1)
    if idx.numel() > 0:
        x[idx] = fn(x[idx], idx)
    return x


def _mask(u: torch.Tensor, p: float) -> torch.Tensor:
    """Per-image boolean (B, 1, 1, 1): True with probability p."""
    return (u < p).view(-1, 1, 1, 1)


def _affine(u: torch.Tensor, s: AugmentSpec, h: int, w: int) -> torch.Tensor:
    """Per-image (B, 2, 3) matrices mapping output to input coordinates, normalised to [-1, 1]."""
    b = u.shape[0]
    sx = torch.ones(b, dtype=u.dtype, device=u.device)
    sy, cx, cy = sx.clone(), torch.zeros_like(sx), torch.zeros_like(sx)
    if s.crop_scale is not None:
        sx, sy, cx, cy = _crop_boxes(u, s.crop_scale, s.crop_ratio, h, w)
    if s.flip > 0:
        sx = torch.where(u[:, _FLIP] < s.flip, -sx, sx)  # mirroring the output grid = horizontal flip
    angle = (2 * u[:, _ANGLE] - 1) * math.radians(s.rotate)
    cos, sin = angle.cos(), angle.sin()
    # Rotate in pixel space, not normalised space, so non-square images are not sheared.
    theta = torch.empty(b, 2, 3, dtype=u.dtype, device=u.device)
    theta[:, 0, 0] = cos * sx
    theta[:, 0, 1] = -sin * sy * (h / w)
    theta[:, 1, 0] = sin * sx * (w / h)
    theta[:, 1, 1] = cos * sy
    # A shift of fraction t of the side is 2t in normalised coordinates.
    theta[:, 0, 2] = cx + (2 * u[:, _TX] - 1) * 2 * s.translate
    theta[:, 1, 2] = cy + (2 * u[:, _TY] - 1) * 2 * s.translate
    if s.pad_crop:
        # k whole pixels, uniform in [-p, p]; one pixel is 2/side in normalised coordinates
        span = 2 * s.pad_crop + 1
        for row, col, side in ((0, _TX, w), (1, _TY, h)):
            k = (u[:, col] * span).floor().clamp(max=span - 1) - s.pad_crop
            theta[:, row, 2] += k * 2 / side
    return theta


def _sampling_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """`F.affine_grid(theta, align_corners=False)` by broadcasting: it is several times faster on CPU
    than affine_grid's batched matmul against a (H*W, 3) base grid."""
    xs = (torch.arange(w, dtype=theta.dtype, device=theta.device) * 2 + 1) / w - 1  # pixel centres
    ys = ((torch.arange(h, dtype=theta.dtype, device=theta.device) * 2 + 1) / h - 1).view(-1, 1)
    t = theta.view(-1, 2, 3, 1, 1)
    grid = torch.empty(theta.shape[0], h, w, 2, dtype=theta.dtype, device=theta.device)
    for k in range(2):
        # The column term (B, 1, W) and the row term (B, H, 1) are small: one full-size pass per coordinate.
        torch.add(t[:, k, 0] * xs, t[:, k, 1] * ys + t[:, k, 2], out=grid[..., k])
    return grid


def _crop_boxes(u: torch.Tensor, scale: tuple[float, float], ratio: tuple[float, float],
                h: int, w: int) -> tuple[torch.Tensor, ...]:
    """RandomResizedCrop boxes as (half-width, half-height, centre x, centre y), normalised to [-1, 1].

    torchvision's rule, vectorised: up to ten candidates per image with area fraction uniform in `scale`
    and aspect ratio log-uniform in `ratio`; the first that fits is used, at a position uniform over
    those inside the image. Where none fits, the centre crop of the whole image with its aspect ratio
    clamped to `ratio`.
    """
    area = scale[0] + (scale[1] - scale[0]) * u[:, _AREA]
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, _RATIO])  # crop width / height in pixels
    # Fractions of the side: (fw * w) * (fh * h) = area * w * h and (fw * w) / (fh * h) = aspect.
    fw_all = (area * aspect * (h / w)).sqrt()
    fh_all = (area / aspect * (w / h)).sqrt()
    fits = (fw_all <= 1 + 1e-6) & (fh_all <= 1 + 1e-6)  # tolerance: scale (1, 1) must fit exactly
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # argmax returns the first maximum
    any_fits = fits.any(dim=1)
    fb_w, fb_h = _centre_crop(ratio, h, w)
    fw = torch.where(any_fits, fw_all.gather(1, first).squeeze(1), fb_w).clamp(max=1.0)
    fh = torch.where(any_fits, fh_all.gather(1, first).squeeze(1), fb_h).clamp(max=1.0)
    cx = torch.where(any_fits, (2 * u[:, _CX] - 1) * (1 - fw), 0.0)
    cy = torch.where(any_fits, (2 * u[:, _CY] - 1) * (1 - fh), 0.0)
    return fw, fh, cx, cy


def _centre_crop(ratio: tuple[float, float], h: int, w: int) -> tuple[float, float]:
    """torchvision's fallback box (width, height fractions): the largest with aspect inside `ratio`."""
    if w / h < ratio[0]:
        return 1.0, (w / ratio[0]) / h
    if w / h > ratio[1]:
        return (h * ratio[1]) / w, 1.0
    return 1.0, 1.0


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luminance (B, 1, H, W); a 1-channel image is its own luminance."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _factor(u: torch.Tensor, strength: float) -> torch.Tensor:
    """torchvision's jitter range: uniform in [max(0, 1 - strength), 1 + strength], one per image."""
    lo = max(0.0, 1.0 - strength)
    return lo + (1.0 + strength - lo) * u


def _jitter(x: torch.Tensor, u: torch.Tensor, s: float) -> torch.Tensor:
    """Brightness, contrast, saturation, hue with per-image factors; clamped after each like torchvision."""
    b, c = x.shape[:2]
    x = (x * _factor(u[:, _BRIGHT], 0.8 * s).view(b, 1, 1, 1)).clamp_(0.0, 1.0)
    # Contrast blends towards the mean luminance; the mean of the luminance is the luminance of the
    # channel means, which avoids building a grey image.
    means = x.mean(dim=(2, 3))
    mean_luma = means @ x.new_tensor(_LUMA) if c == 3 else means[:, 0]
    k = _factor(u[:, _CONTRAST], 0.8 * s)
    x = x.mul_(k.view(b, 1, 1, 1)).add_(((1 - k) * mean_luma).view(b, 1, 1, 1)).clamp_(0.0, 1.0)  # x is ours
    if c != 3:
        return x  # saturation and hue do not exist for one channel
    # Saturation and hue are both linear in RGB: one (3 x 3) matrix per image each, applied by bmm.
    x = _mix_channels(x, _saturation_matrix(_factor(u[:, _SAT], 0.8 * s))).clamp_(0.0, 1.0)
    hue = (2 * u[:, _HUE] - 1) * 0.2 * s  # fraction of a full turn, like torchvision's hue_factor
    return _mix_channels(x, _hue_matrix(hue * 2 * math.pi)).clamp_(0.0, 1.0)


def _mix_channels(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    return torch.bmm(m, x.reshape(b, c, h * w)).view(b, c, h, w)


def _saturation_matrix(f: torch.Tensor) -> torch.Tensor:
    """f * x + (1 - f) * luma(x) as a matrix: f I + (1 - f) 1 w^T."""
    eye = torch.eye(3, dtype=f.dtype, device=f.device)
    luma = f.new_tensor(_LUMA).expand(3, 3)
    f = f.view(-1, 1, 1)
    return f * eye + (1 - f) * luma


def _hue_matrix(angle: torch.Tensor) -> torch.Tensor:
    """Rotate the chroma plane by `angle` radians in YIQ space; luma is unchanged."""
    to_yiq, from_yiq = _TO_YIQ.to(angle), _FROM_YIQ.to(angle)
    rot = torch.zeros(angle.shape[0], 3, 3, dtype=angle.dtype, device=angle.device)
    cos, sin = angle.cos(), angle.sin()
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = cos, -sin
    rot[:, 2, 1], rot[:, 2, 2] = sin, cos
    return from_yiq @ rot @ to_yiq


def blur_kernel_size(h: int, w: int) -> int:
    """About 10% of the shorter side, odd, at least 3, and small enough for reflect padding."""
    side = min(h, w)
    k = max(3, round(0.1 * side) | 1)
    return min(k, side if side % 2 else side - 1)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable blur with a per-image kernel: images folded into channels of one depthwise conv."""
    b, c, h, w = x.shape
    k = blur_kernel_size(h, w)
    if k < 3:
        return x
    offsets = torch.arange(k, dtype=x.dtype, device=x.device) - k // 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma.view(-1, 1) ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (b*c, k)
    pad = k // 2
    y = F.pad(x.reshape(1, b * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, kernel.view(b * c, 1, 1, k), groups=b * c)
    y = F.conv2d(y, kernel.view(b * c, 1, k, 1), groups=b * c)
    return y.view(b, c, h, w)


def _benchmark() -> None:
    """ms for two views of a 256-image batch: best wall time of 30 runs, and CPU time per run (on a shared
    machine the wall time includes waiting for a core; CPU time / threads is the uncontended estimate)."""
    import time

    gen = torch.Generator().manual_seed(0)
    cases = [("digits", (256, 1, 28, 28)), ("simclr_cifar", (256, 3, 32, 32)),
             ("imagenet_like", (256, 3, 32, 32))]
    for preset, shape in cases:
        aug = BatchAugment(PRESETS[preset])
        x = torch.rand(shape, generator=gen)
        views(x, aug, gen)
        walls, cpu_start = [], time.process_time()
        for _ in range(30):
            start = time.perf_counter()
            views(x, aug, gen)
            walls.append(time.perf_counter() - start)
        cpu = (time.process_time() - cpu_start) / 30
        size = "x".join(map(str, shape))
        print(f"{preset:14s} {size:12s} two views: best wall {min(walls) * 1e3:6.2f} ms, "
              f"cpu {cpu * 1e3:6.2f} ms ({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    _benchmark()
