"""Choosing reverse-kNN's k and feature space on the public pool alone (never the private set,
never the held-out test split).

    python benchmarks/rknn_choice.py pipelines/mnist-rknn.toml --epsilon 0.5 [--ks 10,20,40,80] [--dims 0,64]

The pipeline's student pool is split in two at random: one half stands in for the private records
(its labels, public information that a labelled split of the public pool would carry, are used only
here), the other half are the anchors. Each stand-in record votes for its k nearest anchors in the
pipeline's ``[teachers] features`` space (projected on ``dim`` whitened principal axes of the pool,
or all coordinates for 0); the counts are scaled to the private set's size (an anchor gets about
k·N/Q votes there, k·|half|/|half| = k here), and discrete-Gaussian-like noise of the σ that `pate
plan --target-epsilon` gives for k is added (Monte Carlo). Printed per setting: the share of
anchors labelled right, and of the ``[student] keep_widest`` fraction with the widest noisy margin.
The figures rank settings; they are not what the pipeline will reach with 60 000 private records.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: `benchmarks` is this folder

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.knn_choice import embed, pool_of  # noqa: E402
from pate import config as config_mod  # noqa: E402
from pate.features import knn  # noqa: E402
from pate.views import planning  # noqa: E402


def widest_accuracy(counts: np.ndarray, truth: np.ndarray, sigma: float, fraction: float, draws: int,
                    rng: np.random.Generator) -> tuple[float, float]:
    """(all anchors right, the widest ``fraction`` right), averaged over noise draws (rounded Gaussian)."""
    every, kept = [], []
    for _ in range(draws):
        noisy = counts + np.round(sigma * rng.standard_normal(counts.shape))
        label = noisy.argmax(1)
        top2 = np.sort(noisy, 1)[:, -2:]
        order = np.argsort(-(top2[:, 1] - top2[:, 0]), kind="stable")[:max(1, int(round(fraction * len(noisy))))]
        every.append((label == truth).mean())
        kept.append((label[order] == truth[order]).mean())
    return float(np.mean(every)), float(np.mean(kept))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", type=Path)
    parser.add_argument("--epsilon", type=float, required=True, help="the guarantee the noise is sized for")
    parser.add_argument("--ks", default="10,20,40,80")
    parser.add_argument("--dims", default="0,64")
    parser.add_argument("--draws", type=int, default=10)
    args = parser.parse_args()
    config = config_mod.load(args.pipeline)
    t0 = time.perf_counter()
    images, labels, dataset = pool_of(config)
    feats = embed(config, images)
    n, pool, _ = config.data.sizes(dataset.spec)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))
    voters, anchors = order[:len(order) // 2], order[len(order) // 2:]
    scale = (n / config.aggregator.max_queries) / (len(voters) / len(anchors))
    fraction = config.student.keep_widest
    print(f"{config.name}: {len(voters)} stand-in records vote for {len(anchors)} anchors in {config.teachers.features} "
          f"features ({feats.shape[1]}-d, embedded in {time.perf_counter() - t0:.0f} s); counts x {scale:.2f} "
          f"(N = {n}, Q = {config.aggregator.max_queries}); epsilon {args.epsilon:g}; keep_widest {fraction:g}")
    results = []
    for dim in (int(d) for d in args.dims.split(",")):
        space = knn.project(feats, knn.fit_projection(feats, dim))
        for k in (int(k) for k in args.ks.split(",")):
            trial = dataclasses.replace(config, aggregator=dataclasses.replace(config.aggregator, knn_k=k))
            sigma = planning.reverse_plan(trial, args.epsilon)["proposed"]["sigma2"]
            nearest = knn.nearest_anchors(space[torch.from_numpy(voters)], space[torch.from_numpy(anchors)], k)
            counts = knn.anchor_votes(nearest.numpy(), labels[voters], len(anchors), dataset.num_classes) * scale
            every, kept = widest_accuracy(counts, labels[anchors], sigma, fraction, args.draws, rng)
            noiseless = float((counts.argmax(1) == labels[anchors]).mean())
            results.append((kept, every, dim, k))
            print(f"  dim {dim or feats.shape[1]:>5}  k={k:<3} sigma2 {sigma:>7.2f}  noiseless {noiseless:.2%}  "
                  f"all anchors {every:.2%}  widest {fraction:.0%}: {kept:.2%}", flush=True)
    best = max(results)
    print(f"best for the widest {fraction:.0%}: dim {best[2]}, k = {best[3]} ({best[0]:.2%}; all anchors {best[1]:.2%})")


if __name__ == "__main__":
    main()
