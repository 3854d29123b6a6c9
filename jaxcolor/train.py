"""Train any model: ``python -m jaxcolor.train --config experiments/X.py``.

Flags: ``--config`` (an ml_collections config file; ``file.py:quick`` passes ``quick`` to its
``get_config``), ``--config.a.b=v`` overrides, ``--workdir`` (default ``runs/<experiment>``).
A run resumes from the newest checkpoint in its work dir. SIGINT/SIGTERM finish the current step,
save a checkpoint and exit 0.

Multi-host (JAX's multi-controller runtime; one ``python -m jaxcolor.train`` per host, all with
the same flags): ``--distributed`` calls ``jax.distributed.initialize()`` with no arguments, which
auto-detects TPU pods, SLURM (srun) and other supported clusters; anywhere else pass
``--coordinator_address=host:port --num_processes=N --process_id=i`` (this implies
``--distributed``). BUILD.md has launch recipes (one node, SLURM, TPU VMs); how the loop
behaves (multi-process data, stop agreement, non-finite steps) is in ``jaxcolor.training.loop``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax

from jaxcolor import cli
from jaxcolor.models.weights import MissingWeightsPackageError
from jaxcolor.training.checkpoints import DiskFullError, NonFiniteStateError
from jaxcolor.training.loop import NonFiniteError, init_distributed, train


def _define_flags() -> None:
    from absl import flags

    cli.define_config_flag()
    flags.DEFINE_string("workdir", None, "Run directory (default: runs/<experiment>).")
    flags.DEFINE_bool("distributed", False,
                      "Call jax.distributed.initialize() (auto-detects TPU pods, SLURM, ...).")
    flags.DEFINE_string("coordinator_address", None,
                        "host:port of process 0's coordinator (multi-process without "
                        "auto-detection; needs --num_processes and --process_id).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
    flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")


def main(argv: Sequence[str]) -> None:
    """absl entry point: joins the other processes, if any, then trains."""
    from absl import flags

    del argv
    FLAGS = flags.FLAGS
    init_distributed(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes,
                     FLAGS.process_id)
    if jax.process_count() == 1:
        # Persistent XLA cache: a resumed or repeated run loads its compiled step. Not for
        # multi-process runs: the cache key holds the process's device topology and only process 0
        # writes, so only process 0 loads; it then waits for the others, which compile, at the
        # first collective, and Gloo allows 30 s there (jaxlib 0.10, not configurable): a pair
        # whose process 1 took longer to compile failed with "Gloo context initialization failed".
        cli.enable_compile_cache()
    train(FLAGS.config, FLAGS.workdir or os.path.join("runs", FLAGS.config.experiment))


def run() -> None:
    """Console entry point (``jaxcolor-train``): the same flags as ``python -m``. A diverging
    run or a full disk ends with ``error: ...`` and exit status 1."""
    cli.run_app(main, _define_flags, compile_cache=False,
                errors=(NonFiniteError, NonFiniteStateError, DiskFullError,
                        MissingWeightsPackageError))


if __name__ == "__main__":
    run()
