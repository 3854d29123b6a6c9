"""The trainer end to end: resume equality, CLI runs, signals, config errors."""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import REPO, tiny_config

from jaxcolor import config as config_lib
from jaxcolor.training.loop import train
from jaxcolor.training.step import check_names


def _checkpoint_steps(workdir) -> list[int]:
    names = os.listdir(os.path.join(workdir, "checkpoints"))
    return sorted(int(n) for n in names if n.isdigit())


def _scalars(workdir, tag: str) -> dict[int, float]:
    """Scalar values logged under ``tag``, by step, read back from the TensorBoard event file."""
    import struct

    from tensorboardX.proto import event_pb2

    values = {}
    for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
        with open(path, "rb") as f:
            while header := f.read(12):
                (length,) = struct.unpack("<Q", header[:8])
                event = event_pb2.Event.FromString(f.read(length))
                f.read(4)
                for v in event.summary.value:
                    if v.tag == tag:
                        values[event.step] = v.simple_value
    return values


def _leaves(state):
    return jax.tree.leaves(jax.device_get((state.g, state.d, state.step)))


def test_resume_gives_the_same_parameters_and_batches(photo_dir, tmp_path):
    straight = tiny_config("lab_gan", photo_dir, num_steps=6, checkpoint_every=3)
    full = train(straight, str(tmp_path / "straight"))

    first = tiny_config("lab_gan", photo_dir, num_steps=3, checkpoint_every=3)
    train(first, str(tmp_path / "resumed"))
    second = tiny_config("lab_gan", photo_dir, num_steps=6, checkpoint_every=3)
    resumed = train(second, str(tmp_path / "resumed"))

    assert int(resumed.step) == int(full.step) == 6
    for a, b in zip(_leaves(full), _leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    # Parameters depend on every batch seen, but check the data position directly too.
    assert _checkpoint_steps(tmp_path / "resumed") == [3, 6]
    data_state = lambda run: open(  # noqa: E731
        glob.glob(str(tmp_path / run / "checkpoints/6/data/*.json"))[0]).read()
    assert data_state("straight") == data_state("resumed")


@pytest.mark.slow  # 5 saves and evaluations of a real run: not in the fast subset
def test_keeps_newest_checkpoints_and_the_best(photo_dir, tmp_path):
    # Lowest validation L1 is best; steps 1..5 are evaluated, checkpoints kept: newest 2 + best.
    config = tiny_config("lab_gan", photo_dir, num_steps=5, checkpoint_every=1,
                         keep_checkpoints=2, eval_every=1, best_metric="l1")
    state = train(config, str(tmp_path / "run"))
    assert int(state.step) == 5
    with open(tmp_path / "run/checkpoints/best_step.json") as f:
        best = json.load(f)
    assert best["metric"] == "l1" and 1 <= best["step"] <= 5
    assert _checkpoint_steps(tmp_path / "run") == sorted({4, 5, best["step"]})
    assert not glob.glob(str(tmp_path / "run/checkpoints/*tmp*"))
    # The recorded value is the best of the logged validation values.
    values = _scalars(tmp_path / "run", "val/l1")
    assert len(values) == 5
    assert best["value"] == pytest.approx(min(values.values()), rel=1e-6)
    assert best["step"] == min(values, key=values.get)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train.num_steps", -1, "train.num_steps"),
        ("data.image_size", 30, "data.image_size"),
        ("train.batch_size", 0, "train.batch_size"),
        ("optim.d_updates", 0, "optim.d_updates"),
        ("data.task", "hsv", "data.task"),
        ("model.generator", "resnet", "model.generator"),
        ("loss.adversarial", "wasserstein", "loss.adversarial"),
        ("train.compute_dtype", "float16", "train.compute_dtype"),
    ],
)
def test_invalid_values_fail_naming_the_key(key, value, message):
    """What the trainer checks before any work: values (config) and names (their registries)."""
    config = tiny_config("pix2pix_lab", None)
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=f"config key {re.escape(message)}=.* is invalid"):
        config_lib.validate(config)
        check_names(config)


def test_trainer_checks_names_before_any_work(tmp_path):
    config = tiny_config("lab_gan", None)
    config.loss.reconstruction = "vgg"
    with pytest.raises(ValueError, match=r"config key loss\.reconstruction='vgg' is invalid"):
        train(config, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")


def test_batch_not_divisible_by_devices_fails_clearly():
    config = tiny_config("lab_gan", None)
    config.train.batch_size = 6
    with pytest.raises(ValueError, match=r"train\.batch_size.*device count \(4\)"):
        config_lib.validate(config, num_devices=4)


def test_unet_depth_checked_against_image_size():
    config = tiny_config("pix2pix", None, image_size=48)
    config.model.num_downs = 5
    with pytest.raises(ValueError, match=r"model\.num_downs.*num_downs <= 4"):
        config_lib.validate(config)


def _cli(args, workdir, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "jaxcolor.train", *args, f"--workdir={workdir}"],
        capture_output=True, text=True, cwd=REPO, timeout=600, **kwargs,
    )


TINY_FLAGS = [
    "--config.data.image_size=32", "--config.train.batch_size=4", "--config.train.num_steps=3",
    "--config.train.log_every=1", "--config.train.image_every=3", "--config.data.num_workers=0",
    "--config.data.num_val_images=2",
]


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["lab_gan", "pix2pix", "pix2pix_lab"])
def test_cli_run_writes_checkpoint_events_and_samples(experiment, photo_dir, tmp_path):
    workdir = tmp_path / experiment
    # No --config.model.num_downs: the U-Net's depth follows the image size (5 at 32 px). The
    # U-Nets run narrow, at the widths and batch of tests/fixtures/wave1_pix2pix_lab: for
    # pix2pix_lab, test_old_runs then resumes that run with this same train step, and the
    # session's compilation cache compiles it once.
    narrow = ([] if experiment == "lab_gan" else
              ["--config.model.ngf=4", "--config.model.ndf=4", "--config.train.batch_size=2"])
    result = _cli([f"--config=experiments/{experiment}.py", f"--config.data.dir={photo_dir}",
                   *TINY_FLAGS, *narrow], workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "params" in out and "1 device(s)" in out, out
    assert os.path.isdir(workdir / "checkpoints" / "3")
    assert glob.glob(str(workdir / "events.out.tfevents.*"))
    assert glob.glob(str(workdir / "samples" / "val_samples_0000003.png"))
    assert os.path.isfile(workdir / "config.json")
    # Each validation says on how many images the model beats gray, and fits the strength.
    assert re.search(r"validation at step 3: beats gray on \d/2 \(PSNR\), \d/2 \(AuC\); at "
                     r"the calibrated colour_strength [\d.]+: \d/2", out), out
    assert set(_scalars(workdir, "val/beats_gray_auc")) == {3}
    assert json.loads((workdir / "calibration.json").read_text())["3"]["n"] == 2
    assert json.loads((workdir / "baselines.json").read_text())["images"] >= 1


def test_cli_unknown_key_fails_before_work(tmp_path):
    result = _cli(["--config=experiments/lab_gan.py", "--config.train.num_stepz=3"],
                  tmp_path / "w")
    assert result.returncode != 0
    assert "num_stepz" in result.stderr
    assert not os.path.exists(tmp_path / "w")


def test_cli_invalid_value_fails_naming_the_key(tmp_path):
    result = _cli(["--config=experiments/lab_gan.py", "--config.data.image_size=30"],
                  tmp_path / "w")
    assert result.returncode != 0
    assert "data.image_size" in result.stderr


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_that_resumes(photo_dir, tmp_path):
    workdir = tmp_path / "run"
    flags = ["--config=experiments/lab_gan.py", f"--config.data.dir={photo_dir}", *TINY_FLAGS,
             "--config.train.num_steps=100000", "--config.train.image_every=100000",
             "--config.train.eval_every=100000"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "jaxcolor.train", *flags, f"--workdir={workdir}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
    )
    lines = []
    deadline = time.time() + 300
    for line in proc.stdout:  # wait until training runs (a progress line per step)
        lines.append(line)
        progress = re.match(r"\[\s*(\d+)/100000", line)
        if (progress and int(progress.group(1)) >= 2) or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=300)
    output = "".join(lines) + rest
    assert proc.returncode == 0, output
    assert "SIGTERM: stopped at step" in output and "Resume with:" in output, output
    stopped = int(output.split("stopped at step ")[1].split(",")[0])
    assert stopped >= 2
    assert os.path.isdir(workdir / "checkpoints" / str(stopped))
    # Stopped between validations: the saved step gets its colour strength all the same.
    calibrated = json.loads((workdir / "calibration.json").read_text())
    assert list(calibrated) == [str(stopped)]

    resumed = _cli(flags[:-2] + ["--config.train.num_steps=" + str(stopped + 1)], workdir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed from step {stopped}" in resumed.stdout
    assert os.path.isdir(workdir / "checkpoints" / str(stopped + 1))
