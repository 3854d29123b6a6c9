"""The convolution formulations of ``jaxcolor.models.kernels`` equal XLA's native op in values and
gradients (input and weight), at several shapes, and leave the parameter tree unchanged.

Tolerances come from the conditioning of a sum of K products: with random operands, the rounding
error of each output is about eps * sqrt(K) times the norm of its terms, and the terms' norm is
at most sqrt(K) times the output's, so norm-relative errors stay below a small multiple of
eps * K. Float64 comparisons isolate the reformulation (summation order only); float32 ones
compare the production dtype against a float64 reference.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_once

from jaxcolor.models import kernels
from jaxcolor.models.lab_gan import LabGenerator
from jaxcolor.models.layers import Conv, ConvTranspose
from jaxcolor.models.pix2pix import PatchGANDiscriminator, UNetGenerator

# jax.enable_x64 is the context manager in current releases; older ones had it in experimental.
enable_x64 = jax.enable_x64 if hasattr(jax, "enable_x64") else jax.experimental.enable_x64

# (batch, height, width, in, out, kernel, stride, padding)
SHAPES = [
    (2, 8, 8, 16, 12, 3, 1, "SAME"),  # the LAB GAN's 3x3 blocks
    (2, 8, 6, 3, 8, 3, 2, "SAME"),  # its stride-2 3x3 (asymmetric 'SAME' padding)
    (2, 8, 8, 6, 10, 4, 2, 1),  # U-Net, PatchGAN, DCGAN 4x4 stride-2 (space-to-depth)
    (1, 7, 9, 5, 4, 4, 2, 1),  # odd sizes: the last padded row/column is never read
    (3, 6, 6, 1, 4, 4, 2, 1),  # one input channel (the L condition)
    (2, 5, 5, 8, 1, 4, 1, 1),  # PatchGAN's stride-1 4x4 layers
    (2, 6, 7, 8, 6, 2, 1, ((1, 0), (0, 1))),  # a sub-pixel phase of the transposed conv
]


@pytest.fixture(autouse=True)
def _full_float32():
    """Float32 convolutions at full precision on every backend. On NVIDIA GPUs JAX's default
    precision lets them run in TF32 (10-bit mantissa; relative errors near 1e-3), which says
    nothing about the formulations these bounds are for. On CPU this changes nothing."""
    with jax.default_matmul_precision("float32"):
        yield


def _relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _value_and_grads(impl, x, w, cot, stride, padding):
    def f(x, w):
        return kernels.conv2d(x, w, stride, padding, impl)

    y, pullback = jax.vjp(f, x, w)
    return (y, *pullback(cot))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:7])))
def test_fast_conv_equals_native(shape):
    n, h, wd, ci, co, k, stride, pad = shape
    rng = np.random.default_rng(sum(shape[:7]))
    x = rng.standard_normal((n, h, wd, ci))
    w = rng.standard_normal((k, k, ci, co))
    padding = kernels.explicit_padding(pad, x.shape, (k, k), stride)
    out_shape = jax.eval_shape(
        lambda: kernels.conv2d(jnp.zeros(x.shape), jnp.zeros(w.shape), stride, padding, "native"))
    cot = rng.standard_normal(out_shape.shape)
    # Reduction lengths: output and input gradient sum k*k*ci (resp. co) terms, the weight
    # gradient sums over every output position.
    lengths = (k * k * ci, k * k * co, n * out_shape.shape[1] * out_shape.shape[2])
    with enable_x64(True):
        ref = _value_and_grads("native", x, w, cot, stride, padding)
        fast64 = _value_and_grads("fast", x, w, cot, stride, padding)
        fast32 = _value_and_grads("fast", *(a.astype(np.float32) for a in (x, w, cot)), stride,
                                  padding)
        assert fast32[0].dtype == jnp.float32 and fast32[2].dtype == jnp.float32
    for name, r, f64, f32, length in zip(("value", "d/dx", "d/dw"), ref, fast64, fast32, lengths,
                                         strict=True):
        assert f64.shape == r.shape, name
        assert _relative(f64, r) < 4 * np.finfo(np.float64).eps * length, name
        assert _relative(f32, r) < 4 * np.finfo(np.float32).eps * length, name


def test_conv_matches_flax_conv_parameters_and_values():
    """Same parameter names, shapes and initial values as ``flax.linen.Conv``, same output."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 3)), jnp.float32)
    for kwargs in ({"kernel_size": (3, 3), "strides": 2, "use_bias": False},
                   {"kernel_size": (4, 4), "strides": 2, "padding": 1}):
        ours = Conv(5, **kwargs)
        ref = nn.Conv(5, kernel_init=nn.initializers.normal(0.02), **kwargs)
        v_ours, v_ref = ours.init(jax.random.PRNGKey(0), x), ref.init(jax.random.PRNGKey(0), x)
        assert jax.tree.map(jnp.shape, v_ours) == jax.tree.map(jnp.shape, v_ref)
        np.testing.assert_array_equal(v_ours["params"]["kernel"], v_ref["params"]["kernel"])
        for impl in kernels.IMPLS:
            with kernels.use_conv_impl(impl):
                y = jax.jit(ours.apply)(v_ours, x)
            y_ref = ref.apply(v_ref, x)
            assert _relative(y, y_ref) < 4 * np.finfo(np.float32).eps * 16 * 3, (kwargs, impl)


MODELS = [
    # Two of the ten 128-feature blocks: every layer kind, a fifth of the compile time.
    (lambda: LabGenerator(num_residual_free_blocks=2, dtype=jnp.float64), lambda x: (x[..., :1],),
     16),
    (lambda: UNetGenerator(out_channels=2, num_downs=5, base_features=4, dtype=jnp.float64),
     lambda x: (x[..., :1],), 32),
    (lambda: PatchGANDiscriminator(base_features=4, dtype=jnp.float64),
     lambda x: (x[..., :1], x[..., 1:]), 32),
]


@pytest.mark.slow  # three float64 network compiles, about a minute on 2 cores
@pytest.mark.parametrize("model", MODELS, ids=["lab_gan", "unet", "patchgan"])
def test_networks_equal_across_formulations(model):
    """Whole networks in train mode (BatchNorm, transposed convs, skips): same parameter tree,
    same outputs and parameter gradients under both formulations, in float64."""
    build, inputs, size = model
    module = build()
    x = np.random.default_rng(1).uniform(-1, 1, (2, size, size, 3))
    with enable_x64(True):
        keys = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
        shapes = {}
        for impl in kernels.IMPLS:
            with kernels.use_conv_impl(impl):
                shapes[impl] = jax.eval_shape(
                    lambda: module.init(keys, *inputs(x), train=False))
        assert jax.tree.map(jnp.shape, shapes["native"]) == jax.tree.map(jnp.shape, shapes["fast"])
        variables = {"native": init_once(module, keys, *inputs(x), train=False)}
        params = jax.tree.map(lambda a: a.astype(jnp.float64), variables["native"]["params"])
        stats = variables["native"].get("batch_stats", {})

        def loss(params, impl):
            with kernels.use_conv_impl(impl):
                out, _ = module.apply({"params": params, "batch_stats": stats}, *inputs(x),
                                      train=True, rngs={"dropout": jax.random.PRNGKey(2)},
                                      mutable=["batch_stats"])
            return jnp.sum(out * jnp.cos(3.0 * out)), out

        # jit: op-by-op dispatch of a whole network in float64 is slower than compiling it.
        grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
        (_, out_n), g_n = grad(params, "native")
        (_, out_f), g_f = grad(params, "fast")
    # float64 throughout: differences are summation order only, amplified at most by the
    # network's depth (BatchNorm's normalisation by small variances included).
    assert _relative(out_f, out_n) < 1e-10
    for path, a in jax.tree_util.tree_leaves_with_path(g_f):
        b = dict(jax.tree_util.tree_leaves_with_path(g_n))[path]
        assert _relative(a, b) < 1e-8, jax.tree_util.keystr(path)


def test_conv_transpose_subpixel_uses_formulation():
    """The sub-pixel transposed convolution equals the native one under both formulations."""
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 5, 6, 4)), jnp.float32)
    native = ConvTranspose(3, subpixel=False)
    variables = native.init(jax.random.PRNGKey(0), x)

    def f(params, module, impl):
        with kernels.use_conv_impl(impl):
            return jnp.sum(jnp.sin(module.apply({"params": params}, x)))

    ref = jax.grad(f)(variables["params"], native, "native")
    for impl in kernels.IMPLS:
        got = jax.grad(f)(variables["params"], ConvTranspose(3, subpixel=True), impl)
        for k in ("kernel", "bias"):
            assert _relative(got[k], ref[k]) < 4 * np.finfo(np.float32).eps * 2 * 5 * 6, (impl, k)


def _convolutions(module, x, **context) -> int:
    """Convolutions in the program of ``module`` applied to ``x``, traced under ``context``."""
    variables = module.init(jax.random.PRNGKey(0), x)
    with kernels.use_impls(**context):
        # A new function per trace: JAX caches traces per function.
        text = jax.jit(lambda v, x: module.apply(v, x)).lower(variables, x).as_text()
    return text.count("stablehlo.convolution")


def test_transposed_convolution_follows_the_backend_choice_and_its_override():
    """ConvTranspose(subpixel=None) runs as ``transpose_impl()`` says: one native op, or four
    sub-pixel phases; the per-backend table decides unless ``use_transpose_impl`` overrides it."""
    x = jnp.zeros((1, 4, 4, 2))
    assert _convolutions(ConvTranspose(3), x, transpose="native") == 1
    assert _convolutions(ConvTranspose(3), x, transpose="subpixel") == 4
    assert _convolutions(ConvTranspose(3, subpixel=False), x, transpose="subpixel") == 1
    default = kernels.TRANSPOSE_BY_BACKEND.get(jax.default_backend(), "native")
    assert kernels.transpose_impl() == default
    assert _convolutions(ConvTranspose(3), x) == {"native": 1, "subpixel": 4}[default]
    assert kernels.TRANSPOSE_BY_BACKEND["cpu"] == "subpixel"
    with pytest.raises(ValueError, match="transpose impl 'dense' is unknown"):
        with kernels.use_transpose_impl("dense"):
            pass


# (batch, height, width, channels, kernel, stride): EfficientNet's 3x3 and 5x5 depthwise layers,
# stride 2 on odd and even sizes ('SAME': the extra padding after).
DEPTHWISE = [(2, 8, 8, 6, 3, 1), (2, 9, 7, 5, 3, 2), (1, 10, 8, 4, 5, 2), (2, 6, 7, 3, 5, 1)]


@pytest.mark.parametrize("shape", DEPTHWISE, ids=lambda s: "x".join(map(str, s)))
def test_depthwise_taps_equal_grouped_convolution(shape):
    """The "taps" depthwise formulation (CPU's) equals XLA's grouped convolution in values and
    both gradients, in float64 (summation order only) and float32."""
    n, h, wd, c, k, stride = shape
    rng = np.random.default_rng(sum(shape))
    x, w = rng.standard_normal((n, h, wd, c)), rng.standard_normal((k, k, 1, c))
    padding = kernels.explicit_padding("SAME", x.shape, (k, k), stride)
    out = (n, -(-h // stride), -(-wd // stride), c)
    cot = rng.standard_normal(out)

    @jax.jit
    def both(x, w, cot):
        results = []
        for impl in kernels.DEPTHWISE_IMPLS:
            y, pullback = jax.vjp(
                lambda x, w, impl=impl: kernels.depthwise_conv2d(x, w, stride, padding, impl),
                x, w)
            results.append((y, *pullback(cot)))
        return results

    with enable_x64(True):
        native, taps = both(x, w, cot)
        native32, taps32 = both(*(a.astype(np.float32) for a in (x, w, cot)))
    for name, r, t, t32, length in zip(("value", "d/dx", "d/dw"), native, taps, taps32,
                                       (k * k, k * k, n * out[1] * out[2]), strict=True):
        assert t.shape == r.shape and t32.dtype == jnp.float32, name
        assert _relative(t, r) < 4 * np.finfo(np.float64).eps * length, name
        assert _relative(t32, r) < 4 * np.finfo(np.float32).eps * length, name
    assert kernels.depthwise_impl() == kernels.DEPTHWISE_BY_BACKEND.get(jax.default_backend(),
                                                                       "native")
