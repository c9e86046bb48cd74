"""Image files: finding them, hashing them, and decoding them to uint8 arrays in parallel.

PNG, JPEG, BMP and TIFF, grayscale or colour, any size, and DICOM (``.dcm``, made 8-bit by
``pate.data.dicom``; a multi-frame file may give one image per frame): each image is converted to
the wanted channel count and resized (bilinear, with antialiasing) to a square ``image_size``. Other files are
skipped and counted; an image that cannot be decoded is named in the error. Directories are walked
following symbolic links, and a link that leads back into a directory already walked is refused
(a loop would never end).

Decoders see untrusted files, so each file's decoding has a time limit (``FILE_SECONDS``): a
decoder still at work past it is stopped and the file named in one line. Files are decoded by a
pool of worker processes (always where DICOM files are among them, whose decoders are the least
trusted); a worker whose decoder does not let go (a loop in C code ignores Python's alarm) is
ended by its own watchdog ``WATCHDOG_GRACE`` seconds later and the file named all the same.
Workers ignore Ctrl-C: the parent stops them and raises one ``KeyboardInterrupt``, so an
interrupt prints no worker's traceback.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import signal
import stat
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from . import dicom
from ..workers import ignore_sigint, sigint_blocked, stop
from .dataset import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"} | dicom.SUFFIXES
CHUNK = 512  # images per decoding task
FILE_SECONDS = 120  # the most one file's decoding may take (a 89-megapixel PNG takes a few seconds)
WATCHDOG_GRACE = 30  # then a worker whose decoder ignored the time limit ends itself
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")  # how PIL names an in-memory file


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
    except UnidentifiedImageError:  # its message names the source: an in-memory file's repr, for the cache's
        raise DataError(f"{name} is not a readable image (not a PNG, JPEG, BMP or TIFF file that PIL "
                        "recognises)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        why = _OBJECT_REPR.sub("the file", str(exc)).strip()
        raise DataError(f"{name} is not a readable image ({why or type(exc).__name__})") from None
    except MemoryError:
        raise DataError(f"{name} is too large to decode in memory; shrink or remove it") from None


def check_regular(path) -> None:
    """Refuse, in one line, a path that is not a regular file (a FIFO would block the decoder's
    open forever, a device never end) before a decoder opens it."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror or type(exc).__name__})") from None
    if not stat.S_ISREG(mode):
        kind = "folder" if stat.S_ISDIR(mode) else "FIFO" if stat.S_ISFIFO(mode) else "special file"
        raise DataError(f"{path} is a {kind}, not a regular file; an image must be a regular file: remove it")


class _TooSlow(BaseException):
    """Raised by the alarm in the thread decoding a file past ``FILE_SECONDS``: a BaseException,
    as KeyboardInterrupt is, so that no decoder's ``except Exception`` takes it for a bad file."""


_WATCH: Optional[dict] = None  # in a worker process: the file being decoded and since when


@contextlib.contextmanager
def time_limit(path):
    """The decoding of ``path`` stopped after ``FILE_SECONDS`` (an alarm, in the main thread of a
    POSIX process where no other alarm is set) and refused in one line naming it; in a worker the
    watchdog watches it too."""
    armed = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread() \
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0
    previous = None
    if armed:
        def expired(signum, frame):
            raise _TooSlow

        previous = signal.signal(signal.SIGALRM, expired)
        signal.setitimer(signal.ITIMER_REAL, FILE_SECONDS)
    if _WATCH is not None:
        _WATCH["since"] = time.monotonic()
        _WATCH["path"] = str(path)
    try:
        yield
    except _TooSlow:
        raise _too_slow(path) from None
    finally:
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        if _WATCH is not None:
            _WATCH["path"] = None


def _too_slow(path) -> DataError:
    return DataError(f"{path} took longer than {FILE_SECONDS} s to decode and was stopped: a damaged or hostile "
                     "file (its decoder may loop forever); remove or replace it")


def _worker_init(report) -> None:
    """A decoding worker: Ctrl-C is the parent's to handle (no traceback from here), and a watchdog
    ends the process if a file's decoding outlives its time limit by ``WATCHDOG_GRACE`` seconds
    (the decoder is stuck in code the alarm cannot interrupt), sending the file's name first."""
    global _WATCH
    ignore_sigint()
    _WATCH = {"path": None, "since": 0.0}
    threading.Thread(target=_watchdog, args=(_WATCH, report), daemon=True, name="pate-decode-watchdog").start()


def _watchdog(watch: dict, report) -> None:
    while True:
        time.sleep(min(1.0, WATCHDOG_GRACE / 4))
        since, path = watch["since"], watch["path"]
        if path is not None and time.monotonic() - since > FILE_SECONDS + WATCHDOG_GRACE:
            try:
                report.put(path)
            finally:
                os._exit(70)


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
    check_regular(path)
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
        try:
            with time_limit(path):
                arrays, bands = _decode_file(path, channels, size, settings)
        except MemoryError:
            raise DataError(f"{path} is too large to decode in memory; shrink or remove it") from None
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
            facts = dicom.header(dicom.read(path), path)
            sizes[i] = facts["width"], facts["height"]
            continue
        check_regular(path)
        with opened(path, path) as image:
            sizes[i] = image.size
    return sizes


def decode(paths: Sequence[Path], channels: int, size: int, *, workers: Optional[int] = None,
           progress: Optional[Callable[[int], None]] = None, counts: Optional[Sequence[int]] = None,
           dicom_settings: dicom.Settings = dicom.Settings()) -> tuple[np.ndarray, int]:
    """(N, channels, size, size) uint8 images, and how many were converted from another channel
    count. Decoded in chunks by a pool of processes (one per core; at least one where DICOM files
    are among them), each file within ``FILE_SECONDS``. ``counts``: the images each file gives (a
    split multi-frame DICOM gives one per frame; default 1 each), ``dicom_settings`` how DICOM
    files are windowed and split. ``progress(images done)``."""
    paths = [str(p) for p in paths]
    counts = [1] * len(paths) if counts is None else [int(c) for c in counts]
    starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).tolist()
    try:
        images = np.empty((starts[-1], channels, size, size), dtype=np.uint8)
    except MemoryError:
        raise DataError(f"{starts[-1]} images of {channels}x{size}x{size} pixels do not fit in memory; set a smaller "
                        "[data] image_size in the pipeline, or use fewer images") from None
    converted = 0
    chunks = [(starts[i], paths[i:i + CHUNK], counts[i:i + CHUNK]) for i in range(0, len(paths), CHUNK)]
    workers = workers or min(len(chunks), os.cpu_count() or 1)
    if workers <= 1 and not any(map(dicom.is_dicom, paths)):
        results = ((start, _decode_chunk(chunk, channels, size, n, dicom_settings)) for start, chunk, n in chunks)
        for start, (array, native) in results:
            images[start:start + len(array)] = array
            converted += int((native != channels).sum())
            if progress:
                progress(start + len(array))
        return images, converted
    context = multiprocessing.get_context()
    report = context.SimpleQueue()
    pool = ProcessPoolExecutor(max(1, min(workers, len(chunks))), mp_context=context, initializer=_worker_init,
                               initargs=(report,))
    try:
        with sigint_blocked():  # workers are forked without Ctrl-C, then ignore it
            futures = [(start, chunk, pool.submit(_decode_chunk, chunk, channels, size, n, dicom_settings))
                       for start, chunk, n in chunks]
        for start, chunk, future in futures:
            try:
                array, native = future.result()
            except BrokenProcessPool:
                stuck = None if report.empty() else report.get()
                if stuck is not None:
                    raise _too_slow(stuck) from None
                raise DataError(f"an image decoding process stopped unexpectedly (killed, perhaps out of memory) "
                                f"while decoding the files from {chunk[0]} to {chunk[-1]}; rerun the command, "
                                "and if it stops again remove or shrink the largest of them") from None
            images[start:start + len(array)] = array
            converted += int((native != channels).sum())
            if progress:
                progress(start + len(array))
    except BaseException:  # Ctrl-C, or a file refused: the other chunks are not waited for
        stop(pool)
        raise
    pool.shutdown(wait=True)
    report.close()
    return images, converted
