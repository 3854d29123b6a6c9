"""Where a run reports: TensorBoard (tensorboardX), PNG sample grids, the console.

Only process 0 writes; other processes get a ``Summary`` whose methods do nothing, so the trainer
calls them unconditionally.
"""

from __future__ import annotations

import os
import sys
import time

import cv2
import numpy as np

from jaxcolor import colour, runs


def image_grid(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """uint8 RGB grid from ``rows`` of equally sized RGB images in [0, 1]; white padding."""
    h, w = rows[0][0].shape[:2]
    ncols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h + pad) + pad, ncols * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y : y + h, x : x + w] = colour.rgb_to_uint8(img)
    return grid


def write_png(path: str, rgb_uint8: np.ndarray) -> None:
    """Writes an RGB uint8 image as PNG (OpenCV wants BGR)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if not cv2.imwrite(path, np.ascontiguousarray(rgb_uint8[..., ::-1])):
        raise OSError(f"could not write {path}")


def format_duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``42s``."""
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Summary:
    """TensorBoard scalars and images, PNG grids under ``<workdir>/samples``, a progress line."""

    def __init__(self, workdir: str, num_steps: int, start_step: int = 0, enabled: bool = True):
        self.workdir = workdir
        self.num_steps = num_steps
        self.start_step = start_step
        self.enabled = enabled
        self._writer = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(logdir=workdir, flush_secs=30)
        self._tty = sys.stdout.isatty()
        self._start = time.time()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Logs scalars; names with a ``/`` are grouped by TensorBoard."""
        if self._writer:
            for name, value in values.items():
                self._writer.add_scalar(name, float(value), step)

    def grid(self, step: int, name: str, rows: list[list[np.ndarray]]) -> str | None:
        """Logs an image grid to TensorBoard and ``samples/<name>_<step>.png``; returns the path."""
        if not self.enabled:
            return None
        grid = image_grid(rows)
        self._writer.add_image(name, grid, step, dataformats="HWC")
        path = runs.samples_path(self.workdir, f"{name}_{step:07d}.png")
        write_png(path, grid)
        return path

    def progress(self, step: int, values: dict[str, float], images_per_sec: float,
                 label: str = "") -> None:
        """One console line: step, ``label`` (the training phase), losses, throughput, ETA."""
        if not self.enabled:
            return
        elapsed = time.time() - self._start
        done = step / max(self.num_steps, 1)
        per_step = elapsed / max(step - self.start_step, 1)
        eta = (self.num_steps - step) * per_step
        shown = " ".join([label] * bool(label) + [f"{k} {v:.4g}" for k, v in values.items()])
        line = (
            f"[{step:>{len(str(self.num_steps))}}/{self.num_steps} {100 * done:5.1f}%] {shown} | "
            f"{images_per_sec:.1f} img/s | ETA {format_duration(eta)}"
        )
        print(("\r" + line) if self._tty else line, end="" if self._tty else "\n", flush=True)

    def message(self, text: str) -> None:
        """A line for the user (process 0 only)."""
        if self.enabled:
            if self._tty:
                print()
            print(text, flush=True)

    def close(self) -> None:
        """Flushes TensorBoard."""
        if self._writer:
            self._writer.close()
