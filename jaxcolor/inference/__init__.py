"""Inference: how an image becomes a prediction, the one inference core for every caller.

The trainer's validation, ``evaluate``, ``colorize``, the Python API (``jaxcolor.load``) and the
web service all go through this module:

1. ``as_image``: what a user hands in (NumPy array of any supported dtype and shape, PIL image,
   path, encoded bytes or a file object) -> upright RGB (H, W, 3) in its own depth.
2. ``network_input``: RGB -> the network's view at a network size: square ``size`` x ``size``
   for scoring, or the short side ``size`` with the aspect ratio kept (rendering), padded to the
   generator's multiple inside a *shape bucket* (``bucket_shape``) so that a long-running process
   compiles a bounded number of programs.
3. ``Predictor``: the generator's one jitted predict (``task.from_rgb`` -> network -> chroma
   in Lab units), batched, padded to a batch bucket.
4. ``to_rgb``: the input's own full-resolution L with the predicted ab (upsampled), fitted to
   the sRGB gamut by desaturating (L and hue kept). It works in row strips of a fixed pixel
   budget, so a 24-megapixel photo never has a full-size float copy in memory.

``Model`` (what ``jaxcolor.load`` returns) ties these together for one generator. This module
imports neither flax nor Orbax: an exported model runs with JAX alone.
"""

