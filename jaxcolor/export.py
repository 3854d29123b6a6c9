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

import os
import sys
from collections.abc import Sequence

from jaxcolor import runs
from jaxcolor.artifacts import export as export_lib
from jaxcolor.cli import run_app


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "Run directory to export.", required=True)
    flags.DEFINE_string("out", None, "Folder for the exported model.", required=True)
    flags.DEFINE_string("step", None, "Checkpoint: best, latest or a step number (default: best "
                        "when recorded, else latest).")
    flags.DEFINE_list("platforms", list(export_lib.PLATFORMS),
                      "Platforms to lower for (cpu, cuda, tpu).")
    flags.DEFINE_enum("format", "jax", ["jax", "onnx"], "jax: jax.export (StableHLO); onnx: "
                      "also generator.onnx (needs pip install 'jaxcolor[onnx]').")


def main(argv: Sequence[str]) -> None:
    """absl entry point; a run problem ends with its message and exit code 1 (``run_app``)."""
    from absl import flags

    FLAGS = flags.FLAGS
    if len(argv) > 1:
        print(f"error: unexpected arguments {list(argv[1:])}", file=sys.stderr)
        sys.exit(2)
    step = "default" if FLAGS.step is None else runs.parse_step(FLAGS.step)
    formats = ("jax", "onnx") if FLAGS.format == "onnx" else ("jax",)
    metadata = export_lib.export_run(FLAGS.workdir, FLAGS.out, step, FLAGS.platforms, formats)
    size = sum(os.path.getsize(os.path.join(FLAGS.out, f)) for f in os.listdir(FLAGS.out))
    print(f"exported {metadata['experiment']} step {metadata['step']} "
          f"({', '.join(metadata['platforms'])}) to {FLAGS.out}: {size / 1e6:.1f} MB")


def run() -> None:
    """Console entry point (``jaxcolor-export``): the same flags as ``python -m``."""
    run_app(main, _define_flags, compile_cache=False)


if __name__ == "__main__":
    run()
