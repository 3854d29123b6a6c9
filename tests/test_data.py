"""Tests for jaxcolor.data: listing, splits, decoding odd files, examples and Grain batching."""

from __future__ import annotations

import json
import os
import re

import cv2
import numpy as np
import pytest
from conftest import synthetic_photo, write_photos
from PIL import Image
from skimage import data as skdata

from jaxcolor import colour, data

S = 16  # example size for the batching tests: small and fast


def _touch(path: str, content: bytes = b"") -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)
    return path


def _write_rgb(path: str, rgb: np.ndarray) -> str:
    """Writes an RGB (or single-channel) array with OpenCV, which expects BGR."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = rgb[..., ::-1] if rgb.ndim == 3 and rgb.shape[-1] == 3 else rgb
    assert cv2.imwrite(path, np.ascontiguousarray(image))
    return path


def _truncate(path: str) -> str:
    """Cuts a file to half its bytes."""
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(raw[: len(raw) // 2])
    return path


def _gray_photo(seed: int = 0) -> np.ndarray:
    """A uint8 photo with equal channels (no colour)."""
    gray = cv2.cvtColor(synthetic_photo(seed), cv2.COLOR_RGB2GRAY)
    return np.repeat(gray[..., None], 3, axis=-1)


def _mixed_folder(root: str) -> tuple[list[str], list[str]]:
    """8 good photos in five formats plus 3 unusable files; returns (good, bad) paths."""
    good = (
        write_photos(root, 3, ".png")
        + write_photos(root, 2, ".jpg", start=3)
        + write_photos(root, 1, ".webp", start=5)
        + write_photos(root, 1, ".bmp", start=6)
        + write_photos(os.path.join(root, "sub"), 1, ".TIF", start=7)
    )
    bad = [
        _touch(os.path.join(root, "zero_bytes.png")),
        _truncate(_write_rgb(os.path.join(root, "corrupt.jpg"), synthetic_photo(50))),
        _write_rgb(os.path.join(root, "gray.png"), _gray_photo()[..., 0]),
    ]
    return good, bad


def _fingerprints(paths, size: int = S) -> dict[str, np.ndarray]:
    """Expected un-augmented ``rgb`` of each usable file, to tell batch rows apart."""
    maker = data.ExampleMaker(size, augment=False)
    out = {}
    for p in paths:
        example = maker(p)
        if not isinstance(example, data.Skipped):
            out[p] = example["rgb"]
    return out


def _identify(rgb: np.ndarray, expected: dict[str, np.ndarray]) -> str:
    """The file whose expected example equals ``rgb`` exactly (each photo is distinct)."""
    matches = [p for p, e in expected.items() if np.array_equal(e, rgb)]
    assert len(matches) == 1, f"batch row matches {len(matches)} files"
    return matches[0]


def _named_file(reason: str, paths) -> str:
    """The one path among ``paths`` that a skip reason names."""
    named = [p for p in paths if p in str(reason)]
    assert len(named) == 1, f"reason {reason!r} names {named}"
    return named[0]


def _take(ds, n: int) -> list[dict[str, np.ndarray]]:
    it = iter(ds)
    return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ----------------------------------------------------------------------------- list_images


def test_list_images_recursive_any_case_sorted(tmp_path):
    root = str(tmp_path)
    names = [
        "b.JPG", "a.Png", "c.jpeg", "d.webp", "e.bmp", "f.tif", "g.tiff", "h.TIFF",
        "sub/x.png", "sub/deeper/y.JpEg", "z/a.jpg",
    ]
    for n in names:
        _touch(os.path.join(root, n))
    for n in ["notes.txt", "sub/readme.md", "image.png.txt", "noext", "sub/.hidden", "x.gif"]:
        _touch(os.path.join(root, n))
    found = data.list_images(root)
    assert found == sorted(os.path.join(root, n) for n in names)


def test_list_images_empty_and_missing(tmp_path):
    assert data.list_images(str(tmp_path)) == []
    assert data.list_images(str(tmp_path / "missing")) == []


# ----------------------------------------------------------------------------- find_splits


def _flickr_layout(root: str, train_dir="Train", val_dir="Validation", test_dir="Test"):
    layout = {"train": (train_dir, range(1, 5)), "validation": (val_dir, range(5, 7)),
              "test": (test_dir, range(7, 9))}
    expected = {}
    for split, (folder, ids) in layout.items():
        expected[split] = []
        if folder is None:
            continue
        for i in ids:
            for view in "LR":
                expected[split].append(_touch(os.path.join(root, folder, f"{i:04d}_{view}.png")))
    return {k: sorted(v) for k, v in expected.items()}


def test_find_splits_flickr1024_layout(tmp_path):
    root = str(tmp_path)
    expected = _flickr_layout(root)
    _touch(os.path.join(root, "README.txt"))
    assert data.find_splits(root) == expected


def test_find_splits_flickr_case_insensitive_and_missing_validation(tmp_path):
    root = str(tmp_path)
    expected = _flickr_layout(root, train_dir="train", val_dir=None, test_dir="TEST")
    splits = data.find_splits(root)
    assert splits["train"] == expected["train"]
    assert splits["test"] == expected["test"]
    assert splits["validation"] == expected["test"]  # no Validation/: falls back to Test/


def test_find_splits_flickr_empty_train_raises(tmp_path):
    os.makedirs(tmp_path / "Train")
    _touch(str(tmp_path / "Test" / "0001_L.png"))
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "Train"))):
        data.find_splits(str(tmp_path))


def _stereo_folder(root: str, pairs: int) -> list[str]:
    paths = []
    for i in range(pairs):
        for view in "LR":
            paths.append(_touch(os.path.join(root, f"{i:04d}_{view}.png")))
    return sorted(paths)


def test_find_splits_flat_folder_is_deterministic_and_keeps_pairs(tmp_path):
    root = str(tmp_path)
    files = _stereo_folder(root, 60)
    splits = data.find_splits(root, val_fraction=0.1, seed=0)
    assert splits == data.find_splits(root, val_fraction=0.1, seed=0)
    train, val = splits["train"], splits["validation"]
    assert val and train
    assert not set(train) & set(val)
    assert sorted(train + val) == files
    assert splits["test"] == val
    # Both views of a pair land in the same split.
    for path in val:
        other = path.replace("_L.png", "_R.png") if path.endswith("_L.png") else \
            path.replace("_R.png", "_L.png")
        assert other in val
    # The fraction is honoured (hash-based, so only roughly) and the seed picks another split.
    big = data.find_splits(root, val_fraction=0.5, seed=0)["validation"]
    assert 0.3 * len(files) < len(big) < 0.7 * len(files)
    assert data.find_splits(root, val_fraction=0.1, seed=1)["validation"] != val


def test_find_splits_flat_photo_dir(photo_dir):
    splits = data.find_splits(photo_dir)
    files = data.list_images(photo_dir)
    assert len(files) == 12
    assert splits["validation"] and splits["train"]
    assert not set(splits["train"]) & set(splits["validation"])
    assert sorted(splits["train"] + splits["validation"]) == files


def test_find_splits_tiny_folders(tmp_path):
    two = _stereo_folder(str(tmp_path / "pair"), 1)
    splits = data.find_splits(str(tmp_path / "pair"))
    assert splits["train"] == two and splits["validation"] == two  # one pair: used for both

    single = [_touch(str(tmp_path / "one" / "a.png"))]
    splits = data.find_splits(str(tmp_path / "one"))
    assert splits["train"] == single and splits["validation"] == single

    files = [_touch(str(tmp_path / "three" / f"{n}.png")) for n in "abc"]
    splits = data.find_splits(str(tmp_path / "three"))
    assert len(splits["validation"]) == 1  # never empty, even where no file hashes below 0.1
    assert sorted(splits["train"] + splits["validation"]) == files


def test_find_splits_no_images_raises_naming_folder(tmp_path):
    root = tmp_path / "empty_photos"
    _touch(str(root / "notes.txt"))
    with pytest.raises(ValueError, match=re.escape(str(root))):
        data.find_splits(str(root))


def test_find_splits_missing_dir_raises(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        data.find_splits(str(tmp_path / "nope"))
    _touch(str(tmp_path / "file.png"))
    with pytest.raises(ValueError, match="not a directory"):
        data.find_splits(str(tmp_path / "file.png"))


def test_find_splits_none_gives_decodable_sample_photos():
    splits = data.find_splits(None)
    assert set(splits) == {"train", "validation", "test"}
    assert all(splits[s] for s in splits)
    names = {n for s in splits.values() for n in s}
    assert all(n.startswith(data.SAMPLE_PREFIX) for n in names)
    assert not set(splits["train"]) & set(splits["validation"])
    for name in sorted(names):
        rgb = data.load_rgb(name)
        assert rgb.ndim == 3 and rgb.shape[-1] == 3, name
        assert rgb.dtype == np.float32, name
        assert rgb.min() >= 0.0 and rgb.max() <= 1.0, name
        assert not data.is_grayscale(rgb), name
    # Channel order: the sample decodes to the photo's own RGB, not BGR.
    astronaut = skdata.astronaut().astype(np.float32) / 255.0
    np.testing.assert_array_equal(data.load_rgb("skimage:astronaut"), astronaut)
    assert not np.array_equal(
        data.load_rgb("skimage:stereo_motorcycle_L"), data.load_rgb("skimage:stereo_motorcycle_R")
    )


# ----------------------------------------------------------------------------- decoding


def test_load_rgb_8bit_png_and_jpg(tmp_path):
    rgb = synthetic_photo(1)
    png = _write_rgb(str(tmp_path / "a.png"), rgb)
    out = data.load_rgb(png)
    assert out.dtype == np.float32 and out.shape == rgb.shape
    np.testing.assert_array_equal(out, rgb.astype(np.float32) / 255.0)  # channel order kept
    jpg = _write_rgb(str(tmp_path / "a.jpg"), rgb)
    assert np.abs(data.load_rgb(jpg) - rgb / 255.0).mean() < 0.02


def test_load_rgb_16bit_png(tmp_path):
    rng = np.random.default_rng(0)
    rgb16 = rng.integers(0, 65536, size=(12, 10, 3), dtype=np.uint16)
    rgb16[0, 0] = [65535, 32768, 0]
    path = _write_rgb(str(tmp_path / "deep.png"), rgb16)
    assert cv2.imread(path, cv2.IMREAD_UNCHANGED).dtype == np.uint16  # really 16-bit on disk
    out = data.load_rgb(path)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, rgb16 / 65535.0, atol=1e-4)
    # Through ExampleMaker (which resizes at 16-bit depth first): a flat 16-bit colour.
    flat = np.broadcast_to(np.array([65535, 32768, 0], np.uint16), (20, 20, 3))
    example = data.ExampleMaker(8)(_write_rgb(str(tmp_path / "flat16.png"), flat))
    np.testing.assert_allclose(example["rgb"], np.broadcast_to([1.0, 0.0, -1.0], (8, 8, 3)),
                               atol=1e-4)


def test_load_rgb_float_tiff(tmp_path):
    rgb = np.random.default_rng(1).random((6, 7, 3)).astype(np.float32)
    rgb[0, 0] = [1.5, -0.5, 0.25]  # out of range: clipped
    out = data.load_rgb(_write_rgb(str(tmp_path / "f.tiff"), rgb))
    np.testing.assert_allclose(out, np.clip(rgb, 0, 1), atol=1e-6)


def test_load_rgb_rgba_transparent_is_white(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., :3] = [200, 10, 50]  # RGB
    rgba[..., 3] = 255
    rgba[0, :, 3] = 0  # fully transparent row (colour underneath must not show)
    rgba[1, :, 3] = 128
    bgra = rgba[..., [2, 1, 0, 3]]
    path = str(tmp_path / "alpha.png")
    assert cv2.imwrite(path, bgra)
    out = data.load_rgb(path)
    assert out.shape == (4, 5, 3)
    np.testing.assert_allclose(out[0], 1.0, atol=1e-6)
    a = 128 / 255
    np.testing.assert_allclose(out[1], np.broadcast_to(np.array([200, 10, 50]) / 255 * a + 1 - a,
                                                       (5, 3)), atol=1e-6)
    np.testing.assert_allclose(out[2:], np.broadcast_to(np.array([200, 10, 50]) / 255, (2, 5, 3)),
                               atol=1e-6)


def test_load_rgb_gray_with_alpha(tmp_path):
    la = np.zeros((3, 4, 2), np.uint8)
    la[..., 0] = 100
    la[..., 1] = 255
    la[0, 0, 1] = 0
    la[0, 1, 1] = 128
    path = str(tmp_path / "la.png")
    Image.fromarray(la, "LA").save(path)
    out = data.load_rgb(path)
    assert out.shape == (3, 4, 3)
    np.testing.assert_allclose(out[0, 0], 1.0, atol=1e-6)
    a = 128 / 255
    np.testing.assert_allclose(out[0, 1], 100 / 255 * a + 1 - a, atol=1e-6)
    np.testing.assert_allclose(out[1:], 100 / 255, atol=1e-6)


def test_to_float_rgb_two_channel_gray_alpha():
    """OpenCV 5 decodes gray+alpha PNG/WebP as BGRA (above) and drops alpha of gray+alpha
    TIFFs, so the 2-channel branch is only reachable directly; it must still composite."""
    la = np.array([[[100, 0], [100, 128], [100, 255]]], np.uint8)
    out = data.to_float_rgb(la, "x.png")
    assert out.shape == (1, 3, 3)
    a = 128 / 255
    np.testing.assert_allclose(out[0, :, 0], [1.0, 100 / 255 * a + 1 - a, 100 / 255], atol=1e-6)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()


@pytest.mark.parametrize("kind", ["png_1_channel", "png_3_channels", "jpg_3_channels"])
def test_grayscale_sources_skipped_only_when_asked(tmp_path, kind):
    gray = _gray_photo()
    if kind == "png_1_channel":
        path = _write_rgb(str(tmp_path / "g.png"), gray[..., 0])
        assert cv2.imread(path, cv2.IMREAD_UNCHANGED).ndim == 2
    else:
        path = _write_rgb(str(tmp_path / ("g.png" if kind.startswith("png") else "g.jpg")), gray)
    rgb = data.load_rgb(path)
    assert rgb.shape == gray.shape and data.is_grayscale(rgb)

    skipped = data.ExampleMaker(S, skip_grayscale=True)(path)
    assert isinstance(skipped, data.Skipped)
    assert skipped.path == path
    assert path in skipped.reason and "grayscale" in skipped.reason

    kept = data.ExampleMaker(S, skip_grayscale=False)(path)
    assert not isinstance(kept, data.Skipped)
    assert kept["lab"].shape == (S, S, 3)
    assert np.abs(kept["lab"][..., 1:]).max() < 0.01  # no colour: a' = b' = 0


def test_colour_photo_not_grayscale():
    assert not data.is_grayscale(synthetic_photo(0) / 255.0)
    # One colourful pixel in a thousand is below the 0.999 quantile: still grayscale.
    gray = np.full((50, 20, 3), 0.5, np.float32)
    gray[0, 0] = [1, 0, 0]
    assert data.is_grayscale(gray)
    gray[:, :2] = [1, 0, 0]  # 10% coloured
    assert not data.is_grayscale(gray)


def _bad_files(root) -> dict[str, str]:
    """Unusable files, keyed by a short name."""
    root = str(root)
    text = _touch(os.path.join(root, "notes.jpg"), b"this is not an image\n" * 20)
    zero = _touch(os.path.join(root, "zero.png"))
    png = _truncate(_write_rgb(os.path.join(root, "cut.png"), synthetic_photo(2, 64, 64)))
    # OpenCV 5.0 (libjpeg-turbo) rejects a JPEG cut to half its bytes (imdecode returns None)
    # instead of decoding the top part and padding the rest with gray, which older builds did;
    # checked for sizes up to 512 px. So a truncated JPEG is skipped like any corrupt file.
    jpg = _truncate(_write_rgb(os.path.join(root, "cut.jpg"), synthetic_photo(3, 64, 64)))
    return {"text": text, "zero": zero, "truncated_png": png, "truncated_jpg": jpg}


@pytest.mark.parametrize("kind", ["text", "zero", "truncated_png", "truncated_jpg"])
def test_bad_files_are_skipped_naming_the_file(tmp_path, kind):
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(data.BadImageError, match=re.escape(path)):
        data.load_rgb(path)
    result = data.ExampleMaker(S)(path)
    assert isinstance(result, data.Skipped)
    assert result.path == path and path in result.reason
    if kind == "zero":
        assert "empty" in result.reason


def test_missing_file_raises_bad_image_error(tmp_path):
    path = str(tmp_path / "gone.png")
    with pytest.raises(data.BadImageError, match=re.escape(path)):
        data.decode(path)
    assert isinstance(data.ExampleMaker(S)(path), data.Skipped)
    assert issubclass(data.BadImageError, ValueError)


# ----------------------------------------------------------------------------- ExampleMaker


def test_example_maker_output(tmp_path):
    path = write_photos(str(tmp_path), 1)[0]
    example = data.ExampleMaker(32)(path)
    assert set(example) == {"lab", "rgb"}
    for k in ("lab", "rgb"):
        assert example[k].shape == (32, 32, 3) and example[k].dtype == np.float32, k
        assert np.isfinite(example[k]).all(), k
    lab, rgb = example["lab"], example["rgb"]
    assert -1.0 <= lab[..., 0].min() and lab[..., 0].max() <= 1.0
    assert np.abs(lab[..., 1:]).max() <= 1.0
    assert -1.0 <= rgb.min() and rgb.max() <= 1.0
    assert rgb.min() < -0.5 and rgb.max() > 0.5  # really in [-1, 1], not [0, 1]
    # lab and rgb describe the same image.
    back = colour.lab_norm_to_rgb(lab[..., :1], lab[..., 1:])
    assert np.abs(back - (rgb + 1.0) / 2.0).max() < 8e-3


def test_example_maker_without_augment_is_deterministic_area_resize(tmp_path):
    path = write_photos(str(tmp_path), 1)[0]
    maker = data.ExampleMaker(S)
    a, b = maker(path), maker(path)
    _assert_batches_equal([a], [b])
    resized = cv2.resize(cv2.imread(path), (S, S), interpolation=cv2.INTER_AREA)
    expected = data.make_example(resized[..., ::-1].astype(np.float32) / 255.0)
    _assert_batches_equal([a], [expected])
    # augment=True without an rng (a plain map) takes the same path.
    _assert_batches_equal([data.ExampleMaker(S, augment=True)(path)], [a])


def test_example_maker_augment_crops_and_flips(tmp_path):
    size, margin = 16, 0.25
    path = write_photos(str(tmp_path), 1)[0]
    big = round(size * (1 + margin))  # 20: crop offsets 0..4
    resized = cv2.resize(cv2.imread(path), (big, big), interpolation=cv2.INTER_AREA)
    candidates = {}
    for top in range(big - size + 1):
        for left in range(big - size + 1):
            window = resized[top : top + size, left : left + size, ::-1]
            for flip in (False, True):
                crop = window[:, ::-1] if flip else window
                rgb = np.ascontiguousarray(crop).astype(np.float32) / 255.0
                candidates[(top, left, flip)] = data.make_example(rgb)["rgb"]

    maker = data.ExampleMaker(size, augment=True, crop_margin=margin)
    seen = []
    for seed in range(16):
        out = maker(path, np.random.default_rng(seed))
        assert out["rgb"].shape == (size, size, 3)
        same = maker(path, np.random.default_rng(seed))
        _assert_batches_equal([out], [same])  # same seed: same crop and flip
        match = [key for key, c in candidates.items() if np.array_equal(c, out["rgb"])]
        assert len(match) == 1, f"seed {seed}: output is not one crop of the resized image"
        seen.append(match[0])
    assert seen[0] != seen[1]  # different rngs: different crop/flip
    assert len({(t, left) for t, left, _ in seen}) >= 5
    assert {f for _, _, f in seen} == {False, True}


# ----------------------------------------------------------------------------- train_dataset


def test_train_dataset_mixed_folder_batches(tmp_path):
    root = str(tmp_path / "mixed")
    good, bad = _mixed_folder(root)
    files = data.list_images(root)
    assert sorted(good + bad) == files
    batch_size, epochs = 4, 3
    ds = data.train_dataset(files, image_size=S, batch_size=batch_size, seed=0)
    batches = _take(ds, epochs * len(good) // batch_size)
    counts = dict.fromkeys(bad, 0)
    for batch in batches:
        assert set(batch) == {"lab", "rgb", "skipped"}
        for k in ("lab", "rgb"):
            assert batch[k].shape == (batch_size, S, S, 3) and batch[k].dtype == np.float32
            assert np.isfinite(batch[k]).all()
            assert np.abs(batch[k]).max() <= 1.0
        for reason in batch["skipped"]:
            counts[_named_file(reason, bad)] += 1
    # Row j reads stream positions j, j + 4, ...; it reads next at (batches + skips_j) * 4 + j.
    # Every position below the smallest of those was read, none at or above the largest, and
    # each epoch of len(files) positions holds each file once: so each bad file was passed
    # over once per epoch read in full, and at most once per epoch touched.
    state = ds.get_state()
    ds.close()
    next_reads = [(state["batches"] + s) * batch_size + j
                  for j, s in enumerate(state["row_skips"])]
    n = len(files)
    assert sum(counts.values()) == sum(state["row_skips"]) > 0
    assert all(min(next_reads) // n <= c <= -(-max(next_reads) // n)
               for c in counts.values()), (counts, next_reads)


def test_train_dataset_one_epoch_skips_each_bad_file_once(tmp_path):
    """With batch size 1 the element stream is recoverable: each batch is the files passed
    over (in order) followed by one good example. Its first len(files) elements are one epoch
    and must hold every file exactly once."""
    root = str(tmp_path / "mixed")
    good, bad = _mixed_folder(root)
    files = data.list_images(root)
    expected = _fingerprints(files)
    assert sorted(expected) == sorted(good)
    # len(good) batches end at the last good file of epoch 1; one more takes in the bad files
    # after it (if any), which belong to epoch 1 too.
    ds = data.train_dataset(files, image_size=S, batch_size=1, seed=3, augment=False)
    stream = []
    for batch in _take(ds, len(good) + 1):
        stream += [_named_file(r, bad) for r in batch["skipped"]]
        stream.append(_identify(batch["rgb"][0], expected))
    epoch = stream[: len(files)]
    assert sorted(epoch) == files


def test_train_dataset_same_seed_same_batches(tmp_path):
    root = str(tmp_path / "mixed")
    _mixed_folder(root)
    files = data.list_images(root)
    kwargs = dict(image_size=S, batch_size=3, augment=True)
    a = _take(data.train_dataset(files, seed=7, **kwargs), 6)
    b = _take(data.train_dataset(files, seed=7, **kwargs), 6)
    _assert_batches_equal(a, b)
    # Augmented: no row is the plain (un-augmented) example of a file.
    plain = _fingerprints(files).values()
    assert not any(np.array_equal(row, p) for x in a for row in x["rgb"] for p in plain)
    c = _take(data.train_dataset(files, seed=8, **kwargs), 6)
    assert not all(np.array_equal(x["rgb"], y["rgb"]) for x, y in zip(a, c, strict=True))


def _epoch_order(files, seed: int, epochs: int = 1) -> list[str]:
    expected = _fingerprints(files)
    ds = data.train_dataset(files, image_size=S, batch_size=1, seed=seed, augment=False)
    return [_identify(b["rgb"][0], expected) for b in _take(ds, epochs * len(files))]


def test_train_dataset_shuffles_by_seed_and_epoch(tmp_path):
    files = write_photos(str(tmp_path), 8)
    order0 = _epoch_order(files, seed=0, epochs=2)
    first, second = order0[:8], order0[8:]
    assert sorted(first) == files and sorted(second) == files  # each epoch is a permutation
    assert first != files  # shuffled
    assert first != second  # reshuffled each epoch
    order1 = _epoch_order(files, seed=1)
    assert sorted(order1) == files and order1 != first  # another seed, another order


def _global_batches(files, process_count: int, n: int, state=None, **kwargs):
    """``n`` global batches read by ``process_count`` processes (each its rows, concatenated in
    process order, as ``jax.make_array_from_process_local_data`` lays them out) and the global
    position after them (the per-process row skips gathered in process order)."""
    its = [data.train_dataset(files, process_index=i, process_count=process_count, **kwargs)
           for i in range(process_count)]
    if state is not None:
        for it in its:
            it.set_state(state)
    batches = []
    for _ in range(n):
        parts = [next(it) for it in its]
        batches.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    gathered = np.concatenate([it.local_row_skips for it in its])  # what the all-gather does
    state = its[0].get_state(gather=lambda _: gathered)
    for it in its:
        it.close()
    return batches, state


def _mixed_files(root: str) -> list[str]:
    _mixed_folder(root)
    return data.list_images(root)


def test_train_dataset_any_process_count_reads_the_same_global_batches(tmp_path):
    """1, 2 and 4 processes: the same global batches, bit for bit, bad files included (each
    process refills its own rows), and the same global position."""
    files = _mixed_files(str(tmp_path / "mixed"))
    kwargs = dict(image_size=S, batch_size=4, seed=2, augment=True)
    n = 10  # 40 rows of 11 files: every bad file comes up (and is refilled) several times
    one, one_state = _global_batches(files, 1, n, **kwargs)
    skipped = sum(len(b["skipped"]) for b in one)
    assert skipped >= 3
    for count in (2, 4):
        many, state = _global_batches(files, count, n, **kwargs)
        for a, b in zip(one, many, strict=True):
            for k in ("lab", "rgb"):
                np.testing.assert_array_equal(a[k], b[k])
            assert sorted(a["skipped"]) == sorted(b["skipped"])
        assert state == one_state
    # The position counts every record read: rows delivered plus files skipped.
    assert one_state["records_consumed"] == n * 4 + skipped
    assert one_state["batches"] == n and sum(one_state["row_skips"]) == skipped


def test_train_dataset_rows_come_from_one_global_shuffle(tmp_path):
    """Without bad files, global batch k is records kB .. kB+B-1 of one shuffled stream over
    all files (a permutation per epoch), whatever the process count."""
    files = write_photos(str(tmp_path), 8)
    expected = _fingerprints(files)
    batches, _ = _global_batches(files, 2, 4, image_size=S, batch_size=4, seed=0, augment=False)
    stream = [_identify(row, expected) for b in batches for row in b["rgb"]]
    assert sorted(stream[:8]) == files and sorted(stream[8:]) == files
    assert stream[:8] != files and stream[:8] != stream[8:]
    assert stream == _epoch_order(files, seed=0, epochs=2)


def test_train_dataset_batch_must_divide_by_processes():
    with pytest.raises(ValueError, match="process count"):
        data.train_dataset(["a.png"], image_size=S, batch_size=3, seed=0, process_index=1,
                           process_count=2)
    with pytest.raises(ValueError, match="no training file"):
        data.train_dataset([], image_size=S, batch_size=1, seed=0)


def test_train_dataset_iterator_state_restores(tmp_path):
    files = _mixed_files(str(tmp_path / "mixed"))
    kwargs = dict(image_size=S, batch_size=3, seed=5, augment=True)
    it = iter(data.train_dataset(files, **kwargs))
    for _ in range(4):
        next(it)
    state = it.get_state()
    continued = [next(it) for _ in range(5)]
    assert sum(len(b["skipped"]) for b in continued) > 0  # skips happen after the restore too

    fresh = iter(data.train_dataset(files, **kwargs))
    fresh.set_state(json.loads(json.dumps(state)))  # as written to and read from a checkpoint
    _assert_batches_equal([next(fresh) for _ in range(5)], continued)


@pytest.mark.parametrize("saved_by, resumed_by", [(2, 1), (1, 2), (2, 4)])
def test_train_dataset_position_resumes_with_another_process_count(tmp_path, saved_by,
                                                                   resumed_by):
    """Elastic: a position saved by N processes, after skips, continues with M processes
    exactly as an uninterrupted run."""
    files = _mixed_files(str(tmp_path / "mixed"))
    kwargs = dict(image_size=S, batch_size=4, seed=9, augment=True)
    straight, straight_state = _global_batches(files, 1, 9, **kwargs)
    _, state = _global_batches(files, saved_by, 5, **kwargs)
    assert sum(state["row_skips"]) > 0  # the saved position includes skipped files
    assert state["records_consumed"] == 20 + sum(len(b["skipped"]) for b in straight[:5])
    resumed, resumed_state = _global_batches(files, resumed_by, 4, state=state, **kwargs)
    _assert_batches_equal(resumed, straight[5:])
    assert resumed_state == straight_state


def test_train_dataset_position_from_a_record_count(tmp_path):
    """A position with only a record count (an older checkpoint, or another global batch
    size) resumes at the first whole batch at or after it."""
    files = write_photos(str(tmp_path), 8)
    kwargs = dict(image_size=S, batch_size=4, seed=1, augment=False)
    straight, _ = _global_batches(files, 1, 3, **kwargs)
    state = {"format": data.batches.POSITION_FORMAT, "records_consumed": 5}
    resumed, after = _global_batches(files, 2, 1, state=state, **kwargs)
    _assert_batches_equal(resumed, straight[2:])
    assert after["records_consumed"] == 12 and after["batches"] == 3
    with pytest.raises(ValueError, match="unknown data position format"):
        data.train_dataset(files, **kwargs).set_state({"next_index": 4})


@pytest.fixture(scope="module")
def worker_runs(tmp_path_factory):
    """The same dataset read in-process and by 2 Grain worker processes (spawned: slow-ish)."""
    files = write_photos(str(tmp_path_factory.mktemp("workers")), 8)
    kwargs = dict(image_size=S, batch_size=2, seed=11, augment=True)
    n = len(files) // kwargs["batch_size"]  # one epoch
    in_process = _take(data.train_dataset(files, num_workers=0, **kwargs), n)
    it = iter(data.train_dataset(files, num_workers=2, **kwargs))
    workers = [next(it) for _ in range(n)]
    it.close()
    return in_process, workers


def test_train_dataset_workers_give_the_same_examples(worker_runs):
    in_process, workers = worker_runs
    for batch in workers:
        assert batch["rgb"].shape == (2, S, S, 3) and batch["lab"].shape == (2, S, S, 3)

    def examples(batches):
        rows = [np.concatenate([lab, rgb], axis=-1)
                for b in batches for lab, rgb in zip(b["lab"], b["rgb"], strict=True)]
        return sorted(rows, key=lambda r: r.tobytes())

    # The same files with the same augmentation (rng keyed by element index, not by worker).
    a, b = examples(in_process), examples(workers)
    assert len(a) == len(b) == 8
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_train_dataset_workers_give_the_same_batches(worker_runs):
    _assert_batches_equal(*worker_runs)


# ----------------------------------------------------------------------------- unusable folders


def test_all_bad_folder(tmp_path):
    root = tmp_path / "all_bad"
    bad = [
        _touch(str(root / "zero.png")),
        _touch(str(root / "text.jpg"), b"not a jpeg"),
        _write_rgb(str(root / "gray.png"), _gray_photo()[..., 0]),
    ]
    files = data.list_images(str(root))
    assert sorted(bad) == files
    with pytest.raises(ValueError, match="training images") as err:
        data.check_usable(files, what="training images")
    assert "none of 3" in str(err.value)
    with pytest.raises(ValueError, match=re.escape(f"data.dir={str(root)!r}")):
        data.check_usable(files, what=f"data.dir={str(root)!r}")
    # Grayscale files are usable when not skipped.
    data.check_usable(files, what="x", skip_grayscale=False)

    it = iter(data.train_dataset(files, image_size=S, batch_size=2, seed=0))
    with pytest.raises(RuntimeError, match="in a row could not be used"):
        next(it)


def test_train_dataset_mostly_bad_folder_keeps_going(tmp_path):
    """Only *consecutive* failures stop training: 3 bad of 5 files, over 12 epochs."""
    good = write_photos(str(tmp_path), 2)
    bad = [_touch(str(tmp_path / f"zero{i}.png")) for i in range(3)]
    ds = data.train_dataset(good + bad, image_size=S, batch_size=24, seed=0)
    (batch,) = _take(ds, 1)  # one batch spans 12 epochs of the 2 good files
    assert batch["rgb"].shape == (24, S, S, 3)
    skipped = list(batch["skipped"])
    assert len(skipped) > 16  # more than max_consecutive in one batch, yet no RuntimeError
    assert {_named_file(r, bad) for r in skipped} == set(bad)


def test_check_usable_accepts_a_folder_with_one_good_file(tmp_path):
    good = write_photos(str(tmp_path), 1)
    data.check_usable([_touch(str(tmp_path / "zero.png"))] + good, what="x")


# ----------------------------------------------------------------------------- eval_batches


def test_eval_batches_pad_by_wrapping(tmp_path):
    good = write_photos(str(tmp_path), 5)
    bad = _touch(str(tmp_path / "zz_zero.png"))
    files = good[:2] + [bad] + good[2:]
    expected = _fingerprints(good)
    batches, skipped = data.eval_batches(files, image_size=S, batch_size=2)
    assert len(batches) == 3  # ceil(5 / 2)
    assert len(skipped) == 1 and bad in skipped[0]
    order = []
    for batch in batches:
        assert set(batch) == {"lab", "rgb", "valid"}
        assert batch["rgb"].shape == (2, S, S, 3) and batch["lab"].shape == (2, S, S, 3)
        assert batch["valid"].dtype == np.bool_
        order += [_identify(r, expected) for r in batch["rgb"]]
    assert order == good + [good[0]]  # file order, last batch wrapped around to the first
    np.testing.assert_array_equal(np.concatenate([b["valid"] for b in batches]),
                                  [True] * 5 + [False])

    exact, _ = data.eval_batches(good[:4], image_size=S, batch_size=2)
    assert len(exact) == 2 and all(b["valid"].all() for b in exact)

    wide, _ = data.eval_batches(good[:2], image_size=S, batch_size=5)
    assert len(wide) == 1
    assert [_identify(r, expected) for r in wide[0]["rgb"]] == [good[i % 2] for i in range(5)]
    np.testing.assert_array_equal(wide[0]["valid"], [True, True, False, False, False])


def test_eval_batches_max_images_and_no_images(tmp_path):
    good = write_photos(str(tmp_path), 5)
    batches, _ = data.eval_batches(good, image_size=S, batch_size=2, max_images=3)
    assert len(batches) == 2
    assert int(sum(b["valid"].sum() for b in batches)) == 3

    bad = [_touch(str(tmp_path / "a.png")), _touch(str(tmp_path / "b.png"))]
    batches, skipped = data.eval_batches(bad, image_size=S, batch_size=2)
    assert batches == [] and len(skipped) == 2
