"""The recipe's switches (issue 25): losses, DiffAugment, EMA, AdamW, phases, random-resized
crops and warm starts. Pure functions on tiny arrays, one fake export (shapes only, no compile)
and one tiny end-to-end run that turns every switch on at once."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import load_experiment, synthetic_photo, tiny_config, tiny_run
from test_train_loop import _scalars

from jaxcolor import config as config_lib
from jaxcolor import data
from jaxcolor.artifacts import format as artifact
from jaxcolor.data.examples import crop_box, random_resized_crop
from jaxcolor.training import diffaugment, losses
from jaxcolor.training.state import (
    EMAGANState,
    NetState,
    abstract_state,
    advance_schedule,
    build_gan,
    ema_update,
)
from jaxcolor.training.step import phase_at
from jaxcolor.training.warm_start import parse_source, warm_start


def _loss_cfg(**kw) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(load_experiment("lab_gan").loss.to_dict())
    cfg.update(kw)
    return cfg


def test_reconstruction_losses_follow_their_definitions():
    pred = jnp.zeros((1, 1, 2, 2))
    target = jnp.asarray([[[[3.0, 4.0], [0.001, 0.0]]]])  # errors (3, 4) and (0.001, 0)
    value = lambda name: float(losses.reconstruction(  # noqa: E731
        pred, target, _loss_cfg(huber_delta=0.01, reconstruction=name)))
    assert value("ab_euclid") == pytest.approx((5.0 + 0.001) / 2, rel=1e-5)
    assert value("l1") == pytest.approx((3 + 4 + 0.001) / 4, rel=1e-5)
    # Smooth L1: |e| - delta/2 beyond delta, e^2 / (2 delta) within.
    expected = ((3 - 0.005) + (4 - 0.005) + 0.001**2 / 0.02 + 0) / 4
    assert value("huber") == pytest.approx(expected, rel=1e-5)
    assert value("huber") != pytest.approx(value("l1"), rel=1e-4)


def test_hinge_losses_for_d_and_g():
    cfg = _loss_cfg(adversarial="hinge", label_flip=False, soft_labels=False)
    real, fake = jnp.asarray([2.0, 0.0]), jnp.asarray([-2.0, 0.5])
    loss, _ = losses.discriminator_loss(jax.random.PRNGKey(0), real, fake, cfg)
    # relu(1 - real) = (0, 1); relu(1 + fake) = (0, 1.5); halved sum of the means.
    assert float(loss) == pytest.approx(0.5 * (0.5 + 0.75))
    _, parts = losses.generator_loss(fake, jnp.zeros(2), jnp.zeros(2), cfg)
    assert float(parts["g_adv"]) == pytest.approx(-0.5 * (-2.0 + 0.5))  # -mean(D(fake))
    bce, _ = losses.discriminator_loss(jax.random.PRNGKey(0), real, fake,
                                       _loss_cfg(adversarial="bce", label_flip=False,
                                                 soft_labels=False))
    assert float(bce) != pytest.approx(float(loss))


def test_diffaugment_moves_pairs_together_and_passes_gradients():
    key = jax.random.PRNGKey(3)
    cond = jnp.arange(2 * 16 * 16, dtype=jnp.float32).reshape(2, 16, 16, 1) + 1.0
    image = jnp.concatenate([cond, -cond], axis=-1)
    moved = jax.jit(diffaugment.translation)(key, cond)  # one program, not one per op
    assert not np.array_equal(moved, cond)
    for i in range(2):  # each image is the input shifted by at most 2 pixels, zero-filled
        shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                  if np.array_equal(moved[i], _shift(cond[i], dy, dx))]
        assert len(shifts) == 1
    cut = jax.jit(diffaugment.cutout)(key, jnp.ones((4, 16, 16, 1)))
    zeroed = (np.asarray(cut) == 0).sum(axis=(1, 2, 3))
    assert ((zeroed > 0) & (zeroed <= 64)).all()  # at most an 8x8 square
    policy = diffaugment.parse_policy("translation, cutout")
    pair = jax.jit(lambda c, im: diffaugment.augment_pair(policy, key, c, im))
    c, x = pair(cond, image)
    np.testing.assert_array_equal(x[..., :1], c)  # the condition and the image move together
    np.testing.assert_array_equal(x[..., 1:], -c)
    grad = jax.jit(jax.grad(lambda im: pair(cond, im)[1].sum()))(image)
    assert 0 < float(jnp.abs(grad).sum()) < image.size
    with pytest.raises(ValueError, match=r"loss\.diffaugment='color'"):
        diffaugment.parse_policy("color")


def _shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    h, w = x.shape[:2]
    out = np.zeros_like(x)
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        np.asarray(x)[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def test_ema_moves_towards_g_with_a_warm_up():
    g = NetState({"w": jnp.ones(3)}, {"mean": jnp.full(3, 2.0)}, None)
    ema = {"params": {"w": jnp.zeros(3)}, "batch_stats": {"mean": jnp.zeros(3)}}
    first = ema_update(ema, g, 0.999, jnp.asarray(0))  # decay min(0.999, 1/10)
    np.testing.assert_allclose(first["params"]["w"], 0.9)
    np.testing.assert_allclose(first["batch_stats"]["mean"], 1.8)  # statistics too
    late = ema_update(ema, g, 0.999, jnp.asarray(10**6))
    np.testing.assert_allclose(late["params"]["w"], 0.001, rtol=1e-4)


def test_weight_decay_shrinks_kernels_only_and_frozen_schedules_advance():
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
    zero = jax.tree.map(jnp.zeros_like, params)
    moved = {}
    for decay in (0.0, 0.5):
        config = load_experiment("lab_gan")
        config.optim.weight_decay = decay
        tx = build_gan(config).g_tx
        updates, _ = tx.update(zero, tx.init(params), params)
        moved[decay] = optax.apply_updates(params, updates)
    assert float(moved[0.0]["kernel"][0, 0]) == 1.0
    assert float(moved[0.5]["kernel"][0, 0]) < 1.0  # decayed by lr * 0.5
    assert float(moved[0.5]["bias"][0]) == 1.0  # biases are masked out

    tx = optax.adam(lambda count: count.astype(jnp.float32))
    state = tx.init(params)
    advanced = advance_schedule(state, 3)
    assert int(advanced[0].count) == 0  # Adam's own count (bias correction) is untouched
    schedule_counts = [s.count for s in jax.tree.leaves(
        advanced, is_leaf=lambda s: isinstance(s, optax.ScaleByScheduleState))
        if isinstance(s, optax.ScaleByScheduleState)]
    assert [int(c) for c in schedule_counts] == [3]


@pytest.mark.parametrize("preset", [None, "quick"])
def test_the_recipe_config_turns_the_switches_on(preset):
    config = config_lib.resolve(load_experiment("colorizer", preset))
    config_lib.validate(config)
    t = config.train
    assert 0 < t.recon_steps < t.recon_steps + t.critic_steps < t.num_steps
    assert config.model.ema_decay > 0 and config.model.spectral_norm and config.data.crop_scale
    assert build_gan(config).diffaugment == ("translation", "cutout")


@pytest.mark.parametrize(("key", "value"), [("model.ema_decay", 1.0), ("train.critic_steps", -1),
                                            ("data.crop_scale", (0.5, 0.2)),
                                            ("loss.huber_delta", 0.0)])
def test_bad_switch_values_fail_naming_the_key(key, value):
    config = load_experiment("colorizer")
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=rf"config key {key}="):
        config_lib.validate(config_lib.resolve(config))


def test_phases_are_a_function_of_the_step():
    train = ml_collections.ConfigDict({"recon_steps": 2, "critic_steps": 1})
    assert [phase_at(s, train) for s in range(5)] == ["recon", "recon", "critic", "gan", "gan"]
    assert phase_at(0, ml_collections.ConfigDict({})) == "gan"  # configs without phases


def test_random_resized_crops_cover_scale_and_ratio():
    rng = np.random.default_rng(0)
    boxes = [crop_box(300, 400, rng, (0.25, 0.5), (0.75, 4 / 3)) for _ in range(50)]
    for top, left, h, w in boxes:
        assert 0 <= top <= 300 - h and 0 <= left <= 400 - w
        assert 0.23 <= h * w / 120_000 <= 0.52 and 0.72 <= w / h <= 1.39
    assert len(set(boxes)) == 50
    photo = synthetic_photo(0, 96, 128)
    out = random_resized_crop(photo, 32, np.random.default_rng(1), (0.1, 0.2), (1.0, 1.0))
    assert out.shape == (32, 32, 3)
    margin = data.ExampleMaker(32, augment=True)
    crops = data.ExampleMaker(32, augment=True, crop_scale=(0.1, 0.2))
    a = margin.resize(photo, np.random.default_rng(1))
    b = crops.resize(photo, np.random.default_rng(1))
    assert np.abs(a.astype(float) - b.astype(float)).mean() > 5  # another part of the photo


def _fake_export(path: str, config, task: str = "lab") -> dict:
    """An exported-model folder holding random weights of ``config``'s G (no program)."""
    abstract = abstract_state(build_gan(config), config.data.image_size)
    rng = np.random.default_rng(0)
    weights = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(x.dtype),
                           {"params": abstract.g.params, "batch_stats": abstract.g.batch_stats})
    os.makedirs(path)
    np.savez(os.path.join(path, artifact.WEIGHTS_FILE), **artifact.flatten_weights(weights))
    with open(os.path.join(path, artifact.METADATA_FILE), "w") as f:
        json.dump({"format_version": artifact.FORMAT_VERSION, "task": task, "step": 7}, f)
    return weights


def _zeros_state(config):
    abstract = abstract_state(build_gan(config), config.data.image_size)
    return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract)


def test_warm_start_from_an_export_and_its_errors(tmp_path):
    config = tiny_config("lab_gan", None)
    config.model.ema_decay = 0.9
    weights = _fake_export(str(tmp_path / "export"), config)
    state = _zeros_state(config)
    assert isinstance(state, EMAGANState)
    config.train.init_from = str(tmp_path / "export")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    started, note = warm_start(state, config, device)
    for tree in (started.g.params, started.ema["params"]):
        for a, b in zip(jax.tree.leaves(weights["params"]), jax.tree.leaves(tree), strict=True):
            np.testing.assert_array_equal(a, b)
    assert float(np.abs(jax.tree.leaves(started.d.params)[0]).max()) == 0  # D stays fresh
    assert "exported model" in note and "D starts fresh" in note

    other = tiny_config("pix2pix_lab", None)
    other.train.init_from = str(tmp_path / "export")
    with pytest.raises(ValueError, match=r"train\.init_from.*generator.*does not fit"):
        warm_start(_zeros_state(other), other, device)
    with pytest.raises(ValueError, match=r"train\.init_from=.*neither a run"):
        parse_source(str(tmp_path / "nowhere:5"))
    with pytest.raises(ValueError, match=r"exported model \(one step\)"):
        parse_source(str(tmp_path / "export") + ":5")


@pytest.mark.slow  # three compiled phases of a tiny U-Net GAN
def test_every_switch_at_once_end_to_end(tmp_path_factory, tmp_path):
    """Warm start from a run, one step of each phase, EMA, spectral norm, DiffAugment,
    hinge + Huber, AdamW and random-resized crops: each switch leaves a trace."""
    from jaxcolor.inference.loading import restore_generator
    from jaxcolor.training.loop import train

    source = tiny_run(tmp_path_factory, "pix2pix_lab", trained=False)  # random weights
    photos = str(tmp_path_factory.getbasetemp() / "jaxcolor_photos")
    config = tiny_config("pix2pix_lab", photos, num_steps=3, recon_steps=1, critic_steps=1,
                         init_from=source)
    config.model.ngf = config.model.ndf = 8  # the source's widths (conftest._run_config)
    config.model.ema_decay, config.model.spectral_norm = 0.99, True
    config.loss.diffaugment, config.loss.adversarial = "translation,cutout", "hinge"
    config.loss.reconstruction, config.optim.weight_decay = "huber", 0.01
    config.data.crop_scale = (0.3, 1.0)
    workdir = str(tmp_path / "run")
    state = train(config, workdir)

    assert _scalars(workdir, "train/phase") == {1: 0, 2: 1, 3: 2}
    d_loss, g_adv = _scalars(workdir, "train/d_loss"), _scalars(workdir, "train/g_adv")
    assert d_loss[1] == 0 and d_loss[2] != 0  # no D while reconstructing; D trains after
    assert g_adv[2] == 0 and g_adv[3] != 0  # G frozen in the critic phase

    warm = restore_generator(source)[2]["params"]  # G from the source: two updates since
    for old, new in zip(jax.tree.leaves(warm), jax.tree.leaves(state.g.params), strict=True):
        assert np.abs(np.asarray(old) - np.asarray(new)).max() <= 3 * config.optim.g_lr
    assert "SpectralNorm_0" in state.d.batch_stats and "BatchNorm_0" not in state.d.params
    # Readers get the EMA, which differs from G.
    variables = restore_generator(workdir)[2]
    for ema, read in zip(jax.tree.leaves(state.ema), jax.tree.leaves(variables), strict=True):
        np.testing.assert_array_equal(np.asarray(ema), np.asarray(read))
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
        jax.tree.leaves(state.ema["params"]), jax.tree.leaves(state.g.params), strict=True))
