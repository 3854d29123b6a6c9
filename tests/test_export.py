"""Exported models: the round trip equals the run, the metadata describes the processing, the
folder runs without flax or Orbax, and the default step is the best checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, synthetic_photo, tiny_run

import jaxcolor
from jaxcolor import runs
from jaxcolor.artifacts import export as export_lib
from jaxcolor.artifacts import format as artifact


@pytest.fixture(scope="module")
def exported(lab_run, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("export") / "lab_gan")
    export_lib.export_run(lab_run, out)
    return out


def _images() -> list[np.ndarray]:
    # Several shape buckets, both orientations, a gray and a float input.
    return [synthetic_photo(1, 45, 70), synthetic_photo(2, 70, 45)[..., 0],
            synthetic_photo(3, 32, 32).astype(np.float32) / 255.0, synthetic_photo(4, 20, 90)]


def test_round_trip_equals_the_run(lab_run, exported):
    run_model = jaxcolor.load(lab_run, batch_size=2)
    model = jaxcolor.load(exported, batch_size=2)
    assert model.metadata["source"] == "export" and model.image_size == 32
    assert model.metadata["step"] == run_model.metadata["step"] == 3  # the best step
    for a, b in zip(run_model.colorize_many(_images()), model.colorize_many(_images()),
                    strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        scale = 255.0 if a.dtype == np.uint8 else 1.0
        np.testing.assert_allclose(a / scale, b / scale, atol=1e-5)
    truth = np.stack([synthetic_photo(i, 32, 32) for i in range(3)]).astype(np.float32) / 255
    np.testing.assert_allclose(run_model.predict_square(truth)[1],
                               model.predict_square(truth)[1], atol=1e-5)


def test_metadata_describes_the_model(lab_run, exported):
    with open(os.path.join(exported, artifact.METADATA_FILE)) as f:
        meta = json.load(f)
    assert meta["task"] == "lab" and meta["image_size"] == 32 and meta["step"] == 3
    assert set(meta["platforms"]) == {"cpu", "cuda"}
    assert "L / 50.0 - 1" in meta["preprocessing"]["cond"]
    assert "out * 110.0" in meta["postprocessing"]["output"]
    assert {"recombination", "gamut"} <= set(meta["postprocessing"])
    assert meta["jax_version"] and meta["serialization"]["format"] == "jax.export"
    recorded = runs.read_validation(lab_run, 3)
    assert meta["metrics"] == recorded and set(meta["metrics"]) == {"model", "gray_baseline"}
    # The step's calibrated colour strength is the export's default; the baselines travel.
    calibrated = runs.read_calibration(lab_run, 3)
    assert meta["colour_strength"] == calibrated["colour_strength"]
    assert meta["calibration"] == calibrated and meta["baselines"] == runs.read_baselines(lab_run)
    # Symbolic shapes: one program for every batch and size the generator allows.
    assert meta["input_shape"] == "(b, 4*h, 4*w, 1) float32"


def test_runs_without_flax_or_orbax(exported, tmp_path):
    script = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("flax", "orbax", "ml_collections", "optax"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import numpy as np
import jaxcolor
model = jaxcolor.load({exported!r})
out = model.colorize(np.full((24, 40), 128, np.uint8))
assert out.shape == (24, 40, 3) and out.dtype == np.uint8
assert not any(m.split(".")[0] in ("flax", "orbax") for m in sys.modules)
print("ok", model.metadata["step"])
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "3"]


@pytest.mark.slow
def test_cli_exports_a_numbered_step(lab_run, tmp_path):
    out = tmp_path / "step2"
    result = subprocess.run(
        [sys.executable, "-m", "jaxcolor.export", f"--workdir={lab_run}", "--step=2",
         f"--out={out}", "--platforms=cpu"], capture_output=True, text=True, cwd=REPO,
        timeout=300)
    assert result.returncode == 0, result.stderr
    assert "step 2" in result.stdout
    model = jaxcolor.load(str(out))
    assert model.metadata["step"] == 2
    missing = subprocess.run(
        [sys.executable, "-m", "jaxcolor.export", f"--workdir={tmp_path}", f"--out={out}"],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert missing.returncode == 1 and "config.json" in missing.stderr


def test_pix2pix_exports_with_symbolic_shapes(tmp_path_factory, tmp_path):
    run = tiny_run(tmp_path_factory, "pix2pix", trained=False)
    out = str(tmp_path / "p2p")
    meta = export_lib.export_run(run, out, platforms=("cpu",))
    assert meta["task"] == "gray_rgb" and meta["input_shape"] == "(b, 32*h, 32*w, 3) float32"
    image = synthetic_photo(5, 50, 80)
    np.testing.assert_array_equal(jaxcolor.load(out).colorize(image),
                                  jaxcolor.load(run).colorize(image))


def test_onnx_export_matches_jax(tmp_path_factory, tmp_path):
    pytest.importorskip("jax2onnx")
    pytest.importorskip("onnxruntime")
    for experiment in ("lab_gan", "pix2pix_lab"):
        run = tiny_run(tmp_path_factory, experiment, trained=False)
        meta = export_lib.export_run(run, str(tmp_path / experiment), platforms=("cpu",),
                                 formats=("jax", "onnx"))
        assert meta["onnx"]["max_abs_diff"] < 1e-4  # tanh outputs in [-1, 1]
        assert os.path.isfile(tmp_path / experiment / "generator.onnx")
