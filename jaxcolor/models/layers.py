"""Layers shared by every network: pix2pix/DCGAN initialisation, BatchNorm settings, and the
convolutions, which run in the per-backend formulation of ``jaxcolor.models.kernels``."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcolor.models import kernels

# Conv weights N(0, 0.02); BatchNorm scale N(1, 0.02), bias 0 (Radford et al.; Isola et al.).
conv_init = nn.initializers.normal(stddev=0.02)


def bn_scale_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """BatchNorm scale ~ N(1, 0.02)."""
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def batch_norm(train: bool, dtype=jnp.float32) -> nn.BatchNorm:
    """BatchNorm with PyTorch's defaults (momentum 0.1 there is 0.9 here, eps 1e-5).

    Under ``jax.jit`` with the batch sharded over a mesh, the batch mean and variance are taken
    over the *global* batch (XLA inserts the cross-device reduction), so statistics do not depend
    on the device count.
    """
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        # Two-pass variance: E[x^2] - E[x]^2 cancels catastrophically when |mean| >> std, which
        # made gradients depend on the summation order (device count) by several percent.
        use_fast_variance=False,
        scale_init=bn_scale_init,
        dtype=dtype,
        param_dtype=jnp.float32,
    )


def spectral(layer: nn.Module, on: bool, train: bool):
    """``layer`` as a function of its input; with ``on``, its kernel spectrally normalised
    (Miyato et al. 2018, ``flax.linen.SpectralNorm``: one power iteration per call, its vectors
    kept in the ``batch_stats`` collection and advanced only in training)."""
    if not on:
        return layer
    return lambda x: nn.SpectralNorm(layer)(x, update_stats=train)


class Conv(nn.Module):
    """``flax.linen.Conv`` (NHWC, same parameter names, shapes and initialisation: pix2pix's
    N(0, 0.02) kernel, zero bias) computed by ``kernels.conv2d`` in the backend's formulation."""

    features: int
    kernel_size: tuple[int, int]
    strides: int | tuple[int, int] = 1
    padding: str | int | tuple = "SAME"
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        strides = self.strides if isinstance(self.strides, int) else self.strides[0]
        if not isinstance(self.strides, int) and len(set(self.strides)) != 1:
            raise ValueError(f"Conv: equal strides only, got {self.strides}")
        kernel = self.param("kernel", conv_init, (kh, kw, x.shape[-1], self.features), jnp.float32)
        padding = kernels.explicit_padding(self.padding, x.shape, (kh, kw), strides)
        y = kernels.conv2d(x.astype(self.dtype), kernel.astype(self.dtype), strides, padding)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


def subpixel_conv_transpose(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``lax.conv_transpose(x, kernel, (2, 2), 'SAME')`` for a 4x4 HWIO kernel, computed as four
    stride-1 2x2 convolutions, one per output phase, interleaved (depth-to-space).

    With lax's 'SAME' padding (2 before and after the dilated input), output row 2q + r takes
    taps r and r + 2 from input rows q - 1 + r and q + r; likewise for columns.
    """
    n, h, w, _ = x.shape
    pads = ((1, 0), (0, 1))  # phase 0 reads rows q-1, q; phase 1 reads rows q, q+1
    phases = [
        [
            kernels.conv2d(x, kernel[r::2, s::2], 1, (pads[r], pads[s]))
            for s in (0, 1)
        ]
        for r in (0, 1)
    ]
    y = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)  # (n, h, 2, w, 2, c)
    return y.reshape(n, 2 * h, 2 * w, kernel.shape[-1])


class ConvTranspose(nn.Module):
    """4x4 stride-2 'SAME' transposed convolution (doubles H and W), same parameters as
    ``flax.linen.ConvTranspose``.

    XLA's CPU backend computes the gradient of a transposed convolution very slowly (about 50x
    its forward pass here), so the layer can run as the mathematically identical four sub-pixel
    2x2 convolutions (``subpixel_conv_transpose``), same multiply count. ``subpixel=None``
    follows ``kernels.transpose_impl()``, chosen per backend by measurement.
    """

    features: int
    kernel_size: tuple[int, int] = (4, 4)
    strides: tuple[int, int] = (2, 2)
    padding: str = "SAME"
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    subpixel: bool | None = None  # None: kernels.transpose_impl()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if (tuple(self.kernel_size), tuple(self.strides), self.padding) != ((4, 4), (2, 2), "SAME"):
            raise ValueError("ConvTranspose supports kernel 4x4, stride 2, 'SAME' padding only")
        kernel = self.param(
            "kernel", conv_init, (4, 4, x.shape[-1], self.features), jnp.float32
        ).astype(self.dtype)
        x = x.astype(self.dtype)
        subpixel = (kernels.transpose_impl() == "subpixel") if self.subpixel is None \
            else self.subpixel
        if subpixel:
            y = subpixel_conv_transpose(x, kernel)
        else:
            y = jax.lax.conv_transpose(
                x, kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return y


class DepthwiseConv(nn.Module):
    """k x k depthwise convolution without bias, 'SAME' padding (TensorFlow's: the extra row and
    column after); the parameter is ``flax.linen.Conv``'s with ``feature_group_count`` equal to
    the channels, (k, k, 1, C); computed by ``kernels.depthwise_conv2d``."""

    kernel: int
    strides: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, c = self.kernel, x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, c), jnp.float32)
        padding = kernels.explicit_padding("SAME", x.shape, (k, k), self.strides)
        return kernels.depthwise_conv2d(x.astype(self.dtype), kernel.astype(self.dtype),
                                        self.strides, padding)
