"""Unconstrained coordinates for constrained parameter arrays.

Each class here maps one array of a parameter dict to a flat float64 vector in which
any value is allowed, and back.  An extrapolation (SQUAREM) moves that vector along a
straight line; the inverse map lands the result back inside the constraints, so an
extrapolated point is always a valid parameter (up to overflow, which the inverse
reports as :class:`InfeasiblePoint`).

Exact zeros (and, for Bernoulli probabilities, exact ones; or values a rounding error
beyond) cannot be represented in log coordinates; EM keeps them where they are (a zero
transition probability, or a symbol absent from the data, has zero counts forever), so
they are *held fixed*: a
mask built from all the points of one extrapolation marks them, they are left out of
the vector, and the inverse map copies them from the template (the latest point).

Shapes: ``value`` has the shape of the parameter array; the vector has ``size`` entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: The largest condition number of a Cholesky factor C, its rows scaled to unit length,
#: that :class:`CholeskyStack` turns into a covariance: the correlation matrix's
#: condition number (its square) stays below 1e14, where float64 still resolves its
#: smallest eigenvalue.  Conservative by one or two orders: a model whose features are
#: this close to collinear gets no extrapolated points (SQUAREM, DAAREM and Newton then
#: take plain EM steps), never a wrong one.
MAX_CHOLESKY_CONDITION = 1e7


class InfeasiblePoint(ValueError):
    """A vector whose parameters overflow or underflow (the extrapolation went too far)."""


def _stack(points: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack([np.asarray(p, dtype=np.float64) for p in points])


@dataclass(frozen=True)
class FreeArray:
    """Unconstrained values (Gaussian means): the identity."""

    shape: tuple[int, ...]

    @classmethod
    def build(cls, points: Sequence[np.ndarray]) -> FreeArray:
        return cls(np.shape(points[-1]))

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def forward(self, value: np.ndarray) -> np.ndarray:
        return np.asarray(value, dtype=np.float64).ravel().copy()

    def inverse(self, vector: np.ndarray) -> np.ndarray:
        out = np.asarray(vector, dtype=np.float64).reshape(self.shape).copy()
        if not np.all(np.isfinite(out)):
            raise InfeasiblePoint("non-finite unconstrained value")
        return out


@dataclass(frozen=True)
class PositiveArray:
    """Positive values (Poisson rates, diagonal or spherical variances): ``log``.

    Entries that are exactly zero in any of the points are held at the template's value.
    """

    template: np.ndarray
    free: np.ndarray  # bool, template's shape

    @classmethod
    def build(cls, points: Sequence[np.ndarray]) -> PositiveArray:
        stacked = _stack(points)
        return cls(stacked[-1], ~np.any(stacked <= 0.0, axis=0))

    @property
    def size(self) -> int:
        return int(self.free.sum())

    def forward(self, value: np.ndarray) -> np.ndarray:
        return np.log(np.asarray(value, dtype=np.float64)[self.free])

    def inverse(self, vector: np.ndarray) -> np.ndarray:
        out = self.template.copy()
        with np.errstate(over="ignore", under="ignore"):
            out[self.free] = np.exp(vector)
        _require_open(out[self.free], "positive value")
        return out


@dataclass(frozen=True)
class UnitIntervalArray:
    """Probabilities of independent events (Bernoulli): ``logit``; exact 0 or 1 held."""

    template: np.ndarray
    free: np.ndarray

    @classmethod
    def build(cls, points: Sequence[np.ndarray]) -> UnitIntervalArray:
        stacked = _stack(points)
        held = np.any((stacked <= 0.0) | (stacked >= 1.0), axis=0)  # 1 + eps: rounding
        return cls(stacked[-1], ~held)

    @property
    def size(self) -> int:
        return int(self.free.sum())

    def forward(self, value: np.ndarray) -> np.ndarray:
        p = np.asarray(value, dtype=np.float64)[self.free]
        return np.log(p) - np.log1p(-p)

    def inverse(self, vector: np.ndarray) -> np.ndarray:
        out = self.template.copy()
        with np.errstate(over="ignore", under="ignore"):
            # 1 / (1 + e^-z) for z >= 0 and e^z / (1 + e^z) for z < 0: no overflow
            e = np.exp(-np.abs(vector))
            out[self.free] = np.where(vector >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        inside = out[self.free]
        _require_open(inside, "probability")
        if np.any(inside >= 1.0):
            raise InfeasiblePoint("a probability rounded to one")
        return out


@dataclass(frozen=True)
class SimplexRows:
    """Probability vectors along the last axis (mixing weights, start and transition
    probabilities, categorical symbol probabilities): centred log-ratios.

    For a row p with free entries F, the coordinates are ``log p_F - mean(log p_F)``
    (Aitchison's clr; symmetric in the entries, so no reference entry is chosen).  The
    inverse is a softmax over F scaled to the mass the held entries leave,
    ``1 - sum(template held)`` (1 when the held entries are zeros).
    """

    template: np.ndarray  # (..., M)
    free: np.ndarray  # bool (..., M)

    @classmethod
    def build(cls, points: Sequence[np.ndarray]) -> SimplexRows:
        stacked = _stack(points)
        return cls(stacked[-1], ~np.any(stacked <= 0.0, axis=0))

    @property
    def size(self) -> int:
        return int(self.free.sum())

    def forward(self, value: np.ndarray) -> np.ndarray:
        value = np.asarray(value, dtype=np.float64)
        logs = np.log(np.where(self.free, value, 1.0))
        count = np.maximum(self.free.sum(axis=-1, keepdims=True), 1)
        centred = logs - logs.sum(axis=-1, keepdims=True) / count
        return centred[self.free]

    def simplex_rows(self) -> list[np.ndarray]:
        """The vector positions of each row's free entries (rows with two or more):
        each row's coordinates sum to zero, so a derivative along all of them is
        determined by the others (:mod:`dask_em.acceleration.newton`)."""
        positions = np.full(self.free.shape, -1)
        positions[self.free] = np.arange(self.size)
        rows = positions.reshape(-1, positions.shape[-1])
        return [row[row >= 0] for row in rows if np.count_nonzero(row >= 0) > 1]

    def inverse(self, vector: np.ndarray) -> np.ndarray:
        z = np.full(self.template.shape, -np.inf)
        z[self.free] = vector
        if not np.all(np.isfinite(vector)):
            raise InfeasiblePoint("non-finite log-ratio")
        peak = np.max(z, axis=-1, keepdims=True)
        peak[~np.isfinite(peak)] = 0.0  # rows with no free entry
        with np.errstate(under="ignore"):
            shifted = np.exp(z - peak)
        held_mass = np.where(self.free, 0.0, self.template).sum(axis=-1, keepdims=True)
        total = shifted.sum(axis=-1, keepdims=True)
        scale = np.divide(1.0 - held_mass, total, out=np.zeros_like(total), where=total > 0)
        out = np.where(self.free, shifted * scale, self.template)
        _require_open(out[self.free], "probability")
        return out


@dataclass(frozen=True)
class CholeskyStack:
    """Symmetric positive-definite matrices (full or tied covariances): the lower
    Cholesky factor C (``Sigma = C C^T``) with its diagonal in log coordinates.

    ``value`` is (K, D, D) or (D, D); per matrix the vector holds ``log diag C`` (D) then
    the strictly lower triangle of C (D (D - 1) / 2), row by row.
    """

    shape: tuple[int, ...]

    @classmethod
    def build(cls, points: Sequence[np.ndarray]) -> CholeskyStack:
        return cls(np.shape(points[-1]))

    @property
    def n_features(self) -> int:
        return self.shape[-1]

    @property
    def size(self) -> int:
        n_matrices = 1 if len(self.shape) == 2 else self.shape[0]
        return n_matrices * self.n_features * (self.n_features + 1) // 2

    def forward(self, value: np.ndarray) -> np.ndarray:
        matrices = np.asarray(value, dtype=np.float64).reshape(-1, self.n_features, self.n_features)
        factors = np.linalg.cholesky(matrices)
        lower = np.tril_indices(self.n_features, -1)
        diagonal = np.log(np.diagonal(factors, axis1=1, axis2=2))
        return np.concatenate([diagonal, factors[:, lower[0], lower[1]]], axis=1).ravel()

    def inverse(self, vector: np.ndarray) -> np.ndarray:
        D = self.n_features
        rows = np.asarray(vector, dtype=np.float64).reshape(-1, D * (D + 1) // 2)
        factors = np.zeros((len(rows), D, D))
        lower = np.tril_indices(D, -1)
        with np.errstate(over="ignore", under="ignore"):
            diagonal = np.exp(rows[:, :D])
        _require_open(diagonal, "Cholesky diagonal")
        factors[:, np.arange(D), np.arange(D)] = diagonal
        factors[:, lower[0], lower[1]] = rows[:, D:]
        matrices = factors @ factors.transpose(0, 2, 1)
        if not np.all(np.isfinite(matrices)):
            raise InfeasiblePoint("a covariance overflowed")
        _require_open(np.diagonal(matrices, axis1=1, axis2=2), "variance")
        # C C^T is positive definite, but not in float64 once its correlations come
        # within rounding of a singular matrix: the product rounds to an indefinite one,
        # whose log-density is meaningless (Newton took an extrapolation whose objective
        # was +5.9e11, its log-likelihood +7.7e14).  Rows scaled to unit length (R R^T
        # is the correlation matrix): features on very different scales alone (a
        # diagonal C, say) do not count.  Each row is first divided by its largest
        # entry (at least its diagonal, > 0), so that a tiny row's norm cannot underflow
        scaled = factors / np.max(np.abs(factors), axis=2, keepdims=True)
        scaled /= np.linalg.norm(scaled, axis=2, keepdims=True)
        try:
            condition = float(np.max(np.linalg.cond(scaled)))
        except np.linalg.LinAlgError:
            condition = np.inf
        if not condition <= MAX_CHOLESKY_CONDITION:
            raise InfeasiblePoint("a covariance is too close to singular for float64")
        return matrices.reshape(self.shape)


def _require_open(values: np.ndarray, what: str) -> None:
    """Free entries must stay strictly positive and finite (no log of 0 downstream)."""
    if not np.all(np.isfinite(values)) or np.any(values <= 0.0):
        raise InfeasiblePoint(f"a {what} overflowed or underflowed to zero")
