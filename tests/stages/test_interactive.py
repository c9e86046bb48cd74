"""Interactive-GNMax from `pate run`: rounds with a student trained on what was released, who gave
each label in the ledger and the statement, resume after SIGKILL, a bad confidence refused."""
from __future__ import annotations

import json
import shutil
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from pate.cli import main

from ..conftest import TINY_PIPELINE, edit_pipeline
from ..faults_helpers import Stage

INTERACTIVE = edit_pipeline(
    textwrap.dedent(TINY_PIPELINE), ('name = "tiny"', 'name = "tiny-interactive"'),
    ('mechanism = "confident-gnmax"', 'mechanism = "interactive-gnmax"\ninteractive_rounds = 2\n'
                                      'interactive_steps = 40\nstudent_confidence = 0.6'))


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def voted(tmp_path_factory, fake_data_root):
    root = tmp_path_factory.mktemp("interactive")
    (root / "p.toml").write_text(INTERACTIVE)
    result = invoke("run", root / "p.toml", "--run-dir", root / "voted", "--data-root", fake_data_root,
                    "--until", "vote", "-q")
    assert result.exit_code == 0, result.output
    return root


def _ledger(run_dir):
    return [{k: v for k, v in json.loads(line).items() if k != "mac"}
            for line in (run_dir / "ledger.jsonl").read_text().splitlines()[1:]]


def test_rounds_sources_and_statement(voted, tmp_path, fake_data_root):
    run_dir = tmp_path / "run"
    shutil.copytree(voted / "voted", run_dir)
    result = invoke("run", voted / "p.toml", "--run-dir", run_dir, "--data-root", fake_data_root, "-q")
    assert result.exit_code == 0, result.output
    records = _ledger(run_dir)
    assert len(records) == 40
    assert all(("source" in r) == r["answered"] for r in records)
    assert all(r["source"] == "teachers" for r in records[:20] if r["answered"])  # round 0: no student yet
    assert any(r.get("source") == "student" for r in records[20:])  # round 1: the student answers some
    assert (run_dir / "interactive" / "round-1.npz").exists()
    with np.load(run_dir / "labels.npz") as released:
        assert len(released["from_teachers"]) == len(released["label"])
    public = json.loads((run_dir / "privacy.json").read_text())["public"]
    assert public["answered_by_teachers"] + public["answered_by_student"] == public["queries_answered"]
    assert public["answered_by_teachers"] == sum(r.get("source") == "teachers" for r in records)
    assert public["mechanism"] == "interactive-gnmax" and public["settings"]["student_confidence"] == 0.6


def test_resume_after_sigkill_in_a_later_round(voted, tmp_path, fake_data_root):
    """Both runs in forked processes (same thread count, so the round students are bit-identical)."""
    runs = {}
    for name in ("whole", "killed"):
        runs[name] = tmp_path / name
        shutil.copytree(voted / "voted", runs[name])
    args = lambda d: ["aggregate", voted / "p.toml", "--run-dir", d, "--data-root", fake_data_root, "-q"]  # noqa: E731
    assert Stage(args(runs["whole"]), tmp_path / "whole.log", fault=("chunk", 4)).wait() == 0
    ledger = runs["killed"] / "ledger.jsonl"
    process = Stage(args(runs["killed"]), tmp_path / "killed.log", fault=("chunk", 4))
    landed = process.kill_when(lambda: ledger.exists() and len(ledger.read_text().splitlines()) >= 26)
    assert landed, (tmp_path / "killed.log").read_text()
    assert Stage(args(runs["killed"]), tmp_path / "resumed.log", fault=("chunk", 4)).wait() == 0, \
        (tmp_path / "resumed.log").read_text()
    assert _ledger(runs["killed"]) == _ledger(runs["whole"])


@pytest.mark.parametrize("value", ["1.0", "0.0"])
def test_a_student_confidence_outside_0_1_is_refused(tmp_path, fake_data_root, value):
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(INTERACTIVE.replace("student_confidence = 0.6", f"student_confidence = {value}"))
    result = invoke("run", pipeline, "--run-dir", tmp_path / "run", "--data-root", fake_data_root, "-q")
    assert result.exit_code == 2 and "[aggregator] student_confidence must be in (0, 1)" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_soft_labels_are_the_teachers_vectors_and_one_hot_where_the_student_answered(voted, tmp_path, fake_data_root):
    run_dir = tmp_path / "run"
    shutil.copytree(voted / "voted", run_dir)
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(INTERACTIVE.replace("seed = 7", "seed = 7\nsoft_labels = true"))
    result = invoke("run", pipeline, "--run-dir", run_dir, "--data-root", fake_data_root, "--until", "aggregate", "-q")
    assert result.exit_code == 2 and "differ" in result.output  # a voted run of other settings is refused...
    fresh = tmp_path / "fresh"
    result = invoke("run", pipeline, "--run-dir", fresh, "--data-root", fake_data_root, "-q")
    assert result.exit_code == 0, result.output  # ...a new one runs, the student trained on the mix
    with np.load(fresh / "labels.npz") as data:
        soft, label, teachers = data["soft"], data["label"], data["from_teachers"]
    assert np.isfinite(soft[teachers]).all() and np.array_equal(soft[teachers].argmax(1), label[teachers])
    assert np.isnan(soft[~teachers]).all()  # the student's own answers carry no vector of the teachers


def test_round_students_train_with_the_students_augmentations(voted, tmp_path, fake_data_root, monkeypatch):
    """A round's student is trained as the final one is ([student] flips, erasing, mixup), for
    interactive_steps steps: the round student used to drop the augmentations."""
    from pate.aggregation import interactive
    seen = []

    def recording(*args, **kwargs):
        seen.append(kwargs)
        return train(*args, **kwargs)

    train = interactive.train_student
    monkeypatch.setattr(interactive, "train_student", recording)
    config = INTERACTIVE.replace("[student]", "[student]\nhflip = true\nerase = 0.5\nmixup = 0.2")
    assert config != INTERACTIVE
    (tmp_path / "p.toml").write_text(config)
    run_dir = tmp_path / "run"
    shutil.copytree(voted / "voted", run_dir)
    result = invoke("run", tmp_path / "p.toml", "--run-dir", run_dir, "--data-root", fake_data_root, "-q",
                    "--until", "aggregate")
    assert result.exit_code == 0, result.output
    assert len(seen) == 1  # round 1's student (round 0 has none)
    assert (seen[0]["hflip"], seen[0]["erase"], seen[0]["mixup"], seen[0]["steps"]) == (True, 0.5, 0.2, 40)
