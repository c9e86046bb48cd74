import numpy as np
import pytest

from pate.io import append_durable, create_exclusive
from pate.privacy import ledger

VOTES = np.array([[5, 1, 0], [2, 2, 2], [0, 6, 0], [3, 0, 3]])
QUERY_INDEX = np.array([40, 11, 7, 23])
HEADER = ledger.LedgerHeader(config_sha256="c" * 64, votes_sha256="v" * 64, mechanism="confident-gnmax",
                             seeded=True, num_queries=4)


def records(n, answered=(True, False, True, True)):
    top_label, top, gap = ledger.vote_facts(VOTES)
    return [ledger.QueryRecord(query=i, public_index=int(QUERY_INDEX[i]), answered=answered[i],
                               label=int(top_label[i]) if answered[i] else -1, top_label=int(top_label[i]),
                               top_count=int(top[i]), gap=int(gap[i]), logq=-3.0, logpr_answered=-0.1)
            for i in range(n)]


KEY = bytes(range(32))


def read(path, key=KEY):
    return ledger.parse(path.read_text(), key, str(path))


def check(path, **overrides):
    book = read(path)
    header, recs = book.header, book.records
    kwargs = dict(config_sha256="c" * 64, votes_sha256="v" * 64, votes=VOTES, query_index=QUERY_INDEX)
    kwargs.update(overrides)
    ledger.check_against_votes(header, recs, **kwargs)
    return recs


@pytest.fixture
def path(tmp_path):
    p = tmp_path / "ledger.jsonl"
    text, mac = ledger.encode_header(HEADER, KEY)
    create_exclusive(p, text)
    text, mac = ledger.encode(records(2), KEY, mac)
    append_durable(p, text)
    append_durable(p, ledger.encode(records(4)[2:], KEY, mac)[0])
    return p


def test_vote_facts_ties_take_first_index():
    top_label, top, gap = ledger.vote_facts(VOTES)
    assert top_label.tolist() == [0, 0, 1, 0] and top.tolist() == [5, 2, 6, 3] and gap.tolist() == [4, 0, 6, 0]


def test_round_trip_and_released_labels(path):
    recs = check(path)
    assert [r.query for r in recs] == [0, 1, 2, 3]
    positions, public, labels = ledger.released_labels(recs)
    assert positions.tolist() == [0, 2, 3] and public.tolist() == [40, 7, 23] and labels.tolist() == [0, 1, 0]


def test_create_never_overwrites(path):
    with pytest.raises(FileExistsError):
        create_exclusive(path, ledger.encode_header(HEADER, KEY)[0])


def test_truncated_mid_line_is_detected(path):
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(ledger.LedgerError, match="middle of a line"):
        read(path)


def test_garbage_line_is_detected(path):
    with open(path, "a") as f:
        f.write("{not json\n")
    with pytest.raises(ledger.LedgerError, match="not JSON"):
        read(path)


@pytest.mark.parametrize("edit", [
    lambda lines: lines[:3] + [lines[3].replace('"label":1', '"label":2')] + lines[4:],  # a label changed
    lambda lines: lines[:3] + [lines[3].replace('"top_count":6', '"top_count":5')] + lines[4:],  # a vote fact
    lambda lines: [lines[0], lines[2], lines[1]] + lines[3:],  # two records swapped
    lambda lines: lines[:1] + lines[2:],  # a record dropped
    lambda lines: lines + lines[-1:],  # a record repeated
])
def test_any_edit_breaks_the_chain(path, edit):
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(edit(lines)))
    with pytest.raises(ledger.LedgerError, match="integrity check"):
        read(path)


def test_another_key_or_a_ledger_rewritten_without_it_is_refused(path):
    with pytest.raises(ledger.LedgerError, match="integrity check"):
        read(path, key=bytes(32))
    # rewriting the records with their MACs stripped, or recomputed without the key, does not pass
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(line.split(',"mac"')[0] + "}\n" for line in lines))
    with pytest.raises(ledger.LedgerError, match="integrity check"):
        read(path)


def test_a_cut_at_a_line_boundary_keeps_a_valid_chain(path):
    # what the MACs cannot see: the run's manifest counts decided queries to catch it
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]))
    book = read(path)
    assert len(book.records) == 2 and book.last_mac in lines[2]


def test_tampered_votes_detected(path):
    with pytest.raises(ledger.LedgerError, match="query 2 does not match"):
        check(path, votes=VOTES + np.array([[0, 0, 0], [0, 0, 0], [1, -1, 0], [0, 0, 0]]))


def test_other_run_or_other_votes_refused(path):
    with pytest.raises(ledger.LedgerError, match="another config"):
        check(path, config_sha256="d" * 64)
    with pytest.raises(ledger.LedgerError, match="other votes"):
        check(path, votes_sha256="w" * 64)
    shuffled = VOTES[[1, 0, 2, 3]]
    with pytest.raises(ledger.LedgerError, match="does not match"):
        check(path, votes=shuffled)


def test_who_answered_is_written_under_the_key_ledgers_always_used(tmp_path):
    """``QueryRecord.answered_by`` is stored as "source" (the name Interactive-GNMax ledgers were written
    with), so ledgers from before the rename resume; absent when unset, as in non-interactive ledgers."""
    import dataclasses
    import json
    recs = [dataclasses.replace(r, answered_by=who) for r, who in zip(records(3), ("teachers", None, "student"))]
    text, mac = ledger.encode_header(HEADER, KEY)
    body, _ = ledger.encode(recs, KEY, mac)
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert [line.get("source", "absent") for line in lines] == ["teachers", "absent", "student"]
    assert not any("answered_by" in line for line in lines)
    p = tmp_path / "ledger.jsonl"
    create_exclusive(p, text)
    append_durable(p, body)
    back = read(p).records
    assert back == recs
    assert [(r.by_teachers, r.by_student) for r in back] == [(True, False), (False, False), (False, True)]
