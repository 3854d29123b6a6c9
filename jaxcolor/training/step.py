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

Phases (DeOldify's "NoGAN"): ``train.recon_steps`` steps of ``recon`` (G on the reconstruction
loss alone; D is never run), then ``train.critic_steps`` of ``critic`` (D trained on G's outputs,
G frozen: no G update, its BatchNorm statistics kept), then ``gan`` (the step above) to the end.
The phase is a function of the step number (``phase_at``), so a resumed run continues in the
phase of its step. Each phase is its own compiled program, chosen on the host from the loop's
step counter (``PhasedStep``): the recon program holds no D at all and the critic program no G
backward pass, no step pays for a branch it does not take, a run compiles only the phases it
reaches, and a run without phases compiles the one program of earlier versions. All phases
report the same metrics (0 for what a phase does not compute, e.g. ``d_loss`` while
reconstructing), so the loop averages them alike. A frozen network's learning-rate schedule
still advances with the step (``state.advance_schedule``).

``loss.diffaugment`` (see ``training.diffaugment``) transforms every input of D, real and
generated, in D's updates and in G's; with ``model.ema_decay`` > 0 each step ends by updating
G's weight EMA (``state.ema_update``).

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

from jaxcolor import models, sharding
from jaxcolor.config import check_choice
from jaxcolor.tasks import get_task
from jaxcolor.training import encoder as encoder_lib
from jaxcolor.training import losses
from jaxcolor.training.diffaugment import augment_pair
from jaxcolor.training.state import (
    GAN,
    EMAGANState,
    GANState,
    NetState,
    advance_schedule,
    compute_dtype,
    ema_update,
)

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
NONFINITE_MODES = ("stop", "skip_step")
PHASES = ("recon", "critic", "gan")  # in training order; train/phase logs the index
_D_METRICS = ("d_loss", "d_real", "d_fake", "d_acc_real", "d_acc_fake")
_G_METRICS = ("g_loss", "g_adv", "g_recon")


def phase_at(step: int, train_cfg: ml_collections.ConfigDict) -> str:
    """The phase of the train step that starts at ``step`` (0-based), from
    ``train.recon_steps`` and ``train.critic_steps``."""
    recon, critic = train_cfg.get("recon_steps", 0), train_cfg.get("critic_steps", 0)
    return "recon" if step < recon else "critic" if step < recon + critic else "gan"


def has_phases(train_cfg: ml_collections.ConfigDict) -> bool:
    """Whether the config trains in phases (else every step is ``gan``)."""
    return train_cfg.get("recon_steps", 0) > 0 or train_cfg.get("critic_steps", 0) > 0


class PhasedStep:
    """``(step, state, batch) -> (state, metrics)``: the jitted program of ``step``'s phase,
    compiled when the phase is first reached (see the module docstring)."""

    def __init__(self, gan: GAN, config: ml_collections.ConfigDict,
                 mesh: jax.sharding.Mesh | None = None):
        self._gan, self._config, self._mesh = gan, config, mesh
        self._programs: dict[str, Callable] = {}

    def __call__(self, step: int, state: GANState, batch: Batch) -> tuple[GANState, Metrics]:
        phase = phase_at(step, self._config.train)
        if phase not in self._programs:
            self._programs[phase] = jit_train_step(self._gan, self._config, self._mesh, phase)
        return self._programs[phase](state, batch)


def check_names(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first key whose name no registry knows: the task, models,
    losses, compute dtype and non-finite mode (``config.validate`` checks the other values)."""
    get_task(config.data.task)
    models.check_names(config.model)
    losses.check_names(config.loss)
    compute_dtype(config.train.compute_dtype)
    check_choice("train.nonfinite", config.train.nonfinite, NONFINITE_MODES)


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
                   mesh: jax.sharding.Mesh | None = None, phase: str = "gan"
                   ) -> Callable[[GANState, Batch], tuple[GANState, Metrics]]:
    """The train step of ``phase`` as the trainer compiles it, over ``mesh`` (default: every
    device; ``PhasedStep`` picks the phase by step number). The
    step donates its input state: use the state it returns. Place the first state with
    ``sharding.replicated(mesh)`` (``fresh_state``'s ``sharding``), as the trainer does: a state
    on one device has other input types and compiles a second program. Tests and tools that
    step a model run the trainer's own program (and share its compilation-cache entry)."""
    mesh = sharding.make_mesh() if mesh is None else mesh
    return jax.jit(make_train_step(gan, config, phase), **step_jit_kwargs(mesh))


def make_train_step(
    gan: GAN, config: ml_collections.ConfigDict, phase: str = "gan"
) -> Callable[[GANState, Batch], tuple[GANState, Metrics]]:
    """A pure ``(state, batch) -> (state, metrics)`` of ``phase`` for ``jax.jit``; metrics are
    float32 scalars, ``finite`` among them (see the module docstring)."""
    if phase not in PHASES:
        raise ValueError(f"unknown training phase {phase!r} (known: {PHASES})")
    loss_cfg, d_updates, g_updates = config.loss, config.optim.d_updates, config.optim.g_updates
    G, D = gan.generator, gan.discriminator
    skip_nonfinite = config.train.get("nonfinite", "stop") == "skip_step"
    policy = gan.diffaugment

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
        # One draw for the real and the generated input of each example.
        aug = jax.random.fold_in(rng, 1)

        def loss_fn(params):
            fake_out, stats = discriminate(params, d.batch_stats,
                                           *augment_pair(policy, aug, cond, fake))
            real_out, stats = discriminate(params, stats, *augment_pair(policy, aug, cond, target))
            loss, metrics = losses.discriminator_loss(rng, real_out, fake_out, loss_cfg)
            return loss, (stats, metrics)

        grads, (stats, metrics) = jax.grad(loss_fn, has_aux=True)(d.params)
        updates, opt_state = gan.d_tx.update(grads, d.opt_state, d.params)
        new = NetState(optax.apply_updates(d.params, updates), stats, opt_state)
        return new, metrics, all_finite(grads)

    def g_update(g: NetState, d: NetState, cond, target, fake, pullback, stats, rng):
        def loss_fn(fake):
            if phase == "recon":  # no D at all
                recon = losses.reconstruction(fake, target, loss_cfg)
                loss = loss_cfg.recon_weight * recon
                return loss, {"g_loss": loss, "g_adv": jnp.zeros(()), "g_recon": recon}
            aug = jax.random.fold_in(rng, 1)
            fake_out, _ = discriminate(d.params, d.batch_stats,
                                       *augment_pair(policy, aug, cond, fake))
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
        zeros = {k: jnp.zeros(()) for k in _D_METRICS + _G_METRICS}
        d_metrics, g_metrics = {}, {}

        if phase == "critic":  # G frozen: its outputs in train mode, its statistics not kept
            fake, _ = generate(state.g.params, state.g.batch_stats, cond, g_keys[0])
        else:
            fake, pullback, g_stats = forward(state.g, cond, g_keys[0], frozen)
        d, g, finite = state.d, state.g, []
        if phase == "recon":
            d = d.replace(opt_state=advance_schedule(d.opt_state, d_updates))
        for i in range(d_updates if phase != "recon" else 0):
            d, d_metrics, ok = d_update(d, cond, target, jax.lax.stop_gradient(fake), d_keys[i])
            finite.append(ok)
        if phase == "critic":
            g = g.replace(opt_state=advance_schedule(g.opt_state, g_updates))
            g_metrics = {"g_recon": losses.reconstruction(fake, target, loss_cfg)}
        for j in range(g_updates if phase != "critic" else 0):
            if j > 0:
                fake, pullback, g_stats = forward(g, cond, g_keys[j], frozen)
            g, g_metrics, ok = g_update(g, d, cond, target, fake, pullback, g_stats, g_keys[j])
            finite.append(ok)

        metrics = {**zeros, **d_metrics, **g_metrics}
        # The new states too: Adam's second moment can overflow to inf on finite gradients.
        finite = jnp.all(jnp.stack(finite)) & all_finite(metrics) & all_finite((g, d))
        new = {"g": g, "d": d}
        if isinstance(state, EMAGANState):
            new["ema"] = ema_update(state.ema, g, gan.ema_decay, state.step)
        if skip_nonfinite:
            # Keep both networks as they were; the step counter (and the data) still advance.
            # A cond, not a select per leaf: the selects fused into every update and made the
            # step compile several times slower (BUILD.md).
            new = jax.lax.cond(finite, lambda: new, lambda: {k: getattr(state, k) for k in new})
        metrics["g_lr"] = gan.g_schedule(state.step)
        metrics["d_lr"] = gan.d_schedule(state.step)
        metrics["finite"] = finite
        new_state = state.replace(step=state.step + 1, **new)
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
