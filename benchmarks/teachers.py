"""Batched teacher ensemble vs. one CNN and vs. a per-teacher loop, measured in one run.

Synthetic MNIST-shaped data (K teachers x n images each, 28x28 grey, 10 classes), so the figures
do not depend on a dataset. Prints, for the same images and epochs:
  (a) ensemble training time / one CNN of the same architecture trained on all K*n images
      (same number of image passes, same batch size, so the same arithmetic);
  (b) a naive sequential per-teacher loop / the ensemble (the loop is timed on a subset of
      teachers and extrapolated linearly to K, which the output says);
  (c) the ensemble's training FLOP/s / a large fp32 matmul's FLOP/s measured in this run.
Last line: ensemble/single=<x> sequential/ensemble=<y> peak_fraction=<z>

    python benchmarks/teachers.py [--teachers 250] [--per-teacher 240] [--epochs 1] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import torch.nn.functional as F

from pate import teachers as E
from pate.nets.models import ConvStep, build_model, layer_plan


def training_flops_per_image(arch: str, channels: int, classes: int, size: int) -> float:
    """Multiply-adds x 2 of forward + backward; the first layer has no input gradient."""
    total = 0.0
    for i, s in enumerate(layer_plan(arch, channels, classes, size)):
        fwd = (2 * s.in_channels * s.out_channels * s.kernel ** 2 * s.size ** 2 if isinstance(s, ConvStep)
               else 2 * s.in_features * s.out_features)
        total += fwd * (2 if i == 0 else 3)
    return total


def matmul_flops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def train_plain(model, images, labels, batches, lr, momentum):
    """The ordinary loop: one network, SGD with momentum, given index batches."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    for index in batches:
        loss = F.cross_entropy(model(images[index]), labels[index])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teachers", type=int, default=250)
    p.add_argument("--per-teacher", type=int, default=240)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--group-size", type=int, default=8, help="teachers per batched group (CPU cache)")
    p.add_argument("--sequential-teachers", type=int, default=10, help="teachers timed in the naive loop")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--arch", default="cnn-small")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    k, n, epochs, bs = args.teachers, args.per_teacher, args.epochs, args.batch_size
    g = torch.Generator().manual_seed(0)
    images = torch.randn(k * n, 1, 28, 28, generator=g)
    labels = torch.randint(0, 10, (k * n,), generator=g)
    teacher_of = torch.arange(k * n) % k
    flops = training_flops_per_image(args.arch, 1, 10, 28) * k * n * epochs
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"data: synthetic 28x28x1, {k} teachers x {n} images, {epochs} epoch(s), batch {bs}, {args.arch}, "
          f"{flops / 1e12:.3f} TFLOP of training")

    peak = matmul_flops()
    t_ens = _timed(lambda: E.train_ensemble(images, labels, teacher_of, k, arch=args.arch, num_classes=10,
                                            epochs=epochs, batch_size=bs, lr=0.05, momentum=0.9,
                                            group_size=args.group_size))
    print(f"ensemble (group size {args.group_size}): {t_ens:.2f} s, {t_ens / epochs:.2f} s/epoch, "
          f"{k * n * epochs / t_ens:,.0f} img/s, {flops / t_ens / 1e9:.1f} GFLOP/s")

    single = build_model(args.arch, 1, 10, 28)
    order = torch.cat([torch.randperm(k * n, generator=g) for _ in range(epochs)])
    t_single = _timed(lambda: train_plain(single, images, labels, order.split(bs), 0.05, 0.9))
    print(f"one CNN on all {k * n} images, batch {bs}: {t_single:.2f} s")
    tuned = build_model(args.arch, 1, 10, 28).to(memory_format=torch.channels_last)
    images_cl = images.contiguous(memory_format=torch.channels_last)
    t_tuned = _timed(lambda: train_plain(tuned, images_cl, labels, order.split(bs), 0.05, 0.9))
    print(f"  same, channels_last (not used in the ratio): {t_tuned:.2f} s, ensemble/that={t_ens / t_tuned:.3f}")

    m = min(args.sequential_teachers, k)
    shards = E.shards_of(teacher_of, k)

    def sequential():
        for t in range(m):
            model = build_model(args.arch, 1, 10, 28)
            shard = torch.from_numpy(shards[t])
            batches = [b for _ in range(epochs) for b in shard[torch.randperm(len(shard), generator=g)].split(bs)]
            train_plain(model, images, labels, batches, 0.05, 0.9)

    t_seq = _timed(sequential) * k / m
    print(f"sequential per-teacher loop: {t_seq:.2f} s (timed on {m} of {k} teachers, extrapolated linearly)")
    peak = max(peak, matmul_flops())
    print(f"fp32 matmul 2048x2048: {peak / 1e9:.1f} GFLOP/s (best of before/after)")
    print(f"ensemble/single={t_ens / t_single:.3f} sequential/ensemble={t_seq / t_ens:.3f} "
          f"peak_fraction={flops / t_ens / peak:.3f}")


if __name__ == "__main__":
    main()
