"""Writing the exported model folder of a run's checkpoint (see ``jaxcolor.artifacts.format``)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxcolor import colour, runs
from jaxcolor.artifacts import format as artifact
from jaxcolor.runs import Step
from jaxcolor.tasks import LUMA_WEIGHTS, get_task

PLATFORMS = ("cpu", "cuda")


def _processing(task_name: str, image_size: int, multiple: int) -> dict[str, Any]:
    """What another runtime must do around the network (the rules ``jaxcolor.inference.predictor``
    follows), in words and numbers."""
    pre = {
        "input": "sRGB in [0, 1], channels last (N, H, W, C); H and W multiples of "
                 f"{multiple}; for scoring resized (area) to {image_size}x{image_size}, for "
                 f"rendering the short side to render_size (default {image_size}) with the "
                 "aspect ratio kept, padded (mirrored) to the multiple",
        "lab": "CIE Lab, D65, as OpenCV's float32 RGB2Lab (L in [0, 100])",
    }
    if task_name == "lab":
        pre["cond"] = f"L' = L / {colour.L_SCALE} - 1, one channel"
        out = f"a'b' (2 channels): ab = clip(out * {colour.AB_SCALE}, -127, 127)"
    else:
        pre["cond"] = ("gray x3 = luma(2 * rgb - 1) with weights "
                       f"{list(LUMA_WEIGHTS)}, replicated to 3 channels")
        out = "RGB in [-1, 1] (3 channels): rgb = clip((out + 1) / 2, 0, 1); ab = Lab(rgb).ab"
    return {
        "preprocessing": pre,
        "postprocessing": {
            "output": out,
            "recombination": "the input's own full-resolution L with ab resized bilinearly "
                             "(half-pixel centres) to the input's size",
            "gamut": "pixels outside sRGB keep L and hue; their a, b are scaled by the largest "
                     "factor in [0, 1] that brings them inside (bisection, 10 steps)",
        },
    }


def export_run(workdir: str, out_dir: str, step: Step = "default",
               platforms: Sequence[str] = PLATFORMS, formats: Sequence[str] = ("jax",)
               ) -> dict[str, Any]:
    """Writes the exported model of ``workdir`` at ``step`` into ``out_dir``; returns its
    metadata. ``step="default"``: the best checkpoint when recorded, else the latest.
    ``formats`` may add "onnx" (``generator.onnx`` beside the jax.export program)."""
    from jax import export

    from jaxcolor import config as config_lib
    from jaxcolor.inference.loading import generator_apply, restore_generator, run_metadata
    from jaxcolor.training.state import build_gan

    if step == "default":
        step = runs.default_step(workdir)
    config, chosen, variables = restore_generator(workdir, step)
    task = get_task(config.data.task)
    multiple = config_lib.size_multiple(config)
    variables = artifact.unflatten_weights(artifact.flatten_weights(variables))  # plain dicts
    apply = generator_apply(build_gan(config).generator)

    # Symbolic batch, height and width: H = multiple * h, W = multiple * w.
    spec = export.symbolic_shape(f"b, {multiple} * h, {multiple} * w, {task.cond_channels}")
    weight_specs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
    exported = export.export(jax.jit(apply), platforms=tuple(platforms))(
        weight_specs, jax.ShapeDtypeStruct(spec, np.float32))

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, artifact.PROGRAM_FILE), "wb") as f:
        f.write(exported.serialize())
    np.savez(os.path.join(out_dir, artifact.WEIGHTS_FILE), **artifact.flatten_weights(variables))
    info = run_metadata(workdir, config, chosen)
    metadata = {
        "format_version": artifact.FORMAT_VERSION,
        **{k: info[k] for k in ("task", "experiment", "generator", "image_size", "step",
                                "metrics", *artifact.EXTRA_KEYS)},
        "size_multiple": multiple,
        "cond_channels": task.cond_channels,
        "output_channels": task.target_channels,
        "input_shape": f"(b, {multiple}*h, {multiple}*w, {task.cond_channels}) float32",
        **_processing(task.name, config.data.image_size, multiple),
        "platforms": list(exported.platforms),
        "jax_version": jax.__version__,
        "serialization": {"format": "jax.export", "calling_convention_version":
                          exported.calling_convention_version},
        # How ``jaxcolor.evaluate`` scores the export as it scores the run, without the run.
        "evaluation": {
            "skip_grayscale": bool(config.data.skip_grayscale),
            "max_pixels": int(config.data.max_pixels),
            "val_fraction": float(config.data.val_fraction),
            "seed": int(config.train.seed),
            "batch_size": int(config.train.batch_size),
        },
        "source_run": os.path.abspath(workdir),
        "files": {"program": artifact.PROGRAM_FILE, "weights": artifact.WEIGHTS_FILE},
    }
    if "onnx" in formats:
        from jaxcolor.artifacts import onnx as onnx_export

        metadata["onnx"] = onnx_export.to_onnx(
            apply, variables, task.cond_channels, config.data.image_size,
            os.path.join(out_dir, onnx_export.ONNX_FILE))
    with open(os.path.join(out_dir, artifact.METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2)
    return metadata
