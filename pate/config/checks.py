"""How a setting is refused (one line naming section.key), and the bounds every integer and
noise setting is checked against at load."""
from __future__ import annotations

import re
from typing import Any

from ..errors import PateError


# Bounds where every computation stays in memory and finishes in seconds: the worst-case guarantee
# looks at every possible top vote count (0..K), planning at every class.
MAX_TEACHERS = 100_000


MAX_CLASSES = 10_000


MAX_SEED = 2**63 - 1


# Every other integer setting has an upper bound too, checked at load: a value past it (2**62 as a batch
# size) would otherwise pass the config and fail later inside torch or numpy with a traceback. Each
# bound is far beyond any sensible run and keeps sizes and loop counts representable and allocatable.
MAX_RECORDS = 100_000_000  # private_size, student_pool, test_size: more than any file pate reads holds


MAX_QUERIES = 1_000_000  # [aggregator] max_queries (and interactive_rounds): planned and accounted in seconds


MAX_EPOCHS = 10_000  # [teachers] epochs, feature_epochs


MAX_STEPS = 10_000_000  # [student] steps, [aggregator] interactive_steps


MAX_BATCH = 8192  # [teachers] and [student] batch_size


MAX_UNLABELED_RATIO = 64  # [student] unlabeled_ratio (FixMatch uses 7): unlabelled images per labelled one


MAX_KNN_K = 100_000  # [aggregator] knn_k


MAX_ORDER, MAX_ORDERS = 1e4, 1000  # Rényi orders: beyond these every conversion is uninformative or overflows


NOISE_RANGE = (1e-6, 1e9)  # noise scales where every bound is finite and representable


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class ConfigError(PateError, ValueError):
    """A config a user wrote is unusable; the message names the key and says why."""


def _check(section: str, name: str, ok: bool, must: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"[{section}] {name} must be {must}; found {value!r}")

