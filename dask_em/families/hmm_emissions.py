"""Compiled emission kernels of the HMM E-step: log-densities and gamma-weighted statistics.

For the emissions whose statistics are plain weighted sums, a block's Baum-Welch
statistics are computed without any NumPy temporary of the block's size beyond the
recursion's own: the observations are gathered once into state-major order (D, T)
(time-major columns, see :class:`dask_em.families.hmm_kernels.TimeMajorLayout`), the
log-densities are written straight into the (K, T) array that the recursion reads and
shifted/exponentiated a cache-sized chunk of columns at a time, and the statistics are
dot products of the rows of gamma with the rows of the data.

================  =======================================  ==========================
emission          log p(x_t | k) (constant terms dropped)  statistics (besides nk)
================  =======================================  ==========================
Gaussian diag     -(1/2) sum_d ((x_d - mu_kd) s_kd)^2      sum gamma x, sum gamma x^2
                  + sum_d log s_kd                          (about ``center``)
Gaussian spher.   the same with s_kd = s_k                  the same, summed over d
Poisson           sum_d x_d log lambda_kd - lambda_kd       sum gamma x
categorical       sum_d log P[k, d, x_d]                    sum gamma [x_d = m]
================  =======================================  ==========================

The dropped terms do not depend on the state (``-(D/2) log 2 pi``, ``-sum_d log x_d!``):
they cancel in the posteriors and are added back to the block's log-likelihood once.
A step with NaN (discrete emissions) has density 1 and no statistics, as in
:meth:`dask_em.families.hmm.HMMFamily.emission_log_prob`; a Gaussian step with NaN has
the density of its observed features and its completed moments
(:mod:`dask_em.families.hmm_emissions_missing`).

The statistics come out in the emission family's own format (the fields of its
``posterior_stats``), and the tests check them against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import gammaln

from dask_em.families.base import Params, Stats
from dask_em.families.categorical import CategoricalFamily
from dask_em.families.discrete import safe_log
from dask_em.families.gaussian import GaussianFamily
from dask_em.families.gaussian_missing_diag import add_missing_moments
from dask_em.families.hmm_compiled import dot, shift_chunk
from dask_em.families.hmm_emissions_missing import masked_terms, masked_weighted_sums
from dask_em.families.jit import jit
from dask_em.families.poisson import PoissonFamily
from dask_em.families.vector_exp import CHUNK

_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------- kernels
#: Sequences gathered together: their rows are read as that many sequential streams.
GATHER_SEQUENCES = 64


@jit
def gather_state_major(X, first_rows, starts, counts, center, out, observed, keep_nan):
    """``out[d, starts[t] + i] = X[first_rows[i] + t, d] - center[d]`` (D, T) float64:
    the block (T, D) in time-major order, state-major; ``first_rows[i]`` is the block row
    of the first step of the i-th longest sequence.

    Without ``keep_nan`` (discrete emissions) ``observed[r]`` is 1.0 where the step has
    no NaN, else 0.0 and its column of ``out`` is zeroed.  With ``keep_nan`` (Gaussian
    emissions, :mod:`dask_em.families.hmm_emissions_missing`) NaN stays in ``out`` and
    ``observed[r]`` is 0.0 only for a step with nothing observed.

    Sequences are taken GATHER_SEQUENCES at a time, step by step, so the reads are that
    many sequential streams rather than one jump per step.  Returns (steps with NaN,
    steps with ``observed`` 0.0, NaN values).
    """
    n_features = X.shape[1]
    n_missing = 0
    n_unobserved = 0
    n_nan = 0
    for group in range(0, counts[0], GATHER_SEQUENCES):
        for t in range(len(counts)):
            stop = min(group + GATHER_SEQUENCES, counts[t])
            if stop <= group:
                break
            for i in range(group, stop):
                source = first_rows[i] + t
                r = starts[t] + i
                absent = 0
                for d in range(n_features):
                    value = X[source, d]
                    if value != value:
                        absent += 1
                    out[d, r] = value - center[d]
                seen = absent == 0 or (keep_nan and absent < n_features)
                observed[r] = 1.0 if seen else 0.0
                if absent:
                    n_missing += 1
                    n_nan += absent
                    if not seen:
                        n_unobserved += 1
                    if not keep_nan:
                        for d in range(n_features):
                            out[d, r] = 0.0
    return n_missing, n_unobserved, n_nan


@jit
def diag_gaussian_log_b(X, means_c, scales, log_det, log_b, shift, with_nan):
    """Diagonal Gaussian log-densities (without ``-(D/2) log 2 pi``) into state-major
    ``log_b`` (K, T), then shifted and exponentiated in place (``shift`` (T,)).

    ``X`` (D, T) centred data, ``means_c`` (K, D) centred means, ``scales`` (K, D) the
    precisions' Cholesky factors, ``log_det`` (K,) ``sum_d log scales``.  ``with_nan``:
    X holds NaN, and each step's density is that of its observed features (without
    their ``-1/2 log 2 pi``; :mod:`dask_em.families.hmm_emissions_missing`).
    """
    n_states, n_features = means_c.shape
    n_rows = X.shape[1]
    log_scales = np.log(scales)
    high_bits = np.empty(CHUNK, dtype=np.int64)
    low_bits = np.empty(CHUNK, dtype=np.int64)
    for first in range(0, n_rows, CHUNK):
        stop = min(first + CHUNK, n_rows)
        for k in range(n_states):
            row = log_b[k, first:stop]
            row[:] = 0.0
            for d in range(n_features):
                x = X[d, first:stop]
                mean, scale = means_c[k, d], scales[k, d]
                if with_nan:
                    masked_terms(x, mean, scale, log_scales[k, d], row)
                    continue
                for i in range(len(row)):
                    z = (x[i] - mean) * scale
                    row[i] += z * z
            if not with_nan:
                for i in range(len(row)):
                    row[i] = log_det[k] - 0.5 * row[i]
        shift_chunk(log_b, first, stop, shift, high_bits, low_bits)


@jit
def poisson_log_b(X, observed, log_rates, rate_sums, log_b, shift):
    """Poisson log-densities (without ``-log x!``) into ``log_b`` (K, T), 0 at steps with
    NaN, then shifted and exponentiated in place.  ``X`` (D, T), NaN rows zeroed."""
    n_states, n_features = log_rates.shape
    n_rows = X.shape[1]
    high_bits = np.empty(CHUNK, dtype=np.int64)
    low_bits = np.empty(CHUNK, dtype=np.int64)
    for first in range(0, n_rows, CHUNK):
        stop = min(first + CHUNK, n_rows)
        seen = observed[first:stop]
        for k in range(n_states):
            row = log_b[k, first:stop]
            row[:] = 0.0
            for d in range(n_features):
                x = X[d, first:stop]
                weight = log_rates[k, d]
                for i in range(len(row)):
                    row[i] += x[i] * weight
            for i in range(len(row)):
                row[i] = (row[i] - rate_sums[k]) * seen[i]
        shift_chunk(log_b, first, stop, shift, high_bits, low_bits)


@jit
def categorical_log_b(X, observed, log_p, log_b, shift):
    """Categorical log-densities into ``log_b`` (K, T), 0 at steps with NaN, then
    shifted and exponentiated.  ``X`` (D, T) symbols (NaN rows zeroed), ``log_p``
    (K, D, M)."""
    n_states, n_features, n_symbols = log_p.shape
    n_rows = X.shape[1]
    for d in range(n_features):  # an index outside 0..M-1 would read outside log_p
        for r in range(n_rows):
            if not (0.0 <= X[d, r] < n_symbols):
                raise ValueError("a categorical step holds a symbol outside 0..n_symbols-1")
    high_bits = np.empty(CHUNK, dtype=np.int64)
    low_bits = np.empty(CHUNK, dtype=np.int64)
    for first in range(0, n_rows, CHUNK):
        stop = min(first + CHUNK, n_rows)
        for k in range(n_states):
            row = log_b[k, first:stop]
            for i in range(len(row)):
                r = first + i
                total = 0.0
                for d in range(n_features):
                    total += log_p[k, d, int(X[d, r])]
                row[i] = total * observed[r]
        shift_chunk(log_b, first, stop, shift, high_bits, low_bits)


@jit
def weighted_sums(gamma, X, observed, squares, nk, first_moment, second_moment):
    """``nk[k] = sum_t gamma[k, t] observed[t]``, ``first_moment[k, d] = sum_t gamma[k, t]
    X[d, t]`` and, when ``squares``, ``second_moment[k, d] = sum_t gamma[k, t] X[d, t]^2``
    (gamma (K, T); X (D, T), zero where not observed), a chunk of columns at a time."""
    n_states = gamma.shape[0]
    n_features, n_rows = X.shape
    squared = np.empty((n_features, CHUNK))
    for first in range(0, n_rows, CHUNK):
        stop = min(first + CHUNK, n_rows)
        width = stop - first
        if squares:
            for d in range(n_features):
                x = X[d, first:stop]
                for i in range(width):
                    squared[d, i] = x[i] * x[i]
        for k in range(n_states):
            g = gamma[k, first:stop]
            nk[k] += dot(g, observed[first:stop])
            for d in range(n_features):
                first_moment[k, d] += dot(g, X[d, first:stop])
                if squares:
                    second_moment[k, d] += dot(g, squared[d, :width])


@jit
def symbol_counts(gamma, X, observed, nk, counts):
    """``nk[k] = sum_t gamma[k, t] observed[t]`` and ``counts[k, d, m] = sum over observed
    t with X[d, t] = m of gamma[k, t]`` (gamma (K, T), X (D, T), counts (K, D, M))."""
    n_states = gamma.shape[0]
    n_features, n_rows = X.shape
    for k in range(n_states):
        g = gamma[k]
        nk[k] += dot(g, observed)
        for t in range(n_rows):
            if observed[t] > 0.0:
                for d in range(n_features):
                    counts[k, d, int(X[d, t])] += g[t]


# --------------------------------------------------------------------------- adapters
@dataclass(frozen=True)
class FusedEmission:
    """Compiled log-densities and statistics for one emission family (module table).

    ``kind`` is ``"diag"``, ``"spherical"``, ``"poisson"`` or ``"categorical"``.
    """

    family: Any
    kind: str

    @property
    def gaussian(self) -> bool:
        return self.kind in ("diag", "spherical")

    def center(self, emission: Params, n_features: int) -> np.ndarray:
        if self.gaussian:
            return np.asarray(emission["center"], dtype=np.float64)
        return np.zeros(n_features)

    def log_density_terms(self, emission: Params) -> tuple[np.ndarray, ...]:
        """The parameters the density kernel reads, computed once per block."""
        if self.gaussian:
            means = np.asarray(emission["means"], dtype=np.float64)
            chol = np.asarray(emission["precisions_cholesky"], dtype=np.float64)
            # a writable copy: a read-only array is another type to numba (one more
            # compilation of the density kernel)
            scales = np.array(np.broadcast_to(chol.reshape(len(means), -1), means.shape))
            return means - emission["center"], scales, np.log(scales).sum(axis=1)
        if self.kind == "poisson":
            rates = np.asarray(emission["rates"], dtype=np.float64)
            return safe_log(rates), rates.sum(axis=1)
        return (np.ascontiguousarray(safe_log(emission["probabilities"])),)

    def densities(self, terms, X_sm, observed, b, shift, with_nan=False) -> None:
        """Shifted densities into ``b`` (K, T) and ``shift`` (T,); ``with_nan``: X_sm
        holds NaN (Gaussian emissions)."""
        if self.gaussian:
            diag_gaussian_log_b(X_sm, *terms, b, shift, with_nan)
        elif self.kind == "poisson":
            poisson_log_b(X_sm, observed, *terms, b, shift)
        else:
            categorical_log_b(X_sm, observed, *terms, b, shift)

    def dropped_constant(self, emission: Params, X: np.ndarray, n_nan: int = 0) -> float:
        """The state-independent terms left out of the densities, summed over the block
        ``X`` (T, D) with ``n_nan`` NaN values (module docstring)."""
        if self.gaussian:  # -1/2 log 2 pi per observed value
            return -0.5 * _LOG_2PI * (X.shape[1] * len(X) - n_nan)
        if self.kind == "poisson":
            counts = np.asarray(X, dtype=np.float64)
            complete = counts[~np.isnan(counts).any(axis=1)]
            return -float(gammaln(complete + 1.0).sum())
        return 0.0

    def empty_sums(self, n_states: int, n_features: int) -> tuple[np.ndarray, ...]:
        if self.kind == "categorical":
            return np.zeros(n_states), np.zeros((n_states, n_features, self.family.n_symbols))
        # nk, first and second moments (the second unused for Poisson) and, for the
        # Gaussian, the posterior mass of the missing entries
        sums = (np.zeros(n_states), *(np.zeros((n_states, n_features)) for _ in range(2)))
        return (*sums, np.zeros((n_states, n_features))) if self.gaussian else sums

    def accumulate(self, gamma, X_sm, observed, sums, with_nan=False) -> None:
        """Add a group's gamma-weighted sums (gamma (K, T), X_sm (D, T)) into ``sums``;
        ``with_nan``: X_sm holds NaN (Gaussian emissions)."""
        if self.kind == "categorical":
            symbol_counts(gamma, X_sm, observed, *sums)
        elif self.gaussian and with_nan:
            masked_weighted_sums(gamma, X_sm, observed, *sums)
        else:
            weighted_sums(gamma, X_sm, observed, self.gaussian, *sums[:3])

    def statistics(self, emission: Params, sums, n_observed: int, n_steps: int) -> Stats:
        """The emission family's ``posterior_stats`` fields from the accumulated sums;
        ``n_observed`` of the ``n_steps`` steps have anything observed."""
        nk = sums[0]
        if not self.gaussian:
            return {
                "weight": float(n_observed),
                "n_rows": n_observed,
                "loglik": 0.0,
                "nk": nk,
                "sums": sums[1],
            }
        first, second = sums[1].copy(), sums[2].copy()
        centred_means, scales, _ = self.log_density_terms(emission)
        add_missing_moments(centred_means, scales, sums[3], first, second)
        means_c = np.divide(first, nk[:, None], out=np.zeros_like(first), where=nk[:, None] > 0)
        scatter = second - nk[:, None] * means_c**2
        if self.kind == "spherical":
            scatter = scatter.sum(axis=1)
        return {
            "weight": float(n_observed),
            "n_rows": n_steps,
            "loglik": 0.0,
            "nk": nk,
            "means": means_c + emission["center"],
            "scatter": scatter,
        }


def fused_emission(family: Any) -> FusedEmission | None:
    """The compiled emission kernels for ``family``, or None when it has none (full and
    tied Gaussians go through the family's own log-densities and statistics)."""
    if isinstance(family, GaussianFamily) and family.covariance_type in ("diag", "spherical"):
        return FusedEmission(family, family.covariance_type)
    if isinstance(family, PoissonFamily):
        return FusedEmission(family, "poisson")
    if isinstance(family, CategoricalFamily):
        return FusedEmission(family, "categorical")
    return None
