"""[privacy]: delta, the accountant's orders and conversion, budgets, the data-dependent release."""
from __future__ import annotations

from dataclasses import dataclass

from .checks import MAX_ORDER, MAX_ORDERS, NOISE_RANGE, _check


@dataclass(frozen=True)
class PrivacyConfig:
    delta: float = 1e-5
    orders: tuple[float, ...] = ()  # empty = the paper's default list (pate.privacy.rdp.DEFAULT_ORDERS)
    conversion: str = "improved"
    # Release the data-dependent cost through smooth sensitivity (the papers' convention; it costs
    # its own, data-independent epsilon, added to the guarantee). Order, beta and sigma_ss are fixed
    # here, before any vote is seen; 0 = the values `pate plan` proposes from the settings alone.
    data_dependent_release: bool = False
    ss_order: float = 0.0
    ss_beta: float = 0.0
    ss_sigma: float = 0.0
    # Each record's epsilon over every release in the spend log: an individual filter (the partition leaves
    # out a record this run would take past it; a run whose own worst case passes it is refused); 0 = none.
    total_budget: float = 0.0
    # Individual mechanisms (private-knn): each private record's budget, epsilon at delta; a CSV of
    # `record,epsilon` rows (record = file path under private_dir, or index) sets it per record.
    record_epsilon: float = 1.0
    record_budgets: str = ""

    def validate(self) -> None:
        _check("privacy", "delta", 0 < self.delta < 1, "in (0, 1)", self.delta)
        _check("privacy", "orders", all(1 < o <= MAX_ORDER for o in self.orders) and len(self.orders) <= MAX_ORDERS,
               f"a list of at most {MAX_ORDERS} orders in (1, {MAX_ORDER:g}]", list(self.orders))
        _check("privacy", "conversion", self.conversion in ("improved", "classic"),
               "'improved' or 'classic'", self.conversion)
        given = [v for v in (self.ss_order, self.ss_beta, self.ss_sigma) if v != 0]
        _check("privacy", "ss_order, ss_beta, ss_sigma", len(given) in (0, 3),
               "all three given, or all 0 (proposed from the settings)", [self.ss_order, self.ss_beta, self.ss_sigma])
        if given:
            _check("privacy", "ss_order", self.ss_order > 1, "> 1", self.ss_order)
            _check("privacy", "ss_beta", 0 < self.ss_beta < 1 / (2 * self.ss_order),
                   f"in (0, 1/(2*ss_order)) = (0, {1 / (2 * self.ss_order):.4g})", self.ss_beta)
            _check("privacy", "ss_order", self.ss_order <= MAX_ORDER, f"at most {MAX_ORDER:g}", self.ss_order)
            _check("privacy", "ss_sigma", NOISE_RANGE[0] <= self.ss_sigma <= NOISE_RANGE[1],
                   f"in [{NOISE_RANGE[0]:g}, {NOISE_RANGE[1]:g}]", self.ss_sigma)
        _check("privacy", "total_budget", self.total_budget >= 0, ">= 0 (0 = none)", self.total_budget)
        _check("privacy", "record_epsilon", 0 < self.record_epsilon <= 1e4, "in (0, 1e4]", self.record_epsilon)

