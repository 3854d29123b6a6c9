"""Training-example throughput per CPU core, from full-size photos and from the prepared cache.

    python benchmarks/loader_speed.py [--dir PHOTOS] [--image_size 256] [--count 24]

Without ``--dir`` it writes ``--count`` synthetic 1600x1200 (1.9 megapixel) JPEGs to a temporary
folder. One thread (OpenCV limited to one thread too; timed in CPU seconds) runs the same
per-example work the reader threads or workers run (decode, resize, random crop and flip, Lab
conversion), first from the photos, then from the ArrayRecord cache of ``jaxcolor.data.cache``;
images/s per core and the number of cores a 2,000 images/s accelerator host would need are
printed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import cv2
import numpy as np

from jaxcolor.data import ExampleMaker, find_splits
from jaxcolor.data.cache import cached_examples, write_cache


def synthetic_photos(folder: str, count: int, width: int = 1600, height: int = 1200) -> list:
    """``count`` smooth, colourful JPEGs of ``width`` x ``height``."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        small = rng.integers(0, 256, (height // 50, width // 50, 3), dtype=np.uint8)
        image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
        image = cv2.add(image, rng.integers(0, 20, image.shape, dtype=np.uint8))  # texture
        path = os.path.join(folder, f"{i:04d}.jpg")
        cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def rate(maker, items, rounds: int = 2) -> float:
    """Examples per CPU-second of ``maker`` over ``items`` (best of ``rounds`` passes), one
    thread. CPU time, not wall time: on a shared machine it is what one core of our own gives."""
    best = 0.0
    for r in range(rounds):
        start = time.process_time()
        for i, item in enumerate(items):
            maker(item, np.random.default_rng(r * len(items) + i))
        best = max(best, len(items) / (time.process_time() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="photo folder (default: synthetic 1.9 MP JPEGs)")
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--target", type=float, default=2000.0, help="host images/s to feed")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        files = (find_splits(args.dir)["train"][: args.count] if args.dir
                 else synthetic_photos(tmp, args.count))
        h, w = cv2.imread(files[0]).shape[:2]
        photos = rate(ExampleMaker(args.image_size, augment=True), files)
        start = time.process_time()
        cache = os.path.join(tmp, "train.array_record")
        write_cache(files, cache, args.image_size)
        write_s = time.process_time() - start
        indices, maker = cached_examples(cache, args.image_size, augment=True)
        cached = rate(maker, indices)
    print(f"{len(files)} photos of {w}x{h} ({w * h / 1e6:.1f} MP) -> {args.image_size} px, "
          f"one core:")
    for name, r in (("photos", photos), ("cache", cached)):
        print(f"  {name:6s} {r:8.1f} images/s per core; {args.target:.0f} images/s needs "
              f"{args.target / r:.1f} cores")
    print(f"  writing the cache: {len(files) / write_s:.1f} photos/s (once)")


if __name__ == "__main__":
    main()
