"""Your own images, in folders: a labelled private set, an unlabelled public pool, a labelled test set.

``private_dir`` is in the ImageFolder layout (one subfolder per class; the class names are the
folder names, sorted). ``public_dir`` holds unlabelled images in any layout, found recursively.
``test_dir`` (optional) is an ImageFolder of labelled public images, for evaluation only; its
classes must be among the private set's. Every image is decoded once and cached (``cache``); the
files and their content hashes are recorded with the run, so different data is refused.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import cache, images
from .dataset import DataError, Dataset

MIN_IMAGE_SIZE = 8  # the smallest input the networks take (two 2x2 poolings, scattering's 2^J)


def _class_folders(folder: Path, key: str) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"[data] {key} = {str(folder)!r} is not a folder")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"[data] {key} = {str(folder)!r} has no class subfolders (expected one folder per class)")
    return classes


def _labelled(folder: Path, key: str) -> tuple[list[str], list[Path], list[int], list[Path]]:
    """Class names, image files, their labels, and skipped files of an ImageFolder."""
    names, files, labels, skipped = [], [], [], []
    for label, class_folder in enumerate(_class_folders(folder, key)):
        listing = images.list_images(class_folder)
        if not listing.files:
            raise DataError(f"[data] {key}: the class folder {str(class_folder)!r} has no images")
        names.append(class_folder.name)
        files += listing.files
        labels += [label] * len(listing.files)
        skipped += listing.skipped
    return names, files, labels, skipped


def _size_and_channels(facts: list[dict], image_size: int, channels: int) -> tuple[int, int]:
    """The configured values, or: the median image size rounded to a multiple of 4, and 3 channels
    if any image has colour, else 1."""
    if not image_size:
        median = float(np.median([max(f["width"], f["height"]) for f in facts]))
        image_size = max(4, int(round(median / 4)) * 4)
    if image_size < MIN_IMAGE_SIZE:
        raise DataError(f"[data] image_size {image_size} is too small for the networks (at least {MIN_IMAGE_SIZE}); "
                        "set a larger [data] image_size to enlarge the images")
    if not channels:
        channels = 3 if any(f["bands"] >= 3 for f in facts) else 1
    return image_size, channels


def load(name: str, private_dir: Path, public_dir: Path, test_dir: Optional[Path], *, root: Path,
         image_size: int = 0, channels: int = 0, progress: Optional[Callable[[str, int, int], None]] = None) -> Dataset:
    """The folders as a ``Dataset`` (decoded from the cache where possible). ``progress(what, done, total)``."""
    classes, private, labels, skipped = _labelled(Path(private_dir), "private_dir")
    if len(classes) < 2:
        raise DataError(f"[data] private_dir = {str(private_dir)!r} has one class ({classes[0]!r}); "
                        "labelling needs at least two")
    listing = images.list_images(Path(public_dir))
    if not listing.files:
        raise DataError(f"[data] public_dir = {str(public_dir)!r} has no images")
    public, skipped = list(listing.files), skipped + list(listing.skipped)
    test, test_labels = [], []
    if test_dir:
        test_classes, test, test_local, test_skipped = _labelled(Path(test_dir), "test_dir")
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise DataError(f"[data] test_dir has classes the private set lacks: {', '.join(unknown[:5])}")
        test_labels = [classes.index(test_classes[i]) for i in test_local]
        skipped += test_skipped
    every = private + public + test
    facts = cache.file_facts(every, root, progress=lambda done: progress and progress("hash", done, len(every)))
    hashes = [f["sha256"] for f in facts]
    _refuse_private_in_public(private, hashes[:len(private)], every[len(private):], hashes[len(private):])
    image_size, channels = _size_and_channels(facts, image_size, channels)
    parts = {"private": hashes[:len(private)], "public": hashes[len(private):len(private) + len(public)],
             "test": hashes[len(private) + len(public):],
             "labels": [str(x) for x in labels + test_labels], "classes": classes}
    key = cache.key_of(parts, {"image_size": image_size, "channels": channels})
    arrays = cache.load_arrays(root, key)
    if arrays is None:
        decoded, converted = images.decode(every, channels, image_size,
                                           progress=lambda done: progress and progress("decode", done, len(every)))
        arrays = {"images": decoded, "converted": np.array(converted)}
        cache.save_arrays(root, key, arrays)
    decoded = arrays["images"]
    n, m = len(private), len(public)
    public_x = decoded[n:]
    mean = tuple(float(v) for v in public_x.astype(np.float64).mean(axis=(0, 2, 3)) / 255.0)
    std = tuple(max(float(v), 1e-3) for v in public_x.astype(np.float64).std(axis=(0, 2, 3)) / 255.0)
    files = {"private": list(zip(map(str, private), hashes[:n])), "public": list(zip(map(str, public), hashes[n:n + m])),
             "test": list(zip(map(str, test), hashes[n + m:])), "skipped": len(skipped),
             "converted": int(arrays["converted"])}
    return Dataset(name=name, private_x=decoded[:n], private_y=np.asarray(labels, dtype=np.int64), public_x=public_x,
                   public_y=np.asarray([-1] * m + test_labels, dtype=np.int64), classes=tuple(classes), mean=mean,
                   std=std, num_pool=m, shared_split=False, files=files)


def _refuse_private_in_public(private, private_hashes, public, public_hashes) -> None:
    """The same image (by content) in the private set and among the public images would publish
    that private record: refused, naming both files."""
    where = {h: p for p, h in zip(private, private_hashes)}
    for path, digest in zip(public, public_hashes):
        if digest in where:
            raise DataError(f"{path} is the same image as the private {where[digest]}; a private record may not "
                            "also be public: remove it from one of them")
