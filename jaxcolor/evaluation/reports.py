"""Writing evaluation reports: markdown tables (metrics, per-image verdicts against gray, the
colour-strength curve), JSON and CSV files, the acc(t) and strength plots and the sample grid.
The numbers come from ``jaxcolor.evaluation.scoring``; nothing here measures.
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

from jaxcolor.evaluation import baselines, metrics
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
    """The markdown table of one report: the model row, the gray baseline row and the
    training-photo baselines' rows when the run has them."""
    rows = [(run_label(report), report["metrics"][MODEL]), (GRAY_LABEL, report["metrics"][GRAY])]
    rows += [(baselines.LABELS[kind], report["metrics"][kind]) for kind in baselines.KINDS
             if kind in report["metrics"]]
    return markdown_table(rows)


def verdict_table(rows: Sequence[tuple[str, Mapping[str, Mapping[str, float]]]]) -> str:
    """Rows of (label, ``metrics.verdicts`` output) -> a markdown table: per metric, the mean
    per-image difference from gray ± its 95% interval and the images on which it beats gray."""
    shown = [(key, title, decimals) for key, title, decimals in COLUMNS
             if key in metrics.HIGHER_IS_BETTER]
    titles = [f"{title.rstrip(' ↑↓')} - gray" for _, title, _ in shown]
    lines = ["| vs gray (ab = 0), per image | n | "
             + " | ".join(f"{t} | beats gray" for t in titles) + " |",
             "|---|---:|" + "---:|---:|" * len(shown)]
    for label, verdicts in rows:
        n = next(iter(verdicts.values()))["n"]
        cells = []
        for key, _, decimals in shown:
            v = verdicts[key]
            cells += [_cell({"mean": v["mean_diff"], "ci95": v["ci95"]}, decimals),
                      f"{v['beats']}/{v['n']} ({100 * v['share_beating_gray']:.0f}%)"]
        lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def strength_table(curve: Mapping[str, Any], scored: float | None = None,
                   calibrated: float | None = None) -> str:
    """The colour-strength curve as a markdown table, naming the strength ``scored`` at and the
    ``calibrated`` one."""
    n = curve["n"]
    lines = [f"| colour strength | PSNR (dB) ↑ | AuC (%) ↑ | CF | beats gray (PSNR) of {n} | "
             f"beats gray (AuC) of {n} |", "|---:|---:|---:|---:|---:|---:|"]
    for i, s in enumerate(curve["strengths"]):
        marks = [name for name, value in (("scored", scored), ("calibrated", calibrated))
                 if value is not None and math.isclose(s, value)]
        mark = f" ({', '.join(marks)})" if marks else ""
        lines.append(f"| {s:.2f}{mark} | {curve['psnr'][i]:.2f} | {curve['auc'][i]:.2f} | "
                     f"{curve['cf'][i]:.2f} | {curve['beats_gray']['psnr'][i]} | "
                     f"{curve['beats_gray']['auc'][i]} |")
    gray = curve["gray"]
    lines.append(f"| gray | {gray['psnr']:.2f} | {gray['auc']:.2f} | {gray['cf']:.2f} | | |")
    return "\n".join(lines)


def report_text(report: Mapping[str, Any]) -> str:
    """One report for the console: the metrics table, the verdicts against gray and the
    colour-strength curve."""
    scored, calibrated = report["colour_strength"], report["calibrated_colour_strength"]
    how = ("calibrated for this checkpoint" if calibrated is not None
           and math.isclose(scored, calibrated) else "not calibrated" if calibrated is None
           else f"calibrated: {calibrated:g}")
    return (f"{report_table(report)}\n\nThe model at colour strength {scored:g} ({how}) against "
            f"gray on each image:\n\n{verdict_table([(run_label(report), report['verdicts'])])}"
            f"\n\nColour strength (predicted ab x s, L kept):\n\n"
            f"{strength_table(report['strength_curve'], scored, calibrated)}")


# ----------------------------------------------------------------------------- plots and grids


def plot_curves(curves: Sequence[tuple[str, np.ndarray, tuple[int, int, int], bool]],
                title: str) -> np.ndarray:
    """acc(t) curves over THRESHOLDS as a uint8 RGB image, drawn with OpenCV.

    ``curves``: (label, mean acc per threshold in [0, 1], RGB colour, dashed).
    """
    return line_plot([(label, THRESHOLDS, acc, rgb, dashed) for label, acc, rgb, dashed in curves],
                     x_ticks=np.arange(0, THRESHOLDS[-1] + 1, 25), y_ticks=np.linspace(0, 1, 6),
                     title=title, x_label="ab error threshold t (Lab units)", y_label="acc(t)")


def nice_ticks(lo: float, hi: float, count: int = 5) -> np.ndarray:
    """About ``count`` round tick values (steps of 1, 2, 2.5 or 5 x 10^k) covering [lo, hi]."""
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return np.arange(math.floor(lo / step), math.ceil(hi / step) + 1) * step


def line_plot(series: Sequence[tuple[str, np.ndarray, np.ndarray, tuple[int, int, int], bool]],
              *, x_ticks: np.ndarray, y_ticks: np.ndarray, title: str, x_label: str,
              y_label: str, markers: Sequence[tuple[float, str]] = (),
              size: tuple[int, int] = (760, 500)) -> np.ndarray:
    """Lines over the box the ticks span, as a uint8 RGB image drawn with OpenCV.

    ``series``: (label, xs, ys, RGB colour, dashed); ``markers``: (x, label) vertical lines.
    The legend sits at the bottom right of the plot area.
    """
    width, height = size
    left, right, top, bottom = 64, 20, 44, 56
    pw, ph = width - left - right, height - top - bottom
    img = np.full((height, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    (x0, x1), (y0, y1) = (x_ticks[0], x_ticks[-1]), (y_ticks[0], y_ticks[-1])

    def xy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.stack([left + (x - x0) / (x1 - x0) * pw, top + (y1 - y) / (y1 - y0) * ph],
                        -1).round().astype(np.int32)

    for t in x_ticks:
        x = int(round(left + (t - x0) / (x1 - x0) * pw))
        cv2.line(img, (x, top), (x, top + ph), (225, 225, 225), 1)
        cv2.putText(img, f"{round(t, 6):g}", (x - 10, top + ph + 18), font, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
    for t in y_ticks:
        y = int(round(top + (y1 - t) / (y1 - y0) * ph))
        cv2.line(img, (left, y), (left + pw, y), (225, 225, 225), 1)
        text = f"{round(t, 6):g}"
        text_width = cv2.getTextSize(text, font, 0.45, 1)[0][0]
        cv2.putText(img, text, (left - 8 - text_width, y + 5), font, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (left + pw, top + ph), (0, 0, 0), 1)
    cv2.putText(img, title, (left, 28), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, x_label, (left + pw // 2 - 4 * len(x_label), height - 14), font, 0.5,
                (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, y_label, (6, top - 8), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for i, (x, label) in enumerate(markers):  # labels one below the other: markers may be close
        (px, _), = xy(np.array([x]), np.array([y0]))
        cv2.line(img, (int(px), top), (int(px), top + ph), (120, 120, 120), 1, cv2.LINE_AA)
        cv2.putText(img, label, (int(px) + 4, top + 14 + 14 * i), font, 0.42, (80, 80, 80), 1,
                    cv2.LINE_AA)

    for i, (label, xs, ys, rgb, dashed) in enumerate(series):
        xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
        if dashed:  # dashes of equal length in x whatever the number of points
            dense = np.linspace(xs[0], xs[-1], 151)
            points = xy(dense, np.interp(dense, xs, ys))
            for j in range(0, len(points) - 1, 4):
                cv2.polylines(img, [points[j : j + 3]], False, rgb, 2, cv2.LINE_AA)
        else:
            cv2.polylines(img, [xy(xs, ys)], False, rgb, 2, cv2.LINE_AA)
        y = top + ph - 14 - 20 * (len(series) - 1 - i)
        x = left + pw - 330
        cv2.line(img, (x, y - 4), (x + 26, y - 4), rgb, 2, cv2.LINE_AA)
        cv2.putText(img, label[:44], (x + 34, y), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def plot_strength(curve: Mapping[str, Any], scored: float | None = None,
                  calibrated: float | None = None) -> np.ndarray:
    """The colour-strength curve as a uint8 RGB image: above, the PSNR and AuC gains over gray;
    below, colourfulness beside the ground truth's."""
    s = np.asarray(curve["strengths"], np.float64)
    psnr = np.asarray(curve["psnr"]) - curve["gray"]["psnr"]
    auc = np.asarray(curve["auc"]) - curve["gray"]["auc"]
    x_ticks = np.arange(0.0, max(s[-1], 1.0) + 0.25, 0.25)
    markers = [(v, label) for v, label in ((scored, "scored"), (calibrated, "calibrated"))
               if v is not None]
    if len(markers) == 2 and math.isclose(scored, calibrated):
        markers = [(scored, "scored, calibrated")]
    gains = line_plot(
        [("PSNR - gray (dB)", s, psnr, PALETTE[0], False),
         ("AuC - gray (%)", s, auc, PALETTE[1], False),
         (GRAY_LABEL, s, np.zeros_like(s), GRAY_COLOUR, True)],
        x_ticks=x_ticks, y_ticks=nice_ticks(min(psnr.min(), auc.min(), 0.0),
                                            max(psnr.max(), auc.max(), 0.0)),
        title=f"gain over gray on {curve['n']} images", x_label="colour strength s",
        y_label="gain", markers=markers, size=(760, 340))
    cf = line_plot(
        [("CF of the prediction", s, curve["cf"], PALETTE[2], False),
         ("CF of the ground truth", s, np.full_like(s, curve["cf_true"]), GRAY_COLOUR, True)],
        x_ticks=x_ticks, y_ticks=nice_ticks(0.0, max(*curve["cf"], curve["cf_true"])),
        title="colourfulness (CF)", x_label="colour strength s", y_label="CF", markers=markers,
        size=(760, 340))
    return np.concatenate([gains, cf])


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
    """One run's report: ``<stem>.json`` (summary, curves, files), ``<stem>.csv`` and the
    colour-strength plot ``<stem>-strength.png``."""
    from jaxcolor.training.summary import write_png

    outputs = [write_json(stem + ".json", report), write_csv(stem + ".csv", report),
               stem + "-strength.png"]
    write_png(outputs[-1], plot_strength(report["strength_curve"], report["colour_strength"],
                                         report["calibrated_colour_strength"]))
    return outputs


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
        f.write(f"{title} ({source or 'built-in sample photos'})\n\n{result['table']}\n\n"
                f"{result['verdict_table']}\n")
    with open(outputs[1], "w") as f:
        json.dump(json_safe(result), f, indent=2)
    write_png(outputs[2], plot_curves(
        [(f"{label}  AuC {100 * np.mean(acc[1:] + acc[:-1]) / 2:.1f}%", acc, rgb, dashed)
         for label, acc, rgb, dashed in plotted], title))
    if grid_rows:
        outputs.append(os.path.join(out_dir, f"samples-{split}.png"))
        write_png(outputs[-1], labelled_grid(grid_rows, grid_labels))
    return outputs
