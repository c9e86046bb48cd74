"""The privacy settings a run is accounted with, from its config: what the guarantee, the spend-log
entry and the plan are computed from, before any vote is seen."""
from __future__ import annotations

import functools
import math
from dataclasses import replace
from typing import Sequence

import numpy as np

from . import budgets
from ..config import ConfigError, PipelineConfig
from ..privacy import accounting, individual, spend
from ..privacy.accounting import resolve_orders
from ..run.artifacts import mechanism


def orders(config: PipelineConfig) -> np.ndarray:
    return resolve_orders(config.privacy.orders)


def release_parameters(config: PipelineConfig, num_classes: int) -> accounting.ReleaseParameters | None:
    """The smooth-sensitivity release's λ, β, σ_ss: as configured, or proposed from the settings
    alone (``accounting.propose_release``); None when the run releases no data-dependent figure."""
    priv = config.privacy
    if not priv.data_dependent_release:
        return None
    if priv.ss_order:
        return accounting.ReleaseParameters(priv.ss_order, priv.ss_beta, priv.ss_sigma)
    return accounting.propose_release(mechanism(config), config.teachers.count, num_classes,
                                      config.aggregator.max_queries, tuple(orders(config)), priv.delta,
                                      priv.conversion)


def privacy_settings(config: PipelineConfig, num_classes: int, order_list: np.ndarray | None = None, *,
                     num_private: int | None = None) -> accounting.Settings:
    """Everything the run's public statement is computed from (``order_list`` overrides the orders;
    ``num_private``: the private set's size, which a DP-SGD teacher's sampling rate is accounted from,
    when the config's data has no built-in size)."""
    return accounting.Settings(
        mechanism=mechanism(config), num_teachers=config.teachers.count, num_classes=num_classes,
        max_queries=config.aggregator.max_queries, delta=config.privacy.delta,
        orders=tuple(orders(config) if order_list is None else order_list), conversion=config.privacy.conversion,
        epsilon_budget=config.aggregator.epsilon_budget, release=release_parameters(config, num_classes),
        record_epsilon=max(budgets.levels(config.privacy.record_budgets, config.privacy.record_epsilon))
        if mechanism(config).individual else 0.0, dpsgd=dpsgd_settings(config, num_private))


def dpsgd_settings(config: PipelineConfig, num_private: int | None = None) -> accounting.DpsgdSettings | None:
    """The DP-SGD teacher's accounted settings (None without one): its noise multiplier, and the
    sampling rate and steps ``pate.teachers.dpsgd.train`` uses for the private set's size N, a
    public number here (the config refuses a private_size draw and the total_budget filter with it)."""
    tcfg = config.teachers
    if not tcfg.dpsgd_noise:
        return None
    if num_private is None:
        if config.data.spec is None:
            raise ConfigError("[teachers] dpsgd_noise: the DP-SGD teacher's accounting needs the private set's "
                              "size; it is known once the data is read (`pate partition`)")
        num_private = config.data.sizes(config.data.spec)[0]
    return accounting.DpsgdSettings.of(tcfg.dpsgd_noise, num_private, tcfg.dpsgd_batch, tcfg.dpsgd_epochs)


WARN_EPSILON = 10.0  # a guarantee above this promises little: say so


def check_accountable(config: PipelineConfig, num_classes: int, num_private: int | None = None) -> accounting.Guarantee:
    """The run's worst-case guarantee, computed before anything else happens; settings whose
    privacy cannot be accounted (no finite guarantee) are refused here, before anything is written."""
    try:
        guarantee = accounting.guarantee(privacy_settings(config, num_classes, num_private=num_private))
    except (ValueError, ArithmeticError) as exc:
        raise ConfigError(f"the privacy settings cannot be accounted ({exc}); check [aggregator] and [privacy]") from None
    if not math.isfinite(guarantee.epsilon):
        raise ConfigError("the privacy settings give no finite guarantee (epsilon is infinite at every order); "
                          "check [aggregator] sigma1, sigma2, gamma and [privacy] orders")
    check_total_budget(config, num_classes, num_private)
    if config.privacy.record_budgets and not mechanism(config).individual:
        try:
            anchors_by_level(config, num_classes, num_private)  # a level nothing can fit is refused now
        except budgets.BudgetError as exc:
            raise ConfigError(str(exc)) from None
    return guarantee


def anchors_by_level(config: PipelineConfig, num_classes: int, num_private: int | None = None,
                     levels: Sequence[float] | None = None) -> dict[float, tuple[int, float]]:
    """Reverse-kNN with per-record budgets: for each budget level (ε at δ; ``levels``, or those of
    ``[privacy] record_budgets`` read now; the levels are public policy; the default level, ``inf``,
    is a record the file does not name) the most
    anchors a record may vote for, at most ``knn_k``, and the guarantee that gives it: the release
    with that many of its votes, composed with a DP-SGD teacher, from the settings alone. A record's
    votes move only its own k counts, so its guarantee is that of a release of sensitivity √k,
    whatever the other records' k (individual privacy: Feldman & Zrnic 2021; Boenisch et al. 2023).
    A level below what the DP-SGD teacher costs on its own is refused (``BudgetError``): no number
    of votes fits it."""
    levels = budgets.levels(config.privacy.record_budgets, math.inf) if levels is None else levels
    settings = privacy_settings(config, num_classes, num_private=num_private)
    mech = settings.mechanism

    @functools.cache
    def epsilon(k: int) -> float:  # grows with k; each k is accounted once however many levels ask
        return accounting.guarantee(replace(settings, mechanism=replace(mech, knn_k=k))).epsilon

    out = {}
    for level in sorted({float(v) for v in levels} | {math.inf}):
        if epsilon(mech.knn_k) <= level:
            out[level] = (mech.knn_k, epsilon(mech.knn_k))
            continue
        if epsilon(0) > level:
            raise budgets.BudgetError(
                f"[privacy] record_budgets: a budget of epsilon {level:g} is below the DP-SGD teacher's own cost "
                f"(epsilon {epsilon(0):.3f} at delta {config.privacy.delta:g}); no record can be charged less")
        lo, hi = 0, mech.knn_k  # epsilon(lo) fits, epsilon(hi) does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if epsilon(mid) <= level else (lo, mid)
        out[level] = (lo, epsilon(lo))
    return out


def spend_curves(config: PipelineConfig, num_classes: int,
                 num_private: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """What this run charges each of its records in the spend log, on ``spend.ORDERS``, from the
    settings alone: its queries at their worst (the aggregation's entry) and its planned
    smooth-sensitivity release (None without one)."""
    on_log = privacy_settings(config, num_classes, spend.ORDERS, num_private=num_private)
    queries = accounting.worst_case_curve(replace(on_log, release=None), accounting.max_queries(
        privacy_settings(config, num_classes, num_private=num_private)))
    return queries, (on_log.release_rdp() if on_log.release is not None else None)


def spend_curve(config: PipelineConfig, num_classes: int, num_private: int | None = None) -> np.ndarray:
    """This run's whole worst-case charge to each record (``spend_curves`` summed)."""
    queries, planned = spend_curves(config, num_classes, num_private)
    return queries + (0 if planned is None else planned)


def check_total_budget(config: PipelineConfig, num_classes: int, num_private: int | None = None) -> None:
    """Refuse a run whose own worst case, composed as the spend log composes it (RDP on its orders),
    is above ``[privacy] total_budget``: its individual filter would leave out every record. A
    public fact, decided from the settings alone, whatever the data and the spend log hold."""
    budget = config.privacy.total_budget
    if not budget:
        return
    own = spend.composed([], np.zeros((1, 0), dtype=bool), config.privacy.delta, config.privacy.conversion,
                         spend_curve(config, num_classes, num_private)).epsilon
    if own > budget:
        raise ConfigError(f"[privacy] total_budget = {budget:g} is below this run's own worst case (epsilon {own:.3f} "
                          f"at delta {config.privacy.delta:g}, composed in RDP as the spend log composes releases): "
                          "every record would be left out; raise total_budget or lower the run's worst case "
                          "(`pate plan` shows it)")


def gaussian_budgets(epsilon: np.ndarray, config: PipelineConfig) -> np.ndarray:
    """Each record's Gaussian budget (``pate.privacy.individual``) from its ε budget at δ."""
    levels, inverse = np.unique(np.asarray(epsilon, dtype=float), return_inverse=True)
    order_list, priv = orders(config), config.privacy
    converted = np.array([individual.gaussian_budget(float(e), order_list, priv.delta, priv.conversion)
                          for e in levels])
    return converted[inverse]


def budget_levels(config: PipelineConfig, num_classes: int, num_private: int | None = None,
                  levels: Sequence[float] | None = None) -> list[dict]:
    """Public (reverse-knn with ``[privacy] record_budgets``): each budget level in the file, the
    anchors a record at that level votes for and its guarantee (``anchors_by_level``); a record the
    file does not name has the run's guarantee. Which record holds which level is not said."""
    delta = config.privacy.delta
    return [{"budget_epsilon": level, "anchors": k, "epsilon": eps, "delta": delta}
            for level, (k, eps) in sorted(anchors_by_level(config, num_classes, num_private, levels).items())
            if math.isfinite(level)]
