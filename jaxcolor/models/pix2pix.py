"""Pix2Pix networks (Isola et al., CVPR 2017): the U-Net generator and the PatchGAN discriminator.

Both follow the reference implementation (junyanz/pytorch-CycleGAN-and-pix2pix, ``UnetGenerator``
and ``NLayerDiscriminator`` with BatchNorm) layer for layer, so parameter counts match it exactly.

U-Net with ``num_downs`` levels (ngf = ``base_features``), all convolutions 4x4 stride 2:

  encoder  C(ngf) - C(2ngf) - C(4ngf) - C(8ngf) - ... - C(8ngf)
           level 0 has no activation before it and no norm; the innermost level has LeakyReLU but
           no norm; every other level is LeakyReLU(0.2) -> conv -> BatchNorm.
  decoder  mirror image: ReLU -> transposed conv -> BatchNorm [-> dropout], then concatenation
           with the skip of the same level; the last level is ReLU -> transposed conv (with bias)
           -> tanh. Convolutions followed by BatchNorm, and all encoder convolutions, carry no bias.

Dropout (the generator's only noise source) sits, as in the reference's loop
``for i in range(num_downs - 5)``, in the ``num_downs - 5`` 8ngf decoder blocks just outside the
innermost one: three for the standard ``num_downs=8``, and *fewer* for smaller U-Nets (two for 7,
one for 6, none for 5, where the generator is deterministic). We keep the reference's choice
rather than forcing three, because with fewer levels there are no further 8ngf blocks to put it
in. ``num_downs`` below 5 is rejected, since the reference always builds at least five levels.

The innermost feature map is (H / 2**num_downs) x (W / 2**num_downs); H and W must be multiples of
2**num_downs (256 for the standard U-Net-256).

PatchGAN (ndf = ``base_features``): Conv4 s2 ndf (bias, no norm) LReLU, then ``n_layers - 1``
times Conv4 s2 min(2**n, 8)ndf BN LReLU, Conv4 s1 min(2**n_layers, 8)ndf BN LReLU, Conv4 s1 -> 1
(bias); padding 1 throughout. 70x70 receptive field and 30x30 logits at 256x256 for n_layers=3.
With ``spectral_norm`` every convolution is spectrally normalised and carries a bias, and there
is no BatchNorm (SN-GAN's critic: BatchNorm would rescale the normalised layers' outputs).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcolor.models.layers import Conv, ConvTranspose, batch_norm, spectral

_MIN_DOWNS = 5


def _check_size(height: int, width: int, num_downs: int) -> None:
    factor = 2**num_downs
    if height % factor == 0 and width % factor == 0:
        return
    # Largest number of halvings both sides allow (trailing zero bits).
    fits = min((height & -height).bit_length(), (width & -width).bit_length()) - 1
    hint = (
        f"use model.num_downs <= {fits}"
        if fits >= _MIN_DOWNS
        else f"resize or crop to a multiple of {2**_MIN_DOWNS} and use model.num_downs={_MIN_DOWNS}"
    )
    raise ValueError(
        f"UNetGenerator: image size {height}x{width} is not divisible by 2**model.num_downs = "
        f"{factor} (model.num_downs={num_downs}); {hint}"
    )


class UNetGenerator(nn.Module):
    """Pix2Pix U-Net: (N, H, W, C_in) in [-1, 1] -> (N, H, W, out_channels) tanh, float32."""

    out_channels: int
    num_downs: int = 8
    base_features: int = 64
    dropout_rate: float = 0.5
    dropout_at_inference: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        n = self.num_downs
        if n < _MIN_DOWNS:
            raise ValueError(f"UNetGenerator: model.num_downs={n} must be >= {_MIN_DOWNS}")
        _check_size(x.shape[1], x.shape[2], n)
        ngf = self.base_features
        feats = [ngf, 2 * ngf, 4 * ngf] + [8 * ngf] * (n - 3)
        deterministic = not (train or self.dropout_at_inference)

        h = x.astype(self.dtype)
        skips = []
        for i, f in enumerate(feats):
            if i > 0:
                h = nn.leaky_relu(h, 0.2)
            h = Conv(f, (4, 4), strides=2, padding=1, use_bias=False, dtype=self.dtype)(h)
            if 0 < i < n - 1:
                h = batch_norm(train, self.dtype)(h)
            skips.append(h)

        # The skip carries the pre-activation map; the reference's in-place LeakyReLU changes it,
        # but the ReLU that follows the concatenation makes the two identical.
        h = skips.pop()
        for i in reversed(range(1, n)):
            h = nn.relu(h)
            h = ConvTranspose(
                feats[i - 1],
                (4, 4),
                strides=(2, 2),
                padding="SAME",
                use_bias=False,
                dtype=self.dtype,
            )(h)
            h = batch_norm(train, self.dtype)(h)
            if 4 <= i < n - 1:  # the num_downs - 5 blocks between C(8ngf) level 3 and innermost
                h = nn.Dropout(self.dropout_rate, deterministic=deterministic)(h)
            h = jnp.concatenate([skips.pop(), h], axis=-1)
        h = ConvTranspose(
            self.out_channels, (4, 4), strides=(2, 2), padding="SAME", dtype=self.dtype
        )(nn.relu(h))
        return jnp.tanh(h.astype(jnp.float32))


class PatchGANDiscriminator(nn.Module):
    """N-layer PatchGAN on the condition and the (real or generated) output: (N, h, w, 1) logits."""

    base_features: int = 64
    n_layers: int = 3
    dtype: jnp.dtype = jnp.float32
    spectral_norm: bool = False

    @nn.compact
    def __call__(self, cond: jax.Array, image: jax.Array, *, train: bool) -> jax.Array:
        ndf, sn = self.base_features, self.spectral_norm

        def conv(features, stride, use_bias=True):
            layer = Conv(features, (4, 4), strides=stride, padding=1, use_bias=use_bias or sn,
                         dtype=self.dtype)
            return spectral(layer, sn, train)

        x = jnp.concatenate([cond, image], axis=-1).astype(self.dtype)
        x = nn.leaky_relu(conv(ndf, 2)(x), 0.2)
        for n in range(1, self.n_layers + 1):
            stride = 2 if n < self.n_layers else 1
            x = conv(min(2**n, 8) * ndf, stride, use_bias=False)(x)
            if not sn:
                x = batch_norm(train, self.dtype)(x)
            x = nn.leaky_relu(x, 0.2)
        x = conv(1, 1)(x)
        return x.astype(jnp.float32)
