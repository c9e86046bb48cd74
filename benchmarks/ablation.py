"""How much each lever gives, over split seeds: soft labels, k-center queries, label propagation, the
student's architecture, each switched on against the same base, mean ± sd over seeds.

    python benchmarks/ablation.py pipelines/mnist-knn.toml [--seeds 1,2,3] [--out runs/ablation]
                                  [--variants base,soft,k-center,propagation,scatter-cnn]

Per seed (as ``benchmarks/seeds.py`` seeds a pipeline: a new split, new teachers, a new student; the
aggregator's noise the OS's), two runs with ``[aggregator] soft_labels = true``: one asking the
pipeline's random queries, one its k-center queries. Soft labels cost nothing extra, and their
argmax is the hard label a run without them releases, so one aggregation serves both. Students,
each a function of a run's release and public images only:

- ``base``: hard labels, random queries, no propagation, the pipeline's student (cnn-small, FixMatch);
- ``soft``: the same on the noisy vectors (the random run's own student);
- ``k-center``: soft, on the k-center run (its own student);
- ``propagation``: soft, label spreading over the pool first;
- ``scatter-cnn``: soft and propagated, a ScatterNet + CNN student trained supervised (FixMatch's
  augmented batches through the scattering layer are about 3 times cnn-small's time);
- ``cnn-wide``: soft, the wider pixel CNN with FixMatch.

Two scores for each: ``pool``, the accuracy on the pool images the run left unlabelled, against
their public labels (the public split settings are chosen on), and ``test``, the held-out images
(reported, never used to choose). Each result is kept in ``<out>/<pipeline>-seed<s>-<variant>.json``,
so an interrupted benchmark resumes; ``<out>/<pipeline>-ablation.json`` holds the summary.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a file, `benchmarks` is this folder, not opacus's package

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.seeds import with_seed  # noqa: E402
from pate import config as config_mod  # noqa: E402
from pate import data
from pate.export import student as exported  # noqa: E402
from pate.student import training as student  # noqa: E402
from pate.run.directory import RunDir  # noqa: E402
from pate.stages import train_student as stage  # noqa: E402
from pate.run.artifacts import Context, mechanism  # noqa: E402
# name: (run, soft targets, propagation, arch or None for the pipeline's, method or None); None run:
# the run's own student, not retrained.
VARIANTS = {
    "base": ("random", False, False, None, None),
    "soft": ("random", True, False, "own", None),
    "k-center": ("k-center", True, False, "own", None),
    "propagation": ("random", True, True, None, None),
    "scatter-cnn": ("random", True, True, "scatter-cnn", "supervised"),
    "cnn-wide": ("random", True, False, "cnn-wide", "fixmatch"),
}
DEFAULT_VARIANTS = "base,soft,k-center,propagation,scatter-cnn"


def with_aggregator(text: str, **settings) -> str:
    """The pipeline TOML with ``settings`` set in its [aggregator] table."""
    lines = "".join(f"\n{key} = {json.dumps(value)}" for key, value in settings.items())
    for key in settings:
        text = re.sub(rf"(?m)^{key}\s*=.*\n", "", text)
    header = re.search(r"(?m)^\[aggregator\]\s*$", text)
    return text[:header.end()] + lines + text[header.end():]


def pipeline_run(pipeline: Path, seed: int, selection: str, out: Path) -> Path:
    name = f"{pipeline.stem}-{selection}-seed{seed}"
    copy = out / f"{name}.toml"
    text = with_aggregator(pipeline.read_text(), soft_labels=True, query_selection=selection)
    copy.write_text(re.sub(r'(?m)^name\s*=\s*"([^"]*)"', f'name = "{name}"', with_seed(text, seed), count=1))
    run_dir = out / name
    if not (run_dir / "metrics.json").exists():
        env = {**os.environ, "PATE_SPEND_DIR": str(out / "spend"), "PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, "-m", "pate", "run", str(copy), "--run-dir", str(run_dir), "-q"],
                       check=True, env=env)
    return run_dir


def score(predict, ds, parts, released) -> dict:
    pool = np.setdiff1d(parts["student_pool_index"], released["query_index"])
    test = parts["test_index"]
    right = lambda idx: float((predict(idx) == ds.public_y[idx]).mean())  # noqa: E731
    return {"pool": right(pool), "test": right(test)}


def variant_result(run_dir: Path, variant: str, data_root: Path) -> dict:
    _, soft, spread, arch, method = VARIANTS[variant]
    cfg = config_mod.load(run_dir / "config.toml")
    parts, released = np.load(run_dir / "partition.npz"), np.load(run_dir / "labels.npz")
    ds = data.load(cfg.data, data_root)
    x = lambda idx: data.to_float(ds.public_x[idx], ds.mean, ds.std)  # noqa: E731
    t0 = time.monotonic()
    if arch == "own":
        model = exported.load_student(run_dir)
        return {**score(lambda idx: model.predict(ds.public_x[idx])[0], ds, parts, released),
                "seconds": json.loads((run_dir / "manifest.json").read_text())["stages"]["train-student"]["seconds"]}
    s = cfg.student
    labeled = released["query_index"]
    targets = torch.from_numpy(released["label"].astype(np.int64))
    if soft:
        targets = student.soft_targets(released["soft"], released["label"],
                                       s.soft_temperature or mechanism(cfg).answer_noise_std)
    trained = labeled
    if spread:
        ctx = Context(run=RunDir(run_dir, cfg), data_root=data_root, quiet=True)  # reads only
        spread_index, rows = stage.propagated(ctx, ds, parts["student_pool_index"], labeled, targets)
        trained = np.concatenate([labeled, spread_index])
        targets = torch.cat([stage._rows(targets, ds.num_classes), rows])
    method = method or s.method
    unlabeled = np.setdiff1d(parts["student_pool_index"], labeled)
    model, _ = student.train_student(
        x(trained), targets, x(unlabeled) if method != "supervised" else None, arch=arch or s.arch,
        num_classes=ds.num_classes, method=method, steps=s.steps, batch_size=s.batch_size,
        unlabeled_ratio=s.unlabeled_ratio, lr=s.lr, weight_decay=s.weight_decay, threshold=s.threshold, seed=s.seed)
    predict = lambda idx: student.predict(model, x(idx)).numpy()  # noqa: E731
    return {**score(predict, ds, parts, released), "seconds": time.monotonic() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", type=Path)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "ablation")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--data-root", type=Path, default=ROOT / "data")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    table: dict[str, list] = {v: [] for v in variants}
    runs: dict[str, list] = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        for variant in variants:
            kept = args.out / f"{args.pipeline.stem}-seed{seed}-{variant}.json"
            if not kept.exists():
                run_dir = pipeline_run(args.pipeline, seed, VARIANTS[variant][0], args.out)
                privacy = json.loads((run_dir / "privacy.json").read_text())["public"]
                result = {**variant_result(run_dir, variant, args.data_root), "seed": seed,
                          "epsilon": privacy["guarantee"]["epsilon"], "answered": privacy["queries_answered"]}
                kept.write_text(json.dumps(result))
            result = json.loads(kept.read_text())
            table[variant].append(result)
            runs.setdefault(VARIANTS[variant][0], []).append(result["answered"])
            print(f"seed {seed} {variant}: pool {result['pool'] * 100:.2f}% test {result['test'] * 100:.2f}% "
                  f"(epsilon {result['epsilon']:.2f}, {result['answered']} answered, {result['seconds']:.0f} s)",
                  flush=True)

    def stat(values):
        return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}

    summary = {v: {k: stat([r[k] for r in rows]) for k in ("pool", "test", "epsilon", "answered", "seconds")}
               for v, rows in table.items()}
    (args.out / f"{args.pipeline.stem}-ablation.json").write_text(json.dumps({"seeds": args.seeds, "rows": table,
                                                                              "summary": summary}, indent=1))
    for v, s in summary.items():
        print(f"{args.pipeline.stem} {v}: pool {s['pool']['mean'] * 100:.2f} ± {s['pool']['sd'] * 100:.2f}%, "
              f"test {s['test']['mean'] * 100:.2f} ± {s['test']['sd'] * 100:.2f}%, epsilon {s['epsilon']['mean']:.2f}, "
              f"{s['answered']['mean']:.0f} answered, student {s['seconds']['mean']:.0f} s")


if __name__ == "__main__":
    main()
