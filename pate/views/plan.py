"""`pate plan`'s output: the plan as a table, its plot, the Private-kNN plan as text.

The figures and the search are ``pate.views.planning``'s; this module only writes them out.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..aggregation.settings import WARN_EPSILON
from . import figures
from .planning import (KNN_AGREEMENT, KNN_HEADROOM, PlanParams, Profile, answer_probability, consensus_row,
                       data_independent_epsilon, eps, expected_rdp, unanimous_row)


def _f(x, spec: str = ".4f", width: int = 0) -> str:
    return ("-" if x is None else format(x, spec)).rjust(width)


def render_table(plan: dict) -> str:
    p, di, best = plan["parameters"], plan["data_independent"], plan["best_case_unanimous"]
    prof = plan["consensus_profile"]
    thr = p["threshold"] is not None
    g, ss = plan["guarantee"], plan["smooth_sensitivity_release"]
    lines = [f"# {plan['public']}",
             f"{p['mechanism']}: K={p['teachers']} teachers, m={p['classes']} classes, Q={p['queries']} queries, "
             + (f"T={p['threshold']:g}, sigma1={p['sigma1']:g}, " if thr else "")
             + f"sigma2={p['sigma2']:g}, delta={p['delta']:g} ({p['conversion']} conversion)", "",
             f"GUARANTEE (safe to publish; worst case over every dataset, from these settings alone): "
             f"epsilon {g['epsilon']:.4f} at delta {g['delta']:g} ({g['accountant']} accountant"
             + (f", order {g['order']:g}" if g["order"] else "") + ")"
             + (f"; above {WARN_EPSILON:g}, it promises little" if g["epsilon"] > WARN_EPSILON else "")]
    if plan.get("smooth_sensitivity_note"):
        lines.append(plan["smooth_sensitivity_note"])
    if ss:
        lines.append(f"smooth-sensitivity release parameters, proposed from public settings: order {ss['order']:g}, "
                     f"beta {ss['beta']:g}, sigma_ss {ss['sigma_ss']:g} (the release itself costs RDP "
                     f"{ss['release_rdp_at_order']:.4g} at that order, added to the guarantee)")
    lines += ["", "for comparison: composition with every query answered (valid, looser than the guarantee)"]
    if thr:
        lines.append(f"  threshold step, {p['queries']} queries            {_f(di['threshold_step'])}")
    lines += [f"  GNMax, all {p['queries']} answered               {_f(di['gnmax_all_answered'])}",
              f"  total, all answered                   {_f(di['all_answered'])}  (order {di['order']:g})",
              f"  odometer at the expected answer rate  {_f(di['at_expected_answer_rate'])}  "
              f"({prof['expected_answer_rate']:.3f} -> {prof['expected_labels']:.1f} labels expected; an output of "
              "the mechanism, not a bound fixed in advance)", "",
              "consensus profile (" + prof["rule"] + ")",
              f"  {'consensus':>9} {'weight':>6} {'Pr[answer]':>10} {'labels':>8} {'eps DI':>8} {'eps DD exp':>10}"]
    lines += [f"  {lv['consensus']:>9.3g} {lv['weight']:>6.3g} {lv['answer_probability']:>10.4f} "
              f"{lv['expected_labels']:>8.1f} {lv['epsilon_data_independent']:>8.4f} "
              f"{lv['epsilon_expected_data_dependent']:>10.4f}" for lv in prof["levels"]]
    lines += ["", f"one hypothetical query (RDP at order {plan['per_query'][0]['order']:g}; eps_Q = expected "
                  f"epsilon if all {p['queries']} queries were like it)",
              f"  {'top':>5} {'gap':>5} {'Pr[answer]':>10} {'rdp thr':>10} {'rdp gnmax':>10} {'eps_Q':>8}"]
    lines += [f"  {r['top']:>5} {r['gap']:>5} {r['answer_probability']:>10.4f} "
              f"{_f(r['rdp_threshold'] if thr else None, '.3g', 10)} "
              f"{r['rdp_gnmax']:>10.3g} {r['epsilon_q']:>8.4f}" for r in plan["per_query"]]
    lines += ["", f"best case, every vote unanimous: Pr[answer] {best['answer_probability']:.4f}, epsilon expected "
                  f"{best['epsilon_expected']:.4f}, all answered {best['epsilon_all_answered']:.4f}"
                  + (f", threshold step {best['threshold_step']:.4f}" if thr else "")]
    if "search" in plan:
        lines += _search_lines(plan["search"], thr)
    return "\n".join(lines) + "\n"


def _search_lines(s: dict, thr: bool) -> list[str]:
    lines = ["", f"grid search, guarantee epsilon <= {s['target_epsilon']:g} "
                 "(ranked by expected labels agreeing with the plurality)",
             f"  {'T':>7} {'sigma1':>7} {'sigma2':>7} {'Q':>6} {'eps':>7} {'labels':>8} {'agreeing':>8}"]
    lines += [f"  {_f(r['threshold'], 'g', 7)} {_f(r['sigma1'], 'g', 7)} {r['sigma2']:>7g} {r['queries']:>6} "
              f"{r['guarantee']:>7.4f} {r['expected_labels']:>8.1f} "
              f"{r['expected_agreeing_labels']:>8.1f}"
              for r in s["best"]]
    cal = s["calibrated_sigma2"]
    lines.append(f"  calibrated: sigma2 >= {cal:g} keeps the planned settings within the target" if cal else
                 "  calibrated: no sigma2 reaches the target with the planned settings"
                 + (" (the threshold step alone is over it)" if thr else ""))
    return lines


def plot(params: PlanParams, profile: Profile, path: Path, points: int = 40) -> None:
    """PNG: Pr[answered] against the top count, and ε against the number of queries."""
    plt = figures.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    tops = np.unique(np.linspace(-(-params.teachers // params.classes), params.teachers, 400).round().astype(int))
    votes = np.stack([consensus_row(params.teachers, params.classes, t / params.teachers) for t in tops])
    left.plot(tops, answer_probability(params, votes))
    if params.thresholded:
        left.axvline(params.threshold, color="tab:red", ls="--", label=f"T = {params.threshold:g}")
        left.legend(loc="upper left", fontsize=8)
    left.set(xlabel="top vote count", ylabel="Pr[answered]", title="Answer probability (public)")
    qs = np.unique(np.linspace(1, params.queries, points).astype(int))
    rate = float(np.asarray(profile.weights) @ answer_probability(params, profile.rows(params)))
    unanimous = unanimous_row(params)[None]
    curves = {"data-independent, all answered": [data_independent_epsilon(params, q) for q in qs],
              f"data-independent, answer rate {rate:.2f}": [data_independent_epsilon(params, q, q * rate) for q in qs],
              "best case (unanimous), expected": [eps(replace(params, queries=int(q)), expected_rdp(
                  replace(params, queries=int(q)), unanimous))[0] for q in qs]}
    if params.thresholded:
        curves["threshold step alone"] = [data_independent_epsilon(params, q, 0) for q in qs]
    for label, ys in curves.items():
        right.plot(qs, ys, label=label)
    right.set(xlabel="queries", ylabel=f"epsilon (delta = {params.delta:g})", title="Privacy against queries")
    right.legend(loc="upper left", fontsize=8)
    figures.save(fig, plt, path, made_for="plan plot")  # pate.run.outputs.PLAN_PLOT may replace it, nothing else


def render_reverse(plan: dict) -> str:
    g = plan["guarantee"]
    lines = [f"{plan['mechanism']}: planned from public settings only",
             f"GUARANTEE: epsilon {g['epsilon']:.4f} at delta {g['delta']:g} for every private record "
             f"({g['accountant']}: " + (f"one release over all {plan['anchors']} anchors, each record voting for "
                                        f"{plan['knn_k']} of them)" if plan["knn_k"] else "no record votes)"),
             f"votes: about {plan['expected_votes_per_anchor']:.0f} per anchor; the noise's sigma2 {plan['sigma2']:g} is "
             f"{plan['noise_over_votes']:.2f} of that" if plan["knn_k"] else
             "votes: none (knn_k = 0): the DP-SGD teacher labels every anchor and takes the whole budget"]
    if "dpsgd_teacher" in plan:
        d = plan["dpsgd_teacher"]
        lines.append(f"composed (the guarantee is the least of their RDP and PLD compositions): the votes alone "
                     f"epsilon {plan['votes_alone_epsilon_rdp']:.4f} (RDP), "
                     f"the DP-SGD teacher alone {d['epsilon_alone']:.4f} (noise multiplier {d['noise_multiplier']:g}, "
                     f"{d['steps']} steps at rate {d['sample_rate']:.4g})")
    for level in plan.get("per_budget_level", []):
        lines.append(f"records with budget {level['budget_epsilon']:g}: {level['anchors']} anchors each, guarantee "
                     f"epsilon {level['epsilon']:.4f}")
    if "proposed" in plan:
        proposed = plan["proposed"]
        lines.append(f"for epsilon {proposed['target_epsilon']:g}: " + (
            f"sigma2 = {proposed['sigma2']:g}" if "sigma2" in proposed else
            f"the votes as set and [teachers] dpsgd_noise = {proposed['dpsgd_noise']:g}"))
    return "\n".join(lines) + "\n"


def render_knn(plan: dict) -> str:
    g, p = plan["guarantee"], plan["proposed"]
    return "\n".join([
        f"{plan['mechanism']}: planned from public settings only",
        f"GUARANTEE: epsilon {g['epsilon']:.4f} at delta {g['delta']:g} for every private record "
        f"({g['accountant']}: each record retires at its own budget, whatever the number of queries)",
        f"per record: Gaussian budget {plan['gaussian_budget']:.5f}; an answered query costs a voter "
        f"{plan['charge_per_answered_query']:.5f}, so it can vote in at least {plan['answered_queries_per_record']} "
        "queries before it retires",
        f"neighbourhoods: about {plan['expected_voters']:.0f} private voters per query; a record is in about "
        f"{plan['expected_neighbourhoods_per_record']:.2f} neighbourhoods on average",
        f"rule ({KNN_HEADROOM:g}x headroom, threshold {KNN_AGREEMENT:.0%} of the voters): sigma1 = sigma2 = "
        f"{p['sigma1']}, threshold {p['threshold']}"]) + "\n"

