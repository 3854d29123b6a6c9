"""Loading a trained generator: ``load_run`` (a run folder) and ``load`` (a run or an export).

``load_run`` reads the run's ``config.json``, rebuilds the generator and restores only its
parameters and BatchNorm statistics from the Orbax checkpoint (the discriminator, the optimiser
states and the data iterator stay on disk): G's weight EMA when the run keeps one
(``model.ema_decay``), else G itself (``training.state.inference_tree`` decides). Both return
a ``model_lib.Model``; how an image becomes a prediction is in ``jaxcolor.inference.predictor``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax

from jaxcolor import runs
from jaxcolor.inference.model import Model, make_model
from jaxcolor.runs import Step

if TYPE_CHECKING:
    import ml_collections


@contextlib.contextmanager
def _quiet_absl():
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def checkpoint_manager(workdir: str):
    """A read-only Orbax manager of the run's ``state`` items (a run may be training meanwhile)."""
    import orbax.checkpoint as ocp

    directory = runs.checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{workdir!r} has no checkpoints ({directory} is missing)")
    with _quiet_absl():  # Orbax warns that read-only is read-only
        return ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(read_only=True, create=False),
            item_names=("state",),
        )


def restore_generator(workdir: str, step: Step = None
                      ) -> tuple[ml_collections.ConfigDict, int, dict[str, Any]]:
    """(config, resolved step, {"params", "batch_stats"} of G for inference as host arrays)."""
    config, chosen, g, _ = restore_networks(workdir, step)
    return config, chosen, g


def restore_networks(workdir: str, step: Step = None, discriminator: bool = False
                     ) -> tuple[ml_collections.ConfigDict, int, dict[str, Any], Any]:
    """``restore_generator``'s (config, step, G's inference variables), and D's
    ``{"params", "batch_stats"}`` too when ``discriminator`` (else None): a warm start's
    source (``training.warm_start``)."""
    import orbax.checkpoint as ocp

    from jaxcolor import config as config_lib
    from jaxcolor.training.checkpoints import DamagedCheckpointError, restore_newest
    from jaxcolor.training.state import (
        abstract_state,
        build_gan,
        inference_tree,
        inference_variables,
    )

    config = config_lib.upgrade(runs.read_config(workdir))
    gan = build_gan(config)
    manager = checkpoint_manager(workdir)
    try:
        chosen = runs.resolve_step(workdir, step, manager.all_steps())
        abstract = abstract_state(gan, config.data.image_size,
                                  jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
        target = inference_tree(abstract)
        if discriminator:
            target["d"] = {"params": abstract.d.params, "batch_stats": abstract.d.batch_stats}

        def restore(at: int) -> dict[str, Any]:
            # Partial restore: only the generator's (and D's) arrays are read from disk.
            return manager.restore(
                at,
                args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                    item=target,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True,
                )),
            )["state"]

        if step is None or step == "latest":
            # A damaged newest checkpoint: warn, naming it, and use the next newest. Nothing is
            # moved aside here: a training process may own the folder.
            chosen, restored = restore_newest(
                runs.checkpoint_dir(workdir), [s for s in manager.all_steps() if s <= chosen],
                restore)
        else:
            try:
                restored = restore(chosen)
            except Exception as e:  # noqa: BLE001 - any failure to read means damaged files
                folder = os.path.join(runs.checkpoint_dir(workdir), str(chosen))
                raise DamagedCheckpointError(
                    f"checkpoint {folder} is damaged and cannot be restored "
                    f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})") from e
    finally:
        manager.close()
    d = restored.pop("d", None)
    return config, chosen, inference_variables(restored), d


def generator_apply(generator: Any) -> Callable[[Any, jax.Array], jax.Array]:
    """A generator module in inference mode: ``(variables, cond) -> output``.

    Dropout (pix2pix's test-time dropout, when configured) draws from a fixed key, so a
    prediction is reproducible.
    """

    def apply(variables, cond):
        return generator.apply(variables, cond, train=False,
                               rngs={"dropout": jax.random.PRNGKey(0)})

    return apply


def run_metadata(workdir: str, config: ml_collections.ConfigDict, step: int) -> dict[str, Any]:
    """The API's ``metadata`` of a run at ``step`` (validation metrics when recorded)."""
    return {
        "task": config.data.task,
        "experiment": config.experiment,
        "generator": config.model.generator,
        "image_size": int(config.data.image_size),
        "step": int(step),
        "source": "run",
        "path": os.path.abspath(workdir),
        "metrics": runs.read_validation(workdir, step),
    }


def load_run(workdir: str, step: Step = None, batch_size: int = 8) -> Model:
    """The generator of the run in ``workdir`` at checkpoint ``step`` (None/"latest", "best", N).

    Raises FileNotFoundError naming what is missing (config, checkpoint, step).
    """
    from jaxcolor import config as config_lib
    from jaxcolor.training.state import build_gan

    config, chosen, variables = restore_generator(workdir, step)
    return make_model(config.data.task, generator_apply(build_gan(config).generator), variables,
                      image_size=config.data.image_size,
                      multiple=config_lib.size_multiple(config), batch_size=batch_size,
                      metadata=run_metadata(workdir, config, chosen))


def load(path: str, step: Step = None, *, batch_size: int = 8) -> Model:
    """A colorizer from a run folder (``config.json`` + checkpoints) or an exported model folder.

    ``step`` (runs only): None for the newest checkpoint, "latest", "best" or a step number.
    """
    from jaxcolor.artifacts import format as artifact

    path = os.fspath(path)
    if artifact.is_export(path):
        if step is not None:
            raise ValueError(f"{path} is an exported model (one step); do not pass step=")
        return artifact.load_export(path, batch_size=batch_size)
    if runs.is_run(path):
        return load_run(path, step, batch_size)
    raise FileNotFoundError(
        f"{path!r} is neither a run folder (no {runs.CONFIG_FILE}) nor an exported model "
        f"(no {artifact.METADATA_FILE})")
