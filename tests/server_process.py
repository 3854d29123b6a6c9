"""A ``python -m jaxcolor.serve`` subprocess on a free localhost port, for the service tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx


class ServerProcess:
    """Starts the server (``--port 0``), waits for its URL and for /api/health to answer."""

    def __init__(self, model: str, *flags: str, timeout: float = 180.0):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jaxcolor.serve", "--model", model, "--port", "0", *flags],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self._url = threading.Event()
        self.url = ""
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._url.wait(timeout) or self.proc.poll() is not None:
            self.proc.kill()
            raise RuntimeError("server did not start:\n" + self.output)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "api/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            found = re.search(r"serving on (http://\S+)", line)
            if found:
                self.url = found.group(1)
                self._url.set()

    @property
    def output(self) -> str:
        """Everything the server printed so far."""
        return "".join(self.lines)

    def health(self) -> dict:
        """GET /api/health as JSON."""
        return httpx.get(self.url + "api/health", timeout=30).json()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Sends ``sig`` and returns the exit code (kills after ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
