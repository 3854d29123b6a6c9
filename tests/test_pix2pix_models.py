"""Pix2Pix U-Net and PatchGAN: shapes, reference parameter counts, dropout modes, init, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_once

from jaxcolor.models.pix2pix import PatchGANDiscriminator, UNetGenerator


def _abstract_init(model, *inputs):
    return jax.eval_shape(lambda *xs: model.init(jax.random.key(0), *xs, train=False), *inputs)


def _num_params(variables) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables["params"]))


def _zeros(size: int, channels: int):
    return jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)


@pytest.mark.parametrize(("c_in", "c_out", "expected"), [(3, 3, 54_413_955), (1, 2, 54_409_858)])
def test_unet256_matches_reference(c_in, c_out, expected):
    model = UNetGenerator(out_channels=c_out)
    x = _zeros(256, c_in)
    variables = _abstract_init(model, x)
    assert _num_params(variables) == expected
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert out.shape == (1, 256, 256, c_out) and out.dtype == jnp.float32


@pytest.mark.parametrize(("c_in", "expected"), [(6, 2_768_705), (3, 2_765_633)])
def test_patchgan_matches_reference(c_in, expected):
    model = PatchGANDiscriminator()
    cond, image = _zeros(256, c_in // 2), _zeros(256, c_in - c_in // 2)
    variables = _abstract_init(model, cond, image)
    assert _num_params(variables) == expected
    out = jax.eval_shape(lambda v, c, i: model.apply(v, c, i, train=False), variables, cond, image)
    assert out.shape == (1, 30, 30, 1) and out.dtype == jnp.float32


@pytest.mark.slow  # a second eager PatchGAN size: full suite only
def test_patchgan_runs_at_64px():
    model = PatchGANDiscriminator(base_features=8)
    cond, image = jnp.ones((2, 64, 64, 1)), jnp.zeros((2, 64, 64, 2))
    variables = init_once(model, jax.random.key(0), cond, image, train=False)
    out, _ = model.apply(variables, cond, image, train=True, mutable=["batch_stats"])
    assert out.shape == (2, 6, 6, 1) and out.dtype == jnp.float32


@pytest.mark.parametrize(("height", "width", "num_downs"), [
    # Non-square in the fast subset; the square and the deepest U-Net in the full suite only.
    pytest.param(32, 32, 5, marks=pytest.mark.slow),
    pytest.param(64, 64, 6, marks=pytest.mark.slow),
    (32, 64, 5),
])
def test_unet_output_shape(height, width, num_downs):
    model = UNetGenerator(out_channels=2, num_downs=num_downs, base_features=8)
    x = jax.random.uniform(jax.random.key(1), (2, height, width, 1), minval=-1.0, maxval=1.0)
    variables = init_once(model, jax.random.key(0), x, train=False)
    out = model.apply(variables, x, train=False)
    assert out.shape == (2, height, width, 2) and out.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(out))) <= 1.0


def test_unet_bfloat16_compute_returns_float32():
    model = UNetGenerator(out_channels=2, num_downs=5, base_features=8, dtype=jnp.bfloat16)
    x = _zeros(32, 1)
    variables = _abstract_init(model, x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert out.dtype == jnp.float32


def _run_twice(model, train: bool):
    """Outputs of the same model and input under two different dropout keys."""
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 1))
    variables = init_once(model, jax.random.key(0), x, train=False)
    outs = []
    for seed in (1, 2):
        out = model.apply(
            variables,
            x,
            train=train,
            rngs={"dropout": jax.random.key(seed)},
            mutable=["batch_stats"],
        )[0]
        outs.append(np.asarray(out))
    return outs


def test_dropout_active_in_train_mode():
    a, b = _run_twice(UNetGenerator(out_channels=2, num_downs=6, base_features=8), train=True)
    assert np.abs(a - b).max() > 1e-4


def test_dropout_off_in_eval_mode():
    a, b = _run_twice(UNetGenerator(out_channels=2, num_downs=6, base_features=8), train=False)
    np.testing.assert_array_equal(a, b)
    # Without dropout rngs at all, eval must still run.
    model = UNetGenerator(out_channels=2, num_downs=6, base_features=8)
    x = jnp.zeros((1, 64, 64, 1))
    model.apply(init_once(model, jax.random.key(0), x, train=False), x, train=False)


def test_dropout_at_inference():
    model = UNetGenerator(out_channels=2, num_downs=6, base_features=8, dropout_at_inference=True)
    a, b = _run_twice(model, train=False)
    # Small in absolute terms: at init, N(0, 0.02) weights with unit running variance shrink the
    # activations, but without dropout the two outputs would be bitwise equal.
    assert not np.array_equal(a, b)


def test_num_downs_5_has_no_dropout_like_the_reference():
    a, b = _run_twice(UNetGenerator(out_channels=2, num_downs=5, base_features=8), train=True)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("size", "num_downs"), [(48, 5), (64, 7), (96, 6)])
def test_unet_rejects_indivisible_size(size, num_downs):
    model = UNetGenerator(out_channels=2, num_downs=num_downs)
    with pytest.raises(ValueError) as info:
        _abstract_init(model, _zeros(size, 1))
    assert f"model.num_downs={num_downs}" in str(info.value) and f"{size}x{size}" in str(info.value)


def test_unet_suggests_a_valid_num_downs():
    with pytest.raises(ValueError, match=r"num_downs <= 6"):
        _abstract_init(UNetGenerator(out_channels=2, num_downs=8), _zeros(192, 1))


def test_unet_rejects_too_few_downs():
    with pytest.raises(ValueError, match="num_downs"):
        _abstract_init(UNetGenerator(out_channels=2, num_downs=4), _zeros(32, 1))


def test_init_matches_pix2pix():
    model = UNetGenerator(out_channels=2, num_downs=5, base_features=32)
    x = jnp.zeros((1, 32, 32, 1))
    params = init_once(model, jax.random.key(0), x, train=False)["params"]
    kernels = [v["kernel"] for k, v in params.items() if k.startswith(("Conv_", "ConvTranspose_"))]
    assert len(kernels) == 10
    for kernel in kernels:
        if kernel.size >= 1000:
            assert abs(float(jnp.std(kernel)) - 0.02) < 0.002
            assert abs(float(jnp.mean(kernel))) < 0.003
    bn = [v for k, v in params.items() if k.startswith("BatchNorm_")]
    scales = jnp.concatenate([v["scale"] for v in bn])
    assert abs(float(jnp.mean(scales)) - 1.0) < 0.005
    assert 0.015 < float(jnp.std(scales)) < 0.025
    assert all(float(jnp.abs(v["bias"]).max()) == 0.0 for v in bn)


def test_patchgan_init():
    model = PatchGANDiscriminator()
    params = init_once(
        model, jax.random.key(0), jnp.zeros((1, 32, 32, 1)), jnp.zeros((1, 32, 32, 2)), train=False
    )["params"]
    for name in ("Conv_1", "Conv_2", "Conv_3"):
        assert abs(float(jnp.std(params[name]["kernel"])) - 0.02) < 0.002
    assert "bias" in params["Conv_0"] and "bias" in params["Conv_4"]
    assert all("bias" not in params[name] for name in ("Conv_1", "Conv_2", "Conv_3"))
    assert abs(float(jnp.mean(params["BatchNorm_0"]["scale"])) - 1.0) < 0.01
