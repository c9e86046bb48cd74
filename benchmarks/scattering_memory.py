"""Scattering throughput, and the peak memory of the whole Fashion-MNIST scattering pipeline.

    python benchmarks/scattering_memory.py [--images 10000] [--run-dir DIR] [--data-root data]
                                           [--skip-pipeline]

Goal (issue 17, on the 2-core machine): `pate run pipelines/fashion-mnist-scattering.toml` peaks at
<= 2 GB resident (60 000 private + 10 000 public 28x28 images, 250 logistic heads on 3 969
standardised coefficients). The pipeline runs as a child process in a fresh run directory (a
temporary one unless --run-dir names a new folder) and its peak RSS is the child's ru_maxrss. The
throughput figure scatters --images Fashion-MNIST images (random ones if it is not prepared) in
batches of 512, as `features.embed` does. Set PATE_SPEND_DIR to keep the spend log out of yours.
The last line sums up: `images_per_s=... peak_rss_gb=...`.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pate import data as data_mod
from pate.data import builtin
from pate.nets import wavelets as scattering

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = ROOT / "pipelines" / "fashion-mnist-scattering.toml"


def images(n: int, data_root: str) -> torch.Tensor:
    try:
        found = builtin.load("fashion-mnist", data_root, auto_prepare=False)
        x = found.public_x[:n]
        print("images: Fashion-MNIST", flush=True)
    except data_mod.DataError:
        x = np.random.default_rng(0).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)
        print("images: random (Fashion-MNIST is not prepared)", flush=True)
    reps = -(-n // len(x))
    return torch.from_numpy(np.tile(x, (reps, 1, 1, 1))[:n]).float().div_(255)


def throughput(x: torch.Tensor, batch: int = 512) -> float:
    scattering.scatter(x[:8])  # builds the filters once
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        scattering.scatter(x[i:i + batch])
    return len(x) / (time.perf_counter() - t0)


def pipeline(run_dir: Path, data_root: str) -> tuple[float, float, dict]:
    """(peak RSS in GB, wall seconds, figures) of one full run in ``run_dir``."""
    cmd = [sys.executable, "-m", "pate", "run", str(PIPELINE), "--run-dir", str(run_dir), "--data-root", data_root,
           "-q"]
    print("running:", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.monotonic() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9  # Linux: KiB
    return peak_gb, wall, figures(run_dir)


def figures(run_dir: Path) -> dict:
    teachers = json.loads((run_dir / "teachers_eval.json").read_text())
    privacy = json.loads((run_dir / "privacy.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"teacher_mean": teachers["teacher_accuracy_mean"], "teacher_min": teachers["teacher_accuracy_min"],
            "plurality": teachers["ensemble_accuracy"], "answered": privacy["public"]["queries_answered"],
            "asked": privacy["public"]["queries_asked"], "student": metrics["student_accuracy"],
            "label_accuracy": metrics.get("label_accuracy")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--run-dir", type=Path, help="a new folder for the run (default: a temporary one)")
    parser.add_argument("--data-root", default=str(data_mod.DEFAULT_ROOT))
    parser.add_argument("--skip-pipeline", action="store_true")
    args = parser.parse_args()
    rate = throughput(images(args.images, args.data_root))
    print(f"scattering (J=2, L=8, 28x28): {rate:.0f} images/s on {torch.get_num_threads()} threads", flush=True)
    peak = float("nan")
    if not args.skip_pipeline:
        if args.run_dir is not None and args.run_dir.exists():
            parser.error(f"{args.run_dir} exists: the peak is only measured on a fresh run")
        with tempfile.TemporaryDirectory() as tmp:
            peak, wall, found = pipeline(args.run_dir or Path(tmp) / "run", args.data_root)
        print(f"pipeline: peak RSS {peak:.2f} GB, {wall / 60:.1f} min; {json.dumps(found)}")
    print(f"images_per_s={rate:.0f} peak_rss_gb={peak:.2f}")


if __name__ == "__main__":
    main()
