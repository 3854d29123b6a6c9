"""The run folder: the one module that knows its layout and resolves ``latest|best|N``.

A run folder (``--workdir``) holds::

    config.json                  the resolved config the trainer ran with
    checkpoints/<step>/          Orbax checkpoints (train state + data iterator position)
    checkpoints/best_step.json   {"step", "metric", "value"}: the best checkpoint so far
    validation.jsonl             one line per validation: {"step", "model", "gray_baseline",
                                 "num_images", "beats_gray", "colour_strength",
                                 "calibrated_beats_gray"} (runs before the last four lack them)
    calibration.json             {"<step>": {"colour_strength", "rule", "split", "n", "curve"}}:
                                 the colour strength fitted for each checkpoint step
    baselines.json               mean ab and mean ab per L bin of the training photos
    samples/                     PNG sample grids
    eval/                        evaluation reports (<split>-<step>.json / .csv)

Runs written before ``validation.jsonl`` existed (wave 1) have the same layout without it;
runs written before ``calibration.json`` and ``baselines.json`` load with colour strength 1.0
and no training-photo baselines.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ml_collections

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
BEST_STEP_FILE = "best_step.json"
VALIDATION_FILE = "validation.jsonl"
CALIBRATION_FILE = "calibration.json"
BASELINES_FILE = "baselines.json"
SAMPLES_DIR = "samples"
EVAL_DIR = "eval"

Step = int | str | None  # None or "latest", "best", or a step number


def config_path(workdir: str) -> str:
    """``<workdir>/config.json``."""
    return os.path.join(workdir, CONFIG_FILE)


def checkpoint_dir(workdir: str) -> str:
    """``<workdir>/checkpoints``, absolute (Orbax wants absolute paths)."""
    return os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))


def best_step_path(checkpoints: str) -> str:
    """The best-step record inside a checkpoint folder."""
    return os.path.join(checkpoints, BEST_STEP_FILE)


def samples_path(workdir: str, name: str) -> str:
    """Where a sample grid called ``name`` (e.g. ``val_samples_0000100.png``) goes."""
    return os.path.join(workdir, SAMPLES_DIR, name)


def eval_stem(workdir: str, split: str, step: int) -> str:
    """``<workdir>/eval/<split>-<step>`` (the report adds ``.json`` / ``.csv``)."""
    return os.path.join(workdir, EVAL_DIR, f"{split}-{step}")


def is_run(path: str) -> bool:
    """Whether ``path`` looks like a run folder (it has a ``config.json``)."""
    return os.path.isfile(config_path(path))


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Saves the resolved config as ``config.json`` (atomically: a reader never sees half)."""
    os.makedirs(workdir, exist_ok=True)
    tmp = config_path(workdir) + ".tmp"
    with open(tmp, "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    os.replace(tmp, config_path(workdir))


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a run saved in ``<workdir>/config.json``."""
    import ml_collections

    path = config_path(workdir)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{workdir!r} is not a run directory: no {CONFIG_FILE}")
    try:
        with open(path) as f:
            return ml_collections.ConfigDict(json.load(f))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def read_best(checkpoints: str) -> dict[str, Any] | None:
    """The best-step record of a checkpoint folder, or None when there is none."""
    path = best_step_path(checkpoints)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            best = json.load(f)
        int(best["step"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: expected {{\"step\": N, ...}} ({e})") from None
    return best


def write_best(checkpoints: str, record: dict[str, Any]) -> None:
    """Records the best checkpoint atomically."""
    _write_json(best_step_path(checkpoints), record)


def _write_json(path: str, value: Any) -> None:
    """Writes ``value`` as JSON atomically: a reader sees the old file or the new one."""
    with open(path + ".tmp", "w") as f:
        json.dump(value, f)
    os.replace(path + ".tmp", path)


def _read_json(path: str) -> Any:
    """A JSON file's value, or None when the file does not exist; ValueError naming it."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def default_step(workdir: str) -> Step:
    """The step a product is made from by default: the best one when recorded, else latest."""
    return "best" if os.path.isfile(best_step_path(checkpoint_dir(workdir))) else None


def resolve_step(workdir: str, step: Step, steps: list[int] | tuple[int, ...]) -> int:
    """The checkpoint step ``step`` names in ``workdir``: latest (None), "best" or a number."""
    steps = sorted(steps)
    if not steps:
        raise FileNotFoundError(f"{workdir!r}: no complete checkpoint under {CHECKPOINT_DIR}/")
    if step is None or step == "latest":
        return steps[-1]
    if step == "best":
        best = read_best(checkpoint_dir(workdir))
        if best is None:
            raise FileNotFoundError(
                f"{workdir!r}: no best checkpoint recorded "
                f"({best_step_path(checkpoint_dir(workdir))} is missing); "
                "use --step latest or a step number"
            )
        chosen = int(best["step"])
    else:
        try:
            chosen = int(step)
        except (TypeError, ValueError):
            raise ValueError(f"step must be 'latest', 'best' or a number, got {step!r}") from None
    if chosen not in steps:
        raise FileNotFoundError(f"{workdir!r}: no checkpoint at step {chosen} (have {steps})")
    return chosen


def parse_step(text: str | None) -> Step:
    """Command-line ``--step``: 'latest' (or empty), 'best', or an integer."""
    if text in (None, "", "latest", "best"):
        return None if text in (None, "", "latest") else "best"
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--step must be 'latest', 'best' or a number, got {text!r}") from None


def append_validation(workdir: str, step: int, model: dict[str, float],
                      gray_baseline: dict[str, float], **extra: Any) -> None:
    """Appends one validation record (mean metrics of the model and of the gray baseline, and
    any ``extra`` fields)."""
    record = {"step": int(step), "model": model, "gray_baseline": gray_baseline, **extra}
    with open(os.path.join(workdir, VALIDATION_FILE), "a") as f:
        f.write(json.dumps(record) + "\n")


def read_validation(workdir: str, step: int) -> dict[str, dict[str, float]] | None:
    """The last validation record at ``step`` ({"model", "gray_baseline"}), or None."""
    path = os.path.join(workdir, VALIDATION_FILE)
    if not os.path.isfile(path):
        return None
    found = None
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash: ignore it
                continue
            if record.get("step") == step:
                found = {"model": record["model"], "gray_baseline": record["gray_baseline"]}
    return found


def calibration_path(workdir: str) -> str:
    """``<workdir>/calibration.json``."""
    return os.path.join(workdir, CALIBRATION_FILE)


def read_calibration(workdir: str, step: int) -> dict[str, Any] | None:
    """The colour-strength calibration recorded for checkpoint ``step``, or None."""
    records = _read_json(calibration_path(workdir)) or {}
    return records.get(str(int(step)))


def write_calibration(workdir: str, step: int, record: dict[str, Any]) -> None:
    """Records (or replaces) the calibration of checkpoint ``step``, atomically."""
    path = calibration_path(workdir)
    records = _read_json(path) or {}
    records[str(int(step))] = record
    _write_json(path, dict(sorted(records.items(), key=lambda item: int(item[0]))))


def read_baselines(workdir: str) -> dict[str, Any] | None:
    """The baselines fitted on the run's training photos, or None (runs from before them)."""
    return _read_json(os.path.join(workdir, BASELINES_FILE))


def write_baselines(workdir: str, baselines: dict[str, Any]) -> None:
    """Records the training-photo baselines atomically."""
    _write_json(os.path.join(workdir, BASELINES_FILE), baselines)
