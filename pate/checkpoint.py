"""Checkpoints: plain dicts of tensors and Python values, written atomically, read without pickle code.

Shared by the teacher ensemble and the student so that a damaged or foreign checkpoint is
reported the same way everywhere: one clear error naming the file, never a traceback.
"""
from __future__ import annotations

import os
import pickle
import zipfile

import torch

from .run import atomic_write


class CheckpointError(ValueError):
    """A checkpoint is damaged, or was written by another run or with other settings."""


def save(path: str | os.PathLike, checkpoint: dict) -> None:
    """A crash at any instant leaves the previous file (or none), never a partial one."""
    atomic_write(path, lambda f: torch.save(checkpoint, f))


def load(path: str | os.PathLike) -> dict:
    """Read a checkpoint with ``weights_only=True``; damage becomes a ``CheckpointError``."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path} is damaged ({type(exc).__name__}); delete it to restart this stage "
                              "from its beginning") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} is not a pate checkpoint")
    return checkpoint
