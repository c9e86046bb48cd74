"""Private-kNN from `pate run`: the statement is the per-record budget, every record stays within
its own budget (checked directly from the ledger), per-record budgets, resume after SIGKILL, the
audit's per-record view, and bad settings refused before anything is written."""
from __future__ import annotations

import json
import shutil
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from pate.cli import main
from pate.privacy import individual, rdp
from pate.aggregation import protocol

from ..conftest import TINY_PIPELINE, edit_pipeline
from ..faults_helpers import Stage

KNN_PIPELINE = edit_pipeline(
    textwrap.dedent(TINY_PIPELINE), ('name = "tiny"', 'name = "tiny-knn"'),
    ('mechanism = "confident-gnmax"', 'mechanism = "private-knn"\nknn_k = 10\nknn_dim = 32'),
    ("threshold = 4", "threshold = 10"), ("sigma1 = 1.0", "sigma1 = 12.0"), ("sigma2 = 1.0", "sigma2 = 8.0"),
    ("batch_size = 16\n\n[aggregator]", 'batch_size = 16\nfeatures = "scattering"\n\n[aggregator]'))


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def voted(tmp_path_factory, fake_data_root):
    """A run directory after partition, train-teachers (the feature space) and vote (neighbourhoods)."""
    root = tmp_path_factory.mktemp("knn")
    pipeline = root / "knn.toml"
    pipeline.write_text(KNN_PIPELINE)
    result = invoke("run", pipeline, "--run-dir", root / "voted", "--data-root", fake_data_root, "--until", "vote",
                    "-q")
    assert result.exit_code == 0, result.output
    return root


def _copy(voted, tmp_path, pipeline_text: str = KNN_PIPELINE):
    run_dir = tmp_path / "run"
    shutil.copytree(voted / "voted", run_dir)
    pipeline = tmp_path / "knn.toml"
    pipeline.write_text(pipeline_text)
    return pipeline, run_dir


def _spent_directly(run_dir, budget_epsilon, sigma1=12.0, sigma2=8.0):
    """Each record's Gaussian spend, recomputed from neighbours.npz and the ledger's answered flags
    with plain loops, independently of pate.privacy.individual."""
    hoods = np.load(run_dir / "neighbours.npz")
    lines = (run_dir / "ledger.jsonl").read_text().splitlines()[1:]
    answered = [json.loads(line)["answered"] for line in lines]
    c1, c2 = 1 / (2 * sigma1 ** 2), 1 / (2 * sigma2 ** 2)
    budget = [individual.gaussian_budget(float(e), rdp.DEFAULT_ORDERS, 1e-4) for e in budget_epsilon]
    spent = [0.0] * len(budget)
    for t, was_answered in enumerate(answered):
        for i in hoods["members"][hoods["indptr"][t]:hoods["indptr"][t + 1]]:
            if spent[i] + c1 + c2 <= budget[i] * (1 + 1e-12):
                spent[i] += c1 + (c2 if was_answered else 0.0)
    return np.array(spent), np.array(budget)


def test_the_statement_is_the_record_budget_and_no_record_passes_it(voted, tmp_path, fake_data_root):
    pipeline, run_dir = _copy(voted, tmp_path)
    result = invoke("run", pipeline, "--run-dir", run_dir, "--data-root", fake_data_root, "-q")
    assert result.exit_code == 0, result.output
    public = json.loads((tmp_path / "run-release" / "statement.json").read_text())["privacy"]
    assert public["guarantee"]["accountant"] == "individual-renyi-filter"
    assert 0.99 < public["guarantee"]["epsilon"] <= 1.0 and public["guarantee"]["delta"] == 1e-4
    assert [g["budget_epsilon"] for g in public["per_budget_level"]] == [1.0]
    assert "teachers" not in public["settings"] and public["settings"]["knn_k"] == 10
    assert public["queries_answered"] > 0
    kept = int((np.load(run_dir / "partition.npz")["teacher_of"] >= 0).sum())  # about 600: each drawn by its hash
    spent, budget = _spent_directly(run_dir, np.ones(kept))
    assert (spent <= budget * (1 + 1e-12)).all() and (spent > 0).any()
    private = json.loads((run_dir / "privacy.json").read_text())["private"]
    assert private["records_retired"] == int((spent + 1 / 288 + 1 / 128 > budget * (1 + 1e-12)).sum())
    audit = invoke("audit", run_dir)
    assert audit.exit_code == 0, audit.output
    assert "most charged records" in audit.output and f"retired {private['records_retired']}" in audit.output
    assert "PRIVATE" in audit.output.splitlines()[0]


def test_per_record_budgets(tmp_path, fake_data_root):
    budgets = tmp_path / "budgets.csv"
    budgets.write_text("record,epsilon\n0,1\n")
    pipeline = tmp_path / "knn.toml"
    pipeline.write_text(KNN_PIPELINE.replace("[privacy]\n", '[privacy]\nrecord_budgets = "budgets.csv"\n'))
    base = ["--run-dir", tmp_path / "run", "--data-root", fake_data_root, "-q"]
    assert invoke("partition", pipeline, *base).exit_code == 0
    records = np.flatnonzero(np.load(tmp_path / "run" / "partition.npz")["teacher_of"] >= 0)
    low, high = records[:300], records[300:310]  # budgets are read when aggregation begins
    left_out = np.flatnonzero(np.load(tmp_path / "run" / "partition.npz")["teacher_of"] < 0)[0]
    budgets.write_text("record,epsilon\n" + "".join(f"{i},0.25\n" for i in low) + "".join(f"{i},3\n" for i in high)
                       + f"{left_out},2\n")  # a level no record of this run holds: published all the same
    result = invoke("run", pipeline, *base, "--until", "aggregate")
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "run"
    public = json.loads((run_dir / "privacy.json").read_text())["public"]
    assert [g["budget_epsilon"] for g in public["per_budget_level"]] == [0.25, 1.0, 2.0, 3.0]  # the file's levels
    assert 2.9 < public["guarantee"]["epsilon"] <= 3.0  # the guarantee that holds for every record: the largest
    eps = np.ones(len(records))
    eps[:300], eps[300:310] = 0.25, 3.0
    spent, budget = _spent_directly(run_dir, eps)
    assert (spent <= budget * (1 + 1e-12)).all()
    assert spent[:300].max() <= individual.gaussian_budget(0.25, rdp.DEFAULT_ORDERS, 1e-4) * (1 + 1e-12)
    assert spent[:300].max() < spent[300:].max()  # the low-budget records retired first


def test_resume_after_sigkill_equals_an_uninterrupted_run(voted, tmp_path, fake_data_root, monkeypatch):
    monkeypatch.setattr(protocol, "CHUNK", 4)  # several chunks for a kill to land between (the child: fault)
    _, whole = _copy(voted, tmp_path / "whole")
    pipeline, run_dir = _copy(voted, tmp_path / "killed")
    args = ["aggregate", pipeline, "--run-dir", whole, "--data-root", fake_data_root, "-q"]
    assert invoke(*args).exit_code == 0
    ledger = run_dir / "ledger.jsonl"
    args[3] = run_dir
    landed = False
    for target in (6, 3, 2):  # ledger lines (header + queries) before the kill
        process = Stage(args, tmp_path / "killed.log", fault=("chunk", 4))
        landed = process.kill_when(lambda: ledger.exists() and len(ledger.read_text().splitlines()) >= target)
        if landed:
            break
        shutil.rmtree(run_dir)
        _copy(voted, tmp_path / "killed")
    assert landed, "the aggregation finished before any kill"
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert ledger.read_text() != "" and len(ledger.read_text().splitlines()) == 41
    with np.load(run_dir / "labels.npz") as a, np.load(whole / "labels.npz") as b:
        np.testing.assert_array_equal(a["label"], b["label"])
        np.testing.assert_array_equal(a["query_index"], b["query_index"])
    strip = [{k: v for k, v in json.loads(line).items() if k != "mac"} for line in ledger.read_text().splitlines()[1:]]
    expected = [{k: v for k, v in json.loads(line).items() if k != "mac"}
                for line in (whole / "ledger.jsonl").read_text().splitlines()[1:]]
    assert strip == expected


@pytest.mark.parametrize("old, new, key", [
    ("knn_k = 10", "knn_k = 100000", "knn_k"),
    ("knn_k = 10", "knn_k = 0", "knn_k"),
    ("[privacy]\n", "[privacy]\nrecord_epsilon = 0.0\n", "record_epsilon"),
    ('features = "scattering"\n', "", "features"),
    ("[privacy]\n", '[privacy]\nrecord_budgets = "budgets.csv"\n', "budgets.csv line 2"),
])
def test_bad_settings_are_one_line_and_nothing_written(tmp_path, fake_data_root, old, new, key):
    (tmp_path / "budgets.csv").write_text("record,epsilon\n5,-1\n")
    pipeline = tmp_path / "knn.toml"
    pipeline.write_text(edit_pipeline(KNN_PIPELINE, (old, new)))
    result = invoke("run", pipeline, "--run-dir", tmp_path / "run", "--data-root", fake_data_root, "-q")
    assert result.exit_code == 2, result.output
    assert key in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
