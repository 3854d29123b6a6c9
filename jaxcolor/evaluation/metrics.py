"""Per-image evaluation metrics for colorization, host-side NumPy.

Every metric takes a batch and returns one value per image, shape (N,), so callers can pool
values over a whole evaluation set and report a mean with a confidence interval (``summarize``).
Inputs are RGB float arrays in [0, 1] of shape (N, H, W, 3), or Lab arrays from
``colour.rgb_to_lab`` (L in [0, 100], a and b roughly in [-127, 127]).

Metrics:
  * ``psnr`` and ``ssim`` on the 8-bit RGB images, prediction vs ground truth;
  * ``ab_error_auc`` (Zhang et al. 2016): area under the curve of the fraction of pixels whose
    ab error is within a threshold, thresholds 0..150;
  * ``pixel_accuracy`` (Nazeri et al. 2018): pixels whose L, a and b all lie within 2% of their
    ranges;
  * ``colourfulness`` (Hasler and Suesstrunk 2003) of the prediction and of the ground truth, and
    their absolute difference.

``gray_baseline`` gives the trivial ab = 0 prediction; always report it beside a model, since it
already scores high on several of these metrics (AuC around 90% on ImageNet).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from jaxcolor import colour

# Zhang et al. sweep the ab-error threshold over 0..150 Lab units.
AUC_MAX_THRESHOLD = 150.0
# Nazeri et al.: a pixel is correct when each channel is within 2% of that channel's range.
PIXEL_TOLERANCE = 0.02
L_RANGE = 100.0  # L in [0, 100]
AB_RANGE = 254.0  # a, b taken as [-127, 127] (OpenCV float Lab); our choice


def _check_batch(*arrays: np.ndarray) -> None:
    """Raises unless all arrays are (N, H, W, 3) and of the same shape."""
    shape = arrays[0].shape
    for a in arrays:
        if a.ndim != 4 or a.shape[-1] != 3:
            raise ValueError(f"expected shape (N, H, W, 3), got {a.shape}")
        if a.shape != shape:
            raise ValueError(f"shape mismatch: {a.shape} vs {shape}")


def _to_uint8_levels(rgb: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] -> float64 integer levels 0..255, as a saved 8-bit PNG would hold."""
    return np.round(np.clip(np.asarray(rgb, np.float64), 0.0, 1.0) * 255.0)


def psnr(pred_rgb: np.ndarray, true_rgb: np.ndarray) -> np.ndarray:
    """Peak signal-to-noise ratio in dB per image, on the 8-bit range (peak 255).

    Both images are quantised to 0..255 integer levels first, so the value matches one computed
    from saved PNGs. Identical (after quantisation) images give ``np.inf``; it is not capped,
    so a mean over a set containing one is ``inf`` too, which is the honest answer.
    """
    pred = _to_uint8_levels(pred_rgb)
    true = _to_uint8_levels(true_rgb)
    _check_batch(pred, true)
    mse = np.mean((pred - true) ** 2, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0**2 / mse)


def ssim(pred_rgb: np.ndarray, true_rgb: np.ndarray) -> np.ndarray:
    """Structural similarity per image on 8-bit RGB, averaged over channels.

    Settings of Wang et al. (2004): 11x11 Gaussian window with sigma 1.5 and population
    (not sample) covariances. Images must be at least 11 pixels in height and width.
    Identical images give 1.
    """
    # Imported here, as is SciPy in ``mean_ci``: together they take ~1.3 s to import, which
    # every command that imports this module (train, colorize, serve, --help) would pay.
    from skimage.metrics import structural_similarity

    pred = _to_uint8_levels(pred_rgb)
    true = _to_uint8_levels(true_rgb)
    _check_batch(pred, true)
    # skimage takes one image at a time; the batch loop is cheap next to the filtering itself.
    return np.array(
        [
            structural_similarity(
                p,
                t,
                channel_axis=-1,
                data_range=255.0,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
            )
            for p, t in zip(pred, true, strict=True)
        ],
        dtype=np.float64,
    )


def _ab_error(pred_lab: np.ndarray, true_lab: np.ndarray) -> np.ndarray:
    """Euclidean ab error per pixel, shape (N, H*W), float64."""
    _check_batch(np.asarray(pred_lab), np.asarray(true_lab))
    diff = np.asarray(pred_lab[..., 1:], np.float64) - np.asarray(true_lab[..., 1:], np.float64)
    return np.sqrt(np.sum(diff**2, axis=-1)).reshape(diff.shape[0], -1)


def ab_accuracy_curve(
    pred_lab: np.ndarray, true_lab: np.ndarray, thresholds: np.ndarray
) -> np.ndarray:
    """Fraction of pixels with ab error <= t, for each threshold t; shape (N, T), in [0, 1]."""
    thresholds = np.asarray(thresholds, np.float64)
    if np.any(np.diff(thresholds) < 0):
        raise ValueError("thresholds must be in ascending order")
    err = _ab_error(pred_lab, true_lab)
    # Each error's first threshold t_k >= err (side="left": an error equal to t is within it,
    # the <= of the definition) counts it for every t_j, j >= k: a histogram over the thresholds
    # and its running sum, O(P log T) per image, no sort and no (N, P, T) boolean temporary.
    size = len(thresholds)
    if np.array_equal(thresholds, np.arange(size)):  # t = 0, 1, 2, ...: the index is ceil(err)
        first = np.minimum(np.ceil(err), size).astype(np.int64)
    else:
        first = np.searchsorted(thresholds, err, side="left")
    counts = np.stack([np.cumsum(np.bincount(f, minlength=size + 1))[:size] for f in first])
    return counts / err.shape[-1]


def ab_error_auc(
    pred_lab: np.ndarray,
    true_lab: np.ndarray,
    max_threshold: float = AUC_MAX_THRESHOLD,
    step: float = 1.0,
) -> np.ndarray:
    """Area under the ab accuracy curve, thresholds 0, step, ..., max_threshold; percent (N,).

    The trapezoidal area is divided by ``max_threshold`` so a perfect prediction scores 100.
    With a constant error e (integer, 1 <= e <= max_threshold, step 1) the curve jumps from 0
    to 1 at t = e and the AuC is (max_threshold - e + 0.5) / max_threshold * 100.
    """
    if max_threshold <= 0 or step <= 0:
        raise ValueError("max_threshold and step must be positive")
    # Integer-count grid avoids arange's float drift dropping or adding the last threshold.
    thresholds = np.linspace(0.0, max_threshold, int(round(max_threshold / step)) + 1)
    acc = ab_accuracy_curve(pred_lab, true_lab, thresholds)
    # Hand-written trapezoid: np.trapezoid is NumPy >= 2 only and we support 1.26.
    area = np.sum((acc[:, 1:] + acc[:, :-1]) * 0.5 * np.diff(thresholds), axis=-1)
    return 100.0 * area / max_threshold


def pixel_accuracy(
    pred_lab: np.ndarray, true_lab: np.ndarray, tolerance: float = PIXEL_TOLERANCE
) -> np.ndarray:
    """Percent of pixels with |dL| <= tol * 100 and |da|, |db| <= tol * 254 (N,).

    The a and b range is taken as [-127, 127] (width 254), the nominal range of OpenCV's float
    Lab; with the default tolerance a pixel must be within 2 L units and 5.08 ab units.
    """
    pred = np.asarray(pred_lab, np.float64)
    true = np.asarray(true_lab, np.float64)
    _check_batch(pred, true)
    limits = tolerance * np.array([L_RANGE, AB_RANGE, AB_RANGE])
    ok = np.all(np.abs(pred - true) <= limits, axis=-1)
    return 100.0 * np.mean(ok, axis=(1, 2))


def colourfulness(rgb: np.ndarray) -> np.ndarray:
    """Hasler and Suesstrunk (2003) colourfulness per image, on 0..255 RGB (N,).

    rg = R - G, yb = (R + G) / 2 - B,
    CF = sqrt(std(rg)^2 + std(yb)^2) + 0.3 * sqrt(mean(rg)^2 + mean(yb)^2),
    with population standard deviations over the image's pixels. Neutral gray gives 0.
    """
    x = np.asarray(rgb, np.float64)
    _check_batch(x)
    x = x * 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    rg = (r - g).reshape(x.shape[0], -1)
    yb = (0.5 * (r + g) - b).reshape(x.shape[0], -1)
    spread = np.sqrt(rg.var(axis=-1) + yb.var(axis=-1))
    centre = np.sqrt(rg.mean(axis=-1) ** 2 + yb.mean(axis=-1) ** 2)
    return spread + 0.3 * centre


def mean_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Sample mean and Student-t confidence-interval half width of a 1-D sample.

    The half width is t_{(1+confidence)/2, n-1} * std(ddof=1) / sqrt(n); it is nan for n < 2
    (no spread estimate) and when a value is infinite. An empty sample gives (nan, nan).
    """
    x = np.asarray(values, np.float64).ravel()
    n = x.size
    if n == 0:
        return float("nan"), float("nan")
    # inf values (PSNR of identical images) propagate: mean inf, half width nan, no warnings.
    with np.errstate(invalid="ignore"):
        mean = float(np.mean(x))
        if n < 2:
            return mean, float("nan")
        sem = np.std(x, ddof=1) / np.sqrt(n)
    from scipy import stats  # see ssim

    return mean, float(stats.t.ppf(0.5 * (1.0 + confidence), n - 1) * sem)


METRIC_KEYS = ("psnr", "ssim", "auc", "pixel_acc", "cf", "cf_true", "dcf")
# Metrics on which a prediction can beat another, and which way is better (cf has no better).
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "auc": True, "pixel_acc": True, "dcf": False}


def image_metrics(pred_rgb: np.ndarray, true_rgb: np.ndarray,
                  keys: Sequence[str] = METRIC_KEYS) -> dict[str, np.ndarray]:
    """Per-image metrics of a batch, each of shape (N,); only ``keys`` are computed.

    Keys: psnr (dB), ssim, auc (%), pixel_acc (%), cf (colourfulness of the prediction),
    cf_true (of the ground truth), dcf = |cf - cf_true|.
    """
    pred = np.clip(np.asarray(pred_rgb, np.float32), 0.0, 1.0)
    true = np.clip(np.asarray(true_rgb, np.float32), 0.0, 1.0)
    _check_batch(pred, true)
    if unknown := set(keys) - set(METRIC_KEYS):
        raise ValueError(f"unknown metrics {sorted(unknown)}; known: {METRIC_KEYS}")
    out = {}
    if "psnr" in keys:
        out["psnr"] = psnr(pred, true)
    if "ssim" in keys:
        out["ssim"] = ssim(pred, true)
    if {"auc", "pixel_acc"} & set(keys):
        pred_lab, true_lab = colour.rgb_to_lab(pred), colour.rgb_to_lab(true)
        if "auc" in keys:
            out["auc"] = ab_error_auc(pred_lab, true_lab)
        if "pixel_acc" in keys:
            out["pixel_acc"] = pixel_accuracy(pred_lab, true_lab)
    if {"cf", "dcf"} & set(keys):
        out["cf"] = colourfulness(pred)
    if {"cf_true", "dcf"} & set(keys):
        out["cf_true"] = colourfulness(true)
    if "dcf" in keys:
        out["dcf"] = np.abs(out["cf"] - out["cf_true"])
    return {key: out[key] for key in METRIC_KEYS if key in keys}


def beats(values: np.ndarray, baseline: np.ndarray, metric: str) -> np.ndarray:
    """Per image, whether ``values`` are strictly better than ``baseline``'s on ``metric``."""
    values, baseline = np.asarray(values, np.float64), np.asarray(baseline, np.float64)
    return values > baseline if HIGHER_IS_BETTER[metric] else values < baseline


def verdicts(per_image: Mapping[str, np.ndarray], baseline: Mapping[str, np.ndarray]
             ) -> dict[str, dict[str, float]]:
    """Paired per-image comparison with a baseline on the same images, per metric with a
    better direction (``HIGHER_IS_BETTER``): ``mean_diff`` (mean of value - baseline) and
    ``ci95`` (its Student-t half width, see ``mean_ci``), ``n``, ``beats`` (images on which
    the prediction is strictly better) and ``share_beating_gray`` (beats / n)."""
    out = {}
    for metric in HIGHER_IS_BETTER:
        if metric not in per_image:
            continue
        values = np.asarray(per_image[metric], np.float64)
        base = np.asarray(baseline[metric], np.float64)
        with np.errstate(invalid="ignore"):  # inf - inf (two perfect images) is nan
            mean, half = mean_ci(values - base)
        won = int(np.count_nonzero(beats(values, base, metric)))
        out[metric] = {"mean_diff": mean, "ci95": half, "n": int(values.size), "beats": won,
                       "share_beating_gray": won / values.size if values.size else float("nan")}
    return out


def summarize(per_image: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """{metric: per-image values} -> {metric: {"mean", "ci95", "n"}}.

    ``ci95`` is the half width of the 95% Student-t interval (see ``mean_ci``). No values are
    dropped: an inf PSNR makes the PSNR mean inf (and its half width nan).
    """
    out = {}
    for name, values in per_image.items():
        values = np.asarray(values, np.float64).ravel()
        mean, half = mean_ci(values, 0.95)
        out[name] = {"mean": mean, "ci95": half, "n": int(values.size)}
    return out


def gray_baseline(true_rgb: np.ndarray) -> np.ndarray:
    """The trivial prediction: the truth's L with a = b = 0, as RGB in [0, 1]."""
    return colour.rgb_to_gray(np.asarray(true_rgb, np.float32))
