"""The service's batcher: full batches, and a failing image answered alone."""

from __future__ import annotations

import numpy as np
import pytest

from jaxcolor.serve.batching import Batcher


class _FakeModel:
    """Records its calls; refuses images whose first pixel is 255."""

    batch_size = 4

    def __init__(self):
        self.calls: list[int] = []
        self.strengths: list[float | None] = []

    def colorize_many(self, images, *, render_size=None, colour_strength=None):
        self.calls.append(len(images))
        self.strengths.append(colour_strength)
        if any(image.flat[0] == 255 for image in images):
            raise ValueError("refused")
        return [image + 1 for image in images]


def test_batcher_fills_batches_and_isolates_a_failure():
    model = _FakeModel()
    batcher = Batcher(model, max_delay_s=5.0)  # long window: only a full batch ends it early
    images = [np.full((2, 2, 3), v, np.uint8) for v in (1, 2, 255, 4)]
    futures = [batcher.submit(image) for image in images]
    for image, future in zip(images, futures, strict=True):
        if image.flat[0] == 255:
            with pytest.raises(ValueError, match="refused"):
                future.result(10)
        else:
            np.testing.assert_array_equal(future.result(10), image + 1)
    batcher.close()
    assert model.calls == [4, 1, 1, 1, 1]  # one full batch, then each image alone


def test_batcher_groups_by_colour_strength():
    model = _FakeModel()
    batcher = Batcher(model, max_delay_s=5.0)
    image = np.zeros((2, 2, 3), np.uint8)
    futures = [batcher.submit(image, None, s) for s in (0.5, None, 0.5, 0.0)]
    for future in futures:
        future.result(10)
    batcher.close()
    # One full batch of 4 jobs, one colorize_many per strength: the default first.
    assert model.calls == [1, 1, 2] and model.strengths == [None, 0.0, 0.5]
