"""The spend log on disk: one file per private dataset, outside every run directory, locked.

Default location ``~/.local/share/pate/spend`` (``$XDG_DATA_HOME/pate/spend`` when set);
``PATE_SPEND_DIR`` overrides it. The file is named by a fingerprint of the private images and
labels, so every run over the same private data, in any run directory, appends to the same log.
It is PRIVATE (the fingerprint is a hash of the private data): files are created mode 0600.
An entry is appended, under an OS file lock, before the release it records happens.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from .errors import PateError
from .io import append_durable, create_exclusive
from .privacy import spend


class SpendError(PateError):
    """The spend log is unusable, or a release would pass the total budget."""


def directory() -> Path:
    if os.environ.get("PATE_SPEND_DIR"):
        return Path(os.environ["PATE_SPEND_DIR"])
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "pate" / "spend"


def path_for(fingerprint: str) -> Path:
    return directory() / f"{fingerprint}.jsonl"


@contextlib.contextmanager
def locked(fingerprint: str) -> Iterator[Path]:
    """Hold the log's lock (released by the kernel if the process dies) while reading and appending."""
    folder = directory()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(folder / f"{fingerprint}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path_for(fingerprint)
    finally:
        os.close(fd)


def _read(path: Path, fingerprint: str) -> list[spend.Entry]:
    if not path.exists():
        return []
    try:
        return spend.parse(path.read_text(encoding="utf-8"), fingerprint, str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise SpendError(f"{path} is unreadable ({exc}); nothing is released until it is restored") from None
    except spend.SpendLogError as exc:
        raise SpendError(f"{exc}; nothing is released until it is restored") from None


def entries(fingerprint: str) -> list[spend.Entry]:
    with locked(fingerprint) as path:
        return _read(path, fingerprint)


def record(fingerprint: str, entry: spend.Entry, *, total_budget: float = 0.0,
           conversion: str = "improved") -> spend.Total:
    """Append ``entry`` unless it is already there (a resumed run); refuse it when the composed
    total would pass ``total_budget`` (0 = none). Returns the total including it."""
    with locked(fingerprint) as path:
        existing = _read(path, fingerprint)
        if any(e.kind == entry.kind and e.run_id == entry.run_id and e.draw == entry.draw for e in existing):
            return spend.composed(existing, entry.delta, conversion)
        total = spend.composed(existing, entry.delta, conversion, extra=entry.curve())
        if total_budget and total.epsilon > total_budget:
            before = spend.composed(existing, entry.delta, conversion)
            raise SpendError(
                f"this release would bring the privacy spent on this private data to epsilon {total.epsilon:.3f} "
                f"(delta {entry.delta:g}, {total.releases} releases), past [privacy] total_budget = {total_budget:g}; "
                f"spent so far: {before.epsilon:.3f}. Nothing was released")
        if not path.exists():
            create_exclusive(path, spend.encode_header(fingerprint))
        append_durable(path, spend.encode(entry))
        return total


def draws(fingerprint: str, run_id: str, kind: str) -> int:
    """How many entries of ``kind`` the run ``run_id`` has logged."""
    return sum(e.run_id == run_id and e.kind == kind for e in entries(fingerprint))


def total(fingerprint: str, delta: float, conversion: str = "improved",
          extra: Optional[np.ndarray] = None) -> spend.Total:
    return spend.composed(entries(fingerprint), delta, conversion, extra)
