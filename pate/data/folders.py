"""Your own images, in folders: a labelled private set, an unlabelled public pool, a labelled test set.

``private_dir`` is in the ImageFolder layout (one subfolder per class). ``public_dir`` holds
unlabelled images in any layout, found recursively. ``test_dir`` (optional) is an ImageFolder of
labelled public images, for evaluation only. Every image is decoded once and cached (``cache``); the
files and their content hashes are recorded with the run, so different data is refused.

What is published (the classes, the image size and channels) is never a function of the private
images: the classes are ``[data] classes`` or else the test_dir class folders (sorted), and every
private class folder must be one of them; ``image_size`` and ``channels`` at 0 are read from the
public images (pool and test) only, and the private images are converted to them. An inferred
``image_size`` above ``MAX_INFERRED_IMAGE_SIZE`` (512) is refused, in one line that says to set
``[data] image_size`` (8 to 1024): photos of thousands of pixels would otherwise be decoded at their
own size, and every image at once would not fit in memory.

DICOM files (``.dcm``) are read by ``pate.data.dicom`` (``[data] dicom_window``, ``dicom_frames``).
With ``dicom_frames = "split"`` a multi-frame file gives one record per frame, named
``<file>#frame=<k>`` (k from 1) with the content hash ``<sha256>#frame=<k>``. The frames of a private
file are one record for privacy: they share one teacher and one spend-log fingerprint
(``_identities`` below), so the guarantee covers the whole file.
"""
from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..config import DataConfig
from ..progress import Progress
from . import cache, dicom, images, records
from .dataset import DataError, Dataset, channel_stats
from .sources import Files, Source, register_source

MIN_IMAGE_SIZE = 8  # the smallest input the networks take (two 2x2 poolings, scattering's 2^J)
MAX_INFERRED_IMAGE_SIZE = 512  # the largest image_size read from the public images; set a larger one in the config


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


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)  # a folder name as macOS (NFD) and the config (NFC) write it


def _classes(configured: Sequence[str], test_classes: Sequence[str]) -> tuple[list[str], str]:
    """The published class names and where they come from: the config, else the public test folders."""
    if configured:
        return list(configured), "[data] classes"
    if test_classes:
        return list(test_classes), "the test_dir class folders"
    raise DataError("[data] classes is not set and there is no test_dir: the class names are published, so they "
                    "come from the config or from public data, never from the private folders; set [data] classes "
                    "= [...] (label 0 first)")


def _labels_in(classes: Sequence[str], source: str, names: Sequence[str], local: Sequence[int], key: str) -> list[int]:
    """Labels of ``local`` (indices into the folder ``names``) as indices into ``classes``; a folder
    that is not one of the classes is refused."""
    index = {_nfc(c): i for i, c in enumerate(classes)}
    for name in names:
        if _nfc(name) not in index:
            raise DataError(f"[data] {key}: the class folder {name!r} is not one of the {len(classes)} classes of "
                            f"{source}; rename the folder or list it in [data] classes")
    mapping = [index[_nfc(n)] for n in names]
    return [mapping[i] for i in local]


def _size_and_channels(facts: list[dict], image_size: int, channels: int) -> tuple[int, int]:
    """The configured values, or (from ``facts`` of the PUBLIC images only): the median image size
    rounded to a multiple of 4, and 3 channels if any image has colour, else 1."""
    if not image_size:
        median = float(np.median([max(f["width"], f["height"]) for f in facts]))
        image_size = max(4, int(round(median / 4)) * 4)
        if image_size > MAX_INFERRED_IMAGE_SIZE:
            raise DataError(f"the public images are about {image_size} pixels across (their median), larger than the "
                            f"{MAX_INFERRED_IMAGE_SIZE} pate takes without being told; set image_size = N (8 to 1024, "
                            "e.g. 224) in the [data] section of the pipeline and they are resized to N x N")
    if image_size < MIN_IMAGE_SIZE:
        raise DataError(f"[data] image_size {image_size} is too small for the networks (at least {MIN_IMAGE_SIZE}); "
                        "set a larger [data] image_size to enlarge the images")
    if not channels:
        channels = 3 if any(f["bands"] >= 3 for f in facts) else 1
    return image_size, channels


def load(name: str, private_dir: Path, public_dir: Path, test_dir: Optional[Path], *, root: Path,
         image_size: int = 0, channels: int = 0, classes: Sequence[str] = (),
         dicom_window: Sequence[float] = (), dicom_frames: str = "refuse",
         progress: Optional[Callable[[str, int, int], None]] = None) -> Dataset:
    """The folders as a ``Dataset`` (decoded from the cache where possible). ``classes``: the
    configured class names (() = the test_dir class folders); ``dicom_window``, ``dicom_frames``:
    how DICOM files are read (``pate.data.dicom``). ``progress(what, done, total)``."""
    private_classes, private, private_local, skipped = _labelled(Path(private_dir), "private_dir")
    if len(private_classes) < 2:
        raise DataError(f"[data] private_dir = {str(private_dir)!r} has one class ({private_classes[0]!r}); "
                        "labelling needs at least two")
    listing = images.list_images(Path(public_dir))
    if not listing.files:
        raise DataError(f"[data] public_dir = {str(public_dir)!r} has no images")
    public, skipped = list(listing.files), skipped + list(listing.skipped)
    test, test_classes, test_local = [], [], []
    if test_dir:
        test_classes, test, test_local, test_skipped = _labelled(Path(test_dir), "test_dir")
        skipped += test_skipped
    classes, source = _classes(classes, test_classes)
    test_labels = _labels_in(classes, source, test_classes, test_local, "test_dir")
    labels = _labels_in(classes, source, private_classes, private_local, "private_dir")
    every = private + public + test
    facts = cache.file_facts(every, root, progress=lambda done: progress and progress("hash", done, len(every)))
    settings = dicom.Settings(window=tuple(float(v) for v in dicom_window), frames=dicom_frames)
    counts = _frame_counts(every, facts, settings)
    records, hashes, facts = _records(every, facts, counts)
    sizes = [sum(counts[:len(private)]), sum(counts[len(private):len(private) + len(public)])]
    labels = [y for y, n in zip(labels, counts[:len(private)]) for _ in range(n)]
    test_labels = [y for y, n in zip(test_labels, counts[len(private) + len(public):]) for _ in range(n)]
    private, public, test = (records[:sizes[0]], records[sizes[0]:sum(sizes)], records[sum(sizes):])
    _refuse_private_in_public(private, hashes[:len(private)], records[len(private):], hashes[len(private):])
    image_size, channels = _size_and_channels(facts[len(private):], image_size, channels)  # public images only
    parts = {"private": hashes[:len(private)], "public": hashes[len(private):len(private) + len(public)],
             "test": hashes[len(private) + len(public):],
             "labels": [str(x) for x in labels + test_labels], "classes": classes}
    decoding = {"image_size": image_size, "channels": channels}
    if any(map(dicom.is_dicom, every)):  # PNG-only folders keep the cache key they always had
        decoding.update(settings.key())
    key = cache.key_of(parts, decoding)
    arrays = cache.load_arrays(root, key, shape=(len(records), channels, image_size, image_size))
    if arrays is None:
        decoded, converted = images.decode(every, channels, image_size, counts=counts, dicom_settings=settings,
                                           progress=lambda done: progress and progress("decode", done, len(records)))
        arrays = {"images": decoded, "converted": np.array(converted)}
        cache.save_arrays(root, key, arrays)
    decoded = arrays["images"]
    n, m = len(private), len(public)
    public_x = decoded[n:]
    mean, std = channel_stats(public_x)
    files = {"private": list(zip(map(str, private), hashes[:n])), "public": list(zip(map(str, public), hashes[n:n + m])),
             "test": list(zip(map(str, test), hashes[n + m:])), "skipped": len(skipped),
             "converted": int(arrays["converted"])}
    return Dataset(name=name, private_x=decoded[:n], private_y=np.asarray(labels, dtype=np.int64), public_x=public_x,
                   public_y=np.asarray([-1] * m + test_labels, dtype=np.int64), classes=tuple(classes), mean=mean,
                   std=std, num_pool=m, shared_split=False, files=files)


def _frame_counts(paths: Sequence[Path], facts: list[dict], settings: dicom.Settings) -> list[int]:
    """The records each file gives: 1, or (``dicom_frames = "split"``) a DICOM file's frame count;
    with "refuse" a multi-frame file is refused, naming it."""
    counts = [int(f.get("frames", 1)) for f in facts]
    if settings.frames != "split":
        for path, n in zip(paths, counts):
            if n > 1:
                raise DataError(f"{path} is a multi-frame DICOM file; set [data] dicom_frames = \"split\" to make "
                                "each frame a record of its own, or store one frame per file")
        return [1] * len(counts)
    return counts


def _records(paths: Sequence[Path], facts: list[dict], counts: Sequence[int]) -> tuple[list[str], list[str], list[dict]]:
    """Each record's name, content hash and facts: a file's own, or one per frame of a split file."""
    names, hashes, out = [], [], []
    for path, entry, n in zip(paths, facts, counts):
        if n == 1:
            names.append(str(path))
            hashes.append(entry["sha256"])
            out.append(entry)
            continue
        for k in range(1, n + 1):
            names.append(dicom.frame_name(str(path), k))
            hashes.append(dicom.frame_name(entry["sha256"], k))
            out.append(entry)
    return names, hashes, out


def _refuse_private_in_public(private, private_hashes, public, public_hashes) -> None:
    """The same image (by content) in the private set and among the public images would publish
    that private record: refused, naming both files."""
    where = {h: p for p, h in zip(private, private_hashes)}
    for path, digest in zip(public, public_hashes):
        if digest in where:
            raise DataError(f"{path} is the same image as the private {where[digest]}; a private record may not "
                            "also be public: remove it from one of them")


def _load_source(config: DataConfig, root: Path, quiet: bool, auto_prepare: bool) -> Dataset:
    bars: dict[str, Progress] = {}

    def progress(what: str, done: int, total: int) -> None:
        bar = bars.setdefault(what, Progress(total, f"data[{what} images]", quiet))
        bar.update_to(done)

    return load(config.public_name, Path(config.private_dir), Path(config.public_dir),
                Path(config.test_dir) if config.test_dir else None, root=root,
                image_size=config.image_size, channels=config.channels, classes=config.classes,
                dicom_window=config.dicom_window, dicom_frames=config.dicom_frames, progress=progress)


def _description(config: DataConfig) -> str:
    return "image folders (ImageFolder layout for the private and test sets)"


def _identities(config: DataConfig, dataset: Dataset) -> list[bytes]:
    """Each private file's sha256 with its label: the frames of a split multi-frame DICOM file are
    one record (one teacher, one spend)."""
    return records.identities(dataset.private_x, dataset.private_y,
                              file_hashes=[sha.split("#frame=")[0] for _, sha in dataset.files["private"]])


def _record_names(config: DataConfig, files: Files) -> list[str]:
    """Each private record's file, relative to ``private_dir``."""
    root = Path(config.private_dir)
    return [str(Path(path).relative_to(root)) for path, _ in files()["private"]]


def _public_files(config: DataConfig, files: Files) -> list[str]:
    """Each public image's file, relative to ``public_dir`` (the folders above it may name the
    private data's place)."""
    return [os.path.relpath(entry[0], config.public_dir) for entry in files().get("public", [])]


SOURCE = register_source(Source(name="folders", load=_load_source, description=_description,
                                identities=_identities, record_names=_record_names, public_files=_public_files))
