"""Writing evaluation reports: markdown tables, JSON and CSV files, the acc(t) plot and the
sample grid. The numbers come from ``jaxcolor.evaluate``; nothing here measures.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from jaxcolor.evaluation import metrics
from jaxcolor.training.summary import image_grid

MODEL, GRAY = "model", "gray_baseline"
GRAY_LABEL = "gray (ab = 0)"
# (key of metrics.image_metrics, column title, decimals); arrows say which way is better.
COLUMNS = (
    ("psnr", "PSNR (dB) ↑", 2),
    ("ssim", "SSIM ↑", 3),
    ("auc", "AuC (%) ↑", 2),
    ("pixel_acc", "pixel acc. (%) ↑", 2),
    ("cf", "CF", 2),
    ("cf_true", "CF truth", 2),
    ("dcf", "dCF ↓", 2),
)
THRESHOLDS = np.arange(int(metrics.AUC_MAX_THRESHOLD) + 1, dtype=np.float64)
# Report keys that hold arrays for callers, not for the JSON file.
_ARRAY_KEYS = ("per_image", "curves", "samples")
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207))
GRAY_COLOUR = (110, 110, 110)


def json_safe(value: Any) -> Any:
    """Drops the array entries and writes non-finite floats as null (strict JSON)."""
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items() if k not in _ARRAY_KEYS}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: str, report: Mapping[str, Any]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(json_safe(report), f, indent=2)
    return path


def write_csv(path: str, report: Mapping[str, Any]) -> str:
    """One row per (image, prediction): file, prediction, then every metric."""
    keys = [key for key, _, _ in COLUMNS]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "prediction", *keys])
        for name, values in report["per_image"].items():
            for i, file in enumerate(report["files"]):
                writer.writerow([file, name, *(repr(float(values[k][i])) for k in keys)])
    return path


# ----------------------------------------------------------------------------- tables


def _cell(summary: Mapping[str, float], decimals: int) -> str:
    mean, half = summary["mean"], summary["ci95"]
    if mean is None or not math.isfinite(mean):
        return str(mean)
    if half is None or not math.isfinite(half):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {half:.{decimals}f}"


def markdown_table(rows: Sequence[tuple[str, Mapping[str, Mapping[str, float]]]]) -> str:
    """Rows of (label, metrics.summarize output) -> a markdown table of mean ± 95% CI."""
    lines = [
        "| prediction | n | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|---|---:|" + "---:|" * len(COLUMNS),
    ]
    for label, summary in rows:
        n = next(iter(summary.values()))["n"]
        cells = [_cell(summary[key], decimals) for key, _, decimals in COLUMNS]
        lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_label(report: Mapping[str, Any]) -> str:
    """``<run folder> @ <step>``."""
    return f"{os.path.basename(os.path.normpath(report['workdir']))} @ {report['step']}"


def report_table(report: Mapping[str, Any]) -> str:
    """The markdown table of one report: the model row and the gray baseline row."""
    return markdown_table([(run_label(report), report["metrics"][MODEL]),
                           (GRAY_LABEL, report["metrics"][GRAY])])


# ----------------------------------------------------------------------------- plots and grids


def plot_curves(curves: Sequence[tuple[str, np.ndarray, tuple[int, int, int], bool]],
                title: str) -> np.ndarray:
    """acc(t) curves over THRESHOLDS as a uint8 RGB image, drawn with OpenCV.

    ``curves``: (label, mean acc per threshold in [0, 1], RGB colour, dashed).
    """
    width, height = 760, 500
    left, right, top, bottom = 64, 20, 44, 56
    pw, ph = width - left - right, height - top - bottom
    img = np.full((height, width, 3), 255, np.uint8)
    font, t_max = cv2.FONT_HERSHEY_SIMPLEX, THRESHOLDS[-1]

    def xy(t: np.ndarray, acc: np.ndarray) -> np.ndarray:
        return np.stack([left + t / t_max * pw, top + (1.0 - acc) * ph], -1).round().astype(
            np.int32)

    for t in range(0, int(t_max) + 1, 25):
        x = int(round(left + t / t_max * pw))
        cv2.line(img, (x, top), (x, top + ph), (225, 225, 225), 1)
        cv2.putText(img, str(t), (x - 10, top + ph + 18), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for k in range(6):
        y = int(round(top + (1.0 - k / 5) * ph))
        cv2.line(img, (left, y), (left + pw, y), (225, 225, 225), 1)
        cv2.putText(img, f"{k / 5:.1f}", (left - 34, y + 5), font, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (left + pw, top + ph), (0, 0, 0), 1)
    cv2.putText(img, title, (left, 28), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "ab error threshold t (Lab units)", (left + pw // 2 - 130, height - 14),
                font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "acc(t)", (6, top - 8), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)

    for i, (label, acc, rgb, dashed) in enumerate(curves):
        points = xy(THRESHOLDS, np.asarray(acc, np.float64))
        if dashed:
            for j in range(0, len(points) - 1, 4):
                cv2.polylines(img, [points[j : j + 3]], False, rgb, 2, cv2.LINE_AA)
        else:
            cv2.polylines(img, [points], False, rgb, 2, cv2.LINE_AA)
        # Legend, bottom right of the plot area (curves rise to the top left).
        y = top + ph - 14 - 20 * (len(curves) - 1 - i)
        x = left + pw - 330
        cv2.line(img, (x, y - 4), (x + 26, y - 4), rgb, 2, cv2.LINE_AA)
        cv2.putText(img, label[:44], (x + 34, y), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def labelled_grid(rows: list[list[np.ndarray]], labels: Sequence[str], pad: int = 2) -> np.ndarray:
    """``summary.image_grid`` with a header band naming the columns."""
    grid = image_grid(rows, pad)
    cell = rows[0][0].shape[1]
    band = np.full((22, grid.shape[1], 3), 255, np.uint8)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.4
    for j, label in enumerate(labels):
        text = label
        while text and cv2.getTextSize(text, font, scale, 1)[0][0] > cell - 4:
            text = text[:-1]
        cv2.putText(band, text, (pad + j * (cell + pad) + 2, 15), font, scale, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return np.concatenate([band, grid])


# ----------------------------------------------------------------------------- files


def write_report(stem: str, report: Mapping[str, Any]) -> list[str]:
    """One run's report: ``<stem>.json`` (summary, curves, files) and ``<stem>.csv``."""
    return [write_json(stem + ".json", report), write_csv(stem + ".csv", report)]


def write_comparison(out_dir: str, result: Mapping[str, Any],
                     plotted: Sequence[tuple[str, np.ndarray, tuple[int, int, int], bool]],
                     grid_rows: list[list[np.ndarray]], grid_labels: Sequence[str]) -> list[str]:
    """``--compare``'s files: table (.md), summary (.json), acc(t) plot and sample grid (PNG)."""
    from jaxcolor.training.summary import write_png

    split, source = result["split"], result["data_dir"]
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"compare-{split}")
    outputs = [stem + ".md", stem + ".json", os.path.join(out_dir, f"acc_curves-{split}.png")]
    title = f"acc(t) on {result['num_images']} {split} images"
    with open(outputs[0], "w") as f:
        f.write(f"{title} ({source or 'built-in sample photos'})\n\n{result['table']}\n")
    with open(outputs[1], "w") as f:
        json.dump(json_safe(result), f, indent=2)
    write_png(outputs[2], plot_curves(
        [(f"{label}  AuC {100 * np.mean(acc[1:] + acc[:-1]) / 2:.1f}%", acc, rgb, dashed)
         for label, acc, rgb, dashed in plotted], title))
    if grid_rows:
        outputs.append(os.path.join(out_dir, f"samples-{split}.png"))
        write_png(outputs[-1], labelled_grid(grid_rows, grid_labels))
    return outputs
