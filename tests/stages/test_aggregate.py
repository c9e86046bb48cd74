"""The aggregate stage: ledger before release, resume without repeats, budget, privacy.json."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from pate import config as config_mod
from pate.cli import main
from pate.errors import PateError
from pate.privacy import ledger
from pate.privacy import accounting
from pate.run.directory import RunError
from pate.aggregation import protocol
from pate.stages import aggregate as stage
from pate.stages import open_run
from pate.aggregation.ledger_files import ledger_key
from pate.aggregation.settings import privacy_settings
from pate.run.artifacts import Context

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
    return ledger.parse(run.file("ledger.jsonl").read_text(), ledger_key(run)).records


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
    public, private = report["public"], report["private"]
    assert set(public) >= {"guarantee", "mechanism", "settings", "delta", "queries_asked", "queries_answered",
                           "seeded", "data_dependent_release"}
    assert set(private) >= {"epsilon", "order", "epsilon_classic", "epsilon_expected"}
    assert public["seeded"] is True and "SEEDED" in public["warning"]
    assert public["queries_asked"] == Q and public["queries_answered"] == len(answered)
    assert 0 < private["epsilon"] <= private["epsilon_classic"] + 1e-9
    # the data-dependent figure never exceeds the worst case the guarantee is made of
    assert private["epsilon"] <= public["guarantee"]["epsilon"] + 1e-9
    assert public["data_dependent_release"] is None  # not configured
    for path in ("ledger.jsonl", "votes.npz", "privacy.json"):
        assert ctx.run.file(path).stat().st_mode & 0o777 == 0o600, path


def test_crash_after_a_chunk_resumes_without_repeating(tmp_path, monkeypatch):
    ctx, _ = make_run(tmp_path, "crashed")
    real_append, calls = protocol.append_durable, []

    def append_then_crash(path, data):
        calls.append(len(data))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")  # dies before the second chunk reaches the disk
        real_append(path, data)

    monkeypatch.setattr(protocol, "append_durable", append_then_crash)
    with pytest.raises(KeyboardInterrupt):
        stage.run(ctx)
    monkeypatch.setattr(protocol, "append_durable", real_append)
    assert len(ledger_records(ctx.run)) == protocol.CHUNK
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
    report = json.loads(a.run.file("privacy.json").read_text())["public"]
    assert report["seeded"] is False and "warning" not in report
    assert [r.label for r in ledger_records(a.run)] != [r.label for r in ledger_records(b.run)]


def test_epsilon_budget_is_a_renyi_filter(tmp_path):
    ctx, _ = make_run(tmp_path, epsilon_budget=3.0)
    stage.run(ctx)
    public = json.loads(ctx.run.file("privacy.json").read_text())["public"]
    settings = privacy_settings(ctx.config, 10)
    plan = accounting.plan_filter(settings)
    assert public["stopped_by_budget"] and public["queries_asked"] == plan.max_queries < Q
    assert public["guarantee"]["epsilon"] <= 3.0 and public["guarantee"]["queries"] == plan.max_queries
    # the filter's order: the asked queries' worst case fits the budget, one more would not
    rho = settings.per_query_worst_case()[settings.order_array == plan.order][0]
    assert plan.max_queries * rho <= plan.budget_rdp < (plan.max_queries + 1) * rho


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
    monkeypatch.setattr(protocol, "append_durable", lambda path, data: (_ for _ in ()).throw(KeyboardInterrupt()))
    ctx.run.file("ledger.jsonl").unlink(missing_ok=True)
    with pytest.raises(KeyboardInterrupt):
        stage.run(ctx)
    monkeypatch.undo()
    path = ctx.run.file("ledger.jsonl")
    path.write_text(path.read_text().replace('"num_queries":700', '"num_queries":701'))
    before = path.read_bytes()
    with pytest.raises(RunError, match="integrity check"):
        stage.run(ctx)
    assert path.read_bytes() == before


def partial_run(tmp_path, monkeypatch, name="partial"):
    """A run killed after two chunks of decisions reached the ledger."""
    ctx, _ = make_run(tmp_path, name)
    real, calls = protocol.append_durable, []

    def append(path, data):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(protocol, "append_durable", append)
    with pytest.raises(KeyboardInterrupt):
        stage.run(ctx)
    monkeypatch.undo()
    assert len(ledger_records(ctx.run)) == 2 * protocol.CHUNK and ctx.run.record("aggregate")["decided"] == 2 * protocol.CHUNK
    return ctx


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.unlink(), "were decided: it was deleted"),
    (lambda p: p.write_text("".join(p.read_text().splitlines(keepends=True)[:100])), "it was cut"),
    (lambda p: p.write_text(p.read_text().replace('"label":8', '"label":9', 1)), "integrity check"),
])
def test_a_partial_ledger_deleted_cut_or_edited_is_refused_never_redecided(tmp_path, monkeypatch, damage, message):
    ctx = partial_run(tmp_path, monkeypatch)
    path = ctx.run.file("ledger.jsonl")
    damage(path)
    before = path.read_bytes() if path.exists() else None
    with pytest.raises(RunError, match=message):
        stage.run(ctx)
    assert (path.read_bytes() if path.exists() else None) == before and not ctx.run.file("labels.npz").exists()
    result = CliRunner().invoke(main, ["audit", str(ctx.run.path)])  # the audit refuses it too
    assert result.exit_code == 2


def test_a_deleted_ledger_key_is_refused(tmp_path, monkeypatch):
    ctx = partial_run(tmp_path, monkeypatch)
    ctx.run.file("ledger.key").unlink()
    with pytest.raises(RunError, match="ledger.key is missing"):
        stage.run(ctx)


def test_audit_views(tmp_path):
    ctx, votes = make_run(tmp_path)
    stage.run(ctx)
    runner = CliRunner()
    table = runner.invoke(main, ["audit", str(ctx.run.path)])
    assert table.exit_code == 0, table.output
    assert table.output.startswith("# PRIVATE") and "GUARANTEE (safe to publish" in table.output
    assert len([l for l in table.output.splitlines() if l[:6].strip().isdigit()]) == Q
    as_json = json.loads(runner.invoke(main, ["audit", str(ctx.run.path), "--format", "json"]).output)
    cums = [q["cumulative_epsilon"] for q in as_json["queries"]]
    assert all(b >= a - 1e-9 for a, b in zip(cums, cums[1:]))  # epsilon never decreases
    assert cums[-1] == pytest.approx(as_json["totals"]["private"]["epsilon"], rel=1e-6)
    csv_out = runner.invoke(main, ["audit", str(ctx.run.path), "--format", "csv"]).output
    assert csv_out.splitlines()[1].startswith("query,public_index,answered")
    one = json.loads(runner.invoke(main, ["audit", str(ctx.run.path), "--query", "3", "--format", "json"]).output)
    assert one["votes"] == votes[3].tolist() and "explanation" in one and one["per_order"]
    one_csv = runner.invoke(main, ["audit", str(ctx.run.path), "--query", "3", "--format", "csv"]).output.splitlines()
    assert one_csv[0].startswith("# PRIVATE") and "order" in one_csv[1].split(",") and len(one_csv) == 2 + 12
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
    report = json.loads(ctx.run.file("privacy.json").read_text())["private"]
    assert any("edge of the order list" in w for w in report["warnings"])
    assert "warning" in capsys.readouterr().err


# ----------------------------------------------------------------------------- publish only guarantees


def one_teacher_moved(votes: np.ndarray) -> np.ndarray:
    """The votes of a neighbouring dataset on every query: one teacher moves from the top class."""
    moved = votes.copy()
    top = moved.argmax(axis=1)
    rows = np.arange(len(moved))
    moved[rows, top] -= 1
    moved[rows, (top + 1) % moved.shape[1]] += 1
    return moved


def rerun_with_votes(tmp_path, name, votes, **aggregator):
    ctx, _ = make_run(tmp_path, name, **aggregator)
    from pate.io import atomic_save_npz

    atomic_save_npz(ctx.run.file("votes.npz"), private=True, votes=votes,
                    query_index=ctx.run.load_npz("partition.npz")["query_index"])
    ctx.run.finish("vote", ["votes.npz"])
    stage.run(ctx)
    return json.loads(ctx.run.file("privacy.json").read_text())["public"]


def test_the_guarantee_is_the_same_whatever_the_votes(tmp_path):
    ctx, votes = make_run(tmp_path, "a")
    stage.run(ctx)
    a = json.loads(ctx.run.file("privacy.json").read_text())["public"]
    rng = np.random.default_rng(99)
    other = np.stack([np.bincount(rng.integers(0, M, K), minlength=M) for _ in range(Q)])  # no consensus at all
    b = rerun_with_votes(tmp_path, "b", other)
    assert a["guarantee"] == b["guarantee"] and a["settings"] == b["settings"]
    assert a["queries_answered"] != b["queries_answered"]  # the votes did differ
    settings = privacy_settings(ctx.config, 10)
    worst = accounting.worst_case_curve(settings)
    valid_rdp = accounting.epsilon(worst, settings.order_array, 1e-5, "improved")[0]
    assert a["guarantee"]["epsilon"] <= valid_rdp  # never above a valid bound, and it is one
    assert a["guarantee"]["epsilon"] == min(valid_rdp, accounting.pld_epsilon(settings.mechanism, Q, 1e-5))


def test_a_neighbour_changes_only_what_noise_released(tmp_path):
    """One teacher's vote changed on every query, same seed: every public field is unchanged except
    the noisy data-dependent release and the count of answered queries (outputs of a mechanism)."""
    ctx, votes = make_run(tmp_path, "a", privacy={"data_dependent_release": True})
    stage.run(ctx)
    report = json.loads(ctx.run.file("privacy.json").read_text())
    a, private = report["public"], report["private"]
    b = rerun_with_votes(tmp_path, "b", one_teacher_moved(votes), privacy={"data_dependent_release": True})
    assert a["data_dependent_release"]["epsilon"] != b["data_dependent_release"]["epsilon"]
    for key in set(a) | set(b):
        if key == "data_dependent_release":
            fixed = {k: v for k, v in a[key].items() if k != "epsilon"}
            assert fixed == {k: v for k, v in b[key].items() if k != "epsilon"}
        elif key != "queries_answered":
            assert a[key] == b[key], key
    # the private side does read the votes: the realized cost and the smooth sensitivity
    assert set(private["smooth_sensitivity"]) >= {"smooth_sensitivity", "noise_std", "epsilon"}
    assert not {"smooth_sensitivity", "noise_std", "beta_search"} & set(a["data_dependent_release"])


def test_the_spend_log_composes_every_aggregation_of_the_same_private_data(tmp_path, monkeypatch):
    from pate.views import summary

    monkeypatch.setenv("PATE_SPEND_DIR", str(tmp_path / "spend"))
    runs = []
    for name in ("first", "second"):
        ctx, votes = make_run(tmp_path, name)
        finish_votes_stage(ctx.run, votes, private_data="same-private-data")
        stage.run(ctx)
        runs.append(ctx)
    own = json.loads(runs[0].run.file("privacy.json").read_text())["public"]["guarantee"]["epsilon"]
    total = summary.spent(runs[1].run, 1e-5)
    assert total.releases == 2 and own < total.epsilon < 2 * own + 1e-9
    status = CliRunner().invoke(main, ["status", str(runs[0].run.path)])
    assert f"epsilon {total.epsilon:.3f}" in status.output and "2 release(s)" in status.output
    stage.run(runs[1])  # a rerun of a finished aggregation adds nothing
    assert summary.spent(runs[1].run, 1e-5).releases == 2
    # a third run with a total budget its records would pass: the partition leaves them out (it is
    # never refused for them), the release goes ahead and charges none of them
    from pate.run import spend_log

    ctx, votes = make_run(tmp_path, "third", privacy={"total_budget": total.epsilon + 1e-6})
    finish_votes_stage(ctx.run, votes, private_data="same-private-data")
    with np.load(ctx.run.file("partition.npz")) as parts:
        prints, left_out, teacher_of = parts["record_fingerprint"], parts["left_out"], parts["teacher_of"]
    assert left_out.any() and (teacher_of[left_out] == -1).all()
    stage.run(ctx)
    assert ctx.run.is_done("aggregate") and spend_log.total(prints, 1e-5).releases == 2
    assert spend_log.total(prints, 1e-5).epsilon <= total.epsilon + 1e-6
    # past the budget only through a race (a release logged after the partition): refused, nothing decided
    from dp_accounting.rdp import rdp_privacy_accountant as dp_rdp

    from pate.privacy import spend

    curve = spend_log.entries()[0].curve()
    three, four = (dp_rdp.compute_epsilon(spend.ORDERS, k * curve, 1e-5)[0] for k in (3, 4))
    ctx, votes = make_run(tmp_path, "fourth", privacy={"total_budget": (three + four) / 2})  # room for one more
    finish_votes_stage(ctx.run, votes, private_data="same-private-data")
    assert not np.load(ctx.run.file("partition.npz"))["left_out"].any()
    race, race_votes = make_run(tmp_path, "race")
    finish_votes_stage(race.run, race_votes, private_data="same-private-data")
    stage.run(race)
    before = ctx.run.file("manifest.json").read_text()
    with pytest.raises(PateError, match="total_budget.*logged after this run's partition"):
        stage.run(ctx)
    assert not ctx.run.file("ledger.jsonl").exists()
    after = json.loads(ctx.run.file("manifest.json").read_text())
    assert after["stages"]["aggregate"].pop("nonce")  # only the aggregation's id was written, before the log
    before = json.loads(before)
    assert after["stages"]["aggregate"] == before["stages"].get("aggregate", {})


def test_a_deleted_privacy_json_buys_no_fresh_draw_unseen(tmp_path, monkeypatch):
    from pate.run import spend_log

    monkeypatch.setenv("PATE_SPEND_DIR", str(tmp_path / "spend"))
    ctx, votes = make_run(tmp_path, privacy={"data_dependent_release": True})
    finish_votes_stage(ctx.run, votes, private_data="fp")
    stage.run(ctx)
    ctx.run.file("privacy.json").unlink()
    ctx.run.update("aggregate", status="partial")
    stage.run(ctx)
    kinds = [e.kind for e in spend_log.entries()]
    assert kinds == ["aggregation", "smooth-sensitivity", "smooth-sensitivity"]


def test_a_damaged_spend_log_releases_nothing(tmp_path, monkeypatch):
    from pate.run import spend_log

    monkeypatch.setenv("PATE_SPEND_DIR", str(tmp_path / "spend"))
    ctx, votes = make_run(tmp_path, "a")
    finish_votes_stage(ctx.run, votes, private_data="fp")
    stage.run(ctx)
    log = spend_log.directory() / spend_log.LOG
    log.write_bytes(log.read_bytes()[:-7])
    ctx, votes = make_run(tmp_path, "b")
    finish_votes_stage(ctx.run, votes, private_data="fp")
    with pytest.raises(PateError, match="middle of a line"):
        stage.run(ctx)
    assert not ctx.run.file("labels.npz").exists() and not ctx.run.file("ledger.jsonl").exists()
