"""A tiny run through every stage, as a user runs it: `pate run`, then status, audit and resume."""
import json

import numpy as np
from click.testing import CliRunner

from pate.cli import main


def test_tiny_pipeline_end_to_end(tmp_path, tiny_pipeline, fake_data_root):
    run_dir = tmp_path / "run"
    args = ["run", str(tiny_pipeline), "--run-dir", str(run_dir), "--data-root", str(fake_data_root), "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "student accuracy" in result.output and "SEEDED" in result.output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) >= {"teacher_accuracy_mean", "ensemble_accuracy", "label_accuracy", "student_accuracy",
                            "test_size"}
    assert metrics["test_size"] == 100 and metrics["student_accuracy"] > 0.3  # the fake data is easy
    with np.load(run_dir / "votes.npz") as v:
        assert v["votes"].shape == (40, 10) and (v["votes"].sum(1) == 6).all()
    privacy = json.loads((run_dir / "privacy.json").read_text())
    assert privacy["public"]["queries_asked"] == 40 and np.isfinite(privacy["private"]["epsilon"])
    status = CliRunner().invoke(main, ["status", str(run_dir)])
    assert status.output.count(" done") == 6
    again = CliRunner().invoke(main, args)  # everything done: nothing reruns, same summary
    assert again.exit_code == 0 and json.loads((run_dir / "privacy.json").read_text()) == privacy
