"""Multi-process training on this machine: JAX's multi-controller runtime over a loopback
coordinator, CPU devices faked with ``--xla_force_host_platform_device_count``.

Every process reads its rows of the same global batches (one global shuffle; see
``data.GlobalBatches``), so 2 processes x 2 devices and 1 process x 4 devices train on the same
batches, bad files included, and the data position saved in checkpoints is global: a run saved by
2 processes resumes with 1, and one saved by 1 resumes with 2.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import MULTI_PROCESS, REPO, load_experiment, write_photos
from test_train_loop import TINY_FLAGS, _scalars

from jaxcolor import data
from jaxcolor.training.checkpoints import Checkpointer

LOSSES = ("train/d_loss", "train/g_adv", "train/g_recon", "train/d_real", "train/d_fake")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
            "PYTHONUNBUFFERED": "1"}


def _flags(photo_dir, workdir, num_steps: int) -> list[str]:
    # A checkpoint (with its data position) at every step, all kept, to compare step by step.
    return ["--config=experiments/lab_gan.py", f"--config.data.dir={photo_dir}", *TINY_FLAGS,
            f"--config.train.num_steps={num_steps}", "--config.train.image_every=100000",
            "--config.train.eval_every=100000", "--config.train.checkpoint_every=1",
            "--config.train.keep_checkpoints=100", f"--workdir={workdir}"]


def _launch_pair(flags: list[str]) -> list[subprocess.Popen]:
    address = f"127.0.0.1:{_free_port()}"
    return [
        subprocess.Popen(
            [sys.executable, "-m", "jaxcolor.train", *flags, f"--coordinator_address={address}",
             "--num_processes=2", f"--process_id={i}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=_env(2),
        )
        for i in range(2)
    ]


def _finish(procs, timeout=400) -> list[str]:
    outs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=timeout)
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p in procs:
        assert p.returncode == 0, "\n----\n".join(outs)
    return outs


def _single(flags: list[str]) -> str:
    """The trainer as 1 process with 4 devices; returns its output."""
    result = subprocess.run([sys.executable, "-m", "jaxcolor.train", *flags],
                            capture_output=True, text=True, cwd=REPO, env=_env(4), timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 device(s) (cpu), 1 process(es)" in result.stdout, result.stdout
    return result.stdout


def _position(workdir, step: int) -> dict:
    with open(workdir / "checkpoints" / str(step) / "data" / "position.json") as f:
        return json.load(f)


def _steps(workdir) -> list[int]:
    return sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())


def _truncated_copy(src, dst, last_step: int) -> None:
    """``src`` as it was when its checkpoint ``last_step`` was the newest one."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("events.out.tfevents.*"))
    for step in _steps(dst):
        if step > last_step:
            shutil.rmtree(dst / "checkpoints" / str(step))


def _reference_positions(photo_dir, steps: int) -> list[dict]:
    """The data positions after each of ``steps`` global batches, as one process reads them:
    the trainer's own split and dataset, built in this process."""
    config = load_experiment("lab_gan")
    splits = data.find_splits(photo_dir, config.data.val_fraction, config.train.seed)
    batches = data.train_dataset(splits["train"], image_size=32, batch_size=4,
                                 seed=config.train.seed, augment=config.data.augment,
                                 skip_grayscale=config.data.skip_grayscale,
                                 max_pixels=config.data.max_pixels)
    positions = []
    for _ in range(steps):
        next(batches)
        positions.append(batches.get_state())
    batches.close()
    return positions


@pytest.mark.slow
@pytest.mark.xdist_group(MULTI_PROCESS)
def test_one_and_two_processes_same_batches_and_elastic_resume(photo_dir, tmp_path):
    """1 process x 4 devices from scratch; a copy of it resumed by 2 processes x 2 devices
    (elastic 1 -> 2) and stopped by a signal to one process; that resumed by 1 process again
    (elastic 2 -> 1). Four trainer processes, three of which compile: the second 1-process run
    loads its program from the session's compilation cache (2-process runs do not use it)."""
    # Unusable files among the photos: rows skip and refill, and positions must count them.
    for name in ("0003_empty.png", "0007_text.jpg", "0010_empty.png"):
        with open(os.path.join(photo_dir, name), "wb") as f:
            f.write(b"" if name.endswith(".png") else b"not a jpeg")
    process_1 = slice(2, 4)  # rows 2 and 3 of the global batch of 4

    def skips(reference, s: int, rows: slice = slice(None)) -> int:
        return sum(reference[s - 1]["row_skips"][rows]) if s else 0

    # The 2-process run resumes at `start`, chosen so that process 1's rows skip a file in its
    # first two steps: the check of the logged skip count below could not fail otherwise.
    reference = _reference_positions(photo_dir, 30)
    start = next((s for s in range(2, 28)
                  if skips(reference, s + 2, process_1) > skips(reference, s, process_1)), None)
    assert start is not None, f"no skip in process 1's rows: {reference}"
    after = start + 2

    # 1 process x 4 devices from scratch to `after`: the positions of one process's reading.
    single = tmp_path / "single"
    _single(_flags(photo_dir, single, after))
    for step in range(1, after + 1):
        assert _position(single, step) == reference[step - 1], step

    # Elastic 1 -> 2: the run as it was at `start`, resumed by 2 processes x 2 devices and
    # stopped by a signal to one process: both stop at the same step.
    run = tmp_path / "one_then_two"
    _truncated_copy(single, run, start)
    procs = _launch_pair(_flags(photo_dir, run, 100000))
    lines, deadline = [], time.time() + 300
    for line in procs[0].stdout:  # process 0 alone prints; a progress line per step
        lines.append(line)
        progress = re.match(r"\[\s*(\d+)/100000", line)
        if (progress and int(progress.group(1)) >= after) or time.time() > deadline:
            break
    procs[1].send_signal(signal.SIGTERM)
    outs = _finish(procs)
    out0 = "".join(lines) + outs[0]
    assert "4 device(s) (cpu), 2 process(es)" in out0, out0
    assert f"resumed from step {start} " in out0, out0
    assert f"data position {reference[start - 1]['records_consumed']} records" in out0, out0
    assert "stop requested by another process: stopped at step" in out0, out0
    assert "process 1 of 2: SIGTERM: stopped at step" in outs[1], outs[1]
    stopped = int(out0.split("stopped at step ")[1].split(",")[0])
    assert stopped >= after and _steps(run) == list(range(1, stopped + 1))
    total = stopped + 2
    reference = _reference_positions(photo_dir, total)
    # The 2 processes read the global batches one process reads: positions agree at every
    # step, skipped files included.
    for step in range(start + 1, stopped + 1):
        assert _position(run, step) == reference[step - 1], step
    # The first step after the resume runs the same program on the same batch and parameters,
    # so the losses agree to float32 rounding of differently ordered sums (XLA's in-process
    # all-reduce against Gloo's): measured <= 4e-7 relative, checked at 1e-5. Adam divides by
    # sqrt(v) of near-zero gradients and amplifies these differences step by step (measured up
    # to 1.6e-4 relative one step later; <1e-2 after 6 steps in an earlier 8-versus-1-device
    # test), so the next step gets 3e-2.
    for tag in LOSSES:
        a, b = _scalars(run, tag), _scalars(single, tag)
        print(tag, "2x2 vs 1x4 relative difference by step:",
              {s: f"{abs(a[s] - b[s]) / abs(b[s]):.1e}" for s in (start + 1, after)})
        np.testing.assert_allclose(a[start + 1], b[start + 1], rtol=1e-5, err_msg=tag)
        np.testing.assert_allclose(a[after], b[after], rtol=3e-2, err_msg=tag)

    # Elastic 2 -> 1: the 2-process checkpoint resumes as 1 process x 4 devices at the same
    # step and data position, and goes on through the same batches.
    out = _single(_flags(photo_dir, run, total))
    assert f"resumed from step {stopped} " in out, out
    assert f"data position {reference[stopped - 1]['records_consumed']} records" in out, out
    for step in range(stopped + 1, total + 1):
        assert _position(run, step) == reference[step - 1], step
    final = reference[-1]
    assert sum(final["row_skips"]) > 0, final  # some rows did skip and refill
    assert final["records_consumed"] == total * 4 + sum(final["row_skips"])

    # data/skipped_files (written by process 0) counts the validation images skipped at start
    # plus the training files that all processes skipped since the launch: the 2-process run
    # must count every row's skips of the reference, not only process 0's rows (and process
    # 1's rows do skip in its steps, by the choice of `start`).
    logged = _scalars(single, "data/skipped_files")
    validation_skips = logged[1] - skips(reference, 1)
    assert logged == {s: validation_skips + skips(reference, s) for s in range(1, after + 1)}
    logged = _scalars(run, "data/skipped_files")  # 2 processes to `stopped`, then 1 process
    launches = {s: start if s <= stopped else stopped for s in range(start + 1, total + 1)}
    assert logged == {s: validation_skips + skips(reference, s) - skips(reference, resumed)
                      for s, resumed in launches.items()}, (logged, reference)
    print(f"1 process to step {after}; 2 processes resumed at {start}, stopped at {stopped}; "
          f"1 process resumed to {total}; positions (records consumed) 1..{total}: "
          f"{[p['records_consumed'] for p in reference]}; final position {final}")


# ----------------------------------------------------------------------------- older checkpoints


def _legacy_checkpoint(directory: str, step: int, grain_iterator) -> None:
    """A checkpoint as jaxcolor wrote it before global batches: Grain's own iterator state."""
    manager = ocp.CheckpointManager(directory, item_names=("state", "data"))
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"w": np.arange(3.0)}),
        data=grain.checkpoint.CheckpointSave(grain_iterator)))
    manager.wait_until_finished()
    manager.close()


def test_checkpoint_from_before_global_batches_resumes_by_record_count(tmp_path):
    files = write_photos(str(tmp_path / "photos"), 6)
    kwargs = dict(image_size=16, batch_size=2, seed=0, augment=False)
    straight = data.train_dataset(files, **kwargs)
    expected = [next(straight) for _ in range(4)]
    straight.close()

    old = iter(grain.MapDataset.source(files).to_iter_dataset())
    for _ in range(5):  # an old single-process run had consumed 5 records
        next(old)
    directory = str(tmp_path / "checkpoints")
    _legacy_checkpoint(directory, 3, old)
    assert "process_0-of-1.json" in os.listdir(os.path.join(directory, "3", "data"))

    it = data.train_dataset(files, **kwargs)
    state = Checkpointer(directory, every=1, keep=3).restore({"w": np.zeros(3)}, it)
    np.testing.assert_array_equal(state["w"], np.arange(3.0))
    assert it.resumed_records == 5
    np.testing.assert_array_equal(next(it)["rgb"], expected[3]["rgb"])  # first whole batch after
    it.close()

    # Two old processes (one reading in-process, one with Grain workers): their counts add up.
    data_dir = os.path.join(directory, "3", "data")
    os.remove(os.path.join(data_dir, "process_0-of-1.json"))
    workers = {"next_index_in_cycle": 0, "next_index_in_datasets": 2,
               "iterators_in_use_indices": [0, 1], "exhausted": [0, 0], "future_states": {},
               "iterators_in_use_states": [{"next_index": 1}, {"next_index": 2}]}
    for i, state in enumerate(({"next_index": 2}, workers)):
        with open(os.path.join(data_dir, f"process_{i}-of-2.json"), "w") as f:
            json.dump(state, f)
    it = data.train_dataset(files, **kwargs)
    Checkpointer(directory, every=1, keep=3).restore({"w": np.zeros(3)}, it)
    assert it.resumed_records == 5
    it.close()

    # A form it cannot read fails, naming the file and saying why.
    with open(os.path.join(data_dir, "process_1-of-2.json"), "w") as f:
        json.dump({"unknown": 1}, f)
    with pytest.raises(ValueError, match=r"process_1-of-2\.json: data position of an older"):
        Checkpointer(directory, every=1, keep=3).restore({"w": np.zeros(3)},
                                                         data.train_dataset(files, **kwargs))
    os.remove(os.path.join(data_dir, "process_1-of-2.json"))
    with pytest.raises(ValueError, match="incomplete per-process data positions"):
        Checkpointer(directory, every=1, keep=3).restore({"w": np.zeros(3)},
                                                         data.train_dataset(files, **kwargs))
