"""Colour strength (the chroma scale at inference), its calibration per checkpoint, per-image
verdicts against gray and the baselines fitted on the training photos."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
from conftest import synthetic_photo

import jaxcolor
from jaxcolor import colour, runs
from jaxcolor.artifacts import export as export_lib
from jaxcolor.evaluation import baselines, calibration, metrics, scoring
from jaxcolor.inference import inputs
from jaxcolor.inference.predictor import check_colour_strength


def test_bad_colour_strength_is_rejected_naming_the_value():
    for bad in (-0.1, 2.01, float("nan"), float("inf"), "0.5", True, None):
        with pytest.raises(ValueError, match=re.escape(f"colour_strength must be a finite "
                                                       f"number in [0, 2], got {bad!r}")):
            check_colour_strength(bad)
    assert check_colour_strength(np.float32(0.5)) == 0.5 and check_colour_strength(2) == 2.0


def _curve(psnr_gain, auc_gain) -> dict:
    """A strength curve whose gains over gray are the given functions of s."""
    s = np.asarray(calibration.STRENGTHS)
    return {"strengths": list(s), "n": 4, "gray": {"psnr": 20.0, "auc": 80.0, "cf": 0.0},
            "psnr": list(20.0 + psnr_gain(s)), "auc": list(80.0 + auc_gain(s))}


def test_fit_maximises_the_smaller_gain_within_zero_to_one():
    # PSNR's gain peaks at s = 0.6 and stays below AuC's: PSNR decides, and the other way round.
    assert calibration.fit(_curve(lambda s: 1 - 4 * (s - 0.6) ** 2, lambda s: 4 * s)) == 0.6
    assert calibration.fit(_curve(lambda s: 4 * s, lambda s: 1 - 4 * (s - 0.4) ** 2)) == 0.4
    # Where they cross: s = 0.3 (both gains 1; below it AuC's is smaller, above it PSNR's).
    curve = _curve(lambda s: 1 - 4 * (s - 0.3) ** 2, lambda s: 2 - 4 * (s - 0.8) ** 2)
    assert calibration.fit(curve) == 0.3
    # Ever better with more colour: the largest allowed strength, never one above 1.
    assert calibration.fit(_curve(lambda s: s, lambda s: s)) == 1.0
    # Any colour hurts one of the two: gray (s = 0), where both gains are 0.
    assert calibration.fit(_curve(lambda s: s, lambda s: -s)) == 0.0
    # Ties go to the larger strength (more colour).
    assert calibration.fit(_curve(lambda s: np.minimum(s, 0.2), lambda s: s)) == 1.0


def test_verdicts_are_paired_per_image_differences():
    from scipy import stats

    rng = np.random.default_rng(0)
    model = {k: rng.normal(size=9) for k in metrics.METRIC_KEYS}
    gray = {k: rng.normal(size=9) for k in metrics.METRIC_KEYS}
    got = metrics.verdicts(model, gray)
    assert set(got) == {"psnr", "ssim", "auc", "pixel_acc", "dcf"}  # cf has no better side
    for key, v in got.items():
        diff = model[key] - gray[key]
        half = stats.t.ppf(0.975, 8) * diff.std(ddof=1) / 3.0
        better = diff < 0 if key == "dcf" else diff > 0
        assert v["mean_diff"] == pytest.approx(diff.mean()) and v["ci95"] == pytest.approx(half)
        assert v["beats"] == better.sum() and v["share_beating_gray"] == better.sum() / 9


def test_baselines_fit_and_predict_on_a_tiny_case():
    # Image 1: L 25 with ab (10, 20); image 2: a half at L 25 with ab (30, 40), a half at L 75
    # (bin 7) with ab (-30, 0). Bins without pixels fall back to the overall mean.
    one = np.dstack([np.full((2, 4), 25.0), np.full((2, 4), 10.0), np.full((2, 4), 20.0)])
    two = np.concatenate([np.tile([25.0, 30.0, 40.0], (1, 4, 1)),
                          np.tile([75.0, -30.0, 0.0], (1, 4, 1))])
    fitted = baselines.fit([one, two])
    overall = (8 * np.array([10, 20]) + 4 * np.array([30, 40]) + 4 * np.array([-30, 0])) / 16
    np.testing.assert_allclose(fitted["mean_ab"], overall)
    table = np.asarray(fitted["ab_by_l"])
    np.testing.assert_allclose(table[2], (8 * np.array([10, 20]) + 4 * np.array([30, 40])) / 12)
    np.testing.assert_allclose(table[7], [-30, 0])
    np.testing.assert_allclose(np.delete(table, [2, 7], axis=0), np.tile(overall, (8, 1)))
    assert fitted["pixels_by_l"][2] == 12 and fitted["pixels_by_l"][7] == 4
    assert json.loads(json.dumps(fitted)) == fitted  # stored as plain JSON
    # Predictions keep each image's L and paint the fitted ab, rendered as a model's are.
    truth = np.stack([synthetic_photo(i, 16, 16) for i in range(2)]).astype(np.float32) / 255
    lightness = colour.rgb_to_lab(truth)[..., 0]
    predicted = baselines.predict(fitted, truth)
    for i, image in enumerate(truth):
        ab = table[np.clip((lightness[i] // 10).astype(int), 0, 9)].astype(np.float32)
        np.testing.assert_array_equal(predicted["mean_ab_by_l"][i], inputs.to_rgb(image, ab))
        flat = np.broadcast_to(np.float32(overall), (16, 16, 2))
        np.testing.assert_array_equal(predicted["mean_ab"][i], inputs.to_rgb(image, flat))


def test_strength_zero_is_gray_and_one_is_the_networks_chroma(lab_run):
    gray_run = scoring.evaluate_run(lab_run, "validation", colour_strength=0.0, write=False)
    model, gray = gray_run["metrics"]["model"], gray_run["metrics"]["gray_baseline"]
    for key in ("psnr", "auc", "cf"):
        assert model[key]["mean"] == pytest.approx(gray[key]["mean"], abs=0.01), key
    assert gray_run["verdicts"]["psnr"]["beats"] == 0  # equal is not better

    report = scoring.evaluate_run(lab_run, "validation", colour_strength=1.0, write=False)
    assert report["colour_strength"] == 1.0
    # Independently: the network's output, ab = clip(110 out), on each image's own L.
    loaded = jaxcolor.load(lab_run)
    truth = np.stack([scoring.truth_rgb(e) for _, e in scoring.ground_truth(
        report["files"], 32, True, None, [])])
    raw = loaded.predict_square(truth)[1]
    ab = np.clip(raw * colour.AB_SCALE, -127, 127)
    pred = np.stack([inputs.to_rgb(t, a) for t, a in zip(truth, ab, strict=True)])
    for key, values in metrics.image_metrics(pred, truth).items():
        assert report["metrics"]["model"][key]["mean"] == pytest.approx(values.mean(), abs=1e-6)

    # The verdicts are the per-image arrays' paired differences.
    per_image = report["per_image"]
    for key, v in report["verdicts"].items():
        diff = per_image["model"][key] - per_image["gray_baseline"][key]
        won = (diff < 0) if key == "dcf" else (diff > 0)
        assert v["mean_diff"] == pytest.approx(diff.mean()) and v["beats"] == won.sum()
    # The strength curve passes through gray at 0 and through the model row at 1.
    curve = report["strength_curve"]
    at = {s: i for i, s in enumerate(curve["strengths"])}
    for key in ("psnr", "auc", "cf"):
        assert curve[key][at[0.0]] == pytest.approx(gray[key]["mean"], abs=0.01)
        assert curve[key][at[1.0]] == pytest.approx(report["metrics"]["model"][key]["mean"])


def test_calibration_is_stored_per_step_and_is_every_surfaces_default(lab_run, tmp_path):
    stored = runs.read_calibration(lab_run, 3)  # fitted when training ended
    assert stored["split"] == "validation" and stored["n"] == 2
    assert 0.0 <= stored["colour_strength"] <= 1.0
    assert stored["colour_strength"] == calibration.fit(stored["curve"])
    assert jaxcolor.load(lab_run).colour_strength == stored["colour_strength"]

    run = str(shutil.copytree(lab_run, tmp_path / "run"))
    fitted = scoring.calibrate_run(run, step=2)  # evaluate --calibrate: another step
    assert fitted["step"] == 2 and runs.read_calibration(run, 2) == {
        k: v for k, v in fitted.items() if k != "step"}
    assert jaxcolor.load(run, step=2).colour_strength == fitted["colour_strength"]

    runs.write_calibration(run, 3, {**stored, "colour_strength": 0.35})
    model = jaxcolor.load(run)
    photo = synthetic_photo(3, 30, 44)
    np.testing.assert_array_equal(model.colorize(photo), model.colorize(photo,
                                                                       colour_strength=0.35))
    assert not np.array_equal(model.colorize(photo), model.colorize(photo, colour_strength=1))
    with pytest.raises(ValueError, match="colour_strength"):
        model.colorize(photo, colour_strength=-1)

    report = scoring.evaluate_run(run, "test")
    with open(report["outputs"][0]) as f:
        saved = json.load(f)
    assert saved["colour_strength"] == saved["calibrated_colour_strength"] == 0.35
    curve = saved["strength_curve"]
    at = curve["strengths"].index(0.35)
    assert saved["metrics"]["model"]["psnr"]["mean"] == pytest.approx(curve["psnr"][at])

    meta = export_lib.export_run(run, str(tmp_path / "export"), step=3, platforms=("cpu",))
    assert meta["colour_strength"] == 0.35 and meta["baselines"] == runs.read_baselines(run)
    assert jaxcolor.load(str(tmp_path / "export")).colour_strength == 0.35
    assert os.path.isfile(runs.calibration_path(run))
