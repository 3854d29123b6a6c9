"""Images in and out of the network: any user input -> upright RGB, the network's view of it
(shape buckets), and the prediction back to full-resolution RGB (``to_rgb``)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
from typing import Any

import cv2
import numpy as np

from jaxcolor import colour, data

# Long side / short side of the shape buckets: 4:3 lands in 1.5, 16:9 in 2. Longer panoramas
# are squeezed into the 4:1 bucket (only the chroma is predicted there; L stays full size).
BUCKET_RATIOS = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0)
# Full-resolution pixels recombined per strip: bounds the float temporaries of ``to_rgb``.
STRIP_PIXELS = 1 << 20
# Full-resolution pixels held at once by ``Model.stream`` (decoded inputs awaiting their batch).

# ----------------------------------------------------------------------------- inputs


def _pil_to_array(image: Any) -> np.ndarray:
    """A PIL image -> upright RGB array (uint8, or uint16 for 16-bit gray), alpha on white."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image, np.uint16)
    if image.mode in ("I", "F"):
        raise ValueError(f"PIL mode {image.mode!r} is not supported; convert to 'RGB' or 'L'")
    if "A" in image.mode or image.mode == "P":
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"))


def as_image(image: Any, name: str = "image", max_pixels: int | None = None) -> np.ndarray:
    """Any supported input -> upright RGB (H, W, 3) of dtype uint8, uint16 or float32 in [0, 1].

    Arrays are taken as RGB (not OpenCV's BGR); (H, W) and (H, W, 1) are gray. Float arrays must
    lie in [0, 1]. Paths, bytes and binary file objects are decoded by ``data.load_image``
    (EXIF orientation applied). Raises ``data.BadImageError`` or ValueError naming ``name``;
    ``data.ImageTooLargeError`` beyond ``max_pixels`` (checked in the header before decoding).
    """
    if isinstance(image, str | os.PathLike | bytes | bytearray | memoryview | io.IOBase) or (
        hasattr(image, "read") and not isinstance(image, np.ndarray)
    ):
        return data.load_image(image, max_pixels=max_pixels)
    if type(image).__module__.startswith("PIL."):
        image = _pil_to_array(image)
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name}: expected a NumPy array, a PIL image, a path, bytes or a "
                         f"binary file object, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[..., None]
    if max_pixels is not None and image.ndim >= 2 and image.shape[0] * image.shape[1] > max_pixels:
        pixels = image.shape[0] * image.shape[1]
        raise data.ImageTooLargeError(
            f"{name}: {pixels:,} pixels, over the limit of {max_pixels:,}", pixels)
    if image.ndim != 3 or image.shape[-1] not in (1, 3) or 0 in image.shape:
        raise ValueError(f"{name}: expected an RGB (H, W, 3) or gray (H, W) / (H, W, 1) array, "
                         f"got shape {image.shape}")
    if image.dtype in (np.float32, np.float64):
        if not np.isfinite(image).all() or image.min() < 0.0 or image.max() > 1.0:
            raise ValueError(f"{name}: float images must be finite and in [0, 1] (got "
                             f"[{np.nanmin(image):g}, {np.nanmax(image):g}]); scale uint8 by "
                             "1/255 or pass the uint8 array itself")
        image = image.astype(np.float32, copy=False)
    elif image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{name}: unsupported dtype {image.dtype} (uint8, uint16, float32 or "
                         "float64 in [0, 1])")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image


def to_float(rgb: np.ndarray) -> np.ndarray:
    """RGB of any supported depth -> float32 in [0, 1]."""
    if rgb.dtype == np.uint8:
        return rgb.astype(np.float32) * np.float32(1.0 / 255.0)
    if rgb.dtype == np.uint16:
        return rgb.astype(np.float32) * np.float32(1.0 / 65535.0)
    return np.asarray(rgb, np.float32)


def from_float(rgb: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float RGB in [0, 1] -> ``dtype`` (uint8 / uint16 rounded, else float32)."""
    if dtype in (np.uint8, np.uint16):
        top = np.float32(np.iinfo(dtype).max)
        return np.rint(np.clip(rgb, 0.0, 1.0) * top).astype(dtype)
    return np.asarray(rgb, np.float32)


# ----------------------------------------------------------------------------- network input


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def bucket_lengths(size: int, multiple: int) -> list[int]:
    """The padded long sides of the buckets for network size ``size``, shortest first."""
    short = round_up(size, multiple)
    return sorted({round_up(int(np.ceil(short * r)), multiple) for r in BUCKET_RATIOS})


def bucket_shape(height: int, width: int, size: int, multiple: int
                 ) -> tuple[tuple[int, int], tuple[int, int]]:
    """Network view of an image: ((content h, w), (padded h, w)).

    The short side becomes ``size``, the long side keeps the aspect ratio, and the padded shape is
    the smallest bucket that holds it (an aspect ratio beyond the last bucket is squeezed).
    """
    landscape = width >= height
    short, long = (height, width) if landscape else (width, height)
    content_long = max(size, int(round(size * long / short)))
    lengths = bucket_lengths(size, multiple)
    padded_long = next((n for n in lengths if n >= content_long), lengths[-1])
    content_long = min(content_long, padded_long)
    padded_short = round_up(size, multiple)
    if landscape:
        return (size, content_long), (padded_short, padded_long)
    return (content_long, size), (padded_long, padded_short)


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area interpolation when shrinking (as the data pipeline does), bilinear when enlarging."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    shrink = width <= w and height <= h
    out = cv2.resize(image, (width, height),
                     interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out.reshape(height, width, *image.shape[2:])  # cv2 drops a trailing 1-channel axis


@dataclasses.dataclass(frozen=True)
class NetworkInput:
    """An image as the network sees it: float32 RGB (padded h, w, 3) and the content's (h, w)."""

    rgb: np.ndarray
    content: tuple[int, int]


def network_input(rgb: np.ndarray, size: int, multiple: int, *, square: bool = False
                  ) -> NetworkInput:
    """The one way an RGB image (any depth) is prepared for the network at network size ``size``.

    ``square``: resized to ``size`` x ``size`` (scoring, as in training). Otherwise the short side
    is ``size``, the aspect ratio kept, and the result padded (mirrored) to its shape bucket.
    Resizing runs in the image's own depth, before the float conversion (cheap on big photos).
    """
    if square:
        content = padded = (size, size)
    else:
        content, padded = bucket_shape(rgb.shape[0], rgb.shape[1], size, multiple)
    small = to_float(resize(rgb, content[1], content[0]))
    if padded != content:
        small = cv2.copyMakeBorder(small, 0, padded[0] - content[0], 0, padded[1] - content[1],
                                   cv2.BORDER_REFLECT_101 if min(content) > 1 else
                                   cv2.BORDER_REPLICATE)
    return NetworkInput(small, content)


# ----------------------------------------------------------------------------- output -> RGB


def _bilinear_map(dst: int, src: int) -> np.ndarray:
    """Source coordinates of ``cv2.resize``'s bilinear (half-pixel centres), clamped."""
    x = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    return np.clip(x, 0.0, src - 1).astype(np.float32)


def to_rgb(image: np.ndarray, ab: np.ndarray, *, dtype: Any = np.float32,
           pool: concurrent.futures.Executor | None = None,
           strip_pixels: int = STRIP_PIXELS) -> np.ndarray:
    """The one way a prediction becomes RGB: ``image``'s own L with the predicted chroma.

    Args:
      image: the input RGB (H, W, 3), uint8 / uint16 / float in [0, 1], any size.
      ab: predicted chroma in Lab units (h, w, 2), any size; bilinearly resized to (H, W).
      dtype: output dtype (uint8, uint16 or float32).
      pool: threads for the row strips (NumPy and OpenCV release the GIL).

    Out-of-gamut colours are desaturated (hue and L kept), never clipped per channel.
    """
    height, width = image.shape[:2]
    ab = np.ascontiguousarray(ab, np.float32)
    out = np.empty((height, width, 3), dtype)
    rows = max(1, strip_pixels // width)
    same = ab.shape[:2] == (height, width)
    if not same:
        map_x = _bilinear_map(width, ab.shape[1])
        map_y = _bilinear_map(height, ab.shape[0])

    def strip(top: int) -> None:
        bottom = min(height, top + rows)
        lab = colour.rgb_to_lab(to_float(image[top:bottom]))
        if same:
            lab[..., 1:] = ab[top:bottom]
        else:
            xs = np.ascontiguousarray(np.broadcast_to(map_x, (bottom - top, width)))
            ys = np.ascontiguousarray(np.broadcast_to(map_y[top:bottom, None],
                                                      (bottom - top, width)))
            lab[..., 1:] = cv2.remap(ab, xs, ys, cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REPLICATE)
        out[top:bottom] = from_float(colour.fit_gamut(lab), dtype)

    tops = range(0, height, rows)
    if pool is None or len(tops) == 1:
        for top in tops:
            strip(top)
    else:
        list(pool.map(strip, tops))
    return out
