"""EfficientNet-Lite (Tan & Le 2019; the "Lite" variant for mobile accelerators): MBConv blocks
with ReLU6, no squeeze-and-excitation, a fixed 32-channel stem and 1280-channel head.

Input: NHWC RGB normalised as ``(rgb_uint8 - 127) / 128``. ``EfficientNetLite()`` is Lite0;
``lite_variables`` turns the ImageNet weights of a lukemelas-style PyTorch Lite0 (``_conv_stem``,
``_blocks.N._depthwise_conv`` ...) into its Flax variables. ``features`` returns the stage outputs
at strides 2, 4, 8, 16 and 32, the skips of a U-Net decoder.

Padding is TensorFlow's "SAME" (the extra row/column after, for stride 2) and BatchNorm epsilon
is 1e-3, as in the TensorFlow models the weights come from: symmetric padding or epsilon 1e-5
move the ImageNet probabilities away from PyTorch's (tests/test_efficientnet.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcolor.models.layers import Conv, DepthwiseConv
from jaxcolor.models.weights import read_weights, resolve_weights

BN_EPSILON = 1e-3


class Stage(NamedTuple):
    """One stage of MBConv blocks: the first block has ``stride``, the others stride 1."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    features: int


# Lite0: EfficientNet-B0's stages (width and depth multipliers 1.0).
LITE0_STAGES: tuple[Stage, ...] = (
    Stage(1, 3, 1, 1, 16),
    Stage(2, 3, 2, 6, 24),
    Stage(2, 5, 2, 6, 40),
    Stage(3, 3, 2, 6, 80),
    Stage(3, 5, 1, 6, 112),
    Stage(4, 5, 2, 6, 192),
    Stage(1, 3, 1, 6, 320),
)


def relu6(x: jax.Array) -> jax.Array:
    """min(max(x, 0), 6)."""
    return jnp.clip(x, 0, 6)


def _batch_norm(dtype, name: str | None = None) -> nn.BatchNorm:
    # TensorFlow's momentum 0.99 and epsilon 1e-3, which the pretrained statistics assume.
    return nn.BatchNorm(momentum=0.99, epsilon=BN_EPSILON, use_fast_variance=False, dtype=dtype,
                        param_dtype=jnp.float32, name=name)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion (none when ``expand`` is 1), k x k depthwise conv, 1x1
    linear projection; ReLU6 after the first two; identity skip when the shape is kept."""

    features: int
    kernel: int
    stride: int
    expand: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        inputs = x
        hidden = x.shape[-1] * self.expand
        if self.expand != 1:
            x = Conv(hidden, (1, 1), use_bias=False, dtype=self.dtype, name="expand_conv")(x)
            x = relu6(_batch_norm(self.dtype, name="expand_bn")(x, use_running_average=not train))
        x = DepthwiseConv(self.kernel, self.stride, dtype=self.dtype, name="depthwise_conv")(x)
        x = relu6(_batch_norm(self.dtype, name="depthwise_bn")(x, use_running_average=not train))
        x = Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype, name="project_conv")(x)
        x = _batch_norm(self.dtype, name="project_bn")(x, use_running_average=not train)
        if self.stride == 1 and inputs.shape[-1] == self.features:
            x = x + inputs
        return x


def block_list(stages: Sequence[Stage]) -> list[tuple[int, int, int, int]]:
    """Every block's (features, kernel, stride, expand), in order."""
    return [
        (st.features, st.kernel, st.stride if r == 0 else 1, st.expand)
        for st in stages
        for r in range(st.repeats)
    ]


def feature_taps(stages: Sequence[Stage]) -> tuple[int, ...]:
    """Indices of the blocks whose outputs ``EfficientNetLite.features`` returns: the last block
    before each downsampling and the last block (Lite0: 0, 2, 4, 10, 15 -> strides 2 ... 32)."""
    taps, end = [], -1
    for s, st in enumerate(stages):
        end += st.repeats
        if s + 1 == len(stages) or stages[s + 1].stride > 1:
            taps.append(end)
    return tuple(taps)


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier and multi-scale encoder (defaults: Lite0, 1000 classes).

    ``model.apply(variables, x, train=False)`` gives float32 logits (N, num_classes);
    ``model.apply(variables, x, train=False, method="features")`` gives the feature maps of
    ``feature_taps`` (Lite0: 16, 24, 40, 112, 320 channels at H/2 ... H/32). An encoder that
    only calls ``features`` creates no head or classifier parameters. Parameters are float32;
    ``dtype`` is the compute dtype. ``train=True`` switches BatchNorm to batch statistics; the
    ImageNet training regularisers (dropout before the classifier, drop-connect) are left out.
    """

    stages: Sequence[Stage] = LITE0_STAGES
    stem_features: int = 32
    head_features: int = 1280
    num_classes: int = 1000
    dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        self.stem_conv = Conv(self.stem_features, (3, 3), strides=2, use_bias=False,
                              dtype=self.dtype)
        self.stem_bn = _batch_norm(self.dtype)
        self.blocks = [MBConv(f, k, s, e, dtype=self.dtype)
                       for f, k, s, e in block_list(self.stages)]
        self.head_conv = Conv(self.head_features, (1, 1), use_bias=False, dtype=self.dtype)
        self.head_bn = _batch_norm(self.dtype)
        self.classifier = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)

    def _trunk(self, x: jax.Array, train: bool) -> tuple[jax.Array, list[jax.Array]]:
        x = self.stem_conv(x.astype(self.dtype))
        x = relu6(self.stem_bn(x, use_running_average=not train))
        taps, outs = feature_taps(self.stages), []
        for i, block in enumerate(self.blocks):
            x = block(x, train=train)
            if i in taps:
                outs.append(x)
        return x, outs

    def features(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, ...]:
        """Stage outputs at strides 2, 4, 8, 16, 32 (for Lite0), shallowest first."""
        return tuple(self._trunk(x, train)[1])

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x, _ = self._trunk(x, train)
        x = relu6(self.head_bn(self.head_conv(x), use_running_average=not train))
        x = jnp.mean(x, axis=(1, 2))
        return self.classifier(x).astype(jnp.float32)


# Flax module names -> lukemelas-style PyTorch names. Top-level _bn0/_bn1 are the stem and head
# BatchNorms; inside a block _bn0/_bn1/_bn2 follow the expansion, depthwise and projection convs.
_TORCH_MODULES = {
    "stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head", "head_bn": "_bn1",
    "classifier": "_fc", "expand_conv": "_expand_conv", "expand_bn": "_bn0",
    "depthwise_conv": "_depthwise_conv", "depthwise_bn": "_bn1", "project_conv": "_project_conv",
    "project_bn": "_bn2",
}
_TORCH_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                 "var": "running_var"}
_HEAD_PREFIXES = ("_conv_head.", "_bn1.", "_fc.")


def torch_name(path: Sequence[str]) -> str:
    """The PyTorch state_dict key of a Flax variable path (module names..., leaf name)."""
    *modules, leaf = path
    parts = [f"_blocks.{m.split('_')[1]}" if m.startswith("blocks_") else _TORCH_MODULES[m]
             for m in modules]
    return ".".join([*parts, _TORCH_LEAVES[leaf]])


def _to_flax(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:  # conv OIHW (depthwise: O, 1, H, W) -> HWIO (H, W, 1, O)
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2:  # Linear (out, in) -> Dense (in, out)
        return value.T
    return value


def lite_variables(state_dict: Mapping[str, np.ndarray], model: EfficientNetLite | None = None,
                   *, head: bool = True, source: str = "state_dict") -> dict:
    """Flax variables (``params``, ``batch_stats``; float32 NumPy) of ``model`` (default Lite0)
    from a lukemelas-style PyTorch EfficientNet-Lite state_dict.

    ``head=False`` maps only what ``model.features`` uses; the file's head and classifier are then
    ignored. Every expected key must be present with the expected shape, and no other key may be
    (``num_batches_tracked`` aside): otherwise ``ValueError`` names the keys and ``source``.
    """
    model = model or EfficientNetLite()
    x = jnp.zeros((1, 32, 32, 3))
    expected = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), x, train=False,
                           method=None if head else "features")
    )
    leaves = jax.tree_util.tree_flatten_with_path(expected)[0]
    out: dict = {}
    used, problems = set(), []
    for key_path, shape_dtype in leaves:
        path = [k.key for k in key_path]
        name = torch_name(path[1:])
        if name not in state_dict:
            problems.append(f"missing {name} (for {'/'.join(path)})")
            continue
        used.add(name)
        value = _to_flax(np.asarray(state_dict[name]))
        if value.shape != shape_dtype.shape:
            problems.append(f"{name}: shape {np.shape(state_dict[name])} in the file, expected "
                            f"{_to_torch_shape(shape_dtype.shape)}")
            continue
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value.astype(np.float32)
    ignored = () if head else _HEAD_PREFIXES
    problems += [f"unexpected {k}" for k in state_dict
                 if k not in used and not k.endswith(".num_batches_tracked")
                 and not k.startswith(ignored)]
    if problems:
        shown = "; ".join(problems[:8]) + ("; ..." if len(problems) > 8 else "")
        raise ValueError(f"{source}: not the weights of this EfficientNet-Lite "
                         f"({len(problems)} problems): {shown}")
    return out


def _to_torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    return shape[::-1] if len(shape) == 2 else shape


def pretrained_variables(weights: str | os.PathLike, model: EfficientNetLite | None = None,
                         *, head: bool = True) -> dict:
    """``lite_variables`` of a weights name (``jaxcolor.models.weights.PRETRAINED``, e.g.
    "efficientnet-lite0-imagenet") or a ``.pth``/``.safetensors`` path."""
    path = resolve_weights(str(weights))
    return lite_variables(read_weights(path), model, head=head, source=str(path))
