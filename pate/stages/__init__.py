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
import importlib
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import config as config_mod
from ..config import PipelineConfig
from ..run import RunDir
from .context import (EXTRACTOR, HEADS, LABELS, LEDGER, METRICS, PARTITION, PRIVACY, STUDENT_HISTORY, STUDENT_MODEL,
                      TEACHERS_EVAL, VOTES, Context, teacher_part)


def _teacher_outputs(config: PipelineConfig, world: int) -> tuple[str, ...]:
    if config.teachers.features != "none":
        return EXTRACTOR, HEADS
    return tuple(teacher_part(r, world) for r in range(world))


@dataclass(frozen=True)
class Stage:
    name: str
    outputs_of: Callable[[PipelineConfig, int], tuple[str, ...]]

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


STAGES = (
    Stage("partition", lambda config, world: (PARTITION,)),
    Stage("train-teachers", _teacher_outputs),
    Stage("vote", lambda config, world: (VOTES, TEACHERS_EVAL)),
    Stage("aggregate", lambda config, world: (LABELS, PRIVACY, LEDGER)),
    Stage("train-student", lambda config, world: (STUDENT_MODEL, STUDENT_HISTORY)),
    Stage("evaluate", lambda config, world: (METRICS,)),
)
NAMES = tuple(s.name for s in STAGES)
BY_NAME = {s.name: s for s in STAGES}


def finish(ctx: Context, name: str, world: int = 1, **extra: object) -> None:
    """Mark stage ``name`` done, recording the sha256 of each of its registered outputs."""
    ctx.run.finish(name, BY_NAME[name].outputs(ctx.config, world), **extra)


def open_run(path: str | Path, config: PipelineConfig) -> RunDir:
    return RunDir.open(path, config, NAMES)


def existing_run(path: str | Path) -> RunDir:
    return RunDir.existing(path, NAMES)


def open_context(pipeline_file: Path, run_dir: Path | None, data_root: Path, device: str, quiet: bool) -> Context:
    config = config_mod.load(pipeline_file)
    run = open_run(run_dir or Path("runs") / config.name, config)
    return Context(run=run, data_root=Path(data_root), device=device, quiet=quiet)


def run_stage(ctx: Context, name: str) -> bool:
    """Run one stage unless already done (a finished stage is final: rerunning aggregation would
    spend privacy twice); returns whether it ran."""
    stage = BY_NAME[name]
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
