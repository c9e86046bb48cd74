"""Decode once: content hashes of image files, and their decoded arrays, cached under the data root.

A file's sha256 is its identity. Hashing 70 000 files on every command would dominate a reload,
so an index keeps each file's (size, mtime, sha256, width, height, bands, and for DICOM files
frames) and a file is hashed
again only when its size or modification time changed (the shortcut ``git`` takes). The decoded
arrays are stored under a key made of every file's content hash and the decoding settings, so a
changed, added or removed file gives another key and is decoded afresh. Where DICOM files are among
them, the key holds the DICOM settings as well (``dicom.Settings.key``: the window, the frame
handling, the DICOM decoder's version), so changing ``[data] dicom_window`` decodes afresh; the
index and the arrays hold no DICOM tag value (no patient name, id or date), only pixels and sizes.

The cache holds decoded private images: it is PRIVATE (folders 0700, files 0600).

A damaged cache is never an error: an index that is not JSON (or nested past Python's recursion
limit), an entry of the wrong shape or types, an arrays file that is truncated, not a zip, or
holds arrays of another dtype or shape than the key's settings give, is a cache miss: the files
are read and decoded again and the cache rewritten.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import PateError
from ..io import atomic_write_bytes, atomic_write_json, read_bytes_limited
from . import dicom
from .images import opened

DECODER_VERSION = 1
INDEX = "index.json"
MAX_INDEX_BYTES = 1 << 30  # an index of a few million files; a larger one is rebuilt
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _folder(root: Path) -> Path:
    folder = Path(root) / "cache"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def file_facts(paths: Sequence[Path], root: Path, progress: Optional[Callable[[int], None]] = None) -> list[dict]:
    """Per file: its sha256 and header facts (width, height, bands; ``frames`` for DICOM files),
    from the index where the file is unchanged, else read (and the index updated)."""
    folder = _folder(root)
    index = _load_index(folder / INDEX)
    facts, changed, real_folders = [], False, {}
    for i, path in enumerate(paths):
        folder_name, name = os.path.split(os.fspath(path))
        if folder_name not in real_folders:  # one realpath per folder: per file it would dominate a reload
            real_folders[folder_name] = os.path.realpath(folder_name)
        key = os.path.join(real_folders[folder_name], name)
        stat = os.stat(key)
        entry = index.get(key)
        if not _valid(entry) or entry["size"] != stat.st_size or entry["mtime_ns"] != stat.st_mtime_ns:
            data = read_bytes_limited(path, dicom.MAX_FILE_BYTES, "image file")
            if dicom.is_dicom(name):
                header = dicom.header(data, path)
            else:
                with opened(io.BytesIO(data), path) as image:
                    header = {"width": image.size[0], "height": image.size[1], "bands": len(image.getbands())}
            entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": hashlib.sha256(data).hexdigest(),
                     **header}
            index[key], changed = entry, True
            if progress and (i % 1024 == 0 or i + 1 == len(paths)):
                progress(i + 1)  # only while files are read: an unchanged folder reloads silently
        facts.append(entry)
    if changed:
        atomic_write_json(folder / INDEX, index, private=True)
    return facts


def _load_index(path: Path) -> dict:
    """The index, or {} where it is missing or damaged in any way (it is rebuilt)."""
    try:
        index = json.loads(read_bytes_limited(path, MAX_INDEX_BYTES, "cache index").decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError, MemoryError, PateError):  # damaged, nested past the stack
        return {}
    return index if isinstance(index, dict) else {}


def _count(value, low: int = 0) -> bool:
    return type(value) is int and value >= low


def _valid(entry) -> bool:
    """An index entry as ``file_facts`` writes it; anything else is read again."""
    return isinstance(entry, dict) and _count(entry.get("size")) and _count(entry.get("mtime_ns"), -2**63) \
        and isinstance(entry.get("sha256"), str) and _SHA256.fullmatch(entry["sha256"]) is not None \
        and _count(entry.get("width"), 1) and _count(entry.get("height"), 1) and _count(entry.get("bands"), 1) \
        and _count(entry.get("frames", 1), 1)


def key_of(parts: dict[str, Sequence[str]], settings: dict) -> str:
    """The cache key of decoded arrays: every file's content hash, in order, and the decoding settings."""
    digest = hashlib.sha256(json.dumps({"decoder": DECODER_VERSION, **settings}, sort_keys=True).encode())
    for name in sorted(parts):
        digest.update(f"|{name}|".encode())
        digest.update("\n".join(parts[name]).encode())
    return digest.hexdigest()


def load_arrays(root: Path, key: str, shape: Optional[tuple[int, ...]] = None) -> Optional[dict[str, np.ndarray]]:
    """The arrays saved under ``key`` (``images`` uint8, ``converted`` an integer), or None where
    there are none or they are damaged in any way (decoded again). ``shape``: what ``images`` must
    be, checked from the file's array header before anything is allocated."""
    path = _folder(root) / f"{key}.npz"
    if not path.exists():
        return None
    try:
        if shape is not None and _header_shape(path, "images") != (tuple(shape), np.dtype(np.uint8)):
            return None
        with np.load(path, allow_pickle=False) as saved:
            arrays = {k: saved[k] for k in saved.files}
    except Exception:  # noqa: BLE001 — truncated, not a zip, a bad header: a miss, rebuilt
        return None
    images, converted = arrays.get("images"), arrays.get("converted")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
            or (shape is not None and images.shape != tuple(shape)) \
            or not isinstance(converted, np.ndarray) or converted.shape != () or converted.dtype.kind not in "iu":
        return None
    return arrays


def _header_shape(path: Path, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype of the array ``name`` in the ``.npz`` at ``path``, from its header."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as member:
        version = np.lib.format.read_magic(member)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version]
        shape, _, dtype = read(member)
    return tuple(shape), dtype


def save_arrays(root: Path, key: str, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(_folder(root) / f"{key}.npz", buffer.getvalue(), private=True)
