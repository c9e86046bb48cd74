"""What exact integer noise costs: draws per second of pate's discrete Gaussian and discrete Laplace
(OS-secure and seeded), beside the float64 normal they replace, in one process.

    python benchmarks/discrete_noise.py [--draws 20000]

Prints µs per draw and the ratio to the float normal; one aggregation of Q queries over m classes
draws about Q·(m + 1) of them (Confident-GNMax: the threshold and the answer vector).
"""
from __future__ import annotations

import argparse
import time

from pate.privacy.noise import noise_source


def per_draw(fn, draws: int) -> float:
    start = time.perf_counter()
    fn(draws)
    return (time.perf_counter() - start) / draws * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=20_000)
    n = parser.parse_args().draws
    float_us = per_draw(lambda k: noise_source().normal(k, scale=40.0), n)
    print(f"float64 normal (secure), the earlier noise: {float_us:.3f} µs/draw")
    rows = [("discrete Gaussian σ 1", lambda src, k: src.discrete_gaussian(k, 1.0)),
            ("discrete Gaussian σ 40", lambda src, k: src.discrete_gaussian(k, 40.0)),
            ("discrete Gaussian σ 150", lambda src, k: src.discrete_gaussian(k, 150.0)),
            ("discrete Laplace γ 0.05", lambda src, k: src.discrete_laplace(k, 0.05))]
    for name, draw in rows:
        secure = per_draw(lambda k: draw(noise_source(), k), n)
        seeded = per_draw(lambda k: draw(noise_source(1), k), n)
        print(f"{name:>24}: secure {secure:6.1f} µs/draw ({secure / float_us:5.0f}× float), "
              f"seeded {seeded:6.1f} µs/draw; 2000 queries × 11 draws: {secure * 22_000 / 1e6:.2f} s")


if __name__ == "__main__":
    main()
