"""Mixed precision: ``train.compute_dtype=bfloat16`` computes activations in bfloat16 while
parameters, BatchNorm statistics, optimiser state and losses stay float32.

Tolerance for the first step's losses against float32 (same init, same batch, same RNG): 2%
relative. bfloat16 keeps 8 significant bits (one rounding is up to 2^-9 = 0.2% relative); the
losses are means over many elements, so the roundings mostly average out. Measured on this
batch: at most 0.1% (lab_gan g_recon) and 0.5% (lab_gan g_adv, a mean of few logits); the bound
leaves a factor of ~4 for other XLA versions and CPUs.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import tiny_config, trainer_state
from test_train_step import LAB_GAN_STEPS, fixed_batch

from jaxcolor.training.state import build_gan
from jaxcolor.training.step import jit_train_step

FIRST_STEP_RTOL = 2e-2
LOSSES = ("d_loss", "g_adv", "g_recon", "d_real", "d_fake", "g_loss")


def _run(name: str, compute_dtype: str, num_steps: int):
    config = tiny_config(name, None, compute_dtype=compute_dtype, num_steps=num_steps)
    gan = build_gan(config)
    state = trainer_state(gan, config.data.image_size)
    step = jit_train_step(gan, config)
    batch, history = fixed_batch(4), []
    for _ in range(num_steps):
        state, metrics = step(state, batch)
        history.append(metrics)
    return state, jax.device_get(history)


@pytest.mark.slow  # 20 bfloat16 steps and a float32 step: two programs per model
@pytest.mark.parametrize("name", [pytest.param("lab_gan", marks=LAB_GAN_STEPS), "pix2pix_lab"])
def test_bfloat16_trains_and_matches_float32_first_step(name):
    steps = 20
    state16, hist16 = _run(name, "bfloat16", steps)
    state32, hist32 = _run(name, "float32", 1)

    # Parameters, BatchNorm statistics and Adam moments stay float32; losses are float32.
    dtypes = {x.dtype for x in jax.tree.leaves((state16.g, state16.d))
              if np.issubdtype(x.dtype, np.floating)}  # (Adam's step count is int32)
    assert dtypes == {np.dtype(np.float32)}, dtypes
    assert all(hist16[0][k].dtype == np.float32 for k in LOSSES)

    recon = [float(m["g_recon"]) for m in hist16]
    assert all(np.isfinite(recon))
    assert np.mean(recon[-3:]) < 0.8 * recon[0], recon  # it learns the tiny batch

    for k in LOSSES:
        assert float(hist16[0][k]) == pytest.approx(float(hist32[0][k]), rel=FIRST_STEP_RTOL), k
