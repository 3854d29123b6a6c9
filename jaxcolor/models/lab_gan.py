"""The origin project's LAB GAN: a plain Conv-BN-ReLU generator (L -> ab) and a DCGAN critic.

Generator layer list as the origin project gave it. Our kernel/stride choices (the origin gave
only channel counts):

  ======================  ======  ======  =====================
  layer                   kernel  stride  output (for H x W in)
  ======================  ======  ======  =====================
  Conv 1->32  BN ReLU     3x3     1       H x W
  Conv 32->64 BN ReLU     3x3     2       H/2 x W/2
  Conv 64->128 BN ReLU    3x3     2       H/4 x W/4
  10x Conv 128->128 BN    3x3     1       H/4 x W/4
  ConvT 128->64 BN ReLU   4x4     2       H/2 x W/2
  ConvT 64->32 BN ReLU    4x4     2       H x W
  Conv 32->2, tanh        3x3     1       H x W
  ======================  ======  ======  =====================

'SAME' padding everywhere, so the output size equals the input size for any H, W divisible by 4.
Convolutions followed by BatchNorm carry no bias (the BN shift replaces it).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcolor.models.layers import Conv, ConvTranspose, batch_norm, spectral


class LabGenerator(nn.Module):
    """Conv-BN-ReLU generator: (N, H, W, in_channels) in [-1, 1] -> (N, H, W, out_channels) tanh."""

    out_channels: int = 2
    features: Sequence[int] = (32, 64, 128)
    num_residual_free_blocks: int = 10  # the ten 128->128 blocks; no skips in the origin
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = x.astype(self.dtype)
        f1, f2, f3 = self.features
        for feats, stride in ((f1, 1), (f2, 2), (f3, 2)):
            x = Conv(feats, (3, 3), strides=stride, use_bias=False, dtype=self.dtype)(x)
            x = nn.relu(batch_norm(train, self.dtype)(x))
        for _ in range(self.num_residual_free_blocks):
            x = Conv(f3, (3, 3), use_bias=False, dtype=self.dtype)(x)
            x = nn.relu(batch_norm(train, self.dtype)(x))
        for feats in (f2, f1):
            x = ConvTranspose(feats, (4, 4), strides=(2, 2), use_bias=False, dtype=self.dtype)(x)
            x = nn.relu(batch_norm(train, self.dtype)(x))
        x = Conv(self.out_channels, (3, 3), dtype=self.dtype)(x)
        return jnp.tanh(x.astype(jnp.float32))


class DCGANDiscriminator(nn.Module):
    """Strided-conv critic on the condition and the (real or generated) output: one logit per image.

    Conv4 s2 (64, no norm) LReLU, then Conv4 s2 128/256/512 with BN and LReLU(0.2), global average
    pooling and a dense layer. Works for any input size divisible by 16. With ``spectral_norm``
    every layer is spectrally normalised and carries a bias, and there is no BatchNorm.
    """

    features: Sequence[int] = (64, 128, 256, 512)
    dtype: jnp.dtype = jnp.float32
    spectral_norm: bool = False

    @nn.compact
    def __call__(self, cond: jax.Array, image: jax.Array, *, train: bool) -> jax.Array:
        sn = self.spectral_norm
        x = jnp.concatenate([cond, image], axis=-1).astype(self.dtype)
        for i, feats in enumerate(self.features):
            conv = Conv(feats, (4, 4), strides=2, padding=1, use_bias=(i == 0 or sn),
                        dtype=self.dtype)
            x = spectral(conv, sn, train)(x)
            if i > 0 and not sn:
                x = batch_norm(train, self.dtype)(x)
            x = nn.leaky_relu(x, 0.2)
        x = jnp.mean(x, axis=(1, 2))
        dense = nn.Dense(1, kernel_init=nn.initializers.normal(0.02), dtype=self.dtype)
        return spectral(dense, sn, train)(x).astype(jnp.float32)
