"""Train a student on the labels an existing run released, with other student settings, and
print its held-out accuracy: student tuning costs no privacy, so it can be tried on a finished
aggregation without touching the run directory (nothing is written there).

    python benchmarks/student_on_run.py runs/mnist --steps 12000 [--method fixmatch]

``--true-labels`` instead trains on the TRUE labels of the whole student pool (the run's released
labels are ignored): the non-private ceiling of a student recipe on this pool, for comparison only.

``--propagation`` spreads the released labels over the pool first, as ``[student] propagation =
"label-spreading"`` does (``pate.stages.train_student.propagated``, the same code), with the run's
``propagation_k/alpha/confidence`` or the ``--propagation-*`` given; it prints the accuracy of the
propagated labels on the unlabelled pool images against the pool's true labels (public data's
labels, read for evaluation only). ``--propagation-only`` stops there (no student).
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from pate import config as config_mod
from pate import data
from pate.student import training as student
from pate.run.directory import RunDir
from pate.stages import train_student as stage
from pate.run.artifacts import Context


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--steps", type=int, default=4500)
    parser.add_argument("--method", default="fixmatch")
    parser.add_argument("--arch", default="cnn-small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--true-labels", action="store_true",
                        help="ceiling: every pool image with its true label (not private; comparison only)")
    parser.add_argument("--propagation", action="store_true", help="label spreading over the pool first")
    parser.add_argument("--propagation-only", action="store_true", help="the propagated labels' accuracy, no student")
    parser.add_argument("--propagation-k", type=int, default=None)
    parser.add_argument("--propagation-alpha", type=float, default=None)
    parser.add_argument("--propagation-confidence", type=float, default=None)
    args = parser.parse_args()
    cfg = config_mod.load(f"{args.run_dir}/config.toml")
    given = {k: v for k, v in (("propagation_k", args.propagation_k), ("propagation_alpha", args.propagation_alpha),
                               ("propagation_confidence", args.propagation_confidence)) if v is not None}
    cfg = dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, propagation="label-spreading", **given))
    parts = np.load(f"{args.run_dir}/partition.npz")
    released = np.load(f"{args.run_dir}/labels.npz")
    ds = data.load(cfg.data, args.data_root)
    labeled, labels = released["query_index"], released["label"]
    if args.true_labels:
        labeled = parts["student_pool_index"]
        labels = ds.public_y[labeled]
    unlabeled = np.setdiff1d(parts["student_pool_index"], labeled)
    test = parts["test_index"]
    x = lambda idx: data.to_float(ds.public_x[idx], ds.mean, ds.std)  # noqa: E731
    label_acc = float((labels == ds.public_y[labeled]).mean())
    trained, targets, about = labeled, torch.from_numpy(labels), ""
    t0 = time.time()
    if args.propagation or args.propagation_only:
        settings = cfg.student
        every = dataclasses.replace(cfg, student=dataclasses.replace(settings, propagation_confidence=0.0))
        ctx = Context(run=RunDir(args.run_dir, every), data_root=Path(args.data_root), quiet=True)  # reads only
        spread_index, spread = stage.propagated(ctx, ds, parts["student_pool_index"], labeled, targets)
        right = spread.argmax(1).numpy() == ds.public_y[spread_index]
        keep = (spread.max(1).values >= settings.propagation_confidence).numpy()  # as the stage keeps them
        about = (f"k={settings.propagation_k} alpha={settings.propagation_alpha} "
                 f"propagated_accuracy={right.sum() / len(unlabeled):.4f} "  # unreached images count as wrong
                 f"confidence={settings.propagation_confidence} kept={keep.sum()}/{len(unlabeled)} "
                 f"kept_accuracy={right[keep].mean() if keep.any() else float('nan'):.4f} "
                 f"propagation_seconds={time.time() - t0:.1f} ")
        if args.propagation_only:
            print(f"labels={len(labeled)} label_accuracy={label_acc:.4f} {about}".strip())
            return
        trained = np.concatenate([labeled, spread_index[keep]])
        targets = torch.cat([torch.nn.functional.one_hot(targets, ds.num_classes).float(), spread[keep]])
    model, _ = student.train_student(x(trained), targets, x(unlabeled) if len(unlabeled) else None,
                                     arch=args.arch, method=args.method, steps=args.steps, seed=args.seed)
    acc = student.accuracy(model, x(test), torch.from_numpy(ds.public_y[test]))
    print(f"labels={len(labeled)} label_accuracy={label_acc:.4f} {about}method={args.method} steps={args.steps} "
          f"seconds={time.time() - t0:.0f} student_accuracy={acc:.4f}")


if __name__ == "__main__":
    main()
