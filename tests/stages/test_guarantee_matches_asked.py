"""DESIGN invariant 11: the published statement is checked against what was asked.

For every mechanism family a tiny run goes through aggregation (votes faked with
``finish_votes_stage``); the queries actually asked are read back from the ledger, and the
worst-case epsilon of exactly those queries is recomputed here, independently of
``pate.privacy.accounting``, for the integer noise pate draws: Gaussian compositions in closed form
(RDP λ·Σ Δ²/(2σ²)), the discrete Laplace's RDP summed over the integers, ``dp_accounting``'s
privacy-loss distributions of the discrete Gaussian and discrete Laplace (pessimistic and
optimistic), Confident-GNMax's worst-case mixture bound of DESIGN §6 with plain loops over the
discrete Gaussian's pmf, each RDP curve converted with ``dp_accounting.rdp.compute_epsilon``.
The statement (privacy.json's public guarantee, its ``queries_asked``) and the spend log must agree.
The settings are the reviewer's: 6 teachers, 40 queries, σ1 = σ2 = 1.
"""
from __future__ import annotations

import json
import math
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner
from dp_accounting.pld import privacy_loss_distribution
from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon
from scipy.optimize import brentq

from pate import config as config_mod
from pate.run import spend_log
from pate.cli import main
from pate.privacy import ledger
from pate.privacy.rdp import DEFAULT_ORDERS
from pate.stages import aggregate as stage
from pate.stages import open_run
from pate.aggregation.ledger_files import ledger_key
from pate.run.artifacts import Context

from ..conftest import TINY_PIPELINE, edit_pipeline, finish_votes_stage

K, M, Q, DELTA = 6, 10, 40, 1e-4
T, SIGMA1, SIGMA2, GAMMA = 4.0, 1.0, 1.0, 0.5
# DESIGN §6: arange(2, 101, 0.5) ∪ logspace(2, log10 500, 100), sorted, unique
ORDERS = np.unique(np.concatenate([np.arange(2, 101, 0.5), np.logspace(2, math.log10(500), 100)]))


# ----------------------------------------------------------------------------- independent accounting


def rdp_epsilon(curve) -> float:
    return float(compute_epsilon(ORDERS, np.asarray(curve, dtype=float), DELTA)[0])


def gaussian_rdp(mu2: float) -> np.ndarray:
    """λ·Σ Δ²/(2σ²): the continuous Gaussians' RDP, which bounds the discrete Gaussians' for integer shifts."""
    return ORDERS * mu2 / 2


def discrete_gaussian_pmf(sigma: float):
    z = np.arange(-int(60 * sigma) - 10, int(60 * sigma) + 11)
    w = np.exp(-z.astype(float) ** 2 / (2 * sigma * sigma))
    return z, w / w.sum()


def laplace_rdp(gamma: float) -> np.ndarray:
    """The discrete Laplace's RDP (pmf ∝ e^{−γ|z|}, sensitivity 1), summed over the integers."""
    z = np.arange(-int(100 / gamma) - 10, int(100 / gamma) + 11)
    log_norm = math.log((1 + math.exp(-gamma)) / (1 - math.exp(-gamma)))
    lp, lq = -gamma * np.abs(z) - log_norm, -gamma * np.abs(z - 1) - log_norm
    return np.array([np.logaddexp.reduce(lam * lp + (1 - lam) * lq) / (lam - 1) for lam in ORDERS])


def confident_worst_case_rdp() -> np.ndarray:
    """DESIGN §6, per query: max over the realisable max counts v ∈ [⌈K/M⌉, K] and neighbours
    v' = v ± 1, 0 of (1/(λ−1))·log(P0^λ Q0^{1−λ} + P1^λ Q1^{1−λ} e^{(λ−1)λ/σ2²}), with P1 = Pr[v + Z ≥ T]
    for the discrete Gaussian Z pate draws, summed from its pmf."""
    lam, counts = ORDERS, range(-(-K // M), K + 1)
    z, p = discrete_gaussian_pmf(SIGMA1)
    answered = {v: float(p[v + z >= T].sum()) for v in counts}
    worst = np.zeros_like(lam)
    for v in counts:
        for w in (v - 1, v, v + 1):
            if w not in counts:
                continue
            p1, q1 = math.log(answered[v]), math.log(answered[w])
            p0, q0 = math.log1p(-answered[v]), math.log1p(-answered[w])
            term = np.logaddexp(lam * p0 + (1 - lam) * q0, lam * p1 + (1 - lam) * q1 + (lam - 1) * lam / SIGMA2 ** 2)
            worst = np.maximum(worst, term / (lam - 1))
    return worst


def pld_epsilon(parts, pessimistic: bool, laplace: bool = False) -> float:
    """``dp_accounting``'s PLD of sensitivity-1 discrete Gaussians (or discrete Laplaces) [(σ or γ, count)],
    composed: pessimistic = an upper bound (at δ less pate's 1e-15 for the truncated tail), optimistic
    = a lower bound of that composition."""
    total = None
    for scale, count in parts:
        make = (privacy_loss_distribution.from_discrete_laplace_mechanism if laplace
                else privacy_loss_distribution.from_discrete_gaussian_mechanism)
        one = make(scale, 1, pessimistic_estimate=pessimistic, value_discretization_interval=1e-4,
                   use_connect_dots=pessimistic)
        composed = one.self_compose(count)
        total = composed if total is None else total.compose(composed)
    return float(total.get_epsilon_for_delta(DELTA - (1e-15 if pessimistic and not laplace else 0.0)))


def expected_epsilon(mechanism: str, count: int) -> tuple[float, float]:
    """(least, most) the statement may say for ``count`` asked queries of ``mechanism``: the smaller of
    the RDP bound and the PLD of the discrete noise, the PLD bracketed by its optimistic and
    pessimistic estimates."""
    if mechanism == "gnmax":  # two counts move per answer
        rdp_eps, parts = rdp_epsilon(gaussian_rdp(count * 2 / SIGMA2 ** 2)), [(SIGMA2, 2 * count)]
    elif mechanism == "confident-gnmax":  # the mixture bound, or every query answered
        rdp_eps, parts = rdp_epsilon(count * confident_worst_case_rdp()), [(SIGMA1, count), (SIGMA2, 2 * count)]
    elif mechanism == "interactive-gnmax":  # the check (sensitivity 1) and GNMax on every query
        rdp_eps = rdp_epsilon(gaussian_rdp(count * (1 / SIGMA1 ** 2 + 2 / SIGMA2 ** 2)))
        parts = [(SIGMA1, count), (SIGMA2, 2 * count)]
    elif mechanism == "lnmax":
        rdp_eps = rdp_epsilon(2 * count * laplace_rdp(GAMMA))
        return (min(rdp_eps, pld_epsilon([(GAMMA, 2 * count)], False, laplace=True)),
                min(rdp_eps, pld_epsilon([(GAMMA, 2 * count)], True, laplace=True)))
    else:
        raise AssertionError(mechanism)
    return min(rdp_eps, pld_epsilon(parts, False)), min(rdp_eps, pld_epsilon(parts, True))


# ----------------------------------------------------------------------------- runs


def make_run(tmp_path, mechanism, fake_data_root=None, privacy=None, teachers=None, **aggregator):
    agg = {"mechanism": mechanism, "max_queries": Q, "threshold": T, "sigma1": SIGMA1, "sigma2": SIGMA2,
           "gamma": GAMMA, "seed": 7, **aggregator}
    cfg = config_mod.from_dict({
        "name": "asked", "data": {"private_size": 600, "student_pool": 300, "test_size": 100},
        "teachers": {"count": K, **(teachers or {})}, "aggregator": agg, "privacy": {"delta": DELTA, **(privacy or {})},
        "student": {"method": "supervised", "batch_size": 16, "steps": 10}})
    run = open_run(tmp_path / mechanism, cfg)
    rng = np.random.default_rng(1)
    votes = np.zeros((Q, M), np.int64)
    for i in range(Q):  # confident and split rows, each summing to K
        top = rng.integers(0, K + 1)
        votes[i, rng.integers(0, M)] += top
        votes[i] += np.bincount(rng.integers(0, M, K - top), minlength=M)
    finish_votes_stage(run, votes)
    kwargs = {} if fake_data_root is None else {"data_root": fake_data_root}
    return Context(run=run, quiet=True, **kwargs)


def asked(run) -> list[ledger.QueryRecord]:
    """What was asked: the ledger's records (chain checked with the run's key)."""
    return ledger.parse(run.file("ledger.jsonl").read_text(), ledger_key(run)).records


def statement(run) -> dict:
    return json.loads(run.file("privacy.json").read_text())["public"]


def logged_epsilon(run) -> float:
    """The aggregation's epsilon as the spend log recorded it, before the first query."""
    mine = [e for e in spend_log.entries() if e.kind == "aggregation" and e.run_dir == str(run.path.resolve())]
    assert len(mine) == 1, mine
    return mine[0].epsilon


def test_the_independent_orders_are_the_default_ones():
    np.testing.assert_array_equal(ORDERS, DEFAULT_ORDERS)


@pytest.mark.parametrize("mechanism", ["lnmax", "gnmax", "confident-gnmax"])
def test_batch_statement_is_the_composition_of_the_asked_queries(tmp_path, mechanism):
    ctx = make_run(tmp_path, mechanism)
    stage.run(ctx)
    records, public = asked(ctx.run), statement(ctx.run)
    assert [r.query for r in records] == list(range(Q))
    assert public["queries_asked"] == len(records) == public["guarantee"]["queries"] == Q
    assert public["queries_answered"] == sum(r.answered for r in records) and not public["stopped_by_budget"]
    assert public["orders"] == "default" and public["delta"] == DELTA
    lo, hi = expected_epsilon(mechanism, len(records))
    eps = public["guarantee"]["epsilon"]
    assert lo - 1e-9 <= eps <= hi * (1 + 1e-6) + 1e-9, (lo, eps, hi)
    assert logged_epsilon(ctx.run) == pytest.approx(eps, rel=1e-12)


@pytest.mark.parametrize("mechanism, budget", [("gnmax", 20.0), ("confident-gnmax", 20.0), ("lnmax", 6.0)])
def test_a_budget_stops_early_and_the_statement_covers_exactly_the_asked_queries(tmp_path, mechanism, budget):
    ctx = make_run(tmp_path, mechanism, epsilon_budget=budget)
    stage.run(ctx)
    records, public = asked(ctx.run), statement(ctx.run)
    count = len(records)
    assert 0 < count < Q and public["stopped_by_budget"]
    assert [r.query for r in records] == list(range(count))
    assert public["queries_asked"] == count == public["guarantee"]["queries"]
    assert public["settings"]["epsilon_budget"] == budget
    lo, hi = expected_epsilon(mechanism, count)
    eps = public["guarantee"]["epsilon"]
    assert lo - 1e-9 <= eps <= hi * (1 + 1e-6) + 1e-9 and eps <= budget, (lo, eps, hi)
    assert logged_epsilon(ctx.run) == pytest.approx(eps, rel=1e-12)
    # the filter (RDP, one order) stopped where one more query would pass the budget, not before
    per_query = {"gnmax": gaussian_rdp(2 / SIGMA2 ** 2), "confident-gnmax": confident_worst_case_rdp(),
                 "lnmax": 2 * laplace_rdp(GAMMA)}[mechanism]
    assert rdp_epsilon(count * per_query) <= budget + 1e-9 < rdp_epsilon((count + 1) * per_query) + 1e-9


def test_interactive_statement_is_the_composition_of_every_asked_query(tmp_path, fake_data_root):
    ctx = make_run(tmp_path, "interactive-gnmax", fake_data_root, interactive_rounds=2, interactive_steps=10,
                   student_confidence=0.5)
    stage.run(ctx)
    records, public = asked(ctx.run), statement(ctx.run)
    assert [r.query for r in records] == list(range(Q))
    assert public["queries_asked"] == len(records) == public["guarantee"]["queries"] == Q
    assert public["answered_by_teachers"] == sum(r.by_teachers for r in records)
    lo, hi = expected_epsilon("interactive-gnmax", len(records))
    assert lo - 1e-9 <= public["guarantee"]["epsilon"] <= hi * (1 + 1e-6) + 1e-9, (lo, hi)
    assert public["guarantee"]["epsilon"] > 90  # the reviewer's true worst case (99.9), not 4 queries' 18.21
    assert logged_epsilon(ctx.run) == pytest.approx(public["guarantee"]["epsilon"], rel=1e-12)


def _fake_neighbourhoods(run, records: int, size: int, seed: int = 2) -> None:
    """neighbours.npz as the vote stage writes it for private-knn: each query's members (positions in
    the run's private records) and the records' labels."""
    from pate.io import atomic_save_npz

    rng = np.random.default_rng(seed)
    hoods = [np.sort(rng.choice(records, size=rng.integers(0, size + 1), replace=False)) for _ in range(Q)]
    indptr = np.concatenate([[0], np.cumsum([len(h) for h in hoods])]).astype(np.int64)
    labels = rng.integers(0, 3, records)  # few classes: neighbourhoods agree often enough to answer
    with np.load(run.file("votes.npz")) as v:
        query_index = v["query_index"]
    atomic_save_npz(run.file("neighbours.npz"), private=True, indptr=indptr,
                    members=np.concatenate(hoods).astype(np.int64), records=np.arange(records, dtype=np.int64),
                    labels=labels, query_index=query_index, radius2=np.ones(Q))
    run.finish("vote", ["votes.npz", "neighbours.npz"])


def test_private_knn_no_record_spends_past_the_statement(tmp_path):
    sigma1, sigma2, record_eps = 4.0, 3.0, 2.0
    ctx = make_run(tmp_path, "private-knn", teachers={"features": "scattering"}, threshold=6.0, sigma1=sigma1,
                   sigma2=sigma2, knn_k=20, privacy={"record_epsilon": record_eps})
    _fake_neighbourhoods(ctx.run, 600, 60)
    stage.run(ctx)
    records, public = asked(ctx.run), statement(ctx.run)
    assert public["queries_asked"] == len(records) == Q
    assert public["queries_answered"] == sum(r.answered for r in records)
    eps = public["guarantee"]["epsilon"]
    assert record_eps - 1e-3 < eps <= record_eps
    # each record's spend over the queries it voted in, from the ledger's answered flags (plain loops)
    with np.load(ctx.run.file("neighbours.npz")) as hoods:
        indptr, members, labels = hoods["indptr"], hoods["members"], hoods["labels"]
    c1, c2 = 1 / (2 * sigma1 ** 2), 1 / (2 * sigma2 ** 2)  # per order λ: λ·c (sensitivity 1)
    affordable = brentq(lambda s: rdp_epsilon(ORDERS * s) - record_eps, 1e-9, record_eps)
    spent = np.zeros(600)
    for t, record in enumerate(records):
        voters = [i for i in members[indptr[t]:indptr[t + 1]]
                  if spent[i] + c1 + c2 <= affordable * (1 + 1e-9)]  # may afford a whole query: votes
        assert np.bincount(labels[voters], minlength=M).max() == record.top_count  # the ledger's voters
        spent[voters] += c1 + (c2 if record.answered else 0.0)
    assert (spent > 0).any() and any(r.answered for r in records)
    assert max(rdp_epsilon(ORDERS * s) for s in np.unique(spent)) <= eps + 1e-6


# ----------------------------------------------------------------------------- refused at config time

REVIEWED = edit_pipeline(textwrap.dedent(TINY_PIPELINE), ('mechanism = "confident-gnmax"',
                                                          'mechanism = "interactive-gnmax"\nepsilon_budget = 20.0'))


@pytest.mark.parametrize("command", ["run", "aggregate"])
def test_interactive_with_an_epsilon_budget_is_refused_in_one_line(tmp_path, fake_data_root, command):
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(REVIEWED)
    result = CliRunner().invoke(main, [command, str(pipeline), "--run-dir", str(tmp_path / "run"),
                                       "--data-root", str(fake_data_root), "-q"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "[aggregator] epsilon_budget must be 0 with mechanism 'interactive-gnmax'" in lines[0]
    assert not (tmp_path / "run").exists()
