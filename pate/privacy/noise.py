"""All aggregation noise, from one generator object that is either OS-secure or seeded.

Secure by default (privacy invariant 3): draws come from the OS CSPRNG. A seed makes every draw
reproducible for tests and debugging, and every privacy output then says it is not a production
guarantee (``NoiseSource.seeded``).
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
from scipy.special import ndtri

from .numerics import check_positive

_TWO_53 = float(2**53)
_MAX_REDRAWS = 8


def _secure_bits(count: int) -> np.ndarray:
    """``count`` integers uniform on [1, 2⁵³ − 1] from the OS CSPRNG (53 bits each, zeros redrawn).

    k/2⁵³ with k < 2⁵³ is exactly representable and below 1, and k ≥ 1 keeps it above 0, so
    neither tail of the inverse CDF can return ±inf. Zero has probability 2⁻⁵³ per draw; a source
    that keeps returning it is broken, and is refused rather than trusted.
    """
    k = np.frombuffer(os.urandom(8 * count), dtype=np.uint64) >> np.uint64(11)
    for _ in range(_MAX_REDRAWS):
        zero = np.flatnonzero(k == 0)
        if zero.size == 0:
            return k
        k = k.copy()
        k[zero] = np.frombuffer(os.urandom(8 * zero.size), dtype=np.uint64) >> np.uint64(11)
    raise RuntimeError("the OS random source (os.urandom) returned only zero bits; it cannot be trusted for noise")


class NoiseSource:
    """One generator of all aggregation noise.

    Secure (``seed is None``): 53 random bits per draw from the OS CSPRNG (``os.urandom``)
    give u = k/2⁵³ with k uniform on [1, 2⁵³ − 1], so 0 < u < 1 exactly (``_secure_bits``); then
        normal:  Φ⁻¹(u) (``scipy.special.ndtri``), so |Z| ≤ 8.3 (the tail beyond has mass < 1e-16);
        Laplace: b·log(2u) for u < ½, −b·log(2(1 − u)) otherwise (inverse CDF, exact 1 − u).
    Seeded: ``numpy.random.Generator(PCG64(SeedSequence([seed, stream])))``, so a (seed, stream)
    pair always reproduces and different streams are independent; not secure.
    Known limit of both: floating-point noise is not an exact draw from the real distribution
    (Mironov 2012); the privacy analysis treats it as exact.
    """

    def __init__(self, seed: Optional[int] = None, stream: int = 0):
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
                raise ValueError(f"seed must be a non-negative integer or None. Found {seed!r}.")
        if isinstance(stream, bool) or not isinstance(stream, (int, np.integer)) or stream < 0:
            raise ValueError(f"stream must be a non-negative integer. Found {stream!r}.")
        self._seed, self._stream = seed, int(stream)
        self._rng = (None if seed is None else
                     np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(stream)]))))

    @property
    def seeded(self) -> bool:
        """True when draws are reproducible from a seed (privacy outputs must say so)."""
        return self._rng is not None

    @property
    def seed(self) -> Optional[int]:
        return self._seed

    @property
    def stream(self) -> int:
        return self._stream

    def uniform(self, size=None) -> np.ndarray:
        """Uniform draws k/2⁵³, k uniform in [1, 2⁵³ − 1]: in the open interval (0, 1), exactly."""
        shape = () if size is None else tuple(np.atleast_1d(size).astype(int))
        count = int(np.prod(shape, dtype=np.int64))
        if self._rng is None:
            k = _secure_bits(count)
        else:
            k = self._rng.integers(1, 2**53, size=count, dtype=np.uint64)
        return (k.astype(np.float64) / _TWO_53).reshape(shape)

    def normal(self, size=None, scale: float = 1.0) -> np.ndarray:
        """N(0, scale²) draws."""
        scale = check_positive("scale", scale)
        if self._rng is not None:
            return self._rng.normal(0.0, scale, size=size)
        return scale * ndtri(self.uniform(size))

    def laplace(self, size=None, scale: float = 1.0) -> np.ndarray:
        """Laplace(0, scale) draws (density e^{−|x|/scale}/(2·scale))."""
        scale = check_positive("scale", scale)
        if self._rng is not None:
            return self._rng.laplace(0.0, scale, size=size)
        u = self.uniform(size)
        with np.errstate(divide="ignore"):
            return np.where(u < 0.5, scale * np.log(2.0 * u), -scale * np.log(2.0 * (1.0 - u)))

    def __repr__(self) -> str:
        kind = f"seeded(seed={self._seed}, stream={self._stream})" if self.seeded else "os-secure"
        return f"NoiseSource({kind})"


def noise_source(seed: Optional[int] = None, stream: int = 0) -> NoiseSource:
    """The noise generator: OS-secure when ``seed`` is None, else seeded by (seed, stream)."""
    return NoiseSource(seed, stream)


def check_noise(noise) -> NoiseSource:
    if not isinstance(noise, NoiseSource):  # so every draw is known secure or known seeded
        raise ValueError(f"noise must be a noise_source() object. Found {type(noise).__name__}.")
    return noise
