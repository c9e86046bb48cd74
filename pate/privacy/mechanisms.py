"""The noisy-argmax aggregators of PATE, as functions and as mechanism objects.

LNMax (Papernot et al. 2017, arXiv:1610.05755v4, Eq. 1), GNMax and Confident-GNMax (Papernot
et al. 2018, arXiv:1802.08908v1, Section 4.1 and Algorithm 1). Each function takes a
``NoiseSource`` (``noise_source()``): OS-secure by default, seeded only when a seed is given. Each
draws the same amount of noise whatever the votes are (noise for every query, then masks), so
neither the stream position of a seeded run nor the number of draws depends on the private data.

Every noisy count is an integer count plus integer noise: the discrete Gaussian N_Z(0, σ²) for
the Gaussian mechanisms and the discrete Laplace for LNMax (Canonne, Kamath & Steinke 2020,
exact samplers in ``pate.privacy.discrete``). A released noisy vector (soft labels) is then an
integer vector, held in float64 only so that rows not answered can be NaN; a float64 draw
``v + σ·Φ⁻¹(u)`` would instead carry the count in its low bits (Mironov 2012). The worst cases
rest on: for the discrete Gaussian, CKS 2020's bound D_λ ≤ λΔ²/(2σ²) per coordinate for integer
shifts, summed over independent coordinates (so GNMax's λ/σ² and the threshold's λ/(2σ1²) are the
continuous values); for the discrete Laplace, its exact RDP (``discrete.rdp_discrete_laplace``).

A mechanism object (``LNMax``, ``GNMax``, ``ConfidentGNMax``) is a frozen value holding the
mechanism's settings; it decides queries and knows its own privacy cost: per query
(data-dependent), data-independent, expected (the paper's Table 1) and the local sensitivity of
its realized cost, and its worst case: the RDP of one query that holds for every dataset (what
the published guarantee is made of) and the ``dp_accounting`` event that PLD accounting composes.
Everything that depends on which mechanism a run uses asks the object
(``build(name, settings)``); nothing else compares mechanism names.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np
from dp_accounting import dp_event

from . import rdp
from . import smooth_sensitivity as ss
from . import discrete
from .noise import NoiseSource, check_noise, noise_source
from .numerics import check_finite, check_positive, check_votes

# ----------------------------------------------------------------------------- the aggregators


def lnmax(votes, gamma, noise) -> np.ndarray:
    """LNMax (Papernot et al. 2017, Eq. 1): argmax_j (v_j + Lap(1/γ)); first index on ties.

    Args: votes (N, m) counts; gamma > 0 (Laplace scale 1/γ); noise: ``noise_source()``.
    Returns: (N,) int64 labels.
    """
    return np.argmax(lnmax_noisy(votes, gamma, noise), axis=1)


def lnmax_noisy(votes, gamma, noise) -> np.ndarray:
    """LNMax's noisy count vectors v + Lap_Z(1/γ)^m (discrete Laplace, pmf ∝ e^{−γ|z|}), (N, m)
    integer-valued float: what LNMax's worst-case accounting already pays for. One vote moving
    changes two counts by one, so the vector is two discrete Laplace mechanisms of sensitivity 1
    (``lnmax_rdp``; the PLD event composes ``2·queries`` of them), and its argmax is post-processing."""
    votes = check_votes(votes)
    gamma = check_positive("gamma", gamma)
    noise = check_noise(noise)
    return (votes + noise.discrete_laplace(votes.shape, gamma)).astype(np.float64)


def gnmax(votes, sigma, noise) -> np.ndarray:
    """GNMax (Papernot et al. 2018, Section 4.1): argmax_j (v_j + N(0, σ²)).

    Args: votes (N, m) counts; sigma > 0; noise: ``noise_source()``. Returns: (N,) int64 labels.
    """
    return np.argmax(gnmax_noisy(votes, sigma, noise), axis=1)


def gnmax_noisy(votes, sigma, noise) -> np.ndarray:
    """GNMax's noisy count vectors v + N_Z(0, σ²)^m, (N, m) integer-valued float. The
    data-independent cost λ/σ² (Papernot et al. 2018, Section 4.1) holds for the discrete Gaussian
    on the whole vector (two counts move by one; CKS 2020's per-coordinate bound, summed), so
    releasing the vector costs nothing more than its argmax under the worst-case guarantee; only
    the data-dependent analysis (Thm 6) is about the argmax."""
    votes = check_votes(votes)
    sigma = check_positive("sigma", sigma)
    noise = check_noise(noise)
    return (votes + noise.discrete_gaussian(votes.shape, sigma)).astype(np.float64)


def confident_gnmax(votes, threshold, sigma1, sigma2, noise) -> np.ndarray:
    """Confident-GNMax (Algorithm 1 of Papernot et al. 2018); −1 marks a query not answered.

    Answered iff max_j v_j + N_Z(0, σ1²) ≥ T (the event whose log-probability is
    ``rdp.logpr_answered``); an answered query gets fresh, independent N_Z(0, σ2²) on every count,
    then argmax. Noise of both steps is drawn for every query, in this order: the (N,) threshold
    noise, then the (N, m) answer noise; unanswered rows' answer noise is discarded unused.

    Args: votes (N, m); threshold T; sigma1, sigma2 > 0; noise: ``noise_source()``.
    Returns: (N,) int64 labels in {−1, 0, …, m − 1}.
    """
    answered, noisy = confident_gnmax_noisy(votes, threshold, sigma1, sigma2, noise)
    return np.where(answered, np.argmax(noisy, axis=1), -1)


def confident_gnmax_noisy(votes, threshold, sigma1, sigma2, noise) -> tuple[np.ndarray, np.ndarray]:
    """Confident-GNMax's release with its noisy vectors: (answered (N,) bool, v + N_Z(0, σ2²)^m (N, m),
    integer-valued, NaN on rows not answered). The threshold step's noisy maximum is never part of it.

    Why the vector is covered: one query's worst-case bound (``rdp.rdp_confident_gnmax_worst_case``)
    is e^{(λ−1)D} ≤ P0^λ Q0^{1−λ} + P1^λ Q1^{1−λ}·e^{(λ−1)λ/σ2²}, and e^{(λ−1)λ/σ2²} bounds
    Σ_x N_Z(x; v, σ2²)^λ N_Z(x; v', σ2²)^{1−λ} for two counts moved by one: the divergence of the
    answered branch's whole vector, not only of its argmax. So (answered, vector) is the mechanism the bound
    is for (the threshold noise and the answer noise are independent), for add/remove neighbours,
    whose histograms differ by one vote moved."""
    votes = check_votes(votes)
    threshold = check_finite("threshold", threshold)
    sigma1 = check_positive("sigma1", sigma1)
    sigma2 = check_positive("sigma2", sigma2)
    noise = check_noise(noise)
    n_rows = votes.shape[0]
    z1 = noise.discrete_gaussian((n_rows,), sigma1)
    z2 = noise.discrete_gaussian(votes.shape, sigma2)
    answered = votes.max(axis=1) + z1 >= threshold
    return answered, np.where(answered[:, None], (votes + z2).astype(np.float64), np.nan)


# ----------------------------------------------------------------------------- mechanism objects


def lnmax_rdp(gamma: float, orders: np.ndarray) -> np.ndarray:
    """Per-answer RDP of LNMax, exact: one vote moving changes two counts by 1, each carrying
    independent discrete Laplace noise (pmf ∝ e^{−γ|z|}), so the cost is twice that of a
    sensitivity-1 discrete Laplace mechanism (``discrete.rdp_discrete_laplace``; RDP of independent
    mechanisms adds). At most 2γ, its pure-DP value."""
    orders = rdp.check_orders(orders)
    return np.minimum(2.0 * discrete.rdp_discrete_laplace(gamma, orders), 2.0 * gamma)


@dataclass(frozen=True)
class Mechanism:
    """A noisy aggregator with fixed settings. Subclasses set ``name`` and implement ``decide``
    and ``query_rdp``; everything else is derived here."""

    name: ClassVar[str]
    thresholded: ClassVar[bool] = False  # may leave queries unanswered (a threshold step)
    data_dependent: ClassVar[bool] = True  # has a data-dependent (smooth-sensitivity) analysis
    individual: ClassVar[bool] = False  # private records vote themselves, each accounted on its own
    interactive: ClassVar[bool] = False  # a student trained on earlier answers takes part in each decision
    reads_records: ClassVar[bool] = False  # private records vote in a public feature space: no teachers are trained
    family: ClassVar[str] = "teacher-votes"  # the aggregation driver that runs it (``pate.aggregation.FAMILIES``)
    plannable: ClassVar[bool] = False  # `pate plan` plans it from the settings (teacher counts, consensus)

    @classmethod
    def from_settings(cls, settings) -> "Mechanism":
        """The mechanism built from the fields of ``settings`` (a config section or a mapping)."""
        get = settings.get if isinstance(settings, dict) else (lambda k: getattr(settings, k))
        return cls(**{f.name: get(f.name) for f in fields(cls)})

    def settings(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def describe(self) -> str:
        """The settings in one phrase, e.g. ``T 200, sigma1 150, sigma2 40``."""
        short = {"threshold": "T"}
        return ", ".join(f"{short.get(k, k)} {v:g}" for k, v in self.settings().items())

    def decide(self, votes, noise: NoiseSource) -> np.ndarray:
        """(N,) labels, −1 for a query not answered."""
        labels, _ = self.decide_noisy(votes, noise)
        return labels

    def decide_noisy(self, votes, noise: NoiseSource) -> tuple[np.ndarray, np.ndarray]:
        """((N,) labels, −1 = not answered; (N, m) the noisy count vectors the labels are the argmax
        of, NaN on rows not answered): the same draws as ``decide``, so a seeded run gives the same
        labels with or without soft labels. Every mechanism's worst-case cost covers the vector."""
        raise NotImplementedError

    @property
    def answer_noise_std(self) -> float:
        """The standard deviation of the noise on each released count (the scale soft labels are read at)."""
        return self.sigma2

    @property
    def casts_votes(self) -> bool:
        """Whether the release holds votes (False: reverse-knn with ``knn_k = 0``, where a DP-SGD
        teacher's probabilities are the only label of every anchor)."""
        return True

    def query_rdp(self, votes, orders) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per query: Pr[answered] (N,), threshold-step RDP (N, L), answer RDP (N, L), data-dependent."""
        raise NotImplementedError

    def answer_probability(self, votes) -> np.ndarray:
        """(N,) Pr[answered] per query (1 for a mechanism that answers every query)."""
        return np.ones(check_votes(votes).shape[0])

    def query_facts(self, votes) -> tuple[np.ndarray, np.ndarray]:
        """(log q̃ of GNMax, log Pr[answered]) per query for the ledger; NaN where not defined."""
        nan = np.full(len(votes), np.nan)
        return nan, nan

    def per_query_rdp(self, votes, answered, orders) -> np.ndarray:
        """(N, L) realized cost of each decided query: the threshold step, plus the answer if answered."""
        _, thr, answer = self.query_rdp(votes, orders)
        return thr + np.where(np.asarray(answered, dtype=bool)[:, None], answer, 0.0)

    def expected_rdp(self, votes, orders, weights=None) -> np.ndarray:
        """(L,) the expected cost Σ_i w_i·(thr_i + Pr_i·answer_i) (the 2018 paper's Table 1)."""
        pr, thr, answer = self.query_rdp(votes, orders)
        w = np.ones(len(pr)) if weights is None else np.asarray(weights, dtype=float)
        return w @ (thr + pr[:, None] * answer)

    def data_independent_rdp(self, asked, answered, orders) -> np.ndarray:
        """(L,) cost of ``asked`` queries with ``answered`` answers, whatever the votes.

        An odometer: ``answered`` is an output of the mechanism, so this is NOT a guarantee
        fixed in advance (that is ``worst_case_rdp``); the Rényi filter charges with it.
        """
        raise NotImplementedError

    def worst_case_rdp(self, queries: int, orders, *, num_teachers: int, num_classes: int) -> np.ndarray:
        """(L,) RDP of ``queries`` queries asked, valid for every dataset and every outcome
        (``num_teachers`` n and ``num_classes`` m bound the vote histograms that can occur)."""
        raise NotImplementedError

    def dp_event(self, queries: int) -> dp_event.DpEvent:
        """The same ``queries`` queries as a ``dp_accounting`` event, every asked query answered
        (for the PLD accountant, which is tighter on Laplace compositions)."""
        raise NotImplementedError

    def discrete_gaussians(self, queries: int) -> list[tuple[float, int]] | None:
        """When ``queries`` queries, every one answered, are a composition of sensitivity-1 discrete
        Gaussians only: [(σ, how many)], for the discrete Gaussian's own privacy-loss distribution
        (the continuous Gaussian's PLD or analytic conversion would be about another mechanism);
        None otherwise. One vote moved changes two counts by one: two coordinates per answer."""
        return None

    def pure_epsilon(self, queries: int) -> float:
        """ε of pure DP of ``queries`` answers (+inf when there is none): sizes PLD computations."""
        return math.inf

    def local_sensitivity(self, votes, answered, order) -> np.ndarray:
        """(n,) A⁽ᵈ⁾ of the run's realized cost at ``order`` (2018 paper, App. B)."""
        raise NotImplementedError(f"{self.name} has no smooth-sensitivity analysis")

    @property
    def release_sigma(self) -> float:
        """σ of the GNMax step, whose conditions C5/C6 decide where smooth sensitivity applies."""
        raise NotImplementedError(f"{self.name} has no smooth-sensitivity analysis")

    def local_sensitivity_cap(self, order: float) -> float:
        """The most one query adds to any A⁽ᵈ⁾ at ``order``, for every dataset (public): bounds the
        smooth-sensitivity release's noise scale, which its snapping's accounting needs."""
        raise NotImplementedError(f"{self.name} has no smooth-sensitivity analysis")

    def explain(self, row, answered: bool, orders) -> dict:
        """Why one query cost what it did: per-order costs and the bound used (for ``pate audit``)."""
        return {"explanation": f"{self.name} is accounted data-independently: every answered query costs the same"}


@dataclass(frozen=True)
class LNMax(Mechanism):
    gamma: float
    name: ClassVar[str] = "lnmax"
    data_dependent: ClassVar[bool] = False

    def decide_noisy(self, votes, noise):
        noisy = lnmax_noisy(votes, self.gamma, noise)
        return np.argmax(noisy, axis=1), noisy

    @property
    def answer_noise_std(self) -> float:
        r = math.exp(-self.gamma)  # the discrete Laplace's variance is 2r/(1 − r)²
        return math.sqrt(2.0 * r) / (1.0 - r)

    def query_rdp(self, votes, orders):
        n, orders = len(votes), rdp.check_orders(orders)
        answer = np.broadcast_to(lnmax_rdp(self.gamma, orders), (n, orders.size))
        return np.ones(n), np.zeros((n, orders.size)), answer

    def per_query_rdp(self, votes, answered, orders):
        orders = rdp.check_orders(orders)
        return np.where(np.asarray(answered, dtype=bool)[:, None], lnmax_rdp(self.gamma, orders)[None, :], 0.0)

    def data_independent_rdp(self, asked, answered, orders):
        return answered * lnmax_rdp(self.gamma, rdp.check_orders(orders))

    def worst_case_rdp(self, queries, orders, *, num_teachers, num_classes):
        return queries * lnmax_rdp(self.gamma, rdp.check_orders(orders))

    def dp_event(self, queries):
        # Two sensitivity-1 discrete Laplace mechanisms per query (the two counts a moved vote changes).
        return dp_event.SelfComposedDpEvent(dp_event.DiscreteLaplaceDpEvent(self.gamma, 1), 2 * queries)

    def pure_epsilon(self, queries):
        return 2.0 * self.gamma * queries


@dataclass(frozen=True)
class GNMax(Mechanism):
    sigma2: float
    name: ClassVar[str] = "gnmax"
    plannable: ClassVar[bool] = True

    def decide_noisy(self, votes, noise):
        noisy = gnmax_noisy(votes, self.sigma2, noise)
        return np.argmax(noisy, axis=1), noisy

    def query_facts(self, votes):
        return rdp.logq_gnmax(votes, self.sigma2), np.full(len(votes), np.nan)

    def query_rdp(self, votes, orders):
        answer = rdp.rdp_gnmax(rdp.logq_gnmax(votes, self.sigma2), self.sigma2, orders)
        return np.ones(len(answer)), np.zeros_like(answer), answer

    def per_query_rdp(self, votes, answered, orders):
        answer = rdp.rdp_gnmax(rdp.logq_gnmax(votes, self.sigma2), self.sigma2, orders)
        return np.where(np.asarray(answered, dtype=bool)[:, None], answer, 0.0)

    def expected_rdp(self, votes, orders, weights=None):
        return rdp.rdp_gnmax_curve(rdp.logq_gnmax(votes, self.sigma2), self.sigma2, orders, weights=weights)

    def data_independent_rdp(self, asked, answered, orders):
        return answered * rdp.rdp_gnmax_data_independent(self.sigma2, orders)

    def worst_case_rdp(self, queries, orders, *, num_teachers, num_classes):
        return queries * rdp.rdp_gnmax_data_independent(self.sigma2, orders)

    def discrete_gaussians(self, queries):
        return [(self.sigma2, 2 * queries)]

    def local_sensitivity(self, votes, answered, order):
        votes, answered = check_votes(votes), np.asarray(answered, dtype=bool)
        if not answered.any():
            return np.zeros(int(votes.sum(axis=1).max(initial=1)))
        return ss.local_sensitivity_gnmax(votes[answered], self.sigma2, order).sum(axis=0)

    @property
    def release_sigma(self) -> float:
        return self.sigma2

    def local_sensitivity_cap(self, order):
        return float(order) / self.sigma2 ** 2  # 0 ≤ β ≤ λ/σ² (``local_sensitivity_gnmax`` caps at it)

    def explain(self, row, answered, orders):
        return _explain_gnmax(self, row, answered, orders, threshold_cost=None)


@dataclass(frozen=True)
class _CheckThenGNMax(Mechanism):
    """A Gaussian check (σ1, sensitivity 1) on every query, then GNMax (σ2) on the answered ones:
    the data-independent costs Confident- and Interactive-GNMax share."""
    threshold: float
    sigma1: float
    sigma2: float
    thresholded: ClassVar[bool] = True

    def data_independent_rdp(self, asked, answered, orders):
        return (asked * rdp.rdp_threshold_data_independent(self.sigma1, orders)
                + answered * rdp.rdp_gnmax_data_independent(self.sigma2, orders))

    def discrete_gaussians(self, queries):
        # Every asked query answered: the check (one count, sensitivity 1) and the answer's two counts.
        return [(self.sigma1, queries), (self.sigma2, 2 * queries)]


@dataclass(frozen=True)
class ConfidentGNMax(_CheckThenGNMax):
    name: ClassVar[str] = "confident-gnmax"
    plannable: ClassVar[bool] = True

    def decide_noisy(self, votes, noise):
        return _labels_of(*confident_gnmax_noisy(votes, self.threshold, self.sigma1, self.sigma2, noise))

    def answer_probability(self, votes):
        return np.exp(rdp.logpr_answered(votes, self.threshold, self.sigma1))

    def query_facts(self, votes):
        return (rdp.logq_gnmax(votes, self.sigma2),
                rdp.logpr_answered(votes, self.threshold, self.sigma1))

    def query_rdp(self, votes, orders):
        logpr = rdp.logpr_answered(votes, self.threshold, self.sigma1)
        answer = rdp.rdp_gnmax(rdp.logq_gnmax(votes, self.sigma2), self.sigma2, orders)
        return np.exp(logpr), rdp.rdp_threshold(logpr, self.sigma1, orders), answer

    def expected_rdp(self, votes, orders, weights=None):
        """Σ_i w_i·[thr_i + Pr_i·gnmax_i] composed with ``rdp.rdp_gnmax_curve`` (equal rows costed
        once), the threshold step from ``rdp.logq_threshold`` (exact when Pr is within 1e-16 of 1)."""
        votes = check_votes(votes)
        w = np.ones(len(votes)) if weights is None else np.asarray(weights, dtype=float)
        logpr = rdp.logpr_answered(votes, self.threshold, self.sigma1)
        thr = rdp.rdp_gnmax_curve(rdp.logq_threshold(votes, self.threshold, self.sigma1),
                                  math.sqrt(2.0) * self.sigma1, orders, weights=w)
        return thr + rdp.rdp_gnmax_curve(rdp.logq_gnmax(votes, self.sigma2), self.sigma2, orders,
                                         weights=w * np.exp(logpr))

    def worst_case_rdp(self, queries, orders, *, num_teachers: int, num_classes: int):
        """Each query as one mechanism with outputs {not answered} ∪ {labels}, worst case over the
        max count (``rdp.rdp_confident_gnmax_worst_case``), composed over every query asked."""
        return queries * rdp.rdp_confident_gnmax_worst_case(self.threshold, self.sigma1, self.sigma2,
                                                            num_teachers, num_classes, orders)

    def local_sensitivity(self, votes, answered, order):
        """Sum of the per-query A⁽ᵈ⁾: the threshold step of every query, GNMax of the answered
        ones (a sum changes by at most the sum of the changes)."""
        votes, answered = check_votes(votes), np.asarray(answered, dtype=bool)
        if answered.shape != (votes.shape[0],):
            raise ValueError(f"answered must have shape ({votes.shape[0]},). Found {answered.shape}.")
        total = ss.local_sensitivity_threshold(votes, self.threshold, self.sigma1, order).sum(axis=0)
        if answered.any():
            total = total + ss.local_sensitivity_gnmax(votes[answered], self.sigma2, order).sum(axis=0)
        return total

    @property
    def release_sigma(self) -> float:
        return self.sigma2

    def local_sensitivity_cap(self, order):
        # The GNMax step's cap plus the threshold step's: its RDP lies in [0, λ/(2σ1²)].
        return float(order) / self.sigma2 ** 2 + float(order) / (2.0 * self.sigma1 ** 2)

    def explain(self, row, answered, orders):
        logpr = rdp.logpr_answered(row, self.threshold, self.sigma1)
        detail = _explain_gnmax(self, row, answered, orders,
                                threshold_cost=rdp.rdp_threshold(logpr, self.sigma1, orders)[0])
        return {"log_pr_answered": float(logpr[0]), "pr_answered": float(np.exp(logpr[0])), **detail}


def interactive_gnmax(votes, student_probs, threshold, sigma1, sigma2, student_confidence, noise):
    """Interactive-GNMax (Algorithm 2 of Papernot et al. 2018): (labels, from_teachers).

    The teachers are asked only where they disagree with the student: if
    max_j (v_j − ⌊K·p_j⌉) + N_Z(0, σ1²) ≥ T (K = teachers, p the student's probabilities, ⌊·⌉
    rounding to the nearest integer), the answer is GNMax's argmax_j (v_j + N_Z(0, σ2²)); otherwise the student's own label is accepted where its
    confidence max_j p_j exceeds ``student_confidence``, and the query is rejected (−1) elsewhere.
    Noise is drawn as in ``confident_gnmax`` (the (N,) check noise, then the (N, m) answer noise).
    """
    labels, ask, _ = interactive_gnmax_noisy(votes, student_probs, threshold, sigma1, sigma2, student_confidence,
                                             noise)
    return labels, ask


def interactive_gnmax_noisy(votes, student_probs, threshold, sigma1, sigma2, student_confidence, noise):
    """``interactive_gnmax`` with the teachers' noisy vectors: (labels, asked, noisy (N, m), NaN
    where the teachers were not asked)."""
    votes = check_votes(votes)
    probs = np.asarray(student_probs, dtype=float)
    if probs.shape != votes.shape or not np.isfinite(probs).all() or (probs < 0).any():
        raise ValueError(f"student_probs must be finite, non-negative, of shape {votes.shape}")
    threshold = check_finite("threshold", threshold)
    sigma1, sigma2 = check_positive("sigma1", sigma1), check_positive("sigma2", sigma2)
    noise = check_noise(noise)
    k = votes.sum(axis=1, keepdims=True)
    z1 = noise.discrete_gaussian((votes.shape[0],), sigma1)
    z2 = noise.discrete_gaussian(votes.shape, sigma2)
    # An integer statistic: the student's expected counts ⌊K·p_j⌉ are public (the student is trained on
    # released labels), so one moved vote changes max_j (v_j − ⌊K·p_j⌉) by at most one, an integer
    # shift, which is what the discrete Gaussian's bound needs (a real-valued shift is not).
    ask = (votes - np.rint(k * probs).astype(np.int64)).max(axis=1) + z1 >= threshold
    student = np.where(probs.max(axis=1) > student_confidence, probs.argmax(axis=1), -1)
    noisy = (votes + z2).astype(np.float64)
    return np.where(ask, np.argmax(noisy, axis=1), student), ask, np.where(ask[:, None], noisy, np.nan)


@dataclass(frozen=True)
class InteractiveGNMax(_CheckThenGNMax):
    """Interactive-GNMax (Papernot et al. 2018, Algorithm 2): the student, trained on the labels
    released in earlier rounds, answers where the teachers agree with it; the teachers answer
    where they disagree. Every query pays the check (a discrete Gaussian on the integer
    max_j (v_j − ⌊K·p_j⌉), sensitivity 1: one teacher changes two counts by one); a query the teachers
    answer pays GNMax too. The
    worst case of one query is that composition (no mixture bound is claimed for this statistic)."""
    student_confidence: float  # accept the student's label above this probability
    name: ClassVar[str] = "interactive-gnmax"
    data_dependent: ClassVar[bool] = False
    interactive: ClassVar[bool] = True
    family: ClassVar[str] = "interactive"
    plannable: ClassVar[bool] = True

    def decide_noisy(self, votes, noise):
        """Without a student (p = 0, the first round): Confident-GNMax's decisions."""
        return _labels_of(*confident_gnmax_noisy(votes, self.threshold, self.sigma1, self.sigma2, noise))

    def decide_with_student_noisy(self, votes, student_probs, noise):
        """(labels, asked, noisy): the teachers' noisy vector v + N(0, σ2² I) where they were asked
        (their GNMax step, whose cost covers the vector), NaN where the student answered or nobody did."""
        return interactive_gnmax_noisy(votes, student_probs, self.threshold, self.sigma1, self.sigma2,
                                       self.student_confidence, noise)

    def query_rdp(self, votes, orders):
        """Whatever the votes: the check's Gaussian, and GNMax's when the teachers answer."""
        n, orders = check_votes(votes).shape[0], np.asarray(orders, dtype=float)
        return (np.ones(n), np.tile(rdp.rdp_threshold_data_independent(self.sigma1, orders), (n, 1)),
                np.tile(rdp.rdp_gnmax_data_independent(self.sigma2, orders), (n, 1)))

    def worst_case_rdp(self, queries, orders, *, num_teachers: int, num_classes: int):
        return self.data_independent_rdp(queries, queries, orders)


@dataclass(frozen=True)
class PrivateKNN(Mechanism):
    """Private-kNN (Zhu et al., CVPR 2020): the private records within a public radius of the query
    vote with their own labels; Confident-GNMax decides. Each record is accounted individually
    and retired at its own budget (``pate.privacy.individual``), so the guarantee is the
    per-record budget, whatever the number of queries. Under add/remove of one record both steps
    have sensitivity 1: a member pays α/(2σ1²) per query and α/(2σ2²) per answer."""
    threshold: float
    sigma1: float
    sigma2: float
    knn_k: int  # public pool neighbours whose distance sets a query's radius
    name: ClassVar[str] = "private-knn"
    thresholded: ClassVar[bool] = True
    data_dependent: ClassVar[bool] = False
    individual: ClassVar[bool] = True
    reads_records: ClassVar[bool] = True
    family: ClassVar[str] = "private-records"

    def decide_noisy(self, votes, noise):
        return _labels_of(*confident_gnmax_noisy(votes, self.threshold, self.sigma1, self.sigma2, noise))

    def answer_probability(self, votes):
        return np.exp(rdp.logpr_answered(votes, self.threshold, self.sigma1))

    def query_rdp(self, votes, orders):
        """What one member pays per query, whatever the votes (the record-level cost)."""
        n, orders = check_votes(votes).shape[0], np.asarray(orders, dtype=float)
        return (self.answer_probability(votes), np.tile(orders / (2 * self.sigma1 ** 2), (n, 1)),
                np.tile(orders / (2 * self.sigma2 ** 2), (n, 1)))

    def data_independent_rdp(self, asked, answered, orders):
        """A record that voted in ``asked`` queries of which ``answered`` were answered."""
        orders = np.asarray(orders, dtype=float)
        return orders * (asked / (2 * self.sigma1 ** 2) + answered / (2 * self.sigma2 ** 2))

    def worst_case_rdp(self, queries, orders, *, num_teachers: int, num_classes: int):
        raise NotImplementedError("private-knn is bounded per record by its budget, not per query "
                                  "(pate.privacy.accounting handles individual mechanisms)")

    def explain(self, row, answered, orders):
        return {"explanation": "every record that voted paid alpha/(2 sigma1^2), and alpha/(2 sigma2^2) more if "
                               "answered; records that could not afford a whole query did not vote (retired)"}


@dataclass(frozen=True)
class ReverseKNN(Mechanism):
    """One-shot reverse-kNN voting ("Fine-grained Private Knowledge Distillation", arXiv:2207.13253,
    in its Gaussian form): every private record votes with its own label for each of its ``knn_k``
    nearest public anchors (the queries, in a public feature space), and every anchor's count
    vector gets independent discrete Gaussian noise N_Z(0, σ2²); all are released together.

    Why it is cheap: a record's votes are fixed by that record and the public anchors alone, so
    adding or removing it moves exactly ``knn_k`` counts (one per anchor it votes for) by one and
    nothing else. The whole release, however many anchors are labelled, is one Gaussian mechanism
    with L2 sensitivity √k: RDP αk/(2σ2²) (the discrete Gaussian's bound, Canonne, Kamath & Steinke
    2020), or exactly k sensitivity-1 discrete Gaussians for the PLD accountant. Nothing is
    thresholded and there is no data-dependent analysis: which labels to trust (the noisy margin)
    is post-processing of the released vectors.

    ``knn_k = 0`` casts no votes: beside a DP-SGD teacher, the whole budget goes to it (the issue's
    "all of ε to one side"), every anchor is labelled by its probabilities, and this release costs
    nothing and draws no noise."""
    sigma2: float
    knn_k: int  # the public anchors each private record votes for (0: none, a DP-SGD teacher labels alone)
    name: ClassVar[str] = "reverse-knn"
    data_dependent: ClassVar[bool] = False
    reads_records: ClassVar[bool] = True
    family: ClassVar[str] = "reverse-votes"

    @property
    def casts_votes(self) -> bool:
        return self.knn_k != 0  # None: built from settings that do not say (the registry's test)

    def decide_noisy(self, votes, noise):
        if not self.casts_votes:
            raise ValueError("reverse-knn with knn_k = 0 casts no votes: there is nothing to add noise to")
        noisy = gnmax_noisy(votes, self.sigma2, noise)
        return np.argmax(noisy, axis=1), noisy

    def release_rdp(self, orders) -> np.ndarray:
        """(L,) the whole release's RDP: αk/(2σ2²) (0 for k = 0: no record's vote is in it)."""
        return np.asarray(orders, dtype=float) * self.knn_k / (2 * self.sigma2 ** 2)

    def query_rdp(self, votes, orders):
        raise NotImplementedError("reverse-knn is one release over every anchor; it has no per-query cost")

    def per_query_rdp(self, votes, answered, orders):
        """The whole release's cost on the first anchor (it is paid before any is decided), 0 after."""
        costs = np.zeros((check_votes(votes).shape[0], np.size(orders)))
        costs[:1] = self.release_rdp(orders)
        return costs

    def data_independent_rdp(self, asked, answered, orders):
        return self.release_rdp(orders) if asked else np.zeros(np.size(orders))

    def worst_case_rdp(self, queries, orders, *, num_teachers, num_classes):
        return self.data_independent_rdp(queries, queries, orders)

    def discrete_gaussians(self, queries):
        return [(self.sigma2, self.knn_k)] if queries and self.casts_votes else []

    def dp_event(self, queries):
        """The release as a Gaussian of sensitivity √k (σ2/√k per unit): its RDP is the discrete one's
        bound αk/(2σ2²), so RDP compositions (with a DP-SGD teacher) may use it; PLD uses
        ``discrete_gaussians``."""
        if not (queries and self.casts_votes):
            return dp_event.NoOpDpEvent()
        return dp_event.GaussianDpEvent(self.sigma2 / math.sqrt(self.knn_k))

    def explain(self, row, answered, orders):
        if not self.casts_votes:
            return {"explanation": "no votes (knn_k = 0): the DP-SGD teacher's probabilities label every anchor; its "
                                   "cost is its own event, composed in the guarantee"}
        return {"explanation": f"one release over every anchor: each private record voted for its {self.knn_k} nearest "
                               "anchors, so the whole release costs alpha*k/(2 sigma2^2), whatever this anchor's votes"}


def _labels_of(answered: np.ndarray, noisy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, −1 where not answered; the noisy vectors) of a thresholded release."""
    return np.where(answered, np.argmax(np.nan_to_num(noisy, nan=0.0), axis=1), -1), noisy


def _explain_gnmax(mech: Mechanism, row, answered: bool, orders, threshold_cost) -> dict:
    sigma = mech.release_sigma
    logq = rdp.logq_gnmax(row, sigma)
    cost, used = rdp.rdp_gnmax(logq, sigma, orders, return_used=True)
    mu1 = sigma * math.sqrt(-logq[0]) + 1 if logq[0] < 0 else float("inf")
    per_order = []
    for j, order in enumerate(orders):
        entry = {"order": float(order), "gnmax_cost": float(cost[0, j]), "gnmax_data_dependent": bool(used[0, j]),
                 "gnmax_data_independent": float(order / sigma ** 2)}
        charged = float(cost[0, j]) if answered else 0.0
        if threshold_cost is not None:
            entry["threshold_cost"] = float(threshold_cost[j])
            charged += float(threshold_cost[j])
        per_order.append({**entry, "charged": charged})
    if not answered:
        why = "not answered: only the threshold step was paid"
    elif used[0].any():
        lo, hi = np.asarray(orders)[used[0]].min(), np.asarray(orders)[used[0]].max()
        why = (f"data-dependent bound (Thm 6 + Prop 10) used at orders {lo:g}..{hi:g}: q~ = {np.exp(logq[0]):.3g} "
               f"is small enough and the order is below mu1 = {mu1:.3g}; elsewhere lambda/sigma^2")
    else:
        why = (f"data-independent lambda/sigma^2 at every order: q~ = {np.exp(logq[0]):.3g} is too large for "
               "Theorem 6's conditions (or every order is at least mu1), so the vote margin buys nothing")
    return {"log_q": float(logq[0]), "q": float(np.exp(logq[0])), "gnmax_mu1": mu1, "per_order": per_order,
            "explanation": why}


# The registry: the config's accepted names, the CLI's choices and the plannable mechanisms all
# derive from it. A new mechanism is a class here (or in a test) passed to ``register``.
MECHANISMS: dict[str, type[Mechanism]] = {}


def register(cls: type[Mechanism]) -> type[Mechanism]:
    """Add ``cls`` to the registry under its ``name`` (a class decorator)."""
    if not getattr(cls, "name", None) or cls.name in MECHANISMS and MECHANISMS[cls.name] is not cls:
        raise ValueError(f"a mechanism needs a name of its own; {getattr(cls, 'name', None)!r} is taken or empty")
    MECHANISMS[cls.name] = cls
    return cls


for _builtin in (LNMax, GNMax, ConfidentGNMax, InteractiveGNMax, PrivateKNN, ReverseKNN):
    register(_builtin)
NAMES = tuple(MECHANISMS)  # the built-in names, in the order the docs list them


def plannable() -> tuple[str, ...]:
    """The mechanisms `pate plan` plans from public settings."""
    return tuple(name for name, cls in MECHANISMS.items() if cls.plannable)


def build(name: str, settings) -> Mechanism:
    """The mechanism ``name`` with its fields read from ``settings`` (config section or mapping)."""
    try:
        cls = MECHANISMS[name]
    except KeyError:
        raise ValueError(f"mechanism must be one of {list(MECHANISMS)}. Found {name!r}.") from None
    return cls.from_settings(settings)


__all__ = ["NoiseSource", "noise_source", "lnmax", "gnmax", "confident_gnmax", "lnmax_noisy", "gnmax_noisy",
           "confident_gnmax_noisy", "interactive_gnmax_noisy", "Mechanism", "LNMax", "GNMax",
           "ConfidentGNMax", "InteractiveGNMax", "PrivateKNN", "ReverseKNN", "interactive_gnmax", "MECHANISMS", "NAMES", "register", "plannable", "build",
           "lnmax_rdp"]
