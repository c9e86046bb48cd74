"""Throughput of the privacy accounting: data-dependent GNMax RDP and smooth sensitivity.

    python benchmarks/accounting.py [--queries 1000000] [--ss-queries 10000]

Votes: 250 teachers, 10 classes, a mix of easy queries (teacher accuracy ~ Beta(20, 1.5)),
medium ones (~ Beta(5, 3)) and hard ones (class probabilities ~ Dirichlet(0.5)). The last line is
`queries_per_s=<x> ss_queries_per_s=<y>`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pate.privacy import accounting  # noqa: E402
from pate.privacy.mechanisms import ConfidentGNMax  # noqa: E402
from pate.privacy.noise import noise_source  # noqa: E402
from pate.privacy import rdp, smooth_sensitivity as ss  # noqa: E402

TEACHERS, CLASSES = 250, 10
SIGMA1, SIGMA2, THRESHOLD, DELTA = 150.0, 40.0, 200.0, 1e-5


def make_votes(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, size=count, p=[0.6, 0.3, 0.1])
    acc = np.where(kind == 0, rng.beta(20, 1.5, count), rng.beta(5, 3, count))
    rest = rng.dirichlet(np.full(CLASSES - 1, 0.5), size=count) * (1 - acc)[:, None]
    probs = np.concatenate([acc[:, None], rest], axis=1)
    hard = kind == 2
    probs[hard] = rng.dirichlet(np.full(CLASSES, 0.5), size=int(hard.sum()))
    votes = rng.multinomial(TEACHERS, probs)
    return np.take_along_axis(votes, rng.permuted(np.tile(np.arange(CLASSES), (count, 1)), axis=1),
                              axis=1)


def bench_gnmax(votes: np.ndarray):
    orders = rdp.DEFAULT_ORDERS
    start = time.perf_counter()
    curve = rdp.rdp_gnmax_curve(rdp.logq_gnmax(votes, SIGMA2), SIGMA2, orders)
    eps, order = rdp.eps_from_rdp(curve, orders, DELTA, warn_edge=False)
    seconds = time.perf_counter() - start
    return seconds, eps, order


def bench_per_query(votes: np.ndarray) -> float:
    start = time.perf_counter()
    rdp.rdp_gnmax(rdp.logq_gnmax(votes, SIGMA2), SIGMA2, rdp.DEFAULT_ORDERS)
    return time.perf_counter() - start


def bench_prefix_epsilon(votes: np.ndarray, loop_sample: int = 200):
    """ε after every query (what `pate audit` and `pate report` show): one vectorised conversion of
    all prefixes vs one `eps_from_rdp` call per prefix (timed on ``loop_sample`` prefixes)."""
    orders = rdp.DEFAULT_ORDERS
    cumulative = np.cumsum(rdp.rdp_gnmax(rdp.logq_gnmax(votes, SIGMA2), SIGMA2, orders), axis=0)
    start = time.perf_counter()
    rows = rdp.eps_from_rdp_rows(cumulative, orders, DELTA)
    rows_seconds = time.perf_counter() - start
    picked = np.linspace(0, len(votes) - 1, loop_sample).astype(int)
    start = time.perf_counter()
    loop = np.array([rdp.eps_from_rdp(cumulative[i], orders, DELTA, warn_edge=False)[0] for i in picked])
    loop_seconds = (time.perf_counter() - start) * len(votes) / loop_sample
    assert np.allclose(rows[picked], loop, rtol=1e-12, atol=1e-15)
    return rows_seconds, loop_seconds


def bench_smooth_sensitivity(votes: np.ndarray, order: float):
    answered = np.ones(votes.shape[0], dtype=bool)
    start = time.perf_counter()
    mech = ConfidentGNMax(THRESHOLD, SIGMA1, SIGMA2)
    ls_total = mech.local_sensitivity(votes, answered, order)
    realized = mech.per_query_rdp(votes, answered, [order]).sum(axis=0)
    result = ss.release(ls_total, float(realized[0]), order, DELTA, 0.4 / order, 6.0, noise_source(0))
    return time.perf_counter() - start, result


def bench_guarantee(teachers: int) -> tuple[float, float]:
    """Seconds to compute the worst-case guarantee of 640 queries (T = 0.8 K, σ1 = 0.6 K, σ2 = 0.16 K)."""
    settings = accounting.Settings(ConfidentGNMax(0.8 * teachers, 0.6 * teachers, 0.16 * teachers), teachers, 10, 640,
                                   DELTA, tuple(rdp.DEFAULT_ORDERS))
    start = time.perf_counter()
    g = accounting.guarantee(settings)
    return time.perf_counter() - start, g.epsilon


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1_000_000)
    parser.add_argument("--ss-queries", type=int, default=10_000)
    parser.add_argument("--order", type=float, default=10.0, help="order of the SS analysis")
    args = parser.parse_args()

    votes = make_votes(args.queries)
    bench_gnmax(votes[:1000])  # warm-up (imports, caches)
    seconds, eps, order = bench_gnmax(votes)
    print(f"GNMax(σ={SIGMA2:g}) data-dependent accounting of {args.queries} queries over "
          f"{rdp.DEFAULT_ORDERS.size} orders: {seconds:.2f} s  (ε={eps:.1f} at λ={order:g}, δ={DELTA:g})")
    sub = min(args.queries, 100_000)
    per_query = bench_per_query(votes[:sub])
    print(f"  per-query (N, L) array path, {sub} queries: {per_query:.2f} s "
          f"({sub / per_query:,.0f} queries/s)")

    rows_seconds, loop_seconds = bench_prefix_epsilon(votes[:args.ss_queries])
    print(f"ε after each of {args.ss_queries} queries (audit/report): vectorised {rows_seconds:.3f} s, "
          f"one conversion per prefix ≈ {loop_seconds:.1f} s (from 200 prefixes); "
          f"loop/vectorised = {loop_seconds / rows_seconds:.0f}")

    ss_votes = make_votes(args.ss_queries, seed=1)
    ss.local_sensitivity_gnmax(ss_votes[:10], SIGMA2, args.order)  # warm-up (q0 cache)
    ss_seconds, result = bench_smooth_sensitivity(ss_votes, args.order)
    print(f"Smooth sensitivity of {args.ss_queries} answered Confident-GNMax queries at "
          f"λ={args.order:g} (LS of both steps, totals, GNSS release): {ss_seconds:.2f} s  "
          f"(ε={result.epsilon:.2f}, SS={result.smooth_sensitivity:.4g}, "
          f"noise_std={result.noise_std:.3g}, β={result.beta:.4f})")
    for teachers in (250, 100_000):
        g_seconds, g_eps = bench_guarantee(teachers)
        print(f"Worst-case guarantee of 640 Confident-GNMax queries, {teachers} teachers (every top count "
              f"0..K, 297 orders, RDP and PLD): {g_seconds:.3f} s (ε={g_eps:.3f})")
    queries_per_s = args.queries / seconds
    ss_queries_per_s = args.ss_queries / ss_seconds
    assert math.isfinite(queries_per_s) and math.isfinite(ss_queries_per_s)
    print(f"queries_per_s={queries_per_s:.0f} ss_queries_per_s={ss_queries_per_s:.0f}")


if __name__ == "__main__":
    main()
