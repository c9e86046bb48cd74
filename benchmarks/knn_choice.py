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

Prints one line per setting and the best one; no private record is read.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from pate import config as config_mod, data as data_mod, knn
from pate.partition import make_partition
from pate.stages.context import partition_sizes
from pate.teachers import features, pretrained


def pool_of(config) -> tuple[np.ndarray, np.ndarray, object]:
    """(pool images, pool labels, dataset) of the pipeline's split."""
    dataset = data_mod.load(config.data, data_mod.DEFAULT_ROOT)
    config.check_data(dataset.spec)
    split = make_partition(seed=config.data.split_seed, **partition_sizes(config, dataset.spec))
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


def loo_accuracy(space: torch.Tensor, labels: torch.Tensor, ks: list[int], num_classes: int) -> dict[int, float]:
    """Leave-one-out plurality accuracy of the k nearest other points, for every k at once."""
    kmax = max(ks)
    d2 = torch.cdist(space, space).fill_diagonal_(float("inf"))
    nearest = d2.topk(kmax, largest=False).indices  # sorted nearest first
    out = {}
    for k in ks:
        votes = torch.nn.functional.one_hot(labels[nearest[:, :k]], num_classes).sum(1)
        out[k] = float((votes.argmax(1) == labels).float().mean())
    return out


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


if __name__ == "__main__":
    main()
