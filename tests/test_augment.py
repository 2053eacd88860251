"""Batched augmentations: per-image randomness, exactness of the simple cases, presets."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clt.data.augment import (
    _N_DRAWS,
    PRESETS,
    AugmentSpec,
    BatchAugment,
    _check_spec,
    _crop_boxes,
    _hue_matrix,
    resolve_spec,
    views,
)
from clt.errors import RecipeError
from clt.recipe import AugmentConfig

# ---------------------------------------------------------------- helpers


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_batch(b: int = 8, c: int = 3, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=gen(seed))


def blob(b: int, size: int = 28, sigma: float = 3.0, cx: float | None = None) -> torch.Tensor:
    """A smooth Gaussian spot, well inside the frame, repeated b times: (b, 1, size, size)."""
    coords = torch.arange(size, dtype=torch.float32)
    cx = (size - 1) / 2 if cx is None else cx
    cy = (size - 1) / 2
    img = torch.exp(-((coords.view(-1, 1) - cy) ** 2 + (coords - cx) ** 2) / (2 * sigma**2))
    return img.expand(b, 1, size, size).contiguous()


def only(**kw: object) -> BatchAugment:
    return BatchAugment(AugmentSpec(crop_scale=kw.pop("crop_scale", None), **kw))  # type: ignore[arg-type]


def distinct_rows(x: torch.Tensor) -> int:
    return torch.unique(x.flatten(1), dim=0).shape[0]


# ---------------------------------------------------------------- shape, dtype, range


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("channels", [1, 3])
def test_presets_keep_shape_dtype_and_range(preset: str, channels: int) -> None:
    x = rand_batch(c=channels, h=20, w=24)
    out = BatchAugment(PRESETS[preset])(x, gen())
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert torch.isfinite(out).all()


def test_float64_input_stays_float64() -> None:
    x = rand_batch().double()
    assert BatchAugment(PRESETS["imagenet_like"])(x, gen()).dtype == torch.float64


def test_non_float_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="float"):
        BatchAugment(PRESETS["digits"])(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), gen())


@pytest.mark.parametrize("spec", [
    PRESETS["imagenet_like"],
    AugmentSpec(None, jitter=1.0, grayscale=0.5, blur=0.5),  # no geometry, so no copy made there
])
def test_input_is_not_modified(spec: AugmentSpec) -> None:
    x = rand_batch()
    before = x.clone()
    BatchAugment(spec)(x, gen())
    assert torch.equal(x, before)


@settings(max_examples=25, deadline=None)
@given(
    lo=st.floats(0.05, 1.0), span=st.floats(0.0, 1.0), flip=st.floats(0, 1), jitter=st.floats(0, 1.5),
    gray=st.floats(0, 1), blur=st.floats(0, 1), rotate=st.floats(0, 45), translate=st.floats(0, 0.3),
    channels=st.sampled_from([1, 3]), h=st.integers(3, 12), w=st.integers(3, 12),
)
def test_any_spec_keeps_range(lo: float, span: float, flip: float, jitter: float, gray: float, blur: float,
                              rotate: float, translate: float, channels: int, h: int, w: int) -> None:
    spec = AugmentSpec(crop_scale=(lo, lo + (1 - lo) * span), flip=flip, jitter=jitter, grayscale=gray,
                       blur=blur, rotate=rotate, translate=translate)
    x = rand_batch(b=4, c=channels, h=h, w=w)
    out = BatchAugment(spec)(x, gen())
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1


# ---------------------------------------------------------------- randomness


def test_each_image_gets_its_own_crop() -> None:
    x = rand_batch(b=1, h=32, w=32).expand(16, -1, -1, -1)
    out = only(crop_scale=(0.08, 1.0))(x, gen())
    assert distinct_rows(out) == 16


def test_flip_half_flips_some_images_not_all() -> None:
    x = rand_batch(b=1).expand(64, -1, -1, -1)
    out = only(flip=0.5)(x, gen())
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert (flipped | kept).all()
    assert 10 < flipped.sum() < 54


def test_each_image_gets_its_own_jitter_and_blur() -> None:
    x = rand_batch(b=1, h=32, w=32).expand(16, -1, -1, -1)
    assert distinct_rows(only(jitter=1.0, jitter_prob=1.0)(x, gen())) == 16
    assert distinct_rows(only(blur=1.0)(x, gen())) == 16


def test_same_seed_same_views_other_seed_different() -> None:
    x = rand_batch()
    aug = BatchAugment(PRESETS["imagenet_like"])
    assert torch.equal(aug(x, gen(1)), aug(x, gen(1)))
    assert not torch.allclose(aug(x, gen(1)), aug(x, gen(2)))


def test_enabling_another_transform_does_not_change_the_crops() -> None:
    # Fixed draw layout: toggling one transform leaves every other transform's parameters alone.
    x = rand_batch(h=32, w=32)
    crop = only(crop_scale=(0.2, 1.0))(x, gen(3))
    crop_then_grey = only(crop_scale=(0.2, 1.0), grayscale=1.0)(x, gen(3))
    torch.testing.assert_close(crop_then_grey, only(grayscale=1.0)(crop, gen(3)))


# ---------------------------------------------------------------- exact simple cases


def test_flip_always_is_exact_mirror() -> None:
    x = rand_batch(c=1)
    assert torch.equal(only(flip=1.0)(x, gen()), x.flip(-1))


def test_full_square_crop_is_identity() -> None:
    x = rand_batch(h=16, w=16)
    out = only(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))(x, gen())
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_crop_that_cannot_fit_falls_back_to_the_centre_like_torchvision() -> None:
    # A square crop of the whole area of a 16 x 24 image is impossible: centre 16 x 16 instead.
    u = torch.rand(4, _N_DRAWS, generator=gen())
    fw, fh, cx, cy = _crop_boxes(u, (1.0, 1.0), (1.0, 1.0), 16, 24)
    torch.testing.assert_close(fw, torch.full((4,), 16 / 24))
    assert (fh == 1).all() and (cx == 0).all() and (cy == 0).all()


def test_flip_inside_the_affine_path_mirrors() -> None:
    x = rand_batch(h=16, w=16)
    out = only(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=1.0)(x, gen())
    torch.testing.assert_close(out, x.flip(-1), atol=1e-5, rtol=0)


def test_crop_boxes_stay_inside_the_image_with_area_and_ratio_in_range() -> None:
    u = torch.rand(4096, _N_DRAWS, generator=gen())
    fw, fh, cx, cy = _crop_boxes(u, (0.08, 1.0), (3 / 4, 4 / 3), 32, 32)
    assert ((cx.abs() + fw) <= 1 + 1e-6).all() and ((cy.abs() + fh) <= 1 + 1e-6).all()
    area, aspect = fw * fh, fw / fh
    assert area.min() >= 0.08 - 1e-6 and area.max() <= 1 + 1e-6
    assert area.min() < 0.1 and area.max() > 0.9  # the whole range is used
    assert aspect.min() >= 3 / 4 - 1e-5 and aspect.max() <= 4 / 3 + 1e-5


def test_crop_zooms_in() -> None:
    # A crop of a small area resized back up enlarges the spot; nothing outside the frame comes in.
    x = blob(32, sigma=2.0)
    out = only(crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0))(x, gen())
    assert (out.sum(dim=(1, 2, 3)) > 0).all()
    assert out.max(dim=-1).values.max(dim=-1).values.min() <= 1.0
    spread = (out > 0.5).flatten(1).sum(1).float()
    assert spread.max() > 2 * (x[0] > 0.5).sum()


def test_grayscale_always_gives_equal_channels_with_luma() -> None:
    x = rand_batch()
    out = only(grayscale=1.0)(x, gen())
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for c in range(3):
        torch.testing.assert_close(out[:, c], luma)


def test_grayscale_half_leaves_the_other_images_exactly() -> None:
    x = rand_batch(b=64)
    out = only(grayscale=0.5)(x, gen())
    grey = (out[:, 0] == out[:, 1]).flatten(1).all(1) & (out[:, 1] == out[:, 2]).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert (grey ^ kept).all() and 10 < grey.sum() < 54


def test_grayscale_on_one_channel_is_a_no_op() -> None:
    x = rand_batch(c=1)
    assert torch.equal(only(grayscale=1.0)(x, gen()), x)


def test_blur_keeps_constant_images_and_smooths_noise() -> None:
    const = torch.full((4, 3, 32, 32), 0.3)
    torch.testing.assert_close(only(blur=1.0)(const, gen()), const)
    noise = rand_batch(b=16, h=32, w=32)
    blurred = only(blur=1.0)(noise, gen())
    assert (blurred.var(dim=(1, 2, 3)) < noise.var(dim=(1, 2, 3))).all()
    torch.testing.assert_close(blurred.mean(dim=(1, 2, 3)), noise.mean(dim=(1, 2, 3)), atol=0.01, rtol=0)


def test_jitter_keeps_grey_images_grey() -> None:
    # Saturation and hue act only on chroma; brightness and contrast act on all channels alike.
    grey = rand_batch(c=1, h=16, w=16).expand(-1, 3, -1, -1).contiguous()
    out = only(jitter=1.0, jitter_prob=1.0)(grey, gen())
    torch.testing.assert_close(out[:, 0], out[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, 0], out[:, 2], atol=1e-5, rtol=0)
    assert not torch.allclose(out, grey)


def test_jitter_prob_zero_or_strength_zero_is_identity() -> None:
    x = rand_batch()
    assert torch.equal(only(jitter=1.0, jitter_prob=0.0)(x, gen()), x)
    assert torch.equal(only(jitter=0.0, jitter_prob=1.0)(x, gen()), x)


def test_hue_rotation_keeps_luma_and_is_identity_at_zero() -> None:
    m = _hue_matrix(torch.tensor([0.0, 1.0, -2.0]))
    torch.testing.assert_close(m[0], torch.eye(3), atol=1e-6, rtol=0)
    luma = torch.tensor([0.299, 0.587, 0.114])
    torch.testing.assert_close(luma @ m, luma.expand(3, 3), atol=1e-5, rtol=0)  # luma row unchanged


def test_rotate_and_translate_move_digits_but_keep_mass() -> None:
    x = blob(32)
    out = BatchAugment(dataclasses.replace(PRESETS["digits"], crop_scale=None))(x, gen())
    assert out.shape == x.shape
    torch.testing.assert_close(out.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)), rtol=0.03, atol=0)
    coords = torch.arange(28, dtype=torch.float32)
    centroid_x = (out.sum(dim=(1, 2)) * coords).sum(-1) / out.sum(dim=(1, 2, 3))
    assert (centroid_x - 13.5).abs().max() > 1.0  # shifted by up to 2.8 px
    assert distinct_rows(out) == 32


def test_rotation_alone_turns_an_off_centre_spot() -> None:
    x = blob(16, sigma=1.5, cx=20.0)
    out = only(rotate=30.0)(x, gen())
    peak_rows = out.flatten(1).argmax(1) // 28
    assert distinct_rows(peak_rows.view(-1, 1).float()) > 3  # the spot moves up or down by its own angle


# ---------------------------------------------------------------- views


def test_views_order_is_all_first_views_then_all_second() -> None:
    x = rand_batch(b=5)
    out = views(x, BatchAugment(PRESETS["none"]), gen(), n=3)
    assert torch.equal(out, torch.cat([x, x, x]))


def test_two_views_of_one_image_differ() -> None:
    x = rand_batch(b=6, h=32, w=32)
    out = views(x, BatchAugment(PRESETS["simclr_cifar"]), gen())
    assert out.shape == (12, 3, 32, 32)
    assert all(not torch.equal(out[i], out[i + 6]) for i in range(6))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_for_the_same_seed() -> None:
    x = rand_batch(h=32, w=32)
    aug = BatchAugment(PRESETS["imagenet_like"])
    out = aug(x.cuda(), gen(5))
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), aug(x, gen(5)), atol=1e-4, rtol=0)


# ---------------------------------------------------------------- presets


@pytest.mark.parametrize(("dataset", "channels", "preset"), [
    ("digits", 1, "digits"), ("mnist", 1, "digits"), ("fashion-mnist", 1, "digits"),
    ("cifar10", 3, "simclr_cifar"), ("my-photos", 3, "simclr_cifar"), ("my-scans", 1, "digits"),
])
def test_auto_preset_by_dataset(dataset: str, channels: int, preset: str) -> None:
    assert resolve_spec(None, dataset, channels) == PRESETS[preset]
    assert resolve_spec(AugmentConfig(), dataset, channels) == PRESETS[preset]


def test_simclr_cifar_matches_the_paper() -> None:
    spec = PRESETS["simclr_cifar"]
    assert spec.crop_scale == (0.08, 1.0) and spec.flip == 0.5 and spec.jitter == 0.5
    assert spec.jitter_prob == 0.8 and spec.grayscale == 0.2 and spec.blur == 0.0


def test_explicit_keys_override_the_preset() -> None:
    spec = resolve_spec(AugmentConfig(flip=0.0, crop_scale=[0.2, 1.0]), "cifar10", 3)  # type: ignore[arg-type]
    assert spec.flip == 0.0 and spec.crop_scale == (0.2, 1.0)
    assert spec.jitter == PRESETS["simclr_cifar"].jitter and spec.grayscale == 0.2
    assert resolve_spec(AugmentConfig(preset="none", blur=0.5), "cifar10", 3).blur == 0.5


def test_unknown_preset_names_the_key_and_suggests() -> None:
    with pytest.raises(RecipeError) as err:
        resolve_spec(AugmentConfig(preset="simclr_cifr"), "cifar10", 3)
    assert "pretrain.augment.preset" in str(err.value)
    assert "simclr_cifar" in (err.value.hint or "")


@pytest.mark.parametrize("cfg", [
    AugmentConfig(flip=1.5), AugmentConfig(grayscale=-0.1), AugmentConfig(crop_scale=(0.5, 0.2)),
    AugmentConfig(crop_scale=(0.0, 1.0)), AugmentConfig(rotate=-1.0), AugmentConfig(translate=2.0),
])
def test_out_of_range_values_name_their_key(cfg: AugmentConfig) -> None:
    key = next(f.name for f in dataclasses.fields(cfg)
               if f.name != "preset" and getattr(cfg, f.name) is not None)
    with pytest.raises(RecipeError, match=f"pretrain.augment.{key}"):
        resolve_spec(cfg, "cifar10", 3)


# ---------------------------------------------------------------- pad and crop


def _whole_pixel_shift(image: torch.Tensor, out: torch.Tensor, pad: int) -> tuple[int, int, bool] | None:
    """The (dy, dx, mirrored) for which `out` is `image` zero-padded by `pad` and cropped, if any."""
    h, w = image.shape[-2:]
    for mirrored in (False, True):
        padded = torch.nn.functional.pad(image.flip(-1) if mirrored else image, (pad, pad, pad, pad))
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                if torch.allclose(padded[:, dy:dy + h, dx:dx + w], out, atol=1e-5):
                    return dy - pad, dx - pad, mirrored
    return None


def test_pad_crop_is_a_whole_pixel_shift_with_zero_fill_of_each_image() -> None:
    x = rand_batch(b=48, c=3, h=12, w=10, seed=3)
    out = BatchAugment(PRESETS["cifar_crop"])(x, gen(5))
    shifts = [_whole_pixel_shift(x[i], out[i], pad=4) for i in range(len(x))]
    # every image is exactly a padded crop (no bilinear blur), and the draws differ per image
    assert all(s is not None for s in shifts)
    assert len({s[:2] for s in shifts if s}) > 10
    assert {s[2] for s in shifts if s} == {False, True}
    assert max(max(abs(s[0]), abs(s[1])) for s in shifts if s) == 4


def test_pad_crop_with_translate_or_negative_is_refused_by_key() -> None:
    with pytest.raises(RecipeError, match="pretrain.augment.pad_crop") as err:
        resolve_spec(AugmentConfig(preset="cifar_crop", translate=0.1), "cifar10", 3)
    assert "translate" in str(err.value) + (err.value.hint or "")
    with pytest.raises(RecipeError, match="pretrain.augment.pad_crop"):
        _check_spec(dataclasses.replace(PRESETS["none"], pad_crop=-1))
