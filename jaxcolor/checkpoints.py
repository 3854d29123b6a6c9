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
"""

from __future__ import annotations

import glob
import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

BEST_STEP_FILE = "best_step.json"
DATA_POSITION_FILE = "position.json"  # in each checkpoint's data/ folder


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
        path = os.path.join(self.directory, BEST_STEP_FILE)
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return json.load(f)

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
            tmp = os.path.join(self.directory, BEST_STEP_FILE + ".tmp")
            with open(tmp, "w") as f:
                json.dump(self.best, f)
            os.replace(tmp, os.path.join(self.directory, BEST_STEP_FILE))
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

    def save(self, step: int, state: Any, data_iter: Any | None, *, force: bool = False) -> bool:
        """Saves at ``step`` when it is due (or ``force``); returns whether it saved."""
        if not force and step % self.every != 0:
            return False
        if step in self._manager.all_steps():
            return False
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data"] = ocp.args.JsonSave(data_iter.get_state(gather=_gather_processes))
        saved = self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        self._prune()
        return saved

    def restore(self, state_like: Any, data_iter: Any | None, step: int | None = None) -> Any:
        """The state at ``step`` (default latest) laid out like ``state_like``; moves
        ``data_iter`` to its saved position."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        items = {"state": ocp.args.StandardRestore(abstract)}
        legacy = sorted(glob.glob(os.path.join(self.directory, str(step), "data",
                                               "process_*-of-*.json")))
        if data_iter is not None and not legacy:
            items["data"] = ocp.args.JsonRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        if data_iter is not None:
            data_iter.set_state(_legacy_position(legacy) if legacy else restored["data"])
        return restored["state"]

    def wait(self) -> None:
        """Blocks until async saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


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
    from jaxcolor.data.pipeline import POSITION_FORMAT

    return {"format": POSITION_FORMAT, "records_consumed": records}
