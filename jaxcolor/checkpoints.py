"""Orbax checkpoints of the train state together with the Grain iterator state.

Each checkpoint is a step folder with two items: ``state`` (the ``GANState`` pytree) and
``data`` (this process's Grain iterator position). Orbax writes into a temporary folder and
renames it when complete, so an interrupted save never leaves a checkpoint that looks valid.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves every ``every`` steps (and when forced), keeps the newest ``keep``; restores latest."""

    def __init__(self, directory: str, *, every: int, keep: int):
        self.directory = os.path.abspath(directory)
        self.every = every
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_names=("state", "data"),
        )

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of the checkpoints on disk, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, data_iter: Any | None, *, force: bool = False) -> bool:
        """Saves at ``step`` when it is due (or ``force``); returns whether it saved."""
        if not force and (step % self.every != 0 or step in self._manager.all_steps()):
            return False
        if step in self._manager.all_steps():
            return False
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        return self._manager.save(step, args=ocp.args.Composite(**items), force=True)

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
