"""Colorizing files, folders and videos: sizes and L kept, video round trips, output names,
and bad inputs reported by name without stopping the others."""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import synthetic_photo

from jaxcolor import colorize, colour, data
from jaxcolor.inference import loading as inference


@pytest.fixture(scope="module")
def colorizer(lab_run):
    return inference.load_run(lab_run, batch_size=2)


def _bgr(seed: int, height: int, width: int) -> np.ndarray:
    return cv2.cvtColor(synthetic_photo(seed, height, width), cv2.COLOR_RGB2BGR)


def _lightness(rgb: np.ndarray) -> np.ndarray:
    return colour.rgb_to_lab(rgb)[..., 0]


def test_find_jobs_names_outputs(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for name in ("sub/a.PNG", "b.jpg", "clip.mp4", "notes.txt"):
        (src / name).write_bytes(b"x")
    out = src / "out"  # results inside the input folder are not inputs next time
    out.mkdir()
    (out / "b.png").write_bytes(b"x")
    lone = tmp_path / "b.png"
    lone.write_bytes(b"x")
    jobs, failures = colorize.find_jobs([str(src), str(lone), str(tmp_path / "missing.png")],
                                        str(out))
    got = {os.path.relpath(j.path, tmp_path): (os.path.relpath(j.output, out), j.kind)
           for j in jobs}
    assert got == {
        "src/b.jpg": ("b.png", "image"),
        "src/clip.mp4": ("clip.mp4", "video"),
        "src/sub/a.PNG": ("sub/a.png", "image"),
        "b.png": ("b-colorized.png", "image"),  # same name as src/b.jpg's output
    }
    assert failures == [colorize.Failure(str(tmp_path / "missing.png"), "no such file or folder")]
    # Writing next to the inputs never overwrites one.
    jobs, _ = colorize.find_jobs([str(lone)], str(tmp_path))
    assert jobs[0].output == str(tmp_path / "b-colorized.png")


def test_images_keep_size_and_lightness(colorizer, tmp_path):
    src = tmp_path / "in"
    (src / "deep").mkdir(parents=True)
    cv2.imwrite(str(src / "photo.png"), _bgr(1, 45, 70))  # model is 32x32
    rgba16 = np.concatenate([_bgr(2, 37, 53).astype(np.uint16) * 257,
                             np.full((37, 53, 1), 40000, np.uint16)], axis=-1)
    cv2.imwrite(str(src / "deep" / "alpha16.png"), rgba16)
    cv2.imwrite(str(src / "gray.jpg"), cv2.cvtColor(_bgr(3, 64, 30), cv2.COLOR_BGR2GRAY))

    summary = colorize.colorize_paths(colorizer, [str(src)], str(tmp_path / "out"),
                                      progress=False)
    assert summary.ok and summary.images == 3
    for rel in ("photo.png", "deep/alpha16.png", "gray.jpg"):
        out = tmp_path / "out" / (os.path.splitext(rel)[0] + ".png")
        written = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
        # 16-bit inputs keep their depth; 8-bit ones stay 8-bit.
        depth = np.uint16 if rel.startswith("deep") else np.uint8
        assert written.dtype == depth and written.shape[2] == 3
        source = data.load_rgb(str(src / rel))
        result = data.load_rgb(str(out))
        assert result.shape == source.shape
        assert np.abs(_lightness(result) - _lightness(source)).max() <= 1.0, rel


@pytest.mark.parametrize(("ext", "fourcc"), [(".mp4", "mp4v"), (".avi", "MJPG")])
def test_video_round_trip(colorizer, tmp_path, ext, fourcc):
    path = str(tmp_path / f"clip{ext}")
    width, height, fps, count = 48, 40, 10.0, 7  # 7 frames: batches of 2, the last padded
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"this OpenCV cannot write {fourcc} {ext}"
    frames = [_bgr(i, height, width) for i in range(count)]
    for frame in frames:
        writer.write(frame)
    writer.release()

    summary = colorize.colorize_paths(colorizer, [path], str(tmp_path / "out"),
                                      temporal_smoothing=0.5, progress=False)
    assert summary.ok and summary.videos == 1 and summary.frames == count
    out = str(tmp_path / "out" / f"clip{ext}")
    assert summary.outputs == [out]
    capture = cv2.VideoCapture(out)
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(fps)
    read = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        read.append(frame)
    capture.release()
    assert len(read) == count and read[0].shape == (height, width, 3)
    # Lossy codecs both ways, so only roughly: the frames keep their lightness.
    source, result = (np.stack([f[..., ::-1] for f in x]).astype(np.float32) / 255.0
                      for x in (frames, read))
    assert np.abs(_lightness(result) - _lightness(source)).mean() < 3.0


def test_cli_reports_bad_inputs_and_goes_on(lab_run, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "a_good.png"), _bgr(4, 30, 40))
    (src / "b_empty.png").write_bytes(b"")
    (src / "c_truncated.jpg").write_bytes(cv2.imencode(".jpg", _bgr(5, 30, 40))[1][:200])
    (src / "d_not_a_video.mp4").write_text("not a video")
    cv2.imwrite(str(src / "e_good.jpg"), _bgr(6, 50, 20))
    missing = str(tmp_path / "missing.png")

    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "jaxcolor.colorize", "--workdir", lab_run, str(src), missing,
         "--out", str(out), "--batch_size", "2", "--no_progress"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1, result.stderr
    assert "4 input(s) failed" in result.stdout
    for name in ("b_empty.png", "c_truncated.jpg", "d_not_a_video.mp4", "missing.png"):
        assert name in result.stdout
    assert sorted(os.listdir(out)) == ["a_good.png", "e_good.png"]
    assert cv2.imread(str(out / "e_good.png")).shape == (50, 20, 3)
