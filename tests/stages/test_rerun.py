"""A run directory accepts a change of the student's settings only: the student is retrained on
the labels already released, the earlier one kept, and nothing is aggregated (or spent) again."""
from __future__ import annotations

import json
import textwrap

from click.testing import CliRunner

from pate.run import spend_log
from pate.cli import main

from ..conftest import TINY_PIPELINE, edit_pipeline


def run(pipeline, run_dir, data_root, *extra):
    result = CliRunner().invoke(main, ["run", str(pipeline), "--run-dir", str(run_dir), "--data-root",
                                       str(data_root), *extra])
    return result


def test_changing_student_settings_retrains_without_a_new_aggregation(tmp_path, fake_data_root, monkeypatch):
    monkeypatch.setenv("PATE_SPEND_DIR", str(tmp_path / "spend"))
    pipeline, run_dir = tmp_path / "tiny.toml", tmp_path / "run"
    pipeline.write_text(textwrap.dedent(TINY_PIPELINE))
    assert run(pipeline, run_dir, fake_data_root, "-q").exit_code == 0
    ledger, labels = (run_dir / "ledger.jsonl").read_bytes(), (run_dir / "labels.npz").read_bytes()
    spent = spend_log.entries()
    first_metrics = json.loads((run_dir / "metrics.json").read_text())

    pipeline.write_text(edit_pipeline(textwrap.dedent(TINY_PIPELINE), ("steps = 20", "steps = 30")))
    again = run(pipeline, run_dir, fake_data_root)
    assert again.exit_code == 0, again.output
    assert "[student] steps: 20 -> 30" in again.output and "student-attempts/1" in again.output
    assert "aggregate: already done" in again.output
    assert (run_dir / "ledger.jsonl").read_bytes() == ledger and (run_dir / "labels.npz").read_bytes() == labels
    assert spend_log.entries() == spent  # nothing spent again
    kept = run_dir / "student-attempts" / "1"
    assert (kept / "student" / "model.pt").exists() and json.loads((kept / "metrics.json").read_text()) == first_metrics
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["config"]["student"]["steps"] == 30 and manifest["attempts"][0]["student"]["steps"] == 20
    assert json.loads((run_dir / "student" / "history.json").read_text())["step"][-1] == 30

    # anything upstream of aggregation is still refused, naming the setting
    pipeline.write_text(edit_pipeline(textwrap.dedent(TINY_PIPELINE), ("steps = 20", "steps = 30"),
                                      ("sigma2 = 1.0", "sigma2 = 1.5")))
    refused = run(pipeline, run_dir, fake_data_root)
    assert refused.exit_code == 2 and "[aggregator] sigma2: 1.0 -> 1.5" in refused.output
    assert "spends privacy again" in refused.output


def test_a_missing_student_is_retrained_at_no_privacy_cost(tmp_path, fake_data_root):
    pipeline, run_dir = tmp_path / "tiny.toml", tmp_path / "run"
    pipeline.write_text(textwrap.dedent(TINY_PIPELINE))
    assert run(pipeline, run_dir, fake_data_root, "-q").exit_code == 0
    (run_dir / "student" / "model.pt").unlink()
    again = run(pipeline, run_dir, fake_data_root)
    assert again.exit_code == 0, again.output
    assert "train-student: its outputs are missing; running it again" in again.output
    assert (run_dir / "student" / "model.pt").exists()


def test_help_lists_stages_in_pipeline_order():
    out = CliRunner().invoke(main, ["--help"]).output
    names = ["partition", "train-teachers", "vote", "aggregate", "train-student", "evaluate"]
    positions = [out.index(f"  {n} ") for n in names]
    assert positions == sorted(positions)
