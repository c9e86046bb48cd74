"""`pate plan`: figures from public settings only, cross-checked against pate.privacy.rdp."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from pate import config as config_mod
from pate.privacy.mechanisms import ConfidentGNMax
from pate.views import planning
from pate.cli import main
from pate.privacy import rdp

ROOT = Path(__file__).resolve().parents[2]
MNIST = ROOT / "pipelines" / "mnist.toml"
ORDERS = rdp.DEFAULT_ORDERS
FAST = settings(max_examples=25, deadline=None)


def mnist(**changes) -> planning.PlanParams:
    base = planning.PlanParams(mechanism="confident-gnmax", teachers=250, classes=10, queries=640,
                           threshold=200.0, sigma1=150.0, sigma2=40.0, delta=1e-5)
    return replace(base, **changes)


def eps(curve, delta=1e-5, conversion="improved"):
    return rdp.eps_from_rdp(curve, ORDERS, delta, conversion, warn_edge=False)[0]


def invoke(*args):
    return CliRunner().invoke(main, ["plan", *map(str, args)])


# ----------------------------------------------------------------------------- the paper's MNIST figures


def test_mnist_pipeline_params():
    params = planning.params_from(config_mod.load(MNIST))
    assert params == mnist()
    assert planning.params_from(config_mod.load(MNIST), sigma2=60.0, queries=100) == mnist(sigma2=60.0, queries=100)


def test_paper_mnist_unanimous_answer_rate_and_threshold_cost():
    params = mnist()
    pr = planning.answer_probability(params, planning.unanimous_row(params)[None])[0]
    # Pr[250 + Z ≥ 200] for the discrete Gaussian pate draws: its pmf summed (the paper's continuous
    # noise gives Φ(50/150) = 0.6306; the integer Z = −50 counts too, about 0.0013 more)
    z = np.arange(-6000, 6001)
    w = np.exp(-z.astype(float) ** 2 / (2 * 150.0 ** 2))
    assert pr == pytest.approx(w[z >= -50].sum() / w.sum(), rel=1e-10) and pr == pytest.approx(0.63, abs=0.005)
    # "the threshold step alone costs about eps 0.8 over 640 queries": the paper's classic conversion,
    # data-independent and data-dependent alike (q = min(Pr, 1 - Pr) = 0.37 is too large for Thm 6).
    classic = planning.make_plan(mnist(conversion="classic"))
    assert classic["data_independent"]["threshold_step"] == pytest.approx(0.8235, abs=1e-3)
    assert classic["best_case_unanimous"]["threshold_step"] == pytest.approx(0.8235, abs=1e-3)
    assert planning.make_plan(params)["data_independent"]["threshold_step"] == pytest.approx(0.6603, abs=1e-3)


# ----------------------------------------------------------------------------- agreement with rdp


def test_figures_agree_with_rdp():
    params = mnist()
    profile = planning.Profile.of([0.9, 0.6], [3, 1])
    result = planning.make_plan(params, profile)
    q = 640
    thr_di, gn_di = rdp.rdp_threshold_data_independent(150, ORDERS), rdp.rdp_gnmax_data_independent(40, ORDERS)
    di = result["data_independent"]
    assert di["threshold_step"] == eps(q * thr_di)
    assert di["gnmax_all_answered"] == eps(q * gn_di)
    assert di["all_answered"] == eps(q * (thr_di + gn_di))
    rows = profile.rows(params)
    pr = np.exp(rdp.logpr_answered(rows, 200, 150))
    rate = 0.75 * pr[0] + 0.25 * pr[1]
    assert result["consensus_profile"]["expected_answer_rate"] == pytest.approx(rate, rel=1e-12)
    assert di["at_expected_answer_rate"] == pytest.approx(eps(q * thr_di + q * rate * gn_di), rel=1e-12)
    # best case: the paper's expected cost of 640 unanimous queries, composed by hand
    v = np.zeros((1, 10), dtype=int)
    v[0, 0] = 250
    logpr = rdp.logpr_answered(v, 200, 150)
    thr = rdp.rdp_threshold(logpr, 150, ORDERS)[0]
    gn = rdp.rdp_gnmax(rdp.logq_gnmax(v, 40), 40, ORDERS)[0]
    best = result["best_case_unanimous"]
    assert best["epsilon_expected"] == pytest.approx(eps(q * (thr + np.exp(logpr[0]) * gn)), rel=1e-12)
    assert best["epsilon_all_answered"] == pytest.approx(eps(q * (thr + gn)), rel=1e-12)
    # the same expected cost as the mechanism's composed curve on 640 copies of the row
    expected = ConfidentGNMax(200, 150, 40).expected_rdp(np.repeat(v, q, axis=0), ORDERS)
    assert best["epsilon_expected"] == pytest.approx(eps(expected), rel=1e-9)
    # one table cell against rdp directly
    cell = result["per_query"][1]
    row = planning.vote_row(250, 10, cell["top"], cell["gap"])[None]
    j = int(np.argmin(np.abs(ORDERS - cell["order"])))
    assert cell["rdp_gnmax"] == rdp.rdp_gnmax(rdp.logq_gnmax(row, 40), 40, ORDERS)[0, j]
    assert cell["rdp_threshold"] == rdp.rdp_threshold(rdp.logpr_answered(row, 200, 150), 150, ORDERS)[0, j]


def test_gnmax_mechanism_has_no_threshold_step():
    params = planning.params_from(None, teachers=100, queries=50, sigma2=20.0, delta=1e-5)
    assert params.mechanism == "gnmax" and params.classes == 10
    result = planning.make_plan(params)
    assert result["data_independent"]["threshold_step"] is None
    assert result["consensus_profile"]["expected_answer_rate"] == 1.0
    assert result["data_independent"]["all_answered"] == eps(50 * rdp.rdp_gnmax_data_independent(20, ORDERS))


# ----------------------------------------------------------------------------- hypothetical votes


@given(k=st.integers(1, 400), m=st.integers(2, 12), data=st.data())
@FAST
def test_consensus_and_vote_rows(k, m, data):
    level = data.draw(st.floats(1.0 / m, 1.0))
    row = planning.consensus_row(k, m, level)
    assert row.sum() == k and row.argmax() == 0 and row[0] == max(round(level * k), -(-k // m))
    top = data.draw(st.integers(-(-k // m), k))
    runner = min(top, k - top)
    cell = planning.vote_row(k, m, top, top - runner)
    assert cell.sum() == k and cell[0] == top and cell[1:].max() == runner


def test_infeasible_rows_are_plan_errors():
    with pytest.raises(planning.PlanError):
        planning.vote_row(10, 3, 5, 5)  # 5 votes left, one class, runner-up 0
    with pytest.raises(planning.PlanError, match="consensus"):
        planning.consensus_row(10, 10, 0.05)
    with pytest.raises(planning.PlanError, match="weights"):
        planning.Profile.of([0.9, 0.5], [1])


# ----------------------------------------------------------------------------- monotonicity


sigmas = st.floats(1.0, 500.0)


@given(s_a=sigmas, s_b=sigmas, s1=sigmas, q=st.integers(1, 2000))
@FAST
def test_epsilon_decreases_in_sigma(s_a, s_b, s1, q):
    lo, hi = sorted((s_a, s_b))
    p = mnist(queries=q, sigma1=s1)
    assert planning.data_independent_epsilon(replace(p, sigma2=hi)) <= planning.data_independent_epsilon(replace(p, sigma2=lo))
    p = mnist(queries=q, sigma2=s1)
    assert planning.data_independent_epsilon(replace(p, sigma1=hi)) <= planning.data_independent_epsilon(replace(p, sigma1=lo))


@given(q_a=st.integers(1, 5000), q_b=st.integers(1, 5000), s2=sigmas, s1=sigmas, level=st.floats(0.1, 1.0))
@FAST
def test_epsilon_and_labels_increase_in_queries(q_a, q_b, s2, s1, level):
    lo, hi = sorted((q_a, q_b))
    p = mnist(sigma1=s1, sigma2=s2)
    assert planning.data_independent_epsilon(p, lo) <= planning.data_independent_epsilon(p, hi)
    rate = planning.answer_probability(p, planning.consensus_row(250, 10, level)[None])[0]
    assert planning.data_independent_epsilon(p, lo, lo * rate) <= planning.data_independent_epsilon(p, hi, hi * rate)
    unanimous = planning.unanimous_row(p)[None]
    assert (planning.eps(p, planning.expected_rdp(replace(p, queries=lo), unanimous))[0]
            <= planning.eps(p, planning.expected_rdp(replace(p, queries=hi), unanimous))[0])


# ----------------------------------------------------------------------------- calibration and search


@given(target=st.floats(0.05, 30.0), q=st.integers(1, 3000),
       delta=st.sampled_from([1e-5, 1e-6, 1e-8]))
@settings(max_examples=8, deadline=None)  # each bisection step builds a discrete Gaussian PLD (~0.05 s)
def test_calibrated_sigma2_never_overshoots(target, q, delta):
    p = planning.params_from(None, teachers=250, queries=q, sigma2=1.0, delta=delta)
    sigma = planning.calibrate_sigma2(p, target)
    assert planning.guarantee(replace(p, sigma2=sigma)).epsilon <= target
    # and it is tight: 1% less noise is over the target
    assert planning.guarantee(replace(p, sigma2=0.99 * sigma)).epsilon > target


@given(target=st.floats(1e-3, 1e3), c=st.floats(0.01, 100.0), power=st.floats(0.2, 3.0))
@FAST
def test_calibrate_any_decreasing_cost(target, c, power):
    cost = lambda s: c / s**power  # noqa: E731
    lo, hi = 1e-6, 1e6
    if cost(hi) > target:
        with pytest.raises(planning.PlanError, match="out of reach"):
            planning.calibrate(target, cost, lo, hi)
        return
    sigma = planning.calibrate(target, cost, lo, hi)
    assert cost(sigma) <= target
    assert sigma == lo or sigma <= (c / target) ** (1 / power) * 1.002


def test_search_respects_the_target_and_uses_all_the_budget():
    params = mnist()
    profile = planning.Profile.of([0.9, 0.7], [2, 1])
    best = planning.search(params, 2.0, profile)
    assert len(best) == 5
    keys = [r["expected_agreeing_labels"] for r in best]
    assert keys == sorted(keys, reverse=True)
    for r in best:
        p = replace(params, threshold=r["threshold"], sigma1=r["sigma1"], sigma2=r["sigma2"], queries=r["queries"])
        assert r["guarantee"] == planning.guarantee(p).epsilon <= 2.0
        assert r["threshold"] / 250 in planning.GRID_THRESHOLD and r["sigma2"] / 250 in planning.GRID_SIGMA2
        if r["queries"] < params.queries:  # the largest Q that fits
            assert planning.guarantee(replace(p, queries=r["queries"] + 1)).epsilon > 2.0
    with pytest.raises(planning.PlanError):
        planning.search(params, 1e-3, profile)


# ----------------------------------------------------------------------------- CLI


def test_cli_table_and_json():
    result = invoke(MNIST, "--consensus", "0.9,0.6", "--consensus-weights", "3,1")
    assert result.exit_code == 0, result.output
    assert "GUARANTEE (safe to publish" in result.output and "best case" in result.output
    assert "epsilon 3.3201 at delta 1e-05" in result.output  # the paper's setting, worst case (discrete noise)
    data = json.loads(invoke(MNIST, "--format", "json", "--target-epsilon", "3").output)
    assert data["parameters"]["teachers"] == 250 and len(data["search"]["best"]) == 5
    assert data["guarantee"]["epsilon"] == pytest.approx(3.3201, abs=1e-4) and data["guarantee"]["accountant"] == "rdp"
    assert data["search"]["calibrated_sigma2"] > 40
    proposal = data["smooth_sensitivity_release"]
    assert proposal["order"] > 1 and 0 < proposal["beta"] < 1 / (2 * proposal["order"]) and proposal["sigma_ss"] > 0
    assert f"ss_order = {proposal['order']:g}" in proposal["config"]


def test_cli_explicit_options_override_and_replace_the_file():
    data = json.loads(invoke(MNIST, "--sigma2", "60", "--format", "json").output)
    assert data["parameters"]["sigma2"] == 60.0
    result = invoke("--teachers", 250, "--queries", 640, "--threshold", 200, "--sigma1", 150, "--sigma2", 40,
                    "--delta", 1e-5, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["data_independent"] == json.loads(invoke(MNIST, "--format", "json").output)[
        "data_independent"]


@pytest.mark.parametrize("args, message", [
    (["--sigma2", "0"], "sigma2 must be in [1e-06, 1e+09]"),
    (["--sigma1", "-1"], "sigma1 must be in [1e-06, 100000]"),
    (["--sigma1", "1e-300"], "sigma1 must be in [1e-06, 100000]"),  # squared to 0: the bounds were NaN
    (["--sigma1", "2e5"], "sigma1 must be in [1e-06, 100000]"),  # the threshold's discrete tails are summed
    (["--target-epsilon", "nan"], "--target-epsilon must be a finite number > 0"),
    (["--target-epsilon", "inf"], "--target-epsilon must be a finite number > 0"),
    (["--target-epsilon", "-1"], "--target-epsilon must be a finite number > 0"),
    (["--threshold", "300"], "threshold must be in [0, teachers = 250]"),
    (["--delta", "1"], "delta must be in (0, 1)"),
    (["--consensus", "0.05"], "consensus must be in"),
    (["--consensus", "x"], "comma-separated"),
    (["--target-epsilon", "0.001"], "no grid point answers even one query"),
    (["--teachers", "100000000"], "teachers must be an integer in [1, 100000]"),
    (["--classes", "100000000"], "classes must be an integer in [2, 10000]"),
    (["--queries", "1000001"], "queries must be an integer in [1, 1000000]"),
    (["--queries", "100001", "--target-epsilon", "2"], "queries must be at most 100000 for the --target-epsilon"),
    (["--teachers", "5001", "--target-epsilon", "2"], "teachers must be at most 5000 for the --target-epsilon"),
])
def test_cli_bad_parameters_are_one_line_errors(args, message):
    result = invoke(MNIST, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_missing_options_and_lnmax(tmp_path):
    result = invoke("--teachers", 250, "--sigma1", 150)
    assert result.exit_code == 2 and "--queries" in result.output and "--threshold" in result.output
    lnmax = tmp_path / "l.toml"
    lnmax.write_text(MNIST.read_text().replace('"confident-gnmax"', '"lnmax"'))
    result = invoke(lnmax)
    assert result.exit_code == 2 and "lnmax" in result.output
    assert invoke(tmp_path / "missing.toml").exit_code == 2
    result = invoke(MNIST, "--mechanism", "gnmax", "--threshold", 100)
    assert result.exit_code == 2 and "confident-gnmax only" in result.output


def test_cli_plot(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    png = tmp_path / "plan.png"
    result = invoke(MNIST, "--plot", png)
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = invoke(MNIST, "--plot", tmp_path / "no.png")
    assert result.exit_code == 2 and "pip install 'pate[plot]'" in result.output
    assert len(result.output.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- issue 31: sizes and sources


def test_plan_takes_the_classes_from_the_configs_class_list(tmp_path):
    pipeline = tmp_path / "arrays.toml"
    pipeline.write_text(MNIST.read_text().replace('dataset = "mnist"', 'source = "arrays"\nprivate_file = "p.npz"\n'
                                                  'public_file = "q.npz"\nclasses = ["cat", "dog", "bird"]'))
    assert config_mod.load(pipeline).data.classes == ("cat", "dog", "bird")
    result = invoke(pipeline, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["parameters"]["classes"] == 3
    # without a class list, the classes come from the public files, which planning does not read
    unnamed = tmp_path / "unnamed.toml"
    unnamed.write_text(pipeline.read_text().replace('classes = ["cat", "dog", "bird"]', ""))
    result = invoke(unnamed)
    assert result.exit_code == 2 and "missing --classes" in result.output
    assert invoke(unnamed, "--classes", 4).exit_code == 0


def test_plan_at_the_largest_sizes_ends_in_seconds_in_bounded_memory(tmp_path):
    pytest.importorskip("matplotlib")
    start = time.perf_counter()
    result = invoke(MNIST, "--teachers", 100_000, "--classes", 10_000, "--plot", tmp_path / "plan.png")
    assert result.exit_code == 0, result.output
    assert "no smooth-sensitivity release proposed: K*(m-1) = 999900000 is above 8388608" in result.output
    assert time.perf_counter() - start < 60


def test_max_queries_within_is_the_count_of_every_q_that_fits():
    # the bisection against the former conversion of every q = 1..Q at once
    for params, target in ((mnist(queries=2000), 2.0), (mnist(queries=2000), 0.5), (mnist(queries=300), 50.0),
                           (mnist(mechanism="gnmax", threshold=None, sigma1=None, queries=1500), 1.0),
                           (mnist(queries=50, sigma2=4.0), 1e-3)):
        rho = planning.settings_of(replace(params, queries=1)).per_query_worst_case()
        q = np.arange(1, params.queries + 1)
        fits = rdp.eps_from_rdp_rows(q[:, None] * rho[None, :], params.order_array, params.delta, params.conversion)
        count = int(np.count_nonzero(fits <= target))
        expected = params.queries if count < params.queries and planning.guarantee(params).epsilon <= target else count
        assert planning.max_queries_within(params, target) == expected
