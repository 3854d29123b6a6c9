"""Tests for jaxcolor.evaluation.metrics: known values derived by hand, not by calling the same
code."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from skimage import data

from jaxcolor import colour
from jaxcolor.evaluation import metrics


def _random_rgb(rng: np.random.Generator, shape=(2, 16, 16, 3)) -> np.ndarray:
    """Random RGB on exact 8-bit levels, so quantisation inside the metrics is the identity."""
    return rng.integers(0, 256, size=shape).astype(np.float64) / 255.0


def _random_lab(rng: np.random.Generator, shape=(2, 8, 8)) -> np.ndarray:
    """Random Lab with integer values, so differences are exact in float64."""
    lab = np.stack(
        [
            rng.integers(0, 101, size=shape),
            rng.integers(-100, 101, size=shape),
            rng.integers(-100, 101, size=shape),
        ],
        axis=-1,
    )
    return lab.astype(np.float64)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    """A small, colourful real photo as a batch of one, RGB in [0, 1]."""
    return (data.astronaut()[::8, ::8] / 255.0)[None].astype(np.float32)


def test_identical_images_score_perfectly():
    rng = np.random.default_rng(0)
    rgb = _random_rgb(rng)
    lab = colour.rgb_to_lab(rgb.astype(np.float32))
    np.testing.assert_array_equal(metrics.psnr(rgb, rgb), [np.inf, np.inf])
    np.testing.assert_allclose(metrics.ssim(rgb, rgb), [1.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(metrics.ab_error_auc(lab, lab), [100.0, 100.0], atol=1e-12)
    np.testing.assert_allclose(metrics.pixel_accuracy(lab, lab), [100.0, 100.0], atol=1e-12)


def test_image_metrics_identical_and_shapes():
    rng = np.random.default_rng(1)
    rgb = _random_rgb(rng, (3, 16, 16, 3))
    out = metrics.image_metrics(rgb, rgb)
    assert set(out) == {"psnr", "ssim", "auc", "pixel_acc", "cf", "cf_true", "dcf"}
    for v in out.values():
        assert v.shape == (3,)
    assert np.all(np.isinf(out["psnr"]))
    np.testing.assert_allclose(out["ssim"], 1.0, atol=1e-12)
    np.testing.assert_allclose(out["auc"], 100.0, atol=1e-12)
    np.testing.assert_allclose(out["pixel_acc"], 100.0, atol=1e-12)
    np.testing.assert_allclose(out["dcf"], 0.0, atol=1e-9)
    assert np.all(out["cf"] > 10.0)  # random colours are colourful


def test_psnr_known_uniform_error():
    rng = np.random.default_rng(2)
    levels = rng.integers(10, 246, size=(2, 8, 8, 3)).astype(np.float64)
    # Image 0: every value 10 levels too high; image 1: off by 10 with random signs. Both have
    # MSE 100 on the 8-bit scale, so PSNR = 10 log10(255^2 / 100) = 20 log10(25.5).
    signs = np.where(rng.random((8, 8, 3)) < 0.5, -1.0, 1.0)
    pred = np.stack([levels[0] + 10, levels[1] + 10 * signs]) / 255.0
    expected = 20 * math.log10(255 / 10)
    np.testing.assert_allclose(metrics.psnr(pred, levels / 255.0), [expected] * 2, rtol=1e-12)


def test_psnr_quantises_to_8_bit():
    true = np.full((1, 4, 4, 3), 100 / 255.0)
    # Off by 0.3 levels: rounds back to the same level, as a saved PNG would.
    assert np.isinf(metrics.psnr(true + 0.3 / 255.0, true))[0]
    # Off by 0.6 levels: rounds to one level of error, MSE 1.
    np.testing.assert_allclose(metrics.psnr(true + 0.6 / 255.0, true), [20 * math.log10(255)])


def test_ssim_is_per_image_and_drops_with_noise():
    rng = np.random.default_rng(3)
    true = _random_rgb(rng, (2, 24, 24, 3))
    pred = true.copy()
    pred[1] = np.clip(pred[1] + rng.normal(0, 0.2, size=pred[1].shape), 0, 1)
    s = metrics.ssim(pred, true)
    assert s.shape == (2,)
    assert s[0] == pytest.approx(1.0, abs=1e-12)
    assert 0.0 < s[1] < 0.9


def _ssim_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. (2004) SSIM written out: Gaussian window sigma 1.5 truncated at radius 5
    (11x11), population moments, K1 = 0.01, K2 = 0.03, L = 255, borders of 5 pixels dropped,
    averaged over channels. Inputs are 0..255 levels of shape (H, W, 3)."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    out = []
    for ch in range(3):
        a, b = x[..., ch], y[..., ch]
        w = lambda z: ndimage.gaussian_filter(z, sigma=1.5, truncate=3.5)
        mu_a, mu_b = w(a), w(b)
        var_a = w(a * a) - mu_a**2
        var_b = w(b * b) - mu_b**2
        cov = w(a * b) - mu_a * mu_b
        s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
            (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
        )
        out.append(s[5:-5, 5:-5].mean())
    return float(np.mean(out))


def test_ssim_matches_written_out_formula():
    rng = np.random.default_rng(6)
    true = ndimage.uniform_filter(_random_rgb(rng, (1, 32, 32, 3))[0], size=(3, 3, 1))[None]
    pred = np.clip(true + rng.normal(0, 0.05, size=true.shape), 0, 1)
    expected = _ssim_reference(np.round(pred[0] * 255), np.round(true[0] * 255))
    assert 0.2 < expected < 0.95
    np.testing.assert_allclose(metrics.ssim(pred, true), [expected], rtol=1e-9)


def test_ssim_constant_images_closed_form():
    # Constant images a and b have zero (co)variances, so SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b, c1 = 100.0, 120.0, (0.01 * 255) ** 2
    pred = np.full((1, 16, 16, 3), a / 255)
    true = np.full((1, 16, 16, 3), b / 255)
    expected = (2 * a * b + c1) / (a**2 + b**2 + c1)
    np.testing.assert_allclose(metrics.ssim(pred, true), [expected], rtol=1e-9)


@pytest.mark.parametrize("e_a,e_b,e", [(6.0, 8.0, 10), (0.0, -1.0, 1), (30.0, 40.0, 50)])
def test_auc_constant_ab_error_closed_form(e_a, e_b, e):
    # Constant error e at every pixel: acc(t) = 0 for t < e and 1 for t >= e. The trapezoid on
    # the grid 0, 1, ..., 150 gets 0.5 from the segment [e-1, e] and 1 from each of the 150 - e
    # segments [e, e+1], ..., [149, 150]; dividing by 150 and scaling to percent:
    expected = (150 - e + 0.5) / 150 * 100
    rng = np.random.default_rng(4)
    true = _random_lab(rng)
    pred = true.copy()
    pred[..., 1] += e_a
    pred[..., 2] += e_b
    # L errors must not matter to the ab metric.
    pred[..., 0] += 7.0
    np.testing.assert_allclose(metrics.ab_error_auc(pred, true), [expected] * 2, rtol=1e-12)
    curve = metrics.ab_accuracy_curve(pred, true, [e - 1, e, e + 0.5])
    np.testing.assert_array_equal(curve, [[0.0, 1.0, 1.0]] * 2)


def test_auc_mixed_errors_is_pixel_average():
    # Half the pixels exact, half off by 10: the curve is 0.5 then 1, so AuC averages 100 and
    # (150 - 10 + 0.5) / 150 * 100, and the two images of the batch are scored separately.
    true = np.zeros((2, 2, 2, 3))
    pred = true.copy()
    pred[0, 0, :, 1] = 10.0
    pred[1, :, :, 2] = 10.0
    expected0 = 0.5 * 100 + 0.5 * (150 - 10 + 0.5) / 150 * 100
    expected1 = (150 - 10 + 0.5) / 150 * 100
    np.testing.assert_allclose(metrics.ab_error_auc(pred, true), [expected0, expected1])


def test_accuracy_curve_monotone_and_matches_brute_force():
    rng = np.random.default_rng(5)
    true = rng.uniform(-100, 100, size=(3, 10, 10, 3))
    pred = rng.uniform(-100, 100, size=(3, 10, 10, 3))
    thresholds = np.arange(0, 151)
    curve = metrics.ab_accuracy_curve(pred, true, thresholds)
    assert curve.shape == (3, 151)
    assert np.all(np.diff(curve, axis=-1) >= 0)
    assert np.all((curve >= 0) & (curve <= 1))
    err = np.hypot(pred[..., 1] - true[..., 1], pred[..., 2] - true[..., 2]).reshape(3, -1)
    brute = (err[:, :, None] <= thresholds[None, None, :]).mean(axis=1)
    np.testing.assert_array_equal(curve, brute)
    assert 0 < curve[0, 50] < 1  # the sample actually exercises the middle of the curve


def test_pixel_accuracy_thresholds():
    # Limits: |dL| <= 2 and |da|, |db| <= 0.02 * 254 = 5.08.
    true = np.zeros((1, 1, 6, 3))
    true[..., 0] = 50.0
    delta = np.array(
        [
            [0.0, 0.0, 0.0],  # exact: correct
            [2.0, 0.0, 0.0],  # L on the limit: correct
            [-1.0, 5.0, -5.0],  # within all limits: correct
            [2.5, 0.0, 0.0],  # L too far
            [0.0, 5.2, 0.0],  # a too far
            [0.0, 0.0, -6.0],  # b too far
        ]
    )
    pred = true + delta[None, None]
    np.testing.assert_allclose(metrics.pixel_accuracy(pred, true), [50.0])
    # A looser tolerance accepts all of them.
    np.testing.assert_allclose(metrics.pixel_accuracy(pred, true, tolerance=0.05), [100.0])


def test_colourfulness_hand_computed():
    # 2x2 image, 0..255: red, green, blue, yellow.
    #   rg = R - G:         255, -255,    0,   0  -> mean 0,     var (2 * 255^2) / 4
    #   yb = (R+G)/2 - B: 127.5, 127.5, -255, 255 -> mean 63.75
    #   yb deviations: 63.75, 63.75, -318.75, 191.25
    var_rg = 2 * 255**2 / 4
    var_yb = (2 * 63.75**2 + 318.75**2 + 191.25**2) / 4
    expected = math.sqrt(var_rg + var_yb) + 0.3 * 63.75
    img = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 0]]]) / 255.0
    gray = np.full((2, 2, 3), 0.4)
    cf = metrics.colourfulness(np.stack([img, gray]))
    np.testing.assert_allclose(cf, [expected, 0.0], atol=1e-9)


def test_mean_ci_known_sample():
    mean, half = metrics.mean_ci([1, 2, 3, 4, 5])
    assert mean == pytest.approx(3.0)
    # t_{0.975, 4} = 2.7764451; std(ddof=1) = sqrt(2.5).
    assert half == pytest.approx(2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5), rel=1e-9)
    assert half == pytest.approx(1.963243, abs=1e-6)
    # Narrower interval at lower confidence.
    assert metrics.mean_ci([1, 2, 3, 4, 5], confidence=0.9)[1] < half
    m1, h1 = metrics.mean_ci([7.0])
    assert m1 == 7.0 and math.isnan(h1)


def test_summarize_keeps_infinities():
    out = metrics.summarize({"psnr": np.array([30.0, np.inf]), "auc": np.array([1, 2, 3, 4, 5])})
    assert out["psnr"]["mean"] == np.inf and out["psnr"]["n"] == 2
    assert out["auc"] == pytest.approx({"mean": 3.0, "ci95": 1.963243, "n": 5}, abs=1e-6)


def test_gray_baseline_zero_chroma_keeps_lightness(astronaut):
    gray = metrics.gray_baseline(astronaut)
    assert gray.shape == astronaut.shape
    lab_true = colour.rgb_to_lab(astronaut)
    lab_gray = colour.rgb_to_lab(gray)
    assert np.max(np.abs(lab_gray[..., 1:])) < 1.0
    assert np.max(np.abs(lab_gray[..., 0] - lab_true[..., 0])) < 1.0
    assert metrics.colourfulness(gray)[0] < 0.5
    assert metrics.colourfulness(astronaut)[0] > 20.0


def test_gray_baseline_scores_below_perfect(astronaut):
    gray = metrics.gray_baseline(astronaut)
    out = metrics.image_metrics(gray, astronaut)
    assert 50.0 < out["auc"][0] < 100.0
    assert out["pixel_acc"][0] < 100.0
    assert out["dcf"][0] > 20.0
    assert np.isfinite(out["psnr"][0]) and out["ssim"][0] < 1.0


def test_rejects_bad_shapes():
    with pytest.raises(ValueError):
        metrics.psnr(np.zeros((4, 4, 3)), np.zeros((4, 4, 3)))
    with pytest.raises(ValueError):
        metrics.ab_error_auc(np.zeros((1, 4, 4, 3)), np.zeros((1, 4, 5, 3)))
