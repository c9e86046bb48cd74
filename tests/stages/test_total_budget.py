"""``[privacy] total_budget`` is an individual filter, and nothing public tells whether a record is in
the data (issue 30, row 2): run A on records r0-r299, then, in two copies of its spend log, B on
r300-r599 and B + r0. What the two releases publish is the same apart from the mechanisms' noisy
outputs; with a budget r0 is left out of B + r0 (never refused for it); a run whose own worst case is
above the budget is refused up front whatever the spend log holds; and after every release each
record's composed total is within the budget."""
from __future__ import annotations

import json
import shutil
import uuid

import numpy as np
import pytest
from click.testing import CliRunner

from pate import config as config_mod
from pate.run import spend_log
from pate.aggregation.settings import spend_curve
from pate.cli import main
from pate.io import atomic_save_npz, atomic_write_json
from pate.privacy import spend
from pate.stages import aggregate as aggregate_stage
from pate.stages import open_run
from pate.run.artifacts import Context
from pate.export import model_card, release
from pate.views import status

from ..conftest import edit_pipeline
from ..data.test_arrays import write

DELTA = 1e-4  # the tiny pipeline's


@pytest.fixture(autouse=True)
def own_spend_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PATE_SPEND_DIR", str(tmp_path / "spend"))


def use_spend_dir(monkeypatch, path):
    monkeypatch.setenv("PATE_SPEND_DIR", str(path))


def pipeline_for(folder, keep, budget=None):
    """The arrays pipeline on the private records ``keep`` (named rec-<i> by their ids), with
    ``[privacy] total_budget``."""
    folder.mkdir()
    pipeline = write(folder)
    with np.load(folder / "private.npz") as full:
        arrays = {"images": full["images"][keep], "labels": full["labels"][keep]}
    np.savez(folder / "private.npz", **arrays, ids=np.array([f"rec-{i}" for i in keep]))
    if budget is not None:
        pipeline.write_text(edit_pipeline(pipeline.read_text(), ("delta = 1e-4", f"delta = 1e-4\ntotal_budget = {budget!r}")))
    return pipeline


def partition(folder, keep, budget=None):
    pipeline = pipeline_for(folder, keep, budget)
    result = CliRunner().invoke(main, ["partition", str(pipeline), "--run-dir", str(folder / "run"), "-q"])
    assert result.exit_code == 0, result.output
    return Context(run=open_run(folder / "run", config_mod.load(pipeline)), quiet=True)


def parts_of(ctx):
    with np.load(ctx.run.file("partition.npz")) as parts:
        return {k: parts[k].copy() for k in parts.files}


def release_labels(ctx):
    """As if teachers were trained and voted (the same confident votes in every run), then aggregate
    for real (the spend log, the filter's safety net, the ledger) and evaluate (fixed figures)."""
    run, config = ctx.run, ctx.config
    query_index = parts_of(ctx)["query_index"]
    votes = np.zeros((len(query_index), 10), np.int64)
    votes[np.arange(len(query_index)), np.arange(len(query_index)) % 10] = config.teachers.count
    run.update("train-teachers", status="done", outputs={})
    atomic_save_npz(run.file("votes.npz"), private=True, votes=votes, query_index=query_index)
    run.finish("vote", ["votes.npz"])
    aggregate_stage.run(ctx)
    run.update("train-student", status="done", outputs={})
    atomic_write_json(run.file("metrics.json"), {"student_accuracy": 0.5, "label_accuracy": 0.75,
                                                 "teacher_accuracy_mean": 0.6, "ensemble_accuracy": 0.7,
                                                 "test_size": 100})
    run.finish("evaluate", ["metrics.json"])


def published(ctx):
    """(statement.json, statement.txt, model-card.md) as the release writes them."""
    doc = release.statement(ctx.run)
    classes = [str(c) for c in range(10)]
    return doc, release.statement_text(doc), model_card.render(ctx.run, doc, classes)


OUTPUTS = ("queries_answered", "stopped_by_budget", "data_dependent_release", "generated", "accuracy",
           "label_accuracy")  # the mechanisms' noisy outputs (and what is computed from them), and the time
OUTPUT_LINES = ("Queries asked", "Student (", "Data-dependent", "labels were released", "- Student:",
                "- Released labels", "value:", "trained by pate")


def without_outputs(obj):
    if isinstance(obj, dict):
        return {k: without_outputs(v) for k, v in obj.items() if k not in OUTPUTS}
    return obj


def lines_without_outputs(text):
    return [line for line in text.splitlines() if not any(word in line for word in OUTPUT_LINES)]


def run_curve_epsilons(config):
    """(ε of this run alone, ε of two such runs) as the spend log composes them."""
    curve = spend_curve(config, 10)
    one = spend.composed([], np.zeros((1, 0), bool), DELTA, "improved", curve).epsilon
    two = spend.composed([], np.zeros((1, 0), bool), DELTA, "improved", 2 * curve).epsilon
    return one, two


@pytest.mark.parametrize("with_budget", [False, True])
def test_the_statements_of_b_and_b_plus_r0_are_the_same(tmp_path, monkeypatch, with_budget):
    """Row 2: A ran on r0-r299. B (r300-r599) and B + r0, each in its own copy of A's spend log,
    publish the same statement, text and model card apart from the mechanisms' outputs; the totals
    that tell them apart (1 release against 2) are in the PRIVATE status only."""
    one, two = run_curve_epsilons(config_mod.load(pipeline_for(tmp_path / "probe", np.arange(10))))
    budget = (one + two) / 2 if with_budget else None  # room for one run on a record, not two
    a = partition(tmp_path / "a", np.arange(300), budget)
    release_labels(a)
    for copy in ("spend-b", "spend-b-r0"):
        shutil.copytree(tmp_path / "spend", tmp_path / copy)
    use_spend_dir(monkeypatch, tmp_path / "spend-b")
    b = partition(tmp_path / "b", np.arange(300, 600), budget)
    release_labels(b)
    use_spend_dir(monkeypatch, tmp_path / "spend-b-r0")
    b_r0 = partition(tmp_path / "b-r0", np.r_[0, np.arange(300, 600)], budget)
    release_labels(b_r0)  # never refused for r0

    doc_b, text_b, card_b = published(b)
    doc_r0, text_r0, card_r0 = published(b_r0)
    assert without_outputs(doc_b) == without_outputs(doc_r0)
    assert lines_without_outputs(text_b) == lines_without_outputs(text_r0)
    assert lines_without_outputs(card_b) == lines_without_outputs(card_r0)
    for doc, text, card in ((doc_b, text_b, card_b), (doc_r0, text_r0, card_r0)):
        assert "release(s)" not in text + card and "spent_on_this_private_data" not in json.dumps(doc)
        assert ("has spent at most epsilon" in text and "left out" in card) == with_budget
        assert doc["spend_log"]["total_budget"] == budget

    r0 = parts_of(b_r0)
    if with_budget:  # r0 spent one run in A: B + r0 leaves it out, and the release goes ahead without it
        assert r0["teacher_of"][0] == -1 and r0["left_out"].sum() == 1 and (r0["teacher_of"][1:] >= 0).all()
        assert "left_out" in parts_of(b) and parts_of(b)["left_out"].sum() == 0
        assert "total_budget" in status.render(b_r0.run) and ": 1 (PRIVATE)" in status.render(b_r0.run)
        # r0's total is A's release alone: that release's own guarantee (its PLD where tighter), within one run's RDP
        first = [e for e in spend_log.entries() if e.kind == "aggregation"][0]
        assert spend_log.each_total(r0["record_fingerprint"][:1], DELTA)[0] == pytest.approx(first.epsilon, rel=1e-9)
        assert first.epsilon <= one * (1 + 1e-9)
    else:  # the private view still tells them apart: that is why no public file may hold it
        assert "over 1 release(s)" in status.render(b.run) and "over 2 release(s)" in status.render(b_r0.run)
        assert "PRIVATE" in status.render(b_r0.run)


def test_a_record_near_its_budget_is_left_out_and_the_release_goes_ahead(tmp_path):
    every = np.arange(600)
    first = partition(tmp_path / "first", every)
    prints = parts_of(first)["record_fingerprint"]
    one, two = run_curve_epsilons(first.config)
    near = np.array([3, 140, 599])  # these records already spent one such run elsewhere
    entry = spend.Entry(kind="aggregation", nonce=uuid.uuid4().hex, draw=0, run_dir="elsewhere", pipeline="other",
                        time="then", mechanism="gnmax", epsilon=one, delta=DELTA,
                        rdp=spend.curve_field(spend_curve(first.config, 10)), seeded=False, records=0,
                        records_sha256="")
    spend_log.begin(entry, prints[near])
    budget = (one + two) / 2
    ctx = partition(tmp_path / "second", every, budget)
    parts = parts_of(ctx)
    assert (parts["teacher_of"][near] == -1).all() and parts["left_out"][near].all()
    kept = np.setdiff1d(every, near)
    assert np.array_equal(parts["teacher_of"][kept], parts_of(first)["teacher_of"][kept])
    assert parts["left_out"].sum() == len(near)
    release_labels(ctx)
    assert ctx.run.is_done("aggregate") and ctx.run.file("labels.npz").exists()
    totals = spend_log.each_total(prints, DELTA)
    assert (totals <= budget).all()  # every record's total over this log stays within the budget
    assert totals[near] == pytest.approx(one, rel=1e-9)  # left out: neither charged nor named by this run
    assert spend_log.total(prints[near], DELTA).releases == 1 and spend_log.total(prints[kept], DELTA).releases == 1
    # the next run on the same data leaves out every record now near the budget: all of them
    again = partition(tmp_path / "third", every, budget)
    assert parts_of(again)["left_out"].all()
    release_labels(again)  # released from teachers that learned nothing private, charged to no record
    assert (spend_log.each_total(prints, DELTA) <= budget).all() and len(spend_log.entries()) == 3


@pytest.mark.parametrize("spent_before", [False, True])
def test_a_run_whose_own_worst_case_passes_the_budget_is_refused_up_front(tmp_path, monkeypatch, spent_before):
    """A public fact: the same one line whatever the spend log holds, before anything is written."""
    if spent_before:
        release_labels(partition(tmp_path / "earlier", np.arange(600)))
    probe = config_mod.load(pipeline_for(tmp_path / "probe", np.arange(600)))
    one, _ = run_curve_epsilons(probe)
    pipeline = pipeline_for(tmp_path / "over", np.arange(600), budget=round(0.9 * one, 3))
    for command in ("partition", "run"):
        result = CliRunner().invoke(main, [command, str(pipeline), "--run-dir", str(tmp_path / "over" / "run"), "-q"])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
        assert "[privacy] total_budget" in result.output and f"epsilon {one:.3f}" in result.output
        assert not (tmp_path / "over" / "run").exists()


def test_private_knn_left_out_records_neither_vote_nor_are_charged(tmp_path, fake_data_root):
    """Private-kNN's voters are the records themselves: one left out by the filter is in no
    neighbourhood and the spend log never charges it; the others vote and are charged."""
    from .test_private_knn import KNN_PIPELINE

    pipeline = tmp_path / "knn.toml"
    pipeline.write_text(KNN_PIPELINE)
    args = ["--data-root", str(fake_data_root), "-q"]
    assert CliRunner().invoke(main, ["partition", str(pipeline), "--run-dir", str(tmp_path / "first"), *args]).exit_code == 0
    first = parts_of(Context(run=open_run(tmp_path / "first", config_mod.load(pipeline)), quiet=True))
    drawn = np.flatnonzero(first["teacher_of"] >= 0)
    near = drawn[[0, 7, len(drawn) // 2, -1]]
    one, two = run_curve_epsilons(config_mod.load(pipeline))
    curve = spend_curve(config_mod.load(pipeline), 10)
    spend_log.begin(spend.Entry(kind="aggregation", nonce=uuid.uuid4().hex, draw=0, run_dir="elsewhere",
                                pipeline="other", time="then", mechanism="private-knn", epsilon=one, delta=DELTA,
                                rdp=spend.curve_field(curve), seeded=False, records=0, records_sha256=""),
                    first["record_fingerprint"][near])
    budget = (one + two) / 2
    pipeline.write_text(edit_pipeline(KNN_PIPELINE, ("delta = 1e-4", f"delta = 1e-4\ntotal_budget = {budget!r}")))
    result = CliRunner().invoke(main, ["run", str(pipeline), "--run-dir", str(tmp_path / "run"), "--until",
                                       "aggregate", *args])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "run"
    with np.load(run_dir / "partition.npz") as parts:
        assert np.flatnonzero(parts["left_out"]).tolist() == near.tolist()
        prints = parts["record_fingerprint"]
    with np.load(run_dir / "neighbours.npz") as hoods:  # the voters: the run's records, by private index
        voters = hoods["records"][np.unique(hoods["members"])]
        assert not np.isin(near, hoods["records"]).any() and len(voters)
    assert np.array_equal(np.sort(hoods_records(run_dir)), np.setdiff1d(drawn, near))
    assert spend_log.total(prints[near], DELTA).releases == 1  # only the earlier release
    assert spend_log.total(prints[np.setdiff1d(drawn, near)], DELTA).releases == 1  # this run's
    assert (spend_log.each_total(prints[drawn], DELTA) <= budget).all()


def hoods_records(run_dir):
    with np.load(run_dir / "neighbours.npz") as hoods:
        return hoods["records"].copy()


def test_a_run_whose_every_record_is_left_out_still_runs_to_its_release(tmp_path):
    # Every record spent one run in A and the budget has room for one: B on the same records leaves
    # them all out; its teachers learn from nothing (empty shards), and the run ends in a release as
    # any other (refusing it would tell that the records were there), without a traceback.
    one, two = run_curve_epsilons(config_mod.load(pipeline_for(tmp_path / "probe", np.arange(10))))
    release_labels(partition(tmp_path / "a", np.arange(300)))
    pipeline = pipeline_for(tmp_path / "b", np.arange(300), (one + two) / 2)
    result = CliRunner().invoke(main, ["run", str(pipeline), "--run-dir", str(tmp_path / "b" / "run"), "-q"])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    b = Context(run=open_run(tmp_path / "b" / "run", config_mod.load(pipeline)), quiet=True)
    assert (parts_of(b)["teacher_of"] == -1).all() and (tmp_path / "b" / "run-release" / "statement.json").exists()
