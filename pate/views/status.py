"""`pate status` (PRIVATE): each stage of a run directory, pending / partial (how far) / done; the
privacy spent by the worst-off record of its data over the spend log, and how many records
``[privacy] total_budget`` left out (both depend on which records are in the data)."""
from __future__ import annotations

from ..run.directory import RunDir
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
                     f"delta {total.delta:g} over {total.releases} release(s) (PRIVATE: it depends on which records "
                     "are in the data)")
    left = summary.left_out(run)
    if left is not None:
        lines.append(f"records left out by [privacy] total_budget = {run.config.privacy.total_budget:g} (they would "
                     f"have passed it): {left} (PRIVATE)")
    return "\n".join(lines) + "\n"
