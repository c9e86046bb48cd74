"""Train a student on the labels an existing run released, with other student settings, and
print its held-out accuracy: student tuning costs no privacy, so it can be tried on a finished
aggregation without touching the run directory (nothing is written there).

    python benchmarks/student_on_run.py runs/mnist --steps 12000 [--method fixmatch]

``--true-labels`` instead trains on the TRUE labels of the whole student pool (the run's released
labels are ignored): the non-private ceiling of a student recipe on this pool, for comparison only.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pate import config as config_mod
from pate import data, student


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
    args = parser.parse_args()
    cfg = config_mod.load(f"{args.run_dir}/config.toml")
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
    t0 = time.time()
    model, _ = student.train_student(x(labeled), torch.from_numpy(labels), x(unlabeled) if len(unlabeled) else None,
                                     arch=args.arch, method=args.method, steps=args.steps, seed=args.seed)
    acc = student.accuracy(model, x(test), torch.from_numpy(ds.public_y[test]))
    label_acc = float((labels == ds.public_y[labeled]).mean())
    print(f"labels={len(labeled)} label_accuracy={label_acc:.4f} method={args.method} steps={args.steps} "
          f"seconds={time.time() - t0:.0f} student_accuracy={acc:.4f}")


if __name__ == "__main__":
    main()
