"""``jaxcolor.models.flops.model_flops`` counts what XLA's CPU cost analysis counts for
convolutions and matrix products, forward and backward, including strided, padded, dilated and
transposed ones."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxcolor.models import kernels, layers
from jaxcolor.models.flops import model_flops

_DN = ("NHWC", "HWIO", "NHWC")


def _xla_flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).cost_analysis()
    return float((cost[0] if isinstance(cost, list | tuple) else cost)["flops"])


def _with_vjp(fn):
    """Forward value and both gradients: every product is live, and no elementwise work."""
    def f(x, w, cot):
        y, pullback = jax.vjp(fn, x, w)
        return y, *pullback(cot)
    return f


OPS = {
    "conv 4x4 stride 2": lambda x, w: lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)),
                                                               dimension_numbers=_DN),
    "conv 3x3 asymmetric 'SAME'": lambda x, w: kernels.conv2d(x, w[:3, :3], 2, ((0, 1), (0, 1))),
    "conv 3x3 rhs-dilated": lambda x, w: lax.conv_general_dilated(
        x, w[:3, :3], (1, 1), ((2, 2), (2, 2)), rhs_dilation=(2, 2), dimension_numbers=_DN),
    "transposed conv": lambda x, w: lax.conv_transpose(x, w, (2, 2), "SAME",
                                                       dimension_numbers=_DN),
    "matmul": lambda x, w: jnp.einsum("nhwc,hwco->no", x[:, :4, :4], w),
}


@pytest.mark.parametrize("name", OPS)
def test_counts_match_xla_cost_analysis(name):
    x = jnp.zeros((2, 9, 10, 6))
    w = jnp.zeros((4, 4, 6, 5))
    cot = jnp.zeros(jax.eval_shape(OPS[name], x, w).shape)
    assert model_flops(OPS[name], x, w) == _xla_flops(OPS[name], x, w)
    fn = _with_vjp(OPS[name])
    assert model_flops(fn, x, w, cot) == _xla_flops(fn, x, w, cot)


def test_sub_pixel_and_native_transposed_convolutions_count_the_same():
    """The holes of a dilated input are not counted: four sub-pixel phases do the same work."""
    x, w = jnp.zeros((2, 5, 7, 6)), jnp.zeros((4, 4, 6, 5))
    assert model_flops(layers.subpixel_conv_transpose, x, w) == model_flops(OPS["transposed conv"],
                                                                            x, w)
    # Against the dilated input's full count (every tap at every output position):
    assert model_flops(OPS["transposed conv"], x, w) < 2 * 2 * 10 * 14 * 16 * 6 * 5


def test_scan_bodies_count_once_per_iteration():
    w = jnp.zeros((8, 8))

    def f(x):
        return lax.scan(lambda c, _: (c @ w, None), x, None, length=5)[0]

    assert model_flops(f, jnp.zeros((3, 8))) == 5 * 2 * 3 * 8 * 8
    assert model_flops(jax.jit(lambda x: x @ w), jnp.zeros((3, 8))) == 2 * 3 * 8 * 8  # pjit body
    assert np.isclose(model_flops(f, jax.ShapeDtypeStruct((3, 8), jnp.float32)), 5 * 2 * 3 * 64)
