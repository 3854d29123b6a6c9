"""Faults: non-finite steps, damaged checkpoints, a full disk, hostile photo folders."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, synthetic_photo, tiny_config, trainer_state, write_photos

from jaxcolor import data
from jaxcolor.training.checkpoints import (
    Checkpointer,
    CheckpointMismatchError,
    DamagedCheckpointError,
    DiskFullError,
    NonFiniteStateError,
    restore_newest,
)

# ----------------------------------------------------------------------- non-finite steps


def _batch(n: int = 4, size: int = 32) -> dict[str, np.ndarray]:
    maker = data.ExampleMaker(size)
    examples = [data.make_example(maker.resize(synthetic_photo(i), None) / 255.0) for i in range(n)]
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


@pytest.mark.slow  # its own train-step program: not in the fast subset
def test_skip_step_keeps_networks_and_advances_the_step():
    from jaxcolor.training.state import build_gan
    from jaxcolor.training.step import jit_train_step

    config = tiny_config("lab_gan", None, nonfinite="skip_step")
    gan = build_gan(config)
    state = trainer_state(gan, 32)
    step = jit_train_step(gan, config)
    good = _batch()
    bad = {k: v.copy() for k, v in good.items()}
    bad["lab"][0, 0, 0, 0] = np.nan  # one NaN pixel poisons every loss and gradient

    before = jax.device_get(state)
    after_bad, metrics = step(state, bad)
    assert float(metrics["finite"]) == 0.0
    assert int(after_bad.step) == 1
    for a, b in zip(jax.tree.leaves((before.g, before.d)),
                    jax.tree.leaves(jax.device_get((after_bad.g, after_bad.d))), strict=True):
        np.testing.assert_array_equal(a, b)  # params, BatchNorm statistics, Adam moments, count

    after_good, metrics = step(after_bad, good)
    assert float(metrics["finite"]) == 1.0 and int(after_good.step) == 2
    moved = [not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(before.g.params), jax.tree.leaves(jax.device_get(after_good.g.params)),
        strict=True)]
    assert any(moved)


def _restore_all(directory: str, like) -> dict[int, object]:
    checkpointer = Checkpointer(directory, every=1, keep=100)
    try:
        return {s: checkpointer.restore(like, None, s) for s in checkpointer.all_steps()}
    finally:
        checkpointer.close()


def _abstract_state(config):
    from jaxcolor.training.state import abstract_state, build_gan

    return abstract_state(build_gan(config), config.data.image_size)


def _finite(tree) -> bool:
    return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree)
               if np.issubdtype(np.asarray(x).dtype, np.floating))


@pytest.mark.slow
def test_diverging_run_stops_with_a_message_and_never_saves_nonfinite(lab_run, tmp_path):
    """The issue's run: recon_weight=1e38 makes the losses non-finite. Resumed from lab_run's
    finite checkpoints: exit status 1, 'non-finite' and the step in the message, only finite
    checkpoints on disk, and retention (keep 1) never deleted the last finite one."""
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(lab_run, workdir)
    photos = os.path.join(os.path.dirname(lab_run), "jaxcolor_photos")
    # lab_run's config (conftest._run_config), diverging, saving every step.
    flags = ["--config=experiments/lab_gan.py:quick", f"--config.data.dir={photos}",
             "--config.data.image_size=32", "--config.data.num_workers=0",
             "--config.data.num_val_images=2", "--config.train.batch_size=2",
             "--config.train.log_every=4", "--config.train.image_every=100",
             "--config.train.checkpoint_every=1", "--config.train.keep_checkpoints=1",
             "--config.train.num_steps=8", "--config.loss.recon_weight=1e38"]
    result = subprocess.run(
        [sys.executable, "-m", "jaxcolor.train", *flags, f"--workdir={workdir}"],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "resumed from step 3" in result.stdout
    assert "non-finite loss or gradient at step " in result.stderr, result.stderr
    assert "g_recon=" in result.stderr and "done" not in result.stdout
    bad_step = int(result.stderr.split("at step ")[1].split(" ")[0])
    assert bad_step >= 4
    from conftest import _run_config

    saved = _restore_all(str(workdir / "checkpoints"), _abstract_state(_run_config(
        "lab_gan", photos)))
    assert saved and max(saved) < bad_step, (sorted(saved), bad_step)
    assert max(saved) >= 3  # the newest finite checkpoint is still there
    assert all(_finite(s) for s in saved.values())


@pytest.mark.slow
def test_skip_step_run_saves_finite_checkpoints_and_counts_skips(photo_dir, tmp_path):
    from test_train_loop import _scalars

    from jaxcolor.training.loop import train

    config = tiny_config("lab_gan", photo_dir, num_steps=4, checkpoint_every=2,
                         nonfinite="skip_step")
    config.loss.recon_weight = 1e38
    state = train(config, str(tmp_path / "run"))
    assert int(state.step) == 4 and _finite((state.g, state.d))
    skipped = _scalars(tmp_path / "run", "train/skipped_steps")
    assert skipped[4] >= 1 and list(skipped.values()) == sorted(skipped.values())
    saved = _restore_all(str(tmp_path / "run/checkpoints"), _abstract_state(config))
    assert sorted(saved) == [2, 4] and all(_finite(s) for s in saved.values())


def test_checkpointer_refuses_nonfinite_state(tmp_path):
    checkpointer = Checkpointer(str(tmp_path / "ck"), every=1, keep=1)
    checkpointer.save(1, {"w": np.ones(3, np.float32)}, None)
    with pytest.raises(NonFiniteStateError, match="non-finite"):
        checkpointer.save(2, {"w": np.array([1.0, np.inf, 0.0], np.float32)}, None)
    checkpointer.close()
    assert Checkpointer(str(tmp_path / "ck"), every=1, keep=1).all_steps() == [1]


def test_config_rejects_unknown_nonfinite_mode():
    from jaxcolor.training.step import check_names

    config = tiny_config("lab_gan", None, nonfinite="ignore")
    with pytest.raises(ValueError, match=r"train\.nonfinite='ignore' is invalid: one of"):
        check_names(config)


# ----------------------------------------------------------------------- damaged checkpoints


def _state(value: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(int(value))
    return {"w": rng.random(4096).astype(np.float32) + value, "b": np.full(3, value, np.float32)}


def _three_checkpoints(directory: str) -> None:
    checkpointer = Checkpointer(directory, every=1, keep=3)
    for step in (1, 2, 3):
        checkpointer.save(step, _state(step), None)
    checkpointer.close()


def _largest_data_file(step_dir: str) -> str:
    files = [f for f in glob.glob(os.path.join(step_dir, "**", "*"), recursive=True)
             if os.path.isfile(f) and "/d/" in f]
    return max(files, key=os.path.getsize)


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_newest_checkpoint_is_moved_aside_and_the_next_restores(tmp_path, damage):
    directory = str(tmp_path / "ck")
    _three_checkpoints(directory)
    victim = _largest_data_file(os.path.join(directory, "3"))
    if damage == "truncate":
        with open(victim, "r+b") as f:
            f.truncate(os.path.getsize(victim) // 2)
    else:
        os.remove(victim)

    messages = []
    checkpointer = Checkpointer(directory, every=1, keep=3)
    state = checkpointer.restore_latest(_state(0), None, warn=messages.append)
    np.testing.assert_array_equal(state["w"], _state(2)["w"])
    assert checkpointer.all_steps() == [1, 2]
    assert os.path.isdir(os.path.join(directory, "damaged-3"))
    assert len(messages) == 1 and "damaged" in messages[0]
    assert os.path.join(directory, "3") in messages[0]
    # The run goes on: the next save at step 3 works and the damaged folder stays aside.
    checkpointer.save(3, _state(3), None)
    checkpointer.close()
    assert Checkpointer(directory, every=1, keep=3).all_steps() == [1, 2, 3]


def test_every_checkpoint_damaged_names_each_folder(tmp_path):
    directory = str(tmp_path / "ck")
    _three_checkpoints(directory)
    for step in (1, 2, 3):
        os.remove(_largest_data_file(os.path.join(directory, str(step))))
    checkpointer = Checkpointer(directory, every=1, keep=3)
    with pytest.raises(DamagedCheckpointError, match="damaged") as error:
        restore_newest(directory, checkpointer.all_steps(),
                       lambda s: checkpointer.restore(_state(0), None, s), warn=lambda m: None)
    for step in (1, 2, 3):
        assert os.path.join(directory, str(step)) in str(error.value)
    # Readers (move_aside=False) leave the folders where they are.
    assert checkpointer.all_steps() == [1, 2, 3]


def test_other_configuration_is_not_taken_for_damage(tmp_path):
    directory = str(tmp_path / "ck")
    _three_checkpoints(directory)
    checkpointer = Checkpointer(directory, every=1, keep=3)
    other = {"w": np.zeros(10, np.float32), "b": np.zeros(3, np.float32)}
    with pytest.raises(CheckpointMismatchError, match="other shapes"):
        checkpointer.restore_latest(other, None)
    assert checkpointer.all_steps() == [1, 2, 3]
    assert not glob.glob(os.path.join(directory, "damaged-*"))


@pytest.mark.slow
def test_training_resumes_past_a_damaged_checkpoint(lab_run, tmp_path):
    """lab_run has checkpoints at steps 2 and 3; with 3 truncated, training resumes from 2."""
    import shutil

    from conftest import _run_config

    from jaxcolor.training.loop import train

    workdir = str(tmp_path / "run")
    shutil.copytree(lab_run, workdir)
    victim = _largest_data_file(os.path.join(workdir, "checkpoints", "3"))
    with open(victim, "r+b") as f:
        f.truncate(1)
    photos = os.path.join(os.path.dirname(lab_run), "jaxcolor_photos")
    state = train(_run_config("lab_gan", photos), workdir)
    assert int(state.step) == 3
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "damaged-3"))
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "3"))


# ----------------------------------------------------------------------- full disk


def _mount_tmpfs(path: str, size: str) -> bool:
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                          capture_output=True).returncode == 0


def test_disk_full_while_saving_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    mount = str(tmp_path / "small_disk")
    real_disk = _mount_tmpfs(mount, "512k")
    try:
        directory = os.path.join(mount, "ck")
        checkpointer = Checkpointer(directory, every=1, keep=3)
        checkpointer.save(1, _state(1), None)
        checkpointer.wait()
        big = {"w": np.random.default_rng(0).random(1 << 18).astype(np.float32),
               "b": np.zeros(3, np.float32)}  # 1 MiB of incompressible floats
        if not real_disk:  # no tmpfs (not root): the writer fails as a full disk makes it fail
            def full(*args, **kwargs):
                raise OSError(28, "No space left on device")

            monkeypatch.setattr(checkpointer._manager, "save", full)
        with pytest.raises(DiskFullError, match="disk full") as error:
            checkpointer.save(2, big, None)
            checkpointer.wait()
        assert "intact (steps [1])" in str(error.value) and directory in str(error.value)
        monkeypatch.undo()
        assert not glob.glob(os.path.join(directory, "*tmp*"))
        again = Checkpointer(directory, every=1, keep=3)
        assert again.all_steps() == [1]
        np.testing.assert_array_equal(again.restore(_state(0), None)["w"], _state(1)["w"])
        again.close()
    finally:
        if real_disk:
            subprocess.run(["umount", "-l", mount], check=False)


# ----------------------------------------------------------------------- hostile folders


def test_symlink_loops_end_and_files_are_listed_once(tmp_path):
    root = tmp_path / "photos"
    write_photos(str(root / "a"), 3)
    os.symlink(str(root), str(root / "a" / "loop"))  # a -> .. -> a -> ...
    os.symlink(str(root / "a"), str(root / "alias"))
    os.symlink(str(root / "a" / "0001.png"), str(root / "link.png"))
    listed = data.list_images(str(root))
    assert len(listed) == 3, listed
    assert len({os.path.realpath(p) for p in listed}) == 3


def test_unreadable_and_broken_files_are_skipped_and_counted(tmp_path):
    root = tmp_path / "photos"
    write_photos(str(root), 4)
    os.symlink(str(root / "missing.png"), str(root / "broken.png"))
    locked = str(root / "0000.png")
    os.chmod(locked, 0)
    try:
        listed = data.list_images(str(root))
        assert len(listed) == 5 and str(root / "broken.png") in listed
        # root reads anything: then only the broken link is unreadable.
        bad = {"broken.png"} | (set() if os.access(locked, os.R_OK) else {"0000.png"})
        batches, skipped = data.eval_batches(listed, image_size=16, batch_size=2)
        assert {name for name in ("broken.png", "0000.png")
                if any(name in reason for reason in skipped)} == bad
        assert len(skipped) == len(bad)
        assert sum(int(b["valid"].sum()) for b in batches) == 5 - len(bad)
    finally:
        os.chmod(locked, 0o644)


def test_images_over_max_pixels_are_skipped_before_decoding(tmp_path):
    small, big = write_photos(str(tmp_path), 1)[0], str(tmp_path / "big.png")
    import cv2

    assert cv2.imwrite(big, np.zeros((400, 500, 3), np.uint8) + 60)
    maker = data.ExampleMaker(16, skip_grayscale=False, max_pixels=100_000)
    assert not isinstance(maker(small), data.Skipped)
    skipped = maker(big)
    assert isinstance(skipped, data.Skipped) and "over the limit" in skipped.reason
    assert "big.png" in skipped.reason
    ds = data.train_dataset([small, big], image_size=16, batch_size=2, seed=0, augment=False,
                            skip_grayscale=False, max_pixels=100_000)
    batch = next(iter(ds))
    assert any("over the limit" in r for r in batch["skipped"])
    from jaxcolor.config import base_config

    assert base_config().data.max_pixels == 100_000_000


# ----------------------------------------------------------------------- kill -9

KILL_SEED = 20261125  # the kill moments are random but reproducible
KILL_STEPS = 10


def _kill_flags(photo_dir: str) -> list[str]:
    return ["--config=experiments/lab_gan.py", f"--config.data.dir={photo_dir}",
            "--config.data.image_size=32", "--config.train.batch_size=4",
            "--config.data.num_workers=0", "--config.data.num_val_images=2",
            f"--config.train.num_steps={KILL_STEPS}", "--config.train.log_every=1",
            "--config.train.checkpoint_every=1", "--config.train.keep_checkpoints=2",
            "--config.train.image_every=1000", "--config.train.eval_every=1000"]


def _steps_on_disk(checkpoints: str) -> list[int]:
    names = os.listdir(checkpoints) if os.path.isdir(checkpoints) else []
    return sorted(int(n) for n in names if n.isdigit())


def _saving(checkpoints: str) -> bool:
    return bool(glob.glob(os.path.join(checkpoints, "*.orbax-checkpoint-tmp*")))


@pytest.mark.slow
def test_kill_9_at_random_moments_resumes_to_the_uninterrupted_result(photo_dir, tmp_path):
    """kill -9 during start-up, in the middle of a save and at a random moment of training;
    each run resumes; the final parameters and data position equal an uninterrupted run's,
    bitwise. A shared persistent compilation cache keeps the restarts cheap."""
    import time

    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    workdir = tmp_path / "killed"
    checkpoints = str(workdir / "checkpoints")
    command = [sys.executable, "-m", "jaxcolor.train", *_kill_flags(photo_dir),
               f"--workdir={workdir}"]
    rng = np.random.default_rng(KILL_SEED)
    log_file = open(tmp_path / "killed.log", "w")  # noqa: SIM115 - shared by the rounds
    moments = []

    def wait_for(condition, proc, timeout=300.0) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            if condition():
                return True
            time.sleep(0.002)
        return False

    for moment in ("during a save", "start-up", "training"):
        before = _steps_on_disk(checkpoints)
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO,
                                env=env)
        if moment == "during a save":
            hit = wait_for(lambda: _saving(checkpoints), proc)
        elif moment == "start-up":
            time.sleep(rng.uniform(0.5, 3.0))
            hit = proc.poll() is None
        else:
            hit = wait_for(lambda b=before: _steps_on_disk(checkpoints)[-1:] > b[-1:], proc)
            time.sleep(rng.uniform(0.0, 0.3))
        proc.kill()  # SIGKILL: no handler runs, no save completes
        proc.wait()
        moments.append((moment, hit, _saving(checkpoints), _steps_on_disk(checkpoints)))
    # The first kill was sent while a save was in progress (its temporary folder on disk).
    assert moments[0][1], moments
    assert max(_steps_on_disk(checkpoints)) < KILL_STEPS, moments

    final = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                           timeout=600)
    log_file.close()
    output = (tmp_path / "killed.log").read_text()
    assert final.returncode == 0, output
    assert "resumed from step" in output

    straight = subprocess.run(command[:-1] + [f"--workdir={tmp_path / 'straight'}"], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stdout + straight.stderr
    like = _abstract_state(tiny_config("lab_gan", photo_dir))
    killed = _restore_all(checkpoints, like)[KILL_STEPS]
    straight = _restore_all(str(tmp_path / "straight/checkpoints"), like)[KILL_STEPS]
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(killed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    position = lambda root: [open(p).read() for p in sorted(  # noqa: E731
        glob.glob(os.path.join(root, str(KILL_STEPS), "data", "*.json")))]
    assert position(checkpoints) == position(str(tmp_path / "straight/checkpoints"))
    assert position(checkpoints)


def test_readers_fall_back_past_a_damaged_checkpoint_or_name_it(lab_run, tmp_path, caplog):
    """``jaxcolor.load`` (evaluate, colorize, export, serve) on a run whose newest checkpoint is
    damaged: latest falls back to the next newest with a warning naming the folder; an explicit
    step fails with a message naming it. Nothing is moved: a trainer may own the folder."""
    import shutil

    import jaxcolor
    from jaxcolor.training.checkpoints import DamagedCheckpointError

    workdir = str(tmp_path / "run")
    shutil.copytree(lab_run, workdir)
    damaged = os.path.join(workdir, "checkpoints", "3")
    for path in glob.glob(os.path.join(damaged, "**", "d", "*"), recursive=True):
        with open(path, "r+b") as f:  # every data file: G's arrays are certainly among them
            f.truncate(1)
    with caplog.at_level("WARNING"):
        model = jaxcolor.load(workdir)
    assert model.metadata["step"] == 2
    assert any("damaged" in r.message and damaged in r.message for r in caplog.records)
    with pytest.raises(DamagedCheckpointError, match=f"checkpoint {damaged} is damaged"):
        jaxcolor.load(workdir, step=3)
    assert os.path.isdir(damaged)
