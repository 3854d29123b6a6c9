"""A colorizer on a pretrained encoder: EfficientNet-Lite0 (ImageNet weights, the [pretrained]
extra) under a U-Net decoder, L -> ab, L1 reconstruction and a small PatchGAN critic.

python -m jaxcolor.train --config experiments/colorizer_pretrained.py --config.data.dir=...
python -m jaxcolor.train --config experiments/colorizer_pretrained.py:quick   # 64 px, minutes

Sized for a 2-core CPU: the default length trains at 128 px in about 11 minutes (BUILD.md,
"A colorizer on the pretrained encoder"), so that compiling and calibration fit in 15.
The encoder stays frozen for the whole run unless ``train.encoder_frozen_steps`` is set below
``train.num_steps``: on a CPU its backward pass triples the step time and compiles a second
program. With a GPU, fine-tune it after the decoder has settled, e.g.
``--config.train.num_steps=20000 --config.train.encoder_frozen_steps=5000`` (at
``optim.encoder_lr_scale``, a tenth of G's learning rate).
"""

from jaxcolor.config import apply_preset, base_config


def get_config(preset=None):
    c = base_config()
    c.experiment = "colorizer_pretrained"
    c.data.task = "lab"
    c.data.image_size = 128
    c.data.num_workers = 0  # a few dozen photos: two reader threads keep up (BUILD.md)
    c.model.generator = "efficientnet_unet"
    c.model.encoder_weights = "efficientnet-lite0-imagenet"
    c.model.discriminator = "patchgan"
    c.model.ndf = 16
    c.model.n_layers = 2
    c.loss.adversarial = "lsgan"
    c.loss.reconstruction = "l1"
    c.loss.recon_weight = 100.0
    c.loss.adv_weight = 1.0
    c.optim.g_lr = 5e-4
    c.optim.d_lr = 2e-4
    c.optim.b1 = 0.9
    c.optim.decay_start = 0.5
    c.optim.encoder_lr_scale = 0.1
    c.train.batch_size = 8
    c.train.num_steps = 2000
    # Frozen throughout (follows num_steps; setting it breaks the link), see above.
    c.train.encoder_frozen_steps = c.train.get_ref("num_steps") + 0
    c.train.log_every = 50
    c.train.eval_every = 250
    c.train.image_every = 500
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 2
    return apply_preset(c, preset)  # quick: 64 px, 300 steps
