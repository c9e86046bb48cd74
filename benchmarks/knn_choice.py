"""Choosing Private-kNN's feature space and k on the public pool alone (never the private set,
never the held-out test split).

    python benchmarks/knn_choice.py pipelines/mnist-knn.toml [--ks 5,10,20,40] [--dims 0,32,64,128]

The pipeline's split (``[data] split_seed`` and sizes) gives the student pool; the pool's own
labels, public information that a validation split of the public pool would carry, are used only
here, to score settings: each pool image is classified by the plurality of its k nearest *other*
pool images (leave-one-out), in the pipeline's ``[teachers] features`` space (scattering or
pretrained; SimCLR needs training and is left out), projected on ``dim`` principal axes of the pool,
whitened or not. The pool stands in for the private set at a smaller size (9 000 vs 60 000), so the
figure ranks settings; it is not the accuracy the pipeline will reach.

Then, with the mechanism's noise: for each k, the σ and threshold that `pate plan`'s rule gives and
the pool's histograms scaled to the private set's size give the expected share of queries answered
and of answered labels right (Monte Carlo). Prints one line per setting; no private record is read.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from pate import config as config_mod, data as data_mod
from pate.features import knn
from pate.data.partition import split_public
from pate.run.artifacts import partition_sizes
from pate.features import extractors as features, pretrained
from pate.views import planning


def pool_of(config) -> tuple[np.ndarray, np.ndarray, object]:
    """(pool images, pool labels, dataset) of the pipeline's split."""
    dataset = data_mod.load(config.data, data_mod.DEFAULT_ROOT)
    config.check_data(dataset.spec)
    sizes = partition_sizes(config, dataset.spec)
    split = split_public(seed=config.data.split_seed, **{k: sizes[k] for k in ("num_public", "student_pool", "test_size",
                                                                             "num_queries", "num_pool")})
    pool = split["student_pool_index"]
    labels = dataset.public_y[pool]
    if (labels < 0).any():
        raise SystemExit("the public pool has no labels to score settings with")
    return dataset.public_x[pool], labels, dataset


def embed(config, images: np.ndarray) -> torch.Tensor:
    tcfg = config.teachers
    x = torch.from_numpy(images).float().div_(255)
    if tcfg.features == "scattering":
        return features.embed(features.scattering_extractor(x), x)  # standardised on the pool, as the stage does
    if tcfg.features == "pretrained":
        backbone = pretrained.load(tcfg.backbone, tcfg.weights, tcfg.backbone_size, "cpu")
        f = pretrained.embed(backbone, images)
        return (f - f.mean(0)) / f.std(0).clamp_min(1e-6)
    raise SystemExit(f"features = {tcfg.features!r}: only scattering and pretrained spaces are scored here")


def loo_votes(space: torch.Tensor, labels: torch.Tensor, ks: list[int], num_classes: int) -> dict[int, torch.Tensor]:
    """Each point's vote histogram (n, classes) from its k nearest *other* points, for every k."""
    d2 = torch.cdist(space, space).fill_diagonal_(float("inf"))
    nearest = d2.topk(max(ks), largest=False).indices  # sorted nearest first
    return {k: torch.nn.functional.one_hot(labels[nearest[:, :k]], num_classes).sum(1).float() for k in ks}


def loo_accuracy(space: torch.Tensor, labels: torch.Tensor, ks: list[int], num_classes: int) -> dict[int, float]:
    """Leave-one-out plurality accuracy of the k nearest other points, for every k at once."""
    return {k: float((v.argmax(1) == labels).float().mean())
            for k, v in loo_votes(space, labels, ks, num_classes).items()}


def noisy_labels(votes: torch.Tensor, labels: torch.Tensor, scale: float, sigma1: float, sigma2: float,
                 threshold: float, draws: int = 20, seed: int = 0) -> tuple[float, float]:
    """(fraction answered, accuracy of the answered) of the Confident-GNMax step on pool
    histograms scaled by ``scale`` = N/P (a private neighbourhood has about N/P times the pool's
    voters, in about the same proportions), by Monte Carlo over ``draws`` noise draws per point.
    Retirement is left out: the rule gives every record headroom for three times its average load."""
    g = torch.Generator().manual_seed(seed)
    counts = (votes * scale).unsqueeze(0).expand(draws, -1, -1)
    answered = counts.max(2).values + sigma1 * torch.randn(counts.shape[:2], generator=g) >= threshold
    right = (counts + sigma2 * torch.randn(counts.shape, generator=g)).argmax(2) == labels
    n = int(answered.sum())
    return n / answered.numel(), float((right & answered).sum()) / max(n, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", type=Path)
    parser.add_argument("--ks", default="5,10,20,40")
    parser.add_argument("--dims", default="0,32,64,128", help="principal axes kept (0: all, centred only)")
    args = parser.parse_args()
    config = config_mod.load(args.pipeline)
    t0 = time.perf_counter()
    images, labels, dataset = pool_of(config)
    feats = embed(config, images)
    y = torch.from_numpy(labels)
    ks = [int(k) for k in args.ks.split(",")]
    print(f"{config.name}: {len(images)} pool images, {config.teachers.features} features ({feats.shape[1]}-d), "
          f"embedded in {time.perf_counter() - t0:.0f} s")
    results = []
    for dim in (int(d) for d in args.dims.split(",")):
        for whiten in ((False,) if dim == 0 else (False, True)):
            projection = knn.fit_projection(feats, dim)
            if not whiten and projection["components"] is not None:
                # the same axes, unscaled: undo the whitening scale (each row's norm is its 1/sd)
                comp = projection["components"]
                projection = {**projection, "components": comp / comp.norm(dim=1, keepdim=True)}
            acc = loo_accuracy(knn.project(feats, projection), y, ks, dataset.num_classes)
            for k, a in acc.items():
                results.append((a, dim, whiten, k))
            print(f"  dim {dim or feats.shape[1]:>5} {'whitened' if whiten else 'raw     '}  "
                  + "  ".join(f"k={k}: {a:.4f}" for k, a in acc.items()), flush=True)
    best = max(results)
    print(f"best: dim {best[1]}, {'whitened' if best[2] else 'raw'}, k = {best[3]}: "
          f"leave-one-out accuracy {best[0]:.4f} on the public pool")
    noisy(config, feats, y, ks, dataset)


def noisy(config, feats: torch.Tensor, y: torch.Tensor, ks: list[int], dataset) -> None:
    """With the mechanism's noise: for each k, the plan's rule gives sigma and the threshold (from
    public sizes and the budget), and the pool's leave-one-out histograms, scaled to the private
    set's size, say how many queries would be answered and how many of those labels would be right.
    More voters (larger k) buy a better signal-to-noise ratio at the price of farther neighbours."""
    agg = config.aggregator
    n, pool, _ = config.data.sizes(dataset.spec)
    projection = knn.fit_projection(feats, agg.knn_dim)
    votes = loo_votes(knn.project(feats, projection), y, ks, dataset.num_classes)
    print(f"with the noise of the plan's rule (record budget epsilon {config.privacy.record_epsilon:g}, "
          f"{agg.max_queries} queries, knn_dim {agg.knn_dim}, counts scaled by N/P = {n / pool:.2f}):")
    scores = {}
    for k in ks:
        trial = dataclasses.replace(config, aggregator=dataclasses.replace(agg, knn_k=k))
        proposed = planning.knn_plan(trial)["proposed"]
        answered, accuracy = noisy_labels(votes[k], y, n / pool, proposed["sigma1"], proposed["sigma2"],
                                          proposed["threshold"])
        scores[k] = answered * (2 * accuracy - 1)
        print(f"  k={k:<3} sigma {proposed['sigma1']:>5}  threshold {proposed['threshold']:>4}  "
              f"answered {answered:.1%}  answered labels right {accuracy:.2%}  score {scores[k]:.3f}", flush=True)
    best = max(scores, key=scores.get)
    print(f"best with noise: k = {best} (score: the share of queries answered right minus answered wrong, "
          "a wrong label costing the student about what a right one gives)")


if __name__ == "__main__":
    main()
