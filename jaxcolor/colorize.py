"""Colorize photos and videos with a trained run.

python -m jaxcolor.colorize --workdir runs/lab_gan photo.jpg photos/ clip.mp4 --out colored/
    [--step latest|best|N] [--batch_size 8] [--render_size 512] [--temporal_smoothing 0.5]
    [--colour_strength 0.5]

``--workdir`` is a run folder or an exported model (``jaxcolor.export``). Inputs are image files,
folders (searched recursively for images and videos) and videos (.mp4, .avi, .mov, .mkv, read
with OpenCV). Images are decoded as training decodes them (EXIF orientation applied) and written
upright at their own size and depth: ``<out>/<name>.png`` (``.tif`` for TIFF inputs), 16-bit
for 16-bit inputs, keeping the path below a folder input. Colour inputs are reduced to their
lightness first. Transparent pixels are composited on white and the output has no alpha.
``--render_size N``: the network sees each photo with its short side N (default: the training
size), aspect ratio kept; the chroma is upsampled to the photo's full size
(``jaxcolor.inference.predictor``). ``--colour_strength s`` multiplies the predicted chroma by s
(0: gray, 1: the network's own; default: the strength calibrated for the checkpoint, else 1).

Videos keep their container, frame size and frame rate (codec mp4v, or MJPG for .avi; if the
container cannot be written, an .avi is written instead). Audio is not copied: OpenCV does not
carry it. ``--temporal_smoothing s`` blends each frame's chroma with the previous frames'
(exponential moving average with weight s on the past) to reduce flicker.

An input that cannot be used (unreadable file, unsupported codec) is reported by name and
skipped; the others go on. The exit code is 1 when any input failed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence

import cv2
import numpy as np

from jaxcolor import data, runs
from jaxcolor.cli import run_app
from jaxcolor.inference.inputs import from_float
from jaxcolor.inference.model import Model
from jaxcolor.inference.predictor import check_colour_strength
from jaxcolor.training.summary import format_duration

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")
# Codecs this OpenCV build (FFmpeg backend) writes and reads back everywhere we need.
VIDEO_FOURCC = {".avi": "MJPG", ".mp4": "mp4v", ".mov": "mp4v", ".mkv": "mp4v"}
FALLBACK_FPS = 25.0

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Job:
    """One input and where its result goes."""

    path: str
    output: str
    kind: str  # "image" | "video"


@dataclasses.dataclass(frozen=True)
class Failure:
    """An input that could not be colorized, and why."""

    path: str
    reason: str


@dataclasses.dataclass
class ColorizeSummary:
    """What ``colorize_paths`` did."""

    images: int = 0
    videos: int = 0
    frames: int = 0
    outputs: list[str] = dataclasses.field(default_factory=list)
    failures: list[Failure] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every input was colorized."""
        return not self.failures

    def report(self, out_dir: str) -> str:
        """A few lines for the console."""
        lines = [
            f"colorized {self.images} image(s) and {self.videos} video(s) ({self.frames} frames)"
            f" into {out_dir}"
        ]
        if self.failures:
            lines.append(f"{len(self.failures)} input(s) failed:")
            lines += [f"  {f.path}: {f.reason}" for f in self.failures]
        return "\n".join(lines)


class Progress:
    """A one-line progress bar with a rate, on stderr; on a pipe, a line every 10 s at most."""

    def __init__(self, label: str, total: int | None, unit: str, enabled: bool = True):
        self.label, self.total, self.unit = label, total or None, unit
        self.enabled = enabled
        self.done = 0
        self._start = self._last = time.perf_counter()
        self._tty = sys.stderr.isatty()

    def update(self, n: int = 1) -> None:
        """Counts ``n`` more units done."""
        self.done += n
        now = time.perf_counter()
        if self.enabled and (self._tty or now - self._last >= 10.0):
            self._last = now
            self._print("\r" if self._tty else "", "" if self._tty else "\n")

    def close(self) -> None:
        """Prints the final line."""
        if self.enabled and self.done:
            self._print("\r" if self._tty else "", "\n")

    def _print(self, start: str, end: str) -> None:
        elapsed = time.perf_counter() - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total:
            width = 24
            filled = min(width, int(width * self.done / self.total))
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            bar = (f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                   f"{self.unit} | {rate:.1f} {self.unit}/s | ETA {format_duration(eta)}")
        else:
            bar = f"{self.done} {self.unit} | {rate:.1f} {self.unit}/s"
        print(f"{start}{self.label}: {bar}", end=end, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- planning


def _kind(path: str) -> str:
    return "video" if os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS else "image"


def _output_name(rel: str, kind: str) -> str:
    if kind == "video":
        return rel
    stem, ext = os.path.splitext(rel)
    return stem + (".tif" if ext.lower() in (".tif", ".tiff") else ".png")


def _inside(path: str, directory: str) -> bool:
    return os.path.commonpath([path, directory]) == directory


def find_jobs(inputs: Sequence[str], out_dir: str) -> tuple[list[Job], list[Failure]]:
    """Input paths (files, folders searched recursively) -> jobs with their output paths.

    Files already under ``out_dir`` are not inputs (a previous run's results). Two inputs that
    would write the same output, or an output that would overwrite its input, get a suffix.
    """
    out_abs = os.path.realpath(out_dir)
    wanted = data.IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
    found: list[tuple[str, str]] = []  # (input path, output path relative to out_dir)
    failures = []
    for given in inputs:
        if os.path.isdir(given):
            before = len(found)
            for dirpath, dirnames, filenames in os.walk(given, followlinks=True):
                dirnames.sort()
                if _inside(os.path.realpath(dirpath), out_abs):
                    dirnames.clear()
                    continue
                for name in sorted(filenames):
                    if os.path.splitext(name)[1].lower() in wanted:
                        path = os.path.join(dirpath, name)
                        found.append((path, os.path.relpath(path, given)))
            if len(found) == before:
                failures.append(Failure(given, "folder holds no image or video file"))
        elif os.path.isfile(given):
            found.append((given, os.path.basename(given)))
        else:
            failures.append(Failure(given, "no such file or folder"))

    jobs, used = [], set()
    for path, rel in found:
        kind = _kind(path)
        output = os.path.join(out_dir, _output_name(rel, kind))
        stem, ext = os.path.splitext(output)
        n = 1
        while output in used or os.path.realpath(output) == os.path.realpath(path):
            output = f"{stem}-colorized{'' if n == 1 else f'-{n}'}{ext}"
            n += 1
        used.add(output)
        jobs.append(Job(path, output, kind))
    return jobs, failures


def _reason(error: Exception, path: str) -> str:
    text = str(error) if isinstance(error, (data.BadImageError, VideoError)) else (
        f"{type(error).__name__}: {error}")
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


# ----------------------------------------------------------------------------- images


def _write_image(path: str, rgb: np.ndarray) -> None:
    """Writes RGB as PNG/TIFF in its depth (uint8, uint16; float as 16-bit)."""
    if rgb.dtype not in (np.uint8, np.uint16):
        rgb = from_float(rgb, np.uint16)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if not cv2.imwrite(path, np.ascontiguousarray(rgb[..., ::-1])):
        raise OSError("could not write the output image")


def _colorize_images(model: Model, jobs: list[Job], summary: ColorizeSummary,
                     progress: bool, render_size: int | None,
                     colour_strength: float | None) -> None:
    bar = Progress("images", len(jobs), "images", enabled=progress)

    def failed(job: Job, error: Exception) -> None:
        summary.failures.append(Failure(job.path, _reason(error, job.path)))
        bar.update()

    for job, rgb in model.stream(((job, job.path) for job in jobs), render_size=render_size,
                                 on_error=failed, colour_strength=colour_strength):
        try:
            _write_image(job.output, rgb)
            summary.images += 1
            summary.outputs.append(job.output)
        except Exception as e:  # noqa: BLE001 - one bad output must not stop the others
            summary.failures.append(Failure(job.path, _reason(e, job.path)))
        bar.update()
    bar.close()


# ----------------------------------------------------------------------------- videos


class VideoError(ValueError):
    """A video that cannot be read or written; the message says why."""


def _open_writer(path: str, fps: float, width: int, height: int) -> tuple[cv2.VideoWriter, str]:
    """A writer for ``path``'s container, or for an .avi (MJPG) next to it if that fails."""
    ext = os.path.splitext(path)[1].lower()
    candidates = [(path, VIDEO_FOURCC.get(ext, "mp4v"))]
    if ext != ".avi":
        candidates.append((os.path.splitext(path)[0] + ".avi", "MJPG"))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    for candidate, fourcc in candidates:
        writer = cv2.VideoWriter(candidate, cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
        if writer.isOpened():
            if candidate != path:
                log.warning("cannot write %s; wrote %s (MJPG) instead", path, candidate)
            return writer, candidate
        writer.release()
    raise VideoError(f"cannot open a video writer for {path}")


def _colorize_video(
    model: Model, job: Job, smoothing: float, progress: bool, render_size: int | None,
    colour_strength: float | None
) -> tuple[int, str]:
    """Colorizes one video; returns the number of frames written and the output's path."""
    capture = cv2.VideoCapture(job.path)
    if not capture.isOpened():
        raise VideoError("cannot open the video (unsupported container or codec?)")
    writer, output, size = None, job.output, None
    fps = capture.get(cv2.CAP_PROP_FPS)
    if not np.isfinite(fps) or fps <= 0:
        log.warning("%s: unknown frame rate; writing at %g fps", job.path, FALLBACK_FPS)
        fps = FALLBACK_FPS
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    bar = Progress(os.path.basename(job.path), max(total, 0), "frames", enabled=progress)

    def frames() -> Iterator[tuple[int, np.ndarray]]:
        nonlocal size
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            if size is None:
                size = frame.shape[1], frame.shape[0]
            elif (frame.shape[1], frame.shape[0]) != size:  # keep the writer's frame size
                frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            yield index, frame[..., ::-1]  # OpenCV's BGR -> RGB
            index += 1

    written = 0
    try:
        for _, rgb in model.stream(frames(), temporal_smoothing=smoothing,
                                   render_size=render_size, colour_strength=colour_strength):
            if writer is None:
                writer, output = _open_writer(job.output, fps, *size)
            writer.write(np.ascontiguousarray(rgb[..., ::-1]))
            written += 1
            bar.update()
    except BaseException:
        if writer is not None:
            writer.release()
            os.remove(output)  # no half-written video that looks like a result
        raise
    finally:
        capture.release()
        bar.close()
    if writer is None:
        raise VideoError("no frame could be decoded (unsupported codec?)")
    writer.release()
    return written, output


def colorize_paths(
    model: Model,
    inputs: Sequence[str],
    out_dir: str,
    *,
    temporal_smoothing: float = 0.0,
    progress: bool = True,
    render_size: int | None = None,
    colour_strength: float | None = None,
) -> ColorizeSummary:
    """Colorizes image files, folders (recursive) and videos into ``out_dir``.

    Failures are collected in the summary, never raised; see the module docstring for names.
    A bad ``temporal_smoothing`` or ``colour_strength`` raises ValueError before any work.
    """
    if not 0.0 <= temporal_smoothing <= 1.0:
        raise ValueError(f"temporal_smoothing must be in [0, 1], got {temporal_smoothing}")
    if colour_strength is not None:
        check_colour_strength(colour_strength)
    jobs, failures = find_jobs(inputs, out_dir)
    summary = ColorizeSummary(failures=list(failures))
    images = [j for j in jobs if j.kind == "image"]
    if images:
        _colorize_images(model, images, summary, progress, render_size, colour_strength)
    for job in (j for j in jobs if j.kind == "video"):
        try:
            frames, output = _colorize_video(model, job, temporal_smoothing, progress,
                                             render_size, colour_strength)
        except Exception as e:  # noqa: BLE001 - one bad video must not stop the others
            summary.failures.append(Failure(job.path, _reason(e, job.path)))
            continue
        summary.videos += 1
        summary.frames += frames
        summary.outputs.append(output)
    return summary


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "Run directory or exported model folder.",
                        required=True)
    flags.DEFINE_string("out", None, "Output folder.", required=True)
    flags.DEFINE_string("step", "latest", "Checkpoint of a run: latest, best or a step number.")
    flags.DEFINE_integer("batch_size", 8, "Images/frames per device call.", lower_bound=1)
    flags.DEFINE_integer("render_size", None, "Short side the network sees (default: the "
                         "training size); the aspect ratio is kept.", lower_bound=16)
    flags.DEFINE_float("temporal_smoothing", 0.0, "Video: weight of the previous frames' "
                       "chroma, 0 (off) to 1.", lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_float("colour_strength", None, "Predicted chroma times this, 0 (gray) to 2 "
                       "(default: the strength calibrated for the checkpoint, else 1).")
    flags.DEFINE_bool("no_progress", False, "No progress bars.")


def main(argv: Sequence[str]) -> int:
    """absl entry point: ``argv[1:]`` are the inputs. Exit code 1 when any input failed, 2 when
    the model cannot be loaded (``run`` gives ``run_app`` that status for OSError and
    ValueError; failed inputs are collected, not raised)."""
    from absl import app, flags

    import jaxcolor

    FLAGS = flags.FLAGS
    inputs = list(argv[1:])
    if not inputs:
        raise app.UsageError("give at least one input (image, folder or video)")
    strength = FLAGS.colour_strength
    if strength is not None:
        check_colour_strength(strength)
    model = jaxcolor.load(FLAGS.workdir, runs.parse_step(FLAGS.step),
                          batch_size=FLAGS.batch_size)
    meta = model.metadata
    strength = model.colour_strength if strength is None else strength
    print(f"{meta['experiment']} ({meta['task']}) step {meta['step']}, "
          f"{model.image_size}x{model.image_size} model, colour strength {strength:g}",
          file=sys.stderr)
    summary = colorize_paths(model, inputs, FLAGS.out,
                             temporal_smoothing=FLAGS.temporal_smoothing,
                             progress=not FLAGS.no_progress, render_size=FLAGS.render_size,
                             colour_strength=strength)
    print(summary.report(FLAGS.out))
    return 0 if summary.ok else 1


def run() -> None:
    """Console entry point (``jaxcolor-colorize``): the same flags as ``python -m``."""
    run_app(main, _define_flags, error_status=2)


if __name__ == "__main__":
    run()
