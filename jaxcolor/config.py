"""Default configuration and its validation. Experiments start from ``base_config()``.

Every key a user may set exists here, so ``--config.a.b=v`` for an unknown key fails in the
flag parser, naming it; ``validate`` then rejects bad values before any work, naming the key.
Names (``model.generator``, ``loss.adversarial``, ...) are checked by the registries that hold
them (``training.step.check_names``), through ``check_choice``.

A leaf: ml_collections and the standard library only, so an experiment file's ``get_config()``
imports neither JAX nor flax, optax or Orbax.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
from collections.abc import Collection

import ml_collections

MAX_NUM_DOWNS = 8  # U-Net-256, the deepest the reference builds by default

# Validation metrics that can choose the best checkpoint, and which way is better.
BEST_METRIC_MODES = {
    "auc": "max", "psnr": "max", "ssim": "max", "pixel_acc": "max", "dcf": "min",
    "l1": "min", "mse": "min",
}


def base_config() -> ml_collections.ConfigDict:
    """All keys with defaults; values follow pix2pix unless an experiment says otherwise."""
    c = ml_collections.ConfigDict()
    c.experiment = "default"

    c.data = ml_collections.ConfigDict()
    c.data.dir = ml_collections.FieldReference(None, field_type=str)  # None: sample photos
    # prepared uint8 ArrayRecord of the training split (python -m jaxcolor.data.cache)
    c.data.cache = ml_collections.FieldReference(None, field_type=str)
    c.data.task = "lab"  # lab: L -> ab; gray_rgb: gray x3 -> RGB
    c.data.image_size = 256
    c.data.augment = True  # resize 12.5% larger, random crop, horizontal flip
    c.data.skip_grayscale = True
    c.data.val_fraction = 0.1  # held out when the folder has no Train/Validation layout
    c.data.num_workers = 4  # decoding worker processes per process; 0 = two threads
    c.data.num_val_images = 8  # validation images in sample grids and validation loss
    c.data.max_pixels = 100_000_000  # larger images are skipped (decompression-bomb guard)
    # Random-resized crops (torchvision's) of the full photo instead of data.augment's fixed
    # 12.5% margin: area fraction (min, max) and aspect w/h (min, max). None or (): off.
    c.data.crop_scale = ml_collections.FieldReference(None, field_type=tuple)
    c.data.crop_ratio = (3 / 4, 4 / 3)

    c.model = ml_collections.ConfigDict()
    c.model.generator = "lab_gan"
    c.model.discriminator = "dcgan"
    # unet: None = the deepest U-Net the image size allows, at most 8 (U-Net-256); see resolve
    c.model.num_downs = ml_collections.FieldReference(None, field_type=int)
    c.model.ngf = 64  # unet
    c.model.dropout_rate = 0.5  # unet
    c.model.dropout_at_inference = False  # unet: pix2pix keeps dropout on at test time
    c.model.ndf = 64  # patchgan
    c.model.n_layers = 3  # patchgan: 3 = 70x70 receptive field
    c.model.spectral_norm = False  # D's layers spectrally normalised (and no BatchNorm in D)
    c.model.ema_decay = 0.0  # G's weight EMA, used by validation and every reader; 0 = off
    # efficientnet_unet: its encoder's initial weights, a name (weights.PRETRAINED, from the
    # [pretrained] extra) or a .pth/.safetensors file; None or "" (--config.model.encoder_weights=):
    # random initialisation
    c.model.encoder_weights = ml_collections.FieldReference("efficientnet-lite0-imagenet",
                                                            field_type=str)
    c.model.decoder_features = (128, 64, 48, 32)  # efficientnet_unet: widths at strides 16..2

    c.loss = ml_collections.ConfigDict()
    c.loss.adversarial = "bce"  # bce | lsgan | hinge
    c.loss.reconstruction = "l1"  # l1 | mse | huber | ab_euclid
    c.loss.huber_delta = 0.01  # huber: quadratic below this error (network units; 1.1 ab)
    c.loss.diffaugment = ""  # D's inputs: "translation,cutout" (training/diffaugment.py)
    c.loss.recon_weight = 100.0
    c.loss.adv_weight = 1.0
    c.loss.label_flip = False
    c.loss.soft_labels = False  # 1 ~ U[0.9, 1], 0 ~ U[0, 0.1]
    c.loss.label_smoothing = 0.0  # one-sided: 1 -> 1 - s

    c.optim = ml_collections.ConfigDict()
    c.optim.g_lr = 2e-4
    c.optim.d_lr = 2e-4
    c.optim.b1 = 0.5
    c.optim.b2 = 0.999
    c.optim.decay_start = 0.5  # fraction of num_steps after which lr decays linearly to 0
    c.optim.d_updates = 1  # D updates per train step
    c.optim.g_updates = 1  # G updates per train step
    c.optim.weight_decay = 0.0  # > 0: AdamW (decoupled, kernels only); 0: Adam
    c.optim.encoder_lr_scale = 0.1  # a pretrained encoder's lr, times G's, once unfrozen

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 8  # global, over all devices and hosts
    c.train.num_steps = 100_000
    c.train.seed = 0
    c.train.compute_dtype = "float32"  # float32 | bfloat16 (params stay float32)
    c.train.log_every = 50
    c.train.image_every = 1000  # sample grids
    c.train.eval_every = 1000  # validation losses and metrics (PSNR, SSIM, AuC, ...)
    c.train.best_metric = "auc"  # validation metric that picks the kept best checkpoint
    c.train.checkpoint_every = 2000
    c.train.keep_checkpoints = 3
    c.train.nonfinite = "stop"  # a NaN/inf loss or gradient: stop | skip_step (keep the state)
    # Phases (training/step.py): G on reconstruction alone, then D alone on G's outputs, then
    # the GAN to num_steps. 0 and 0: the GAN from the first step.
    c.train.recon_steps = 0
    c.train.critic_steps = 0
    # RUN_OR_EXPORT[:STEP]: a new run starts G (and D, when the source has a matching one) from
    # another run's checkpoint or an exported model; its optimisers and data order are its own.
    c.train.init_from = ml_collections.FieldReference(None, field_type=str)
    c.train.encoder_frozen_steps = 0  # a pretrained encoder is not trained for these first steps
    return c


def apply_preset(config: ml_collections.ConfigDict, preset: str | None):
    """``file.py:quick`` on the command line: 64x64, a few hundred steps, for a laptop CPU."""
    if preset in (None, ""):
        return config
    if preset != "quick":
        raise ValueError(f"unknown config preset {preset!r} (known: 'quick')")
    config.data.image_size = 64
    config.data.num_workers = 0  # a handful of small photos: worker start-up would dominate
    config.train.num_steps = 300
    config.train.log_every = 25
    config.train.image_every = 100
    config.train.eval_every = 100
    config.train.checkpoint_every = 100
    return config


def pix2pix(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Isola et al. 2017: U-Net-256, 70x70 PatchGAN, BCE + 100 L1, Adam 2e-4 (0.5, 0.999),
    constant learning rate for the first half, then linear decay to 0."""
    config.model.generator = "unet"
    config.model.discriminator = "patchgan"
    config.model.n_layers = 3
    config.loss.adversarial = "bce"
    config.loss.reconstruction = "l1"
    config.loss.recon_weight = 100.0
    config.optim.g_lr = config.optim.d_lr = 2e-4
    config.optim.decay_start = 0.5
    config.train.batch_size = 4
    return config


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Fills the values that depend on others: ``model.num_downs`` (None -> the deepest U-Net
    ``data.image_size`` allows, at most 8). Returns ``config`` (changed in place)."""
    deepest = min(MAX_NUM_DOWNS, max_downs(config.data.image_size))
    if config.model.get("num_downs") is None and deepest >= 5:  # else validate names the size
        config.model.num_downs = deepest
    return config


def upgrade(saved: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A config saved by a run (any version) on today's defaults: keys added since get their
    default, so runs written by earlier versions load unchanged. Resolved (see ``resolve``)."""
    config = base_config()
    for key, value in saved.items():
        if isinstance(value, ml_collections.ConfigDict) and key in config:
            for name, item in value.items():
                config[key][name] = item
        else:
            config[key] = value
    return resolve(config)


def size_multiple(config: ml_collections.ConfigDict) -> int:
    """What the generator's input height and width must be multiples of."""
    if config.model.generator == "unet":
        return 2 ** int(resolve(config).model.num_downs)
    if config.model.generator == "efficientnet_unet":
        return 32  # the encoder's deepest stride
    return 4  # lab_gan: two stride-2 convolutions, then two transposed ones


def load_file(path: str) -> ml_collections.ConfigDict:
    """An experiment file's ``get_config()``, as ``--config path`` gives it (ml_collections'
    ``config_flags``): ``file.py:arg`` calls ``get_config("arg")``, e.g. ``:quick``."""
    file, *arg = path.split(":", 1)
    name = "experiment_" + os.path.splitext(os.path.basename(file))[0]
    loader = importlib.machinery.SourceFileLoader(name, file)  # any extension, as config_flags
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    loader.exec_module(module)
    return module.get_config(*arg)


def _check(ok: bool, key: str, value, need: str) -> None:
    if not ok:
        raise ValueError(f"config key {key}={value!r} is invalid: {need}")


def check_choice(key: str, value, choices: Collection[str]) -> None:
    """Raises ValueError naming ``key`` unless ``value`` is one of ``choices`` (a registry)."""
    _check(value in choices, key, value, f"one of {sorted(choices)}")


def validate(config: ml_collections.ConfigDict, num_devices: int = 1, num_processes: int = 1):
    """Raises ValueError naming the first key whose value cannot work (names of models, losses,
    tasks and modes: ``training.step.check_names``)."""
    d, m, t, o, lo = config.data, config.model, config.train, config.optim, config.loss
    _check(d.image_size >= 16 and d.image_size % 4 == 0, "data.image_size", d.image_size,
           "a multiple of 4, at least 16")
    _check(d.num_workers >= 0, "data.num_workers", d.num_workers, ">= 0")
    _check(d.max_pixels >= 1, "data.max_pixels", d.max_pixels, ">= 1")
    _check(d.num_val_images >= 1, "data.num_val_images", d.num_val_images, ">= 1")
    _check(0.0 < d.val_fraction < 1.0, "data.val_fraction", d.val_fraction, "in (0, 1)")
    if m.generator == "unet" and m.num_downs is None:
        _check(max_downs(d.image_size) >= 5, "data.image_size", d.image_size,
               "a multiple of 32 for the U-Net (model.num_downs >= 5)")
    elif m.generator == "unet":
        _check(m.num_downs >= 5, "model.num_downs", m.num_downs, ">= 5 (U-Net-256 uses 8)")
        _check(d.image_size % 2**m.num_downs == 0, "model.num_downs", m.num_downs,
               f"data.image_size={d.image_size} must be divisible by 2**num_downs; "
               f"use num_downs <= {max_downs(d.image_size)}")
    if m.generator == "efficientnet_unet":
        _check(d.image_size % 32 == 0, "data.image_size", d.image_size,
               "a multiple of 32 for model.generator=efficientnet_unet")
        _check(len(m.decoder_features) == 4 and min(m.decoder_features) >= 1,
               "model.decoder_features", m.decoder_features, "4 widths >= 1 (strides 16 ... 2)")
    if m.discriminator == "patchgan":
        _check(d.image_size >= 2 ** (m.n_layers + 2), "model.n_layers", m.n_layers,
               f"too deep for data.image_size={d.image_size}")
    _check(lo.recon_weight >= 0, "loss.recon_weight", lo.recon_weight, ">= 0")
    _check(lo.adv_weight >= 0, "loss.adv_weight", lo.adv_weight, ">= 0")
    _check(0.0 <= lo.label_smoothing < 0.5, "loss.label_smoothing", lo.label_smoothing,
           "in [0, 0.5)")
    for key in ("g_lr", "d_lr"):
        _check(o[key] > 0, f"optim.{key}", o[key], "> 0")
    for key in ("b1", "b2"):
        _check(0 <= o[key] < 1, f"optim.{key}", o[key], "in [0, 1)")
    _check(o.encoder_lr_scale >= 0, "optim.encoder_lr_scale", o.encoder_lr_scale, ">= 0")
    _check(t.encoder_frozen_steps >= 0, "train.encoder_frozen_steps", t.encoder_frozen_steps,
           ">= 0")
    _check(0.0 <= o.decay_start <= 1.0, "optim.decay_start", o.decay_start, "in [0, 1]")
    for key in ("d_updates", "g_updates"):
        _check(o[key] >= 1, f"optim.{key}", o[key], ">= 1")
    _check(t.num_steps > 0, "train.num_steps", t.num_steps, "> 0")
    _check(t.batch_size > 0, "train.batch_size", t.batch_size, "> 0")
    _check(t.batch_size % num_devices == 0, "train.batch_size", t.batch_size,
           f"divisible by the device count ({num_devices}); the batch is global")
    _check(t.batch_size % num_processes == 0, "train.batch_size", t.batch_size,
           f"divisible by the process count ({num_processes})")
    check_choice("train.best_metric", t.best_metric, BEST_METRIC_MODES)
    for key in ("log_every", "image_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
        _check(t[key] >= 1, f"train.{key}", t[key], ">= 1")
    _validate_recipe(config)


def _validate_recipe(config: ml_collections.ConfigDict) -> None:
    """The numeric checks of the recipe's switches (phases, crops, EMA, decay, Huber)."""
    d, m, t, o, lo = config.data, config.model, config.train, config.optim, config.loss
    for key in ("recon_steps", "critic_steps"):
        _check(t[key] >= 0, f"train.{key}", t[key], ">= 0")
    if t.recon_steps > 0:
        _check(lo.recon_weight > 0, "loss.recon_weight", lo.recon_weight,
               "> 0: train.recon_steps trains G on the reconstruction loss alone")
    _check(0.0 <= m.ema_decay < 1.0, "model.ema_decay", m.ema_decay, "in [0, 1); 0 = off")
    _check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, ">= 0")
    _check(lo.huber_delta > 0, "loss.huber_delta", lo.huber_delta, "> 0")
    if d.crop_scale:  # None or () (what the command line can set): off
        lo_s, hi_s = (tuple(d.crop_scale) + (0.0, 0.0))[:2]
        _check(len(d.crop_scale) == 2 and 0 < lo_s <= hi_s <= 1, "data.crop_scale",
               d.crop_scale, "(min, max) area fractions with 0 < min <= max <= 1, or () for off")
    lo_r, hi_r = (tuple(d.crop_ratio) + (0.0, 0.0))[:2]
    _check(len(d.crop_ratio) == 2 and 0 < lo_r <= hi_r, "data.crop_ratio", d.crop_ratio,
           "(min, max) aspect ratios w/h with 0 < min <= max")


def max_downs(image_size: int) -> int:
    """The most times ``image_size`` halves exactly (the deepest U-Net it allows)."""
    n = 0
    while image_size % 2 ** (n + 1) == 0:
        n += 1
    return n
