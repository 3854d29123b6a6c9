"""Two baselines fitted on a run's training photos, scored beside gray (ab = 0) by ``evaluate``:

* ``mean_ab``: every pixel gets the training photos' mean a and b;
* ``mean_ab_by_l``: every pixel gets the mean a and b of the training pixels in its lightness
  bin (``L_BINS`` equal bins of L over [0, 100]; a bin without training pixels falls back to
  the overall mean).

Both keep each image's own L and are rendered as a model's prediction is (``inference.inputs.
to_rgb``: gamut fitted by desaturating). They need no network: a model that does not beat them
has learnt less than the colour statistics of its training set. Means are over pixels, so every
training image (all at the training size) weighs the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from jaxcolor import colour
from jaxcolor.inference.inputs import to_rgb

L_BINS = 10
KINDS = ("mean_ab", "mean_ab_by_l")
LABELS = {"mean_ab": "mean ab (training photos)",
          "mean_ab_by_l": "mean ab by L (training photos)"}


def l_bin(lightness: np.ndarray, bins: int = L_BINS) -> np.ndarray:
    """Bin index of each L in [0, 100] (``bins`` equal bins; 100 falls in the last)."""
    return np.clip((np.asarray(lightness, np.float64) * (bins / 100.0)).astype(np.int64), 0,
                   bins - 1)


def fit(labs: Iterable[np.ndarray], bins: int = L_BINS) -> dict[str, Any]:
    """Lab images (H, W, 3; L in [0, 100]) -> the baselines as plain JSON values.

    Returns {"mean_ab": [a, b], "ab_by_l": [[a, b] per bin], "l_edges": bin edges,
    "pixels_by_l": training pixels per bin, "images": how many images}.
    """
    sums = np.zeros((bins, 2), np.float64)
    counts = np.zeros(bins, np.int64)
    images = 0
    for lab in labs:
        lab = np.asarray(lab, np.float64).reshape(-1, 3)
        index = l_bin(lab[:, 0], bins)
        for channel in range(2):
            sums[:, channel] += np.bincount(index, lab[:, 1 + channel], minlength=bins)
        counts += np.bincount(index, minlength=bins)
        images += 1
    if not images or not counts.sum():
        raise ValueError("no training pixels to fit the baselines on")
    mean = sums.sum(axis=0) / counts.sum()
    by_l = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], mean)
    return {"mean_ab": mean.tolist(), "ab_by_l": by_l.tolist(),
            "l_edges": np.linspace(0.0, 100.0, bins + 1).tolist(),
            "pixels_by_l": counts.tolist(), "images": images}


def chroma(baselines: Mapping[str, Any], kind: str, lightness: np.ndarray) -> np.ndarray:
    """The ab (..., 2) baseline ``kind`` predicts for pixels of lightness ``lightness`` (...)."""
    if kind == "mean_ab":
        return np.broadcast_to(np.float32(baselines["mean_ab"]), (*lightness.shape, 2)).copy()
    if kind == "mean_ab_by_l":
        table = np.asarray(baselines["ab_by_l"], np.float32)
        return table[l_bin(lightness, len(table))]
    raise ValueError(f"unknown baseline {kind!r}; known: {KINDS}")


def predict(baselines: Mapping[str, Any], truth: np.ndarray) -> dict[str, np.ndarray]:
    """float RGB (N, S, S, 3) -> {kind: the baseline's RGB prediction (N, S, S, 3)}."""
    truth = np.asarray(truth, np.float32)
    lightness = colour.rgb_to_lab(truth)[..., 0]
    return {kind: np.stack([to_rgb(image, chroma(baselines, kind, light))
                            for image, light in zip(truth, lightness, strict=True)])
            for kind in KINDS}
