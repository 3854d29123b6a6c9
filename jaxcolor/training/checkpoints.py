"""Orbax checkpoints of the train state together with the global data position.

Each checkpoint is a step folder with two items: ``state`` (the ``GANState`` pytree) and
``data`` (the global data position of ``data.GlobalBatches``: records consumed, batches and
per-row skips, gathered from all processes and written once as JSON, so that a run saved with N
processes resumes with M). Checkpoints of older versions hold one Grain iterator state per
process (``data/process_I-of-N.json``); they resume at the first whole batch after the records
those processes consumed, with a warning. Orbax writes into a temporary folder and
renames it when complete, so an interrupted save never leaves a checkpoint that looks valid.

Retention: the newest ``keep`` checkpoints, plus the best one by a validation metric, recorded in
``best_step.json`` (``{"step", "metric", "value"}``) once that checkpoint is on disk.

Faults: a state holding a NaN or inf is never written (``NonFiniteStateError``), so retention
never deletes a finite checkpoint to make room for a bad one. A full disk during a save raises
``DiskFullError`` (the partial folder is removed; earlier checkpoints are untouched). A
checkpoint that cannot be restored is "damaged".

Restoring has one path, ``restore``: the trainer's resume (``Checkpointer.restore_latest``) and
every reader of a run (``jaxcolor.inference.loading``: evaluate, colorize, export, the server,
``jaxcolor.load``, through a read-only Orbax manager, reading only G's arrays) call it. Without a
step it reports a damaged checkpoint, naming its folder, and falls back to the next newest
(``restore_newest``); only the trainer moves a damaged one aside to ``damaged-<step>`` (a reader
may not own the folder).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import glob
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxcolor import runs
from jaxcolor.training.state import run_once_options
from jaxcolor.training.step import all_finite

log = logging.getLogger(__name__)
DAMAGED_PREFIX = "damaged-"
DATA_POSITION_FILE = "position.json"  # in each checkpoint's data/ folder
T = TypeVar("T")


class DamagedCheckpointError(RuntimeError):
    """No checkpoint could be restored; the message names each damaged folder and why."""


class CheckpointMismatchError(ValueError):
    """A readable checkpoint written for different shapes (another model configuration)."""


class NonFiniteStateError(ValueError):
    """A save was asked for a state holding NaN or inf; nothing was written."""


class DiskFullError(OSError):
    """The disk filled up during a save; the message names the folder and the intact steps."""


def _is_disk_full(error: BaseException) -> bool:
    # TensorStore reports ENOSPC as a ValueError carrying the OS message and code.
    text = str(error)
    return (isinstance(error, OSError) and error.errno == errno.ENOSPC) or (
        "No space left on device" in text or "os_error_code='28'" in text)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def _damaged(folder: str, reason: str) -> str:
    return f"checkpoint {folder} is damaged and cannot be restored ({reason})"


def restore_newest(
    directory: str,
    steps: Sequence[int],
    restore: Callable[[int], T],
    *,
    move_aside: bool = False,
    warn: Callable[[str], None] = log.warning,
) -> tuple[int, T]:
    """``(step, restore(step))`` for the newest of ``steps`` that restores.

    Each step whose ``restore`` raises (other than ``CheckpointMismatchError``, which
    propagates: a different configuration is not damage) is reported through ``warn`` as
    damaged, naming its folder and the error, and, with ``move_aside``, renamed to
    ``<directory>/damaged-<step>`` so it is never tried again. Raises DamagedCheckpointError
    naming every folder tried when none restores (and FileNotFoundError when ``steps`` is empty).

    ``restore`` calls it (``move_aside`` only for the trainer: a training process may own the
    folder a reader reads).
    """
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    reasons = []
    for step in sorted(steps, reverse=True):
        folder = os.path.join(directory, str(step))
        try:
            return step, restore(step)
        except CheckpointMismatchError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure to read means the files are damaged
            reason = _first_line(e)
            reasons.append(f"{folder} ({reason})")
            moved = ""
            if move_aside and os.path.isdir(folder):
                target = os.path.join(directory, f"{DAMAGED_PREFIX}{step}")
                n = 1
                while os.path.exists(target):
                    n += 1
                    target = os.path.join(directory, f"{DAMAGED_PREFIX}{step}.{n}")
                os.rename(folder, target)
                moved = f"; moved to {target}"
            warn(f"{_damaged(folder, reason)}{moved}; falling back to the next newest checkpoint")
    raise DamagedCheckpointError("every checkpoint is damaged: " + "; ".join(reasons))


def _shapes(tree) -> list[tuple[tuple[int, ...], str]]:
    return sorted((tuple(getattr(x, "shape", ())), str(np.dtype(getattr(x, "dtype", None))))
                  for x in jax.tree.leaves(tree))


def _like(saved: Any, target: Any) -> Any:
    """The part of a saved tree that a partial ``target`` (nested dicts) names."""
    if not isinstance(target, dict):
        return saved
    # Empty parts (a model without BatchNorm statistics) hold no array to compare.
    return {k: _like(saved[k], v) for k, v in target.items() if jax.tree.leaves(v)}


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _reader(directory: str, *, partial: bool, data: bool) -> Iterator[ocp.CheckpointManager]:
    """A read-only Orbax manager of ``directory`` (a run may be training meanwhile)."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoint folder {directory}")
    handlers = {"state": ocp.PyTreeCheckpointHandler() if partial
                else ocp.StandardCheckpointHandler()}
    if data:
        handlers["data"] = ocp.JsonCheckpointHandler(filename=DATA_POSITION_FILE)
    with _quiet_absl():  # Orbax warns that read-only is read-only
        manager = ocp.CheckpointManager(
            directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
            item_handlers=handlers)
    try:
        yield manager
    finally:
        manager.close()


def checkpoint_steps(directory: str) -> list[int]:
    """Steps of the complete checkpoints in ``directory``, oldest first (FileNotFoundError when
    the folder is missing)."""
    with _reader(directory, partial=True, data=False) as manager:
        return sorted(manager.all_steps())


def restore(
    directory: str,
    target: Any,
    step: int | None = None,
    *,
    partial: bool = False,
    data_iter: Any | None = None,
    move_damaged: bool = False,
    warn: Callable[[str], None] = log.warning,
    manager: ocp.CheckpointManager | None = None,
) -> tuple[int, Any]:
    """``(step, state)`` restored from the checkpoints in ``directory``: the one restore path.

    Args:
      directory: the checkpoint folder (``<run>/checkpoints``).
      target: arrays or ``jax.ShapeDtypeStruct`` laid out as the state to restore (their
        shardings say where the arrays go).
      step: None for the newest that restores: each damaged one is reported through ``warn``,
        naming its folder, and the next newest tried (``restore_newest``); a number for exactly
        that checkpoint.
      partial: ``target`` is a part of the saved state as nested dicts (readers:
        ``{"g": {"params", "batch_stats"}}``); only those arrays are read.
      data_iter: set to the checkpoint's data position (the trainer).
      move_damaged: rename damaged checkpoints to ``damaged-<step>`` (only the trainer, which
        owns the folder).
      warn: where damage is reported.
      manager: the Orbax manager to read with: the trainer's own (closing a second manager
        after a damaged checkpoint's abandoned reads prints their tracebacks); default a
        read-only one, closed on return.

    Raises:
      FileNotFoundError: no checkpoint, or none at ``step``.
      CheckpointMismatchError: the checkpoint holds other shapes than ``target`` (a changed
        configuration is not damage: nothing is moved, nothing else tried).
      DamagedCheckpointError: ``step``'s checkpoint, or with ``step`` None every one, is damaged;
        the message names each folder and why.
      ValueError: a data position this version cannot use, naming its file (the arrays are
        intact, so this is not damage either).
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    with contextlib.ExitStack() as stack:
        if manager is None:
            manager = stack.enter_context(
                _reader(directory, partial=partial, data=data_iter is not None))
        steps = sorted(manager.all_steps())
        if step is not None and step not in steps:
            raise FileNotFoundError(f"no checkpoint at step {step} in {directory} "
                                    f"(have {steps})")

        def legacy_positions(at: int) -> list[str]:
            return sorted(glob.glob(os.path.join(directory, str(at), "data",
                                                 "process_*-of-*.json")))

        def read(at: int) -> dict[str, Any]:
            folder = os.path.join(directory, str(at))
            saved = ocp.StandardCheckpointHandler().metadata(epath.Path(folder) / "state")
            saved = getattr(saved, "tree", saved)
            try:
                saved = _like(saved, abstract) if partial else saved
            except KeyError:  # an array this configuration has and the checkpoint lacks
                saved = None
            if saved is None or _shapes(saved) != _shapes(abstract):
                raise CheckpointMismatchError(
                    f"checkpoint {folder} holds arrays of other shapes than this "
                    "configuration's model: was the run started with another config? Use the "
                    "same config, or another --workdir.")
            if partial:
                state = ocp.args.PyTreeRestore(
                    item=abstract, partial_restore=True,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))
            else:
                state = ocp.args.StandardRestore(abstract)
            items = {"state": state}
            if data_iter is not None and not legacy_positions(at):
                items["data"] = ocp.args.JsonRestore()
            return manager.restore(at, args=ocp.args.Composite(**items))

        if step is None:
            step, restored = restore_newest(directory, steps, read, move_aside=move_damaged,
                                            warn=warn)
        else:
            try:
                restored = read(step)
            except CheckpointMismatchError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure to read means damaged files
                raise DamagedCheckpointError(
                    _damaged(os.path.join(directory, str(step)), _first_line(e))) from e
    if data_iter is not None:
        legacy = legacy_positions(step)
        data_iter.set_state(_legacy_position(legacy) if legacy else restored["data"])
    return step, restored["state"]


class Checkpointer:
    """Saves every ``every`` steps (and when forced), keeps the newest ``keep`` and the best;
    restores the latest."""

    def __init__(self, directory: str, *, every: int, keep: int, is_main: bool = True):
        self.directory = os.path.abspath(directory)
        self.every = every
        self.keep = keep
        self.is_main = is_main
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(create=True),  # retention is ours, see _prune
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                # Written once, by the primary process: the position is global.
                "data": ocp.JsonCheckpointHandler(filename=DATA_POSITION_FILE),
            },
        )
        self.best = self._read_best()

    def _read_best(self) -> dict | None:
        return runs.read_best(self.directory)

    def is_better(self, value: float, mode: str) -> bool:
        """Whether ``value`` beats the recorded best (``mode`` is 'max' or 'min')."""
        if self.best is None:
            return True
        return value > self.best["value"] if mode == "max" else value < self.best["value"]

    def save_best(self, step: int, state: Any, data_iter: Any, metric: str, value: float):
        """Saves ``step`` (if not saved yet) and records it as the best checkpoint."""
        self.save(step, state, data_iter, force=True)
        self.wait()  # the record must never name a checkpoint that is not complete
        self.best = {"step": step, "metric": metric, "value": float(value)}
        if self.is_main:
            runs.write_best(self.directory, self.best)
        self._prune()

    def _prune(self) -> None:
        steps = sorted(self._manager.all_steps())
        keep = set(steps[-self.keep:])
        if self.best is not None:
            keep.add(self.best["step"])
        for step in steps:
            if step not in keep:
                self._manager.delete(step)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of the checkpoints on disk, oldest first."""
        return sorted(self._manager.all_steps())

    def is_due(self, step: int) -> bool:
        """Whether ``save(step, ...)`` without ``force`` would write a checkpoint."""
        return step % self.every == 0 and step not in self._manager.all_steps()

    @contextlib.contextmanager
    def _disk_full_guard(self, step: int) -> Iterator[None]:
        """Turns a full disk (reported now or by an earlier async save) into DiskFullError."""
        try:
            yield
        except Exception as e:
            if not _is_disk_full(e):
                raise
            for tmp in glob.glob(os.path.join(self.directory, "*.orbax-checkpoint-tmp*")):
                shutil.rmtree(tmp, ignore_errors=True)  # frees the space the failed save took
            with contextlib.suppress(Exception):
                self._manager.reload()
            intact = self.all_steps()
            which = f"step {step} or the save before it" if step >= 0 else "the pending save"
            raise DiskFullError(
                errno.ENOSPC,
                f"disk full while saving a checkpoint ({which}) in "
                f"{self.directory}: {_first_line(e)}. The earlier checkpoints are intact "
                f"(steps {intact}); free some space and run the same command to resume.",
            ) from e

    def save(self, step: int, state: Any, data_iter: Any | None, *, force: bool = False) -> bool:
        """Saves at ``step`` when it is due (or ``force``); returns whether it saved.

        Raises NonFiniteStateError (writing nothing) if ``state`` holds NaN or inf, and
        DiskFullError if the disk fills up.
        """
        if not force and step % self.every != 0:
            return False
        if step in self._manager.all_steps():
            return False
        # Saving reads the whole state anyway; this one reduction keeps NaNs off the disk.
        if not bool(_all_finite_program()(state)):
            raise NonFiniteStateError(
                f"not saving step {step} in {self.directory}: the state holds non-finite values")
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data"] = ocp.args.JsonSave(data_iter.get_state(gather=_gather_processes))
        with self._disk_full_guard(step):
            saved = self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        self._prune()
        return saved

    def restore(self, state_like: Any, data_iter: Any | None, step: int | None = None) -> Any:
        """The state at ``step`` (default latest) laid out like ``state_like``; moves
        ``data_iter`` to its saved position (see ``restore``: CheckpointMismatchError for other
        shapes, DamagedCheckpointError naming the folder when its files are damaged)."""
        step = self.latest_step() if step is None else step
        return restore(self.directory, state_like, step, data_iter=data_iter,
                       manager=self._manager)[1]

    def restore_latest(self, state_like: Any, data_iter: Any | None,
                       warn: Callable[[str], None] = log.warning) -> Any | None:
        """The newest restorable checkpoint's state (see ``restore``), or None when there is
        none. Damaged ones are reported through ``warn`` and moved aside; if every one is
        damaged, the run starts afresh."""
        if not self.all_steps():
            return None
        try:
            _, state = restore(self.directory, state_like, data_iter=data_iter,
                               move_damaged=self.is_main, warn=warn, manager=self._manager)
        except DamagedCheckpointError as e:
            warn(f"{e}; starting from scratch")
            state = None
        self._manager.reload()
        if self.best is not None and self.best["step"] not in self.all_steps():
            self.best = None  # the best checkpoint was damaged: the next evaluation replaces it
        return state

    def wait(self) -> None:
        """Blocks until async saves are on disk (DiskFullError if the disk filled up)."""
        with self._disk_full_guard(-1):
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self.wait()
        self._manager.close()


@functools.cache
def _all_finite_program() -> Callable[[Any], jax.Array]:
    """``all_finite`` jitted with ``run_once_options``. Every process compiles it at its first
    save: on CPU 0.9-1.2 s instead of 2.1-2.5 s (LAB GAN, pix2pix); the check then takes
    0.06-0.25 s instead of 0.02-0.05 s per checkpoint, next to a save of seconds."""
    return jax.jit(all_finite, compiler_options=run_once_options())


def _gather_processes(local: np.ndarray) -> np.ndarray:
    """All processes' ``local`` arrays in process order (a collective; every process calls it)."""
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(local)).reshape(-1)


def _legacy_position(paths: list[str]) -> dict:
    """A data position from a checkpoint written before global batches: one Grain iterator
    state per process. Their consumed counts add up to the records consumed; the old
    per-process shuffle cannot be continued, so the new stream resumes after that many."""
    names = sorted(os.path.basename(p) for p in paths)
    count = int(names[0].split("-of-")[1].split(".")[0])
    expected = [f"process_{i}-of-{count}.json" for i in range(count)]
    if names != expected:
        raise ValueError(f"{os.path.dirname(paths[0])}: incomplete per-process data positions "
                         f"of an older jaxcolor ({names}, expected {expected})")
    records = 0
    for path in paths:
        with open(path) as f:
            state = json.load(f)
        if isinstance(state, str):
            state = json.loads(state)
        try:
            if "next_index" in state:  # in-process reading
                records += int(state["next_index"])
            else:  # Grain worker processes: one iterator per worker
                records += sum(int(s["next_index"]) for s in state["iterators_in_use_states"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: data position of an older jaxcolor in an unknown form "
                             f"({type(e).__name__}: {e}); resume this run with the version "
                             "that wrote it, or start a new work dir") from e
    log.warning("%s: per-process data positions of an older jaxcolor (before global "
                "shuffling); resuming the new global record order after the %d records they "
                "consumed. The model state is restored exactly; the data order is not the old "
                "one.", os.path.dirname(paths[0]), records)
    from jaxcolor.data.batches import POSITION_FORMAT

    return {"format": POSITION_FORMAT, "records_consumed": records}
