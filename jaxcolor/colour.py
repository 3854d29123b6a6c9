"""RGB <-> CIE Lab conversion (OpenCV, float32, D65) and the network's normalisation.

Conventions (REFERENCE.md section 2):
  * RGB is float32 in [0, 1], channels last, any leading batch dimensions.
  * Lab is float32 with L in [0, 100] and a, b roughly in [-127, 127].
  * The networks see L' = L / 50 - 1 and ab' = ab / 110, both roughly in [-1, 1].

Converting predicted Lab back to RGB can leave the sRGB gamut; ``lab_to_rgb`` clips to [0, 1].
All functions here are NumPy/OpenCV (host side): they run in data-loader workers, never under jit.
"""

from __future__ import annotations

import cv2
import numpy as np

L_SCALE = 50.0
AB_SCALE = 110.0


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
