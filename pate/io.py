"""Durable files: atomic writes, append-only logs, hashes and checkpoints.

A crash at any instant must leave either the old or the new version of every file, so a write
goes to a temporary file in the same directory, is fsynced, then renamed over the target. An
append-only log (the ledger) is extended by one ``write`` call and fsynced, and cut back to its
previous length when that fails. Every writer here makes private files by default (mode 0600,
whatever the umask; a folder it creates is 0700): the run directory is private as a whole, and a
file copied out of it keeps its mode. Only the public release and a user's own outputs (`pate
export`, `pate predict --out`) pass ``private=False`` and follow the umask. Checkpoints are plain
dicts of tensors and Python values, read with ``weights_only=True`` (no pickled code), so a
damaged or foreign one is one clear error.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import stat as _stat
import tempfile
import zipfile
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from .errors import PateError

_UMASK = os.umask(0o022)
os.umask(_UMASK)


class InputError(PateError):
    """An input file is not a regular file, is larger than pate reads for its purpose, or does not
    parse; ``why`` says what is wrong in a few words, for callers that phrase their own line."""

    def __init__(self, message: str, why: str = ""):
        super().__init__(message)
        self.why = why or message


class CheckpointError(PateError, ValueError):
    """A checkpoint is damaged, or is not the kind of checkpoint expected."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint was written by a run with another configuration, settings or data."""


# ----------------------------------------------------------------------------- bounded reads


def read_bytes_limited(path: str | Path, limit: int, what: str = "file") -> bytes:
    """The bytes of ``path``, refused in one line unless it is a regular file of at most ``limit``
    bytes: a FIFO would block the open or the read forever, ``/dev/zero`` would be read until the
    kernel stops the process. The file is opened non-blocking (a FIFO with no writer does not
    hang the open), checked with ``fstat`` on that same descriptor, then read to ``limit + 1``
    bytes at most (a file growing while it is read is caught too)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except IsADirectoryError:
        raise InputError(f"{path} is a folder; the {what} must be a file") from None
    try:
        mode = os.fstat(fd).st_mode
        if not _stat.S_ISREG(mode):
            kind = "folder" if _stat.S_ISDIR(mode) else "FIFO" if _stat.S_ISFIFO(mode) else \
                "device" if _stat.S_ISCHR(mode) or _stat.S_ISBLK(mode) else "socket" if _stat.S_ISSOCK(mode) \
                else "special file"
            raise InputError(f"{path} is a {kind}, not a regular file; the {what} must be a regular file",
                             f"a {kind}, not a regular file")
        chunks, size = [], 0
        while size <= limit:
            block = os.read(fd, min(1 << 20, limit + 1 - size))
            if not block:
                break
            chunks.append(block)
            size += len(block)
    finally:
        os.close(fd)
    if size > limit:
        raise InputError(f"{path} is larger than {_human(limit)}, the most pate reads for a {what}",
                         f"larger than {_human(limit)}")
    return b"".join(chunks)


def read_text_limited(path: str | Path, limit: int, what: str = "file") -> str:
    """``read_bytes_limited`` decoded as UTF-8 (a byte-order mark is dropped: editors on Windows
    write one); undecodable bytes are one line naming where."""
    data = read_bytes_limited(path, limit, what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text (byte {exc.start}); save the {what} as UTF-8",
                         f"not UTF-8 text, byte {exc.start}") from None


def read_json_limited(path: str | Path, limit: int, what: str = "file"):
    """The JSON value in ``path`` (``read_text_limited``); malformed or nested too deep to parse
    (Python's parser recurses) is one line naming the file."""
    text = read_text_limited(path, limit, what)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); the {what} is damaged", f"not valid JSON: {exc}") from None
    except RecursionError:
        raise InputError(f"{path} is nested too deeply to be a {what}; it is damaged or not pate's",
                         "nested too deeply") from None


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}" if unit == "bytes" else f"{n:.0f} {unit}"
        n /= 1024
    return f"{n} GiB"


# ----------------------------------------------------------------------------- atomic writes


def private_mkdir(directory: str | Path) -> Path:
    """Create ``directory`` (and missing parents) if needed; the folders created are 0700 whatever
    the umask (an existing folder keeps its mode)."""
    directory = Path(directory)
    missing = []
    for folder in (directory, *directory.parents):
        if folder.exists():
            break
        missing.append(folder)
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)
            os.chmod(folder, 0o700)  # mkdir's mode is cut by the umask: set it whole
    if not directory.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(directory))
    return directory


def fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], *, private: bool = True) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, rename it over ``path``.

    ``private`` (the default: everything in a run directory) makes the file mode 0600 whatever the
    umask, and any folder created for it 0700; ``private=False`` (the public release, a user's
    own outputs) follows the umask like any other file.
    """
    path = Path(path)
    if private:
        private_mkdir(path.parent)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600 if private else 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes, *, private: bool = True) -> None:
    atomic_write(path, lambda f: f.write(data), private=private)


def atomic_write_text(path: str | Path, text: str, *, private: bool = True) -> None:
    atomic_write_bytes(path, text.encode(), private=private)


def atomic_write_json(path: str | Path, obj: object, *, private: bool = True) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", private=private)


def atomic_save_npz(path: str | Path, *, private: bool = True, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue(), private=private)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- append-only logs


class ShortWrite(OSError):
    """A write wrote fewer bytes than asked (disk full, quota); the file was cut back or removed."""


def create_exclusive(path: str | Path, data: bytes, *, private: bool = True) -> None:
    """Create ``path`` holding ``data``, fsynced; fails if it exists (never overwrite a log)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    fd = os.open(path, flags, 0o600 if private else 0o666 & ~_UMASK)
    try:
        if private:
            os.fchmod(fd, 0o600)  # os.open's mode is cut by the umask
        written = os.write(fd, data)
        if written != len(data):
            raise ShortWrite(f"short write creating {path} ({written} of {len(data)} bytes); disk full?")
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)  # a half-created log is no log: the next attempt creates it whole
        raise
    os.close(fd)
    fsync_dir(Path(path).parent)


def append_durable(path: str | Path, data: bytes) -> None:
    """Append ``data`` in one ``write`` call, then fsync; on any failure cut the file back to its
    previous length, so what is on disk is always a sequence of whole, synced appends."""
    if not data:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        start = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise ShortWrite(f"short write to {path} ({written} of {len(data)} bytes); disk full?")
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, start)
            os.fsync(fd)
            raise
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | Path, checkpoint: dict, *, private: bool = True) -> None:
    """Write a checkpoint dict atomically: a crash leaves the previous file (or none), never half;
    readable by its owner only unless ``private=False``."""
    import torch

    buffer = io.BytesIO()  # serialise first: a full disk then raises OSError from our write, not torch's
    torch.save(checkpoint, buffer)
    atomic_write_bytes(path, buffer.getvalue(), private=private)


def load_checkpoint(path: str | Path, fmt: str | None = None) -> dict:
    """Read a checkpoint with ``weights_only=True``; damage becomes a ``CheckpointError`` and a
    ``format`` other than ``fmt`` (when given) a ``CheckpointMismatch``."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path} is damaged ({type(exc).__name__}); delete it to restart this stage "
                              "from its beginning") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} is not a pate checkpoint")
    if fmt is not None and checkpoint.get("format") != fmt:
        raise CheckpointMismatch(f"{path} is not a {fmt} checkpoint")
    return checkpoint


def check_resumable(checkpoint: dict, path: str | Path, *, fingerprint: str, settings: dict) -> None:
    """Refuse to resume from a checkpoint of another run (config fingerprint) or other settings,
    naming what differs."""
    if checkpoint.get("fingerprint") != fingerprint:
        theirs = str(checkpoint.get("fingerprint"))[:12]
        raise CheckpointMismatch(f"{path} was written by a run with a different configuration (fingerprint "
                                 f"{theirs!r}, this run {fingerprint[:12]!r}); delete it or use the original settings")
    saved = checkpoint.get("settings") or {}
    differ = sorted(k for k in set(settings) | set(saved) if settings.get(k) != saved.get(k))
    if differ:
        raise CheckpointMismatch(f"{path} was written with different settings or data ({', '.join(differ)}); "
                                 "delete it or use the original settings")
