"""Mironov's attack on floating-point noise, replayed on what pate releases (issue: bit for bit).

For each released soft-label vector and each neighbouring vote histogram (one vote moved, or, for
Private-kNN, one voter added or removed), decide exactly whether some draw of the noise generator
produces the released numbers from the neighbour's integer counts. If none does, the neighbour is
impossible given the release: that fraction of outputs is a lower bound on δ at every ε.

The generators modelled:
- pate's: integer noise (discrete Gaussian / discrete Laplace), every integer with positive mass, so
  a released value r is reachable from count c iff r − c is an integer;
- the float64 noise of earlier versions, c + σ·Φ⁻¹(k/2⁵³) with k ∈ [1, 2⁵³ − 1]: reachable iff some
  k rounds to exactly r, found by bisection on k (the map is non-decreasing).
Real runs, OS noise (no seed).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from scipy.special import ndtri

from pate.aggregation.ledger_files import ledger_key
from pate.privacy import ledger
from pate.stages import aggregate as stage

from ..privacy.test_worst_case import neighbours  # one vote moved
from .test_aggregate import make_run as make_batch_run
from .test_guarantee_matches_asked import _fake_neighbourhoods
from .test_guarantee_matches_asked import make_run as make_reviewed_run

TWO_53 = 2 ** 53


def reachable_integer(released: float, count: int) -> bool:
    """pate's generators: count + n for an integer n (every integer has positive probability)."""
    return bool(np.isfinite(released)) and float(released - count).is_integer()


def reachable_float_gaussian(released: float, count: int, sigma: float) -> bool:
    """The float generator fl(count + fl(σ·Φ⁻¹(k/2⁵³))): does any k give exactly ``released``?"""
    def value(k: int) -> float:
        return float(np.float64(count) + np.float64(sigma) * ndtri(np.float64(k) / TWO_53))

    lo, hi = 1, TWO_53 - 1
    if not value(lo) <= released <= value(hi):
        return False
    while lo < hi:  # the least k whose value is ≥ released
        mid = (lo + hi) // 2
        if value(mid) < released:
            lo = mid + 1
        else:
            hi = mid
    return value(lo) == released


def voter_neighbours(row: np.ndarray):
    for j in range(len(row)):
        for step in (-1, 1):
            if row[j] + step >= 0:
                other = row.copy()
                other[j] += step
                yield other


def impossible_fraction(releases, reachable, neighbours) -> float:
    """The share of (released vector, neighbour) pairs no draw of the generator can explain."""
    pairs = impossible = 0
    for votes, noisy in releases:
        for other in neighbours(votes):
            pairs += 1
            impossible += not all(reachable(float(r), int(c)) for r, c in zip(noisy, other))
    assert pairs > 0
    return impossible / pairs


def released(ctx) -> list[tuple[np.ndarray, np.ndarray]]:
    """(the vote row, the released soft vector) of every answered query, from the run's own files."""
    records = ledger.parse(ctx.run.file("ledger.jsonl").read_text(), ledger_key(ctx.run)).records
    with np.load(ctx.run.file("votes.npz")) as v:
        votes = v["votes"]
    out = []
    for r in records:  # a query the student answered (Interactive-GNMax) releases no teachers' vector
        if r.answered and r.noisy is not None and np.isfinite(r.noisy).all():
            out.append((votes[r.query], np.array(r.noisy, dtype=np.float64)))
    with np.load(ctx.run.file("labels.npz")) as data:
        soft = data["soft"]
        assert np.array_equal(soft[np.isfinite(soft).all(axis=1)], np.array([n for _, n in out]))  # labels.npz's
    return out


@pytest.mark.parametrize("mechanism", ["gnmax", "confident-gnmax", "lnmax"])
def test_no_neighbour_is_impossible_for_any_released_vector(tmp_path, mechanism):
    ctx, _ = make_batch_run(tmp_path, mechanism=mechanism, soft_labels=True, seed=None)
    stage.run(ctx)
    out = released(ctx)
    assert len(out) >= 5
    assert impossible_fraction(out, reachable_integer, neighbours) == 0.0


def test_no_neighbour_is_impossible_for_interactive_gnmax(tmp_path, fake_data_root):
    ctx = make_reviewed_run(tmp_path, "interactive-gnmax", fake_data_root, interactive_rounds=2, interactive_steps=10,
                            student_confidence=0.5, soft_labels=True, seed=None)
    stage.run(ctx)
    out = released(ctx)
    assert out and impossible_fraction(out, reachable_integer, neighbours) == 0.0


def test_no_neighbour_is_impossible_for_private_knn(tmp_path):
    ctx = make_reviewed_run(tmp_path, "private-knn", teachers={"features": "scattering"}, threshold=6.0, sigma1=4.0,
                            sigma2=3.0, knn_k=20, privacy={"record_epsilon": 2.0}, soft_labels=True, seed=None)
    _fake_neighbourhoods(ctx.run, 600, 60)
    stage.run(ctx)
    out = released(ctx)
    assert out and impossible_fraction(out, reachable_integer, voter_neighbours) == 0.0


def test_the_attack_finds_the_float_noise_of_earlier_versions():
    # The same check can fail: float64 Gaussian noise on the same counts (as pate drew it before)
    # leaves most neighbours impossible, as the reviewer measured (75% at σ 40).
    rng = np.random.default_rng(0)
    votes = rng.multinomial(250, [0.7, 0.2, 0.1], size=20)
    sigma = 40.0
    k = (np.frombuffer(os.urandom(8 * votes.size), dtype=np.uint64) >> np.uint64(11)) | np.uint64(1)
    noisy = votes + sigma * ndtri(k.reshape(votes.shape).astype(np.float64) / TWO_53)
    out = list(zip(votes, noisy))
    assert impossible_fraction(out[:1], lambda r, c: reachable_float_gaussian(r, c, sigma),
                               lambda row: iter([row])) == 0.0  # its own counts explain it
    fraction = impossible_fraction(out, lambda r, c: reachable_float_gaussian(r, c, sigma), neighbours)
    assert fraction > 0.3
    assert impossible_fraction(out, reachable_integer, neighbours) == 1.0  # and not integers
