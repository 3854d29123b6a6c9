"""A prepared training-data cache: every photo decoded, checked and resized once, stored as uint8 in
an ArrayRecord file that Grain reads by index; random crop and flip still happen on the fly.

    python -m jaxcolor.data.cache --dir /path/to/photos --image_size 256 --out train.array_record
    python -m jaxcolor.train --config ... --config.data.cache=train.array_record

Each record is one ``stored_size`` x ``stored_size`` x 3 uint8 RGB image, ``stored_size`` being
the augmenting resize of ``ExampleMaker`` (``image_size * (1 + crop_margin)``), so the cached
path crops and flips exactly what the uncached one would. For random-resized crops
(``data.crop_scale``) store larger images (``--stored_size``, e.g. twice the image size): the
crops are then taken from them. Files that cannot be used are skipped
and listed in ``<out>.json`` beside the cache (with the sizes the cache was written for).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence

import cv2
import numpy as np

from jaxcolor.data.decoding import BadImageError, decode, is_grayscale, to_float_rgb
from jaxcolor.data.examples import (
    ExampleMaker,
    Skipped,
    augment_size,
    crop_flip,
    flip,
    make_example,
    random_resized_crop,
)


def stored_size(image_size: int, crop_margin: float = 0.125) -> int:
    """Side of the cached images: the augmenting resize of ``ExampleMaker``."""
    return augment_size(image_size, crop_margin)


def write_cache(files: Sequence[str], out: str, image_size: int, crop_margin: float = 0.125,
                skip_grayscale: bool = True, size: int | None = None) -> dict:
    """Decodes, checks and resizes ``files`` once into the ArrayRecord file ``out``; writes
    ``out + '.json'`` (sizes, count, skipped files) and returns that dict. ``size``: the stored
    side (default ``stored_size``; larger for random-resized crops)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    size = size or stored_size(image_size, crop_margin)
    skipped, count = [], 0
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    writer = ArrayRecordWriter(out, "group_size:1")  # one record per read: random access
    try:
        for path in files:
            try:
                image = cv2.resize(decode(path), (size, size), interpolation=cv2.INTER_AREA)
                rgb = to_float_rgb(image, path)
                if skip_grayscale and is_grayscale(rgb):
                    raise BadImageError(f"{path}: grayscale source (no colour to learn)")
            except Exception as e:  # noqa: BLE001 - one bad file must not stop the cache
                skipped.append(str(e) if isinstance(e, BadImageError) else f"{path}: {e}")
                continue
            writer.write(np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8).tobytes())
            count += 1
    finally:
        writer.close()
    meta = {"image_size": image_size, "stored_size": size, "crop_margin": crop_margin,
            "count": count, "skipped": skipped}
    with open(out + ".json", "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def read_meta(path: str, image_size: int) -> dict:
    """The cache's ``.json``; a clear error if it is missing or was written for another size."""
    try:
        with open(path + ".json") as f:
            meta = json.load(f)
    except OSError as e:
        raise ValueError(f"data.cache={path!r}: no readable {path}.json beside it ({e}); write "
                         f"the cache with python -m jaxcolor.data.cache") from e
    if meta["image_size"] != image_size:
        raise ValueError(f"data.cache={path!r} holds {meta['image_size']} px images but "
                         f"data.image_size={image_size}; write a cache for this size")
    if meta["count"] == 0:
        raise ValueError(f"data.cache={path!r} holds no usable image")
    return meta


@functools.cache
def _source(path: str):
    import grain

    return grain.sources.ArrayRecordDataSource(path)


@dataclasses.dataclass(frozen=True)
class CachedExampleMaker:
    """Record index -> example: the cached image, randomly cropped and flipped (``augment``) as
    ``ExampleMaker`` does after its resize, or area-resized to ``image_size``. Picklable: each
    Grain worker opens the cache itself."""

    path: str
    image_size: int
    stored_size: int
    augment: bool = True
    crop_scale: tuple[float, float] | None = None  # random-resized crops (ExampleMaker's)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __call__(self, index: int, rng: np.random.Generator | None = None):
        image = np.frombuffer(_source(self.path)[int(index)], np.uint8)
        if image.size != self.stored_size**2 * 3:
            return Skipped(f"{self.path}[{index}]", f"{self.path}: record {index} holds "
                           f"{image.size} bytes, not {self.stored_size}^2 x 3")
        image = image.reshape(self.stored_size, self.stored_size, 3)
        if self.augment and rng is not None and self.crop_scale is not None:
            image = flip(random_resized_crop(image, self.image_size, rng, self.crop_scale,
                                             self.crop_ratio), rng)
        elif self.augment and rng is not None:
            image = crop_flip(image, self.image_size, rng)
        else:
            image = ExampleMaker(self.image_size).resize(image, None)
        return make_example(image.astype(np.float32) / 255.0)


def cached_examples(path: str, image_size: int, augment: bool,
                    crop_scale: tuple[float, float] | None = None,
                    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
                    ) -> tuple[list[int], CachedExampleMaker]:
    """(record indices, their example maker) for ``train_dataset``'s ``cache``."""
    meta = read_meta(path, image_size)
    return list(range(meta["count"])), CachedExampleMaker(path, image_size, meta["stored_size"],
                                                          augment, crop_scale, crop_ratio)


def _define_flags() -> None:
    from absl import flags

    from jaxcolor.data.listing import SPLITS

    flags.DEFINE_string("dir", None, "Photo folder (as data.dir).", required=True)
    flags.DEFINE_string("out", None, "ArrayRecord file to write.", required=True)
    flags.DEFINE_integer("image_size", None, "data.image_size of the runs that will read it.",
                         required=True, lower_bound=1)
    flags.DEFINE_enum("split", "train", list(SPLITS), "Split of the folder to cache.")
    flags.DEFINE_bool("keep_grayscale", False, "Keep grayscale sources (data.skip_grayscale).")
    flags.DEFINE_integer("stored_size", None, "Side of the stored images (default: image_size * "
                         "1.125); larger for random-resized crops (data.crop_scale).",
                         lower_bound=1)


def main(argv: Sequence[str]) -> None:
    """absl entry point: writes the cache of ``--dir``'s ``--split``."""
    from absl import app, flags

    from jaxcolor.data.listing import find_splits

    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {list(argv[1:])}")
    files = find_splits(FLAGS.dir)[FLAGS.split]
    meta = write_cache(files, FLAGS.out, FLAGS.image_size,
                       skip_grayscale=not FLAGS.keep_grayscale,
                       size=FLAGS.stored_size)
    print(f"{FLAGS.out}: {meta['count']} images of {meta['stored_size']} px, "
          f"{len(meta['skipped'])} skipped")


def run() -> None:
    """``python -m jaxcolor.data.cache``; a folder problem ends with ``error: ...``, status 1."""
    from jaxcolor.cli import run_app

    run_app(main, _define_flags, compile_cache=False)


if __name__ == "__main__":
    run()
