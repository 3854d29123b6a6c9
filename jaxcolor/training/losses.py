"""GAN and reconstruction losses on logits, with the label tricks the origin found useful.

Label conventions for training D (``label_targets``):
  * plain: real -> 1, generated -> 0;
  * ``label_flip``: real -> 0, generated -> 1 (the origin's "label flipping");
  * ``soft_labels``: each 1 is drawn from U[0.9, 1.0] and each 0 from U[0.0, 0.1] per logit
    (the origin's "soft and noisy labels");
  * ``label_smoothing`` s > 0 (one-sided, Salimans et al.; Nazeri et al. use 0.1): every 1
    becomes 1 - s, zeros stay. Ignored when ``soft_labels`` is on.
G is always trained towards D's hard "real" label. All losses are means in float32.

Adversarial losses (``loss.adversarial``): ``bce``, ``lsgan`` and ``hinge`` (Lim and Ye 2017;
Miyato et al. 2018: D minimises relu(1 - x) on real and relu(1 + x) on generated logits, G
maximises D's raw output). Reconstruction losses (``loss.reconstruction``) on the network's
output (ab' = ab / 110 for the Lab task): ``l1``, ``mse`` (aligned with PSNR), ``huber``
(smooth L1: quadratic within ``loss.huber_delta``, L1 beyond, as Zhang et al. regress ab) and
``ab_euclid`` (the per-pixel Euclidean distance over the output channels, the error AuC
integrates; for the RGB task the RGB distance).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxcolor.config import check_choice

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean binary cross-entropy on logits (stable for large |logits|)."""
    return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets).mean()


def least_squares(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """LSGAN loss (Mao et al. 2017): mean squared distance of D's raw output to the target."""
    return jnp.mean(jnp.square(outputs.astype(jnp.float32) - targets))


def mse(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error."""
    return jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)))


def l1(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean absolute error."""
    return jnp.mean(jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32)))


def huber(pred: jax.Array, target: jax.Array, delta: float) -> jax.Array:
    """Mean smooth L1 (Huber divided by ``delta``): |e| - delta/2 beyond ``delta``, e^2 / (2 delta)
    within, so its scale (and ``loss.recon_weight``) is that of L1 whatever ``delta``."""
    e = pred.astype(jnp.float32) - target.astype(jnp.float32)
    return jnp.mean(optax.huber_loss(e, delta=delta)) / delta


def euclidean(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean over pixels of the Euclidean distance across channels (ab for the Lab task)."""
    e = pred.astype(jnp.float32) - target.astype(jnp.float32)
    # The tiny floor keeps the gradient finite where the error is exactly 0.
    return jnp.mean(jnp.sqrt(jnp.sum(jnp.square(e), axis=-1) + 1e-12))


def hinge(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """D's hinge loss: mean relu(1 - s x) with s = +1 for a target of 1, -1 for 0."""
    sign = 2.0 * targets - 1.0
    return jnp.mean(jax.nn.relu(1.0 - sign * outputs.astype(jnp.float32)))


def hinge_generator(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """G's side of the hinge loss: -mean(s x), D's raw output pushed towards the target."""
    return -jnp.mean((2.0 * targets - 1.0) * outputs.astype(jnp.float32))


ReconFn = Callable[[jax.Array, jax.Array, Any], jax.Array]  # (pred, target, loss config)

ADVERSARIAL: dict[str, LossFn] = {"bce": bce_with_logits, "lsgan": least_squares,
                                  "hinge": hinge}
RECONSTRUCTION: dict[str, ReconFn] = {
    "mse": lambda p, t, cfg: mse(p, t),
    "l1": lambda p, t, cfg: l1(p, t),
    "huber": lambda p, t, cfg: huber(p, t, cfg.get("huber_delta", 0.01)),
    "ab_euclid": lambda p, t, cfg: euclidean(p, t),
}

# G's adversarial term where it is not D's loss on the real label.
_GENERATOR_SIDE: dict[str, LossFn] = {"hinge": hinge_generator}


def check_names(loss_cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming ``loss.adversarial`` or ``loss.reconstruction`` if unknown."""
    check_choice("loss.adversarial", loss_cfg.adversarial, ADVERSARIAL)
    check_choice("loss.reconstruction", loss_cfg.reconstruction, RECONSTRUCTION)


# What D's output means as "probability of real" under each adversarial loss.
_REALNESS = {"bce": jax.nn.sigmoid, "lsgan": lambda x: x, "hinge": jax.nn.sigmoid}


def real_label(cfg: ml_collections.ConfigDict) -> float:
    """D's hard label for real images (0 under label flipping)."""
    return 0.0 if cfg.label_flip else 1.0


def label_targets(
    rng: jax.Array, shape: tuple[int, ...], hard_label: float, cfg: ml_collections.ConfigDict
) -> jax.Array:
    """Training targets for D of the given ``shape`` for hard label 0 or 1 (see module doc)."""
    if cfg.soft_labels:
        low = 0.9 if hard_label == 1.0 else 0.0
        return jax.random.uniform(rng, shape, jnp.float32, low, low + 0.1)
    value = 1.0 - cfg.label_smoothing if hard_label == 1.0 else hard_label
    return jnp.full(shape, value, jnp.float32)


def realness(outputs: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
    """D's belief that an image is real, in [0, 1] for BCE, whatever the label convention."""
    p = _REALNESS[cfg.adversarial](outputs.astype(jnp.float32))
    return 1.0 - p if cfg.label_flip else p


def discriminator_loss(
    rng: jax.Array, real_out: jax.Array, fake_out: jax.Array, cfg: ml_collections.ConfigDict
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss on real + loss on generated) / 2, and D's view of both batches for logging."""
    adv = ADVERSARIAL[cfg.adversarial]
    rng_real, rng_fake = jax.random.split(rng)
    real_hard = real_label(cfg)
    real_t = label_targets(rng_real, real_out.shape, real_hard, cfg)
    fake_t = label_targets(rng_fake, fake_out.shape, 1.0 - real_hard, cfg)
    loss = 0.5 * (adv(real_out, real_t) + adv(fake_out, fake_t))
    p_real, p_fake = realness(real_out, cfg), realness(fake_out, cfg)
    return loss, {
        "d_loss": loss,
        "d_real": p_real.mean(),
        "d_fake": p_fake.mean(),
        "d_acc_real": (p_real > 0.5).mean(),
        "d_acc_fake": (p_fake < 0.5).mean(),
    }


def generator_loss(
    fake_out: jax.Array, fake: jax.Array, target: jax.Array, cfg: ml_collections.ConfigDict
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """adv_weight * adversarial (towards D's hard real label) + recon_weight * reconstruction."""
    adv_fn = _GENERATOR_SIDE.get(cfg.adversarial, ADVERSARIAL[cfg.adversarial])
    adv = adv_fn(fake_out, jnp.full(fake_out.shape, real_label(cfg)))
    recon = reconstruction(fake, target, cfg)
    loss = cfg.adv_weight * adv + cfg.recon_weight * recon
    return loss, {"g_loss": loss, "g_adv": adv, "g_recon": recon}


def reconstruction(fake: jax.Array, target: jax.Array, cfg: ml_collections.ConfigDict
                   ) -> jax.Array:
    """The configured reconstruction loss (``loss.reconstruction``) of ``fake``."""
    return RECONSTRUCTION[cfg.reconstruction](fake, target, cfg)
