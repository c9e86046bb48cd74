"""The aggregate stage: ledger before release, resume without repeats, budget, privacy.json."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from pate import config as config_mod
from pate.cli import main
from pate.privacy import ledger
from pate.privacy.accounting import data_independent_epsilon
from pate.run import RunError
from pate.stages import aggregate as stage
from pate.stages import open_run
from pate.stages.context import Context, mechanism, orders

from ..conftest import finish_votes_stage

K, M, Q = 30, 10, 700


def make_run(tmp_path, name="r", privacy=None, **aggregator):
    agg = {"mechanism": "confident-gnmax", "max_queries": Q, "threshold": 20.0, "sigma1": 6.0, "sigma2": 4.0,
           "seed": 11, **aggregator}
    cfg = config_mod.from_dict({"name": "agg", "data": {"private_size": 3000, "student_pool": Q, "test_size": 100},
                                "teachers": {"count": K}, "aggregator": agg, "privacy": {"delta": 1e-5, **(privacy or {})}})
    run = open_run(tmp_path / name, cfg)
    rng = np.random.default_rng(0)
    top = rng.integers(0, M, Q)
    consensus = rng.integers(5, K + 1, Q)
    votes = np.zeros((Q, M), np.int64)
    for i in range(Q):  # a mix of confident and split votes, each row summing to K
        votes[i, top[i]] = consensus[i]
        votes[i] += np.bincount(rng.integers(0, M, K - consensus[i]), minlength=M)
    finish_votes_stage(run, votes)
    return Context(run=run, quiet=True), votes


def ledger_records(run):
    return ledger.parse(run.file("ledger.jsonl").read_text())[1]


def test_labels_equal_what_the_ledger_released(tmp_path):
    ctx, votes = make_run(tmp_path)
    stage.run(ctx)
    records = ledger_records(ctx.run)
    assert [r.query for r in records] == list(range(Q))
    with np.load(ctx.run.file("labels.npz")) as labels:
        answered = [r for r in records if r.answered]
        assert labels["query_index"].tolist() == [r.public_index for r in answered]
        assert labels["label"].tolist() == [r.label for r in answered]
    report = json.loads(ctx.run.file("privacy.json").read_text())
    for key in ("mechanism", "delta", "epsilon", "order", "epsilon_classic", "epsilon_data_independent",
                "smooth_sensitivity", "queries_asked", "queries_answered", "seeded"):
        assert key in report
    assert report["seeded"] is True and "SEEDED" in report["warning"]
    assert report["queries_asked"] == Q and report["queries_answered"] == len(answered)
    assert 0 < report["epsilon"] <= report["epsilon_classic"] + 1e-9
    assert report["epsilon"] <= report["epsilon_data_independent"] + 1e-9
    assert set(report["smooth_sensitivity"]) >= {"epsilon", "noise_std", "beta", "released_epsilon"}


def test_crash_after_a_chunk_resumes_without_repeating(tmp_path, monkeypatch):
    ctx, _ = make_run(tmp_path, "crashed")
    real_append, calls = stage.append_durable, []

    def append_then_crash(path, data):
        calls.append(len(data))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")  # dies before the second chunk reaches the disk
        real_append(path, data)

    monkeypatch.setattr(stage, "append_durable", append_then_crash)
    with pytest.raises(KeyboardInterrupt):
        stage.run(ctx)
    monkeypatch.setattr(stage, "append_durable", real_append)
    assert len(ledger_records(ctx.run)) == stage.CHUNK
    assert not ctx.run.file("labels.npz").exists()  # nothing released yet
    stage.run(ctx)
    resumed = ledger_records(ctx.run)
    assert [r.query for r in resumed] == list(range(Q))  # each query exactly once

    fresh, _ = make_run(tmp_path, "fresh")
    stage.run(fresh)
    assert resumed == ledger_records(fresh.run)  # seeded: same as an uninterrupted run
    assert json.loads(ctx.run.file("privacy.json").read_text()) == json.loads(fresh.run.file("privacy.json").read_text())


def test_rerun_after_privacy_json_keeps_the_released_figure(tmp_path):
    ctx, _ = make_run(tmp_path)
    stage.run(ctx)
    first = ctx.run.file("privacy.json").read_text()
    ctx.run.update("aggregate", status="partial")  # as if the crash came just before 'done'
    stage.run(ctx)
    assert ctx.run.file("privacy.json").read_text() == first


def test_secure_noise_is_the_default_and_differs(tmp_path):
    a, _ = make_run(tmp_path, "a", seed=None)
    b, _ = make_run(tmp_path, "b", seed=None)
    stage.run(a)
    stage.run(b)
    report = json.loads(a.run.file("privacy.json").read_text())
    assert report["seeded"] is False and "warning" not in report
    assert [r.label for r in ledger_records(a.run)] != [r.label for r in ledger_records(b.run)]


def test_epsilon_budget_stops_answering(tmp_path):
    ctx, _ = make_run(tmp_path, epsilon_budget=3.0)
    stage.run(ctx)
    report = json.loads(ctx.run.file("privacy.json").read_text())
    assert report["stopped_by_budget"] and report["queries_asked"] < Q
    assert report["epsilon_data_independent"] <= 3.0
    # one more query, answered, would have broken the budget
    more = data_independent_epsilon(mechanism(ctx.config), report["queries_asked"] + 1,
                                    report["queries_answered"] + 1, orders=orders(ctx.config),
                                    delta=ctx.config.privacy.delta, conversion=ctx.config.privacy.conversion)
    assert more > 3.0


@pytest.mark.parametrize("mechanism", ["gnmax", "lnmax"])
def test_other_mechanisms_answer_everything(tmp_path, mechanism):
    ctx, votes = make_run(tmp_path, mechanism=mechanism, sigma2=2.0, gamma=0.5)
    stage.run(ctx)
    records = ledger_records(ctx.run)
    assert all(r.answered for r in records)
    agree = np.mean([r.label == r.top_label for r in records])
    assert agree > 0.8


def test_tampered_ledger_is_refused_and_nothing_changes(tmp_path, monkeypatch):
    ctx, _ = make_run(tmp_path)
    monkeypatch.setattr(stage, "append_durable", lambda path, data: (_ for _ in ()).throw(KeyboardInterrupt()))
    ctx.run.file("ledger.jsonl").unlink(missing_ok=True)
    with pytest.raises(KeyboardInterrupt):
        stage.run(ctx)
    monkeypatch.undo()
    path = ctx.run.file("ledger.jsonl")
    path.write_text(path.read_text().replace('"num_queries":700', '"num_queries":701'))
    before = path.read_bytes()
    with pytest.raises(RunError, match="other votes"):
        stage.run(ctx)
    assert path.read_bytes() == before


def test_audit_views(tmp_path):
    ctx, votes = make_run(tmp_path)
    stage.run(ctx)
    runner = CliRunner()
    table = runner.invoke(main, ["audit", str(ctx.run.path)])
    assert table.exit_code == 0, table.output
    assert table.output.startswith("# PRIVATE") and "SAFE TO PUBLISH" in table.output
    assert len([l for l in table.output.splitlines() if l[:6].strip().isdigit()]) == Q
    as_json = json.loads(runner.invoke(main, ["audit", str(ctx.run.path), "--format", "json"]).output)
    cums = [q["cumulative_epsilon"] for q in as_json["queries"]]
    assert all(b >= a - 1e-9 for a, b in zip(cums, cums[1:]))  # epsilon never decreases
    assert cums[-1] == pytest.approx(as_json["totals"]["epsilon"], rel=1e-6)
    csv_out = runner.invoke(main, ["audit", str(ctx.run.path), "--format", "csv"]).output
    assert csv_out.splitlines()[1].startswith("query,public_index,answered")
    one = json.loads(runner.invoke(main, ["audit", str(ctx.run.path), "--query", "3", "--format", "json"]).output)
    assert one["votes"] == votes[3].tolist() and "explanation" in one and one["per_order"]
    bad = runner.invoke(main, ["audit", str(ctx.run.path), "--query", str(Q + 5)])
    assert bad.exit_code == 2 and "--query must be between" in bad.output


def test_audit_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    ctx, _ = make_run(tmp_path)
    stage.run(ctx)
    png = tmp_path / "eps.png"
    result = CliRunner().invoke(main, ["audit", str(ctx.run.path), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_audit_before_aggregation_is_a_clear_error(tmp_path):
    ctx, _ = make_run(tmp_path)
    result = CliRunner().invoke(main, ["audit", str(ctx.run.path)])
    assert result.exit_code == 2 and "no ledger" in result.output


def test_best_order_at_the_edge_of_the_list_is_reported(tmp_path, capsys):
    ctx, _ = make_run(tmp_path, privacy={"orders": [2.0, 3.0]})
    ctx.quiet = False
    stage.run(ctx)
    report = json.loads(ctx.run.file("privacy.json").read_text())
    assert any("edge of the order list" in w for w in report["warnings"])
    assert "warning" in capsys.readouterr().err
