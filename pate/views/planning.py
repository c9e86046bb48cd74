"""Privacy planning before any private data is touched: the figures and the search behind `pate plan`
(``pate.views.plan`` renders them).

Everything here is a function of public information only — the mechanism's settings (K, m, T, σ1,
σ2, Q, δ) and *hypothetical* vote rows that the user states — never of real votes. All privacy
figures come from ``pate.privacy.rdp``; this module only composes them (Mironov 2017, Prop. 1:
RDP adds up at each order) and converts with ``rdp.eps_from_rdp``.

Figures (Papernot et al. 2018, "Scalable Private Learning with PATE"):
- data-independent ε of the threshold step over Q queries (Q·λ/(2σ1²)), of GNMax over the
  answered ones (n·λ/σ2²), worst case (all Q answered) and at the expected answer rate;
- Pr[answered] = Φ̄((T − top)/σ1) (Algorithm 1) and the data-dependent cost (Thm 6 + Prop. 10)
  of one hypothetical query with a given top count and gap;
- the best case: every vote unanimous (the paper's Table 1 expected cost Σ thr + Pr·gnmax).

Consensus profile: a level c puts round(c·K) votes on the top class and gives the rest to the
runner-ups greedily (the runner-up takes as many as it can, never more than the top, then the
next). Pr[answered] depends only on the top count; for GNMax this concentration is the worst
case at that top count, since Φ̄ is convex on [0, ∞) so the union bound q̃ of Prop. 7 is largest
when the remaining votes sit on as few classes as possible.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Callable, Optional

import numpy as np
from dp_accounting import get_sigma_gaussian

from ..config import MAX_CLASSES, MAX_QUERIES, MAX_TEACHERS, NOISE_RANGE, PipelineConfig
from ..aggregation.budgets import BudgetError
from ..aggregation.settings import budget_levels, privacy_settings
from ..errors import PateError
from ..privacy import accounting, dpsgd, mechanisms, profiles, rdp
from ..privacy.discrete import MAX_TABLE_SIGMA
from ..privacy.smooth_sensitivity import MAX_WALK_CELLS, rdp_gnss, walk_fits


MECHANISMS = mechanisms.plannable()  # the registry's plannable ones (the CLI's --mechanism choices)


DEFAULT_PROFILE_LEVELS = (0.9,)  # a consensus profile's levels (top-vote fractions) when none are given


# The --target-epsilon grid, fixed before any data is seen, as fractions of K. The paper's MNIST
# setting (T, σ1, σ2) = (200, 150, 40) at K = 250 is (0.8, 0.6, 0.16). Q: every integer up to the
# planned query count (the largest that fits is found in closed form, see ``search``).
GRID_THRESHOLD = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


GRID_SIGMA1 = (0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8)


GRID_SIGMA2 = (0.02, 0.04, 0.08, 0.12, 0.16, 0.24, 0.32)


TABLE_TOPS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)  # top-count fractions of K in the per-query table


# The grid search computes, at each of its 294 points, the worst case over every top count 0..K
# and, where the RDP count falls short of Q, the PLD guarantee of Q queries: about a minute at 5 000
# teachers (the largest ensemble of the papers) or at 100 000 queries, growing with each, so
# --target-epsilon is refused beyond these, before anything is computed.
MAX_SEARCH_TEACHERS = 5000


MAX_SEARCH_QUERIES = 100_000


class PlanError(PateError, ValueError):
    """Planning parameters a user gave are unusable; the message names the value."""


@dataclass(frozen=True)
class PlanParams:
    """The public settings a plan depends on (threshold and sigma1 only for confident-gnmax)."""
    mechanism: str
    teachers: int
    classes: int
    queries: int
    sigma2: float
    delta: float
    threshold: Optional[float] = None
    sigma1: Optional[float] = None
    orders: tuple[float, ...] = ()  # empty = rdp.DEFAULT_ORDERS
    conversion: str = "improved"

    def __post_init__(self) -> None:
        if self.mechanism not in mechanisms.plannable():
            raise PlanError(f"mechanism must be one of {list(mechanisms.plannable())}. Found {self.mechanism!r}.")
        _require(isinstance(self.teachers, int) and 1 <= self.teachers <= MAX_TEACHERS, "teachers",
                 f"an integer in [1, {MAX_TEACHERS}]", self.teachers)
        _require(isinstance(self.classes, int) and 2 <= self.classes <= MAX_CLASSES, "classes",
                 f"an integer in [2, {MAX_CLASSES}]", self.classes)
        _require(isinstance(self.queries, int) and 1 <= self.queries <= MAX_QUERIES, "queries",
                 f"an integer in [1, {MAX_QUERIES}]", self.queries)
        lo, hi = NOISE_RANGE  # the config's ranges: every bound finite, the threshold's tails summable
        _require(_finite(self.sigma2) and lo <= self.sigma2 <= hi, "sigma2", f"in [{lo:g}, {hi:g}]", self.sigma2)
        _require(_finite(self.delta) and 0 < self.delta < 1, "delta", "in (0, 1)", self.delta)
        _require(self.conversion in ("improved", "classic"), "conversion", "'improved' or 'classic'",
                 self.conversion)
        _require(all(_finite(o) and o > 1 for o in self.orders), "orders", "all > 1", list(self.orders))
        if self.thresholded:
            _require(self.sigma1 is not None and _finite(self.sigma1) and lo <= self.sigma1 <= MAX_TABLE_SIGMA,
                     "sigma1", f"in [{lo:g}, {MAX_TABLE_SIGMA:g}]", self.sigma1)
            _require(self.threshold is not None and _finite(self.threshold) and 0 <= self.threshold <= self.teachers,
                     "threshold", f"in [0, teachers = {self.teachers}]", self.threshold)

    @property
    def thresholded(self) -> bool:
        return mechanisms.MECHANISMS[self.mechanism].thresholded

    @property
    def mechanism_object(self) -> mechanisms.Mechanism:
        """The planned aggregator (``pate.privacy.mechanisms``), which computes every cost here."""
        # Interactive-GNMax's worst case does not depend on the student's confidence threshold.
        return mechanisms.build(self.mechanism, {"threshold": self.threshold, "sigma1": self.sigma1,
                                                 "sigma2": self.sigma2, "student_confidence": 0.5})

    @property
    def order_array(self) -> np.ndarray:
        return np.asarray(self.orders, dtype=float) if self.orders else rdp.DEFAULT_ORDERS


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _positive(x) -> bool:
    return _finite(x) and x > 0


def _require(ok: bool, name: str, must: str, value) -> None:
    if not ok:
        raise PlanError(f"{name} must be {must}. Found {value!r}.")


def params_from(config: PipelineConfig | None = None, **overrides) -> PlanParams:
    """PlanParams from a ``PipelineConfig`` (or None) with explicit values (not None) overriding it.

    Keys: mechanism, teachers, classes, queries, threshold, sigma1, sigma2, delta. Without a config,
    mechanism defaults to confident-gnmax when threshold or sigma1 is given, else gnmax; classes to 10.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    if config is not None:
        agg = config.aggregator
        if given.get("mechanism", agg.mechanism) not in mechanisms.plannable():
            raise PlanError(f"mechanism {agg.mechanism} is not planned here (its cost is data-independent); "
                            f"use --mechanism with one of {', '.join(mechanisms.plannable())}")
        # The classes: the built-in dataset's, else the config's own list ([data] classes, public);
        # other sources' classes come from their public files, which planning does not read (--classes).
        classes = config.data.spec.num_classes if config.data.spec else len(config.data.classes) or None
        base = dict(mechanism=agg.mechanism, teachers=config.teachers.count,
                    classes=classes, queries=agg.max_queries, threshold=agg.threshold,
                    sigma1=agg.sigma1, sigma2=agg.sigma2, delta=config.privacy.delta,
                    orders=tuple(config.privacy.orders), conversion=config.privacy.conversion)
    else:
        thresholded = "threshold" in given or "sigma1" in given
        base = dict(mechanism="confident-gnmax" if thresholded else "gnmax", classes=10)
    values = {**base, **given}
    if values.get("mechanism") not in mechanisms.plannable():
        raise PlanError(f"mechanism must be one of {list(mechanisms.plannable())}. Found {values.get('mechanism')!r}.")
    thresholded = mechanisms.MECHANISMS[values["mechanism"]].thresholded
    needed = ["teachers", "classes", "queries", "sigma2", "delta"] + (["threshold", "sigma1"] if thresholded else [])
    missing = [k for k in needed if values.get(k) is None]
    if missing:
        raise PlanError(f"missing {', '.join('--' + k for k in missing)} (give a PIPELINE.toml or every option)")
    if not thresholded:
        extra = [k for k in ("threshold", "sigma1") if k in given]
        if extra:
            raise PlanError(f"{', '.join('--' + k for k in extra)} apply to confident-gnmax only; "
                            "add --mechanism confident-gnmax")
        values.update(threshold=None, sigma1=None)
    return PlanParams(**values)


def vote_row(teachers: int, classes: int, top: int, gap: int) -> np.ndarray:
    try:
        return profiles.vote_row(teachers, classes, top, gap)
    except ValueError as exc:
        raise PlanError(str(exc)) from None


def consensus_row(teachers: int, classes: int, level: float) -> np.ndarray:
    try:
        return profiles.consensus_row(teachers, classes, level)
    except ValueError as exc:
        raise PlanError(str(exc)) from None


@dataclass(frozen=True)
class Profile:
    """Consensus levels and their weights (normalised to sum 1)."""
    levels: tuple[float, ...] = DEFAULT_PROFILE_LEVELS
    weights: tuple[float, ...] = (1.0,)

    @classmethod
    def of(cls, levels=None, weights=None) -> "Profile":
        levels = tuple(float(x) for x in (levels or DEFAULT_PROFILE_LEVELS))
        weights = tuple(float(x) for x in weights) if weights else (1.0,) * len(levels)
        if len(weights) != len(levels):
            raise PlanError(f"consensus weights must be {len(levels)} numbers, one per level. Found {len(weights)}.")
        if not all(_finite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
            raise PlanError(f"consensus weights must be >= 0 with a positive sum. Found {list(weights)}.")
        total = sum(weights)
        return cls(levels, tuple(w / total for w in weights))

    def rows(self, params: PlanParams) -> np.ndarray:
        return np.stack([consensus_row(params.teachers, params.classes, c) for c in self.levels])


def eps(params: PlanParams, curve: np.ndarray) -> tuple[float, float]:
    """(ε, order) of a total RDP curve at the plan's δ (``rdp.eps_from_rdp``; edge warnings off)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rdp.OrderAtEdgeWarning)
        e, order = rdp.eps_from_rdp(curve, params.order_array, params.delta, params.conversion)
    return float(e), float(order)


def data_independent_rdp(params: PlanParams, asked: float, answered: float) -> np.ndarray:
    """(L,) asked·λ/(2σ1²) + answered·λ/σ2² (the threshold term only for confident-gnmax)."""
    return params.mechanism_object.data_independent_rdp(asked, answered, params.order_array)


def data_independent_epsilon(params: PlanParams, asked: float | None = None, answered: float | None = None) -> float:
    """Data-independent ε of ``asked`` queries with ``answered`` answers (default: all Q, all answered)."""
    asked = params.queries if asked is None else asked
    return eps(params, data_independent_rdp(params, asked, asked if answered is None else answered))[0]


def settings_of(params: PlanParams) -> accounting.Settings:
    """The planned run's privacy settings (no release, no budget): what its guarantee is computed from."""
    return accounting.Settings(params.mechanism_object, params.teachers, params.classes, params.queries, params.delta,
                               tuple(params.order_array), params.conversion)


def guarantee(params: PlanParams) -> accounting.Guarantee:
    """The worst-case guarantee of the planned settings (``accounting.guarantee``)."""
    return accounting.guarantee(settings_of(params))


def propose_release(params: PlanParams) -> accounting.ReleaseParameters | None:
    """Smooth-sensitivity release parameters from the planned settings alone (``accounting.propose_release``)."""
    return accounting.propose_release(params.mechanism_object, params.teachers, params.classes, params.queries,
                                      tuple(params.order_array), params.delta, params.conversion)


def answer_probability(params: PlanParams, votes) -> np.ndarray:
    """(N,) Pr[answered] = Φ̄((T − top)/σ1) (``rdp.logpr_answered``); 1 for plain GNMax."""
    return params.mechanism_object.answer_probability(votes)


def query_rdp(params: PlanParams, votes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per hypothetical query: Pr[answered] (N,), threshold RDP (N, L), GNMax RDP (N, L), data-dependent."""
    return params.mechanism_object.query_rdp(votes, params.order_array)


def expected_rdp(params: PlanParams, votes, weights=None) -> np.ndarray:
    """(L,) Q·Σ wᵢ(thrᵢ + Prᵢ·gnmaxᵢ): the paper's expected cost (Table 1) of Q queries like ``votes``."""
    n = rdp.check_votes(votes).shape[0]
    w = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=float)
    return params.mechanism_object.expected_rdp(votes, params.order_array, weights=params.queries * w)


def unanimous_row(params: PlanParams) -> np.ndarray:
    return vote_row(params.teachers, params.classes, params.teachers, params.teachers)


def calibrate(target_eps: float, cost_fn: Callable[[float], float], lo: float, hi: float, *,
              rel_tol: float = 1e-6, digits: int = 4, max_iter: int = 200) -> float:
    """Smallest σ in [lo, hi] (to ``rel_tol``) with cost_fn(σ) ≤ target_eps, on the private side.

    ``cost_fn`` must decrease in σ (more noise, less ε: every bound here does). Geometric
    bisection keeps cost_fn(hi) ≤ target_eps and returns such an ``hi``, first rounded *up* to
    ``digits`` significant digits when that rounding still meets the target: the result never
    overshoots the target, whatever the rounding.
    """
    _require(_positive(target_eps), "target epsilon", "> 0", target_eps)
    _require(_positive(lo) and _positive(hi) and lo < hi, "calibration range", "0 < lo < hi", (lo, hi))
    top = cost_fn(hi)
    if top > target_eps:
        raise PlanError(f"epsilon {target_eps:g} is out of reach: even sigma = {hi:g} costs epsilon {top:.4g}")
    if cost_fn(lo) <= target_eps:
        return lo
    for _ in range(max_iter):
        if hi - lo <= rel_tol * hi:
            break
        mid = math.sqrt(lo * hi)
        if cost_fn(mid) <= target_eps:
            hi = mid
        else:
            lo = mid
    scale = 10.0 ** (math.floor(math.log10(hi)) - digits + 1)
    rounded = math.ceil(hi / scale) * scale
    return rounded if cost_fn(rounded) <= target_eps else hi


def calibrate_sigma2(params: PlanParams, target_eps: float) -> float:
    """σ2 for a guarantee ≤ target over Q queries, the plan's T and σ1 kept. For GNMax the continuous
    Gaussian's analytic calibration (``get_sigma_gaussian``) brackets it from below; either way the
    never-overshooting bisection (``calibrate``) settles σ2 on ``guarantee`` (the discrete noise's own bounds)."""
    lo = 1e-3 * params.teachers
    if not params.thresholded:
        lo = 0.5 * get_sigma_gaussian(target_eps, params.delta) * math.sqrt(2.0 * params.queries)
    return calibrate(target_eps, lambda s: guarantee(replace(params, sigma2=s)).epsilon, lo, 1e4 * params.teachers)


def max_queries_within(params: PlanParams, target_eps: float) -> int:
    """The most queries (≤ the planned number) whose guarantee is within ``target_eps``.

    The RDP worst case grows linearly in Q, so every Q is converted at once; the planned Q itself is
    tried against ``guarantee`` (the least of the RDP and PLD bounds, what a run would publish).
    """
    rho = settings_of(replace(params, queries=1)).per_query_worst_case()

    def fits(q: int) -> bool:
        return bool(rdp.eps_from_rdp_rows(q * rho[None, :], params.order_array, params.delta,
                                          params.conversion)[0] <= target_eps)

    # ε(q) does not decrease in q (each order's RDP q·ρ grows, each order's conversion grows with its
    # RDP, and the minimum over orders of such terms, clipped at 0, grows too), so the count of the q
    # that fit is the largest q that fits: found by bisection, O(log Q) conversions in O(L) memory.
    lo, hi = 0, params.queries  # fits(lo) (or lo = 0), and every q > hi fails
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    best = lo
    if best < params.queries and guarantee(params).epsilon <= target_eps:
        best = params.queries  # the PLD bound admits them all (in between, the RDP count stands: each PLD costs ~0.1 s)
    return best  # the RDP count's guarantee is at most its RDP conversion, which fits


def search(params: PlanParams, target_eps: float, profile: Profile, *, keep: int = 5) -> list[dict]:
    """Best (T, σ1, σ2, Q) on the fixed grid for a guarantee ≤ target, best first.

    For each grid point the largest Q ≤ the planned one within the target (``max_queries_within``).
    Objective: expected released labels that agree with the teachers' plurality,
    Q·Σ w_c·Pr_c·(1 − q̃_c) (1 − q̃ of Prop. 7 bounds Pr[GNMax = plurality] from below); without the
    (1 − q̃) factor σ2 would always go to the top of its grid.
    """
    rows, w, k = profile.rows(params), np.asarray(profile.weights), params.teachers
    sigma2 = np.asarray(GRID_SIGMA2) * k
    agree = np.stack([1.0 - np.exp(rdp.logq_gnmax(rows, s)) for s in sigma2])  # (S2, C)
    grid = [(t * k, s1 * k) for t in GRID_THRESHOLD for s1 in GRID_SIGMA1] if params.thresholded else [(None, None)]
    candidates = []
    for t, s1 in grid:
        point = replace(params, threshold=t, sigma1=s1)
        pr = answer_probability(point, rows)  # (C,)
        for j, s2 in enumerate(sigma2):
            queries = max_queries_within(replace(point, sigma2=float(s2)), target_eps)
            if queries > 0:
                candidates.append((queries * float((pr * agree[j]) @ w), queries * float(w @ pr), t, s1,
                                   float(s2), queries))
    if not candidates:
        raise PlanError(f"no grid point answers even one query within a guarantee of epsilon {target_eps:g}")
    candidates.sort(key=lambda c: (-c[0], -c[1], c[5]))
    out = []
    for agreeing, labels, t, s1, s2, q in candidates[:keep]:
        p = replace(params, threshold=t, sigma1=s1, sigma2=s2, queries=q)
        out.append(dict(threshold=t, sigma1=s1, sigma2=s2, queries=q, guarantee=guarantee(p).epsilon,
                        expected_labels=labels, expected_agreeing_labels=agreeing))
    return out


def make_plan(params: PlanParams, profile: Profile | None = None, target_eps: float | None = None) -> dict:
    """Every figure of ``pate plan`` as a JSON-ready dict (public: no real votes are read)."""
    profile = profile or Profile.of()
    if target_eps is not None:
        for name, value, bound in (("teachers", params.teachers, MAX_SEARCH_TEACHERS),
                                   ("queries", params.queries, MAX_SEARCH_QUERIES)):
            _require(value <= bound, name, f"at most {bound} for the --target-epsilon grid search (plan without it, "
                     f"or with fewer {name})", value)
    q, orders = params.queries, params.order_array
    rows = profile.rows(params)
    pr = answer_probability(params, rows)
    rate = float(np.asarray(profile.weights) @ pr)
    worst, order_ref = eps(params, data_independent_rdp(params, q, q))
    di = {"all_answered": worst, "order": order_ref,
          "gnmax_all_answered": eps(params, q * rdp.rdp_gnmax_data_independent(params.sigma2, orders))[0],
          "threshold_step": (eps(params, q * rdp.rdp_threshold_data_independent(params.sigma1, orders))[0]
                             if params.thresholded else None),
          "at_expected_answer_rate": data_independent_epsilon(params, q, q * rate)}
    levels = [{"consensus": c, "weight": w, "votes": row.tolist(), "answer_probability": float(p),
               "expected_labels": q * float(p), "epsilon_data_independent": data_independent_epsilon(params, q, q * p),
               "epsilon_expected_data_dependent": eps(params, expected_rdp(params, row[None]))[0]}
              for c, w, row, p in zip(profile.levels, profile.weights, rows, pr)]
    unanimous = unanimous_row(params)[None]
    pr_u, thr_u, gn_u = query_rdp(params, unanimous)
    best = {"answer_probability": float(pr_u[0]),
            "epsilon_expected": eps(params, expected_rdp(params, unanimous))[0],
            "epsilon_all_answered": eps(params, q * (thr_u[0] + gn_u[0]))[0],
            "threshold_step": eps(params, q * thr_u[0])[0] if params.thresholded else None}
    # The proposal walks a (K × (m − 1)) histogram table per order (``local_sensitivity_gnmax``);
    # beyond MAX_WALK_CELLS it is not proposed (and a run with the release is refused at config load).
    walkable = walk_fits(params.teachers, params.classes)
    proposal = propose_release(params) if walkable else None
    plan = {"public": "computed from the settings and hypothetical votes only: no private data was read",
            "parameters": {k: v for k, v in asdict(params).items() if k != "orders"},
            "guarantee": guarantee(params).to_dict(),
            "smooth_sensitivity_release": None if proposal is None else {
                **asdict(proposal), "release_rdp_at_order": float(rdp_gnss(proposal.beta, proposal.sigma_ss,
                                                                           proposal.order)),
                "config": (f"[privacy] data_dependent_release = true; ss_order = {proposal.order:g}; "
                           f"ss_beta = {proposal.beta:g}; ss_sigma = {proposal.sigma_ss:g}"),
                "how": (f"from {q} hypothetical queries at consensus {accounting.RELEASE_PROPOSAL_CONSENSUS:g} (public): "
                        "the order and beta with the least expected bound where conditions C5/C6 hold")},
            "consensus_profile": {"rule": "top class gets round(c*K) votes; the runner-ups take the rest greedily "
                                          "(worst case for GNMax's data-dependent cost)",
                                  "levels": levels, "expected_answer_rate": rate, "expected_labels": q * rate,
                                  "epsilon_expected_data_dependent":
                                      eps(params, expected_rdp(params, rows, profile.weights))[0]},
            "data_independent": di, "best_case_unanimous": best,
            **({} if walkable or not params.mechanism_object.data_dependent else {"smooth_sensitivity_note": (
                f"no smooth-sensitivity release proposed: K*(m-1) = {params.teachers * (params.classes - 1)} is "
                f"above {MAX_WALK_CELLS}, the most its analysis walks per query")}),
            "per_query": cost_table(params, order_ref)}
    if target_eps is not None:
        _require(_positive(target_eps), "--target-epsilon", "a finite number > 0", target_eps)
        plan["search"] = {"target_epsilon": target_eps, "best": search(params, target_eps, profile),
                          "calibrated_sigma2": _calibrated_or_none(params, target_eps)}
    return plan


def _calibrated_or_none(params: PlanParams, target_eps: float) -> float | None:
    try:
        return calibrate_sigma2(params, target_eps)
    except PlanError:
        return None  # the threshold step alone is over the target


def cost_table(params: PlanParams, order: float) -> list[dict]:
    """Pr[answered] and data-dependent RDP at ``order`` of one hypothetical query per (top, gap).

    For each top count in ``TABLE_TOPS``·K two gaps: runner-up takes all the rest ("concentrated",
    the worst case) and the rest spread evenly over the m − 1 other classes. ``epsilon_q`` is the
    expected ε of Q queries all like this one (threshold on each, GNMax weighted by Pr[answered]).
    """
    k, m = params.teachers, params.classes
    cells = []
    for frac in TABLE_TOPS:
        top = max(int(round(frac * k)), -(-k // m))
        for runner in (min(top, k - top), -(-(k - top) // (m - 1))):
            gap = top - runner
            if (top, gap) not in cells and top + runner <= k and k - top - runner <= (m - 2) * runner:
                cells.append((top, gap))
    votes = np.stack([vote_row(k, m, top, gap) for top, gap in cells])
    pr, thr, gn = query_rdp(params, votes)
    j = int(np.argmin(np.abs(params.order_array - order)))
    return [{"top": top, "gap": gap, "answer_probability": float(pr[i]), "order": float(params.order_array[j]),
             "rdp_threshold": float(thr[i, j]), "rdp_gnmax": float(gn[i, j]),
             "epsilon_q": eps(params, params.queries * (thr[i] + pr[i] * gn[i]))[0]}
            for i, (top, gap) in enumerate(cells)]


KNN_HEADROOM = 3.0  # a record may vote in this many times its expected number of neighbourhoods


KNN_AGREEMENT = 0.7  # the threshold: this fraction of a query's expected voters


def knn_plan(config: PipelineConfig) -> dict:
    """Private-kNN from public quantities only: N private records, P pool images, Q queries, the
    radius k and the per-record budget. A query has about k·N/P voters; a record lies in about Q·k/P
    neighbourhoods on average. The rule proposes σ1 = σ2 with which a record can afford
    ``KNN_HEADROOM`` times that many answered queries, and a threshold of ``KNN_AGREEMENT`` of the
    expected voters (the settings of pipelines/mnist-knn.toml come from it)."""
    spec = config.data.spec
    if spec is None:
        raise PlanError("planning private-knn needs the data's sizes: use a built-in dataset, or run "
                        "`pate partition` and read the sizes it prints")
    n, pool, _ = config.data.sizes(spec)
    agg, priv = config.aggregator, config.privacy
    order_list = np.asarray(priv.orders, dtype=float) if priv.orders else rdp.DEFAULT_ORDERS
    settings = privacy_settings(config, spec.num_classes)
    g = accounting.guarantee(settings)
    budget = settings.record_budget()
    charge = 1 / (2 * agg.sigma1 ** 2) + 1 / (2 * agg.sigma2 ** 2)
    voters, memberships = agg.knn_k * n / pool, agg.max_queries * agg.knn_k / pool
    sigma = math.sqrt(KNN_HEADROOM * memberships / budget)
    return {"mechanism": agg.mechanism, "guarantee": g.to_dict(), "record_epsilon": settings.record_epsilon,
            "gaussian_budget": budget, "charge_per_answered_query": charge,
            "answered_queries_per_record": math.floor(budget / charge), "expected_voters": voters,
            "expected_neighbourhoods_per_record": memberships, "orders": "default" if not priv.orders
            else list(order_list),
            "proposed": {"sigma1": round(sigma, 1), "sigma2": round(sigma, 1),
                         "threshold": round(KNN_AGREEMENT * voters)}}



def reverse_plan(config: PipelineConfig, target_epsilon: Optional[float] = None) -> dict:
    """Reverse-kNN from public quantities only: the guarantee of σ2 and k (one release, whatever the
    number of anchors), the votes an anchor gets on average (k·N/A for N private records and A
    anchors), and with ``target_epsilon`` the least σ2 (on a 0.01 grid) whose guarantee meets it."""
    spec = config.data.spec
    if spec is None:
        raise PlanError("planning reverse-knn needs the data's sizes: use a built-in dataset, or run "
                        "`pate partition` and read the sizes it prints")
    n, _, _ = config.data.sizes(spec)
    agg = config.aggregator
    settings = privacy_settings(config, spec.num_classes)
    plan = {"mechanism": agg.mechanism, "guarantee": accounting.guarantee(settings).to_dict(), "knn_k": agg.knn_k,
            "sigma2": agg.sigma2, "anchors": agg.max_queries, "expected_votes_per_anchor": agg.knn_k * n / agg.max_queries,
            "noise_over_votes": agg.sigma2 / (agg.knn_k * n / agg.max_queries) if agg.knn_k else None}
    if settings.dpsgd is not None:  # each side alone, and the composition the guarantee is
        alone = replace(settings, dpsgd=None)
        plan["votes_alone_epsilon_rdp"] = accounting.epsilon(accounting.worst_case_curve(alone), settings.order_array,
                                                            settings.delta, settings.conversion)[0]
        no_votes = replace(settings, mechanism=replace(settings.mechanism, knn_k=0))  # the teacher's guarantee alone
        plan["dpsgd_teacher"] = {**asdict(settings.dpsgd), "epsilon_alone": accounting.guarantee(no_votes).epsilon}
    if config.privacy.record_budgets:  # the levels are public policy; which record holds which is not read
        try:
            plan["per_budget_level"] = budget_levels(config, spec.num_classes, n)
        except BudgetError as exc:
            raise PlanError(str(exc)) from None
    if target_epsilon is not None and settings.dpsgd is not None:  # the votes as set: the teacher takes the rest
        d = settings.dpsgd
        try:
            noise = dpsgd.calibrate_noise(
                target_epsilon, settings.delta, d.sample_rate, d.steps,
                beside=[settings.mechanism.dp_event(agg.max_queries)], orders=settings.order_array,
                epsilon_of=lambda sigma: accounting.guarantee(
                    replace(settings, dpsgd=replace(d, noise_multiplier=sigma))).epsilon)
        except ValueError as exc:
            raise PlanError(str(exc)) from None
        plan["proposed"] = {"dpsgd_noise": noise, "target_epsilon": target_epsilon}
    elif target_epsilon is not None:
        def eps(sigma: float) -> float:
            return accounting.guarantee(replace(settings, mechanism=replace(settings.mechanism, sigma2=sigma))).epsilon
        lo, hi = NOISE_RANGE
        if not target_epsilon > 0 or eps(hi) > target_epsilon:
            raise PlanError(f"no sigma2 up to {hi:g} gives epsilon {target_epsilon:g} with knn_k = {agg.knn_k}")
        while hi - lo > 0.01:
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if eps(mid) <= target_epsilon else (mid, hi)
        plan["proposed"] = {"sigma2": math.ceil(hi * 100) / 100, "target_epsilon": target_epsilon}
    return plan
