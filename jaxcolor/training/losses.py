"""GAN and reconstruction losses on logits, with the label tricks the origin found useful.

Label conventions for training D (``label_targets``):
  * plain: real -> 1, generated -> 0;
  * ``label_flip``: real -> 0, generated -> 1 (the origin's "label flipping");
  * ``soft_labels``: each 1 is drawn from U[0.9, 1.0] and each 0 from U[0.0, 0.1] per logit
    (the origin's "soft and noisy labels");
  * ``label_smoothing`` s > 0 (one-sided, Salimans et al.; Nazeri et al. use 0.1): every 1
    becomes 1 - s, zeros stay. Ignored when ``soft_labels`` is on.
G is always trained towards D's hard "real" label. All losses are means in float32.
"""

from __future__ import annotations

from collections.abc import Callable

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


ADVERSARIAL: dict[str, LossFn] = {"bce": bce_with_logits, "lsgan": least_squares}
RECONSTRUCTION: dict[str, LossFn] = {"mse": mse, "l1": l1}


def check_names(loss_cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming ``loss.adversarial`` or ``loss.reconstruction`` if unknown."""
    check_choice("loss.adversarial", loss_cfg.adversarial, ADVERSARIAL)
    check_choice("loss.reconstruction", loss_cfg.reconstruction, RECONSTRUCTION)


# What D's output means as "probability of real" under each adversarial loss.
_REALNESS = {"bce": jax.nn.sigmoid, "lsgan": lambda x: x}


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
    adv = ADVERSARIAL[cfg.adversarial](fake_out, jnp.full(fake_out.shape, real_label(cfg)))
    recon = RECONSTRUCTION[cfg.reconstruction](fake, target)
    loss = cfg.adv_weight * adv + cfg.recon_weight * recon
    return loss, {"g_loss": loss, "g_adv": adv, "g_recon": recon}
