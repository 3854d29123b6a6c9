"""Scoring a model on images beside the trivial gray prediction: the one scoring path, shared by
training-time validation and ``jaxcolor.evaluate``.

Images are listed as the trainer lists them (``data.find_splits`` with the run's ``data.dir``,
``val_fraction`` and seed), or, with ``--images DIR``, every image under DIR (recursive). Each is
resized to the model's ``data.image_size`` as in training (``data.ExampleMaker``); grayscale
sources are skipped when the run skipped them. The prediction measured is what the trainer's
validation measures and what ``colorize`` delivers at that size: ``model_lib.Model.
predict_square``, the image's own L with the predicted ab (for RGB-output models too), so
every model and the gray baseline (the same L with ab = 0) differ only in their chroma. Metrics
per image (``jaxcolor.evaluation.metrics``): PSNR, SSIM, AuC of the ab error (t = 0..150),
pixel accuracy, colourfulness and dCF; each reported as mean and 95% Student-t interval half width.

An exported model (``jaxcolor.artifacts``) is scored as its run was, without the run: its
metadata records the task, size, step and how the run skipped images (older exports: the
defaults). It does not record its training data folder, so it needs ``--images DIR`` or
``--config.data.dir=DIR`` (split with the run's ``val_fraction`` and seed).

The model is scored at its colour strength (the strength calibrated for the checkpoint, else
1.0, or ``colour_strength``), beside PSNR, AuC and CF over a range of strengths
(``calibration.STRENGTHS``, rescaled on the host from the same prediction), per-image verdicts
against gray (``metrics.verdicts``) and, when the run recorded them, the baselines fitted on its
training photos (``baselines``).

Report files (``jaxcolor.evaluation.reports``): ``<split>-<step>.json`` and ``.csv``
(``images-<step>`` for ``--images``) in ``--out``, by default ``<run>/eval`` for a run and
``eval_<name>`` in the current directory for an exported model (which may be read-only); and a
printed markdown table whose ``n`` column counts the images scored. ``--compare`` evaluates
every run on the first run's file list (each at its own resolution), reports over the images all
runs used, and writes a side-by-side table, a plot of the acc(t) curves and a grid of the same
images from each run into ``--out`` (default ``eval_compare``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections
import numpy as np

from jaxcolor import colour, data, runs
from jaxcolor.artifacts import format as artifact
from jaxcolor.evaluation import baselines, calibration, metrics, reports
from jaxcolor.evaluation.reports import GRAY, GRAY_LABEL, MODEL, THRESHOLDS
from jaxcolor.runs import Step

log = logging.getLogger(__name__)

IMAGES_SPLIT = "images"  # the report's split name for ``--images DIR``


# ----------------------------------------------------------------------------- measuring


def truth_rgb(example: dict[str, np.ndarray]) -> np.ndarray:
    """An example's ground truth as RGB in [0, 1] (the scored image, at the training size)."""
    return np.clip((example["rgb"] + 1.0) / 2.0, 0.0, 1.0)


def ground_truth(files: Sequence[str], image_size: int, skip_grayscale: bool,
                 max_images: int | None, skipped: list[str], max_pixels: int | None = None
                 ) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """(path, example) of the usable files in order (``data.ExampleMaker``, no augmentation);
    the reasons for unusable ones (``max_pixels`` included) go to ``skipped``. Decoding runs
    ahead in threads."""
    maker = data.ExampleMaker(image_size, augment=False, skip_grayscale=skip_grayscale,
                              max_pixels=max_pixels)
    count = 0
    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(files), 32):
            chunk = list(files[start : start + 32])
            for path, example in zip(chunk, pool.map(maker, chunk), strict=True):
                if isinstance(example, data.Skipped):
                    skipped.append(example.reason)
                    continue
                yield path, example
                count += 1
                if max_images is not None and count >= max_images:
                    return


def measure(pred: np.ndarray, truth: np.ndarray, others: dict[str, np.ndarray] | None = None
            ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Per-image metrics and acc(t) curves of a prediction, of the gray baseline and of the
    ``others`` predictions (name -> RGB like ``pred``).

    Returns ({MODEL, GRAY, *others} -> metric -> (N,), {...} -> (N, len(THRESHOLDS))).
    """
    true_lab = colour.rgb_to_lab(truth)
    per_image, curves = {}, {}
    predictions = {MODEL: pred, GRAY: metrics.gray_baseline(truth), **(others or {})}
    for name, rgb in predictions.items():
        per_image[name] = metrics.image_metrics(rgb, truth)
        curves[name] = metrics.ab_accuracy_curve(colour.rgb_to_lab(rgb), true_lab, THRESHOLDS)
    return per_image, curves


def mean_metrics(per_image: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-image values -> their means (what the trainer logs as ``val/<name>``)."""
    return {k: float(np.mean(v)) for k, v in per_image.items()}


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


def scored_config(path: str) -> ml_collections.ConfigDict:
    """How the model at ``path`` is scored: a run's config, or an exported model's recorded
    facts, each on today's defaults (``config.upgrade``)."""
    from jaxcolor import config as config_lib

    if not artifact.is_export(path):
        return config_lib.upgrade(runs.read_config(path))
    meta = artifact.read_metadata(path)
    facts = meta.get("evaluation", {})
    return config_lib.upgrade(ml_collections.ConfigDict({
        "experiment": meta["experiment"],
        "data": {"task": meta["task"], "image_size": meta["image_size"],
                 **{k: facts[k] for k in ("skip_grayscale", "max_pixels", "val_fraction")
                    if k in facts}},
        "model": {"generator": meta["generator"]},
        "train": {k: facts[k] for k in ("seed", "batch_size") if k in facts},
    }))


def split_source(path: str, config: ml_collections.ConfigDict, split: str,
                 data_dir: str | None) -> str | None:
    """The folder whose ``split`` is scored: ``data_dir``, else the run's ``data.dir``."""
    if data_dir is None and artifact.is_export(path):
        raise ValueError(
            f"{path} is an exported model, which does not record its training data folder: "
            f"give --images DIR, or --config.data.dir=DIR to score that folder's {split!r} "
            "split")
    return data_dir if data_dir is not None else config.data.dir


def report_stem(path: str, split: str, step: int, out_dir: str | None = None) -> str:
    """Where a report of the model at ``path`` goes (``.json`` / ``.csv`` are added):
    ``<out_dir>/<split>-<step>``; by default ``runs.eval_stem`` for a run and
    ``eval_<name>/`` in the current directory for an exported model."""
    if out_dir is None:
        if not artifact.is_export(path):
            return runs.eval_stem(path, split, step)
        out_dir = f"eval_{os.path.basename(os.path.abspath(path))}"
    return os.path.join(out_dir, f"{split}-{step}")


def folder_files(images_dir: str) -> list[str]:
    """Every image under ``images_dir`` (recursive), for ``--images``."""
    if not os.path.isdir(images_dir):
        raise ValueError(f"--images {images_dir!r} is not a directory")
    files = data.list_images(images_dir)
    if not files:
        raise ValueError(f"--images {images_dir!r}: no image files "
                         f"({', '.join(data.IMAGE_EXTENSIONS)}) found")
    return files


def evaluate_run(
    workdir: str,
    split: str = "test",
    step: Step = None,
    data_dir: str | None = None,
    max_images: int | None = None,
    *,
    batch_size: int | None = None,
    files: Sequence[str] | None = None,
    images_dir: str | None = None,
    num_samples: int = 0,
    write: bool = True,
    out_dir: str | None = None,
    colour_strength: float | None = None,
) -> dict[str, Any]:
    """Evaluates the run or exported model in ``workdir`` and its gray baseline on one split
    (or folder).

    Args:
      workdir: the run directory, or an exported model folder.
      split: "train", "validation" or "test".
      step: None/"latest", "best" or a checkpoint step (runs only).
      data_dir: evaluate the split of this folder instead of the run's ``data.dir`` (an
        exported model needs it, or ``images_dir``).
      max_images: stop after this many usable images.
      batch_size: images per device call (default: the run's ``train.batch_size``, as the
        trainer's validation; an export records it).
      files: evaluate exactly these files (``split`` and ``data_dir`` then only label the report).
      images_dir: evaluate every image under this folder (recursive); the split is "images".
      num_samples: keep the first images' (truth, prediction) under ``"samples"``.
      write: write ``<split>-<step>.json`` and ``.csv`` and the strength plot (see
        ``report_stem``).
      out_dir: the folder they go to (default: see ``report_stem``).
      colour_strength: score the model at this colour strength (default: the model's, i.e. the
        strength calibrated for the checkpoint, else 1.0).

    Returns:
      The report: ``metrics`` ({"model", "gray_baseline", and "mean_ab", "mean_ab_by_l" when
      the run fitted them} -> metric -> {"mean", "ci95", "n"}), ``colour_strength`` (scored
      at), ``verdicts`` (model vs gray per image, ``metrics.verdicts``), ``strength_curve``
      (``calibration.summarize_curve``), ``acc_curve``, ``files``, ``skipped``, run facts; and,
      not in the JSON file, ``per_image`` and ``curves`` (NumPy arrays per image) and
      ``samples``.
    """
    from jaxcolor.inference.loading import load
    from jaxcolor.inference.predictor import check_colour_strength, render_square

    config = scored_config(workdir)
    if colour_strength is not None:
        check_colour_strength(colour_strength)
    if images_dir is not None:
        files, source, split = folder_files(images_dir), images_dir, IMAGES_SPLIT
    elif files is None:
        files, source = split_files(config, split, split_source(workdir, config, split, data_dir))
    else:
        source = data_dir if data_dir is not None else config.data.dir
    model = load(workdir, step, batch_size=batch_size or config.train.batch_size)
    strength = model.colour_strength if colour_strength is None else colour_strength
    fitted = model.metadata.get("baselines")

    skipped: list[str] = []
    evaluated: list[str] = []
    names = (MODEL, GRAY, *(baselines.KINDS if fitted else ()))
    per_image = {name: collections.defaultdict(list) for name in names}
    curves: dict[str, list[np.ndarray]] = {name: [] for name in names}
    by_strength = collections.defaultdict(list)
    samples = {}
    examples = ground_truth(list(files), model.image_size, config.data.skip_grayscale,
                            max_images, skipped, config.data.max_pixels)
    batch: list[tuple[str, np.ndarray]] = []

    def score(batch: list[tuple[str, np.ndarray]]) -> None:
        truth = np.stack([t for _, t in batch])
        ab, _ = model.predict_chroma(truth)
        pred = render_square(truth, ab, strength)
        values, batch_curves = measure(pred, truth,
                                       baselines.predict(fitted, truth) if fitted else None)
        for name in names:
            for key, v in values[name].items():
                per_image[name][key].append(v)
            curves[name].append(batch_curves[name])
        for key, v in calibration.curve_values(truth, ab).items():
            by_strength[key].append(v)
        for i, (path, _) in enumerate(batch):
            if len(samples) < num_samples:
                samples[path] = (truth[i], pred[i])
        evaluated.extend(path for path, _ in batch)

    for path, example in examples:
        batch.append((path, truth_rgb(example)))
        if len(batch) == model.batch_size:
            score(batch)
            batch = []
    if batch:
        score(batch)
    if not evaluated:
        shown = "; ".join(skipped[:3]) + (" ..." if len(skipped) > 3 else "")
        raise ValueError(f"{workdir}: no usable image in the {split!r} split ({shown})")

    per_image_arrays = {name: {k: np.concatenate(v) for k, v in values.items()}
                        for name, values in per_image.items()}
    curve_arrays = {name: np.concatenate(c) for name, c in curves.items()}
    step_done = model.metadata["step"]
    calibrated = model.metadata.get("calibration")
    report = {
        "workdir": os.path.abspath(workdir),
        "source": model.metadata["source"],
        "experiment": config.experiment,
        "task": config.data.task,
        "generator": config.model.generator,
        "step": step_done,
        "split": split,
        "image_size": model.image_size,
        "data_dir": source,
        "num_images": len(evaluated),
        "num_skipped": len(skipped),
        "skipped": skipped,
        "metrics": {name: metrics.summarize(v) for name, v in per_image_arrays.items()},
        "colour_strength": strength,
        "calibrated_colour_strength": calibrated["colour_strength"] if calibrated else None,
        "verdicts": metrics.verdicts(per_image_arrays[MODEL], per_image_arrays[GRAY]),
        "strength_curve": calibration.summarize_curve(
            {k: np.concatenate(v, axis=1) for k, v in by_strength.items()},
            per_image_arrays[GRAY]),
        "acc_curve": {"thresholds": THRESHOLDS.tolist(),
                      **{name: c.mean(axis=0).tolist() for name, c in curve_arrays.items()}},
        "files": evaluated,
        "per_image": per_image_arrays,
        "curves": curve_arrays,
        "samples": samples,
    }
    if write:
        report["outputs"] = reports.write_report(
            report_stem(workdir, split, step_done, out_dir), report)
    return report


def _subset(report: dict[str, Any], files: Sequence[str]) -> tuple[dict, dict]:
    """Per-image values and curves of ``report`` restricted to ``files``, in that order."""
    index = {f: i for i, f in enumerate(report["files"])}
    rows = np.array([index[f] for f in files], dtype=np.int64)
    per_image = {name: {k: v[rows] for k, v in values.items()}
                 for name, values in report["per_image"].items()}
    curves = {name: c[rows] for name, c in report["curves"].items()}
    return per_image, curves


def compare_runs(
    workdirs: Sequence[str],
    split: str = "test",
    step: Step = None,
    data_dir: str | None = None,
    max_images: int | None = None,
    *,
    out_dir: str | None = None,
    batch_size: int | None = None,
    num_samples: int = 6,
    images_dir: str | None = None,
    colour_strength: float | None = None,
) -> dict[str, Any]:
    """Evaluates several runs (or exported models) on the same images; writes a table, a curve
    plot and a grid into ``out_dir`` (default ``eval_compare``).

    The file list is the first run's split (or ``data_dir``'s, or every image under
    ``images_dir``); each run is evaluated at its own resolution and colour strength (its
    calibrated one unless ``colour_strength`` is given) and writes its own report; the
    comparison covers the images every run used. Returns {"table", "verdict_table" (per image
    against gray), "runs" (per-run summaries over the common images), "outputs", ...}.
    """
    from jaxcolor.inference.inputs import resize

    if not workdirs:
        raise ValueError("--compare needs at least one run directory")
    configs = [scored_config(w) for w in workdirs]
    if images_dir is not None:
        files, source, split = folder_files(images_dir), images_dir, IMAGES_SPLIT
    else:
        files, source = split_files(configs[0], split,
                                    split_source(workdirs[0], configs[0], split, data_dir))
        for workdir, config in zip(workdirs[1:], configs[1:], strict=True):
            if data_dir is None and artifact.is_export(workdir):
                continue  # it scores the files given; it does not know its own split
            theirs = (data_dir if data_dir is not None else config.data.dir,
                      config.data.val_fraction, config.train.seed)
            if theirs != (source, configs[0].data.val_fraction, configs[0].train.seed):
                log.warning("%s was split differently (data.dir, val_fraction, seed = %s); all "
                            "runs are evaluated on %s's %s split, which may hold its training "
                            "images", workdir, theirs, workdirs[0], split)

    results = [
        evaluate_run(w, split, step, source, max_images, batch_size=batch_size, files=files,
                     num_samples=num_samples, colour_strength=colour_strength)
        for w in workdirs
    ]
    common_set = set.intersection(*(set(r["files"]) for r in results))
    common = [f for f in results[0]["files"] if f in common_set]
    if not common:
        raise ValueError("the runs share no usable image")
    if any(len(r["files"]) != len(common) for r in results):
        log.warning("the runs skipped different images; comparing on the %d they share",
                    len(common))

    labels = [reports.run_label(r) for r in results]
    if len(set(labels)) < len(labels):  # same folder names: fall back to the given paths
        labels = [f"{w} @ {r['step']}" for w, r in zip(workdirs, results, strict=True)]
    rows, summaries, plotted, gray_rows, verdict_rows = [], [], [], {}, []
    for i, (label, report) in enumerate(zip(labels, results, strict=True)):
        per_image, curves = _subset(report, common)
        summary = metrics.summarize(per_image[MODEL])
        verdicts = metrics.verdicts(per_image[MODEL], per_image[GRAY])
        rows.append((label, summary))
        verdict_rows.append((label, verdicts))
        plotted.append((label, curves[MODEL].mean(axis=0),
                        reports.PALETTE[i % len(reports.PALETTE)], False))
        summaries.append({"label": label, "workdir": report["workdir"], "step": report["step"],
                          "image_size": report["image_size"],
                          "colour_strength": report["colour_strength"], "metrics": summary,
                          "verdicts": verdicts,
                          "acc_curve": curves[MODEL].mean(axis=0).tolist()})
        # The gray baseline depends only on the images and the resolution.
        gray_rows.setdefault(report["image_size"], (per_image[GRAY], curves[GRAY]))
    for size, (per_image, curves) in gray_rows.items():
        label = GRAY_LABEL if len(gray_rows) == 1 else f"{GRAY_LABEL} @ {size}px"
        rows.append((label, metrics.summarize(per_image)))
        plotted.append((label, curves.mean(axis=0), reports.GRAY_COLOUR, True))
    result = {"split": split, "data_dir": source, "num_images": len(common), "files": common,
              "runs": summaries,
              "gray_baseline": {str(size): metrics.summarize(p) for size, (p, _) in
                                gray_rows.items()},
              "table": reports.markdown_table(rows),
              "verdict_table": reports.verdict_table(verdict_rows)}

    grid_rows = []
    shown = [f for f in common if all(f in r["samples"] for r in results)]
    if shown:
        display = int(min(max(max(r["image_size"] for r in results), 128), 256))
        biggest = max(results, key=lambda r: r["image_size"])
        for f in shown:
            truth = resize(biggest["samples"][f][0], display, display)
            grid_rows.append([metrics.gray_baseline(truth[None])[0],
                              *(resize(r["samples"][f][1], display, display) for r in results),
                              truth])
    result["outputs"] = reports.write_comparison(
        out_dir or "eval_compare", result, plotted, grid_rows,
        ["gray input", *labels, "ground truth"])
    result["reports"] = results
    return result


def calibrate_run(workdir: str, step: Step = None, max_images: int | None = None, *,
                  data_dir: str | None = None, batch_size: int | None = None) -> dict[str, Any]:
    """Fits the colour strength of ``workdir``'s checkpoint ``step`` on its validation split
    (``calibration.RULE``; every usable validation image, or the first ``max_images``) and
    records it in the run folder (``runs.write_calibration``): from then on it is the default
    strength of that step everywhere. Returns the record with its ``step``."""
    report = evaluate_run(workdir, "validation", step, data_dir, max_images,
                          batch_size=batch_size, write=False)
    record = calibration.record(report["strength_curve"], "validation", "evaluate --calibrate")
    runs.write_calibration(workdir, report["step"], record)
    return {**record, "step": report["step"]}
