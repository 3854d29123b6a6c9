"""ONNX export of a generator with ``jax2onnx`` (optional: ``pip install jaxcolor[onnx]``),
checked against JAX with ``onnxruntime``.

Kept apart from ``export`` so that it imports only JAX and NumPy besides the converter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

ONNX_FILE = "generator.onnx"


def to_onnx(apply: Callable[[Any, Any], Any], variables: Any, cond_channels: int,
            image_size: int, path: str) -> dict[str, Any]:
    """Writes ``apply(variables, cond)`` as ONNX (weights inside) to ``path``; returns facts.

    The batch is symbolic; height and width are symbolic too when the converter manages,
    else fixed to ``image_size``. With onnxruntime installed, the model is run on random
    inputs and its largest difference from JAX is reported (``max_abs_diff``).
    """
    import jax
    from jax2onnx import to_onnx as convert

    def fn(cond):
        return apply(variables, cond)

    try:
        model = convert(fn, [("B", "H", "W", cond_channels)], model_name="jaxcolor_generator")
        shape = ["B", "H", "W", cond_channels]
    except Exception:  # noqa: BLE001 - fall back to the training size
        model = convert(fn, [("B", image_size, image_size, cond_channels)],
                        model_name="jaxcolor_generator")
        shape = ["B", image_size, image_size, cond_channels]
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    facts: dict[str, Any] = {"file": path.rsplit("/", 1)[-1], "input_shape": shape,
                             "layout": "NHWC float32", "converter": "jax2onnx"}
    try:
        import onnxruntime
    except ImportError:
        return facts
    session = onnxruntime.InferenceSession(path)
    cond = np.random.default_rng(0).uniform(
        -1, 1, (2, image_size, image_size, cond_channels)).astype(np.float32)
    got = session.run(None, {session.get_inputs()[0].name: cond})[0]
    want = np.asarray(jax.jit(fn)(cond))
    facts["max_abs_diff"] = float(np.abs(got - want).max())
    return facts
