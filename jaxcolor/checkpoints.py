"""Orbax checkpoints of the train state together with the Grain iterator state.

Each checkpoint is a step folder with two items: ``state`` (the ``GANState`` pytree) and
``data`` (this process's Grain iterator position). Orbax writes into a temporary folder and
renames it when complete, so an interrupted save never leaves a checkpoint that looks valid.

Retention: the newest ``keep`` checkpoints, plus the best one by a validation metric, recorded in
``best_step.json`` (``{"step", "metric", "value"}``) once that checkpoint is on disk.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from jaxcolor import runs


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
            item_names=("state", "data"),
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

    def save(self, step: int, state: Any, data_iter: Any | None, *, force: bool = False) -> bool:
        """Saves at ``step`` when it is due (or ``force``); returns whether it saved."""
        if not force and step % self.every != 0:
            return False
        if step in self._manager.all_steps():
            return False
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        saved = self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        self._prune()
        return saved

    def restore(self, state_like: Any, data_iter: Any | None, step: int | None = None) -> Any:
        """The state at ``step`` (default latest) laid out like ``state_like``; moves
        ``data_iter`` to its saved position."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        items = {"state": ocp.args.StandardRestore(abstract)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"]

    def wait(self) -> None:
        """Blocks until async saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
