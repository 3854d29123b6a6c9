"""Colorize photos and videos with a trained run.

python -m jaxcolor.colorize --workdir runs/lab_gan photo.jpg photos/ clip.mp4 --out colored/
    [--step latest|best|N] [--batch_size 8] [--temporal_smoothing 0.5]

Inputs are image files, folders (searched recursively for images and videos) and videos
(.mp4, .avi, .mov, .mkv, read with OpenCV). Images of any size, depth (8/16-bit) and with or
without alpha are written as 8-bit PNG at their own size: ``<out>/<name>.png``, keeping the path
below a folder input. Colour inputs are reduced to their lightness first. Transparent pixels are
composited on white (as ``data.load_rgb`` does) and the output has no alpha.

Videos keep their container, frame size and frame rate (codec mp4v, or MJPG for .avi; if the
container cannot be written, an .avi is written instead). Audio is not copied: OpenCV does not
carry it. ``--temporal_smoothing s`` blends each frame's chroma with the previous frames'
(exponential moving average with weight s on the past) to reduce flicker.

An input that cannot be used (unreadable file, unsupported codec) is reported by name and
skipped; the others go on. The exit code is 1 when any input failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence

import cv2
import numpy as np

from jaxcolor import colour, data
from jaxcolor.inference import Colorizer, Prepared, load_run, parse_step
from jaxcolor.summary import format_duration

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
    return rel if kind == "video" else os.path.splitext(rel)[0] + ".png"


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
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if not cv2.imwrite(path, colour.rgb_to_uint8(rgb)[..., ::-1]):
        raise OSError("could not write the output image")


def _colorize_images(colorizer: Colorizer, jobs: list[Job], summary: ColorizeSummary,
                     progress: bool) -> None:
    bar = Progress("images", len(jobs), "images", enabled=progress)

    def prepared() -> Iterator[tuple[Job, Prepared]]:
        for job in jobs:
            try:
                item = colorizer.prepare(data.load_rgb(job.path))
            except Exception as e:  # noqa: BLE001 - one bad file must not stop the others
                summary.failures.append(Failure(job.path, _reason(e, job.path)))
                bar.update()
                continue
            yield job, item

    for job, rgb in colorizer.stream(prepared()):
        try:
            _write_image(job.output, rgb)
            summary.images += 1
            summary.outputs.append(job.output)
        except Exception as e:  # noqa: BLE001
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
    colorizer: Colorizer, job: Job, smoothing: float, progress: bool
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

    def frames() -> Iterator[tuple[int, Prepared]]:
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
            yield index, colorizer.prepare(data.to_float_rgb(frame, job.path))
            index += 1

    written = 0
    try:
        for _, rgb in colorizer.stream(frames(), temporal_smoothing=smoothing):
            if writer is None:
                writer, output = _open_writer(job.output, fps, *size)
            writer.write(np.ascontiguousarray(colour.rgb_to_uint8(rgb)[..., ::-1]))
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
    colorizer: Colorizer,
    inputs: Sequence[str],
    out_dir: str,
    *,
    temporal_smoothing: float = 0.0,
    progress: bool = True,
) -> ColorizeSummary:
    """Colorizes image files, folders (recursive) and videos into ``out_dir``.

    Failures are collected in the summary, never raised; see the module docstring for names.
    """
    if not 0.0 <= temporal_smoothing <= 1.0:
        raise ValueError(f"temporal_smoothing must be in [0, 1], got {temporal_smoothing}")
    jobs, failures = find_jobs(inputs, out_dir)
    summary = ColorizeSummary(failures=list(failures))
    images = [j for j in jobs if j.kind == "image"]
    if images:
        _colorize_images(colorizer, images, summary, progress)
    for job in (j for j in jobs if j.kind == "video"):
        try:
            frames, output = _colorize_video(colorizer, job, temporal_smoothing, progress)
        except Exception as e:  # noqa: BLE001 - one bad video must not stop the others
            summary.failures.append(Failure(job.path, _reason(e, job.path)))
            continue
        summary.videos += 1
        summary.frames += frames
        summary.outputs.append(output)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (1 when any input failed)."""
    parser = argparse.ArgumentParser(
        prog="python -m jaxcolor.colorize",
        description="Colorize images, folders and videos with a trained jaxcolor run.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders (recursive) or videos (mp4, avi, mov, mkv)")
    parser.add_argument("--workdir", required=True, help="run directory of the trained model")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--step", default="latest", help="checkpoint: latest, best or a step")
    parser.add_argument("--batch_size", type=int, default=8, help="images/frames per call")
    parser.add_argument("--temporal_smoothing", type=float, default=0.0,
                        help="video: weight of the previous frames' chroma, 0 (off) to 1")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if not 0.0 <= args.temporal_smoothing <= 1.0:
        parser.error("--temporal_smoothing must be in [0, 1]")
    if args.batch_size < 1:
        parser.error("--batch_size must be >= 1")
    from jaxcolor import compile_cache  # persistent XLA cache: no recompiling
    compile_cache.enable()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.ERROR)  # Orbax logs every file it opens
    try:
        colorizer = load_run(args.workdir, parse_step(args.step), batch_size=args.batch_size)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{colorizer.config.experiment} ({colorizer.task.name}) step {colorizer.step}, "
          f"{colorizer.image_size}x{colorizer.image_size} model", file=sys.stderr)
    summary = colorize_paths(colorizer, args.inputs, args.out,
                             temporal_smoothing=args.temporal_smoothing,
                             progress=not args.no_progress)
    print(summary.report(args.out))
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
