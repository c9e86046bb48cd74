"""The six stage commands, in pipeline order, and how to run one or all of them.

Each stage is a module of this package named like its command (``train-teachers`` is
``train_teachers.py``) with a ``run(ctx)`` function; its module docstring is its ``--help``. The
registry below holds the facts about stages that the rest of pate needs without importing them
(stage modules import torch, and `pate --help` must not): their order and their outputs. A stage
runs once every earlier stage is done, reads their artifacts from the run directory, and never
imports another stage.
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import json
import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .. import config as config_mod
from ..config import DOWNSTREAM_SECTIONS, PipelineConfig
from ..io import atomic_write_json, private_mkdir
from ..progress import say
from ..run.directory import RunDir, RunError, locked
from .. import data as data_mod
from ..run import outputs, spend_log
from .. import tracking
from ..aggregation.ledger_files import votes_file
from ..aggregation.settings import check_accountable
from ..run.artifacts import (DATA, DPSGD_POOL, EXTRACTOR, KNN_PRIVATE, KNN_PUBLIC, LABELS, LEDGER, METRICS, PARTITION, PRIVACY,
                             RECORD_BUDGETS, STUDENT_HISTORY, STUDENT_MODEL, TEACHERS_EVAL, Context, heads_part, mechanism,
                             public_features_part, read_metrics, read_privacy, spec_from_json, teacher_part)


def _teacher_outputs(config: PipelineConfig, world: int) -> tuple[str, ...]:
    ranks = range(world)
    if mechanism(config).reads_records:  # private-knn, reverse-knn: the feature space (and a DP-SGD teacher)
        return (EXTRACTOR, KNN_PRIVATE, KNN_PUBLIC) + ((DPSGD_POOL,) if config.teachers.dpsgd_noise else ())
    if config.teachers.features == "pretrained":
        return (EXTRACTOR, *(heads_part(r, world) for r in ranks), *(public_features_part(r, world) for r in ranks))
    if config.teachers.features != "none":
        return (EXTRACTOR, *(heads_part(r, world) for r in ranks))
    return tuple(teacher_part(r, world) for r in ranks)


def _votes_for_anchors(config: PipelineConfig) -> bool:
    """reverse-knn: records vote in the vote stage (so their budgets are resolved there)."""
    mech = mechanism(config)
    return mech.reads_records and not mech.individual


@dataclass(frozen=True)
class Stage:
    name: str
    outputs_of: Callable[[PipelineConfig, int], tuple[str, ...]]
    rerun_on: tuple[str, ...] = ()  # config sections whose change lets this finished stage run again
    checks: Callable[[PipelineConfig], bool] | None = None  # whether its module's check(config) has work

    @property
    def module(self) -> str:
        return f"{__name__}.{self.name.replace('-', '_')}"

    def outputs(self, config: PipelineConfig, world: int = 1) -> tuple[str, ...]:
        """The files this stage records in the manifest when it finishes (``world`` torchrun ranks)."""
        return self.outputs_of(config, world)

    @property
    def help(self) -> str:
        """The stage module's docstring, read from its source so that --help imports nothing."""
        origin = importlib.util.find_spec(self.module).origin
        return ast.get_docstring(ast.parse(Path(origin).read_text(encoding="utf-8"))) or ""

    def run(self, ctx: Context) -> None:
        # Loaded on first use: a stage module pulls in torch, which `pate status` and `--help` never need.
        importlib.import_module(self.module).run(ctx)

    def check(self, config: PipelineConfig) -> None:
        """The stage's own checks of settings that only it can make (its ``check(config)``, if any);
        the stage module is imported only when it has something to check."""
        if self.checks is not None and self.checks(config):
            importlib.import_module(self.module).check(config)


STAGES = (
    Stage("partition", lambda config, world: (PARTITION, DATA)),
    Stage("train-teachers", _teacher_outputs,
          checks=lambda config: config.teachers.features == "pretrained" or bool(config.teachers.dpsgd_noise)),
    Stage("vote", lambda config, world: (votes_file(config), TEACHERS_EVAL) + (
        (RECORD_BUDGETS,) if config.privacy.record_budgets and _votes_for_anchors(config) else ())),
    Stage("aggregate", lambda config, world: (LABELS, PRIVACY, LEDGER)),
    # Post-processing of the released labels: retraining them costs no privacy.
    Stage("train-student", lambda config, world: (STUDENT_MODEL, STUDENT_HISTORY), rerun_on=DOWNSTREAM_SECTIONS,
          checks=lambda config: config.student.propagation != "none"),
    Stage("evaluate", lambda config, world: (METRICS,), rerun_on=DOWNSTREAM_SECTIONS),
)
ATTEMPTS = "student-attempts"
NAMES = tuple(s.name for s in STAGES)
BY_NAME = {s.name: s for s in STAGES}


def finish(ctx: Context, name: str, world: int = 1, **extra: object) -> None:
    """Mark stage ``name`` done, recording the sha256 of each of its registered outputs."""
    ctx.run.finish(name, BY_NAME[name].outputs(ctx.config, world), **extra)


def open_run(path: str | Path, config: PipelineConfig, quiet: bool = True) -> RunDir:
    """Open the run directory for ``config``: a change of the settings that only post-processing
    stages depend on (``[student]``) starts a new attempt of those stages; any other change is refused."""
    def accept(run: RunDir, changed: list[str], diffs: list[str]) -> None:
        rerunnable = {section for stage in STAGES for section in stage.rerun_on}
        if set(changed) - rerunnable:
            raise RunError(
                f"{run.path} was started with another config; these settings differ from it: {'; '.join(diffs)}. "
                f"Only [{'], ['.join(sorted(rerunnable))}] may change in a run directory (the student is retrained "
                "on the labels already released); anything else needs a new --run-dir, whose aggregation spends "
                "privacy again (the spend log will count it)")
        attempt = _archive_attempt(run, [s for s in STAGES if set(s.rerun_on) & set(changed)])
        say(f"{run.path}: {'; '.join(diffs)}: " + (f"the earlier student is kept as {ATTEMPTS}/{attempt}; " if attempt
            else "") + "training the student again on the released labels (no new aggregation)", quiet)

    return RunDir.open(path, config, NAMES, accept_change=accept)


def _archive_attempt(run: RunDir, stages: list[Stage]) -> int | None:
    """Move the outputs of ``stages`` (and their checkpoints) into a numbered attempt folder and mark
    the stages pending again; returns the attempt number, or None when none had started."""
    touched = [s for s in stages if run.status(s.name) != "pending"]
    if not touched:
        return None
    attempts = run.manifest().get("attempts", [])
    number = len(attempts) + 1
    folder = run.file(f"{ATTEMPTS}/{number}")
    private_mkdir(folder)
    tops = {Path(output).parts[0] for s in touched for output in s.outputs(run.config)}  # student/, metrics.json
    for name in sorted(tops):
        if run.file(name).exists():
            os.replace(run.file(name), folder / name)
    record = {"attempt": number, "student": run.manifest().get("config", {}).get("student"),
              "stages": {s.name: run.record(s.name) for s in touched}}
    for stage in touched:
        run.reset(stage.name)
    manifest = run.manifest()
    manifest["attempts"] = attempts + [record]
    atomic_write_json(run.file("manifest.json"), manifest)
    return number


def existing_run(path: str | Path) -> RunDir:
    return RunDir.existing(path, NAMES)


@contextlib.contextmanager
def session(pipeline_file: Path, run_dir: Path | None, data_root: Path, device: str, quiet: bool) -> Iterator[Context]:
    """The context of a stage command, holding the run directory's lock throughout: a second process
    on the same directory is refused. Under torchrun only rank 0 takes the lock (its ranks share the
    work); every check of the settings happens before anything is written."""
    config = config_mod.load(pipeline_file)
    tracking.check(config)  # [tracking] enabled without MLflow: refused before anything is written
    BY_NAME["train-student"].check(config)  # [student] propagation without scikit-learn: likewise
    path = Path(run_dir or Path("runs") / config.name)
    outputs.check_output(path, outputs.RUN_DIRECTORY, RunDir(path, config))  # not in another run, a release, the data
    outputs.check_output(data_root, outputs.DATA_ROOT, RunDir(path, config))  # the decode cache holds private images
    spend_log.directory()  # the spend directory too (it holds the record key), before anything is written
    spec = _known_spec(config, path, Path(data_root), quiet)
    config.check_data(spec)  # sizes against the data: for image folders only now that they are read
    check_accountable(config, spec.num_classes, spec.num_private)  # refuse settings with no finite guarantee before anything is written
    _check_teachers(config, path)
    lock = locked(path) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext()
    with lock:
        run = open_run(path, config, quiet)
        with tracking.track(run, lambda: _public_snapshot(run), quiet):  # public fields only (pate.tracking)
            yield Context(run=run, data_root=Path(data_root), device=device, quiet=quiet)


def _public_snapshot(run: RunDir) -> tracking.RunSnapshot:
    """What experiment tracking may log of ``run``, each artifact checked against its recorded hash:
    the stages' records, the public statement (never privacy.json's private section), the student's
    held-out accuracy (never the teachers' or the labels')."""
    student = None
    if run.is_done("evaluate") and run.has(METRICS):
        student = {k: read_metrics(run)[k] for k in tracking.STUDENT_METRICS}
    return tracking.RunSnapshot(names=NAMES, manifest=run.manifest(), student=student,
                                public=read_privacy(run)["public"] if run.has(PRIVACY) else None)


def _check_teachers(config: PipelineConfig, path: Path) -> None:
    """What train-teachers needs from outside the data (a pretrained backbone and its weights) must
    load before anything is written; not once the teachers are trained (an offline machine can
    finish a run whose backbone it cannot download again)."""
    try:
        record = json.loads((path / "manifest.json").read_text(encoding="utf-8"))["stages"]["train-teachers"]
        if record["status"] == "done":
            return
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        pass  # no run yet (or a damaged manifest, which opening the run reports)
    BY_NAME["train-teachers"].check(config)


def _known_spec(config: PipelineConfig, path: Path, data_root: Path, quiet: bool):
    """The data's description before the run directory is touched: a built-in dataset's table entry,
    the one recorded by an existing run, or else the images themselves (decoded once, cached)."""
    if config.data.spec is not None:
        return config.data.spec
    recorded = path / DATA
    if recorded.exists():
        try:
            return spec_from_json(json.loads(recorded.read_text(encoding="utf-8")))
        except (OSError, ValueError, RecursionError):
            pass  # a damaged data.json is refused by the stage that reads it, with its hash
    return data_mod.load(config.data, data_root, quiet=quiet).spec


def run_stage(ctx: Context, name: str) -> bool:
    """Run one stage unless already done (a finished stage is final: rerunning aggregation would
    spend privacy twice); returns whether it ran."""
    stage = BY_NAME[name]
    if ctx.run.is_done(name) and stage.rerun_on and any(not ctx.run.file(f).exists() for f in ctx.run.outputs(name)):
        ctx.say(f"{name}: its outputs are missing; running it again (post-processing of the released labels: "
                "no privacy cost)")
        _archive_attempt(ctx.run, [s for s in STAGES[NAMES.index(name):] if s.rerun_on])
    if ctx.run.is_done(name):
        ctx.say(f"{name}: already done in {ctx.run.path}")
        return False
    earlier = NAMES[:NAMES.index(name)]
    ctx.run.require(*earlier)
    if ctx.run.status(name) == "partial":
        ctx.say(f"{name}: resuming")
    t0 = time.monotonic()
    stage.run(ctx)
    if ctx.run.is_done(name):  # under torchrun only rank 0 finishes the stage
        ctx.run.update(name, seconds=round(time.monotonic() - t0, 2))
    return True


def run_stages(ctx: Context, until: str | None = None) -> None:
    last = NAMES.index(until) if until else len(NAMES) - 1
    for name in NAMES[:last + 1]:
        run_stage(ctx, name)
