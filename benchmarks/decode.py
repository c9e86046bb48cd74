"""Decode once: 70 000 PNG images of 28x28 as image folders, decoded and cached, then reloaded.

    python benchmarks/decode.py [--images 70000] [--workers N]

Goals (issue 16, on the 2-core machine): the first load (list, hash, decode in parallel, cache)
<= 60 s; a reload of the unchanged folders (stat-checked index, cached arrays) <= 2 s. The images
are Fashion-MNIST's when it is prepared under data/ (else class-dependent noise of the same size),
written as 10 class folders of private images plus a public folder, like scripts/folder-demo.sh.
Everything is written under a temporary folder and removed afterwards.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pate import data as data_mod
from pate.config import DataConfig
from pate.data import builtin


def source_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        found = builtin.load("fashion-mnist", data_mod.DEFAULT_ROOT, auto_prepare=False)
        x = np.concatenate([found.private_x, found.public_x])[:, 0]
        y = np.concatenate([found.private_y, found.public_y])
        print("images: Fashion-MNIST", flush=True)
    except data_mod.DataError:
        rng = np.random.default_rng(0)
        y = rng.integers(0, 10, n)
        x = (rng.random((n, 28, 28)) * 64 + y[:, None, None] * 19).astype(np.uint8)
        print("images: synthetic (Fashion-MNIST is not prepared)")
    reps = -(-n // len(y))
    return np.tile(x, (reps, 1, 1))[:n], np.tile(y, reps)[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=70_000)
    args = parser.parse_args()
    x, y = source_images(args.images)
    private = int(len(y) * 6 / 7)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.monotonic()
        for c in range(10):
            (root / "private" / f"class-{c}").mkdir(parents=True)
        (root / "public").mkdir()
        for i in range(len(y)):
            folder = root / "private" / f"class-{y[i]}" if i < private else root / "public"
            Image.fromarray(x[i]).save(folder / f"{i:06d}.png")
        print(f"wrote {len(y)} PNG files in {time.monotonic() - t0:.1f} s (not part of the figure)")
        config = DataConfig(source="folders", private_dir=str(root / "private"), public_dir=str(root / "public"),
                            classes=tuple(f"class-{c}" for c in range(10)))
        cache_root = root / "cache-root"
        t0 = time.monotonic()
        dataset = data_mod.load(config, cache_root, quiet=True)
        cold = time.monotonic() - t0
        t0 = time.monotonic()
        again = data_mod.load(config, cache_root, quiet=True)
        warm = time.monotonic() - t0
        assert np.array_equal(dataset.private_x, again.private_x) and np.array_equal(dataset.public_x, again.public_x)
        by_folder = np.lexsort((np.arange(private), y[:private]))  # class folders, then file names, sorted
        assert np.array_equal(dataset.private_x[:, 0], x[:private][by_folder]), "decoded pixels differ"
        print(f"first load (list, hash, decode on {os.cpu_count()} cores, cache) of {len(y)} images: {cold:.1f} s "
              f"(goal <= 60 s)")
        print(f"reload of the unchanged folders: {warm:.2f} s (goal <= 2 s)")
        print(f"decode_cold_s={cold:.2f} reload_s={warm:.2f} images_per_s={len(y) / cold:.0f}")


if __name__ == "__main__":
    main()
