"""The generator's one jitted predict, batched over a mesh (``Predictor``), and the rule that
turns a network output into chroma (``chroma``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcolor import colour
from jaxcolor.inference.inputs import round_up, to_rgb
from jaxcolor.tasks import Task

Variables = Any  # {"params": ..., "batch_stats": ...} or an exported model's weights

# ----------------------------------------------------------------------------- the predictor


def chroma(task: Task, cond: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Network output -> predicted ab in Lab units. RGB-output tasks keep only their chroma."""
    out = np.asarray(out, np.float32)
    if task.name == "lab":
        return np.clip(out * colour.AB_SCALE, -127.0, 127.0)
    return colour.rgb_to_lab(task.to_rgb(cond, out))[..., 1:]


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

    def chroma(self, out: jax.Array, cond: np.ndarray) -> np.ndarray:
        """Waits for ``dispatch``'s output; predicted ab (n, h, w, 2) in Lab units."""
        return chroma(self.task, cond, np.asarray(out)[: len(cond)])

    def predict_square(self, variables: Variables, images: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Scoring: float RGB (N, S, S, 3) at the network size -> (RGB (N, S, S, 3) as
        ``to_rgb`` makes it, raw network output (N, S, S, C)). In chunks of ``batch_size``."""
        rgbs, outs = [], []
        for start in range(0, len(images), self.batch_size):
            part = np.asarray(images[start : start + self.batch_size], np.float32)
            out, cond = self.dispatch(variables, part)
            raw = np.asarray(out)[: len(part)]
            outs.append(raw)
            for image, ab in zip(part, chroma(self.task, cond, raw), strict=True):
                rgbs.append(to_rgb(image, ab))
        return np.stack(rgbs), np.concatenate(outs)
