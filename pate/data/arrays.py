"""Your own images, as ``.npz`` arrays: ``images`` uint8 (N, H, W) or (N, H, W, C), ``labels`` int.

The private file needs both; the public file its images (its labels, if any, serve evaluation
only); the optional test file both. Every file is checked before it is used: its keys, dtypes and
shapes, square images of one size in every file (greyscale images join colour ones as three equal
channels).
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from .dataset import DataError, Dataset
from .folders import MIN_IMAGE_SIZE


def _read(path: Path, key: str, need_labels: bool) -> tuple[np.ndarray, Optional[np.ndarray], str]:
    """(images (N, C, H, W) uint8, labels or None, sha256 of the file)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise DataError(f"[data] {key} = {str(path)!r} does not exist") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"[data] {key} = {str(path)!r} is not a readable .npz file ({exc})") from None
    if "images" not in arrays or (need_labels and "labels" not in arrays):
        raise DataError(f"[data] {key} = {str(path)!r} must hold 'images'" + (" and 'labels'" if need_labels else "")
                        + f"; it holds {sorted(arrays)}")
    x = arrays["images"]
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)) or len(x) == 0:
        raise DataError(f"[data] {key}: 'images' must be uint8 of shape (N, H, W) or (N, H, W, C) with C 1 or 3 "
                        f"and N > 0; found {x.dtype} {x.shape}")
    if x.shape[1] != x.shape[2]:
        raise DataError(f"[data] {key}: images must be square; found {x.shape[1]}x{x.shape[2]}")
    x = x[:, None] if x.ndim == 3 else np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    y = arrays.get("labels")
    if y is not None:
        if y.dtype.kind not in "iu" or y.shape != (len(x),) or (len(y) and y.min() < 0):
            raise DataError(f"[data] {key}: 'labels' must be non-negative integers of shape ({len(x)},); found "
                            f"{y.dtype} {y.shape}")
        y = y.astype(np.int64)
    return x, y, hashlib.sha256(raw).hexdigest()


def load(name: str, private_file: Path, public_file: Path, test_file: Optional[Path]) -> Dataset:
    private_x, private_y, private_sha = _read(private_file, "private_file", True)
    public_x, public_y, public_sha = _read(public_file, "public_file", False)
    test_x, test_y, test_sha = (_read(test_file, "test_file", True) if test_file
                                else (public_x[:0], np.zeros(0, np.int64), None))
    sizes = {a.shape[-1] for a in (private_x, public_x, test_x) if len(a)}
    if len(sizes) > 1:
        raise DataError(f"[data] the private, public and test images must have one size; found {sorted(sizes)}")
    if sizes.pop() < MIN_IMAGE_SIZE:
        raise DataError(f"[data] images of {private_x.shape[-1]} pixels are too small for the networks "
                        f"(at least {MIN_IMAGE_SIZE})")
    channels = max(a.shape[1] for a in (private_x, public_x, test_x))
    private_x, public_x, test_x = (np.repeat(a, channels // a.shape[1], axis=1) for a in (private_x, public_x, test_x))
    classes = int(max(private_y.max(), test_y.max(initial=-1))) + 1
    if classes < 2:
        raise DataError("[data] private_file: the labels must name at least two classes")
    if public_y is not None and len(public_y) and public_y.max() >= classes:
        raise DataError(f"[data] public_file: label {int(public_y.max())} names a class the private labels lack "
                        f"(0..{classes - 1})")
    _refuse_private_in_public(private_x, np.concatenate([public_x, test_x]))
    everything = np.concatenate([public_x, test_x]).astype(np.float64)
    mean = tuple(float(v) for v in everything.mean(axis=(0, 2, 3)) / 255.0)
    std = tuple(max(float(v), 1e-3) for v in everything.std(axis=(0, 2, 3)) / 255.0)
    files = {"private": [[str(private_file), private_sha]], "public": [[str(public_file), public_sha]],
             "test": [[str(test_file), test_sha]] if test_file else []}
    return Dataset(name=name, private_x=private_x, private_y=private_y, public_x=np.concatenate([public_x, test_x]),
                   public_y=np.concatenate([np.full(len(public_x), -1, np.int64) if public_y is None else public_y,
                                            test_y]),
                   classes=tuple(str(c) for c in range(classes)), mean=mean, std=std, num_pool=len(public_x),
                   shared_split=False, files=files)


def _refuse_private_in_public(private_x: np.ndarray, public_x: np.ndarray) -> None:
    """An image (by content) both private and public would publish that private record: refused."""
    def rows(a):
        return np.ascontiguousarray(a.reshape(len(a), -1)).view(np.dtype((np.void, a[0].size)))[:, 0]

    shared = np.intersect1d(rows(private_x), rows(public_x), return_indices=True)[1]
    if shared.size:
        raise DataError(f"[data] private image {int(shared[0])} is also among the public images; a private record may "
                        "not also be public: remove it from one of the files")
