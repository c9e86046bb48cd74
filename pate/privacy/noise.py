"""All aggregation noise, from one generator object that is either OS-secure or seeded.

Secure by default (privacy invariant 3): draws come from the OS CSPRNG. A seed makes every draw
reproducible for tests and debugging, and every privacy output then says it is not a production
guarantee (``NoiseSource.seeded``).

Every noisy count is drawn with ``discrete_gaussian`` or ``discrete_laplace``: exact integer
samplers (``pate.privacy.discrete``; Canonne, Kamath & Steinke 2020) fed with uniform integers from
the OS (``secrets.randbelow``) or, seeded, from a PCG64 stream's raw 64-bit words, which are the
same on every machine. The float draws below (``normal``, ``laplace``, ``uniform``) are kept for
what is not a released count; the one real number pate releases, the smooth-sensitivity figure,
is drawn exactly and snapped to a public grid (``smooth_sensitivity.snapped_gaussian``).

Tails are drawn exactly (issue 22). An inverse CDF applied to 53-bit uniforms alone cannot go
beyond its outermost grid point, |Z| ≈ 8.2 (Φ⁻¹(2⁻⁵³)) for the normal and 36·b for the Laplace, and
such a truncated mechanism is not the Gaussian (Laplace) mechanism whose exact tails the accountant
assumes: near the cutoff one neighbour's output is impossible under the other, an unaccounted δ
(Mironov 2012, "On significance of the least significant bits for differential privacy", shows
how floating-point noise breaks the analysis). Here a draw that lands in an outermost bin is
replaced by an exact draw from the conditional tail beyond it, computed in log space from fresh
uniforms (``_log_uniform``), so no tail is cut off at any depth.
"""
from __future__ import annotations

import math
import os
import secrets
from typing import Optional

import numpy as np
from scipy.special import ndtri, ndtri_exp

from . import discrete
from .numerics import check_positive

_TWO_53 = float(2**53)
_MAX_REDRAWS = 8
_MAX_TAIL_LEVELS = 64  # a working source goes this deep with probability 2⁻³³⁹²
_LOG_TWO_53 = 53 * math.log(2.0)
_U_LOW = 1.0 / _TWO_53  # the outermost grid points of uniform(): its two edge bins
_U_HIGH = (_TWO_53 - 1.0) / _TWO_53
# numpy's seeded Laplace (random_laplace: U = k/2⁵³, k ≥ 1) puts its outermost bins at exactly
# ±52·log 2·b and its next ones at ±51·log 2·b; anything beyond 51.5·log 2·b is an outermost bin.
_NUMPY_LAPLACE_EDGE = 51.5 * math.log(2.0)


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


def _log_uniform(bits, count: int) -> np.ndarray:
    """log V for ``count`` V uniform on (0, 1), with no floor: ``bits(n)`` gives n integers on
    [1, 2⁵³ − 1]; V = k/2⁵³, except that k = 1 (V's lowest bin, probability 2⁻⁵³) means
    V = 2⁻⁵³·V' with a fresh V', level after level, so log V reaches −53·L·log 2 at level L.

    Vectorised: each level redraws only the entries still in the lowest bin.
    """
    out = np.empty(count)
    todo = np.arange(count)
    for level in range(_MAX_TAIL_LEVELS):
        if todo.size == 0:
            return out
        k = np.asarray(bits(todo.size))
        deeper = k == 1
        done = ~deeper
        out[todo[done]] = np.log(k[done].astype(np.float64) / _TWO_53) - level * _LOG_TWO_53
        todo = todo[deeper]
    if todo.size == 0:
        return out
    raise RuntimeError(f"the random source gave its lowest value {_MAX_TAIL_LEVELS} times in a row; "
                       "it cannot be trusted for noise")


class NoiseSource:
    """One generator of all aggregation noise.

    Secure (``seed is None``): 53 random bits per draw from the OS CSPRNG (``os.urandom``)
    give u = k/2⁵³ with k uniform on [1, 2⁵³ − 1], so 0 < u < 1 exactly (``_secure_bits``); then
        normal:  Φ⁻¹(u) (``scipy.special.ndtri``);
        Laplace: b·log(2u) for u < ½, −b·log(2(1 − u)) otherwise (inverse CDF, exact 1 − u);
    except in the two outermost bins (k = 1, k = 2⁵³ − 1, probability 2⁻⁵³ each), where the value
    is drawn from the exact conditional tail beyond them with fresh OS bits: Φ⁻¹(p) by
    ``scipy.special.ndtri_exp(log p)`` with p = 2⁻⁵³·V, and ∓b·(52·log 2 − log V) for the Laplace
    (memorylessness: the cutoff plus b·Exp(1)); log V is drawn level by level (``_log_uniform``).
    Seeded: ``numpy.random.Generator(PCG64(SeedSequence([seed, stream])))``, so a (seed, stream)
    pair always reproduces and different streams are independent; not secure.
        normal:  numpy's ziggurat, unchanged; it has no 8.2 cutoff (its tail is Marsaglia's exact
                 method), though its own 53-bit uniforms keep it within |Z| ≲ 12.2 (tail mass
                 < 1e-33); left so that seeded streams stay what they were;
        Laplace: numpy's inverse CDF, whose outermost bins (±52·log 2·b) are redrawn from the exact
                 tail as above, with uniforms from a separate generator (the SeedSequence's child
                 0), so every value not in those bins is the same as before, draw for draw.
    ``uniform`` is unchanged in both modes.
    What remains (both modes): inside the bulk a float draw is the inverse CDF of a 53-bit grid
    point, rounded to float64, whose low-order bits are not those of a real-valued draw (Mironov
    2012): that is why no released count is drawn this way (``discrete_gaussian``,
    ``discrete_laplace``).
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
        self._tail_rng = None  # seeded mode's exact-tail uniforms, made on first use
        self._int_bits = None  # seeded mode's integer stream for the discrete samplers, made on first use

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

    def _tail_bits(self, count: int) -> np.ndarray:
        """Integers on [1, 2⁵³ − 1] for exact tails: OS bits, or (seeded) a generator apart from
        the main stream, so that a tail draw never shifts the main stream."""
        if self._rng is None:
            return _secure_bits(count)
        if self._tail_rng is None:
            child = np.random.SeedSequence([int(self._seed), self._stream], spawn_key=(0,))
            self._tail_rng = np.random.Generator(np.random.PCG64(child))
        return self._tail_rng.integers(1, 2**53, size=count, dtype=np.uint64)

    def _log_tail(self, count: int) -> np.ndarray:
        """log p for p uniform on (0, 2⁻⁵³): where in an outermost bin the draw really lies."""
        return _log_uniform(self._tail_bits, count) - _LOG_TWO_53

    def normal(self, size=None, scale: float = 1.0) -> np.ndarray:
        """N(0, scale²) draws, with exact tails (no cutoff at Φ⁻¹(2⁻⁵³))."""
        scale = check_positive("scale", scale)
        if self._rng is not None:
            return self._rng.normal(0.0, scale, size=size)
        u = self.uniform(size)
        z = ndtri(u)
        edge = np.flatnonzero((u == _U_LOW) | (u == _U_HIGH))
        if edge.size:  # probability 2⁻⁵² per draw
            z = np.array(z, dtype=np.float64)
            low = ndtri_exp(self._log_tail(edge.size))  # below Φ⁻¹(2⁻⁵³)
            z.flat[edge] = np.where(u.flat[edge] == _U_LOW, low, -low)
        return scale * z[()]

    def laplace(self, size=None, scale: float = 1.0) -> np.ndarray:
        """Laplace(0, scale) draws (density e^{−|x|/scale}/(2·scale)), with exact tails."""
        scale = check_positive("scale", scale)
        if self._rng is not None:
            x = self._rng.laplace(0.0, scale, size=size)
            edge = np.flatnonzero(np.abs(x) > _NUMPY_LAPLACE_EDGE * scale)
            if edge.size == 0:
                return x
            out = np.array(x, dtype=np.float64)
            beyond = 52 * math.log(2.0) - _log_uniform(self._tail_bits, edge.size)  # cutoff + Exp(1)
            out.flat[edge] = np.sign(out.flat[edge]) * scale * beyond
            return out if isinstance(x, np.ndarray) else float(out)
        u = self.uniform(size)  # 0 < u < 1, so neither log sees 0
        x = np.where(u < 0.5, scale * np.log(2.0 * u), -scale * np.log(2.0 * (1.0 - u)))
        edge = np.flatnonzero((u == _U_LOW) | (u == _U_HIGH))
        if edge.size:  # b·log(2p), p uniform on (0, 2⁻⁵³): the exact tail beyond 52·log 2·b
            low = scale * (math.log(2.0) + self._log_tail(edge.size))
            x.flat[edge] = np.where(u.flat[edge] == _U_LOW, low, -low)
        return x

    def _below(self):
        """A function n -> an integer uniform on [0, n): OS bits (``secrets.randbelow``), or the
        seeded stream's own 64-bit words (PCG64's raw output, the same on every machine and numpy
        version), by rejection so it is exactly uniform."""
        if self._rng is None:
            return secrets.randbelow
        if self._int_bits is None:
            self._int_bits = _SeededWords(np.random.PCG64(np.random.SeedSequence([int(self._seed), self._stream],
                                                                                 spawn_key=(1,))))
        return self._int_bits.below

    def discrete_gaussian(self, size, sigma: float) -> np.ndarray:
        """int64 draws of the discrete Gaussian N_Z(0, σ²), pmf ∝ exp(−z²/(2σ²)) on the integers, exact
        (``pate.privacy.discrete``): what every noisy count pate releases carries."""
        return self._integers(size, discrete.discrete_gaussian_one, *discrete.exact_square(check_positive("sigma", sigma)))

    def discrete_gaussian_exact(self, p: int, q: int) -> int:
        """One draw of N_Z(0, p/q) as a Python integer (any size: the smooth-sensitivity release
        draws at σ = 2⁹⁶)."""
        if not (isinstance(p, int) and isinstance(q, int) and p > 0 and q > 0):
            raise ValueError(f"p and q must be positive integers. Found {p!r}, {q!r}.")
        return discrete.discrete_gaussian_one(self._below(), p, q)

    def discrete_laplace(self, size, gamma: float) -> np.ndarray:
        """int64 draws of the discrete Laplace Lap_Z(1/γ), pmf ∝ exp(−γ|z|), exact (LNMax's noise)."""
        return self._integers(size, discrete.discrete_laplace_one, *discrete.exact_rate(check_positive("gamma", gamma)))

    def _integers(self, size, draw_one, *parameters) -> np.ndarray:
        """An int64 array of ``size`` draws of ``draw_one(below, *parameters)``."""
        below, shape = self._below(), _shape(size)
        out = [draw_one(below, *parameters) for _ in range(int(np.prod(shape, dtype=np.int64)))]
        return np.array(out, dtype=np.int64).reshape(shape)

    def __repr__(self) -> str:
        kind = f"seeded(seed={self._seed}, stream={self._stream})" if self.seeded else "os-secure"
        return f"NoiseSource({kind})"


def _shape(size) -> tuple[int, ...]:
    return () if size is None else tuple(int(n) for n in np.atleast_1d(size))


class _SeededWords:
    """Uniform integers below n from a seeded PCG64's raw 64-bit words (buffered)."""

    def __init__(self, bit_generator: np.random.PCG64):
        self._gen, self._buf, self._pos = bit_generator, np.zeros(0, dtype=np.uint64), 0

    def _word(self) -> int:
        if self._pos == len(self._buf):
            self._buf, self._pos = self._gen.random_raw(4096), 0
        self._pos += 1
        return int(self._buf[self._pos - 1])

    def below(self, n: int) -> int:
        bits = max(int(n - 1).bit_length(), 1)
        words = -(-bits // 64)
        while True:
            value = 0
            for _ in range(words):
                value = (value << 64) | self._word()
            value >>= words * 64 - bits
            if value < n:
                return value


def noise_source(seed: Optional[int] = None, stream: int = 0) -> NoiseSource:
    """The noise generator: OS-secure when ``seed`` is None, else seeded by (seed, stream)."""
    return NoiseSource(seed, stream)


def check_noise(noise) -> NoiseSource:
    if not isinstance(noise, NoiseSource):  # so every draw is known secure or known seeded
        raise ValueError(f"noise must be a noise_source() object. Found {type(noise).__name__}.")
    return noise
