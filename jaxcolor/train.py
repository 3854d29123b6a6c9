"""The one training loop for every model: ``python -m jaxcolor.train --config experiments/X.py``.

Flags: ``--config`` (an ml_collections config file; ``file.py:quick`` passes ``quick`` to its
``get_config``), ``--config.a.b=v`` overrides, ``--workdir`` (default ``runs/<experiment>``).
A run resumes from the newest checkpoint in its work dir. SIGINT/SIGTERM finish the current step,
save a checkpoint and exit 0.

Multi-host (JAX's multi-controller runtime; one ``python -m jaxcolor.train`` per host, all with
the same flags): ``--distributed`` calls ``jax.distributed.initialize()`` with no arguments, which
auto-detects TPU pods, SLURM (srun) and other supported clusters; anywhere else pass
``--coordinator_address=host:port --num_processes=N --process_id=i`` (this implies
``--distributed``). Each process reads and feeds only its rows of every global batch of one
globally shuffled record stream, so any process count trains on the same batches; process 0
alone writes TensorBoard, PNG samples, config.json and the console; all processes save and
restore the Orbax checkpoints together (the data position is global: a run saved with N
processes resumes with M). A stop signal is agreed by all processes every ``train.log_every``
steps (see ``_agree``), so they stop, and save, at the same step; the count of skipped
training files logged then is all processes' together.

Non-finite steps (``train.nonfinite``): each step reports on the device whether its losses and
gradients are finite; the loop reads these flags only where it waits for the device anyway
(log steps, evaluations, saves). ``stop`` ends the run at that point without saving the bad
state (``NonFiniteError``; the CLI exits with status 1, naming the step and its losses);
``skip_step`` keeps the state of the step before and counts skipped steps
(``train/skipped_steps``).
"""

from __future__ import annotations

import logging
import os
import sys

import jax

from jaxcolor.models.weights import MissingWeightsPackageError
from jaxcolor.training.checkpoints import DiskFullError, NonFiniteStateError
from jaxcolor.training.loop import NonFiniteError, init_distributed, train


def main(argv) -> None:
    """absl entry point."""
    from absl import flags
    from absl import logging as absl_logging

    del argv
    FLAGS = flags.FLAGS
    if not any(a.startswith(("--verbosity", "-v=")) for a in sys.argv):
        absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every file it writes
    init_distributed(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes,
                     FLAGS.process_id)
    if jax.process_count() == 1:
        # Persistent XLA cache: a resumed or repeated run loads its compiled step. Not for
        # multi-process runs: the cache key holds the process's device topology and only process 0
        # writes, so only process 0 loads; it then waits for the others, which compile, at the
        # first collective, and Gloo allows 30 s there (jaxlib 0.10, not configurable): a pair
        # whose process 1 took longer to compile failed with "Gloo context initialization failed".
        from jaxcolor import compile_cache

        compile_cache.enable()
    config = FLAGS.config
    workdir = FLAGS.workdir or os.path.join("runs", config.experiment)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        train(config, workdir)
    except (NonFiniteError, NonFiniteStateError, DiskFullError, MissingWeightsPackageError) as e:
        sys.exit(f"error: {e}")  # exit status 1, the message on stderr


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config()).",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Run directory (default: runs/<experiment>).")
    flags.DEFINE_bool("distributed", False,
                      "Call jax.distributed.initialize() (auto-detects TPU pods, SLURM, ...).")
    flags.DEFINE_string("coordinator_address", None,
                        "host:port of process 0's coordinator (multi-process without "
                        "auto-detection; needs --num_processes and --process_id).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
    flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")
    flags.mark_flags_as_required(["config"])


def run() -> None:
    """Console entry point (``jaxcolor-train``): the same flags as ``python -m``."""
    from jaxcolor.cli import run_app

    run_app(main, _define_flags)


if __name__ == "__main__":
    run()
