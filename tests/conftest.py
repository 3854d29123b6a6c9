"""Shared fixtures: small synthetic photo folders written with OpenCV."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest


def synthetic_photo(seed: int, height: int = 48, width: int = 56) -> np.ndarray:
    """A colourful uint8 RGB image whose colours relate to its brightness (learnable from L)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    hue = (rng.random() + 0.6 * x + 0.3 * np.sin(6 * y + rng.random() * 6)) % 1.0
    value = 0.35 + 0.6 * (0.5 + 0.5 * np.cos(4 * x + 3 * y + rng.random() * 6))
    hsv = np.stack([hue * 179, np.full_like(hue, 200), value * 255], axis=-1).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def write_photos(root: str, n: int, ext: str = ".png", start: int = 0) -> list[str]:
    """Writes ``n`` synthetic photos under ``root``; returns their paths."""
    os.makedirs(root, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = os.path.join(root, f"{i:04d}{ext}")
        assert cv2.imwrite(path, cv2.cvtColor(synthetic_photo(i), cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


@pytest.fixture
def photo_dir(tmp_path) -> str:
    """A flat folder of 12 colourful PNG photos (no split layout: held-out split applies)."""
    root = str(tmp_path / "photos")
    write_photos(root, 12)
    return root


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_experiment(name: str, preset: str | None = None):
    """``experiments/<name>.py``'s config, as ``--config experiments/<name>.py[:preset]``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "experiments",
                                                                      f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def tiny_config(name: str, data_dir: str | None, image_size: int = 32, **train):
    """An experiment shrunk for tests: small images, batch 4, in-process data, few steps."""
    config = load_experiment(name)
    config.data.dir = data_dir
    config.data.image_size = image_size
    config.data.num_workers = 0
    config.data.num_val_images = 2
    if config.model.generator == "unet":
        config.model.num_downs = int(np.log2(image_size))
    config.train.batch_size = 4
    config.train.num_steps = 3
    config.train.log_every = 1
    config.train.image_every = 1000
    config.train.eval_every = 1000
    config.train.checkpoint_every = 1000
    for key, value in train.items():
        config.train[key] = value
    return config
