"""Decoded photos -> training and evaluation batches of normalised Lab and RGB, via Grain.

``train_dataset`` is a checkpointable Grain dataset: shuffled, sharded by process, optionally
augmented (resize, random crop, flip), with multiprocess workers. A file that cannot be used is
skipped, and its name and the reason travel with the next batch (key ``skipped``), so the
trainer counts and reports it; training never sees a garbage array.

Examples are dicts of float32 arrays: ``lab`` (L' a' b', see ``colour``) and ``rgb`` in [-1, 1],
both (H, W, 3). Transforms here are plain top-level classes: Grain workers pickle them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import cv2
import grain
import numpy as np

from jaxcolor import colour
from jaxcolor.data.decode import BadImageError, decode, is_grayscale, to_float_rgb


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
    cache: str | None = None,
) -> grain.IterDataset:
    """Endless, shuffled (reshuffled each epoch), per-process batches of ``batch_size`` examples.

    Process ``i`` of ``n`` reads only files ``i, i + n, ...``; ``batch_size`` is per process.
    ``cache``: read the prepared ArrayRecord file of ``jaxcolor.data.cache`` instead of ``files``.
    """
    if cache:  # record indices stand for the files; same shuffle, crop and flip
        from jaxcolor.data.cache import cached_examples

        files, cached_maker = cached_examples(cache, image_size, augment)
    shard = list(files)[process_index::process_count]
    if not shard:
        raise ValueError(f"process {process_index} of {process_count} has no training file "
                         f"({len(files)} files in all)")
    maker = cached_maker if cache else ExampleMaker(image_size, augment=augment,
                                                    skip_grayscale=skip_grayscale)
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
