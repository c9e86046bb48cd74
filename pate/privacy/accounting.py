"""The privacy cost of an aggregation, from its votes and decisions: the figures of privacy.json.

Three figures, each labelled with who may see it:
- data-dependent ε (realized, and the paper's expected cost; Papernot et al. 2018,
  arXiv:1802.08908v1, Thm 6 and Table 1): a function of the private data, PRIVATE;
- smooth-sensitivity released ε: the data-dependent ε plus GNSS noise (App. B of the same paper);
- data-independent ε: the mechanism's settings and the numbers of queries only.

Pure: the caller passes the mechanism, the decided votes and a noise source, and writes the dict.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from . import rdp, smooth_sensitivity
from .mechanisms import Mechanism
from .noise import NoiseSource

SAFE_TO_PUBLISH = ("smooth_sensitivity.released_epsilon (data-dependent, released with smooth-sensitivity "
                   "noise) or epsilon_data_independent. 'epsilon' and 'epsilon_expected' are computed "
                   "from the private votes: do not publish them.")


def resolve_orders(orders: Sequence[float]) -> np.ndarray:
    """The configured Rényi orders, or the paper's default list when none are configured."""
    return np.asarray(orders, dtype=float) if len(orders) else rdp.DEFAULT_ORDERS


def epsilon(curve: np.ndarray, orders: np.ndarray, delta: float, conversion: str) -> float:
    """ε of an RDP curve, without edge-of-order-list warnings (callers that want them convert themselves)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rdp.OrderAtEdgeWarning)
        return float(rdp.eps_from_rdp(curve, orders, delta, conversion)[0])


def data_independent_epsilon(mechanism: Mechanism, asked: int, answered: int, *, orders: np.ndarray,
                             delta: float, conversion: str) -> float:
    return epsilon(mechanism.data_independent_rdp(asked, answered, orders), orders, delta, conversion)


def privacy_report(mechanism: Mechanism, votes: np.ndarray, answered: np.ndarray, *, orders: np.ndarray,
                   delta: float, conversion: str, betas: Sequence[float], seeded: bool,
                   noise: NoiseSource) -> dict:
    """Everything privacy.json holds, for the decided queries ``votes`` (answered mask ``answered``).

    ``noise`` draws the smooth-sensitivity release, once.
    """
    answered = np.asarray(answered, dtype=bool)
    asked, n_answered = len(answered), int(answered.sum())
    report = {"mechanism": mechanism.name, "delta": delta, "conversion": conversion,
              "queries_asked": asked, "queries_answered": n_answered, "seeded": seeded,
              "safe_to_publish": SAFE_TO_PUBLISH}
    if seeded:
        report["warning"] = "noise was SEEDED for reproducibility: not a production privacy guarantee"
    report["epsilon_data_independent"] = data_independent_epsilon(
        mechanism, asked, n_answered, orders=orders, delta=delta, conversion=conversion)
    if asked == 0:
        report.update(epsilon=0.0, order=None, epsilon_classic=0.0, epsilon_expected=0.0,
                      smooth_sensitivity={"epsilon": 0.0, "noise_std": 0.0, "beta": None, "released_epsilon": 0.0})
        return report
    realized = mechanism.per_query_rdp(votes, answered, orders).sum(axis=0)
    report.update(_realized_epsilon(realized, orders, delta, conversion))
    report["epsilon_expected"] = (epsilon(mechanism.expected_rdp(votes, orders), orders, delta, conversion)
                                  if mechanism.thresholded else report["epsilon"])
    report["smooth_sensitivity"] = _smooth_sensitivity_release(
        mechanism, votes, answered, realized, report, orders=orders, delta=delta, conversion=conversion,
        betas=betas, noise=noise)
    return report


def _realized_epsilon(realized: np.ndarray, orders: np.ndarray, delta: float, conversion: str) -> dict:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", rdp.OrderAtEdgeWarning)
        eps, order = rdp.eps_from_rdp(realized, orders, delta, conversion)
        eps_classic, _ = rdp.eps_from_rdp(realized, orders, delta, "classic")
    return {"warnings": sorted({str(w.message) for w in caught}), "epsilon": float(eps), "order": float(order),
            "epsilon_classic": float(eps_classic)}


def _smooth_sensitivity_release(mechanism, votes, answered, realized, report, *, orders, delta, conversion,
                                betas, noise) -> dict:
    if not mechanism.data_dependent:
        eps = report["epsilon"]
        return {"epsilon": eps, "noise_std": 0.0, "beta": None, "released_epsilon": eps,
                "note": f"{mechanism.name} is accounted data-independently; nothing to smooth"}
    order_index = _release_order(mechanism, realized, orders, delta, conversion, votes.shape[1])
    if order_index is None:
        # Without a valid smooth-sensitivity bound no data-dependent figure may be published.
        return {"epsilon": None, "noise_std": None, "beta": None, "order": None,
                "released_epsilon": report["epsilon_data_independent"],
                "note": (f"conditions C5/C6 of the smooth-sensitivity analysis fail at sigma2 = "
                         f"{mechanism.release_sigma} for every order tried; the publishable figure is the "
                         "data-independent epsilon")}
    release_order = float(orders[order_index])
    ls_total = mechanism.local_sensitivity(votes, answered, release_order)
    release = smooth_sensitivity.release(ls_total, float(realized[order_index]), release_order, delta,
                                         betas=list(betas) or None, conversion=conversion, noise=noise)
    return {
        "epsilon": float(release.epsilon), "noise_std": float(release.noise_std), "beta": float(release.beta),
        "released_epsilon": float(release.released_epsilon), "order": release_order,
        "smooth_sensitivity": float(release.smooth_sensitivity), "sigma_ss": float(release.sigma_ss),
        "data_dependent_parameters": bool(release.data_dependent_parameters),
        "note": ("epsilon includes the cost of this release (Thm 23); released_epsilon = epsilon + noise_std * Z. "
                 "As in the paper, the order and beta were chosen to minimise the bound, which reads private data")}


def _release_order(mechanism, realized, orders, delta, conversion, num_classes, max_tries: int = 24) -> int | None:
    """Index of the order with the least data-dependent ε among those where the smooth-sensitivity
    analysis applies (conditions C5/C6 for GNMax at σ2), or None."""
    eps = np.array([rdp.eps_at_order(r, o, delta, conversion) for r, o in zip(realized, orders)])
    for j in np.argsort(eps, kind="stable")[:max_tries]:
        if smooth_sensitivity.check_conditions(mechanism.release_sigma, num_classes, orders[j]):
            return int(j)
    return None
