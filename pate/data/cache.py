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
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..io import atomic_write_bytes, atomic_write_json
from . import dicom
from .images import opened

DECODER_VERSION = 1
INDEX = "index.json"


def _folder(root: Path) -> Path:
    folder = Path(root) / "cache"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def file_facts(paths: Sequence[Path], root: Path, progress: Optional[Callable[[int], None]] = None) -> list[dict]:
    """Per file: its sha256 and header facts (width, height, bands; ``frames`` for DICOM files),
    from the index where the file is unchanged, else read (and the index updated)."""
    folder = _folder(root)
    try:
        index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = {}
    facts, changed, real_folders = [], False, {}
    for i, path in enumerate(paths):
        folder_name, name = os.path.split(os.fspath(path))
        if folder_name not in real_folders:  # one realpath per folder: per file it would dominate a reload
            real_folders[folder_name] = os.path.realpath(folder_name)
        key = os.path.join(real_folders[folder_name], name)
        stat = os.stat(key)
        entry = index.get(key)
        if not entry or entry["size"] != stat.st_size or entry["mtime_ns"] != stat.st_mtime_ns:
            data = Path(key).read_bytes()
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


def key_of(parts: dict[str, Sequence[str]], settings: dict) -> str:
    """The cache key of decoded arrays: every file's content hash, in order, and the decoding settings."""
    digest = hashlib.sha256(json.dumps({"decoder": DECODER_VERSION, **settings}, sort_keys=True).encode())
    for name in sorted(parts):
        digest.update(f"|{name}|".encode())
        digest.update("\n".join(parts[name]).encode())
    return digest.hexdigest()


def load_arrays(root: Path, key: str) -> Optional[dict[str, np.ndarray]]:
    path = _folder(root) / f"{key}.npz"
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            return {k: saved[k] for k in saved.files}
    except (OSError, ValueError):
        return None  # a damaged cache entry is decoded again


def save_arrays(root: Path, key: str, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(_folder(root) / f"{key}.npz", buffer.getvalue(), private=True)
