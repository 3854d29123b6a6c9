"""TEMPORARY adapter for the serve branch: the issue-8 ``jaxcolor.load`` contract over
today's ``inference.load_run``. No shape buckets (one program per render size). The integrator
deletes this file at merge, when the real ``jaxcolor.load`` exists.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxcolor import colour, data
from jaxcolor.inference import load_run


class ShimModel:
    """Implements the contract's attributes and ``colorize``/``colorize_many``."""

    def __init__(self, path: str, step=None, *, batch_size: int = 8):
        self._run = load_run(path, step, batch_size)
        self.device_calls = 0
        predict = self._run._predict

        def counted(g, cond):
            self.device_calls += 1
            return predict(g, cond)

        self._run._predict = counted
        self.image_size = self._run.image_size
        self.batch_size = self._run.batch_size
        self.max_programs = 1
        self.metadata = {
            "task": self._run.task.name, "experiment": self._run.config.experiment,
            "image_size": self.image_size, "step": self._run.step, "source": "run",
            "metrics": None,
        }

    def _colorizer(self, render_size):
        if render_size in (None, self.image_size):
            return self._run
        if render_size < 8 or render_size % 4:
            raise ValueError(f"render_size must be a multiple of 4, at least 8; got {render_size}")
        config = self._run.config.copy_and_resolve_references()
        config.data.image_size = int(render_size)
        return dataclasses.replace(self._run, config=config)

    def colorize_many(self, images, *, render_size=None):
        run = self._colorizer(render_size)
        arrays = [x if isinstance(x, np.ndarray) else data.load_image(x) for x in images]
        floats = []
        for a in arrays:
            if a.dtype in (np.uint8, np.uint16):
                floats.append(a.astype(np.float32) / np.iinfo(a.dtype).max)
            elif a.min() < 0 or a.max() > 1:
                raise ValueError("float images must lie in [0, 1]")
            else:
                floats.append(a.astype(np.float32))
        floats = [np.broadcast_to(f.reshape(*f.shape[:2], -1), (*f.shape[:2], 3)) for f in floats]
        outs = [rgb for _, rgb in run.stream((i, run.prepare(f)) for i, f in enumerate(floats))]
        result = []
        for a, rgb in zip(arrays, outs, strict=True):
            if a.dtype == np.uint8:
                result.append(colour.rgb_to_uint8(rgb))
            elif a.dtype == np.uint16:
                result.append(np.round(np.clip(rgb, 0, 1) * 65535).astype(np.uint16))
            else:
                result.append(rgb.astype(np.float32))
        return result

    def colorize(self, image, *, render_size=None):
        return self.colorize_many([image], render_size=render_size)[0]


def load(path: str, step=None, *, batch_size: int = 8) -> ShimModel:
    """The contract's ``jaxcolor.load`` (runs only; no exported folders)."""
    return ShimModel(path, step, batch_size=batch_size)
