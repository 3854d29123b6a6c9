"""Image folders -> batches of normalised Lab and RGB, streamed by Grain.

* ``find_splits`` lists photos recursively and splits them: the Flickr1024 layout
  (``Train/``, ``Validation/``, ``Test/``) is used as is; any other folder gets a deterministic
  held-out split keyed by file name, with stereo views (``0001_L``/``0001_R``) kept together.
  Without a folder, the built-in sample photos (from scikit-image, no download) are used.
* ``load_rgb`` decodes with OpenCV and handles 8/16-bit, alpha and grayscale sources deliberately.
* ``train_iterator`` is a checkpointable Grain iterator: shuffled, sharded by process, optionally
  augmented (resize, random crop, flip), with multiprocess workers. A file that cannot be used is
  skipped, and its name and the reason travel with the next batch (key ``skipped``), so the
  trainer counts and reports it; training never sees a garbage array.

Examples are dicts of float32 arrays: ``lab`` (L' a' b', see ``colour``) and ``rgb`` in [-1, 1],
both (H, W, 3). Transforms here are plain top-level classes: Grain workers pickle them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import re
from collections.abc import Sequence

import cv2
import grain
import numpy as np

from jaxcolor import colour

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "validation", "test")
# Folder names of the Flickr1024 layout (matched case-insensitively).
FLICKR_SPLIT_DIRS = {"train": "train", "validation": "validation", "test": "test"}

# Built-in sample photos: real colour photos shipped inside scikit-image (no download).
SAMPLE_PREFIX = "skimage:"
SAMPLE_SPLITS = {
    "train": (
        "astronaut",
        "rocket",
        "hubble_deep_field",
        "retina",
        "immunohistochemistry",
        "stereo_motorcycle_L",
        "stereo_motorcycle_R",
    ),
    "validation": ("coffee", "chelsea"),
    "test": ("coffee", "chelsea"),
}

# A pixel whose channels differ by less than this (of 1.0) carries no colour.
GRAYSCALE_TOLERANCE = 2.0 / 255.0


class BadImageError(ValueError):
    """A file that cannot be used as a training image; the message says why."""


# ----------------------------------------------------------------------------- listing & splits


def list_images(root: str) -> list[str]:
    """All image files under ``root`` (recursive, extensions in any case), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        found.extend(
            os.path.join(dirpath, f)
            for f in filenames
            if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
        )
    return sorted(found)


def _pair_key(path: str) -> str:
    """Name shared by the two views of a stereo pair (``0001_L.png`` and ``0001_R.png``)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return re.sub(r"_[LR]$", "", stem, flags=re.IGNORECASE)


def _held_out(key: str, fraction: float, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def find_splits(root: str | None, val_fraction: float = 0.1, seed: int = 0) -> dict[str, list[str]]:
    """Files of each split (``train``, ``validation``, ``test``) under ``root``.

    ``root=None`` gives the built-in sample photos. A folder with no image raises ValueError.
    """
    if root is None:
        return {s: [SAMPLE_PREFIX + n for n in names] for s, names in SAMPLE_SPLITS.items()}
    if not os.path.isdir(root):
        raise ValueError(f"data.dir={root!r} is not a directory")
    subdirs = {d.lower(): os.path.join(root, d) for d in os.listdir(root)}
    if "train" in subdirs and os.path.isdir(subdirs["train"]):
        splits = {s: list_images(subdirs[s]) if s in subdirs else [] for s in SPLITS}
        if not splits["train"]:
            raise ValueError(f"data.dir={root!r}: no image files ({', '.join(IMAGE_EXTENSIONS)}) "
                             f"under {subdirs['train']!r}")
        splits["validation"] = splits["validation"] or splits["test"]
        if splits["validation"]:
            return splits
        files = splits["train"]  # Train/ alone: hold out part of it as below
    else:
        files = list_images(root)
        if not files:
            raise ValueError(
                f"data.dir={root!r}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found"
            )
    held = _hold_out(files, val_fraction, seed)
    train = [f for f in files if f not in held] or files
    return {"train": train, "validation": sorted(held), "test": sorted(held)}


def _hold_out(files: list[str], fraction: float, seed: int) -> set[str]:
    """Deterministic held-out subset keyed by stereo-pair name; never empty for 2+ files."""
    held = [f for f in files if _held_out(_pair_key(f), fraction, seed)]
    if not held and len(files) > 1:
        # Tiny folders: hold out the pair that hashes lowest, so validation is never empty.
        first = min(files, key=lambda f: hashlib.sha256(_pair_key(f).encode()).digest())
        held = [f for f in files if _pair_key(f) == _pair_key(first)]
    return set(held or files)


# ----------------------------------------------------------------------------- decoding


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


@dataclasses.dataclass(frozen=True)
class Skipped:
    """Marker for an example that could not be made; travels to the trainer to be counted."""

    path: str
    reason: str


@dataclasses.dataclass(frozen=True)
class ExampleMaker:
    """path -> example dict (or ``Skipped``). Callable as a Grain map or random map.

    With ``augment`` and an rng: resize to ``image_size * (1 + crop_margin)``, random crop to
    ``image_size``, random horizontal flip. Otherwise: area resize straight to ``image_size``.
    """

    image_size: int
    augment: bool = False
    crop_margin: float = 0.125
    skip_grayscale: bool = True

    def __call__(self, path: str, rng: np.random.Generator | None = None):
        try:
            # Resize first, in the file's own depth: far cheaper than converting every pixel of
            # a large photo to float.
            rgb = to_float_rgb(self.resize(decode(path), rng if self.augment else None), path)
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
        big = int(round(size * (1.0 + self.crop_margin)))
        image = cv2.resize(image, (big, big), interpolation=cv2.INTER_AREA)
        top, left = rng.integers(0, big - size + 1, size=2)
        image = image[top : top + size, left : left + size]
        if rng.random() < 0.5:
            image = image[:, ::-1]
        return np.ascontiguousarray(image)


def make_example(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """RGB in [0, 1] -> {'lab': normalised Lab, 'rgb': RGB in [-1, 1]}, float32."""
    rgb = np.clip(rgb, 0.0, 1.0).astype(np.float32)
    l_norm, ab_norm = colour.normalize_lab(colour.rgb_to_lab(rgb))
    return {"lab": np.concatenate([l_norm, ab_norm], axis=-1), "rgb": rgb * 2.0 - 1.0}


# ----------------------------------------------------------------------------- batching


class _SkipAndBatchIterator(grain.DatasetIterator):
    """Collects ``batch_size`` good examples, passing over ``Skipped`` markers.

    The batch's ``skipped`` entry lists the reasons for the files passed over while filling it.
    State is the parent's state at a batch boundary, so checkpoints restore exactly.
    """

    def __init__(self, parent: grain.DatasetIterator, batch_size: int, max_consecutive: int):
        super().__init__(parent)
        self._batch_size = batch_size
        self._max_consecutive = max_consecutive

    def __next__(self) -> dict[str, np.ndarray]:
        good, skipped, consecutive = [], [], 0
        while len(good) < self._batch_size:
            element = next(self._parent)
            if isinstance(element, Skipped):
                skipped.append(element.reason)
                consecutive += 1
                if consecutive > self._max_consecutive:
                    raise RuntimeError(
                        f"{consecutive} files in a row could not be used (last: "
                        f"{element.reason}); is the data folder readable?"
                    )
                continue
            consecutive = 0
            good.append(element)
        batch = {k: np.stack([g[k] for g in good]) for k in good[0]}
        batch["skipped"] = np.asarray(skipped, dtype=np.str_)
        return batch

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state):
        self._parent.set_state(state)


class SkipAndBatch(grain.IterDataset):
    """Batches good examples and reports skipped ones (see ``_SkipAndBatchIterator``)."""

    def __init__(self, parent: grain.IterDataset, batch_size: int, max_consecutive: int):
        super().__init__(parent)
        self._batch_size = batch_size
        self._max_consecutive = max_consecutive

    def __iter__(self) -> _SkipAndBatchIterator:
        return _SkipAndBatchIterator(
            self._parent.__iter__(), self._batch_size, self._max_consecutive
        )


def train_dataset(
    files: Sequence[str],
    *,
    image_size: int,
    batch_size: int,
    seed: int,
    augment: bool = True,
    skip_grayscale: bool = True,
    num_workers: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """Endless, shuffled (reshuffled each epoch), per-process batches of ``batch_size`` examples.

    Process ``i`` of ``n`` reads only files ``i, i + n, ...``; ``batch_size`` is per process.
    """
    shard = list(files)[process_index::process_count]
    if not shard:
        raise ValueError(f"process {process_index} of {process_count} has no training file "
                         f"({len(files)} files in all)")
    maker = ExampleMaker(image_size, augment=augment, skip_grayscale=skip_grayscale)
    ds = grain.MapDataset.source(shard).seed(seed).shuffle().repeat(None)
    ds = ds.random_map(maker) if augment else ds.map(maker)
    # A few reader threads keep one or two batches ready; Grain's default (16 threads, 500
    # elements) would take the CPU from the train step on small machines.
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2 * batch_size))
    if num_workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():
            # Grain's worker pool reads absl flags; outside an absl app (tests, notebooks), use
            # their defaults instead of failing.
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    # Batch after the workers, in this process, so batches (and the checkpointed iterator
    # position) do not depend on the worker count.
    ds = SkipAndBatch(ds, batch_size, max_consecutive=max(len(shard), 16))
    return ds


def eval_batches(
    files: Sequence[str],
    *,
    image_size: int,
    batch_size: int,
    skip_grayscale: bool = True,
    max_images: int | None = None,
) -> tuple[list[dict[str, np.ndarray]], list[str]]:
    """Fixed evaluation batches (no augmentation), in file order, and the reasons for skipped files.

    The last batch is filled by wrapping around to the first images, so every batch has
    ``batch_size`` examples (what a sharded step needs); ``valid`` marks the real ones.
    """
    maker = ExampleMaker(image_size, augment=False, skip_grayscale=skip_grayscale)
    examples, skipped = [], []
    for path in files:
        example = maker(path)
        if isinstance(example, Skipped):
            skipped.append(example.reason)
        else:
            examples.append(example)
        if max_images is not None and len(examples) >= max_images:
            break
    if not examples:
        return [], skipped
    n = len(examples)
    padded = -(-n // batch_size) * batch_size
    batches = []
    for start in range(0, padded, batch_size):
        idx = [i % n for i in range(start, start + batch_size)]
        batch = {k: np.stack([examples[i][k] for i in idx]) for k in examples[0]}
        batch["valid"] = np.array([i < n for i in range(start, start + batch_size)])
        batches.append(batch)
    return batches, skipped


def check_usable(files: Sequence[str], what: str, skip_grayscale: bool = True) -> None:
    """Fails at start, naming ``what``, when none of ``files`` gives a usable image.

    Stops at the first usable file, so a healthy folder costs one decode.
    """
    maker = ExampleMaker(8, skip_grayscale=skip_grayscale)
    reasons = []
    for path in files:
        result = maker(path)
        if not isinstance(result, Skipped):
            return
        reasons.append(result.reason)
    shown = "; ".join(reasons[:3]) + (" ..." if len(reasons) > 3 else "")
    raise ValueError(f"{what}: none of {len(files)} image files is usable ({shown})")
