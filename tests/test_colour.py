"""Tests for jaxcolor.colour: OpenCV Lab checked against scikit-image, normalisation, clipping."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import color as skcolor
from skimage import data as skdata

from jaxcolor import colour

# The 8 corners of the RGB cube: the extremes of the sRGB gamut.
CORNERS = np.array([[r, g, b] for r in (0, 1) for g in (0, 1) for b in (0, 1)], np.float64)


def _random_colours(n: int = 10_000, seed: int = 0) -> np.ndarray:
    """``n`` random RGB colours in [0, 1] (float64), the gamut corners included."""
    rng = np.random.default_rng(seed)
    return np.concatenate([CORNERS, rng.random((n - len(CORNERS), 3))])


def _small_photo(name: str, width: int = 64) -> np.ndarray:
    """A real scikit-image photo, area-downsized to ``width`` pixels, float64 RGB in [0, 1]."""
    image = getattr(skdata, name)()
    height = round(width * image.shape[0] / image.shape[1])
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA) / 255.0


def _delta_e(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIE76 colour difference: Euclidean distance in Lab."""
    return np.linalg.norm(np.asarray(lab1, np.float64) - np.asarray(lab2, np.float64), axis=-1)


# ----------------------------------------------------------------------------- rgb_to_lab


def test_rgb_to_lab_matches_skimage_on_random_colours():
    rgb = _random_colours()
    lab = colour.rgb_to_lab(rgb)  # float64 in: converted to float32 inside
    assert lab.dtype == np.float32 and lab.shape == rgb.shape
    # Measured: max delta-E about 0.47 (OpenCV's float32 path); 1 unit is barely perceptible.
    assert _delta_e(lab, skcolor.rgb2lab(rgb)).max() < 1.0


def test_rgb_to_lab_known_values():
    """White, black and the blue primary (the largest |b| in sRGB) in OpenCV's Lab units."""
    lab = colour.rgb_to_lab(np.array([[1, 1, 1], [0, 0, 0], [0, 0, 1]], np.float32))
    np.testing.assert_allclose(lab[0], [100, 0, 0], atol=0.01)
    np.testing.assert_allclose(lab[1], [0, 0, 0], atol=0.01)
    np.testing.assert_allclose(lab[2], [32.30, 79.19, -107.86], atol=0.05)


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_rgb_to_lab_matches_skimage_on_photos(name):
    rgb = _small_photo(name)
    assert rgb.shape[1] == 64 and rgb.shape[-1] == 3
    assert _delta_e(colour.rgb_to_lab(rgb), skcolor.rgb2lab(rgb)).max() < 1.0


def test_rgb_to_lab_batched_matches_per_image_and_skimage():
    # (2, 40, 64, 3): two photos cropped to a common shape.
    batch = np.stack([_small_photo("astronaut")[:40], _small_photo("chelsea")[:40]])
    lab = colour.rgb_to_lab(batch)
    assert lab.shape == batch.shape
    # Leading dimensions are folded into rows: each image must convert as if on its own.
    for i in range(len(batch)):
        np.testing.assert_array_equal(lab[i], colour.rgb_to_lab(batch[i]))
    assert _delta_e(lab, skcolor.rgb2lab(batch)).max() < 1.0


def test_rgb_to_lab_accepts_extra_leading_dims():
    rgb = _random_colours(2 * 3 * 4 * 5).reshape(2, 3, 4, 5, 3)
    lab = colour.rgb_to_lab(rgb)
    assert lab.shape == rgb.shape
    assert _delta_e(lab, skcolor.rgb2lab(rgb)).max() < 1.0


# ----------------------------------------------------------------------------- lab_to_rgb


def test_round_trip_rgb_lab_rgb():
    rgb = _random_colours().astype(np.float32)
    back = colour.lab_to_rgb(colour.rgb_to_lab(rgb))
    assert back.dtype == np.float32 and back.shape == rgb.shape
    # Measured: max abs error about 0.0046 over 1e6 random colours (OpenCV float32 path);
    # 8e-3 is about 2 / 255, well under one 8-bit level either side of rounding.
    assert np.abs(back - rgb).max() < 8e-3
    assert np.abs(back - rgb).mean() < 1e-3


def test_round_trip_on_photo():
    rgb = _small_photo("coffee").astype(np.float32)
    back = colour.lab_to_rgb(colour.rgb_to_lab(rgb))
    assert np.abs(back - rgb).max() < 8e-3


def test_lab_to_rgb_matches_skimage():
    lab = skcolor.rgb2lab(_random_colours(2000, seed=1))
    np.testing.assert_allclose(colour.lab_to_rgb(lab), skcolor.lab2rgb(lab), atol=2e-3)


def test_lab_to_rgb_clips_out_of_gamut():
    lab = np.array(
        [
            [300, 0, 0],  # L far above 100
            [-50, 0, 0],  # L below 0
            [50, 500, -500],  # ab far outside
            [50, -1e4, 1e4],
            [100, 127, 127],  # valid Lab but outside the sRGB gamut
            [0, -127, 127],
            [60, 127, -127],
        ],
        np.float32,
    )
    rgb = colour.lab_to_rgb(lab)
    assert np.isfinite(rgb).all()
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    np.testing.assert_allclose(rgb[0], [1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(rgb[1], [0, 0, 0], atol=1e-6)


# ----------------------------------------------------------------------------- normalisation


def test_normalize_known_values():
    l_norm, ab_norm = colour.normalize_lab(np.array([[100, 0, 0], [0, 55, -110], [50, 110, 22]]))
    assert l_norm.shape == (3, 1) and ab_norm.shape == (3, 2)
    assert l_norm.dtype == np.float32 and ab_norm.dtype == np.float32
    np.testing.assert_allclose(l_norm[:, 0], [1.0, -1.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(ab_norm, [[0, 0], [0.5, -1.0], [1.0, 0.2]], atol=1e-7)


def test_normalize_denormalize_are_inverse():
    rng = np.random.default_rng(2)
    lab = np.stack(
        [rng.uniform(0, 100, (4, 8, 8)), *rng.uniform(-127, 127, (2, 4, 8, 8))], axis=-1
    ).astype(np.float32)
    l_norm, ab_norm = colour.normalize_lab(lab)
    assert l_norm.shape == (4, 8, 8, 1) and ab_norm.shape == (4, 8, 8, 2)
    back = colour.denormalize_lab(l_norm, ab_norm)
    assert back.shape == lab.shape and back.dtype == np.float32
    np.testing.assert_allclose(back, lab, atol=1e-4)
    # And the other way round.
    l2, ab2 = colour.normalize_lab(colour.denormalize_lab(l_norm, ab_norm))
    np.testing.assert_allclose(l2, l_norm, atol=1e-6)
    np.testing.assert_allclose(ab2, ab_norm, atol=1e-6)


def test_normalised_ranges_on_random_colours():
    l_norm, ab_norm = colour.normalize_lab(colour.rgb_to_lab(_random_colours()))
    # L' spans [-1, 1]: black and white are among the colours.
    assert l_norm.min() >= -1.0 - 1e-6 and l_norm.max() <= 1.0 + 1e-6
    assert l_norm.min() < -0.999 and l_norm.max() > 0.999
    # ab' stays inside [-1, 1] for the whole sRGB gamut (|b| <= 107.9 for blue, |a| <= 98.3)
    # and uses most of it: the scale is neither too small nor too large.
    assert np.abs(ab_norm).max() <= 1.0
    assert ab_norm[:, 1].min() < -0.97  # blue: b = -107.86 -> -0.98
    assert ab_norm[:, 0].max() > 0.88  # magenta: a = 98.23 -> 0.89


def test_lab_norm_to_rgb_matches_lab_to_rgb_in_range():
    rgb = _small_photo("astronaut", width=32).astype(np.float32)
    l_norm, ab_norm = colour.normalize_lab(colour.rgb_to_lab(rgb))
    out = colour.lab_norm_to_rgb(l_norm, ab_norm)
    assert out.shape == rgb.shape
    assert np.abs(out - rgb).max() < 8e-3


def test_lab_norm_to_rgb_handles_out_of_range_ab():
    rng = np.random.default_rng(3)
    l_norm = rng.uniform(-1.5, 1.5, (2, 16, 16, 1)).astype(np.float32)
    ab_norm = rng.uniform(-50, 50, (2, 16, 16, 2)).astype(np.float32)
    ab_norm[0, 0, 0] = [1e6, -1e6]
    out = colour.lab_norm_to_rgb(l_norm, ab_norm)
    assert out.shape == (2, 16, 16, 3) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0
    # ab beyond the Lab range is clipped to +-127, so these equal their clipped versions.
    clipped = np.clip(ab_norm, -127 / 110, 127 / 110)
    np.testing.assert_array_equal(out, colour.lab_norm_to_rgb(l_norm, clipped))


# ----------------------------------------------------------------------------- gray, uint8


def test_rgb_to_gray_is_neutral_and_keeps_lightness():
    rgb = _random_colours(4000, seed=4).reshape(40, 100, 3)
    gray = colour.rgb_to_gray(rgb)
    assert gray.shape == rgb.shape and gray.dtype == np.float32
    assert gray.min() >= 0.0 and gray.max() <= 1.0
    # Neutral: the three channels are equal, so a = b = 0 (up to OpenCV's float32 noise).
    np.testing.assert_allclose(gray[..., 0], gray[..., 1], atol=1e-5)
    np.testing.assert_allclose(gray[..., 0], gray[..., 2], atol=1e-5)
    lab_gray, lab = colour.rgb_to_lab(gray), colour.rgb_to_lab(rgb)
    assert np.abs(lab_gray[..., 1:]).max() < 0.5  # measured 0.25
    assert np.abs(lab_gray[..., 0] - lab[..., 0]).max() < 1.0  # measured 0.23
    # Independent check of the lightness with scikit-image.
    assert np.abs(skcolor.rgb2lab(gray)[..., 0] - skcolor.rgb2lab(rgb)[..., 0]).max() < 1.0


def test_rgb_to_gray_of_gray_is_unchanged():
    levels = np.linspace(0, 1, 256, dtype=np.float32)
    gray = np.repeat(levels[:, None], 3, axis=-1)
    np.testing.assert_allclose(colour.rgb_to_gray(gray), gray, atol=8e-3)


def test_rgb_to_uint8_rounds_and_clips():
    x = np.array([0.0, 1.0, -0.1, 1.5, 10.4 / 255, 10.6 / 255, 0.2, 254.6 / 255], np.float32)
    out = colour.rgb_to_uint8(x)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [0, 255, 0, 255, 10, 11, 51, 255])


def test_rgb_to_uint8_inverts_exact_levels():
    levels = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(colour.rgb_to_uint8(levels.astype(np.float32) / 255), levels)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "fn",
    [colour.rgb_to_lab, colour.lab_to_rgb, colour.rgb_to_gray],
    ids=["rgb_to_lab", "lab_to_rgb", "rgb_to_gray"],
)
@pytest.mark.parametrize("shape", [(8, 8, 4), (8, 8, 1), (2, 8, 8, 2), (3,)])
def test_wrong_channel_count_raises(fn, shape):
    with pytest.raises(ValueError, match="3 channels"):
        fn(np.zeros(shape, np.float32))
