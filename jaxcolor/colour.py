"""RGB <-> CIE Lab conversion (OpenCV, float32, D65) and the network's normalisation.

Conventions (as in the pix2pix colorization mode):
  * RGB is float32 in [0, 1], channels last, any leading batch dimensions.
  * Lab is float32 with L in [0, 100] and a, b roughly in [-127, 127].
  * The networks see L' = L / 50 - 1 and ab' = ab / 110, both roughly in [-1, 1].

Converting predicted Lab back to RGB can leave the sRGB gamut: ``lab_to_rgb`` clips each
channel to [0, 1]; ``lab_to_rgb_in_gamut`` instead desaturates, keeping L and hue (colorize).
All functions here are NumPy/OpenCV (host side): they run in data-loader workers, never under jit.
"""

from __future__ import annotations

import cv2
import numpy as np

L_SCALE = 50.0
AB_SCALE = 110.0

# CIE Lab (D65) -> linear sRGB, the constants OpenCV uses; only for the gamut test below.
_WHITE_D65 = (0.950456, 1.0, 1.088754)
_XYZ_TO_LINEAR_RGB = (
    (3.240479, -1.53715, -0.498535),
    (-0.969256, 1.875991, 0.041556),
    (0.055648, -0.204043, 1.057311),
)
# In linear RGB. Tight: near black, clipping even 1e-3 by OpenCV would move L by about 1.
_GAMUT_TOLERANCE = 1e-4
_GAMUT_ITERATIONS = 10  # bisection on the chroma scale: within 1/1024 of the largest


def _pixelwise(fn, image: np.ndarray) -> np.ndarray:
    """Applies a per-pixel OpenCV conversion to an array of shape (..., H, W, 3)."""
    image = np.ascontiguousarray(image, dtype=np.float32)
    if image.ndim < 2 or image.shape[-1] != 3:
        raise ValueError(f"expected (..., W, 3) with 3 channels last, got shape {image.shape}")
    # cvtColor takes one 2-D image; the conversion is per pixel, so fold leading dims into rows.
    flat = image.reshape(-1, image.shape[-2], 3)
    return fn(flat).reshape(image.shape)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """float32 RGB in [0, 1] -> Lab (L in [0, 100])."""
    return _pixelwise(lambda x: cv2.cvtColor(x, cv2.COLOR_RGB2Lab), rgb)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """Lab -> float32 RGB, clipped to the [0, 1] gamut."""
    rgb = _pixelwise(lambda x: cv2.cvtColor(x, cv2.COLOR_Lab2RGB), lab)
    return np.clip(rgb, 0.0, 1.0)


def normalize_lab(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lab -> (L' of shape (..., 1), ab' of shape (..., 2)), both roughly in [-1, 1]."""
    lab = np.asarray(lab, np.float32)
    return lab[..., :1] / L_SCALE - 1.0, lab[..., 1:] / AB_SCALE


def denormalize_lab(l_norm: np.ndarray, ab_norm: np.ndarray) -> np.ndarray:
    """(L', ab') -> Lab, the inverse of ``normalize_lab``."""
    l_norm = np.asarray(l_norm, np.float32)
    ab_norm = np.asarray(ab_norm, np.float32)
    return np.concatenate([(l_norm + 1.0) * L_SCALE, ab_norm * AB_SCALE], axis=-1)


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] -> the Lab lightness rendered as neutral gray RGB in [0, 1] (3 channels).

    Using L (not a luma formula) keeps the gray image and the Lab model's input identical.
    """
    lab = rgb_to_lab(rgb)
    lab[..., 1:] = 0.0
    return lab_to_rgb(lab)


def lab_norm_to_rgb(l_norm: np.ndarray, ab_norm: np.ndarray) -> np.ndarray:
    """Normalised (L', ab') -> RGB in [0, 1]; the path from model output to a viewable image."""
    return lab_to_rgb(denormalize_lab(l_norm, np.clip(ab_norm, -127 / AB_SCALE, 127 / AB_SCALE)))


def rgb_to_uint8(rgb: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] -> uint8 with rounding."""
    return np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def _finv(f: np.ndarray) -> np.ndarray:
    delta = 6.0 / 29.0
    return np.where(f > delta, f * f * f, (3.0 * delta * delta) * (f - 4.0 / 29.0))


def _in_gamut(lightness: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether Lab pixels lie inside sRGB. Computed here, unclipped: OpenCV clips, hiding it.

    Channel by channel in float32: this runs on every pixel of every full-size output.
    """
    fy = (lightness + 16.0) / 116.0
    xyz = (_WHITE_D65[0] * _finv(fy + a / 500.0), _finv(fy), _WHITE_D65[2] * _finv(fy - b / 200.0))
    ok = np.ones(lightness.shape, bool)
    for row in _XYZ_TO_LINEAR_RGB:
        c = row[0] * xyz[0] + row[1] * xyz[1] + row[2] * xyz[2]
        ok &= (c >= -_GAMUT_TOLERANCE) & (c <= 1.0 + _GAMUT_TOLERANCE)
    return ok


def lab_to_rgb_in_gamut(lab: np.ndarray) -> np.ndarray:
    """Lab (..., H, W, 3) -> RGB in [0, 1], desaturating out-of-gamut pixels instead of clipping.

    Each out-of-gamut pixel keeps its L and hue; its a, b are scaled by (nearly) the largest
    factor in [0, 1] that brings it inside sRGB (neutral gray is inside for L in [0, 100]).
    """
    return fit_gamut(np.array(lab, np.float32))


def fit_gamut(lab: np.ndarray) -> np.ndarray:
    """``lab_to_rgb_in_gamut`` on a float32 array it may modify."""
    bad = ~_in_gamut(lab[..., 0], lab[..., 1], lab[..., 2])
    if bad.any():
        pixels = lab[bad]  # (M, 3): only the pixels that need it enter the search
        lo = np.zeros(len(pixels), np.float32)
        hi = np.ones(len(pixels), np.float32)
        for _ in range(_GAMUT_ITERATIONS):
            mid = 0.5 * (lo + hi)
            ok = _in_gamut(pixels[:, 0], mid * pixels[:, 1], mid * pixels[:, 2])
            lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
        pixels[:, 1:] *= lo[:, None]
        lab[bad] = pixels
    return lab_to_rgb(lab)
