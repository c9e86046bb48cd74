"""`pate status`: each stage of a run directory, pending / partial (how far) / done."""
from __future__ import annotations

from ..run import RunDir
from ..stages import NAMES
from . import summary


def render(run: RunDir) -> str:
    lines = [f"run {run.path} (pipeline {run.config.name}, config {run.config.fingerprint()[:12]})"]
    stages = run.manifest()["stages"]
    for stage in NAMES:
        record = stages.get(stage, {})
        state, progress = record.get("status", "pending"), record.get("progress") or ""
        detail = f"  ({progress})" if state == "partial" and progress else ""
        lines.append(f"  {stage:<14} {state}{detail}")
    total = summary.spent(run, run.config.privacy.delta)
    if total is not None:
        lines.append(f"privacy spent on this private data by every run, composed: epsilon {total.epsilon:.3f} at "
                     f"delta {total.delta:g} over {total.releases} release(s)")
    return "\n".join(lines) + "\n"
