"""Individual Rényi accounting for Private-kNN: each private record pays only for the queries it
voted in, and is retired before its own budget would be passed.

Private-kNN (Zhu, Yu, Chandraker & Wang, CVPR 2020) answers a public query with the labels of the
private records near it in a public feature space, through Confident-GNMax's noisy threshold and
noisy argmax (Papernot et al. 2018, Algorithm 1). Accounting per record rather than per run is
what makes it cheap (Zhu, Zhao, Guo & Wang 2023, "Private Prediction Strikes Back"): a record far
from every query never pays. The individual Rényi filter of Feldman & Zrnic (2021, "Individual
Privacy Accounting via a Rényi Filter", arXiv:2008.11193) makes that a guarantee: if each record's individual RDP charges, each fixed before its
step from earlier outputs and the record itself, never sum past the record's budget, the whole
interaction is RDP at that budget for that record, whatever the other records are.

Two facts keep the charges individual, and both are enforced here and tested:

- **Membership depends on the record and public information only.** A record votes on query t
  when it lies within radius r_t of the query, r_t fixed by the public pool (``pate.features.knn``), not
  when it is among the k nearest *private* records (that set would change when another record is
  removed). So removing record i changes the vote histogram of the queries i votes in by one in
  one coordinate, and nothing else.
- **Retirement depends on the record's own spend and the outputs.** A record votes only if it
  can still afford the whole query (threshold step and answer): ``spent + c1 + c2 ≤ budget``.
  Whether it is charged the answer c2 depends on the (released) threshold outcome.

Under add/remove of one record both steps are discrete Gaussian mechanisms of sensitivity 1 (the
top count and the histogram change by one in one coordinate; Canonne, Kamath & Steinke 2020 bound
their RDP by the continuous Gaussian's for an integer shift), so at every order α a member is charged
α/(2σ1²) for the threshold step and α/(2σ2²) for an answer. All charges are α times a constant,
so one number per record, its *Gaussian budget* S (the sum of 1/(2σ²) terms it may spend), bounds
its RDP at every order at once: ρ(α) ≤ α·S, and its (ε, δ) follows from the usual conversion of
that curve. The user gives budgets as ε at the run's δ; ``gaussian_budget`` turns each into the
largest S whose curve converts to at most that ε.

Decisions are sequential (the votes of query t depend on who retired before it), so the loop
over queries is a Python loop; each step is a few vectorised operations on its members. The
spend of every record is a deterministic function of the memberships and the answered flags, so
a resumed run and the audit rebuild it exactly from the ledger (``replay``).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from . import rdp
from .noise import NoiseSource, check_noise
from .numerics import check_positive

# Tolerance for comparing sums of charges with budgets (sums of floats): never in the record's favour
# by more than this relative amount.
RELATIVE_SLACK = 1e-12


def curve(gaussian_budget: float, orders: np.ndarray) -> np.ndarray:
    """(L,) the RDP curve α·S of a record that spends at most ``gaussian_budget`` S."""
    return np.asarray(orders, dtype=float) * float(gaussian_budget)


def epsilon_of_budget(gaussian_budget: float, orders, delta: float, conversion: str = "improved") -> tuple[float, float]:
    """(ε, order) at ``delta`` of a record whose Gaussian budget is ``gaussian_budget``."""
    if gaussian_budget == 0:
        return 0.0, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rdp.OrderAtEdgeWarning)
        eps, order = rdp.eps_from_rdp(curve(gaussian_budget, orders), orders, delta, conversion)
    return float(eps), float(order)


def gaussian_budget(epsilon: float, orders, delta: float, conversion: str = "improved") -> float:
    """The largest Gaussian budget S whose RDP curve α·S converts to at most ``epsilon`` at ``delta``
    (bisection: the converted ε grows with S). A record may spend S and no more."""
    epsilon = check_positive("epsilon", epsilon)
    lo, hi = 0.0, float(epsilon)  # ε(S) ≥ S at every order ≥ 1 with δ < 1, so S ≤ ε
    while epsilon_of_budget(hi, orders, delta, conversion)[0] <= epsilon:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if epsilon_of_budget(mid, orders, delta, conversion)[0] <= epsilon:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    return lo


@dataclass(frozen=True)
class Charges:
    """What one member of a query pays, in Gaussian-budget units (RDP at order α is α times it)."""
    threshold: float  # 1/(2σ1²): every query the record votes in
    answer: float  # 1/(2σ2²): only when that query is answered

    @classmethod
    def of(cls, sigma1: float, sigma2: float) -> "Charges":
        sigma1, sigma2 = check_positive("sigma1", sigma1), check_positive("sigma2", sigma2)
        return cls(1.0 / (2.0 * sigma1 ** 2), 1.0 / (2.0 * sigma2 ** 2))

    @property
    def full(self) -> float:
        """The most one query can cost a member: what it must still be able to afford to vote."""
        return self.threshold + self.answer


@dataclass
class FilterState:
    """Each record's Gaussian budget and what it has spent (PRIVATE: a function of the data)."""
    budget: np.ndarray  # (N,) S_i
    spent: np.ndarray  # (N,)

    @classmethod
    def fresh(cls, budget: np.ndarray) -> "FilterState":
        budget = np.asarray(budget, dtype=float)
        if budget.ndim != 1 or not np.isfinite(budget).all() or (budget <= 0).any():
            raise ValueError("every record's budget must be finite and > 0")
        return cls(budget.copy(), np.zeros_like(budget))

    def can_vote(self, records: np.ndarray, charges: Charges) -> np.ndarray:
        """Mask of ``records`` that can still afford a whole query."""
        return self.spent[records] + charges.full <= self.budget[records] * (1 + RELATIVE_SLACK)

    def retired(self, charges: Charges) -> np.ndarray:
        """Mask of every record that can no longer vote."""
        return self.spent + charges.full > self.budget * (1 + RELATIVE_SLACK)


@dataclass(frozen=True)
class Neighbourhoods:
    """The private records within each query's radius, as compressed rows: the members of query t
    are ``members[indptr[t]:indptr[t + 1]]`` (indices into the private records)."""
    indptr: np.ndarray  # (Q + 1,) int64
    members: np.ndarray  # (E,) int64

    def __post_init__(self):
        if self.indptr.ndim != 1 or self.indptr[0] != 0 or (np.diff(self.indptr) < 0).any() \
                or self.indptr[-1] != len(self.members):
            raise ValueError("neighbourhood rows are malformed (indptr must rise from 0 to the member count)")

    @property
    def num_queries(self) -> int:
        return len(self.indptr) - 1

    def of(self, query: int) -> np.ndarray:
        return self.members[self.indptr[query]:self.indptr[query + 1]]

    def sizes(self) -> np.ndarray:
        return np.diff(self.indptr)


def draw_noise(noise: NoiseSource, rows: int, num_classes: int, sigma1: float, sigma2: float):
    """The noise of ``rows`` queries, in Confident-GNMax's order (the (rows,) threshold noise, then
    the (rows, m) answer noise), drawn whatever the votes will be: integer, the discrete Gaussians
    N_Z(0, σ1²) and N_Z(0, σ2²), so a noisy count is an integer (CKS 2020's bound α/(2σ²) for a
    count moved by one is the continuous one)."""
    noise = check_noise(noise)
    return noise.discrete_gaussian((rows,), sigma1), noise.discrete_gaussian((rows, num_classes), sigma2)


def decide(hoods: Neighbourhoods, labels: np.ndarray, state: FilterState, charges: Charges, *, start: int,
           threshold: float, z1: np.ndarray, z2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decide queries ``start .. start + len(z1) - 1`` in order, charging ``state`` as it goes.

    Query t's votes are the labels of its members that can still afford it; it is answered iff
    its top count plus ``z1`` reaches ``threshold``, with the argmax of votes plus ``z2`` (first
    on ties), and those members pay c1, plus c2 if answered. The check runs even when no member can
    vote (an empty neighbourhood reveals nothing then). Returns (labels (n,), −1 = not answered;
    the vote histograms (n, m) the decisions were made on).
    """
    num_classes = z2.shape[1]
    out = np.empty(len(z1), dtype=np.int64)
    votes = np.zeros((len(z1), num_classes), dtype=np.int64)
    for i in range(len(z1)):  # sequential by nature: who may vote depends on every earlier answer
        voters, votes[i] = _votes(hoods, labels, state, charges, start + i, num_classes)
        answered = votes[i].max() + z1[i] >= threshold
        out[i] = int(np.argmax(votes[i] + z2[i])) if answered else -1
        state.spent[voters] += charges.full if answered else charges.threshold
    return out, votes


def _votes(hoods: Neighbourhoods, labels: np.ndarray, state: FilterState, charges: Charges, query: int,
           num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(the members of ``query``'s neighbourhood that can still afford it, their vote histogram)."""
    members = hoods.of(query)
    voters = members[state.can_vote(members, charges)]
    return voters, np.bincount(labels[voters], minlength=num_classes)


def replay(hoods: Neighbourhoods, labels: np.ndarray, budget: np.ndarray, charges: Charges,
           answered: np.ndarray, num_classes: int) -> tuple[FilterState, np.ndarray, np.ndarray]:
    """The filter state after the decided queries, and their vote histograms, from the answered
    flags alone (a resumed run and the audit rebuild the spend exactly this way). Also returns,
    per record, the query after which it retired (−1 if it never did)."""
    state = FilterState.fresh(budget)
    answered = np.asarray(answered, dtype=bool)
    votes = np.zeros((len(answered), num_classes), dtype=np.int64)
    retired_after = np.full(len(budget), -1, dtype=np.int64)
    for t, was_answered in enumerate(answered):
        voters, votes[t] = _votes(hoods, labels, state, charges, t, num_classes)
        state.spent[voters] += charges.full if was_answered else charges.threshold
        newly = voters[~state.can_vote(voters, charges)]
        retired_after[newly] = t
    return state, votes, retired_after


def group_guarantees(budgets_epsilon: np.ndarray, orders, delta: float, conversion: str) -> list[dict]:
    """One entry per distinct per-record budget: the budget asked for (ε at δ) and the guarantee the
    filter gives those records (ε of their Gaussian budget, never above the budget)."""
    out = []
    for eps in sorted({float(b) for b in np.asarray(budgets_epsilon, dtype=float)}):
        s = gaussian_budget(eps, orders, delta, conversion)
        achieved, order = epsilon_of_budget(s, orders, delta, conversion)
        out.append({"budget_epsilon": eps, "epsilon": achieved, "delta": delta, "order": order,
                    "gaussian_budget": s})
    return out
