"""A trained run's generator, ready to colorize images of any size: ``load_run(workdir)``.

``load_run`` reads ``<workdir>/config.json``, rebuilds the networks and restores only the
generator's parameters and BatchNorm statistics from the Orbax checkpoint (the discriminator,
the optimiser states and the data iterator stay on disk).

Any resolution (``Colorizer.colorize``): the network sees the image resized to the model's
square ``data.image_size``; its chroma (a, b) is upsampled to the input's size and recombined
with the input's own full-resolution L, so no detail is lost and the output's lightness is the
input's. Colour inputs are reduced to their L first (a user can re-colour a photo to compare).
Both task kinds end in chroma: ``lab`` predicts a'b' directly; for ``gray_rgb`` the predicted
RGB is converted to Lab and only its a, b are kept. Recombined colours outside the sRGB gamut
are desaturated (hue and L kept) rather than clipped per channel, which would change L.

Predictions run in inference mode (``make_predict``: running BatchNorm statistics), jitted once
for a fixed batch (the last batch is padded), with one batch in flight on the device while the
host recombines the previous one.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxcolor import colour, sharding
from jaxcolor.tasks import Task
from jaxcolor.train_state import NetState, build_gan, init_state
from jaxcolor.train_step import make_predict

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
# Written by the trainer next to the step folders: {"step": N, "metric": name, "value": v}.
BEST_STEP_FILE = "best_step.json"

Step = int | str | None  # None or "latest", "best", or a step number
K = TypeVar("K")



# ----------------------------------------------------------------------------- image helpers


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area interpolation when shrinking (as the data pipeline does), bilinear when enlarging."""
    h, w = image.shape[:2]
    shrink = width <= w and height <= h
    out = cv2.resize(image, (width, height),
                     interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out.reshape(height, width, *image.shape[2:])  # cv2 drops a trailing 1-channel axis


def recombine(lightness: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """Full-resolution L (H, W) and chroma ab (h, w, 2) of any size -> RGB (H, W, 3) in [0, 1].

    The chroma is resized to (H, W); L is used as is, so the output keeps the input's detail.
    """
    height, width = lightness.shape
    lab = np.empty((height, width, 3), np.float32)
    lab[..., 0] = lightness
    lab[..., 1:] = resize(np.asarray(ab, np.float32), width, height)
    return colour.fit_gamut(lab)


# ----------------------------------------------------------------------------- runs & steps


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a run saved in ``<workdir>/config.json``."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{workdir!r} is not a run directory: no {CONFIG_FILE}")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def _manager(workdir: str) -> ocp.CheckpointManager:
    directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{workdir!r} has no checkpoints ({directory} is missing)")
    # Read only (a run may be training while it is evaluated), and only the ``state`` item:
    # the Grain iterator ("data") is not needed here. Orbax warns that read-only is read-only.
    with _quiet_absl():
        return ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(read_only=True, create=False),
            item_names=("state",),
        )


@contextlib.contextmanager
def _quiet_absl():
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def resolve_step(workdir: str, step: Step, steps: Iterable[int]) -> int:
    """The checkpoint step ``step`` names in ``workdir``: latest (None), "best" or a number."""
    steps = sorted(steps)
    if not steps:
        raise FileNotFoundError(f"{workdir!r}: no complete checkpoint under {CHECKPOINT_DIR}/")
    if step is None or step == "latest":
        return steps[-1]
    if step == "best":
        path = os.path.join(workdir, CHECKPOINT_DIR, BEST_STEP_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{workdir!r}: no best checkpoint recorded ({path} is missing); "
                "use --step latest or a step number"
            )
        try:
            with open(path) as f:
                chosen = int(json.load(f)["step"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: expected {{\"step\": N, ...}} ({e})") from None
    else:
        try:
            chosen = int(step)
        except (TypeError, ValueError):
            raise ValueError(f"step must be 'latest', 'best' or a number, got {step!r}") from None
    if chosen not in steps:
        raise FileNotFoundError(f"{workdir!r}: no checkpoint at step {chosen} (have {steps})")
    return chosen


def parse_step(text: str | None) -> Step:
    """Command-line ``--step``: 'latest' (or empty), 'best', or an integer."""
    if text in (None, "", "latest", "best"):
        return None if text in (None, "", "latest") else "best"
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--step must be 'latest', 'best' or a number, got {text!r}") from None


# ----------------------------------------------------------------------------- the colorizer


@dataclasses.dataclass
class Prepared:
    """An input ready for the network: its full-resolution L and its model-size RGB."""

    lightness: np.ndarray  # (H, W) float32, L in [0, 100]
    small_rgb: np.ndarray  # (S, S, 3) float32 in [0, 1]


@dataclasses.dataclass
class Colorizer:
    """A run's generator with its task and a jitted, fixed-batch predict. See ``load_run``."""

    config: ml_collections.ConfigDict
    task: Task
    g: NetState
    step: int
    workdir: str
    batch_size: int
    _predict: Callable[[NetState, np.ndarray], jax.Array] = dataclasses.field(repr=False)

    @property
    def image_size(self) -> int:
        """The square resolution the network was trained at (``data.image_size``)."""
        return int(self.config.data.image_size)

    # -- model resolution

    def _dispatch(self, small_rgb: np.ndarray) -> tuple[jax.Array, np.ndarray]:
        """Starts the network on up to ``batch_size`` model-size images; returns without waiting."""
        n = len(small_rgb)
        cond = np.asarray(self.task.from_rgb(small_rgb), np.float32)
        if n < self.batch_size:  # same shape every call: one compile
            pad = np.zeros((self.batch_size - n, *cond.shape[1:]), np.float32)
            cond = np.concatenate([cond, pad])
        return self._predict(self.g, cond), cond

    def _chroma(self, out: jax.Array, cond: np.ndarray, n: int) -> np.ndarray:
        """Network output -> ab in Lab units (n, S, S, 2)."""
        out = np.asarray(out)[:n]
        if self.task.name == "lab":
            return np.clip(out * colour.AB_SCALE, -127.0, 127.0)
        # Any other task ends in RGB: keep only its chroma, L comes from the input.
        return colour.rgb_to_lab(self.task.to_rgb(cond[:n], out))[..., 1:]

    def predict_ab(self, small_rgb: np.ndarray) -> np.ndarray:
        """Model-size RGB (N, S, S, 3) in [0, 1] -> predicted ab (N, S, S, 2) in Lab units.

        Only the input's lightness reaches the network; its colours are ignored.
        """
        small_rgb = np.asarray(small_rgb, np.float32)
        chunks = []
        for start in range(0, len(small_rgb), self.batch_size):
            part = small_rgb[start : start + self.batch_size]
            out, cond = self._dispatch(part)
            chunks.append(self._chroma(out, cond, len(part)))
        return np.concatenate(chunks) if chunks else np.zeros((0, *small_rgb.shape[1:3], 2))

    def predict_rgb(self, rgb: np.ndarray) -> np.ndarray:
        """Model-size RGB (N, S, S, 3) in [0, 1] -> colorized RGB of the same shape.

        The output is the input's L with the predicted ab: what ``colorize`` gives at the
        model's resolution, and what ``evaluate`` measures.
        """
        rgb = np.asarray(rgb, np.float32)
        lightness = colour.rgb_to_lab(rgb)[..., 0]
        ab = self.predict_ab(rgb)
        return colour.lab_to_rgb_in_gamut(np.concatenate([lightness[..., None], ab], axis=-1))

    # -- any resolution

    def prepare(self, rgb: np.ndarray) -> Prepared:
        """Full-size RGB (H, W, 3) in [0, 1] -> its L and its model-size copy."""
        rgb = np.asarray(rgb, np.float32)
        if rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise ValueError(f"expected an RGB image (H, W, 3), got shape {rgb.shape}")
        size = self.image_size
        return Prepared(colour.rgb_to_lab(rgb)[..., 0], resize(rgb, size, size))

    def colorize(self, rgb: np.ndarray) -> np.ndarray:
        """RGB (or gray as RGB) image (H, W, 3) in [0, 1], any size -> colorized (H, W, 3)."""
        ((_, out),) = self.stream([(0, self.prepare(rgb))])
        return out

    def stream(
        self, items: Iterable[tuple[K, Prepared]], temporal_smoothing: float = 0.0
    ) -> Iterator[tuple[K, np.ndarray]]:
        """Colorizes ``(key, Prepared)`` items in order, batched; yields ``(key, RGB)``.

        With ``temporal_smoothing`` s > 0 (video frames), each item's chroma is blended with
        the previous ones: ab_t <- (1 - s) ab_t + s ab_{t-1}, an exponential moving average
        applied at model resolution (it commutes with the linear upsampling).
        """
        if not 0.0 <= temporal_smoothing <= 1.0:
            raise ValueError(f"temporal_smoothing must be in [0, 1], got {temporal_smoothing}")
        previous = None

        def finish(batch, out, cond):
            nonlocal previous
            chromas = []
            for chroma in self._chroma(out, cond, len(batch)):
                if temporal_smoothing > 0.0 and previous is not None:
                    chroma = (1.0 - temporal_smoothing) * chroma + temporal_smoothing * previous
                chromas.append(previous := chroma)
            # Full-size recombination is the host's heavy part; NumPy and OpenCV release the
            # GIL, so threads recombine the images of a batch in parallel.
            rgbs = pool.map(recombine, [p.lightness for _, p in batch], chromas)
            return [(key, rgb) for (key, _), rgb in zip(batch, rgbs, strict=True)]

        workers = max(1, min(self.batch_size, os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            pending = None
            for batch in chunked(items, self.batch_size):
                out, cond = self._dispatch(np.stack([p.small_rgb for _, p in batch]))
                # The device works on this batch while the host recombines the previous one.
                if pending is not None:
                    yield from finish(*pending)
                pending = (batch, out, cond)
            if pending is not None:
                yield from finish(*pending)


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def load_run(workdir: str, step: Step = None, batch_size: int = 8) -> Colorizer:
    """The generator of the run in ``workdir`` at checkpoint ``step``.

    Args:
      workdir: a run directory (``config.json`` and ``checkpoints/<step>/``).
      step: None or "latest" for the newest checkpoint, "best" for the one named in
        ``checkpoints/best_step.json``, or a step number.
      batch_size: images per device call; rounded up to a multiple of the local device count.

    Raises:
      FileNotFoundError: no config, no checkpoint, or no such step (the message says which).
    """
    config = read_config(workdir)
    gan = build_gan(config)
    manager = _manager(workdir)
    try:
        chosen = resolve_step(workdir, step, manager.all_steps())
        abstract = jax.eval_shape(
            lambda key: init_state(gan, key, config.data.image_size), jax.random.PRNGKey(0)
        )
        mesh = sharding.make_mesh(jax.local_devices())
        replicated = sharding.replicated(mesh)
        target = {
            "g": {
                "params": abstract.g.params,
                "batch_stats": abstract.g.batch_stats,
            }
        }
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), target
        )
        # Partial restore: only the generator's arrays are read from disk.
        restored = manager.restore(
            chosen,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=target,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True,
                )
            ),
        )["state"]["g"]
    finally:
        manager.close()

    g = NetState(restored["params"], restored["batch_stats"], opt_state=None)
    devices = jax.local_device_count()
    batch_size = -(-max(int(batch_size), 1) // devices) * devices
    predict = make_predict(gan)
    jitted = jax.jit(
        lambda g, cond: predict(g, cond, jax.random.PRNGKey(0)).astype(jnp.float32),
        in_shardings=(replicated, sharding.batch_sharded(mesh)),
        out_shardings=replicated,
    )
    return Colorizer(config, gan.task, g, chosen, os.path.abspath(workdir), batch_size, jitted)
