"""The benchmark commands: ``python -m jaxcolor.benchmark`` and the side-by-side driver's JAX half
(its PyTorch half needs the ``[bench]`` extra, which the test install leaves out)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO


def _side_by_side():
    spec = importlib.util.spec_from_file_location(
        "side_by_side", os.path.join(REPO, "benchmarks", "side_by_side.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_side_by_side_rows_give_the_configs_the_torch_side_builds():
    side = _side_by_side()
    config = side.row_config("pix2pix_lab:64:3")
    assert (config.data.image_size, config.train.batch_size) == (64, 3)
    spec = side.torch_spec(config)
    # The U-Net's depth, left to the size by the experiment, is explicit: the deepest 64 px allows.
    assert spec["num_downs"] == 6
    assert (spec["cond_ch"], spec["target_ch"], spec["batch_size"]) == (1, 2, 3)
    assert spec["loss"]["recon_weight"] == config.loss.recon_weight


@pytest.mark.slow
def test_benchmark_command_prints_inference_then_train_images_per_second():
    result = subprocess.run(
        [sys.executable, "-m", "jaxcolor.benchmark", "--config", "experiments/lab_gan.py",
         "--image_size", "32", "--batch_size", "2", "--steps", "1", "--warmup", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    # Scripts read the train step's figure from the end of the last line.
    assert re.search(r"\| step [\d.]+ ms \| [\d.]+ images/s$", lines[-1]), lines[-1]
    assert "G 1,734,626 / D" in lines[-1]
    assert any(re.search(r"G inference [\d.]+ images/s", line) for line in lines[:-1]), lines
    assert any("peak memory" in line for line in lines[:-1]), lines
