"""Loading a trained generator: ``load_run`` (a run folder) and ``load`` (a run or an export).

``load_run`` reads the run's ``config.json``, rebuilds the generator and restores only its
parameters and BatchNorm statistics from the Orbax checkpoint (the discriminator, the optimiser
states and the data iterator stay on disk): G's weight EMA when the run keeps one
(``model.ema_decay``), else G itself (``training.state.inference_tree`` decides). Both return
a ``model_lib.Model``; how an image becomes a prediction is in ``jaxcolor.inference.predictor``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax

from jaxcolor import runs
from jaxcolor.inference.model import Model, make_model
from jaxcolor.runs import Step

if TYPE_CHECKING:
    import ml_collections


def restore_generator(workdir: str, step: Step = None
                      ) -> tuple[ml_collections.ConfigDict, int, dict[str, Any]]:
    """(config, resolved step, {"params", "batch_stats"} of G for inference as host arrays) of
    a run: its weight EMA when the run keeps one (``training.state.inference_tree``)."""
    config, chosen, g, _ = restore_networks(workdir, step)
    return config, chosen, g


def restore_networks(workdir: str, step: Step = None, discriminator: bool = False
                     ) -> tuple[ml_collections.ConfigDict, int, dict[str, Any], Any]:
    """``restore_generator``'s (config, step, G's inference variables), and D's
    ``{"params", "batch_stats"}`` too when ``discriminator`` (else None): a warm start's
    source (``training.warm_start``).

    Restores through the trainer's path (``checkpoints.restore``), reading only these arrays:
    a damaged newest checkpoint is reported and the next newest used (for None/"latest"); a
    damaged named step raises DamagedCheckpointError. Nothing is moved aside: a training
    process may own the folder.
    """
    from jaxcolor import config as config_lib
    from jaxcolor.training import checkpoints
    from jaxcolor.training.state import (
        abstract_state,
        build_gan,
        inference_tree,
        inference_variables,
    )

    config = config_lib.upgrade(runs.read_config(workdir))
    directory = runs.checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{workdir!r} has no checkpoints ({directory} is missing)")
    chosen = runs.resolve_step(workdir, step, checkpoints.checkpoint_steps(directory))
    abstract = abstract_state(build_gan(config), config.data.image_size,
                              jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
    target = inference_tree(abstract)
    if discriminator:
        target["d"] = {"params": abstract.d.params, "batch_stats": abstract.d.batch_stats}
    chosen, restored = checkpoints.restore(
        directory, target, None if step in (None, "latest") else chosen, partial=True)
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
    """The API's ``metadata`` of a run at ``step``: validation metrics, the colour strength
    calibrated for ``step`` (1.0 when none was) and the training-photo baselines, when
    recorded."""
    calibration = runs.read_calibration(workdir, step)
    return {
        "task": config.data.task,
        "experiment": config.experiment,
        "generator": config.model.generator,
        "image_size": int(config.data.image_size),
        "step": int(step),
        "source": "run",
        "path": os.path.abspath(workdir),
        "metrics": runs.read_validation(workdir, step),
        "colour_strength": calibration["colour_strength"] if calibration else 1.0,
        "calibration": calibration,
        "baselines": runs.read_baselines(workdir),
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
