"""One training example: a decoded photo -> resized (augmented: random crop and flip) ->
``{"lab", "rgb"}`` float32 arrays, or ``Skipped`` with the reason it cannot be used.

Examples are dicts of float32 arrays: ``lab`` (L' a' b', see ``colour``) and ``rgb`` in [-1, 1],
both (H, W, 3). The makers are plain top-level classes: worker processes pickle them.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from jaxcolor import colour
from jaxcolor.data.decoding import BadImageError, decode, is_grayscale, to_float_rgb


@dataclasses.dataclass(frozen=True)
class Skipped:
    """Marker for an example that could not be made; travels to the trainer to be counted."""

    path: str
    reason: str


@dataclasses.dataclass(frozen=True)
class ExampleMaker:
    """path -> example dict (or ``Skipped``). Callable as a Grain map or random map.

    With ``augment`` and an rng: resize to ``image_size * (1 + crop_margin)``, random crop to
    ``image_size``, random horizontal flip; with ``crop_scale`` instead a random-resized crop of
    the full-resolution photo (``random_resized_crop``), then the flip. Otherwise: area resize
    straight to ``image_size``.
    """

    image_size: int
    augment: bool = False
    crop_margin: float = 0.125
    skip_grayscale: bool = True
    max_pixels: int | None = None  # larger images are skipped, from the header when possible
    crop_scale: tuple[float, float] | None = None  # data.crop_scale; None: the margin crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # data.crop_ratio

    def __call__(self, path: str, rng: np.random.Generator | None = None):
        try:
            # Resize first, in the file's own depth: far cheaper than converting every pixel of
            # a large photo to float.
            image = decode(path, max_pixels=self.max_pixels)
            rgb = to_float_rgb(self.resize(image, rng if self.augment else None), path)
            if self.skip_grayscale and is_grayscale(rgb):
                raise BadImageError(f"{path}: grayscale source (no colour to learn)")
        except BadImageError as e:
            return Skipped(path, str(e))
        except Exception as e:  # noqa: BLE001 - a decoder bug must not end a long run
            return Skipped(path, f"{path}: {type(e).__name__}: {e}")
        return make_example(rgb)

    def resize(self, image: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """Square ``image_size`` image; random crop and flip when ``rng`` is given."""
        size = self.image_size
        if rng is None:
            return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        if self.crop_scale is not None:
            image = random_resized_crop(image, size, rng, self.crop_scale, self.crop_ratio)
            return flip(image, rng)
        big = augment_size(size, self.crop_margin)
        image = cv2.resize(image, (big, big), interpolation=cv2.INTER_AREA)
        return crop_flip(image, size, rng)


def augment_size(image_size: int, crop_margin: float) -> int:
    """Side of the augmenting resize, before the random ``image_size`` crop."""
    return int(round(image_size * (1.0 + crop_margin)))


def crop_flip(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``size`` x ``size`` crop of the square ``image``, flipped horizontally with
    probability 1/2: the one augmentation of photos and of cached images alike."""
    top, left = rng.integers(0, image.shape[0] - size + 1, size=2)
    return flip(image[top : top + size, left : left + size], rng)


def crop_box(height: int, width: int, rng: np.random.Generator, scale: tuple[float, float],
             ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop of ``scale`` of the area and aspect w/h in ``ratio``
    (log-uniform), as torchvision's RandomResizedCrop draws it: ten tries, then the largest
    centred crop of an aspect within ``ratio``."""
    area = height * width
    log_ratio = np.log(ratio)
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = float(np.exp(rng.uniform(*log_ratio)))
        w = int(round(np.sqrt(target * aspect)))
        h = int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator,
                        scale: tuple[float, float], ratio: tuple[float, float]) -> np.ndarray:
    """A ``crop_box`` of ``image`` (any size: the full photo or a cached one), area-resized to
    ``size`` x ``size``: far more distinct crops per photo than a fixed-margin crop."""
    top, left, h, w = crop_box(image.shape[0], image.shape[1], rng, scale, ratio)
    crop = image[top : top + h, left : left + w]
    interpolation = cv2.INTER_AREA if h >= size and w >= size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interpolation)


def flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``image`` flipped horizontally with probability 1/2."""
    return np.ascontiguousarray(image[:, ::-1] if rng.random() < 0.5 else image)


def make_example(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """RGB in [0, 1] -> {'lab': normalised Lab, 'rgb': RGB in [-1, 1]}, float32."""
    rgb = np.clip(rgb, 0.0, 1.0).astype(np.float32)
    l_norm, ab_norm = colour.normalize_lab(colour.rgb_to_lab(rgb))
    return {"lab": np.concatenate([l_norm, ab_norm], axis=-1), "rgb": rgb * 2.0 - 1.0}
