"""The shared train step: losses fall on a fixed batch, update ratios, schedules, sharding."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import REPO, synthetic_photo, tiny_config, trainer_state

from jaxcolor import data
from jaxcolor.training.state import build_gan, lr_schedule
from jaxcolor.training.step import jit_train_step


def fixed_batch(n: int = 4, size: int = 32) -> dict[str, np.ndarray]:
    maker = data.ExampleMaker(size)
    examples = [data.make_example(maker.resize(synthetic_photo(i), None) / 255.0) for i in range(n)]
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def run_steps(config, batch, num_steps):
    gan = build_gan(config)
    state = trainer_state(gan, config.data.image_size)
    step = jit_train_step(gan, config)
    history = []
    for _ in range(num_steps):
        state, metrics = step(state, batch)
        history.append(jax.device_get(metrics))
    return state, history


# The tests that compile this file's LAB GAN steps (the tiny one, also test_precision's float32
# reference, and the ratio program below) run on one xdist worker, so that each program compiles
# once and the others read it from the session's compilation cache: on two workers at once, both
# compiled the ratio program.
LAB_GAN_STEPS = pytest.mark.xdist_group("lab_gan_steps")


# The U-Nets at their own widths are compile- and compute-bound: in the full suite only.
@pytest.mark.parametrize("experiment", [pytest.param("lab_gan", marks=LAB_GAN_STEPS),
                                        pytest.param("pix2pix", marks=pytest.mark.slow),
                                        pytest.param("pix2pix_lab", marks=pytest.mark.slow)])
def test_reconstruction_term_falls_on_fixed_batch(experiment):
    # L -> ab learns this batch faster than gray -> RGB: measured first-to-last ratios 0.39 after
    # 15 steps (pix2pix_lab) and 0.35 after 30 (pix2pix; 0.51 after 20). Each U-Net step at
    # width 64 costs about 0.6 s on 2 cores.
    steps = 15 if experiment == "pix2pix_lab" else 30
    config = tiny_config(experiment, None, num_steps=steps)
    # The experiments' own widths: this pins how fast the real models learn.
    config.model.ngf = config.model.ndf = 64
    _, history = run_steps(config, fixed_batch(), steps)
    first = np.mean([h["g_recon"] for h in history[:3]])
    last = np.mean([h["g_recon"] for h in history[-3:]])
    assert np.isfinite([h["g_loss"] for h in history]).all()
    assert last < 0.5 * first, (experiment, first, last)


def ratio_config():
    """LAB GAN with 3 D and 2 G updates per step and the learning rate decaying from step 2 of 4.
    The update loop is the same for every model; the tests below share this one program (the
    session's compilation cache), so it costs one compile."""
    config = tiny_config("lab_gan", None, num_steps=4)
    config.optim.d_updates, config.optim.g_updates = 3, 2
    config.optim.decay_start = 0.5
    return config


def _adam_count(opt_state) -> int:
    return int(opt_state[0].count)


@pytest.mark.slow  # the ratio program and the tiny LAB GAN: not in the fast subset
@LAB_GAN_STEPS
def test_update_ratio_is_not_just_bookkeeping():
    """After one step, D differs from D trained with one update per step (the first step's
    learning rate is the same, and D's updates all come before G's in a step)."""
    batch = fixed_batch()
    a, _ = run_steps(tiny_config("lab_gan", None), batch, 1)
    b, _ = run_steps(ratio_config(), batch, 1)
    diff = jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a.d.params, b.d.params)
    assert max(jax.tree.leaves(diff)) > 0


def test_schedule_constant_then_linear_decay():
    sched = lr_schedule(2e-4, num_steps=100, decay_start=0.5)
    assert float(sched(0)) == pytest.approx(2e-4)
    assert float(sched(50)) == pytest.approx(2e-4)
    assert float(sched(75)) == pytest.approx(1e-4)
    assert float(sched(100)) == pytest.approx(0.0, abs=1e-12)
    assert float(lr_schedule(2e-4, 100, 1.0)(99)) == pytest.approx(2e-4)


@pytest.mark.slow  # the ratio program: not in the fast subset
@LAB_GAN_STEPS
def test_update_ratio_keys_set_update_counts_and_the_schedule_is_per_step():
    state, history = run_steps(ratio_config(), fixed_batch(), 3)
    assert int(state.step) == 3
    # Step index 2 of 4 with decay from step 2: lr 2e-4 * (1 - 0/2); step 3 would be half.
    assert [h["g_lr"] for h in history] == pytest.approx([2e-4, 2e-4, 2e-4])
    assert [h["d_lr"] for h in history] == pytest.approx([2e-4, 2e-4, 2e-4])
    # Adam's internal counts advanced 2 (G) and 3 (D) per step; the schedule is read per step.
    assert _adam_count(state.g.opt_state) == 6
    assert _adam_count(state.d.opt_state) == 9


def test_optimisers_read_the_schedule_per_train_step():
    """The rate Adam applies, not only the one logged: with a constant gradient, Adam's update is
    -lr (m_hat = v_hat = 1), so the k-th update of a step-s schedule with n updates per step
    must move by schedule(k // n)."""
    gan = build_gan(ratio_config())  # 2 G and 3 D updates per step; decay from step 2 of 4
    for tx, schedule, per_step in ((gan.g_tx, gan.g_schedule, 2), (gan.d_tx, gan.d_schedule, 3)):
        params = jnp.zeros(())
        opt_state = tx.init(params)
        for k in range(4 * per_step):
            updates, opt_state = tx.update(jnp.ones(()), opt_state, params)
            expected = float(schedule(k // per_step))
            assert -float(updates) == pytest.approx(expected, rel=1e-4, abs=1e-12), (k, per_step)


def test_soft_labels_and_flip_change_discriminator_targets():
    from jaxcolor.training.losses import label_targets

    cfg = tiny_config("lab_gan", None).loss
    t1 = np.asarray(label_targets(jax.random.PRNGKey(0), (1000,), 1.0, cfg))
    t0 = np.asarray(label_targets(jax.random.PRNGKey(1), (1000,), 0.0, cfg))
    assert t1.min() >= 0.9 and t1.max() <= 1.0 and t1.std() > 0.01
    assert t0.min() >= 0.0 and t0.max() <= 0.1 and t0.std() > 0.01
    cfg.soft_labels, cfg.label_smoothing = False, 0.1
    assert np.allclose(label_targets(jax.random.PRNGKey(0), (3,), 1.0, cfg), 0.9)
    assert np.allclose(label_targets(jax.random.PRNGKey(0), (3,), 0.0, cfg), 0.0)


def test_bce_on_logits_is_stable():
    from jaxcolor.training.losses import bce_with_logits

    logits = np.array([-1e4, 1e4, 0.0], np.float32)
    loss = bce_with_logits(logits, np.array([1.0, 0.0, 1.0], np.float32))
    assert np.isfinite(loss)
    assert float(loss) == pytest.approx((1e4 + 1e4 + np.log(2)) / 3, rel=1e-5)
    zero = optax.sigmoid_binary_cross_entropy(np.float32(0.0), np.float32(1.0))
    assert float(zero) == pytest.approx(np.log(2))


# Data parallelism must not change the maths: the 8-device step reduces gradients and BatchNorm
# statistics over the global batch, in a different summation order. ``tests/equivalence.py``
# compares one step's losses, gradients (scaled to their norm) and BatchNorm statistics, which are
# well conditioned, never parameters after Adam (whose first step is lr * sign(gradient)). It
# computes in float64, so that the check holds on any CPU with a tight tolerance.
def _device_check(*args: str) -> list[dict]:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tests", "equivalence.py"), *args],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_eight_devices_match_one_device():
    from equivalence import BUGS, FLOAT64_TOLERANCE, TOLERANCE

    reports = {r["experiment"]: r for r in _device_check("lab_gan:bugs", "pix2pix_lab")}
    assert set(reports) == {"lab_gan", "pix2pix_lab"}
    exact = ("g_grads", "d_grads", "batch_stats")  # computed in float64 by the check
    for name, report in reports.items():
        errors = report["eight_devices"]
        assert max(errors[k] for k in exact) <= FLOAT64_TOLERANCE, (name, errors)
        # The losses are float32 means, as in training: float32's bound.
        assert max(v for k, v in errors.items() if k.startswith("loss/")) <= TOLERANCE, errors
    # The test of the test: each real data-parallel mistake is caught, by a wide margin
    # (gradients and statistics off by 0.1-4, against a 1e-6 tolerance).
    for bug in BUGS:
        errors = reports["lab_gan"][bug]
        caught = {k for k, v in errors.items() if v > 1e4 * FLOAT64_TOLERANCE}
        assert set(exact) <= caught, (bug, errors)


def test_equivalence_check_rejects_a_small_error():
    """``assert_equivalent`` fails on a gradient 1% off and accepts float32 rounding noise."""
    from equivalence import assert_equivalent

    rng = np.random.default_rng(0)
    grads = {"w": rng.normal(size=(64, 64)).astype(np.float32)}
    base = {"losses": {"d_loss": 0.7}, "g_grads": grads, "d_grads": grads,
            "batch_stats": {"g": {"mean": np.ones(8, np.float32)}, "d": {}}}
    eps = np.finfo(np.float32).eps
    noisy = {**base, "g_grads": {"w": grads["w"] * (1 + eps * rng.normal(size=(64, 64)))}}
    assert_equivalent(base, noisy)
    off = {**base, "d_grads": {"w": grads["w"] * 1.01}}
    with pytest.raises(AssertionError, match="d_grads"):
        assert_equivalent(base, off)
