"""Model FLOPs of a JAX function, counted from its jaxpr: 2 per multiply-add of every convolution
and matrix product, the usual numerator of MFU (model FLOPs utilisation).

Counting the jaxpr rather than asking XLA keeps the figure the same on every backend: XLA's cost
analysis of a compiled GPU program counts no cuDNN convolution, and the lowered program's
analysis was seen to return nothing on GPU. Like XLA's CPU analysis, a convolution counts only
the products of kernel taps with real input elements: not padding, and not the holes of a
dilated input (transposed convolutions and input gradients of strided ones).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np


def _valid_taps(size: int, out: int, kernel: int, stride: int, pad_lo: int, lhs_dil: int,
                rhs_dil: int) -> int:
    """(output position, kernel tap) pairs of one spatial dimension that read an input element."""
    pos = (np.arange(out)[:, None] * stride + np.arange(kernel)[None, :] * rhs_dil - pad_lo)
    valid = (pos >= 0) & (pos <= (size - 1) * lhs_dil) & (pos % lhs_dil == 0)
    return int(valid.sum())


def _conv_macs(eqn) -> int:
    p = eqn.params
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    out = eqn.outvars[0].aval.shape
    lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
    # Each output element sums (in features per group) x (valid taps); batch and feature groups
    # only partition which inputs an output reads.
    macs = out[out_spec[0]] * out[out_spec[1]] * rhs[rhs_spec[1]]
    for d in range(len(lhs_spec) - 2):
        macs *= _valid_taps(lhs[lhs_spec[2 + d]], out[out_spec[2 + d]], rhs[rhs_spec[2 + d]],
                            p["window_strides"][d], p["padding"][d][0], p["lhs_dilation"][d],
                            p["rhs_dilation"][d])
    return macs


def _dot_macs(eqn) -> int:
    (contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return int(np.prod(eqn.outvars[0].aval.shape, dtype=np.int64)
               * np.prod([lhs[d] for d in contract], dtype=np.int64))


def _sub_jaxprs(params: dict) -> Iterator[Any]:
    for value in params.values():
        for v in value if isinstance(value, list | tuple) else (value,):
            if hasattr(v, "eqns"):
                yield v
            elif hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
                yield v.jaxpr


def _jaxpr_macs(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            total += _conv_macs(eqn)
        elif name == "dot_general":
            total += _dot_macs(eqn)
        else:
            subs = [_jaxpr_macs(j) for j in _sub_jaxprs(eqn.params)]
            if name == "cond":  # one branch runs: count the dearest
                total += max(subs, default=0)
            else:  # a scan runs its body `length` times; a while loop is counted once
                total += sum(subs) * eqn.params.get("length", 1)
    return total


def model_flops(fn: Callable, *args: Any) -> float:
    """FLOPs (2 per multiply-add) of the convolutions and matrix products of ``fn(*args)``.
    ``args`` may be arrays or ``jax.ShapeDtypeStruct``s; nothing is computed or compiled."""
    return 2.0 * _jaxpr_macs(jax.make_jaxpr(fn)(*args).jaxpr)
