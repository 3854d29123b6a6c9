"""What a model maps from and to. A task splits a batch into (condition, target) on device and
turns network outputs back into RGB on the host.

Every batch from the loader holds ``lab`` (normalised L', a', b', see ``colour``) and ``rgb``
(in [-1, 1]), both (N, H, W, 3), so any task can be trained from the same data pipeline.

* ``lab``: L' -> a'b' (the LAB GAN and pix2pix_lab).
* ``gray_rgb``: gray replicated to 3 channels -> RGB (the origin's pix2pix variant).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from jaxcolor import colour

# ITU-R BT.601 luma, the weights of OpenCV's RGB2GRAY: what "a grayscale photo" means to most tools.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def luma(rgb):
    """Gray of RGB (any range), replicated to 3 channels; works on NumPy and jax arrays."""
    xp = np if isinstance(rgb, np.ndarray) else jnp
    y = (rgb * xp.asarray(LUMA_WEIGHTS, rgb.dtype)).sum(axis=-1, keepdims=True)
    return xp.repeat(y, 3, axis=-1)


@dataclasses.dataclass(frozen=True)
class Task:
    """A colorization task: channel counts, the batch split and the output-to-RGB mapping."""

    name: str
    cond_channels: int
    target_channels: int
    split: Callable[[dict], tuple]  # batch -> (cond, target), traced under jit
    to_rgb: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (cond, output) -> RGB [0, 1] host
    from_rgb: Callable[[np.ndarray], np.ndarray]  # RGB [0, 1] host -> cond, for inference


def _lab_from_rgb(rgb: np.ndarray) -> np.ndarray:
    return colour.normalize_lab(colour.rgb_to_lab(rgb))[0]


TASKS: dict[str, Task] = {
    "lab": Task(
        name="lab",
        cond_channels=1,
        target_channels=2,
        split=lambda b: (b["lab"][..., :1], b["lab"][..., 1:]),
        to_rgb=lambda cond, out: colour.lab_norm_to_rgb(cond, out),
        from_rgb=_lab_from_rgb,
    ),
    "gray_rgb": Task(
        name="gray_rgb",
        cond_channels=3,
        target_channels=3,
        split=lambda b: (luma(b["rgb"]), b["rgb"]),
        to_rgb=lambda cond, out: np.clip((np.asarray(out, np.float32) + 1.0) / 2.0, 0.0, 1.0),
        from_rgb=lambda rgb: luma(np.asarray(rgb, np.float32) * 2.0 - 1.0),
    ),
}


def get_task(name: str) -> Task:
    """The task called ``name``; a clear error names the config key ``data.task`` otherwise."""
    if name not in TASKS:  # config.check_choice's message; exported models load no ml_collections
        raise ValueError(f"config key data.task={name!r} is invalid: one of {sorted(TASKS)}")
    return TASKS[name]
