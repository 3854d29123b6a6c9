"""``Model``: a trained generator as a product (what ``jaxcolor.load`` returns)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import jax
import numpy as np

from jaxcolor.inference.inputs import (
    NetworkInput,
    as_image,
    bucket_lengths,
    network_input,
    to_rgb,
)
from jaxcolor.inference.predictor import Predictor, Variables, check_colour_strength
from jaxcolor.tasks import Task, get_task

K = TypeVar("K")
PIXEL_BUDGET = 64 << 20

# ----------------------------------------------------------------------------- the model API


@dataclasses.dataclass
class _Item:
    key: Any
    image: np.ndarray  # upright RGB, own depth
    dtype: Any  # output dtype
    net: NetworkInput


class Model:
    """A trained generator as a product: ``colorize`` / ``colorize_many`` (see ``jaxcolor.load``).

    Attributes: ``metadata`` (JSON-serialisable dict), ``image_size`` (training size, the default
    render size), ``colour_strength`` (the default chroma scale: the calibrated value stored for
    this checkpoint, ``metadata["colour_strength"]``, else 1.0), ``batch_size`` (images per
    device call), ``device_calls`` (predict calls so far), ``max_programs`` (bound on compiled
    programs per render size: shape buckets x batch buckets), ``max_pixels`` (None, or the
    largest input accepted: ``data.ImageTooLargeError`` beyond it, from the file header before
    decoding). Use one model from one thread at a time.
    """

    max_pixels: int | None = None

    def __init__(self, predictor: Predictor, variables: Variables, *, image_size: int,
                 multiple: int, metadata: dict[str, Any]):
        self._predictor = predictor
        self._variables = variables
        self.image_size = int(image_size)
        self.multiple = int(multiple)
        self.metadata = metadata
        self.colour_strength = check_colour_strength(metadata.get("colour_strength", 1.0))
        self._pool = concurrent.futures.ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)))

    @property
    def task(self) -> Task:
        """The model's task (what it maps from and to)."""
        return self._predictor.task

    @property
    def batch_size(self) -> int:
        """Images per device call."""
        return self._predictor.batch_size

    @property
    def device_calls(self) -> int:
        """Number of predict calls dispatched to the device so far."""
        return self._predictor.device_calls

    @property
    def max_programs(self) -> int:
        """Distinct compiled shapes per render size: (2 x long-side buckets - 1) x batch sizes."""
        return (2 * len(bucket_lengths(self.image_size, self.multiple)) - 1) * len(
            self._predictor.batch_sizes)

    def predict_square(self, images: np.ndarray, *, colour_strength: float | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Scoring: float RGB (N, S, S, 3) already at the training size -> (RGB as ``to_rgb``
        makes it, raw network output); see ``Predictor.predict_square``."""
        return self._predictor.predict_square(self._variables, images,
                                              self._strength(colour_strength))

    def predict_chroma(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scoring: float RGB (N, S, S, 3) at the training size -> (unscaled predicted ab, raw
        network output); ``predictor.render_square`` renders it at any colour strength."""
        return self._predictor.predict_chroma(self._variables, images)

    def _strength(self, colour_strength: float | None) -> float:
        if colour_strength is None:
            return self.colour_strength
        return check_colour_strength(colour_strength)

    def _render_size(self, render_size: int | None) -> int:
        if render_size is None:
            return self.image_size
        if not isinstance(render_size, int | np.integer) or not 16 <= render_size <= 8192:
            raise ValueError(f"render_size must be an integer in [16, 8192], got {render_size!r}")
        return int(render_size)

    def _item(self, key: Any, image: Any, name: str, size: int) -> _Item:
        rgb = as_image(image, name, self.max_pixels)
        dtype = rgb.dtype if rgb.dtype in (np.uint8, np.uint16) else np.float32
        return _Item(key, rgb, dtype, network_input(rgb, size, self.multiple))

    def colorize(self, image: Any, *, render_size: int | None = None,
                 colour_strength: float | None = None) -> np.ndarray:
        """One image -> colorized upright RGB (H, W, 3), same size and depth as the input.

        ``image``: a NumPy RGB (not BGR) array (H, W), (H, W, 1) or (H, W, 3) of uint8, uint16,
        float32 or float64 in [0, 1]; a PIL image; a path; encoded bytes; a binary file object.
        ``render_size``: the network sees the photo with this short side (default: the training
        size), aspect ratio kept. ``colour_strength``: the predicted chroma times this, in
        [0, 2] (default: ``self.colour_strength``); 0 gives the gray image, L is kept.
        uint8 -> uint8, uint16 -> uint16, float -> float32.
        """
        ((_, out),) = self.stream([(0, image)], render_size=render_size,
                                  colour_strength=colour_strength)
        return out

    def colorize_many(self, images: Sequence[Any], *, render_size: int | None = None,
                      colour_strength: float | None = None) -> list[np.ndarray]:
        """Several images (mixed sizes and kinds) -> their colorizations, in order.

        Images of the same shape bucket share device calls; decoded inputs held at once are
        bounded by a pixel budget, not by the number of images.
        """
        results: list[np.ndarray | None] = [None] * len(images)
        for index, out in self.stream(enumerate(images), render_size=render_size, ordered=False,
                                      colour_strength=colour_strength):
            results[index] = out
        return results  # type: ignore[return-value]

    def stream(self, items: Iterable[tuple[K, Any]], *, render_size: int | None = None,
               temporal_smoothing: float = 0.0, ordered: bool = True,
               on_error: Callable[[K, Exception], None] | None = None,
               colour_strength: float | None = None) -> Iterator[tuple[K, np.ndarray]]:
        """Colorizes ``(key, image)`` pairs; yields ``(key, RGB)``.

        ``ordered``: results come in input order and batches hold consecutive same-bucket
        images (videos); otherwise same-bucket images are gathered across the input. With
        ``temporal_smoothing`` s (ordered only), each chroma is blended with the previous ones:
        ab_t <- (1 - s) ab_t + s ab_{t-1}, at network resolution. ``on_error(key, error)``: an
        input that cannot be read is reported and skipped; without it, the error is raised.
        ``colour_strength``: see ``colorize``.
        """
        strength = self._strength(colour_strength)
        if not 0.0 <= temporal_smoothing <= 1.0:
            raise ValueError(f"temporal_smoothing must be in [0, 1], got {temporal_smoothing}")
        if temporal_smoothing and not ordered:
            raise ValueError("temporal_smoothing needs ordered=True")
        size = self._render_size(render_size)
        previous: list[np.ndarray | None] = [None]
        groups: dict[tuple, list[_Item]] = {}
        held = 0
        pending = None  # the batch on the device while the host finishes the previous one

        def finish(batch: list[_Item], out: jax.Array, cond: np.ndarray):
            chromas = self._predictor.chroma(out, cond, strength)
            for item, ab in zip(batch, chromas, strict=True):
                h, w = item.net.content
                ab = ab[:h, :w]
                if temporal_smoothing > 0.0:
                    if previous[0] is not None and previous[0].shape == ab.shape:
                        ab = (1.0 - temporal_smoothing) * ab + temporal_smoothing * previous[0]
                    previous[0] = ab
                yield item.key, to_rgb(item.image, ab, dtype=item.dtype, pool=self._pool)

        def launch(batch: list[_Item]):
            nonlocal pending, held
            out, cond = self._predictor.dispatch(
                self._variables, np.stack([item.net.rgb for item in batch]))
            done, pending = pending, (batch, out, cond)
            held -= sum(item.image.shape[0] * item.image.shape[1] for item in batch)
            if done is not None:
                yield from finish(*done)

        for position, (key, image) in enumerate(items):
            try:
                item = self._item(key, image, _name(key, image, position), size)
            except (ValueError, OSError) as e:
                if on_error is None:
                    raise
                on_error(key, e)
                continue
            shape = item.net.rgb.shape
            if ordered and groups and shape not in groups:
                for batch in groups.values():  # a new bucket: the previous run of items goes
                    yield from launch(batch)
                groups.clear()
            groups.setdefault(shape, []).append(item)
            held += item.image.shape[0] * item.image.shape[1]
            if len(groups[shape]) == self.batch_size:
                yield from launch(groups.pop(shape))
            while held > PIXEL_BUDGET and groups:
                largest = max(groups, key=lambda s: sum(i.image.size for i in groups[s]))
                yield from launch(groups.pop(largest))
        for batch in groups.values():
            yield from launch(batch)
        if pending is not None:
            yield from finish(*pending)


def _name(key: Any, image: Any, position: int) -> str:
    """How an input is named in messages: its path, else ``images[i]``."""
    if isinstance(image, str | os.PathLike):
        return os.fspath(image)
    return f"images[{key if isinstance(key, int) else position}]"


def make_model(task_name: str, apply: Callable[[Variables, jax.Array], jax.Array],
               variables: Variables, *, image_size: int, multiple: int, batch_size: int,
               metadata: dict[str, Any], devices: Sequence[Any] | None = None) -> Model:
    """A ``Model`` from a generator's apply function and its variables (placed once)."""
    from jaxcolor import sharding

    mesh = sharding.make_mesh(list(devices) if devices is not None else jax.local_devices())
    predictor = Predictor(get_task(task_name), apply, mesh, batch_size)
    variables = jax.device_put(variables, sharding.replicated(mesh))
    return Model(predictor, variables, image_size=image_size, multiple=multiple,
                 metadata=metadata)
