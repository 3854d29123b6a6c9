"""Decoding image files: OpenCV, any depth, alpha and grayscale handled deliberately.

``decode`` reads a file, encoded bytes or a file object (or a built-in ``skimage:<name>``
sample photo) into OpenCV's array, upright (EXIF orientation applied);
``to_float_rgb`` turns it into float32 RGB in [0, 1]; ``load_rgb`` does both. Every failure is a
``BadImageError`` naming the file, so callers can skip and count bad files.
"""

from __future__ import annotations

import functools
import io
import os
import re
import sys
import warnings
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image

# Built-in sample photos: real colour photos shipped inside scikit-image (no download).
SAMPLE_PREFIX = "skimage:"
# A pixel whose channels differ by less than this (of 1.0) carries no colour.
GRAYSCALE_TOLERANCE = 2.0 / 255.0


class BadImageError(ValueError):
    """A file that cannot be used as a training image; the message says why."""


@functools.lru_cache(maxsize=16)
def _sample_photo(name: str) -> np.ndarray:
    """The built-in photo ``name`` in OpenCV's BGR order, contiguous (OpenCV resizes a reversed
    view several times slower), read-only (it is shared)."""
    import skimage.data

    if name.startswith("stereo_motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        rgb = left if name.endswith("L") else right
    else:
        rgb = getattr(skimage.data, name)()
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    bgr.flags.writeable = False
    return bgr


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


# What can be decoded: a path (or ``skimage:<name>``), encoded bytes, or a binary file object.
ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO

# EXIF orientation (tag 0x0112) -> the operation that makes the stored pixels upright.
# 1 is upright; 6 (phones held upright) is "rotate 90 degrees clockwise to view".
EXIF_ORIENTATION_TAG = 0x0112
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: np.swapaxes(a, 0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.swapaxes(a[::-1, ::-1], 0, 1),
    8: lambda a: np.rot90(a, 1),
}


class ImageTooLargeError(BadImageError):
    """An image with more pixels than allowed (a decompression-bomb guard); found in the header
    where the format allows, before the pixels are decoded."""

    def __init__(self, message: str, pixels: int):
        super().__init__(message)
        self.pixels = pixels


def source_name(source: ImageSource) -> str:
    """How messages name ``source``: its path, a file object's name, or ``<N bytes>``."""
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    if isinstance(source, bytes | bytearray | memoryview):
        return f"<{len(source)} bytes>"
    return str(getattr(source, "name", "<file object>"))


def read_encoded(source: ImageSource) -> np.ndarray:
    """The encoded bytes of ``source`` as a uint8 array; BadImageError if unreadable or empty."""
    name = source_name(source)
    try:
        if isinstance(source, str | os.PathLike):
            raw = np.fromfile(os.fspath(source), dtype=np.uint8)
        elif isinstance(source, bytes | bytearray | memoryview):
            raw = np.frombuffer(source, dtype=np.uint8)
        else:
            raw = np.frombuffer(source.read(), dtype=np.uint8)
    except OSError as e:
        raise BadImageError(f"{name}: cannot read ({e.strerror or e})") from e
    if raw.size == 0:
        raise BadImageError(f"{name}: empty file")
    return raw


def _header(raw: np.ndarray) -> tuple[tuple[int, int] | None, int]:
    """(width, height) and EXIF orientation from the header alone (PIL parses lazily), or
    (None, 1) where PIL cannot identify the format (OpenCV may still decode it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw.tobytes())) as im:
                try:
                    orientation = int(im.getexif().get(EXIF_ORIENTATION_TAG, 1))
                except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the photo
                    orientation = 1
                return im.size, orientation
    except Image.DecompressionBombError as e:  # PIL refuses > 2x its own limit at open
        found = re.search(r"\((\d+) pixels\)", str(e))
        return (int(found.group(1)) if found else sys.maxsize, 1), 1
    except Exception:  # noqa: BLE001 - unknown to PIL: let OpenCV try
        return None, 1


def _too_large(name: str, pixels: int, max_pixels: int) -> ImageTooLargeError:
    shown = "more than 2^62" if pixels >= sys.maxsize else f"{pixels:,}"
    return ImageTooLargeError(f"{name}: {shown} pixels, over the limit of {max_pixels:,}", pixels)


def decode(source: ImageSource, *, max_pixels: int | None = None) -> np.ndarray:
    """The image's pixels as OpenCV decodes them (BGR order, native depth, alpha kept), upright.

    ``source`` is a path (``skimage:<name>`` gives a built-in sample photo), encoded bytes or a
    binary file object. The EXIF orientation is applied (OpenCV's ``IMREAD_UNCHANGED`` ignores
    it), so phone photos come out upright. With ``max_pixels``, an image whose header declares
    more pixels raises ``ImageTooLargeError`` before any pixel is decoded.

    Raises BadImageError naming the source for empty, truncated, corrupt or unreadable input.
    """
    if isinstance(source, str) and source.startswith(SAMPLE_PREFIX):
        return _sample_photo(source[len(SAMPLE_PREFIX):])
    name = source_name(source)
    raw = read_encoded(source)
    size, orientation = _header(raw)
    if max_pixels is not None and size is not None and size[0] * size[1] > max_pixels:
        raise _too_large(name, size[0] * size[1], max_pixels)
    image = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise BadImageError(f"{name}: not a decodable image (corrupt, truncated or wrong type)")
    if max_pixels is not None and image.shape[0] * image.shape[1] > max_pixels:
        # A format whose header PIL could not read: checked after decoding, still refused.
        raise _too_large(name, image.shape[0] * image.shape[1], max_pixels)
    if orientation in _ORIENT:
        image = np.ascontiguousarray(_ORIENT[orientation](image))
    return image


def load_rgb(source: ImageSource, *, max_pixels: int | None = None) -> np.ndarray:
    """Decodes ``source`` (see ``decode``) to upright float32 RGB in [0, 1], (H, W, 3)."""
    return to_float_rgb(decode(source, max_pixels=max_pixels), source_name(source))


def load_image(source: ImageSource, *, max_pixels: int | None = None) -> np.ndarray:
    """Decodes ``source`` (see ``decode``) to upright RGB (H, W, 3) in its own depth.

    8-bit files give uint8, 16-bit files uint16, float files float32 in [0, 1]. Gray is
    replicated to 3 channels; transparent pixels are composited onto white (as ``to_float_rgb``).
    """
    image = decode(source, max_pixels=max_pixels)
    if image.dtype in (np.uint8, np.uint16):
        if image.ndim == 2 or image.shape[-1] == 1:
            return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
        if image.shape[-1] == 3:
            return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    rgb = to_float_rgb(image, source_name(source))
    if image.dtype in (np.uint8, np.uint16):  # alpha: composited in float, back to its depth
        top = np.iinfo(image.dtype).max
        return np.round(rgb * top).astype(image.dtype)
    return rgb


def is_grayscale(rgb: np.ndarray, tolerance: float = GRAYSCALE_TOLERANCE) -> bool:
    """True when no pixel's channels differ by more than ``tolerance``: nothing to learn from."""
    spread = rgb.max(axis=-1) - rgb.min(axis=-1)
    return bool(np.quantile(spread, 0.999) <= tolerance)
