"""The generator's one jitted predict, batched over a mesh (``Predictor``), the rule that
turns a network output into chroma (``chroma``) and the colour strength applied to that chroma
(``scale_chroma``: every surface that renders a prediction goes through it)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcolor import colour
from jaxcolor.inference.inputs import round_up, to_rgb
from jaxcolor.tasks import Task

Variables = Any  # {"params": ..., "batch_stats": ...} or an exported model's weights

# Beyond twice the predicted chroma, gamut fitting desaturates most pixels back anyway.
MAX_COLOUR_STRENGTH = 2.0

# ----------------------------------------------------------------------------- chroma


def check_colour_strength(value: Any) -> float:
    """``value`` as a colour strength: a finite number in [0, MAX_COLOUR_STRENGTH], else a
    ValueError naming it."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or not 0.0 <= value <= MAX_COLOUR_STRENGTH:
        raise ValueError(f"colour_strength must be a finite number in [0, "
                         f"{MAX_COLOUR_STRENGTH:g}], got {value!r}")
    return float(value)


def scale_chroma(ab: np.ndarray, strength: float) -> np.ndarray:
    """The colour strength: predicted ab (Lab units) times ``strength``; L is never touched.

    0 gives ab = 0 exactly (the gray prediction), 1 the network's own chroma unchanged.
    """
    if strength == 1.0:
        return ab
    return np.asarray(ab, np.float32) * np.float32(strength)


def chroma(task: Task, cond: np.ndarray, out: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Network output -> predicted ab in Lab units, scaled by the colour ``strength``.
    RGB-output tasks keep only their chroma."""
    out = np.asarray(out, np.float32)
    if task.name == "lab":
        ab = np.clip(out * colour.AB_SCALE, -127.0, 127.0)
    else:
        ab = colour.rgb_to_lab(task.to_rgb(cond, out))[..., 1:]
    return scale_chroma(ab, strength)


def render_square(images: np.ndarray, ab: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Scoring: float RGB (N, S, S, 3) and their unscaled predicted ab (N, S, S, 2) -> the RGB
    prediction at colour ``strength`` (each image's own L, as ``to_rgb`` makes it)."""
    images = np.asarray(images, np.float32)
    return np.stack([to_rgb(image, scale_chroma(a, strength))
                     for image, a in zip(images, ab, strict=True)])


# ----------------------------------------------------------------------------- the predictor


class Predictor:
    """A generator's one jitted predict: ``(variables, cond) -> output``, batched over a mesh.

    ``apply`` is the generator in inference mode (a flax ``apply`` or an exported model's
    ``call``). Batches are padded to ``device count`` (one image) or ``batch_size``, so each
    input shape compiles at most two programs. With several processes (the trainer's multi-host
    validation), every process passes the same whole batch and feeds its slice.
    """

    def __init__(self, task: Task, apply: Callable[[Variables, jax.Array], jax.Array],
                 mesh: jax.sharding.Mesh, batch_size: int):
        from jaxcolor import sharding

        self.task, self.mesh = task, mesh
        devices = mesh.devices.size
        self.batch_sizes = sorted({devices, round_up(max(int(batch_size), 1), devices)})
        self.batch_size = self.batch_sizes[-1]
        self.device_calls = 0
        self._sharded = sharding.batch_sharded(mesh)
        self._jitted = jax.jit(
            lambda variables, cond: apply(variables, cond).astype(jnp.float32),
            in_shardings=(sharding.replicated(mesh), self._sharded),
            out_shardings=sharding.replicated(mesh),
        )

    def dispatch(self, variables: Variables, images: np.ndarray) -> tuple[jax.Array, np.ndarray]:
        """Starts the network on up to ``batch_size`` same-shape float RGB images (n, h, w, 3);
        returns (output future, condition) without waiting for the device."""
        n = len(images)
        if not 0 < n <= self.batch_size:
            raise ValueError(f"a device batch holds 1 to {self.batch_size} images, got {n}")
        cond = np.asarray(self.task.from_rgb(images), np.float32)
        padded = next(b for b in self.batch_sizes if b >= n)
        if n < padded:
            cond = np.concatenate([cond, np.zeros((padded - n, *cond.shape[1:]), np.float32)])
        if jax.process_count() > 1:
            rows = np.array_split(cond, jax.process_count())[jax.process_index()]
            cond_in = jax.make_array_from_process_local_data(self._sharded, rows)
        else:
            cond_in = cond
        self.device_calls += 1
        return self._jitted(variables, cond_in), cond[:n]

    def chroma(self, out: jax.Array, cond: np.ndarray, strength: float = 1.0) -> np.ndarray:
        """Waits for ``dispatch``'s output; predicted ab (n, h, w, 2) in Lab units, scaled by
        the colour ``strength``."""
        return chroma(self.task, cond, np.asarray(out)[: len(cond)], strength)

    def predict_chroma(self, variables: Variables, images: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Scoring: float RGB (N, S, S, 3) at the network size -> (unscaled predicted ab
        (N, S, S, 2), raw network output (N, S, S, C)). In chunks of ``batch_size``."""
        abs_, outs = [], []
        for start in range(0, len(images), self.batch_size):
            part = np.asarray(images[start : start + self.batch_size], np.float32)
            out, cond = self.dispatch(variables, part)
            outs.append(np.asarray(out)[: len(part)])
            abs_.append(chroma(self.task, cond, outs[-1]))
        return np.concatenate(abs_), np.concatenate(outs)

    def predict_square(self, variables: Variables, images: np.ndarray, strength: float = 1.0
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Scoring: float RGB (N, S, S, 3) at the network size -> (RGB (N, S, S, 3) at colour
        ``strength``, as ``render_square`` makes it, raw network output (N, S, S, C))."""
        ab, raw = self.predict_chroma(variables, images)
        return render_square(images, ab, strength), raw
