"""The spend log's per-record composition and its chain, against hand-composed RDP and brute force."""
import json
import math

import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant as dp_rdp

from pate.privacy import chain, spend

KEY = spend.chain_key(bytes(32))
HEAD_KEY = spend.head_key(bytes(32))


def parse(text, head, key=KEY, head_key=HEAD_KEY):
    return spend.parse(text, key, head, head_key=head_key)


def entry(nonce="a" * 32, kind="aggregation", draw=0, scale=1.0, eps=1.0, delta=1e-5):
    curve = scale * spend.ORDERS / 1600.0  # a Gaussian mechanism's curve, lambda / (2 sigma^2) with sigma 20 * sqrt(scale)^-1
    return spend.Entry(kind=kind, nonce=nonce, draw=draw, run_dir="/x", pipeline="p", time="t", mechanism="gnmax",
                       epsilon=eps, delta=delta, rdp=spend.curve_field(curve), seeded=False, records=1,
                       records_sha256="0" * 64)


def independent_eps(curve):
    return dp_rdp.compute_epsilon(spend.ORDERS, curve, 1e-5)[0]


def test_a_records_spend_adds_rdp_of_the_entries_that_hold_it():
    a, b, c = entry("a", scale=100), entry("b", scale=300), entry("c", scale=50)
    members = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]], dtype=bool)  # 4 records, 3 entries
    total = spend.composed([a, b, c], members, 1e-5)
    # brute force: each record's own composition, then the worst
    per_record = [independent_eps(sum(e.curve() for e, m in zip((a, b, c), row) if m)) if row.any() else 0.0
                  for row in members[[0, 2, 3]]]
    per_record.insert(1, a.epsilon)  # held by one release only: that release's own guarantee
    assert total.epsilon == pytest.approx(max(per_record), rel=1e-9) and total.releases == 2
    # an extra curve (a release about to happen) charges every record given
    extra = spend.composed([a, b, c], members, 1e-5, extra=c.curve())
    assert extra.epsilon == pytest.approx(independent_eps(a.curve() + b.curve() + c.curve()), rel=1e-9)
    assert spend.composed([a], np.zeros((3, 1), bool), 1e-5).epsilon == 0.0
    assert spend.composed([], np.zeros((0, 0), bool), 1e-5).releases == 0


def test_infinite_orders_are_skipped():
    curve = spend.ORDERS / 1600.0
    curve[spend.ORDERS > 30] = math.inf  # e.g. a smooth-sensitivity release, defined below 1/(2 beta)
    e = spend.Entry("smooth-sensitivity", "n" * 32, 1, "/x", "p", "t", "gnmax", 1.0, 1e-5, spend.curve_field(curve),
                    False, 1, "0" * 64)
    assert e.rdp[-1] is None and np.isinf(e.curve()[-1])
    finite = spend.ORDERS <= 30
    total = spend.composed([entry(), e], np.ones((1, 2), bool), 1e-5)
    expected = dp_rdp.compute_epsilon(spend.ORDERS[finite], 2 * spend.ORDERS[finite] / 1600.0, 1e-5)[0]
    assert total.epsilon == pytest.approx(expected)


def log_text(*items):
    text, mac = spend.encode_header(KEY)
    for item in items:
        more, mac = spend.encode(KEY, mac, item)
        text += more
    return text.decode(), spend.seal_head(HEAD_KEY, 1 + len(items), mac)


def test_parse_round_trip():
    claim = spend.Claim("a" * 32, "t" * 32, 256, "m" * 64)
    text, head = log_text(entry("a" * 32), claim, entry("b" * 32))
    log = parse(text, head)
    assert [e.nonce for e in log.entries] == ["a" * 32, "b" * 32] and log.claims == [claim]
    assert log.latest_claim("a" * 32) == claim and log.latest_claim("b" * 32) is None


@pytest.mark.parametrize("damage, message", [
    (lambda lines, head: (lines[:1] + lines[2:], head), "integrity"),  # a line deleted
    (lambda lines, head: ([lines[0], lines[2], lines[1], *lines[3:]], head), "integrity"),  # reordered
    (lambda lines, head: (lines[:-1], head), "head file"),  # the last line cut
    (lambda lines, head: (lines[:-1], {"lines": head["lines"] - 1, "mac": "0" * 64}), "head file"),
    (lambda lines, head: ([lines[0], lines[1].replace('"epsilon":1.0', '"epsilon":0.01'), *lines[2:]], head),
     "integrity"),
    (lambda lines, head: ([lines[0], lines[1].replace("0.0625", "0.000625"), *lines[2:]], head), "integrity"),
    (lambda lines, head: ([], head), "empty"),
])
def test_edits_deletions_and_cuts_are_refused(damage, message):
    text, head = log_text(entry("a" * 32), entry("b" * 32), entry("c" * 32))
    assert "0.0625" in text  # the curve value edited below (order 100 / 1600)
    lines, head = damage(text.splitlines(keepends=True), head)
    with pytest.raises(spend.SpendLogError, match=message):
        parse("".join(lines), head)


def test_another_key_is_refused():
    text, head = log_text(entry())
    with pytest.raises(spend.SpendLogError, match="integrity"):
        parse(text, head, key=spend.chain_key(bytes([1] * 32)))


def test_a_crash_between_an_append_and_the_head_update_loses_nothing():
    text, head = log_text(entry("a" * 32), entry("b" * 32))
    behind = log_text(entry("a" * 32))[1]  # the head as the append before the last one sealed it
    log = parse(text, behind)  # the head still names the line before the last append
    assert [e.nonce for e in log.entries] == ["a" * 32, "b" * 32]


def test_a_log_cut_back_under_a_head_rewritten_from_its_own_lines_is_refused():
    """Issue 30 row 3: cut before the second entry, head set to the line count and the MAC on the new
    last line (both readable in the log, no key needed): the head's own MAC does not verify."""
    claim = spend.Claim("a" * 32, "t" * 32, 256, "m" * 64)
    text, head = log_text(entry("a" * 32), claim, entry("b" * 32), claim)
    lines = text.splitlines(keepends=True)[:3]  # header, first entry, its claim
    last_mac = json.loads(lines[-1])["mac"]
    for forged in ({"lines": 3, "mac": last_mac},  # a bare head, as an earlier pate wrote it
                   {"lines": 3, "mac": last_mac, "head_mac": head["head_mac"]},  # the old head's MAC kept
                   spend.seal_head(spend.head_key(bytes([1] * 32)), 3, last_mac)):  # sealed under another key
        with pytest.raises(spend.SpendLogError, match="valid MAC"):
            parse("".join(lines), forged)
    assert len(parse("".join(lines), spend.seal_head(HEAD_KEY, 3, last_mac)).entries) == 1  # with the key: fine


def test_an_edited_head_mac_is_refused():
    text, head = log_text(entry("a" * 32), entry("b" * 32))
    flipped = head["head_mac"][:-1] + ("0" if head["head_mac"][-1] != "0" else "1")
    with pytest.raises(spend.SpendLogError, match="valid MAC"):
        parse(text, {**head, "head_mac": flipped})


def test_a_log_of_an_earlier_pate_with_a_bare_head_is_refused_as_such():
    text, mac = chain.encode(KEY, "", [{"kind": "header", "version": spend.UNSEALED_VERSION}])
    more, mac = spend.encode(KEY, mac, entry("a" * 32))
    with pytest.raises(spend.UnsealedLogError, match="earlier pate"):
        parse(text + more.decode(), {"lines": 2, "mac": mac})

