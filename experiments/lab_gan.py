"""The origin project's LAB GAN: Conv-BN-ReLU generator L -> ab, BCE + MSE, label tricks on.

python -m jaxcolor.train --config experiments/lab_gan.py [--config.data.dir=/path/to/Flickr1024]
python -m jaxcolor.train --config experiments/lab_gan.py:quick   # 64x64, 300 steps
"""

from jaxcolor.config import apply_preset, base_config


def get_config(preset=None):
    c = base_config()
    c.experiment = "lab_gan"
    c.data.task = "lab"
    c.data.image_size = 256
    c.model.generator = "lab_gan"
    c.model.discriminator = "dcgan"
    c.loss.adversarial = "bce"
    c.loss.reconstruction = "mse"
    c.loss.recon_weight = 100.0  # ab' is in [-1, 1]: MSE ~1e-2, so 100 balances the BCE term
    c.loss.label_flip = True  # the origin found both tricks help keep D from overpowering G
    c.loss.soft_labels = True
    c.optim.decay_start = 1.0  # constant learning rate, as in the origin
    c.train.batch_size = 8
    c.train.num_steps = 50_000
    return apply_preset(c, preset)
