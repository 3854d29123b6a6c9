"""The inference core (``jaxcolor.inference.predictor``) and run loading: generator-only restore,
step selection, batch independence, any-size recombination keeping L, buckets, pixel-strip
recombination, gamut fitting and temporal smoothing."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest
from conftest import synthetic_photo, tiny_run

from jaxcolor import colour, data, runs
from jaxcolor.inference import inputs
from jaxcolor.inference import loading as inference
from jaxcolor.inference import model as model_lib
from jaxcolor.training.checkpoints import Checkpointer
from jaxcolor.training.state import abstract_state, build_gan


@pytest.fixture(scope="module")
def lab(lab_run) -> model_lib.Model:
    return inference.load_run(lab_run, batch_size=2)


def _photo(seed: int, height: int, width: int) -> np.ndarray:
    return synthetic_photo(seed, height, width).astype(np.float32) / 255.0


def _lightness(rgb: np.ndarray) -> np.ndarray:
    return colour.rgb_to_lab(inputs.to_float(rgb))[..., 0]


# ----------------------------------------------------------------------------- loading


def test_load_run_restores_the_trained_generator(lab_run):
    config, step, variables = inference.restore_generator(lab_run)
    assert step == 3 and config.data.task == "lab" and set(variables) == {"params",
                                                                         "batch_stats"}
    gan = build_gan(config)
    abstract = abstract_state(gan, 32)
    checkpointer = Checkpointer(runs.checkpoint_dir(lab_run), every=100, keep=3)
    full = checkpointer.restore(abstract, None)  # the trainer's path, state item only
    checkpointer.close()
    for got, want in zip(jax.tree.leaves((variables["params"], variables["batch_stats"])),
                         jax.tree.leaves((full.g.params, full.g.batch_stats)), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_step_selection(lab_run, tmp_path):
    assert inference.load_run(lab_run, step=2).metadata["step"] == 2
    assert inference.load_run(lab_run, step="latest").metadata["step"] == 3
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at step 7 \(have \[2, 3\]\)"):
        inference.load_run(lab_run, step=7)
    # The trainer records its best checkpoint (validation AuC, evaluated at the last step).
    best = runs.read_best(runs.checkpoint_dir(lab_run))
    assert best["metric"] == "auc"
    assert inference.load_run(lab_run, step="best").metadata["step"] == best["step"] == 3
    run = shutil.copytree(lab_run, tmp_path / "run")
    os.remove(runs.best_step_path(runs.checkpoint_dir(str(run))))
    assert runs.default_step(str(run)) is None and runs.default_step(lab_run) == "best"
    with pytest.raises(FileNotFoundError, match="best_step.json"):
        inference.load_run(str(run), step="best")
    runs.write_best(runs.checkpoint_dir(str(run)), {"step": 2, "metric": "l1", "value": 0.1})
    assert inference.load_run(str(run), step="best").metadata["step"] == 2
    with pytest.raises(FileNotFoundError, match="neither a run folder"):
        inference.load(str(tmp_path))
    assert runs.parse_step("best") == "best" and runs.parse_step("12") == 12
    assert runs.parse_step("latest") is None
    with pytest.raises(ValueError, match="--step"):
        runs.parse_step("newest")


# ----------------------------------------------------------------------------- prediction


def test_predict_square_is_batch_independent_and_keeps_l(lab):
    images = np.stack([_photo(i, 32, 32) for i in range(5)])  # 5 = 2 + 2 + 1 padded
    together, raw = lab.predict_square(images)
    alone = np.concatenate([lab.predict_square(images[i : i + 1])[0] for i in range(5)])
    assert together.shape == images.shape and raw.shape == (5, 32, 32, 2)
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert np.abs(_lightness(images) - _lightness(together)).max() < 0.5


@pytest.mark.parametrize("experiment", ["lab_gan", "pix2pix", "pix2pix_lab"])
def test_colorize_any_size_keeps_size_and_l(experiment, lab_run, tmp_path_factory):
    if experiment == "lab_gan":
        model = inference.load_run(lab_run, batch_size=2)
    else:  # both pix2pix variants (gray_rgb and lab tasks), fresh weights
        model = inference.load_run(tiny_run(tmp_path_factory, experiment, trained=False))
    image = _photo(7, 45, 70)  # neither square nor the model's 32x32
    out = model.colorize(image)
    assert out.shape == image.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    l_in = _lightness(image)
    assert np.abs(l_in - _lightness(out)).max() < 1.0
    # The same photo in gray gives the same result: only L reaches the network.
    gray = colour.lab_to_rgb(np.dstack([l_in, np.zeros_like(image[..., :2])]))[..., 0]
    np.testing.assert_allclose(model.colorize(gray), out, atol=0.02)


def test_bucket_shapes_are_bounded():
    sizes = {inputs.bucket_shape(h, w, 256, 32)[1] for h in range(40, 2000, 37)
             for w in range(40, 2000, 41)}
    lengths = inputs.bucket_lengths(256, 32)
    assert len(sizes) <= 2 * len(lengths) - 1 == 15
    assert all(h % 32 == 0 and w % 32 == 0 and min(h, w) == 256 for h, w in sizes)
    # Aspect kept (short side = size) where a bucket holds it; long panoramas are squeezed.
    content, padded = inputs.bucket_shape(3000, 4000, 256, 32)  # 4:3 -> the 1.5 bucket
    assert content == (256, 341) and padded == (256, 384)
    content, padded = inputs.bucket_shape(100, 1000, 256, 32)
    assert content == padded == (256, 1024)
    content, padded = inputs.bucket_shape(50, 40, 30, 4)  # portrait, size not a multiple
    assert content == (38, 30) and padded == (40, 32)


def test_render_size_and_program_bound(lab):
    image = _photo(2, 60, 90)
    calls = lab.device_calls
    big = lab.colorize(image, render_size=64)
    assert big.shape == image.shape and lab.device_calls == calls + 1
    assert np.abs(_lightness(image) - _lightness(big)).max() < 1.0
    assert lab.max_programs == (2 * len(inputs.bucket_lengths(32, 4)) - 1) * 2
    with pytest.raises(ValueError, match="render_size"):
        lab.colorize(image, render_size=3)


def test_strips_give_the_same_rgb_as_one_piece():
    rng = np.random.default_rng(0)
    image = (rng.random((37, 29, 3)) * 255).astype(np.uint8)
    ab = rng.normal(0, 40, (8, 6, 2)).astype(np.float32)
    whole = inputs.to_rgb(image, ab, dtype=np.uint8, strip_pixels=10**9)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        strips = inputs.to_rgb(image, ab, dtype=np.uint8, strip_pixels=29 * 5, pool=pool)
    np.testing.assert_array_equal(whole, strips)
    # Chroma upsampled like cv2.resize's bilinear; L is the input's own.
    flat = np.broadcast_to(np.float32([20.0, -10.0]), (8, 6, 2))
    gray = np.full((30, 50, 3), 0.5, np.float32)
    out = inputs.to_rgb(gray, flat)
    want_l = colour.rgb_to_lab(gray)[..., 0]
    np.testing.assert_allclose(colour.rgb_to_lab(out),
                               np.dstack([want_l, np.broadcast_to([20, -10], (30, 50, 2))]),
                               atol=0.3)


def test_temporal_smoothing_blends_chroma(lab):
    frames = [_photo(i, 40, 48) for i in (3, 4, 5)]
    nets = [inputs.network_input(f, 32, 4) for f in frames]
    ab = [lab._predictor.chroma(*lab._predictor.dispatch(lab._variables, n.rgb[None]))[0]
          for n in nets]
    h, w = nets[0].content
    # At colour strength 0.5: the chroma is halved, before or after smoothing alike.
    outputs = [o for _, o in lab.stream(enumerate(frames), temporal_smoothing=0.25,
                                        colour_strength=0.5)]
    smoothed = ab[0][:h, :w]
    for i, frame in enumerate(frames):
        if i:
            smoothed = 0.75 * ab[i][:h, :w] + 0.25 * smoothed
        np.testing.assert_allclose(outputs[i], inputs.to_rgb(frame, 0.5 * smoothed), atol=1e-5)
    with pytest.raises(ValueError, match="temporal_smoothing"):
        list(lab.stream(enumerate(frames), temporal_smoothing=1.5))


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


def test_decoded_16bit_alpha_input_colorizes(lab, tmp_path):
    import cv2

    rgba = np.random.default_rng(1).integers(0, 65535, (21, 34, 4), dtype=np.uint16)
    path = str(tmp_path / "deep.png")
    cv2.imwrite(path, rgba)
    out = lab.colorize(path)
    assert out.shape == (21, 34, 3) and out.dtype == np.uint16
    assert np.abs(_lightness(out) - _lightness(data.load_image(path))).max() < 1.0


def test_validation_record_is_in_the_metadata(lab_run, lab):
    with open(os.path.join(lab_run, runs.VALIDATION_FILE)) as f:
        records = [json.loads(line) for line in f]
    assert records and records[-1]["step"] == 3
    meta = lab.metadata
    assert meta["metrics"] == {"model": records[-1]["model"],
                               "gray_baseline": records[-1]["gray_baseline"]}
    assert set(meta["metrics"]["model"]) >= {"auc", "psnr", "ssim"}
    json.dumps(meta)  # JSON-serialisable
