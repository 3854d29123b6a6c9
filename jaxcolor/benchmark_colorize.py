"""Colorize time and peak memory for one big photo: ``python -m jaxcolor.benchmark_colorize``.

python -m jaxcolor.benchmark_colorize --workdir runs/lab_gan [--width 6000 --height 4000]
    [--repeats 3] [--render_size N]

Writes a synthetic JPEG of the given size (24 megapixels by default), loads the model, compiles
its shape bucket on a small image, then colorizes the file ``--repeats`` times and prints each
time, the best, the peak resident memory of the process and the load average (the figures are
only comparable on an otherwise idle machine).
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from collections.abc import Sequence

import cv2
import numpy as np

from jaxcolor.cli import run_app


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "Run folder or exported model.", required=True)
    flags.DEFINE_integer("width", 6000, "Photo width.", lower_bound=16)
    flags.DEFINE_integer("height", 4000, "Photo height.", lower_bound=16)
    flags.DEFINE_integer("repeats", 3, "Timed runs.", lower_bound=1)
    flags.DEFINE_integer("render_size", None, "Network short side (default: training size).")


def main(argv: Sequence[str]) -> None:
    """absl entry point: writes the photo, loads the model, times its colorize calls."""
    from absl import flags

    import jaxcolor

    del argv
    FLAGS = flags.FLAGS
    width, height = FLAGS.width, FLAGS.height
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    photo = np.stack([x / width * 255, y / height * 255, (x + y) % 255], -1).astype(np.uint8)
    del x, y
    path = os.path.join(tempfile.mkdtemp(), "photo.jpg")
    cv2.imwrite(path, photo[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    del photo
    model = jaxcolor.load(FLAGS.workdir)
    model.colorize(np.zeros((height // 10, width // 10, 3), np.uint8),
                   render_size=FLAGS.render_size)  # compile this aspect ratio's bucket
    times = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        out = model.colorize(path, render_size=FLAGS.render_size)
        times.append(time.perf_counter() - start)
        del out
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{width}x{height} ({width * height / 1e6:.1f} MP) file -> {model.metadata['experiment']}"
          f" colorize: {', '.join(f'{t:.2f}' for t in times)} s (best {min(times):.2f} s) | "
          f"peak RSS {peak:.0f} MB | {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}")


def run() -> None:
    """``python -m jaxcolor.benchmark_colorize``. No persistent compilation cache: the peak
    memory reported includes compiling, as in the figures BUILD.md records."""
    run_app(main, _define_flags, compile_cache=False)


if __name__ == "__main__":
    run()
