"""privacy.json: the privacy cost of an aggregation, from its votes and ledger.

Three figures, each labelled with who may see it (DESIGN §5.7):
- data-dependent ε (realized, and the paper's expected cost): a function of the private data,
  PRIVATE, kept for the data holder and audits;
- smooth-sensitivity released ε: the data-dependent ε plus GNSS noise (2018 paper, App. B),
  safe to publish;
- data-independent ε: depends on the mechanism's settings and the number of queries only,
  safe to publish.
"""
from __future__ import annotations

import warnings

import numpy as np

from . import aggregate as mechanisms
from .config import PipelineConfig
from .privacy import rdp, smooth_sensitivity
from .privacy.ledger import QueryRecord
from .run import atomic_write_json

SAFE_TO_PUBLISH = ("smooth_sensitivity.released_epsilon (data-dependent, released with smooth-sensitivity "
                   "noise) or epsilon_data_independent. 'epsilon' and 'epsilon_expected' are computed "
                   "from the private votes: do not publish them.")


def orders(config: PipelineConfig) -> np.ndarray:
    return np.asarray(config.privacy.orders, dtype=float) if config.privacy.orders else rdp.DEFAULT_ORDERS


def _lnmax_rdp(gamma: float, orders_: np.ndarray) -> np.ndarray:
    """Per-query RDP of LNMax: 2γ-DP (L1 sensitivity 2, Laplace 1/γ), so RDP ≤ min(2γ, λ(2γ)²/2)
    (pure ε-DP implies ε²/2-zCDP: Bun & Steinke 2016, Prop. 1.4)."""
    eps = 2.0 * gamma
    return np.minimum(eps, orders_ * eps**2 / 2.0)


def data_independent_rdp(config: PipelineConfig, asked: int, answered: int) -> np.ndarray:
    agg, orders_ = config.aggregator, orders(config)
    if agg.mechanism == "confident-gnmax":
        return (asked * rdp.rdp_threshold_data_independent(agg.sigma1, orders_)
                + answered * rdp.rdp_gnmax_data_independent(agg.sigma2, orders_))
    if agg.mechanism == "gnmax":
        return answered * rdp.rdp_gnmax_data_independent(agg.sigma2, orders_)
    return answered * _lnmax_rdp(agg.gamma, orders_)


def data_independent_epsilon(config: PipelineConfig, asked: int, answered: int) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rdp.OrderAtEdgeWarning)
        eps, _ = rdp.eps_from_rdp(data_independent_rdp(config, asked, answered), orders(config),
                                  config.privacy.delta, config.privacy.conversion)
    return float(eps)


def per_query_rdp(config: PipelineConfig, votes: np.ndarray, answered: np.ndarray) -> np.ndarray:
    """(N, L) realized data-dependent RDP of each decided query (threshold + GNMax if answered)."""
    agg, orders_ = config.aggregator, orders(config)
    if agg.mechanism == "lnmax":
        return np.where(answered[:, None], _lnmax_rdp(agg.gamma, orders_)[None, :], 0.0)
    cost = np.where(answered[:, None], rdp.rdp_gnmax(rdp.logq_gnmax(votes, agg.sigma2), agg.sigma2, orders_), 0.0)
    if agg.mechanism == "confident-gnmax":
        cost = cost + rdp.rdp_threshold(rdp.logpr_answered(votes, agg.threshold, agg.sigma1), agg.sigma1, orders_)
    return cost


def _local_sensitivity(config: PipelineConfig, votes: np.ndarray, answered: np.ndarray, order: float) -> np.ndarray:
    """(n,) local sensitivity of the run's total RDP at ``order``, at distances 0..n-1."""
    agg = config.aggregator
    ls = smooth_sensitivity.local_sensitivity_gnmax(votes[answered], agg.sigma2, order).sum(axis=0)
    if agg.mechanism == "confident-gnmax":
        ls = ls + smooth_sensitivity.local_sensitivity_threshold(votes, agg.threshold, agg.sigma1, order).sum(axis=0)
    return ls


def privacy_report(config: PipelineConfig, votes: np.ndarray, records: list[QueryRecord],
                   noise_stream: int) -> dict:
    """Everything privacy.json holds (DESIGN §4), for the queries decided in ``records``."""
    agg, priv, orders_ = config.aggregator, config.privacy, orders(config)
    answered = np.array([r.answered for r in records], dtype=bool)
    asked, n_answered = len(records), int(answered.sum())
    report = {"mechanism": agg.mechanism, "delta": priv.delta, "conversion": priv.conversion,
              "queries_asked": asked, "queries_answered": n_answered, "seeded": config.seeded,
              "safe_to_publish": SAFE_TO_PUBLISH}
    if config.seeded:
        report["warning"] = "noise was SEEDED for reproducibility: not a production privacy guarantee"
    report["epsilon_data_independent"] = data_independent_epsilon(config, asked, n_answered)
    if asked == 0:
        report.update(epsilon=0.0, order=None, epsilon_classic=0.0, epsilon_expected=0.0,
                      smooth_sensitivity={"epsilon": 0.0, "noise_std": 0.0, "beta": None, "released_epsilon": 0.0})
        return report
    realized = per_query_rdp(config, votes, answered).sum(axis=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", rdp.OrderAtEdgeWarning)
        eps, order = rdp.eps_from_rdp(realized, orders_, priv.delta, priv.conversion)
        eps_classic, _ = rdp.eps_from_rdp(realized, orders_, priv.delta, "classic")
    report["warnings"] = sorted({str(w.message) for w in caught})
    report.update(epsilon=float(eps), order=float(order), epsilon_classic=float(eps_classic))
    if agg.mechanism == "confident-gnmax":
        expected = rdp.confident_gnmax_rdp(votes, agg.threshold, agg.sigma1, agg.sigma2, answered, orders_).expected
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rdp.OrderAtEdgeWarning)
            report["epsilon_expected"] = float(rdp.eps_from_rdp(expected, orders_, priv.delta, priv.conversion)[0])
    else:
        report["epsilon_expected"] = float(eps)
    if agg.mechanism == "lnmax":
        # Data-dependent accounting of LNMax is not implemented: its cost here is data-independent.
        report["smooth_sensitivity"] = {"epsilon": float(eps), "noise_std": 0.0, "beta": None,
                                        "released_epsilon": float(eps),
                                        "note": "LNMax is accounted data-independently; nothing to smooth"}
        return report
    order_index = _release_order(config, realized, votes.shape[1])
    if order_index is None:
        # Without a valid smooth-sensitivity bound no data-dependent figure may be published.
        report["smooth_sensitivity"] = {
            "epsilon": None, "noise_std": None, "beta": None, "order": None,
            "released_epsilon": report["epsilon_data_independent"],
            "note": (f"conditions C5/C6 of the smooth-sensitivity analysis fail at sigma2 = {agg.sigma2} for "
                     "every order tried; the publishable figure is the data-independent epsilon")}
        return report
    release_order = float(orders_[order_index])
    ls_total = _local_sensitivity(config, votes, answered, release_order)
    release = smooth_sensitivity.release(ls_total, float(realized[order_index]), release_order, priv.delta,
                                         betas=list(priv.betas) or None, conversion=priv.conversion,
                                         noise=mechanisms.noise_source(agg.seed, stream=noise_stream))
    report["smooth_sensitivity"] = {
        "epsilon": float(release.epsilon), "noise_std": float(release.noise_std), "beta": float(release.beta),
        "released_epsilon": float(release.released_epsilon), "order": release_order,
        "smooth_sensitivity": float(release.smooth_sensitivity), "sigma_ss": float(release.sigma_ss),
        "data_dependent_parameters": bool(release.data_dependent_parameters),
        "note": ("epsilon includes the cost of this release (Thm 23); released_epsilon = epsilon + noise_std * Z. "
                 "As in the paper, the order and beta were chosen to minimise the bound, which reads private data")}
    return report


def _release_order(config: PipelineConfig, realized: np.ndarray, num_classes: int,
                   max_tries: int = 24) -> int | None:
    """Index of the order with the least data-dependent ε among those where the smooth-sensitivity
    analysis applies (conditions C5/C6 for GNMax at σ2), or None."""
    priv, orders_ = config.privacy, orders(config)
    eps = np.array([rdp.eps_at_order(r, o, priv.delta, priv.conversion) for r, o in zip(realized, orders_)])
    for j in np.argsort(eps, kind="stable")[:max_tries]:
        if smooth_sensitivity.check_conditions(config.aggregator.sigma2, num_classes, orders_[j]):
            return int(j)
    return None


def write_report(path, report: dict) -> None:
    atomic_write_json(path, report)
