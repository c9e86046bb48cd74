"""Input checks and log-space helpers shared by every module of ``pate.privacy``.

Errors name the value the way dp_accounting's do ("must be > 0. Found -1."), and are raised at
the public edge of each function, before any arithmetic.
"""
from __future__ import annotations

import math

import numpy as np


def check_positive(name: str, value) -> float:
    """``value`` as a float; ValueError unless it is finite and > 0."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number > 0. Found {value!r}.") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be > 0. Found {value}.")
    return value


def check_finite(name: str, value) -> float:
    """``value`` as a float; ValueError unless it is finite."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number. Found {value!r}.") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number. Found {value}.")
    return value


def check_votes(votes) -> np.ndarray:
    """Return ``votes`` as an int64 (N, m) array; raise ValueError unless non-negative integers."""
    arr = np.asarray(votes)
    if arr.ndim != 2:
        raise ValueError(f"votes must be a 2-D array (queries × classes). Found shape {arr.shape}.")
    if arr.shape[1] < 2:
        raise ValueError(f"votes must have at least 2 classes. Found {arr.shape[1]}.")
    if arr.dtype.kind not in "iub":
        if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"votes must be integer counts. Found dtype {arr.dtype} with "
                             f"non-integer values.")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"votes must be non-negative. Found {arr.min()}.")
    return arr


def check_orders(orders) -> np.ndarray:
    """Return ``orders`` as a 1-D float array; raise ValueError unless every order is > 1."""
    arr = np.atleast_1d(np.asarray(orders, dtype=float))
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"orders must be a non-empty 1-D array. Found shape {arr.shape}.")
    if not np.all(np.isfinite(arr)) or arr.min() <= 1:
        raise ValueError(f"orders must all be finite and > 1. Found {arr.min()}.")
    return arr


def log1mexp(x: np.ndarray) -> np.ndarray:
    """log(1 − eˣ) for x ≤ 0, accurate near both ends (Mächler 2012)."""
    x = np.asarray(x, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > -math.log(2), np.log(-np.expm1(x)), np.log1p(-np.exp(x)))


def logsumexp_rows(a: np.ndarray) -> np.ndarray:
    """logsumexp over the last axis; rows of all −inf give −inf (no warnings)."""
    top = np.max(a, axis=-1)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.sum(np.exp(a - safe[..., None]), axis=-1)) + safe
