"""A colorizer on a pretrained encoder: EfficientNet-Lite0 (ImageNet weights, the [pretrained]
extra) under a U-Net decoder, L -> ab, L1 reconstruction and a small PatchGAN critic.

python -m jaxcolor.train --config experiments/colorizer_pretrained.py --config.data.dir=...
python -m jaxcolor.train --config experiments/colorizer_pretrained.py:quick   # 64 px, minutes

Sized for a 2-core CPU: the default length trains at 128 px in about 11 minutes (BUILD.md,
"A colorizer on the pretrained encoder"), so that compiling and evaluating fit in 15.
The encoder stays frozen for the first 3/4 of the steps (its backward pass would triple the
step time), then fine-tunes at a tenth of G's learning rate.
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
    c.train.num_steps = 1200
    c.train.encoder_frozen_steps = 900
    c.train.log_every = 50
    c.train.eval_every = 200
    c.train.image_every = 400
    c.train.checkpoint_every = 200
    c.train.keep_checkpoints = 2
    if preset == "quick":
        c = apply_preset(c, preset)  # 64 px, 300 steps
        c.train.encoder_frozen_steps = 225
        return c
    return apply_preset(c, preset)
