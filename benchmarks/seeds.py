"""A pipeline's results as mean ± sd over split seeds: what README and BENCHMARKS.md tables report.

    python benchmarks/seeds.py pipelines/mnist-knn.toml [--seeds 1,2,3] [--out runs/seeds]

For each seed s, a copy of the pipeline with ``[data] split_seed``, ``[teachers] seed`` and
``[student] seed`` set to s (a new partition, new teachers, a new student) runs end to end with
``pate run`` in ``<out>/<name>-seed<s>``; the aggregator's noise stays the OS's (unseeded), so the
spread covers it too. Each run's spend goes to ``<out>/spend`` (PATE_SPEND_DIR), never to the
user's log. A finished run is read, not rerun, so an interrupted benchmark resumes. The copy lives
in ``<out>``, so its paths (record_budgets, image folders) are made absolute first (``pipeline_text``).

Prints one line per seed and a summary line per figure (with ``[student] teacher_weight`` also the
students alone, without the DP-SGD teacher's logits); writes ``<out>/<name>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEEDED = {"data": "split_seed", "teachers": "seed", "student": "seed"}


def pipeline_text(path: Path) -> str:
    """The pipeline as its canonical TOML, every path in it (data, budgets, weights) made absolute
    from the pipeline's own folder, so a copy written in another folder names the same files."""
    sys.path.insert(0, str(ROOT))
    from pate import config as config_mod
    return config_mod.to_toml(config_mod.load(path))


def with_seed(text: str, seed: int) -> str:
    """The pipeline TOML with the name suffixed and every seed of SEEDED set to ``seed``."""
    text = re.sub(r'(?m)^name\s*=\s*"([^"]*)"', lambda m: f'name = "{m.group(1)}-seed{seed}"', text, count=1)
    return with_settings(text, {table: {key: str(seed)} for table, key in SEEDED.items()})


def with_settings(text: str, settings: dict[str, dict[str, str]]) -> str:
    """The pipeline TOML with each ``[table] key`` set to its TOML value (a string such as ``'"cnn-deep"'``),
    replaced where it is set and added where it is not (the table too)."""
    for table, values in settings.items():
        for key, value in values.items():
            header = re.search(rf"(?m)^\[{table}\]\s*$", text)
            if header is None:
                text += f"\n[{table}]\n{key} = {value}\n"
                continue
            end = re.search(r"(?m)^\[", text[header.end():])
            body_end = header.end() + (end.start() if end else len(text) - header.end())
            body = text[header.end():body_end]
            if re.search(rf"(?m)^{key}\s*=", body):
                body = re.sub(rf"(?m)^{key}\s*=.*$", lambda _: f"{key} = {value}", body)
            else:
                body = f"\n{key} = {value}" + body
            text = text[:header.end()] + body + text[body_end:]
    return text


def figures(run_dir: Path) -> dict:
    privacy = json.loads((run_dir / "privacy.json").read_text())["public"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    return {"epsilon": privacy["guarantee"]["epsilon"], "answered": privacy["queries_answered"],
            "asked": privacy["queries_asked"], "plurality": metrics.get("ensemble_accuracy"),
            "label_accuracy": metrics.get("label_accuracy"), "student": metrics["student_accuracy"],
            **({"students_alone": metrics["students_alone_accuracy"]} if "students_alone_accuracy" in metrics else {}),
            "minutes": sum(s.get("seconds", 0.0) for s in stages.values()) / 60}


def run_one(pipeline: Path, seed: int, out: Path) -> dict:
    copy = out / f"{pipeline.stem}-seed{seed}.toml"
    copy.write_text(with_seed(pipeline_text(pipeline), seed))
    run_dir = out / f"{pipeline.stem}-seed{seed}"
    if not (run_dir / "metrics.json").exists():
        env = {**os.environ, "PATE_SPEND_DIR": str(out / "spend"), "PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, "-m", "pate", "run", str(copy), "--run-dir", str(run_dir), "-q"],
                       check=True, env=env)
    return figures(run_dir)


def summary(rows: list[dict]) -> dict:
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            out[key] = {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", type=Path)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "seeds")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        t0 = time.monotonic()
        rows.append(run_one(args.pipeline, seed, args.out))
        print(f"seed {seed}: {json.dumps(rows[-1])} ({time.monotonic() - t0:.0f} s)", flush=True)
    stats = summary(rows)
    (args.out / f"{args.pipeline.stem}.json").write_text(json.dumps({"seeds": args.seeds, "runs": rows,
                                                                   "summary": stats}, indent=1))
    pct = {"plurality", "label_accuracy", "student", "students_alone"}
    print(f"{args.pipeline.stem} over seeds {args.seeds}: " + ", ".join(
        f"{k} {v['mean'] * 100:.2f} ± {v['sd'] * 100:.2f}%" if k in pct else f"{k} {v['mean']:.3g} ± {v['sd']:.2g}"
        for k, v in stats.items()))


if __name__ == "__main__":
    main()
