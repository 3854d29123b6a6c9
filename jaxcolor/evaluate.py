"""Evaluate trained runs on a split of their dataset, always beside the trivial gray prediction.

python -m jaxcolor.evaluate --workdir runs/lab_gan [--split test] [--step latest|best|N]
    [--config.data.dir=/path/to/data] [--max_images N] [--batch_size N]
python -m jaxcolor.evaluate --compare runs/lab_gan runs/pix2pix ... [--out eval_compare]

Each image of the split (listed as the trainer lists it: ``data.find_splits`` with the run's
``data.dir``, ``val_fraction`` and seed) is resized to the model's ``data.image_size`` with area
interpolation, as in training; grayscale sources are skipped when the run skipped them. The
prediction measured is what ``jaxcolor.colorize`` delivers at that size: the image's own L with
the predicted ab (for RGB-output models too), so every model and the gray baseline (the same L
with ab = 0) differ only in their chroma. Metrics per image (``jaxcolor.metrics``): PSNR, SSIM,
AuC of the ab error (t = 0..150), pixel accuracy (Nazeri), colourfulness of output and ground
truth, and dCF; each reported as mean and 95% Student-t interval half width.

Writes ``<run>/eval/<split>-<step>.json`` (summary, mean acc(t) curves, file list) and ``.csv``
(one row per image and prediction) and prints a markdown table. ``--compare`` evaluates every run
on the first run's file list (each at its own resolution), reports over the images all runs
used, and writes into ``--out`` a side-by-side table (``compare-<split>.md``/``.json``), a plot
of the acc(t) curves and a grid of the same images from each run (PNG).
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import json
import logging
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import cv2
import ml_collections
import numpy as np

from jaxcolor import colour, data, metrics
from jaxcolor.inference import (
    Prepared,
    Step,
    chunked,
    load_run,
    parse_step,
    read_config,
    resize,
)
from jaxcolor.summary import image_grid, write_png

log = logging.getLogger(__name__)

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
_PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207))
_GRAY_COLOUR = (110, 110, 110)


# ----------------------------------------------------------------------------- one run


def split_files(
    config: ml_collections.ConfigDict, split: str, data_dir: str | None = None
) -> tuple[list[str], str | None]:
    """The files of ``split`` as the run's trainer split them, and the folder they came from."""
    if split not in data.SPLITS:
        raise ValueError(f"split must be one of {data.SPLITS}, got {split!r}")
    source = data_dir if data_dir is not None else config.data.dir
    files = data.find_splits(source, config.data.val_fraction, config.train.seed)[split]
    if not files:
        raise ValueError(f"data.dir={source!r} has no image in its {split!r} split")
    return files, source


def _ground_truth(
    files: Sequence[str], maker: data.ExampleMaker, max_images: int | None, skipped: list[str]
) -> Iterator[tuple[str, np.ndarray]]:
    """(path, RGB in [0, 1] at model size) in file order; decoding runs ahead in threads."""
    count = 0
    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(files), 32):
            chunk = files[start : start + 32]
            for path, example in zip(chunk, pool.map(maker, chunk), strict=True):
                if isinstance(example, data.Skipped):
                    skipped.append(example.reason)
                    continue
                yield path, np.clip((example["rgb"] + 1.0) / 2.0, 0.0, 1.0)
                count += 1
                if max_images is not None and count >= max_images:
                    return


def evaluate_run(
    workdir: str,
    split: str = "test",
    step: Step = None,
    data_dir: str | None = None,
    max_images: int | None = None,
    *,
    batch_size: int | None = None,
    files: Sequence[str] | None = None,
    num_samples: int = 0,
    write: bool = True,
) -> dict[str, Any]:
    """Evaluates the run in ``workdir`` and its gray baseline on one split.

    Args:
      workdir: the run directory.
      split: "train", "validation" or "test".
      step: None/"latest", "best" or a checkpoint step.
      data_dir: evaluate on this folder instead of the run's ``data.dir``.
      max_images: stop after this many usable images.
      batch_size: images per device call (default: the run's ``train.batch_size``).
      files: evaluate exactly these files (``split`` and ``data_dir`` then only label the report).
      num_samples: keep the first images' (truth, prediction) under ``"samples"``.
      write: write ``<workdir>/eval/<split>-<step>.json`` and ``.csv``.

    Returns:
      The report: ``metrics`` ({"model", "gray_baseline"} -> metric -> {"mean", "ci95", "n"}),
      ``acc_curve``, ``files``, ``skipped``, run facts; and, not in the JSON file,
      ``per_image`` and ``curves`` (NumPy arrays per image) and ``samples``.
    """
    config = read_config(workdir)
    colorizer = load_run(workdir, step, batch_size or config.train.batch_size)
    size = colorizer.image_size
    if files is None:
        files, source = split_files(config, split, data_dir)
    else:
        source = data_dir if data_dir is not None else config.data.dir
    maker = data.ExampleMaker(size, augment=False, skip_grayscale=config.data.skip_grayscale)

    skipped: list[str] = []
    evaluated: list[str] = []
    per_image = {MODEL: collections.defaultdict(list), GRAY: collections.defaultdict(list)}
    curves = {MODEL: [], GRAY: []}
    samples = {}
    items = (
        ((path, truth), Prepared(colour.rgb_to_lab(truth)[..., 0], truth))
        for path, truth in _ground_truth(list(files), maker, max_images, skipped)
    )
    # Through the same stream as ``colorize`` (batched, one batch in flight on the device).
    for batch in chunked(colorizer.stream(items), colorizer.batch_size):
        paths = [key[0] for key, _ in batch]
        truth = np.stack([key[1] for key, _ in batch])
        predictions = {MODEL: np.stack([out for _, out in batch]),
                       GRAY: metrics.gray_baseline(truth)}
        true_lab = colour.rgb_to_lab(truth)
        for name, pred in predictions.items():
            for key, values in metrics.image_metrics(pred, truth).items():
                per_image[name][key].append(values)
            curves[name].append(
                metrics.ab_accuracy_curve(colour.rgb_to_lab(pred), true_lab, THRESHOLDS))
        for i, path in enumerate(paths):
            if len(samples) < num_samples:
                samples[path] = (truth[i], predictions[MODEL][i])
        evaluated += paths
    if not evaluated:
        shown = "; ".join(skipped[:3]) + (" ..." if len(skipped) > 3 else "")
        raise ValueError(f"{workdir}: no usable image in the {split!r} split ({shown})")

    per_image = {name: {k: np.concatenate(v) for k, v in values.items()}
                 for name, values in per_image.items()}
    curves = {name: np.concatenate(c) for name, c in curves.items()}
    report = {
        "workdir": colorizer.workdir,
        "experiment": config.experiment,
        "task": config.data.task,
        "generator": config.model.generator,
        "step": colorizer.step,
        "split": split,
        "image_size": size,
        "data_dir": source,
        "num_images": len(evaluated),
        "num_skipped": len(skipped),
        "skipped": skipped,
        "metrics": {name: metrics.summarize(v) for name, v in per_image.items()},
        "acc_curve": {"thresholds": THRESHOLDS.tolist(),
                      **{name: c.mean(axis=0).tolist() for name, c in curves.items()}},
        "files": evaluated,
        "per_image": per_image,
        "curves": curves,
        "samples": samples,
    }
    if write:
        stem = os.path.join(workdir, "eval", f"{split}-{colorizer.step}")
        report["outputs"] = [_write_json(stem + ".json", report), _write_csv(stem + ".csv", report)]
    return report


def _json_safe(value: Any) -> Any:
    """Drops the array entries and writes non-finite floats as null (strict JSON)."""
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items() if k not in _ARRAY_KEYS}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _write_json(path: str, report: Mapping[str, Any]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(_json_safe(report), f, indent=2)
    return path


def _write_csv(path: str, report: Mapping[str, Any]) -> str:
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


# ----------------------------------------------------------------------------- compare


def _subset(report: Mapping[str, Any], files: Sequence[str]) -> tuple[dict, dict]:
    """Per-image values and curves of ``report`` restricted to ``files``, in that order."""
    index = {f: i for i, f in enumerate(report["files"])}
    rows = np.array([index[f] for f in files], dtype=np.int64)
    per_image = {name: {k: v[rows] for k, v in values.items()}
                 for name, values in report["per_image"].items()}
    curves = {name: c[rows] for name, c in report["curves"].items()}
    return per_image, curves


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


def _labelled_grid(rows: list[list[np.ndarray]], labels: Sequence[str], pad: int = 2) -> np.ndarray:
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


def compare_runs(
    workdirs: Sequence[str],
    split: str = "test",
    step: Step = None,
    data_dir: str | None = None,
    max_images: int | None = None,
    *,
    out_dir: str = "eval_compare",
    batch_size: int | None = None,
    num_samples: int = 6,
) -> dict[str, Any]:
    """Evaluates several runs on the same images; writes a table, a curve plot and a grid.

    The file list is the first run's split (or ``data_dir``'s); each run is evaluated at its own
    resolution and writes its own report; the comparison covers the images every run used.
    Returns {"table", "runs" (per-run summaries over the common images), "outputs", ...}.
    """
    if not workdirs:
        raise ValueError("--compare needs at least one run directory")
    configs = [read_config(w) for w in workdirs]
    files, source = split_files(configs[0], split, data_dir)
    for workdir, config in zip(workdirs[1:], configs[1:], strict=True):
        theirs = (data_dir if data_dir is not None else config.data.dir,
                  config.data.val_fraction, config.train.seed)
        if theirs != (source, configs[0].data.val_fraction, configs[0].train.seed):
            log.warning("%s was split differently (data.dir, val_fraction, seed = %s); all runs "
                        "are evaluated on %s's %s split, which may hold its training images",
                        workdir, theirs, workdirs[0], split)

    reports = [
        evaluate_run(w, split, step, source, max_images, batch_size=batch_size, files=files,
                     num_samples=num_samples)
        for w in workdirs
    ]
    common_set = set.intersection(*(set(r["files"]) for r in reports))
    common = [f for f in reports[0]["files"] if f in common_set]
    if not common:
        raise ValueError("the runs share no usable image")
    if any(len(r["files"]) != len(common) for r in reports):
        log.warning("the runs skipped different images; comparing on the %d they share",
                    len(common))

    labels = [run_label(r) for r in reports]
    if len(set(labels)) < len(labels):  # same folder names: fall back to the given paths
        labels = [f"{w} @ {r['step']}" for w, r in zip(workdirs, reports, strict=True)]
    rows, runs, plotted, gray_rows = [], [], [], {}
    for i, (label, report) in enumerate(zip(labels, reports, strict=True)):
        per_image, curves = _subset(report, common)
        summary = metrics.summarize(per_image[MODEL])
        rows.append((label, summary))
        plotted.append((label, curves[MODEL].mean(axis=0), _PALETTE[i % len(_PALETTE)], False))
        runs.append({"label": label, "workdir": report["workdir"], "step": report["step"],
                     "image_size": report["image_size"], "metrics": summary,
                     "acc_curve": curves[MODEL].mean(axis=0).tolist()})
        # The gray baseline depends only on the images and the resolution.
        gray_rows.setdefault(report["image_size"], (per_image[GRAY], curves[GRAY]))
    for size, (per_image, curves) in gray_rows.items():
        label = GRAY_LABEL if len(gray_rows) == 1 else f"{GRAY_LABEL} @ {size}px"
        rows.append((label, metrics.summarize(per_image)))
        plotted.append((label, curves.mean(axis=0), _GRAY_COLOUR, True))
    table = markdown_table(rows)

    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"compare-{split}")
    outputs = [stem + ".md", stem + ".json", os.path.join(out_dir, f"acc_curves-{split}.png")]
    title = f"acc(t) on {len(common)} {split} images"
    with open(outputs[0], "w") as f:
        f.write(f"{title} ({source or 'built-in sample photos'})\n\n{table}\n")
    result = {"split": split, "data_dir": source, "num_images": len(common), "files": common,
              "runs": runs,
              "gray_baseline": {str(size): metrics.summarize(p) for size, (p, _) in
                                gray_rows.items()},
              "table": table}
    with open(outputs[1], "w") as f:
        json.dump(_json_safe(result), f, indent=2)
    write_png(outputs[2], plot_curves(
        [(f"{label}  AuC {100 * np.mean(acc[1:] + acc[:-1]) / 2:.1f}%", acc, rgb, dashed)
         for label, acc, rgb, dashed in plotted], title))

    shown = [f for f in common if all(f in r["samples"] for r in reports)]
    if shown:
        display = int(min(max(max(r["image_size"] for r in reports), 128), 256))

        def cell(rgb: np.ndarray) -> np.ndarray:
            return resize(rgb, display, display)

        biggest = max(reports, key=lambda r: r["image_size"])
        grid_rows = []
        for f in shown:
            truth = cell(biggest["samples"][f][0])
            grid_rows.append([metrics.gray_baseline(truth[None])[0],
                              *(cell(r["samples"][f][1]) for r in reports), truth])
        outputs.append(os.path.join(out_dir, f"samples-{split}.png"))
        write_png(outputs[-1], _labelled_grid(grid_rows, ["gray input", *labels, "ground truth"]))
    result["outputs"] = outputs
    result["reports"] = reports
    return result


# ----------------------------------------------------------------------------- command line


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "Run directory to evaluate.")
    flags.DEFINE_multi_string("compare", None, "Run directories to compare: --compare A B C.")
    flags.DEFINE_enum("split", "test", list(data.SPLITS), "Split of the dataset.")
    flags.DEFINE_string("step", "latest", "Checkpoint: latest, best or a step number.")
    flags.DEFINE_string("config.data.dir", None, "Evaluate on this folder instead of the run's.")
    flags.DEFINE_integer("max_images", None, "Evaluate at most this many images.", lower_bound=1)
    flags.DEFINE_integer("batch_size", None, "Images per device call (default: the run's).",
                         lower_bound=1)
    flags.DEFINE_string("out", "eval_compare", "--compare: folder for the table and plots.")
    flags.DEFINE_integer("num_samples", 6, "--compare: images in the sample grid.", lower_bound=0)


def main(argv: Sequence[str]) -> None:
    """absl entry point; a run or data problem ends with its message and exit code 1."""
    from jaxcolor import compile_cache  # persistent XLA cache: no recompiling
    compile_cache.enable()
    try:
        _main(argv)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def _main(argv: Sequence[str]) -> None:
    from absl import app, flags
    from absl import logging as absl_logging

    FLAGS = flags.FLAGS
    if not any(a.startswith(("--verbosity", "-v=")) for a in sys.argv):
        absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every file it reads
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    step = parse_step(FLAGS.step)
    data_dir = FLAGS["config.data.dir"].value
    extra = list(argv[1:])
    if FLAGS.compare:
        runs = ([FLAGS.workdir] if FLAGS.workdir else []) + list(FLAGS.compare) + extra
        result = compare_runs(runs, FLAGS.split, step, data_dir, FLAGS.max_images,
                              out_dir=FLAGS.out, batch_size=FLAGS.batch_size,
                              num_samples=FLAGS.num_samples)
        print(f"{result['num_images']} {FLAGS.split} images "
              f"({result['data_dir'] or 'built-in sample photos'})\n")
        print(result["table"])
        outputs = [o for r in result["reports"] for o in r["outputs"]] + result["outputs"]
    else:
        if not FLAGS.workdir:
            raise app.UsageError("give --workdir RUN, or --compare RUN RUN ...")
        if extra:
            raise app.UsageError(f"unexpected arguments {extra} (did you mean --compare?)")
        report = evaluate_run(FLAGS.workdir, FLAGS.split, step, data_dir, FLAGS.max_images,
                              batch_size=FLAGS.batch_size)
        print(f"{report['experiment']} step {report['step']}: {report['num_images']} "
              f"{report['split']} images at {report['image_size']}px "
              f"({report['data_dir'] or 'built-in sample photos'}), "
              f"{report['num_skipped']} skipped\n")
        print(report_table(report))
        outputs = report["outputs"]
    print("\nwrote " + ", ".join(outputs))


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
