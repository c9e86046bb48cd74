"""Hypothetical vote histograms: public by construction, for planning and for fixing parameters.

Nothing here reads votes. A consensus level c puts round(c·K) votes on the top class and gives
the rest to the runner-ups greedily (the runner-up takes as many as it can, never more than the
top, then the next). Pr[answered] depends only on the top count; for GNMax this concentration is
the worst case at that top count, since Φ̄ is convex on [0, ∞) so the union bound q̃ of
Papernot et al. 2018 (arXiv:1802.08908v1), Prop. 7, is largest when the remaining votes sit on
as few classes as possible.
"""
from __future__ import annotations

import math

import numpy as np


def vote_row(teachers: int, classes: int, top: int, gap: int) -> np.ndarray:
    """(m,) counts: top on class 0, top − gap on class 1, the rest spread evenly on the others."""
    runner = top - gap
    rest = teachers - top - runner
    if not (0 <= gap <= top <= teachers) or rest < 0 or rest > (classes - 2) * runner:
        raise ValueError(f"no vote row of {teachers} votes over {classes} classes has top {top} and gap {gap}")
    row = np.zeros(classes, dtype=np.int64)
    row[:2] = top, runner
    if classes > 2:
        row[2:] = rest // (classes - 2)
        row[2:2 + rest % (classes - 2)] += 1
    return row


def consensus_row(teachers: int, classes: int, level: float) -> np.ndarray:
    """(m,) counts for consensus level c: round(c·K) on class 0, the rest greedily on runner-ups."""
    if not (math.isfinite(level) and 1.0 / classes <= level <= 1.0):
        raise ValueError(f"consensus must be in [1/classes = {1 / classes:.3g}, 1]. Found {level!r}.")
    top = max(int(round(level * teachers)), -(-teachers // classes))
    row = np.zeros(classes, dtype=np.int64)
    row[0], rest = top, teachers - top
    for j in range(1, classes):
        row[j] = min(top, rest)
        rest -= row[j]
    return row
