"""DP-SGD's privacy accounting (no torch): the event of T steps of the Poisson-subsampled Gaussian
(Abadi et al. 2016, "Deep Learning with Differential Privacy", arXiv:1607.00133v2, Alg. 1; Mironov,
Talwar & Zhang 2019, "Rényi Differential Privacy of the Sampled Gaussian Mechanism",
arXiv:1908.10530v1), its composition with other mechanisms in one ``dp_accounting`` RDP accountant,
and the least noise multiplier on a public grid that meets a target. The teacher that trains with
these settings is ``pate.teachers.dpsgd``; `pate plan` calibrates with this module alone."""
from __future__ import annotations

import math
import warnings
from decimal import Decimal
from typing import Callable, Optional, Sequence

import dp_accounting
import numpy as np
from dp_accounting.rdp import RdpAccountant

from .accounting import DpsgdSettings, resolve_orders
from .rdp import OrderAtEdgeWarning, order_at_edge

SIGNIFICANT_DIGITS = 4  # calibrated noise multipliers are decimal numbers with this many significant digits
MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER = 0.01, 1e4  # the range calibrate_noise searches


def schedule(num_records: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """(sample_rate, steps) of ``train``: q = 1/ceil(N/B), T = epochs·ceil(N/B) (Opacus's Poisson
    loader: each record joins each step's batch with probability q, an epoch is ceil(N/B) steps);
    the accounting's own ``pate.privacy.accounting.DpsgdSettings.of``."""
    settings = DpsgdSettings.of(1.0, num_records, batch_size, epochs)
    return settings.sample_rate, settings.steps


def dp_event(noise_multiplier: float, sample_rate: float, steps: int) -> dp_accounting.DpEvent:
    """T steps of DP-SGD: the Poisson-subsampled Gaussian mechanism (Abadi et al. 2016, Alg. 1;
    Mironov et al. 2019) with noise multiplier σ (noise std / clipping norm) and sampling rate q,
    self-composed ``steps`` times, under add/remove-one neighbours (``DpsgdSettings.event``)."""
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"noise_multiplier must be positive and finite. Found {noise_multiplier!r}.")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1]. Found {sample_rate!r}.")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer. Found {steps!r}.")
    return DpsgdSettings(float(noise_multiplier), float(sample_rate), int(steps)).event()


def _epsilon_and_order(events: Sequence[dp_accounting.DpEvent], delta: float,
                       orders: Optional[Sequence[float]]) -> tuple[float, float, np.ndarray]:
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1). Found {delta!r}.")
    grid = resolve_orders(() if orders is None else orders)
    accountant = RdpAccountant([float(o) for o in grid])
    event = dp_accounting.ComposedDpEvent(list(events))
    if not accountant.supports(event):
        raise ValueError(f"dp_accounting's RDP accountant does not support {event!r}.")
    accountant.compose(event)
    eps, order = accountant.get_epsilon_and_optimal_order(delta)
    return float(eps), float(order), grid


def epsilon(events: Sequence[dp_accounting.DpEvent] | dp_accounting.DpEvent, delta: float,
            orders: Optional[Sequence[float]] = None) -> float:
    """ε at δ of the composition of ``events`` (add/remove-one neighbours), by one
    ``dp_accounting`` RDP accountant: RDP curves add up over the orders (Mironov 2017,
    arXiv:1702.07476v3, Prop. 1), then the conversion of Canonne, Kamath & Steinke 2020
    (arXiv:2004.00010v5, Prop. 12), tighter than the classic ε = R(α) + log(1/δ)/(α − 1).

    ``orders``: the Rényi orders (default pate's, ``pate.privacy.rdp.DEFAULT_ORDERS``, as for every
    other pate guarantee). An ``OrderAtEdgeWarning`` says when the optimum is the first or last
    order (still a valid bound, possibly loose).
    """
    if isinstance(events, dp_accounting.DpEvent):
        events = [events]
    eps, order, grid = _epsilon_and_order(list(events), delta, orders)
    if eps > 0 and order_at_edge(order, grid):
        warnings.warn(f"optimal Rényi order {order:g} is at the edge of the order list [{grid.min():g}, "
                      f"{grid.max():g}]; ε = {eps:.4g} is valid but a wider list might give a smaller ε.",
                      OrderAtEdgeWarning, stacklevel=2)
    return eps


def _grid_value(index: int) -> float:
    """The index-th positive decimal with SIGNIFICANT_DIGITS significant digits (0 → 1.000,
    9000 → 10.00, -1 → 0.9999): increasing in ``index``, a public grid."""
    per_decade = 9 * 10 ** (SIGNIFICANT_DIGITS - 1)
    decade, mantissa = divmod(int(index), per_decade)
    return float(Decimal(10 ** (SIGNIFICANT_DIGITS - 1) + mantissa).scaleb(decade - SIGNIFICANT_DIGITS + 1))


def calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                    beside: Sequence[dp_accounting.DpEvent] = (), orders: Optional[Sequence[float]] = None,
                    epsilon_of: Optional[Callable[[float], float]] = None) -> float:
    """The smallest noise multiplier σ on a public grid (decimals with ``SIGNIFICANT_DIGITS``
    significant digits, so σ itself reveals nothing beyond the settings) such that
    ``epsilon([dp_event(σ, sample_rate, steps), *beside], delta) <= target_epsilon``.

    ``beside``: the other mechanisms on the same private records whose cost composes with this one
    (e.g. the votes' ``GaussianDpEvent(sigma / sqrt(k))``). ε decreases with σ (the subsampled
    Gaussian's RDP does, at every order, and so does its privacy-loss distribution's ε), so a
    bisection over the grid's indices finds the exact
    smallest grid value in [MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER]; a target already met at
    MIN_NOISE_MULTIPLIER returns it. Computed from the settings alone: never overshoots.

    ``epsilon_of``: σ ↦ the ε of the whole release with DP-SGD at σ, in place of the RDP composition
    with ``beside`` (`pate plan` passes the guarantee a run would publish, the least of its RDP and
    PLD bounds, so the proposal is the least σ that guarantee admits). With it, ``beside`` only
    names the other events in a refusal: what they spend alone by RDP may exceed a target their
    composition by ``epsilon_of`` still meets, so only ``epsilon_of`` decides (an unreachable target
    is refused once even MAX_NOISE_MULTIPLIER misses it).

    Raises:
        ValueError: the events ``beside`` alone already spend the target (RDP, without ``epsilon_of``),
            or even MAX_NOISE_MULTIPLIER spends more than it.
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"target_epsilon must be positive and finite. Found {target_epsilon!r}.")
    beside = list(beside)
    dp_event(1.0, sample_rate, steps)  # checks sample_rate and steps
    if epsilon_of is None and beside:  # what the events beside spend in the same RDP composition
        spent = _epsilon_and_order(beside, delta, orders)[0]
        if spent >= target_epsilon:
            raise ValueError(f"the events beside DP-SGD already spend epsilon = {spent:.6g} at delta = {delta:g}, "
                             f"not below the target {target_epsilon:g}: no noise multiplier leaves room for it.")
    if epsilon_of is None:
        def epsilon_of(sigma: float) -> float:
            return _epsilon_and_order([dp_event(sigma, sample_rate, steps), *beside], delta, orders)[0]

    def meets(index: int) -> bool:
        sigma = _grid_value(index)
        return epsilon_of(sigma) <= target_epsilon

    per_decade = 9 * 10 ** (SIGNIFICANT_DIGITS - 1)
    lowest = per_decade * round(math.log10(MIN_NOISE_MULTIPLIER))
    highest = per_decade * round(math.log10(MAX_NOISE_MULTIPLIER))
    if meets(0):  # σ = 1 is enough: go down a decade at a time
        hi = 0
        while hi > lowest and meets(hi - per_decade):
            hi -= per_decade
        if hi == lowest:
            return _grid_value(lowest)
        lo = hi - per_decade
    else:  # go up a decade at a time
        lo = 0
        while True:
            if lo >= highest:
                eps = epsilon_of(MAX_NOISE_MULTIPLIER)
                raise ValueError(f"target_epsilon {target_epsilon:g} is out of reach: even noise multiplier "
                                 f"{MAX_NOISE_MULTIPLIER:g} spends epsilon = {eps:.6g} at delta = {delta:g} "
                                 f"(sample_rate {sample_rate:g}, {steps} steps"
                                 + (", with the events beside it, which spend about that alone)." if beside else ")."))
            if meets(lo + per_decade):
                hi = lo + per_decade
                break
            lo += per_decade
    while hi - lo > 1:  # meets(hi), not meets(lo)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if meets(mid) else (mid, hi)
    return _grid_value(hi)
