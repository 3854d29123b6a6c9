"""Load test of the HTTP service: N concurrent clients sending photos to localhost.

python benchmarks/serve_load.py --model runs/lab_gan [--clients 8] [--megapixels 1]
    [--duration 60] [--max_requests 400] [--format png] [--serve_flags=--batch_delay_ms=5]

Starts ``python -m jaxcolor.serve`` on a free 127.0.0.1 port (or uses ``--url`` of a running
server on localhost), sends JPEG photos of about ``--megapixels`` (built-in sample photos
resized) from ``--clients`` threads for ``--duration`` seconds or ``--max_requests`` requests,
whichever ends first, and prints requests/s, latency percentiles, device calls per request and
the server's resident memory (RSS, sampled every 0.2 s; peak and after the run).
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
import time
from urllib.parse import urlparse

import cv2
import httpx
import numpy as np
import psutil
from absl import app, flags

from jaxcolor import data

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Run or exported model to serve (unless --url).")
flags.DEFINE_string("url", None, "A running server on localhost instead of starting one.")
flags.DEFINE_integer("clients", 8, "Concurrent clients.", lower_bound=1)
flags.DEFINE_float("megapixels", 1.0, "Size of each photo.", lower_bound=0.01)
flags.DEFINE_float("duration", 60.0, "Seconds of load (after one warm-up request per client).")
flags.DEFINE_integer("max_requests", 400, "Stop after this many requests.", lower_bound=1)
flags.DEFINE_enum("format", "png", ["png", "jpeg"], "Response format.")
flags.DEFINE_multi_string("serve_flags", [], "Extra flags for the server it starts.")

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def photos(megapixels: float) -> list[bytes]:
    """Built-in sample photos resized to about ``megapixels``, as JPEG bytes."""
    out = []
    for name in PHOTOS:
        rgb = data.load_image(f"skimage:{name}")
        h, w = rgb.shape[:2]
        scale = (megapixels * 1e6 / (h * w)) ** 0.5
        rgb = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
        ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        out.append(buf.tobytes())
    return out


def start_server(model: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "jaxcolor.serve", "--model", model, "--port", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        print("server:", line.rstrip(), flush=True)
        found = re.search(r"serving on (http://\S+)", line)
        if found:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, found.group(1)
    raise SystemExit(f"the server exited with code {proc.wait()}")


def server_pid(url: str) -> int | None:
    """The pid listening on ``url``'s port (localhost), for the RSS figures."""
    port = urlparse(url).port
    for conn in psutil.net_connections("tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
            return conn.pid
    return None


def main(argv):
    del argv
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    if not (FLAGS.model or FLAGS.url):
        raise app.UsageError("give --model PATH or --url of a running server")
    proc = None
    if FLAGS.url:
        url = FLAGS.url.rstrip("/") + "/"
        if urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1"):
            raise app.UsageError("--url must be on localhost")
    else:
        proc, url = start_server(FLAGS.model, FLAGS.serve_flags)
    pid = proc.pid if proc else server_pid(url)
    bodies = photos(FLAGS.megapixels)
    params = {"format": FLAGS.format}
    client = httpx.Client(timeout=600)
    try:
        for body in bodies:  # warm-up: every photo size compiled/bucketed before timing
            client.post(url + "api/colorize", content=body, params=params).raise_for_status()
        rss = []
        process = psutil.Process(pid) if pid else None
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        sent = 0
        calls_before = client.get(url + "api/health").json()["device_calls"]
        start = time.perf_counter()
        end = start + FLAGS.duration
        done = threading.Event()

        def worker(k: int) -> None:
            nonlocal sent
            with httpx.Client(timeout=600) as session:
                i = k
                while time.perf_counter() < end:
                    with lock:
                        if sent >= FLAGS.max_requests:
                            return
                        sent += 1
                    t0 = time.perf_counter()
                    r = session.post(url + "api/colorize", content=bodies[i % len(bodies)],
                                     params=params)
                    with lock:
                        if r.status_code == 200:
                            latencies.append(time.perf_counter() - t0)
                        else:
                            errors.append(f"{r.status_code} {r.text[:100]}")
                    i += FLAGS.clients

        def sample() -> None:
            while not done.wait(0.2):
                if process:
                    rss.append(process.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(FLAGS.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        done.set()
        calls = client.get(url + "api/health").json()["device_calls"] - calls_before
        lat = np.array(latencies) * 1000
        h, w = cv2.imdecode(np.frombuffer(bodies[0], np.uint8), cv2.IMREAD_COLOR).shape[:2]
        print(f"\n{FLAGS.clients} clients, photos of about {w}x{h} ({FLAGS.megapixels:g} MP, "
              f"JPEG), {FLAGS.format} responses")
        print(f"requests: {len(lat)} ok, {len(errors)} failed in {elapsed:.1f} s "
              f"-> {len(lat) / elapsed:.2f} requests/s")
        if len(lat):
            print(f"latency ms: p50 {np.percentile(lat, 50):.0f}  p95 "
                  f"{np.percentile(lat, 95):.0f}  max {lat.max():.0f}")
            print(f"device calls: {calls} ({len(lat) / max(calls, 1):.1f} requests per call)")
        if rss:
            print(f"server RSS: peak {max(rss) / 2**20:.0f} MiB, at the end "
                  f"{rss[-1] / 2**20:.0f} MiB")
        for e in errors[:5]:
            print("error:", e)
    finally:
        client.close()
        if proc:
            proc.terminate()
            proc.wait(60)


if __name__ == "__main__":
    app.run(main)
