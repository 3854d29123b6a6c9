"""load_run (latest, numbered and best steps, generator-only restore) and the Colorizer:
fixed-batch prediction, any-resolution recombination keeping L, gamut fitting, smoothing."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest
from conftest import tiny_run

from jaxcolor import colour, data, inference
from jaxcolor.checkpoints import Checkpointer
from jaxcolor.train_state import build_gan, init_state


@pytest.fixture(scope="module")
def lab(lab_run) -> inference.Colorizer:
    return inference.load_run(lab_run, batch_size=2)


def _photo(seed: int, height: int, width: int) -> np.ndarray:
    from conftest import synthetic_photo

    return synthetic_photo(seed, height, width).astype(np.float32) / 255.0


# ----------------------------------------------------------------------------- loading


def test_load_run_restores_the_trained_generator(lab_run, lab):
    assert lab.step == 3 and lab.task.name == "lab" and lab.image_size == 32
    assert lab.g.opt_state is None  # only the generator's parameters and statistics
    gan = build_gan(lab.config)
    abstract = jax.eval_shape(lambda k: init_state(gan, k, 32), jax.random.PRNGKey(0))
    checkpointer = Checkpointer(os.path.join(lab_run, "checkpoints"), every=100, keep=3)
    full = checkpointer.restore(abstract, None)  # the trainer's path, state item only
    checkpointer.close()
    for got, want in zip(jax.tree.leaves((lab.g.params, lab.g.batch_stats)),
                         jax.tree.leaves((full.g.params, full.g.batch_stats)), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_step_selection(lab_run, tmp_path):
    assert inference.load_run(lab_run, step=2).step == 2
    assert inference.load_run(lab_run, step="latest").step == 3
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at step 7 \(have \[2, 3\]\)"):
        inference.load_run(lab_run, step=7)
    # The trainer records its best checkpoint (validation AuC, evaluated at the last step).
    with open(os.path.join(lab_run, "checkpoints", inference.BEST_STEP_FILE)) as f:
        recorded = json.load(f)
    assert recorded["metric"] == "auc"
    assert inference.load_run(lab_run, step="best").step == recorded["step"] == 3
    run = shutil.copytree(lab_run, tmp_path / "run")
    os.remove(run / "checkpoints" / inference.BEST_STEP_FILE)
    with pytest.raises(FileNotFoundError, match="best_step.json"):
        inference.load_run(str(run), step="best")
    with open(run / "checkpoints" / inference.BEST_STEP_FILE, "w") as f:
        json.dump({"step": 2, "metric": "val/l1", "value": 0.1}, f)
    assert inference.load_run(str(run), step="best").step == 2
    with pytest.raises(FileNotFoundError, match="config.json"):
        inference.load_run(str(tmp_path))
    assert inference.parse_step("best") == "best" and inference.parse_step("12") == 12
    assert inference.parse_step("latest") is None
    with pytest.raises(ValueError, match="--step"):
        inference.parse_step("newest")


# ----------------------------------------------------------------------------- prediction


def test_predict_rgb_is_batch_independent_and_keeps_l(lab):
    images = np.stack([_photo(i, 32, 32) for i in range(5)])  # 5 = 2 + 2 + 1 padded
    together = lab.predict_rgb(images)
    alone = np.concatenate([lab.predict_rgb(images[i : i + 1]) for i in range(5)])
    assert together.shape == images.shape
    np.testing.assert_allclose(together, alone, atol=1e-5)
    l_in, l_out = (colour.rgb_to_lab(x)[..., 0] for x in (images, together))
    assert np.abs(l_in - l_out).max() < 0.5


@pytest.mark.parametrize("experiment", ["lab_gan", "pix2pix", "pix2pix_lab"])
def test_colorize_any_size_keeps_size_and_l(experiment, lab_run, tmp_path_factory):
    if experiment == "lab_gan":
        colorizer = inference.load_run(lab_run, batch_size=2)
    else:  # both pix2pix variants (gray_rgb and lab tasks), fresh weights
        colorizer = inference.load_run(tiny_run(tmp_path_factory, experiment, trained=False))
    image = _photo(7, 45, 70)  # neither square nor the model's 32x32
    out = colorizer.colorize(image)
    assert out.shape == image.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    l_in, l_out = colour.rgb_to_lab(image)[..., 0], colour.rgb_to_lab(out)[..., 0]
    assert np.abs(l_in - l_out).max() < 1.0
    # The same photo in gray gives the same result: only L reaches the network.
    gray = np.repeat(colour.lab_to_rgb(np.dstack([l_in, np.zeros_like(image[..., :2])]))[
        ..., :1], 3, axis=-1)
    np.testing.assert_allclose(colorizer.colorize(gray), out, atol=0.02)


def test_temporal_smoothing_blends_chroma(lab):
    frames = [_photo(i, 40, 48) for i in (3, 4, 5)]
    prepared = [lab.prepare(f) for f in frames]
    ab = lab.predict_ab(np.stack([p.small_rgb for p in prepared]))
    outputs = [out for _, out in lab.stream(enumerate(prepared), temporal_smoothing=0.25)]
    smoothed = ab[0]
    for i, p in enumerate(prepared):
        if i:
            smoothed = 0.75 * ab[i] + 0.25 * smoothed
        np.testing.assert_allclose(outputs[i], inference.recombine(p.lightness, smoothed),
                                   atol=1e-5)
    with pytest.raises(ValueError, match="temporal_smoothing"):
        list(lab.stream(enumerate(prepared), temporal_smoothing=1.5))


# ----------------------------------------------------------------------------- colour helpers


def test_lab_to_rgb_in_gamut_keeps_l_and_hue():
    rgb = np.random.default_rng(0).random((1, 64, 64, 3)).astype(np.float32)
    lab = colour.rgb_to_lab(rgb)
    # In gamut: the same as OpenCV's conversion.
    np.testing.assert_allclose(colour.lab_to_rgb_in_gamut(lab), colour.lab_to_rgb(lab),
                               atol=5e-3)
    wild = lab.copy()
    wild[..., 1:] *= 4.0  # far outside sRGB
    out = colour.lab_to_rgb_in_gamut(wild)
    back = colour.rgb_to_lab(out)
    assert np.abs(back[..., 0] - lab[..., 0]).max() < 0.5  # clipping would move L by ~20
    chroma = np.hypot(back[..., 1], back[..., 2])
    hue_gap = np.angle(np.exp(1j * (np.arctan2(back[..., 2], back[..., 1])
                                    - np.arctan2(wild[..., 2], wild[..., 1]))))
    assert np.abs(hue_gap[chroma > 5]).max() < 0.1  # radians: desaturated, same hue


def test_recombine_upsamples_chroma_to_the_full_size():
    lightness = np.full((30, 50), 60.0, np.float32)
    ab = np.zeros((8, 8, 2), np.float32)
    ab[..., 0], ab[..., 1] = 20.0, -10.0
    out = inference.recombine(lightness, ab)
    assert out.shape == (30, 50, 3)
    np.testing.assert_allclose(colour.rgb_to_lab(out), np.broadcast_to([60, 20, -10], (30, 50, 3)),
                               atol=0.3)


def test_decoded_16bit_alpha_input_colorizes(lab, tmp_path):
    import cv2

    rgba = np.random.default_rng(1).integers(0, 65535, (21, 34, 4), dtype=np.uint16)
    path = str(tmp_path / "deep.png")
    cv2.imwrite(path, rgba)
    image = data.load_rgb(path)
    out = lab.colorize(image)
    assert out.shape == (21, 34, 3)
    assert np.abs(colour.rgb_to_lab(out)[..., 0] - colour.rgb_to_lab(image)[..., 0]).max() < 1.0
