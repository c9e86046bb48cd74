"""``query_selection = "uncertainty"`` (Interactive-GNMax): each round asks the not-yet-asked pool
images its student is least certain of (smallest top-1 minus top-2 margin), chosen from public
images and released labels only, saved before the round's decisions, reused on resume; the ledger,
labels.npz and the audit point to the images actually asked; other mechanisms refuse it."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from pate import config as config_mod
from pate.cli import main
from pate.config import ConfigError
from pate.io import atomic_save_npz
from pate.privacy import accounting, ledger
from pate.aggregation import interactive, protocol
from pate.aggregation.ledger_files import ledger_key
from pate.aggregation.settings import privacy_settings
from pate.run.directory import RunError
from pate.stages import aggregate as stage
from pate.stages import open_run
from pate.run.artifacts import Context
from pate.views import audit

from ..conftest import TINY_PIPELINE, edit_pipeline, finish_votes_stage

K, M, Q, POOL, ROUNDS = 6, 10, 40, 300, 3
POSITIONS = np.array_split(np.arange(Q), ROUNDS)  # the ledger positions of each round


def make_run(tmp_path, name="run", votes_seed=0, data_root=None, **aggregator):
    """A run with a partition and teachers' votes on every pool image (the candidates), as if the
    vote stage had run with query_selection = "uncertainty"."""
    agg = {"mechanism": "interactive-gnmax", "max_queries": Q, "threshold": 4.0, "sigma1": 1.0, "sigma2": 1.0,
           "seed": 7, "interactive_rounds": ROUNDS, "interactive_steps": 10, "student_confidence": 0.5,
           "query_selection": "uncertainty", **aggregator}
    cfg = config_mod.from_dict({
        "name": "uncertain", "data": {"private_size": 600, "student_pool": POOL, "test_size": 100},
        "teachers": {"count": K}, "aggregator": agg, "privacy": {"delta": 1e-4},
        "student": {"method": "supervised", "batch_size": 16, "steps": 10}})
    run = open_run(tmp_path / name, cfg)
    finish_votes_stage(run, np.zeros((Q, M), np.int64))  # the partition (its votes replaced below)
    with np.load(run.file("partition.npz")) as parts:
        pool = parts["student_pool_index"].copy()
    rng = np.random.default_rng(votes_seed)
    votes = np.zeros((POOL, M), np.int64)
    top = rng.integers(0, K + 1, POOL)  # confident and split rows, each summing to K
    votes[np.arange(POOL), rng.integers(0, M, POOL)] += top
    for i in range(POOL):
        votes[i] += np.bincount(rng.integers(0, M, K - top[i]), minlength=M)
    atomic_save_npz(run.file("votes.npz"), private=True, votes=votes, query_index=pool)
    run.finish("vote", ["votes.npz"])
    return Context(run=run, quiet=True, **({} if data_root is None else {"data_root": data_root})), votes, pool


def fake_student(shift: int = 0):
    """A round student that ignores everything but the round and the public image: fixed
    probabilities per (round, image); its calls are kept."""
    calls = []

    def student(ctx, number, records, index):
        calls.append((number, list(records)))
        table = np.random.default_rng([number, shift]).dirichlet(np.full(M, 0.5), size=ctx.spec.num_public)
        return table[index]

    student.calls = calls
    return student


def records_of(run) -> list[ledger.QueryRecord]:
    return ledger.parse(run.file("ledger.jsonl").read_text(), ledger_key(run)).records


def saved_round(run, number) -> dict:
    with np.load(run.file(f"interactive/round-{number}.npz")) as data:
        return {k: data[k] for k in data.files}


def least_margin_rows(probs: np.ndarray, taken: set, count: int) -> list[int]:
    """Plain recomputation: the ``count`` rows not in ``taken`` of smallest top-1 minus top-2,
    ties in pool order."""
    ordered = np.sort(probs, axis=1)
    margin = ordered[:, -1] - ordered[:, -2]
    return sorted((i for i in range(len(probs)) if i not in taken), key=lambda i: (margin[i], i))[:count]


# ----------------------------------------------------------------------------- refused at config time


@pytest.mark.parametrize("mechanism", ["gnmax", "confident-gnmax", "lnmax"])
def test_uncertainty_without_interactive_gnmax_is_refused_in_one_line(tmp_path, fake_data_root, mechanism):
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(edit_pipeline(textwrap.dedent(TINY_PIPELINE), (
        'mechanism = "confident-gnmax"', f'mechanism = "{mechanism}"\nquery_selection = "uncertainty"')))
    result = CliRunner().invoke(main, ["run", str(pipeline), "--run-dir", str(tmp_path / "run"),
                                       "--data-root", str(fake_data_root), "-q"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert f"[aggregator] query_selection must be 'random' or 'k-center' with mechanism '{mechanism}'" in lines[0]
    assert "interactive-gnmax" in lines[0] and not (tmp_path / "run").exists()


def test_uncertainty_is_accepted_with_interactive_gnmax_only():
    config_mod.AggregatorConfig(mechanism="interactive-gnmax", query_selection="uncertainty").validate()
    with pytest.raises(ConfigError, match="query_selection"):
        config_mod.AggregatorConfig(mechanism="gnmax", query_selection="uncertainty").validate()


# ----------------------------------------------------------------------------- the choice


def test_each_round_asks_the_least_certain_candidates_of_its_saved_probabilities(tmp_path, fake_data_root):
    """With the real round students: round r's queries are the least-margin not-yet-asked candidates
    of the probabilities saved for round r, and the statement is that of the settings alone."""
    ctx, votes, pool = make_run(tmp_path, data_root=fake_data_root)
    stage.run(ctx)
    records, taken = records_of(ctx.run), set()
    assert [r.query for r in records] == list(range(Q))
    for number, positions in enumerate(POSITIONS):
        saved = saved_round(ctx.run, number)
        assert ctx.run.file(f"interactive/round-{number}.npz").stat().st_mode & 0o777 == 0o600
        chosen = saved["chosen"].tolist()
        assert np.array_equal(saved["queries"], positions)
        assert chosen == least_margin_rows(saved["candidate_probabilities"], taken, len(positions))
        if number == 0:  # no student yet: the first of the shuffled pool
            assert chosen == list(range(len(positions))) and not saved["candidate_probabilities"].any()
        else:
            assert saved["candidate_probabilities"].any()  # a student was trained on what was released
        np.testing.assert_array_equal(saved["probabilities"], saved["candidate_probabilities"][chosen])
        assert [records[i].public_index for i in positions] == pool[chosen].tolist()
        taken |= set(chosen)
    public = json.loads(ctx.run.file("privacy.json").read_text())["public"]
    assert public["queries_asked"] == Q == public["guarantee"]["queries"]
    same_settings = privacy_settings(ctx.config, M)
    assert public["guarantee"]["epsilon"] == pytest.approx(accounting.guarantee(same_settings).epsilon, rel=1e-12)


def test_the_choice_is_what_the_student_implies_whatever_the_votes(tmp_path, monkeypatch):
    """The round student replaced by fixed probabilities: the queries asked are exactly those the
    probabilities imply, the same for two different vote matrices (the choice reads no vote), each
    round's student sees only the records released before it, no image is asked twice."""
    asked = {}
    for votes_seed in (0, 1):
        student = fake_student()
        monkeypatch.setattr(interactive, "_student_probabilities", student)
        ctx, votes, pool = make_run(tmp_path, f"votes-{votes_seed}", votes_seed=votes_seed)
        stage.run(ctx)
        records = records_of(ctx.run)
        asked[votes_seed] = [r.public_index for r in records]
        assert [number for number, _ in student.calls] == [1, 2]  # round 0 has no student
        for number, seen in student.calls:  # only what was released before the round
            assert [r.query for r in seen] == list(range(POSITIONS[number][0]))
        taken, expected = set(), []
        for number, positions in enumerate(POSITIONS):
            probs = (np.zeros((POOL, M)) if number == 0 else
                     np.random.default_rng([number, 0]).dirichlet(np.full(M, 0.5), size=ctx.spec.num_public)[pool])
            rows = least_margin_rows(probs, taken, len(positions))
            taken |= set(rows)
            expected += pool[rows].tolist()
        assert asked[votes_seed] == expected
        assert len(records) == Q and len(set(asked[votes_seed])) == Q  # at most max_queries, none twice
        # the asked rows' votes are the candidates' (the ledger's facts checked against them)
        row_of = {int(p): i for i, p in enumerate(pool)}
        top = votes[[row_of[p] for p in asked[votes_seed]]].max(axis=1)
        assert [r.top_count for r in records] == top.tolist()
    assert asked[0] == asked[1]


def test_released_labels_ledger_and_audit_point_to_the_asked_images(tmp_path, monkeypatch):
    monkeypatch.setattr(interactive, "_student_probabilities", fake_student())
    ctx, votes, pool = make_run(tmp_path)
    stage.run(ctx)
    records = records_of(ctx.run)
    chosen = np.concatenate([saved_round(ctx.run, n)["chosen"] for n in range(ROUNDS)])
    assert [r.public_index for r in records] == pool[chosen].tolist()
    assert set(pool[chosen].tolist()) != set(pool[:Q].tolist())  # not simply the first of the pool
    answered = [r for r in records if r.answered]
    with np.load(ctx.run.file("labels.npz")) as labels:
        assert labels["query_index"].tolist() == [r.public_index for r in answered]
        assert labels["query"].tolist() == [r.query for r in answered]
        assert labels["label"].tolist() == [r.label for r in answered]
    rows, _ = audit.query_table(ctx.run)  # the audit reads each asked image's own votes
    assert [row["public_index"] for row in rows] == pool[chosen].tolist()
    for i in (0, Q // 2, Q - 1):
        assert audit.query_detail(ctx.run, i)["votes"] == votes[chosen[i]].tolist()


# ----------------------------------------------------------------------------- resume


def test_a_run_interrupted_mid_round_resumes_to_the_same_ledger(tmp_path, monkeypatch):
    """Killed inside the last round, after its choice was saved: the resumed run reuses that choice
    and those probabilities (its student now says something else) and ends with the ledger of an
    uninterrupted run; each round's file was on disk before any of its decisions."""
    monkeypatch.setattr(protocol, "CHUNK", 8)  # several chunks per round, chunks across rounds
    monkeypatch.setattr(interactive, "_student_probabilities", fake_student())
    whole, _, _ = make_run(tmp_path, "whole")
    stage.run(whole)

    crashed, _, _ = make_run(tmp_path, "crashed")
    real_append, calls = protocol.append_durable, []
    last = POSITIONS[-1]

    def append_then_crash(path, data):
        first = json.loads(data.decode().splitlines()[0])["query"]
        number = next(n for n, positions in enumerate(POSITIONS) if first in positions)
        assert crashed.run.file(f"interactive/round-{number}.npz").exists()  # saved before its decisions
        calls.append(first)
        if first > last[0]:
            raise KeyboardInterrupt("killed")  # mid-round: part of the last round is in the ledger
        real_append(path, data)

    monkeypatch.setattr(protocol, "append_durable", append_then_crash)
    with pytest.raises(KeyboardInterrupt):
        stage.run(crashed)
    done = len(records_of(crashed.run))
    assert last[0] < done < Q and not crashed.run.file("labels.npz").exists()
    monkeypatch.setattr(protocol, "append_durable", real_append)
    monkeypatch.setattr(interactive, "_student_probabilities", fake_student(shift=1))  # would choose otherwise
    stage.run(crashed)
    assert records_of(crashed.run) == records_of(whole.run)  # seeded: the same decisions, none re-drawn
    for name in ("labels.npz",):
        with np.load(crashed.run.file(name)) as a, np.load(whole.run.file(name)) as b:
            assert all(np.array_equal(a[k], b[k]) for k in b.files)


def test_a_lost_round_file_is_refused_not_chosen_again(tmp_path, monkeypatch):
    monkeypatch.setattr(protocol, "CHUNK", 8)
    monkeypatch.setattr(interactive, "_student_probabilities", fake_student())
    ctx, _, _ = make_run(tmp_path)
    real_append = protocol.append_durable

    def append_then_crash(path, data):
        if json.loads(data.decode().splitlines()[0])["query"] > POSITIONS[1][0]:
            raise KeyboardInterrupt("killed")
        real_append(path, data)

    monkeypatch.setattr(protocol, "append_durable", append_then_crash)
    with pytest.raises(KeyboardInterrupt):
        stage.run(ctx)
    monkeypatch.setattr(protocol, "append_durable", real_append)
    ctx.run.file("interactive/round-1.npz").unlink()  # its decisions are partly in the ledger
    with pytest.raises(RunError, match="does not match"):
        stage.run(ctx)


# ----------------------------------------------------------------------------- the whole pipeline


def test_pate_run_votes_on_the_pool_and_asks_at_most_max_queries(tmp_path, fake_data_root):
    """From the CLI: the teachers vote on every pool image, the ledger asks max_queries distinct ones
    in rounds, the student trains on the released labels and `pate audit` reads the asked votes."""
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(edit_pipeline(textwrap.dedent(TINY_PIPELINE), ('mechanism = "confident-gnmax"', (
        'mechanism = "interactive-gnmax"\ninteractive_rounds = 2\ninteractive_steps = 20\n'
        'student_confidence = 0.6\nquery_selection = "uncertainty"'))))
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", str(pipeline), "--run-dir", str(run_dir), "--data-root",
                                       str(fake_data_root), "-q"])
    assert result.exit_code == 0, result.output
    with np.load(run_dir / "partition.npz") as parts, np.load(run_dir / "votes.npz") as voted:
        pool = parts["student_pool_index"]
        assert np.array_equal(voted["query_index"], pool) and voted["votes"].shape == (300, M)
    asked = [json.loads(line)["public_index"] for line in (run_dir / "ledger.jsonl").read_text().splitlines()[1:]]
    assert len(asked) == Q == len(set(asked)) and set(asked) <= set(pool.tolist())
    chosen = []
    for number in range(2):
        with np.load(run_dir / f"interactive/round-{number}.npz") as saved:
            chosen.append(saved["chosen"])
    chosen = np.concatenate(chosen)
    assert asked == pool[chosen].tolist()
    assert json.loads((run_dir / "privacy.json").read_text())["public"]["queries_asked"] == Q
    assert (run_dir / "metrics.json").exists()
    table = CliRunner().invoke(main, ["audit", str(run_dir), "--format", "json"])
    assert table.exit_code == 0, table.output
    pytest.importorskip("matplotlib")
    report = CliRunner().invoke(main, ["report", str(run_dir), "--data-root", str(fake_data_root)])
    assert report.exit_code == 0, report.output
