"""Decoding: EXIF orientation, bytes and file objects, the header pixel-count guard."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import synthetic_photo
from PIL import Image, ImageOps

from jaxcolor import data
from jaxcolor.data import decoding as decode_module


def _jpeg_with_orientation(rgb: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[decode_module.EXIF_ORIENTATION_TAG] = orientation
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95, exif=exif)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(orientation):
    """Every EXIF orientation gives what PIL's exif_transpose (an independent reference) gives."""
    encoded = _jpeg_with_orientation(synthetic_photo(3, 24, 40), orientation)
    ours = data.load_rgb(encoded)
    with Image.open(io.BytesIO(encoded)) as im:
        reference = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), np.float32) / 255.0
    assert ours.shape == reference.shape
    # Same JPEG decoder family (libjpeg) but not the same build: allow a few grey levels.
    assert np.abs(ours - reference).mean() < 3 / 255


def test_orientation_6_is_upright():
    """A phone photo stored sideways (orientation 6) comes out upright: taller than wide."""
    stored = synthetic_photo(1, 30, 50)  # as the sensor stored it: 30 high, 50 wide
    rgb = data.load_rgb(_jpeg_with_orientation(stored, 6))
    assert rgb.shape == (50, 30, 3)
    # Rotating 90 degrees clockwise puts the stored bottom-left corner at the top left.
    expected = np.rot90(stored, -1).astype(np.float32) / 255.0
    assert np.abs(rgb - expected).mean() < 3 / 255


def test_bytes_path_and_file_object_decode_the_same(tmp_path):
    encoded = _jpeg_with_orientation(synthetic_photo(2), 1)
    path = tmp_path / "photo.jpg"
    path.write_bytes(encoded)
    from_path = data.load_rgb(str(path))
    np.testing.assert_array_equal(data.load_rgb(encoded), from_path)
    np.testing.assert_array_equal(data.load_rgb(bytearray(encoded)), from_path)
    with open(path, "rb") as f:
        np.testing.assert_array_equal(data.load_rgb(f), from_path)


def test_bad_bytes_name_the_source():
    with pytest.raises(data.BadImageError, match="empty"):
        data.decode(b"")
    with pytest.raises(data.BadImageError, match="not a decodable image"):
        data.decode(b"this is not an image")
    truncated = _jpeg_with_orientation(synthetic_photo(0), 1)[:60]
    with pytest.raises(data.BadImageError, match="<60 bytes>"):
        data.decode(truncated)


def test_pixel_limit_is_checked_before_decoding(monkeypatch):
    encoded = _jpeg_with_orientation(synthetic_photo(0, 40, 50), 1)
    assert data.decode(encoded, max_pixels=2000).shape == (40, 50, 3)
    monkeypatch.setattr(decode_module.cv2, "imdecode",
                        lambda *a: pytest.fail("decoded a too-large image"))
    with pytest.raises(data.ImageTooLargeError, match="2,000 pixels, over the limit of 1,999") as e:
        data.decode(encoded, max_pixels=1999)
    assert e.value.pixels == 2000


@pytest.mark.parametrize("depth", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_load_image_keeps_depth_and_gives_rgb(tmp_path, depth, channels):
    rgb8 = synthetic_photo(4, 20, 30)
    top = np.iinfo(depth).max
    rgb = (rgb8.astype(np.float64) / 255 * top).round().astype(depth)
    if channels == 1:
        stored, expected = rgb[..., 0], np.repeat(rgb[..., :1], 3, axis=-1)
    elif channels == 3:
        stored, expected = rgb[..., ::-1], rgb
    else:  # fully opaque alpha: the colours are unchanged
        stored = np.concatenate([rgb[..., ::-1], np.full(rgb.shape[:2] + (1,), top, depth)], -1)
        expected = rgb
    path = str(tmp_path / "image.png")
    assert decode_module.cv2.imwrite(path, np.ascontiguousarray(stored))
    out = data.load_image(path)
    assert out.dtype == depth and out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, expected)
