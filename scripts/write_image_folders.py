"""Write a built-in dataset as image folders, as a user's own data would look.

    python scripts/write_image_folders.py fashion-mnist data/fashion-mnist-folders

- ``private/<class>/train-NNNNN.png``: the train split, one folder per class (ImageFolder layout);
- ``public/test-NNNNN.png``: 9 000 test images, unlabelled (the student pool);
- ``test/<class>/test-NNNNN.png``: the other 1 000 test images, labelled, for evaluation only.

The 9 000 / 1 000 split is a fixed random permutation (seed 0). The folder is written beside its
final name and renamed in one step, so an interrupted run leaves no half-written folder; an
existing complete folder is left as it is.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pate.data import DEFAULT_ROOT, builtin

POOL = 9000


def folder_name(name: str) -> str:
    """A class name as a folder name ("T-shirt/top" -> "T-shirt-top")."""
    return name.replace("/", "-").replace(os.sep, "-")


def write(dataset_name: str, out: Path, data_root: Path) -> None:
    if out.is_dir():
        print(f"{out} exists; delete it to write it again")
        return
    t0 = time.monotonic()
    data = builtin.load(dataset_name, data_root)
    classes = [folder_name(c) for c in data.classes]
    order = np.random.default_rng(0).permutation(len(data.public_y))
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for c in classes:
        (staging / "private" / c).mkdir(parents=True)
        (staging / "test" / c).mkdir(parents=True)
    (staging / "public").mkdir()

    def save(array: np.ndarray, path: Path) -> None:
        Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)).save(path)

    for i, (x, y) in enumerate(zip(data.private_x, data.private_y)):
        save(x, staging / "private" / classes[y] / f"train-{i:05d}.png")
    for rank, i in enumerate(order):
        if rank < POOL:
            save(data.public_x[i], staging / "public" / f"test-{i:05d}.png")
        else:
            save(data.public_x[i], staging / "test" / classes[data.public_y[i]] / f"test-{i:05d}.png")
    staging.rename(out)
    print(f"{out}: {len(data.private_y)} private images in {len(classes)} class folders, {POOL} unlabelled public, "
          f"{len(order) - POOL} labelled test ({time.monotonic() - t0:.0f} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["mnist", "fashion-mnist"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_ROOT)
    args = parser.parse_args()
    write(args.dataset, args.out, args.data_root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
