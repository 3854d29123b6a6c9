"""Networks by name: the config's ``model.generator`` / ``model.discriminator`` pick a builder here.

A builder takes ``(model_config, task, dtype)`` and returns a flax.linen Module. Generators are
called as ``G(cond, train=...)``; discriminators as ``D(cond, image, train=...)`` and return logits
(one per image or a map of patch logits). Adding a model means adding a module and one line here.
A generator built around a pretrained encoder also has an entry in ``ENCODERS``: the name of the
encoder's top-level subtree and how to read its pretrained variables from the model config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import ml_collections

from jaxcolor.config import check_choice
from jaxcolor.models import pretrained_unet
from jaxcolor.models.lab_gan import DCGANDiscriminator, LabGenerator
from jaxcolor.models.pix2pix import PatchGANDiscriminator, UNetGenerator
from jaxcolor.tasks import Task

Builder = Callable[[ml_collections.ConfigDict, Task, object], nn.Module]

GENERATORS: dict[str, Builder] = {
    "lab_gan": lambda m, task, dtype: LabGenerator(out_channels=task.target_channels, dtype=dtype),
    "unet": lambda m, task, dtype: UNetGenerator(
        out_channels=task.target_channels,
        num_downs=m.num_downs,
        base_features=m.get("ngf", 64),
        dropout_rate=m.get("dropout_rate", 0.5),
        dropout_at_inference=m.get("dropout_at_inference", False),
        dtype=dtype,
    ),
    "efficientnet_unet": lambda m, task, dtype: pretrained_unet.EfficientUNet(
        out_channels=task.target_channels,
        decoder_features=tuple(m.decoder_features),
        dtype=dtype,
    ),
}

DISCRIMINATORS: dict[str, Builder] = {
    "dcgan": lambda m, task, dtype: DCGANDiscriminator(
        dtype=dtype, spectral_norm=m.get("spectral_norm", False)),
    "patchgan": lambda m, task, dtype: PatchGANDiscriminator(
        base_features=m.get("ndf", 64), n_layers=m.get("n_layers", 3), dtype=dtype,
        spectral_norm=m.get("spectral_norm", False),
    ),
}


def check_names(model_cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming ``model.generator`` or ``model.discriminator`` if unknown."""
    check_choice("model.generator", model_cfg.generator, GENERATORS)
    check_choice("model.discriminator", model_cfg.discriminator, DISCRIMINATORS)


def _build(table: dict[str, Builder], key: str, model_cfg, task: Task, dtype) -> nn.Module:
    check_choice(f"model.{key}", model_cfg[key], table)
    return table[model_cfg[key]](model_cfg, task, dtype)


def build_generator(model_cfg: ml_collections.ConfigDict, task: Task, dtype) -> nn.Module:
    """The generator named by ``model_cfg.generator``."""
    return _build(GENERATORS, "generator", model_cfg, task, dtype)


def build_discriminator(model_cfg: ml_collections.ConfigDict, task: Task, dtype) -> nn.Module:
    """The discriminator named by ``model_cfg.discriminator``."""
    return _build(DISCRIMINATORS, "discriminator", model_cfg, task, dtype)


class Encoder(NamedTuple):
    """A generator's pretrained encoder: its top-level name in the generator's ``params`` and
    ``batch_stats``, and ``(weights) -> {"params": {name: ...}, "batch_stats": {name: ...}}``."""

    name: str
    variables: Callable[[str], dict]


ENCODERS: dict[str, Encoder] = {
    "efficientnet_unet": Encoder(pretrained_unet.ENCODER, pretrained_unet.encoder_variables),
}


def encoder_name(model_cfg: ml_collections.ConfigDict) -> str | None:
    """The generator's pretrained encoder subtree, or None when it has none."""
    encoder = ENCODERS.get(model_cfg.generator)
    return encoder.name if encoder else None


def pretrained_variables(model_cfg: ml_collections.ConfigDict) -> dict | None:
    """The pretrained encoder variables the generator starts from (``model.encoder_weights``: a
    name in ``weights.PRETRAINED`` or a file), or None: no encoder, or ``encoder_weights`` None
    (random initialisation). Fails naming the pip extra when the weights' package is missing."""
    encoder = ENCODERS.get(model_cfg.generator)
    weights = model_cfg.get("encoder_weights")
    if encoder is None or not weights:
        return None
    return encoder.variables(weights)
