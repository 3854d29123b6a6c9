"""Colour strength: PSNR, AuC and colourfulness over a range of chroma scales, and the rule that
fits a run's default strength.

A prediction's colour strength s multiplies its predicted ab (L kept; ``inference.predictor.
scale_chroma``): s = 0 is the gray prediction, s = 1 the network's own chroma. AuC is a clipped
mean Euclidean ab error and PSNR a mean squared error, so on photos where a model's hues are
often wrong a smaller s scores better on both, at the cost of colourfulness.

The curve is measured on the host from one prediction: the unscaled ab of each image is
rescaled for every s in ``STRENGTHS`` and rendered as ``render_square`` renders it, so it costs
no device call.

The rule (``fit``): the strength s in ``CALIBRATION_STRENGTHS`` = {0, 0.05, ..., 1} that
maximises min(PSNR(s) - PSNR(gray) in dB, AuC(s) - AuC(gray) in %), each a mean over the
images; ties go to the larger s (more colour). At s = 0 both gains are exactly 0, so the fitted
strength never scores below gray on either mean, and it is above gray on both wherever the model
allows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxcolor.evaluation import metrics
from jaxcolor.inference.predictor import render_square

CALIBRATION_STRENGTHS = tuple(round(0.05 * i, 2) for i in range(21))
STRENGTHS = CALIBRATION_STRENGTHS + (1.25, 1.5, 2.0)  # the curve also shows over-saturation
CURVE_METRICS = ("psnr", "auc", "cf")
RULE = ("the strength s in {0, 0.05, ..., 1} that maximises min(PSNR(s) - PSNR(gray) in dB, "
        "AuC(s) - AuC(gray) in %), means over the images; ties go to the larger s")


def curve_values(truth: np.ndarray, ab: np.ndarray,
                 strengths: tuple[float, ...] = STRENGTHS) -> dict[str, np.ndarray]:
    """Per-image PSNR, AuC and CF of the prediction at each strength.

    Args:
      truth: float RGB (N, S, S, 3), the scored images.
      ab: their unscaled predicted ab (N, S, S, 2), as ``Predictor.predict_chroma`` gives it.
      strengths: the colour strengths to score.

    Returns:
      {metric: (len(strengths), N)} for metric in ``CURVE_METRICS``.
    """
    rows = [metrics.image_metrics(render_square(truth, ab, s), truth, CURVE_METRICS)
            for s in strengths]
    return {key: np.stack([row[key] for row in rows]) for key in CURVE_METRICS}


def summarize_curve(values: Mapping[str, np.ndarray], gray: Mapping[str, np.ndarray],
                    strengths: tuple[float, ...] = STRENGTHS) -> dict[str, Any]:
    """``curve_values`` (pooled over all images) and the gray prediction's per-image values ->
    the curve: {"strengths", "n", "psnr", "auc", "cf" (means per strength), "beats_gray"
    ({"psnr", "auc"}: images per strength on which it beats gray), "gray" (gray's means),
    "cf_true" (the ground truth's mean CF)}."""
    curve: dict[str, Any] = {"strengths": list(strengths), "n": int(values["psnr"].shape[1])}
    for key in CURVE_METRICS:
        curve[key] = [float(v) for v in values[key].mean(axis=1)]
    curve["beats_gray"] = {key: [int(np.count_nonzero(metrics.beats(row, gray[key], key)))
                                 for row in values[key]] for key in ("psnr", "auc")}
    curve["gray"] = {key: float(np.mean(gray[key])) for key in CURVE_METRICS}
    curve["cf_true"] = float(np.mean(gray["cf_true"]))
    return curve


def gains(curve: Mapping[str, Any]) -> np.ndarray:
    """Per strength of ``curve``: min(PSNR gain over gray in dB, AuC gain in %)."""
    psnr = np.asarray(curve["psnr"]) - curve["gray"]["psnr"]
    auc = np.asarray(curve["auc"]) - curve["gray"]["auc"]
    return np.minimum(psnr, auc)


def fit(curve: Mapping[str, Any]) -> float:
    """The calibrated strength of ``curve`` by ``RULE``."""
    strengths = np.asarray(curve["strengths"], np.float64)
    allowed = np.isin(strengths, CALIBRATION_STRENGTHS)
    if not allowed.any():
        raise ValueError(f"the curve holds none of the calibration strengths "
                         f"{CALIBRATION_STRENGTHS}")
    scores = np.where(allowed, gains(curve), -np.inf)
    best = np.flatnonzero(scores == scores.max())
    return float(strengths[best[np.argmax(strengths[best])]])  # ties: the larger strength


def record(curve: Mapping[str, Any], split: str, source: str) -> dict[str, Any]:
    """What the run folder stores for a checkpoint: the fitted strength, how and on what."""
    return {"colour_strength": fit(curve), "rule": RULE, "split": split, "n": curve["n"],
            "source": source, "curve": dict(curve)}


def share_line(beats_gray: Mapping[str, int], n: int) -> str:
    """``5/8 (PSNR), 6/8 (AuC)``."""
    return f"{beats_gray['psnr']}/{n} (PSNR), {beats_gray['auc']}/{n} (AuC)"
