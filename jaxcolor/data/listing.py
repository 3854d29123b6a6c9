"""Finding photos and splitting them into train / validation / test.

The Flickr1024 layout (``Train/``, ``Validation/``, ``Test/``, any case; any one of them makes a
split layout, so a folder with only ``Test/`` is a test set) is used as is; any other
folder gets a deterministic held-out split keyed by file name, with stereo views
(``0001_L``/``0001_R``) kept together. Without a folder, the built-in sample photos (from
scikit-image, no download) are used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re

from jaxcolor.data.decoding import SAMPLE_PREFIX

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "validation", "test")
# Folder names of the Flickr1024 layout (matched case-insensitively).
FLICKR_SPLIT_DIRS = {"train": "train", "validation": "validation", "test": "test"}
# Built-in sample photos: real colour photos shipped inside scikit-image (no download).
SAMPLE_SPLITS = {
    "train": (
        "astronaut",
        "rocket",
        "hubble_deep_field",
        "retina",
        "immunohistochemistry",
        "stereo_motorcycle_L",
        "stereo_motorcycle_R",
    ),
    "validation": ("coffee", "chelsea"),
    "test": ("coffee", "chelsea"),
}


def list_images(root: str) -> list[str]:
    """All image files under ``root`` (recursive, extensions in any case), sorted.

    Symbolic links are followed, but each directory is entered once (by device and inode), so a
    link loop ends; a file reachable by several paths is listed once (its first path in sorted
    order, compared by real path). Unreadable folders are passed over with a warning.
    """
    found: dict[str, str] = {}  # real path -> first path found
    seen_dirs: set[tuple[int, int]] = set()

    def walk(directory: str) -> None:
        try:
            info = os.stat(directory)
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as e:
            log.warning("cannot read folder %s (%s); skipped", directory, e.strerror or e)
            return
        if (info.st_dev, info.st_ino) in seen_dirs:
            return
        seen_dirs.add((info.st_dev, info.st_ino))
        subdirs = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows links; a broken link is not a folder
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append(entry.path)
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                # Broken links and unreadable files stay listed: the reader skips and counts them.
                real = os.path.realpath(entry.path)
                found[real] = min(found.get(real, entry.path), entry.path)
        for sub in subdirs:
            walk(sub)

    walk(root)
    return sorted(found.values())


def _pair_key(path: str) -> str:
    """Name shared by the two views of a stereo pair (``0001_L.png`` and ``0001_R.png``)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return re.sub(r"_[LR]$", "", stem, flags=re.IGNORECASE)


def _held_out(key: str, fraction: float, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def find_splits(root: str | None, val_fraction: float = 0.1, seed: int = 0) -> dict[str, list[str]]:
    """Files of each split (``train``, ``validation``, ``test``) under ``root``.

    ``root=None`` gives the built-in sample photos. A folder with no image raises ValueError.
    A split layout without ``Train/`` has an empty train split (fine to evaluate, not to train);
    a missing ``Test/`` borrows ``Validation/`` and the other way round.
    """
    if root is None:
        return {s: [SAMPLE_PREFIX + n for n in names] for s, names in SAMPLE_SPLITS.items()}
    if not os.path.isdir(root):
        raise ValueError(f"data.dir={root!r} is not a directory")
    subdirs = {d.lower(): os.path.join(root, d) for d in os.listdir(root)
               if os.path.isdir(os.path.join(root, d))}
    if any(FLICKR_SPLIT_DIRS[s] in subdirs for s in SPLITS):
        # A split layout, even without Train/ (a test set handed over on its own).
        splits = {s: list_images(subdirs[FLICKR_SPLIT_DIRS[s]])
                  if FLICKR_SPLIT_DIRS[s] in subdirs else [] for s in SPLITS}
        if not any(splits.values()):
            raise ValueError(f"data.dir={root!r}: no image files ({', '.join(IMAGE_EXTENSIONS)}) "
                             f"under its {', '.join(sorted(subdirs))} folders")
        if "train" in subdirs and not splits["train"]:
            raise ValueError(f"data.dir={root!r}: no image files ({', '.join(IMAGE_EXTENSIONS)}) "
                             f"under {subdirs['train']!r}")
        splits["validation"] = splits["validation"] or splits["test"]
        splits["test"] = splits["test"] or splits["validation"]
        if splits["validation"] or not splits["train"]:
            return splits
        files = splits["train"]  # Train/ alone: hold out part of it as below
    else:
        files = list_images(root)
        if not files:
            raise ValueError(
                f"data.dir={root!r}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found"
            )
    held = _hold_out(files, val_fraction, seed)
    train = [f for f in files if f not in held] or files
    return {"train": train, "validation": sorted(held), "test": sorted(held)}


def _hold_out(files: list[str], fraction: float, seed: int) -> set[str]:
    """Deterministic held-out subset keyed by stereo-pair name; never empty for 2+ files."""
    held = [f for f in files if _held_out(_pair_key(f), fraction, seed)]
    if not held and len(files) > 1:
        # Tiny folders: hold out the pair that hashes lowest, so validation is never empty.
        first = min(files, key=lambda f: hashlib.sha256(_pair_key(f).encode()).digest())
        held = [f for f in files if _pair_key(f) == _pair_key(first)]
    return set(held or files)
