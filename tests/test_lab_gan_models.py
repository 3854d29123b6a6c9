"""The origin's LAB GAN networks: shapes for any size divisible by 4, layer list, logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from conftest import init_once

from jaxcolor.models.lab_gan import DCGANDiscriminator, LabGenerator


@pytest.mark.parametrize("height, width", [(32, 32), (44, 44), (32, 48), (256, 256)])
def test_generator_output_size_equals_input_size(height, width):
    gen = LabGenerator()
    x = jnp.zeros((2, height, width, 1))
    variables = jax.eval_shape(lambda: gen.init(jax.random.PRNGKey(0), x, train=False))
    out = jax.eval_shape(lambda v: gen.apply(v, x, train=False), variables)
    assert out.shape == (2, height, width, 2)
    assert out.dtype == jnp.float32


def test_generator_follows_the_origin_layer_list():
    gen = LabGenerator()
    x = jnp.linspace(-1, 1, 2 * 32 * 32).reshape(2, 32, 32, 1)
    variables = init_once(gen, jax.random.PRNGKey(0), x, train=False)
    params = variables["params"]
    convs = [params[f"Conv_{i}"]["kernel"].shape for i in range(14)]
    assert convs[:3] == [(3, 3, 1, 32), (3, 3, 32, 64), (3, 3, 64, 128)]
    assert convs[3:13] == [(3, 3, 128, 128)] * 10
    assert convs[13] == (3, 3, 32, 2)
    assert params["ConvTranspose_0"]["kernel"].shape == (4, 4, 128, 64)
    assert params["ConvTranspose_1"]["kernel"].shape == (4, 4, 64, 32)
    assert len([k for k in params if k.startswith("BatchNorm")]) == 15
    assert "bias" not in params["Conv_0"] and "bias" in params["Conv_13"]  # no bias before BN
    out = gen.apply(variables, x, train=False)
    assert float(jnp.abs(out).max()) < 1.0  # tanh


@pytest.mark.parametrize("size", [32, pytest.param(64, marks=pytest.mark.slow)])
def test_discriminator_gives_one_logit_per_image(size):
    disc = DCGANDiscriminator()
    cond, image = jnp.zeros((3, size, size, 1)), jnp.ones((3, size, size, 2))
    variables = init_once(disc, jax.random.PRNGKey(0), cond, image, train=False)
    logits, _ = disc.apply(variables, cond, image, train=True, mutable=["batch_stats"])
    assert logits.shape == (3, 1)
    assert "BatchNorm_0" in variables["batch_stats"]
