"""Reverse-kNN from `pate run`: every anchor labelled in one release whose statement is the
Gaussian mechanism of sensitivity √k (whatever the number of anchors), one spend-log entry for each
record charged that curve, integer noisy vectors in the ledger, the plan and the audit, the released
student taking raw images, and bad settings refused in one line before anything is written."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pate.cli import main
from pate.io import load_checkpoint
from pate.privacy import accounting, rdp
from pate.privacy.mechanisms import ReverseKNN
from pate.run import spend_log
from pate.run.artifacts import KNN_PRIVATE

from ..conftest import TINY_PIPELINE, edit_pipeline

RKNN_PIPELINE = edit_pipeline(
    textwrap.dedent(TINY_PIPELINE), ('name = "tiny"', 'name = "tiny-rknn"'),
    ('mechanism = "confident-gnmax"', 'mechanism = "reverse-knn"\nknn_k = 5\nknn_dim = 32\nsoft_labels = true'),
    ("max_queries = 40", "max_queries = 300"), ("sigma2 = 1.0", "sigma2 = 4.0"),
    ("batch_size = 16\n\n[aggregator]", 'batch_size = 16\nfeatures = "scattering"\n\n[aggregator]'))


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def finished(tmp_path_factory, fake_data_root):
    root = tmp_path_factory.mktemp("rknn")
    pipeline = root / "rknn.toml"
    pipeline.write_text(RKNN_PIPELINE)
    result = invoke("run", pipeline, "--run-dir", root / "run", "--data-root", fake_data_root, "-q")
    assert result.exit_code == 0, result.output
    return root


def test_one_release_labels_every_anchor_at_the_gaussian_cost(finished):
    run_dir = finished / "run"
    public = json.loads((finished / "run-release" / "statement.json").read_text())["privacy"]
    settings = accounting.Settings(mechanism=ReverseKNN(sigma2=4.0, knn_k=5), num_teachers=6, num_classes=10,
                                   max_queries=300, delta=1e-4, orders=tuple(rdp.DEFAULT_ORDERS))
    assert public["guarantee"]["epsilon"] == pytest.approx(accounting.guarantee(settings).epsilon, rel=1e-12)
    assert public["mechanism"] == "reverse-knn" and "teachers" not in public["settings"]
    assert public["queries_asked"] == public["queries_answered"] == 300
    votes = np.load(run_dir / "votes.npz")
    records = int((np.load(run_dir / "partition.npz")["teacher_of"] >= 0).sum())
    assert votes["votes"].sum() == 5 * records  # each record of the run voted exactly k times
    lines = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()[1:]]
    noisy = np.array([line["noisy"] for line in lines])
    assert len(lines) == 300 and np.array_equal(noisy, np.round(noisy))  # integer noise, every anchor
    assert np.array_equal(noisy.argmax(1), [line["label"] for line in lines])
    labels = np.load(run_dir / "labels.npz")
    assert len(labels["label"]) == 300 and "soft" in labels
    # the spend log: one aggregation entry, each charged record at the release's whole curve
    entries = [e for e in spend_log.entries() if e.run_dir == str(run_dir.resolve())]
    assert len(entries) == 1 and entries[0].mechanism == "reverse-knn"
    assert np.allclose(entries[0].curve(), ReverseKNN(sigma2=4.0, knn_k=5).release_rdp(spend_log.spend.ORDERS))


def test_audit_plan_and_the_released_student(finished, tmp_path, fake_data_root):
    run_dir = finished / "run"
    audit = invoke("audit", run_dir)
    assert audit.exit_code == 0 and "PRIVATE" in audit.output.splitlines()[0], audit.output
    detail = invoke("audit", run_dir, "--query", 3)
    assert detail.exit_code == 0 and "one release over every anchor" in detail.output
    plan = invoke("plan", finished / "rknn.toml", "--target-epsilon", 1.0, "--format", "json")
    assert plan.exit_code == 0, plan.output
    proposed = json.loads(plan.output)["proposed"]["sigma2"]
    settings = accounting.Settings(mechanism=ReverseKNN(sigma2=proposed, knn_k=5), num_teachers=6, num_classes=10,
                                   max_queries=300, delta=1e-4, orders=tuple(rdp.DEFAULT_ORDERS))
    assert accounting.guarantee(settings).epsilon <= 1.0
    import dataclasses
    tighter = dataclasses.replace(settings, mechanism=ReverseKNN(sigma2=proposed - 0.02, knn_k=5))
    assert accounting.guarantee(tighter).epsilon > 1.0
    from PIL import Image
    import pate
    dataset = pate.data.load(pate.load_run(run_dir).config.data, fake_data_root, quiet=True)
    image = tmp_path / "raw.png"
    Image.fromarray(dataset.public_x[0, 0]).save(image)
    result = invoke("predict", finished / "run-release" / "student.onnx", image, "-q")
    assert result.exit_code == 0 and "raw.png" in result.output, result.output


@pytest.mark.parametrize("old, new, key", [
    ("knn_k = 5", "knn_k = 301", "knn_k"),
    ("[privacy]\n", "[privacy]\nrecord_epsilon = 2.0\n", "record_epsilon"),
    ('features = "scattering"\n', "", "features"),
    ("soft_labels = true", "soft_labels = true\nepsilon_budget = 1.0", "epsilon_budget"),
    ("[privacy]\n", "[privacy]\ndata_dependent_release = true\n", "data_dependent_release"),
])
def test_bad_settings_are_one_line_and_nothing_written(tmp_path, fake_data_root, old, new, key):
    pipeline = tmp_path / "rknn.toml"
    pipeline.write_text(edit_pipeline(RKNN_PIPELINE, (old, new)))
    result = invoke("run", pipeline, "--run-dir", tmp_path / "run", "--data-root", fake_data_root, "-q")
    assert result.exit_code == 2, result.output
    assert key in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_keep_widest_trains_on_the_surest_labels_only(finished, tmp_path, fake_data_root):
    from pate.stages.train_student import widest
    soft = np.array([[5.0, 4.0], [9.0, 0.0], [np.nan, np.nan], [3.0, 3.0], [0.0, 7.0]])
    assert widest(soft, 0.6).tolist() == [1, 2, 4]  # margins 1, 9, (a student's answer), 0, 7
    assert widest(soft, 0.01).tolist() == [2]
    pipeline = tmp_path / "rknn.toml"
    pipeline.write_text(edit_pipeline(RKNN_PIPELINE, ("steps = 20\n", "steps = 20\nkeep_widest = 0.5\n")))
    import shutil
    shutil.copytree(finished / "run", tmp_path / "run")
    result = invoke("run", pipeline, "--run-dir", tmp_path / "run", "--data-root", fake_data_root, "-q")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["train-student"]
    assert record["labeled"] == 150 and record["unlabeled"] == 150
    refused = edit_pipeline(RKNN_PIPELINE, ("steps = 20\n", "steps = 20\nkeep_widest = 0.5\n"),
                            ("soft_labels = true", "soft_labels = false"))
    pipeline.write_text(refused)
    result = invoke("run", pipeline, "--run-dir", tmp_path / "other", "--data-root", fake_data_root, "-q")
    assert result.exit_code == 2 and "keep_widest" in result.output and len(result.output.strip().splitlines()) == 1


def _arrays(root, sizes=(("p", 600, 1), ("q", 300, 2), ("t", 100, 3))):
    """The tiny pipeline's data as .npz arrays (a private set whose size is its own, not MNIST's), one
    bright square per class as in conftest's fake MNIST."""
    for name, n, seed in sizes:
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = np.zeros((n, 28, 28), np.uint8)
        rows, cols = (labels // 5) * 12 + 4, (labels % 5) * 5 + 2
        for dr in range(4):
            for dc in range(4):
                images[np.arange(n), rows + dr, cols + dc] = 255
        images = np.clip(images.astype(np.int16) + rng.integers(0, 40, images.shape), 0, 255).astype(np.uint8)
        ids = {"ids": np.array([f"{name}-{i}" for i in range(n)])} if name == "p" else {}
        np.savez(root / f"{name}.npz", images=images, labels=labels, **ids)


DPSGD_PIPELINE = edit_pipeline(
    RKNN_PIPELINE, ('dataset = "mnist"\nprivate_size = 600\n',
                    'source = "arrays"\nprivate_file = "p.npz"\npublic_file = "q.npz"\ntest_file = "t.npz"\n'),
    ('features = "scattering"', 'features = "scattering"\ndpsgd_noise = 1.5\ndpsgd_batch = 150\ndpsgd_epochs = 2'))


def _composed_epsilon(q: float, steps: int) -> float:
    """ε at δ 1e-4 of the votes (k 5, σ2 4: αk/(2σ²)) and T steps of the subsampled Gaussian (z 1.5), by RDP."""
    from dp_accounting.rdp.rdp_privacy_accountant import _compute_rdp_poisson_subsampled_gaussian
    orders = rdp.DEFAULT_ORDERS
    curve = orders * 5 / (2 * 4.0 ** 2) + steps * np.asarray(_compute_rdp_poisson_subsampled_gaussian(q, 1.5, orders))
    return accounting.epsilon(curve, orders, 1e-4, "improved")[0]


def _pld_epsilon(k: int) -> float:
    """The same composition (k votes) by its privacy-loss distribution: checked against values derived
    independently in tests/privacy/test_dpsgd_pld.py."""
    from pate.privacy.accounting import DpsgdSettings
    return accounting.pld_epsilon(ReverseKNN(sigma2=4.0, knn_k=k), 300, 1e-4, DpsgdSettings(1.5, 1 / 4, 8))


def _guarantee(k: int) -> float:
    """What DPSGD_PIPELINE with k votes a record publishes: the least of the RDP and PLD bounds."""
    return min(_rdp_epsilon(k), _pld_epsilon(k))


def test_a_dpsgd_teacher_on_public_axes_costs_what_it_costs_on_every_coefficient(tmp_path):
    """dpsgd_dim projects on the public pool's axes: the same steps, rate and noise, so the same
    guarantee; the teacher still labels every pool image (its probabilities beside the votes)."""
    _arrays(tmp_path)
    pipeline = tmp_path / "rknn.toml"
    pipeline.write_text(edit_pipeline(DPSGD_PIPELINE, ("dpsgd_noise = 1.5", "dpsgd_noise = 1.5\ndpsgd_dim = 16")))
    result = invoke("run", pipeline, "--run-dir", tmp_path / "run", "-q")
    assert result.exit_code == 0, result.output
    public = json.loads((tmp_path / "run-release" / "statement.json").read_text())["privacy"]
    assert public["guarantee"]["epsilon"] == pytest.approx(_guarantee(5), rel=1e-9)
    prior = np.load(tmp_path / "run" / "labels.npz")["prior"]
    assert prior.shape == (300, 10) and np.allclose(prior.sum(axis=1), 1.0, atol=1e-3)


def test_a_dpsgd_teacher_beside_the_votes_is_composed_in_one_accountant(tmp_path):
    """The statement's ε is the least of the RDP composition of the votes (αk/(2σ²)) and T steps of
    the Poisson-subsampled Gaussian at the sampling rate of 1/ceil(N/B), recomputed here, and their
    PLD composition (here the smaller); the spend log charges the RDP curve (runs compose in RDP);
    the teacher's probabilities are released on a grid, beside the labels."""
    from dp_accounting.rdp.rdp_privacy_accountant import _compute_rdp_poisson_subsampled_gaussian
    from pate.privacy import spend
    _arrays(tmp_path)
    pipeline = tmp_path / "rknn.toml"
    pipeline.write_text(DPSGD_PIPELINE)
    result = invoke("run", pipeline, "--run-dir", tmp_path / "run", "-q")
    assert result.exit_code == 0, result.output
    public = json.loads((tmp_path / "run-release" / "statement.json").read_text())["privacy"]
    q, steps = 1 / 4, 2 * 4  # N = 600, B = 150: four batches an epoch
    assert public["dpsgd_teacher"]["sample_rate"] == q and public["dpsgd_teacher"]["steps"] == steps
    assert _pld_epsilon(5) < _composed_epsilon(q, steps) == pytest.approx(_rdp_epsilon(5), rel=1e-12)
    assert public["guarantee"]["epsilon"] == pytest.approx(_pld_epsilon(5), rel=1e-9)
    assert public["guarantee"]["accountant"] == "pld"
    orders = rdp.DEFAULT_ORDERS
    votes_alone = accounting.guarantee(accounting.Settings(
        mechanism=ReverseKNN(sigma2=4.0, knn_k=5), num_teachers=6, num_classes=10, max_queries=300, delta=1e-4,
        orders=tuple(orders))).epsilon
    assert public["guarantee"]["epsilon"] > votes_alone
    entry = [e for e in spend_log.entries() if e.run_dir == str((tmp_path / "run").resolve())][0]
    assert np.allclose(entry.curve(), spend.ORDERS * 5 / 32 + steps * np.asarray(
        _compute_rdp_poisson_subsampled_gaussian(q, 1.5, spend.ORDERS)))
    labels = np.load(tmp_path / "run" / "labels.npz")
    kept = np.load(tmp_path / "run" / "teachers" / "dpsgd-pool.npz")
    prior = labels["prior"]
    assert prior.shape == (300, 10) and np.array_equal(prior, np.round(prior * 2 ** 16) / 2 ** 16)
    rows = [int(np.flatnonzero(kept["pool_index"] == i)[0]) for i in labels["query_index"]]
    assert np.allclose(prior, kept["probabilities"][rows], atol=2 ** -16)


def test_no_votes_gives_the_whole_budget_to_the_dpsgd_teacher(tmp_path):
    """knn_k = 0: no record votes, so the statement is T steps of the subsampled Gaussian alone
    (its RDP recomputed here, its PLD the smaller), the spend log charges that curve, no noise is drawn for the anchors, each
    label is the released prior's most probable class, and the student learns the prior itself."""
    from dp_accounting.rdp.rdp_privacy_accountant import _compute_rdp_poisson_subsampled_gaussian
    from pate.privacy import spend
    from pate.stages.train_student import released_targets
    from pate.config import load as load_config
    from pate.run.artifacts import mechanism
    _arrays(tmp_path)
    pipeline = tmp_path / "rknn.toml"
    pipeline.write_text(edit_pipeline(DPSGD_PIPELINE, ("knn_k = 5", "knn_k = 0"), ("soft_labels = true", "")))
    result = invoke("run", pipeline, "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "no votes cast" in result.output and "Traceback" not in result.output
    assert "no private record embedded" in result.output  # none votes, so none is read beside the teacher
    space = load_checkpoint(tmp_path / "run" / KNN_PRIVATE)
    assert space["features"].shape == (600, 0) and len(space["records"]) == 600
    public = json.loads((tmp_path / "run-release" / "statement.json").read_text())["privacy"]
    q, steps, orders = 1 / 4, 8, rdp.DEFAULT_ORDERS
    alone = steps * np.asarray(_compute_rdp_poisson_subsampled_gaussian(q, 1.5, orders))
    assert accounting.epsilon(alone, orders, 1e-4, "improved")[0] == pytest.approx(_rdp_epsilon(0), rel=1e-12)
    assert public["guarantee"]["epsilon"] == pytest.approx(_guarantee(0), rel=1e-9) and _guarantee(0) < _rdp_epsilon(0)
    entry = [e for e in spend_log.entries() if e.run_dir == str((tmp_path / "run").resolve())][0]
    assert np.allclose(entry.curve(), steps * np.asarray(_compute_rdp_poisson_subsampled_gaussian(q, 1.5, spend.ORDERS)))
    assert not np.load(tmp_path / "run" / "votes.npz")["votes"].any()
    labels = np.load(tmp_path / "run" / "labels.npz")
    assert "soft" not in labels and len(labels["label"]) == 300
    assert np.array_equal(labels["label"], labels["prior"].argmax(axis=1))
    config = load_config(pipeline)
    targets, margins = released_targets(dict(labels), config.student, mechanism(config))
    assert np.allclose(targets.numpy(), labels["prior"] / labels["prior"].sum(1, keepdims=True), atol=1e-5)
    released = np.load(tmp_path / "run-release" / "labels.npz")  # what the student learned from is public
    assert np.array_equal(released["prior"], labels["prior"]) and "soft" not in released
    assert "no record voted" in (tmp_path / "run-release" / "model-card.md").read_text()
    audit = invoke("audit", tmp_path / "run", "--query", 0)
    assert audit.exit_code == 0 and "no votes" in audit.output, audit.output
    fashion = Path(__file__).resolve().parents[2] / "pipelines" / "fashion-mnist-rknn.toml"
    pipeline.write_text(edit_pipeline(fashion.read_text(), ("knn_k = 40", "knn_k = 0"), ("soft_labels = true", "")))
    plan = invoke("plan", pipeline, "--target-epsilon", 2.0)
    assert plan.exit_code == 0 and "votes: none" in plan.output, plan.output


def _rdp_epsilon(k: int) -> float:
    """ε at δ 1e-4 of DPSGD_PIPELINE with k votes per record: k/(2σ2²) per order plus the teacher."""
    from dp_accounting.rdp.rdp_privacy_accountant import _compute_rdp_poisson_subsampled_gaussian
    orders = rdp.DEFAULT_ORDERS
    curve = orders * k / (2 * 4.0 ** 2) + 8 * np.asarray(_compute_rdp_poisson_subsampled_gaussian(1 / 4, 1.5, orders))
    return accounting.epsilon(curve, orders, 1e-4, "improved")[0]


def test_per_record_budgets_vote_for_fewer_anchors(tmp_path):
    """A record with a budget below the run's guarantee votes for its first k_b nearest anchors, k_b
    the most whose composed guarantee (the least of its RDP, recomputed here, k/(2σ²) per order plus the
    DP-SGD teacher, and its PLD) fits the budget; a budget above the guarantee keeps knn_k; the statement gives each level's
    anchors and guarantee; a budgets file changed after the vote is refused before anything is spent."""
    _arrays(tmp_path)
    budget = tmp_path / "budgets.csv"
    budget.write_text("record,epsilon\n" + "".join(f"p-{i},2.7\n" for i in range(0, 600, 2)) + "p-1,50\n")
    expected = max(k for k in range(6) if _guarantee(k) <= 2.7)
    assert expected == 2 and _guarantee(3) > 2.7  # the level sits between two and three votes
    pipeline = tmp_path / "rknn.toml"
    pipeline.write_text(edit_pipeline(DPSGD_PIPELINE, ("[privacy]\n", f"[privacy]\nrecord_budgets = '{budget}'\n")))
    for stage in ("partition", "train-teachers", "vote"):
        assert invoke(stage, pipeline, "--run-dir", tmp_path / "run", "-q").exit_code == 0
    kept = np.load(tmp_path / "run" / "record_budgets.npz")
    low = kept["epsilon"] == 2.7
    assert low.sum() == 300 and np.array_equal(kept["anchors"], np.where(low, 2, 5))
    votes = np.load(tmp_path / "run" / "votes.npz")["votes"]
    assert votes.sum() == 300 * 2 + 300 * 5
    budget.write_text(budget.read_text() + "p-3,2.7\n")
    changed = invoke("aggregate", pipeline, "--run-dir", tmp_path / "run", "-q")
    assert changed.exit_code != 0 and "record_budgets changed" in changed.output, changed.output
    assert not (tmp_path / "run" / "ledger.jsonl").exists() and not (tmp_path / "run" / "labels.npz").exists()
    budget.write_text(budget.read_text().replace("p-3,2.7\n", ""))
    result = invoke("run", pipeline, "--run-dir", tmp_path / "run", "-q")
    assert result.exit_code == 0, result.output
    public = json.loads((tmp_path / "run-release" / "statement.json").read_text())["privacy"]
    assert public["guarantee"]["epsilon"] == pytest.approx(_guarantee(5), rel=1e-9)
    levels = public["per_budget_level"]
    assert [(lv["budget_epsilon"], lv["anchors"]) for lv in levels] == [(2.7, 2), (50.0, 5)]
    assert levels[0]["epsilon"] == pytest.approx(_guarantee(2), rel=1e-9) and levels[0]["epsilon"] <= 2.7


def test_a_budget_below_one_vote_casts_none_without_a_dpsgd_teacher(tmp_path, fake_data_root):
    """Without a DP-SGD teacher a level below one vote's cost gives k_b = 0: the record votes for no
    anchor, its guarantee is 0, and the plan, the run and the statement say so (no accountant is
    asked about an empty release)."""
    (tmp_path / "budgets.csv").write_text("record,epsilon\n3,0.01\n")
    pipeline = tmp_path / "rknn.toml"
    pipeline.write_text(edit_pipeline(RKNN_PIPELINE, ("[privacy]\n", "[privacy]\nrecord_budgets = 'budgets.csv'\n")))
    plan = invoke("plan", pipeline)
    assert plan.exit_code == 0 and "records with budget 0.01: 0 anchors each, guarantee epsilon 0.0000" in plan.output, \
        plan.output
    result = invoke("run", pipeline, "--run-dir", tmp_path / "run", "--data-root", fake_data_root, "-q")
    assert result.exit_code == 0, result.output
    levels = json.loads((tmp_path / "run-release" / "statement.json").read_text())["privacy"]["per_budget_level"]
    assert levels == [{"budget_epsilon": 0.01, "anchors": 0, "epsilon": 0.0, "delta": 1e-4}]


def test_a_budget_below_the_dpsgd_teachers_own_cost_is_refused(tmp_path):
    _arrays(tmp_path)
    (tmp_path / "budgets.csv").write_text("record,epsilon\np-0,2.2\n")  # the teacher alone: 2.297
    pipeline = tmp_path / "rknn.toml"
    pipeline.write_text(edit_pipeline(DPSGD_PIPELINE, ("[privacy]\n", "[privacy]\nrecord_budgets = 'budgets.csv'\n")))
    result = invoke("run", pipeline, "--run-dir", tmp_path / "run", "-q")
    assert result.exit_code == 2 and "record_budgets" in result.output and "2.297" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
    assert _guarantee(0) > 2.2


def test_no_votes_without_a_dpsgd_teacher_or_with_soft_labels_is_refused(tmp_path):
    _arrays(tmp_path)
    pipeline = tmp_path / "rknn.toml"
    for edits, key in ([(("knn_k = 5", "knn_k = 0"),), "soft_labels"],  # no votes, no noisy vectors
                       [(("knn_k = 5", "knn_k = 0"), ("soft_labels = true", ""), ("dpsgd_noise = 1.5", "dpsgd_noise = 0")),
                        "knn_k"]):  # nothing would label the anchors
        pipeline.write_text(edit_pipeline(DPSGD_PIPELINE, *edits))
        result = invoke("run", pipeline, "--run-dir", tmp_path / "run", "-q")
        assert result.exit_code == 2 and key in result.output and len(result.output.strip().splitlines()) == 1, \
            result.output
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("old, new, key", [
    ('mechanism = "reverse-knn"', 'mechanism = "private-knn"', "dpsgd_noise"),
    ("[privacy]\n", "[privacy]\ntotal_budget = 8.0\n", "total_budget"),
    ("dpsgd_noise = 1.5", "dpsgd_noise = 0.1", "dpsgd_noise"),
    ("dpsgd_noise = 1.5", "dpsgd_noise = 1.5\ndpsgd_dim = 300", "dpsgd_dim"),  # 300 pool images span 299 axes
    ("dpsgd_noise = 1.5", "dpsgd_noise = 0\ndpsgd_dim = 64", "dpsgd_dim"),  # no DP-SGD teacher to project for
])
def test_dpsgd_refusals(tmp_path, old, new, key):
    _arrays(tmp_path)
    pipeline = tmp_path / "rknn.toml"
    pipeline.write_text(edit_pipeline(DPSGD_PIPELINE, (old, new)))
    result = invoke("run", pipeline, "--run-dir", tmp_path / "run", "-q")
    assert result.exit_code == 2 and key in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "run").exists()
    mnist = edit_pipeline(RKNN_PIPELINE, ('features = "scattering"', 'features = "scattering"\ndpsgd_noise = 1.5'))
    pipeline.write_text(mnist)  # a private_size draw: the number of records sampled from is not public
    result = invoke("run", pipeline, "--run-dir", tmp_path / "run", "-q")
    assert result.exit_code == 2 and "private_size" in result.output, result.output


def test_without_opacus_a_dpsgd_teacher_is_one_line_before_anything_is_written(tmp_path, monkeypatch):
    from pate.teachers import dpsgd

    def missing():
        raise ImportError(f"the DP-SGD teacher needs opacus: {dpsgd.INSTALL_HINT}")
    monkeypatch.setattr(dpsgd, "require_opacus", missing)
    _arrays(tmp_path)
    pipeline = tmp_path / "rknn.toml"
    pipeline.write_text(DPSGD_PIPELINE)
    result = invoke("run", pipeline, "--run-dir", tmp_path / "run", "-q")
    assert result.exit_code != 0 and ".[dpsgd]" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_the_shipped_pipelines_settings_follow_their_rules(tmp_path):
    """pipelines/*-rknn.toml and fashion-mnist-dpsgd-teacher.toml say their sigma2 and DP-SGD noise come from `pate plan --target-epsilon`:
    rerun the plan and compare, so the files cannot drift from the rule they state."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[2] / "pipelines"
    votes_only = tmp_path / "votes.toml"
    votes_only.write_text(edit_pipeline((root / "mnist-rknn.toml").read_text(), ("dpsgd_noise = 14.79", "dpsgd_noise = 0")))
    plan = json.loads(invoke("plan", votes_only, "--target-epsilon", 0.3, "--format", "json").output)
    assert plan["proposed"]["sigma2"] == plan["sigma2"] == 100.52
    mnist = invoke("plan", root / "mnist-rknn.toml", "--target-epsilon", 0.5, "--format", "json")
    assert mnist.exit_code == 0, mnist.output
    plan = json.loads(mnist.output)
    assert plan["proposed"]["dpsgd_noise"] == 14.79 and 0.49 < plan["guarantee"]["epsilon"] <= 0.5
    fashion = invoke("plan", root / "fashion-mnist-rknn.toml", "--target-epsilon", 2.0, "--format", "json")
    assert fashion.exit_code == 0, fashion.output
    plan = json.loads(fashion.output)
    assert 1.99 < plan["guarantee"]["epsilon"] <= 2.0 and plan["proposed"]["dpsgd_noise"] == 5.387
    assert 1.0 < plan["votes_alone_epsilon_rdp"] < 1.1 and plan["dpsgd_teacher"]["epsilon_alone"] < 2.0
    assert json.loads(invoke("plan", root / "fashion-mnist-rknn.toml", "--format", "json").output)["guarantee"][
        "epsilon"] == plan["guarantee"]["epsilon"]
    # The votes alone spend 1.09 by RDP but just under 1 by their PLD: a target of 1 is met (by a teacher
    # with almost no say), one below what the votes spend by either accountant is refused.
    tight = json.loads(invoke("plan", root / "fashion-mnist-rknn.toml", "--target-epsilon", 1.0, "--format", "json").output)
    assert tight["proposed"]["dpsgd_noise"] > 100
    with_it = tmp_path / "tight.toml"
    with_it.write_text(edit_pipeline((root / "fashion-mnist-rknn.toml").read_text(),
                                     ("dpsgd_noise = 5.387", f"dpsgd_noise = {tight['proposed']['dpsgd_noise']}")))
    assert 0.99 < json.loads(invoke("plan", with_it, "--format", "json").output)["guarantee"]["epsilon"] <= 1.0
    votes_only = invoke("plan", root / "fashion-mnist-rknn.toml", "--target-epsilon", 0.9)
    assert votes_only.exit_code != 0 and "out of reach" in votes_only.output and "beside" in votes_only.output
    teacher = json.loads(invoke("plan", root / "fashion-mnist-dpsgd-teacher.toml", "--target-epsilon", 2.0, "--format",
                                "json").output)
    assert teacher["knn_k"] == 0 and teacher["votes_alone_epsilon_rdp"] == 0.0
    assert teacher["proposed"]["dpsgd_noise"] == 4.591 and 1.99 < teacher["guarantee"]["epsilon"] <= 2.0
    assert teacher["guarantee"]["accountant"] == "pld"


def test_a_semi_supervised_student_when_every_pool_image_is_labelled(finished, tmp_path, fake_data_root):
    """Reverse-knn may label the whole pool: FixMatch then takes its consistency term on the labelled
    images themselves (it once stopped with a traceback: no unlabelled images)."""
    import shutil
    shutil.copytree(finished / "run", tmp_path / "run")
    pipeline = tmp_path / "rknn.toml"
    pipeline.write_text(edit_pipeline(RKNN_PIPELINE, ('method = "supervised"', 'method = "fixmatch"')))
    result = invoke("run", pipeline, "--run-dir", tmp_path / "run", "--data-root", fake_data_root, "-q")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["train-student"]
    assert record["labeled"] == 300 and record["unlabeled"] == 0


def test_the_prior_is_tempered_and_multiplied_as_stated():
    """released_targets: the product of softmax(noisy / T_soft) and the prior raised to 1/T_prior,
    renormalised, recomputed here by hand; T_prior 1 leaves the prior as released (up to its 1e-6
    floor); with no votes the tempered prior alone."""
    from types import SimpleNamespace
    from pate.stages.train_student import released_targets
    prior = np.array([[0.9, 0.1, 0.0], [0.25, 0.25, 0.5]])
    soft = np.array([[1.0, 3.0, 0.0], [0.0, 0.0, 2.0]])
    released = {"label": np.array([1, 2]), "soft": soft, "prior": prior}
    votes, no_votes = ReverseKNN(sigma2=2.0, knn_k=5), ReverseKNN(sigma2=2.0, knn_k=0)
    for temperature in (1.0, 2.0):
        cfg = SimpleNamespace(soft_temperature=0.0, prior_temperature=temperature)
        tempered = np.clip(prior, 1e-6, None) ** (1 / temperature)
        tempered /= tempered.sum(1, keepdims=True)
        noisy = np.exp(soft / 2.0) / np.exp(soft / 2.0).sum(1, keepdims=True)
        product = noisy * tempered / (noisy * tempered).sum(1, keepdims=True)
        targets, margins = released_targets(released, cfg, votes)
        assert np.allclose(targets.numpy(), product, atol=1e-6) and np.allclose(margins, product, atol=1e-6)
        alone, _ = released_targets(released, cfg, no_votes)
        assert np.allclose(alone.numpy(), tempered, atol=1e-6)
    assert np.allclose(alone.numpy()[0], [0.75, 0.25, 0.0], atol=1e-3)  # T 2: sqrt(0.9) : sqrt(0.1)
