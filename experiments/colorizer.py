"""The recipe jaxcolor recommends for colorizing photos, from few photos on a laptop CPU.

python -m jaxcolor.train --config experiments/colorizer.py --config.data.dir=/path/to/photos
python -m jaxcolor.train --config experiments/colorizer.py:quick   # a few minutes

L -> ab with a U-Net (the deepest the image size allows) and a spectrally normalised PatchGAN,
trained in DeOldify's three phases: reconstruction only (the Euclidean ab error, the one AuC
measures), a short critic warm-up on G's outputs with G frozen, then a short GAN phase with a
hinge loss and a faster critic (TTUR). Small-data stabilisers: G's weight EMA (what validation,
evaluate, colorize, export and the server use), DiffAugment (translation, cutout) on D's inputs,
random-resized crops of the full photos, AdamW. The default length takes about 11 minutes at
64 px on a 2-core CPU (BUILD.md); on a GPU raise data.image_size and train.num_steps.
"""

from jaxcolor.config import base_config

NUM_STEPS = 2400
QUICK_STEPS = 300


def get_config(preset=None):
    if preset not in (None, "", "quick"):
        raise ValueError(f"unknown config preset {preset!r} (known: 'quick')")
    c = base_config()
    c.experiment = "colorizer"
    c.data.task = "lab"
    c.data.image_size = 64
    c.data.num_workers = 0  # a few dozen photos: two reader threads keep up at 64 px
    c.data.crop_scale = (0.25, 1.0)
    c.data.crop_ratio = (3 / 4, 4 / 3)
    c.data.num_val_images = 8

    c.model.generator = "unet"  # num_downs: the deepest the image size allows
    c.model.ngf = 32  # a quarter of pix2pix's arithmetic: four times the steps in the time
    c.model.discriminator = "patchgan"
    c.model.ndf = 32
    c.model.n_layers = 3
    c.model.spectral_norm = True
    c.model.ema_decay = 0.999

    c.loss.reconstruction = "ab_euclid"
    c.loss.recon_weight = 100.0
    c.loss.adversarial = "hinge"
    c.loss.adv_weight = 1.0
    c.loss.diffaugment = "translation,cutout"

    c.optim.g_lr = 2e-4
    c.optim.d_lr = 4e-4  # TTUR: a faster critic
    c.optim.weight_decay = 1e-2
    c.optim.decay_start = 0.5

    c.train.batch_size = 8
    c.train.best_metric = "auc"
    _length(c, QUICK_STEPS if preset == "quick" else NUM_STEPS)
    return c


def _length(c, steps: int) -> None:
    """``steps`` in all: 70% reconstruction, 10% critic warm-up, 20% GAN. Validation 20 times
    (the best checkpoint by validation AuC is kept), sample grids and checkpoints 5 and 10."""
    c.train.num_steps = steps
    c.train.recon_steps = int(0.7 * steps)
    c.train.critic_steps = int(0.1 * steps)
    c.train.log_every = max(steps // 40, 1)
    c.train.eval_every = max(steps // 20, 1)
    c.train.image_every = max(steps // 5, 1)
    c.train.checkpoint_every = max(steps // 10, 1)
