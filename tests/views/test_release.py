"""`pate release`: the public folder holds exactly what may be shared, and nothing else."""
from __future__ import annotations

import csv
import json
import textwrap

import pytest
import torch
from click.testing import CliRunner

from pate.cli import main
from pate.models import build_model

from ..conftest import TINY_PIPELINE

PRIVATE_KEYS = ("epsilon_expected", "epsilon_classic", "smooth_sensitivity", "noise_std", "sha256", "teacher_accuracy",
                "private_data", "ledger", "votes", "config_sha256", "run_id", "warnings")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, fake_data_root):
    root = tmp_path_factory.mktemp("release")
    pipeline = root / "tiny.toml"
    pipeline.write_text(textwrap.dedent(TINY_PIPELINE))
    result = CliRunner().invoke(main, ["run", str(pipeline), "--run-dir", str(root / "run"), "--data-root",
                                       str(fake_data_root), "-q"])
    assert result.exit_code == 0, result.output
    assert f"public release (labels, student, privacy statement): {root / 'run-release'}" in result.output
    return root


def test_the_release_holds_the_statement_labels_and_student(finished):
    out = finished / "run-release"
    assert sorted(p.name for p in out.iterdir()) == ["labels.csv", "labels.npz", "statement.json", "statement.txt",
                                                     "student.pt"]
    doc = json.loads((out / "statement.json").read_text())
    privacy = json.loads((finished / "run" / "privacy.json").read_text())
    assert doc["privacy"] == privacy["public"]  # the public section, and only it
    assert doc["spent_on_this_private_data"]["releases"] >= 1
    text = (out / "statement.json").read_text()
    for key in PRIVATE_KEYS:
        assert f'"{key}"' not in text, key
    with open(out / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == privacy["public"]["queries_answered"] and set(rows[0]) == {"public_index", "label"}
    model = build_model("cnn-small", 1, 10, 28)
    model.load_state_dict(torch.load(out / "student.pt", weights_only=True))
    human = (out / "statement.txt").read_text()
    assert f"({privacy['public']['guarantee']['epsilon']:.3f}, 0.0001)-differential privacy" in human
    assert "SEEDED" in human


def test_release_command_and_its_refusals(finished, tmp_path, fake_data_root):
    result = CliRunner().invoke(main, ["release", str(finished / "run"), "--out", str(tmp_path / "pub")])
    assert result.exit_code == 0, result.output
    assert "Guarantee:" in result.output
    assert (tmp_path / "pub" / "statement.json").exists()
    inside = CliRunner().invoke(main, ["release", str(finished / "run"), "--out", str(finished / "run" / "pub")])
    assert inside.exit_code == 2 and "inside the private run directory" in inside.output
    pipeline = tmp_path / "tiny.toml"
    pipeline.write_text(textwrap.dedent(TINY_PIPELINE))
    partial = tmp_path / "partial"
    assert CliRunner().invoke(main, ["run", str(pipeline), "--run-dir", str(partial), "--data-root",
                                     str(fake_data_root), "--until", "vote", "-q"]).exit_code == 0
    unfinished = CliRunner().invoke(main, ["release", str(partial)])
    assert unfinished.exit_code == 2 and "stage 'aggregate' has not finished" in unfinished.output
