"""Concurrent requests onto the device in batches: one worker thread owns the model.

``Batcher.submit`` queues a decoded image and returns a future. The worker takes the first
waiting image, then keeps collecting until it holds ``model.batch_size`` images or
``max_delay_s`` has passed since the first, and colorizes them with one ``colorize_many`` call
per render size and colour strength (the model batches them on the device through its shape
buckets). A request
whose image fails is answered with its own error; the others in its batch are unaffected.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import logging
import queue
import threading
import time
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)


class Model(Protocol):
    """What the batcher needs of ``jaxcolor.load``'s model."""

    batch_size: int

    def colorize_many(self, images: list[np.ndarray], *, render_size: int | None = None,
                      colour_strength: float | None = None) -> list[np.ndarray]: ...


@dataclasses.dataclass
class _Job:
    image: np.ndarray
    render_size: int | None
    colour_strength: float | None
    future: concurrent.futures.Future


_STOP = object()


class Batcher:
    """Owns ``model`` on one worker thread; ``submit`` from any thread."""

    def __init__(self, model: Model, max_delay_s: float = 0.005):
        self.model = model
        self.max_delay_s = max_delay_s
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="jaxcolor-device", daemon=True)
        self._thread.start()

    def submit(self, image: np.ndarray, render_size: int | None = None,
               colour_strength: float | None = None) -> concurrent.futures.Future:
        """Queues ``image``; the future gives the colorized array or raises the model's error."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put(_Job(image, render_size, colour_strength, future))
        return future

    def close(self, timeout: float | None = 30.0) -> None:
        """Finishes the queued jobs, then stops the worker."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _collect(self) -> tuple[list[_Job], bool]:
        """The next batch (blocks for its first job) and whether the stop sentinel came."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self.max_delay_s
        while len(batch) < self.model.batch_size:
            try:
                # Jobs already queued are taken even after the deadline: they have waited.
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is _STOP:
                return batch, True
            batch.append(job)
        return batch, False

    def _work(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._collect()
            # None (the model's default) sorts before any given value.
            key = lambda job: (-1 if job.render_size is None else job.render_size,
                               -1.0 if job.colour_strength is None else job.colour_strength)
            for _, group in itertools.groupby(sorted(batch, key=key), key=key):
                self._run(list(group))

    def _run(self, jobs: list[_Job]) -> None:
        jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        try:
            outputs = self.model.colorize_many([j.image for j in jobs],
                                               render_size=jobs[0].render_size,
                                               colour_strength=jobs[0].colour_strength)
        except Exception as e:  # noqa: BLE001 - each request gets its own answer below
            if len(jobs) == 1:
                jobs[0].future.set_exception(e)
                return
            # Which image failed is unknown: run each alone so only the bad one fails.
            log.info("batch of %d failed (%s); retrying one by one", len(jobs), e)
            for job in jobs:
                self._run_one(job)
            return
        for job, out in zip(jobs, outputs, strict=True):
            job.future.set_result(out)

    def _run_one(self, job: _Job) -> None:
        try:
            (out,) = self.model.colorize_many([job.image], render_size=job.render_size,
                                              colour_strength=job.colour_strength)
        except Exception as e:  # noqa: BLE001 - handed to the request that sent it
            job.future.set_exception(e)
        else:
            job.future.set_result(out)
