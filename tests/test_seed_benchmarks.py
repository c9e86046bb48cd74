"""benchmarks/seeds.py and benchmarks/knn_choice.py: the pieces that decide what a results table
means (which seeds a copy of a pipeline gets; how a kNN setting is scored on the public pool)."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch

from pate import config as config_mod

from .conftest import benchmark_script

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


seeds = benchmark_script("seeds")
knn_choice = benchmark_script("knn_choice")


@pytest.mark.parametrize("pipeline", sorted((BENCHMARKS.parent / "pipelines").glob("*.toml")), ids=lambda p: p.stem)
def test_every_pipeline_copy_gets_every_seed_and_stays_valid(pipeline, tmp_path):
    copy = tmp_path / pipeline.name
    copy.write_text(seeds.with_seed(pipeline.read_text(), 7))
    raw = tomllib.loads(copy.read_text())
    assert (raw["data"]["split_seed"], raw["teachers"]["seed"], raw["student"]["seed"]) == (7, 7, 7)
    assert raw["name"] == tomllib.loads(pipeline.read_text())["name"] + "-seed7"
    original = tomllib.loads(pipeline.read_text())
    for table, values in original.items():  # nothing else changed
        if isinstance(values, dict):
            assert {k: v for k, v in raw[table].items() if k not in ("seed", "split_seed")} == \
                {k: v for k, v in values.items() if k not in ("seed", "split_seed")}
    if original["data"].get("source", "builtin") == "builtin":
        config_mod.load(copy)  # still a valid pipeline


def test_a_copy_written_elsewhere_names_the_same_files(tmp_path):
    """A pipeline naming its files relative to its own folder: the benchmarks' copies (in another
    folder) name them by absolute path, and the copy's settings are the pipeline's."""
    (tmp_path / "own").mkdir()
    pipeline = tmp_path / "own" / "p.toml"
    pipeline.write_text('name = "p"\n[data]\ndataset = "mnist"\n[aggregator]\nmechanism = "private-knn"\n'
                        '[teachers]\nfeatures = "scattering"\n[privacy]\nrecord_budgets = "budgets.csv"\n')
    copy = tmp_path / "elsewhere.toml"
    copy.write_text(seeds.with_seed(seeds.pipeline_text(pipeline), 2))
    raw = tomllib.loads(copy.read_text())
    assert raw["privacy"]["record_budgets"] == str((tmp_path / "own" / "budgets.csv").resolve())
    assert raw["name"] == "p-seed2" and raw["data"]["split_seed"] == 2
    loaded = config_mod.load(copy)
    assert loaded.aggregator == config_mod.load(pipeline).aggregator


def test_existing_seed_is_replaced_not_duplicated():
    text = 'name = "x"\n[data]\nsplit_seed = 3\ndataset = "mnist"\n[student]\nseed = 1\n'
    raw = tomllib.loads(seeds.with_seed(text, 5))
    assert raw["data"] == {"split_seed": 5, "dataset": "mnist"} and raw["student"] == {"seed": 5}
    assert raw["teachers"] == {"seed": 5}


def test_with_settings_replaces_adds_and_leaves_the_rest():
    text = 'name = "x"\n[data]\ndataset = "mnist"\n[student]\narch = "cnn-wide"\nsteps = 4500\n'
    raw = tomllib.loads(seeds.with_settings(text, {"student": {"arch": '"cnn-deep"', "method": '"fixmatch"'},
                                                   "privacy": {"delta": "1e-6"}}))
    assert raw["student"] == {"arch": "cnn-deep", "method": "fixmatch", "steps": 4500}
    assert raw["data"] == {"dataset": "mnist"} and raw["privacy"] == {"delta": 1e-6} and raw["name"] == "x"
    odd = seeds.with_settings(text, {"student": {"arch": r'"a\\1"'}})  # a value that looks like a backreference
    assert tomllib.loads(odd)["student"]["arch"] == "a\\1"


def test_leave_one_out_never_counts_the_point_itself():
    # Two tight clusters; point 0 is an outlier labelled 0 sitting inside cluster 1: its own label
    # must not vote for it, so it is misclassified, and every other point is right.
    space = torch.tensor([[10.0, 10.0], [0.0, 0.0], [0.1, 0.0], [0.0, 0.1],
                          [10.0, 10.1], [10.1, 10.0], [10.1, 10.1]])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    acc = knn_choice.loo_accuracy(space, labels, [3], num_classes=2)
    assert acc[3] == pytest.approx(6 / 7)


def test_noisy_scoring_limits():
    votes = torch.tensor([[10.0, 0.0], [0.0, 10.0], [6.0, 4.0]])
    labels = torch.tensor([0, 1, 0])
    # Next to no noise: every max count (scaled 10 -> 20, 12) passes threshold 11, each plurality is right.
    assert knn_choice.noisy_labels(votes, labels, 2.0, 1e-9, 1e-9, 11.0) == (1.0, 1.0)
    # A threshold above every scaled count: nothing answered.
    assert knn_choice.noisy_labels(votes, labels, 2.0, 1e-9, 1e-9, 21.0)[0] == 0.0
    # Only the unanimous two pass threshold 15.
    assert knn_choice.noisy_labels(votes, labels, 2.0, 1e-9, 1e-9, 15.0)[0] == pytest.approx(2 / 3)
    # Huge argmax noise: about half the answered labels right (two classes).
    answered, right = knn_choice.noisy_labels(votes, labels, 2.0, 1e-9, 1e6, 1.0, draws=4000)
    assert answered == 1.0 and abs(right - 0.5) < 0.03


def test_ablation_runs_as_a_file_and_sets_only_the_aggregator_settings(tmp_path):
    # Run as a file, `import benchmarks` must find this folder, not the `benchmarks` package
    # opacus installs at the top level of site-packages.
    import subprocess
    import sys
    done = subprocess.run([sys.executable, str(BENCHMARKS / "ablation.py"), "--help"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    ablation = benchmark_script("ablation")
    pipeline = BENCHMARKS.parent / "pipelines" / "mnist-knn.toml"
    original = tomllib.loads(pipeline.read_text())
    raw = tomllib.loads(ablation.with_aggregator(pipeline.read_text(), soft_labels=True,
                                                 query_selection="k-center"))
    assert raw["aggregator"] == {**original["aggregator"], "soft_labels": True, "query_selection": "k-center"}
    assert {t: v for t, v in raw.items() if t != "aggregator"} == \
        {t: v for t, v in original.items() if t != "aggregator"}
