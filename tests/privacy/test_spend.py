"""The spend log's composition and its refusal of damage, against hand-composed RDP."""
import math

import numpy as np
import pytest

from pate.privacy import rdp, spend


def entry(run_id="r", kind="aggregation", draw=0, scale=1.0, eps=1.0, delta=1e-5):
    curve = scale * spend.ORDERS / 1600.0
    return spend.Entry(kind=kind, run_id=run_id, draw=draw, run_dir="/x", pipeline="p", time="t",
                       mechanism="gnmax", epsilon=eps, delta=delta, rdp=spend.curve_field(curve), seeded=False)


def test_composition_adds_rdp_at_every_order():
    a, b = entry("a", scale=100), entry("b", scale=300)
    total = spend.composed([a, b], 1e-5)
    expected = rdp.eps_from_rdp(400 * spend.ORDERS / 1600.0, spend.ORDERS, 1e-5, warn_edge=False)[0]
    assert total.releases == 2 and total.epsilon == pytest.approx(expected, rel=1e-12)
    # one release is its own guarantee (which may be tighter than its RDP curve)
    assert spend.composed([a], 1e-5).epsilon == a.epsilon
    # an extra curve (a release about to happen) composes like an entry
    assert spend.composed([a], 1e-5, extra=b.curve()).epsilon == pytest.approx(expected, rel=1e-12)


def test_infinite_orders_are_skipped():
    curve = spend.ORDERS / 1600.0
    curve[spend.ORDERS > 30] = math.inf  # e.g. a smooth-sensitivity release, defined below 1/(2β)
    e = spend.Entry("smooth-sensitivity", "r", 1, "/x", "p", "t", "gnmax", 1.0, 1e-5, spend.curve_field(curve), False)
    assert e.rdp[-1] is None and np.isinf(e.curve()[-1])
    finite = spend.ORDERS <= 30
    total = spend.composed([entry(), e], 1e-5)
    expected = rdp.eps_from_rdp(2 * spend.ORDERS[finite] / 1600.0, spend.ORDERS[finite], 1e-5, warn_edge=False)[0]
    assert total.epsilon == pytest.approx(expected)


def test_parse_round_trip_and_refusals():
    text = (spend.encode_header("abc") + spend.encode(entry("a")) + spend.encode(entry("b"))).decode()
    assert [e.run_id for e in spend.parse(text, "abc")] == ["a", "b"]
    with pytest.raises(spend.SpendLogError, match="other private data"):
        spend.parse(text, "xyz")
    with pytest.raises(spend.SpendLogError, match="middle of a line"):
        spend.parse(text[:-5], "abc")
    with pytest.raises(spend.SpendLogError, match="not valid JSON"):
        spend.parse(text.replace('"run_id":"b"', '"run_id":"b'), "abc")
    with pytest.raises(spend.SpendLogError, match="not a spend-log entry"):
        spend.parse(text.replace('"kind":"aggregation"', '"kind":"gift"', 1), "abc")
    with pytest.raises(spend.SpendLogError, match="empty"):
        spend.parse("", "abc")
