"""Image files: finding them, hashing them, and decoding them to uint8 arrays in parallel.

PNG, JPEG, BMP and TIFF, grayscale or colour, any size, and DICOM (``.dcm``, made 8-bit by
``pate.data.dicom``; a multi-frame file may give one image per frame): each image is converted to
the wanted channel count and resized (bilinear, with antialiasing) to a square ``image_size``. Other files are
skipped and counted; an image that cannot be decoded is named in the error. Directories are walked
following symbolic links, and a link that leads back into a directory already walked is refused
(a loop would never end).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from . import dicom
from .dataset import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"} | dicom.SUFFIXES
CHUNK = 512  # images per decoding task


@dataclass(frozen=True)
class Listing:
    """The image files under a folder (sorted, by path relative to it) and the files skipped."""
    files: tuple[Path, ...]
    skipped: tuple[Path, ...]


def list_images(folder: Path) -> Listing:
    """Every image file under ``folder``, recursively; a symlink loop is refused."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder")
    files, skipped, seen = [], [], set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            raise DataError(f"{root} is a symbolic-link loop (it leads back to {real}); remove the link")
        seen.add(real)
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            if name.startswith("."):
                continue
            (files if path.suffix.lower() in IMAGE_SUFFIXES else skipped).append(path)
    return Listing(tuple(files), tuple(skipped))


@contextlib.contextmanager
def opened(source, name):
    """``PIL.Image.open(source)``, with every failure one ``DataError`` naming ``name``: an
    unreadable file, and an image whose header claims more pixels than PIL's decompression-bomb
    limit (``Image.MAX_IMAGE_PIXELS``; PIL only warns between one and two times the limit, refused
    here as well), before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                yield image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{name} is refused: too many pixels to decode safely, a possible decompression bomb "
                        f"({exc}); shrink or remove it") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DataError(f"{name} is not a readable image ({exc})") from None
    except MemoryError:
        raise DataError(f"{name} is too large to decode in memory; shrink or remove it") from None


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _finish(image, channels: int, size: int) -> np.ndarray:
    """A PIL image as (C, size, size) uint8: converted to ``channels``, resized to ``size``."""
    from PIL import Image

    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR, reducing_gap=None)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _decode_one(path: str, channels: int, size: int) -> tuple[np.ndarray, int, tuple[int, int]]:
    """(C, size, size) uint8, the file's own channel count, and its (width, height)."""
    with opened(path, path) as image:
        image.load()
        native = len(image.getbands())
        original = image.size
        array = _finish(image, channels, size)
    return array, native, original


def _decode_file(path: str, channels: int, size: int, settings: dicom.Settings) -> tuple[list[np.ndarray], int]:
    """Every image of one file (several for a split multi-frame DICOM) and its own channel count."""
    if not dicom.is_dicom(path):
        array, native, _ = _decode_one(path, channels, size)
        return [array], native
    from PIL import Image

    frames = dicom.decode(path, settings)
    return [_finish(Image.fromarray(f), channels, size) for f in frames], 1 if frames[0].ndim == 2 else 3


def _decode_chunk(paths: Sequence[str], channels: int, size: int, counts: Sequence[int] = (),
                  settings: dicom.Settings = dicom.Settings()):
    """The images of ``paths``, ``counts[i]`` of them from file i (1 each when not given)."""
    counts = list(counts) or [1] * len(paths)
    out = np.empty((sum(counts), channels, size, size), dtype=np.uint8)
    native = np.empty(len(out), dtype=np.int64)
    row = 0
    for path, count in zip(paths, counts):
        arrays, bands = _decode_file(path, channels, size, settings)
        if len(arrays) != count:
            raise DataError(f"{path} changed while it was read ({len(arrays)} images, {count} expected); "
                            "run the command again")
        out[row:row + count] = arrays
        native[row:row + count] = bands
        row += count
    return out, native


def image_sizes(paths: Sequence[Path]) -> np.ndarray:
    """(N, 2) width and height of each image, from its header only."""
    sizes = np.empty((len(paths), 2), dtype=np.int64)
    for i, path in enumerate(paths):
        if dicom.is_dicom(path):
            facts = dicom.header(Path(path).read_bytes(), path)
            sizes[i] = facts["width"], facts["height"]
            continue
        with opened(path, path) as image:
            sizes[i] = image.size
    return sizes


def decode(paths: Sequence[Path], channels: int, size: int, *, workers: Optional[int] = None,
           progress: Optional[Callable[[int], None]] = None, counts: Optional[Sequence[int]] = None,
           dicom_settings: dicom.Settings = dicom.Settings()) -> tuple[np.ndarray, int]:
    """(N, channels, size, size) uint8 images, and how many were converted from another channel
    count. Decoded in chunks by a pool of processes (one per core). ``counts``: the images each
    file gives (a split multi-frame DICOM gives one per frame; default 1 each), ``dicom_settings``
    how DICOM files are windowed and split. ``progress(images done)``."""
    paths = [str(p) for p in paths]
    counts = [1] * len(paths) if counts is None else [int(c) for c in counts]
    starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).tolist()
    images = np.empty((starts[-1], channels, size, size), dtype=np.uint8)
    converted = 0
    chunks = [(starts[i], paths[i:i + CHUNK], counts[i:i + CHUNK]) for i in range(0, len(paths), CHUNK)]
    workers = workers or min(len(chunks), os.cpu_count() or 1)
    if workers <= 1:
        results = ((start, _decode_chunk(chunk, channels, size, n, dicom_settings)) for start, chunk, n in chunks)
        for start, (array, native) in results:
            images[start:start + len(array)] = array
            converted += int((native != channels).sum())
            if progress:
                progress(start + len(array))
        return images, converted
    with ProcessPoolExecutor(workers) as pool:
        futures = [(start, pool.submit(_decode_chunk, chunk, channels, size, n, dicom_settings))
                   for start, chunk, n in chunks]
        for start, future in futures:
            array, native = future.result()
            images[start:start + len(array)] = array
            converted += int((native != channels).sum())
            if progress:
                progress(start + len(array))
    return images, converted
