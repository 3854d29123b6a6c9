"""Whether two layouts of the same train step compute the same maths, on any CPU.

Reusable by any test that compares runs across device or process layouts (import it from
``tests/``, as ``from equivalence import ...``).

What is compared, and why: only well-conditioned quantities of ONE train step.

* the step's losses (means over the batch);
* the gradients of both networks, as the error norm divided by the gradient's norm;
* the new BatchNorm running statistics, each leaf's error divided by that leaf's norm.

Parameters after an Adam step are not compared: Adam's first update is ``lr * sign(g)``, so an
element whose gradient is at float-noise level moves by ``+-lr`` depending on summation order.
The gradients are read from the real train step by swapping the optimisers for
``record_gradients()``, which stores the gradient in the optimiser state and leaves the
parameters unchanged, so nothing else in the step differs from training.

Tolerance, float32 (``TOLERANCE``, for comparisons of float32 programs): eps = 1.2e-7 and the
longest reductions here (BatchNorm over the global batch, 8 x 32 x 32 = 8192 terms) have a
worst-case relative rounding error of n * eps = 1e-3; ``TOLERANCE = 1e-3`` is that bound. Measured
1 vs 8 devices, the LAB GAN's D gradient came to 8.3e-4 of it on one CPU: the bound holds, but
with little room, since rounding is amplified by the step's conditioning.

The device check below therefore computes in float64 (``jax_enable_x64``; activations, BatchNorm
statistics and gradients inside the networks; parameters, losses and the networks' outputs stay
float32 as in training). Summation order then moves results by ~1e-16 relative times the same
amplification, and what reaches float32 is rounded per element, identically in both layouts.
``FLOAT64_TOLERANCE = 1e-6`` is 16 float32 roundings (2^-24 each). A sharding bug changes the
maths, not the rounding: ``tests/test_train_step.py`` shows that a per-device gradient or
per-device BatchNorm statistics put the gradients and statistics off by 0.17 to 4 (measured), far
above it.

``python tests/equivalence.py lab_gan:bugs pix2pix_lab``
(with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``) prints one JSON line per experiment
with the errors of the 8-device step, and of each injected sharding bug, against the 1-device
step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

TOLERANCE = 1e-3
FLOAT64_TOLERANCE = 1e-6
LOSS_KEYS = ("d_loss", "d_real", "d_fake", "g_loss", "g_adv", "g_recon")


def record_gradients() -> optax.GradientTransformation:
    """An "optimiser" whose state is the last gradient and whose update is zero."""

    def init(params):
        return {"grads": jax.tree.map(jnp.zeros_like, params)}

    def update(grads, state, params=None):
        del state, params
        return jax.tree.map(jnp.zeros_like, grads), {"grads": grads}

    return optax.GradientTransformation(init, update)


def _norm(tree) -> float:
    leaves = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)]
    return float(np.linalg.norm(np.concatenate(leaves))) if leaves else 0.0


def _diff(a, b):
    return jax.tree.map(lambda x, y: np.asarray(x, np.float64) - np.asarray(y, np.float64), a, b)


def step_quantities(state: Any, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The compared quantities of one step taken with ``record_gradients`` optimisers."""
    state, metrics = jax.device_get((state, metrics))
    return {
        "losses": {k: float(metrics[k]) for k in LOSS_KEYS if k in metrics},
        "g_grads": state.g.opt_state["grads"],
        "d_grads": state.d.opt_state["grads"],
        "batch_stats": {"g": state.g.batch_stats, "d": state.d.batch_stats},
    }


def relative_errors(reference: Mapping[str, Any], other: Mapping[str, Any]) -> dict[str, float]:
    """Errors of ``other`` against ``reference`` (both from ``step_quantities``), each scaled
    to the size of what it measures, so one tolerance fits every model and CPU."""
    errors = {}
    for k, ref in reference["losses"].items():
        errors[f"loss/{k}"] = abs(other["losses"][k] - ref) / max(abs(ref), 1e-6)
    for net in ("g_grads", "d_grads"):
        ref = reference[net]
        errors[net] = _norm(_diff(other[net], ref)) / max(_norm(ref), 1e-30)
    stats = jax.tree_util.tree_leaves_with_path(reference["batch_stats"])
    others = jax.tree.leaves(other["batch_stats"])
    worst = 0.0
    for (_, ref), cand in zip(stats, others, strict=True):
        worst = max(worst, _norm(_diff(cand, ref)) / max(_norm(ref), 1e-6))
    errors["batch_stats"] = worst
    return errors


def assert_equivalent(reference, other, tolerance: float = TOLERANCE) -> dict[str, float]:
    """Raises AssertionError listing every quantity whose relative error exceeds ``tolerance``."""
    errors = relative_errors(reference, other)
    bad = {k: v for k, v in errors.items() if not v <= tolerance}
    assert not bad, f"beyond relative tolerance {tolerance}: {bad}"
    return errors


# --------------------------------------------------------------------------- the device check


def _experiment(name: str):
    """``(config, gan, initial state)`` of experiment ``name`` as the device check runs it: the
    networks computing in float64 (needs ``jax_enable_x64``), their own parameters float32.

    The initial state is drawn once per experiment, on the host, and placed on each layout's
    devices: the same numbers for every layout, and one init program compiled, not one per
    layout (~4 s each on CPU)."""
    from conftest import tiny_config

    from jaxcolor import models
    from jaxcolor.training.state import build_gan, fresh_state

    assert jax.config.jax_enable_x64, "the device check computes in float64"
    config = tiny_config(name, None)  # the tests' widths: float64 needs no wider networks
    config.train.batch_size = 8
    gan = build_gan(config)
    gan = dataclasses.replace(
        gan, g_tx=record_gradients(), d_tx=record_gradients(),
        generator=models.build_generator(config.model, gan.task, jnp.float64),
        discriminator=models.build_discriminator(config.model, gan.task, jnp.float64))
    return config, gan, jax.device_get(fresh_state(gan, 32, 0))


BUGS = ("per_device_gradient", "per_device_batchnorm")


def _one_step(experiment, devices, bugs: bool = False) -> dict[str, Any]:
    """One train step of ``experiment`` (from ``_experiment``) on the fixed 8-image batch over
    ``devices``: its ``step_quantities``, or with ``bugs`` those of each injected bug in ``BUGS``.

    The bugs are real data-parallel mistakes (tests of the test): "per_device_gradient" runs
    the step on each device's slice with no collective (the result is device 0's);
    "per_device_batchnorm" does the same but averages gradients, losses and statistics over
    devices afterwards, as a ``pmap`` trainer whose BatchNorm lacks ``axis_name`` would. Both
    come from one program (the second is the mean of the first over devices): one compile.
    """
    from test_train_step import fixed_batch

    from jaxcolor import sharding
    from jaxcolor.training.step import make_train_step

    config, gan, initial = experiment
    mesh = sharding.make_mesh(devices)
    rep = sharding.replicated(mesh)
    state = jax.device_put(initial, rep)
    train_step = real_step = make_train_step(gan, config)
    if bugs:
        from jax.sharding import PartitionSpec as P

        def local(state, batch):
            per_device = real_step(state, batch)
            return per_device, jax.lax.pmean(per_device, sharding.DATA_AXIS)

        train_step = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(sharding.DATA_AXIS)),
                                   out_specs=P(), check_vma=False)
    step = jax.jit(train_step, in_shardings=(rep, sharding.batch_sharded(mesh)),
                   out_shardings=rep)
    # float32, as the trainer's batches (NumPy would make them float64 under jax_enable_x64)
    host = {k: np.asarray(v, np.float32) for k, v in fixed_batch(8).items()}
    batch = sharding.to_global(host, mesh)
    assert len(batch["lab"].sharding.device_set) == len(devices)
    out = step(state, batch)
    if bugs:
        return {bug: step_quantities(*result) for bug, result in zip(BUGS, out, strict=True)}
    return step_quantities(*out)


def main(args: list[str]) -> None:
    """``args``: ``NAME``, or ``NAME:bugs`` to also inject each of ``BUGS`` for that
    experiment."""
    assert jax.device_count() == 8, jax.devices()
    jax.config.update("jax_enable_x64", True)
    for arg in args:
        name, _, bugs = arg.partition(":")
        assert bugs in ("", "bugs"), f"{arg}: expected NAME or NAME:bugs"
        experiment = _experiment(name)
        one = _one_step(experiment, jax.devices()[:1])
        report = {"experiment": name,
                  "eight_devices": relative_errors(one, _one_step(experiment, jax.devices()))}
        if bugs:
            for bug, other in _one_step(experiment, jax.devices(), bugs=True).items():
                report[bug] = relative_errors(one, other)
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main(sys.argv[1:])
