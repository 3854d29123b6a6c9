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

Tolerance: float32 has eps = 1.2e-7 and the longest reductions here (BatchNorm over the global
batch, 8 x 32 x 32 = 8192 terms) have a worst-case relative rounding error of n * eps = 1e-3;
changing only their order (1 device vs 8) gives errors of about sqrt(n) * eps = 1e-5 per
reduction. ``TOLERANCE = 1e-3`` is that worst-case bound. A sharding bug changes the maths, not
the rounding: ``tests/test_train_step.py`` shows that a per-device gradient or per-device
BatchNorm statistics give errors far above it.

``python tests/equivalence.py lab_gan:per_device_gradient,per_device_batchnorm pix2pix_lab``
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


def _one_step(name: str, devices, bug: str | None = None) -> dict[str, Any]:
    """One train step of experiment ``name`` on the fixed 8-image batch over ``devices``.

    ``bug`` injects a real data-parallel mistake (tests of the test): "per_device_gradient"
    runs the step on each device's slice with no collective (the result is device 0's);
    "per_device_batchnorm" does the same but averages gradients, losses and statistics over
    devices afterwards, as a ``pmap`` trainer whose BatchNorm lacks ``axis_name`` would.
    """
    from conftest import tiny_config
    from test_train_step import fixed_batch

    from jaxcolor import sharding
    from jaxcolor.train_state import build_gan, fresh_state
    from jaxcolor.train_step import make_train_step

    config = tiny_config(name, None)
    # pix2pix's own widths, on which the tolerance's reasoning was checked. At 16 features the
    # float32 gradients differ by up to 2% between 1 and 8 devices (pix2pix_lab: G 0.6%, D 2.3%):
    # rounding amplified by poor conditioning, not sharding, since the same step computed in
    # float64 agrees exactly (gradients identical, BatchNorm statistics to 6e-16).
    config.model.ngf = config.model.ndf = 64
    config.train.batch_size = 8
    mesh = sharding.make_mesh(devices)
    gan = dataclasses.replace(build_gan(config), g_tx=record_gradients(), d_tx=record_gradients())
    rep = sharding.replicated(mesh)
    state = fresh_state(gan, 32, 0, rep)
    train_step = real_step = make_train_step(gan, config)
    if bug is not None:
        from jax.sharding import PartitionSpec as P

        def local(state, batch):
            new, metrics = real_step(state, batch)
            if bug == "per_device_batchnorm":
                new, metrics = jax.lax.pmean((new, metrics), sharding.DATA_AXIS)
            return new, metrics

        train_step = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(sharding.DATA_AXIS)),
                                   out_specs=(P(), P()), check_vma=False)
    step = jax.jit(train_step, in_shardings=(rep, sharding.batch_sharded(mesh)),
                   out_shardings=(rep, rep))
    batch = sharding.to_global(fixed_batch(8), mesh)
    assert len(batch["lab"].sharding.device_set) == len(devices)
    return step_quantities(*step(state, batch))


def main(args: list[str]) -> None:
    """``args``: ``NAME`` or ``NAME:BUG,BUG`` (the bugs to inject for that experiment)."""
    assert jax.device_count() == 8, jax.devices()
    for arg in args:
        name, _, bugs = arg.partition(":")
        one = _one_step(name, jax.devices()[:1])
        report = {"experiment": name,
                  "eight_devices": relative_errors(one, _one_step(name, jax.devices()))}
        for bug in filter(None, bugs.split(",")):
            report[bug] = relative_errors(one, _one_step(name, jax.devices(), bug))
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main(sys.argv[1:])
