"""DiffAugment (Zhao et al. 2020) on the discriminator's inputs: differentiable translation and
cutout, applied inside the jitted step to real and generated images alike.

``loss.diffaugment`` names the transforms, comma-separated (``"translation,cutout"``; ``""``:
off). D's input is the condition and the (real or generated) output together, so both get the
same transform; the real and the generated image of one example get the same draw too (D
compares like with like), and G's pass through D is augmented as D's own passes are (the
gradient flows through the transforms to G). DiffAugment's colour transforms are left out:
they would change what a colorization critic must judge.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

TRANSLATION_RATIO = 0.125  # shift up to 1/8 of the side, zero padding (DiffAugment's)
CUTOUT_RATIO = 0.5  # a square of half the side, zeroed (DiffAugment's)


def translation(key: jax.Array, x: jax.Array, ratio: float = TRANSLATION_RATIO) -> jax.Array:
    """Each image of the (N, H, W, C) batch shifted by whole pixels, up to ``ratio`` of its
    side in each direction, uncovered pixels zero."""
    n, h, w, c = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    shifts = jax.random.randint(key, (n, 2), jnp.array([-sh, -sw]), jnp.array([sh + 1, sw + 1]))
    padded = jnp.pad(x, ((0, 0), (sh, sh), (sw, sw), (0, 0)))

    def shift(image, s):
        return jax.lax.dynamic_slice(image, (sh - s[0], sw - s[1], 0), (h, w, c))

    return jax.vmap(shift)(padded, shifts)


def cutout(key: jax.Array, x: jax.Array, ratio: float = CUTOUT_RATIO) -> jax.Array:
    """Each image of the (N, H, W, C) batch with a square of ``ratio`` of its side zeroed, centred
    anywhere in the image (so it may be cut by the border)."""
    n, h, w, _ = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ky, kx = jax.random.split(key)
    cy = jax.random.randint(ky, (n, 1, 1), 0, h)
    cx = jax.random.randint(kx, (n, 1, 1), 0, w)
    y = jnp.arange(h)[None, :, None]
    xs = jnp.arange(w)[None, None, :]
    inside = ((y >= cy - ch // 2) & (y < cy - ch // 2 + ch)
              & (xs >= cx - cw // 2) & (xs < cx - cw // 2 + cw))
    return x * (~inside)[..., None].astype(x.dtype)


TRANSFORMS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "translation": translation,
    "cutout": cutout,
}


def parse_policy(text: str | None) -> tuple[str, ...]:
    """``loss.diffaugment`` -> the transform names, in order; ValueError naming the key."""
    names = tuple(n.strip() for n in (text or "").split(",") if n.strip())
    unknown = [n for n in names if n not in TRANSFORMS]
    if unknown:
        raise ValueError(f"config key loss.diffaugment={text!r} is invalid: unknown "
                         f"{unknown}; a comma-separated subset of {sorted(TRANSFORMS)}, or ''")
    return names


def augment_pair(policy: tuple[str, ...], key: jax.Array, cond: jax.Array, image: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
    """(cond, image) with the same transforms applied to both; unchanged when ``policy`` is
    empty."""
    if not policy:
        return cond, image
    x = jnp.concatenate([cond, image.astype(cond.dtype)], axis=-1)
    for i, name in enumerate(policy):
        x = TRANSFORMS[name](jax.random.fold_in(key, i), x)
    return x[..., : cond.shape[-1]], x[..., cond.shape[-1]:].astype(image.dtype)
