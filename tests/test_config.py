"""Config resolution: the U-Net depth follows the image size unless set (and is then checked),
configs saved by earlier versions load on today's defaults, experiment files load as the
``--config`` flag loads them, and the config stays a leaf (no JAX, flax, optax or Orbax)."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import jax
import ml_collections
import pytest
from absl import flags
from conftest import REPO, load_experiment
from ml_collections import config_flags

from jaxcolor import config as config_lib
from jaxcolor.training.state import build_gan


@pytest.mark.parametrize(("size", "depth"), [(32, 5), (64, 6), (256, 8), (512, 8)])
def test_num_downs_follows_the_image_size(size, depth):
    config = load_experiment("pix2pix_lab")
    assert config.model.num_downs is None  # the experiment files no longer pin it
    config.data.image_size = size  # what --config.data.image_size=N does
    config_lib.validate(config_lib.resolve(config))
    assert config.model.num_downs == depth
    assert config_lib.size_multiple(config) == 2**depth
    # The generator builds and runs at that size (shapes only, no compile).
    gan = build_gan(config)
    cond = jax.ShapeDtypeStruct((1, size, size, 1), "float32")
    variables = jax.eval_shape(lambda c: gan.generator.init(jax.random.PRNGKey(0), c,
                                                            train=False), cond)
    out = jax.eval_shape(lambda v, c: gan.generator.apply(v, c, train=False), variables, cond)
    assert out.shape == (1, size, size, 2)


def test_explicit_num_downs_is_still_validated():
    config = load_experiment("pix2pix")
    config.data.image_size = 64
    config.model.num_downs = 7
    with pytest.raises(ValueError, match=r"model\.num_downs=7.*num_downs <= 6"):
        config_lib.validate(config_lib.resolve(config))
    config.model.num_downs = 5  # shallower than the deepest is allowed
    config_lib.validate(config_lib.resolve(config))
    assert config.model.num_downs == 5
    too_small = load_experiment("pix2pix")
    too_small.data.image_size = 48  # 48 = 16 x 3: at most 4 halvings, the U-Net needs 5
    with pytest.raises(ValueError, match=r"data\.image_size=48"):
        config_lib.validate(config_lib.resolve(too_small))


def test_quick_preset_resolves_to_64px_depth():
    config = config_lib.resolve(load_experiment("pix2pix", "quick"))
    assert config.data.image_size == 64 and config.model.num_downs == 6


def test_saved_configs_of_earlier_versions_upgrade():
    saved = ml_collections.ConfigDict(load_experiment("pix2pix_lab").to_dict())
    del saved.data["num_val_images"]  # a key an older version did not write
    saved.model.num_downs = 5
    upgraded = config_lib.upgrade(saved)
    assert upgraded.model.num_downs == 5 and upgraded.data.num_val_images == 8


def test_load_file_gives_what_the_config_flag_gives():
    for spec in ("experiments/pix2pix.py", "experiments/lab_gan.py:quick"):
        path = os.path.join(REPO, spec)
        flag_values = flags.FlagValues()  # the trainer's --config flag, on its own
        config_flags.DEFINE_config_file("config", flag_values=flag_values)
        flag_values(["train", f"--config={path}"])
        assert config_lib.load_file(path).to_dict() == flag_values.config.to_dict(), spec
    assert config_lib.load_file(os.path.join(REPO, "experiments/lab_gan.py:quick")
                                ).data.image_size == 64


def test_config_and_experiment_files_import_no_jax_flax_optax_or_orbax():
    """Flax's and big_vision's convention: ``get_config()`` needs ml_collections alone."""
    files = sorted(glob.glob(os.path.join(REPO, "experiments", "*.py")))
    assert len(files) >= 3
    code = (
        "import sys\n"
        "from jaxcolor import config\n"
        f"for path in {files!r}:\n"
        "    config.load_file(path); config.load_file(path + ':quick')\n"
        "heavy = ('jax', 'flax', 'optax', 'orbax')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
