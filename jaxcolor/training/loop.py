"""The one training loop for every model (``python -m jaxcolor.train`` starts it).

A run resumes from the newest checkpoint in its work dir. SIGINT/SIGTERM finish the current step,
save a checkpoint and exit 0.

Several processes (JAX's multi-controller runtime): each process reads and feeds only its rows
of every global batch of one globally shuffled record stream, so any process count trains on the
same batches; process 0 alone writes TensorBoard, PNG samples, config.json and the console; all
processes save and restore the Orbax checkpoints together (the data position is global: a run
saved with N processes resumes with M). A stop signal is agreed by all processes every
``train.log_every`` steps (see ``_agree``), so they stop, and save, at the same step; the count
of skipped training files logged then is all processes' together.

Non-finite steps (``train.nonfinite``): each step reports on the device whether its losses and
gradients are finite; the loop reads these flags only where it waits for the device anyway
(log steps, evaluations, saves). ``stop`` ends the run at that point without saving the bad
state (``NonFiniteError``; the CLI exits with status 1, naming the step and its losses);
``skip_step`` keeps the state of the step before and counts skipped steps
(``train/skipped_steps``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcolor import config as config_lib
from jaxcolor import data, models, runs, sharding
from jaxcolor.training.checkpoints import Checkpointer
from jaxcolor.training.state import (
    GANState,
    build_gan,
    fresh_state,
    inference_tree,
    inference_variables,
    param_count,
)
from jaxcolor.training.step import PHASES, PhasedStep, check_names, has_phases, phase_at
from jaxcolor.training.summary import Summary
from jaxcolor.training.validation import Validator, fit_training_baselines

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """A step's losses or gradients were NaN or inf (``train.nonfinite=stop``)."""


def _first_nonfinite(pending: list, first_step: int) -> tuple[int, dict[str, float]] | None:
    """(step, metrics) of the first non-finite step among ``pending`` (steps ``first_step``,
    ``first_step + 1``, ...), or None. Reads one flag per step (waits for the device)."""
    flags = jax.device_get([m["finite"] for m in pending])
    for i, flag in enumerate(flags):
        if not flag:
            return first_step + i, {k: float(v) for k, v in jax.device_get(pending[i]).items()}
    return None


def _nonfinite_message(bad_step: int, values: dict[str, float], stopped_at: int,
                       checkpointer: Checkpointer) -> str:
    losses = ", ".join(f"{k}={values[k]:.4g}" for k in
                       ("d_loss", "d_real", "d_fake", "g_loss", "g_adv", "g_recon") if k in values)
    latest = checkpointer.latest_step()
    kept = (f"the newest checkpoint, step {latest} in {checkpointer.directory}, holds finite "
            "values" if latest is not None else "no checkpoint was written")
    return (f"non-finite loss or gradient at step {bad_step} ({losses}): stopped at step "
            f"{stopped_at} without saving; {kept}. Lower the learning rates or loss weights, "
            "or set --config.train.nonfinite=skip_step to skip such steps.")


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


def _agree(local_stop: bool, local_skipped: int) -> tuple[bool, int]:
    """Whether any process was asked to stop, and the training files all processes skipped
    together (each reads only its rows of the global batch): one all-gather of two numbers.

    With several processes it is called at the same steps on every process (every
    ``log_every`` steps and at the last step), where the loop already waits for the device to
    read the metrics, so it costs one tiny collective per log interval and never a sync inside
    the interval. One process: no collective.
    """
    if jax.process_count() == 1:
        return local_stop, local_skipped
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(
        np.asarray([local_stop, local_skipped], dtype=np.int64))
    gathered = np.asarray(gathered).reshape(-1, 2)
    return bool(gathered[:, 0].any()), int(gathered[:, 1].sum())


def _warn_skipped(reasons) -> int:
    """Logs each skipped file's reason; returns how many."""
    for reason in reasons:
        log.warning("skipped %s", reason)
    return len(reasons)


@dataclasses.dataclass
class Run:
    """What ``set_up`` builds for the loop: the run's parts, made once."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    summary: Summary
    checkpointer: Checkpointer
    validator: Validator
    batches: Iterator
    step_fn: Callable  # (step, state, batch) -> (state, metrics): PhasedStep
    val_skipped: int  # unusable validation files (every process loads the same ones)


@dataclasses.dataclass
class Meter:
    """Per-step metrics awaiting the next log step, and the throughput since the last one."""

    start_step: int
    pending: list = dataclasses.field(default_factory=list)
    wait_time: float = 0.0
    last_time: float = dataclasses.field(default_factory=time.perf_counter)
    skipped_steps: int = 0  # non-finite steps skipped so far (``skip_step``)


def set_up(config: ml_collections.ConfigDict, workdir: str) -> tuple[Run, GANState]:
    """Validates the config, lists the data, builds the models, the input stream, the
    checkpointer and the validator, and restores the newest checkpoint when there is one."""
    mesh = sharding.make_mesh()
    config_lib.resolve(config)
    config_lib.validate(config, jax.device_count(), jax.process_count())
    check_names(config)
    is_main = jax.process_index() == 0
    cfg_t, cfg_d = config.train, config.data
    # Before any data or compile: a missing weights package fails here, naming its extra.
    pretrained = models.pretrained_variables(config.model)
    gan = build_gan(config)
    if config.train.init_from:  # a bad source fails here, before any work
        from jaxcolor.training.warm_start import parse_source

        parse_source(config.train.init_from)

    splits = data.find_splits(cfg_d.dir, cfg_d.val_fraction, cfg_t.seed)
    where = cfg_d.dir or "the built-in sample photos"
    if not splits["train"]:
        raise ValueError(f"data.dir={where}: no Train/ folder to train on (it holds only "
                         "Validation/ or Test/; evaluate it with jaxcolor.evaluate instead)")
    data.check_usable(splits["train"], f"data.dir={where}", cfg_d.skip_grayscale,
                      max_pixels=cfg_d.max_pixels)

    os.makedirs(workdir, exist_ok=True)
    summary = Summary(workdir, cfg_t.num_steps, enabled=is_main)
    if cfg_d.dir is None:
        summary.message(
            f"data.dir is not set: training on {len(splits['train'])} built-in sample photos "
            f"(validation: {len(splits['validation'])}). Set --config.data.dir for real data."
        )
    if is_main:
        runs.write_config(workdir, config)
        fit_training_baselines(workdir, splits["train"], config)

    state = fresh_state(gan, cfg_d.image_size, cfg_t.seed, sharding.replicated(mesh), pretrained)
    summary.message(
        f"{config.experiment}: G {config.model.generator} {param_count(state.g.params):,} params"
        f" | D {config.model.discriminator} {param_count(state.d.params):,} params"
        f" | {jax.device_count()} device(s) ({jax.devices()[0].platform}),"
        f" {jax.process_count()} process(es) | global batch {cfg_t.batch_size}"
    )

    batches = iter(data.train_dataset(
        splits["train"],
        image_size=cfg_d.image_size,
        batch_size=cfg_t.batch_size,  # global: this process reads its rows of each batch
        seed=cfg_t.seed,
        augment=cfg_d.augment,
        skip_grayscale=cfg_d.skip_grayscale,
        num_workers=cfg_d.num_workers,
        max_pixels=cfg_d.max_pixels,
        process_index=jax.process_index(),
        cache=cfg_d.cache,
        process_count=jax.process_count(),
        crop_scale=tuple(cfg_d.crop_scale) if cfg_d.crop_scale else None,  # () or None: off
        crop_ratio=tuple(cfg_d.crop_ratio),
    ))
    checkpointer = Checkpointer(
        runs.checkpoint_dir(workdir),
        every=cfg_t.checkpoint_every,
        keep=cfg_t.keep_checkpoints,
        is_main=is_main,
    )
    # Damaged checkpoints are reported and moved aside; the data position is set only by the
    # checkpoint that restores, so when all are damaged the run starts from the first batch.
    # The fresh state is made even when a checkpoint will replace it: restoring into abstract
    # shapes before the init program had run made a damaged checkpoint's abandoned reads print
    # thousands of "Event loop is closed" tracebacks from TensorStore's threads (BUILD.md).
    restored = checkpointer.restore_latest(state, batches)
    if restored is not None:
        state = restored
        summary.message(f"resumed from step {int(state.step)} ({checkpointer.directory}), "
                        f"data position {batches.resumed_records} records")
    elif config.train.init_from:  # only a run without checkpoints of its own starts warm
        from jaxcolor.training.warm_start import warm_start

        state, note = warm_start(state, config, sharding.replicated(mesh))
        summary.message(note)

    validator = Validator(gan, config, splits["validation"], mesh, workdir)
    val_skipped = _warn_skipped(validator.skipped)
    if not validator.batches:
        log.warning("no usable validation image: validation loss and sample grids are off")
    run = Run(config, mesh, summary, checkpointer, validator, batches,
              PhasedStep(gan, config, mesh), val_skipped)
    return run, state


def log_metrics(run: Run, meter: Meter, step: int, skipped_files: int) -> None:
    """Means of the pending steps' metrics, throughput and data wait, to TensorBoard and the
    console; the non-finite steps among them are counted (``skip_step``) and left out."""
    cfg_t = run.config.train
    stacked = jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *meter.pending))
    finite = stacked.pop("finite") > 0
    meter.skipped_steps += int((~finite).sum())
    # Skipped steps' losses are NaN or inf: the means are over the finite ones.
    means = {k: float(np.mean(v[finite])) if finite.any() else float("nan")
             for k, v in stacked.items()}
    now = time.perf_counter()
    images_per_sec = (step - meter.start_step) * cfg_t.batch_size / (now - meter.last_time)
    scalars = {f"train/{k}": v for k, v in means.items()}
    scalars.update({
        "perf/images_per_sec": images_per_sec,
        "perf/data_wait_fraction": meter.wait_time / (now - meter.last_time),
        "data/skipped_files": skipped_files,
    })
    if cfg_t.nonfinite == "skip_step":
        scalars["train/skipped_steps"] = meter.skipped_steps
        if not finite.all():
            log.warning("%d non-finite step(s) skipped up to step %d (%d in all)",
                        int((~finite).sum()), step, meter.skipped_steps)
    phase = phase_at(step - 1, cfg_t) if has_phases(cfg_t) else None  # the last step's
    if phase is not None:
        scalars["train/phase"] = PHASES.index(phase)
    run.summary.scalars(step, scalars)
    shown = {k: means[k] for k in ("d_loss", "g_adv", "g_recon", "d_real", "d_fake")}
    run.summary.progress(step, shown, images_per_sec, label=phase or "")
    meter.pending, meter.wait_time, meter.last_time, meter.start_step = [], 0.0, now, step


def validate(run: Run, state: GANState, step: int, grid_due: bool) -> None:
    """Validation metrics (and the sample grid when due); keeps the best checkpoint."""
    cfg_t = run.config.train
    val_metrics, rows = run.validator(inference_variables(inference_tree(state)), step)
    run.summary.scalars(step, val_metrics)
    if run.validator.line:
        run.summary.message(run.validator.line)
    if grid_due and rows:
        run.summary.grid(step, "val_samples", rows)
    value = val_metrics.get(f"val/{cfg_t.best_metric}")
    mode = config_lib.BEST_METRIC_MODES[cfg_t.best_metric]
    if value is not None and run.checkpointer.is_better(value, mode):
        run.checkpointer.save_best(step, state, run.batches, cfg_t.best_metric, value)


@dataclasses.dataclass
class Outcome:
    """How the loop ended: at ``step``, on a stop request or a non-finite step, with the
    training files all processes skipped."""

    step: int
    stop_reason: str | None  # the signal (or "stop requested by another process"); None: done
    nonfinite: tuple[int, dict[str, float]] | None
    train_skipped: int


def loop(run: Run, state: GANState) -> tuple[GANState, Outcome]:
    """Steps until ``train.num_steps``, a stop request or a non-finite step (``stop`` mode),
    logging, validating and saving on schedule."""
    cfg_t = run.config.train
    step = int(state.step)
    run.summary.start_step = step
    meter = Meter(start_step=step)
    local_skipped = train_skipped = 0  # this process's training rows; all processes' (logged)
    stopping = False  # the stop request as agreed by all processes
    nonfinite = None
    with StopRequest() as stop:
        while step < cfg_t.num_steps and not stopping:
            t0 = time.perf_counter()
            local = next(run.batches)
            meter.wait_time += time.perf_counter() - t0
            local_skipped += _warn_skipped(local.pop("skipped"))
            state, metrics = run.step_fn(step, state, sharding.to_global(local, run.mesh))
            step += 1
            meter.pending.append(metrics)
            log_due = step % cfg_t.log_every == 0 or step == cfg_t.num_steps
            if jax.process_count() == 1 or log_due:  # several processes: at log steps only
                stopping, train_skipped = _agree(bool(stop), local_skipped)
            grid_due = step % cfg_t.image_every == 0 or step == cfg_t.num_steps
            eval_due = grid_due or step % cfg_t.eval_every == 0
            if cfg_t.nonfinite != "skip_step" and (
                log_due or stopping or eval_due or run.checkpointer.is_due(step)
            ):
                # A sync point (metrics, validation or a save wait for the device anyway).
                # Metrics are replicated, so every process reaches the same verdict.
                nonfinite = _first_nonfinite(meter.pending, step - len(meter.pending) + 1)
                if nonfinite is not None:
                    break
            if log_due or stopping:
                log_metrics(run, meter, step, run.val_skipped + train_skipped)
            if eval_due:
                validate(run, state, step, grid_due)
                meter.last_time = time.perf_counter()  # validation is not train throughput
            run.checkpointer.save(step, state, run.batches)
    reason = (stop.signal_name or "stop requested by another process") if stopping else None
    return state, Outcome(step, reason, nonfinite, train_skipped)


def finish(run: Run, state: GANState, outcome: Outcome) -> None:
    """Saves the final state (unless it is non-finite), closes the run's writers and says how
    the run ended; raises ``NonFiniteError`` after a non-finite step in ``stop`` mode."""
    step, checkpointer, summary = outcome.step, run.checkpointer, run.summary
    if outcome.nonfinite is None:
        checkpointer.save(step, state, run.batches, force=True)
        # A stop between validations: its step too.
        run.validator.calibrate(inference_variables(inference_tree(state)), step)
    checkpointer.close()
    summary.close()
    try:
        if outcome.nonfinite is not None:
            raise NonFiniteError(_nonfinite_message(*outcome.nonfinite, step, checkpointer))
        skipped = run.val_skipped + outcome.train_skipped
        if skipped:
            summary.message(f"{skipped} unusable file(s) were skipped (see warnings)")
        if outcome.stop_reason is not None:
            command = " ".join(shlex.quote(a) for a in
                               [sys.executable, "-m", "jaxcolor.train"] + sys.argv[1:])
            if jax.process_index() != 0:  # process 0 says it below; each says what it received
                log.warning("process %d of %d: %s: stopped at step %d, checkpoint saved",
                            jax.process_index(), jax.process_count(), outcome.stop_reason, step)
            summary.message(
                f"{outcome.stop_reason}: stopped at step {step}, checkpoint saved in "
                f"{checkpointer.directory}.\nResume with: {command}"
            )
        else:
            summary.message(f"done: {step} steps; checkpoints in {checkpointer.directory}")
    finally:
        if hasattr(run.batches, "close"):
            run.batches.close()


def train(config: ml_collections.ConfigDict, workdir: str) -> GANState:
    """Trains (or resumes) the run in ``workdir`` until ``train.num_steps``; returns the state."""
    run, state = set_up(config, workdir)
    state, outcome = loop(run, state)
    finish(run, state, outcome)
    return state
