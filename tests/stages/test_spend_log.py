"""The spend log charges records, not run directories: copies, changed datasets and a tampered log
buy no fresh budget (issue rows: a copied run directory, a record removed, a log edited)."""
import json
import shutil

import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant as dp_rdp

from pate.run import spend_log
from pate.errors import PateError
from pate.privacy import spend
from pate.aggregation import protocol
from pate.stages import aggregate as stage
from pate.stages import open_run
from pate.run.artifacts import Context

from ..conftest import finish_votes_stage
from .test_aggregate import make_run


@pytest.fixture(autouse=True)
def own_spend_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PATE_SPEND_DIR", str(tmp_path / "spend"))


def guarantee(ctx):
    return json.loads(ctx.run.file("privacy.json").read_text())["public"]["guarantee"]["epsilon"]


def labels(ctx):
    with np.load(ctx.run.file("labels.npz")) as data:
        return data["label"].copy()


def copy_run(ctx, tmp_path, name):
    shutil.copytree(ctx.run.path, tmp_path / name)
    return Context(run=open_run(tmp_path / name, ctx.config), quiet=True)


def unseeded_run(tmp_path, name, **privacy):
    ctx, votes = make_run(tmp_path, name, privacy=privacy or None, seed=None)
    finish_votes_stage(ctx.run, votes, private_data="one dataset")
    return ctx


def test_a_copied_voted_run_directory_is_a_second_spender(tmp_path):
    a = unseeded_run(tmp_path, "a")
    b = copy_run(a, tmp_path, "b")
    stage.run(a)
    stage.run(b)
    assert not np.array_equal(labels(a), labels(b))  # fresh OS noise: two releases of the same queries
    entries = spend_log.entries()
    assert len(entries) == 2 and entries[0].nonce != entries[1].nonce
    curve = entries[0].curve()
    total = spend_log.total(np.load(a.run.file("partition.npz"))["record_fingerprint"], 1e-5)
    assert total.releases == 2
    assert total.epsilon == pytest.approx(dp_rdp.compute_epsilon(spend.ORDERS, 2 * curve, 1e-5)[0], rel=1e-9)


def test_total_budget_holds_across_copies(tmp_path):
    """The partition's filter left room for one release on a's records; a copy of a made before a
    released (a race) is refused by the safety net, saying so; a new run directory on the same data
    leaves those records out instead, and no record's total passes the budget."""
    probe = unseeded_run(tmp_path, "probe")
    stage.run(probe)
    prints = np.load(probe.run.file("partition.npz"))["record_fingerprint"]
    curve = spend_log.entries()[0].curve()
    two, three = (dp_rdp.compute_epsilon(spend.ORDERS, k * curve, 1e-5)[0] for k in (2, 3))
    budget = (two + three) / 2  # room for two of these, not three
    a = unseeded_run(tmp_path, "a", total_budget=budget)
    b = copy_run(a, tmp_path, "b")
    stage.run(a)
    with pytest.raises(PateError, match="total_budget.*logged after this run's partition") as refused:
        stage.run(b)
    assert "\n" not in str(refused.value)
    assert not b.run.file("ledger.jsonl").exists() and not b.run.file("labels.npz").exists()
    c = unseeded_run(tmp_path, "c", total_budget=budget)  # partitioned now: its records are left out
    kept = np.load(c.run.file("partition.npz"))["teacher_of"] >= 0
    assert not (kept & np.isin(np.load(c.run.file("partition.npz"))["record_fingerprint"], prints)).any()
    stage.run(c)  # released, charged to none of them
    assert spend_log.total(prints, 1e-5).releases == 2
    assert (spend_log.each_total(prints, 1e-5) <= budget).all()


def interrupted_after_first_chunk(ctx, monkeypatch):
    calls = {"n": 0}
    extend = spend_log.Holder.extend

    def once(self, write, decided, mac):
        if calls["n"] == 1:
            raise KeyboardInterrupt
        calls["n"] += 1
        return extend(self, write, decided, mac)

    monkeypatch.setattr(spend_log.Holder, "extend", once)
    with pytest.raises(KeyboardInterrupt):
        stage.run(ctx)
    monkeypatch.setattr(spend_log.Holder, "extend", extend)


def ledger_lines(ctx):
    return len(ctx.run.file("ledger.jsonl").read_text().splitlines()) - 1


def test_a_stale_copy_of_a_run_in_progress_is_refused(tmp_path, monkeypatch):
    a = unseeded_run(tmp_path, "a")
    interrupted_after_first_chunk(a, monkeypatch)
    assert ledger_lines(a) == protocol.CHUNK
    b = copy_run(a, tmp_path, "b")
    stage.run(a)  # the original resumes, and finishes
    with pytest.raises(PateError, match="stale copy"):
        stage.run(b)  # the copy would answer queries 256.. again, with other noise
    assert ledger_lines(b) == protocol.CHUNK and not b.run.file("labels.npz").exists()
    assert len(spend_log.entries()) == 1


def test_whichever_copy_moves_on_first_is_followed_and_the_other_refused(tmp_path, monkeypatch):
    a = unseeded_run(tmp_path, "a")
    interrupted_after_first_chunk(a, monkeypatch)
    b = copy_run(a, tmp_path, "b")
    stage.run(b)  # the copy resumes first
    with pytest.raises(PateError, match="stale copy"):
        stage.run(a)
    assert ledger_lines(a) == protocol.CHUNK


def test_two_live_holders_of_one_aggregation_cannot_both_extend_it(tmp_path, monkeypatch):
    a = unseeded_run(tmp_path, "a")
    interrupted_after_first_chunk(a, monkeypatch)
    nonce = a.run.record("aggregate")["nonce"]
    from pate.privacy import ledger
    from pate.aggregation.ledger_files import ledger_key

    macs = ledger.parse(a.run.file("ledger.jsonl").read_text(), ledger_key(a.run)).macs
    first = spend_log.Holder(nonce, macs)
    second = spend_log.Holder(nonce, macs)  # a copy at the same point, in another process
    written = []
    with pytest.raises(PateError, match="took over"):
        first.extend(lambda: written.append(1), len(macs) - 1 + 10, "f" * 64)
    assert written == []  # nothing reached the first one's ledger
    second.extend(lambda: written.append(2), len(macs) - 1 + 10, "e" * 64)
    assert written == [2]


def test_a_dataset_that_lost_a_record_composes_over_the_records_it_shares():
    prints = np.arange(1, 601, dtype=np.uint64) * 7919
    own = dp_rdp.compute_epsilon(spend.ORDERS, spend.ORDERS / 800.0, 1e-5)[0]
    one = spend.Entry("aggregation", "1" * 32, 0, "/a", "p", "t", "gnmax", own, 1e-5,
                      spend.curve_field(spend.ORDERS / 800.0), False, 0, "")
    two = spend.Entry(**{**one.__dict__, "nonce": "2" * 32})
    spend_log.begin(one, prints)
    spend_log.begin(two, prints[:-1])  # the same data less its last record
    assert spend_log.total(prints[-1:], 1e-5).releases == 1  # the removed record: only the first run
    both = spend_log.total(prints[:5], 1e-5)
    assert both.releases == 2
    assert both.epsilon == pytest.approx(dp_rdp.compute_epsilon(spend.ORDERS, 2 * spend.ORDERS / 800.0, 1e-5)[0])
    assert spend_log.total(prints, 1e-5).epsilon == both.epsilon  # worst over the records
    assert spend_log.total(np.array([3], np.uint64), 1e-5).releases == 0  # another dataset's record


def tamper_cases():
    def drop_line(folder):
        lines = (folder / spend_log.LOG).read_text().splitlines(keepends=True)
        (folder / spend_log.LOG).write_text("".join(lines[:1] + lines[2:]))

    def scale_curve(folder):
        lines = (folder / spend_log.LOG).read_text().splitlines(keepends=True)
        obj = json.loads(lines[1])
        obj["rdp"] = [None if r is None else 0.01 * r for r in obj["rdp"]]
        lines[1] = json.dumps(obj) + "\n"
        (folder / spend_log.LOG).write_text("".join(lines))

    def cut_last(folder):
        lines = (folder / spend_log.LOG).read_text().splitlines(keepends=True)
        (folder / spend_log.LOG).write_text("".join(lines[:-1]))

    return {
        "a line deleted": (drop_line, "integrity"),
        "a curve scaled by 0.01": (scale_curve, "integrity"),
        "the last line cut": (cut_last, "head file"),
        "the log deleted": (lambda f: (f / spend_log.LOG).unlink(), "deleted"),
        "the head deleted": (lambda f: (f / spend_log.HEAD).unlink(), "deleted"),
        "the key deleted": (lambda f: (f / "record.key").unlink(), "missing"),
        "the records file deleted": (lambda f: [p.unlink() for p in (f / "records").iterdir()], "missing or changed"),
        "old per-dataset logs beside it": (lambda f: (f / ("0" * 64 + ".jsonl")).write_text("{}\n"), "earlier"),
    }


@pytest.mark.parametrize("case", sorted(tamper_cases()))
def test_a_tampered_spend_log_refuses_the_next_aggregation(tmp_path, case):
    damage, message = tamper_cases()[case]
    first = unseeded_run(tmp_path, "first", total_budget=1e4)
    stage.run(first)
    # made before the damage: its partition records the spend directory's key id, read from the log
    second = unseeded_run(tmp_path, "second", total_budget=1e4)
    damage(spend_log.directory())
    with pytest.raises(PateError, match=message):
        stage.run(second)
    assert not second.run.file("ledger.jsonl").exists() and not second.run.file("labels.npz").exists()


def test_a_log_cut_back_under_a_head_rewritten_from_its_own_lines_is_refused(tmp_path):
    """Issue 30 row 3: two releases; the log cut before the second entry and spend.head rewritten to
    the line count and the MAC printed on the new last line (no key needed). The head's own MAC does
    not verify, so every read of the log (``pate status``'s and an aggregation's) refuses it."""
    first = unseeded_run(tmp_path, "first", total_budget=1e4)
    copy = copy_run(first, tmp_path, "copy")  # a second release on the same records
    stage.run(first)
    stage.run(copy)
    third = unseeded_run(tmp_path, "third", total_budget=1e4)
    folder = spend_log.directory()
    lines = (folder / spend_log.LOG).read_text().splitlines(keepends=True)
    second = [i for i, line in enumerate(lines) if json.loads(line).get("kind") == "aggregation"][1]
    (folder / spend_log.LOG).write_text("".join(lines[:second]))
    (folder / spend_log.HEAD).write_text(json.dumps({"lines": second, "mac": json.loads(lines[second - 1])["mac"]}))
    for read in (spend_log.entries, lambda: spend_log.total(np.arange(3, dtype=np.uint64), 1e-5),
                 lambda: stage.run(third)):
        with pytest.raises(spend_log.SpendError, match="valid MAC") as refused:
            read()
        assert "\n" not in str(refused.value)
    assert not third.run.file("ledger.jsonl").exists() and not third.run.file("labels.npz").exists()


def test_an_edited_head_mac_is_refused_and_a_log_one_line_ahead_of_its_head_accepted(tmp_path, monkeypatch):
    first = unseeded_run(tmp_path, "first", total_budget=1e4)
    stage.run(first)
    head = spend_log.directory() / spend_log.HEAD
    sealed = json.loads(head.read_text())
    # a crash between the log append and the head rewrite: the log is one line ahead of its head
    write = spend_log.atomic_write_json

    def crash_on_head(path, *args, **kwargs):
        if path == head:
            raise KeyboardInterrupt
        return write(path, *args, **kwargs)

    monkeypatch.setattr(spend_log, "atomic_write_json", crash_on_head)
    one = spend_log.entries()[0]
    with pytest.raises(KeyboardInterrupt):
        spend_log.begin(spend.Entry(**{**one.__dict__, "nonce": "9" * 32}), np.arange(3, dtype=np.uint64))
    monkeypatch.setattr(spend_log, "atomic_write_json", write)
    assert json.loads(head.read_text()) == sealed  # the head still names the line before
    assert [e.nonce for e in spend_log.entries()][-1] == "9" * 32  # accepted, the appended entry counted
    second = unseeded_run(tmp_path, "second", total_budget=1e4)
    stage.run(second)  # and the next aggregation goes on
    sealed = json.loads(head.read_text())
    bare = {k: v for k, v in sealed.items() if k != "head_mac"}  # as an earlier pate wrote it, on a new log
    for edit in ({**sealed, "head_mac": sealed["head_mac"][::-1]}, bare):
        head.write_text(json.dumps(edit))
        with pytest.raises(spend_log.SpendError, match="valid MAC"):
            spend_log.entries()


def test_a_spend_directory_of_an_earlier_pate_is_refused_with_what_to_do():
    """A head with no MAC cannot show the log was not cut: refused in one line, never upgraded (an
    upgrade on read would accept a log cut under an earlier pate's head)."""
    from pate.data import records
    from pate.privacy import chain

    folder = spend_log.directory()
    folder.mkdir(parents=True)
    secret = bytes(range(32))
    text, mac = chain.encode(spend.chain_key(secret), "", [{"kind": "header", "version": spend.UNSEALED_VERSION}])
    (folder / spend_log.LOG).write_text(text)
    (folder / spend_log.HEAD).write_text(json.dumps({"lines": 1, "mac": mac}))
    (folder / records.KEY_FILE).write_bytes(secret)
    with pytest.raises(spend_log.SpendError, match=f"earlier pate.*has no MAC.*move {folder} aside") as refused:
        spend_log.entries()
    assert "\n" not in str(refused.value)
    assert json.loads((folder / spend_log.HEAD).read_text()) == {"lines": 1, "mac": mac}  # left as it was
