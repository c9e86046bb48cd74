"""The one seed derivation: every stream of training randomness is named by a tuple of integers.

``derive_seed(seed, tag, teacher, epoch)`` gives the same 63-bit seed on every machine and in
every process, so results do not depend on which process trains which teacher, nor on where a
run was interrupted and resumed.
"""
from __future__ import annotations

import numpy as np

# Tags of the independent streams derived from one user seed.
TAG_INIT, TAG_SHUFFLE, TAG_EXTRACTOR = 1, 2, 3


def derive_seed(*words: int) -> int:
    """A non-negative 63-bit integer from ``words`` (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1, np.uint64)[0]) >> 1
