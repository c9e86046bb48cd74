"""Soft labels end to end: the noisy vectors beside the labels in labels.npz, the statement says so,
the data-dependent figures are marked not applicable, a resumed seeded run reproduces the vectors
bit for bit, and the student trains on them."""
import json
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from pate import config as config_mod
from pate.cli import main
from pate.stages import aggregate as stage

from ..conftest import TINY_PIPELINE, edit_pipeline
from .test_aggregate import make_run
from .test_spend_log import interrupted_after_first_chunk


def soft(ctx):
    with np.load(ctx.run.file("labels.npz")) as data:
        return data["label"].copy(), data["soft"].copy()


@pytest.mark.parametrize("mechanism", ["confident-gnmax", "gnmax", "lnmax"])
def test_the_release_holds_each_answered_querys_noisy_vector(tmp_path, mechanism):
    ctx, votes = make_run(tmp_path, mechanism=mechanism, soft_labels=True)
    stage.run(ctx)
    labels, vectors = soft(ctx)
    assert vectors.shape == (len(labels), votes.shape[1]) and np.isfinite(vectors).all()
    assert np.array_equal(vectors.argmax(axis=1), labels)
    report = json.loads(ctx.run.file("privacy.json").read_text())
    assert "soft_labels" in report["public"] and "not applicable" in report["private"]["error"]
    assert "epsilon" not in report["private"]  # no data-dependent figure for a release it does not bound
    # the labels are those of the same seeded run without soft labels
    plain, _ = make_run(tmp_path / "plain", mechanism=mechanism)
    stage.run(plain)
    with np.load(plain.run.file("labels.npz")) as data:
        assert np.array_equal(data["label"], labels) and "soft" not in data.files


def test_a_resumed_seeded_run_reproduces_the_soft_labels_bit_for_bit(tmp_path, monkeypatch):
    whole, _ = make_run(tmp_path / "whole", soft_labels=True)
    stage.run(whole)
    resumed, _ = make_run(tmp_path / "resumed", soft_labels=True)
    interrupted_after_first_chunk(resumed, monkeypatch)
    stage.run(resumed)
    a, b = soft(whole), soft(resumed)
    assert np.array_equal(a[0], b[0]) and a[1].tobytes() == b[1].tobytes()


def test_soft_labels_with_a_data_dependent_release_are_refused(tmp_path):
    with pytest.raises(config_mod.ConfigError, match="soft_labels"):
        config_mod.from_dict({"name": "x", "aggregator": {"soft_labels": True},
                              "privacy": {"data_dependent_release": True}})
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(edit_pipeline(textwrap.dedent(TINY_PIPELINE), ("seed = 7", "seed = 7\nsoft_labels = true"),
                                      ("delta = 1e-4", "delta = 1e-4\ndata_dependent_release = true")))
    result = CliRunner().invoke(main, ["run", str(pipeline), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "soft_labels" in result.output and not (tmp_path / "run").exists()


def test_the_student_learns_from_soft_labels_end_to_end(tmp_path, fake_data_root):
    pipeline = tmp_path / "soft.toml"
    pipeline.write_text(edit_pipeline(textwrap.dedent(TINY_PIPELINE), ("seed = 7", "seed = 7\nsoft_labels = true")))
    result = CliRunner().invoke(main, ["run", str(pipeline), "--run-dir", str(tmp_path / "run"), "--data-root",
                                       str(fake_data_root), "-q"])
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "run" / "labels.npz") as data:
        assert "soft" in data.files
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["student_accuracy"] is not None
    with np.load(tmp_path / "run" / "labels.npz") as run_labels, np.load(tmp_path / "run-release" / "labels.npz") as out:
        assert np.array_equal(out["soft"], run_labels["soft"]) and np.array_equal(out["label"], run_labels["label"])
    statement = json.loads((tmp_path / "run-release" / "statement.json").read_text())["privacy"]
    assert "soft_labels" in statement
