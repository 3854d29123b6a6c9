"""The one train step every model uses (inference lives in ``jaxcolor.inference.predictor``).

Update order per step (pix2pix's): G forward; ``optim.d_updates`` D updates on the detached
fakes; ``optim.g_updates`` G updates against the updated D. The first G update reuses the
forward pass through ``jax.vjp``, so the default 1:1 schedule runs G forward only once.

D sees real and generated batches in two separate train-mode passes (each with its own batch
statistics, as in the reference implementation). When G is updated, D runs in train mode too,
but its running statistics from that pass are dropped: only D's own update moves them.

Every step reports ``metrics["finite"]`` (1.0 or 0.0): whether all its losses, gradients and new
network states are finite, computed on the device, so checking it costs no extra host sync. With
``train.nonfinite=skip_step`` a non-finite step leaves both networks (parameters, BatchNorm
statistics, optimiser states) as they were; the step counter still advances.

A generator with a pretrained encoder frozen for the first ``train.encoder_frozen_steps``
(``gan.encoder``) differentiates only its other parameters during those steps
(``encoder.frozen_vjp``); a run that also fine-tunes compiles both variants into one program,
chosen per step by ``lax.cond``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxcolor import sharding
from jaxcolor.training import encoder as encoder_lib
from jaxcolor.training import losses
from jaxcolor.training.state import GAN, GANState, NetState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
NONFINITE_MODES = ("stop", "skip_step")


def all_finite(tree) -> jax.Array:
    """Whether every element of every floating array in ``tree`` is finite (a boolean scalar)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def step_jit_kwargs(mesh: jax.sharding.Mesh) -> dict[str, Any]:
    """``jax.jit`` arguments of the train step over ``mesh``: the state replicated, the batch
    split along the data axis, the old state's buffers donated to the new one."""
    rep = sharding.replicated(mesh)
    return {"in_shardings": (rep, sharding.batch_sharded(mesh)), "out_shardings": (rep, rep),
            "donate_argnums": 0}


def jit_train_step(gan: GAN, config: ml_collections.ConfigDict,
                   mesh: jax.sharding.Mesh | None = None
                   ) -> Callable[[GANState, Batch], tuple[GANState, Metrics]]:
    """The train step as the trainer compiles it, over ``mesh`` (default: every device). The
    step donates its input state: use the state it returns. Place the first state with
    ``sharding.replicated(mesh)`` (``fresh_state``'s ``sharding``), as the trainer does: a state
    on one device has other input types and compiles a second program. Tests and tools that
    step a model run the trainer's own program (and share its compilation-cache entry)."""
    mesh = sharding.make_mesh() if mesh is None else mesh
    return jax.jit(make_train_step(gan, config), **step_jit_kwargs(mesh))


def make_train_step(
    gan: GAN, config: ml_collections.ConfigDict
) -> Callable[[GANState, Batch], tuple[GANState, Metrics]]:
    """A pure ``(state, batch) -> (state, metrics)`` for ``jax.jit``; metrics are float32
    scalars, ``finite`` among them (see the module docstring)."""
    loss_cfg, d_updates, g_updates = config.loss, config.optim.d_updates, config.optim.g_updates
    G, D = gan.generator, gan.discriminator
    skip_nonfinite = config.train.get("nonfinite", "stop") == "skip_step"

    def generate(params, batch_stats, cond, rng):
        out, updates = G.apply(
            {"params": params, "batch_stats": batch_stats},
            cond,
            train=True,
            rngs={"dropout": rng},
            mutable=["batch_stats"],
        )
        return out, updates["batch_stats"]

    def discriminate(params, batch_stats, cond, image):
        out, updates = D.apply(
            {"params": params, "batch_stats": batch_stats},
            cond,
            image,
            train=True,
            mutable=["batch_stats"],
        )
        return out, updates["batch_stats"]

    def d_update(d: NetState, cond, target, fake, rng) -> tuple[NetState, Metrics, jax.Array]:
        def loss_fn(params):
            fake_out, stats = discriminate(params, d.batch_stats, cond, fake)
            real_out, stats = discriminate(params, stats, cond, target)
            loss, metrics = losses.discriminator_loss(rng, real_out, fake_out, loss_cfg)
            return loss, (stats, metrics)

        grads, (stats, metrics) = jax.grad(loss_fn, has_aux=True)(d.params)
        updates, opt_state = gan.d_tx.update(grads, d.opt_state, d.params)
        new = NetState(optax.apply_updates(d.params, updates), stats, opt_state)
        return new, metrics, all_finite(grads)

    def g_update(g: NetState, d: NetState, cond, target, fake, pullback, stats):
        def loss_fn(fake):
            fake_out, _ = discriminate(d.params, d.batch_stats, cond, fake)
            return losses.generator_loss(fake_out, fake, target, loss_cfg)

        (_, metrics), d_fake = jax.value_and_grad(loss_fn, has_aux=True)(fake)
        (grads,) = pullback(d_fake)
        updates, opt_state = gan.g_tx.update(grads, g.opt_state, g.params)
        new = NetState(optax.apply_updates(g.params, updates), stats, opt_state)
        return new, metrics, all_finite(grads)

    def forward(g: NetState, cond, rng, frozen: bool):
        def fn(p):
            return generate(p, g.batch_stats, cond, rng)

        if frozen:
            return encoder_lib.frozen_vjp(fn, g.params, gan.encoder)
        return jax.vjp(fn, g.params, has_aux=True)

    def step_variant(state: GANState, batch: Batch, frozen: bool) -> tuple[GANState, Metrics]:
        cond, target = gan.task.split(batch)
        rng = jax.random.fold_in(state.rng, state.step)
        d_keys = jax.random.split(jax.random.fold_in(rng, 0), d_updates)
        g_keys = jax.random.split(jax.random.fold_in(rng, 1), g_updates)

        fake, pullback, g_stats = forward(state.g, cond, g_keys[0], frozen)
        d, g, finite = state.d, state.g, []
        for i in range(d_updates):
            d, d_metrics, ok = d_update(d, cond, target, jax.lax.stop_gradient(fake), d_keys[i])
            finite.append(ok)
        for j in range(g_updates):
            if j > 0:
                fake, pullback, g_stats = forward(g, cond, g_keys[j], frozen)
            g, g_metrics, ok = g_update(g, d, cond, target, fake, pullback, g_stats)
            finite.append(ok)

        metrics = {**d_metrics, **g_metrics}
        # The new states too: Adam's second moment can overflow to inf on finite gradients.
        finite = jnp.all(jnp.stack(finite)) & all_finite(metrics) & all_finite((g, d))
        if skip_nonfinite:
            # Keep both networks as they were; the step counter (and the data) still advance.
            # A cond, not a select per leaf: the selects fused into every update and made the
            # LAB GAN's step compile 4x slower (42 s against 9 s on a 2-core CPU).
            g, d = jax.lax.cond(finite, lambda: (g, d), lambda: (state.g, state.d))
        metrics["g_lr"] = gan.g_schedule(state.step)
        metrics["d_lr"] = gan.d_schedule(state.step)
        metrics["finite"] = finite
        new_state = state.replace(step=state.step + 1, g=g, d=d)
        return new_state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics)

    frozen_steps = gan.encoder_frozen_steps if gan.encoder else 0

    def train_step(state: GANState, batch: Batch) -> tuple[GANState, Metrics]:
        if frozen_steps == 0:
            return step_variant(state, batch, False)
        if frozen_steps >= config.train.num_steps:  # never unfrozen: one variant to compile
            return step_variant(state, batch, True)
        return jax.lax.cond(state.step < frozen_steps,
                            lambda s, b: step_variant(s, b, True),
                            lambda s, b: step_variant(s, b, False), state, batch)

    return train_step
