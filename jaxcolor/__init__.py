"""jaxcolor: GANs that colorize grayscale photos, in JAX/Flax.

``jaxcolor.load(path)`` gives a trained colorizer (a run folder or an exported model):

    import jaxcolor
    model = jaxcolor.load("runs/lab_gan")
    rgb = model.colorize("photo.jpg")   # upright RGB (H, W, 3), uint8 for an 8-bit file
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jaxcolor.inference.model import Model

__all__ = ["load"]


def load(path: Any, step: int | str | None = None, *, batch_size: int = 8) -> Model:
    """A colorizer from a run folder or an exported model folder; see ``inference.load``."""
    from jaxcolor.inference.loading import load as _load

    return _load(path, step, batch_size=batch_size)
