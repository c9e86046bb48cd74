"""Image files: finding them, hashing them, and decoding them to uint8 arrays in parallel.

PNG, JPEG, BMP and TIFF, grayscale or colour, any size: each image is converted to the wanted
channel count and resized (bilinear, with antialiasing) to a square ``image_size``. Other files are
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

from .dataset import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
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


def _decode_one(path: str, channels: int, size: int) -> tuple[np.ndarray, int, tuple[int, int]]:
    """(C, size, size) uint8, the file's own channel count, and its (width, height)."""
    from PIL import Image

    with opened(path, path) as image:
        image.load()
        native = len(image.getbands())
        original = image.size
        image = image.convert("L" if channels == 1 else "RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR, reducing_gap=None)
        array = np.asarray(image, dtype=np.uint8)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return array, native, original


def _decode_chunk(paths: Sequence[str], channels: int, size: int):
    out = np.empty((len(paths), channels, size, size), dtype=np.uint8)
    native = np.empty(len(paths), dtype=np.int64)
    for i, path in enumerate(paths):
        out[i], native[i], _ = _decode_one(path, channels, size)
    return out, native


def image_sizes(paths: Sequence[Path]) -> np.ndarray:
    """(N, 2) width and height of each image, from its header only."""
    sizes = np.empty((len(paths), 2), dtype=np.int64)
    for i, path in enumerate(paths):
        with opened(path, path) as image:
            sizes[i] = image.size
    return sizes


def decode(paths: Sequence[Path], channels: int, size: int, *, workers: Optional[int] = None,
           progress: Optional[Callable[[int], None]] = None) -> tuple[np.ndarray, int]:
    """(N, channels, size, size) uint8 images, and how many were converted from another channel
    count. Decoded in chunks by a pool of processes (one per core)."""
    paths = [str(p) for p in paths]
    images = np.empty((len(paths), channels, size, size), dtype=np.uint8)
    converted = 0
    chunks = [(i, paths[i:i + CHUNK]) for i in range(0, len(paths), CHUNK)]
    workers = workers or min(len(chunks), os.cpu_count() or 1)
    if workers <= 1:
        results = ((start, _decode_chunk(chunk, channels, size)) for start, chunk in chunks)
        for start, (array, native) in results:
            images[start:start + len(array)] = array
            converted += int((native != channels).sum())
            if progress:
                progress(start + len(array))
        return images, converted
    with ProcessPoolExecutor(workers) as pool:
        futures = [(start, pool.submit(_decode_chunk, chunk, channels, size)) for start, chunk in chunks]
        for start, future in futures:
            array, native = future.result()
            images[start:start + len(array)] = array
            converted += int((native != channels).sum())
            if progress:
                progress(start + len(array))
    return images, converted
