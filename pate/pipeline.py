"""Stage order, dispatch and the end-of-run summary.

A finished stage is never run again: its outputs are final (rerunning aggregation would spend
privacy twice), so a user who wants a fresh result starts a fresh run directory.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from . import config as config_mod
from . import data as data_mod
from . import stages
from .checkpoint import CheckpointError
from .partition import PartitionError
from .run import STAGES, RunDir, RunError

STAGE_HELP = {
    "partition": "Split the private set into K disjoint teacher shards and the public set into queries, "
                 "student pool and held-out test.",
    "train-teachers": "Train the K teachers, each on its own shard only, as one batched ensemble.",
    "vote": "Each teacher votes once on each query -> votes.npz.",
    "aggregate": "Answer queries with the noisy aggregator, writing the ledger before each label; account privacy.",
    "train-student": "Train the student on the released labels and the unlabelled public pool.",
    "evaluate": "Evaluate the student on the held-out public test split -> metrics.json.",
}
PREVIOUS = {stage: STAGES[:i] for i, stage in enumerate(STAGES)}
USER_ERRORS: tuple[type[BaseException], ...] = (
    config_mod.ConfigError, RunError, data_mod.DataError, PartitionError, CheckpointError)


def stage_function(stage: str):
    from . import labeling, teacher_stages

    return {
        "partition": stages.run_partition,
        "train-teachers": teacher_stages.run_train_teachers,
        "vote": teacher_stages.run_vote,
        "aggregate": labeling.run_aggregate,
        "train-student": stages.run_train_student,
        "evaluate": stages.run_evaluate,
    }[stage]


def context(pipeline_file: Path, run_dir: Path | None, data_root: Path, device: str,
            quiet: bool) -> stages.Context:
    config = config_mod.load(pipeline_file)
    run = RunDir.open(run_dir or Path("runs") / config.name, config)
    return stages.Context(run=run, data_root=Path(data_root), device=device, quiet=quiet)


def run_stage(ctx: stages.Context, stage: str, force: bool = False) -> bool:
    """Run one stage unless already done; returns whether it ran."""
    if ctx.run.is_done(stage):
        ctx.say(f"{stage}: already done in {ctx.run.path}")
        return False
    ctx.run.require(*PREVIOUS[stage])
    if ctx.run.status(stage) == "partial":
        ctx.say(f"{stage}: resuming")
    t0 = time.monotonic()
    stage_function(stage)(ctx)
    if ctx.run.is_done(stage):  # under torchrun only rank 0 finishes the stage
        ctx.run.update(stage, seconds=round(time.monotonic() - t0, 2))
    return True


def run_stages(ctx: stages.Context, until: str | None = None) -> None:
    last = STAGES.index(until) if until else len(STAGES) - 1
    for stage in STAGES[:last + 1]:
        run_stage(ctx, stage)


def summary(ctx: stages.Context) -> str:
    """One table of what the run produced: sizes, accuracy, epsilon, time per stage."""
    run = ctx.run
    manifest = run.manifest()
    rows = [("pipeline", ctx.config.name), ("run directory", str(run.path)),
            ("teachers", str(ctx.config.teachers.count))]
    privacy_path, metrics_path = run.file("privacy.json"), run.file("metrics.json")
    if privacy_path.exists():
        p = json.loads(privacy_path.read_text())
        rows += [("queries asked / answered", f"{p['queries_asked']} / {p['queries_answered']}"),
                 ("epsilon, smooth-sensitivity released (safe to publish)",
                  f"{p['smooth_sensitivity']['released_epsilon']:.3f}"),
                 ("epsilon, data-independent (safe to publish)", f"{p['epsilon_data_independent']:.3f}"),
                 ("epsilon, data-dependent (PRIVATE, do not publish)", f"{p['epsilon']:.3f}"),
                 ("delta", f"{p['delta']:g}")]
        if p.get("seeded"):
            rows.append(("noise", "SEEDED: reproducible, not a production privacy guarantee"))
    if metrics_path.exists():
        m = json.loads(metrics_path.read_text())
        names = {"teacher_accuracy_mean": "teacher accuracy mean (not DP-protected)",
                 "ensemble_accuracy": "plurality accuracy (not DP-protected)",
                 "label_accuracy": "released-label accuracy", "student_accuracy": "student accuracy"}
        for key, name in names.items():
            if m.get(key) is not None:
                rows.append((name, f"{100 * m[key]:.2f}%"))
    for stage in STAGES:
        seconds = manifest["stages"].get(stage, {}).get("seconds")
        if seconds is not None:
            rows.append((f"time {stage}", f"{seconds:.1f} s"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
