"""Convolution kernels with a choice of formulation: XLA's native op, or one XLA's CPU backend
differentiates faster. Every formulation computes the same function with the same parameters.

* ``"native"``: ``lax.conv_general_dilated`` and XLA's own gradients.
* ``"fast"``: the same forward pass and input gradient, but the *weight* gradient as one matmul
  per kernel tap over a shifted (strided) view of the input: XLA's CPU weight-gradient kernel is
  a slow path (about a third of the forward pass's FLOP/s for 3x3, 128-channel layers). 4x4
  stride-2 convolutions (the U-Net, PatchGAN and DCGAN encoders) first become 2x2 stride-1
  convolutions on a space-to-depth view of the padded input, so that their input gradient is a
  plain stride-1 convolution too.

``conv_impl()`` is ``"native"`` on every backend: the whole train step was no faster with
``"fast"`` on the CPUs measured (BUILD.md), although single weight gradients were; ``--kernels
both`` re-measures on another machine.
``use_conv_impl`` overrides the choice while a function is traced (benchmarks, tests). JAX
caches traces per function, so a function traced once keeps its formulation: compare them with
a new function (or a static argument) per formulation.

Transposed convolutions (4x4, stride 2) have their own choice, ``transpose_impl()``:
``"native"`` (``lax.conv_transpose``) or ``"subpixel"`` (four stride-1 2x2 convolutions, one per
output phase; ``jaxcolor.models.layers.subpixel_conv_transpose``). ``TRANSPOSE_BY_BACKEND``
holds the choice measured per backend with ``python -m jaxcolor.benchmark --transpose both``
(BUILD.md has the figures): sub-pixel on CPU (XLA's CPU gradient of the native op is a slow
path) and on NVIDIA GPUs (jax-ml/jax#23783). TPUs, not measured, keep the native op.
``use_transpose_impl`` overrides the choice.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
from jax import lax

Padding = tuple[tuple[int, int], tuple[int, int]]
IMPLS = ("native", "fast")
TRANSPOSE_IMPLS = ("native", "subpixel")
# Measured per backend (BUILD.md, "GPU"); a backend not named here gets "native".
TRANSPOSE_BY_BACKEND = {"cpu": "subpixel", "gpu": "subpixel"}
# Depthwise convolutions (EfficientNet's MBConv): on a 2-core CPU, XLA's grouped convolution
# took 10-50x longer than the shifted-taps sum in the forward pass and both gradients
# (BUILD.md, "A colorizer on the pretrained encoder"); other backends are not measured.
DEPTHWISE_IMPLS = ("native", "taps")
DEPTHWISE_BY_BACKEND = {"cpu": "taps"}
_DN = ("NHWC", "HWIO", "NHWC")
_override: list[str] = []
_transpose_override: list[str] = []


def conv_impl() -> str:
    """The formulation used now: an active ``use_conv_impl``, else "native" (every backend)."""
    if _override:
        return _override[-1]
    return "native"


def transpose_impl() -> str:
    """The transposed-convolution formulation used now: an active ``use_transpose_impl``, else
    ``TRANSPOSE_BY_BACKEND`` for the default backend."""
    if _transpose_override:
        return _transpose_override[-1]
    return TRANSPOSE_BY_BACKEND.get(jax.default_backend(), "native")


@contextlib.contextmanager
def _pushed(stack: list[str], impl: str, choices: tuple[str, ...], what: str) -> Iterator[None]:
    if impl not in choices:
        raise ValueError(f"{what} impl {impl!r} is unknown; choose one of {choices}")
    stack.append(impl)
    try:
        yield
    finally:
        stack.pop()


def use_conv_impl(impl: str) -> contextlib.AbstractContextManager[None]:
    """Trace convolutions with ``impl`` (one of ``IMPLS``) inside the ``with`` block."""
    return _pushed(_override, impl, IMPLS, "conv")


def use_transpose_impl(impl: str) -> contextlib.AbstractContextManager[None]:
    """Trace transposed convolutions with ``impl`` (one of ``TRANSPOSE_IMPLS``) inside the
    ``with`` block."""
    return _pushed(_transpose_override, impl, TRANSPOSE_IMPLS, "transpose")


@contextlib.contextmanager
def use_impls(conv: str | None = None, transpose: str | None = None) -> Iterator[None]:
    """Both choices at once; None leaves that one as it is."""
    with contextlib.ExitStack() as stack:
        if conv:
            stack.enter_context(use_conv_impl(conv))
        if transpose:
            stack.enter_context(use_transpose_impl(transpose))
        yield


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """XLA/TensorFlow 'SAME' padding of one spatial dimension (the extra pixel goes after)."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _native(x: jax.Array, w: jax.Array, stride: int, padding: Padding) -> jax.Array:
    return lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=_DN)


def weight_grad(x: jax.Array, g: jax.Array, kernel: tuple[int, int], stride: int,
                padding: Padding) -> jax.Array:
    """d(sum(g * conv(x, w))) / dw, HWIO, as one (C_in x M) @ (M x C_out) matmul per tap."""
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    n, ho, wo, _ = g.shape
    c = x.shape[-1]
    taps = [
        [
            jnp.einsum(
                "nhwc,nhwo->co",
                lax.slice(xp, (0, ky, kx, 0),
                          (n, ky + stride * (ho - 1) + 1, kx + stride * (wo - 1) + 1, c),
                          (1, stride, stride, 1)),
                g,
                preferred_element_type=jnp.promote_types(x.dtype, jnp.float32),
            )
            for kx in range(kernel[1])
        ]
        for ky in range(kernel[0])
    ]
    return jnp.stack([jnp.stack(row) for row in taps]).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_fast_wgrad(x: jax.Array, w: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """``lax.conv_general_dilated`` (NHWC, HWIO) whose weight gradient is ``weight_grad``."""
    return _native(x, w, stride, padding)


def _fwd(x, w, stride, padding):
    return _native(x, w, stride, padding), (x, w)


def _bwd(stride, padding, res, g):
    x, w = res
    (dx,) = jax.vjp(lambda x: _native(x, w, stride, padding), x)[1](g)
    return dx, weight_grad(x, g, w.shape[:2], stride, padding).astype(w.dtype)


conv_fast_wgrad.defvjp(_fwd, _bwd)


def space_to_depth_conv(x: jax.Array, w: jax.Array, padding: Padding, conv) -> jax.Array:
    """A 4x4 stride-2 convolution as a 2x2 stride-1 ``conv`` on the space-to-depth view of the
    padded input (4x the channels): the same products, summed in a different order."""
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    n, h, wd, c = xp.shape
    if h % 2 or wd % 2:  # an odd padded size: the last row/column is never read at stride 2
        xp = xp[:, : h - h % 2, : wd - wd % 2]
        n, h, wd, c = xp.shape
    xs = xp.reshape(n, h // 2, 2, wd // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    xs = xs.reshape(n, h // 2, wd // 2, 4 * c)
    # kernel[2a + r, 2b + s] -> tap (a, b), channel block (r, s), matching the view above.
    k = w.reshape(2, 2, 2, 2, c, w.shape[-1]).transpose(0, 2, 1, 3, 4, 5)
    return conv(xs, k.reshape(2, 2, 4 * c, w.shape[-1]), 1, ((0, 0), (0, 0)))


def conv2d(x: jax.Array, w: jax.Array, stride: int, padding: Padding,
           impl: str | None = None) -> jax.Array:
    """NHWC x HWIO convolution with explicit padding, in the formulation ``impl``
    (default ``conv_impl()``)."""
    impl = impl or conv_impl()
    if impl == "native":
        return _native(x, w, stride, padding)
    if w.shape[:2] == (4, 4) and stride == 2:
        return space_to_depth_conv(x, w, padding, conv_fast_wgrad)
    return conv_fast_wgrad(x, w, stride, padding)


def depthwise_impl() -> str:
    """The depthwise-convolution formulation for the default backend: ``DEPTHWISE_BY_BACKEND``,
    else "native"."""
    return DEPTHWISE_BY_BACKEND.get(jax.default_backend(), "native")


def depthwise_conv2d(x: jax.Array, w: jax.Array, stride: int, padding: Padding,
                     impl: str | None = None) -> jax.Array:
    """Depthwise NHWC convolution (one k x k filter per channel; ``w`` is (k, k, 1, C), as
    ``flax.linen.Conv`` with ``feature_group_count=C`` stores it) with explicit padding.

    ``"taps"`` sums the k*k shifted (strided) views of the input times their per-channel weights,
    which XLA fuses into one elementwise loop; ``"native"`` is XLA's grouped convolution
    (``DEPTHWISE_IMPLS``; default ``depthwise_impl()``)."""
    impl = impl or depthwise_impl()
    if impl not in DEPTHWISE_IMPLS:
        raise ValueError(f"depthwise impl {impl!r} is unknown; choose one of {DEPTHWISE_IMPLS}")
    if impl == "native":
        return lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=_DN,
                                        feature_group_count=x.shape[-1])
    kh, kw = w.shape[:2]
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    n, h, wd, c = xp.shape
    ho, wo = (h - kh) // stride + 1, (wd - kw) // stride + 1
    acc, out = jnp.promote_types(x.dtype, jnp.float32), None
    for ky in range(kh):
        for kx in range(kw):
            view = lax.slice(xp, (0, ky, kx, 0),
                             (n, ky + stride * (ho - 1) + 1, kx + stride * (wo - 1) + 1, c),
                             (1, stride, stride, 1))
            # Summed in float32 at least (bfloat16 compute accumulates k*k terms).
            term = view.astype(acc) * w[ky, kx, 0].astype(acc)
            out = term if out is None else out + term
    return out.astype(x.dtype)


def explicit_padding(padding, x_shape: Sequence[int], kernel: tuple[int, int],
                     stride: int) -> Padding:
    """Flax-style ``padding`` (SAME, VALID, an int or pairs) as ((top, bottom), (left, right))."""
    if padding == "SAME":
        return tuple(same_padding(x_shape[1 + i], kernel[i], stride) for i in range(2))
    if padding == "VALID":
        return ((0, 0), (0, 0))
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return tuple(tuple(p) if not isinstance(p, int) else (p, p) for p in padding)
