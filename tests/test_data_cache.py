"""The prepared data cache: written once, read through Grain, same examples as the photos."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, write_photos

from jaxcolor.data import ExampleMaker, train_dataset
from jaxcolor.data.cache import CachedExampleMaker, read_meta, write_cache


@pytest.fixture
def cached(tmp_path):
    files = write_photos(str(tmp_path / "photos"), 5)
    bad = str(tmp_path / "photos" / "broken.png")
    with open(bad, "wb") as f:
        f.write(b"\x89PNG not really")
    out = str(tmp_path / "cache" / "train.array_record")
    meta = write_cache([*files, bad], out, image_size=32)
    return files, out, meta


def test_cache_skips_bad_files_and_reproduces_augmented_examples(cached):
    files, out, meta = cached
    assert meta["count"] == 5 and meta["stored_size"] == 36
    assert len(meta["skipped"]) == 1 and "broken.png" in meta["skipped"][0]
    maker = CachedExampleMaker(out, 32, meta["stored_size"], augment=True)
    for i, path in enumerate(files):
        # Same rng draws on the same resized uint8 pixels: the same crop, flip and example.
        want = ExampleMaker(32, augment=True)(path, np.random.default_rng(i))
        got = maker(i, np.random.default_rng(i))
        for key in ("lab", "rgb"):
            np.testing.assert_allclose(got[key], want[key], atol=1e-5)


def test_train_dataset_reads_the_cache(cached):
    _, out, _ = cached
    batches = iter(train_dataset([], image_size=32, batch_size=4, seed=0, cache=out))
    for _ in range(3):  # more batches than records: the cache repeats like the files would
        batch = next(batches)
        assert batch["lab"].shape == (4, 32, 32, 3) and batch["rgb"].shape == (4, 32, 32, 3)
        assert np.abs(batch["rgb"]).max() <= 1.0 and len(batch["skipped"]) == 0


def test_cache_for_another_size_fails_naming_the_key(cached, tmp_path):
    _, out, _ = cached
    with pytest.raises(ValueError, match="data.image_size=64"):
        read_meta(out, 64)
    with pytest.raises(ValueError, match="data.cache"):
        read_meta(str(tmp_path / "missing.array_record"), 32)
    assert os.path.exists(out + ".json")


def test_command_writes_the_cache_of_a_split(tmp_path):
    write_photos(str(tmp_path / "photos" / "Train"), 3)
    write_photos(str(tmp_path / "photos" / "Test"), 2)
    out = tmp_path / "test.array_record"
    command = [sys.executable, "-m", "jaxcolor.data.cache", "--dir", str(tmp_path / "photos"),
               "--image_size", "32", "--out", str(out), "--split", "test", "--keep_grayscale"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"{out}: 2 images of 36 px, 0 skipped" in result.stdout
    assert json.loads((tmp_path / "test.array_record.json").read_text())["count"] == 2
    missing = subprocess.run([*command[:4], str(tmp_path / "nowhere"), *command[5:]],
                             capture_output=True, text=True, cwd=REPO, timeout=120)
    assert missing.returncode == 1 and missing.stderr.startswith("error: data.dir="), missing


def test_larger_cache_feeds_random_resized_crops(tmp_path):
    files = write_photos(str(tmp_path / "photos"), 2)
    out = str(tmp_path / "big.array_record")
    meta = write_cache(files, out, image_size=16, size=48)
    assert meta["stored_size"] == 48
    batches = iter(train_dataset([], image_size=16, batch_size=2, seed=0, cache=out,
                                 crop_scale=(0.1, 0.2)))
    margin = iter(train_dataset([], image_size=16, batch_size=2, seed=0, cache=out))
    crops, plain = next(batches)["rgb"], next(margin)["rgb"]
    assert crops.shape == plain.shape == (2, 16, 16, 3)
    assert np.abs(crops - plain).mean() > 0.05  # resized tenths of the image, not 16 px crops
