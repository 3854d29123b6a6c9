"""Measuring trained runs and exported models on images, always beside the trivial gray
prediction.

python -m jaxcolor.evaluate --workdir runs/lab_gan [--split test] [--step latest|best|N]
    [--config.data.dir=/path/to/data] [--max_images N] [--batch_size N] [--out DIR]
python -m jaxcolor.evaluate --workdir runs/lab_gan --images /path/to/photos   # every image
python -m jaxcolor.evaluate --workdir models/lab_gan --images /path/to/photos [--out DIR]
python -m jaxcolor.evaluate --compare runs/lab_gan runs/pix2pix ... [--out eval_compare]
python -m jaxcolor.evaluate --workdir runs/lab_gan --calibrate [--step N]   # fit the strength
    [--colour_strength S]   # any of the above at this colour strength (default: calibrated)

Images are listed, predicted and measured as the trainer's validation does them, beside the gray
prediction (ab = 0): ``jaxcolor.evaluation.scoring`` says how, and which metrics. The model is
scored at its colour strength (``--colour_strength``, else the strength calibrated for the
checkpoint, else 1.0) beside PSNR, AuC and CF over a range of strengths, per-image verdicts
against gray and, when the run fitted them, the training photos' mean-ab baselines.
``--calibrate`` fits the checkpoint's strength on the validation split
(``jaxcolor.evaluation.calibration``) and records it in the run folder.

An exported model (``python -m jaxcolor.export``) is scored as its run was, without the run,
giving the run's numbers: its metadata records the task, size, step and how the run skipped
images. It does not record its training data folder: give ``--images DIR``, or
``--config.data.dir=DIR`` for that folder's split (made with the run's ``val_fraction`` and seed).

Report files (``jaxcolor.evaluation.reports``): ``<split>-<step>.json`` and ``.csv``
(``images-<step>`` for ``--images``) in ``--out``, by default ``<run>/eval`` for a run and
``eval_<name>`` in the current directory for an exported model (never the export folder, which
may be read-only); and a printed markdown table whose ``n`` column counts the images scored.
``--compare`` evaluates every run on the first run's file list (each at its own resolution),
reports over the images all runs used, and writes a side-by-side table, a plot of the acc(t)
curves and a grid of the same images from each run into ``--out`` (default ``eval_compare``);
each run's own report goes where a single evaluation's would.
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxcolor import data, runs
from jaxcolor.cli import run_app
from jaxcolor.evaluation import reports, scoring
from jaxcolor.inference.predictor import check_colour_strength


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "Run directory or exported model to evaluate.")
    flags.DEFINE_multi_string("compare", None, "Run directories to compare: --compare A B C.")
    flags.DEFINE_enum("split", "test", list(data.SPLITS), "Split of the dataset.")
    flags.DEFINE_string("images", None, "Evaluate every image under this folder (recursive) "
                        "instead of a split.")
    flags.DEFINE_string("step", "latest", "Checkpoint: latest, best or a step number.")
    flags.DEFINE_string("config.data.dir", None, "Evaluate on this folder's split instead of the "
                        "run's data.dir.")
    flags.DEFINE_integer("max_images", None, "Evaluate at most this many images.", lower_bound=1)
    flags.DEFINE_integer("batch_size", None, "Images per device call (default: the run's).",
                         lower_bound=1)
    flags.DEFINE_string("out", None, "Folder for the report (default: <run>/eval for a run, "
                        "./eval_<name> for an exported model; --compare: eval_compare, for the "
                        "table and plots).")
    flags.DEFINE_integer("num_samples", 6, "--compare: images in the sample grid.", lower_bound=0)
    flags.DEFINE_float("colour_strength", None, "Score at this colour strength, 0 (gray) to 2 "
                       "(default: the strength calibrated for the checkpoint, else 1).")
    flags.DEFINE_bool("calibrate", False, "Fit the checkpoint's colour strength on the "
                      "validation split and record it in the run folder.")


def main(argv: Sequence[str]) -> None:
    """absl entry point; a run or data problem ends with its message and exit code 1
    (``run_app``)."""
    from absl import app, flags

    FLAGS = flags.FLAGS
    step = runs.parse_step(FLAGS.step)
    data_dir = FLAGS["config.data.dir"].value
    extra = list(argv[1:])
    strength = FLAGS.colour_strength
    if strength is not None:
        check_colour_strength(strength)
    if FLAGS.calibrate:
        if not FLAGS.workdir or FLAGS.compare or extra:
            raise app.UsageError("--calibrate takes one --workdir RUN")
        record = scoring.calibrate_run(FLAGS.workdir, step, FLAGS.max_images, data_dir=data_dir,
                                       batch_size=FLAGS.batch_size)
        print(reports.strength_table(record["curve"], calibrated=record["colour_strength"]))
        print(f"\nstep {record['step']}: colour_strength {record['colour_strength']:g} on "
              f"{record['n']} validation images ({record['rule']}); recorded in "
              f"{runs.calibration_path(FLAGS.workdir)}")
        return
    if FLAGS.compare:
        workdirs = ([FLAGS.workdir] if FLAGS.workdir else []) + list(FLAGS.compare) + extra
        result = scoring.compare_runs(workdirs, FLAGS.split, step, data_dir, FLAGS.max_images,
                              out_dir=FLAGS.out, batch_size=FLAGS.batch_size,
                              num_samples=FLAGS.num_samples, images_dir=FLAGS.images,
                              colour_strength=strength)
        print(f"{result['num_images']} {result['split']} images "
              f"({result['data_dir'] or 'built-in sample photos'})\n")
        print(result["table"])
        print(f"\nPer image against gray (ab = 0):\n\n{result['verdict_table']}")
        outputs = [o for r in result["reports"] for o in r["outputs"]] + result["outputs"]
    else:
        if not FLAGS.workdir:
            raise app.UsageError("give --workdir RUN, or --compare RUN RUN ...")
        if extra:
            raise app.UsageError(f"unexpected arguments {extra} (did you mean --compare?)")
        report = scoring.evaluate_run(FLAGS.workdir, FLAGS.split, step, data_dir, FLAGS.max_images,
                              batch_size=FLAGS.batch_size, images_dir=FLAGS.images,
                              out_dir=FLAGS.out,
                              colour_strength=strength)
        what = "" if report["split"] == scoring.IMAGES_SPLIT else f"{report['split']} "
        print(f"{report['experiment']} step {report['step']}: {report['num_images']} "
              f"{what}images at {report['image_size']}px "
              f"({report['data_dir'] or 'built-in sample photos'}), "
              f"{report['num_skipped']} skipped\n")
        print(reports.report_text(report))
        outputs = report["outputs"]
    print("\nwrote " + ", ".join(outputs))


def run() -> None:
    """Console entry point (``jaxcolor-evaluate``): the same flags as ``python -m``."""
    run_app(main, _define_flags)


if __name__ == "__main__":
    run()
