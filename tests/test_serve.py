"""The HTTP service against a real ``python -m jaxcolor.serve`` process on localhost."""

from __future__ import annotations

import io
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import cv2
import httpx
import numpy as np
import pytest
from conftest import synthetic_photo, tiny_run
from PIL import Image
from server_process import ServerProcess

from jaxcolor import colour

# End to end: a server subprocess per module (about 10 s to start and compile).
pytestmark = pytest.mark.slow

# Small limits so that the 413 and 503 cases are cheap to provoke.
MAX_UPLOAD_MB = 1
MAX_MEGAPIXELS = 0.25
MAX_WAITING = 20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    run = tiny_run(tmp_path_factory, "lab_gan", trained=False)
    # A long batching window makes the concurrency test's batches independent of machine load.
    proc = ServerProcess(run, f"--max_upload_mb={MAX_UPLOAD_MB}",
                         f"--max_megapixels={MAX_MEGAPIXELS}", f"--max_waiting={MAX_WAITING}",
                         "--max_render_size=128", "--batch_delay_ms=100")
    yield proc
    proc.stop()


def encode(rgb: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(rgb[..., ::-1]))
    assert ok
    return buf.tobytes()


def decode(body: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, body[:200]
    return image[..., ::-1]


def lightness(rgb: np.ndarray) -> np.ndarray:
    top = np.iinfo(rgb.dtype).max
    return colour.rgb_to_lab(rgb.astype(np.float32) / top)[..., 0]


def post(server, body=None, files=None, **params) -> httpx.Response:
    return httpx.post(server.url + "api/colorize", content=body, files=files, params=params,
                      timeout=60)


def test_png_keeps_size_and_lightness(server):
    photo = synthetic_photo(3, 40, 72)
    r = post(server, encode(photo))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    out = decode(r.content)
    assert out.shape == photo.shape and out.dtype == np.uint8
    # The model paints chroma only: the output's lightness is the input's (up to 8-bit
    # rounding of the three channels, a fraction of one L unit).
    assert np.abs(lightness(out) - lightness(photo)).mean() < 0.5


def test_exif_orientation_gives_an_upright_result(server):
    photo = synthetic_photo(4, 40, 72)  # stored landscape; orientation 6 means portrait
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "PNG", exif=exif)
    r = post(server, files={"file": ("phone.png", buf.getvalue(), "image/png")})
    assert r.status_code == 200, r.text
    out = decode(r.content)
    upright = np.rot90(photo, -1)  # rotated 90 degrees clockwise, as a viewer shows it
    assert out.shape == upright.shape == (72, 40, 3)
    assert np.abs(lightness(out) - lightness(np.ascontiguousarray(upright))).mean() < 0.5


def test_jpeg_output_and_multipart(server):
    photo = synthetic_photo(5, 50, 60)
    r = post(server, files={"file": ("a.jpg", encode(photo, ".jpg"), "image/jpeg")},
             format="jpeg")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
    assert decode(r.content).shape == photo.shape


def test_sixteen_bit_png_stays_sixteen_bit(server):
    photo = synthetic_photo(6, 32, 48).astype(np.uint16) * 257
    r = post(server, encode(photo))
    assert r.status_code == 200, r.text
    out = decode(r.content)
    assert out.shape == photo.shape and out.dtype == np.uint16


def test_render_size_and_bad_parameters(server):
    photo = encode(synthetic_photo(7, 30, 44))
    r = post(server, photo, render_size=64)
    assert r.status_code == 200, r.text
    assert decode(r.content).shape == (30, 44, 3)
    for params, words in [({"render_size": "big"}, "render_size"),
                          ({"render_size": 0}, "render_size"),
                          ({"render_size": 4096}, "between 1 and 128"),
                          ({"format": "gif"}, "png or jpeg")]:
        r = post(server, photo, **params)
        assert r.status_code == 400, (params, r.text)
        assert words in r.json()["detail"]


def test_colour_strength_matches_the_cli_and_bad_values_are_400(server, tmp_path_factory,
                                                                 tmp_path):
    photo = synthetic_photo(11, 36, 52)
    assert server.health()["colour_strength"] == 1.0  # a run without calibration
    r = post(server, encode(photo), colour_strength=0.5)
    assert r.status_code == 200, r.text
    api = decode(r.content)
    source = tmp_path / "photo.png"
    assert cv2.imwrite(str(source), photo[..., ::-1])
    run = tiny_run(tmp_path_factory, "lab_gan", trained=False)  # the server's model
    cli = subprocess.run([sys.executable, "-m", "jaxcolor.colorize", f"--workdir={run}",
                          f"--out={tmp_path / 'out'}", "--colour_strength=0.5", "--no_progress",
                          str(source)], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert "colour strength 0.5" in cli.stderr
    written = cv2.imread(str(tmp_path / "out" / "photo.png"))[..., ::-1]
    assert np.abs(written.astype(int) - api.astype(int)).max() <= 1  # within 1/255
    assert not np.array_equal(api, decode(post(server, encode(photo)).content))

    gray = decode(post(server, encode(photo), colour_strength=0).content).astype(int)
    assert np.abs(gray - gray[..., :1]).max() <= 1  # R = G = B up to 8-bit rounding
    for bad in ("-0.5", "2.5", "nan", "inf", "strong"):
        r = post(server, encode(photo), colour_strength=bad)
        assert r.status_code == 400, (bad, r.text)
        assert "colour_strength" in r.json()["detail"]
    assert post(server, encode(photo), colour_strength=2).status_code == 200  # still serving

    cli = subprocess.run([sys.executable, "-m", "jaxcolor.colorize", f"--workdir={run}",
                          f"--out={tmp_path / 'out'}", "--colour_strength=nan", str(source)],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 2 and "colour_strength must be a finite number" in cli.stderr


def test_bad_uploads_are_400_in_words(server):
    png = encode(synthetic_photo(8))
    cases = {
        "not an image": (b"hello, this is text\n" * 20, None),
        "truncated": (png[: len(png) // 2], None),
        "empty": (b"", None),
        "no file field": (None, {"photo": ("x.png", png, "image/png")}),
        "empty file field": (None, {"file": ("x.png", b"", "image/png")}),
        "bad multipart file": (None, {"file": ("notes.txt", b"not an image", "text/plain")}),
    }
    for case, (body, files) in cases.items():
        r = post(server, body, files)
        assert r.status_code == 400, (case, r.status_code, r.text)
        detail = r.json()["detail"]
        assert detail and "Traceback" not in detail, case
    assert "notes.txt" in detail  # the message names the upload
    assert post(server, png).status_code == 200  # still serving


def test_oversized_uploads_are_413(server):
    too_big = np.random.default_rng(0).integers(0, 256, MAX_UPLOAD_MB * 2**20 + 10,
                                                np.uint8).tobytes()
    r = post(server, too_big)  # Content-Length declared: refused before reading
    assert r.status_code == 413 and "MiB" in r.json()["detail"]

    def chunks():  # no Content-Length (chunked): refused while streaming
        for start in range(0, len(too_big), 65536):
            yield too_big[start : start + 65536]

    r = post(server, chunks())
    assert r.status_code == 413, r.text
    r = post(server, files={"file": ("big.png", too_big, "image/png")})
    assert r.status_code == 413, r.text
    # A small file whose header declares more pixels than allowed: refused before decoding.
    side = int(np.sqrt(MAX_MEGAPIXELS * 1e6)) + 10
    bomb = encode(np.zeros((side, side, 3), np.uint8))
    assert len(bomb) < MAX_UPLOAD_MB * 2**20
    r = post(server, bomb)
    assert r.status_code == 413 and "pixels" in r.json()["detail"], r.text
    assert server.health()["status"] == "ok"


def test_sixteen_concurrent_clients_are_batched(server):
    n = 16
    photos = [synthetic_photo(100 + i, 24 + 4 * (i % 5), 40 + 6 * (i % 3)) for i in range(n)]
    before = server.health()["device_calls"]
    results: list = [None] * n
    barrier = threading.Barrier(n)

    def client(i):
        barrier.wait()
        results[i] = post(server, encode(photos[i]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    calls = server.health()["device_calls"] - before
    for photo, r in zip(photos, results, strict=True):
        assert r.status_code == 200, r.text
        out = decode(r.content)
        # Each client gets its own photo back, colorized: same size, same lightness.
        assert out.shape == photo.shape
        assert np.abs(lightness(out) - lightness(photo)).mean() < 0.5
    assert 2 <= calls < n, calls  # batch size 8: at least 2 calls, fewer than one per request


def _hold(server, body: bytes) -> socket.socket:
    """A request whose headers and first bytes are sent, the rest held back."""
    host, port = re.match(r"http://([^:/]+):(\d+)/", server.url).groups()
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(f"POST /api/colorize HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
    return sock


def test_busy_server_answers_503_then_serves(server):
    png = encode(synthetic_photo(9, 32, 32))
    held = [_hold(server, png) for _ in range(MAX_WAITING)]
    deadline = time.monotonic() + 30
    while server.health()["in_progress"] < MAX_WAITING and time.monotonic() < deadline:
        time.sleep(0.05)
    r = post(server, png)
    assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
    assert "busy" in r.json()["detail"]
    for sock in held:  # the held requests finish and are answered
        sock.sendall(png[10:])
    for sock in held:
        with sock:
            assert sock.recv(64).startswith(b"HTTP/1.1 200"), "held request not answered"
    assert post(server, png).status_code == 200


def test_health_reports_model_and_limits(server):
    health = server.health()
    model = health["model"]
    assert model["task"] == "lab" and model["image_size"] == health["image_size"] == 32
    assert model["step"] == 1 and "metrics" in model
    assert health["limits"] == {"max_upload_bytes": MAX_UPLOAD_MB * 2**20,
                                "max_pixels": int(MAX_MEGAPIXELS * 1e6),
                                "max_waiting": MAX_WAITING, "max_render_size": 128,
                                "batch_delay_ms": 100.0}


def test_page_is_served_without_external_resources(server):
    page = httpx.get(server.url, timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'src="static/page.js"' in page.text
    for name, kind in [("page.js", "javascript"), ("page.css", "text/css")]:
        r = httpx.get(server.url + "static/" + name, timeout=30)
        assert r.status_code == 200 and kind in r.headers["content-type"]
        # No CDN: the page must work on an offline machine.
        assert not re.search(r"https?://", r.text), name
    assert not re.search(r"https?://", page.text)
    assert httpx.get(server.url + "static/../cli.py", timeout=30).status_code == 404


def test_sigterm_stops_cleanly(tmp_path_factory):
    run = tiny_run(tmp_path_factory, "lab_gan", trained=False)
    proc = ServerProcess(run)
    assert proc.url.startswith("http://127.0.0.1:")  # localhost unless --host says otherwise
    assert proc.health()["status"] == "ok"
    assert proc.stop(signal.SIGTERM) == 0, proc.output
    assert "stopped" in proc.output and "Traceback" not in proc.output
