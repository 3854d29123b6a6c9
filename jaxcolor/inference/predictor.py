"""How an image becomes a prediction: the one inference core, for every caller.

The trainer's validation, ``evaluate``, ``colorize``, the Python API (``jaxcolor.load``) and the
web service all go through this module:

1. ``as_image``: what a user hands in (NumPy array of any supported dtype and shape, PIL image,
   path, encoded bytes or a file object) -> upright RGB (H, W, 3) in its own depth.
2. ``network_input``: RGB -> the network's view at a network size: square ``size`` x ``size``
   for scoring, or the short side ``size`` with the aspect ratio kept (rendering), padded to the
   generator's multiple inside a *shape bucket* (``bucket_shape``) so that a long-running process
   compiles a bounded number of programs.
3. ``Predictor``: the generator's one jitted predict (``task.from_rgb`` -> network -> chroma
   in Lab units), batched, padded to a batch bucket.
4. ``to_rgb``: the input's own full-resolution L with the predicted ab (upsampled), fitted to
   the sRGB gamut by desaturating (L and hue kept). It works in row strips of a fixed pixel
   budget, so a 24-megapixel photo never has a full-size float copy in memory.

``Model`` (what ``jaxcolor.load`` returns) ties these together for one generator. This module
imports neither flax nor Orbax: an exported model runs with JAX alone.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from jaxcolor import colour, data
from jaxcolor.tasks import Task, get_task

K = TypeVar("K")

# Long side / short side of the shape buckets: 4:3 lands in 1.5, 16:9 in 2. Longer panoramas
# are squeezed into the 4:1 bucket (only the chroma is predicted there; L stays full size).
BUCKET_RATIOS = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0)
# Full-resolution pixels recombined per strip: bounds the float temporaries of ``to_rgb``.
STRIP_PIXELS = 1 << 20
# Full-resolution pixels held at once by ``Model.stream`` (decoded inputs awaiting their batch).
PIXEL_BUDGET = 64 << 20

Variables = Any  # {"params": ..., "batch_stats": ...} or an exported model's weights


# ----------------------------------------------------------------------------- inputs


def _pil_to_array(image: Any) -> np.ndarray:
    """A PIL image -> upright RGB array (uint8, or uint16 for 16-bit gray), alpha on white."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image, np.uint16)
    if image.mode in ("I", "F"):
        raise ValueError(f"PIL mode {image.mode!r} is not supported; convert to 'RGB' or 'L'")
    if "A" in image.mode or image.mode == "P":
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"))


def as_image(image: Any, name: str = "image", max_pixels: int | None = None) -> np.ndarray:
    """Any supported input -> upright RGB (H, W, 3) of dtype uint8, uint16 or float32 in [0, 1].

    Arrays are taken as RGB (not OpenCV's BGR); (H, W) and (H, W, 1) are gray. Float arrays must
    lie in [0, 1]. Paths, bytes and binary file objects are decoded by ``data.load_image``
    (EXIF orientation applied). Raises ``data.BadImageError`` or ValueError naming ``name``;
    ``data.ImageTooLargeError`` beyond ``max_pixels`` (checked in the header before decoding).
    """
    if isinstance(image, str | os.PathLike | bytes | bytearray | memoryview | io.IOBase) or (
        hasattr(image, "read") and not isinstance(image, np.ndarray)
    ):
        return data.load_image(image, max_pixels=max_pixels)
    if type(image).__module__.startswith("PIL."):
        image = _pil_to_array(image)
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name}: expected a NumPy array, a PIL image, a path, bytes or a "
                         f"binary file object, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[..., None]
    if max_pixels is not None and image.ndim >= 2 and image.shape[0] * image.shape[1] > max_pixels:
        pixels = image.shape[0] * image.shape[1]
        raise data.ImageTooLargeError(
            f"{name}: {pixels:,} pixels, over the limit of {max_pixels:,}", pixels)
    if image.ndim != 3 or image.shape[-1] not in (1, 3) or 0 in image.shape:
        raise ValueError(f"{name}: expected an RGB (H, W, 3) or gray (H, W) / (H, W, 1) array, "
                         f"got shape {image.shape}")
    if image.dtype in (np.float32, np.float64):
        if not np.isfinite(image).all() or image.min() < 0.0 or image.max() > 1.0:
            raise ValueError(f"{name}: float images must be finite and in [0, 1] (got "
                             f"[{np.nanmin(image):g}, {np.nanmax(image):g}]); scale uint8 by "
                             "1/255 or pass the uint8 array itself")
        image = image.astype(np.float32, copy=False)
    elif image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{name}: unsupported dtype {image.dtype} (uint8, uint16, float32 or "
                         "float64 in [0, 1])")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image


def to_float(rgb: np.ndarray) -> np.ndarray:
    """RGB of any supported depth -> float32 in [0, 1]."""
    if rgb.dtype == np.uint8:
        return rgb.astype(np.float32) * np.float32(1.0 / 255.0)
    if rgb.dtype == np.uint16:
        return rgb.astype(np.float32) * np.float32(1.0 / 65535.0)
    return np.asarray(rgb, np.float32)


def from_float(rgb: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float RGB in [0, 1] -> ``dtype`` (uint8 / uint16 rounded, else float32)."""
    if dtype in (np.uint8, np.uint16):
        top = np.float32(np.iinfo(dtype).max)
        return np.rint(np.clip(rgb, 0.0, 1.0) * top).astype(dtype)
    return np.asarray(rgb, np.float32)


# ----------------------------------------------------------------------------- network input


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def bucket_lengths(size: int, multiple: int) -> list[int]:
    """The padded long sides of the buckets for network size ``size``, shortest first."""
    short = _round_up(size, multiple)
    return sorted({_round_up(int(np.ceil(short * r)), multiple) for r in BUCKET_RATIOS})


def bucket_shape(height: int, width: int, size: int, multiple: int
                 ) -> tuple[tuple[int, int], tuple[int, int]]:
    """Network view of an image: ((content h, w), (padded h, w)).

    The short side becomes ``size``, the long side keeps the aspect ratio, and the padded shape is
    the smallest bucket that holds it (an aspect ratio beyond the last bucket is squeezed).
    """
    landscape = width >= height
    short, long = (height, width) if landscape else (width, height)
    content_long = max(size, int(round(size * long / short)))
    lengths = bucket_lengths(size, multiple)
    padded_long = next((n for n in lengths if n >= content_long), lengths[-1])
    content_long = min(content_long, padded_long)
    padded_short = _round_up(size, multiple)
    if landscape:
        return (size, content_long), (padded_short, padded_long)
    return (content_long, size), (padded_long, padded_short)


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area interpolation when shrinking (as the data pipeline does), bilinear when enlarging."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    shrink = width <= w and height <= h
    out = cv2.resize(image, (width, height),
                     interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out.reshape(height, width, *image.shape[2:])  # cv2 drops a trailing 1-channel axis


@dataclasses.dataclass(frozen=True)
class NetworkInput:
    """An image as the network sees it: float32 RGB (padded h, w, 3) and the content's (h, w)."""

    rgb: np.ndarray
    content: tuple[int, int]


def network_input(rgb: np.ndarray, size: int, multiple: int, *, square: bool = False
                  ) -> NetworkInput:
    """The one way an RGB image (any depth) is prepared for the network at network size ``size``.

    ``square``: resized to ``size`` x ``size`` (scoring, as in training). Otherwise the short side
    is ``size``, the aspect ratio kept, and the result padded (mirrored) to its shape bucket.
    Resizing runs in the image's own depth, before the float conversion (cheap on big photos).
    """
    if square:
        content = padded = (size, size)
    else:
        content, padded = bucket_shape(rgb.shape[0], rgb.shape[1], size, multiple)
    small = to_float(resize(rgb, content[1], content[0]))
    if padded != content:
        small = cv2.copyMakeBorder(small, 0, padded[0] - content[0], 0, padded[1] - content[1],
                                   cv2.BORDER_REFLECT_101 if min(content) > 1 else
                                   cv2.BORDER_REPLICATE)
    return NetworkInput(small, content)


# ----------------------------------------------------------------------------- output -> RGB


def _bilinear_map(dst: int, src: int) -> np.ndarray:
    """Source coordinates of ``cv2.resize``'s bilinear (half-pixel centres), clamped."""
    x = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    return np.clip(x, 0.0, src - 1).astype(np.float32)


def to_rgb(image: np.ndarray, ab: np.ndarray, *, dtype: Any = np.float32,
           pool: concurrent.futures.Executor | None = None,
           strip_pixels: int = STRIP_PIXELS) -> np.ndarray:
    """The one way a prediction becomes RGB: ``image``'s own L with the predicted chroma.

    Args:
      image: the input RGB (H, W, 3), uint8 / uint16 / float in [0, 1], any size.
      ab: predicted chroma in Lab units (h, w, 2), any size; bilinearly resized to (H, W).
      dtype: output dtype (uint8, uint16 or float32).
      pool: threads for the row strips (NumPy and OpenCV release the GIL).

    Out-of-gamut colours are desaturated (hue and L kept), never clipped per channel.
    """
    height, width = image.shape[:2]
    ab = np.ascontiguousarray(ab, np.float32)
    out = np.empty((height, width, 3), dtype)
    rows = max(1, strip_pixels // width)
    same = ab.shape[:2] == (height, width)
    if not same:
        map_x = _bilinear_map(width, ab.shape[1])
        map_y = _bilinear_map(height, ab.shape[0])

    def strip(top: int) -> None:
        bottom = min(height, top + rows)
        lab = colour.rgb_to_lab(to_float(image[top:bottom]))
        if same:
            lab[..., 1:] = ab[top:bottom]
        else:
            xs = np.ascontiguousarray(np.broadcast_to(map_x, (bottom - top, width)))
            ys = np.ascontiguousarray(np.broadcast_to(map_y[top:bottom, None],
                                                      (bottom - top, width)))
            lab[..., 1:] = cv2.remap(ab, xs, ys, cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REPLICATE)
        out[top:bottom] = from_float(colour.fit_gamut(lab), dtype)

    tops = range(0, height, rows)
    if pool is None or len(tops) == 1:
        for top in tops:
            strip(top)
    else:
        list(pool.map(strip, tops))
    return out


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
        self.batch_sizes = sorted({devices, _round_up(max(int(batch_size), 1), devices)})
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
    render size), ``batch_size`` (images per device call), ``device_calls`` (predict calls so
    far), ``max_programs`` (bound on compiled programs per render size: shape buckets x batch
    buckets), ``max_pixels`` (None, or the largest input accepted: ``data.ImageTooLargeError``
    beyond it, from the file header before decoding). Use one model from one thread at a time.
    """

    max_pixels: int | None = None

    def __init__(self, predictor: Predictor, variables: Variables, *, image_size: int,
                 multiple: int, metadata: dict[str, Any]):
        self._predictor = predictor
        self._variables = variables
        self.image_size = int(image_size)
        self.multiple = int(multiple)
        self.metadata = metadata
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

    def predict_square(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scoring: float RGB (N, S, S, 3) already at the training size -> (RGB as ``to_rgb``
        makes it, raw network output); see ``Predictor.predict_square``."""
        return self._predictor.predict_square(self._variables, images)

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

    def colorize(self, image: Any, *, render_size: int | None = None) -> np.ndarray:
        """One image -> colorized upright RGB (H, W, 3), same size and depth as the input.

        ``image``: a NumPy RGB (not BGR) array (H, W), (H, W, 1) or (H, W, 3) of uint8, uint16,
        float32 or float64 in [0, 1]; a PIL image; a path; encoded bytes; a binary file object.
        ``render_size``: the network sees the photo with this short side (default: the training
        size), aspect ratio kept. uint8 -> uint8, uint16 -> uint16, float -> float32.
        """
        ((_, out),) = self.stream([(0, image)], render_size=render_size)
        return out

    def colorize_many(self, images: Sequence[Any], *, render_size: int | None = None
                      ) -> list[np.ndarray]:
        """Several images (mixed sizes and kinds) -> their colorizations, in order.

        Images of the same shape bucket share device calls; decoded inputs held at once are
        bounded by a pixel budget, not by the number of images.
        """
        results: list[np.ndarray | None] = [None] * len(images)
        for index, out in self.stream(enumerate(images), render_size=render_size, ordered=False):
            results[index] = out
        return results  # type: ignore[return-value]

    def stream(self, items: Iterable[tuple[K, Any]], *, render_size: int | None = None,
               temporal_smoothing: float = 0.0, ordered: bool = True,
               on_error: Callable[[K, Exception], None] | None = None
               ) -> Iterator[tuple[K, np.ndarray]]:
        """Colorizes ``(key, image)`` pairs; yields ``(key, RGB)``.

        ``ordered``: results come in input order and batches hold consecutive same-bucket
        images (videos); otherwise same-bucket images are gathered across the input. With
        ``temporal_smoothing`` s (ordered only), each chroma is blended with the previous ones:
        ab_t <- (1 - s) ab_t + s ab_{t-1}, at network resolution. ``on_error(key, error)``: an
        input that cannot be read is reported and skipped; without it, the error is raised.
        """
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
            chromas = self._predictor.chroma(out, cond)
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
