"""Label spreading over the public pool (pate.student.propagation, [student] propagation): it recovers the
clusters of unlabelled points from a few labelled ones, keeps the released targets, reads only its
inputs, and end to end the student trains on it, the statement names it, and a missing
scikit-learn is one line and exit 2 before anything is written."""
import inspect
import json
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from pate import config as config_mod
from pate.student import propagation
from pate.cli import main
from pate.run.directory import RunDir

from .conftest import TINY_PIPELINE, edit_pipeline


def rings(seed: int, n: int = 600):
    """Two concentric noisy rings (class 0 inside, 1 outside) and two labelled points on each."""
    rng = np.random.default_rng(seed)
    r, t = np.repeat([1.0, 3.0], n // 2), rng.uniform(0, 2 * np.pi, n)
    x = np.c_[r * np.cos(t), r * np.sin(t)] + rng.normal(0, 0.1, (n, 2))
    labeled = np.r_[rng.choice(n // 2, 2, replace=False), n // 2 + rng.choice(n // 2, 2, replace=False)]
    return x, np.repeat([0, 1], n // 2), labeled


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_spreading_recovers_the_clusters_of_unlabelled_points(seed):
    x, y, labeled = rings(seed)
    out = propagation.label_spreading(x, labeled, y[labeled], num_classes=2, k=10, alpha=0.8)
    unlabeled = np.setdiff1d(np.arange(len(x)), labeled)
    accuracy = (out[unlabeled].argmax(1) == y[unlabeled]).mean()
    # the trivial baselines: the majority class, and each point taking its nearest labelled point's label
    nearest = y[labeled][((x[unlabeled, None] - x[labeled][None]) ** 2).sum(-1).argmin(1)]
    assert accuracy >= 0.98 > max((nearest == y[unlabeled]).mean(), 0.5) + 0.1
    assert out.shape == (len(x), 2) and np.allclose(out.sum(1), 1.0) and (out >= 0).all()


def blobs(n_per: int = 100, m: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (m, 5))
    x = np.concatenate([c + rng.normal(0, 1, (n_per, 5)) for c in centres])
    return x, np.repeat(np.arange(m), n_per)


def test_released_targets_are_kept_and_soft_rows_spread_as_they_are():
    x, y = blobs()
    labeled = np.array([0, 100, 200, 300, 1])
    soft = np.eye(4)[y[labeled]] * 0.6 + 0.1  # rows summing to 1, argmax the true class
    out = propagation.label_spreading(x, labeled, soft, num_classes=4)
    assert np.array_equal(out[labeled], soft)  # the released targets themselves, not their argmax
    hard = propagation.label_spreading(x, labeled, y[labeled], num_classes=4)
    assert np.array_equal(hard[labeled], np.eye(4)[y[labeled]])
    assert np.array_equal(hard, propagation.label_spreading(x, labeled, np.eye(4)[y[labeled]], num_classes=4))
    # one soft seed in a component: every point of it gets exactly that distribution
    one = propagation.label_spreading(x[:100], np.array([7]), np.array([[0.5, 0.3, 0.2, 0.0]]), num_classes=4)
    assert np.allclose(one, [0.5, 0.3, 0.2, 0.0])


def test_an_image_no_label_reaches_gets_a_uniform_row():
    x, y = blobs(m=2)
    out = propagation.label_spreading(x, np.array([0, 1]), np.array([0, 0]), num_classes=3, k=5)
    assert np.allclose(out[100:], 1 / 3) and (out[2:100].argmax(1) == 0).all()  # the other blob: no seed


@pytest.mark.parametrize("bad", [dict(k=0), dict(alpha=1.0), dict(alpha=0.0), dict(labeled=np.array([0, 0])),
                                 dict(targets=np.array([0, 5]))])
def test_bad_inputs_are_refused(bad):
    x, y = blobs()
    args = dict(features=x, labeled=np.array([0, 100]), targets=np.array([0, 1]), num_classes=4) | bad
    with pytest.raises(ValueError):
        propagation.label_spreading(**args)


def test_it_reads_only_what_it_is_given(monkeypatch):
    """Its inputs are public features and released targets (no run directory, vote or private set
    among its parameters), and it opens no file: the same inputs, the same output."""
    assert list(inspect.signature(propagation.label_spreading).parameters) == [
        "features", "labeled", "targets", "num_classes", "k", "alpha", "tol", "max_iter"]
    x, y, labeled = rings(0)
    first = propagation.label_spreading(x, labeled, y[labeled], num_classes=2)

    def no_files(*args, **kwargs):
        raise AssertionError("label spreading opened a file")
    monkeypatch.setattr("builtins.open", no_files)
    monkeypatch.setattr(np, "load", no_files)
    assert np.array_equal(propagation.label_spreading(x, labeled, y[labeled], num_classes=2), first)


@pytest.mark.parametrize("key,value", [("propagation", "label-propagation"), ("propagation_k", 0),
                                       ("propagation_alpha", 1.0), ("propagation_confidence", 1.5)])
def test_bad_settings_are_refused_by_the_config(key, value):
    with pytest.raises(config_mod.ConfigError, match=key):
        config_mod.from_dict({"name": "x", "student": {key: value}})


# Every image a label reaches is kept (confidence 0): a handful of labels on the tiny pool leave few above 0.9.
PROPAGATING = ("steps = 20", 'steps = 20\npropagation = "label-spreading"\npropagation_k = 5\n'
               'propagation_confidence = 0.0')
SCATTERING = ("batch_size = 16\n\n[aggregator]", 'batch_size = 16\nfeatures = "scattering"\n\n[aggregator]')
SPACES = {  # the pool's feature space: its pixels; the run's public extractor; private-knn's projected pool
    "pixels": (),
    "extractor": (SCATTERING,),
    "private-knn": (SCATTERING, ('mechanism = "confident-gnmax"', 'mechanism = "private-knn"\nknn_k = 10'),
                    ("threshold = 4", "threshold = 10"), ("sigma1 = 1.0", "sigma1 = 12.0"),
                    ("sigma2 = 1.0", "sigma2 = 8.0")),
}
SLOW = {"extractor", "private-knn"}  # a few minutes each on a busy 2-core machine
# What the student stage may never read: votes, the ledger, anything fitted on or holding private records.
PRIVATE = ("votes", "ledger", "neighbours", "teachers/part-", "teachers/heads-", "teachers/knn-private",
           "teachers/private-features-", "teachers/checkpoint")


@pytest.mark.parametrize("space", [pytest.param(s, marks=pytest.mark.slow) if s in SLOW else s for s in SPACES])
def test_the_student_trains_on_spread_labels_end_to_end(tmp_path, fake_data_root, monkeypatch, space):
    pipeline = tmp_path / "spread.toml"
    pipeline.write_text(edit_pipeline(textwrap.dedent(TINY_PIPELINE), PROPAGATING, *SPACES[space]))
    args = ["--run-dir", str(tmp_path / "run"), "--data-root", str(fake_data_root), "-q"]
    result = CliRunner().invoke(main, ["run", str(pipeline), "--until", "aggregate", *args])
    assert result.exit_code == 0, result.output
    read = []  # every run-directory file the student stage asks for
    for method in ("verified", "file"):
        original = getattr(RunDir, method)
        monkeypatch.setattr(RunDir, method, lambda self, name, _o=original: read.append(name) or _o(self, name))
    result = CliRunner().invoke(main, ["run", str(pipeline), *args])
    assert result.exit_code == 0, result.output
    assert not [n for n in read if n.startswith(PRIVATE)] and "labels.npz" in read
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    record = manifest["stages"]["train-student"]
    assert 0 < record["propagated"] <= record["unlabeled"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["student_accuracy"] is not None
    statement = json.loads((tmp_path / "run-release" / "statement.json").read_text())
    assert statement["post_processing"] == ["label-spreading on a kNN graph of the public pool"]


def test_propagation_without_scikit_learn_is_one_line_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # as if it were not installed
    pipeline = tmp_path / "spread.toml"
    pipeline.write_text(edit_pipeline(textwrap.dedent(TINY_PIPELINE), PROPAGATING))
    result = CliRunner().invoke(main, ["run", str(pipeline), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "pip install 'pate[propagation]'" in result.output and not (tmp_path / "run").exists()
