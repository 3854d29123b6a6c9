"""A colorizer on a pretrained encoder: EfficientNet-Lite0 (ImageNet) features under a U-Net
decoder that predicts a'b' from L'.

Encoder. The condition L' = L / 50 - 1 becomes the image an ImageNet network saw for a gray
photo: the neutral gray of lightness L in sRGB (exact CIE L -> Y -> sRGB transfer, 0..255),
replicated to three channels and normalised as the weights expect, ``(v - 127) / 128``
(``encoder_input``). ``EfficientNetLite.features`` gives its stage outputs at strides 2 to 32.
The encoder's BatchNorm always uses its running statistics (the pretrained ones, never updated):
the batch statistics of 8 crops of a few photos are a poor estimate of ImageNet's, and switching
a pretrained network to them changes its features more than fine-tuning at a small learning
rate does (a common choice, e.g. detectron2's FrozenBN). Its convolution kernels and BatchNorm
scales and offsets are trained once the optimiser unfreezes them (``jaxcolor.training.encoder``).

Decoder. From the stride-32 features up: nearest-neighbour upsampling x2, concatenation with the
encoder's features at that stride (at stride 2, also L' averaged over 2x2), two 3x3 Conv-BN-ReLU,
one block per stride (``decoder_features``: widths at strides 16, 8, 4, 2), a 3x3 conv to
``out_channels`` and tanh at half resolution, then bilinear upsampling x2 (half-pixel centres,
as the colorizer resizes chroma). Chroma at half resolution: a full-resolution block (16 wide)
cost as much as the rest of the decoder on a 2-core CPU at 128 px (BUILD.md), and the colorizer
recombines the predicted ab with the photo's own full-resolution L anyway. Nearest upsampling
+ conv rather than transposed convolutions: no checkerboard, and XLA:CPU's transposed-convolution
gradient is slow (``layers.ConvTranspose``).

H and W must be multiples of 32 (``SIZE_MULTIPLE``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcolor.models.efficientnet import EfficientNetLite, pretrained_variables
from jaxcolor.models.layers import Conv, batch_norm

SIZE_MULTIPLE = 32  # the encoder's deepest stride
ENCODER = "encoder"  # the encoder's top-level name in the generator's params and batch_stats
DECODER_FEATURES = (128, 64, 48, 32)


def encoder_input(cond: jax.Array) -> jax.Array:
    """L' (N, H, W, 1) in [-1, 1] -> the encoder's input (N, H, W, 3): the neutral gray sRGB value
    v in [0, 255] of lightness L = (L' + 1) * 50, as ``(v - 127) / 128`` (ImageNet's input)."""
    lightness = jnp.clip((cond.astype(jnp.float32) + 1.0) * 50.0, 0.0, 100.0)
    # CIE L -> relative luminance Y (the inverse of L = 116 f(Y) - 16).
    f = (lightness + 16.0) / 116.0
    y = jnp.where(lightness > 8.0, f**3, lightness / 903.3)
    # Linear -> sRGB transfer function.
    v = jnp.where(y <= 0.0031308, 12.92 * y, 1.055 * jnp.power(jnp.maximum(y, 0.0031308),
                                                               1 / 2.4) - 0.055)
    x = (255.0 * v - 127.0) / 128.0
    return jnp.repeat(x, 3, axis=-1)


def _upsample2(x: jax.Array) -> jax.Array:
    """Nearest-neighbour x2 in H and W."""
    n, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, 2, w, 2, c))
    return x.reshape(n, 2 * h, 2 * w, c)


def _bilinear2(x: jax.Array, axis: int) -> jax.Array:
    """Bilinear x2 along ``axis`` with half-pixel centres and edge clamping: output 2i is
    0.75 x[i] + 0.25 x[i - 1], output 2i + 1 is 0.75 x[i] + 0.25 x[i + 1]."""
    n = x.shape[axis]
    take = lambda start, stop: jax.lax.slice_in_dim(x, start, stop, axis=axis)  # noqa: E731
    before = jnp.concatenate([take(0, 1), take(0, n - 1)], axis=axis)
    after = jnp.concatenate([take(1, n), take(n - 1, n)], axis=axis)
    pair = jnp.stack([0.75 * x + 0.25 * before, 0.75 * x + 0.25 * after], axis=axis + 1)
    shape = list(x.shape)
    shape[axis] = 2 * n
    return pair.reshape(shape)


def upsample_bilinear2(x: jax.Array) -> jax.Array:
    """Bilinear x2 in H and W of NHWC ``x`` (as ``jax.image.resize``'s "bilinear" for an exact
    doubling, antialiasing being irrelevant when upsampling), also for symbolic shapes."""
    return _bilinear2(_bilinear2(x, 1), 2)


def _avg_pool2(x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class EfficientUNet(nn.Module):
    """L' (N, H, W, 1) -> tanh output (N, H, W, out_channels), float32; see the module doc."""

    out_channels: int = 2
    decoder_features: Sequence[int] = DECODER_FEATURES
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, cond: jax.Array, *, train: bool) -> jax.Array:
        _, height, width, _ = cond.shape
        if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
            raise ValueError(f"EfficientUNet: image size {height}x{width} is not a multiple of "
                             f"{SIZE_MULTIPLE}")
        encoder = EfficientNetLite(dtype=self.dtype, name=ENCODER)
        feats = list(encoder.features(encoder_input(cond), train=False))
        if len(self.decoder_features) != len(feats) - 1:
            raise ValueError(f"EfficientUNet: decoder_features needs {len(feats) - 1} widths "
                             f"(strides 16 ... 2), got {tuple(self.decoder_features)}")
        feats[0] = jnp.concatenate([feats[0], _avg_pool2(cond).astype(self.dtype)], axis=-1)
        h = feats.pop()
        for features in self.decoder_features:
            h = jnp.concatenate([_upsample2(h), feats.pop()], axis=-1)
            for _ in range(2):
                h = Conv(features, (3, 3), use_bias=False, dtype=self.dtype)(h)
                h = nn.relu(batch_norm(train, self.dtype)(h))
        h = jnp.tanh(Conv(self.out_channels, (3, 3), dtype=self.dtype)(h).astype(jnp.float32))
        return upsample_bilinear2(h)


def encoder_variables(weights: str | os.PathLike) -> dict:
    """The pretrained encoder's ``params`` and ``batch_stats``, placed where ``EfficientUNet``
    keeps them (under ``ENCODER``); ``weights`` as for ``pretrained_variables``."""
    lite = pretrained_variables(weights, head=False)
    return {collection: {ENCODER: tree} for collection, tree in lite.items()}
