"""Evaluation: JSON/CSV reports with the gray baseline row, another data folder and step from
the command line, and ``--compare`` of two runs at different resolutions."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import synthetic_photo, tiny_run, write_photos

from jaxcolor import data, runs
from jaxcolor.evaluation import calibration, metrics, reports, scoring


@pytest.fixture(scope="module")
def pix2pix_run(tmp_path_factory) -> str:
    # Fresh weights at 64x64: the comparison must handle runs at different resolutions.
    return tiny_run(tmp_path_factory, "pix2pix", trained=False, data__image_size=64)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jaxcolor.evaluate", *args],
                          capture_output=True, text=True, timeout=300)


def test_evaluate_run_writes_json_and_csv_with_gray_row(lab_run):
    report = scoring.evaluate_run(lab_run, "test")
    n = report["num_images"]
    assert n >= 1 and report["step"] == 3 and report["image_size"] == 32
    stem = os.path.join(lab_run, "eval", "test-3")
    assert report["outputs"] == [stem + ".json", stem + ".csv", stem + "-strength.png"]
    assert cv2.imread(stem + "-strength.png").shape == (680, 760, 3)

    with open(stem + ".json") as f:
        saved = json.load(f)
    # The run fitted the training-photo baselines: scored beside gray.
    predictions = {"model", "gray_baseline", "mean_ab", "mean_ab_by_l"}
    assert set(saved["metrics"]) == predictions
    for row in saved["metrics"].values():
        assert set(row) == {key for key, _, _ in reports.COLUMNS}
        assert all(v["n"] == n for v in row.values())
        assert 0.0 <= row["auc"]["mean"] <= 100.0 and row["ssim"]["mean"] <= 1.0
    assert saved["files"] == report["files"] and len(saved["files"]) == n
    for curve in ("model", "gray_baseline"):
        acc = np.asarray(saved["acc_curve"][curve])
        assert acc.shape == (151,) and np.all(np.diff(acc) >= 0) and acc[-1] <= 1.0

    with open(stem + ".csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * n
    assert {r["prediction"] for r in rows} == predictions

    # The gray row is the ab = 0 prediction on the same images, at the model's resolution.
    maker = data.ExampleMaker(32)
    truth = np.stack([(maker(f)["rgb"] + 1.0) / 2.0 for f in report["files"]])
    want = metrics.image_metrics(metrics.gray_baseline(truth), truth)
    for key, values in want.items():
        assert saved["metrics"]["gray_baseline"][key]["mean"] == pytest.approx(values.mean(),
                                                                               abs=1e-3)
    assert saved["metrics"]["gray_baseline"]["cf"]["mean"] < 0.5

    table = reports.report_table(report).splitlines()
    assert table[0].startswith("| prediction | n | PSNR (dB) ↑ |")
    assert table[2].startswith(f"| {os.path.basename(lab_run)} @ 3 |")  # the model row first
    assert table[3].startswith("| gray (ab = 0) |")
    assert [line.split(" |")[0] for line in table[4:]] == [
        "| mean ab (training photos)", "| mean ab by L (training photos)"]


def test_cli_other_data_dir_step_and_limit(lab_run, tmp_path):
    root = tmp_path / "flickr"
    write_photos(str(root / "Train"), 2)
    test_dir = root / "Test"
    write_photos(str(test_dir), 3, start=10)
    gray = cv2.cvtColor(synthetic_photo(3), cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(test_dir / "0000_gray.png"), gray)  # sorted first: skipped, no colour
    (test_dir / "0001_bad.jpg").write_bytes(b"\xff\xd8 truncated")

    result = _cli("--workdir", lab_run, f"--config.data.dir={root}", "--step", "2",
                  "--max_images", "2")
    assert result.returncode == 0, result.stderr
    assert "| gray (ab = 0) |" in result.stdout and "2 test images" in result.stdout
    with open(os.path.join(lab_run, "eval", "test-2.json")) as f:
        saved = json.load(f)
    assert saved["step"] == 2 and saved["num_images"] == 2 and saved["num_skipped"] == 2
    assert all(f.startswith(str(test_dir)) for f in saved["files"])
    assert any("0001_bad.jpg" in r for r in saved["skipped"])

    only_gray = tmp_path / "gray"
    only_gray.mkdir()
    cv2.imwrite(str(only_gray / "a.png"), gray)
    with pytest.raises(ValueError, match="no usable image"):
        scoring.evaluate_run(lab_run, "test", data_dir=str(only_gray), write=False)


def test_cli_compare_two_runs(lab_run, pix2pix_run, tmp_path):
    out = tmp_path / "compare"
    result = _cli("--compare", lab_run, pix2pix_run, "--split", "test", "--out", str(out),
                  "--num_samples", "2", "--batch_size", "2")
    assert result.returncode == 0, result.stderr
    with open(out / "compare-test.json") as f:
        saved = json.load(f)
    n = saved["num_images"]
    assert [r["image_size"] for r in saved["runs"]] == [32, 64]
    assert all(r["metrics"]["auc"]["n"] == n for r in saved["runs"])
    assert set(saved["gray_baseline"]) == {"32", "64"}
    for label in (f"{os.path.basename(lab_run)} @ 3", f"{os.path.basename(pix2pix_run)} @ 1",
                  "gray (ab = 0) @ 32px", "gray (ab = 0) @ 64px"):
        assert f"| {label} |" in result.stdout
    # Metrics: header, rule, 4 rows; per image against gray: header, rule, a row per run.
    assert (out / "compare-test.md").read_text().count("\n|") == 6 + 4
    for summary in saved["runs"]:
        verdicts = summary["verdicts"]
        assert set(verdicts) == {"psnr", "ssim", "auc", "pixel_acc", "dcf"}
        assert all(0 <= v["beats"] <= n == v["n"] for v in verdicts.values())
        assert f"| {summary['label']} | {n} |" in result.stdout
    assert "| vs gray (ab = 0), per image | n | PSNR (dB) - gray | beats gray |" in result.stdout

    plot = cv2.imread(str(out / "acc_curves-test.png"))
    assert plot is not None and plot.shape == (500, 760, 3)
    grid = cv2.imread(str(out / "samples-test.png"))
    rows = min(2, n)  # gray input | 2 runs | truth, shown at 128 px
    assert grid.shape == (22 + rows * 130 + 2, 4 * 130 + 2, 3)
    # Each run also got its own report, on the same files.
    for run, step in ((lab_run, 3), (pix2pix_run, 1)):
        with open(os.path.join(run, "eval", f"test-{step}.json")) as f:
            assert json.load(f)["files"] == saved["files"]


def test_markdown_table_formats_mean_and_interval():
    summary = metrics.summarize({key: np.array([1.0, 3.0]) for key, _, _ in reports.COLUMNS})
    single = metrics.summarize({key: np.array([2.0]) for key, _, _ in reports.COLUMNS})
    table = reports.markdown_table([("a", summary), ("b", single)]).splitlines()
    assert len(table) == 4 and table[0].startswith("| prediction | n | PSNR")
    assert "| 2.00 ± 12.71 |" in table[2]  # t(0.975, 1) * 1 = 12.706
    assert table[3].startswith("| b | 1 | 2.00 | 2.000 |")  # no interval from one image


def test_trainer_validation_equals_evaluate(lab_run):
    """The trainer's logged val/<metric> is evaluate's number at colour strength 1 on the same
    files and step."""
    config = runs.read_config(lab_run)
    logged = runs.read_validation(lab_run, 3)
    assert logged is not None
    report = scoring.evaluate_run(lab_run, "validation", step=3, colour_strength=1.0,
                                   max_images=config.data.num_val_images, write=False)
    assert report["num_images"] == config.data.num_val_images
    for name in ("model", "gray_baseline"):
        for key, value in logged[name].items():
            assert report["metrics"][name][key]["mean"] == pytest.approx(value, abs=1e-5), key
    # The validation log's per-image verdicts and the colour strength it fitted are evaluate's.
    with open(os.path.join(lab_run, runs.VALIDATION_FILE)) as f:
        last = [json.loads(line) for line in f][-1]
    assert last["beats_gray"] == {k: v["beats"] for k, v in report["verdicts"].items()}
    stored = runs.read_calibration(lab_run, 3)
    assert stored["colour_strength"] == last["colour_strength"]
    assert stored["colour_strength"] == calibration.fit(report["strength_curve"])
    np.testing.assert_allclose(stored["curve"]["psnr"], report["strength_curve"]["psnr"],
                               atol=1e-9)


def test_images_scores_every_file_recursively(lab_run, tmp_path):
    root = tmp_path / "mine"
    write_photos(str(root), 3)
    write_photos(str(root / "deeper" / "still"), 4, ext=".jpg", start=20)
    write_photos(str(root / "Train"), 2, start=40)  # just a folder name here: scored too
    result = _cli("--workdir", lab_run, "--images", str(root), "--batch_size", "4")
    assert result.returncode == 0, result.stderr
    assert "step 3: 9 images at 32px" in result.stdout
    with open(os.path.join(lab_run, "eval", "images-3.json")) as f:
        saved = json.load(f)
    assert saved["num_images"] == 9 and saved["split"] == "images"
    assert saved["metrics"]["model"]["auc"]["n"] == 9
    # The printed metrics table's n column counts the images scored.
    lines = result.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| prediction | n |"))
    end = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
    rows = lines[first + 2 : end]
    assert len(rows) == 4 and all(line.split("|")[2].strip() == "9" for line in rows)


def test_test_only_folder_is_the_test_split(lab_run, tmp_path):
    root = tmp_path / "handed_over"
    write_photos(str(root / "Test"), 9)
    splits = data.find_splits(str(root))
    assert len(splits["test"]) == 9 and splits["train"] == []
    report = scoring.evaluate_run(lab_run, "test", data_dir=str(root), write=False)
    assert report["num_images"] == 9


def test_exported_model_scores_as_its_run_without_the_run(lab_run, tmp_path):
    """``--workdir EXPORT`` on a read-only export whose run is gone: the run's numbers, the
    report in ``--out``, nothing written into the export."""
    import shutil
    import stat

    from jaxcolor.artifacts import export as export_lib

    photos = str(tmp_path / "photos")
    write_photos(photos, 3)
    run = shutil.copytree(lab_run, tmp_path / "run")
    export = str(tmp_path / "lab_export")
    export_lib.export_run(str(run), export, step=2, platforms=("cpu",))
    shutil.rmtree(run)
    assert scoring.scored_config(export).train.batch_size == 4  # the run's, recorded
    before = sorted(os.listdir(export))  # a flat folder
    for name in before:
        os.chmod(os.path.join(export, name), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    os.chmod(export, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    try:
        out = tmp_path / "reports"
        result = _cli("--workdir", export, "--images", photos, "--out", str(out))
        with pytest.raises(ValueError, match="does not record its training data folder"):
            scoring.evaluate_run(export, "test", write=False)
        assert sorted(os.listdir(export)) == before
    finally:
        os.chmod(export, stat.S_IRWXU)
    assert result.returncode == 0, result.stderr
    with open(out / "images-2.json") as f:
        saved = json.load(f)
    want = scoring.evaluate_run(lab_run, step=2, images_dir=photos, write=False)
    assert saved["step"] == 2 and saved["source"] == "export"
    assert saved["num_images"] == want["num_images"] == 3
    got, run_metrics = saved["metrics"]["model"], want["metrics"]["model"]
    assert got["psnr"]["mean"] == pytest.approx(run_metrics["psnr"]["mean"], abs=0.05)
    # The same prediction, not merely a near-gray one: every metric, colourfulness included.
    assert run_metrics["cf"]["mean"] > 0.1 > want["metrics"]["gray_baseline"]["cf"]["mean"]
    for key, value in run_metrics.items():
        assert got[key]["mean"] == pytest.approx(value["mean"], rel=1e-4, abs=1e-4), key
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| prediction | n | PSNR (dB)")
    assert table[1].startswith("| lab_export @ 2 | 3 |")
    assert table[2].startswith("| gray (ab = 0) | 3 |")
    # Without --out, a folder named after the export in the current directory.
    assert scoring.report_stem(export, "images", 2) == os.path.join("eval_lab_export",
                                                                    "images-2")


def test_export_without_evaluation_facts_is_scored_with_the_defaults(tmp_path):
    """Exports written before ``evaluation`` was recorded: today's config defaults."""
    from jaxcolor import config as config_lib
    from jaxcolor.artifacts import format as artifact

    meta = {"format_version": artifact.FORMAT_VERSION, "experiment": "lab_gan", "task": "lab",
            "generator": "lab_gan", "image_size": 32, "step": 3}
    (tmp_path / artifact.METADATA_FILE).write_text(json.dumps(meta))
    config, base = scoring.scored_config(str(tmp_path)), config_lib.base_config()
    assert config.data.image_size == 32 and config.experiment == "lab_gan"
    for section, key in (("data", "skip_grayscale"), ("data", "max_pixels"),
                         ("data", "val_fraction"), ("train", "seed"), ("train", "batch_size")):
        assert config[section][key] == base[section][key], key
