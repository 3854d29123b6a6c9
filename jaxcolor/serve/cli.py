"""``python -m jaxcolor.serve --model PATH`` (also ``jaxcolor-serve``): flags and the server.

Loads the model, compiles its default program once (a warm-up call), binds the socket, prints
the URL and serves with uvicorn until Ctrl-C or SIGTERM; then it finishes the requests in
progress and exits 0.
"""

from __future__ import annotations

import signal
import socket
import sys
import time
from collections.abc import Sequence

import numpy as np

from jaxcolor.cli import run_app
from jaxcolor.serve.app import MIB, Limits, create_app


def define_flags() -> None:
    """The command's absl flags."""
    from absl import flags

    flags.DEFINE_string("model", None, "A run folder or an exported model.")
    flags.DEFINE_string("step", "latest", "Checkpoint of a run: latest, best or a step number.")
    flags.DEFINE_string("host", "127.0.0.1", "Address to bind (0.0.0.0 exposes the service).")
    flags.DEFINE_integer("port", 8000, "Port (0 picks a free one).", lower_bound=0,
                         upper_bound=65535)
    flags.DEFINE_integer("batch_size", 8, "Images per device call.", lower_bound=1)
    flags.DEFINE_float("batch_delay_ms", 5.0,
                       "How long the first waiting image waits for others to fill a batch.",
                       lower_bound=0.0)
    flags.DEFINE_float("max_upload_mb", 50.0, "Largest upload in MiB (else 413).",
                       lower_bound=0.0)
    flags.DEFINE_float("max_megapixels", 50.0,
                       "Largest image in megapixels, read from the header (else 413).",
                       lower_bound=0.0)
    flags.DEFINE_integer("max_waiting", 64,
                         "Requests in progress at once; more are answered 503.", lower_bound=1)
    flags.DEFINE_integer("max_render_size", 1024, "Largest ?render_size accepted.",
                         lower_bound=1)
    flags.mark_flags_as_required(["model"])


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv4 or IPv6; port 0 picks a free one)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(2048)
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port/`` of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(model_path: str, step, host: str, port: int, batch_size: int, limits: Limits) -> None:
    """Loads, warms up, serves until a stop signal."""
    import uvicorn

    import jaxcolor

    # Until uvicorn takes over, SIGTERM interrupts loading like Ctrl-C (caught in ``main``).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    start = time.perf_counter()
    model = jaxcolor.load(model_path, step, batch_size=batch_size)
    size = model.image_size
    model.colorize_many([np.zeros((size, size, 3), np.uint8)])  # compiles the default program
    meta = model.metadata
    print(f"jaxcolor-serve: {meta.get('experiment')} ({meta.get('task')}) step "
          f"{meta.get('step')}, {size}px, batch {model.batch_size}; loaded and compiled in "
          f"{time.perf_counter() - start:.1f} s", flush=True)

    sock = bind(host, port)
    config = uvicorn.Config(create_app(model, limits), log_level="warning",
                            timeout_graceful_shutdown=30)
    server = uvicorn.Server(config)

    def stop(_signum, _frame):
        # uvicorn installs its own handlers while serving and calls this one again after its
        # graceful shutdown: a second signal here must not kill the process.
        server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    print(f"jaxcolor-serve: serving on {url_of(sock)} (Ctrl-C to stop)", flush=True)
    server.run(sockets=[sock])
    print("jaxcolor-serve: stopped", flush=True)


def main(argv: Sequence[str]) -> None:
    """absl entry point; a model or flag problem ends with its message and exit code 1
    (``run_app``)."""
    from absl import app, flags

    from jaxcolor.runs import parse_step

    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {list(argv[1:])}")
    limits = Limits(
        max_upload_bytes=int(FLAGS.max_upload_mb * MIB),
        max_pixels=int(FLAGS.max_megapixels * 1e6),
        max_waiting=FLAGS.max_waiting,
        max_render_size=FLAGS.max_render_size,
        batch_delay_ms=FLAGS.batch_delay_ms,
    )
    try:
        serve(FLAGS.model, parse_step(FLAGS.step), FLAGS.host, FLAGS.port, FLAGS.batch_size,
              limits)
    except KeyboardInterrupt:  # Ctrl-C while loading or compiling
        print("jaxcolor-serve: interrupted before serving", file=sys.stderr)


def run() -> None:
    """The ``jaxcolor-serve`` console script; a restart loads the compiled programs from the
    persistent compilation cache."""
    run_app(main, define_flags)
