"""The one training loop for every model: ``python -m jaxcolor.train --config experiments/X.py``.

Flags: ``--config`` (an ml_collections config file; ``file.py:quick`` passes ``quick`` to its
``get_config``), ``--config.a.b=v`` overrides, ``--workdir`` (default ``runs/<experiment>``).
A run resumes from the newest checkpoint in its work dir. SIGINT/SIGTERM finish the current step,
save a checkpoint and exit 0.

Multi-host (JAX's multi-controller runtime; one ``python -m jaxcolor.train`` per host, all with
the same flags): ``--distributed`` calls ``jax.distributed.initialize()`` with no arguments, which
auto-detects TPU pods, SLURM (srun) and other supported clusters; anywhere else pass
``--coordinator_address=host:port --num_processes=N --process_id=i`` (this implies
``--distributed``). Each process reads only its shard of the training files and feeds its slice
of every global batch; process 0 alone writes TensorBoard, PNG samples, config.json and the
console; all processes save and restore the Orbax checkpoints together (each its own iterator
state). A stop signal is agreed by all processes every ``train.log_every`` steps (see
``_agree_stop``), so they stop, and save, at the same step.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcolor import config as config_lib
from jaxcolor import data, metrics, sharding
from jaxcolor.checkpoints import Checkpointer
from jaxcolor.summary import Summary
from jaxcolor.train_state import GAN, GANState, build_gan, init_state, param_count
from jaxcolor.train_step import make_predict, make_train_step

log = logging.getLogger(__name__)


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps (a second SIGINT kills)."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __bool__(self) -> bool:
        return self.signal_name is not None


def _local_slice(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's rows of a batch every process holds whole."""
    n, i = jax.process_count(), jax.process_index()
    return {k: np.array_split(v, n)[i] for k, v in batch.items()}


class Validator:
    """Validation losses, image metrics and the sample grid on fixed validation images."""

    def __init__(self, gan: GAN, config: ml_collections.ConfigDict, files: list[str], mesh):
        self.gan, self.mesh = gan, mesh
        self.batches, self.skipped = data.eval_batches(
            files,
            image_size=config.data.image_size,
            batch_size=config.train.batch_size,
            skip_grayscale=config.data.skip_grayscale,
            max_images=config.data.num_val_images,
        )
        predict = make_predict(gan)
        self._predict = jax.jit(
            lambda g, batch: predict(g, gan.task.split(batch)[0], jax.random.key(0)),
            out_shardings=sharding.replicated(mesh),
        )

    def __call__(self, g_state) -> tuple[dict[str, float], list[list[np.ndarray]]]:
        """Mean validation losses and metrics (``val/<name>``) and grid rows
        (gray input | generated | ground truth)."""
        task, rows, sq, ab, per_image = self.gan.task, [], [], [], []
        if not self.batches:
            return {}, []
        for batch in self.batches:
            device_batch = sharding.to_global(_local_slice(batch), self.mesh)
            out = np.asarray(self._predict(g_state, device_batch))  # replicated: no gather
            valid = batch["valid"]
            cond, target = (np.asarray(x) for x in task.split(batch))
            sq.append(np.square(out - target)[valid].mean(axis=(1, 2, 3)))
            ab.append(np.abs(out - target)[valid].mean(axis=(1, 2, 3)))
            truth = (batch["rgb"] + 1.0) / 2.0
            gray, pred = task.cond_to_rgb(cond), task.to_rgb(cond, out)
            rows += [[gray[i], pred[i], truth[i]] for i in np.flatnonzero(valid)]
            per_image.append(metrics.image_metrics(pred[valid], truth[valid]))
        means = {k: float(np.mean(np.concatenate([p[k] for p in per_image])))
                 for k in per_image[0]}
        means.update(mse=float(np.concatenate(sq).mean()), l1=float(np.concatenate(ab).mean()))
        return {f"val/{k}": v for k, v in means.items()}, rows


def init_distributed(distributed: bool = False, coordinator_address: str | None = None,
                     num_processes: int | None = None, process_id: int | None = None) -> None:
    """Starts JAX's multi-controller runtime when asked; must run before any other JAX call.

    ``coordinator_address`` (with ``num_processes`` and ``process_id``) is the explicit form for
    clusters JAX does not detect; ``distributed`` alone auto-detects (TPU VMs, SLURM, ...).
    On CPU, cross-process collectives use Gloo (the default of
    ``jax_cpu_collectives_implementation``).
    """
    explicit = (coordinator_address, num_processes, process_id)
    if not distributed and all(v is None for v in explicit):
        return
    if coordinator_address is not None and (num_processes is None or process_id is None):
        raise ValueError("--coordinator_address needs --num_processes and --process_id too")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)


def _agree_stop(local_stop: bool) -> bool:
    """Whether any process was asked to stop (a cross-process all-gather of one flag).

    Called at the same steps on every process (every ``log_every`` steps and at the last step),
    where the loop already waits for the device to read the metrics, so it costs one tiny
    collective per log interval and never a sync inside the interval. One process: no collective.
    """
    if jax.process_count() == 1:
        return local_stop
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray(local_stop, dtype=np.int32))
    return bool(np.any(flags))


def _report_skipped(reasons: np.ndarray, counter: dict[str, int]) -> None:
    for reason in reasons:
        counter["skipped"] += 1
        log.warning("skipped %s", reason)


def train(config: ml_collections.ConfigDict, workdir: str) -> GANState:
    """Trains (or resumes) the run in ``workdir`` until ``train.num_steps``; returns the state."""
    mesh = sharding.make_mesh()
    config_lib.validate(config, jax.device_count(), jax.process_count())
    is_main = jax.process_index() == 0
    cfg_t, cfg_d = config.train, config.data
    gan = build_gan(config)

    splits = data.find_splits(cfg_d.dir, cfg_d.val_fraction, cfg_t.seed)
    where = cfg_d.dir or "the built-in sample photos"
    data.check_usable(splits["train"], f"data.dir={where}", cfg_d.skip_grayscale)

    os.makedirs(workdir, exist_ok=True)
    summary = Summary(workdir, cfg_t.num_steps, enabled=is_main)
    if cfg_d.dir is None:
        summary.message(
            f"data.dir is not set: training on {len(splits['train'])} built-in sample photos "
            f"(validation: {len(splits['validation'])}). Set --config.data.dir for real data."
        )
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    replicated = sharding.replicated(mesh)
    state = jax.jit(
        lambda key: init_state(gan, key, cfg_d.image_size), out_shardings=replicated
    )(jax.random.PRNGKey(cfg_t.seed))
    summary.message(
        f"{config.experiment}: G {config.model.generator} {param_count(state.g.params):,} params"
        f" | D {config.model.discriminator} {param_count(state.d.params):,} params"
        f" | {jax.device_count()} device(s) ({jax.devices()[0].platform}),"
        f" {jax.process_count()} process(es) | global batch {cfg_t.batch_size}"
    )

    train_ds = data.train_dataset(
        splits["train"],
        image_size=cfg_d.image_size,
        batch_size=cfg_t.batch_size // jax.process_count(),
        seed=cfg_t.seed,
        augment=cfg_d.augment,
        skip_grayscale=cfg_d.skip_grayscale,
        num_workers=cfg_d.num_workers,
        process_index=jax.process_index(),
        cache=cfg_d.cache,
        process_count=jax.process_count(),
    )
    batches: Iterator = iter(train_ds)
    checkpointer = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        every=cfg_t.checkpoint_every,
        keep=cfg_t.keep_checkpoints,
        is_main=is_main,
    )
    best_mode = config_lib.BEST_METRIC_MODES[cfg_t.best_metric]
    if checkpointer.latest_step() is not None:
        state = checkpointer.restore(state, batches)
        summary.message(f"resumed from step {int(state.step)} ({checkpointer.directory})")

    validator = Validator(gan, config, splits["validation"], mesh)
    counter = {"skipped": 0}
    _report_skipped(validator.skipped, counter)
    if not validator.batches:
        log.warning("no usable validation image: validation loss and sample grids are off")

    step_fn = jax.jit(
        make_train_step(gan, config),
        in_shardings=(replicated, sharding.batch_sharded(mesh)),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )

    step = int(state.step)
    summary.start_step = step
    pending, wait_time, last_time, last_step = [], 0.0, time.perf_counter(), step
    stopping = False  # the stop request as agreed by all processes
    with StopRequest() as stop:
        while step < cfg_t.num_steps and not stopping:
            t0 = time.perf_counter()
            local = next(batches)
            wait_time += time.perf_counter() - t0
            _report_skipped(local.pop("skipped"), counter)
            state, metrics = step_fn(state, sharding.to_global(local, mesh))
            step += 1
            pending.append(metrics)
            log_due = step % cfg_t.log_every == 0 or step == cfg_t.num_steps
            if jax.process_count() == 1:
                stopping = bool(stop)
            elif log_due:
                stopping = _agree_stop(bool(stop))

            if log_due or stopping:
                means = {k: float(np.mean(v)) for k, v in jax.device_get(
                    jax.tree.map(lambda *xs: jnp.stack(xs), *pending)).items()}
                now = time.perf_counter()
                images_per_sec = (step - last_step) * cfg_t.batch_size / (now - last_time)
                scalars = {f"train/{k}": v for k, v in means.items()}
                scalars.update({
                    "perf/images_per_sec": images_per_sec,
                    "perf/data_wait_fraction": wait_time / (now - last_time),
                    "data/skipped_files": counter["skipped"],
                })
                summary.scalars(step, scalars)
                shown = {k: means[k] for k in ("d_loss", "g_adv", "g_recon", "d_real", "d_fake")}
                summary.progress(step, shown, images_per_sec)
                pending, wait_time, last_time, last_step = [], 0.0, now, step
            grid_due = step % cfg_t.image_every == 0 or step == cfg_t.num_steps
            if grid_due or step % cfg_t.eval_every == 0:
                val_metrics, rows = validator(state.g)
                summary.scalars(step, val_metrics)
                if grid_due and rows:
                    summary.grid(step, "val_samples", rows)
                value = val_metrics.get(f"val/{cfg_t.best_metric}")
                if value is not None and checkpointer.is_better(value, best_mode):
                    checkpointer.save_best(step, state, batches, cfg_t.best_metric, value)
                last_time = time.perf_counter()  # validation is not train throughput
            checkpointer.save(step, state, batches)

    checkpointer.save(step, state, batches, force=True)
    checkpointer.close()
    summary.close()
    if counter["skipped"]:
        summary.message(f"{counter['skipped']} unusable file(s) were skipped (see warnings)")
    if stopping:
        command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "jaxcolor.train"]
                           + sys.argv[1:])
        why = stop.signal_name or "stop requested by another process"
        summary.message(
            f"{why}: stopped at step {step}, checkpoint saved in "
            f"{checkpointer.directory}.\nResume with: {command}"
        )
    else:
        summary.message(f"done: {step} steps; checkpoints in {checkpointer.directory}")
    if hasattr(batches, "close"):
        batches.close()
    return state


def main(argv) -> None:
    """absl entry point."""
    from absl import flags
    from absl import logging as absl_logging

    del argv
    from jaxcolor import compile_cache  # persistent XLA cache: no recompiling
    compile_cache.enable()
    FLAGS = flags.FLAGS
    if not any(a.startswith(("--verbosity", "-v=")) for a in sys.argv):
        absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every file it writes
    init_distributed(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes,
                     FLAGS.process_id)
    config = FLAGS.config
    workdir = FLAGS.workdir or os.path.join("runs", config.experiment)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    train(config, workdir)


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


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
