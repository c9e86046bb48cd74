"""Your own images, as ``.npz`` arrays: ``images`` uint8 (N, H, W) or (N, H, W, C), ``labels`` int.

The private file needs both, and may hold ``ids`` (one stable id per record, integers or strings:
``pate.data.records``); the public file its images (its labels, if any, serve evaluation only); the
optional test file both. Every file is checked before its arrays are read: it must be an ``.npz``
(zip) archive, and the dtype and shape of every array pate reads (images, labels and the private
file's ids, which the partition reads later) come from its ``.npy`` header, bounded to
``MAX_PIXELS`` values and ``MAX_MEMBER_BYTES`` bytes and checked against the bytes the archive
holds for it, before anything is allocated and before any run directory is created; square images
of one size in every file.

What is published is never a function of the private arrays: the classes are ``[data] classes``
or else ``0..the largest label`` of the public and test files, and every private label must lie
among them; the channels are ``[data] channels`` or else those of the public and test images
(greyscale images join colour ones as three equal channels; colour images are refused where the
channel count is one).
"""
from __future__ import annotations

import hashlib
import zipfile
import zlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..config import MAX_CLASSES, DataConfig
from . import records
from .dataset import DataError, Dataset, channel_stats
from .folders import MIN_IMAGE_SIZE
from .sources import Files, Source, register_source

MAX_PIXELS = 2**31  # values per array (2 GiB of uint8): a header claiming more is refused before allocating
MAX_HEADER = 10_000  # bytes of an .npy header (numpy's own default limit)
MAX_MEMBER_BYTES = 2**32  # bytes of one array (ids of long strings are 4 bytes a character)
_DAMAGED = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError,
            KeyError, SyntaxError)


def _header(zf: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran order, dtype, bytes after the header) of one ``.npy`` member, from its header."""
    info = zf.getinfo(member)
    with zf.open(member) as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp, max_header_size=MAX_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp, max_header_size=MAX_HEADER)
        else:
            raise ValueError(f"{member}: .npy format version {version} is not supported")
        offset = fp.tell()
    return tuple(int(d) for d in shape), bool(fortran), dtype, info.file_size - offset


def _check_header(key: str, what: str, shape, dtype: np.dtype, payload: int) -> None:
    """A member's claimed size against the bound and the bytes the archive holds for it."""
    values = int(np.prod(shape, dtype=object)) if shape else 1
    if values > MAX_PIXELS:
        raise DataError(f"[data] {key}: '{what}' claims {values} values (shape {shape}); at most {MAX_PIXELS} "
                        "are read from one file")
    if values * dtype.itemsize > MAX_MEMBER_BYTES:
        raise DataError(f"[data] {key}: '{what}' claims {values * dtype.itemsize} bytes ({values} of {dtype}); at "
                        f"most {MAX_MEMBER_BYTES} are read from one array")
    if dtype.hasobject or dtype.itemsize == 0 or values * dtype.itemsize > payload:
        raise DataError(f"[data] {key}: '{what}' is damaged: its header claims {values * dtype.itemsize} bytes "
                        f"of {dtype} but the file holds {payload}")


def _read(path: Path, key: str, need_labels: bool) -> tuple[np.ndarray, Optional[np.ndarray], str]:
    """(images (N, C, H, W) uint8, labels (their own integer dtype) or None, sha256 of the file).
    Every shape and dtype is checked from the headers first; nothing is allocated before."""
    path = Path(path)
    where = f"[data] {key} = {str(path)!r}"
    if not path.exists():
        raise DataError(f"{where} does not exist")
    if not path.is_file():
        raise DataError(f"{where} is not a file")
    try:
        with path.open("rb") as handle:
            magic = handle.read(6)
        if not zipfile.is_zipfile(path):
            hint = (" (it is a .npy file, one array; save images and labels together with numpy.savez)"
                    if magic == b"\x93NUMPY" else " (a zip archive of .npy arrays, as numpy.savez writes; this "
                    "file is damaged or of another kind)")
            raise DataError(f"{where} is not an .npz file{hint}")
        with zipfile.ZipFile(path) as zf:
            members = {name[:-4]: name for name in zf.namelist() if name.endswith(".npy")}
            if "images" not in members or (need_labels and "labels" not in members):
                raise DataError(f"{where} must hold 'images'" + (" and 'labels'" if need_labels else "")
                                + f"; it holds {sorted(members)[:10]}")
            shape, _, dtype, payload = _header(zf, members["images"])
            if dtype != np.uint8 or len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3)) \
                    or shape[0] == 0:
                raise DataError(f"[data] {key}: 'images' must be uint8 of shape (N, H, W) or (N, H, W, C) with C 1 "
                                f"or 3 and N > 0; found {dtype} {shape}")
            if shape[1] != shape[2]:
                raise DataError(f"[data] {key}: images must be square; found {shape[1]}x{shape[2]}")
            _check_header(key, "images", shape, dtype, payload)
            label_header = _header(zf, members["labels"]) if "labels" in members else None
            if label_header is not None:
                label_shape, _, label_dtype, label_payload = label_header
                if label_dtype.kind not in "iu" or label_shape != (shape[0],):
                    raise DataError(f"[data] {key}: 'labels' must be integers of shape ({shape[0]},); found "
                                    f"{label_dtype} {label_shape}")
                _check_header(key, "labels", label_shape, label_dtype, label_payload)
            if key == "private_file" and "ids" in members:  # read by the partition (``pate.data.records.user_ids``)
                ids_shape, _, ids_dtype, ids_payload = _header(zf, members["ids"])
                if ids_dtype.kind not in "iuU" or ids_shape != (shape[0],):
                    raise DataError(f"[data] {key}: 'ids' must be integers or strings of shape ({shape[0]},), one "
                                    f"per image; found {ids_dtype} {ids_shape}")
                _check_header(key, "ids", ids_shape, ids_dtype, ids_payload)
            with zf.open(members["images"]) as fp:
                x = np.lib.format.read_array(fp, allow_pickle=False, max_header_size=MAX_HEADER)
            y = None
            if label_header is not None:
                with zf.open(members["labels"]) as fp:
                    y = np.lib.format.read_array(fp, allow_pickle=False, max_header_size=MAX_HEADER)
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{where} is too large to load into memory") from None
    except _DAMAGED as exc:
        raise DataError(f"{where} is not a readable .npz file ({type(exc).__name__}: {exc})".replace("\n", " ")) \
            from None
    if y is not None and y.dtype.kind == "i" and len(y) and int(y.min()) < 0:
        raise DataError(f"[data] {key}: 'labels' must be non-negative integers; found a negative label")
    x = x[:, None] if x.ndim == 3 else np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x, y, digest.hexdigest()


def _classes(configured: Sequence[str], public_labels: Sequence[np.ndarray]) -> tuple[list[str], str]:
    """The published class names and where they come from: the config, else the public labels."""
    if configured:
        return list(configured), "[data] classes"
    given = [y for y in public_labels if y is not None and len(y)]
    if not given:
        raise DataError("[data] classes is not set and no public file has labels: the classes are published, so "
                        "they come from the config or from public data, never from the private labels; set "
                        "[data] classes = [...] (label 0 first) or give a labelled test_file")
    top = max(int(y.max()) for y in given)
    if top >= MAX_CLASSES:
        raise DataError(f"[data] the public labels must lie in 0..{MAX_CLASSES - 1}; found {top}")
    if top < 1:
        raise DataError("[data] the public labels name one class; labelling needs at least two (set [data] classes)")
    return [str(c) for c in range(top + 1)], "the public labels (0..the largest)"


def _check_labels(y: Optional[np.ndarray], classes: Sequence[str], source: str, key: str, private: bool) -> None:
    if y is None or not len(y) or int(y.max()) < len(classes):  # int(): a uint64 label is compared as it is
        return
    found = "a label outside them" if private else f"label {int(y.max())}"
    raise DataError(f"[data] {key}: the labels must lie in 0..{len(classes) - 1} (the {len(classes)} classes of "
                    f"{source}); found {found}")


def _channels(arrays: dict[str, np.ndarray], channels: int) -> int:
    """The configured channel count, or the public images' (3 if any has colour); an image set with
    more channels than that is refused."""
    public = [a.shape[1] for k, a in arrays.items() if k != "private_file" and len(a)]
    target = channels or max(public)
    for key, a in arrays.items():
        if len(a) and a.shape[1] > target:
            reason = f"[data] channels = {channels}" if channels else "the public images are greyscale"
            raise DataError(f"[data] {key}: colour images, but {reason}; set [data] channels = 3 to keep colour")
    return target


def load(name: str, private_file: Path, public_file: Path, test_file: Optional[Path], *,
         classes: Sequence[str] = (), channels: int = 0, image_size: int = 0) -> Dataset:
    """The files as a ``Dataset``. ``classes``, ``channels``, ``image_size``: the configured values
    (() / 0 = from the public and test files)."""
    private_x, private_y, private_sha = _read(private_file, "private_file", True)
    public_x, public_y, public_sha = _read(public_file, "public_file", False)
    test_x, test_y, test_sha = (_read(test_file, "test_file", True) if test_file
                                else (public_x[:0], np.zeros(0, np.int64), None))
    size = public_x.shape[-1]
    for key, a in (("private_file", private_x), ("test_file", test_x)):
        if len(a) and a.shape[-1] != size:
            raise DataError(f"[data] {key}: images of {a.shape[-1]} pixels, but the public images have {size}; "
                            "every file must hold images of one size")
    if image_size and image_size != size:
        raise DataError(f"[data] image_size = {image_size}, but the public images have {size} pixels (arrays are "
                        "not resized: set image_size = 0 or resize the files)")
    if size < MIN_IMAGE_SIZE:
        raise DataError(f"[data] images of {size} pixels are too small for the networks (at least {MIN_IMAGE_SIZE})")
    classes, source = _classes(classes, [public_y, test_y if test_file else None])
    _check_labels(public_y, classes, source, "public_file", False)
    _check_labels(test_y, classes, source, "test_file", False)
    _check_labels(private_y, classes, source, "private_file", True)
    target = _channels({"private_file": private_x, "public_file": public_x, "test_file": test_x}, channels)
    private_x, public_x, test_x = (a if a.shape[1] == target else np.repeat(a, target, axis=1)
                                   for a in (private_x, public_x, test_x))
    private_y, test_y = private_y.astype(np.int64), test_y.astype(np.int64)  # each checked in 0..classes-1
    public_y = None if public_y is None else public_y.astype(np.int64)
    _refuse_private_in_public(private_x, np.concatenate([public_x, test_x]))
    everything = np.concatenate([public_x, test_x])
    mean, std = channel_stats(everything)
    files = {"private": [[str(private_file), private_sha]], "public": [[str(public_file), public_sha]],
             "test": [[str(test_file), test_sha]] if test_file else []}
    return Dataset(name=name, private_x=private_x, private_y=private_y, public_x=everything,
                   public_y=np.concatenate([np.full(len(public_x), -1, np.int64) if public_y is None else public_y,
                                            test_y]),
                   classes=tuple(classes), mean=mean, std=std, num_pool=len(public_x),
                   shared_split=False, files=files)


def _refuse_private_in_public(private_x: np.ndarray, public_x: np.ndarray) -> None:
    """An image (by content) both private and public would publish that private record: refused."""
    def rows(a):
        return np.ascontiguousarray(a.reshape(len(a), -1)).view(np.dtype((np.void, a[0].size)))[:, 0]

    shared = np.intersect1d(rows(private_x), rows(public_x), return_indices=True)[1]
    if shared.size:
        raise DataError(f"[data] private image {int(shared[0])} is also among the public images; a private record may "
                        "not also be public: remove it from one of the files")


def _load_source(config: DataConfig, root: Path, quiet: bool, auto_prepare: bool) -> Dataset:
    return load(config.public_name, Path(config.private_file), Path(config.public_file),
                Path(config.test_file) if config.test_file else None, classes=config.classes,
                channels=config.channels, image_size=config.image_size)


def _description(config: DataConfig) -> str:
    return "arrays in .npz files"


def _identities(config: DataConfig, dataset: Dataset) -> list[bytes]:
    """The private file's ``ids`` where it has them, else each image with its label."""
    return records.identities(dataset.private_x, dataset.private_y, ids=records.user_ids(config.private_file))


def _record_names(config: DataConfig, files: Files) -> list[str] | None:
    """The private file's ``ids``, never positions (None without them: a budget file is refused)."""
    return records.user_ids(config.private_file)


SOURCE = register_source(Source(name="arrays", load=_load_source, description=_description,
                                identities=_identities, record_names=_record_names))
