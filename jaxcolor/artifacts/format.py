"""The exported model folder: its files, and loading it with JAX alone (no flax, no Orbax).

An exported model (``python -m jaxcolor.export``) is a folder holding::

    jaxcolor_model.json   metadata: task, pre/post-processing, sizes, step, metrics, versions,
                          how the run was evaluated (``evaluation``; older exports lack it)
                          the default colour strength (``colour_strength``, calibrated for the
                          step) and the training-photo baselines
    generator.jaxexport   the generator in inference mode, serialised with ``jax.export``
                          (StableHLO), called as ``f(weights, cond) -> output``
    weights.npz           the generator's parameters and BatchNorm statistics, keyed by path

The metadata's ``preprocessing`` and ``postprocessing`` describe, in words and numbers, what
another runtime must do around the network (Lab normalisation, recombination rule); here,
``jaxcolor.inference.predictor`` does it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from jaxcolor.inference.model import Model, make_model

METADATA_FILE = "jaxcolor_model.json"
PROGRAM_FILE = "generator.jaxexport"
WEIGHTS_FILE = "weights.npz"
FORMAT_VERSION = 1
_SEP = "/"
# Metadata a run's step carries into its export (see ``inference.loading.run_metadata``).
EXTRA_KEYS = ("colour_strength", "calibration", "baselines")


def is_export(path: str) -> bool:
    """Whether ``path`` is an exported model folder."""
    return os.path.isfile(os.path.join(path, METADATA_FILE))


def flatten_weights(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts of arrays -> {"params/conv/kernel": array} (for ``weights.npz``)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{_SEP}{key}" if prefix else str(key)
        if _SEP in str(key):
            raise ValueError(f"weight name {key!r} contains {_SEP!r}")
        if hasattr(value, "items"):
            flat.update(flatten_weights(value, name))
        else:
            flat[name] = np.asarray(value)
    return flat


def unflatten_weights(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    """The inverse of ``flatten_weights``: plain nested dicts (the exported program's tree)."""
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split(_SEP)
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def read_metadata(path: str) -> dict[str, Any]:
    """An exported model's metadata; ValueError naming the file when it is unusable."""
    file = os.path.join(path, METADATA_FILE)
    try:
        with open(file) as f:
            metadata = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: cannot read the model's metadata ({e})") from None
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{file}: format_version {metadata.get('format_version')!r} is not "
                         f"{FORMAT_VERSION}; re-export the run with this jaxcolor")
    return metadata


def read_weights(path: str) -> dict[str, Any]:
    """An exported model's generator variables (``{"params", "batch_stats"}``, NumPy arrays)."""
    with np.load(os.path.join(path, WEIGHTS_FILE)) as npz:
        return unflatten_weights({k: npz[k] for k in npz.files})


def load_export(path: str, *, batch_size: int = 8) -> Model:
    """An exported model folder as a ``Model`` (on the first local device)."""
    from jax import export

    metadata = read_metadata(path)
    with open(os.path.join(path, PROGRAM_FILE), "rb") as f:
        exported = export.deserialize(bytearray(f.read()))
    platform = jax.local_devices()[0].platform
    if platform not in exported.platforms:
        raise ValueError(f"{path}: exported for {list(exported.platforms)}, not for this "
                         f"{platform!r} device; re-export with --platforms")
    weights = read_weights(path)
    info = {k: metadata[k] for k in ("task", "experiment", "generator", "image_size", "step",
                                     "metrics")}
    # Exports from before colour strength and baselines: strength 1.0, no baselines.
    info.update({k: metadata.get(k) for k in EXTRA_KEYS},
                colour_strength=metadata.get("colour_strength", 1.0))
    info.update(source="export", path=os.path.abspath(path))
    return make_model(metadata["task"], lambda w, cond: exported.call(w, cond), weights,
                      image_size=metadata["image_size"], multiple=metadata["size_multiple"],
                      batch_size=batch_size, metadata=info,
                      devices=jax.local_devices()[:1])
