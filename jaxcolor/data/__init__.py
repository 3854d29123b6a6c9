"""Photos in, batches out: ``decoding`` (files -> RGB), ``listing`` (folders -> splits),
``examples`` (one photo -> one example), ``batches`` (the training record stream and evaluation
batches) and ``cache`` (a prepared uint8 ArrayRecord of the training split).

The names most callers need are re-exported here (``from jaxcolor import data``).
"""

from jaxcolor.data.batches import check_usable, eval_batches, train_dataset
from jaxcolor.data.decoding import (
    GRAYSCALE_TOLERANCE,
    SAMPLE_PREFIX,
    BadImageError,
    ImageSource,
    ImageTooLargeError,
    decode,
    is_grayscale,
    load_image,
    load_rgb,
    read_encoded,
    source_name,
    to_float_rgb,
)
from jaxcolor.data.examples import ExampleMaker, Skipped, make_example
from jaxcolor.data.listing import IMAGE_EXTENSIONS, SAMPLE_SPLITS, SPLITS, find_splits, list_images

__all__ = [
    "GRAYSCALE_TOLERANCE", "IMAGE_EXTENSIONS", "SAMPLE_PREFIX", "SAMPLE_SPLITS", "SPLITS",
    "BadImageError", "ExampleMaker", "ImageSource", "ImageTooLargeError", "Skipped",
    "check_usable", "decode", "eval_batches", "find_splits", "is_grayscale", "list_images",
    "load_image", "load_rgb", "make_example", "read_encoded", "source_name", "to_float_rgb",
    "train_dataset",
]
