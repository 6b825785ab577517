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
:meth:`dask_em.families.hmm.HMMFamily.emission_log_prob`; Gaussian blocks with NaN take
the family's exact missing-value path instead (:func:`fused_emission` says which).

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
from dask_em.families.hmm_compiled import dot, scaled_posteriors, shift_chunk
from dask_em.families.hmm_kernels import TimeMajorLayout
from dask_em.families.jit import jit
from dask_em.families.poisson import PoissonFamily
from dask_em.families.vector_exp import CHUNK

_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------- kernels
#: Sequences gathered together: their rows are read as that many sequential streams.
GATHER_SEQUENCES = 64


@jit
def gather_state_major(X, first_rows, starts, counts, center, out, observed):
    """``out[d, starts[t] + i] = X[first_rows[i] + t, d] - center[d]`` (D, T) float64:
    the block (T, D) in time-major order, state-major; ``first_rows[i]`` is the block row
    of the first step of the i-th longest sequence.  ``observed[r]`` is 1.0 where the
    step has no NaN, else 0.0 (and its column of ``out`` is zeroed).

    Sequences are taken GATHER_SEQUENCES at a time, step by step, so the reads are that
    many sequential streams rather than one jump per step.  Returns the count of steps
    with NaN.
    """
    n_features = X.shape[1]
    n_missing = 0
    for group in range(0, counts[0], GATHER_SEQUENCES):
        for t in range(len(counts)):
            stop = min(group + GATHER_SEQUENCES, counts[t])
            if stop <= group:
                break
            for i in range(group, stop):
                source = first_rows[i] + t
                r = starts[t] + i
                complete = True
                for d in range(n_features):
                    value = X[source, d]
                    if value != value:
                        complete = False
                    out[d, r] = value - center[d]
                observed[r] = 1.0 if complete else 0.0
                if not complete:
                    n_missing += 1
                    for d in range(n_features):
                        out[d, r] = 0.0
    return n_missing


@jit
def diag_gaussian_log_b(X, means_c, scales, log_det, log_b, shift):
    """Diagonal Gaussian log-densities (without ``-(D/2) log 2 pi``) into state-major
    ``log_b`` (K, T), then shifted and exponentiated in place (``shift`` (T,)).

    ``X`` (D, T) centred data, ``means_c`` (K, D) centred means, ``scales`` (K, D) the
    precisions' Cholesky factors, ``log_det`` (K,) ``sum_d log scales``.
    """
    n_states, n_features = means_c.shape
    n_rows = X.shape[1]
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
                for i in range(len(row)):
                    z = (x[i] - mean) * scale
                    row[i] += z * z
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
    n_states, n_features = log_p.shape[0], log_p.shape[1]
    n_rows = X.shape[1]
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

    def gather(self, params: Params, X: np.ndarray, layout: TimeMajorLayout):
        """State-major data (D, T), observed flags (T,) and the count of rows with NaN."""
        X = np.ascontiguousarray(X)
        if X.dtype not in (np.float32, np.float64):
            X = X.astype(np.float64)
        n_features = X.shape[1]
        center = (
            np.asarray(params["center"], dtype=np.float64)
            if self.kind in ("diag", "spherical")
            else np.zeros(n_features)
        )
        out = np.empty((n_features, layout.n_steps))
        observed = np.empty(layout.n_steps)
        n_missing = gather_state_major(
            X,
            layout.perm[: int(layout.counts[0])],
            layout.starts,
            layout.counts,
            center,
            out,
            observed,
        )
        return out, observed, n_missing

    def densities(
        self, params: Params, X_sm: np.ndarray, observed: np.ndarray, X: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Shifted densities ``b`` (K, T), shifts (T,) and the dropped constant's total
        over the block (module docstring); ``X`` is the block in its own order."""
        n_rows = X_sm.shape[1]
        if self.kind in ("diag", "spherical"):
            means, chol = params["means"], params["precisions_cholesky"]
            per_feature = np.asarray(chol, dtype=np.float64).reshape(len(means), -1)
            scales = np.ascontiguousarray(np.broadcast_to(per_feature, means.shape))
            b = np.empty((len(means), n_rows))
            shift = np.empty(n_rows)
            diag_gaussian_log_b(
                X_sm, means - params["center"], scales, np.log(scales).sum(axis=1), b, shift
            )
            return b, shift, -0.5 * means.shape[1] * _LOG_2PI * n_rows
        if self.kind == "poisson":
            rates = params["rates"]
            b = np.empty((len(rates), n_rows))
            shift = np.empty(n_rows)
            poisson_log_b(X_sm, observed, safe_log(rates), rates.sum(axis=1), b, shift)
            counts = np.asarray(X, dtype=np.float64)
            complete = counts[~np.isnan(counts).any(axis=1)]
            return b, shift, -float(gammaln(complete + 1.0).sum())
        log_p = np.ascontiguousarray(safe_log(params["probabilities"]))
        b = np.empty((len(log_p), n_rows))
        shift = np.empty(n_rows)
        categorical_log_b(X_sm, observed, log_p, b, shift)
        return b, shift, 0.0

    def statistics(
        self, params: Params, X_sm: np.ndarray, observed: np.ndarray, gamma: np.ndarray
    ) -> Stats:
        """The emission family's ``posterior_stats`` from state-major gamma (K, T)."""
        n_states, n_features = gamma.shape[0], X_sm.shape[0]
        nk = np.zeros(n_states)
        n_observed = int(observed.sum())
        if self.kind == "categorical":
            counts = np.zeros((n_states, n_features, self.family.n_symbols))
            symbol_counts(gamma, X_sm, observed, nk, counts)
            return _discrete_stats(n_observed, nk, counts)
        first = np.zeros((n_states, n_features))
        second = np.zeros((n_states, n_features))
        if self.kind == "poisson":
            weighted_sums(gamma, X_sm, observed, False, nk, first, second)
            return _discrete_stats(n_observed, nk, first)
        weighted_sums(gamma, X_sm, observed, True, nk, first, second)
        means_c = np.divide(first, nk[:, None], out=np.zeros_like(first), where=nk[:, None] > 0)
        scatter = second - nk[:, None] * means_c**2
        if self.kind == "spherical":
            scatter = scatter.sum(axis=1)
        return {
            "weight": float(n_observed),
            "n_rows": n_observed,
            "loglik": 0.0,
            "nk": nk,
            "means": means_c + params["center"],
            "scatter": scatter,
        }


def _discrete_stats(n_observed: int, nk: np.ndarray, sums: np.ndarray) -> Stats:
    return {
        "weight": float(n_observed),
        "n_rows": n_observed,
        "loglik": 0.0,
        "nk": nk,
        "sums": sums,
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


def fused_block_stats(
    fused: FusedEmission,
    params: Params,
    X: np.ndarray,
    layout: TimeMajorLayout,
) -> tuple[float, np.ndarray, np.ndarray, Stats] | None:
    """Baum-Welch statistics of a block (X (T, D) in block order, ``params`` the HMM's)
    by the compiled kernels:
    ``(log-likelihood, start (K,), trans (K, K), emission statistics)``.

    None when the block needs the general path: a Gaussian block with NaN, or a
    normalizer that underflows (which that path redoes in log space).
    """
    emission = params["emission"]
    X_sm, observed, n_missing = fused.gather(emission, X, layout)
    if n_missing and fused.kind in ("diag", "spherical"):
        return None
    b, shift, constant = fused.densities(emission, X_sm, observed, X)
    result = scaled_posteriors(layout, b, params["startprob"], params["transmat"])
    if result is None:
        return None
    gamma, xi_sum, scale = result
    loglik = float(np.log(scale).sum() + shift.sum() + constant)
    start = gamma[:, : int(layout.counts[0])].sum(axis=1)
    trans = np.asarray(params["transmat"], dtype=np.float64) * xi_sum
    return loglik, start, trans, fused.statistics(emission, X_sm, observed, gamma)
