"""[aggregator]: the mechanism and its noise, the queries, the query selection."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..privacy.mechanisms import MECHANISMS as MECHANISM_CLASSES
from ..privacy.discrete import MAX_TABLE_SIGMA
from .checks import MAX_KNN_K, MAX_QUERIES, MAX_SEED, MAX_STEPS, NOISE_RANGE, _check

SELECTIONS = ("random", "k-center", "uncertainty")  # [aggregator] query_selection (pate.aggregation.selection)
CHOSEN_BETWEEN_ROUNDS = ("uncertainty",)  # the selections that need a student between rounds


@dataclass(frozen=True)
class AggregatorConfig:
    mechanism: str = "confident-gnmax"
    max_queries: int = 640
    threshold: float = 200.0
    sigma1: float = 150.0
    sigma2: float = 40.0
    gamma: float = 0.05  # LNMax: Laplace noise of scale 1/gamma
    epsilon_budget: float = 0.0  # 0 = no budget; else stop before data-independent eps exceeds it
    seed: Optional[int] = None  # None = OS cryptographic noise; a seed is NOT a production guarantee
    # private-knn (pate.features.knn): a query's radius is the distance to its knn_k-th nearest public pool
    # image, in the [teachers] features space projected on knn_dim principal axes of the pool (0 = all);
    # reverse-knn: the anchors each private record votes for (0 = none: a DP-SGD teacher labels alone)
    knn_k: int = 30
    knn_dim: int = 64
    # interactive-gnmax: the queries are asked in interactive_rounds rounds; before each round a
    # student ([student] settings, interactive_steps steps) is trained on the labels released so far,
    # and its label is accepted where the teachers agree with it and its confidence exceeds
    # student_confidence
    student_confidence: float = 0.9
    interactive_rounds: int = 3
    interactive_steps: int = 1500
    # Release, beside each answered label, the noisy count vector it is the argmax of (soft labels
    # for the student): covered by every mechanism's worst-case guarantee; the papers'
    # data-dependent analysis is about the argmax only, so it does not apply then.
    soft_labels: bool = False
    # Which pool images are asked, on public information only (pate.aggregation.selection): "random" (the first
    # of the shuffled pool), "k-center" (a greedy cover of the pool in its own pixel PCA space) or,
    # with interactive-gnmax only, "uncertainty" (the teachers vote on the whole pool; each round asks
    # the images its student, trained on released labels, is least certain of: smallest top-1 minus
    # top-2 margin; round 0 the first of the shuffled pool). Each asked query is charged its worst case.
    query_selection: str = "random"

    def validate(self) -> None:
        _check("aggregator", "mechanism", self.mechanism in MECHANISM_CLASSES, f"one of {list(MECHANISM_CLASSES)}",
               self.mechanism)
        _check("aggregator", "max_queries", 1 <= self.max_queries <= MAX_QUERIES, f"between 1 and {MAX_QUERIES}",
               self.max_queries)
        _check("aggregator", "threshold", self.threshold >= 0, ">= 0", self.threshold)
        lo, hi = NOISE_RANGE
        # sigma1's noise is compared with a threshold: its discrete tails are summed exactly, up to MAX_TABLE_SIGMA
        _check("aggregator", "sigma1", lo <= self.sigma1 <= MAX_TABLE_SIGMA, f"in [{lo:g}, {MAX_TABLE_SIGMA:g}]",
               self.sigma1)
        _check("aggregator", "sigma2", lo <= self.sigma2 <= hi, f"in [{lo:g}, {hi:g}]", self.sigma2)
        _check("aggregator", "gamma", 1 / hi <= self.gamma <= 1 / lo, f"in [{1 / hi:g}, {1 / lo:g}]", self.gamma)
        _check("aggregator", "seed", self.seed is None or 0 <= self.seed <= MAX_SEED,
               f"absent (OS noise) or in [0, {MAX_SEED}]", self.seed)
        _check("aggregator", "epsilon_budget", self.epsilon_budget >= 0, ">= 0 (0 = none)",
               self.epsilon_budget)
        _check("aggregator", "knn_k", 0 <= self.knn_k <= MAX_KNN_K, f"between 0 and {MAX_KNN_K}", self.knn_k)
        _check("aggregator", "student_confidence", 0 < self.student_confidence < 1, "in (0, 1)",
               self.student_confidence)
        # Each mechanism's settings are checked against the others only where it is the one configured
        # (interactive_rounds against max_queries for interactive-gnmax): the defaults of a mechanism
        # not in use never refuse a config (max_queries = 2 with confident-gnmax).
        rounds_bound = self.max_queries if MECHANISM_CLASSES[self.mechanism].interactive else MAX_QUERIES
        _check("aggregator", "interactive_rounds", 1 <= self.interactive_rounds <= rounds_bound,
               f"between 1 and max_queries ({self.max_queries})" if rounds_bound == self.max_queries
               else f"between 1 and {MAX_QUERIES}", self.interactive_rounds)
        _check("aggregator", "interactive_steps", 1 <= self.interactive_steps <= MAX_STEPS,
               f"between 1 and {MAX_STEPS}", self.interactive_steps)
        _check("aggregator", "knn_dim", 0 <= self.knn_dim <= 65536, "between 0 (all) and 65536", self.knn_dim)
        _check("aggregator", "query_selection", self.query_selection in SELECTIONS, f"one of {list(SELECTIONS)}",
               self.query_selection)
        _check("aggregator", "query_selection", self.query_selection != "uncertainty"
               or MECHANISM_CLASSES[self.mechanism].interactive,
               f"'random' or 'k-center' with mechanism {self.mechanism!r} ('uncertainty' needs a student between "
               "rounds: mechanism = \"interactive-gnmax\")", self.query_selection)

