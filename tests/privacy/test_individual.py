"""Individual Rényi accounting for Private-kNN, against quantities derived independently:
closed-form conversions, a direct per-record recomputation, exact Rényi divergences of one query."""
import math

import numpy as np
import pytest
from scipy.stats import norm

from pate.privacy import individual, mechanisms, rdp
from pate.privacy.noise import noise_source

ORDERS = np.concatenate([np.linspace(1.01, 10, 900), np.linspace(10.5, 2000, 4000)])


def test_gaussian_budget_matches_the_classic_closed_form():
    """Classic conversion of α·S over a fine order grid: ε(S) = S + 2·sqrt(S·log(1/δ)) (the optimum
    at α* = 1 + sqrt(log(1/δ)/S)); the budget inverts it."""
    delta = 1e-5
    for eps in (0.3, 1.0, 2.0, 8.0):
        s = individual.gaussian_budget(eps, ORDERS, delta, "classic")
        closed = s + 2 * math.sqrt(s * math.log(1 / delta))
        assert closed == pytest.approx(eps, rel=2e-3)
        # and the inverse in closed form: sqrt(S) = sqrt(ε + L) − sqrt(L)
        assert math.sqrt(s) == pytest.approx(math.sqrt(eps + math.log(1 / delta)) - math.sqrt(math.log(1 / delta)),
                                             rel=2e-3)


@pytest.mark.parametrize("conversion", ["classic", "improved"])
def test_the_budget_is_the_largest_that_fits(conversion):
    orders = rdp.DEFAULT_ORDERS
    for eps in (0.5, 1.0, 3.0):
        s = individual.gaussian_budget(eps, orders, 1e-5, conversion)
        assert individual.epsilon_of_budget(s, orders, 1e-5, conversion)[0] <= eps
        assert individual.epsilon_of_budget(s * (1 + 1e-6), orders, 1e-5, conversion)[0] > eps
    improved = individual.gaussian_budget(1.0, orders, 1e-5, "improved")
    assert improved > individual.gaussian_budget(1.0, orders, 1e-5, "classic")  # the better conversion allows more


def _exact_one_query_divergence(n_with, n_without, threshold, s1, s2, alpha):
    """D_α(P || Q) of one Confident-GNMax query with 2 classes, outputs {⊥, 0, 1}, computed exactly:
    P(⊥) = Φ((T − max n)/σ1), P(j) = (1 − P(⊥))·Φ((n_j − n_other)/(√2 σ2))."""
    def dist(n):
        bottom = norm.cdf((threshold - max(n)) / s1)
        win0 = norm.cdf((n[0] - n[1]) / (math.sqrt(2) * s2))
        return np.array([bottom, (1 - bottom) * win0, (1 - bottom) * (1 - win0)])

    p, q = dist(n_with), dist(n_without)
    return math.log(np.sum(p ** alpha * q ** (1 - alpha))) / (alpha - 1)


@pytest.mark.parametrize("alpha", [2.0, 5.0, 20.0])
def test_one_query_charges_bound_the_exact_divergence(alpha):
    """Removing a record with label 0 from a neighbourhood lowers n_0 by one; the exact Rényi
    divergence of the query's outputs, both ways, never exceeds α·(c1 + c2)."""
    s1, s2, threshold = 3.0, 2.0, 6.0
    charges = individual.Charges.of(s1, s2)
    worst = 0.0
    for n0 in range(1, 15):
        for n1 in range(0, 15):
            with_, without = (n0, n1), (n0 - 1, n1)
            d = max(_exact_one_query_divergence(with_, without, threshold, s1, s2, alpha),
                    _exact_one_query_divergence(without, with_, threshold, s1, s2, alpha))
            worst = max(worst, d)
            assert d <= alpha * charges.full + 1e-12
    assert worst > 0.2 * alpha * charges.full  # the bound is not vacuous on these histograms


def _random_case(seed, queries=60, records=40, classes=3):
    rng = np.random.default_rng(seed)
    rows = [np.sort(rng.choice(records, size=rng.integers(0, 15), replace=False)) for _ in range(queries)]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    hoods = individual.Neighbourhoods(indptr.astype(np.int64), np.concatenate(rows).astype(np.int64))
    labels = rng.integers(0, classes, records)
    return hoods, labels, rng


def test_spend_equals_a_direct_per_record_computation():
    hoods, labels, rng = _random_case(0)
    charges = individual.Charges.of(1.5, 2.0)
    budget = rng.choice([3, 6, 100], size=len(labels)) * charges.full  # some retire, some never
    state = individual.FilterState.fresh(budget)
    z1, z2 = individual.draw_noise(noise_source(7), hoods.num_queries, 3, 1.5, 2.0)
    decided, votes = individual.decide(hoods, labels, state, charges, start=0, threshold=2.0, z1=z1, z2=z2)
    # Direct: walk the queries with a plain dict of spends, one record at a time.
    spent = {i: 0.0 for i in range(len(labels))}
    for t in range(hoods.num_queries):
        voters = [int(i) for i in hoods.of(t) if spent[int(i)] + charges.threshold + charges.answer <= budget[i] * (1 + 1e-12)]
        counts = [sum(labels[i] == c for i in voters) for c in range(3)]
        assert list(votes[t]) == counts
        answered = max(counts) + z1[t] >= 2.0
        assert (decided[t] >= 0) == answered
        if answered:
            assert decided[t] == int(np.argmax(np.array(counts) + z2[t]))
        for i in voters:
            spent[i] += charges.threshold + (charges.answer if answered else 0.0)
    np.testing.assert_allclose(state.spent, [spent[i] for i in range(len(labels))], rtol=1e-12)
    # The filter's promise: nobody's RDP at any order passes α times its budget.
    for alpha in (2.0, 10.0, 64.0):
        assert (alpha * state.spent <= alpha * budget * (1 + 1e-12)).all()
    assert state.retired(charges).any() and not state.retired(charges).all()


def test_a_retired_record_never_votes_again_and_retires_at_its_own_budget():
    # One record in every query, always answered (a big threshold margin): it can afford exactly
    # floor(budget / full) queries, then it stops voting.
    queries = 10
    hoods = individual.Neighbourhoods(np.arange(queries + 1, dtype=np.int64), np.zeros(queries, dtype=np.int64))
    charges = individual.Charges.of(1.0, 1.0)
    for affordable in (0.5, 1, 3, 7):
        state = individual.FilterState.fresh(np.array([affordable * charges.full]))
        z1, z2 = np.zeros(queries), np.zeros((queries, 2))
        _, votes = individual.decide(hoods, np.array([1]), state, charges, start=0, threshold=1.0, z1=z1, z2=z2)
        assert votes[:, 1].tolist() == [1] * int(affordable) + [0] * (queries - int(affordable))
        assert state.spent[0] <= state.budget[0] * (1 + 1e-12)


def test_without_retirement_it_is_confident_gnmax_on_the_neighbourhood_votes():
    hoods, labels, _ = _random_case(3)
    charges = individual.Charges.of(2.0, 3.0)
    state = individual.FilterState.fresh(np.full(len(labels), 1e9))
    z1, z2 = individual.draw_noise(noise_source(11), hoods.num_queries, 3, 2.0, 3.0)
    decided, votes = individual.decide(hoods, labels, state, charges, start=0, threshold=3.0, z1=z1, z2=z2)
    expected = mechanisms.confident_gnmax(votes, 3.0, 2.0, 3.0, noise_source(11))  # the same draws, in order
    np.testing.assert_array_equal(decided, expected)


def test_replay_rebuilds_the_state_from_the_answered_flags():
    hoods, labels, rng = _random_case(5)
    charges = individual.Charges.of(1.0, 1.5)
    budget = rng.uniform(1, 6, len(labels)) * charges.full
    state = individual.FilterState.fresh(budget)
    z1, z2 = individual.draw_noise(noise_source(2), hoods.num_queries, 3, 1.0, 1.5)
    half = hoods.num_queries // 2
    first, v1 = individual.decide(hoods, labels, state, charges, start=0, threshold=1.5, z1=z1[:half], z2=z2[:half])
    # Resume: rebuild from the flags of the first half, continue with the rest.
    resumed, _, _ = individual.replay(hoods, labels, budget, charges, first >= 0, 3)
    np.testing.assert_array_equal(resumed.spent, state.spent)
    second, v2 = individual.decide(hoods, labels, resumed, charges, start=half, threshold=1.5, z1=z1[half:],
                                   z2=z2[half:])
    whole_state = individual.FilterState.fresh(budget)
    whole, votes = individual.decide(hoods, labels, whole_state, charges, start=0, threshold=1.5, z1=z1, z2=z2)
    np.testing.assert_array_equal(np.concatenate([first, second]), whole)
    np.testing.assert_array_equal(np.concatenate([v1, v2]), votes)
    final, replayed_votes, retired_after = individual.replay(hoods, labels, budget, charges, whole >= 0, 3)
    np.testing.assert_array_equal(replayed_votes, votes)
    np.testing.assert_allclose(final.spent, whole_state.spent)
    assert ((retired_after >= 0) == final.retired(charges)).all()


def test_group_guarantees_never_exceed_their_budgets():
    groups = individual.group_guarantees(np.array([1.0, 0.5, 1.0, 2.0]), rdp.DEFAULT_ORDERS, 1e-5, "improved")
    assert [g["budget_epsilon"] for g in groups] == [0.5, 1.0, 2.0]
    assert all(g["epsilon"] <= g["budget_epsilon"] and g["epsilon"] > 0.99 * g["budget_epsilon"] for g in groups)


def test_bad_inputs():
    with pytest.raises(ValueError):
        individual.FilterState.fresh(np.array([1.0, 0.0]))
    with pytest.raises(ValueError):
        individual.gaussian_budget(0.0, rdp.DEFAULT_ORDERS, 1e-5)
    with pytest.raises(ValueError):
        individual.Neighbourhoods(np.array([0, 3, 2]), np.arange(3))
