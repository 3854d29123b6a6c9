"""The origin project's pix2pix variant: 3-channel gray (replicated) in, RGB out.

python -m jaxcolor.train --config experiments/pix2pix.py [--config.data.dir=...]
python -m jaxcolor.train --config experiments/pix2pix.py:quick   # 64x64, 300 steps
"""

from jaxcolor.config import apply_preset, base_config, pix2pix


def get_config(preset=None):
    c = pix2pix(base_config())
    c.experiment = "pix2pix"
    c.data.task = "gray_rgb"  # condition: the gray image; target: RGB
    c.train.num_steps = 100_000
    return apply_preset(c, preset)
