"""Compiled exact E-step + completed-data moments of rows with NaN, for the diag and
spherical Gaussian mixtures.

With a diagonal covariance the features of a component are independent, so what the
general missing-value kernel (:mod:`dask_em.families.gaussian_missing_compiled`) does
with Schur complements of each NaN pattern reduces to per-feature terms, and no
pattern has to be found, sorted or factored.  For a row with observed features O and
missing features M, with ``s_kd = 1/sigma_kd`` and ``xc = x - center``,
``mc_k = mu_k - center`` (Ghahramani & Jordan 1994, the diagonal case of
:mod:`dask_em.families.gaussian_missing`, eqs. 1-3):

    log pi_k + log N(x_o | k) = const_k - sum_{d in M} a_kd
                                - 1/2 sum_{d in O} ((xc_d - mc_kd) s_kd)^2,
    a_kd = log s_kd - 1/2 log 2 pi     (const_k: the complete rows' constant),
    E[xc_d | x_o, k] = mc_kd,   E[xc_d^2 | x_o, k] = mc_kd^2 + sigma_kd^2   (d in M).

So a slice holds its rows feature-major as ``xc``, NaN kept in place; the
log-densities are the complete rows' sums over the values that are not NaN, plus
``-sum_{d in M} a_kd``; and the moments are the complete rows' sums over those values,
plus, per component and feature, the responsibility mass of the rows missing that
feature, ``m_kd = sum_{i: x_id NaN} r_ik``, times ``mc_kd`` (first moments) and
``mc_kd^2 + sigma_kd^2`` (second).  The loops that do the arithmetic run over a slice's
rows, contiguous, and vectorize (the test for NaN is a select inside them).  Rows with
nothing observed get no weight (the reference's rule).  Everything runs in float64, as
the general kernel does; unlike it (and like the complete-row kernels) no tiny
responsibility is floored to 0.
"""

from __future__ import annotations

import numpy as np

from dask_em.families.gaussian_missing_compiled import SLICE_ROWS
from dask_em.families.gaussian_missing_runs import LOG_2PI
from dask_em.families.jit import jit, jit_reassociated
from dask_em.families.responsibilities_compiled import responsibilities, row_scratch


@jit
def _masked_slice(X, rows, first, center, xct, w, ws, held, seen):
    """The next rows of ``rows`` from index ``first`` with anything observed, up to
    ``xct.shape[1]`` of them, copied to the first columns of xct (D, >= m) as ``x -
    center`` (NaN where x is NaN), and their weights to ws (w (n,), or empty for unit
    weights).  held (>= m, D) and seen (>= m,) are scratch.  Returns (m, the next index
    into rows).

    The rows are first copied as they are (contiguous), then turned feature-major one
    feature at a time, so that every loop runs over the slice's rows and vectorizes.
    """
    n_features = X.shape[1]
    m = min(xct.shape[1], len(rows) - first)
    for j in range(m):
        source, target = X[rows[first + j]], held[j]
        for d in range(n_features):
            target[d] = source[d]
        seen[j] = 0.0
    for d in range(n_features):
        c = center[d]
        target = xct[d]
        for j in range(m):
            value = held[j, d]
            target[j] = value - c
            seen[j] += 1.0 if value == value else 0.0
    unweighted = w.shape[0] == 0
    kept = 0
    for j in range(m):
        if seen[j] == 0.0:  # a row with nothing observed gets no weight: left out
            continue
        if kept < j:
            for d in range(n_features):
                xct[d, kept] = xct[d, j]
        ws[kept] = 1.0 if unweighted else w[rows[first + j]]
        kept += 1
    return kept, first + m


@jit_reassociated
def _masked_log_densities(xct, means_c, scales, const, absent, m, lp):
    """``lp[k, i] = const_k - sum_{d: xct[d, i] NaN} absent[k, d] - 1/2 sum_{d: xct[d, i]
    not NaN} ((xct[d, i] - means_c[k, d]) scales[k, d])^2`` for i < m."""
    n_components, n_features = means_c.shape
    for k in range(n_components):
        row = lp[k]
        for i in range(m):
            row[i] = 0.0
        shift = 0.0  # const_k - sum_d a_kd: the row with every feature missing
        for d in range(n_features):
            x = xct[d]
            c, s, a = means_c[k, d], scales[k, d], absent[k, d]
            shift -= a
            for i in range(m):
                v = (x[i] - c) * s
                # -1/2 v^2 for an observed feature, + a_kd (taken back from shift) for one
                row[i] += a - 0.5 * v * v if x[i] == x[i] else 0.0
        shift += const[k]
        for i in range(m):
            row[i] += shift


@jit_reassociated
def masked_feature_sums(weights, x):
    """``(sum_i w_i x_i, sum_i w_i x_i^2)`` over the values of x that are not NaN, and
    ``sum_i w_i`` over those that are (weights, x (m,))."""
    first = 0.0
    squares = 0.0
    lacking = 0.0
    for i in range(len(weights)):
        present = x[i] == x[i]
        value = x[i] if present else 0.0
        v = weights[i] * value
        first += v
        squares += v * value
        lacking += 0.0 if present else weights[i]
    return first, squares, lacking


@jit
def _masked_moments(resp, xct, m, sums, second, lacking):
    """``sums[k, d] += sum_i r_ki xct_di``, ``second[k, d] += sum_i r_ki xct_di^2`` over
    the values of xct that are not NaN, and ``lacking[k, d] += sum_i r_ki`` over those
    that are, for i < m."""
    for k in range(resp.shape[0]):
        for d in range(xct.shape[0]):
            first, squares, mass = masked_feature_sums(resp[k, :m], xct[d, :m])
            sums[k, d] += first
            second[k, d] += squares
            lacking[k, d] += mass


@jit
def _diag_missing_block(X, rows, center, means_c, scales, const, w, nk, sums, second, lacking):
    """Every row of ``rows``: adds to nk (K,), and over the values that are not NaN to
    sums (K, D) and second (K, D); adds to lacking (K, D) the responsibility mass of the
    NaN ones (see the module docstring); returns (weight, loglik)."""
    n_components, n_features = means_c.shape
    size = min(SLICE_ROWS, max(len(rows), 1))
    xct = np.empty((n_features, size))
    lp = np.empty((n_components, size))
    ws = np.empty(size)
    held = np.empty((size, n_features))
    seen = np.empty(size)
    scratch = row_scratch(size, lp)
    absent = np.log(scales) - 0.5 * LOG_2PI  # a_kd (K, D)
    weight = 0.0
    loglik = 0.0
    index = np.int64(0)  # int64, not Literal[int](0) (jit docstring)
    while index < len(rows):
        m, index = _masked_slice(X, rows, index, center, xct, w, ws, held, seen)
        if m == 0:
            continue
        _masked_log_densities(xct, means_c, scales, const, absent, m, lp)
        part_weight, part_loglik = responsibilities(lp, m, ws, nk, scratch)
        weight += part_weight
        loglik += part_loglik
        _masked_moments(lp, xct, m, sums, second, lacking)
    return weight, loglik


def add_missing_moments(means_c, scales, lacking, first, second) -> None:
    """The missing entries' moments (module docstring) added to ``first`` and ``second``
    (K, D), in place: ``lacking`` (K, D), the responsibility (or posterior) mass of the
    rows missing each feature, times ``mc_kd`` and ``mc_kd^2 + sigma_kd^2``; means_c (K,
    D) the means minus the centre, scales (K, D) ``1/sigma``."""
    first += lacking * means_c
    second += lacking * (means_c**2 + 1.0 / scales**2)


def diag_missing_block_moments(X, rows, center, means_c, scales, const, w):
    """Moments about ``center`` of the rows ``rows`` of a block, which hold NaN, for a
    diag or spherical mixture (module docstring).

    X (n, D); rows (r,) int: the indices of its rows with NaN; means_c (K, D) the means
    minus ``center``; scales (K, D) or (K, 1) ``1/sigma``; const (K,) the complete rows'
    ``log pi_k + sum_d log(1/sigma_kd) - D/2 log 2 pi``; w (n,), or empty for unit
    weights.  Returns ``(weight, loglik, nk (K,), sums (K, D), second (K, D))``: the
    completed rows' ``sum_i w_i r_ik E[xc_i]`` and ``sum_i w_i r_ik E[xc_i^2]``
    (elementwise), as :func:`~dask_em.families.gaussian_compiled.diag_block_moments`
    gives for complete rows.
    """
    n_components, n_features = means_c.shape
    # a writable copy: a read-only array is another type to numba (gaussian_compiled)
    scales = np.array(np.broadcast_to(scales, means_c.shape), dtype=np.float64, order="C")
    means_c = np.ascontiguousarray(means_c, dtype=np.float64)
    center = np.asarray(center, dtype=np.float64)
    const = np.ascontiguousarray(const, dtype=np.float64)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    nk = np.zeros(n_components)
    sums = np.zeros((n_components, n_features))
    second = np.zeros((n_components, n_features))
    lacking = np.zeros((n_components, n_features))
    weight, loglik = _diag_missing_block(
        X, rows, center, means_c, scales, const, w, nk, sums, second, lacking
    )
    add_missing_moments(means_c, scales, lacking, sums, second)
    return weight, loglik, nk, sums, second
