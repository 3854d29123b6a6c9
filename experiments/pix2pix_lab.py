"""Pix2pix in Lab, the literature's colorization setting: L in, ab out (condition = L).

python -m jaxcolor.train --config experiments/pix2pix_lab.py [--config.data.dir=...]
python -m jaxcolor.train --config experiments/pix2pix_lab.py:quick   # 64x64, 300 steps
"""

from jaxcolor.config import apply_preset, base_config, pix2pix


def get_config(preset=None):
    c = pix2pix(base_config())
    c.experiment = "pix2pix_lab"
    c.data.task = "lab"
    c.train.num_steps = 100_000
    return apply_preset(c, preset)
