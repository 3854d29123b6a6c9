"""Layer defaults shared by every network: pix2pix/DCGAN initialisation and BatchNorm settings."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

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
        scale_init=bn_scale_init,
        dtype=dtype,
        param_dtype=jnp.float32,
    )


Conv = functools.partial(nn.Conv, kernel_init=conv_init, param_dtype=jnp.float32)

# Tap t of a 4-tap, stride-2 'SAME' transposed convolution feeds output phase t % 2 from input
# offset (t % 2 + t) // 2 - 1 (from lax's padding of 2 before, 2 after on the dilated input).
_PHASE = (0, 1, 0, 1)
_OFFSET = (0, 1, 1, 2)


def subpixel_kernel(kernel: jax.Array) -> jax.Array:
    """(4, 4, I, O) transposed-conv kernel -> (3, 3, I, 4 * O) stride-1 kernel whose output
    channels are the four (row phase, column phase) sub-pixel outputs."""
    kh, kw, cin, cout = kernel.shape
    out = jnp.zeros((3, 3, cin, 2, 2, cout), kernel.dtype)
    for t in range(4):
        for u in range(4):
            out = out.at[_OFFSET[t], _OFFSET[u], :, _PHASE[t], _PHASE[u], :].set(kernel[t, u])
    return out.reshape(3, 3, cin, 4 * cout)


class ConvTranspose(nn.Module):
    """4x4 stride-2 'SAME' transposed convolution (doubles H and W), same parameters as
    ``flax.linen.ConvTranspose``.

    XLA's CPU backend computes the gradient of a transposed convolution very slowly (about 50x
    its forward pass here), so on CPU the layer runs as the mathematically identical stride-1
    3x3 convolution into four sub-pixel phases plus a depth-to-space shuffle. Accelerators use
    the native op, which needs 16/36 of those multiplies.
    """

    features: int
    kernel_size: tuple[int, int] = (4, 4)
    strides: tuple[int, int] = (2, 2)
    padding: str = "SAME"
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    subpixel: bool | None = None  # None: on CPU only

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if (tuple(self.kernel_size), tuple(self.strides), self.padding) != ((4, 4), (2, 2), "SAME"):
            raise ValueError("ConvTranspose supports kernel 4x4, stride 2, 'SAME' padding only")
        kernel = self.param(
            "kernel", conv_init, (4, 4, x.shape[-1], self.features), jnp.float32
        ).astype(self.dtype)
        x = x.astype(self.dtype)
        subpixel = jax.default_backend() == "cpu" if self.subpixel is None else self.subpixel
        if subpixel:
            n, h, w, _ = x.shape
            y = jax.lax.conv_general_dilated(
                x, subpixel_kernel(kernel), (1, 1), ((1, 1), (1, 1)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            y = y.reshape(n, h, w, 2, 2, self.features).transpose(0, 1, 3, 2, 4, 5)
            y = y.reshape(n, 2 * h, 2 * w, self.features)
        else:
            y = jax.lax.conv_transpose(
                x, kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return y
