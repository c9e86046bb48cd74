"""What a run may publish and what it must keep: the worst-case guarantee, the Rényi filter, the
optional smooth-sensitivity release, and the private data-dependent figures of privacy.json.

The guarantee is computed from the settings alone (mechanism, teachers, classes, queries, δ,
orders, and the release parameters when the data-dependent cost is released), so it is the same
number whatever the votes were. It is the least of two valid bounds: Rényi-DP composition of each
mechanism's per-query worst case (``Mechanism.worst_case_rdp``), and ``dp_accounting``'s PLD
accountant on the same queries with every one answered, where the mechanism is one it models
(compositions of discrete Gaussians or discrete Laplaces: the noise pate draws; and a DP-SGD teacher's
Poisson-subsampled Gaussian beside discrete Gaussians). The data-dependent cost of Papernot et al. 2018
(arXiv:1802.08908v1, Thm 6, Table 1) is a function of the votes: it stays PRIVATE, or is released
through smooth sensitivity (App. B) with λ, β and σ_ss fixed before any vote is seen, and then
only as the papers' per-instance figure, never as the guarantee.

Pure: the caller passes the settings, the decided votes and a noise source, and writes the dict.
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant, privacy_loss_distribution
from dp_accounting.rdp import rdp_privacy_accountant

from . import individual, profiles, rdp, smooth_sensitivity
from .mechanisms import Mechanism
from .noise import NoiseSource

PUBLIC_NOTE = ("Computed from the settings alone (and mechanism outputs: labels, answered count, the noisy "
               "data-dependent release): the same whatever the private data. Safe to publish.")
PRIVATE_NOTE = ("Computed from the private votes: do not publish. The data-dependent epsilon is the convention "
                "of the PATE papers; it is not a differential-privacy guarantee.")
RELEASE_NOTE = ("Data-dependent cost (per-instance), released with smooth-sensitivity noise (Papernot et al. 2018, "
                "App. B), with order, beta and sigma_ss fixed before the votes were seen. The papers' convention "
                "for comparison, not the guarantee.")
RELEASE_PROPOSAL_CONSENSUS = 0.9  # the top-vote fraction of the hypothetical run release parameters are proposed from
PLD_MAX_POINTS = 2_000_000  # support of a composed privacy-loss distribution, at most


def resolve_orders(orders: Sequence[float]) -> np.ndarray:
    """The configured Rényi orders, or the paper's default list when none are configured."""
    return np.asarray(orders, dtype=float) if len(orders) else rdp.DEFAULT_ORDERS


def epsilon(curve: np.ndarray, orders: np.ndarray, delta: float, conversion: str) -> tuple[float, float]:
    """(ε, order) of an RDP curve, without edge-of-order-list warnings; +inf entries are skipped."""
    finite = np.isfinite(curve)
    if not finite.any():
        return math.inf, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rdp.OrderAtEdgeWarning)
        eps, order = rdp.eps_from_rdp(np.asarray(curve)[finite], np.asarray(orders)[finite], delta, conversion)
    return float(eps), float(order)


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ReleaseParameters:
    """Smooth-sensitivity release parameters, fixed before any vote is seen."""
    order: float
    beta: float
    sigma_ss: float


@dataclass(frozen=True)
class DpsgdSettings:
    """A DP-SGD teacher's privacy settings (public: fixed before training): T steps of the
    Poisson-subsampled Gaussian mechanism (Abadi et al. 2016; Mironov, Talwar & Zhang 2019)."""
    noise_multiplier: float
    sample_rate: float
    steps: int

    @classmethod
    def of(cls, noise_multiplier: float, num_records: int, batch_size: int, epochs: int) -> "DpsgdSettings":
        """Opacus's Poisson loader for ``epochs`` over N records in batches of B: each record joins each
        step with probability q = 1/ceil(N/B), an epoch is ceil(N/B) steps (q = B/N when B divides N)."""
        for name, value in (("num_records", num_records), ("batch_size", batch_size), ("epochs", epochs)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer. Found {value!r}.")
        per_epoch = -(-int(num_records) // int(batch_size))
        return cls(float(noise_multiplier), 1 / per_epoch, int(epochs) * per_epoch)

    def event(self) -> dp_event.DpEvent:
        return dp_event.SelfComposedDpEvent(
            dp_event.PoissonSampledDpEvent(self.sample_rate, dp_event.GaussianDpEvent(self.noise_multiplier)),
            self.steps)


def rdp_of_events(events: Sequence[dp_event.DpEvent], orders: np.ndarray) -> np.ndarray:
    """(L,) RDP of ``events`` composed by one ``dp_accounting`` RDP accountant at ``orders``."""
    accountant = rdp_privacy_accountant.RdpAccountant([float(o) for o in orders])
    composed = dp_event.ComposedDpEvent(list(events))
    if not accountant.supports(composed):
        raise ValueError(f"dp_accounting's RDP accountant does not support {composed!r}")
    accountant.compose(composed)
    return np.asarray(accountant._rdp, dtype=float)  # the accountant's own curve, order by order


@dataclass(frozen=True)
class Settings:
    """Everything the public statement is computed from: no votes, no private data."""
    mechanism: Mechanism
    num_teachers: int
    num_classes: int
    max_queries: int
    delta: float
    orders: tuple[float, ...]
    conversion: str = "improved"
    epsilon_budget: float = 0.0  # 0 = no Rényi filter
    release: Optional[ReleaseParameters] = None
    record_epsilon: float = 0.0  # individual mechanisms: the largest per-record budget (ε at δ)
    dpsgd: Optional[DpsgdSettings] = None  # a DP-SGD teacher on the same records, composed with the mechanism

    @property
    def order_array(self) -> np.ndarray:
        return np.asarray(self.orders, dtype=float)

    def record_budget(self) -> float:
        """The largest per-record Gaussian budget of an individual mechanism (``individual``)."""
        return individual.gaussian_budget(self.record_epsilon, self.order_array, self.delta, self.conversion)

    def per_query_worst_case(self) -> np.ndarray:
        return self.mechanism.worst_case_rdp(1, self.order_array, num_teachers=self.num_teachers,
                                             num_classes=self.num_classes)

    def release_scale_cap(self) -> float:
        """A public bound on the release's noise scale σ_ss·SS_β: every query's A⁽ᵈ⁾ is capped."""
        return self.release.sigma_ss * max_queries(self) * self.mechanism.local_sensitivity_cap(self.release.order)

    def release_rdp(self) -> np.ndarray:
        """(L,) data-independent cost of one smooth-sensitivity release (zero without one)."""
        if self.release is None:
            return np.zeros(len(self.orders))
        return smooth_sensitivity.rdp_gnss_curve(self.release.beta, self.release.sigma_ss, self.order_array)


# ----------------------------------------------------------------------------- the Rényi filter


@dataclass(frozen=True)
class FilterPlan:
    """A Rényi filter at one order (Feldman & Zrnic 2021, arXiv:2008.11193v4, Thm 3.2).

    Each query is charged its worst-case RDP at ``order`` before it is decided; the run stops
    before the charges would pass ``budget_rdp``. A filter is valid for charges chosen adaptively
    from earlier outputs, so it would stay valid if the charges varied; with the per-query worst
    cases of these mechanisms every query costs the same, so the filter admits ``max_queries``
    queries, a number fixed by the settings. The order is the one admitting the most queries,
    chosen from the settings alone. ``budget_rdp`` is the RDP at that order whose fixed-order
    conversion is the ε budget, less the cost of the smooth-sensitivity release if there is one.
    """
    order: float
    budget_rdp: float
    charge: float
    max_queries: int


def _rdp_budget(eps: float, order: float, delta: float, conversion: str) -> float:
    """The RDP at ``order`` that the fixed-order conversion ``rdp.eps_at_order`` maps to ``eps``."""
    return eps - rdp.eps_at_order(0.0, order, delta, conversion)


def plan_filter(settings: Settings) -> Optional[FilterPlan]:
    if settings.epsilon_budget <= 0 or settings.mechanism.individual:
        return None
    orders, charge = settings.order_array, settings.per_query_worst_case()
    budget = np.array([_rdp_budget(settings.epsilon_budget, o, settings.delta, settings.conversion)
                       for o in orders]) - settings.release_rdp()
    with np.errstate(divide="ignore", invalid="ignore"):
        admitted = np.where((budget > 0) & (charge > 0), np.floor(budget / charge), 0.0)
    admitted = np.where((budget > 0) & (charge == 0), settings.max_queries, admitted)
    admitted = np.minimum(admitted, settings.max_queries)
    j = int(np.argmax(admitted))
    return FilterPlan(order=float(orders[j]), budget_rdp=float(budget[j]), charge=float(charge[j]),
                      max_queries=int(admitted[j]))


class RenyiFilter:
    """Running RDP spend at one order; admits a query only while its charge still fits."""

    def __init__(self, budget_rdp: float, spent: float = 0.0):
        self.budget, self.spent = float(budget_rdp), float(spent)

    def admit(self, charges: np.ndarray) -> int:
        """How many of the next queries, charged ``charges`` in order, fit the budget (a prefix)."""
        total = self.spent + np.cumsum(np.asarray(charges, dtype=float))
        over = np.flatnonzero(total > self.budget * (1 + 1e-12))
        return int(over[0]) if over.size else len(total)

    def charge(self, amount: float) -> None:
        self.spent += float(amount)


# ----------------------------------------------------------------------------- the guarantee


@dataclass(frozen=True)
class Guarantee:
    """(ε, δ)-DP for every dataset, from the settings alone."""
    epsilon: float
    delta: float
    accountant: str  # "rdp", "pld" or "renyi-filter"
    order: Optional[float]  # RDP order of the conversion (a function of the settings), if RDP
    queries: int  # queries it covers (the most the run may ask)

    def to_dict(self) -> dict:
        return asdict(self)


def worst_case_curve(settings: Settings, queries: Optional[int] = None) -> np.ndarray:
    """(L,) RDP of a whole run: ``queries`` (default: the most it may ask) at their worst, plus one
    smooth-sensitivity release when configured. Composed across runs by the spend log."""
    queries = max_queries(settings) if queries is None else queries
    if settings.mechanism.individual:  # every record retires at its budget, however many queries are asked
        return individual.curve(settings.record_budget(), settings.order_array) + settings.release_rdp()
    if settings.dpsgd is not None:  # the votes and the DP-SGD teacher in one dp_accounting composition
        return rdp_of_events([settings.mechanism.dp_event(queries), settings.dpsgd.event()],
                             settings.order_array) + settings.release_rdp()
    return settings.mechanism.worst_case_rdp(queries, settings.order_array, num_teachers=settings.num_teachers,
                                             num_classes=settings.num_classes) + settings.release_rdp()


def max_queries(settings: Settings) -> int:
    """The most queries the run may ask: the configured number, or fewer if the filter stops it."""
    plan = plan_filter(settings)
    return settings.max_queries if plan is None else min(settings.max_queries, plan.max_queries)


PLD_TAIL = 1e-15  # δ set aside for the noise beyond dp_accounting's discrete Gaussian support (1e-30 a draw)
PLD_SIGMA = (0.5, 1e4)  # outside, the discrete Gaussian's PLD takes seconds to minutes (its support is ~23σ
# integers, its loss range ~23/σ): the RDP bound is used there


def pld_epsilon(mechanism: Mechanism, queries: int, delta: float, dpsgd: Optional[DpsgdSettings] = None) -> float:
    """ε of ``queries`` queries, every one answered, from the privacy-loss distribution, or +inf
    where it does not apply.

    Discrete Gaussian mechanisms: ``dp_accounting``'s PLD of the discrete Gaussian itself
    (``from_discrete_gaussian_mechanism``, sensitivity 1, pessimistic connect-the-dots: Doroshenko
    et al. 2022, whose error does not grow with the loss's own grid), one per coordinate that a
    moved vote changes, composed. That PLD is of the noise truncated to |z| ≤ ⌈11.6σ⌉, beyond which
    less than 1e-30 of its mass lies; pate draws it untruncated. The truncated pair is the same pmf
    shifted by the sensitivity, so both have the same normaliser and the same likelihood ratio
    wherever both are defined: the untruncated pair's hockey-stick divergence exceeds the truncated
    one's by at most the mass outside the truncation, 1e-30 a draw, with no e^ε factor.
    ``PLD_TAIL`` of δ pays for it (up to 10¹⁵ draws). The continuous Gaussian's analytic
    conversion would be about another mechanism: the discrete Gaussian is not always the more
    private one (Canonne, Kamath & Steinke 2020, Sec. 4). Discrete Laplace (LNMax): the
    accountant's own ``DiscreteLaplaceDpEvent``.

    ``dpsgd``: a DP-SGD teacher trained on the same records, composed with the discrete Gaussians in
    the same privacy-loss distribution (``_pld_composed``); beside any other mechanism, +inf (its
    RDP composition stands)."""
    if queries == 0 and dpsgd is None:
        return 0.0
    parts = mechanism.discrete_gaussians(queries) if queries else []
    if dpsgd is not None:
        return math.inf if parts is None else _pld_composed(tuple(parts), dpsgd, delta)
    if parts is not None:  # [] (reverse-knn, no votes): no draw reads a record, nothing to pay
        return _pld_composed(tuple(parts), None, delta) if parts else 0.0
    try:
        event = mechanism.dp_event(queries)
    except NotImplementedError:
        return math.inf
    # The discretised loss distribution spans about (total pure-DP ε)/interval points: widen the
    # interval (more pessimistic, still an upper bound) rather than let it outgrow memory.
    interval = max(1e-4, mechanism.pure_epsilon(queries) / PLD_MAX_POINTS)
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=interval)
    if not accountant.supports(event):
        return math.inf
    return float(accountant.compose(event).get_epsilon(delta))


@functools.lru_cache(maxsize=64)
def _discrete_gaussian_pld(sigma: float, interval: float):
    return privacy_loss_distribution.from_discrete_gaussian_mechanism(
        sigma, sensitivity=1, value_discretization_interval=interval, use_connect_dots=True)


def _discrete_gaussians_apply(parts: tuple[tuple[float, int], ...], delta: float) -> bool:
    """Whether the discrete Gaussians' PLD covers ``parts`` at ``delta``: σ in range, and the tail
    beyond its support (1e-30 a draw) within ``PLD_TAIL``, which δ leaves room for."""
    draws = sum(count for _, count in parts)
    return delta > 2 * PLD_TAIL and draws * 1e-30 <= PLD_TAIL and all(PLD_SIGMA[0] <= s <= PLD_SIGMA[1] for s, _ in parts)


def _pld_interval(parts: tuple[tuple[float, int], ...]) -> float:
    """The composed loss spans about Σ count/σ² (its mean is half that): a grid of a millionth of it keeps
    the support small (a pessimistic grid only widens the bound) where the 1e-4 default would take minutes."""
    return max(1e-4, 1e-6 * sum(count / sigma ** 2 for sigma, count in parts))


@functools.lru_cache(maxsize=16)
def _dpsgd_pld(dpsgd: DpsgdSettings, interval: float):
    """T steps of DP-SGD as one privacy-loss distribution: ``dp_accounting``'s PLD of the
    Poisson-subsampled Gaussian (``from_gaussian_mechanism`` with ``sampling_prob`` q,
    add-or-remove-one neighbours, both directions kept, pessimistic discretisation: Koskela et al.
    2020; Doroshenko et al. 2022), self-composed T times: what ``PLDAccountant`` computes for the same
    ``DpEvent``, and what Opacus's PRV accountant (Gopi et al. 2021) approximates from another side
    (the tests check both)."""
    return privacy_loss_distribution.from_gaussian_mechanism(
        dpsgd.noise_multiplier, sensitivity=1, sampling_prob=dpsgd.sample_rate,
        value_discretization_interval=interval).self_compose(dpsgd.steps)


@functools.lru_cache(maxsize=64)
def _pld_composed(parts: tuple[tuple[float, int], ...], dpsgd: Optional[DpsgdSettings], delta: float) -> float:
    """ε at δ of the sensitivity-1 discrete Gaussians ``parts`` composed with a DP-SGD teacher's T steps
    (``dpsgd``; None: none), on one grid; +inf where the discrete Gaussians' PLD does not cover ``parts``.
    δ pays ``PLD_TAIL`` for their truncated support when there are any."""
    if parts and not _discrete_gaussians_apply(parts, delta):
        return math.inf
    interval = _pld_interval(parts)
    total = _dpsgd_pld(dpsgd, interval) if dpsgd is not None else None
    for sigma, count in parts:
        composed = _discrete_gaussian_pld(float(sigma), interval).self_compose(int(count))
        total = composed if total is None else total.compose(composed)
    return float(total.get_epsilon_for_delta(delta - PLD_TAIL if parts else delta))


@functools.lru_cache(maxsize=64)
def guarantee(settings: Settings) -> Guarantee:
    """The guarantee users publish: the least of the valid worst-case bounds for this run."""
    queries = max_queries(settings)
    if settings.mechanism.individual:
        eps, order = individual.epsilon_of_budget(settings.record_budget(), settings.order_array, settings.delta,
                                                  settings.conversion)
        return Guarantee(eps, settings.delta, "individual-renyi-filter", order, queries)
    curve = worst_case_curve(settings, queries)
    snap = snap_delta(settings, curve)
    eps, order = ((math.inf, math.nan) if snap >= settings.delta else
                  epsilon(curve, settings.order_array, settings.delta - snap, settings.conversion))
    best = Guarantee(eps, settings.delta, "rdp", order, queries)
    if settings.release is None:  # PLD does not compose the release's RDP bound: that guarantee is the RDP one
        pld = pld_epsilon(settings.mechanism, queries, settings.delta, settings.dpsgd)
        if pld < best.epsilon:
            best = Guarantee(pld, settings.delta, "pld", None, queries)
    if settings.epsilon_budget > 0 and settings.epsilon_budget < best.epsilon:
        best = Guarantee(settings.epsilon_budget, settings.delta, "renyi-filter", plan_filter(settings).order, queries)
    return best


def snap_delta(settings: Settings, curve: np.ndarray) -> float:
    """The δ the smooth-sensitivity release's snapping adds (0 without a release): (1 + e^ε̄)·TV,
    TV the snapped draw's distance from the ideal Gaussian (``smooth_sensitivity.snap_tv``) and ε̄
    the run's ε at δ/2 (``curve``: its worst case), at least the ε it is converted at. Kept inside
    the statement's δ: the guarantee is converted at δ less this."""
    if settings.release is None:
        return 0.0
    bar, _ = epsilon(curve, settings.order_array, settings.delta / 2, settings.conversion)
    extra = (1.0 + math.exp(min(bar, 700.0))) * smooth_sensitivity.snap_tv(settings.release_scale_cap())
    return extra if extra <= settings.delta / 2 else settings.delta  # too large: no finite guarantee


# ----------------------------------------------------------------------------- release parameters


@functools.lru_cache(maxsize=64)
def propose_release(mechanism: Mechanism, num_teachers: int, num_classes: int, queries: int,
                    orders: tuple[float, ...], delta: float, conversion: str,
                    consensus: float = RELEASE_PROPOSAL_CONSENSUS, max_tries: int = 24) -> Optional[ReleaseParameters]:
    """λ, β and σ_ss for the smooth-sensitivity release, from public information only.

    The run is imagined as ``queries`` queries whose votes all have top-vote fraction
    ``consensus`` (``profiles.consensus_row``), answered at their expected rate. Among the orders
    where the smooth-sensitivity analysis applies (conditions C5/C6 at the mechanism's GNMax σ), the
    one with the least expected upper bound ε(R + rdp_ss) + 2·SS·σ_ss is kept, with the β and σ_ss
    that minimise it (``smooth_sensitivity.choose_parameters``). None when no order qualifies.
    """
    if not mechanism.data_dependent:
        return None
    order_list = np.asarray(orders, dtype=float)
    row = profiles.consensus_row(num_teachers, num_classes, consensus)[None]
    answered = int(round(float(mechanism.answer_probability(row)[0]) * queries))
    realized = (answered * mechanism.per_query_rdp(row, [True], order_list)[0]
                + (queries - answered) * mechanism.per_query_rdp(row, [False], order_list)[0])
    eps = np.array([rdp.eps_at_order(r, o, delta, conversion) for r, o in zip(realized, order_list)])
    best = None
    for j in np.argsort(eps, kind="stable")[:max_tries]:
        order = float(order_list[j])
        if not smooth_sensitivity.check_conditions(mechanism.release_sigma, num_classes, order):
            continue
        ls = (answered * mechanism.local_sensitivity(row, [True], order)
              + (queries - answered) * mechanism.local_sensitivity(row, [False], order))
        beta, sigma_ss = smooth_sensitivity.choose_parameters(ls, realized[j], order, delta, conversion=conversion)
        ss = float(smooth_sensitivity.smooth_sensitivity(ls, beta))
        cost = rdp.eps_at_order(realized[j] + smooth_sensitivity.rdp_gnss(beta, sigma_ss, order), order, delta,
                                conversion) + 2 * ss * sigma_ss
        if best is None or cost < best[0]:
            best = (cost, ReleaseParameters(order, round_sig(beta), round_sig(sigma_ss)))
    return None if best is None else best[1]


def round_sig(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits, so proposed parameters read well in a config."""
    return float(f"{x:.{digits}g}")


# ----------------------------------------------------------------------------- privacy.json


SOFT_LABELS_NOTE = ("each answered query's noisy count vector is released with its label (soft labels); the "
                    "worst-case guarantee covers the vector, query by query")
SOFT_LABELS_PRIVATE = ("not applicable: soft labels release the noisy count vectors, and the papers' "
                       "data-dependent analysis bounds the released argmax only")


def privacy_report(settings: Settings, votes: np.ndarray, answered: np.ndarray, *, seeded: bool,
                   stopped_by_budget: bool, noise: NoiseSource, soft_labels: bool = False) -> dict:
    """privacy.json: ``public`` (the statement) and ``private`` (data-dependent) sections.

    ``votes`` are the decided queries' vote rows, ``answered`` their mask. ``noise`` draws the
    smooth-sensitivity release once, when the settings ask for one. With ``soft_labels`` the
    data-dependent figures are not computed: they would be about another release (the argmax).
    """
    mech, orders = settings.mechanism, settings.order_array
    answered = np.asarray(answered, dtype=bool)
    private, release = {"note": PRIVATE_NOTE}, None
    if soft_labels:
        public = public_statement(settings, asked=len(answered), answered=int(answered.sum()), release=None,
                                  seeded=seeded, stopped_by_budget=stopped_by_budget)
        public["soft_labels"] = SOFT_LABELS_NOTE
        return {"public": public, "private": {**private, "error": SOFT_LABELS_PRIVATE}}
    try:  # the guarantee is already fixed: a failure here must not lose the record of what was spent
        realized = mech.per_query_rdp(votes, answered, orders).sum(axis=0) if len(answered) else np.zeros(orders.size)
        private.update(_data_dependent(settings, votes, realized))
        if settings.release is not None and len(answered):
            release = _release(settings, votes, answered, noise)
            private["smooth_sensitivity"] = {"epsilon": release.epsilon, "rdp": release.rdp,
                                             "smooth_sensitivity": release.smooth_sensitivity,
                                             "noise_std": release.noise_std}
    except (ValueError, ArithmeticError) as exc:
        private["error"] = f"the data-dependent accounting failed ({exc}); the guarantee stands"
    public = public_statement(settings, asked=len(answered), answered=int(answered.sum()), release=release,
                              seeded=seeded, stopped_by_budget=stopped_by_budget)
    return {"public": public, "private": private}


def individual_report(settings: Settings, *, budget_levels: Sequence[float], spent: np.ndarray, budget: np.ndarray,
                      votes: np.ndarray, answered: np.ndarray, retired: np.ndarray, seeded: bool,
                      soft_labels: bool = False) -> dict:
    """privacy.json of an individual mechanism (private-knn). Public: the guarantee of every budget
    level (each from the settings alone; which records have which level is not said). Private: how
    the records spent (a function of the data)."""
    answered = np.asarray(answered, dtype=bool)
    public = public_statement(settings, asked=len(answered), answered=int(answered.sum()), release=None,
                              seeded=seeded, stopped_by_budget=False)
    public["per_budget_level"] = individual.group_guarantees(np.asarray(budget_levels), settings.order_array,
                                                             settings.delta, settings.conversion)
    if soft_labels:  # each voter is charged the Gaussian of the whole vector (sensitivity 1), not its argmax
        public["soft_labels"] = SOFT_LABELS_NOTE
    spent_eps = np.array([individual.epsilon_of_budget(float(v), settings.order_array, settings.delta,
                                                       settings.conversion)[0] for v in np.quantile(spent, [0.5, 1.0])])
    voters = votes.sum(axis=1) if len(votes) else np.zeros(0)
    private = {"note": PRIVATE_NOTE, "records": int(len(spent)), "records_charged": int((spent > 0).sum()),
               "records_retired": int(np.asarray(retired).sum()),
               "spent_fraction_max": float((spent / budget).max()) if len(spent) else 0.0,
               "spent_epsilon_median": float(spent_eps[0]), "spent_epsilon_max": float(spent_eps[1]),
               "voters_mean": float(voters.mean()) if len(voters) else 0.0,
               "queries_without_voters": int((voters == 0).sum())}
    return {"public": public, "private": private}


DPSGD_NOTE = ("a DP-SGD teacher (Poisson-subsampled Gaussian, these settings) was trained on the same private "
              "records; its probabilities on the labelled images and the model itself (its weights on the grid "
              "2^-16) are released with the labels, and the guarantee above composes it with the mechanism (the "
              "least of their RDP and PLD compositions). Its noise is Opacus's non-secure mode: float Gaussian "
              "draws from a torch generator seeded from the OS, not a cryptographic generator")


NEIGHBOURING = ("datasets differing by adding or removing one private record (a record's teacher, and whether a "
                "draw keeps it, depend on that record alone)")


def public_statement(settings: Settings, *, asked: int, answered: int, release, seeded: bool,
                     stopped_by_budget: bool) -> dict:
    """The statement a user may publish: nothing in it is a function of the votes except through
    a mechanism's noise (labels → answered count, the noisy data-dependent release)."""
    g = guarantee(settings)
    statement = {
        "note": PUBLIC_NOTE,
        "guarantee": {**g.to_dict(), "holds_for": "every private dataset: computed from the settings alone"},
        "mechanism": settings.mechanism.name,
        "neighbouring": NEIGHBOURING,
        "settings": {**settings.mechanism.settings(),
                     **({} if settings.mechanism.reads_records else {"teachers": settings.num_teachers}),
                     "classes": settings.num_classes, "max_queries": settings.max_queries,
                     **({"record_epsilon": settings.record_epsilon} if settings.mechanism.individual else
                        {"epsilon_budget": settings.epsilon_budget or None})},
        "delta": settings.delta, "conversion": settings.conversion,
        "orders": "default" if np.array_equal(settings.order_array, rdp.DEFAULT_ORDERS) else list(settings.orders),
        "queries_asked": asked, "queries_answered": answered, "stopped_by_budget": stopped_by_budget,
        "seeded": seeded,
        "data_dependent_release": None if release is None else {
            "epsilon": release.released_epsilon, "delta": release.delta, "order": release.order,
            "beta": release.beta, "sigma_ss": release.sigma_ss, "release_rdp": release.rdp_ss,
            "note": RELEASE_NOTE},
    }
    if settings.dpsgd is not None:
        statement["dpsgd_teacher"] = {**asdict(settings.dpsgd), "note": DPSGD_NOTE}
    if seeded:
        statement["warning"] = "noise was SEEDED for reproducibility: not a production privacy guarantee"
    return statement


def _data_dependent(settings: Settings, votes: np.ndarray, realized: np.ndarray) -> dict:
    """The papers' data-dependent figures (PRIVATE): realized and expected ε."""
    mech, orders = settings.mechanism, settings.order_array
    if len(votes) == 0:
        return {"epsilon": 0.0, "order": None, "epsilon_classic": 0.0, "epsilon_expected": 0.0, "warnings": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", rdp.OrderAtEdgeWarning)
        eps, order = rdp.eps_from_rdp(realized, orders, settings.delta, settings.conversion)
        eps_classic, _ = rdp.eps_from_rdp(realized, orders, settings.delta, "classic")
    expected = (epsilon(mech.expected_rdp(votes, orders), orders, settings.delta, settings.conversion)[0]
                if mech.thresholded else float(eps))
    return {"epsilon": float(eps), "order": float(order), "epsilon_classic": float(eps_classic),
            "epsilon_expected": expected, "warnings": sorted({str(w.message) for w in caught})}


def _release(settings: Settings, votes, answered, noise) -> smooth_sensitivity.SmoothSensitivityRelease:
    """Release the run's data-dependent RDP at the fixed order through GNSS, with the fixed β and σ_ss."""
    params, mech = settings.release, settings.mechanism
    rdp_at_order = float(mech.per_query_rdp(votes, answered, [params.order]).sum())
    ls = mech.local_sensitivity(votes, answered, params.order)
    return smooth_sensitivity.release(ls, rdp_at_order, params.order, settings.delta, params.beta, params.sigma_ss,
                                      noise, conversion=settings.conversion, scale_cap=settings.release_scale_cap())
