"""Shared fixtures: small synthetic photo folders written with OpenCV."""

from __future__ import annotations

import os
import tempfile

import cv2
import jax
import numpy as np
import pytest

from jaxcolor import cli, sharding
from jaxcolor import config as config_lib
from jaxcolor.training.checkpoints import Checkpointer
from jaxcolor.training.state import abstract_state, build_gan, fresh_state, run_once_options

# One persistent XLA compilation cache per test session, shared by the xdist workers and the
# command-line subprocesses they start (they inherit the variables): many tests compile the same
# tiny train steps, and a cache hit replaces a compile of tens of seconds. A fresh folder per
# session keeps suite timings honest; set JAXCOLOR_COMPILATION_CACHE to reuse one.
if cli.COMPILE_CACHE_ENV not in os.environ:
    os.environ[cli.COMPILE_CACHE_ENV] = tempfile.mkdtemp(prefix="jaxcolor-test-xla-")
# Every program, however quick to compile: the eager model tests compile hundreds of small
# per-op programs, and the worker that runs them second then reads them (BUILD.md).
os.environ.setdefault(cli.MIN_COMPILE_SECS_ENV, "0")
cli.enable_compile_cache()


def init_once(model, *args, **kwargs):
    """``model.init(*args, **kwargs)`` as one program compiled with the trainer's options for
    run-once programs (no LLVM optimisation on CPU). Eager ``init`` compiles a random-normal
    program per parameter shape instead, about 2 s each on CPU: most of the model tests' time."""
    return jax.jit(lambda *a: model.init(*a, **kwargs), compiler_options=run_once_options())(*args)


def trainer_state(gan, image_size: int, seed: int = 0):
    """``fresh_state`` placed as the trainer places it (replicated over all devices), for
    ``train_step.jit_train_step``: an unplaced state has other input types, and the step would
    compile a second program for it."""
    return fresh_state(gan, image_size, seed, sharding.replicated(sharding.make_mesh()))


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
    path = os.path.join(REPO, "experiments", f"{name}.py")
    return config_lib.load_file(f"{path}:{preset}" if preset else path)


def tiny_config(name: str, data_dir: str | None, image_size: int = 32, **train):
    """An experiment shrunk for tests: small images, batch 4, in-process data, few steps."""
    config = load_experiment(name)
    config.data.dir = data_dir
    config.data.image_size = image_size
    config.data.num_workers = 0
    config.data.num_val_images = 2
    if config.model.generator == "unet":
        config.model.num_downs = int(np.log2(image_size))
        # A quarter of pix2pix's widths: the same layers and code paths, a sixteenth of the
        # arithmetic, so the compile- and CPU-bound suite stays within its time budget.
        config.model.ngf = config.model.ndf = 16
    config.train.batch_size = 4
    config.train.num_steps = 3
    config.train.log_every = 1
    config.train.image_every = 1000
    config.train.eval_every = 1000
    config.train.checkpoint_every = 1000
    for key, value in train.items():
        config.train[key] = value
    return config


# Runs shared by the inference, evaluation and colorize tests, cached under the pytest base temp
# so they are trained once per session (per xdist worker).
def _run_config(experiment: str, photos: str, **overrides):
    c = load_experiment(experiment, "quick")
    c.data.dir, c.data.image_size, c.data.num_workers, c.data.num_val_images = photos, 32, 0, 2
    # Batch 4 at 32 px, as in ``tiny_config``: the LAB GAN's train step is then the same program
    # as the tests' other LAB GAN runs, and the session's compilation cache serves it.
    c.train.num_steps, c.train.batch_size, c.train.log_every = 3, 4, 1
    c.train.image_every, c.train.checkpoint_every = 100, 2
    if c.model.generator == "unet":
        c.model.num_downs, c.model.ngf, c.model.ndf = 5, 8, 8
    for key, value in overrides.items():
        section, name = key.split("__")
        c[section][name] = value
    return c


def tiny_run(factory, experiment: str, trained: bool, **overrides) -> str:
    """A tiny run: trained with ``train()``, or (``trained=False``) fresh weights saved with the
    trainer's Checkpointer at step 1, which costs no train-step compile."""
    root = factory.getbasetemp()
    photos = str(root / "jaxcolor_photos")
    if not os.path.isdir(photos):
        write_photos(photos, 12)
    tag = "_".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    workdir = str(root / f"jaxcolor_run_{experiment}_{int(trained)}_{tag}")
    if os.path.isdir(os.path.join(workdir, "checkpoints")):
        return workdir
    config = _run_config(experiment, photos, **overrides)
    if trained:
        from jaxcolor.training.loop import train

        train(config, workdir)
    else:
        # Random weights drawn on the host: compiling the U-Net's init costs ~15 s on CPU.
        gan = build_gan(config)
        rng = np.random.default_rng(1)
        abstract = abstract_state(gan, config.data.image_size)

        def fill(path, leaf):
            name = jax.tree_util.keystr(path)
            if not np.issubdtype(leaf.dtype, np.floating):
                return np.zeros(leaf.shape, leaf.dtype)
            if "'var'" in name or "'scale'" in name:
                return np.ones(leaf.shape, leaf.dtype)
            return rng.normal(0.0, 0.02, leaf.shape).astype(leaf.dtype)

        state = jax.tree_util.tree_map_with_path(fill, abstract)
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
        checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), every=1, keep=1)
        checkpointer.save(1, state, None, force=True)
        checkpointer.close()
    return workdir


@pytest.fixture(scope="session")
def lab_run(tmp_path_factory) -> str:
    """A LAB GAN run trained for 3 steps at 32 px (checkpoints at steps 2 and 3)."""
    return tiny_run(tmp_path_factory, "lab_gan", trained=True)


# Tests that start several training processes that wait for each other in collectives (Gloo):
# one xdist group runs them on one worker, in turn (``--dist loadgroup``, in pyproject.toml's
# addopts), so that two of them never share the 2 cores of CI, and first, so that the other
# worker's many short tests fill the time beside them.
MULTI_PROCESS = "multi_process"


# Tests whose set-up is costly per xdist worker run on one worker, so that it is paid once: the
# trained ``lab_run`` (a run per worker otherwise), and the eager model tests (hundreds of per-op
# programs; the session's compilation cache only helps a worker that comes second, and both
# workers otherwise reach them at the same time).
SHARED_SETUP = {"lab_run": lambda item: "lab_run" in item.fixturenames,
                "eager_models": lambda item: item.path.name in ("test_lab_gan_models.py",
                                                                "test_pix2pix_models.py")}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Groups of ``SHARED_SETUP``; multi-process tests first (see ``MULTI_PROCESS``), then the
    other ``slow`` ones, so that the many short tests come last and even out the two workers'
    ends (longest first: a long test dealt last would leave the other worker idle). The order is
    the same in every xdist worker (a stable sort of the same collection), as xdist requires."""
    for item in items:
        for group, member in SHARED_SETUP.items():
            if member(item) and item.get_closest_marker("xdist_group") is None:
                item.add_marker(pytest.mark.xdist_group(group))

    def in_group(item) -> bool:
        marker = item.get_closest_marker("xdist_group")
        return marker is not None and MULTI_PROCESS in (*marker.args, *marker.kwargs.values())

    items.sort(key=lambda item: (not in_group(item), item.get_closest_marker("slow") is None))


def pytest_collection_finish(session):
    """Fails the session where xdist's ``--dist loadgroup`` would silently ignore the groups
    (pytest-xdist#1386: pytest 9.2 ignores the group suffix xdist writes into the node id)."""
    if not hasattr(session.config, "workerinput") or not session.config.getvalue("loadgroup"):
        return
    grouped = [i for i in session.items if i.get_closest_marker("xdist_group") is not None]
    if grouped and "@" not in grouped[0].nodeid:
        raise pytest.UsageError(
            f"xdist_group is ignored by this pytest {pytest.__version__} and pytest-xdist: "
            "install the versions pyproject.toml's [test] extra asks for")
