"""Runs written by the previous version (``tests/fixtures/wave1_pix2pix_lab``, made with commit
cdd38b3) still load, evaluate, colorize, export and resume training."""

from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import pytest
from conftest import REPO, synthetic_photo, write_photos

import jaxcolor
from jaxcolor import config as config_lib
from jaxcolor import runs
from jaxcolor.artifacts import export as export_lib
from jaxcolor.evaluation import scoring
from jaxcolor.inference import loading as inference
from jaxcolor.training.checkpoints import Checkpointer
from jaxcolor.training.state import abstract_state, build_gan

FIXTURE = os.path.join(REPO, "tests", "fixtures", "wave1_pix2pix_lab")


@pytest.fixture
def old_run(tmp_path) -> tuple[str, str]:
    """A writable copy of the fixture run and a folder of the photos it was trained on."""
    run = str(tmp_path / "run")
    shutil.copytree(FIXTURE, run)
    photos = str(tmp_path / "photos")
    write_photos(photos, 6)
    return run, photos


def test_old_run_loads_evaluates_colorizes_and_exports(old_run, tmp_path):
    run, photos = old_run
    model = jaxcolor.load(run, step="best")
    assert model.metadata["step"] == 2 and model.metadata["metrics"] is None
    assert model.metadata["task"] == "lab" and model.image_size == 32
    assert model.colour_strength == 1.0 and model.metadata["calibration"] is None
    image = synthetic_photo(9, 40, 50)
    out = model.colorize(image)
    assert out.shape == image.shape and out.dtype == np.uint8

    report = scoring.evaluate_run(run, "test", data_dir=photos, write=False)
    assert report["step"] == 2 and report["num_images"] >= 1
    assert set(report["metrics"]) == {"model", "gray_baseline"}  # no training baselines
    assert report["colour_strength"] == 1.0 and report["calibrated_colour_strength"] is None

    exported = str(tmp_path / "exported")
    meta = export_lib.export_run(run, exported, platforms=("cpu",))
    assert meta["step"] == 2 and meta["colour_strength"] == 1.0  # the recorded best
    np.testing.assert_array_equal(jaxcolor.load(exported).colorize(image), out)


@pytest.mark.slow
def test_old_run_resumes_training(old_run):
    from jaxcolor.training.loop import train

    run, photos = old_run
    before = inference.restore_generator(run)[2]
    config = config_lib.upgrade(runs.read_config(run))
    config.data.dir = photos
    config.train.num_steps = 3
    state = train(config, run)
    assert int(state.step) == 3
    # Resumed, not restarted: Adam has counted the old run's two updates plus this one.
    counts = [np.asarray(x) for x in jax.tree.leaves(state.g.opt_state)
              if np.asarray(x).dtype == np.int32 and np.asarray(x).ndim == 0]
    assert counts and all(int(c) == 3 for c in counts)
    # The generator continued from the old weights: one Adam step moves each weight by at
    # most about the learning rate (2e-4), far less than a fresh initialisation would.
    gan = build_gan(config)
    abstract = abstract_state(gan, 32)
    checkpointer = Checkpointer(runs.checkpoint_dir(run), every=100, keep=3)
    resumed = checkpointer.restore(abstract, None, step=3)
    checkpointer.close()
    for old, new in zip(jax.tree.leaves(before["params"]), jax.tree.leaves(resumed.g.params),
                        strict=True):
        assert np.abs(np.asarray(old) - np.asarray(new)).max() <= 2 * config.optim.g_lr
