"""The colorizer on the pretrained encoder (``efficientnet_unet``): it starts from the ImageNet
weights, its encoder's BatchNorm keeps the pretrained statistics, the encoder stays frozen and
then fine-tunes at its own learning rate, a missing weights package stops the trainer at start
naming the extra, and an exported model equals the run."""

from __future__ import annotations

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, load_experiment, synthetic_photo, tiny_config, tiny_run, trainer_state

import jaxcolor
from jaxcolor import config as config_lib
from jaxcolor import models, sharding
from jaxcolor.artifacts import export as export_lib
from jaxcolor.models.pretrained_unet import ENCODER, encoder_input
from jaxcolor.training.encoder import ENCODER_LABEL
from jaxcolor.training.state import build_gan, fresh_state
from jaxcolor.training.step import jit_train_step


def test_generator_starts_from_the_imagenet_encoder_and_keeps_its_statistics():
    config = tiny_config("colorizer_pretrained", None)
    config_lib.validate(config)
    gan = build_gan(config)
    pretrained = models.pretrained_variables(config.model)
    g = fresh_state(gan, 32, 0, None, pretrained).g
    for collection, ours in (("params", g.params), ("batch_stats", g.batch_stats)):
        theirs = pretrained[collection][ENCODER]
        assert jax.tree.structure(ours[ENCODER]) == jax.tree.structure(theirs)
        jax.tree.map(np.testing.assert_array_equal, ours[ENCODER], theirs)
        assert set(ours) > {ENCODER}  # and a decoder
    config.model.encoder_weights = None  # random initialisation, for comparisons
    assert models.pretrained_variables(config.model) is None

    # Train mode: the decoder's BatchNorm statistics move, the encoder's stay pretrained.
    variables = {"params": g.params, "batch_stats": g.batch_stats}
    cond = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 32, 64, 1)), jnp.float32)
    out, updates = jax.jit(lambda v, x: gan.generator.apply(
        v, x, train=True, mutable=["batch_stats"]))(variables, cond)
    assert out.shape == (2, 32, 64, 2) and float(jnp.abs(out).max()) <= 1.0
    stats = updates["batch_stats"]
    jax.tree.map(np.testing.assert_array_equal, stats[ENCODER], g.batch_stats[ENCODER])
    moved = [not np.array_equal(a, b) for name in stats if name != ENCODER
             for a, b in zip(jax.tree.leaves(stats[name]), jax.tree.leaves(g.batch_stats[name]),
                             strict=True)]
    assert moved and all(moved)
    with pytest.raises(ValueError, match="multiple of 32"):
        jax.eval_shape(lambda: gan.generator.apply(variables, cond[:, :, :48], train=False))


def test_encoder_input_is_the_gray_photo_imagenet_saw():
    # L = 0, 50, 100 are sRGB gray 0, 118.9 and 255, normalised as (v - 127) / 128.
    x = encoder_input(jnp.asarray([-1.0, 0.0, 1.0]).reshape(1, 1, 3, 1))
    assert x.shape == (1, 1, 3, 3)
    np.testing.assert_allclose(x[0, 0, :, 0], (np.array([0, 118.9, 255]) - 127) / 128, atol=2e-3)
    np.testing.assert_array_equal(x[..., 0], x[..., 2])


class _ToyEncoderGenerator(nn.Module):
    """The smallest generator with an ``encoder`` subtree: the frozen-then-fine-tuned machinery
    without EfficientNet's compile time (this test compiles both step variants)."""

    @nn.compact
    def __call__(self, cond, *, train):
        h = nn.relu(nn.Conv(4, (3, 3), name=ENCODER)(cond))
        return jnp.tanh(nn.Conv(2, (3, 3))(h))


def test_encoder_is_frozen_then_fine_tuned_at_its_scale(monkeypatch):
    monkeypatch.setitem(models.GENERATORS, "efficientnet_unet",
                        lambda m, task, dtype: _ToyEncoderGenerator())
    config = tiny_config("colorizer_pretrained", None, num_steps=4, encoder_frozen_steps=2)
    config.optim.encoder_lr_scale, config.optim.decay_start = 0.1, 1.0
    gan = build_gan(config)
    assert gan.encoder == ENCODER and gan.encoder_frozen_steps == 2
    state = trainer_state(gan, 32)
    step = jit_train_step(gan, config)
    rng = np.random.default_rng(0)
    batch = {k: rng.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32) for k in ("lab", "rgb")}
    batch = sharding.to_global(batch, sharding.make_mesh())
    history = [jax.device_get(state.g)]
    for _ in range(4):
        state, _ = step(state, batch)
        history.append(jax.device_get(state.g))

    def changed(a, b, part):
        pairs = zip(jax.tree.leaves(a.params[part]), jax.tree.leaves(b.params[part]), strict=True)
        return all(not np.array_equal(x, y) for x, y in pairs)

    rest = next(k for k in history[0].params if k != ENCODER)
    for i in (1, 2):  # frozen: the encoder and its Adam state as initialised, the rest trains
        jax.tree.map(np.testing.assert_array_equal, history[i].params[ENCODER],
                     history[0].params[ENCODER])
        assert changed(history[i - 1], history[i], rest)
    enc_adam = history[2].opt_state.inner_states[ENCODER_LABEL].inner_state.inner_state
    assert all(not np.any(leaf) for leaf in jax.tree.leaves(enc_adam))
    # Unfrozen: Adam starts afresh (its first update is lr * sign(gradient), every element
    # moves by exactly encoder_lr_scale * g_lr), then keeps training.
    delta = jax.tree.map(lambda a, b: np.abs(a - b), history[3].params[ENCODER],
                         history[2].params[ENCODER])
    for leaf in jax.tree.leaves(delta):
        np.testing.assert_allclose(leaf, 0.1 * config.optim.g_lr, rtol=1e-3)
    assert changed(history[3], history[4], ENCODER)


def test_missing_weights_package_stops_the_trainer_at_start(tmp_path):
    workdir = tmp_path / "run"
    script = f"""
import sys
from jaxcolor.models import weights
weights.PRETRAINED["efficientnet-lite0-imagenet"] = ("jaxcolor_no_such_package", "x.pth",
                                                     "pretrained")
sys.argv = ["jaxcolor-train", "--config", {os.path.join(REPO, "experiments",
                                                        "colorizer_pretrained.py")!r},
            "--workdir", {str(workdir)!r}]
from jaxcolor.train import run
run()
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 1, result.stderr
    assert "pip install 'jaxcolor[pretrained]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not workdir.exists()  # nothing listed, written or compiled


def test_export_and_load_equal_the_run(tmp_path_factory, tmp_path):
    quick = load_experiment("colorizer_pretrained", "quick")
    assert quick.data.image_size == 64 and quick.model.generator == "efficientnet_unet"
    run = tiny_run(tmp_path_factory, "colorizer_pretrained", trained=False)
    meta = export_lib.export_run(run, str(tmp_path / "export"), platforms=("cpu",))
    assert meta["input_shape"] == "(b, 32*h, 32*w, 1) float32"
    image = synthetic_photo(5, 50, 80)
    from_run = jaxcolor.load(run).colorize(image)
    assert from_run.shape == image.shape
    np.testing.assert_array_equal(jaxcolor.load(str(tmp_path / "export")).colorize(image),
                                  from_run)
