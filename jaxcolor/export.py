"""Export a trained generator as a self-contained model folder (see ``jaxcolor.artifacts.format``).

python -m jaxcolor.export --workdir runs/lab_gan [--step best|latest|N] --out models/lab_gan
    [--platforms cpu,cuda] [--format jax|onnx]

The default step is the best checkpoint when the run recorded one, else the latest. The
generator is serialised with ``jax.export`` for the given platforms, with symbolic batch,
height and width (height and width as multiples of what the generator needs), so one file serves
every image size. ``jaxcolor.load(OUT)`` runs it without the run's config, Orbax or flax.
``--format onnx`` also writes ``generator.onnx`` (``jaxcolor.artifacts.onnx``, jax2onnx), checked
against JAX with onnxruntime when it is installed.
"""

from __future__ import annotations

import json
import os
import sys
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
                                "metrics")},
        "size_multiple": multiple,
        "cond_channels": task.cond_channels,
        "output_channels": task.target_channels,
        "input_shape": f"(b, {multiple}*h, {multiple}*w, {task.cond_channels}) float32",
        **_processing(task.name, config.data.image_size, multiple),
        "platforms": list(exported.platforms),
        "jax_version": jax.__version__,
        "serialization": {"format": "jax.export", "calling_convention_version":
                          exported.calling_convention_version},
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


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "Run directory to export.", required=True)
    flags.DEFINE_string("out", None, "Folder for the exported model.", required=True)
    flags.DEFINE_string("step", None, "Checkpoint: best, latest or a step number (default: best "
                        "when recorded, else latest).")
    flags.DEFINE_list("platforms", list(PLATFORMS), "Platforms to lower for (cpu, cuda, tpu).")
    flags.DEFINE_enum("format", "jax", ["jax", "onnx"], "jax: jax.export (StableHLO); onnx: "
                      "also generator.onnx (needs pip install 'jaxcolor[onnx]').")


def main(argv: Sequence[str]) -> None:
    """absl entry point; a run problem ends with its message and exit code 1."""
    from absl import flags

    FLAGS = flags.FLAGS
    if len(argv) > 1:
        print(f"error: unexpected arguments {list(argv[1:])}", file=sys.stderr)
        sys.exit(2)
    try:
        step = "default" if FLAGS.step is None else runs.parse_step(FLAGS.step)
        formats = ("jax", "onnx") if FLAGS.format == "onnx" else ("jax",)
        metadata = export_run(FLAGS.workdir, FLAGS.out, step, FLAGS.platforms, formats)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    size = sum(os.path.getsize(os.path.join(FLAGS.out, f)) for f in os.listdir(FLAGS.out))
    print(f"exported {metadata['experiment']} step {metadata['step']} "
          f"({', '.join(metadata['platforms'])}) to {FLAGS.out}: {size / 1e6:.1f} MB")


def run() -> None:
    """Console entry point (``jaxcolor-export``): the same flags as ``python -m``."""
    from absl import logging

    from jaxcolor.cli import run_app

    logging.set_verbosity(logging.WARNING)
    run_app(main, _define_flags)


if __name__ == "__main__":
    run()
