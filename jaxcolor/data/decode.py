"""Decoding image files: OpenCV, any depth, alpha and grayscale handled deliberately.

``decode`` reads a file (or a built-in ``skimage:<name>`` sample photo) into OpenCV's array;
``to_float_rgb`` turns it into float32 RGB in [0, 1]; ``load_rgb`` does both. Every failure is a
``BadImageError`` naming the file, so callers can skip and count bad files.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

# Built-in sample photos: real colour photos shipped inside scikit-image (no download).
SAMPLE_PREFIX = "skimage:"
# A pixel whose channels differ by less than this (of 1.0) carries no colour.
GRAYSCALE_TOLERANCE = 2.0 / 255.0


class BadImageError(ValueError):
    """A file that cannot be used as a training image; the message says why."""


@functools.lru_cache(maxsize=16)
def _sample_photo(name: str) -> np.ndarray:
    import skimage.data

    if name.startswith("stereo_motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return left if name.endswith("L") else right
    return getattr(skimage.data, name)()


def to_float_rgb(image: np.ndarray, path: str) -> np.ndarray:
    """OpenCV's decoded array (BGR/BGRA/gray, 8/16-bit/float) -> float32 RGB in [0, 1]."""
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        image = image.astype(np.float32) / 65535.0
    elif image.dtype in (np.float32, np.float64):
        image = np.clip(np.nan_to_num(image.astype(np.float32)), 0.0, 1.0)
    else:
        raise BadImageError(f"{path}: unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    channels = image.shape[-1]
    if channels == 1:
        return np.repeat(image, 3, axis=-1)
    if channels == 2:  # gray + alpha
        gray, alpha = image[..., :1], image[..., 1:]
        return np.repeat(gray * alpha + (1.0 - alpha), 3, axis=-1)
    if channels == 4:
        # Transparent pixels become white, as a viewer shows them on a page.
        bgr, alpha = image[..., :3], image[..., 3:]
        image = bgr * alpha + (1.0 - alpha)
    elif channels != 3:
        raise BadImageError(f"{path}: unsupported channel count {channels}")
    return np.ascontiguousarray(image[..., ::-1])


def decode(path: str) -> np.ndarray:
    """The file's pixels as OpenCV decodes them (BGR order, native depth, alpha kept).

    ``skimage:<name>`` gives a built-in sample photo (RGB reversed to BGR). Raises
    BadImageError naming the file for zero-byte, truncated, corrupt or unreadable files.
    """
    if path.startswith(SAMPLE_PREFIX):
        return _sample_photo(path[len(SAMPLE_PREFIX):])[..., ::-1]
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise BadImageError(f"{path}: cannot read ({e.strerror or e})") from e
    if raw.size == 0:
        raise BadImageError(f"{path}: empty file")
    image = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise BadImageError(f"{path}: not a decodable image (corrupt, truncated or wrong type)")
    return image


def load_rgb(path: str) -> np.ndarray:
    """Decodes ``path`` (or a ``skimage:<name>`` sample) to float32 RGB in [0, 1], (H, W, 3)."""
    return to_float_rgb(decode(path), path)


def is_grayscale(rgb: np.ndarray, tolerance: float = GRAYSCALE_TOLERANCE) -> bool:
    """True when no pixel's channels differ by more than ``tolerance``: nothing to learn from."""
    spread = rgb.max(axis=-1) - rgb.min(axis=-1)
    return bool(np.quantile(spread, 0.999) <= tolerance)
