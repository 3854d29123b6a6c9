"""Decoded photos -> training and evaluation batches of normalised Lab and RGB.

``train_dataset`` gives this process's rows of every global batch of one globally shuffled
record stream (a seeded permutation per epoch), optionally augmented (resize, random crop,
flip), made ahead by threads or worker processes; its position is a global record count that any
process count can resume from (``GlobalBatches``). A file that cannot be used is skipped, and
its name and the reason travel with the next batch (key ``skipped``), so the trainer counts and
reports it; training never sees a garbage array.

Examples are dicts of float32 arrays: ``lab`` (L' a' b', see ``colour``) and ``rgb`` in [-1, 1],
both (H, W, 3). Transforms here are plain top-level classes: worker processes pickle them.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import multiprocessing
from collections.abc import Callable, Sequence

import numpy as np

from jaxcolor.data.examples import ExampleMaker, Skipped

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- batching

POSITION_FORMAT = "jaxcolor.data_position/1"


@functools.lru_cache(maxsize=16)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The file order of one epoch, the same in every process. One NumPy permutation per epoch:
    Grain's random-access index shuffle, used before, took about 5 ms of CPU per record in a
    folder of a few files (the quick run's 7 photos), a tenth of the quick run's time."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    order.flags.writeable = False
    return order


def _make_example(maker: Callable, path: str | int, rng_seed: tuple[int, int]):
    """One stream record; top level so that worker processes can unpickle it."""
    rng = np.random.default_rng(rng_seed) if maker.augment else None
    return maker(path, rng)


class GlobalBatches:
    """This process's rows of every global batch, read from one globally shuffled record stream.

    The stream is endless: position ``p`` holds file ``order[p]`` (a permutation of all files
    seeded by ``(seed, epoch)``, so reshuffled each epoch), augmented with an rng keyed by
    ``(seed, p)``. Row ``j`` of the global batch (``batch_size`` rows) reads the stream
    positions ``j, j + B, j + 2B, ...`` (its *lane*): row ``j`` of batch ``k`` is its lane's
    next usable record. An unusable record is skipped and counted, and the row takes the next
    record of its own lane, so a refill is decided by that row alone. Processes therefore never
    talk while reading, and any process count, each process reading its own rows (process ``i``
    of ``n`` holds rows ``i*B/n .. (i+1)*B/n - 1``), trains on the same global batches.

    Position (``get_state``): ``batches`` delivered and ``row_skips`` (records each row skipped);
    lane ``j`` reads next at ``(batches + row_skips[j]) * B + j``. ``records_consumed``
    (``batches * B + sum(row_skips)``) is the global count of source records used so far. The
    state covers the whole global batch, so a run saved by N processes resumes with M.

    Records are made ahead, ``depth`` batches per lane, by 2 threads (``num_workers=0``; OpenCV
    releases the GIL) or by ``num_workers`` spawned worker processes.
    """

    def __init__(self, files: Sequence[str], *, image_size: int, batch_size: int, seed: int,
                 augment: bool = True, skip_grayscale: bool = True, num_workers: int = 0,
                 max_pixels: int | None = None,
                 process_index: int = 0, process_count: int = 1, cache: str | None = None,
                 crop_scale: tuple[float, float] | None = None,
                 crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        if batch_size % process_count:
            raise ValueError(f"global batch {batch_size} does not divide by the process count "
                             f"({process_count})")
        if cache:  # record indices stand for the files
            from jaxcolor.data.cache import cached_examples

            files, self._maker = cached_examples(cache, image_size, augment, crop_scale,
                                                 crop_ratio)
        else:
            self._maker = ExampleMaker(image_size, augment=augment,
                                       skip_grayscale=skip_grayscale, max_pixels=max_pixels,
                                       crop_scale=crop_scale, crop_ratio=crop_ratio)
        if not files:
            raise ValueError("no training file")
        self._files = list(files)
        self._seed, self.batch_size = seed, batch_size
        local = batch_size // process_count
        self.rows = np.arange(process_index * local, (process_index + 1) * local)
        self._batches = 0
        self._skips = np.zeros(local, np.int64)
        # A lane sees every B-th record, not a permutation: even with one usable file among N it
        # misses it 14 N times running with probability about exp(-14) (1e-6). Beyond that, the
        # folder has become unreadable (a lost mount, say).
        self._max_consecutive = 16 + 14 * len(files)
        if num_workers > 0:  # spawned: workers must not inherit a started JAX runtime
            self._pool = concurrent.futures.ProcessPoolExecutor(
                num_workers, mp_context=multiprocessing.get_context("spawn"))
        else:
            self._pool = concurrent.futures.ThreadPoolExecutor(2)
        self._depth = max(2, -(-2 * max(num_workers, 1) // local))
        self._pending: dict[int, concurrent.futures.Future] = {}
        self.resumed_records = 0  # global records consumed at the last set_state

    def __iter__(self) -> GlobalBatches:
        return self

    def _lane_position(self, i: int, ahead: int = 0) -> int:
        return int((self._batches + self._skips[i] + ahead) * self.batch_size + self.rows[i])

    def _record(self, position: int):
        future = self._pending.pop(position, None)
        if future is None:
            future = self._submit(position)
        return future.result()

    def _file_index(self, position: int) -> int:
        epoch, index = divmod(position, len(self._files))
        return int(_permutation(self._seed, epoch, len(self._files))[index])

    def _submit(self, position: int):
        path = self._files[self._file_index(position)]
        return self._pool.submit(_make_example, self._maker, path, (self._seed, position))

    def _prefetch(self) -> None:
        for i in range(len(self.rows)):
            for ahead in range(self._depth):
                position = self._lane_position(i, ahead)
                if position not in self._pending:
                    self._pending[position] = self._submit(position)

    def __next__(self) -> dict[str, np.ndarray]:
        self._prefetch()
        good, skipped = [], []
        for i in range(len(self.rows)):
            consecutive = 0
            while isinstance(element := self._record(self._lane_position(i)), Skipped):
                skipped.append(element.reason)
                self._skips[i] += 1
                consecutive += 1
                if consecutive > self._max_consecutive:
                    raise RuntimeError(
                        f"{consecutive} files in a row could not be used (last: "
                        f"{element.reason}); is the data folder readable?")
            good.append(element)
        self._batches += 1
        self._prefetch()
        batch = {k: np.stack([g[k] for g in good]) for k in good[0]}
        batch["skipped"] = np.asarray(skipped, dtype=np.str_)
        return batch

    @property
    def local_row_skips(self) -> np.ndarray:
        """Records skipped so far by each of this process's rows."""
        return self._skips.copy()

    def get_state(self, gather=None) -> dict:
        """The global position. ``gather`` maps this process's ``row_skips`` to all processes'
        in process order (a cross-process all-gather); it may be omitted with one process."""
        skips = self._skips if gather is None else np.asarray(gather(self._skips)).reshape(-1)
        if skips.size != self.batch_size:
            raise ValueError(f"get_state: {skips.size} row positions for a global batch of "
                             f"{self.batch_size}; pass a gather over all processes")
        return {
            "format": POSITION_FORMAT,
            "records_consumed": int(self._batches * self.batch_size + skips.sum()),
            "batches": self._batches,
            "row_skips": [int(s) for s in skips],
            "global_batch_size": self.batch_size,
            "num_files": len(self._files),
            "seed": self._seed,
        }

    def set_state(self, state: dict) -> None:
        """Moves to a position from ``get_state`` (any process count). A position with only
        ``records_consumed``, or saved with another global batch size, resumes at the first
        whole batch at or after that record count."""
        if state.get("format") != POSITION_FORMAT:
            raise ValueError(f"unknown data position format {state.get('format')!r} "
                             f"(expected {POSITION_FORMAT!r})")
        for key, mine in (("num_files", len(self._files)), ("seed", self._seed)):
            if key in state and state[key] != mine:
                log.warning("data position saved with %s=%s, this run has %s: the record "
                            "order differs from the saved run's", key, state[key], mine)
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        self.resumed_records = int(state["records_consumed"])
        if state.get("global_batch_size") == self.batch_size and "row_skips" in state:
            self._batches = int(state["batches"])
            self._skips = np.asarray(state["row_skips"], np.int64)[self.rows]
        else:
            records = int(state["records_consumed"])
            self._batches = -(-records // self.batch_size)
            self._skips = np.zeros(len(self.rows), np.int64)
            log.warning("data position of %d records resumed as %d whole global batches of %d",
                        records, self._batches, self.batch_size)

    def close(self) -> None:
        """Stops the reader threads or worker processes."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def train_dataset(
    files: Sequence[str],
    *,
    image_size: int,
    batch_size: int,
    seed: int,
    augment: bool = True,
    skip_grayscale: bool = True,
    num_workers: int = 0,
    max_pixels: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    cache: str | None = None,
    crop_scale: tuple[float, float] | None = None,
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> GlobalBatches:
    """Endless shuffled batches: this process's rows of each global batch of ``batch_size``.

    See ``GlobalBatches``: 1 process and N processes read the same global batches, and the
    checkpointable position is global. Images over ``max_pixels`` pixels are skipped (and
    reported) like other unusable files. ``cache``: read the prepared ArrayRecord file of
    ``jaxcolor.data.cache`` instead of ``files`` (its record indices stand for the files; the
    same shuffle, crop and flip apply). ``crop_scale``/``crop_ratio``: random-resized crops
    instead of the fixed-margin crop (``ExampleMaker``).
    """
    return GlobalBatches(files, image_size=image_size, batch_size=batch_size, seed=seed,
                         augment=augment, skip_grayscale=skip_grayscale,
                         num_workers=num_workers, max_pixels=max_pixels,
                         process_index=process_index,
                         process_count=process_count, cache=cache,
                         crop_scale=crop_scale, crop_ratio=crop_ratio)


def eval_batches(
    files: Sequence[str],
    *,
    image_size: int,
    batch_size: int,
    skip_grayscale: bool = True,
    max_images: int | None = None,
    max_pixels: int | None = None,
) -> tuple[list[dict[str, np.ndarray]], list[str]]:
    """Fixed evaluation batches (no augmentation), in file order, and the reasons for skipped files.

    The last batch is filled by wrapping around to the first images, so every batch has
    ``batch_size`` examples (what a sharded step needs); ``valid`` marks the real ones.
    """
    maker = ExampleMaker(image_size, augment=False, skip_grayscale=skip_grayscale,
                         max_pixels=max_pixels)
    examples, skipped = [], []
    for path in files:
        example = maker(path)
        if isinstance(example, Skipped):
            skipped.append(example.reason)
        else:
            examples.append(example)
        if max_images is not None and len(examples) >= max_images:
            break
    if not examples:
        return [], skipped
    n = len(examples)
    padded = -(-n // batch_size) * batch_size
    batches = []
    for start in range(0, padded, batch_size):
        idx = [i % n for i in range(start, start + batch_size)]
        batch = {k: np.stack([examples[i][k] for i in idx]) for k in examples[0]}
        batch["valid"] = np.array([i < n for i in range(start, start + batch_size)])
        batches.append(batch)
    return batches, skipped


def check_usable(files: Sequence[str], what: str, skip_grayscale: bool = True,
                 max_pixels: int | None = None) -> None:
    """Fails at start, naming ``what``, when none of ``files`` gives a usable image.

    Stops at the first usable file, so a healthy folder costs one decode.
    """
    maker = ExampleMaker(8, skip_grayscale=skip_grayscale, max_pixels=max_pixels)
    reasons = []
    for path in files:
        result = maker(path)
        if not isinstance(result, Skipped):
            return
        reasons.append(result.reason)
    shown = "; ".join(reasons[:3]) + (" ..." if len(reasons) > 3 else "")
    raise ValueError(f"{what}: none of {len(files)} image files is usable ({shown})")
